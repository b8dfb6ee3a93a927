//! Interception mechanics, once the route says intercept: TLS to the upstream first (the
//! client's SNI and ALPN offer, through the chosen connector), then the client's handshake with
//! a forged certificate offering the ALPN the upstream chose. What is relayed over the two is
//! `conn`'s business.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    TlsContext,
    certs::{CertError, Subject},
};
use crate::{
    net::{DialError, OrigDst, ReadAhead, dial},
    policy::route::Intercept,
    relay::Timeouts,
};

/// TLS alert descriptions sent to the client when interception cannot proceed.
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_INTERNAL_ERROR: u8 = 80;

/// Why an interception failed.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The upstream could not be reached.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The upstream TLS handshake failed (e.g. its certificate did not verify).
    #[error("upstream TLS with {dst} failed: {source}")]
    UpstreamTls {
        /// The upstream.
        dst: OrigDst,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The upstream TLS handshake did not finish in time.
    #[error("upstream TLS with {dst}: no handshake within {timeout:?}")]
    UpstreamTlsTimeout {
        /// The upstream.
        dst: OrigDst,
        /// How long was waited.
        timeout: Duration,
    },
    /// No certificate could be forged.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The client's TLS handshake with the forged certificate failed.
    #[error("client TLS handshake failed: {0}")]
    ClientTls(#[source] io::Error),
    /// The client's handshake did not finish in time.
    #[error("client TLS handshake: not finished within {timeout:?}")]
    ClientTlsTimeout {
        /// How long was waited.
        timeout: Duration,
    },
}

/// What the interception learnt about the upstream side, for the connection's log line (also
/// when it fails).
#[derive(Debug, Default)]
pub struct UpstreamFacts {
    /// The local address of the upstream connection.
    pub local: Option<SocketAddr>,
    /// The ALPN protocol the upstream chose.
    pub alpn: Option<String>,
}

/// Both sides of an interception once their handshakes are done: what is relayed (as bytes,
/// or request by request on the HTTP-aware path).
#[derive(Debug)]
pub struct Intercepted {
    /// The client, talking to the forged certificate.
    pub client: ClientTls,
    /// The upstream, verified through the route's connector.
    pub upstream: UpstreamTls,
    /// The protocol both sides agreed on (the upstream's choice, offered to the client).
    pub alpn: Option<Vec<u8>>,
}

/// The upstream side of an interception.
pub type UpstreamTls = tokio_rustls::client::TlsStream<ReadAhead<TcpStream>>;

/// Intercepts `client`, whose ClientHello (offering `alpn_offer`) is `prefix`, to `dst`: TLS
/// to the upstream first, then the client's handshake with a forged certificate offering the
/// protocol the upstream chose. A client whose upstream cannot be reached gets an alert at once.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces come from different owners"
)]
pub async fn handshake(
    mut client: TcpStream,
    prefix: Vec<u8>,
    alpn_offer: &[Vec<u8>],
    dst: OrigDst,
    route: &Intercept,
    tls: &TlsContext,
    timeouts: Timeouts,
    facts: &mut UpstreamFacts,
) -> Result<Intercepted, InterceptError> {
    let upstream = match connect_upstream(dst, route, alpn_offer, timeouts).await {
        Ok((upstream, local)) => {
            facts.local = local;
            upstream
        }
        Err(err) => {
            send_alert(&mut client, ALERT_HANDSHAKE_FAILURE).await;
            return Err(err);
        }
    };
    let alpn = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    facts.alpn = alpn
        .as_deref()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let client = accept_client(
        client,
        prefix,
        &route.subject,
        alpn.as_deref(),
        tls,
        timeouts,
    )
    .await?;
    Ok(Intercepted {
        client,
        upstream,
        alpn,
    })
}

/// Dials `dst` and does the upstream TLS handshake for `route` (its connector and server name),
/// offering `alpn_offer`; also returns the local address.
pub async fn connect_upstream(
    dst: OrigDst,
    route: &Intercept,
    alpn_offer: &[Vec<u8>],
    timeouts: Timeouts,
) -> Result<(UpstreamTls, Option<SocketAddr>), InterceptError> {
    let (tcp, local) = dial(dst, timeouts.connect).await?;
    let mut config = (*route.connector).clone();
    config.alpn_protocols = alpn_offer.to_vec();
    let connect = TlsConnector::from(Arc::new(config))
        .connect(route.server_name.clone(), ReadAhead::new(tcp));
    match tokio::time::timeout(timeouts.connect, connect).await {
        Ok(Ok(upstream)) => Ok((upstream, local)),
        Ok(Err(source)) => Err(InterceptError::UpstreamTls { dst, source }),
        Err(_) => Err(InterceptError::UpstreamTlsTimeout {
            dst,
            timeout: timeouts.connect,
        }),
    }
}

/// Completes the client's handshake with a certificate forged for `subject`, offering `alpn`
/// (the protocol chosen for the client; `None` for no ALPN). A certificate that cannot be made
/// gets the client an alert.
pub async fn accept_client(
    mut client: TcpStream,
    prefix: Vec<u8>,
    subject: &Subject,
    alpn: Option<&[u8]>,
    tls: &TlsContext,
    timeouts: Timeouts,
) -> Result<ClientTls, InterceptError> {
    let server_config = match tls.certs.server_config(subject, alpn).await {
        Ok(config) => config,
        Err(err) => {
            send_alert(&mut client, ALERT_INTERNAL_ERROR).await;
            return Err(err.into());
        }
    };
    let accept = TlsAcceptor::from(server_config).accept(ReadAhead::with_prefix(prefix, client));
    tokio::time::timeout(timeouts.hello, accept)
        .await
        .map_err(|_| InterceptError::ClientTlsTimeout {
            timeout: timeouts.hello,
        })?
        .map_err(InterceptError::ClientTls)
}

/// The client side of an interception, after the handshake.
pub type ClientTls = tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>;

/// The protocol to offer a client when no upstream chose one (a denied name is answered by
/// the gateway itself): HTTP/2 when the client offers it, else HTTP/1.1 when offered, else
/// none.
pub fn own_alpn(offer: &[Vec<u8>]) -> Option<&'static [u8]> {
    [b"h2".as_slice(), b"http/1.1".as_slice()]
        .into_iter()
        .find(|protocol| offer.iter().any(|offered| offered == protocol))
}

/// Sends a fatal TLS alert in a plaintext record (valid before the server's first flight).
pub async fn send_alert(client: &mut TcpStream, description: u8) {
    let record = [21, 3, 3, 0, 2, 2, description];
    let _ = client.write_all(&record).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_alpn_prefers_h2() {
        let offer = |protocols: &[&[u8]]| protocols.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        assert_eq!(own_alpn(&offer(&[b"http/1.1", b"h2"])), Some(&b"h2"[..]));
        assert_eq!(own_alpn(&offer(&[b"http/1.1"])), Some(&b"http/1.1"[..]));
        assert_eq!(own_alpn(&offer(&[b"spdy/3"])), None);
        assert_eq!(own_alpn(&[]), None);
    }
}
