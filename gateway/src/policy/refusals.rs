//! The daemon's side of the refusals made in eBPF: one rate-limited log line per refusal with
//! the sandbox, destination, protocol and the rule that refused it.
//!
//! Reasons: `address` (an address rule denies the destination), `tcp_port` and `udp_port` (a
//! port no list opens), `quic` (UDP to 443 while QUIC is blocked), `socket` (not a TCP or UDP
//! socket), and `unbound`: with DNS binding on, the destination is an address no DNS answer of
//! the gateway gave the sandbox (or whose binding expired: `[dns] binding_ttl_min..max` after
//! the answer) and no `allow_cidrs` rule allows. A sandbox reaches such an address by looking
//! its name up through the gateway first; an address literal it was never given is refused.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use gateway_common::Reason;
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::SandboxPolicy;
use crate::{ebpf::events::Refusal, sandbox::SandboxId};

/// Lines per sandbox per window; beyond that refusals are only counted, and the next line
/// says how many were not logged.
const LINES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

/// The policies of the sandboxes being served, to name the rule of each refusal.
pub type Policies = Arc<Mutex<HashMap<SandboxId, Arc<SandboxPolicy>>>>;

/// Reads refusal events until the ring buffer fails, logging each (rate-limited per sandbox).
pub async fn log_refusals(events: RingBuf<MapData>, policies: Policies) {
    // SAFETY: the ring buffer owns its map's descriptor, which stays open and the same for as
    // long as the AsyncFd owns the ring buffer.
    let mut events = match unsafe { AsyncFd::register(events) } {
        Ok(events) => events,
        Err(err) => {
            let (_, err) = err.into_parts();
            warn!(error = %err, "cannot watch refusal events; refusals are counted but not logged");
            return;
        }
    };
    let mut limiter = Limiter::default();
    loop {
        let mut guard = match events.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                warn!(error = %err, "refusal events failed; refusals are counted but no longer logged");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match Refusal::decode(&item) {
                Some(refusal) => log_one(&refusal, &policies, &mut limiter),
                None => warn!(bytes = item.len(), "undecodable refusal event"),
            }
        }
        guard.clear_ready();
    }
}

fn log_one(refusal: &Refusal, policies: &Policies, limiter: &mut Limiter) {
    let Some(suppressed) = limiter.admit(refusal.sandbox, Instant::now()) else {
        return;
    };
    let policy = policies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&refusal.sandbox)
        .cloned();
    let rule = describe(refusal, policy.as_deref());
    let destination = refusal
        .destination
        .map(|dst| dst.to_string())
        .unwrap_or_default();
    warn!(
        sandbox = %refusal.sandbox, reason = refusal.reason.name(), destination,
        protocol = %refusal.protocol_name(), rule, suppressed,
        "refused by policy"
    );
}

/// The rule behind a refusal, in words.
pub fn describe(refusal: &Refusal, policy: Option<&SandboxPolicy>) -> String {
    let port = refusal.destination.map_or(0, |dst| dst.port());
    match refusal.reason {
        Reason::Address => refusal
            .rule_id
            .and_then(|id| policy?.addrs.rule(id))
            .map_or_else(|| "a denied address".to_owned(), ToString::to_string),
        Reason::TcpPort => {
            format!("tcp port {port} is not in tls_ports, http_ports or allow_tcp_ports")
        }
        Reason::UdpPort => format!(
            "udp port {port} is not in allow_udp_ports (DNS, port 53, goes to the gateway's DNS service)"
        ),
        Reason::Quic => "block_quic (UDP to port 443)".to_owned(),
        Reason::Socket => format!(
            "only TCP and UDP sockets (socket type {}, protocol {})",
            refusal.sock_type,
            refusal.protocol_name()
        ),
        Reason::Unbound => "dns binding: no DNS answer gave the sandbox this address (or its \
                            binding expired), and no allow_cidrs rule allows it"
            .to_owned(),
    }
}

/// At most [`LINES_PER_WINDOW`] lines per sandbox per [`WINDOW`].
#[derive(Debug, Default)]
struct Limiter {
    sandboxes: HashMap<SandboxId, Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

impl Limiter {
    /// `Some(refusals not logged since the last line)` when this one may be logged.
    fn admit(&mut self, sandbox: SandboxId, now: Instant) -> Option<u64> {
        let window = self.sandboxes.entry(sandbox).or_insert(Window {
            start: now,
            lines: 0,
            suppressed: 0,
        });
        if now.duration_since(window.start) >= WINDOW {
            window.start = now;
            window.lines = 0;
        }
        if window.lines >= LINES_PER_WINDOW {
            window.suppressed += 1;
            return None;
        }
        window.lines += 1;
        Some(std::mem::take(&mut window.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_logs_a_burst_then_counts_what_it_skipped() {
        let mut limiter = Limiter::default();
        let start = Instant::now();
        let a = SandboxId(1);
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(limiter.admit(a, start), Some(0));
        }
        assert_eq!(limiter.admit(a, start), None);
        assert_eq!(limiter.admit(a, start), None);
        // Another sandbox has its own budget.
        assert_eq!(limiter.admit(SandboxId(2), start), Some(0));
        assert_eq!(limiter.admit(a, start + WINDOW), Some(2));
    }

    #[test]
    fn port_and_socket_rules_read_well() {
        let refusal = Refusal {
            sandbox: SandboxId(1),
            reason: Reason::TcpPort,
            destination: Some("198.51.100.7:22".parse().unwrap()),
            protocol: 6,
            sock_type: 1,
            rule_id: None,
        };
        assert_eq!(
            describe(&refusal, None),
            "tcp port 22 is not in tls_ports, http_ports or allow_tcp_ports"
        );
        let raw = Refusal {
            reason: Reason::Socket,
            destination: None,
            protocol: 1,
            sock_type: 2,
            ..refusal
        };
        assert_eq!(
            describe(&raw, None),
            "only TCP and UDP sockets (socket type 2, protocol icmp)"
        );
        let unbound = Refusal {
            reason: Reason::Unbound,
            ..refusal
        };
        assert!(describe(&unbound, None).starts_with("dns binding: no DNS answer"));
    }
}
