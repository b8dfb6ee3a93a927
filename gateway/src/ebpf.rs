//! The eBPF side as the daemon sees it: loading the embedded programs, attaching them to sandbox
//! cgroups with their policy entries, pinning maps and links for operators, and reading and
//! writing the maps.

pub mod events;
pub mod pins;
pub mod rules;

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap, LpmTrie, Map, MapData, MapError, MapInfo, MapType, PerCpuArray, PerCpuHashMap,
        RingBuf, SockHash,
    },
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, SkSkb, SockOps,
        links::{FdLink, LinkError},
    },
};
use gateway_common::{
    AddrKey, AddrRule, BYPASS_EVENTS_BYTES, BypassEvent, ClientKey, Counter, Counters, DnsBinding,
    DnsBindingKey, DnsRedirect, LRU_MAP_FLAGS, OrigDstEntry, PortKey, PortRule, Refusals,
    SandboxConf, SplicePeer, map_names,
};

pub use self::{pins::PinDir, rules::SandboxRules};
use crate::{net::addr::words_from_ip, sandbox::cgroup::Cgroup};

/// The compiled eBPF object, built from gateway-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// Program names in the object, and the short names their pinned links get.
const CONNECT4: &str = "gateway_connect4";
const CONNECT6: &str = "gateway_connect6";
const SENDMSG4: &str = "gateway_sendmsg4";
const SENDMSG6: &str = "gateway_sendmsg6";
const RECVMSG4: &str = "gateway_recvmsg4";
const RECVMSG6: &str = "gateway_recvmsg6";
const GETPEERNAME4: &str = "gateway_getpeername4";
const GETPEERNAME6: &str = "gateway_getpeername6";
const SOCK_CREATE: &str = "gateway_sock_create";
const SOCK_OPS: &str = "gateway_sock_ops";
/// Attached to `SPLICE_SOCKS` (not to a cgroup), once, at load.
const SPLICE_VERDICT: &str = "gateway_splice_verdict";

/// The cgroup_sock_addr programs (connect, send, receive and getpeername hooks).
const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    CONNECT4,
    CONNECT6,
    SENDMSG4,
    SENDMSG6,
    RECVMSG4,
    RECVMSG6,
    GETPEERNAME4,
    GETPEERNAME6,
];
/// Every program attached to a sandbox cgroup. sock_create first, so that no socket of a
/// forbidden kind can be made while the others are being attached; the hooks that give DNS
/// replies their source back before the ones that rewrite DNS, so no reply is seen unrestored.
const ALL_PROGRAMS: [&str; 10] = [
    SOCK_CREATE,
    RECVMSG4,
    RECVMSG6,
    GETPEERNAME4,
    GETPEERNAME6,
    CONNECT4,
    CONNECT6,
    SENDMSG4,
    SENDMSG6,
    SOCK_OPS,
];

/// Errors loading, attaching or using the eBPF programs and maps.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The embedded object could not be parsed or its maps created.
    #[error("loading the eBPF object: {source}")]
    Object {
        #[source]
        source: aya::EbpfError,
    },
    /// A program the object must contain is missing or of the wrong type.
    #[error("the eBPF object has no usable program `{name}`")]
    MissingProgram { name: &'static str },
    /// A map the object must contain is missing or of the wrong type.
    #[error("the eBPF object has no usable map `{name}`: {source}")]
    BadMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// The kernel rejected a program (the message carries the verifier log).
    #[error("the kernel rejected program `{name}`: {source}")]
    Load {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// Attaching the splice verdict program to its socket map failed.
    #[error("attaching `{name}` to map {map}: {source}")]
    AttachMap {
        name: &'static str,
        map: &'static str,
        #[source]
        source: ProgramError,
    },
    /// Attaching a program to a sandbox cgroup failed.
    #[error("attaching `{name}` to cgroup {cgroup}: {source}")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: ProgramError,
    },
    /// An attached program's link could not be taken over.
    #[error("taking the link of `{name}` on cgroup {cgroup}: {source}")]
    Link {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: LinkError,
    },
    /// A map operation failed.
    #[error("{op} map {map}: {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// Pinning under bpffs failed.
    #[error(transparent)]
    Pin(#[from] pins::PinError),
    /// The number of possible CPUs (for per-CPU values) could not be read.
    #[error("reading the possible CPUs: {source}")]
    Cpus {
        #[source]
        source: std::io::Error,
    },
    /// Adopting pinned state needs a pin directory.
    #[error("there is no pin directory to adopt sandboxes from")]
    NoPins,
    /// A pinned map was made by a build with another map layout.
    #[error(
        "pinned map {pin} ({map}) has the layout {found} (type, key/value sizes, and flags or \
         size where they matter); this gateway needs {expected}. It was made by another version \
         of the gateway: run `gateway down` to detach its sandboxes and remove the pins, then \
         start this one and add them again"
    )]
    LayoutChanged {
        map: &'static str,
        pin: PathBuf,
        found: String,
        expected: String,
    },
}

/// The loaded programs and their maps.
pub struct Programs {
    ebpf: Ebpf,
    sandboxes: HashMap<MapData, u64, SandboxConf>,
    port_rules: HashMap<MapData, PortKey, PortRule>,
    addr_rules: LpmTrie<MapData, AddrKey, AddrRule>,
    resolvers: HashMap<MapData, AddrKey, u32>,
    refusal_events: Option<RingBuf<MapData>>,
    bypass_events: Option<RingBuf<MapData>>,
    dns_bindings: DnsBindingMap,
    orig_dst: OrigDstTable,
    counts: Counts,
    splice: SpliceMaps,
    pins: Option<PinDir>,
}

impl fmt::Debug for Programs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Programs")
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

impl Programs {
    /// Loads and verifies the programs. With `pins`, every map is pinned there for operators,
    /// and maps a previous daemon pinned there are used again (after checking that their
    /// layout is this build's), so the sandboxes it served stay judged and redirected.
    pub fn load(pins: Option<PinDir>) -> Result<Self, EbpfError> {
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            check_layouts(pins)?;
            for layout in MAP_LAYOUTS {
                loader.map_pin_path(layout.name, pins.map_path(layout.name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|source| EbpfError::Object { source })?;
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| EbpfError::Load { name, source })?;
        }
        let sock_create: &mut CgroupSock = program_mut(&mut ebpf, SOCK_CREATE)?;
        sock_create.load().map_err(|source| EbpfError::Load {
            name: SOCK_CREATE,
            source,
        })?;
        let sock_ops: &mut SockOps = program_mut(&mut ebpf, SOCK_OPS)?;
        sock_ops.load().map_err(|source| EbpfError::Load {
            name: SOCK_OPS,
            source,
        })?;
        let mut maps = MapTaker { ebpf: &mut ebpf };
        let splice_socks: SockHash<MapData, u64> = maps.take(map_names::SPLICE_SOCKS)?;
        let splice_peers: PerCpuHashMap<MapData, u64, SplicePeer> =
            maps.take(map_names::SPLICE_PEERS)?;
        let verdict: &mut SkSkb = program_mut(&mut ebpf, SPLICE_VERDICT)?;
        verdict.load().map_err(|source| EbpfError::Load {
            name: SPLICE_VERDICT,
            source,
        })?;
        // Attached to the map, so it lives as long as the map does: a pinned map adopted from
        // a previous daemon had its program, which this one replaces.
        verdict
            .attach(splice_socks.fd())
            .map_err(|source| EbpfError::AttachMap {
                name: SPLICE_VERDICT,
                map: map_names::SPLICE_SOCKS,
                source,
            })?;
        let splice = SpliceMaps::new(splice_socks, splice_peers)?;
        let mut maps = MapTaker { ebpf: &mut ebpf };
        Ok(Programs {
            sandboxes: maps.take(map_names::SANDBOXES)?,
            port_rules: maps.take(map_names::PORT_RULES)?,
            addr_rules: maps.take(map_names::ADDR_RULES)?,
            resolvers: maps.take(map_names::RESOLVERS)?,
            refusal_events: Some(maps.take(map_names::REFUSAL_EVENTS)?),
            bypass_events: Some(maps.take(map_names::BYPASS_EVENTS)?),
            dns_bindings: DnsBindingMap(Arc::new(Mutex::new(maps.take(map_names::DNS_BINDINGS)?))),
            orig_dst: OrigDstTable(Arc::new(Mutex::new(maps.take(map_names::ORIG_DST)?))),
            counts: Counts(Arc::new(Mutex::new(CountMaps {
                counters: maps.take(map_names::COUNTERS)?,
                refusals: maps.take(map_names::REFUSALS)?,
            }))),
            splice,
            ebpf,
            pins,
        })
    }

    /// The sandboxes whose config is in `SANDBOXES`: cgroup id and config, as a previous
    /// daemon left them.
    pub fn pinned_sandboxes(&self) -> Vec<(u64, SandboxConf)> {
        self.sandboxes.iter().filter_map(Result::ok).collect()
    }

    /// Takes over a sandbox a previous daemon attached: its pinned links (programs missing from
    /// them, e.g. after an upgrade that added one, are attached now), and its entries replaced
    /// by `rules`.
    pub fn adopt(
        &mut self,
        cgroup: &Cgroup,
        rules: &SandboxRules,
    ) -> Result<Attachment, EbpfError> {
        let pins = self.pins.as_ref().ok_or(EbpfError::NoPins)?;
        let mut adopted = Vec::new();
        let mut missing = Vec::new();
        for name in ALL_PROGRAMS {
            match pins.adopt_link(&link_name(rules.sandbox_id, name))? {
                Some(link) => adopted.push(AttachedLink::Pinned(link)),
                None => missing.push(name),
            }
        }
        self.purge(rules.sandbox_id);
        self.install(cgroup.id(), rules)?;
        for name in missing {
            let link = self.attach_one(name, cgroup)?;
            adopted.push(self.hold(rules.sandbox_id, name, link)?);
        }
        Ok(Attachment { links: adopted })
    }

    /// Replaces a sandbox's entries: `new` is written first, then what only `old` had is
    /// removed, so no connect is judged by a half-empty rule set meanwhile.
    pub fn update_rules(
        &mut self,
        cgroup_id: u64,
        old: &SandboxRules,
        new: &SandboxRules,
    ) -> Result<(), EbpfError> {
        self.install(cgroup_id, new)?;
        let stale = SandboxRules {
            ports: old
                .ports
                .iter()
                .filter(|(key, _)| !new.ports.iter().any(|(k, _)| k == key))
                .cloned()
                .collect(),
            addrs: old
                .addrs
                .iter()
                .filter(|(cidr, _)| !new.addrs.iter().any(|(c, _)| c == cidr))
                .cloned()
                .collect(),
            resolvers: old
                .resolvers
                .iter()
                .filter(|ip| !new.resolvers.contains(ip))
                .copied()
                .collect(),
            ..old.clone()
        };
        self.remove_rules(&stale);
        Ok(())
    }

    /// Detaches and forgets a sandbox a previous daemon left, that cannot be adopted (its cgroup
    /// is gone, or nobody remembers it): its pinned links, its config, its entries.
    pub fn abandon(&mut self, cgroup_id: u64, sandbox_id: u32) {
        if let Some(pins) = &self.pins {
            for name in ALL_PROGRAMS {
                match pins.adopt_link(&link_name(sandbox_id, name)) {
                    Ok(Some(link)) => {
                        if let Err(err) = link.detach() {
                            tracing::warn!(sandbox = sandbox_id, error = %err, "failed to detach an abandoned link");
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(sandbox = sandbox_id, error = %err, "failed to open an abandoned link")
                    }
                }
            }
        }
        report_removal(
            sandbox_id,
            map_names::SANDBOXES,
            self.sandboxes.remove(&cgroup_id),
        );
        self.purge(sandbox_id);
        self.dns_bindings.remove_sandbox(sandbox_id);
        report_removal(
            sandbox_id,
            map_names::REFUSALS,
            self.counts.lock().refusals.remove(&sandbox_id),
        );
    }

    /// Removes every pin (`gateway down`); returns how many there were.
    pub fn remove_pins(&mut self) -> Result<usize, EbpfError> {
        match &self.pins {
            Some(pins) => Ok(pins.remove_all()?.len()),
            None => Ok(0),
        }
    }

    /// Removes every rule entry of `sandbox_id`, whatever wrote it (a previous daemon with
    /// another config).
    pub fn purge(&mut self, sandbox_id: u32) {
        let ports: Vec<PortKey> = self
            .port_rules
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.sandbox_id == sandbox_id)
            .collect();
        for key in ports {
            let _ = self.port_rules.remove(&key);
        }
        let addrs: Vec<_> = self
            .addr_rules
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.data().sandbox_id == sandbox_id)
            .collect();
        for key in addrs {
            let _ = self.addr_rules.remove(&key);
        }
        let resolvers: Vec<AddrKey> = self
            .resolvers
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.sandbox_id == sandbox_id)
            .collect();
        for key in resolvers {
            let _ = self.resolvers.remove(&key);
        }
    }

    /// Installs a sandbox's policy entries and attaches the programs to its cgroup. The
    /// sandbox is judged and redirected until the returned [`Attachment`] is dropped; then
    /// [`Programs::forget`] removes its entries.
    pub fn attach(
        &mut self,
        cgroup: &Cgroup,
        rules: &SandboxRules,
    ) -> Result<Attachment, EbpfError> {
        if let Err(err) = self.install(cgroup.id(), rules) {
            self.forget(cgroup.id(), rules);
            return Err(err);
        }
        let mut links = Vec::with_capacity(ALL_PROGRAMS.len());
        for name in ALL_PROGRAMS {
            let link = match self.attach_one(name, cgroup) {
                Ok(link) => link,
                Err(err) => {
                    drop(links);
                    self.forget(cgroup.id(), rules);
                    return Err(err);
                }
            };
            links.push(self.hold(rules.sandbox_id, name, link)?);
        }
        Ok(Attachment { links })
    }

    /// Writes the sandbox's entries: rules first, its config last, since the programs judge
    /// a cgroup only once its config is there.
    fn install(&mut self, cgroup_id: u64, rules: &SandboxRules) -> Result<(), EbpfError> {
        let map_err = |op, map| move |source| EbpfError::Map { op, map, source };
        for (key, rule) in &rules.ports {
            self.port_rules
                .insert(key, rule, 0)
                .map_err(map_err("insert into", map_names::PORT_RULES))?;
        }
        for (cidr, rule) in &rules.addrs {
            self.addr_rules
                .insert(&rules.trie_key(cidr), rule, 0)
                .map_err(map_err("insert into", map_names::ADDR_RULES))?;
        }
        for resolver in &rules.resolvers {
            self.resolvers
                .insert(rules.addr_key(*resolver), 1, 0)
                .map_err(map_err("insert into", map_names::RESOLVERS))?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| EbpfError::Cpus { source })?;
        // Counts of an adopted sandbox go on from where they were.
        let mut counts = self.counts.lock();
        if counts.refusals.get(&rules.sandbox_id, 0).is_err() {
            let zero = aya::maps::PerCpuValues::try_from(vec![Refusals::default(); cpus])
                .map_err(|source| EbpfError::Cpus { source })?;
            counts
                .refusals
                .insert(rules.sandbox_id, zero, 0)
                .map_err(map_err("insert into", map_names::REFUSALS))?;
        }
        drop(counts);
        let conf = SandboxConf {
            sandbox_id: rules.sandbox_id,
            listener_port: rules.listener_port,
            flags: rules.flags,
            dns_port: rules.dns_port,
            _pad: 0,
        };
        self.sandboxes
            .insert(cgroup_id, conf, 0)
            .map_err(map_err("insert into", map_names::SANDBOXES))
    }

    /// Keeps a new link: pinned when pinning, so it outlives the daemon.
    fn hold(&self, sandbox_id: u32, name: &str, link: FdLink) -> Result<AttachedLink, EbpfError> {
        Ok(match &self.pins {
            Some(pins) => AttachedLink::Pinned(pins.pin_link(&link_name(sandbox_id, name), link)?),
            None => AttachedLink::Fd(link),
        })
    }

    fn attach_one(&mut self, name: &'static str, cgroup: &Cgroup) -> Result<FdLink, EbpfError> {
        let attach_err = |source| EbpfError::Attach {
            name,
            cgroup: cgroup.path().into(),
            source,
        };
        let link_err = |source| EbpfError::Link {
            name,
            cgroup: cgroup.path().into(),
            source,
        };
        // Links are always multi-attach in the kernel; asking for AllowMultiple is EINVAL.
        let mode = CgroupAttachMode::Single;
        let link = if name == SOCK_OPS {
            let program: &mut SockOps = program_mut(&mut self.ebpf, name)?;
            let id = program.attach(cgroup.dir(), mode).map_err(attach_err)?;
            program.take_link(id).map_err(attach_err)?.try_into()
        } else if name == SOCK_CREATE {
            let program: &mut CgroupSock = program_mut(&mut self.ebpf, name)?;
            let id = program.attach(cgroup.dir(), mode).map_err(attach_err)?;
            program.take_link(id).map_err(attach_err)?.try_into()
        } else {
            let program: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let id = program.attach(cgroup.dir(), mode).map_err(attach_err)?;
            program.take_link(id).map_err(attach_err)?.try_into()
        };
        link.map_err(link_err)
    }

    /// Removes a sandbox's entries (after its attachment is gone): its config first, so the
    /// programs stop judging it before its rules go, and its DNS bindings. Entries already gone
    /// are fine; other failures are logged, since nothing else can be done about them.
    pub fn forget(&mut self, cgroup_id: u64, rules: &SandboxRules) {
        report_removal(
            rules.sandbox_id,
            map_names::SANDBOXES,
            self.sandboxes.remove(&cgroup_id),
        );
        self.remove_rules(rules);
        self.dns_bindings.remove_sandbox(rules.sandbox_id);
        report_removal(
            rules.sandbox_id,
            map_names::REFUSALS,
            self.counts.lock().refusals.remove(&rules.sandbox_id),
        );
    }

    /// Removes the port, address and resolver entries of `rules`.
    fn remove_rules(&mut self, rules: &SandboxRules) {
        let id = rules.sandbox_id;
        for (key, _) in &rules.ports {
            report_removal(id, map_names::PORT_RULES, self.port_rules.remove(key));
        }
        for (cidr, _) in &rules.addrs {
            report_removal(
                id,
                map_names::ADDR_RULES,
                self.addr_rules.remove(&rules.trie_key(cidr)),
            );
        }
        for resolver in &rules.resolvers {
            report_removal(
                id,
                map_names::RESOLVERS,
                self.resolvers.remove(&rules.addr_key(*resolver)),
            );
        }
    }

    /// A sandbox's refusals so far, summed over CPUs.
    pub fn refusals(&self, sandbox_id: u32) -> Result<Refusals, EbpfError> {
        self.counts.refusals(sandbox_id)
    }

    /// The ring buffer of refusal events, for the one task that reads it.
    pub fn take_refusal_events(&mut self) -> Option<RingBuf<MapData>> {
        self.refusal_events.take()
    }

    /// The ring buffer of connections bypassed at connect, for the one task that reads it.
    pub fn take_bypass_events(&mut self) -> Option<RingBuf<MapData>> {
        self.bypass_events.take()
    }

    /// A shareable handle on the `DNS_BINDINGS` map.
    pub fn dns_bindings(&self) -> DnsBindingMap {
        self.dns_bindings.clone()
    }

    /// A shareable handle on the kernel splice maps.
    pub fn splice_maps(&self) -> SpliceMaps {
        self.splice.clone()
    }

    /// A shareable handle on the `ORIG_DST` map.
    pub fn orig_dst(&self) -> OrigDstTable {
        self.orig_dst.clone()
    }

    /// Current counter values, summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, EbpfError> {
        self.counts.counters()
    }

    /// A shareable reader of the counters and refusals (for the metrics endpoint).
    pub fn counts(&self) -> Counts {
        self.counts.clone()
    }

    /// The pin directory, when state is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::path)
    }
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|program| program.try_into().ok())
        .ok_or(EbpfError::MissingProgram { name })
}

fn missing_map(name: &'static str) -> EbpfError {
    EbpfError::BadMap {
        name,
        source: MapError::InvalidName { name: name.into() },
    }
}

/// Takes maps out of the object (pinned already, when pinning: see [`Programs::load`]).
struct MapTaker<'a> {
    ebpf: &'a mut Ebpf,
}

impl MapTaker<'_> {
    fn take<T: TryFrom<Map, Error = MapError>>(
        &mut self,
        name: &'static str,
    ) -> Result<T, EbpfError> {
        let map = self.ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
        T::try_from(map).map_err(|source| EbpfError::BadMap { name, source })
    }
}

/// The pinned name of a sandbox's link of program `program`.
fn link_name(sandbox_id: u32, program: &str) -> String {
    format!("sandbox{sandbox_id}_{program}")
}

fn report_removal(sandbox_id: u32, map: &'static str, result: Result<(), MapError>) {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => {}
        Err(err) => {
            tracing::warn!(sandbox = sandbox_id, map, error = %err, "failed to remove a sandbox's entry");
        }
    }
}

/// A map as this build's programs use it: its name and [`Shape`].
struct MapLayout {
    name: &'static str,
    shape: Shape,
}

/// What of a map must match between builds for them to share it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    map_type: Option<MapType>,
    key_size: usize,
    value_size: usize,
    /// Its flags, where they change the map's behaviour ([`LRU_MAP_FLAGS`] for LRU maps).
    flags: Option<u32>,
    /// Its size, where the programs depend on it (a ring buffer's wakeup threshold).
    max_entries: Option<u32>,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.map_type {
            Some(map_type) => write!(f, "{map_type:?}")?,
            None => f.write_str("an unknown type")?,
        }
        write!(f, " {}/{}", self.key_size, self.value_size)?;
        if let Some(flags) = self.flags {
            write!(f, ", flags {flags:#x}")?;
        }
        if let Some(entries) = self.max_entries {
            write!(f, ", {entries} entries")?;
        }
        Ok(())
    }
}

impl Shape {
    /// The same properties of the pinned map `info`.
    fn of(info: &MapInfo, like: &Shape) -> Shape {
        Shape {
            map_type: info.map_type().ok(),
            key_size: info.key_size() as usize,
            value_size: info.value_size() as usize,
            flags: like.flags.map(|_| info.map_flags()),
            max_entries: like.max_entries.map(|_| info.max_entries()),
        }
    }
}

/// Every map of the object. A pinned map that does not look like this was made by another
/// build: using it would corrupt both.
const MAP_LAYOUTS: [MapLayout; 15] = [
    layout::<u64, SandboxConf>(map_names::SANDBOXES, MapType::Hash),
    layout::<u64, OrigDstEntry>(map_names::PENDING, MapType::LruHash),
    layout::<ClientKey, OrigDstEntry>(map_names::ORIG_DST, MapType::LruHash),
    layout::<PortKey, PortRule>(map_names::PORT_RULES, MapType::Hash),
    layout::<LpmKey, AddrRule>(map_names::ADDR_RULES, MapType::LpmTrie),
    layout::<AddrKey, u32>(map_names::RESOLVERS, MapType::Hash),
    layout::<u32, Refusals>(map_names::REFUSALS, MapType::PerCpuHash),
    ring_buf(map_names::REFUSAL_EVENTS, None),
    layout::<u32, Counters>(map_names::COUNTERS, MapType::PerCpuArray),
    layout::<DnsBindingKey, DnsBinding>(map_names::DNS_BINDINGS, MapType::LruHash),
    layout::<u64, DnsRedirect>(map_names::DNS_REDIRECTS, MapType::LruHash),
    layout::<u64, BypassEvent>(map_names::BYPASSED, MapType::LruHash),
    ring_buf(map_names::BYPASS_EVENTS, Some(BYPASS_EVENTS_BYTES)),
    // A socket map's values are socket fds on the way in (u32 in the object).
    layout::<u64, u32>(map_names::SPLICE_SOCKS, MapType::SockHash),
    layout::<u64, SplicePeer>(map_names::SPLICE_PEERS, MapType::PerCpuHash),
];

/// An LPM trie key: the prefix length, then the data.
type LpmKey = aya::maps::lpm_trie::Key<AddrKey>;

const fn layout<K, V>(name: &'static str, map_type: MapType) -> MapLayout {
    MapLayout {
        name,
        shape: Shape {
            map_type: Some(map_type),
            key_size: size_of::<K>(),
            value_size: size_of::<V>(),
            flags: if matches!(map_type, MapType::LruHash) {
                Some(LRU_MAP_FLAGS)
            } else {
                None
            },
            max_entries: None,
        },
    }
}

const fn ring_buf(name: &'static str, bytes: Option<u32>) -> MapLayout {
    MapLayout {
        name,
        shape: Shape {
            map_type: Some(MapType::RingBuf),
            key_size: 0,
            value_size: 0,
            flags: None,
            max_entries: bytes,
        },
    }
}

/// Fails when a map pinned in `pins` does not look like this build's.
fn check_layouts(pins: &PinDir) -> Result<(), EbpfError> {
    for layout in &MAP_LAYOUTS {
        let path = pins.map_path(layout.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| EbpfError::Map {
            op: "inspect pinned",
            map: layout.name,
            source,
        })?;
        let found = Shape::of(&info, &layout.shape);
        if found != layout.shape {
            return Err(EbpfError::LayoutChanged {
                map: layout.name,
                pin: path,
                found: found.to_string(),
                expected: layout.shape.to_string(),
            });
        }
    }
    Ok(())
}

/// The `COUNTERS` and `REFUSALS` maps, shared with whoever reports them (the metrics
/// endpoint reads them at scrape time); the lock is held for one map operation.
#[derive(Clone)]
pub struct Counts(Arc<Mutex<CountMaps>>);

struct CountMaps {
    counters: PerCpuArray<MapData, Counters>,
    refusals: PerCpuHashMap<MapData, u32, Refusals>,
}

impl fmt::Debug for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counts")
    }
}

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, CountMaps> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Current counter values, summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, EbpfError> {
        let per_cpu = self
            .lock()
            .counters
            .get(&0, 0)
            .map_err(|source| EbpfError::Map {
                op: "read",
                map: map_names::COUNTERS,
                source,
            })?;
        Ok(Counter::ALL
            .iter()
            .map(|counter| {
                (
                    counter.name(),
                    per_cpu.iter().map(|c| c.get(*counter)).sum(),
                )
            })
            .collect())
    }

    /// A sandbox's refusals so far, summed over CPUs.
    pub fn refusals(&self, sandbox_id: u32) -> Result<Refusals, EbpfError> {
        let values = self
            .lock()
            .refusals
            .get(&sandbox_id, 0)
            .map_err(|source| EbpfError::Map {
                op: "read",
                map: map_names::REFUSALS,
                source,
            })?;
        Ok(values
            .iter()
            .fold(Refusals::default(), |sum, cpu| Refusals {
                address: sum.address + cpu.address,
                tcp_port: sum.tcp_port + cpu.tcp_port,
                udp_port: sum.udp_port + cpu.udp_port,
                quic: sum.quic + cpu.quic,
                socket: sum.socket + cpu.socket,
                unbound: sum.unbound + cpu.unbound,
            }))
    }
}

/// `ORIG_DST`, shared by the listeners; the lock is held for one lookup and its delete, never
/// across an await.
#[derive(Clone)]
pub struct OrigDstTable(Arc<Mutex<HashMap<MapData, ClientKey, OrigDstEntry>>>);

impl fmt::Debug for OrigDstTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OrigDstTable")
    }
}

impl OrigDstTable {
    /// Looks up and deletes the entry for `key`; `None` when the connection was not redirected.
    pub fn take(&self, key: &ClientKey) -> Result<Option<OrigDstEntry>, EbpfError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match map.get(key, 0) {
            Ok(entry) => entry,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(EbpfError::Map {
                    op: "look up in",
                    map: map_names::ORIG_DST,
                    source,
                });
            }
        };
        match map.remove(key) {
            // Gone meanwhile: only LRU eviction deletes entries besides us.
            Ok(()) | Err(MapError::KeyNotFound) => Ok(Some(entry)),
            Err(source) => Err(EbpfError::Map {
                op: "delete from",
                map: map_names::ORIG_DST,
                source,
            }),
        }
    }
}

/// `SPLICE_SOCKS` and `SPLICE_PEERS`, shared by every connection spliced in the kernel; the
/// lock is held for one map operation.
#[derive(Clone)]
pub struct SpliceMaps(Arc<Mutex<SpliceMapsInner>>);

struct SpliceMapsInner {
    socks: SockHash<MapData, u64>,
    peers: PerCpuHashMap<MapData, u64, SplicePeer>,
    /// Possible CPUs: the copies of each per-CPU value.
    cpus: usize,
}

impl fmt::Debug for SpliceMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpliceMaps")
    }
}

impl SpliceMaps {
    /// Takes the maps over. Peer entries already there were left by a daemon that died with
    /// splices open: their sockets closed with it (which took them out of `SPLICE_SOCKS`), so
    /// the entries are removed.
    fn new(
        socks: SockHash<MapData, u64>,
        mut peers: PerCpuHashMap<MapData, u64, SplicePeer>,
    ) -> Result<Self, EbpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| EbpfError::Cpus { source })?;
        let stale: Vec<u64> = peers.keys().filter_map(Result::ok).collect();
        for cookie in &stale {
            if let Err(err) = peers.remove(cookie)
                && !matches!(err, MapError::KeyNotFound)
            {
                tracing::warn!(cookie, error = %err, "failed to remove a stale splice peer");
            }
        }
        if !stale.is_empty() {
            tracing::info!(entries = stale.len(), "removed stale splice peers");
        }
        Ok(SpliceMaps(Arc::new(Mutex::new(SpliceMapsInner {
            socks,
            peers,
            cpus,
        }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpliceMapsInner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `peer` the destination of what the socket `cookie` receives, once it is in
    /// `SPLICE_SOCKS`, with nothing counted yet.
    ///
    /// # Errors
    /// [`EbpfError::Map`] when the map refuses it (full, say).
    pub fn add_peer(&self, cookie: u64, peer: u64) -> Result<(), EbpfError> {
        let value = SplicePeer {
            peer_cookie: peer,
            bytes: 0,
        };
        let mut maps = self.lock();
        let values = aya::maps::PerCpuValues::try_from(vec![value; maps.cpus])
            .map_err(|source| EbpfError::Cpus { source })?;
        maps.peers
            .insert(cookie, values, BPF_NOEXIST)
            .map_err(|source| EbpfError::Map {
                op: "insert into",
                map: map_names::SPLICE_PEERS,
                source,
            })
    }

    /// Adds the socket `fd`, whose cookie is `cookie`, to `SPLICE_SOCKS`: from its next
    /// received segment on, the verdict program handles what it receives.
    ///
    /// # Errors
    /// [`EbpfError::Map`] when the kernel refuses it (a socket not established, a full map).
    pub fn add_socket(&self, cookie: u64, fd: &impl std::os::fd::AsRawFd) -> Result<(), EbpfError> {
        self.lock()
            .socks
            .insert(cookie, fd.as_raw_fd(), 0)
            .map_err(|source| EbpfError::Map {
                op: "insert into",
                map: map_names::SPLICE_SOCKS,
                source,
            })
    }

    /// Bytes the verdict program moved from the socket `cookie` to its peer so far.
    ///
    /// # Errors
    /// [`EbpfError::Map`] when the entry cannot be read (or is missing).
    pub fn bytes(&self, cookie: u64) -> Result<u64, EbpfError> {
        self.lock()
            .peers
            .get(&cookie, 0)
            .map(|copies| copies.iter().map(|copy| copy.bytes).sum())
            .map_err(|source| EbpfError::Map {
                op: "look up in",
                map: map_names::SPLICE_PEERS,
                source,
            })
    }

    /// Takes the socket `cookie` out of `SPLICE_SOCKS` (gone already, as a closed socket is,
    /// is fine).
    pub fn remove_socket(&self, cookie: u64) {
        let result = self.lock().socks.remove(&cookie);
        report_splice_removal(cookie, map_names::SPLICE_SOCKS, result);
    }

    /// Entries in `SPLICE_SOCKS` and `SPLICE_PEERS` now (two per open kernel splice).
    pub fn entries(&self) -> (usize, usize) {
        let maps = self.lock();
        (maps.socks.keys().count(), maps.peers.keys().count())
    }

    /// Removes the peer entry of the socket `cookie` (gone already is fine).
    pub fn remove_peer(&self, cookie: u64) {
        let result = self.lock().peers.remove(&cookie);
        report_splice_removal(cookie, map_names::SPLICE_PEERS, result);
    }
}

/// `bpf_map_update_elem` flag: fail if the key exists (a cookie is never in two splices).
const BPF_NOEXIST: u64 = 1;

fn report_splice_removal(cookie: u64, map: &'static str, result: Result<(), MapError>) {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => {}
        // A socket map reports a missing key as ENOENT from the syscall.
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {}
        Err(err) => tracing::warn!(cookie, map, error = %err, "failed to remove a splice entry"),
    }
}

/// `DNS_BINDINGS`: the addresses DNS answers gave each sandbox, until when. Shared by the
/// sandboxes' DNS services (which write it as they answer) and the engine (which removes
/// what expired and what a detached sandbox left); the lock is held for one map operation.
#[derive(Clone)]
pub struct DnsBindingMap(Arc<Mutex<HashMap<MapData, DnsBindingKey, DnsBinding>>>);

impl fmt::Debug for DnsBindingMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DnsBindingMap")
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => {
            let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        // Cannot fail for CLOCK_MONOTONIC; 0 would make every binding look expired (fail
        // closed) rather than eternal.
        Err(_) => 0,
    }
}

impl DnsBindingMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, DnsBindingKey, DnsBinding>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(sandbox_id: u32, ip: IpAddr) -> DnsBindingKey {
        DnsBindingKey {
            sandbox_id,
            addr: words_from_ip(ip),
        }
    }

    /// Binds `ip` to sandbox `sandbox_id` for `ttl` from now (replacing what was there);
    /// `bypass_only` when every name it was given for is a TLS bypass name.
    ///
    /// # Errors
    /// [`EbpfError::Map`] when the map cannot be written.
    pub fn bind(
        &self,
        sandbox_id: u32,
        ip: IpAddr,
        ttl: Duration,
        bypass_only: bool,
    ) -> Result<(), EbpfError> {
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let binding = DnsBinding {
            expires_ns: monotonic_ns().saturating_add(ttl_ns),
            flags: if bypass_only {
                DnsBinding::BYPASS_ONLY
            } else {
                0
            },
            _pad: 0,
        };
        self.lock()
            .insert(Self::key(sandbox_id, ip), binding, 0)
            .map_err(|source| EbpfError::Map {
                op: "insert into",
                map: map_names::DNS_BINDINGS,
                source,
            })
    }

    /// The binding of `ip` to `sandbox_id`, expired or not, if the map has one.
    ///
    /// # Errors
    /// [`EbpfError::Map`] when the map cannot be read.
    pub fn get(&self, sandbox_id: u32, ip: IpAddr) -> Result<Option<DnsBinding>, EbpfError> {
        match self.lock().get(&Self::key(sandbox_id, ip), 0) {
            Ok(binding) => Ok(Some(binding)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(EbpfError::Map {
                op: "look up in",
                map: map_names::DNS_BINDINGS,
                source,
            }),
        }
    }

    /// Removes the binding of `ip` to `sandbox_id` (gone already is fine).
    pub fn remove(&self, sandbox_id: u32, ip: IpAddr) {
        let result = self.lock().remove(&Self::key(sandbox_id, ip));
        report_removal(sandbox_id, map_names::DNS_BINDINGS, result);
    }

    /// Removes every binding of `sandbox_id` (it is detached); returns how many there were.
    pub fn remove_sandbox(&self, sandbox_id: u32) -> usize {
        self.remove_where(|key, _| key.sandbox_id == sandbox_id)
    }

    /// Removes every expired binding (the programs ignore them already: this only frees the
    /// entries); returns how many there were.
    pub fn remove_expired(&self) -> usize {
        let now = monotonic_ns();
        self.remove_where(|_, binding| binding.expires_ns <= now)
    }

    /// Removes the entries `doomed` picks: a walk under the lock, then one delete per lock.
    fn remove_where(&self, doomed: impl Fn(&DnsBindingKey, &DnsBinding) -> bool) -> usize {
        let keys: Vec<DnsBindingKey> = self
            .lock()
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, binding)| doomed(key, binding))
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            let result = self.lock().remove(key);
            report_removal(key.sandbox_id, map_names::DNS_BINDINGS, result);
        }
        keys.len()
    }
}

/// Programs attached to one sandbox cgroup. Pinned ones stay attached when this is dropped
/// (fail closed); [`Attachment::detach`] detaches every one.
#[derive(Debug)]
pub struct Attachment {
    links: Vec<AttachedLink>,
}

#[derive(Debug)]
enum AttachedLink {
    /// Detached when dropped (no pin dir: `gateway exec` on its own).
    Fd(FdLink),
    Pinned(pins::PinnedLinkGuard),
}

impl Attachment {
    /// Detaches every program; failures are logged (the cgroup may be gone already).
    pub fn detach(self) {
        for link in self.links {
            match link {
                AttachedLink::Fd(link) => drop(link),
                AttachedLink::Pinned(link) => {
                    if let Err(err) = link.detach() {
                        tracing::warn!(error = %err, "failed to detach a sandbox's program");
                    }
                }
            }
        }
    }

    /// How many programs are attached.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}
