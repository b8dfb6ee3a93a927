//! A sandbox's DNS sockets: a UDP socket and a TCP listener on each address, all on one port,
//! created inside the sandbox's network namespace (from a thread that entered it, like
//! [`crate::net::listener`]) and served from tokio in the host's.

use std::{
    io,
    net::{SocketAddr, TcpListener, UdpSocket},
};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

use crate::sandbox::netns::{NetNs, NetNsError};

/// Pending-connection queue of each TCP listener.
const BACKLOG: i32 = 1024;
/// How many random ports are tried for one free on every address, UDP and TCP.
const BIND_ATTEMPTS: usize = 32;

/// Errors opening a sandbox's DNS sockets.
#[derive(Debug, thiserror::Error)]
pub enum DnsListenError {
    /// Creating, configuring or binding one socket failed.
    #[error("{op} DNS {protocol} socket on {addr}: {source}")]
    Socket {
        /// What was being done (`create`, `bind`, ...).
        op: &'static str,
        /// `UDP` or `TCP`.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// No port was free for UDP and TCP on every address asked for with port 0.
    #[error("no port free for DNS (UDP and TCP) on all of {} after {BIND_ATTEMPTS} attempts", list(.addrs))]
    NoCommonPort {
        /// The addresses asked for.
        addrs: Vec<SocketAddr>,
    },
    /// Not one of the addresses exists in the namespace (or none was given).
    #[error("no address to serve DNS on (asked for: {})", list(.addrs))]
    NoAddress {
        /// The addresses asked for.
        addrs: Vec<SocketAddr>,
    },
    /// Entering the sandbox's network namespace failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
}

fn list(addrs: &[SocketAddr]) -> String {
    if addrs.is_empty() {
        return "nothing".to_owned();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The bound (not yet served) DNS sockets of one sandbox.
#[derive(Debug)]
pub struct BoundDns {
    pub(super) sockets: Vec<SocketPair>,
}

/// A UDP socket and a TCP listener on one address.
#[derive(Debug)]
pub(super) struct SocketPair {
    pub(super) addr: SocketAddr,
    pub(super) udp: UdpSocket,
    pub(super) tcp: TcpListener,
}

impl BoundDns {
    /// The addresses served (ports filled in).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|pair| pair.addr).collect()
    }
}

/// Binds UDP and TCP on each of `addrs` inside `netns`, or in the host namespace. Addresses
/// given with port 0 all get one port, free for UDP and TCP on each of them; an IPv6 address
/// the namespace lacks (no `::1`) is skipped with a warning, as long as one address is left.
///
/// # Errors
/// [`DnsListenError`] when a socket cannot be bound, no common port is found, or the
/// namespace cannot be entered.
pub fn bind(netns: Option<&NetNs>, addrs: &[SocketAddr]) -> Result<BoundDns, DnsListenError> {
    match netns {
        Some(ns) => ns.run(|| bind_here(addrs))?,
        None => bind_here(addrs),
    }
}

fn bind_here(addrs: &[SocketAddr]) -> Result<BoundDns, DnsListenError> {
    'attempt: for _ in 0..BIND_ATTEMPTS {
        let mut shared_port: Option<u16> = None;
        let mut sockets = Vec::with_capacity(addrs.len());
        for &asked in addrs {
            let mut addr = asked;
            if asked.port() == 0
                && let Some(port) = shared_port
            {
                addr.set_port(port);
            }
            match bind_pair(addr) {
                Ok(pair) => {
                    if asked.port() == 0 {
                        shared_port = Some(pair.addr.port());
                    }
                    sockets.push(pair);
                }
                // Taken on this address (or for TCP): try another port everywhere.
                Err(DnsListenError::Socket { source, .. })
                    if asked.port() == 0 && source.kind() == io::ErrorKind::AddrInUse =>
                {
                    continue 'attempt;
                }
                Err(DnsListenError::Socket { source, .. })
                    if asked.is_ipv6() && source.kind() == io::ErrorKind::AddrNotAvailable =>
                {
                    warn!(addr = %asked, "no such address in this network namespace; DNS is not served there");
                }
                Err(error) => return Err(error),
            }
        }
        if sockets.is_empty() {
            return Err(DnsListenError::NoAddress {
                addrs: addrs.to_vec(),
            });
        }
        return Ok(BoundDns { sockets });
    }
    Err(DnsListenError::NoCommonPort {
        addrs: addrs.to_vec(),
    })
}

/// UDP on `addr` (port 0: any), then TCP on the same address and port.
fn bind_pair(addr: SocketAddr) -> Result<SocketPair, DnsListenError> {
    let udp = udp_on(addr)?;
    let addr = udp.local_addr().map_err(error("inspect", "UDP", addr))?;
    let tcp = tcp_on(addr)?;
    Ok(SocketPair { addr, udp, tcp })
}

fn error(
    op: &'static str,
    protocol: &'static str,
    addr: SocketAddr,
) -> impl Fn(io::Error) -> DnsListenError {
    move |source| DnsListenError::Socket {
        op,
        protocol,
        addr,
        source,
    }
}

fn udp_on(addr: SocketAddr) -> Result<UdpSocket, DnsListenError> {
    let err = |op| error(op, "UDP", addr);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("create"))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err("configure"))?;
    }
    socket.set_nonblocking(true).map_err(err("configure"))?;
    socket.bind(&addr.into()).map_err(err("bind"))?;
    Ok(socket.into())
}

fn tcp_on(addr: SocketAddr) -> Result<TcpListener, DnsListenError> {
    let err = |op| error(op, "TCP", addr);
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn port_zero_gets_one_port_for_udp_and_tcp_on_every_address() {
        let addrs = [
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        ];
        let bound = bind(None, &addrs).unwrap();
        let served = bound.local_addrs();
        assert!(!served.is_empty());
        let port = served[0].port();
        assert_ne!(port, 0);
        for pair in &bound.sockets {
            assert_eq!(pair.addr.port(), port);
            assert_eq!(pair.udp.local_addr().unwrap(), pair.addr);
            assert_eq!(pair.tcp.local_addr().unwrap(), pair.addr);
        }
    }

    #[test]
    fn a_taken_explicit_port_is_an_error_naming_it() {
        let taken = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind(None, &[addr]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("bind DNS UDP socket on {addr}: ")),
            "{error}"
        );
        assert!(matches!(
            bind(None, &[]).unwrap_err(),
            DnsListenError::NoAddress { .. }
        ));
    }
}
