//! What the metrics endpoint and the event readers take from the engine: the eBPF counters,
//! and each attached sandbox's name, refusals, DNS counts and bindings, by id.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use gateway_common::{Reason, Refusals};
use tracing::debug;

use crate::{
    dns::{DnsCounters, SandboxBindings},
    ebpf::Counts,
    metrics::EbpfSource,
};

/// What is shared about one attached sandbox.
#[derive(Debug, Clone)]
pub struct AttachedSandbox {
    /// Its name (the metrics label).
    pub name: Arc<str>,
    /// What its DNS service did.
    pub dns: Arc<DnsCounters>,
    /// The names its addresses were given for.
    pub bindings: Arc<SandboxBindings>,
}

/// The attached sandboxes, by id; shared by the engine (which keeps it current), the metrics
/// source and the bypass log.
#[derive(Debug, Clone, Default)]
pub struct Attached(Arc<Mutex<BTreeMap<u32, AttachedSandbox>>>);

impl Attached {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, AttachedSandbox>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sandbox `id` is attached.
    pub fn insert(&self, id: u32, sandbox: AttachedSandbox) {
        self.lock().insert(id, sandbox);
    }

    /// Sandbox `id` is detached.
    pub fn remove(&self, id: u32) {
        self.lock().remove(&id);
    }

    /// Sandbox `id`, if attached.
    pub fn get(&self, id: u32) -> Option<AttachedSandbox> {
        self.lock().get(&id).cloned()
    }

    /// Whether a sandbox named `name` is attached.
    pub fn has_name(&self, name: &str) -> bool {
        self.lock().values().any(|s| &*s.name == name)
    }
}

/// The eBPF side of the metrics.
#[derive(Debug)]
pub struct EbpfMetrics {
    /// The maps.
    pub counts: Counts,
    /// Whose refusals to report.
    pub attached: Attached,
}

impl EbpfSource for EbpfMetrics {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        match self.counts.counters() {
            Ok(counters) => counters.into_iter().collect(),
            Err(err) => {
                debug!(error = %err, "counters unreadable for the metrics");
                Vec::new()
            }
        }
    }

    fn refusals(&self) -> Vec<(String, &'static str, u64)> {
        let attached: Vec<(u32, Arc<str>)> = self
            .attached
            .lock()
            .iter()
            .map(|(id, sandbox)| (*id, Arc::clone(&sandbox.name)))
            .collect();
        let mut rows = Vec::new();
        for (id, name) in attached {
            // A sandbox detached meanwhile has no entry any more: nothing to report.
            let Ok(refusals) = self.counts.refusals(id) else {
                continue;
            };
            rows.extend(
                by_reason(&refusals)
                    .into_iter()
                    .map(|(reason, n)| (name.to_string(), reason, n)),
            );
        }
        rows
    }

    fn dns_queries(&self) -> Vec<(String, &'static str, u64)> {
        let mut rows = Vec::new();
        for sandbox in self.attached.lock().values() {
            let stats = sandbox.dns.stats();
            for (result, n) in [
                ("answered", stats.answered),
                ("refused", stats.refused),
                ("failed", stats.failed),
            ] {
                rows.push((sandbox.name.to_string(), result, n));
            }
        }
        rows
    }
}

/// A sandbox's refusals as (reason label, count).
fn by_reason(refusals: &Refusals) -> [(&'static str, u64); 6] {
    [
        (Reason::Address.name(), refusals.address),
        (Reason::TcpPort.name(), refusals.tcp_port),
        (Reason::UdpPort.name(), refusals.udp_port),
        (Reason::Quic.name(), refusals.quic),
        (Reason::Socket.name(), refusals.socket),
        (Reason::Unbound.name(), refusals.unbound),
    ]
}
