//! Refusal pages on a TLS connection the gateway terminated for a name the rules deny: every
//! request gets a 403 saying why, in the HTTP version the client negotiated. No upstream is
//! ever contacted.

use std::{convert::Infallible, sync::Arc};

use gateway_proto::HostName;
use http::{Request, Response};
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    HttpError, Protocol,
    body::{Exchange, ResponseBody},
    io::{Leg, Meter, Metered},
    page::{Page, Then},
};
use crate::{
    relay::{RelayStats, Timeouts},
    sandbox::SandboxTag,
};

/// Answers every request on `stream` (TLS already terminated, `alpn` the protocol agreed in
/// the handshake) with a 403 page naming `host` and `reason`. HTTP/2 when `alpn` is `h2`:
/// until the client closes or nothing moves for `timeouts.idle`. Otherwise HTTP/1.1: the first
/// response closes the connection, and its head must arrive within `timeouts.hello` of its
/// first byte.
///
/// # Errors
/// [`HttpError`] when the client breaks the protocol, or stalls mid-head.
pub async fn forbid<S>(
    stream: S,
    alpn: Option<&[u8]>,
    host: &HostName,
    reason: &str,
    sandbox: SandboxTag,
    timeouts: Timeouts,
) -> Result<RelayStats, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2 = alpn == Some(b"h2".as_slice());
    let meter = if h2 {
        Meter::without_heads()
    } else {
        Meter::new()
    };
    let mut page = Page::forbidden(host.as_str(), reason);
    // HTTP/2 has no Connection field; an HTTP/1 connection ends with its one answer.
    page.then = if h2 { Then::KeepAlive } else { Then::Close };
    let refusal = Arc::new(Refusal {
        sandbox,
        host: host.clone(),
        page,
        reason: reason.to_owned(),
        meter: Arc::clone(&meter),
    });
    let service = service_fn(move |request| {
        let response = refusal.respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    let io = TokioIo::new(Metered::new(stream, Arc::clone(&meter), Leg::Client));
    let (served, protocol) = if h2 {
        let connection = http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
        tokio::select! {
            served = connection => (served, Protocol::Http2),
            // A client keeping a refused connection open and silent is let go, not failed.
            _ = meter.expired(timeouts.idle, None) => return Ok(meter.stats()),
        }
    } else {
        let connection = http1::Builder::new()
            .keep_alive(false)
            .header_read_timeout(None)
            .serve_connection(io, service);
        tokio::select! {
            served = connection => (served, Protocol::Http1),
            expiry = meter.expired(timeouts.idle, Some(timeouts.hello)) => {
                return expiry.outcome(&meter, timeouts);
            }
        }
    };
    served.map_err(|source| HttpError::Serve {
        protocol,
        stats: meter.stats(),
        source,
    })?;
    Ok(meter.stats())
}

/// The one answer of a denied connection.
struct Refusal {
    sandbox: SandboxTag,
    host: HostName,
    page: Page,
    reason: String,
    meter: Arc<Meter>,
}

impl Refusal {
    fn respond(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let mut exchange = Exchange::begin(
            self.sandbox.clone(),
            request.method(),
            Arc::clone(&self.meter),
        );
        exchange.set_host(self.host.clone());
        exchange.deny(&self.reason);
        exchange.page(self.page.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{BodyExt as _, Empty};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        hello: Duration::from_secs(5),
        connect: Duration::from_secs(5),
        idle: Duration::from_secs(5),
    };
    const REASON: &str = "host denied by rule deny_hosts[0] = *.example.com";
    const PAGE: &str = "gateway: request to api.example.com refused: host denied by rule deny_hosts[0] = *.example.com\n";

    fn host() -> HostName {
        HostName::parse("api.example.com").unwrap()
    }

    async fn bounded<F: Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .expect("test took longer than 10 s")
    }

    #[tokio::test]
    async fn http1_gets_one_403_and_the_connection_closes() {
        bounded(async {
            let (mut client, server) = tokio::io::duplex(4096);
            let host = host();
            let serving = tokio::spawn(async move {
                forbid(
                    server,
                    Some(b"http/1.1"),
                    &host,
                    REASON,
                    SandboxTag::detached(crate::sandbox::SandboxId(1)),
                    TIMEOUTS,
                )
                .await
            });
            client
                .write_all(b"GET /secret HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
            assert!(answer.contains("connection: close\r\n"), "{answer}");
            assert!(
                answer.contains("content-type: text/plain; charset=utf-8\r\n"),
                "{answer}"
            );
            assert!(answer.ends_with(PAGE), "{answer}");
            let stats = serving.await.unwrap().unwrap();
            assert_eq!(stats.bytes_down, answer.len() as u64);
        })
        .await;
    }

    #[tokio::test]
    async fn without_alpn_http1_is_spoken() {
        bounded(async {
            let (mut client, server) = tokio::io::duplex(4096);
            let host = host();
            let serving = tokio::spawn(async move {
                forbid(
                    server,
                    None,
                    &host,
                    REASON,
                    SandboxTag::detached(crate::sandbox::SandboxId(1)),
                    TIMEOUTS,
                )
                .await
            });
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
            serving.await.unwrap().unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn http2_gets_403_on_every_stream_until_the_client_closes() {
        bounded(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let host = host();
            let serving = tokio::spawn(async move {
                forbid(
                    server,
                    Some(b"h2"),
                    &host,
                    REASON,
                    SandboxTag::detached(crate::sandbox::SandboxId(1)),
                    TIMEOUTS,
                )
                .await
            });
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                    .await
                    .unwrap();
            let driver = tokio::spawn(connection);
            for path in ["/a", "/b"] {
                let request = Request::get(format!("https://api.example.com{path}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::FORBIDDEN);
                assert_eq!(
                    response.headers()[http::header::CONTENT_TYPE],
                    "text/plain; charset=utf-8"
                );
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, PAGE);
            }
            drop(sender);
            driver.await.unwrap().unwrap();
            let stats = serving.await.unwrap().unwrap();
            assert!(stats.bytes_up > 0 && stats.bytes_down > 0, "{stats:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn a_silent_http2_client_is_let_go_when_idle() {
        let (_client, server) = tokio::io::duplex(4096);
        let timeouts = Timeouts {
            idle: Duration::from_millis(200),
            ..TIMEOUTS
        };
        let stats = bounded(forbid(
            server,
            Some(b"h2"),
            &host(),
            REASON,
            SandboxTag::detached(crate::sandbox::SandboxId(1)),
            timeouts,
        ))
        .await
        .unwrap();
        // hyper sent its SETTINGS frame; nothing was read.
        assert_eq!(stats.bytes_up, 0);
    }
}
