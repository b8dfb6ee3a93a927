//! What the metrics endpoint reads from the engine at scrape time: the eBPF counters and each
//! attached sandbox's refusals, by the sandbox's name.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use gateway_common::{Reason, Refusals};
use tracing::debug;

use crate::{ebpf::Counts, metrics::EbpfSource};

/// The names of the attached sandboxes, by id; shared by the engine (which keeps it current)
/// and the metrics source.
#[derive(Debug, Clone, Default)]
pub struct Attached(Arc<Mutex<BTreeMap<u32, Arc<str>>>>);

impl Attached {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Arc<str>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sandbox `id` is attached as `name`.
    pub fn insert(&self, id: u32, name: Arc<str>) {
        self.lock().insert(id, name);
    }

    /// Sandbox `id` is detached.
    pub fn remove(&self, id: u32) {
        self.lock().remove(&id);
    }

    /// Whether a sandbox named `name` is attached.
    pub fn has_name(&self, name: &str) -> bool {
        self.lock().values().any(|n| &**n == name)
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
            .map(|(id, name)| (*id, Arc::clone(name)))
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
}

/// A sandbox's refusals as (reason label, count).
fn by_reason(refusals: &Refusals) -> [(&'static str, u64); 5] {
    [
        (Reason::Address.name(), refusals.address),
        (Reason::TcpPort.name(), refusals.tcp_port),
        (Reason::UdpPort.name(), refusals.udp_port),
        (Reason::Quic.name(), refusals.quic),
        (Reason::Socket.name(), refusals.socket),
    ]
}
