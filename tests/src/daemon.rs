//! A `gateway run` daemon under test, with its JSON log captured; stopped by PID on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{cmd, gateway_bin, unique};

/// A running daemon with its own pin directory, `$GATEWAY_HOME` (so its own CA) and config.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pin_dir: PathBuf,
    home_dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Daemon {
    /// Starts `gateway run` with one `--sandbox` per spec and the TOML `config`, and waits for
    /// "gateway ready".
    pub fn start(sandboxes: &[String], config: &str) -> anyhow::Result<Self> {
        Self::start_with(sandboxes, config, &[])
    }

    /// As [`Daemon::start`], with extra `gateway run` arguments (e.g. timeouts).
    pub fn start_with(sandboxes: &[String], config: &str, args: &[&str]) -> anyhow::Result<Self> {
        let home_dir = tempfile::tempdir()?;
        let config_file = home_dir.path().join("gateway.toml");
        std::fs::write(&config_file, config)?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("gwtest-"));
        let mut command = cmd(
            gateway_bin()?.to_str().context("path")?,
            ["--log-format", "json", "run"],
        );
        for spec in sandboxes {
            command.args(["--sandbox", spec]);
        }
        command
            .args(args)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--config")
            .arg(&config_file)
            .env("GATEWAY_HOME", home_dir.path())
            .env("RUST_LOG", "info");
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting gateway run")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(value);
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            pin_dir,
            home_dir,
            logs,
        };
        daemon.wait_for_message("gateway ready", Duration::from_secs(30))?;
        Ok(daemon)
    }

    /// The daemon's CA certificate, what sandbox clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.home_dir.path().join("tls/ca.crt")
    }

    /// The daemon's `$GATEWAY_HOME`.
    pub fn home(&self) -> &Path {
        self.home_dir.path()
    }

    /// The daemon's pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Every log line so far (JSON objects; non-JSON lines as strings).
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Log lines whose message is `message`.
    pub fn messages(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Waits until a line satisfying `pred` is logged; fails (with the log) when the daemon exits
    /// or `timeout` passes.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.logs().into_iter().find(&pred) {
                return Ok(found);
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "daemon exited ({status}) before {what}; log: {:#?}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                bail!("no {what} within {timeout:?}; log: {:#?}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `done` holds for the daemon, as [`Daemon::wait_for`] does for one line.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Daemon) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                bail!("not {what} within {timeout:?}; log: {:#?}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits for a line with this message.
    pub fn wait_for_message(&mut self, message: &str, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_for(message, timeout, |v| v["message"] == message)
    }

    /// The listener port of sandbox `n` (1-based, in --sandbox order).
    pub fn listener_port(&self, n: u64) -> anyhow::Result<u16> {
        self.messages("sandbox attached")
            .iter()
            .find(|v| {
                v["sandbox"].as_u64() == Some(n) || v["sandbox"].as_str() == Some(&n.to_string())
            })
            .and_then(|v| v["listener_port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("no listener port logged for sandbox {n}"))
    }

    /// Sums the pinned per-CPU counter at `index`, read with bpftool as an operator would.
    pub fn counter(&self, index: u32) -> anyhow::Result<u64> {
        pinned_counter(&self.pin_dir, index)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        Ok(self.child.as_ref().context("daemon stopped")?.id())
    }

    /// Resident memory (VmRSS) in KiB and open descriptors, from /proc.
    pub fn rss_kib_and_fds(&self) -> anyhow::Result<(u64, usize)> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok((rss, fds))
    }

    /// Entries in a pinned map (e.g. `orig_dst`, `pending`), read with bpftool.
    pub fn map_entries(&self, map: &str) -> anyhow::Result<usize> {
        let out = crate::run(
            cmd("bpftool", ["-j", "map", "dump", "pinned"]).arg(self.pin_dir.join(map)),
        )?;
        let value: Value = serde_json::from_slice(&out.stdout)?;
        Ok(value
            .as_array()
            .context("bpftool map dump is not a list")?
            .len())
    }

    /// Lines logged at WARN or ERROR.
    pub fn problems(&self) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
            .collect()
    }

    /// Sends SIGTERM and waits (up to 10 s) for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        signal(&child, libc::SIGTERM);
        wait_timeout(&mut child, Duration::from_secs(10))
    }

    /// Kills the daemon with SIGKILL (no cleanup runs), as a crash would.
    pub fn crash(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("daemon already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

/// Sums the per-CPU counter at `index` of the `counters` map pinned in `pin_dir`, with bpftool.
pub fn pinned_counter(pin_dir: &Path, index: u32) -> anyhow::Result<u64> {
    let out = crate::run(
        cmd("bpftool", ["-j", "map", "lookup", "pinned"])
            .arg(pin_dir.join("counters"))
            .args(["key", &index.to_string(), "0", "0", "0"]),
    )?;
    let value: Value = serde_json::from_slice(&out.stdout)?;
    value["values"]
        .as_array()
        .context("bpftool output has no per-CPU values")?
        .iter()
        .map(|v| parse_bpftool_u64(&v["value"]))
        .sum()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling a child we spawned and have not yet reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("daemon did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// bpftool prints values either as numbers or as arrays of hex byte strings.
fn parse_bpftool_u64(value: &Value) -> anyhow::Result<u64> {
    if let Some(n) = value.as_u64() {
        return Ok(n);
    }
    let bytes = value.as_array().context("unexpected bpftool value")?;
    let mut out = [0u8; 8];
    for (slot, byte) in out.iter_mut().zip(bytes) {
        let text = byte.as_str().context("unexpected bpftool byte")?;
        *slot = u8::from_str_radix(text.trim_start_matches("0x"), 16)?;
    }
    Ok(u64::from_le_bytes(out))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let _ = wait_timeout(&mut child, Duration::from_secs(5));
        }
        // A crashed daemon leaves its pins (by design); tests clean them up.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
