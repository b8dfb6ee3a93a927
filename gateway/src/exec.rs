//! `gateway exec`: run one command in a transient sandbox whose HTTPS goes through an in-process
//! gateway, and remove everything created when it exits.

use std::{ffi::OsString, process::Command};

use nix::{sys::signal::Signal, unistd::Pid};
use tracing::{info, warn};

use crate::{
    daemon::{DaemonError, Engine, EngineOptions, Signals, require_root},
    sandbox::{
        Confinement,
        cgroup::{CgroupError, TransientCgroup},
        netns::NetNs,
    },
};

/// Errors of `gateway exec` (the command's own failure is its exit code, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Setting up the sandbox or the gateway failed.
    #[error(transparent)]
    Setup(#[from] DaemonError),
    /// The command could not be started.
    #[error("starting {program:?}: {source}")]
    Spawn {
        program: OsString,
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("waiting for {program:?}: {source}")]
    Wait {
        program: OsString,
        #[source]
        source: std::io::Error,
    },
    /// Removing the transient cgroup failed.
    #[error("cleaning up: {0}")]
    Cleanup(#[from] CgroupError),
}

/// Options of `gateway exec`.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Give the command a fresh network namespace with only `lo`.
    pub new_netns: bool,
    /// Intercepted ports.
    pub ports: Vec<u16>,
    /// Engine tunables.
    pub engine: EngineOptions,
    /// The command and its arguments (at least the program).
    pub command: Vec<OsString>,
}

/// Runs the command and returns its exit code (128 + signal number when it was killed).
pub async fn exec(options: ExecOptions) -> Result<i32, ExecError> {
    require_root().map_err(ExecError::Setup)?;
    let mut signals = Signals::new()?;
    let name = format!("gateway-exec-{}", std::process::id());
    let cgroup = TransientCgroup::create(&name).map_err(DaemonError::from)?;
    let netns = options
        .new_netns
        .then(|| NetNs::new_isolated(&name))
        .transpose()
        .map_err(DaemonError::from)?;
    let mut engine = Engine::new(None, options.engine)?;
    let sandbox = engine.add_sandbox(cgroup.cgroup(), netns.as_ref(), &options.ports)?;
    info!(
        sandbox = %sandbox.id, cgroup = %cgroup.cgroup().path().display(),
        netns = netns.as_ref().map(NetNs::label).unwrap_or("host"),
        listener_port = sandbox.listener_port, ports = ?options.ports,
        "sandbox ready"
    );

    let status = run_child(&options.command, &cgroup, netns.as_ref(), &mut signals).await;
    let counters = engine.shutdown(options.engine.drain_timeout).await;
    info!(counters, "sandbox done");
    cgroup.remove()?;
    drop(netns);
    status
}

async fn run_child(
    command: &[OsString],
    cgroup: &TransientCgroup,
    netns: Option<&NetNs>,
    signals: &mut Signals,
) -> Result<i32, ExecError> {
    let program = command.first().cloned().unwrap_or_default();
    let confinement = Confinement::new(cgroup.cgroup(), netns)
        .map_err(DaemonError::from)?
        .die_with_parent();
    let mut std_command = Command::new(&program);
    std_command.args(&command[1..]);
    confinement.apply(&mut std_command);
    let mut child = tokio::process::Command::from(std_command)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
    drop(confinement);
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|source| ExecError::Wait { program: program.clone(), source })?,
            signal = signals.recv() => {
                let sig = if signal == "SIGINT" { Signal::SIGINT } else { Signal::SIGTERM };
                if let Some(pid) = pid {
                    warn!(signal, "forwarding signal to the command");
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
