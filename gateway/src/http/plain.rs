//! Plain HTTP/1 through the gateway: each request's host is judged, allowed requests go to the
//! connection's original destination (never to where the Host resolves) over one upstream
//! connection reused across the client's keep-alive requests, denied ones get a 403 page and
//! never reach the upstream. An upgrade the upstream accepts (101, e.g. WebSocket) turns the
//! connection into a raw relay.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{Method, Request, Response, StatusCode, Uri, Version, header::HOST};
use hyper::{
    body::Incoming,
    client::conn::http1::SendRequest,
    server::conn::http1,
    service::service_fn,
    upgrade::{OnUpgrade, Upgraded},
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Mutex,
};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::{
    ErrorChain, HostJudge, HttpError, Protocol, Verdict,
    body::{Exchange, RequestBody, ResponseBody},
    headers,
    host::{self, Target},
    io::{Leg, Meter, Metered},
    page::Page,
};
use crate::{
    net::{DialError, OrigDst, dial},
    relay::{RelayStats, Timeouts, relay},
    sandbox::SandboxId,
    tls::intercept::Rewind,
};

/// Why one request could not be answered by the upstream; the client gets a 502 or 504 page
/// saying this, and the request's log line too.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The original destination could not be reached.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The HTTP/1 client connection could not be set up.
    #[error("HTTP/1 handshake with {dst} failed: {}", ErrorChain(.source))]
    Handshake {
        /// The upstream.
        dst: OrigDst,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// Sending the request or reading the response head failed.
    #[error("exchange with {dst} failed: {}", ErrorChain(.source))]
    Exchange {
        /// The upstream.
        dst: OrigDst,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The upstream switched protocols for a request that asked for no upgrade.
    #[error("{dst} answered 101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade {
        /// The upstream.
        dst: OrigDst,
    },
}

impl UpstreamError {
    /// The status of the page the client gets.
    fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Dial(DialError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Serves plain HTTP/1 from a sandbox client whose connection was going to `dst`; `prefix`
/// holds bytes already read from it (replayed first). Returns the bytes read from and written
/// to the client (request heads, bodies and upgraded traffic alike) when the client closes, or
/// a keep-alive connection stays idle for `timeouts.idle`.
///
/// A request head must arrive complete within `timeouts.hello` of its first byte; with
/// nothing moving on either leg for `timeouts.idle` during a request, the connection is closed.
///
/// # Errors
/// [`HttpError`] when the connection ends badly; failed requests only get pages.
pub async fn proxy<S>(
    client: S,
    prefix: Vec<u8>,
    dst: OrigDst,
    judge: Arc<dyn HostJudge>,
    sandbox: SandboxId,
    timeouts: Timeouts,
) -> Result<RelayStats, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let meter = Meter::new();
    if !prefix.is_empty() {
        meter.head_begun();
    }
    let io = TokioIo::new(Metered::new(
        Rewind::new(prefix, client),
        Arc::clone(&meter),
        Leg::Client,
    ));
    let proxy = Arc::new(Proxy {
        dst,
        judge,
        sandbox,
        timeouts,
        meter: Arc::clone(&meter),
        upstream: Mutex::new(None),
        tunnel: Mutex::new(None),
    });
    let service = service_fn({
        let proxy = Arc::clone(&proxy);
        move |request| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(proxy.serve(request).await) }
        }
    });
    let connection = server().serve_connection(io, service).with_upgrades();
    let served = tokio::select! {
        served = connection => served,
        expiry = meter.expired(timeouts.idle, Some(timeouts.hello)) => {
            return expiry.outcome(&meter, timeouts);
        }
    };
    served.map_err(|source| HttpError::Serve {
        protocol: Protocol::Http1,
        stats: meter.stats(),
        source,
    })?;
    let tunnel = proxy.tunnel.lock().await.take();
    if let Some(tunnel) = tunnel {
        tunnel.run(&meter, timeouts).await?;
    }
    Ok(meter.stats())
}

/// The HTTP/1 server for sandbox clients.
fn server() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // Clients that send a request and shut down their sending side still get the answer.
        .half_close(true)
        // Header names go upstream spelled as the client spelled them (and back).
        .preserve_header_case(true)
        // hyper's header timer also runs between keep-alive requests; the meter's head clock
        // and idle clock replace it.
        .header_read_timeout(None);
    builder
}

/// One client connection's state, shared by its requests.
struct Proxy {
    dst: OrigDst,
    judge: Arc<dyn HostJudge>,
    sandbox: SandboxId,
    timeouts: Timeouts,
    meter: Arc<Meter>,
    /// The upstream connection, opened on the first allowed request.
    upstream: Mutex<Option<Upstream>>,
    /// Both sides of an accepted upgrade, taken over once the server connection hands the
    /// client's socket back.
    tunnel: Mutex<Option<Tunnel>>,
}

impl Proxy {
    /// Answers one request: a page of the gateway's own, or the upstream's response.
    async fn serve(&self, mut request: Request<Incoming>) -> Response<ResponseBody> {
        self.meter.head_read();
        let mut exchange = Exchange::begin(self.sandbox, request.method(), Arc::clone(&self.meter));
        let target = match self.admit(&request, &mut exchange) {
            Ok(target) => target,
            Err(page) => return exchange.page(page),
        };
        // Taken in every case, so the server's upgrade handle never travels upstream.
        let on_upgrade = hyper::upgrade::on(&mut request);
        let upgrade = headers::wants_upgrade(request.headers()).then_some(on_upgrade);
        let upstream_request = upstream_request(request, &target, upgrade.is_some(), &exchange);
        match self.exchange(upstream_request, upgrade).await {
            Ok(response) => exchange.upstream(response),
            Err(error) => {
                exchange.fail(&error);
                let host = target.name.as_str();
                exchange.page(Page::upstream_failed(error.status(), host, &error))
            }
        }
    }

    /// The host `request` is for, if it may go upstream; else the page that answers it.
    fn admit(&self, request: &Request<Incoming>, exchange: &mut Exchange) -> Result<Target, Page> {
        if request.method() == Method::CONNECT {
            return Err(Page::connect_refused());
        }
        let target = host::target(request).map_err(|error| {
            exchange.fail(&error);
            Page::bad_request(&error)
        })?;
        exchange.set_host(target.name.clone());
        debug!(
            sandbox = %self.sandbox, method = %request.method(), host = target.name.as_str(),
            path = request.uri().path(), "http request received"
        );
        match self.judge.judge(&target.name) {
            Verdict::Allow => Ok(target),
            Verdict::Deny { reason } => {
                exchange.deny(&reason);
                Err(Page::forbidden(target.name.as_str(), &reason))
            }
        }
    }

    /// Sends `request` upstream and prepares its response for the client; with `upgrade` (the
    /// client's side of a requested upgrade) a 101 sets up the tunnel.
    async fn exchange(
        &self,
        request: Request<RequestBody>,
        upgrade: Option<OnUpgrade>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut response = self.send(request).await?;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(client) = upgrade else {
                return Err(UpstreamError::UnaskedUpgrade { dst: self.dst });
            };
            let upstream = hyper::upgrade::on(&mut response);
            *self.tunnel.lock().await = Some(Tunnel { client, upstream });
        }
        headers::strip_hop_by_hop(response.headers_mut(), switching);
        Ok(response)
    }

    /// Sends `request` on the upstream connection, opening one if there is none or it closed.
    /// A request that never left because a reused connection closed under it is sent once more
    /// on a new one.
    async fn send(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut retried = false;
        loop {
            let (sending, fresh) = {
                let mut slot = self.upstream.lock().await;
                let (upstream, fresh) = self.ready_upstream(&mut slot).await?;
                (upstream.sender.try_send_request(request), fresh)
            };
            let mut error = match sending.await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            match error.take_message() {
                Some(unsent) if !fresh && !retried => {
                    request = unsent;
                    retried = true;
                    self.upstream.lock().await.take();
                }
                _ => {
                    return Err(UpstreamError::Exchange {
                        dst: self.dst,
                        source: error.into_error(),
                    });
                }
            }
        }
    }

    /// The upstream connection in `slot`, ready for a request: the existing one when it is
    /// still open, else a new one. Also says whether it is new.
    async fn ready_upstream<'a>(
        &self,
        slot: &'a mut Option<Upstream>,
    ) -> Result<(&'a mut Upstream, bool), UpstreamError> {
        let reusable = match slot.take() {
            Some(mut upstream) => upstream
                .ready(self.timeouts.connect)
                .await
                .then_some(upstream),
            None => None,
        };
        let fresh = reusable.is_none();
        let upstream = match reusable {
            Some(upstream) => upstream,
            None => Upstream::open(self.dst, &self.meter, self.timeouts.connect).await?,
        };
        Ok((slot.insert(upstream), fresh))
    }
}

/// The request sent upstream: origin-form target, HTTP/1.1, hop-by-hop fields dropped, `Host`
/// set to the judged authority, the body streamed and counted.
fn upstream_request(
    request: Request<Incoming>,
    target: &Target,
    upgrade: bool,
    exchange: &Exchange,
) -> Request<RequestBody> {
    let (mut parts, body) = request.into_parts();
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.insert(HOST, target.authority.clone());
    Request::from_parts(parts, RequestBody::new(body, exchange.bytes_up()))
}

/// The path and query of `uri`: the upstream is the origin server, not a proxy.
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()))
}

/// An HTTP/1 client connection to the original destination.
struct Upstream {
    sender: SendRequest<RequestBody>,
    /// Drives the connection; aborted with it, so no task outlives the client connection.
    _driver: AbortOnDropHandle<()>,
}

impl Upstream {
    /// Dials `dst` and sets up the HTTP/1 client on it.
    async fn open(
        dst: OrigDst,
        meter: &Arc<Meter>,
        timeout: Duration,
    ) -> Result<Upstream, UpstreamError> {
        let (tcp, _local) = dial(dst, timeout).await?;
        let io = TokioIo::new(Metered::new(tcp, Arc::clone(meter), Leg::Upstream));
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake { dst, source })?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                // The request it was serving reports the failure to the client and the log.
                debug!(upstream = %dst, error = %ErrorChain(&error), "upstream connection ended");
            }
        });
        Ok(Upstream {
            sender,
            _driver: AbortOnDropHandle::new(driver),
        })
    }

    /// Whether the connection can take another request (it has not closed).
    async fn ready(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.sender.ready()).await,
            Ok(Ok(()))
        )
    }
}

/// Both sides of an upgrade the upstream accepted.
struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
}

impl Tunnel {
    /// Takes both connections over and relays their bytes until both sides close.
    async fn run(self, meter: &Meter, timeouts: Timeouts) -> Result<(), HttpError> {
        let client = take_over(self.client, "client", meter, timeouts.connect).await?;
        let upstream = take_over(self.upstream, "upstream", meter, timeouts.connect).await?;
        relay(TokioIo::new(client), TokioIo::new(upstream), timeouts.idle)
            .await
            .map(|_| ())
            .map_err(|source| HttpError::Tunnel {
                stats: meter.stats(),
                source,
            })
    }
}

/// Waits for hyper to hand over one side's connection after a 101.
async fn take_over(
    side: OnUpgrade,
    name: &'static str,
    meter: &Meter,
    timeout: Duration,
) -> Result<Upgraded, HttpError> {
    match tokio::time::timeout(timeout, side).await {
        Ok(Ok(upgraded)) => Ok(upgraded),
        Ok(Err(source)) => Err(HttpError::Upgrade {
            side: name,
            stats: meter.stats(),
            source,
        }),
        Err(_) => Err(HttpError::UpgradeTimeout {
            side: name,
            timeout,
            stats: meter.stats(),
        }),
    }
}

#[cfg(test)]
mod tests;
