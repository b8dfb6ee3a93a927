//! Bypassed connections spliced in the kernel. Once the peeked ClientHello is replayed
//! upstream, both sockets go into `SPLICE_SOCKS`, each with the other as its peer in
//! `SPLICE_PEERS`, and the stream verdict program hands every segment either one receives to
//! the other's send queue: the bytes never reach user space. The daemon only watches: an EOF
//! or a reset still wakes a socket's reader (a read returns 0 or the error) and is passed on,
//! half-close aware, with relay.rs's rules for which resets are a normal close; the idle
//! timeout reads the verdict's byte counters. Where the kernel refuses the setup, the bytes are
//! copied in user space ([`relay::splice`]).
//!
//! Setting up without losing or reordering a byte. A segment is judged when it arrives, not
//! when the socket is added: data already queued stays put until the next `data_ready`. So:
//! 1. the prefix is written upstream first, from user space: it is in the upstream's send
//!    queue before anything the verdict moves there;
//! 2. both sockets get an unreachable `SO_RCVLOWAT`: TCP calls `data_ready` only once that
//!    much is queued, so what arrives during the setup is queued, not judged (judged with one
//!    socket in the map and not the other, it would be redirected to a missing socket and
//!    dropped);
//! 3. both peer entries, then both sockets, go into the maps; a failure undoes what was done
//!    and falls back, and nothing was judged, so nothing was lost;
//! 4. setting `SO_RCVLOWAT` back runs `data_ready` (`tcp_set_rcvlowat` does), and the verdict
//!    moves what queued meanwhile, in order, behind the prefix.
//!
//! Half-close. Redirected segments reach the peer's send queue through the psock's backlog
//! work, asynchronously: the EOF after them is seen first. The peer's write half is shut only
//! once its send queue has taken every byte counted for it (TCP_INFO: bytes sent, less the
//! retransmitted ones, plus those not sent yet), else the FIN would overtake them.

use std::{
    io,
    net::Shutdown,
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use socket2::SockRef;
use tokio::{io::AsyncWriteExt as _, net::TcpStream, time::Instant};
use tracing::{debug, warn};

use crate::{
    ebpf::{EbpfError, SpliceMaps},
    relay::{self, RelayError, RelayStats},
};

/// How a splice moved its bytes, for the connection's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceMode {
    /// Socket to socket in the kernel (sockmap).
    Kernel,
    /// Copied through the daemon.
    User,
}

impl SpliceMode {
    /// The name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SpliceMode::Kernel => "kernel",
            SpliceMode::User => "user",
        }
    }
}

/// Why a connection could not be spliced in the kernel (it is then spliced in user space).
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// `SO_COOKIE` could not be read.
    #[error("reading the socket cookie of the {side}: {source}")]
    Cookie {
        side: &'static str,
        #[source]
        source: io::Error,
    },
    /// `SO_RCVLOWAT` could not be read or set.
    #[error("setting SO_RCVLOWAT of the {side}: {source}")]
    RcvLowat {
        side: &'static str,
        #[source]
        source: io::Error,
    },
    /// A map refused an entry (a full map; a socket the kernel cannot splice).
    #[error("adding the {side} to the kernel splice: {source}")]
    Map {
        side: &'static str,
        #[source]
        source: Box<EbpfError>,
    },
}

/// The first kernel splice that could not be set up is logged at warn, the others at debug:
/// the reason is the same for all of them (an old kernel, a full map), once is enough.
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// An unreachable `SO_RCVLOWAT` (the kernel caps it at half of `tcp_rmem[2]`): while it is set,
/// arriving segments are queued without a `data_ready`.
const RCVLOWAT_HOLD: libc::c_int = libc::c_int::MAX;

/// `tcpi_state` values (include/net/tcp_states.h; libc has no constants for them).
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;

/// Longest pause between two looks at a send queue being filled.
const DRAIN_PAUSE_MAX: Duration = Duration::from_millis(20);

/// Splices `client` and `upstream`, first sending `prefix` (the bytes already read from the
/// client) upstream: in the kernel when `kernel` is given and the kernel accepts both sockets,
/// else in user space. `mode` is set to how it was done.
pub async fn splice(
    kernel: Option<&SpliceMaps>,
    client: TcpStream,
    prefix: &[u8],
    mut upstream: TcpStream,
    idle: Duration,
    mode: &mut Option<SpliceMode>,
) -> Result<RelayStats, RelayError> {
    let Some(maps) = kernel else {
        *mode = Some(SpliceMode::User);
        return relay::splice(client, prefix, upstream, idle).await;
    };
    upstream
        .write_all(prefix)
        .await
        .map_err(|source| RelayError {
            direction: "client->upstream",
            stats: RelayStats::default(),
            source,
        })?;
    let replayed = prefix.len() as u64;
    match Installed::new(maps, &client, &upstream) {
        Ok(installed) => {
            *mode = Some(SpliceMode::Kernel);
            let result = watch(&installed, &client, &upstream, replayed, idle).await;
            // Out of the maps before the sockets close (a guard: on every path).
            drop(installed);
            result
        }
        Err(err) => {
            report_fallback(&err, &client, &upstream);
            *mode = Some(SpliceMode::User);
            let with_prefix = |stats: RelayStats| RelayStats {
                bytes_up: stats.bytes_up + replayed,
                ..stats
            };
            relay::splice(client, &[], upstream, idle)
                .await
                .map(with_prefix)
                .map_err(|mut error| {
                    error.stats = with_prefix(error.stats);
                    error
                })
        }
    }
}

/// Logs why a splice is done in user space: at warn the first time the kernel refuses (once
/// per daemon), at debug when a socket was no longer established (a client that sent its FIN
/// with the ClientHello: the kernel splices only established sockets) and after the first.
fn report_fallback(err: &SpliceError, client: &TcpStream, upstream: &TcpStream) {
    let established =
        |stream: &TcpStream| tcp_info(stream).is_ok_and(|info| info.tcpi_state == TCP_ESTABLISHED);
    if !(established(client) && established(upstream)) {
        debug!(error = %err, "kernel splice refused for a socket no longer established; splicing in user space");
    } else if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
        warn!(error = %err, "kernel splice unavailable; splicing bypassed connections in user space (logged once)");
    } else {
        debug!(error = %err, "kernel splice unavailable; splicing in user space");
    }
}

/// Both sockets of a kernel splice in the maps; taken out (sockets first, so no segment is
/// judged without a peer entry) when dropped, on every path.
struct Installed<'a> {
    maps: &'a SpliceMaps,
    client: u64,
    upstream: u64,
    peers: Vec<u64>,
    socks: Vec<u64>,
}

impl<'a> Installed<'a> {
    /// Steps 2 to 4 of the module doc. On failure nothing is left in the maps, the sockets'
    /// `SO_RCVLOWAT` is what it was, and no byte was moved.
    fn new(
        maps: &'a SpliceMaps,
        client: &TcpStream,
        upstream: &TcpStream,
    ) -> Result<Installed<'a>, SpliceError> {
        let cookie = |stream: &TcpStream, side| {
            SockRef::from(stream)
                .cookie()
                .map_err(|source| SpliceError::Cookie { side, source })
        };
        let mut installed = Installed {
            maps,
            client: cookie(client, "client")?,
            upstream: cookie(upstream, "upstream")?,
            peers: Vec::with_capacity(2),
            socks: Vec::with_capacity(2),
        };
        let lowat = |stream: &TcpStream, side| {
            rcvlowat(stream).map_err(|source| SpliceError::RcvLowat { side, source })
        };
        let (client_lowat, upstream_lowat) =
            (lowat(client, "client")?, lowat(upstream, "upstream")?);
        let hold = |stream: &TcpStream, side, value| {
            set_rcvlowat(stream, value).map_err(|source| SpliceError::RcvLowat { side, source })
        };
        let result = hold(client, "client", RCVLOWAT_HOLD)
            .and_then(|()| hold(upstream, "upstream", RCVLOWAT_HOLD))
            .and_then(|()| installed.add(client, upstream));
        if let Err(err) = result {
            drop(installed);
            // Back as they were; a failure here leaves a socket that reports readable late,
            // which the user-space splice still ends (EOF and errors are always reported).
            let _ = set_rcvlowat(client, client_lowat);
            let _ = set_rcvlowat(upstream, upstream_lowat);
            return Err(err);
        }
        // The client's queue first: before it is judged nothing of it has moved, so failing
        // here can still fall back. Then the upstream's.
        if let Err(err) = hold(client, "client", client_lowat) {
            drop(installed);
            let _ = set_rcvlowat(upstream, upstream_lowat);
            return Err(err);
        }
        if let Err(err) = hold(upstream, "upstream", upstream_lowat) {
            // The client's bytes may be on their way upstream already: too late to fall back.
            // What the upstream queued is judged with its next segment.
            warn!(error = %err, "kernel splice: the upstream's queued bytes wait for its next segment");
        }
        Ok(installed)
    }

    /// Peer entries, then sockets.
    fn add(&mut self, client: &TcpStream, upstream: &TcpStream) -> Result<(), SpliceError> {
        let map_err = |side| {
            move |source| SpliceError::Map {
                side,
                source: Box::new(source),
            }
        };
        self.maps
            .add_peer(self.client, self.upstream)
            .map_err(map_err("client"))?;
        self.peers.push(self.client);
        self.maps
            .add_peer(self.upstream, self.client)
            .map_err(map_err("upstream"))?;
        self.peers.push(self.upstream);
        self.maps
            .add_socket(self.client, client)
            .map_err(map_err("client"))?;
        self.socks.push(self.client);
        self.maps
            .add_socket(self.upstream, upstream)
            .map_err(map_err("upstream"))?;
        self.socks.push(self.upstream);
        Ok(())
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        for cookie in &self.socks {
            self.maps.remove_socket(*cookie);
        }
        for cookie in &self.peers {
            self.maps.remove_peer(*cookie);
        }
    }
}

/// One direction of a kernel splice.
struct Leg<'a> {
    /// `client->upstream` or `upstream->client`.
    name: &'static str,
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// The cookie of `from`: its entry counts what the verdict moved to `to`.
    cookie: u64,
    /// Bytes written to `to` from user space (the prefix; anything that reached user space).
    written: u64,
    /// The verdict's count, as last read.
    counted: u64,
    /// `from` has finished sending, or `to` can take nothing more.
    done: bool,
}

impl Leg<'_> {
    /// Everything handed to `to` so far, the verdict's count read afresh (kept on failure).
    fn moved(&mut self, maps: &SpliceMaps) -> u64 {
        match maps.bytes(self.cookie) {
            Ok(counted) => self.counted = counted,
            Err(err) => debug!(error = %err, "reading a kernel splice counter"),
        }
        self.counted + self.written
    }
}

/// Watches a kernel splice until both directions are done; returns what moved each way.
async fn watch(
    installed: &Installed<'_>,
    client: &TcpStream,
    upstream: &TcpStream,
    replayed: u64,
    idle: Duration,
) -> Result<RelayStats, RelayError> {
    let maps = installed.maps;
    let mut legs = [
        Leg {
            name: "client->upstream",
            from: client,
            to: upstream,
            cookie: installed.client,
            written: replayed,
            counted: 0,
            done: false,
        },
        Leg {
            name: "upstream->client",
            from: upstream,
            to: client,
            cookie: installed.upstream,
            written: 0,
            counted: 0,
            done: false,
        },
    ];
    let result = watch_legs(maps, &mut legs, idle).await;
    let stats = RelayStats {
        bytes_up: legs[0].moved(maps),
        bytes_down: legs[1].moved(maps),
    };
    result
        .map(|()| stats)
        .map_err(|(direction, source)| RelayError {
            direction,
            stats,
            source,
        })
}

/// What woke the watcher.
enum Event {
    /// Leg `0` (client) or `1` (upstream) has its source readable: EOF, an error, or (not
    /// expected) bytes the verdict passed up.
    Readable(usize, io::Result<()>),
    Tick,
}

async fn watch_legs(
    maps: &SpliceMaps,
    legs: &mut [Leg<'_>; 2],
    idle: Duration,
) -> Result<(), (&'static str, io::Error)> {
    let tick = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_counts = (0, 0);
    let mut last_change = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    while !(legs[0].done && legs[1].done) {
        let (client, upstream) = (legs[0].from, legs[1].from);
        let event = tokio::select! {
            ready = client.readable(), if !legs[0].done => Event::Readable(0, ready),
            ready = upstream.readable(), if !legs[1].done => Event::Readable(1, ready),
            _ = ticks.tick() => Event::Tick,
        };
        match event {
            Event::Readable(i, ready) => {
                let read = ready.and_then(|()| legs[i].from.try_read(&mut buf));
                match read {
                    Ok(0) => finish(maps, legs, i, idle).await?,
                    Ok(n) => {
                        // Only a segment judged without its peer entry gets here, which the
                        // setup rules out; handed on rather than lost.
                        debug!(
                            bytes = n,
                            direction = legs[i].name,
                            "kernel splice: bytes reached user space"
                        );
                        write_all(legs[i].to, &buf[..n])
                            .await
                            .map_err(|e| (legs[i].name, e))?;
                        legs[i].written += n as u64;
                        last_change = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => failed(maps, legs, i, e, idle).await?,
                }
            }
            Event::Tick => {
                let counts = (legs[0].moved(maps), legs[1].moved(maps));
                if counts != last_counts {
                    last_counts = counts;
                    last_change = Instant::now();
                } else if last_change.elapsed() >= idle {
                    return Err(("both ways", relay::idle_error(idle)));
                }
                closed_after_done(legs);
            }
        }
    }
    Ok(())
}

/// Leg `i`'s source sent its FIN: once its peer has taken every byte moved its way, the peer's
/// write half is shut.
async fn finish(
    maps: &SpliceMaps,
    legs: &mut [Leg<'_>; 2],
    i: usize,
    idle: Duration,
) -> Result<(), (&'static str, io::Error)> {
    let target = legs[i].moved(maps);
    let drained = drain(legs[i].to, target, idle).await;
    legs[i].done = true;
    match drained {
        Ok(()) => {
            // The peer may be gone already; everything it should get is in its queue.
            let _ = SockRef::from(legs[i].to).shutdown(Shutdown::Write);
            Ok(())
        }
        // The peer closed after finishing itself: what it was sent is unwanted, not lost.
        Err(e) if legs[1 - i].done && is_close(&e) => Ok(()),
        Err(e) => Err((legs[i].name, e)),
    }
}

/// Leg `i`'s source failed (a reset, most often). As in relay.rs, a normal close when the
/// exchange was complete: the other direction had finished, or, for the client, it had been
/// handed everything the upstream sent. Then the leg ends as with an EOF, and the other one
/// too (its destination is gone). Otherwise the other side is reset as well and the splice
/// fails.
async fn failed(
    maps: &SpliceMaps,
    legs: &mut [Leg<'_>; 2],
    i: usize,
    err: io::Error,
    idle: Duration,
) -> Result<(), (&'static str, io::Error)> {
    let other = 1 - i;
    let normal = err.kind() == io::ErrorKind::ConnectionReset
        && (legs[other].done || (i == 0 && delivered(maps, &mut legs[other])));
    if !normal {
        debug!(direction = legs[i].name, error = %err, "kernel splice: passing a failure on as a reset");
        reset(legs[i].to);
        return Err((legs[i].name, err));
    }
    legs[other].done = true;
    finish(maps, legs, i, idle).await
}

/// The leg has moved something and its destination had taken all of it when it closed (its
/// counters outlive the reset that closed it).
fn delivered(maps: &SpliceMaps, leg: &mut Leg<'_>) -> bool {
    let moved = leg.moved(maps);
    moved > 0 && tcp_info(leg.to).is_ok_and(|info| entered(&info) >= moved)
}

/// A finished leg's source that fails afterwards is the other leg's destination: the other leg
/// can deliver nothing more, which after this side finished is a normal close (relay.rs's
/// close while writing).
fn closed_after_done(legs: &mut [Leg<'_>; 2]) {
    for i in 0..2 {
        if legs[i].done
            && !legs[1 - i].done
            && let Ok(Some(err)) = SockRef::from(legs[i].from).take_error()
        {
            debug!(direction = legs[1 - i].name, error = %err, "kernel splice: destination closed after finishing");
            legs[1 - i].done = true;
        }
    }
}

/// Waits until `to`'s send queue has taken `target` bytes (the kernel fills it from the psock's
/// backlog work). Fails when `to` closes, or when nothing enters its queue for `idle`.
async fn drain(to: &TcpStream, target: u64, idle: Duration) -> io::Result<()> {
    let mut pause = Duration::from_millis(1);
    let mut last = queued(to)?;
    let mut since = Instant::now();
    while last < target {
        if since.elapsed() >= idle {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer's send queue took no bytes for {idle:?} with {} still to come",
                    target - last
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(DRAIN_PAUSE_MAX);
        let now = queued(to)?;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}

/// Bytes that entered the socket's send queue since it connected: sent once (sent less
/// retransmitted) plus not sent yet. Fails once the socket is closed (its bytes can no longer
/// be delivered).
fn queued(stream: &TcpStream) -> io::Result<u64> {
    let info = tcp_info(stream)?;
    if info.tcpi_state == TCP_CLOSE {
        return Err(SockRef::from(stream)
            .take_error()?
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe)));
    }
    Ok(entered(&info))
}

/// Bytes sent once plus bytes not sent yet: what entered the send queue.
fn entered(info: &libc::tcp_info) -> u64 {
    info.tcpi_bytes_sent
        .saturating_sub(info.tcpi_bytes_retrans)
        .saturating_add(u64::from(info.tcpi_notsent_bytes))
}

fn is_close(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::NotConnected
    )
}

/// Makes `stream` close with a reset (linger 0) when it is dropped.
fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Writes `buf` whole through a shared reference (the streams are borrowed by both legs).
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn tcp_info(stream: &TcpStream) -> io::Result<libc::tcp_info> {
    // SAFETY: all-zero is a valid tcp_info (integers only).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt on a socket we own, writing at most `len` bytes into `info`; a kernel
    // with a shorter struct leaves the rest zero.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

fn rcvlowat(stream: &TcpStream) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on a socket we own into an int of the right size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Sets `SO_RCVLOWAT`; on TCP this also runs `data_ready` when that much is queued already
/// (`tcp_set_rcvlowat`), which is what judges a spliced socket's queued bytes.
fn set_rcvlowat(stream: &TcpStream, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on a socket we own from an int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;
    use crate::ebpf::Programs;

    const IDLE: Duration = Duration::from_secs(10);

    /// The loaded programs (unpinned). These tests need root (`cargo xtask test` runs them
    /// as root): without it they fail, never skip.
    fn programs() -> Programs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the kernel splice tests load eBPF programs: run them as root"
        );
        Programs::load(None).unwrap()
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Runs a splice of `client_side` and `upstream_side` with `maps` in a task.
    fn spawn(
        maps: Option<SpliceMaps>,
        client_side: TcpStream,
        prefix: &'static [u8],
        upstream_side: TcpStream,
    ) -> tokio::task::JoinHandle<(Option<SpliceMode>, Result<RelayStats, RelayError>)> {
        tokio::spawn(async move {
            let mut mode = None;
            let result = splice(
                maps.as_ref(),
                client_side,
                prefix,
                upstream_side,
                IDLE,
                &mut mode,
            )
            .await;
            (mode, result)
        })
    }

    async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), future)
            .await
            .unwrap_or_else(|_| panic!("{what} took more than 30 s"))
    }

    /// Bytes queued before the setup, bytes sent during it, a half-close each way with the
    /// answer after it: all arrive whole and in order, counted, and nothing stays in the maps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_move_in_the_kernel_whole_and_in_order_with_half_close() {
        let programs = programs();
        let maps = programs.splice_maps();
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let up = pattern(8 << 20, 1);
        let down = pattern(6 << 20, 2);
        // Already in the client side's receive queue when the splice starts.
        client.write_all(&up[..1000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let splice = spawn(Some(maps.clone()), client_side, b"HELLO", upstream_side);
        let send = {
            let up = up.clone();
            tokio::spawn(async move {
                client.write_all(&up[1000..]).await.unwrap();
                client.shutdown().await.unwrap();
                client
            })
        };
        let mut got = Vec::new();
        bounded("reading upstream", upstream.read_to_end(&mut got))
            .await
            .unwrap();
        assert_eq!(got.len(), up.len() + 5);
        assert!(
            got[..5] == *b"HELLO" && got[5..] == up[..],
            "bytes up differ"
        );
        // The answer after the client's half-close.
        upstream.write_all(&down).await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut client = send.await.unwrap();
        let mut got = Vec::new();
        bounded("reading client", client.read_to_end(&mut got))
            .await
            .unwrap();
        assert!(
            got == down,
            "bytes down differ ({} of {})",
            got.len(),
            down.len()
        );
        let (mode, result) = bounded("the splice", splice).await.unwrap();
        assert_eq!(mode, Some(SpliceMode::Kernel));
        let stats = result.unwrap();
        assert_eq!(
            stats,
            RelayStats {
                bytes_up: up.len() as u64 + 5,
                bytes_down: down.len() as u64
            }
        );
        assert_eq!(maps.entries(), (0, 0));
    }

    /// The upstream speaks first, before the splice is set up: its bytes reach the client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_queued_upstream_before_the_setup_reach_the_client() {
        let programs = programs();
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        upstream.write_all(b"banner\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let splice = spawn(
            Some(programs.splice_maps()),
            client_side,
            b"",
            upstream_side,
        );
        let mut banner = [0u8; 7];
        bounded("the banner", client.read_exact(&mut banner))
            .await
            .unwrap();
        assert_eq!(&banner, b"banner\n");
        drop(client);
        let mut rest = Vec::new();
        bounded("the upstream's EOF", upstream.read_to_end(&mut rest))
            .await
            .unwrap();
        drop(upstream);
        let (mode, result) = bounded("the splice", splice).await.unwrap();
        assert_eq!(mode, Some(SpliceMode::Kernel));
        assert_eq!(result.unwrap().bytes_down, 7);
    }

    /// A client reset mid-transfer resets the upstream and fails the splice; an upstream reset
    /// mid-response resets the client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resets_mid_transfer_are_passed_on() {
        let programs = programs();
        let maps = programs.splice_maps();

        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let splice = spawn(Some(maps.clone()), client_side, b"GET", upstream_side);
        let mut request = [0u8; 3];
        upstream.read_exact(&mut request).await.unwrap();
        client.write_all(&[1u8; 1000]).await.unwrap();
        let mut part = [0u8; 1000];
        upstream.read_exact(&mut part).await.unwrap();
        reset_now(client);
        let mut rest = Vec::new();
        let err = bounded("the upstream's reset", upstream.read_to_end(&mut rest))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let (_, result) = bounded("the splice", splice).await.unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.direction, "client->upstream");
        assert_eq!(err.stats.bytes_up, 1003);

        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let splice = spawn(Some(maps.clone()), client_side, b"GET", upstream_side);
        upstream.read_exact(&mut request).await.unwrap();
        upstream.write_all(&[2u8; 100]).await.unwrap();
        let mut part = [0u8; 100];
        client.read_exact(&mut part).await.unwrap();
        reset_now(upstream);
        let mut rest = Vec::new();
        let err = bounded("the client's reset", client.read_to_end(&mut rest))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let (_, result) = bounded("the splice", splice).await.unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.direction, "upstream->client");
        assert_eq!(err.source.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(maps.entries(), (0, 0));
    }

    /// A client that resets once it has the whole response ends the splice normally.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_reset_after_the_whole_response_is_a_normal_close() {
        let programs = programs();
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let splice = spawn(
            Some(programs.splice_maps()),
            client_side,
            b"GET",
            upstream_side,
        );
        let mut request = [0u8; 3];
        upstream.read_exact(&mut request).await.unwrap();
        upstream.write_all(&[1u8; 5000]).await.unwrap();
        let mut response = [0u8; 5000];
        client.read_exact(&mut response).await.unwrap();
        reset_now(client);
        let mut rest = Vec::new();
        bounded("the upstream's EOF", upstream.read_to_end(&mut rest))
            .await
            .unwrap();
        drop(upstream);
        let (mode, result) = bounded("the splice", splice).await.unwrap();
        assert_eq!(mode, Some(SpliceMode::Kernel));
        assert_eq!(result.expect("a normal close").bytes_down, 5000);
    }

    /// Without the maps (`kernel_splice = false`) the bytes are copied in user space.
    #[tokio::test]
    async fn without_the_maps_the_splice_is_done_in_user_space() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let splice = spawn(None, client_side, b"hello ", upstream_side);
        client.write_all(b"world").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        upstream.shutdown().await.unwrap();
        let (mode, result) = splice.await.unwrap();
        assert_eq!(mode, Some(SpliceMode::User));
        assert_eq!(result.unwrap().bytes_up, 11);
    }

    /// A client that half-closed before the splice (its FIN came with the ClientHello) cannot
    /// go into the socket map (only established sockets can): the splice falls back to user
    /// space with nothing lost and nothing left in the maps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_the_kernel_refuses_falls_back_to_user_space_whole() {
        let programs = programs();
        let maps = programs.splice_maps();
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        client.write_all(b" and the rest").await.unwrap();
        client.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let splice = spawn(Some(maps.clone()), client_side, b"HELLO", upstream_side);
        let mut got = Vec::new();
        bounded("reading upstream", upstream.read_to_end(&mut got))
            .await
            .unwrap();
        assert_eq!(got, b"HELLO and the rest");
        upstream.write_all(b"answer").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
        let (mode, result) = bounded("the splice", splice).await.unwrap();
        assert_eq!(mode, Some(SpliceMode::User));
        assert_eq!(
            result.unwrap(),
            RelayStats {
                bytes_up: 18,
                bytes_down: 6
            }
        );
        assert_eq!(maps.entries(), (0, 0));
    }

    /// Idle splices are closed from the counters standing still.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_kernel_splices_are_closed() {
        let programs = programs();
        let (_client, client_side) = pair().await;
        let (upstream_side, _upstream) = pair().await;
        let mut mode = None;
        let maps = programs.splice_maps();
        let idle = Duration::from_millis(300);
        let started = Instant::now();
        let err = splice(
            Some(&maps),
            client_side,
            b"",
            upstream_side,
            idle,
            &mut mode,
        )
        .await
        .unwrap_err();
        assert_eq!(mode, Some(SpliceMode::Kernel));
        assert_eq!(err.source.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(maps.entries(), (0, 0));
    }

    fn reset_now(stream: TcpStream) {
        SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }
}
