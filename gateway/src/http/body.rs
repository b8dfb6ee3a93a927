//! Bodies streamed through the gateway, rewritten by a filter and counted as they pass, and the
//! record of one request that becomes its log line when the response body is done with.

use std::{
    error::Error as StdError,
    fmt,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use gateway_proto::HostName;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;
use tracing::info;

use super::{
    ErrorChain,
    filter::{Refused, StreamRewrite},
    io::Meter,
    page::Page,
};
use crate::sandbox::SandboxTag;

/// Why a body streamed through the gateway stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Reading it from its sender failed (hyper's error and its causes).
    #[error("{}", ErrorChain(.0))]
    Read(#[source] hyper::Error),
    /// The filter refused it part-way.
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// A body passed through a filter's [`StreamRewrite`], or untouched without one.
pub(crate) struct Rewriting<B> {
    inner: B,
    rewrite: Option<Box<dyn StreamRewrite>>,
    /// The sender's trailers, held while the rewriter's last bytes go out first.
    trailers: Option<HeaderMap>,
    /// Whether the rewriter has been told the body ended (or refused it).
    finished: bool,
}

impl<B> Rewriting<B> {
    /// Streams `inner` through `rewrite`, if any.
    pub(crate) fn new(inner: B, rewrite: Option<Box<dyn StreamRewrite>>) -> Self {
        Rewriting {
            inner,
            rewrite,
            trailers: None,
            finished: false,
        }
    }
}

impl<B> fmt::Debug for Rewriting<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewriting")
            .field("rewritten", &self.rewrite.is_some())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<B> Rewriting<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    /// The next frame through the rewriter: data it lets out, then (at the end) what it held
    /// back, then the sender's trailers.
    fn poll_rewritten(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(rewrite) = self.rewrite.as_mut() else {
            let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::Read)));
        };
        if self.finished {
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        // Chunks the rewriter holds back entirely yield nothing: read on rather than send an
        // empty frame (an empty HTTP/1 chunk would end the body).
        loop {
            let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Poll::Ready(Some(Err(BodyError::Read(error)))),
                None => return Poll::Ready(self.finish()),
            };
            match frame.into_data() {
                Ok(chunk) => match rewrite.feed(&chunk) {
                    Ok(out) if out.is_empty() => {}
                    Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                    Err(refused) => return Poll::Ready(Some(Err(self.refuse(refused)))),
                },
                Err(frame) => {
                    // Trailers end the body: they go out after the rewriter's tail.
                    self.trailers = frame.into_trailers().ok();
                    return Poll::Ready(self.finish());
                }
            }
        }
    }

    /// Tells the rewriter the body ended; its tail, else the trailers, else the end.
    fn finish(&mut self) -> Option<Result<Frame<Bytes>, BodyError>> {
        self.finished = true;
        let rewrite = self.rewrite.as_mut()?;
        match rewrite.finish() {
            Ok(tail) if !tail.is_empty() => Some(Ok(Frame::data(tail))),
            Ok(_) => self.trailers.take().map(|t| Ok(Frame::trailers(t))),
            Err(refused) => Some(Err(self.refuse(refused))),
        }
    }

    /// A refusal ends the body: nothing after it is sent, trailers included.
    fn refuse(&mut self, refused: Refused) -> BodyError {
        self.finished = true;
        self.trailers = None;
        BodyError::Refused(refused)
    }

    fn is_end(&self) -> bool {
        match self.rewrite {
            None => self.inner.is_end_stream(),
            Some(_) => self.finished && self.trailers.is_none(),
        }
    }

    fn hint(&self) -> SizeHint {
        match self.rewrite {
            None => self.inner.size_hint(),
            // A rewritten body may grow or shrink.
            Some(_) => SizeHint::default(),
        }
    }
}

/// A client's request body on its way upstream, frame by frame (never gathered whole).
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Rewriting<Incoming>,
    count: Arc<AtomicU64>,
    refusal: Arc<OnceLock<Refused>>,
}

impl RequestBody {
    /// Streams `inner` through `rewrite` (if any) for `exchange`'s request, adding the data
    /// bytes sent on to its count, and recording a refusal where the request's answer will
    /// look for it.
    pub(crate) fn new(
        inner: Incoming,
        rewrite: Option<Box<dyn StreamRewrite>>,
        exchange: &Exchange,
    ) -> Self {
        RequestBody {
            inner: Rewriting::new(inner, rewrite),
            count: Arc::clone(&exchange.bytes_up),
            refusal: Arc::clone(&exchange.refusal),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = ready!(self.inner.poll_rewritten(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Some(Err(BodyError::Refused(refused))) => {
                // Set before hyper sees the error, so the request's answer finds it.
                let _ = self.refusal.set(refused.clone());
            }
            Some(Err(BodyError::Read(_))) | None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.hint()
    }
}

/// Where a response body comes from.
#[derive(Debug)]
enum Source {
    /// A page of the gateway's own.
    Page(Full<Bytes>),
    /// The upstream's response, streamed (and maybe rewritten).
    Upstream(Rewriting<Incoming>),
}

/// A response body sent to the client; carries the request's [`Exchange`], which logs when the
/// body is dropped (hyper drops it once written, or when the connection ends).
#[derive(Debug)]
pub(crate) struct ResponseBody {
    source: Source,
    exchange: Exchange,
}

impl ResponseBody {
    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.source {
            Source::Page(page) => Pin::new(page)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
            Source::Upstream(body) => {
                // The request body was refused after this response began: the client must
                // not take the upstream's answer to a request it never got whole as complete.
                if let Some(refused) = self.exchange.refusal.get() {
                    return Poll::Ready(Some(Err(BodyError::Refused(refused.clone()))));
                }
                body.poll_rewritten(cx)
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let frame = ready!(this.poll_source(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.exchange.bytes_down += data.len() as u64;
                }
            }
            Some(Err(error)) => {
                if let BodyError::Refused(refused) = error {
                    this.exchange.deny(&refused.reason);
                }
                this.exchange.fail(error);
            }
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Page(page) => page.is_end_stream(),
            Source::Upstream(body) => body.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Page(page) => page.size_hint(),
            Source::Upstream(body) => body.hint(),
        }
    }
}

/// What is known about one request, logged as one line when it is dropped, which is when its
/// response body is done with (or the request was abandoned): only then are the body counts
/// final.
#[derive(Debug)]
pub(crate) struct Exchange {
    sandbox: SandboxTag,
    method: Method,
    host: Option<HostName>,
    status: Option<StatusCode>,
    start: Instant,
    /// Request body bytes sent upstream (after rewriting).
    bytes_up: Arc<AtomicU64>,
    bytes_down: u64,
    /// A filter's refusal of the request body part-way, set by its [`RequestBody`].
    refusal: Arc<OnceLock<Refused>>,
    denied: Option<String>,
    error: Option<String>,
    meter: Arc<Meter>,
}

impl Exchange {
    /// Starts the record of a request whose head has just been read.
    pub(crate) fn begin(sandbox: SandboxTag, method: &Method, meter: Arc<Meter>) -> Self {
        meter.request_begun();
        Exchange {
            sandbox,
            method: method.clone(),
            host: None,
            status: None,
            start: Instant::now(),
            bytes_up: Arc::new(AtomicU64::new(0)),
            bytes_down: 0,
            refusal: Arc::new(OnceLock::new()),
            denied: None,
            error: None,
            meter,
        }
    }

    /// The host the request is for, once known.
    pub(crate) fn set_host(&mut self, host: HostName) {
        self.host = Some(host);
    }

    /// The filter's refusal of the request body, if it refused part-way.
    pub(crate) fn refusal(&self) -> Option<Refused> {
        self.refusal.get().cloned()
    }

    /// Records why the request was refused (by policy or by a filter).
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

    /// Answers with the upstream's response, its body streamed through `rewrite` (if any).
    pub(crate) fn upstream(
        self,
        response: Response<Incoming>,
        rewrite: Option<Box<dyn StreamRewrite>>,
    ) -> Response<ResponseBody> {
        self.respond(response.map(|body| Source::Upstream(Rewriting::new(body, rewrite))))
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
        let status = self.status.map_or(0, |s| s.as_u16());
        self.sandbox
            .metrics
            .http_request(&self.sandbox.name, status);
        let host = self.host.as_ref().map_or("", HostName::as_str);
        info!(
            sandbox = %self.sandbox,
            method = %self.method,
            host,
            status,
            bytes_up = self.bytes_up.load(Ordering::Relaxed),
            bytes_down = self.bytes_down,
            duration_ms = self.start.elapsed().as_millis() as u64,
            denied = self.denied.as_deref(),
            error = self.error.as_deref(),
            "http request"
        );
    }
}
