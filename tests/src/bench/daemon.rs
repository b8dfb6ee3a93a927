//! A `gateway run` daemon for one measured run. Unlike [`crate::daemon::Daemon`] (which logs at
//! info and keeps every line), it logs at `warn` so that per-connection lines do not dominate
//! the daemon's CPU time, plus the two info lines the rig needs (`gateway ready` from
//! `gateway::daemon`, `certificate generated` from `gateway::tls::certs`), and keeps counts only.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::proc::{Usage, usage};
use crate::unique;

/// The RUST_LOG filter the bench daemons run with.
pub const RUST_LOG: &str = "warn,gateway::daemon=info,gateway::tls::certs=info";

/// What the daemon logged, counted.
#[derive(Debug, Default, Clone)]
pub struct LogSummary {
    /// `gateway ready` seen.
    pub ready: bool,
    /// `certificate generated` lines.
    pub certs_generated: u64,
    /// Lines at WARN or ERROR.
    pub warnings: u64,
    /// The first few distinct ones (message and error), for the report.
    pub first_warnings: Vec<String>,
}

/// A running daemon serving one sandbox cgroup; stopped by PID (SIGTERM) on drop.
#[derive(Debug)]
pub struct BenchDaemon {
    child: Option<Child>,
    pid: u32,
    pin_dir: PathBuf,
    home: tempfile::TempDir,
    log: Arc<Mutex<LogSummary>>,
}

impl BenchDaemon {
    /// Starts `gateway run --sandbox <cgroup>` with `config` and waits for `gateway ready`.
    pub fn start(gateway: &Path, cgroup: &Path, config: &str) -> anyhow::Result<Self> {
        let home = tempfile::tempdir()?;
        let config_file = home.path().join("gateway.toml");
        std::fs::write(&config_file, config)?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("gwbench-"));
        let mut command = Command::new(gateway);
        command
            .args(["--log-format", "json", "--config"])
            .arg(&config_file)
            .arg("run")
            .arg("--sandbox")
            .arg(cgroup)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .env("GATEWAY_HOME", home.path())
            .env("RUST_LOG", RUST_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("starting gateway run")?;
        let pid = child.id();
        let stderr = child.stderr.take().context("daemon stderr")?;
        let log = Arc::new(Mutex::new(LogSummary::default()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                match value["message"].as_str() {
                    Some("gateway ready") => log.ready = true,
                    Some("certificate generated") => log.certs_generated += 1,
                    _ => {}
                }
                let level = value["level"].as_str().unwrap_or("WARN");
                if level == "WARN" || level == "ERROR" {
                    log.warnings += 1;
                    // The gist: message, mode and error, without the per-connection details.
                    let gist = match (value["message"].as_str(), value["error"].as_str()) {
                        (Some(message), Some(error)) => format!(
                            "{message} ({}): {}",
                            value["mode"].as_str().unwrap_or("?"),
                            without_stats(error)
                        ),
                        (Some(message), None) => message.to_owned(),
                        _ => line.clone(),
                    };
                    let gist: String = gist.chars().take(200).collect();
                    if log.first_warnings.len() < 3 && !log.first_warnings.contains(&gist) {
                        log.first_warnings.push(gist);
                    }
                }
            }
        });
        let mut daemon = BenchDaemon {
            child: Some(child),
            pid,
            pin_dir,
            home,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.log().ready {
            if let Some(child) = daemon.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                std::thread::sleep(Duration::from_millis(100));
                bail!("daemon exited ({status}) before ready: {:?}", daemon.log());
            }
            if Instant::now() > deadline {
                bail!("daemon not ready within 30 s: {:?}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    /// The daemon's CA certificate, what intercepted clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.home.path().join("tls/ca.crt")
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU time and memory now.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage(self.pid)
    }

    /// What it logged so far.
    pub fn log(&self) -> LogSummary {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections redirected so far (IPv4 + IPv6 eBPF counters, read with bpftool).
    pub fn redirected(&self) -> anyhow::Result<u64> {
        Ok(self.counter(0)? + self.counter(1)?)
    }

    fn counter(&self, index: u32) -> anyhow::Result<u64> {
        crate::daemon::pinned_counter(&self.pin_dir, index)
    }

    /// Stops it (SIGTERM, then SIGKILL after 15 s) and removes its pins.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by PID, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// An error text without its ` after RelayStats { ... }` part, which differs per connection.
fn without_stats(error: &str) -> String {
    match error.find(" after RelayStats {") {
        Some(start) => {
            let end = error[start..]
                .find('}')
                .map_or(error.len(), |i| start + i + 1);
            format!("{}{}", &error[..start], &error[end..])
        }
        None => error.to_owned(),
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}
