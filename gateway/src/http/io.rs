//! What the HTTP path knows about its sockets: bytes moved on the client connection, when bytes
//! last moved on either leg, and when the request head being read began; and the watchdog that
//! closes connections that stall.
//!
//! hyper's own header timeout also runs while a keep-alive connection waits for its next
//! request, so it would close idle keep-alive connections after the (short) head timeout. The
//! clocks here tell the two apart: the head clock starts at the first byte of a head, the idle
//! clock runs between requests.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

use super::HttpError;
use crate::relay::{RelayStats, Timeouts};

/// `head_since_ms` when no head is being read.
const NO_HEAD: u64 = u64::MAX;

/// Counters and clocks of one client connection, shared by its socket wrappers, its requests
/// and its watchdog.
#[derive(Debug)]
pub(crate) struct Meter {
    start: Instant,
    /// Whether requests are delimited by heads read from the byte stream (HTTP/1), so the
    /// head clock applies.
    heads: bool,
    /// Milliseconds after `start` when bytes last moved on either leg.
    last_io_ms: AtomicU64,
    /// Requests begun and not yet answered in full: none means the connection is between
    /// requests (for HTTP/1, waiting for a head). HTTP/2 may have many at once.
    open: AtomicUsize,
    /// Milliseconds after `start` when the first byte of the awaited head arrived.
    head_since_ms: AtomicU64,
    /// Wakes the watchdog when the head clock starts, so it can shorten its sleep.
    head_started: Notify,
    /// Bytes read from the client.
    read: AtomicU64,
    /// Bytes written to the client.
    written: AtomicU64,
}

/// Which leg a wrapped socket is: the client's bytes are counted and start the head clock, the
/// upstream's only show the connection is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leg {
    Client,
    Upstream,
}

/// Why the watchdog closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Idle between requests with nothing of a new head read: an ordinary keep-alive end.
    KeepAlive,
    /// Idle while a request was open.
    Idle,
    /// A head begun and not finished in time.
    Head,
}

impl Expiry {
    /// The watchdog's verdict as the connection's outcome.
    pub(crate) fn outcome(
        self,
        meter: &Meter,
        timeouts: Timeouts,
    ) -> Result<RelayStats, HttpError> {
        let stats = meter.stats();
        match self {
            Expiry::KeepAlive => Ok(stats),
            Expiry::Idle => Err(HttpError::Idle {
                idle: timeouts.idle,
                stats,
            }),
            Expiry::Head => Err(HttpError::HeadTimeout {
                timeout: timeouts.hello,
                stats,
            }),
        }
    }
}

impl Meter {
    /// A meter for a connection that starts waiting for a request head.
    pub(crate) fn new() -> Arc<Meter> {
        Meter::with_heads(true)
    }

    /// A meter for a connection whose requests are framed by the protocol (HTTP/2): only the
    /// idle clock applies.
    pub(crate) fn without_heads() -> Arc<Meter> {
        Meter::with_heads(false)
    }

    fn with_heads(heads: bool) -> Arc<Meter> {
        Arc::new(Meter {
            start: Instant::now(),
            heads,
            last_io_ms: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            head_since_ms: AtomicU64::new(NO_HEAD),
            head_started: Notify::new(),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    /// Bytes moved on the client connection so far.
    pub(crate) fn stats(&self) -> RelayStats {
        RelayStats {
            bytes_up: self.read.load(Ordering::Relaxed),
            bytes_down: self.written.load(Ordering::Relaxed),
        }
    }

    /// The head being awaited has begun (bytes of it were read before the meter existed).
    pub(crate) fn head_begun(&self) {
        self.start_head_clock();
    }

    /// A request head has been parsed: the head clock stops and the request is open until
    /// [`Meter::response_done`].
    pub(crate) fn request_begun(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(NO_HEAD, Ordering::Relaxed);
    }

    /// A request's response has been written (or abandoned).
    pub(crate) fn response_done(&self) {
        // Saturating: a stray call must not make the connection look busy forever.
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Whether no request is open.
    fn between_requests(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        later(self.start, Duration::from_millis(ms))
    }

    fn moved(&self, leg: Leg, read: usize, written: usize) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
        if leg == Leg::Upstream {
            return;
        }
        self.read.fetch_add(read as u64, Ordering::Relaxed);
        self.written.fetch_add(written as u64, Ordering::Relaxed);
        if read > 0 && self.heads && self.between_requests() {
            self.start_head_clock();
        }
    }

    fn start_head_clock(&self) {
        let started = self
            .head_since_ms
            .compare_exchange(NO_HEAD, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if started {
            self.head_started.notify_one();
        }
    }

    /// Completes when nothing has moved on either leg for `idle`, or when a head has taken
    /// longer than `head` since its first byte.
    pub(crate) async fn expired(&self, idle: Duration, head: Option<Duration>) -> Expiry {
        loop {
            let now = Instant::now();
            let idle_at = later(self.at(self.last_io_ms.load(Ordering::Relaxed)), idle);
            let since = self.head_since_ms.load(Ordering::Relaxed);
            let head_at = head
                .filter(|_| since != NO_HEAD)
                .map(|h| later(self.at(since), h));
            if head_at.is_some_and(|at| now >= at) {
                return Expiry::Head;
            }
            if now >= idle_at {
                let between = self.between_requests() && since == NO_HEAD;
                return if between {
                    Expiry::KeepAlive
                } else {
                    Expiry::Idle
                };
            }
            let wake = head_at.map_or(idle_at, |at| at.min(idle_at));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.head_started.notified() => {}
            }
        }
    }
}

/// `at + wait`, or a deadline decades away when an operator's timeout is too large to add.
fn later(at: Instant, wait: Duration) -> Instant {
    const DECADES: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(wait)
        .or_else(|| at.checked_add(DECADES))
        .unwrap_or(at)
}

/// A socket whose traffic is reported to a [`Meter`].
#[derive(Debug)]
pub(crate) struct Metered<T> {
    inner: T,
    meter: Arc<Meter>,
    leg: Leg,
}

impl<T> Metered<T> {
    pub(crate) fn new(inner: T, meter: Arc<Meter>, leg: Leg) -> Self {
        Metered { inner, meter, leg }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.meter.moved(this.leg, n, 0);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.meter.moved(this.leg, 0, n);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            this.meter.moved(this.leg, 0, n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const IDLE: Duration = Duration::from_secs(300);
    const HEAD: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn client_bytes_are_counted_and_upstream_bytes_are_not() {
        let meter = Meter::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut client = Metered::new(a, Arc::clone(&meter), Leg::Client);
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        client.write_all(b"hi").await.unwrap();
        let (c, _d) = tokio::io::duplex(64);
        let mut upstream = Metered::new(c, Arc::clone(&meter), Leg::Upstream);
        upstream.write_all(b"ignored").await.unwrap();
        assert_eq!(
            meter.stats(),
            RelayStats {
                bytes_up: 5,
                bytes_down: 2
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_between_requests_ends_as_keep_alive() {
        let meter = Meter::new();
        assert_eq!(meter.expired(IDLE, Some(HEAD)).await, Expiry::KeepAlive);
        assert!(meter.start.elapsed() >= IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_begun_head_must_finish_within_the_head_timeout() {
        let meter = Meter::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut client = Metered::new(a, Arc::clone(&meter), Leg::Client);
        let watch = meter.expired(IDLE, Some(HEAD));
        let trickle = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            b.write_all(b"GET").await.unwrap();
            let mut buf = [0u8; 3];
            client.read_exact(&mut buf).await.unwrap();
            std::future::pending::<()>().await;
        };
        let expiry = tokio::select! {
            expiry = watch => expiry,
            () = trickle => unreachable!(),
        };
        assert_eq!(expiry, Expiry::Head);
        // 60 s of keep-alive wait, then the head timeout, not the idle timeout.
        let elapsed = meter.start.elapsed();
        assert!(
            elapsed >= Duration::from_secs(70) && elapsed < IDLE,
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_request_is_idle() {
        let meter = Meter::new();
        meter.head_begun();
        meter.request_begun();
        assert_eq!(meter.expired(IDLE, Some(HEAD)).await, Expiry::Idle);
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
    }

    #[tokio::test(start_paused = true)]
    async fn without_heads_a_quiet_connection_ends_as_keep_alive() {
        let meter = Meter::without_heads();
        assert_eq!(meter.expired(IDLE, Some(HEAD)).await, Expiry::KeepAlive);
    }

    #[tokio::test(start_paused = true)]
    async fn without_heads_an_open_request_makes_quiet_idle() {
        let meter = Meter::without_heads();
        meter.request_begun();
        meter.request_begun();
        meter.response_done();
        assert_eq!(meter.expired(IDLE, Some(HEAD)).await, Expiry::Idle);
    }

    #[test]
    fn extra_response_done_calls_are_ignored() {
        let meter = Meter::new();
        meter.response_done();
        assert!(meter.between_requests());
        meter.request_begun();
        assert!(!meter.between_requests());
    }
}
