//! Ending the processes the harness starts (daemons, nginx, python upstreams, bench clients):
//! SIGTERM, a grace period, then SIGKILL, always reaped, and what happened reported.

use std::{
    fmt,
    io::{self, Read},
    process::{Child, ExitStatus, Output},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// How often a wait checks on the child.
const POLL: Duration = Duration::from_millis(20);

/// How a child ended under [`terminate`].
#[derive(Debug)]
pub enum Ending {
    /// It had exited before it was asked to.
    AlreadyExited(ExitStatus),
    /// It exited within the grace period after SIGTERM.
    Terminated(ExitStatus),
    /// It outlived the grace period after SIGTERM and was killed with SIGKILL, then reaped.
    Killed(Duration),
    /// It could not be ended as asked: what went wrong (it may still be running).
    Failed(String),
}

impl Ending {
    /// Whether it is gone without needing SIGKILL.
    pub fn is_clean(&self) -> bool {
        matches!(self, Ending::AlreadyExited(_) | Ending::Terminated(_))
    }

    /// Its exit status, when it exited by itself or on SIGTERM.
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            Ending::AlreadyExited(status) | Ending::Terminated(status) => Some(*status),
            Ending::Killed(_) | Ending::Failed(_) => None,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::AlreadyExited(status) => write!(f, "had already exited ({status})"),
            Ending::Terminated(status) => write!(f, "exited on SIGTERM ({status})"),
            Ending::Killed(grace) => write!(
                f,
                "did not exit within {grace:?} of SIGTERM: killed with SIGKILL"
            ),
            Ending::Failed(why) => write!(f, "could not be ended: {why}"),
        }
    }
}

/// Sends SIGTERM to `child`, waits up to `grace` for it to exit, else kills it with SIGKILL, and
/// reaps it.
pub fn terminate(child: &mut Child, grace: Duration) -> Ending {
    // Checked first: a child not yet reaped still owns its PID, so the signal cannot reach
    // another process.
    match child.try_wait() {
        Ok(Some(status)) => return Ending::AlreadyExited(status),
        Ok(None) => {}
        Err(err) => return Ending::Failed(format!("checking whether it runs: {err}")),
    }
    if let Err(why) = sigterm(child) {
        let killed = match child.kill().and_then(|()| child.wait()) {
            Ok(status) => format!("killed with SIGKILL instead ({status})"),
            Err(err) => format!("SIGKILL failed too: {err}"),
        };
        return Ending::Failed(format!("{why}; {killed}"));
    }
    match wait_timeout(child, grace) {
        Ok(Some(status)) => Ending::Terminated(status),
        Ok(None) => match child.kill().and_then(|()| child.wait()) {
            Ok(_) => Ending::Killed(grace),
            Err(err) => Ending::Failed(format!("SIGKILL after {grace:?}: {err}")),
        },
        Err(err) => Ending::Failed(format!("waiting for it: {err}")),
    }
}

fn sigterm(child: &Child) -> Result<(), String> {
    let pid = i32::try_from(child.id()).map_err(|_| format!("PID {} out of range", child.id()))?;
    kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|errno| format!("SIGTERM failed: {errno}"))
}

/// Waits up to `timeout` for `child` to exit; `None` if it still runs.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for `child`, collecting its piped stdout and stderr; after `timeout` it is terminated
/// (SIGTERM, then SIGKILL) and the wait fails.
pub fn output_within(mut child: Child, timeout: Duration) -> anyhow::Result<Output> {
    let stdout = read_all(child.stdout.take().context("stdout not piped")?);
    let stderr = read_all(child.stderr.take().context("stderr not piped")?);
    let status = match wait_timeout(&mut child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let ending = terminate(&mut child, Duration::from_secs(2));
            bail!("still running after {timeout:?}; it {ending}");
        }
        Err(err) => {
            let ending = terminate(&mut child, Duration::from_secs(2));
            bail!("waiting for it: {err}; it {ending}");
        }
    };
    Ok(Output {
        status,
        stdout: joined(stdout).context("reading stdout")?,
        stderr: joined(stderr).context("reading stderr")?,
    })
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        pipe.read_to_end(&mut buf)?;
        Ok(buf)
    })
}

fn joined(reader: JoinHandle<io::Result<Vec<u8>>>) -> anyhow::Result<Vec<u8>> {
    match reader.join() {
        Ok(bytes) => Ok(bytes?),
        Err(_) => bail!("the reader thread panicked"),
    }
}

/// A child process ended with [`terminate`] when dropped (unless taken or ended before); an
/// ending that needed SIGKILL or failed is reported on stderr.
#[derive(Debug)]
pub struct Guarded {
    name: String,
    grace: Duration,
    child: Option<Child>,
}

impl Guarded {
    /// Guards `child`, called `name` in reports, allowing it `grace` after SIGTERM.
    pub fn new(name: impl Into<String>, child: Child, grace: Duration) -> Self {
        Guarded {
            name: name.into(),
            grace,
            child: Some(child),
        }
    }

    /// Its PID, while it has not been ended or taken.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its exit status if it has exited (reaping it); `None` while it runs or once it is ended.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for it to exit by itself; `None` if it still runs or is ended.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => wait_timeout(child, timeout),
            None => Ok(None),
        }
    }

    /// Ends it now ([`terminate`]); `None` if it was already ended or taken.
    pub fn terminate(&mut self) -> Option<Ending> {
        let mut child = self.child.take()?;
        Some(terminate(&mut child, self.grace))
    }

    /// Takes the child out of the guard: the caller ends it.
    pub fn take(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// Its name in reports.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let Some(pid) = self.id() else { return };
        if let Some(ending) = self.terminate()
            && !ending.is_clean()
        {
            eprintln!("harness: {} (PID {pid}) {ending}", self.name);
        }
    }
}
