//! One sandbox connection after its original destination is known: read the ClientHello, then
//! refuse it, splice it raw (bypass, or plain TCP when allowed), or intercept it: TLS to the
//! upstream first (client's SNI and ALPN offer), then the client's handshake with a forged
//! certificate offering the ALPN the upstream chose, then relay.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls_pki_types::ServerName as PkiServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    TlsContext,
    certs::{CertError, Subject},
    hello::{self, ClientHello, MAX_HELLO_LEN, Parsed},
};
use crate::{
    config::PlainTcp,
    net::OrigDst,
    relay::{RelayError, RelayStats, Timeouts, relay, relay_tcp},
};

/// TLS alert descriptions sent to the client when interception cannot proceed.
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_INTERNAL_ERROR: u8 = 80;

/// Why an intercepted (or bypassed) connection failed.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The client sent nothing usable within the hello timeout.
    #[error("no ClientHello within {timeout:?} ({received} bytes received)")]
    HelloTimeout { timeout: Duration, received: usize },
    /// The client closed before completing its ClientHello.
    #[error("client closed after {received} bytes, before a complete ClientHello")]
    HelloClosed { received: usize },
    /// The ClientHello did not fit in the cap.
    #[error("ClientHello larger than {MAX_HELLO_LEN} bytes")]
    HelloTooLarge,
    /// Not TLS, and plain TCP is refused.
    #[error("not TLS ({reason}); refused (plain_tcp = \"refuse\")")]
    NotTls { reason: &'static str },
    /// Reading from the client failed.
    #[error("reading the ClientHello: {0}")]
    ClientIo(#[source] io::Error),
    /// The upstream could not be reached.
    #[error("connecting to {dst}: {source}")]
    Connect {
        dst: OrigDst,
        #[source]
        source: io::Error,
    },
    /// The upstream did not accept in time.
    #[error("connecting to {dst}: no answer within {timeout:?}")]
    ConnectTimeout { dst: OrigDst, timeout: Duration },
    /// The SNI cannot be used as a TLS server name upstream.
    #[error("SNI {sni:?} is not a valid DNS name")]
    BadSni { sni: String },
    /// The upstream TLS handshake failed (e.g. its certificate did not verify).
    #[error("upstream TLS with {dst} failed: {source}")]
    UpstreamTls {
        dst: OrigDst,
        #[source]
        source: io::Error,
    },
    /// The upstream TLS handshake did not finish in time.
    #[error("upstream TLS with {dst}: no handshake within {timeout:?}")]
    UpstreamTlsTimeout { dst: OrigDst, timeout: Duration },
    /// No certificate could be forged.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The client's TLS handshake with the forged certificate failed.
    #[error("client TLS handshake failed: {0}")]
    ClientTls(#[source] io::Error),
    /// The client's handshake did not finish in time.
    #[error("client TLS handshake: not finished within {timeout:?}")]
    ClientTlsTimeout { timeout: Duration },
    /// The relay failed midway.
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// How a connection was handled, for its log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Not decided yet (failed before).
    #[default]
    Undecided,
    /// TLS terminated and re-encrypted.
    Intercept,
    /// Intercepted, to an upstream whose certificate is not verified (`verify = false`).
    InterceptUnverified,
    /// Spliced raw by a bypass rule.
    Bypass,
    /// Not TLS, relayed raw (plain_tcp = "relay").
    Plain,
}

impl Mode {
    /// The name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Undecided => "none",
            Mode::Intercept => "intercept",
            Mode::InterceptUnverified => "intercept-unverified",
            Mode::Bypass => "bypass",
            Mode::Plain => "plain",
        }
    }
}

/// What is learnt about a connection as it is handled, for its one log line.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// The SNI, if any.
    pub sni: Option<String>,
    /// How it was handled.
    pub mode: Mode,
    /// The ALPN protocol the upstream chose.
    pub alpn: Option<String>,
    /// The local address of the upstream connection.
    pub upstream_local: Option<std::net::SocketAddr>,
}

/// Handles one connection whose original destination is `dst`.
pub async fn handle(
    mut client: TcpStream,
    dst: OrigDst,
    tls: &TlsContext,
    timeouts: Timeouts,
    info: &mut ConnInfo,
) -> Result<RelayStats, InterceptError> {
    let (prefix, parsed) = read_hello(&mut client, tls.hello_timeout).await?;
    let hello = match parsed {
        Parsed::Hello(hello) => hello,
        Parsed::NotTls { reason } => {
            return match tls.plain_tcp {
                PlainTcp::Refuse => Err(InterceptError::NotTls { reason }),
                PlainTcp::Relay => {
                    info.mode = Mode::Plain;
                    splice(client, prefix, dst, timeouts, info).await
                }
            };
        }
    };
    info.sni = hello.sni.as_ref().map(ToString::to_string);
    if hello
        .sni
        .as_ref()
        .is_some_and(|name| tls.is_bypassed(name.as_str()))
    {
        info.mode = Mode::Bypass;
        return splice(client, prefix, dst, timeouts, info).await;
    }
    info.mode = Mode::Intercept;
    intercept(client, prefix, hello, dst, tls, timeouts, info).await
}

/// Reads until the buffer holds a complete ClientHello or is judged not to be one.
async fn read_hello(
    client: &mut TcpStream,
    timeout: Duration,
) -> Result<(Vec<u8>, Parsed), InterceptError> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            match hello::parse(&buf) {
                Ok(parsed) => return Ok(parsed),
                Err(hello::Incomplete) if buf.len() >= MAX_HELLO_LEN => {
                    return Err(InterceptError::HelloTooLarge);
                }
                Err(hello::Incomplete) => {}
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(MAX_HELLO_LEN - buf.len());
            let n = client
                .read(&mut chunk[..want])
                .await
                .map_err(InterceptError::ClientIo)?;
            if n == 0 {
                return Err(InterceptError::HelloClosed {
                    received: buf.len(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    // The buffer is borrowed by the read future; its length is reported after it is dropped.
    let result = tokio::time::timeout(timeout, read).await;
    match result {
        Ok(Ok(parsed)) => Ok((buf, parsed)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(InterceptError::HelloTimeout {
            timeout,
            received: buf.len(),
        }),
    }
}

async fn dial(
    dst: OrigDst,
    timeout: Duration,
    info: &mut ConnInfo,
) -> Result<TcpStream, InterceptError> {
    let upstream = tokio::time::timeout(timeout, TcpStream::connect(dst.0))
        .await
        .map_err(|_| InterceptError::ConnectTimeout { dst, timeout })?
        .map_err(|source| InterceptError::Connect { dst, source })?;
    info.upstream_local = upstream.local_addr().ok();
    let _ = upstream.set_nodelay(true);
    Ok(upstream)
}

/// Raw splice to the original destination, replaying what was read.
async fn splice(
    client: TcpStream,
    prefix: Vec<u8>,
    dst: OrigDst,
    timeouts: Timeouts,
    info: &mut ConnInfo,
) -> Result<RelayStats, InterceptError> {
    let mut upstream = dial(dst, timeouts.connect, info).await?;
    upstream
        .write_all(&prefix)
        .await
        .map_err(|source| RelayError {
            direction: "client->upstream",
            stats: RelayStats::default(),
            source,
        })?;
    let mut stats = relay_tcp(client, upstream, timeouts.idle).await?;
    stats.bytes_up += prefix.len() as u64;
    Ok(stats)
}

async fn intercept(
    mut client: TcpStream,
    prefix: Vec<u8>,
    hello: ClientHello,
    dst: OrigDst,
    tls: &TlsContext,
    timeouts: Timeouts,
    info: &mut ConnInfo,
) -> Result<RelayStats, InterceptError> {
    let (subject, server_name) = match &hello.sni {
        Some(name) => {
            let server_name = PkiServerName::try_from(name.as_str().to_string()).map_err(|_| {
                InterceptError::BadSni {
                    sni: name.to_string(),
                }
            })?;
            (Subject::Dns(name.clone()), server_name)
        }
        None => (
            Subject::Ip(dst.0.ip()),
            PkiServerName::IpAddress(dst.0.ip().into()),
        ),
    };
    let upstream_tcp = match dial(dst, timeouts.connect, info).await {
        Ok(upstream) => upstream,
        Err(err) => {
            // The client learns at once that this connection will not work.
            send_alert(&mut client, ALERT_HANDSHAKE_FAILURE).await;
            return Err(err);
        }
    };
    let (base, verify) = tls
        .connectors
        .for_name(hello.sni.as_ref().map(|n| n.as_str()));
    if !verify {
        info.mode = Mode::InterceptUnverified;
    }
    let mut config = (**base).clone();
    config.alpn_protocols = hello.alpn.clone();
    let connect = TlsConnector::from(Arc::new(config)).connect(server_name, upstream_tcp);
    let upstream = match tokio::time::timeout(timeouts.connect, connect).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(source)) => {
            send_alert(&mut client, ALERT_HANDSHAKE_FAILURE).await;
            return Err(InterceptError::UpstreamTls { dst, source });
        }
        Err(_) => {
            send_alert(&mut client, ALERT_HANDSHAKE_FAILURE).await;
            return Err(InterceptError::UpstreamTlsTimeout {
                dst,
                timeout: timeouts.connect,
            });
        }
    };
    let alpn = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    info.alpn = alpn
        .as_deref()
        .map(|p| String::from_utf8_lossy(p).into_owned());

    let server_config = match tls.certs.server_config(&subject, alpn.as_deref()).await {
        Ok(config) => config,
        Err(err) => {
            send_alert(&mut client, ALERT_INTERNAL_ERROR).await;
            return Err(err.into());
        }
    };
    let accept = TlsAcceptor::from(server_config).accept(Rewind::new(prefix, client));
    let client_tls = tokio::time::timeout(tls.hello_timeout, accept)
        .await
        .map_err(|_| InterceptError::ClientTlsTimeout {
            timeout: tls.hello_timeout,
        })?
        .map_err(InterceptError::ClientTls)?;
    Ok(relay(client_tls, upstream, timeouts.idle).await?)
}

/// Sends a fatal TLS alert in a plaintext record (valid before the server's first flight).
async fn send_alert(client: &mut TcpStream, description: u8) {
    let record = [21, 3, 3, 0, 2, 2, description];
    let _ = client.write_all(&record).await;
    let _ = client.shutdown().await;
}

/// A stream that yields `prefix` before reading from `inner`: hands the already-read
/// ClientHello to the TLS acceptor.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Vec<u8>,
    offset: usize,
    inner: T,
}

impl<T> Rewind<T> {
    /// Replays `prefix`, then reads `inner`.
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Rewind {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this
            .prefix
            .get(this.offset..)
            .filter(|rest| !rest.is_empty())
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewind_replays_then_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut rewind = Rewind::new(b"hello".to_vec(), b);
        let mut out = String::new();
        rewind.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
