//! Prometheus metrics of the daemon, exposed in the OpenMetrics text format on a host-only
//! address (`serve`). Built on `prometheus-client`: counters and gauges are atomics in label
//! families, bumped from the connection paths; the eBPF counters are not pushed but read from
//! an [`EbpfSource`] when scraped.
//!
//! Label values are bounded: modes, outcomes, reasons, directions and status classes are fixed
//! sets; sandbox and secret names come from the operator, and past a cap further names are
//! counted under `other`. A removed sandbox's series go with it ([`Metrics::forget_sandbox`]).

mod labels;
mod serve;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicI64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracing::error;

use labels::BoundedLabels;
pub use labels::OTHER;
pub use serve::{CONTENT_TYPE, MetricsError, serve, serve_listener};

/// Distinct sandbox label values kept; sandboxes first seen once these are taken are counted
/// as `other` (the operator names sandboxes, hundreds at most, so this is a safety net).
pub const SANDBOX_LABEL_CAP: usize = 1024;
/// Distinct secret label values kept (secrets are named in the config, so far fewer in use).
pub const SECRET_LABEL_CAP: usize = 256;

/// Connection modes as `conn::Mode::as_str` names them; anything else is counted as `other`.
const MODES: [&str; 8] = [
    "none",
    "intercept",
    "intercept-unverified",
    "intercept-secrets",
    "bypass",
    "plain",
    "forbidden",
    "http",
];
/// HTTP status classes; a status outside 100..=599 is counted as `other`.
const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", OTHER];
/// `up`: from the sandbox to the upstream; `down`: back to the sandbox.
const DIRECTIONS: [&str; 2] = ["up", "down"];

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Closed normally (either side finished).
    Ok,
    /// Ended by an error, a refusal or a timeout.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 2] = [Outcome::Ok, Outcome::Error];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}

/// Why a TLS handshake (either leg of an interception) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The upstream's certificate did not verify.
    UpstreamVerify,
    /// The upstream could not be reached or its handshake failed otherwise.
    UpstreamUnreachable,
    /// The upstream's TCP connect or handshake took longer than `connect_timeout`.
    UpstreamTimeout,
    /// The sandbox client's handshake with the forged certificate failed.
    ClientHandshake,
    /// The sandbox client did not finish its handshake within `hello_timeout`.
    ClientTimeout,
    /// No certificate could be forged for the name.
    Certificate,
}

impl HandshakeFailure {
    /// Every reason, so each series exists (at 0) from the start.
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::UpstreamVerify,
        HandshakeFailure::UpstreamUnreachable,
        HandshakeFailure::UpstreamTimeout,
        HandshakeFailure::ClientHandshake,
        HandshakeFailure::ClientTimeout,
        HandshakeFailure::Certificate,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::UpstreamVerify => "upstream_verify",
            HandshakeFailure::UpstreamUnreachable => "upstream_unreachable",
            HandshakeFailure::UpstreamTimeout => "upstream_timeout",
            HandshakeFailure::ClientHandshake => "client_handshake",
            HandshakeFailure::ClientTimeout => "client_timeout",
            HandshakeFailure::Certificate => "certificate",
        }
    }
}

/// Where the eBPF counters are read from at scrape time (the daemon's map access).
pub trait EbpfSource: Send + Sync {
    /// Global counters by name (`redirected_v4`, `redirected_v6`, `established`, `map_errors`,
    /// `refused`), summed over CPUs.
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// Refusals by sandbox name and reason (`address`, `tcp_port`, `udp_port`, `quic`,
    /// `socket`, `unbound`), summed over CPUs; only sandboxes still attached.
    fn refusals(&self) -> Vec<(String, &'static str, u64)>;
    /// DNS queries by sandbox name and result (`answered`, `refused`, `failed`), counted by the
    /// sandboxes' DNS services; only sandboxes still attached.
    fn dns_queries(&self) -> Vec<(String, &'static str, u64)> {
        Vec::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    sandbox: Arc<str>,
    mode: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    sandbox: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    sandbox: Arc<str>,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    sandbox: Arc<str>,
    code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabels {
    sandbox: Arc<str>,
    secret: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

/// The label families the daemon bumps. Each is a handle onto what the registry encodes.
#[derive(Debug, Default)]
struct Families {
    connections: Family<ConnectionLabels, Counter>,
    connections_open: Family<SandboxLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    secret_violations: Family<SecretLabels, Counter>,
    cert_cache: Family<CacheLabels, Counter>,
    certs_generated: Counter,
    bypassed_at_connect: Family<SandboxLabels, Counter>,
}

impl Families {
    /// Registers every family. Counter names carry no `_total`: the encoder appends it.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_connections",
            "Connections through the gateway that ended, by sandbox, mode and outcome",
            self.connections.clone(),
        );
        registry.register(
            "gateway_connections_open",
            "Connections through the gateway now open, by sandbox",
            self.connections_open.clone(),
        );
        registry.register(
            "gateway_bytes",
            "Bytes relayed by ended connections, by sandbox and direction (up: to the upstream)",
            self.bytes.clone(),
        );
        registry.register(
            "gateway_handshake_failures",
            "TLS handshakes of interceptions that failed, by reason",
            self.handshake_failures.clone(),
        );
        registry.register(
            "gateway_http_requests",
            "HTTP requests answered through the gateway, by sandbox and status class",
            self.http_requests.clone(),
        );
        registry.register(
            "gateway_secret_violations",
            "Secret placeholders headed where their secret may not go, by sandbox and secret",
            self.secret_violations.clone(),
        );
        registry.register(
            "gateway_cert_cache",
            "Forged-certificate cache lookups, by result (hit, miss)",
            self.cert_cache.clone(),
        );
        registry.register(
            "gateway_certs_generated",
            "Certificates forged",
            self.certs_generated.clone(),
        );
        registry.register(
            "gateway_bypassed_at_connect",
            "Connections left alone at connect (their address bound only to bypass names) that \
             established, by sandbox",
            self.bypassed_at_connect.clone(),
        );
    }

    /// Creates the series of fixed label sets, so dashboards see zeros rather than nothing.
    fn create_fixed_series(&self) {
        for reason in HandshakeFailure::ALL {
            self.handshake_failures
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc_by(0);
        }
        for result in ["hit", "miss"] {
            self.cert_cache
                .get_or_create(&CacheLabels { result })
                .inc_by(0);
        }
    }

    /// Removes every series labelled with `sandbox`; `secrets` are the secret labels in use.
    fn remove_sandbox(&self, sandbox: &Arc<str>, secrets: &[Arc<str>]) {
        let sandbox = Arc::clone(sandbox);
        for mode in MODES.iter().copied().chain([OTHER]) {
            for outcome in Outcome::ALL {
                self.connections.remove(&ConnectionLabels {
                    sandbox: sandbox.clone(),
                    mode,
                    outcome: outcome.as_str(),
                });
            }
        }
        self.connections_open.remove(&SandboxLabels {
            sandbox: sandbox.clone(),
        });
        self.bypassed_at_connect.remove(&SandboxLabels {
            sandbox: sandbox.clone(),
        });
        for direction in DIRECTIONS {
            self.bytes.remove(&BytesLabels {
                sandbox: sandbox.clone(),
                direction,
            });
        }
        for code_class in CODE_CLASSES {
            self.http_requests.remove(&HttpLabels {
                sandbox: sandbox.clone(),
                code_class,
            });
        }
        for secret in secrets {
            self.secret_violations.remove(&SecretLabels {
                sandbox: sandbox.clone(),
                secret: secret.clone(),
            });
        }
    }
}

/// The daemon's metrics: created once, shared as `Arc<Metrics>`. Every method is a few atomic
/// operations plus short, synchronous lock sections (never held across an `.await`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Families,
    sandboxes: Arc<BoundedLabels>,
    secrets: BoundedLabels,
    ebpf: Arc<EbpfCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The registry with every family, sandbox and secret labels capped at
    /// [`SANDBOX_LABEL_CAP`] and [`SECRET_LABEL_CAP`].
    pub fn new() -> Metrics {
        Metrics::with_caps(SANDBOX_LABEL_CAP, SECRET_LABEL_CAP)
    }

    /// As [`Metrics::new`], with other caps on distinct sandbox and secret label values.
    pub fn with_caps(sandbox_cap: usize, secret_cap: usize) -> Metrics {
        let families = Families::default();
        families.create_fixed_series();
        let sandboxes = Arc::new(BoundedLabels::new(sandbox_cap));
        let ebpf = Arc::new(EbpfCollector {
            source: RwLock::new(None),
            sandboxes: Arc::clone(&sandboxes),
        });
        let mut registry = Registry::default();
        families.register(&mut registry);
        registry.register_collector(Box::new(Arc::clone(&ebpf)));
        Metrics {
            registry,
            families,
            sandboxes,
            secrets: BoundedLabels::new(secret_cap),
            ebpf,
        }
    }

    /// A connection of `sandbox` was accepted.
    pub fn connection_opened(&self, sandbox: &str) {
        let sandbox = self.sandboxes.label(sandbox);
        self.families
            .connections_open
            .get_or_create(&SandboxLabels { sandbox })
            .inc();
    }

    /// A connection of `sandbox` ended: counted by mode (`conn::Mode::as_str`) and outcome,
    /// its bytes added, and the open gauge lowered.
    pub fn connection_closed(
        &self,
        sandbox: &str,
        mode: &str,
        outcome: Outcome,
        bytes_up: u64,
        bytes_down: u64,
    ) {
        let sandbox = self.sandboxes.label(sandbox);
        self.families
            .connections
            .get_or_create(&ConnectionLabels {
                sandbox: sandbox.clone(),
                mode: mode_label(mode),
                outcome: outcome.as_str(),
            })
            .inc();
        self.add_bytes(&sandbox, "up", bytes_up);
        self.add_bytes(&sandbox, "down", bytes_down);
        self.lower_open(sandbox);
    }

    fn add_bytes(&self, sandbox: &Arc<str>, direction: &'static str, bytes: u64) {
        self.families
            .bytes
            .get_or_create(&BytesLabels {
                sandbox: sandbox.clone(),
                direction,
            })
            .inc_by(bytes);
    }

    /// Lowers the open gauge, never below zero and without creating it: a close reported
    /// after [`Metrics::forget_sandbox`] must not leave a series at -1.
    fn lower_open(&self, sandbox: Arc<str>) {
        if let Some(open) = self
            .families
            .connections_open
            .get(&SandboxLabels { sandbox })
        {
            saturating_decrement(open.inner());
        }
    }

    /// A TLS handshake of an interception failed.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.families
            .handshake_failures
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// A request of `sandbox` (plain HTTP or HTTP-aware interception) was answered with `status`.
    pub fn http_request(&self, sandbox: &str, status: u16) {
        let sandbox = self.sandboxes.label(sandbox);
        self.families
            .http_requests
            .get_or_create(&HttpLabels {
                sandbox,
                code_class: code_class(status),
            })
            .inc();
    }

    /// A placeholder of `secret` from `sandbox` was headed somewhere its secret may not go.
    pub fn secret_violation(&self, sandbox: &str, secret: &str) {
        let sandbox = self.sandboxes.label(sandbox);
        let secret = self.secrets.label(secret);
        self.families
            .secret_violations
            .get_or_create(&SecretLabels { sandbox, secret })
            .inc();
    }

    /// A lookup in the forged-certificate cache found a usable certificate (`hit`) or not.
    pub fn cert_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.families
            .cert_cache
            .get_or_create(&CacheLabels { result })
            .inc();
    }

    /// A certificate was forged.
    pub fn cert_generated(&self) {
        self.families.certs_generated.inc();
    }

    /// A connection of `sandbox` was left alone at connect (bypassed) and established.
    pub fn bypassed_at_connect(&self, sandbox: &str) {
        let sandbox = self.sandboxes.label(sandbox);
        self.families
            .bypassed_at_connect
            .get_or_create(&SandboxLabels { sandbox })
            .inc();
    }

    /// Where the eBPF counters come from from now on (replacing any earlier source).
    pub fn set_ebpf_source(&self, source: Arc<dyn EbpfSource>) {
        *self
            .ebpf
            .source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(source);
    }

    /// Removes the series of a sandbox that is gone and frees its label for another. Call it
    /// once its connections have ended; a sandbox counted as `other` leaves `other` alone.
    pub fn forget_sandbox(&self, sandbox: &str) {
        if let Some(label) = self.sandboxes.forget(sandbox) {
            self.families.remove_sandbox(&label, &self.secrets.in_use());
        }
    }

    /// Every family in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label set.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            error!(%error, "encoding metrics failed");
        }
        text
    }
}

/// The label value of a connection mode: itself when it is one of [`MODES`], else `other`.
fn mode_label(mode: &str) -> &'static str {
    MODES
        .iter()
        .copied()
        .find(|known| *known == mode)
        .unwrap_or(OTHER)
}

/// `2xx` and the like; `other` for a status outside 100..=599.
fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => OTHER,
    }
}

fn saturating_decrement(value: &AtomicI64) {
    // Err means the value was already 0: nothing to lower.
    let _ = value.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        (v > 0).then(|| v - 1)
    });
}

/// Reads the eBPF counters from the [`EbpfSource`] on each scrape.
struct EbpfCollector {
    source: RwLock<Option<Arc<dyn EbpfSource>>>,
    /// The same sandbox labels as the connection families, so one cap bounds both.
    sandboxes: Arc<BoundedLabels>,
}

impl fmt::Debug for EbpfCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self
            .source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        f.debug_struct("EbpfCollector")
            .field("source_set", &set)
            .finish_non_exhaustive()
    }
}

impl Collector for EbpfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Cloned out so the map reads below run without the lock.
        let source = self
            .source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(source) = source else {
            return Ok(());
        };
        encode_events(&mut encoder, &source.counters())?;
        encode_refusals(&mut encoder, &self.refusals_by_label(source.refusals()))?;
        encode_dns(&mut encoder, &self.refusals_by_label(source.dns_queries()))
    }
}

impl EbpfCollector {
    /// Counts summed by sandbox label (several sandboxes may share `other`), then reason (or
    /// result).
    fn refusals_by_label(
        &self,
        refusals: Vec<(String, &'static str, u64)>,
    ) -> BTreeMap<(Arc<str>, &'static str), u64> {
        let mut summed = BTreeMap::new();
        for (sandbox, reason, count) in refusals {
            let entry = summed
                .entry((self.sandboxes.label(&sandbox), reason))
                .or_insert(0u64);
            *entry = entry.saturating_add(count);
        }
        summed
    }
}

fn encode_events(
    encoder: &mut DescriptorEncoder,
    counters: &[(&'static str, u64)],
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "gateway_ebpf_events",
        "Events counted by the eBPF programs, by event.",
        None,
        MetricType::Counter,
    )?;
    for (event, value) in counters {
        let labels = [("event", *event)];
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_refusals(
    encoder: &mut DescriptorEncoder,
    refusals: &BTreeMap<(Arc<str>, &'static str), u64>,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "gateway_refusals",
        "Connects, sends and sockets refused in the kernel, by sandbox and reason.",
        None,
        MetricType::Counter,
    )?;
    for ((sandbox, reason), value) in refusals {
        let labels = [("sandbox", &**sandbox), ("reason", *reason)];
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_dns(
    encoder: &mut DescriptorEncoder,
    queries: &BTreeMap<(Arc<str>, &'static str), u64>,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "gateway_dns_queries",
        "DNS queries of sandboxes to the gateway's DNS service, by sandbox and result.",
        None,
        MetricType::Counter,
    )?;
    for ((sandbox, result), value) in queries {
        let labels = [("sandbox", &**sandbox), ("result", *result)];
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
