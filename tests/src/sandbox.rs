//! Sandbox cgroups for tests, and running real client programs inside them.

use std::process::{Command, Output};

use anyhow::Context as _;
use gateway::sandbox::{Confinement, cgroup::TransientCgroup, netns::NetNs as GwNetNs};

use crate::{net::NetNs, unique};

/// A fresh sandbox cgroup, removed (after killing what is left in it) on drop.
#[derive(Debug)]
pub struct SandboxCgroup {
    cgroup: TransientCgroup,
}

impl SandboxCgroup {
    /// Creates `<cgroup2 mount>/gwtest-<unique>`.
    pub fn new() -> anyhow::Result<Self> {
        let cgroup =
            TransientCgroup::create(&unique("gwtest-")).context("creating a sandbox cgroup")?;
        Ok(SandboxCgroup { cgroup })
    }

    /// The cgroup directory, for `--sandbox`.
    pub fn path(&self) -> &std::path::Path {
        self.cgroup.cgroup().path()
    }

    /// Runs `command` to completion inside this cgroup (and `netns`, when given). A command is
    /// confined once: do not run the same `Command` again.
    pub fn output(&self, netns: Option<&NetNs>, command: &mut Command) -> anyhow::Result<Output> {
        let ns = netns.map(|ns| GwNetNs::open(&ns.path())).transpose()?;
        let confinement = Confinement::new(self.cgroup.cgroup(), ns.as_ref())?;
        confinement.apply(command);
        command
            .output()
            .with_context(|| format!("running {command:?} in the sandbox"))
    }
}

impl SandboxCgroup {
    /// Starts `command` inside this cgroup (and `netns`, when given) without waiting for it.
    pub fn spawn(
        &self,
        netns: Option<&NetNs>,
        command: &mut Command,
    ) -> anyhow::Result<std::process::Child> {
        let ns = netns.map(|ns| GwNetNs::open(&ns.path())).transpose()?;
        let confinement = Confinement::new(self.cgroup.cgroup(), ns.as_ref())?;
        confinement.apply(command);
        command
            .spawn()
            .with_context(|| format!("starting {command:?} in the sandbox"))
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
