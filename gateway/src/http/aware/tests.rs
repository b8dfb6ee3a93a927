//! HTTP-aware interception end to end over in-memory streams: a hyper client (HTTP/1 or HTTP/2)
//! as the sandbox, `serve`, and hyper servers as the upstream. Plain streams stand in for the
//! TLS ones: `serve` only reads and writes them.

use std::{
    convert::Infallible,
    io,
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{
    Method, Response, StatusCode,
    header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE},
    request,
};
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};
use hyper::{
    body::{Body, Frame},
    client::conn::{http1 as client1, http2 as client2},
    server::conn::{http1 as server1, http2 as server2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, duplex},
    sync::{Notify, mpsc},
    task::JoinHandle,
};
use tokio_util::task::AbortOnDropHandle;

use super::*;
use crate::{
    http::{
        filter::tests::{
            BODY_REASON, FORBIDDEN, Fake, HEAD_REASON, PLACEHOLDER, REFUSE_HEADER, SCRUBBED, SECRET,
        },
        forbidden_body, log_capture,
    },
    net::{DialError, OrigDst},
};

type TestBody = BoxBody<Bytes, Infallible>;

/// The name the connection was intercepted for.
const SNI: &str = "api.test";
const BUFFER: usize = 64 * 1024;
const TIMEOUTS: Timeouts = Timeouts {
    hello: Duration::from_secs(5),
    connect: Duration::from_secs(5),
    idle: Duration::from_secs(5),
};

/// Fails the test instead of hanging it.
async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("test took longer than 10 s")
}

/// Runs a test for each protocol, as `name::http1` and `name::http2`.
macro_rules! both_protocols {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn http1() {
                bounded(super::$name(Protocol::Http1)).await;
            }

            #[tokio::test]
            async fn http2() {
                bounded(super::$name(Protocol::Http2)).await;
            }
        }
    )*};
}

both_protocols!(
    a_header_is_rewritten,
    a_query_is_rewritten,
    a_streamed_body_is_rewritten_across_chunks,
    a_refused_head_gets_the_page_and_nothing_goes_upstream,
    a_body_refused_part_way_never_reaches_the_upstream_whole,
    a_body_refused_after_the_answer_began_cuts_the_answer_off,
    the_response_head_and_body_are_scrubbed,
    a_host_other_than_the_tls_name_gets_403,
);

// ---- the pieces ----

/// An upstream request handler.
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    Arc::new(move |request| Box::pin(f(request)))
}

/// What the upstream got of one request.
#[derive(Debug)]
struct Seen {
    parts: request::Parts,
    body: Vec<u8>,
    /// Whether the body ended cleanly (not cut off by an error or a reset).
    complete: bool,
}

impl Seen {
    /// The authority the upstream was told: `Host` (HTTP/1) or `:authority` (HTTP/2).
    fn authority(&self) -> String {
        match self.parts.uri.authority() {
            Some(authority) => authority.to_string(),
            None => self.parts.headers[HOST].to_str().unwrap().to_owned(),
        }
    }
}

/// A handler that reports each request on the returned channels (each body frame as it
/// arrives, then the whole request) and answers `seen <path>`.
fn recording() -> (
    Handler,
    mpsc::UnboundedReceiver<Seen>,
    mpsc::UnboundedReceiver<Bytes>,
) {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (frames_tx, frames) = mpsc::unbounded_channel();
    let handler = handler(move |request: Request<Incoming>| {
        let (seen_tx, frames_tx) = (seen_tx.clone(), frames_tx.clone());
        async move {
            let (parts, mut body) = request.into_parts();
            let mut data = Vec::new();
            let mut complete = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    complete = false;
                    break;
                };
                if let Some(chunk) = frame.data_ref() {
                    data.extend_from_slice(chunk);
                    let _ = frames_tx.send(chunk.clone());
                }
            }
            let answer = format!("seen {}", parts.uri.path());
            let _ = seen_tx.send(Seen {
                parts,
                body: data,
                complete,
            });
            Response::new(full(answer))
        }
    });
    (handler, seen, frames)
}

/// Serves one upstream stream; with `keep_alive` off (HTTP/1), it closes after one response.
fn serve_upstream(io: DuplexStream, protocol: Protocol, keep_alive: bool, handler: Handler) {
    let service = service_fn(move |request| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, Infallible>(handler(request).await) }
    });
    let io = TokioIo::new(io);
    tokio::spawn(async move {
        let _ = match protocol {
            Protocol::Http1 => {
                server1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await
            }
            Protocol::Http2 => {
                server2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            }
        };
    });
}

/// `serve` at work: the sandbox's end of the client stream, the task, and how many times the
/// gateway opened another upstream stream.
struct Setup {
    client: DuplexStream,
    serving: JoinHandle<Result<RelayStats, HttpError>>,
    opens: Arc<AtomicUsize>,
}

/// Starts `serve` for [`SNI`] with an upstream served by `handler` on the first stream and on
/// every stream the opener makes.
fn gateway(
    protocol: Protocol,
    keep_alive: bool,
    filter: Option<Arc<dyn Filter>>,
    handler: Handler,
) -> Setup {
    let (first, upstream_side) = duplex(BUFFER);
    serve_upstream(upstream_side, protocol, keep_alive, Arc::clone(&handler));
    let opens = Arc::new(AtomicUsize::new(0));
    let reopen: Opener<DuplexStream> = {
        let opens = Arc::clone(&opens);
        Arc::new(move || {
            opens.fetch_add(1, Ordering::SeqCst);
            let (ours, theirs) = duplex(BUFFER);
            serve_upstream(theirs, protocol, keep_alive, Arc::clone(&handler));
            Box::pin(async move { Ok(ours) })
        })
    };
    start(protocol, first, reopen, filter, opens)
}

fn start(
    protocol: Protocol,
    first: DuplexStream,
    reopen: Opener<DuplexStream>,
    filter: Option<Arc<dyn Filter>>,
    opens: Arc<AtomicUsize>,
) -> Setup {
    let (client, gateway_side) = duplex(BUFFER);
    let alpn: &'static [u8] = match protocol {
        Protocol::Http1 => b"http/1.1",
        Protocol::Http2 => b"h2",
    };
    let upstream = Upstream {
        stream: first,
        reopen,
    };
    let serving = tokio::spawn(async move {
        let sni = HostName::parse(SNI).unwrap();
        let sandbox = SandboxTag::detached(crate::sandbox::SandboxId(9));
        serve(
            gateway_side,
            Some(alpn),
            upstream,
            &sni,
            filter,
            sandbox,
            TIMEOUTS,
        )
        .await
    });
    Setup {
        client,
        serving,
        opens,
    }
}

fn fake() -> Option<Arc<dyn Filter>> {
    Some(Arc::new(Fake))
}

/// The sandbox's HTTP client.
enum TestClient {
    Http1(client1::SendRequest<TestBody>),
    Http2(client2::SendRequest<TestBody>),
}

impl TestClient {
    async fn connect(io: DuplexStream, protocol: Protocol) -> (TestClient, AbortOnDropHandle<()>) {
        let io = TokioIo::new(io);
        match protocol {
            Protocol::Http1 => {
                let (sender, connection) = client1::handshake(io).await.unwrap();
                let driver = tokio::spawn(async move {
                    let _ = connection.await;
                });
                (TestClient::Http1(sender), AbortOnDropHandle::new(driver))
            }
            Protocol::Http2 => {
                let (sender, connection) =
                    client2::handshake(TokioExecutor::new(), io).await.unwrap();
                let driver = tokio::spawn(async move {
                    let _ = connection.await;
                });
                (TestClient::Http2(sender), AbortOnDropHandle::new(driver))
            }
        }
    }

    async fn send(&mut self, request: Request<TestBody>) -> Response<Incoming> {
        match self {
            TestClient::Http1(sender) => {
                sender.ready().await.unwrap();
                sender.send_request(request).await.unwrap()
            }
            TestClient::Http2(sender) => sender.send_request(request).await.unwrap(),
        }
    }
}

/// The client closes; `serve` must end cleanly.
async fn close(
    client: TestClient,
    driver: AbortOnDropHandle<()>,
    serving: JoinHandle<Result<RelayStats, HttpError>>,
) -> RelayStats {
    drop(client);
    let _ = driver.await;
    serving.await.unwrap().unwrap()
}

/// A request to `authority` for `path`, as each protocol's client writes it.
fn request(protocol: Protocol, authority: &str, path: &str) -> request::Builder {
    match protocol {
        Protocol::Http1 => Request::builder().uri(path).header(HOST, authority),
        Protocol::Http2 => Request::builder().uri(format!("https://{authority}{path}")),
    }
}

fn empty() -> TestBody {
    Empty::new().boxed()
}

fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed()
}

/// A body fed chunk by chunk from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx).boxed())
}

async fn text(response: Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Reads frames until they make up `expected` (a frame may come in pieces).
async fn receive(frames: &mut mpsc::UnboundedReceiver<Bytes>, expected: &str) {
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.extend_from_slice(&frames.recv().await.unwrap());
    }
    assert_eq!(String::from_utf8(got).unwrap(), expected);
}

// ---- both protocols ----

async fn a_header_is_rewritten(protocol: Protocol) {
    let (handler, mut seen, _frames) = recording();
    let setup = gateway(protocol, true, fake(), handler);
    let (mut client, driver) = TestClient::connect(setup.client, protocol).await;
    let request = request(protocol, SNI, "/v1")
        .header("x-api-key", PLACEHOLDER)
        .body(empty())
        .unwrap();
    let response = client.send(request).await;
    assert_eq!(text(response).await, "seen /v1");
    let seen = seen.recv().await.unwrap();
    assert_eq!(seen.parts.headers["x-api-key"], SECRET);
    assert_eq!(seen.authority(), SNI);
    close(client, driver, setup.serving).await;
    assert_eq!(setup.opens.load(Ordering::SeqCst), 0);
}

async fn a_query_is_rewritten(protocol: Protocol) {
    let (handler, mut seen, _frames) = recording();
    let setup = gateway(protocol, true, fake(), handler);
    let (mut client, driver) = TestClient::connect(setup.client, protocol).await;
    let path = format!("/v1/items?key={PLACEHOLDER}&page=2");
    let response = client
        .send(request(protocol, SNI, &path).body(empty()).unwrap())
        .await;
    assert_eq!(text(response).await, "seen /v1/items");
    let seen = seen.recv().await.unwrap();
    assert_eq!(
        seen.parts.uri.path_and_query().unwrap(),
        "/v1/items?key=s3cr3t&page=2"
    );
    close(client, driver, setup.serving).await;
}

async fn a_streamed_body_is_rewritten_across_chunks(protocol: Protocol) {
    let (handler, mut seen, mut frames) = recording();
    let setup = gateway(protocol, true, fake(), handler);
    let (mut client, driver) = TestClient::connect(setup.client, protocol).await;
    let (chunks, body) = channel_body();
    let request = request(protocol, SNI, "/upload")
        .method(Method::POST)
        .body(body)
        .unwrap();
    let send = client.send(request);
    let feed = async {
        // The placeholder is split across two chunks: the rewriter holds `PLACE` back, and
        // what comes before it reaches the upstream before the second chunk is sent.
        chunks.send(Bytes::from_static(b"abc PLACE")).await.unwrap();
        receive(&mut frames, "abc ").await;
        chunks
            .send(Bytes::from_static(b"HOLDER def"))
            .await
            .unwrap();
        receive(&mut frames, "s3cr3t def").await;
        drop(chunks);
    };
    let (response, ()) = tokio::join!(send, feed);
    assert_eq!(text(response).await, "seen /upload");
    let seen = seen.recv().await.unwrap();
    assert!(seen.complete);
    assert_eq!(seen.body, b"abc s3cr3t def");
    assert!(!seen.parts.headers.contains_key(CONTENT_LENGTH));
    if protocol == Protocol::Http1 {
        assert_eq!(seen.parts.headers[TRANSFER_ENCODING], "chunked");
    }
    close(client, driver, setup.serving).await;
}

async fn a_refused_head_gets_the_page_and_nothing_goes_upstream(protocol: Protocol) {
    let (handler, mut seen, _frames) = recording();
    let setup = gateway(protocol, true, fake(), handler);
    let (mut client, driver) = TestClient::connect(setup.client, protocol).await;
    let refused = request(protocol, SNI, "/refused")
        .method(Method::POST)
        .header(REFUSE_HEADER, "1")
        .body(full("body"))
        .unwrap();
    let response = client.send(refused).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(text(response).await, forbidden_body(SNI, HEAD_REASON));

    // The connection goes on; the refused request never reached the upstream.
    let response = client
        .send(request(protocol, SNI, "/next").body(empty()).unwrap())
        .await;
    assert_eq!(text(response).await, "seen /next");
    close(client, driver, setup.serving).await;
    assert_eq!(seen.recv().await.unwrap().parts.uri.path(), "/next");
    assert!(seen.try_recv().is_err());
}

async fn a_body_refused_part_way_never_reaches_the_upstream_whole(protocol: Protocol) {
    let (handler, mut seen, mut frames) = recording();
    let setup = gateway(protocol, true, fake(), handler);
    let (mut client, driver) = TestClient::connect(setup.client, protocol).await;
    let (chunks, body) = channel_body();
    let request = request(protocol, SNI, "/upload")
        .method(Method::POST)
        .body(body)
        .unwrap();
    let send = client.send(request);
    let feed = async {
        chunks.send(Bytes::from_static(b"hello ")).await.unwrap();
        receive(&mut frames, "hello ").await;
        chunks.send(Bytes::from(FORBIDDEN)).await.unwrap();
        // Kept open: the client is still sending when the answer comes.
        chunks
    };
    let (response, chunks) = tokio::join!(send, feed);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(text(response).await, forbidden_body(SNI, BODY_REASON));
    let seen = seen.recv().await.unwrap();
    assert!(!seen.complete, "the upstream got the whole request");
    assert_eq!(seen.body, b"hello ");
    drop(chunks);
    close(client, driver, setup.serving).await;
}

async fn a_body_refused_after_the_answer_began_cuts_the_answer_off(protocol: Protocol) {
    let (answers_tx, mut answers) = mpsc::unbounded_channel();
    let handler = handler(move |request: Request<Incoming>| {
        let answers_tx = answers_tx.clone();
        async move {
            // Answers at once, and keeps reading the request body meanwhile.
            tokio::spawn(request.into_body().collect());
            let (chunks, body) = channel_body();
            answers_tx.send(chunks).unwrap();
            Response::new(body)
        }
    });
    let setup = gateway(protocol, true, fake(), handler);
    let (mut client, driver) = TestClient::connect(setup.client, protocol).await;
    let (chunks, body) = channel_body();
    chunks.send(Bytes::from_static(b"hello ")).await.unwrap();
    let request = request(protocol, SNI, "/upload")
        .method(Method::POST)
        .body(body)
        .unwrap();
    let mut response = client.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = answers.recv().await.unwrap();
    answer.send(Bytes::from_static(b"partial")).await.unwrap();
    let frame = response.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "partial");

    chunks.send(Bytes::from(FORBIDDEN)).await.unwrap();
    // The client must not take an answer to a request the upstream never got whole as
    // complete: HTTP/1 loses the connection, HTTP/2 the stream.
    assert!(response.into_body().collect().await.is_err());
    drop((chunks, answer, client));
    let _ = driver.await;
    match setup.serving.await.unwrap() {
        Err(error) if protocol == Protocol::Http1 => assert!(
            error
                .to_string()
                .ends_with(&format!("refused with 403 Forbidden: {BODY_REASON}")),
            "{error}"
        ),
        outcome => {
            outcome.unwrap();
        }
    }
}

async fn the_response_head_and_body_are_scrubbed(protocol: Protocol) {
    let handler = handler(|_request: Request<Incoming>| async {
        let (chunks, body) = channel_body();
        tokio::spawn(async move {
            // The secret split across two chunks.
            for chunk in ["token=s3c", "r3t;"] {
                chunks
                    .send(Bytes::from_static(chunk.as_bytes()))
                    .await
                    .unwrap();
            }
        });
        Response::builder()
            .header("x-echo", format!("key={SECRET}"))
            .header(CONTENT_LENGTH, "13")
            .body(body)
            .unwrap()
    });
    let setup = gateway(protocol, true, fake(), handler);
    let (mut client, driver) = TestClient::connect(setup.client, protocol).await;
    let response = client
        .send(request(protocol, SNI, "/echo").body(empty()).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-echo"], format!("key={SCRUBBED}"));
    assert!(!response.headers().contains_key(CONTENT_LENGTH));
    assert_eq!(text(response).await, format!("token={SCRUBBED};"));
    close(client, driver, setup.serving).await;
}

async fn a_host_other_than_the_tls_name_gets_403(protocol: Protocol) {
    let (handler, mut seen, _frames) = recording();
    // No filter: the check does not depend on one.
    let setup = gateway(protocol, true, None, handler);
    let (mut client, driver) = TestClient::connect(setup.client, protocol).await;
    let response = client
        .send(request(protocol, "other.test", "/").body(empty()).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        text(response).await,
        forbidden_body(
            "other.test",
            "Host other.test does not match the TLS name api.test"
        )
    );
    // Case and port aside, the TLS name passes, and the upstream is told what was judged.
    let response = client
        .send(
            request(protocol, "API.test:443", "/ok")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(text(response).await, "seen /ok");
    close(client, driver, setup.serving).await;
    let seen_ok = seen.recv().await.unwrap();
    assert_eq!(seen_ok.authority(), "API.test:443");
    assert!(
        seen.try_recv().is_err(),
        "the fronted request went upstream"
    );
    assert_eq!(setup.opens.load(Ordering::SeqCst), 0);
}

// ---- HTTP/1 only ----

/// Writes raw bytes and reads until the gateway closes.
async fn raw_exchange(mut io: DuplexStream, request: &[u8]) -> String {
    io.write_all(request).await.unwrap();
    let mut answer = String::new();
    io.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn an_absolute_form_target_for_another_host_gets_403() {
    bounded(async {
        let (handler, mut seen, _frames) = recording();
        let setup = gateway(Protocol::Http1, true, None, handler);
        let answer = raw_exchange(
            setup.client,
            b"GET https://other.test/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
        assert!(
            answer.ends_with("Host other.test does not match the TLS name api.test\n"),
            "{answer}"
        );
        setup.serving.await.unwrap().unwrap();
        assert!(seen.try_recv().is_err());
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_upstream_connection() {
    bounded(async {
        let (handler, mut seen, _frames) = recording();
        let setup = gateway(Protocol::Http1, true, fake(), handler);
        let answer = raw_exchange(
            setup.client,
            b"GET /1 HTTP/1.1\r\nHost: api.test\r\n\r\n\
              GET /2?key=PLACEHOLDER HTTP/1.1\r\nHost: api.test\r\n\r\n\
              GET /3 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
        let at = |body: &str| {
            answer
                .find(body)
                .unwrap_or_else(|| panic!("{body}: {answer}"))
        };
        assert!(at("seen /1") < at("seen /2") && at("seen /2") < at("seen /3"));
        setup.serving.await.unwrap().unwrap();
        for path in ["/1", "/2?key=s3cr3t", "/3"] {
            assert_eq!(seen.recv().await.unwrap().parts.uri, path);
        }
        assert_eq!(setup.opens.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn a_closed_upstream_connection_is_reopened_through_the_opener() {
    bounded(async {
        let (handler, mut seen, _frames) = recording();
        // Each upstream connection closes after one response.
        let setup = gateway(Protocol::Http1, false, fake(), handler);
        let (mut client, driver) = TestClient::connect(setup.client, Protocol::Http1).await;
        for path in ["/first", "/second"] {
            let request = request(Protocol::Http1, SNI, path)
                .header("x-api-key", PLACEHOLDER)
                .body(empty())
                .unwrap();
            let response = client.send(request).await;
            assert_eq!(response.status(), StatusCode::OK);
            // The upstream's Connection: close concerns its own leg only.
            assert!(!response.headers().contains_key(CONNECTION));
            assert_eq!(text(response).await, format!("seen {path}"));
            assert_eq!(
                seen.recv().await.unwrap().parts.headers["x-api-key"],
                SECRET
            );
        }
        close(client, driver, setup.serving).await;
        assert_eq!(setup.opens.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reopened_gets_502() {
    bounded(async {
        let (handler, _seen, _frames) = recording();
        let (first, upstream_side) = duplex(BUFFER);
        serve_upstream(upstream_side, Protocol::Http1, false, handler);
        let reopen: Opener<DuplexStream> = Arc::new(|| {
            Box::pin(async {
                Err(InterceptError::Dial(DialError::Connect {
                    dst: OrigDst("192.0.2.1:443".parse().unwrap()),
                    source: io::Error::from(io::ErrorKind::ConnectionRefused),
                }))
            })
        });
        let opens = Arc::new(AtomicUsize::new(0));
        let setup = start(Protocol::Http1, first, reopen, None, opens);
        let (mut client, driver) = TestClient::connect(setup.client, Protocol::Http1).await;
        let response = client
            .send(request(Protocol::Http1, SNI, "/").body(empty()).unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let _ = text(response).await;
        let response = client
            .send(request(Protocol::Http1, SNI, "/").body(empty()).unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            text(response).await,
            "gateway: request to api.test failed: opening a new connection to api.test: \
             connecting to 192.0.2.1:443: connection refused\n"
        );
        close(client, driver, setup.serving).await;
    })
    .await;
}

#[tokio::test]
async fn an_accepted_upgrade_relays_raw_bytes_both_ways() {
    bounded(async {
        let handler = handler(|mut request: Request<Incoming>| async move {
            assert_eq!(request.headers()[UPGRADE], "websocket");
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                io.write_all(b"hello from upstream").await.unwrap();
                let mut got = Vec::new();
                io.read_to_end(&mut got).await.unwrap();
                io.write_all(&[b"echo: ".as_slice(), &got].concat())
                    .await
                    .unwrap();
                io.shutdown().await.unwrap();
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(UPGRADE, "websocket")
                .header(CONNECTION, "Upgrade")
                .body(empty())
                .unwrap()
        });
        let setup = gateway(Protocol::Http1, true, fake(), handler);
        let mut io = setup.client;
        io.write_all(
            b"GET /chat HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(io.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        let mut greeting = [0u8; 19];
        io.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello from upstream");
        io.write_all(b"frame").await.unwrap();
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"echo: frame");
        let stats = setup.serving.await.unwrap().unwrap();
        assert!(stats.bytes_up > 5 && stats.bytes_down > 30, "{stats:?}");
    })
    .await;
}

// ---- HTTP/2 only ----

#[tokio::test]
async fn http2_requests_share_one_upstream_connection_at_once() {
    bounded(async {
        let fast_arrived = Arc::new(Notify::new());
        let handler = handler({
            let fast_arrived = Arc::clone(&fast_arrived);
            move |request: Request<Incoming>| {
                let fast_arrived = Arc::clone(&fast_arrived);
                async move {
                    // The slow request is answered only once the fast one has arrived: both
                    // are open upstream at the same time.
                    match request.uri().path() {
                        "/slow" => fast_arrived.notified().await,
                        _ => fast_arrived.notify_one(),
                    }
                    Response::new(full(request.uri().path().to_owned()))
                }
            }
        });
        let setup = gateway(Protocol::Http2, true, fake(), handler);
        let (client, driver) = TestClient::connect(setup.client, Protocol::Http2).await;
        let TestClient::Http2(sender) = &client else {
            unreachable!()
        };
        let get = |path: &str| request(Protocol::Http2, SNI, path).body(empty()).unwrap();
        let slow = sender.clone().send_request(get("/slow"));
        let fast = sender.clone().send_request(get("/fast"));
        let (slow, fast) = tokio::join!(slow, fast);
        assert_eq!(text(slow.unwrap()).await, "/slow");
        assert_eq!(text(fast.unwrap()).await, "/fast");
        close(client, driver, setup.serving).await;
        assert_eq!(setup.opens.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn an_http2_host_field_is_not_passed_on() {
    bounded(async {
        let (handler, mut seen, _frames) = recording();
        let setup = gateway(Protocol::Http2, true, None, handler);
        let (mut client, driver) = TestClient::connect(setup.client, Protocol::Http2).await;
        // :authority is what is judged; a Host field naming another host must not reach an
        // upstream that might route by it.
        let request = request(Protocol::Http2, SNI, "/")
            .header(HOST, "other.test")
            .body(empty())
            .unwrap();
        let response = client.send(request).await;
        assert_eq!(text(response).await, "seen /");
        close(client, driver, setup.serving).await;
        let seen = seen.recv().await.unwrap();
        assert_eq!(seen.authority(), SNI);
        assert!(!seen.parts.headers.contains_key(HOST));
    })
    .await;
}

#[tokio::test]
async fn one_info_line_per_request_without_path_or_secret() {
    let (captured, _guard) = log_capture::capture();
    bounded(async {
        let (handler, _seen, _frames) = recording();
        let setup = gateway(Protocol::Http2, true, fake(), handler);
        let (mut client, driver) = TestClient::connect(setup.client, Protocol::Http2).await;
        let path = format!("/v1/private-path?key={PLACEHOLDER}");
        let response = client
            .send(request(Protocol::Http2, SNI, &path).body(empty()).unwrap())
            .await;
        assert_eq!(text(response).await, "seen /v1/private-path");
        let response = client
            .send(
                request(Protocol::Http2, "other.test", "/")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        let _ = text(response).await;
        close(client, driver, setup.serving).await;
    })
    .await;
    let logs = captured.text();
    let info: Vec<&str> = logs.lines().filter(|l| l.contains(" INFO ")).collect();
    assert_eq!(info.len(), 2, "{logs}");
    for field in [
        "sandbox=9",
        "method=GET",
        "host=\"api.test\"",
        "status=200",
        "bytes_down=21",
    ] {
        assert!(info[0].contains(field), "{field} missing: {}", info[0]);
    }
    assert!(info[1].contains("status=403"), "{}", info[1]);
    assert!(
        info[1].contains("denied=\"Host other.test does not match the TLS name api.test\""),
        "{}",
        info[1]
    );
    assert!(
        !logs.contains(SECRET) && !logs.contains(PLACEHOLDER),
        "{logs}"
    );
    assert!(
        !info.iter().any(|line| line.contains("private-path")),
        "{logs}"
    );
}
