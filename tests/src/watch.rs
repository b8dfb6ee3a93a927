//! Packet watchers (tests/py/watch.py) inside a test namespace: how many SYNs and datagrams
//! for one port reached it, so a test can assert that nothing left the sandbox.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    net::NetNs,
    process::{Guarded, terminate},
    py_script,
};

/// Counts the SYNs and datagrams reaching a port inside a namespace until [`Watcher::finish`];
/// stopped on drop.
#[derive(Debug)]
pub struct Watcher {
    process: Guarded,
}

impl Watcher {
    /// Starts watching `port` in `ns` and waits until the capture is open.
    pub fn start(ns: &NetNs, port: u16) -> anyhow::Result<Watcher> {
        let mut child = ns
            .exec(
                "python3",
                [py_script("watch.py").as_os_str(), port.to_string().as_ref()],
            )
            .stdout(Stdio::piped())
            .spawn()
            .context("starting watch.py")?;
        let mut line = String::new();
        let stdout = child.stdout.as_mut().context("watch.py stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let watcher = Watcher {
            process: Guarded::new("packet watcher", child, Duration::from_secs(5)),
        };
        if line.trim() != "READY" {
            bail!("watch.py did not start: {line:?}");
        }
        Ok(watcher)
    }

    /// Stops watching; returns (SYNs, UDP datagrams) seen.
    pub fn finish(mut self) -> anyhow::Result<(u64, u64)> {
        // Packets in flight have long arrived by the time a refused call has returned.
        std::thread::sleep(Duration::from_millis(300));
        let mut child: Child = self.process.take().context("watcher already stopped")?;
        let mut stdout = child.stdout.take().context("watch.py stdout")?;
        terminate(&mut child, Duration::from_secs(5));
        let mut text = String::new();
        stdout.read_to_string(&mut text)?;
        let counts: Value =
            serde_json::from_str(text.trim()).with_context(|| format!("watch.py said {text:?}"))?;
        let count = |key: &str| {
            counts[key]
                .as_u64()
                .with_context(|| format!("watch.py said {text:?}"))
        };
        Ok((count("syn")?, count("udp")?))
    }
}
