//! Byte relay between a sandbox connection and its upstream, half-close aware: the splice of
//! raw TCP (bypass, plain TCP) and the copy between two TLS streams of an interception.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    task::Poll,
    time::Duration,
};

use tokio::{net::TcpStream, time::Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

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
    let (up_state, down_state) = (Progress::default(), Progress::default());
    let activity = Activity::new();
    let up = Direction {
        name: "client->upstream",
        from_client: true,
        state: &up_state,
        other: &down_state,
        activity: &activity,
    };
    let down = Direction {
        name: "upstream->client",
        from_client: false,
        state: &down_state,
        other: &up_state,
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

pub(crate) fn idle_error(idle: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no data either way for {idle:?} (idle timeout)"),
    )
}

/// One direction of a relay, and what it knows of the other.
#[derive(Clone, Copy)]
struct Direction<'a> {
    name: &'static str,
    /// It reads from the sandbox's client.
    from_client: bool,
    state: &'a Progress,
    /// The other direction's, which writes to the peer this one reads from.
    other: &'a Progress,
    activity: &'a Activity,
}

/// Where one direction is, for the other to judge how a connection ended.
#[derive(Default)]
struct Progress {
    /// Its source has finished sending (EOF).
    done: AtomicBool,
    /// A write (and its flush) is under way: bytes read are not all handed on yet.
    writing: AtomicBool,
    /// It has handed on at least one byte.
    moved: AtomicBool,
}

impl Progress {
    /// Everything it read so far has been handed on, and something was: an exchange is complete
    /// as far as this direction goes.
    fn delivered(&self) -> bool {
        self.moved.load(Ordering::Acquire) && !self.writing.load(Ordering::Acquire)
    }
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
    // What a gathering read ran into, for the next turn to act on once the bytes before it
    // are written.
    let mut ended: Option<io::Result<()>> = None;
    loop {
        let first = match ended.take() {
            Some(end) => end.map(|()| 0),
            None => rx.read(&mut buf).await,
        };
        let mut n = match first {
            Ok(n) => n,
            Err(e) if is_normal_close(&e, dir) => 0,
            Err(e) => return Err((dir.name, e)),
        };
        if n == 0 {
            dir.state.done.store(true, Ordering::Release);
            // The peer may be gone already; everything it should get has been written.
            let _ = tx.shutdown().await;
            return Ok(());
        }
        dir.activity.touch();
        n += gather_ready(rx, &mut buf[n..], &mut ended).await;
        dir.state.writing.store(true, Ordering::Release);
        match write_and_flush(tx, &buf[..n]).await {
            Ok(()) => {}
            Err(e) if is_close_while_writing(&e, dir) => {
                // The peer closed after saying all it had to say: what it was sent now is
                // unwanted, not lost. Nothing more can go its way.
                dir.state.done.store(true, Ordering::Release);
                dir.state.writing.store(false, Ordering::Release);
                return Ok(());
            }
            Err(e) => return Err((dir.name, e)),
        }
        dir.state.writing.store(false, Ordering::Release);
        dir.state.moved.store(true, Ordering::Release);
        *count += n as u64;
        if n == buf.len() && buf.len() < BUF_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Adds to `buf` what `rx` has ready now, without waiting, so one write (one flush, a few
/// full TLS records in one `writev`) carries it all instead of one write per read. Stops at
/// the first read that would wait; an EOF or error it meets is put in `ended`.
async fn gather_ready<R: AsyncRead + Unpin>(
    rx: &mut R,
    buf: &mut [u8],
    ended: &mut Option<io::Result<()>>,
) -> usize {
    let mut read = ReadBuf::new(buf);
    // Polled once, with this task's waker: a read that would wait has registered it, which
    // costs at most a spurious wakeup, as the next `read` polls again anyway.
    std::future::poll_fn(|cx| {
        while read.remaining() > 0 {
            let before = read.filled().len();
            match Pin::new(&mut *rx).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().len() == before => {
                    *ended = Some(Ok(()));
                    break;
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    *ended = Some(Err(e));
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(())
    })
    .await;
    read.filled().len()
}

/// `buf` written whole, then flushed: a TLS writer may keep records buffered after write_all,
/// and without a flush they would wait for the next read, which on a keep-alive connection
/// may never come.
async fn write_and_flush<W: AsyncWrite + Unpin>(tx: &mut W, buf: &[u8]) -> io::Result<()> {
    tx.write_all(buf).await?;
    tx.flush().await
}

/// Read errors that end a direction without losing anything: a TLS peer closing without
/// close_notify (many servers do), or a reset once the exchange is complete: the other
/// direction has finished, or, for a client, it was handed everything the upstream sent
/// (clients that close with unread data, such as our close_notify, or that abandon a
/// kept-alive connection, reset instead of closing). An upstream's reset before the client is
/// done is a failure: it may have cut a response short.
fn is_normal_close(err: &io::Error, dir: Direction<'_>) -> bool {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => true,
        io::ErrorKind::ConnectionReset => {
            dir.other.done.load(Ordering::Acquire) || (dir.from_client && dir.other.delivered())
        }
        _ => false,
    }
}

/// Write errors that are a normal close: the peer, having finished sending (its direction
/// done), reset or shut its socket while this direction still had bytes for it (a server's
/// close_notify after the client closed).
fn is_close_while_writing(err: &io::Error, dir: Direction<'_>) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ) && dir.other.done.load(Ordering::Acquire)
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

    /// Yields its chunks one per read, all ready at once, as a TLS stream hands out records.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk[n..].to_vec());
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Counts the writes and flushes it gets.
    #[derive(Default)]
    struct Counting {
        bytes: Vec<u8>,
        writes: usize,
        flushes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// 1,000 records of 1 KiB ready at once go out in a handful of writes (the buffer grows to
    /// 64 KiB), not one write and flush per record, and every byte arrives in order.
    #[tokio::test]
    async fn ready_reads_are_gathered_into_one_write() {
        let data: Vec<u8> = (0..1_024_000u32).map(|i| (i % 253) as u8).collect();
        let mut rx = Chunks(data.chunks(1024).map(<[u8]>::to_vec).collect());
        let mut tx = Counting::default();
        let (state, other) = (Progress::default(), Progress::default());
        let activity = Activity::new();
        let dir = Direction {
            name: "upstream->client",
            from_client: false,
            state: &state,
            other: &other,
            activity: &activity,
        };
        let mut count = 0;
        pump(&mut rx, &mut tx, &mut count, dir).await.unwrap();
        assert_eq!(tx.bytes, data);
        assert_eq!(count, data.len() as u64);
        // 2+4+...+64 KiB while growing, then 64 KiB writes: 21 in all.
        assert!(tx.writes <= 21, "{} writes", tx.writes);
        assert_eq!(tx.flushes, tx.writes);
    }

    /// A client that resets once it has every byte of the response (an abandoned keep-alive
    /// connection) ends the splice as a normal close.
    #[tokio::test]
    async fn a_client_reset_after_the_whole_response_is_a_normal_close() {
        let (client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let splice = tokio::spawn(splice(
            client_side,
            b"GET / HTTP/1.1\r\n\r\n",
            upstream_side,
            Duration::from_secs(10),
        ));
        let mut request = [0u8; 18];
        upstream.read_exact(&mut request).await.unwrap();
        upstream.write_all(&[1u8; 5000]).await.unwrap();
        let mut client = client;
        let mut response = [0u8; 5000];
        client.read_exact(&mut response).await.unwrap();
        reset(client);
        // The upstream is told (EOF) and closes.
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).await.unwrap();
        drop(upstream);
        let stats = splice.await.unwrap().expect("a normal close");
        assert_eq!(stats.bytes_down, 5000);
    }

    /// An upstream reset before the client is done is still a failure: it may have cut the
    /// response short.
    #[tokio::test]
    async fn an_upstream_reset_mid_response_is_a_failure() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let splice = tokio::spawn(splice(
            client_side,
            b"GET",
            upstream_side,
            Duration::from_secs(10),
        ));
        let mut request = [0u8; 3];
        upstream.read_exact(&mut request).await.unwrap();
        upstream.write_all(&[1u8; 100]).await.unwrap();
        let mut part = [0u8; 100];
        client.read_exact(&mut part).await.unwrap();
        reset(upstream);
        let error = splice.await.unwrap().unwrap_err();
        assert_eq!(error.direction, "upstream->client");
        assert_eq!(error.source.kind(), io::ErrorKind::ConnectionReset);
    }

    /// Closes `stream` with a reset (linger 0).
    fn reset(stream: TcpStream) {
        let socket = socket2::SockRef::from(&stream);
        socket.set_linger(Some(Duration::ZERO)).unwrap();
        drop(stream);
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
