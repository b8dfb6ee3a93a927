//! The benchmark rig behind `cargo xtask bench` (binary `gateway-bench`): an nginx upstream in a
//! test host's namespace, gateway daemons started fresh per measured run, load generators run
//! inside sandbox cgroups, and the markdown report.

pub mod clients;
pub mod daemon;
pub mod nginx;
pub mod proc;
pub mod report;

use std::{
    io::Read as _,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::sandbox::SandboxCgroup;

/// Runs `command` inside `cgroup`, capturing its output; kills it (by PID) after `timeout`.
pub fn run_bounded(
    cgroup: &SandboxCgroup,
    command: &mut Command,
    timeout: Duration,
) -> anyhow::Result<Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cgroup.spawn(None, command)?;
    wait_bounded(child, timeout).with_context(|| format!("running {command:?}"))
}

/// Waits for `child`, reading its piped stdout and stderr; kills it after `timeout`.
pub fn wait_bounded(mut child: Child, timeout: Duration) -> anyhow::Result<Output> {
    let mut out = child.stdout.take().context("stdout not piped")?;
    let mut err = child.stderr.take().context("stderr not piped")?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// The value at quantile `q` (0..=1) of `values` (nearest rank); NaN when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The arithmetic mean; NaN when empty.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// The median; NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}
