//! A tight loop of connects to a port that is not intercepted, from a cgroup with the programs
//! attached and from one without: what the connect4/6 programs cost every connect.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};
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
    let sink = Sink::start()?;
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
            mode: "programs attached (port not intercepted)".into(),
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
/// alternating), with one daemon attached throughout.
fn measure(rig: &Rig, workload: &str, addr: SocketAddr) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let daemon = rig.start_daemon()?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..rig.opts.rounds {
        for attached in [round % 2 == 1, round % 2 == 0] {
            check_stop()?;
            let cgroup = if attached { &rig.sandbox } else { &rig.direct };
            eprintln!(
                "gateway-bench: {workload}: round {} programs {}",
                round + 1,
                if attached { "attached" } else { "not attached" }
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
            let ns = value["ns_per_connect"]
                .as_f64()
                .context("no ns_per_connect")?;
            if attached { &mut with } else { &mut without }.push(ns);
        }
    }
    if redirected(&daemon)? != 0 {
        bail!("connects to a port that is not intercepted were redirected");
    }
    Ok((without, with))
}

/// A loopback listener that accepts and drops every connection, on its own thread.
struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Sink {
    fn start() -> anyhow::Result<Sink> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
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
