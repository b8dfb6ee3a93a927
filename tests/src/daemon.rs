//! `gateway run` daemons for the integration tests, the bench and the soak: one builder, one
//! thread capturing the JSON log (every line, or counts only), one ready wait, one stop.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{ChildStderr, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    cmd, gateway_bin,
    proc::{self, Usage},
    process::{Ending, Guarded},
    unique,
};

/// How long a daemon may take to log `gateway ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM: its drain timeout (5 s by default) plus
/// detaching and unpinning.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Warnings kept verbatim in [`LogSummary::first_warnings`].
const FIRST_WARNINGS: usize = 3;

/// What the log thread keeps of the daemon's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogSink {
    /// Every line (tests look lines up) and the counts.
    #[default]
    Keep,
    /// The counts only: memory stays flat however many connections a run logs (the bench).
    CountOnly,
}

/// What the daemon logged, counted.
#[derive(Debug, Default, Clone)]
pub struct LogSummary {
    /// Lines per message (`gateway ready`, `certificate generated`, `connection closed`...).
    pub messages: BTreeMap<String, u64>,
    /// Lines at WARN or ERROR, and lines that are not JSON (a panic, say).
    pub warnings: u64,
    /// The first few distinct ones: message, mode and error, as logged.
    pub first_warnings: Vec<String>,
}

impl LogSummary {
    /// Lines logged with this message.
    pub fn count(&self, message: &str) -> u64 {
        self.messages.get(message).copied().unwrap_or(0)
    }

    fn add(&mut self, line: &str, value: &Value) {
        if let Some(message) = value["message"].as_str() {
            *self.messages.entry(message.to_owned()).or_default() += 1;
        }
        if !matches!(value["level"].as_str(), Some("WARN" | "ERROR") | None) {
            return;
        }
        self.warnings += 1;
        let gist = match (value["message"].as_str(), value["error"].as_str()) {
            (Some(message), Some(error)) => format!(
                "{message} ({}): {error}",
                value["mode"].as_str().unwrap_or("?")
            ),
            (Some(message), None) => message.to_owned(),
            _ => line.to_owned(),
        };
        let gist: String = gist.chars().take(200).collect();
        if self.first_warnings.len() < FIRST_WARNINGS && !self.first_warnings.contains(&gist) {
            self.first_warnings.push(gist);
        }
    }
}

#[derive(Debug, Default)]
struct Log {
    /// Every line as JSON (non-JSON lines as strings); empty with [`LogSink::CountOnly`].
    lines: Vec<Value>,
    summary: LogSummary,
}

/// How to start a daemon: `Daemon::builder().sandbox(spec).config(toml).start()`.
#[derive(Debug, Clone)]
pub struct DaemonBuilder {
    bin: Option<PathBuf>,
    sandboxes: Vec<String>,
    config: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    rust_log: String,
    sink: LogSink,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        DaemonBuilder {
            bin: None,
            sandboxes: Vec::new(),
            config: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            rust_log: "info".to_owned(),
            sink: LogSink::Keep,
        }
    }
}

impl DaemonBuilder {
    /// A daemon of [`gateway_bin`] with no sandbox, an empty config, RUST_LOG=info, every log
    /// line kept.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves this `--sandbox` spec (`CGROUP[,netns=PATH][,port=N]...`); sandboxes are numbered
    /// from 1 in the order added.
    pub fn sandbox(mut self, spec: impl Into<String>) -> Self {
        self.sandboxes.push(spec.into());
        self
    }

    /// Serves each of these specs, as [`DaemonBuilder::sandbox`].
    pub fn sandboxes<S: Into<String>>(mut self, specs: impl IntoIterator<Item = S>) -> Self {
        self.sandboxes.extend(specs.into_iter().map(Into::into));
        self
    }

    /// The configuration file's content (TOML).
    pub fn config(mut self, toml: &str) -> Self {
        toml.clone_into(&mut self.config);
        self
    }

    /// Extra `gateway run` arguments (e.g. `--idle-timeout 2s`).
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable of the daemon (e.g. a secret's value).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The daemon's RUST_LOG filter; it must let `gateway ready` through.
    pub fn rust_log(mut self, filter: &str) -> Self {
        filter.clone_into(&mut self.rust_log);
        self
    }

    /// What to keep of the log.
    pub fn log_sink(mut self, sink: LogSink) -> Self {
        self.sink = sink;
        self
    }

    /// The gateway binary, instead of [`gateway_bin`].
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// Starts `gateway --log-format json --config FILE --state-dir DIR run --sandbox ...
    /// --pin-dir DIR ARGS` with its own pin directory, state directory (control socket) and
    /// `$GATEWAY_HOME` (so its own CA), and waits for `gateway ready`.
    pub fn start(mut self) -> anyhow::Result<Daemon> {
        if self.bin.is_none() {
            self.bin = Some(gateway_bin()?);
        }
        let home = tempfile::tempdir()?;
        std::fs::write(home.path().join("gateway.toml"), &self.config)?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("gwtest-"));
        let log = Arc::new(Mutex::new(Log::default()));
        let process = self.spawn(home.path(), &pin_dir, &log)?;
        let mut daemon = Daemon {
            process,
            pin_dir,
            home,
            log,
            builder: self,
        };
        daemon.wait_until("gateway ready", READY_TIMEOUT, |d| {
            d.summary().count("gateway ready") > 0
        })?;
        Ok(daemon)
    }

    /// Starts the daemon process with `home` and `pin_dir`, its log going to `log`.
    fn spawn(&self, home: &Path, pin_dir: &Path, log: &Arc<Mutex<Log>>) -> anyhow::Result<Guarded> {
        let bin = self.bin.as_deref().context("no gateway binary")?;
        let mut command = Command::new(bin);
        command
            .args(["--log-format", "json", "--config"])
            .arg(home.join("gateway.toml"))
            .arg("--state-dir")
            .arg(home.join("state"))
            .arg("run");
        for spec in &self.sandboxes {
            command.arg("--sandbox").arg(spec);
        }
        command
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(&self.args)
            .env("GATEWAY_HOME", home)
            .env("RUST_LOG", &self.rust_log)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let sink = Arc::clone(log);
        let sink_kind = self.sink;
        std::thread::spawn(move || capture(stderr, sink_kind, &sink));
        Ok(Guarded::new("gateway daemon", child, STOP_GRACE))
    }
}

/// The log thread: reads the daemon's stderr until it closes. Lines are split on bytes, so a
/// line that is not UTF-8 cannot stop the reading (and block the daemon on a full pipe).
fn capture(stderr: ChildStderr, sink: LogSink, log: &Mutex<Log>) {
    for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line).into_owned();
        let value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let mut log = lock(log);
        log.summary.add(&line, &value);
        if sink == LogSink::Keep {
            log.lines.push(match value {
                Value::Null => Value::String(line),
                value => value,
            });
        }
    }
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running daemon; on drop it is stopped (SIGTERM, SIGKILL after 15 s) and its pins removed
/// (a stopped daemon leaves them, by design: fail closed).
#[derive(Debug)]
pub struct Daemon {
    process: Guarded,
    pin_dir: PathBuf,
    home: tempfile::TempDir,
    log: Arc<Mutex<Log>>,
    /// How it was started, to start it again.
    builder: DaemonBuilder,
}

impl Daemon {
    /// How to start one.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::new()
    }

    /// The daemon's CA certificate, what intercepting clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.home.path().join("tls/ca.crt")
    }

    /// The daemon's `$GATEWAY_HOME`.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The daemon's pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The daemon's state directory (its control socket, its remembered sandboxes).
    pub fn state_dir(&self) -> PathBuf {
        self.home.path().join("state")
    }

    /// The daemon's config file (rewrite it, then [`Daemon::reload`] or SIGHUP).
    pub fn config_file(&self) -> PathBuf {
        self.home.path().join("gateway.toml")
    }

    /// Runs `gateway --state-dir DIR ARGS` (an operator command to this daemon) and returns
    /// its output.
    pub fn control<I, S>(&self, args: I) -> anyhow::Result<std::process::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let bin = self.builder.bin.as_deref().context("no gateway binary")?;
        let mut command = Command::new(bin);
        command.arg("--state-dir").arg(self.state_dir()).args(args);
        command
            .output()
            .with_context(|| format!("running {command:?}"))
    }

    /// Starts the daemon again after [`Daemon::stop`] or [`Daemon::crash`], with the same pin
    /// directory, state, config and CA, and waits for its `gateway ready`.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let before = self.summary().count("gateway ready");
        self.process = self
            .builder
            .spawn(self.home.path(), &self.pin_dir, &self.log)?;
        self.wait_until("gateway ready again", READY_TIMEOUT, |d| {
            d.summary().count("gateway ready") > before
        })
    }

    /// Every log line so far (JSON objects; non-JSON lines as strings); none with
    /// [`LogSink::CountOnly`].
    pub fn logs(&self) -> Vec<Value> {
        lock(&self.log).lines.clone()
    }

    /// The counts of what it logged so far.
    pub fn summary(&self) -> LogSummary {
        lock(&self.log).summary.clone()
    }

    /// Log lines whose message is `message`.
    pub fn messages(&self, message: &str) -> Vec<Value> {
        lock(&self.log)
            .lines
            .iter()
            .filter(|v| v["message"] == message)
            .cloned()
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
        self.poll(what, timeout, |d| {
            lock(&d.log).lines.iter().find(|v| pred(v)).cloned()
        })
    }

    /// Waits until `done` holds for the daemon, as [`Daemon::wait_for`] does for one line.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Daemon) -> bool,
    ) -> anyhow::Result<()> {
        self.poll(what, timeout, |d| done(d).then_some(()))
    }

    /// Polls `check` until it gives a value; fails when the daemon exits or `timeout` passes.
    fn poll<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Daemon) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = check(self) {
                return Ok(found);
            }
            if let Some(status) = self.process.try_wait()? {
                // Let the log thread read the last lines.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "daemon exited ({status}) before {what}; {}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("no {what} within {timeout:?}; {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log for an error message: every line, or the counts when only counts are kept.
    fn log_text(&self) -> String {
        let log = lock(&self.log);
        if log.lines.is_empty() {
            format!("log counts: {:#?}", log.summary)
        } else {
            format!("log: {:#?}", log.lines)
        }
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

    /// Sums the pinned per-CPU `counter`, read with bpftool (by its BTF name) as an operator
    /// would.
    pub fn counter(&self, counter: gateway_common::Counter) -> anyhow::Result<u64> {
        pinned_counter(&self.pin_dir, counter.name())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.process.id().context("daemon stopped")
    }

    /// CPU time and memory now.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        proc::usage(self.pid()?)
    }

    /// Resident memory (VmRSS) in KiB and open descriptors.
    pub fn rss_kib_and_fds(&self) -> anyhow::Result<(u64, usize)> {
        let pid = self.pid()?;
        Ok((proc::usage(pid)?.rss_kib, proc::open_fds(pid)?))
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
        lock(&self.log)
            .lines
            .iter()
            .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
            .cloned()
            .collect()
    }

    /// Sends SIGTERM and waits (up to 15 s) for it to exit; fails if it had to be killed. Its
    /// pins stay (fail closed) until [`Daemon::restart`] adopts them or the guard drops.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let ending = self.process.terminate().context("daemon already stopped")?;
        ending.status().with_context(|| format!("daemon {ending}"))
    }

    /// Kills the daemon with SIGKILL (no cleanup runs), as a crash would.
    pub fn crash(&mut self) -> anyhow::Result<()> {
        let mut child = self.process.take().context("daemon already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

/// Sums the per-CPU field `name` of the `counters` map pinned in `pin_dir`, with bpftool (the
/// map has BTF, so bpftool prints the fields by name).
fn pinned_counter(pin_dir: &Path, name: &str) -> anyhow::Result<u64> {
    let out = crate::run(
        cmd("bpftool", ["-j", "map", "lookup", "pinned"])
            .arg(pin_dir.join("counters"))
            .args(["key", "0", "0", "0", "0"]),
    )?;
    let value: Value = serde_json::from_slice(&out.stdout)?;
    value["formatted"]["values"]
        .as_array()
        .context("bpftool printed no BTF-formatted values")?
        .iter()
        .map(|cpu| {
            cpu["value"][name]
                .as_u64()
                .with_context(|| format!("bpftool printed no counter {name}: {cpu}"))
        })
        .sum()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(ending) = self.process.terminate() {
            report_unclean_stop(self.process.name(), &ending);
        }
        // A crashed daemon leaves its pins (by design); the guard removes them.
        match std::fs::remove_dir_all(&self.pin_dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => eprintln!(
                "harness: removing the daemon's pins {}: {err}",
                self.pin_dir.display()
            ),
        }
    }
}

/// A daemon is expected to exit 0 on SIGTERM; anything else is worth a line on stderr.
fn report_unclean_stop(name: &str, ending: &Ending) {
    match ending {
        Ending::Terminated(status) if status.success() => {}
        other => eprintln!("harness: {name} {other}"),
    }
}
