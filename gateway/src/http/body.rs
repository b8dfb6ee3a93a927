//! Bodies streamed through the gateway, counted as they pass, and the record of one request
//! that becomes its log line when the response body is done with.

use std::{
    error::Error as StdError,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use gateway_proto::HostName;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;
use tracing::info;

use super::{ErrorChain, io::Meter, page::Page};
use crate::sandbox::SandboxId;

/// A client's request body on its way upstream, frame by frame (never gathered whole).
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl RequestBody {
    /// Streams `inner`, adding its data bytes to `count`.
    pub(crate) fn new(inner: Incoming, count: Arc<AtomicU64>) -> Self {
        RequestBody { inner, count }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a response body comes from.
#[derive(Debug)]
enum Source {
    /// A page of the gateway's own.
    Page(Full<Bytes>),
    /// The upstream's response, streamed.
    Upstream(Incoming),
}

/// A response body sent to the client; carries the request's [`Exchange`], which logs when the
/// body is dropped (hyper drops it once written, or when the connection ends).
#[derive(Debug)]
pub(crate) struct ResponseBody {
    source: Source,
    exchange: Exchange,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.source {
            Source::Page(page) => ready!(Pin::new(page).poll_frame(cx))
                .map(|frame| frame.map_err(|never| match never {})),
            Source::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)),
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.exchange.bytes_down += data.len() as u64;
                }
            }
            Some(Err(error)) => this.exchange.fail(error),
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Page(page) => page.is_end_stream(),
            Source::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Page(page) => page.size_hint(),
            Source::Upstream(body) => body.size_hint(),
        }
    }
}

/// What is known about one request, logged as one line when it is dropped, which is when its
/// response body is done with (or the request was abandoned): only then are the body counts
/// final.
#[derive(Debug)]
pub(crate) struct Exchange {
    sandbox: SandboxId,
    method: Method,
    host: Option<HostName>,
    status: Option<StatusCode>,
    start: Instant,
    bytes_up: Arc<AtomicU64>,
    bytes_down: u64,
    denied: Option<String>,
    error: Option<String>,
    meter: Arc<Meter>,
}

impl Exchange {
    /// Starts the record of a request.
    pub(crate) fn begin(sandbox: SandboxId, method: &Method, meter: Arc<Meter>) -> Self {
        Exchange {
            sandbox,
            method: method.clone(),
            host: None,
            status: None,
            start: Instant::now(),
            bytes_up: Arc::new(AtomicU64::new(0)),
            bytes_down: 0,
            denied: None,
            error: None,
            meter,
        }
    }

    /// The host the request is for, once known.
    pub(crate) fn set_host(&mut self, host: HostName) {
        self.host = Some(host);
    }

    /// The counter of request body bytes, for the [`RequestBody`] sent upstream.
    pub(crate) fn bytes_up(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_up)
    }

    /// Records why the request was refused by policy.
    pub(crate) fn deny(&mut self, reason: &str) {
        self.denied = Some(reason.to_owned());
    }

    /// Records what went wrong (the first failure is kept: later ones follow from it).
    pub(crate) fn fail(&mut self, error: &(dyn StdError + 'static)) {
        if self.error.is_none() {
            self.error = Some(ErrorChain(error).to_string());
        }
    }

    /// Answers with a page of the gateway's own.
    pub(crate) fn page(self, page: Page) -> Response<ResponseBody> {
        self.respond(page.into_response().map(Source::Page))
    }

    /// Answers with the upstream's response, its body streamed.
    pub(crate) fn upstream(self, response: Response<Incoming>) -> Response<ResponseBody> {
        self.respond(response.map(Source::Upstream))
    }

    fn respond(mut self, response: Response<Source>) -> Response<ResponseBody> {
        self.status = Some(response.status());
        response.map(|source| ResponseBody {
            source,
            exchange: self,
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // After 101 the connection carries another protocol: no next head to wait for.
        if self.status != Some(StatusCode::SWITCHING_PROTOCOLS) {
            self.meter.response_done();
        }
        if self.status.is_none() && self.error.is_none() {
            self.error = Some("the connection ended before the response".to_owned());
        }
        let host = self.host.as_ref().map_or("", HostName::as_str);
        info!(
            sandbox = %self.sandbox,
            method = %self.method,
            host,
            status = self.status.map_or(0, |s| s.as_u16()),
            bytes_up = self.bytes_up.load(Ordering::Relaxed),
            bytes_down = self.bytes_down,
            duration_ms = self.start.elapsed().as_millis() as u64,
            denied = self.denied.as_deref(),
            error = self.error.as_deref(),
            "http request"
        );
    }
}
