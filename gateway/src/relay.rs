//! Byte relay between a sandbox connection and its upstream, half-close aware: the splice of
//! raw TCP (bypass, plain TCP) and the copy between two TLS streams of an interception.

use std::{
    io,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use tokio::{net::TcpStream, time::Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Each direction's copy buffer starts small, so idle connections stay cheap, and doubles up to
/// the maximum while reads keep filling it, so bulk transfers move in large chunks.
const BUF_START: usize = 2 * 1024;
const BUF_MAX: usize = 64 * 1024;

/// Time limits of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The client's first bytes (its ClientHello), and its TLS handshake when intercepting.
    pub hello: Duration,
    /// Reaching the upstream: TCP connect, and the TLS handshake when intercepting.
    pub connect: Duration,
    /// A relay with no bytes moving either way for this long is closed.
    pub idle: Duration,
}

/// Bytes moved by a relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the sandbox client to the upstream.
    pub bytes_up: u64,
    /// From the upstream to the sandbox client.
    pub bytes_down: u64,
}

impl std::ops::Add for RelayStats {
    type Output = RelayStats;

    fn add(self, other: RelayStats) -> RelayStats {
        RelayStats {
            bytes_up: self.bytes_up + other.bytes_up,
            bytes_down: self.bytes_down + other.bytes_down,
        }
    }
}

/// A relay direction failed (or the relay went idle); both sockets are closed.
#[derive(Debug, thiserror::Error)]
#[error(
    "relaying {direction} failed after {} bytes up and {} down: {source}",
    .stats.bytes_up,
    .stats.bytes_down
)]
pub struct RelayError {
    /// `client->upstream` or `upstream->client`.
    pub direction: &'static str,
    /// What had been moved before the failure.
    pub stats: RelayStats,
    /// The socket error.
    #[source]
    pub source: io::Error,
}

/// Copies both ways until both sides have closed their sending half. An EOF from one side is
/// passed on as a shutdown of the other side's write half, so half-closed protocols work.
/// For TLS streams (which cannot be split without a lock); plain TCP uses [`splice`].
pub async fn relay<C, U>(client: C, upstream: U, idle: Duration) -> Result<RelayStats, RelayError>
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_rx, client_tx) = tokio::io::split(client);
    let (upstream_rx, upstream_tx) = tokio::io::split(upstream);
    relay_halves((client_rx, client_tx), (upstream_rx, upstream_tx), idle).await
}

/// Splices two TCP streams (whose halves need no lock), first sending `prefix`, the bytes
/// already read from the client, upstream.
pub async fn splice(
    client: TcpStream,
    prefix: &[u8],
    mut upstream: TcpStream,
    idle: Duration,
) -> Result<RelayStats, RelayError> {
    let replayed = RelayStats {
        bytes_up: prefix.len() as u64,
        bytes_down: 0,
    };
    upstream
        .write_all(prefix)
        .await
        .map_err(|source| RelayError {
            direction: "client->upstream",
            stats: RelayStats::default(),
            source,
        })?;
    relay_halves(client.into_split(), upstream.into_split(), idle)
        .await
        .map(|stats| stats + replayed)
        .map_err(|mut error| {
            error.stats = error.stats + replayed;
            error
        })
}

async fn relay_halves<CR, CW, UR, UW>(
    (mut client_rx, mut client_tx): (CR, CW),
    (mut upstream_rx, mut upstream_tx): (UR, UW),
    idle: Duration,
) -> Result<RelayStats, RelayError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut stats = RelayStats::default();
    let (up_done, down_done) = (AtomicBool::new(false), AtomicBool::new(false));
    let activity = Activity::new();
    let up = Direction {
        name: "client->upstream",
        done: &up_done,
        other_done: &down_done,
        activity: &activity,
    };
    let down = Direction {
        name: "upstream->client",
        done: &down_done,
        other_done: &up_done,
        activity: &activity,
    };
    let pumps = async {
        tokio::try_join!(
            pump(&mut client_rx, &mut upstream_tx, &mut stats.bytes_up, up),
            pump(
                &mut upstream_rx,
                &mut client_tx,
                &mut stats.bytes_down,
                down
            ),
        )
        .map(|_| ())
    };
    let result = tokio::select! {
        result = pumps => result,
        () = activity.idle_for(idle) => Err(("both ways", idle_error(idle))),
    };
    match result {
        Ok(()) => Ok(stats),
        Err((direction, source)) => Err(RelayError {
            direction,
            stats,
            source,
        }),
    }
}

fn idle_error(idle: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no data either way for {idle:?} (idle timeout)"),
    )
}

/// One direction of a relay, and what it knows of the other.
#[derive(Clone, Copy)]
struct Direction<'a> {
    name: &'static str,
    done: &'a AtomicBool,
    other_done: &'a AtomicBool,
    activity: &'a Activity,
}

/// When bytes last moved, shared by both directions of a relay.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

async fn pump<R, W>(
    rx: &mut R,
    tx: &mut W,
    count: &mut u64,
    dir: Direction<'_>,
) -> Result<(), (&'static str, io::Error)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_START];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if is_normal_close(&e, dir) => 0,
            Err(e) => return Err((dir.name, e)),
        };
        if n == 0 {
            dir.done.store(true, Ordering::Release);
            // The peer may be gone already; everything it should get has been written.
            let _ = tx.shutdown().await;
            return Ok(());
        }
        dir.activity.touch();
        tx.write_all(&buf[..n]).await.map_err(|e| (dir.name, e))?;
        // A TLS writer may keep records buffered after write_all; without a flush they would
        // wait for the next read, which on a keep-alive connection may never come.
        tx.flush().await.map_err(|e| (dir.name, e))?;
        *count += n as u64;
        if n == buf.len() && buf.len() < BUF_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Read errors that end a direction without losing anything: a TLS peer closing without
/// close_notify (many servers do), or a reset once the other direction has finished (clients
/// that close with unread data, such as our close_notify, reset instead of closing).
fn is_normal_close(err: &io::Error, dir: Direction<'_>) -> bool {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => true,
        io::ErrorKind::ConnectionReset => dir.other_done.load(Ordering::Acquire),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        // client <-> (client_side | relay | upstream_side) <-> upstream
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let relay = tokio::spawn(relay(client_side, upstream_side, Duration::from_secs(10)));

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");

        // The upstream answers after the client's half-close.
        let body = vec![7u8; 100_000];
        upstream.write_all(&body).await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, body);

        let stats = relay.await.unwrap().unwrap();
        assert_eq!(
            stats,
            RelayStats {
                bytes_up: 7,
                bytes_down: 100_000
            }
        );
    }

    #[tokio::test]
    async fn splice_replays_the_prefix_and_counts_it() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let splice = tokio::spawn(async move {
            splice(
                client_side,
                b"hello ",
                upstream_side,
                Duration::from_secs(10),
            )
            .await
        });
        client.write_all(b"world").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        upstream.shutdown().await.unwrap();
        let stats = splice.await.unwrap().unwrap();
        assert_eq!(stats.bytes_up, 11);
    }

    #[test]
    fn errors_read_as_words() {
        let error = RelayError {
            direction: "upstream->client",
            stats: RelayStats {
                bytes_up: 10,
                bytes_down: 0,
            },
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        };
        assert_eq!(
            error.to_string(),
            "relaying upstream->client failed after 10 bytes up and 0 down: connection reset"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relays_are_closed() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _upstream) = pair().await;
        let err = relay(client_side, upstream_side, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("idle timeout"), "{err}");
    }
}
