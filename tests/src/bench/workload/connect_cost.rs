//! A tight loop of connects to a port the sandbox's policy allows, from a cgroup with the
//! programs attached and from one without: what the policy check (sock_create; connect4 with the
//! address LPM lookup and the port rule) adds to every connect that it lets through.
//!
//! The sink listens on the host side of the rig's veth (198.18.N.1, in the host namespace): not
//! a denied range, unlike loopback, and local to the host, so a connect costs about what one to
//! loopback does. The daemon's sandbox gets `allow-tcp-port=<sink port>`; every connect must
//! succeed, since a refused one (EPERM) would be far cheaper and fake the figure.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};
use gateway_common::Counter;
use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::bench::{
    report::Row,
    rig::{Rig, check_stop, redirected},
    stats::min,
};

/// The listener's accept queue: long, so that the loop never waits for the accepting thread.
const BACKLOG: i32 = 4096;

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let workload = format!("connect() loop, {} connects", rig.opts.connects);
    let sink = Sink::start(rig.host.host_v4)?;
    let result = measure(rig, &workload, sink.addr);
    sink.stop();
    let (without, with) = result?;
    let base = min(&without);
    let value = min(&with);
    let figure = "per connect (socket, connect, close)";
    Ok(vec![
        Row {
            workload: workload.clone(),
            mode: "programs not attached".into(),
            figure: figure.into(),
            unit: "ns".into(),
            value: Some(base),
            runs: without,
            baseline: true,
            ..Row::default()
        },
        Row {
            workload,
            mode: "programs attached (allowed port, full policy check)".into(),
            figure: figure.into(),
            unit: "ns".into(),
            value: Some(value),
            runs: with,
            ratio: Some(value / base),
            ..Row::default()
        },
    ])
}

/// ns per connect without and with the programs attached, one of each per round (the order
/// alternating), with one daemon attached throughout whose sandbox may connect to `addr`'s port.
fn measure(rig: &Rig, workload: &str, addr: SocketAddr) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let daemon = rig.start_daemon_with(&format!("allow-tcp-port={}", addr.port()))?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..rig.opts.rounds {
        for attached in [round % 2 == 1, round % 2 == 0] {
            check_stop()?;
            let cgroup = if attached { &rig.sandbox } else { &rig.direct };
            let what = if attached { "attached" } else { "not attached" };
            eprintln!(
                "gateway-bench: {workload}: round {} programs {what}",
                round + 1
            );
            let mut command = rig.client("connects");
            command.args([
                "--addr",
                &addr.to_string(),
                "--count",
                &rig.opts.connects.to_string(),
            ]);
            let output = cgroup.output_within(&mut command, Duration::from_secs(300))?;
            let value: Value = serde_json::from_slice(&output.stdout).with_context(|| {
                format!(
                    "connect client ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
            if value["errors"].as_u64() != Some(0) {
                bail!(
                    "connects with the programs {what}: {} failed ({} with EPERM), first: {}",
                    value["errors"],
                    value["eperm"],
                    value["first_error"]
                );
            }
            let ns = value["ns_per_connect"]
                .as_f64()
                .context("no ns_per_connect")?;
            if attached { &mut with } else { &mut without }.push(ns);
        }
    }
    if redirected(&daemon)? != 0 {
        bail!("connects to an allowed port were redirected");
    }
    // The client's count covers its own connects; the kernel's covers the whole sandbox.
    let refused = daemon.counter(Counter::Refused)?;
    if refused != 0 {
        bail!("the policy refused {refused} connects, sockets or sends of the sandbox");
    }
    Ok((without, with))
}

/// A listener that accepts and drops every connection, on its own thread.
struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Sink {
    /// Listens on `ip`, on a port the kernel picks.
    fn start(ip: Ipv4Addr) -> anyhow::Result<Sink> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&SocketAddr::from((ip, 0)).into())?;
        socket.listen(BACKLOG)?;
        let listener = TcpListener::from(socket);
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    drop(conn);
                }
            })
        };
        Ok(Sink { addr, stop, thread })
    }

    /// Stops the accepting thread: the flag, then one connection to wake it up.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(err) = TcpStream::connect(self.addr) {
            eprintln!(
                "gateway-bench: waking the connect sink at {}: {err}",
                self.addr
            );
            return;
        }
        if self.thread.join().is_err() {
            eprintln!("gateway-bench: the connect sink's thread panicked");
        }
    }
}
