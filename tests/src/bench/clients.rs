//! Small clients the bench runs as children inside a sandbox cgroup (`gateway-bench client ...`,
//! the binary re-executing itself; arguments in [`super::cli::Client`]): timed TLS handshakes to
//! many names, a tight connect loop, and many held-open idle TLS connections. Each prints one
//! JSON object on stdout.

use std::{
    io::{BufRead as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    client::Resumption,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use serde_json::json;
use socket2::SockRef;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS client config trusting only the CA certificates in `ca` (PEM), offering HTTP/1.1,
/// without session resumption (every handshake is a full one).
pub fn client_config(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {ca:?}"))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to `addr` and completes a TLS handshake for `name`; returns the time both took.
pub fn handshake(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> anyhow::Result<(Duration, StreamOwned<ClientConnection, TcpStream>)> {
    let start = Instant::now();
    let mut tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let server_name = ServerName::try_from(name.to_owned())?;
    let mut conn = ClientConnection::new(Arc::clone(config), server_name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .with_context(|| format!("TLS handshake with {name} at {addr}"))?;
    }
    Ok((start.elapsed(), StreamOwned::new(conn, tcp)))
}

/// Closes cleanly: close_notify, then read (and drop) what the server still sends (e.g. session
/// tickets) until it closes too, so the kernel does not answer unread data with a reset. Best
/// effort: the figures are taken already, and a peer that closed first makes these calls fail
/// harmlessly.
pub fn close(mut stream: StreamOwned<ClientConnection, TcpStream>) {
    stream.conn.send_close_notify();
    let _ = stream.flush();
    let _ = stream.sock.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.sock.shutdown(std::net::Shutdown::Write);
    let mut buf = [0u8; 4096];
    while let Ok(n) = std::io::Read::read(&mut stream.sock, &mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// `handshakes`: for each pass, one connection + handshake per name `<prefix><i>.<domain>`
/// (i = 1..=count, zero-padded to 4), sequentially. Prints
/// `{"passes": [[µs, ...], ...], "errors": n, "first_error": "..."}`.
pub fn handshakes(
    ca: &Path,
    addr: SocketAddr,
    prefix: &str,
    domain: &str,
    count: usize,
    passes: usize,
) -> anyhow::Result<()> {
    let config = client_config(ca)?;
    let mut all = Vec::new();
    let mut errors = 0u64;
    let mut first_error = String::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    for _ in 0..passes {
        let mut times = Vec::with_capacity(count);
        for i in 1..=count {
            if Instant::now() > deadline {
                bail!("handshakes took longer than 600 s");
            }
            let name = format!("{prefix}{i:04}.{domain}");
            match handshake(&config, addr, &name) {
                Ok((took, stream)) => {
                    times.push(took.as_secs_f64() * 1e6);
                    close(stream);
                }
                Err(err) => {
                    errors += 1;
                    if first_error.is_empty() {
                        first_error = format!("{err:#}");
                    }
                    times.push(f64::NAN);
                }
            }
        }
        all.push(times);
    }
    let out = json!({ "passes": all, "errors": errors, "first_error": first_error });
    println!("{out}");
    Ok(())
}

/// `connects`: `count` TCP connects to `addr` in a tight loop (socket, connect, close with
/// RST so no TIME_WAIT piles up), after `count / 10` warm-up connects. A failed connect is
/// counted, not fatal: a refused one (EPERM) is far cheaper than a real one, so the caller must
/// see how many there were. Prints
/// `{"ns_per_connect": x, "count": n, "errors": n, "eperm": n, "first_error": "..."}`.
pub fn connects(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut failures = ConnectFailures::default();
    for _ in 0..count / 10 {
        failures.add(connect_once(addr));
    }
    let start = Instant::now();
    for _ in 0..count {
        failures.add(connect_once(addr));
    }
    let ns = start.elapsed().as_nanos() as f64 / count as f64;
    let out = json!({
        "ns_per_connect": ns,
        "count": count,
        "errors": failures.errors,
        "eperm": failures.eperm,
        "first_error": failures.first,
    });
    println!("{out}");
    Ok(())
}

/// One connect, closed at once with RST (linger 0).
fn connect_once(addr: SocketAddr) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr)?;
    SockRef::from(&stream).set_linger(Some(Duration::ZERO))
}

/// Failed connects of a [`connects`] loop, warm-up included.
#[derive(Debug, Default)]
struct ConnectFailures {
    errors: u64,
    /// Of those, refused with EPERM (what the policy answers).
    eperm: u64,
    first: String,
}

impl ConnectFailures {
    fn add(&mut self, result: std::io::Result<()>) {
        let Err(err) = result else { return };
        self.errors += 1;
        if err.raw_os_error() == Some(nix::libc::EPERM) {
            self.eperm += 1;
        }
        if self.first.is_empty() {
            self.first = err.to_string();
        }
    }
}

/// `hold`: opens `count` TLS connections to `name` at `addr` (handshake complete, then idle)
/// from `threads` threads, prints `{"opened": n, "errors": n, "first_error": "..."}`, then
/// keeps them open until stdin reaches EOF (or 300 s pass).
pub fn hold(
    ca: &Path,
    addr: SocketAddr,
    name: &str,
    count: usize,
    threads: usize,
) -> anyhow::Result<()> {
    let nofile = gateway::process::raise_nofile_limit();
    if nofile < count as u64 + 64 {
        bail!("RLIMIT_NOFILE is {nofile}, too low to hold {count} connections");
    }
    let config = client_config(ca)?;
    let threads = threads.clamp(1, 64);
    let deadline = Instant::now() + Duration::from_secs(300);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let config = Arc::clone(&config);
            let name = name.to_owned();
            let share = count / threads + usize::from(t < count % threads);
            std::thread::spawn(move || {
                let mut held = Vec::with_capacity(share);
                let mut errors = Vec::new();
                for _ in 0..share {
                    if Instant::now() > deadline {
                        errors.push("deadline passed".to_owned());
                        break;
                    }
                    match handshake(&config, addr, &name) {
                        Ok((_, stream)) => held.push(stream),
                        Err(err) => errors.push(format!("{err:#}")),
                    }
                }
                (held, errors)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    let mut errors = Vec::new();
    for worker in workers {
        let (h, e) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a hold thread panicked"))?;
        held.extend(h);
        errors.extend(e);
    }
    let out = json!({
        "opened": held.len(),
        "errors": errors.len(),
        "first_error": errors.first().cloned().unwrap_or_default(),
    });
    println!("{out}");
    std::io::stdout().flush()?;
    // Exit when the parent closes stdin, or at the deadline whatever happens.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(300));
        std::process::exit(2);
    });
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    close_all(held);
    Ok(())
}

/// [`close`] for many connections at once: every close_notify and FIN first, then the drains.
fn close_all(mut streams: Vec<StreamOwned<ClientConnection, TcpStream>>) {
    for stream in &mut streams {
        stream.conn.send_close_notify();
        let _ = stream.flush();
        let _ = stream.sock.shutdown(std::net::Shutdown::Write);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    for stream in &mut streams {
        if Instant::now() > deadline {
            break;
        }
        let _ = stream.sock.set_read_timeout(Some(Duration::from_secs(2)));
        while let Ok(n) = std::io::Read::read(&mut stream.sock, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

/// `lookups`: one A query at a time over UDP to `server`, from one unconnected socket (as a
/// stub resolver sends them): `<prefix><i>.<domain>` for i = 0..count, or, with `same`, the
/// name `<prefix>cached.<domain>` count times after one untimed query. Each answer must be
/// NOERROR with an address, and carry its question's id. Prints `{"count", "p50_us", "p99_us",
/// "mean_us", "failures", "first_error"}`.
pub fn lookups(
    server: SocketAddr,
    prefix: &str,
    domain: &str,
    count: usize,
    same: bool,
) -> anyhow::Result<()> {
    use hickory_proto::{op::ResponseCode, rr::RecordType};

    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 4096];
    let mut ask = |name: &str, id: u16| -> anyhow::Result<Duration> {
        let question = crate::dns::query_message(name, RecordType::A, id)?;
        let start = Instant::now();
        socket.send_to(&question, server)?;
        loop {
            let (len, from) = socket.recv_from(&mut buf).context("no answer")?;
            let answer = hickory_proto::op::Message::from_vec(&buf[..len])?;
            if answer.metadata.id != id {
                // A late answer to an earlier question: not this one's.
                continue;
            }
            let elapsed = start.elapsed();
            if from != server {
                bail!("{name}: answered from {from}, not {server}");
            }
            if answer.metadata.response_code != ResponseCode::NoError || answer.answers.is_empty() {
                bail!(
                    "{name}: {} with {} answers",
                    answer.metadata.response_code,
                    answer.answers.len()
                );
            }
            return Ok(elapsed);
        }
    };
    let cached = format!("{prefix}cached.{domain}");
    if same {
        ask(&cached, 0)?;
    }
    let mut times = Vec::with_capacity(count);
    let mut failures = 0u64;
    let mut first_error = None;
    for i in 0..count {
        let name = if same {
            cached.clone()
        } else {
            format!("{prefix}{i}.{domain}")
        };
        // Ids 1.. (the warm-up was 0), wrapping after 65,535 questions.
        let id = u16::try_from(i % 65_535 + 1)?;
        match ask(&name, id) {
            Ok(elapsed) => times.push(elapsed.as_secs_f64() * 1e6),
            Err(err) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
    let out = json!({
        "count": count,
        "p50_us": crate::bench::stats::percentile(&times, 0.5),
        "p99_us": crate::bench::stats::percentile(&times, 0.99),
        "mean_us": crate::bench::stats::mean(&times),
        "failures": failures,
        "first_error": first_error,
    });
    println!("{out}");
    Ok(())
}
