//! The names each address was given for, per sandbox: what the sandbox's DNS service answered,
//! kept until the answers' TTLs (clamped to `[dns] binding_ttl_min..max`) run out.
//!
//! [`SandboxBindings`] is the daemon's side of the eBPF `DNS_BINDINGS` map: every change to an
//! address is written through a [`BindingSink`] while the table's lock is held, so the kernel's
//! view (bound until when, bypass only or not) and this one never disagree for long. It answers
//! [`SandboxBindings::names`]: which names an address stands for, for checks of what a
//! connection claims (its SNI) against what the sandbox was told.
//!
//! An address is *bypass only* while every name it stands for is a TLS bypass name; a
//! non-bypass name keeps it from being so until that name's binding expires, even when the
//! name itself had to be dropped to make room (so a flood of bypass names cannot turn an
//! ordinary address into a bypassed one).

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use gateway_proto::HostName;

use crate::policy::bound::BoundNames;

/// Addresses kept per sandbox. Past this, expired ones go first, then the one whose binding
/// ends soonest (it is unbound in the kernel too).
pub const MAX_ADDRS: usize = 16_384;
/// Names kept per address; past this, the name whose binding ends soonest is dropped.
pub const MAX_NAMES_PER_ADDR: usize = 16;

/// Where a sandbox's bindings are written besides the table (the eBPF map, in the daemon).
pub trait BindingSink: Send + Sync {
    /// `addr` is bound for `valid_for` from now; `bypass_only` when every name it stands for is
    /// a TLS bypass name.
    fn write(&self, addr: IpAddr, valid_for: Duration, bypass_only: bool);
    /// `addr` is no longer bound.
    fn remove(&self, addr: IpAddr);
}

/// One name an address was given for.
#[derive(Debug, Clone)]
struct Bound {
    name: HostName,
    expires: Instant,
    bypass: bool,
}

/// What one address stands for.
#[derive(Debug, Default)]
struct Entry {
    names: Vec<Bound>,
    /// When the last binding of a non-bypass name ends (dropped names included).
    non_bypass_until: Option<Instant>,
}

impl Entry {
    /// When the address stops being bound: when its last name's binding ends.
    fn expires(&self) -> Option<Instant> {
        self.names.iter().map(|bound| bound.expires).max()
    }

    fn bypass_only(&self, now: Instant) -> bool {
        self.non_bypass_until.is_none_or(|until| until <= now)
    }

    /// Tells `sink` what the address is now (bound while a name is).
    fn write(&self, addr: IpAddr, now: Instant, sink: &dyn BindingSink) {
        if let Some(expires) = self.expires() {
            sink.write(addr, expires - now, self.bypass_only(now));
        }
    }
}

/// One sandbox's bindings: address → the names it was given for, until when.
pub struct SandboxBindings {
    entries: Mutex<Table>,
    sink: Arc<dyn BindingSink>,
}

/// The table behind the lock.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Set once the sandbox is detached: answers still in flight bind nothing more.
    closed: bool,
}

impl fmt::Debug for SandboxBindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxBindings")
            .field("addresses", &self.len())
            .finish_non_exhaustive()
    }
}

/// What the route decision asks: the names DNS gave this sandbox for an address.
impl BoundNames for SandboxBindings {
    fn names(&self, addr: IpAddr) -> Vec<HostName> {
        SandboxBindings::names(self, addr)
    }
}

impl SandboxBindings {
    /// An empty table writing through to `sink`.
    pub fn new(sink: Arc<dyn BindingSink>) -> SandboxBindings {
        SandboxBindings {
            entries: Mutex::new(Table::default()),
            sink,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sandbox is detached: forgets every binding (without telling the sink, whose entries
    /// the caller removes as a whole) and ignores any binding from now on, so an answer still
    /// in flight cannot leave one behind.
    pub fn close(&self) {
        let mut table = self.lock();
        table.closed = true;
        table.entries.clear();
    }

    /// `addr` was given as an address of `name`, valid for `ttl`; `bypass` when `name` is a TLS
    /// bypass name. A name bound again keeps the later of its two expiries.
    pub fn bind(&self, addr: IpAddr, name: &HostName, ttl: Duration, bypass: bool) {
        self.bind_at(addr, name, ttl, bypass, Instant::now());
    }

    fn bind_at(&self, addr: IpAddr, name: &HostName, ttl: Duration, bypass: bool, now: Instant) {
        // IPv4-mapped answers are the IPv4 address, as the kernel's keys have it.
        let addr = addr.to_canonical();
        let expires = now + ttl;
        let mut table = self.lock();
        if table.closed {
            return;
        }
        let entries = &mut table.entries;
        if !entries.contains_key(&addr) && entries.len() >= MAX_ADDRS {
            self.expire_locked(entries, now);
            if entries.len() >= MAX_ADDRS
                && let Some(soonest) = soonest_to_expire(entries)
            {
                entries.remove(&soonest);
                self.sink.remove(soonest);
            }
        }
        let entry = entries.entry(addr).or_default();
        entry.names.retain(|bound| bound.expires > now);
        match entry.names.iter_mut().find(|bound| bound.name == *name) {
            Some(bound) => {
                bound.expires = bound.expires.max(expires);
                bound.bypass = bypass;
            }
            None => {
                if entry.names.len() >= MAX_NAMES_PER_ADDR
                    && let Some(index) =
                        (0..entry.names.len()).min_by_key(|index| entry.names[*index].expires)
                {
                    entry.names.swap_remove(index);
                }
                entry.names.push(Bound {
                    name: name.clone(),
                    expires,
                    bypass,
                });
            }
        }
        if !bypass {
            entry.non_bypass_until =
                Some(entry.non_bypass_until.map_or(expires, |t| t.max(expires)));
        }
        entry.write(addr, now, &*self.sink);
    }

    /// The names `addr` is bound to now (none when no answer gave it, or its bindings
    /// expired), in no particular order.
    pub fn names(&self, addr: IpAddr) -> Vec<HostName> {
        self.names_at(addr, Instant::now())
    }

    fn names_at(&self, addr: IpAddr, now: Instant) -> Vec<HostName> {
        self.lock()
            .entries
            .get(&addr.to_canonical())
            .map(|entry| {
                entry
                    .names
                    .iter()
                    .filter(|bound| bound.expires > now)
                    .map(|bound| bound.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets expired names; an address left without one is removed (from the sink too), one
    /// whose last non-bypass name expired becomes bypass only. Returns the addresses removed.
    pub fn expire(&self) -> usize {
        self.expire_locked(&mut self.lock().entries, Instant::now())
    }

    fn expire_locked(&self, entries: &mut HashMap<IpAddr, Entry>, now: Instant) -> usize {
        let before = entries.len();
        entries.retain(|addr, entry| {
            entry.names.retain(|bound| bound.expires > now);
            if entry.names.is_empty() {
                self.sink.remove(*addr);
                return false;
            }
            if entry.non_bypass_until.is_some_and(|until| until <= now) {
                entry.non_bypass_until = None;
                entry.write(*addr, now, &*self.sink);
            }
            true
        });
        before - entries.len()
    }

    /// Judges every name again with `is_bypass` (the bypass patterns changed) and writes every
    /// address again.
    pub fn rejudge(&self, is_bypass: impl Fn(&HostName) -> bool) {
        let now = Instant::now();
        let mut table = self.lock();
        for (addr, entry) in table.entries.iter_mut() {
            entry.names.retain(|bound| bound.expires > now);
            for bound in &mut entry.names {
                bound.bypass = is_bypass(&bound.name);
            }
            entry.non_bypass_until = entry
                .names
                .iter()
                .filter(|bound| !bound.bypass)
                .map(|bound| bound.expires)
                .max();
            entry.write(*addr, now, &*self.sink);
        }
    }

    /// Addresses in the table (some may have expired since the last [`SandboxBindings::expire`]).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn soonest_to_expire(entries: &HashMap<IpAddr, Entry>) -> Option<IpAddr> {
    entries
        .iter()
        .min_by_key(|(_, entry)| entry.expires())
        .map(|(addr, _)| *addr)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// What the kernel map would hold: address → (valid for, bypass only).
    #[derive(Default)]
    struct Recorded(Mutex<BTreeMap<IpAddr, (Duration, bool)>>);

    impl Recorded {
        fn get(&self, addr: &str) -> Option<(Duration, bool)> {
            self.0
                .lock()
                .unwrap()
                .get(&addr.parse::<IpAddr>().unwrap())
                .copied()
        }

        fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    impl BindingSink for Recorded {
        fn write(&self, addr: IpAddr, valid_for: Duration, bypass_only: bool) {
            self.0
                .lock()
                .unwrap()
                .insert(addr, (valid_for, bypass_only));
        }

        fn remove(&self, addr: IpAddr) {
            self.0.lock().unwrap().remove(&addr);
        }
    }

    fn table() -> (SandboxBindings, Arc<Recorded>) {
        let sink = Arc::new(Recorded::default());
        (SandboxBindings::new(sink.clone()), sink)
    }

    fn host(name: &str) -> HostName {
        HostName::parse(name).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn sorted(mut names: Vec<HostName>) -> Vec<String> {
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.iter().map(|n| n.as_str().to_owned()).collect()
    }

    #[test]
    fn an_address_stands_for_every_name_it_was_given_for_until_each_expires() {
        let (table, sink) = table();
        let now = Instant::now();
        let addr = ip("192.0.2.7");
        table.bind_at(addr, &host("a.test"), secs(10), false, now);
        table.bind_at(addr, &host("b.test"), secs(30), false, now);
        assert_eq!(sorted(table.names_at(addr, now)), ["a.test", "b.test"]);
        // IPv4-mapped is the same address.
        assert_eq!(table.names_at(ip("::ffff:192.0.2.7"), now).len(), 2);
        assert_eq!(sink.get("192.0.2.7"), Some((secs(30), false)));
        assert_eq!(sorted(table.names_at(addr, now + secs(20))), ["b.test"]);
        assert!(table.names_at(ip("192.0.2.8"), now).is_empty());

        assert_eq!(
            table.expire_locked(&mut table.lock().entries, now + secs(20)),
            0
        );
        assert_eq!(
            table.expire_locked(&mut table.lock().entries, now + secs(30)),
            1
        );
        assert!(table.names_at(addr, now).is_empty());
        assert_eq!(sink.len(), 0, "the sink forgets the address too");
    }

    #[test]
    fn binding_again_keeps_the_later_expiry() {
        let (table, sink) = table();
        let now = Instant::now();
        let addr = ip("2001:db8::1");
        table.bind_at(addr, &host("a.test"), secs(60), false, now);
        table.bind_at(addr, &host("a.test"), secs(5), false, now + secs(1));
        assert_eq!(sink.get("2001:db8::1"), Some((secs(59), false)));
        assert_eq!(table.names_at(addr, now + secs(30)).len(), 1);
    }

    #[test]
    fn bypass_only_while_every_name_is_a_bypass_name() {
        let (table, sink) = table();
        let now = Instant::now();
        let addr = ip("198.51.100.1");
        table.bind_at(addr, &host("bank.test"), secs(100), true, now);
        assert_eq!(sink.get("198.51.100.1"), Some((secs(100), true)));
        table.bind_at(addr, &host("other.test"), secs(10), false, now);
        assert_eq!(sink.get("198.51.100.1"), Some((secs(100), false)));
        // Once the ordinary name's binding ends, the address is bypass only again.
        table.expire_locked(&mut table.lock().entries, now + secs(10));
        assert_eq!(sink.get("198.51.100.1"), Some((secs(90), true)));
        assert_eq!(sorted(table.names_at(addr, now + secs(10))), ["bank.test"]);
    }

    #[test]
    fn a_flood_of_bypass_names_cannot_push_out_an_ordinary_one() {
        let (table, sink) = table();
        let now = Instant::now();
        let addr = ip("198.51.100.2");
        table.bind_at(addr, &host("plain.test"), secs(50), false, now);
        for i in 0..MAX_NAMES_PER_ADDR * 2 {
            table.bind_at(
                addr,
                &host(&format!("b{i}.bank.test")),
                secs(100),
                true,
                now,
            );
        }
        let names = table.names_at(addr, now);
        assert_eq!(names.len(), MAX_NAMES_PER_ADDR);
        assert!(
            !names.contains(&host("plain.test")),
            "the soonest to expire went"
        );
        assert_eq!(sink.get("198.51.100.2"), Some((secs(100), false)));
    }

    #[test]
    fn a_full_table_drops_the_address_that_expires_soonest() {
        let (table, sink) = table();
        let now = Instant::now();
        let name = host("many.test");
        for i in 0..MAX_ADDRS {
            let addr = IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | i as u128));
            // The first one ends soonest.
            table.bind_at(addr, &name, secs(100 + i as u64), false, now);
        }
        let first = IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96));
        table.bind_at(ip("192.0.2.99"), &name, secs(1000), false, now);
        assert_eq!(table.len(), MAX_ADDRS);
        assert!(table.names_at(first, now).is_empty());
        assert_eq!(sink.len(), MAX_ADDRS);
        assert!(sink.get("192.0.2.99").is_some());
    }

    #[test]
    fn a_closed_table_binds_nothing_more() {
        let (table, sink) = table();
        let now = Instant::now();
        table.bind_at(ip("192.0.2.40"), &host("a.test"), secs(100), false, now);
        table.close();
        assert!(table.is_empty());
        table.bind_at(ip("192.0.2.41"), &host("a.test"), secs(100), false, now);
        assert!(table.is_empty());
        assert_eq!(sink.len(), 1, "only the binding from before the close");
    }

    #[test]
    fn rejudging_follows_new_bypass_patterns() {
        let (table, sink) = table();
        let now = Instant::now();
        let addr = ip("192.0.2.30");
        table.bind_at(addr, &host("x.bank.test"), secs(100), false, now);
        assert_eq!(
            sink.get("192.0.2.30").map(|(_, bypass)| bypass),
            Some(false)
        );
        table.rejudge(|name| name.as_str().ends_with("bank.test"));
        assert_eq!(sink.get("192.0.2.30").map(|(_, bypass)| bypass), Some(true));
        table.rejudge(|_| false);
        assert_eq!(
            sink.get("192.0.2.30").map(|(_, bypass)| bypass),
            Some(false)
        );
    }
}
