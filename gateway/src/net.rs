//! Network plumbing: typed addresses, the per-sandbox listener, dialling upstreams, and the
//! read-ahead wrapper under TLS.

pub mod addr;
pub mod listener;
pub mod read_ahead;

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

pub use addr::{ClientAddr, OrigDst};
pub use read_ahead::ReadAhead;

/// Why an upstream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The connect failed.
    #[error("connecting to {dst}: {source}")]
    Connect {
        /// Where.
        dst: OrigDst,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The upstream did not accept in time.
    #[error("connecting to {dst}: no answer within {timeout:?}")]
    Timeout {
        /// Where.
        dst: OrigDst,
        /// How long was waited.
        timeout: Duration,
    },
}

/// Connects to `dst` from the host's network namespace within `timeout`; also returns the
/// local address (for the connection's log line).
pub async fn dial(
    dst: OrigDst,
    timeout: Duration,
) -> Result<(TcpStream, Option<SocketAddr>), DialError> {
    let upstream = tokio::time::timeout(timeout, TcpStream::connect(dst.0))
        .await
        .map_err(|_| DialError::Timeout { dst, timeout })?
        .map_err(|source| DialError::Connect { dst, source })?;
    // Handshakes are small interactive writes: do not delay them. Failing to set it only
    // costs latency.
    let _ = upstream.set_nodelay(true);
    let local = upstream.local_addr().ok();
    Ok((upstream, local))
}
