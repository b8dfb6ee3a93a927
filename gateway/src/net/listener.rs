//! A sandbox's listener: bound to 127.0.0.1 and ::1 inside the sandbox's network namespace,
//! accepting redirected connections and handing each, with its original destination, to the
//! interception flow.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    ebpf::{EbpfError, OrigDstTable},
    net::{ClientAddr, OrigDst},
    relay::{RelayStats, Timeouts},
    sandbox::{SandboxId, netns::NetNs},
    tls::{
        TlsContext,
        intercept::{self, ConnInfo, InterceptError},
    },
};

/// Pending-connection queue of each listening socket.
const BACKLOG: i32 = 4096;
/// How many random ports are tried for one free on both 127.0.0.1 and ::1.
const BIND_ATTEMPTS: usize = 32;

/// Errors opening a sandbox's listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Creating or binding a listening socket failed.
    #[error("{op} listener on {addr}: {source}")]
    Bind {
        op: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// No port was free on both loopback addresses.
    #[error("no port free on both 127.0.0.1 and ::1 after {BIND_ATTEMPTS} attempts")]
    NoCommonPort,
    /// Entering the sandbox's network namespace failed.
    #[error(transparent)]
    NetNs(#[from] crate::sandbox::netns::NetNsError),
}

/// Why one sandbox connection was not relayed, or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// No original destination was recorded: the client dialled the listener itself.
    #[error("no original destination recorded (connection was not redirected); refused")]
    NotRedirected,
    /// The original destination is this host's loopback, which sandboxes must not reach.
    #[error("original destination {dst} is host-local; refused")]
    HostLocal { dst: OrigDst },
    /// Reading `ORIG_DST` failed.
    #[error(transparent)]
    Lookup(#[from] EbpfError),
    /// The gateway stopped before the connection ended.
    #[error("gateway shutting down; connection closed")]
    Shutdown,
    /// Reading the ClientHello, reaching the upstream, TLS or the relay failed.
    #[error(transparent)]
    Intercept(#[from] InterceptError),
}

impl ConnError {
    /// Bytes moved before the failure.
    fn stats(&self) -> RelayStats {
        match self {
            ConnError::Intercept(InterceptError::Relay(relay)) => relay.stats,
            _ => RelayStats::default(),
        }
    }
}

/// The listening sockets of one sandbox.
#[derive(Debug)]
pub struct BoundListener {
    /// Port shared by both addresses.
    pub port: u16,
    v4: std::net::TcpListener,
    v6: Option<std::net::TcpListener>,
}

/// Binds 127.0.0.1:P and [::1]:P (same P) inside `netns`, or in the host namespace.
pub fn bind(netns: Option<&NetNs>) -> Result<BoundListener, ListenError> {
    match netns {
        Some(ns) => ns.run(bind_here)?,
        None => bind_here(),
    }
}

fn bind_here() -> Result<BoundListener, ListenError> {
    for _ in 0..BIND_ATTEMPTS {
        let v4 = listen_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let port = v4
            .local_addr()
            .map_err(|source| ListenError::Bind {
                op: "inspect",
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                source,
            })?
            .port();
        match listen_on(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
            Ok(v6) => {
                return Ok(BoundListener {
                    port,
                    v4,
                    v6: Some(v6),
                });
            }
            Err(ListenError::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
                continue;
            }
            Err(ListenError::Bind { source, .. })
                if source.kind() == io::ErrorKind::AddrNotAvailable =>
            {
                warn!(
                    port,
                    "no ::1 in this network namespace; IPv6 connections cannot be redirected"
                );
                return Ok(BoundListener { port, v4, v6: None });
            }
            Err(err) => return Err(err),
        }
    }
    Err(ListenError::NoCommonPort)
}

fn listen_on(addr: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    let err = |op| move |source| ListenError::Bind { op, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(err("create"))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err("configure"))?;
    }
    socket.set_reuse_address(true).map_err(err("configure"))?;
    socket.set_nonblocking(true).map_err(err("configure"))?;
    socket.bind(&addr.into()).map_err(err("bind"))?;
    socket.listen(BACKLOG).map_err(err("listen"))?;
    Ok(socket.into())
}

/// What a sandbox's accept loop needs.
#[derive(Debug)]
pub struct SandboxContext {
    /// The sandbox served.
    pub id: SandboxId,
    /// Where the eBPF programs recorded original destinations.
    pub orig_dst: OrigDstTable,
    /// Connection time limits.
    pub timeouts: Timeouts,
    /// TLS interception state shared by every sandbox.
    pub tls: Arc<TlsContext>,
    /// Tracks connection tasks, so shutdown can let them finish.
    pub connections: TaskTracker,
    /// Cancelled when the gateway stops waiting for connections to finish.
    pub cancel: CancellationToken,
}

impl BoundListener {
    /// Registers the sockets with tokio (must run inside the runtime).
    pub fn into_tokio(self) -> io::Result<Vec<TcpListener>> {
        let mut listeners = vec![TcpListener::from_std(self.v4)?];
        if let Some(v6) = self.v6 {
            listeners.push(TcpListener::from_std(v6)?);
        }
        Ok(listeners)
    }
}

/// Accepts connections forever, handling each on its own task.
pub async fn serve(listener: TcpListener, ctx: Arc<SandboxContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let conn_ctx = Arc::clone(&ctx);
                ctx.connections
                    .spawn(async move { handle(stream, ClientAddr(peer), &conn_ctx).await });
            }
            Err(err) => {
                // Typically EMFILE: back off rather than spin.
                warn!(sandbox = %ctx.id, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Handles one connection and logs one line about it.
async fn handle(stream: TcpStream, client: ClientAddr, ctx: &SandboxContext) {
    let start = Instant::now();
    let mut orig_dst = None;
    let mut info = ConnInfo::default();
    let result = tokio::select! {
        result = try_handle(stream, client, ctx, &mut orig_dst, &mut info) => result,
        () = ctx.cancel.cancelled() => Err(ConnError::Shutdown),
    };
    let duration_ms = start.elapsed().as_millis() as u64;
    let orig_dst = orig_dst.map(|d| d.to_string()).unwrap_or_default();
    let upstream_local = info
        .upstream_local
        .map(|a| a.to_string())
        .unwrap_or_default();
    let sni = info.sni.as_deref().unwrap_or("");
    let alpn = info.alpn.as_deref().unwrap_or("");
    let mode = info.mode.as_str();
    match result {
        Ok(stats) => info!(
            sandbox = %ctx.id, client = %client, orig_dst, sni, mode, alpn, upstream_local,
            bytes_up = stats.bytes_up, bytes_down = stats.bytes_down, duration_ms, outcome = "ok",
            "connection closed"
        ),
        Err(err) => {
            let stats = err.stats();
            warn!(
                sandbox = %ctx.id, client = %client, orig_dst, sni, mode, alpn, upstream_local,
                bytes_up = stats.bytes_up, bytes_down = stats.bytes_down, duration_ms,
                outcome = "error", error = %err,
                "connection failed"
            );
        }
    }
}

async fn try_handle(
    mut stream: TcpStream,
    client: ClientAddr,
    ctx: &SandboxContext,
    orig_dst: &mut Option<OrigDst>,
    info: &mut ConnInfo,
) -> Result<RelayStats, ConnError> {
    let entry = ctx.orig_dst.take(&client.key(ctx.id))?;
    let Some(entry) = entry else {
        let _ = stream.shutdown().await;
        return Err(ConnError::NotRedirected);
    };
    let dst = OrigDst::from(entry);
    *orig_dst = Some(dst);
    if dst.is_host_local() {
        return Err(ConnError::HostLocal { dst });
    }
    // Both legs carry small interactive writes (TLS handshakes): do not delay them.
    let _ = stream.set_nodelay(true);
    Ok(intercept::handle(stream, dst, &ctx.tls, ctx.timeouts, info).await?)
}
