//! One sandbox connection, top to bottom: original destination → first bytes → route decision
//! → handler (refuse, splice, intercept) → one log line.

use std::{
    io,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_proto::{
    HostName,
    hello::{self, Incomplete, MAX_HELLO_LEN, Parsed},
    http_sniff::{self, Sniffed},
    sandbox_spec::SandboxName,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    ebpf::{EbpfError, OrigDstTable, SpliceMaps},
    http::{self, HostJudge, HttpError, Verdict},
    metrics::{HandshakeFailure, Metrics, Outcome},
    net::{ClientAddr, DialError, OrigDst, dial},
    policy::{
        PortKind, Refusal, Route, SandboxPolicy,
        bound::BoundNames,
        route::{First, Forbid, Intercept, Splice},
    },
    relay::{RelayError, RelayStats, Timeouts, relay},
    sandbox::{SandboxId, SandboxTag},
    secrets::{SandboxSecrets, SecretsFilter},
    splice::{self, SpliceMode},
    tls::{
        TlsContext,
        certs::Subject,
        intercept::{
            self, InterceptError, Intercepted, UpstreamFacts, UpstreamTls, own_alpn, send_alert,
        },
    },
};

/// What every connection of one sandbox needs.
#[derive(Debug)]
pub struct SandboxContext {
    /// The sandbox served.
    pub id: SandboxId,
    /// Its name.
    pub name: SandboxName,
    /// Where the eBPF programs recorded original destinations.
    pub orig_dst: OrigDstTable,
    /// Connection time limits.
    pub timeouts: Timeouts,
    /// What its connections are judged by; replaced as a whole on reload, read once per
    /// connection.
    pub state: Arc<RwLock<Arc<SandboxState>>>,
    /// The CA and forged certificates.
    pub tls: Arc<TlsContext>,
    /// Tracks connection tasks, so shutdown can let them finish.
    pub connections: TaskTracker,
    /// Open connections by mode, for every sandbox.
    pub stats: Arc<ConnStats>,
    /// This sandbox's open connections.
    pub open: AtomicUsize,
    /// Cancelled when the gateway stops waiting for connections to finish.
    pub cancel: CancellationToken,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
    /// Its name as the metrics label.
    pub label: Arc<str>,
    /// The names its DNS answers gave each address for (what an address may claim to be).
    pub dns_bindings: Arc<crate::dns::SandboxBindings>,
    /// The kernel splice maps, when splices are done in the kernel (`[tls] kernel_splice`).
    pub kernel_splice: Option<SpliceMaps>,
}

impl SandboxContext {
    /// The policy and secrets connections are judged by now.
    pub fn state(&self) -> Arc<SandboxState> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// How its connections report themselves.
    pub fn tag(&self) -> SandboxTag {
        SandboxTag {
            id: self.id,
            name: Arc::clone(&self.label),
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// This sandbox's connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A sandbox's policy and secrets, as one snapshot.
#[derive(Debug)]
pub struct SandboxState {
    /// The route decision's inputs.
    pub policy: Arc<SandboxPolicy>,
    /// The secrets it was given.
    pub secrets: Arc<SandboxSecrets>,
}

/// Connections open now, by mode.
#[derive(Debug, Default)]
pub struct ConnStats {
    open: [AtomicU64; Mode::ALL.len()],
}

impl ConnStats {
    fn opened(&self, mode: Mode) {
        self.open[mode as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn closed(&self, mode: Mode) {
        self.open[mode as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// (mode, open connections) for every mode.
    pub fn open_by_mode(&self) -> Vec<(String, u64)> {
        Mode::ALL
            .iter()
            .map(|mode| {
                (
                    mode.as_str().to_owned(),
                    self.open[*mode as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// Why one sandbox connection was not relayed, or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// No original destination was recorded: the client dialled the listener itself.
    #[error("no original destination recorded (connection was not redirected); refused")]
    NotRedirected,
    /// Reading `ORIG_DST` failed.
    #[error(transparent)]
    Lookup(#[from] EbpfError),
    /// The gateway stopped before the connection ended.
    #[error("gateway shutting down; connection closed")]
    Shutdown,
    /// The first bytes could not be read.
    #[error(transparent)]
    FirstBytes(#[from] FirstBytesError),
    /// The route decision refused the connection.
    #[error("{0}; refused")]
    Refused(Refusal),
    /// A splice could not reach its upstream.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// A splice failed midway.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The interception failed.
    #[error(transparent)]
    Intercept(#[from] InterceptError),
    /// The HTTP path (plain HTTP, or a 403 page) failed.
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl ConnError {
    /// Bytes moved before the failure.
    fn stats(&self) -> RelayStats {
        match self {
            ConnError::Relay(relay) => relay.stats,
            ConnError::Http(http) => http.stats(),
            _ => RelayStats::default(),
        }
    }
}

/// Why the first bytes of a connection could not be judged.
#[derive(Debug, thiserror::Error)]
pub enum FirstBytesError {
    /// The client sent nothing usable in time.
    #[error("no {expected} within {timeout:?} ({received} bytes received)")]
    Timeout {
        /// `ClientHello` or `HTTP request`.
        expected: &'static str,
        /// How long was waited.
        timeout: Duration,
        /// Bytes that had arrived.
        received: usize,
    },
    /// The client closed first.
    #[error("client closed after {received} bytes, before a complete {expected}")]
    Closed {
        /// `ClientHello` or `HTTP request`.
        expected: &'static str,
        /// Bytes that had arrived.
        received: usize,
    },
    /// The ClientHello (or an HTTP method) did not fit in the cap.
    #[error("first bytes larger than {MAX_HELLO_LEN} bytes without a verdict")]
    TooLarge,
    /// Reading from the client failed.
    #[error("reading the ClientHello: {0}")]
    Io(#[source] io::Error),
}

/// How a connection was handled, for its log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(usize)]
pub enum Mode {
    /// Not decided yet (failed before), or refused.
    #[default]
    Undecided,
    /// TLS terminated and re-encrypted.
    Intercept,
    /// Intercepted, to an upstream whose certificate is not verified (`verify = false`).
    InterceptUnverified,
    /// Intercepted and served request by request: the sandbox's secrets may go to this name.
    InterceptSecrets,
    /// Spliced raw by a bypass rule.
    Bypass,
    /// Not the port's protocol, relayed raw (plain_tcp = "relay").
    Plain,
    /// A denied name, answered with a 403 page after the handshake.
    Forbidden,
    /// Plain HTTP through the gateway.
    Http,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 8] = [
        Mode::Undecided,
        Mode::Intercept,
        Mode::InterceptUnverified,
        Mode::InterceptSecrets,
        Mode::Bypass,
        Mode::Plain,
        Mode::Forbidden,
        Mode::Http,
    ];

    /// The name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Undecided => "none",
            Mode::Intercept => "intercept",
            Mode::InterceptUnverified => "intercept-unverified",
            Mode::InterceptSecrets => "intercept-secrets",
            Mode::Bypass => "bypass",
            Mode::Plain => "plain",
            Mode::Forbidden => "forbidden",
            Mode::Http => "http",
        }
    }

    fn of(route: &Route) -> Mode {
        match route {
            Route::Refuse(_) => Mode::Undecided,
            Route::Splice(Splice::Bypass { .. }) => Mode::Bypass,
            Route::Splice(Splice::PlainTcp) => Mode::Plain,
            Route::Intercept(Intercept {
                http_aware: true, ..
            }) => Mode::InterceptSecrets,
            Route::Intercept(Intercept { verify: true, .. }) => Mode::Intercept,
            Route::Intercept(Intercept { verify: false, .. }) => Mode::InterceptUnverified,
            Route::Forbid(_) => Mode::Forbidden,
            Route::PlainHttp => Mode::Http,
        }
    }
}

/// What is learnt about a connection as it is handled, for its one log line.
#[derive(Debug, Default)]
struct ConnInfo {
    orig_dst: Option<OrigDst>,
    sni: Option<String>,
    mode: Mode,
    /// Whether `mode` was counted open in [`ConnStats`].
    counted: bool,
    upstream: UpstreamFacts,
    /// How a splice moved its bytes.
    splice: Option<SpliceMode>,
}

/// Handles one accepted connection and logs one line about it.
pub async fn handle(stream: TcpStream, client: ClientAddr, ctx: &SandboxContext) {
    let start = Instant::now();
    let mut info = ConnInfo::default();
    let state = ctx.state();
    ctx.open.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.connection_opened(&ctx.label);
    let result = tokio::select! {
        result = try_handle(stream, client, ctx, &state, &mut info) => result,
        () = ctx.cancel.cancelled() => Err(ConnError::Shutdown),
    };
    ctx.open.fetch_sub(1, Ordering::Relaxed);
    if info.counted {
        ctx.stats.closed(info.mode);
    }
    count_close(ctx, &info, &result);
    log_close(ctx.id, client, &info, start.elapsed(), &result);
}

/// The connection's figures in the metrics: by mode and outcome, its bytes, and why its
/// handshake failed.
fn count_close(ctx: &SandboxContext, info: &ConnInfo, result: &Result<RelayStats, ConnError>) {
    let (outcome, stats) = match result {
        Ok(stats) => (Outcome::Ok, *stats),
        Err(err) => {
            if let Some(reason) = handshake_failure(err) {
                ctx.metrics.handshake_failed(reason);
            }
            (Outcome::Error, err.stats())
        }
    };
    ctx.metrics.connection_closed(
        &ctx.label,
        info.mode.as_str(),
        outcome,
        stats.bytes_up,
        stats.bytes_down,
    );
}

/// The handshake step an interception failed at, if that is how it failed.
fn handshake_failure(err: &ConnError) -> Option<HandshakeFailure> {
    let ConnError::Intercept(err) = err else {
        return None;
    };
    Some(match err {
        InterceptError::Dial(_) => HandshakeFailure::UpstreamUnreachable,
        InterceptError::UpstreamTls { .. } => HandshakeFailure::UpstreamVerify,
        InterceptError::UpstreamTlsTimeout { .. } => HandshakeFailure::UpstreamTimeout,
        InterceptError::Cert(_) => HandshakeFailure::Certificate,
        InterceptError::ClientTls(_) => HandshakeFailure::ClientHandshake,
        InterceptError::ClientTlsTimeout { .. } => HandshakeFailure::ClientTimeout,
    })
}

async fn try_handle(
    mut stream: TcpStream,
    client: ClientAddr,
    ctx: &SandboxContext,
    state: &SandboxState,
    info: &mut ConnInfo,
) -> Result<RelayStats, ConnError> {
    let Some(entry) = ctx.orig_dst.take(&client.key(ctx.id))? else {
        // Nothing to tell the client; it only learns the connection is closed.
        let _ = stream.shutdown().await;
        return Err(ConnError::NotRedirected);
    };
    let dst = OrigDst::from(entry);
    info.orig_dst = Some(dst);
    let policy = &state.policy;
    if let Some(refusal) = policy.refuse_destination(dst) {
        return Err(ConnError::Refused(refusal));
    }
    let kind = policy.port_kind(dst.0.port()).unwrap_or(PortKind::Tls);
    // Both legs carry small interactive writes (TLS handshakes): do not delay them.
    let _ = stream.set_nodelay(true);
    let (prefix, first) = read_first_bytes(&mut stream, kind, ctx.timeouts.hello).await?;
    if let First::Hello(hello) = &first {
        info.sni = hello.sni.as_ref().map(ToString::to_string);
    }
    let bound = policy.bound(dst.0.ip(), ctx.dns_bindings.as_ref());
    let route = policy.route(dst, &first, &bound);
    info.mode = Mode::of(&route);
    ctx.stats.opened(info.mode);
    info.counted = true;
    let alpn_offer = match first {
        First::Hello(hello) => hello.alpn,
        First::Http | First::Other { .. } | First::Malformed { .. } => Vec::new(),
    };
    match route {
        Route::Refuse(refusal) => {
            if let Some(alert) = refusal.tls_alert() {
                send_alert(&mut stream, alert).await;
            }
            Err(ConnError::Refused(refusal))
        }
        Route::Splice(_) => {
            let (upstream, local) = dial(dst, ctx.timeouts.connect).await?;
            info.upstream.local = local;
            let kernel = ctx.kernel_splice.as_ref();
            let idle = ctx.timeouts.idle;
            Ok(splice::splice(kernel, stream, &prefix, upstream, idle, &mut info.splice).await?)
        }
        Route::Intercept(route) => {
            let intercepted = intercept::handshake(
                stream,
                prefix,
                &alpn_offer,
                dst,
                &route,
                &ctx.tls,
                ctx.timeouts,
                &mut info.upstream,
            )
            .await?;
            if route.http_aware {
                // Boxed, like the other rare branches: their futures would otherwise size
                // every connection's task, bypassed ones included.
                Box::pin(serve_http_aware(intercepted, dst, route, ctx, state)).await
            } else {
                let Intercepted {
                    client, upstream, ..
                } = intercepted;
                Ok(relay(client, upstream, ctx.timeouts.idle).await?)
            }
        }
        Route::Forbid(forbid) => {
            Box::pin(forbid_tls(stream, prefix, &alpn_offer, forbid, ctx)).await
        }
        Route::PlainHttp => {
            let judge = Arc::new(NameJudge {
                policy: Arc::clone(policy),
                dst,
                bound: Arc::clone(&ctx.dns_bindings) as Arc<dyn BoundNames>,
            });
            let filter = secrets_filter(state, ctx, true);
            Ok(Box::pin(http::plain::proxy(
                stream,
                prefix,
                dst,
                judge,
                filter,
                ctx.tag(),
                ctx.timeouts,
            ))
            .await?)
        }
    }
}

/// Serves an interception request by request (hyper on both sides, the upstream's protocol):
/// the sandbox's secrets are substituted in requests and scrubbed from responses, each request's
/// Host must be the SNI, and a closed upstream connection is opened again the same way.
async fn serve_http_aware(
    intercepted: Intercepted,
    dst: OrigDst,
    route: Intercept,
    ctx: &SandboxContext,
    state: &SandboxState,
) -> Result<RelayStats, ConnError> {
    let Subject::Dns(sni) = route.subject.clone() else {
        unreachable!("the route reads requests only for names a secret may go to");
    };
    let Intercepted {
        client,
        upstream,
        alpn,
    } = intercepted;
    let reopen = reopener(dst, route, alpn.clone(), ctx.timeouts);
    let upstream = http::aware::Upstream {
        stream: upstream,
        reopen,
    };
    let filter = secrets_filter(state, ctx, false);
    let served = http::aware::serve(
        client,
        alpn.as_deref(),
        upstream,
        &sni,
        filter,
        ctx.tag(),
        ctx.timeouts,
    );
    Ok(served.await?)
}

/// Opens further upstream connections of an HTTP-aware interception: the same destination,
/// connector and name, offering only the protocol the first one agreed on.
fn reopener(
    dst: OrigDst,
    route: Intercept,
    alpn: Option<Vec<u8>>,
    timeouts: Timeouts,
) -> http::aware::Opener<UpstreamTls> {
    let route = Arc::new(route);
    let offer: Arc<Vec<Vec<u8>>> = Arc::new(alpn.into_iter().collect());
    Arc::new(move || {
        let (route, offer) = (Arc::clone(&route), Arc::clone(&offer));
        Box::pin(async move {
            let (upstream, _local) =
                intercept::connect_upstream(dst, &route, &offer, timeouts).await?;
            Ok(upstream)
        })
    })
}

/// The filter substituting the sandbox's secrets (none when it was given none). Over plain
/// HTTP nothing is substituted and every placeholder is a violation.
fn secrets_filter(
    state: &SandboxState,
    ctx: &SandboxContext,
    cleartext: bool,
) -> Option<Arc<dyn http::Filter>> {
    if state.secrets.is_empty() {
        return None;
    }
    Some(Arc::new(SecretsFilter::new(
        state.secrets.current(),
        ctx.tag(),
        cleartext,
    )))
}

/// Completes the handshake of a denied name (no upstream is contacted) and answers every
/// request with a 403 page naming the host and the rule.
async fn forbid_tls(
    stream: TcpStream,
    prefix: Vec<u8>,
    alpn_offer: &[Vec<u8>],
    forbid: Forbid,
    ctx: &SandboxContext,
) -> Result<RelayStats, ConnError> {
    let alpn = own_alpn(alpn_offer);
    let subject = Subject::Dns(forbid.sni.clone());
    let client =
        intercept::accept_client(stream, prefix, &subject, alpn, &ctx.tls, ctx.timeouts).await?;
    let reason = forbid.denial.to_string();
    Ok(http::deny::forbid(client, alpn, &forbid.sni, &reason, ctx.tag(), ctx.timeouts).await?)
}

/// The sandbox's name rules and DNS binding, as the HTTP path asks them about each request's
/// Host on a connection to `dst`.
struct NameJudge {
    policy: Arc<SandboxPolicy>,
    dst: OrigDst,
    bound: Arc<dyn BoundNames>,
}

impl HostJudge for NameJudge {
    fn judge(&self, host: &HostName) -> Verdict {
        // Looked up per request: bindings expire and are renewed during a keep-alive connection.
        let bound = self.policy.bound(self.dst.0.ip(), self.bound.as_ref());
        match self.policy.judge_host(self.dst, host, &bound) {
            Ok(()) => Verdict::Allow,
            Err(denial) => Verdict::Deny {
                reason: denial.to_string(),
            },
        }
    }
}

/// Reads until the buffer holds what the port's protocol needs for a verdict (a whole
/// ClientHello on a TLS port, a method on an HTTP port); returns the bytes read (to replay)
/// and the verdict.
async fn read_first_bytes(
    client: &mut TcpStream,
    kind: PortKind,
    timeout: Duration,
) -> Result<(Vec<u8>, First), FirstBytesError> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            match judge_first_bytes(&buf, kind) {
                Ok(first) => return Ok(first),
                Err(Incomplete) if buf.len() >= MAX_HELLO_LEN => {
                    return Err(FirstBytesError::TooLarge);
                }
                Err(Incomplete) => {}
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(MAX_HELLO_LEN - buf.len());
            let n = client
                .read(&mut chunk[..want])
                .await
                .map_err(FirstBytesError::Io)?;
            if n == 0 {
                return Err(FirstBytesError::Closed {
                    expected: kind.first_message(),
                    received: buf.len(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    // The buffer is borrowed by the read future; its length is reported after it is dropped.
    let result = tokio::time::timeout(timeout, read).await;
    match result {
        Ok(Ok(first)) => Ok((buf, first)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(FirstBytesError::Timeout {
            expected: kind.first_message(),
            timeout,
            received: buf.len(),
        }),
    }
}

fn judge_first_bytes(buf: &[u8], kind: PortKind) -> Result<First, Incomplete> {
    Ok(match kind {
        PortKind::Tls => match hello::parse(buf)? {
            Parsed::Hello(hello) => First::Hello(hello),
            Parsed::NotTls { reason } => First::Other { reason },
            Parsed::Malformed { reason } => First::Malformed { reason },
        },
        PortKind::Http => match http_sniff::sniff_request(buf)? {
            Sniffed::Http => First::Http,
            Sniffed::NotHttp { reason } => First::Other { reason },
        },
    })
}

fn log_close(
    sandbox: SandboxId,
    client: ClientAddr,
    info: &ConnInfo,
    elapsed: Duration,
    result: &Result<RelayStats, ConnError>,
) {
    let duration_ms = elapsed.as_millis() as u64;
    let orig_dst = info.orig_dst.map(|d| d.to_string()).unwrap_or_default();
    let upstream_local = info
        .upstream
        .local
        .map(|a| a.to_string())
        .unwrap_or_default();
    let sni = info.sni.as_deref().unwrap_or("");
    let alpn = info.upstream.alpn.as_deref().unwrap_or("");
    let mode = info.mode.as_str();
    let splice = info.splice.map_or("", SpliceMode::as_str);
    match result {
        Ok(stats) => info!(
            sandbox = %sandbox, client = %client, orig_dst, sni, mode, splice, alpn,
            upstream_local, bytes_up = stats.bytes_up, bytes_down = stats.bytes_down,
            duration_ms, outcome = "ok",
            "connection closed"
        ),
        Err(err) => {
            let stats = err.stats();
            warn!(
                sandbox = %sandbox, client = %client, orig_dst, sni, mode, splice, alpn,
                upstream_local, bytes_up = stats.bytes_up, bytes_down = stats.bytes_down,
                duration_ms, outcome = "error", error = %err,
                "connection failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, path::Path, sync::Mutex};

    use gateway_proto::config::Config;

    use super::*;
    use crate::{policy::TlsPolicy, secrets::SecretScope};

    /// A table whose names for every address the test changes between requests.
    #[derive(Debug, Default)]
    struct Table(Mutex<Vec<HostName>>);

    impl Table {
        fn bind(&self, names: &[&str]) {
            *self.0.lock().unwrap() = names.iter().map(|n| HostName::parse(n).unwrap()).collect();
        }
    }

    impl BoundNames for Table {
        fn names(&self, _addr: IpAddr) -> Vec<HostName> {
            self.0.lock().unwrap().clone()
        }
    }

    fn judge(config: &str, table: &Arc<Table>) -> NameJudge {
        let config = Config::parse(config, Path::new("test.toml")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = Arc::new(TlsPolicy::new(&config.tls, &provider).unwrap());
        NameJudge {
            policy: Arc::new(SandboxPolicy::new(
                config.policy,
                tls,
                SecretScope::default(),
            )),
            dst: OrigDst("198.51.100.7:80".parse().unwrap()),
            bound: Arc::clone(table) as Arc<dyn BoundNames>,
        }
    }

    fn verdict(judge: &NameJudge, host: &str) -> Verdict {
        judge.judge(&HostName::parse(host).unwrap())
    }

    #[test]
    fn plain_http_hosts_must_be_bound_at_each_request_when_binding_is_on() {
        let table = Arc::new(Table::default());
        let judge = judge("[policy]\nallow_hosts = [\"*.plain.test\"]\n", &table);
        table.bind(&["a.plain.test"]);
        assert_eq!(verdict(&judge, "A.Plain.Test."), Verdict::Allow);
        assert_eq!(
            verdict(&judge, "b.plain.test"),
            Verdict::Deny {
                reason: "Host spoofing: b.plain.test is not a name DNS gave this sandbox for \
                         198.51.100.7 (names bound: a.plain.test)"
                    .into()
            }
        );
        // The binding expired between two requests of one connection.
        table.bind(&[]);
        assert!(matches!(
            verdict(&judge, "a.plain.test"),
            Verdict::Deny { .. }
        ));
        assert_eq!(
            verdict(&judge, "other.test"),
            Verdict::Deny {
                reason: "allow_hosts (no pattern matches)".into()
            }
        );
    }

    #[test]
    fn plain_http_hosts_are_judged_by_the_name_rules_alone_when_binding_is_off() {
        let table = Arc::new(Table::default());
        let judge = judge("[policy]\ndeny_hosts = [\"bad.test\"]\n", &table);
        assert_eq!(verdict(&judge, "any.test"), Verdict::Allow);
        assert!(matches!(verdict(&judge, "bad.test"), Verdict::Deny { .. }));
    }
}
