//! Plain HTTP/1 through the gateway: each request's host is judged, allowed requests go
//! through the filter (if any) to the connection's original destination (never to where the
//! Host resolves) over one upstream connection reused across the client's keep-alive requests,
//! denied ones get a 403 page and never reach the upstream. An upgrade the upstream accepts
//! (101, e.g. WebSocket) turns the connection into a raw relay.

use std::{sync::Arc, time::Duration};

use http::Request;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    HostJudge, HttpError, Protocol, Verdict,
    body::Exchange,
    filter::Filter,
    forward::{self, Admit, Client, Forwarder, requested_target},
    host::Target,
    io::Meter,
    page::Page,
    upstream::{Connection, Open, Origin, Upstreams},
};
use crate::{
    net::{OrigDst, ReadAhead, dial},
    relay::{RelayStats, Timeouts},
    sandbox::SandboxTag,
};

/// Serves plain HTTP/1 from a sandbox client whose connection was going to `dst`; `prefix`
/// holds bytes already read from it (replayed first). Requests the `judge` allows go through
/// `filter` (if any) upstream. Returns the bytes read from and written to the client (request
/// heads, bodies and upgraded traffic alike) when the client closes, or a keep-alive
/// connection stays idle for `timeouts.idle`.
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
    filter: Option<Arc<dyn Filter>>,
    sandbox: SandboxTag,
    timeouts: Timeouts,
) -> Result<RelayStats, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let meter = Meter::new();
    if !prefix.is_empty() {
        meter.head_begun();
    }
    let upstream = Upstreams::new(
        Origin::Addr(dst),
        None,
        open(dst, Arc::clone(&meter), timeouts.connect),
        timeouts.connect,
    );
    let client_conn = Client {
        sandbox: sandbox.clone(),
        protocol: Protocol::Http1,
        meter,
        timeouts,
    };
    let admit = Box::new(Judged { judge, sandbox });
    let forwarder = Forwarder::new(client_conn, admit, filter, upstream);
    forward::serve(ReadAhead::with_prefix(prefix, client), forwarder).await
}

/// Requests pass when the name rules allow their host.
struct Judged {
    judge: Arc<dyn HostJudge>,
    sandbox: SandboxTag,
}

impl Admit for Judged {
    fn admit(&self, request: &Request<Incoming>, exchange: &mut Exchange) -> Result<Target, Page> {
        let target = requested_target(request, exchange, &self.sandbox)?;
        match self.judge.judge(&target.name) {
            Verdict::Allow => Ok(target),
            Verdict::Deny { reason } => {
                exchange.deny(&reason);
                Err(Page::forbidden(target.name.as_str(), &reason))
            }
        }
    }
}

/// Opens HTTP/1 connections to `dst`.
fn open(dst: OrigDst, meter: Arc<Meter>, timeout: Duration) -> Open {
    Box::new(move || {
        let meter = Arc::clone(&meter);
        Box::pin(async move {
            let (tcp, _local) = dial(dst, timeout).await?;
            Connection::handshake(tcp, Protocol::Http1, &Origin::Addr(dst), &meter, timeout).await
        })
    })
}

#[cfg(test)]
mod tests;
