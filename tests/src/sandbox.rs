//! Sandbox cgroups for tests, and running real client programs inside them.

use std::{
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use gateway::sandbox::{Confinement, cgroup::TransientCgroup, netns::NetNs as GwNetNs};

use crate::{net::NetNs, process::output_within, unique};

/// A fresh sandbox cgroup, removed (after killing what is left in it) on drop.
#[derive(Debug)]
pub struct SandboxCgroup {
    /// Present until dropped.
    cgroup: Option<TransientCgroup>,
}

impl SandboxCgroup {
    /// Creates `<cgroup2 mount>/gwtest-<unique>`.
    pub fn new() -> anyhow::Result<Self> {
        let cgroup =
            TransientCgroup::create(&unique("gwtest-")).context("creating a sandbox cgroup")?;
        Ok(SandboxCgroup {
            cgroup: Some(cgroup),
        })
    }

    fn transient(&self) -> &TransientCgroup {
        self.cgroup.as_ref().expect("present until dropped")
    }

    /// The cgroup directory, for `--sandbox`.
    pub fn path(&self) -> &std::path::Path {
        self.transient().cgroup().path()
    }

    /// Runs `command` to completion inside this cgroup (and `netns`, when given). A command is
    /// confined once: do not run the same `Command` again.
    pub fn output(&self, netns: Option<&NetNs>, command: &mut Command) -> anyhow::Result<Output> {
        self.confined(netns, command, Command::output)
            .with_context(|| format!("running {command:?} in the sandbox"))
    }

    /// Starts `command` inside this cgroup (and `netns`, when given) without waiting for it.
    pub fn spawn(&self, netns: Option<&NetNs>, command: &mut Command) -> anyhow::Result<Child> {
        self.confined(netns, command, Command::spawn)
            .with_context(|| format!("starting {command:?} in the sandbox"))
    }

    /// Runs `command` inside this cgroup, capturing its output; ends it (SIGTERM, then SIGKILL)
    /// and fails after `timeout`.
    pub fn output_within(
        &self,
        command: &mut Command,
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = self.spawn(None, command)?;
        output_within(child, timeout).with_context(|| format!("running {command:?}"))
    }

    /// Starts `command` with `start`, confined to this cgroup (and `netns`, when given).
    fn confined<T>(
        &self,
        netns: Option<&NetNs>,
        command: &mut Command,
        start: impl FnOnce(&mut Command) -> std::io::Result<T>,
    ) -> anyhow::Result<T> {
        let ns = netns.map(|ns| GwNetNs::open(&ns.path())).transpose()?;
        let confinement = Confinement::new(self.transient().cgroup(), ns.as_ref())?;
        confinement.apply(command);
        // The confinement's descriptors are used between fork and exec: it lives until here.
        let started = start(command)?;
        drop(confinement);
        Ok(started)
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        let Some(cgroup) = self.cgroup.take() else {
            return;
        };
        let path = cgroup.cgroup().path().to_owned();
        // A test may remove the cgroup itself (to see the daemon notice): nothing left to do.
        if let Err(err) = cgroup.remove()
            && path.exists()
        {
            eprintln!("harness: removing sandbox cgroup {}: {err}", path.display());
        }
    }
}

/// stdout of a finished command as text, failing with its stderr when it failed.
pub fn stdout_ok(output: &Output) -> anyhow::Result<String> {
    if !output.status.success() {
        anyhow::bail!(
            "command failed ({}): stdout: {} stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
