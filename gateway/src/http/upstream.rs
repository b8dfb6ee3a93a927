//! The upstream side of a client connection: one HTTP client connection at a time (HTTP/1 or
//! HTTP/2, over TCP for plain HTTP or TLS for interception), reused across the client's
//! requests and replaced when it closes.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use gateway_proto::HostName;
use http::{Request, Response, StatusCode};
use hyper::{
    body::Incoming,
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Mutex,
};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::{
    ErrorChain, Protocol,
    body::RequestBody,
    io::{Leg, Meter, Metered},
};
use crate::{
    net::{DialError, OrigDst},
    tls::intercept::InterceptError,
};

/// The server a connection's requests go to, as error messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The original destination (plain HTTP).
    Addr(OrigDst),
    /// The TLS name an intercepted connection was made for.
    Name(HostName),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Addr(dst) => write!(f, "{dst}"),
            Origin::Name(name) => write!(f, "{name}"),
        }
    }
}

/// Why one request could not be answered by the upstream; the client gets a 502 or 504 page
/// saying this, and the request's log line too.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The original destination could not be reached.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// A new connection to an intercepted upstream (dial and TLS handshake, by the caller's
    /// opener) could not be made after the previous one closed.
    #[error("opening a new connection to {origin}: {source}")]
    Reopen {
        /// The upstream.
        origin: Origin,
        /// Why.
        #[source]
        source: InterceptError,
    },
    /// The HTTP client connection could not be set up.
    #[error("{protocol} handshake with {origin} failed: {}", ErrorChain(.source))]
    Handshake {
        /// The upstream.
        origin: Origin,
        /// HTTP/1 or HTTP/2.
        protocol: Protocol,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The client handshake did not finish in time (HTTP/2 writes its preface).
    #[error("{protocol} handshake with {origin}: not done within {timeout:?}")]
    HandshakeTimeout {
        /// The upstream.
        origin: Origin,
        /// HTTP/1 or HTTP/2.
        protocol: Protocol,
        /// How long was waited.
        timeout: Duration,
    },
    /// Sending the request or reading the response head failed.
    #[error("exchange with {origin} failed: {}", ErrorChain(.source))]
    Exchange {
        /// The upstream.
        origin: Origin,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The upstream switched protocols for a request that asked for no upgrade.
    #[error("{origin} answered 101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade {
        /// The upstream.
        origin: Origin,
    },
}

impl UpstreamError {
    /// The status of the page the client gets: 504 when the upstream did not answer in time.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Dial(DialError::Timeout { .. })
            | UpstreamError::HandshakeTimeout { .. }
            | UpstreamError::Reopen {
                source:
                    InterceptError::Dial(DialError::Timeout { .. })
                    | InterceptError::UpstreamTlsTimeout { .. },
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A response, or the error with the request when it was never sent.
type Sending = Pin<
    Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> + Send>,
>;

/// Makes a new upstream connection when there is none, or the last one closed.
pub(crate) type Open = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Connection, UpstreamError>> + Send>>
        + Send
        + Sync,
>;

/// hyper's client half of one upstream connection.
enum Sender {
    Http1(http1::SendRequest<RequestBody>),
    Http2(http2::SendRequest<RequestBody>),
}

/// One HTTP client connection to the upstream.
pub(crate) struct Connection {
    sender: Sender,
    /// Tells this connection from its successors, so a request that failed on it does not
    /// throw away a newer one.
    generation: u64,
    /// Whether a request has been sent on it: only a reused connection may have closed under a
    /// request, and only then is the request tried once more.
    used: bool,
    /// Drives the connection; aborted with it, so no task outlives the client connection.
    _driver: AbortOnDropHandle<()>,
}

impl Connection {
    /// Sets up the `protocol` client on `io` (already connected, TLS done if any) within
    /// `timeout`; bytes on it keep the client connection's idle clock running.
    pub(crate) async fn handshake<T>(
        io: T,
        protocol: Protocol,
        origin: &Origin,
        meter: &Arc<Meter>,
        timeout: Duration,
    ) -> Result<Connection, UpstreamError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = Connection::handshake_now(io, protocol, origin, meter);
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| UpstreamError::HandshakeTimeout {
                origin: origin.clone(),
                protocol,
                timeout,
            })?
    }

    async fn handshake_now<T>(
        io: T,
        protocol: Protocol,
        origin: &Origin,
        meter: &Arc<Meter>,
    ) -> Result<Connection, UpstreamError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(Metered::new(io, Arc::clone(meter), Leg::Upstream));
        let failed = |source| UpstreamError::Handshake {
            origin: origin.clone(),
            protocol,
            source,
        };
        let (sender, driver) = match protocol {
            Protocol::Http1 => {
                let (sender, connection) = http1::Builder::new()
                    // Header names go upstream spelled as the client spelled them (and back).
                    .preserve_header_case(true)
                    .handshake(io)
                    .await
                    .map_err(failed)?;
                let driver = drive(connection.with_upgrades(), origin.clone());
                (Sender::Http1(sender), driver)
            }
            Protocol::Http2 => {
                let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(failed)?;
                (Sender::Http2(sender), drive(connection, origin.clone()))
            }
        };
        Ok(Connection {
            sender,
            generation: 0,
            used: false,
            _driver: driver,
        })
    }

    /// Whether the connection can take another request (it has not closed).
    async fn ready(&mut self, timeout: Duration) -> bool {
        let ready = async {
            match &mut self.sender {
                Sender::Http1(sender) => sender.ready().await,
                Sender::Http2(sender) => sender.ready().await,
            }
        };
        matches!(tokio::time::timeout(timeout, ready).await, Ok(Ok(())))
    }

    /// Hands `request` to the connection; the returned future, awaited without the
    /// connection, yields the response.
    fn try_send(&mut self, request: Request<RequestBody>) -> Sending {
        self.used = true;
        match &mut self.sender {
            Sender::Http1(sender) => Box::pin(sender.try_send_request(request)),
            Sender::Http2(sender) => Box::pin(sender.try_send_request(request)),
        }
    }
}

/// Runs a client connection's I/O until it ends.
fn drive<F>(connection: F, origin: Origin) -> AbortOnDropHandle<()>
where
    F: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    AbortOnDropHandle::new(tokio::spawn(async move {
        if let Err(error) = connection.await {
            // The request it was serving reports the failure to the client and the log.
            debug!(upstream = %origin, error = %ErrorChain(&error), "upstream connection ended");
        }
    }))
}

/// The upstream connection of one client connection, opened when needed.
pub(crate) struct Upstreams {
    origin: Origin,
    slot: Mutex<Option<Connection>>,
    open: Open,
    /// Generations handed out so far.
    opened: AtomicU64,
    /// How long a reused connection may take to become ready.
    ready_timeout: Duration,
}

impl Upstreams {
    /// Starts with `first` (if any); later connections come from `open`.
    pub(crate) fn new(
        origin: Origin,
        first: Option<Connection>,
        open: Open,
        ready_timeout: Duration,
    ) -> Upstreams {
        Upstreams {
            origin,
            slot: Mutex::new(first),
            open,
            opened: AtomicU64::new(1),
            ready_timeout,
        }
    }

    /// The upstream, as error messages name it.
    pub(crate) fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Sends `request` on the upstream connection, opening one if there is none or it closed.
    /// A request that never left because a reused connection closed under it is sent once more
    /// on a new one. The connection is held only while the request is handed over, so HTTP/2
    /// requests share it.
    pub(crate) async fn send(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut retried = false;
        loop {
            let (sending, generation, reused) = {
                let mut slot = self.slot.lock().await;
                let connection = self.ready_connection(&mut slot).await?;
                let reused = connection.used;
                (connection.try_send(request), connection.generation, reused)
            };
            let mut error = match sending.await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            match error.take_message() {
                Some(unsent) if reused && !retried => {
                    request = unsent;
                    retried = true;
                    self.discard(generation).await;
                }
                _ => {
                    return Err(UpstreamError::Exchange {
                        origin: self.origin.clone(),
                        source: error.into_error(),
                    });
                }
            }
        }
    }

    /// The connection in `slot`, ready for a request: the existing one when it is still open,
    /// else a new one.
    async fn ready_connection<'a>(
        &self,
        slot: &'a mut Option<Connection>,
    ) -> Result<&'a mut Connection, UpstreamError> {
        let reusable = match slot.take() {
            Some(mut connection) => connection
                .ready(self.ready_timeout)
                .await
                .then_some(connection),
            None => None,
        };
        let connection = match reusable {
            Some(connection) => connection,
            None => {
                let mut connection = (self.open)().await?;
                connection.generation = self.opened.fetch_add(1, Ordering::Relaxed);
                connection
            }
        };
        Ok(slot.insert(connection))
    }

    /// Drops the connection of `generation` if it is still the current one.
    async fn discard(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            slot.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_words() {
        let dst = OrigDst("192.0.2.1:80".parse().unwrap());
        assert_eq!(
            UpstreamError::UnaskedUpgrade {
                origin: Origin::Addr(dst)
            }
            .to_string(),
            "192.0.2.1:80 answered 101 Switching Protocols to a request that asked for no upgrade"
        );
        let timeout = Duration::from_secs(10);
        let dial = UpstreamError::Dial(DialError::Timeout { dst, timeout });
        assert_eq!(dial.status(), StatusCode::GATEWAY_TIMEOUT);
        let reopen = UpstreamError::Reopen {
            origin: Origin::Name(HostName::parse("api.test").unwrap()),
            source: InterceptError::UpstreamTlsTimeout { dst, timeout },
        };
        assert_eq!(reopen.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            reopen.to_string(),
            "opening a new connection to api.test: upstream TLS with 192.0.2.1:80: no \
             handshake within 10s"
        );
        let handshake = UpstreamError::HandshakeTimeout {
            origin: Origin::Name(HostName::parse("api.test").unwrap()),
            protocol: Protocol::Http2,
            timeout,
        };
        assert_eq!(
            handshake.to_string(),
            "HTTP/2 handshake with api.test: not done within 10s"
        );
    }
}
