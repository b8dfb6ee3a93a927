//! What plain HTTP and HTTP-aware interception share: serving a client connection, and for
//! each request admitted by the caller's checks the filter's hooks, the exchange over the
//! upstream connection, the response streamed back, and an accepted upgrade turned into a
//! relay.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{
    HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{CONTENT_LENGTH, HOST, TE},
    request, response,
    uri::{self, Scheme},
};
use hyper::{
    body::{Body as _, Incoming},
    server::conn::{http1, http2},
    service::service_fn,
    upgrade::{OnUpgrade, Upgraded},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Mutex,
};
use tracing::debug;

use super::{
    HttpError, Protocol,
    body::{Exchange, RequestBody, ResponseBody},
    filter::{Filter, Refused, StreamRewrite},
    headers,
    host::{self, Target},
    io::{Leg, Meter, Metered},
    page::Page,
    upstream::{UpstreamError, Upstreams},
};
use crate::{
    relay::{RelayStats, Timeouts, relay},
    sandbox::SandboxTag,
};

/// The caller's checks on each request: which host it is for, and whether it may go upstream.
pub(crate) trait Admit: Send + Sync + 'static {
    /// The host `request` is for if it may go upstream, else the page that answers it; what
    /// it learns goes into `exchange` (the host, why it was refused).
    fn admit(&self, request: &Request<Incoming>, exchange: &mut Exchange) -> Result<Target, Page>;
}

/// The client connection being served.
#[derive(Debug)]
pub(crate) struct Client {
    /// Whose connection it is.
    pub(crate) sandbox: SandboxTag,
    /// Its HTTP, which is also the upstream's.
    pub(crate) protocol: Protocol,
    /// Its counters and clocks.
    pub(crate) meter: Arc<Meter>,
    /// Its time limits.
    pub(crate) timeouts: Timeouts,
}

/// One client connection's state, shared by its requests.
pub(crate) struct Forwarder {
    client: Client,
    admit: Box<dyn Admit>,
    filter: Option<Arc<dyn Filter>>,
    upstream: Upstreams,
    /// Both sides of an accepted upgrade, taken over once the server connection hands the
    /// client's socket back.
    tunnel: Mutex<Option<Tunnel>>,
}

impl Forwarder {
    /// Forwards what `admit` lets through to `upstream`, through `filter` if any.
    pub(crate) fn new(
        client: Client,
        admit: Box<dyn Admit>,
        filter: Option<Arc<dyn Filter>>,
        upstream: Upstreams,
    ) -> Forwarder {
        Forwarder {
            client,
            admit,
            filter,
            upstream,
            tunnel: Mutex::new(None),
        }
    }
}

/// Serves the client connection `stream` in the forwarder's protocol until the client closes,
/// or the connection stays idle for `timeouts.idle` between requests; then relays an accepted
/// upgrade. Returns the bytes read from and written to the client.
///
/// An HTTP/1 request head must arrive complete within `timeouts.hello` of its first byte; with
/// nothing moving on either leg for `timeouts.idle` while a request is open, the connection is
/// closed.
pub(crate) async fn serve<S>(stream: S, forwarder: Forwarder) -> Result<RelayStats, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let forwarder = Arc::new(forwarder);
    let Client {
        protocol,
        ref meter,
        timeouts,
        ..
    } = forwarder.client;
    let meter = Arc::clone(meter);
    let io = TokioIo::new(Metered::new(stream, Arc::clone(&meter), Leg::Client));
    let service = service_fn({
        let forwarder = Arc::clone(&forwarder);
        move |request| {
            let forwarder = Arc::clone(&forwarder);
            async move { Ok::<_, Infallible>(forwarder.answer(request).await) }
        }
    });
    let served = match protocol {
        Protocol::Http1 => {
            let connection = http1_server().serve_connection(io, service).with_upgrades();
            tokio::select! {
                served = connection => served,
                expiry = meter.expired(timeouts.idle, Some(timeouts.hello)) => {
                    return expiry.outcome(&meter, timeouts);
                }
            }
        }
        Protocol::Http2 => {
            let connection =
                http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
            tokio::select! {
                served = connection => served,
                expiry = meter.expired(timeouts.idle, None) => {
                    return expiry.outcome(&meter, timeouts);
                }
            }
        }
    };
    served.map_err(|source| HttpError::Serve {
        protocol,
        stats: meter.stats(),
        source,
    })?;
    let tunnel = forwarder.tunnel.lock().await.take();
    if let Some(tunnel) = tunnel {
        tunnel.run(&meter, timeouts).await?;
    }
    Ok(meter.stats())
}

/// The HTTP/1 server for sandbox clients.
fn http1_server() -> http1::Builder {
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

/// The host `request` names, once the checks every path makes have passed (CONNECT is not
/// served; the host must be usable); else the page that answers it.
pub(crate) fn requested_target(
    request: &Request<Incoming>,
    exchange: &mut Exchange,
    sandbox: &SandboxTag,
) -> Result<Target, Page> {
    if request.method() == Method::CONNECT {
        return Err(Page::connect_refused());
    }
    let target = host::target(request).map_err(|error| {
        exchange.fail(&error);
        Page::bad_request(&error)
    })?;
    exchange.set_host(target.name.clone());
    debug!(
        sandbox = %sandbox, method = %request.method(), host = target.name.as_str(),
        path = request.uri().path(), "http request received"
    );
    Ok(target)
}

impl Forwarder {
    /// Answers one request: a page of the gateway's own, or the upstream's response.
    async fn answer(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let client = &self.client;
        let mut exchange = Exchange::begin(
            client.sandbox.clone(),
            request.method(),
            Arc::clone(&client.meter),
        );
        match self.admit.admit(&request, &mut exchange) {
            Ok(target) => self.forward(request, &target, exchange).await,
            Err(page) => exchange.page(page),
        }
    }

    /// Sends an admitted request upstream through the filter, and its response back.
    async fn forward(
        &self,
        request: Request<Incoming>,
        target: &Target,
        mut exchange: Exchange,
    ) -> Response<ResponseBody> {
        let (request, upgrade) = match self.prepare(request, target, &mut exchange) {
            Ok(prepared) => prepared,
            Err(page) => return exchange.page(page),
        };
        let result = self.exchange(request, upgrade).await;
        // A body refused part-way fails the upstream request, or (when the upstream answered
        // early) leaves an answer to a request it never got whole: the client gets the page.
        if let Some(refused) = exchange.refusal() {
            self.tunnel.lock().await.take();
            return refuse(exchange, target, &refused);
        }
        match result {
            Ok(response) => {
                let (response, rewrite) = self.filter_response(target, response);
                exchange.upstream(response, rewrite)
            }
            Err(error) => {
                exchange.fail(&error);
                let host = target.name.as_str();
                exchange.page(Page::upstream_failed(error.status(), host, &error))
            }
        }
    }

    /// The request as it goes upstream (shaped, through the filter) and the client's side of
    /// an upgrade it asks for; else the page that answers it.
    fn prepare(
        &self,
        mut request: Request<Incoming>,
        target: &Target,
        exchange: &mut Exchange,
    ) -> Result<(Request<RequestBody>, Option<OnUpgrade>), Page> {
        // Taken in every case, so the server's upgrade handle never travels upstream.
        let on_upgrade = hyper::upgrade::on(&mut request);
        // HTTP/2 has no upgrades (its extended CONNECT is not enabled).
        let wants_upgrade =
            self.client.protocol == Protocol::Http1 && headers::wants_upgrade(request.headers());
        let (mut parts, body) = request.into_parts();
        shape_request(&mut parts, target, self.client.protocol, wants_upgrade).map_err(
            |error| {
                exchange.fail(&error);
                Page::bad_request(&error)
            },
        )?;
        let rewrite = self
            .filter_request(target, &mut parts, &body)
            .map_err(|refused| {
                exchange.deny(&refused.reason);
                Page::refused(target.name.as_str(), &refused)
            })?;
        let request = Request::from_parts(parts, RequestBody::new(body, rewrite, exchange));
        Ok((request, wants_upgrade.then_some(on_upgrade)))
    }

    /// Runs the filter's request hooks: the head judged and rewritten, and the body's
    /// rewriter (whose body then has no fixed length).
    fn filter_request(
        &self,
        target: &Target,
        parts: &mut request::Parts,
        body: &Incoming,
    ) -> Result<Option<Box<dyn StreamRewrite>>, Refused> {
        let Some(filter) = &self.filter else {
            return Ok(None);
        };
        filter.request_head(&target.name, parts)?;
        if body.is_end_stream() {
            return Ok(None);
        }
        let rewrite = filter.request_body(&target.name, parts);
        if rewrite.is_some() {
            parts.headers.remove(CONTENT_LENGTH);
        }
        Ok(rewrite)
    }

    /// Runs the filter's response hooks.
    fn filter_response(
        &self,
        target: &Target,
        response: Response<Incoming>,
    ) -> (Response<Incoming>, Option<Box<dyn StreamRewrite>>) {
        let Some(filter) = &self.filter else {
            return (response, None);
        };
        let (mut parts, body) = response.into_parts();
        filter.response_head(&target.name, &mut parts);
        let rewrite = rewrite_response(filter.as_ref(), target, &mut parts, &body);
        (Response::from_parts(parts, body), rewrite)
    }

    /// Sends `request` upstream and prepares its response for the client; with `upgrade` (the
    /// client's side of a requested upgrade) a 101 sets up the tunnel.
    async fn exchange(
        &self,
        request: Request<RequestBody>,
        upgrade: Option<OnUpgrade>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut response = self.upstream.send(request).await?;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(client) = upgrade else {
                return Err(UpstreamError::UnaskedUpgrade {
                    origin: self.upstream.origin().clone(),
                });
            };
            let upstream = hyper::upgrade::on(&mut response);
            *self.tunnel.lock().await = Some(Tunnel { client, upstream });
        }
        headers::strip_hop_by_hop(response.headers_mut(), switching);
        Ok(response)
    }
}

/// Answers with a filter's refusal.
fn refuse(mut exchange: Exchange, target: &Target, refused: &Refused) -> Response<ResponseBody> {
    exchange.deny(&refused.reason);
    exchange.page(Page::refused(target.name.as_str(), refused))
}

/// The filter's rewriter for a response body, unless the response has none; a rewritten body
/// loses its fixed length.
fn rewrite_response(
    filter: &dyn Filter,
    target: &Target,
    parts: &mut response::Parts,
    body: &Incoming,
) -> Option<Box<dyn StreamRewrite>> {
    if body.is_end_stream() {
        return None;
    }
    let rewrite = filter.response_body(&target.name, parts)?;
    parts.headers.remove(CONTENT_LENGTH);
    Some(rewrite)
}

/// Shapes a request head for the upstream: hop-by-hop fields dropped (`TE: trailers` kept, as
/// trailers are passed on), and the judged authority the only one the upstream sees: HTTP/1
/// gets an origin-form target and that `Host`, HTTP/2 an absolute `https` URI with that
/// authority and no `Host`.
fn shape_request(
    parts: &mut request::Parts,
    target: &Target,
    protocol: Protocol,
    upgrade: bool,
) -> Result<(), uri::InvalidUriParts> {
    let trailers = headers::accepts_trailers(&parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    if trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    match protocol {
        Protocol::Http1 => {
            parts.uri = origin_form(&parts.uri);
            parts.version = Version::HTTP_11;
            parts.headers.insert(HOST, target.host_field.clone());
        }
        Protocol::Http2 => {
            parts.uri = absolute_form(&parts.uri, target)?;
            parts.version = Version::HTTP_2;
            parts.headers.remove(HOST);
        }
    }
    Ok(())
}

/// The path and query of `uri`: the upstream is the origin server, not a proxy.
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()))
}

/// `https://` + the judged authority + the path and query of `uri`: HTTP/2's pseudo-header
/// fields. Only the TLS path speaks HTTP/2, so the scheme is `https`.
fn absolute_form(uri: &Uri, target: &Target) -> Result<Uri, uri::InvalidUriParts> {
    let mut parts = uri::Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
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
mod tests {
    use super::*;

    #[test]
    fn targets_go_upstream_in_origin_form() {
        for (target, origin) in [
            ("http://a.test:8080/p?q=1", "/p?q=1"),
            ("http://a.test", "/"),
            ("/x", "/x"),
            ("*", "*"),
        ] {
            let uri: Uri = target.parse().unwrap();
            assert_eq!(origin_form(&uri), origin, "{target}");
        }
    }

    #[test]
    fn http2_targets_carry_the_judged_authority() {
        let request = Request::get("https://API.test:8443/p?q=1")
            .body(())
            .unwrap();
        let target = host::target(&request).unwrap();
        for (uri, absolute) in [
            ("https://API.test:8443/p?q=1", "https://API.test:8443/p?q=1"),
            ("/x?y", "https://API.test:8443/x?y"),
            ("https://other.test", "https://API.test:8443/"),
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(absolute_form(&uri, &target).unwrap(), absolute, "{uri}");
        }
    }
}
