//! HTTP-aware interception: a TLS connection terminated on both sides (the upstream's handshake
//! first, then the client's, offering the protocol the upstream chose) is served as HTTP —
//! HTTP/2 when ALPN agreed on `h2`, else HTTP/1.1 — and each request is checked against the
//! TLS name (no domain fronting), passed through the filter and sent again on the upstream TLS
//! connection by hyper's client of the same protocol: HTTP/2 requests multiplexed on one
//! connection, HTTP/1 requests in order on one connection, a new one opened when it closes.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use gateway_proto::HostName;
use http::Request;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{
    ErrorChain, HttpError, Protocol,
    body::Exchange,
    filter::Filter,
    forward::{self, Admit, Client, Forwarder, requested_target},
    host::Target,
    io::Meter,
    page::Page,
    upstream::{Connection, Open, Origin, UpstreamError, Upstreams},
};
use crate::{
    relay::{RelayStats, Timeouts},
    sandbox::SandboxTag,
    tls::intercept::InterceptError,
};

/// A new upstream TLS stream, on its way.
pub type OpenFuture<U> = Pin<Box<dyn Future<Output = Result<U, InterceptError>> + Send>>;

/// Opens another upstream TLS stream (dial and handshake, each bounded in time, as
/// `tls::intercept` does) when the previous one has closed and the client sends another
/// request. The stream must speak the protocol of the first one: offer only that ALPN.
pub type Opener<U> = Arc<dyn Fn() -> OpenFuture<U> + Send + Sync>;

/// The upstream side of an interception.
pub struct Upstream<U> {
    /// The TLS stream to the upstream, its handshake done; it agreed on the ALPN given to
    /// [`serve`].
    pub stream: U,
    /// Where further streams come from.
    pub reopen: Opener<U>,
}

impl<U> fmt::Debug for Upstream<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// Serves `client`, a TLS stream whose handshake agreed on `alpn` (the upstream's choice) for
/// the name `sni`, as HTTP/2 when `alpn` is `h2`, else HTTP/1.1 (keep-alive, pipelined requests
/// answered in order, upgrades relayed after a 101).
///
/// Each request must name `sni` (its `:authority`, or `Host`, port aside), else it gets a 403
/// page and nothing goes upstream. Then `filter` (if any) judges and rewrites it, it goes to
/// the upstream with exactly that authority, and the response comes back through the filter.
/// A failed request gets a 502 or 504 page. Every request logs one line.
///
/// Returns the bytes read from and written to the client when the client closes, or the
/// connection stays idle for `timeouts.idle` between requests. An HTTP/1 head must arrive
/// within `timeouts.hello` of its first byte; nothing moving on either leg for `timeouts.idle`
/// while a request is open closes the connection; `timeouts.connect` bounds setting up each
/// upstream HTTP connection.
///
/// # Errors
/// [`HttpError`] when the connection ends badly; failed requests only get pages.
pub async fn serve<C, U>(
    client: C,
    alpn: Option<&[u8]>,
    upstream: Upstream<U>,
    sni: &HostName,
    filter: Option<Arc<dyn Filter>>,
    sandbox: SandboxTag,
    timeouts: Timeouts,
) -> Result<RelayStats, HttpError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = protocol_of(alpn);
    let meter = match protocol {
        Protocol::Http1 => Meter::new(),
        Protocol::Http2 => Meter::without_heads(),
    };
    let origin = Origin::Name(sni.clone());
    let first =
        first_connection(upstream.stream, protocol, &origin, &meter, timeouts.connect).await;
    let open = reopen(
        upstream.reopen,
        protocol,
        origin.clone(),
        Arc::clone(&meter),
        timeouts.connect,
    );
    let upstreams = Upstreams::new(origin, first, open, timeouts.connect);
    let client_conn = Client {
        sandbox: sandbox.clone(),
        protocol,
        meter,
        timeouts,
    };
    let admit = Box::new(SameName {
        sni: sni.clone(),
        sandbox,
    });
    let forwarder = Forwarder::new(client_conn, admit, filter, upstreams);
    forward::serve(client, forwarder).await
}

/// The HTTP both legs speak: what ALPN agreed on, HTTP/1.1 without it.
fn protocol_of(alpn: Option<&[u8]>) -> Protocol {
    match alpn {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    }
}

/// The HTTP client on the stream the interception began with. If it cannot be set up, the
/// first request opens another stream (and reports what goes wrong there).
async fn first_connection<U>(
    stream: U,
    protocol: Protocol,
    origin: &Origin,
    meter: &Arc<Meter>,
    timeout: Duration,
) -> Option<Connection>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match Connection::handshake(stream, protocol, origin, meter, timeout).await {
        Ok(connection) => Some(connection),
        Err(error) => {
            debug!(upstream = %origin, error = %ErrorChain(&error), "first upstream connection unusable");
            None
        }
    }
}

/// Opens upstream HTTP connections on streams from `opener`.
fn reopen<U>(
    opener: Opener<U>,
    protocol: Protocol,
    origin: Origin,
    meter: Arc<Meter>,
    timeout: Duration,
) -> Open
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::new(move || {
        let stream = opener();
        let origin = origin.clone();
        let meter = Arc::clone(&meter);
        Box::pin(async move {
            let stream = stream.await.map_err(|source| UpstreamError::Reopen {
                origin: origin.clone(),
                source,
            })?;
            Connection::handshake(stream, protocol, &origin, &meter, timeout).await
        })
    })
}

/// Requests pass when they name the host the TLS connection was intercepted for: the
/// upstream was chosen, verified and judged by that name, and must not be asked for another
/// (domain fronting).
struct SameName {
    sni: HostName,
    sandbox: SandboxTag,
}

impl Admit for SameName {
    fn admit(&self, request: &Request<Incoming>, exchange: &mut Exchange) -> Result<Target, Page> {
        let target = requested_target(request, exchange, &self.sandbox)?;
        if target.name != self.sni {
            let reason = format!(
                "Host {} does not match the TLS name {}",
                target.name, self.sni
            );
            exchange.deny(&reason);
            return Err(Page::forbidden(target.name.as_str(), &reason));
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests;
