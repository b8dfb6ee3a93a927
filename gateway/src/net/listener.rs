//! A sandbox's listener: bound to 127.0.0.1 and ::1 inside the sandbox's network namespace,
//! accepting redirected connections and handing each to [`crate::conn`].

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tracing::warn;

use crate::{
    conn::{self, SandboxContext},
    net::ClientAddr,
    sandbox::netns::NetNs,
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

/// The listening sockets of one sandbox.
#[derive(Debug)]
pub struct BoundListener {
    /// Port shared by both addresses.
    pub port: u16,
    v4: std::net::TcpListener,
    v6: Option<std::net::TcpListener>,
}

/// Binds 127.0.0.1:P and [::1]:P (same P) inside `netns`, or in the host namespace; P is
/// `preferred` when it is free (an adopted sandbox keeps its listener's port, which its pinned
/// config names), else any free port.
pub fn bind(netns: Option<&NetNs>, preferred: Option<u16>) -> Result<BoundListener, ListenError> {
    let bind = move || {
        preferred
            .and_then(|port| bind_port(port).ok())
            .map_or_else(bind_here, Ok)
    };
    match netns {
        Some(ns) => ns.run(bind)?,
        None => bind(),
    }
}

/// Binds both addresses on `port`.
fn bind_port(port: u16) -> Result<BoundListener, ListenError> {
    let v4 = listen_on(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    let v6 = match listen_on(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
        Ok(v6) => Some(v6),
        Err(ListenError::Bind { source, .. })
            if source.kind() == io::ErrorKind::AddrNotAvailable =>
        {
            None
        }
        Err(err) => return Err(err),
    };
    Ok(BoundListener { port, v4, v6 })
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

impl BoundListener {
    /// Registers the sockets with tokio (must run inside the runtime).
    pub fn into_tokio(self) -> Result<Vec<TcpListener>, ListenError> {
        let port = self.port;
        let register = |listener: std::net::TcpListener, addr: SocketAddr| {
            TcpListener::from_std(listener).map_err(|source| ListenError::Bind {
                op: "register",
                addr,
                source,
            })
        };
        let mut listeners = vec![register(self.v4, (Ipv4Addr::LOCALHOST, port).into())?];
        if let Some(v6) = self.v6 {
            listeners.push(register(v6, (Ipv6Addr::LOCALHOST, port).into())?);
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
                    .spawn(async move { conn::handle(stream, ClientAddr(peer), &conn_ctx).await });
            }
            Err(err) => {
                // Typically EMFILE: back off rather than spin.
                warn!(sandbox = %ctx.id, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
