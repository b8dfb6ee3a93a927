//! The proxy end to end on 127.0.0.1: a test client, the proxy, a tiny hyper upstream.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{
    Method, Response, StatusCode,
    header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE},
};
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};
use hyper::{
    body::{Body, Frame},
    client::conn::http1::SendRequest,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_util::task::AbortOnDropHandle;

use super::*;
use crate::http::{
    filter::tests::{Fake, HEAD_REASON, PLACEHOLDER, REFUSE_HEADER, SECRET},
    forbidden_body, log_capture,
};

type TestBody = BoxBody<Bytes, Infallible>;

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

/// Denies the listed names, allows the rest.
struct DenyList(Vec<&'static str>);

impl HostJudge for DenyList {
    fn judge(&self, host: &gateway_proto::HostName) -> Verdict {
        match self.0.iter().position(|name| *name == host.as_str()) {
            Some(i) => Verdict::Deny {
                reason: format!("host denied by rule deny_hosts[{i}] = {host}"),
            },
            None => Verdict::Allow,
        }
    }
}

fn allow_all() -> Arc<dyn HostJudge> {
    Arc::new(DenyList(Vec::new()))
}

/// A body fed frame by frame from a channel, to see bytes move before the body ends.
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

fn full(text: &'static str) -> TestBody {
    Full::new(Bytes::from_static(text.as_bytes())).boxed()
}

/// A hyper upstream on 127.0.0.1 that counts the connections it accepts.
struct TestUpstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    _server: AbortOnDropHandle<()>,
}

async fn upstream<F, Fut>(handler: F) -> TestUpstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepts);
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request).await) }
            });
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades(),
            );
        }
    });
    TestUpstream {
        addr,
        accepts,
        _server: AbortOnDropHandle::new(server),
    }
}

/// The gateway side: accepts one client, reads `prefix_len` bytes as `conn` would have, and
/// runs the proxy to `dst`.
async fn gateway(
    dst: SocketAddr,
    judge: Arc<dyn HostJudge>,
    prefix_len: usize,
    timeouts: Timeouts,
) -> (SocketAddr, JoinHandle<Result<RelayStats, HttpError>>) {
    filtered_gateway(dst, judge, None, prefix_len, timeouts).await
}

/// [`gateway`] with a filter.
async fn filtered_gateway(
    dst: SocketAddr,
    judge: Arc<dyn HostJudge>,
    filter: Option<Arc<dyn Filter>>,
    prefix_len: usize,
    timeouts: Timeouts,
) -> (SocketAddr, JoinHandle<Result<RelayStats, HttpError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut prefix = vec![0u8; prefix_len];
        client.read_exact(&mut prefix).await.unwrap();
        let dst = OrigDst(dst);
        proxy(
            client,
            prefix,
            dst,
            judge,
            filter,
            SandboxTag::detached(crate::sandbox::SandboxId(7)),
            timeouts,
        )
        .await
    });
    (addr, task)
}

/// An HTTP/1 client connection to the gateway.
async fn client(addr: SocketAddr) -> (SendRequest<TestBody>, AbortOnDropHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, AbortOnDropHandle::new(driver))
}

fn get(host: &str, path: &str) -> Request<TestBody> {
    Request::get(path)
        .header(HOST, host)
        .body(Empty::new().boxed())
        .unwrap()
}

async fn text(response: Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Sends raw bytes and reads until the peer closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn a_get_goes_to_the_original_destination_and_streams_back() {
    bounded(async {
        let (bodies_tx, mut bodies) = mpsc::unbounded_channel();
        let up = upstream(move |request: Request<Incoming>| {
            let bodies_tx = bodies_tx.clone();
            async move {
                // The Host's name resolves nowhere: only the original destination is used.
                assert_eq!(request.headers()[HOST], "app.invalid:8080");
                assert_eq!(request.uri(), "/p?token=x");
                assert!(!request.headers().contains_key("keep-alive"));
                let (tx, body) = channel_body();
                bodies_tx.send(tx).unwrap();
                Response::builder()
                    .header("x-upstream", "yes")
                    .body(body)
                    .unwrap()
            }
        })
        .await;
        // `conn` has already read the first bytes of the request line.
        let (addr, proxied) = gateway(up.addr, allow_all(), 8, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        let mut request = get("app.invalid:8080", "/p?token=x");
        request
            .headers_mut()
            .insert("keep-alive", "timeout=5".parse().unwrap());
        let mut response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-upstream"], "yes");

        // Each chunk reaches the client before the upstream writes the next one.
        let chunks = bodies.recv().await.unwrap();
        for chunk in ["first ", "second"] {
            chunks
                .send(Bytes::from_static(chunk.as_bytes()))
                .await
                .unwrap();
            let frame = response.body_mut().frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), chunk);
        }
        drop(chunks);
        assert!(response.body_mut().frame().await.is_none());

        drop(sender);
        let stats = proxied.await.unwrap().unwrap();
        assert!(stats.bytes_up > 8 && stats.bytes_down > 12, "{stats:?}");
        assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn a_chunked_post_streams_to_the_upstream() {
    bounded(async {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let up = upstream(move |request: Request<Incoming>| {
            let seen_tx = seen_tx.clone();
            async move {
                // Unknown length on the client side: chunked on the upstream side too.
                assert_eq!(request.headers()[TRANSFER_ENCODING], "chunked");
                let mut body = request.into_body();
                let mut total = Vec::new();
                while let Some(frame) = body.frame().await {
                    let data = frame.unwrap().into_data().unwrap();
                    seen_tx.send(data.clone()).unwrap();
                    total.extend_from_slice(&data);
                }
                let echo = format!("got {} bytes", total.len());
                Response::new(Full::new(Bytes::from(echo)).boxed())
            }
        })
        .await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        let (chunks, body) = channel_body();
        let request = Request::post("/upload")
            .header(HOST, "app.test")
            .body(body)
            .unwrap();
        let response = tokio::spawn(sender.send_request(request));

        // The upstream has each chunk before the client sends the next.
        for chunk in ["one", "two", "three"] {
            chunks
                .send(Bytes::from_static(chunk.as_bytes()))
                .await
                .unwrap();
            assert_eq!(seen.recv().await.unwrap(), chunk);
        }
        drop(chunks);
        let response = response.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "got 11 bytes");
        drop(sender);
        proxied.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn keep_alive_requests_share_one_upstream_connection() {
    bounded(async {
        let up = upstream(|request: Request<Incoming>| async move {
            let path = request.uri().path().to_owned();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let answer = format!("{path} {}", body.len());
            Response::new(Full::new(Bytes::from(answer)).boxed())
        })
        .await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        for i in 0..3 {
            sender.ready().await.unwrap();
            let request = Request::put(format!("/r{i}"))
                .header(HOST, "app.test")
                .body(full("12345"))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.headers()[CONTENT_LENGTH], "5");
            assert_eq!(text(response).await, format!("/r{i} 5"));
        }
        drop(sender);
        proxied.await.unwrap().unwrap();
        assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn a_head_response_keeps_its_content_length() {
    bounded(async {
        let up = upstream(|request: Request<Incoming>| async move {
            if request.method() != Method::HEAD {
                return Response::new(full("ok"));
            }
            Response::builder()
                .header(CONTENT_LENGTH, "1234")
                .body(Empty::new().boxed())
                .unwrap()
        })
        .await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        let request = Request::head("/")
            .header(HOST, "app.test")
            .body(Empty::new().boxed())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.headers()[CONTENT_LENGTH], "1234");
        assert_eq!(text(response).await, "");
        // The connection is still in step: a second request works.
        sender.ready().await.unwrap();
        let response = sender.send_request(get("app.test", "/")).await.unwrap();
        assert_eq!(text(response).await, "ok");
        drop(sender);
        proxied.await.unwrap().unwrap();
        assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn a_closed_upstream_connection_is_replaced() {
    bounded(async {
        let up = upstream(|_request: Request<Incoming>| async move {
            Response::builder()
                .header(CONNECTION, "close")
                .body(full("bye"))
                .unwrap()
        })
        .await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        for _ in 0..2 {
            sender.ready().await.unwrap();
            let response = sender.send_request(get("app.test", "/")).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            // The upstream's Connection: close concerns its own leg only.
            assert!(!response.headers().contains_key(CONNECTION));
            assert_eq!(text(response).await, "bye");
        }
        drop(sender);
        proxied.await.unwrap().unwrap();
        assert_eq!(up.accepts.load(Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn a_denied_host_gets_403_and_the_upstream_sees_nothing() {
    bounded(async {
        let up =
            upstream(|_request: Request<Incoming>| async move { Response::new(full("ok")) }).await;
        let judge = Arc::new(DenyList(vec!["api.example.com"]));
        let (addr, proxied) = gateway(up.addr, judge, 0, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        let response = sender
            .send_request(get("API.example.com:80", "/v1/secret?key=abc"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            text(response).await,
            forbidden_body(
                "api.example.com",
                "host denied by rule deny_hosts[0] = api.example.com"
            )
        );
        assert_eq!(up.accepts.load(Ordering::SeqCst), 0);

        // The connection stays usable for hosts that are allowed.
        sender.ready().await.unwrap();
        let response = sender.send_request(get("ok.test", "/")).await.unwrap();
        assert_eq!(text(response).await, "ok");
        assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
        drop(sender);
        proxied.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_request_without_host_gets_400() {
    bounded(async {
        let up =
            upstream(|_request: Request<Incoming>| async move { Response::new(full("ok")) }).await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with("gateway: bad request: the request has no Host header\n"),
            "{answer}"
        );
        proxied.await.unwrap().unwrap();
        assert_eq!(up.accepts.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn an_invalid_host_gets_400() {
    bounded(async {
        let up =
            upstream(|_request: Request<Incoming>| async move { Response::new(full("ok")) }).await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a@b.test\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with("the Host is not host[:port]\n"),
            "{answer}"
        );
        proxied.await.unwrap().unwrap();
        assert_eq!(up.accepts.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn an_accepted_upgrade_relays_raw_bytes_both_ways() {
    bounded(async {
        let up = upstream(|mut request: Request<Incoming>| async move {
            assert_eq!(request.headers()[UPGRADE], "websocket");
            assert_eq!(request.headers()[CONNECTION], "upgrade");
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
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(Empty::new().boxed())
                .unwrap()
        })
        .await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let head = read_head(&mut tcp).await;
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        assert!(head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));

        let mut greeting = [0u8; 19];
        tcp.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello from upstream");
        tcp.write_all(b"\x81\x05frame").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"echo: \x81\x05frame");

        let stats = proxied.await.unwrap().unwrap();
        assert!(stats.bytes_up > 7 && stats.bytes_down > 32, "{stats:?}");
    })
    .await;
}

#[tokio::test]
async fn an_h2c_upgrade_goes_upstream_as_a_plain_request() {
    bounded(async {
        let up = upstream(|request: Request<Incoming>| async move {
            if request.headers().contains_key(UPGRADE) {
                // A server that would switch, were it asked.
                return Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(UPGRADE, "h2c")
                    .header(CONNECTION, "Upgrade")
                    .body(Empty::new().boxed())
                    .unwrap();
            }
            assert!(!request.headers().contains_key("http2-settings"));
            Response::new(full("http/1.1 it is"))
        })
        .await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let answer = raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("http/1.1 it is"), "{answer}");
        proxied.await.unwrap().unwrap();
    })
    .await;
}

/// Reads an HTTP head byte by byte, leaving what follows unread.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn an_unreachable_upstream_gets_502() {
    bounded(async {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = closed.local_addr().unwrap();
        drop(closed);
        let (addr, proxied) = gateway(dst, allow_all(), 0, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        let response = sender.send_request(get("app.test", "/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let page = text(response).await;
        assert!(
            page.starts_with(&format!(
                "gateway: request to app.test failed: connecting to {dst}"
            )),
            "{page}"
        );
        drop(sender);
        proxied.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn connect_is_refused() {
    bounded(async {
        let up =
            upstream(|_request: Request<Incoming>| async move { Response::new(full("ok")) }).await;
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, TIMEOUTS).await;
        let answer = raw_exchange(
            addr,
            b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        proxied.await.unwrap().unwrap();
        assert_eq!(up.accepts.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn a_stalled_head_is_cut_at_the_head_timeout() {
    bounded(async {
        let up =
            upstream(|_request: Request<Incoming>| async move { Response::new(full("ok")) }).await;
        let timeouts = Timeouts {
            hello: Duration::from_millis(300),
            ..TIMEOUTS
        };
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, timeouts).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a").await.unwrap();
        let error = proxied.await.unwrap().unwrap_err();
        assert!(matches!(error, HttpError::HeadTimeout { .. }), "{error}");
        assert_eq!(error.stats().bytes_up, 23);
    })
    .await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_ends_cleanly() {
    bounded(async {
        let up =
            upstream(|_request: Request<Incoming>| async move { Response::new(full("ok")) }).await;
        // Idle longer than the head timeout: waiting between requests is not a slow head.
        let timeouts = Timeouts {
            hello: Duration::from_millis(100),
            idle: Duration::from_millis(500),
            ..TIMEOUTS
        };
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, timeouts).await;
        let (mut sender, _driver) = client(addr).await;
        let response = sender.send_request(get("app.test", "/")).await.unwrap();
        assert_eq!(text(response).await, "ok");
        let stats = proxied.await.unwrap().unwrap();
        assert!(stats.bytes_down > 0);
    })
    .await;
}

#[tokio::test]
async fn a_request_stalled_upstream_is_idle() {
    bounded(async {
        let up = upstream(|_request: Request<Incoming>| async move {
            std::future::pending::<()>().await;
            Response::new(full("never"))
        })
        .await;
        let timeouts = Timeouts {
            idle: Duration::from_millis(300),
            ..TIMEOUTS
        };
        let (addr, proxied) = gateway(up.addr, allow_all(), 0, timeouts).await;
        let (mut sender, _driver) = client(addr).await;
        let _pending = tokio::spawn(sender.send_request(get("app.test", "/")));
        let error = proxied.await.unwrap().unwrap_err();
        assert!(matches!(error, HttpError::Idle { .. }), "{error}");
    })
    .await;
}

#[tokio::test]
async fn one_info_line_per_request_and_the_path_only_at_debug() {
    let (captured, _guard) = log_capture::capture();
    bounded(async {
        let up =
            upstream(|_request: Request<Incoming>| async move { Response::new(full("ok")) }).await;
        let judge = Arc::new(DenyList(vec!["denied.test"]));
        let (addr, proxied) = gateway(up.addr, judge, 0, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        let response = sender
            .send_request(get("app.test", "/v1/secret-path?token=hunter2"))
            .await
            .unwrap();
        assert_eq!(text(response).await, "ok");
        sender.ready().await.unwrap();
        let response = sender
            .send_request(get("denied.test", "/other-secret"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let _ = text(response).await;
        drop(sender);
        proxied.await.unwrap().unwrap();
    })
    .await;
    let logs = captured.text();
    let info: Vec<&str> = logs.lines().filter(|l| l.contains(" INFO ")).collect();
    assert_eq!(info.len(), 2, "{logs}");
    for line in &info {
        assert!(
            !line.contains("secret") && !line.contains("hunter2"),
            "{line}"
        );
    }
    for field in [
        "sandbox=7",
        "method=GET",
        "host=\"app.test\"",
        "status=200",
        "bytes_up=0",
        "bytes_down=2",
        "duration_ms=",
    ] {
        assert!(info[0].contains(field), "{field} missing: {}", info[0]);
    }
    assert!(info[1].contains("status=403"), "{}", info[1]);
    let page = forbidden_body(
        "denied.test",
        "host denied by rule deny_hosts[0] = denied.test",
    );
    assert!(
        info[1].contains(&format!("bytes_down={}", page.len())),
        "{}",
        info[1]
    );
    assert!(
        info[1].contains("denied=\"host denied by rule deny_hosts[0] = denied.test\""),
        "{}",
        info[1]
    );
    let debug: Vec<&str> = logs.lines().filter(|l| l.contains(" DEBUG ")).collect();
    assert!(
        debug.iter().any(|l| l.contains("path=\"/v1/secret-path\"")),
        "{logs}"
    );
    assert!(
        !logs.contains("hunter2"),
        "the query is never logged: {logs}"
    );
}

#[tokio::test]
async fn a_filter_rewrites_requests_and_scrubs_responses() {
    bounded(async {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let up = upstream(move |request: Request<Incoming>| {
            let seen_tx = seen_tx.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                seen_tx.send((parts, body)).unwrap();
                Response::builder()
                    .header("x-echo", format!("key={SECRET}"))
                    .body(Full::new(Bytes::from(format!("you sent {SECRET}"))).boxed())
                    .unwrap()
            }
        })
        .await;
        let filter: Arc<dyn Filter> = Arc::new(Fake);
        let (addr, proxied) =
            filtered_gateway(up.addr, allow_all(), Some(filter), 0, TIMEOUTS).await;
        let (mut sender, _driver) = client(addr).await;
        let request = Request::post(format!("/v1?key={PLACEHOLDER}"))
            .header(HOST, "app.test")
            .header("x-api-key", PLACEHOLDER)
            .body(full("token=PLACEHOLDER"))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-echo"], "key=[scrubbed]");
        // The rewritten body may have changed length.
        assert!(!response.headers().contains_key(CONTENT_LENGTH));
        assert_eq!(text(response).await, "you sent [scrubbed]");
        let (parts, body) = seen.recv().await.unwrap();
        assert_eq!(parts.uri, "/v1?key=s3cr3t");
        assert_eq!(parts.headers["x-api-key"], SECRET);
        assert_eq!(parts.headers[TRANSFER_ENCODING], "chunked");
        assert!(!parts.headers.contains_key(CONTENT_LENGTH));
        assert_eq!(body, "token=s3cr3t");

        // A refusal: the page, nothing upstream, and the connection goes on.
        sender.ready().await.unwrap();
        let mut refused = get("app.test", "/");
        refused
            .headers_mut()
            .insert(REFUSE_HEADER, "1".parse().unwrap());
        let response = sender.send_request(refused).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            text(response).await,
            forbidden_body("app.test", HEAD_REASON)
        );
        sender.ready().await.unwrap();
        let response = sender.send_request(get("app.test", "/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let _ = text(response).await;
        drop(sender);
        proxied.await.unwrap().unwrap();
        let (parts, _) = seen.recv().await.unwrap();
        assert!(!parts.headers.contains_key(REFUSE_HEADER));
        assert!(
            seen.try_recv().is_err(),
            "the refused request went upstream"
        );
    })
    .await;
}
