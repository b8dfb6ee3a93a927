//! Each sandbox's DNS service as the engine runs it: its sockets on 127.0.0.1 and ::1 inside
//! the sandbox's network namespace (where the eBPF programs send every port-53 connect and
//! send), its policy (the sandbox's name rules, as last reloaded), and its bindings (a
//! [`SandboxBindings`] table written through to the eBPF `DNS_BINDINGS` map); plus the reader
//! of the connections bypassed at connect.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use gateway_common::BYPASS_EVENTS_POLL_MS;
use gateway_proto::HostName;
use tokio::{io::unix::AsyncFd, time::MissedTickBehavior};
use tracing::{info, warn};

use super::observed::Attached;
use crate::{
    conn::SandboxState,
    dns::{self, BindingSink, Bindings, BoundDns, DnsListenError, DnsPolicy, SandboxBindings},
    ebpf::{DnsBindingMap, events::Bypass},
    metrics::Metrics,
    sandbox::{SandboxId, netns::NetNs},
};

/// Binds a sandbox's DNS sockets: UDP and TCP on 127.0.0.1 and ::1 (when the namespace has
/// it), one port for all, `preferred` when it is free (an adopted sandbox keeps the port its
/// pinned config names, which its connected sockets point at), else any free one.
pub fn bind(netns: Option<&NetNs>, preferred: Option<u16>) -> Result<BoundDns, DnsListenError> {
    let addrs = |port| {
        [
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ]
    };
    if let Some(port) = preferred {
        match dns::bind(netns, &addrs(port)) {
            Ok(bound) => return Ok(bound),
            Err(error) => {
                warn!(port, %error, "the DNS service's previous port is taken; using another");
            }
        }
    }
    dns::bind(netns, &addrs(0))
}

/// The port of bound DNS sockets (they all share one).
pub fn port_of(bound: &BoundDns) -> u16 {
    bound.local_addrs().first().map_or(0, SocketAddr::port)
}

/// Writes a sandbox's bindings to the eBPF map; failures are logged (the address is then
/// refused as unbound, or not bypassed: the safe side).
#[derive(Debug)]
pub struct EbpfSink {
    /// The map.
    pub map: DnsBindingMap,
    /// The sandbox whose bindings these are.
    pub sandbox: SandboxId,
}

impl BindingSink for EbpfSink {
    fn write(&self, addr: IpAddr, valid_for: Duration, bypass_only: bool) {
        if let Err(error) = self.map.bind(self.sandbox.0, addr, valid_for, bypass_only) {
            warn!(sandbox = %self.sandbox, %addr, %error, "DNS binding not written; the address stays unbound");
        }
    }

    fn remove(&self, addr: IpAddr) {
        self.map.remove(self.sandbox.0, addr);
    }
}

/// The policy and bindings a sandbox's DNS service works with: judged by the sandbox's current
/// state (so a reload applies to the next query), bound into its table.
pub struct Hooks {
    /// The sandbox's state, replaced on reload.
    pub state: Arc<RwLock<Arc<SandboxState>>>,
    /// Its bindings.
    pub bindings: Arc<SandboxBindings>,
}

impl Hooks {
    fn state(&self) -> Arc<SandboxState> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl DnsPolicy for Hooks {
    fn judge(&self, name: &HostName) -> Result<(), String> {
        self.state()
            .policy
            .names
            .judge(name)
            .map_err(|denial| denial.to_string())
    }
}

impl Bindings for Hooks {
    fn bind(&self, addr: IpAddr, name: &HostName, ttl: Duration) {
        let bypass = self.state().policy.tls.bypass.matches(name);
        self.bindings.bind(addr, name, ttl, bypass);
    }
}

/// Reads the connections bypassed at connect until the ring buffer fails, logging each with
/// the names its address was given for, and counting it.
pub async fn log_bypasses(events: RingBuf<MapData>, attached: Attached, metrics: Arc<Metrics>) {
    // SAFETY: the ring buffer owns its map's descriptor, which stays open and the same for as
    // long as the AsyncFd owns the ring buffer.
    let mut events = match unsafe { AsyncFd::register(events) } {
        Ok(events) => events,
        Err(err) => {
            let (_, err) = err.into_parts();
            warn!(error = %err, "cannot watch bypass events; bypassed connections are counted but not logged");
            return;
        }
    };
    // The programs wake the reader only when the buffer fills up (see `report_bypass` in
    // gateway-ebpf); otherwise it is read on this timer.
    let mut tick = tokio::time::interval(Duration::from_millis(BYPASS_EVENTS_POLL_MS));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = events.readable_mut() => match ready {
                Ok(mut guard) => {
                    drain_bypasses(guard.get_inner_mut(), &attached, &metrics);
                    guard.clear_ready();
                }
                Err(err) => {
                    warn!(error = %err, "bypass events failed; bypassed connections are counted but no longer logged");
                    return;
                }
            },
            _ = tick.tick() => drain_bypasses(events.get_mut(), &attached, &metrics),
        }
    }
}

fn drain_bypasses(ring: &mut RingBuf<MapData>, attached: &Attached, metrics: &Metrics) {
    while let Some(item) = ring.next() {
        match Bypass::decode(&item) {
            Some(bypass) => log_one(&bypass, attached, metrics),
            None => warn!(bytes = item.len(), "undecodable bypass event"),
        }
    }
}

fn log_one(bypass: &Bypass, attached: &Attached, metrics: &Metrics) {
    let sandbox = attached.get(bypass.sandbox.0);
    let names = sandbox
        .as_ref()
        .map(|s| s.bindings.names(bypass.destination.ip()))
        .unwrap_or_default();
    let names: Vec<&str> = names.iter().map(HostName::as_str).collect();
    if let Some(sandbox) = &sandbox {
        metrics.bypassed_at_connect(&sandbox.name);
    }
    info!(
        sandbox = %bypass.sandbox, destination = %bypass.destination, names = names.join(","),
        "connection bypassed at connect"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use gateway_proto::{
        Pattern,
        config::{PolicyConfig, TlsConfig},
    };

    use super::*;
    use crate::{
        policy::{SandboxPolicy, TlsPolicy},
        secrets::{SecretScope, SecretStore},
    };

    /// Records what would go to the eBPF map: (address, bypass only).
    #[derive(Default)]
    struct Recorded(Mutex<Vec<(IpAddr, bool)>>);

    impl BindingSink for Recorded {
        fn write(&self, addr: IpAddr, _valid_for: Duration, bypass_only: bool) {
            self.0.lock().unwrap().push((addr, bypass_only));
        }

        fn remove(&self, _addr: IpAddr) {}
    }

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    fn host(text: &str) -> HostName {
        HostName::parse(text).unwrap()
    }

    fn state(policy: PolicyConfig) -> Arc<SandboxState> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = TlsConfig {
            bypass: vec![pattern("*.bank.test")],
            ..TlsConfig::default()
        };
        let tls = Arc::new(TlsPolicy::new(&tls, &provider).unwrap());
        let secrets = Arc::new(SecretStore::load(&[]).unwrap());
        Arc::new(SandboxState {
            policy: Arc::new(SandboxPolicy::new(policy, tls, SecretScope::default())),
            secrets: Arc::new(secrets.for_sandbox(&[]).unwrap()),
        })
    }

    #[test]
    fn queries_are_judged_by_the_name_rules_and_answers_bound_with_the_bypass_patterns() {
        let policy = PolicyConfig {
            deny_hosts: vec![pattern("denied.test")],
            ..PolicyConfig::default()
        };
        let state = state(policy);
        assert!(!state.policy.dns_binding());
        let sink = Arc::new(Recorded::default());
        let hooks = Hooks {
            state: Arc::new(RwLock::new(state)),
            bindings: Arc::new(SandboxBindings::new(sink.clone())),
        };
        assert_eq!(
            hooks.judge(&host("denied.test")),
            Err("deny_hosts denied.test".to_owned())
        );
        assert_eq!(hooks.judge(&host("fine.test")), Ok(()));

        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        hooks.bind(addr, &host("pay.bank.test"), Duration::from_secs(60));
        hooks.bind(addr, &host("fine.test"), Duration::from_secs(60));
        assert_eq!(*sink.0.lock().unwrap(), [(addr, true), (addr, false)]);
        assert_eq!(hooks.bindings.names(addr).len(), 2);
    }

    #[test]
    fn an_allow_list_turns_binding_on() {
        let state = state(PolicyConfig {
            allow_hosts: vec![pattern("ok.test")],
            ..PolicyConfig::default()
        });
        assert!(state.policy.dns_binding());
    }
}
