//! The scrape endpoint: a small HTTP/1 server answering `GET /metrics` with the OpenMetrics
//! text, and 404 elsewhere. Meant for a host-only address; it is bounded anyway (connections,
//! header time, shutdown grace) so a stuck scraper cannot hold the daemon.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::Metrics;

/// The OpenMetrics text format, as scrapers ask for it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The one path served.
const PATH: &str = "/metrics";
/// A request's headers must arrive within this (also bounds an idle keep-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed on accept. Scrapers need one or two.
const MAX_CONNECTIONS: usize = 32;
/// How long open connections may finish their answer once shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Opening the listening socket failed.
    #[error("metrics endpoint: {op} {addr}: {source}")]
    Listen {
        /// What was being done (`bind`).
        op: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds `addr` and serves `/metrics` there until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen {
            op: "bind",
            addr,
            source,
        })?;
    serve_listener(listener, metrics, shutdown).await;
    Ok(())
}

/// Serves `/metrics` on an already bound listener until `shutdown` is cancelled; then lets open
/// connections finish for a short grace period.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    info!(?addr, "metrics endpoint listening");
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "metrics endpoint busy, connection closed");
            continue;
        };
        connections.spawn(serve_connection(
            stream,
            Arc::clone(&metrics),
            shutdown.clone(),
            slot,
        ));
    }
    connections.close();
    connections.wait().await;
    info!(?addr, "metrics endpoint stopped");
}

/// The next connection, or `None` once shutdown is asked for. Accept errors are transient for
/// a listener (a client gone before accept, descriptors exhausted): logged, then retried.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(connection) => return Some(connection),
            Err(error) => {
                warn!(%error, "metrics endpoint: accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

/// One scraper's connection (keep-alive), holding a slot until it ends.
async fn serve_connection(
    stream: TcpStream,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let service = service_fn(move |request| answer(request, Arc::clone(&metrics)));
    let connection = http1_server().serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, connection).await {
                Ok(result) => result,
                Err(_elapsed) => return,
            }
        }
    };
    if let Err(error) = result {
        debug!(%error, "metrics endpoint: connection ended with an error");
    }
}

fn http1_server() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // The header timeout needs a timer to run on.
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    builder
}

/// `GET` (or `HEAD`) `/metrics`: the encoding; another method there: 405; elsewhere: 404.
async fn answer(
    request: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != PATH {
        return Ok(plain(StatusCode::NOT_FOUND, "not found; try /metrics\n"));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    // The eBPF collector reads maps (system calls) while encoding: off the async workers.
    let Ok(text) = tokio::task::spawn_blocking(move || metrics.encode()).await else {
        return Ok(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        ));
    };
    Ok(with_type(
        Response::new(Full::new(Bytes::from(text))),
        CONTENT_TYPE,
    ))
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = with_type(
        Response::new(Full::new(Bytes::from_static(body.as_bytes()))),
        "text/plain; charset=utf-8",
    );
    *response.status_mut() = status;
    response
}

fn with_type(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
