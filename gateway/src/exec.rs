//! `gateway exec`: run one command in a transient sandbox whose HTTPS goes through an in-process
//! gateway, and remove everything created when it exits.

use std::{
    ffi::OsString,
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use gateway_proto::config::PolicyOverrides;
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::{
    engine::{Engine, EngineError, EngineOptions},
    process::{self, ProcessError, Signals},
    sandbox::{
        Confinement,
        cgroup::{CgroupError, TransientCgroup},
        netns::{NetNs, NetNsError},
    },
};

/// Errors of `gateway exec` (the command's own failure is its exit code, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Not root, or no signal handling.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The transient cgroup could not be created, used or removed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The new network namespace could not be created.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// The gateway engine could not be set up for the sandbox.
    #[error(transparent)]
    Engine(#[from] EngineError),
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
    /// The trust bundle for the command could not be written.
    #[error("writing the trust bundle {path}: {source}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Removing the transient cgroup did not finish (its task failed).
    #[error("cleaning up the transient cgroup: {0}")]
    Cleanup(#[source] tokio::task::JoinError),
}

/// Options of `gateway exec`.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Give the command a fresh network namespace with only `lo`.
    pub new_netns: bool,
    /// The sandbox's changes to the config's policy.
    pub policy: PolicyOverrides,
    /// Engine tunables.
    pub engine: EngineOptions,
    /// The command and its arguments (at least the program).
    pub command: Vec<OsString>,
}

/// Runs the command and returns its exit code (128 + signal number when it was killed).
pub async fn exec(options: ExecOptions) -> Result<i32, ExecError> {
    process::require_root()?;
    process::raise_nofile_limit();
    let mut signals = Signals::new()?;
    let name = format!("gateway-exec-{}", std::process::id());
    let cgroup = TransientCgroup::create(&name)?;
    let status = run_in_sandbox(&name, &cgroup, &options, &mut signals).await;
    // Removal kills leftovers and polls until they have exited: kept off the runtime, and done
    // whether or not the command ran.
    let removed = tokio::task::spawn_blocking(move || cgroup.remove()).await;
    let code = status?;
    removed.map_err(ExecError::Cleanup)??;
    Ok(code)
}

/// Everything between creating the cgroup and removing it.
async fn run_in_sandbox(
    name: &str,
    cgroup: &TransientCgroup,
    options: &ExecOptions,
    signals: &mut Signals,
) -> Result<i32, ExecError> {
    let netns = options
        .new_netns
        .then(|| NetNs::new_isolated(name))
        .transpose()?;
    let mut engine = Engine::new(None, options.engine.clone())?;
    let bundle = TrustBundle::write(name, engine.ca_pem())?;
    let sandbox = engine.add_sandbox(cgroup.cgroup(), netns.as_ref(), &options.policy)?;
    info!(
        sandbox = %sandbox.id, cgroup = %cgroup.cgroup().path().display(),
        netns = netns.as_ref().map(NetNs::label).unwrap_or("host"),
        listener_port = sandbox.listener_port, tls_ports = %sandbox.tls_ports,
        http_ports = %sandbox.http_ports,
        "sandbox ready"
    );
    let status = run_child(&options.command, cgroup, netns.as_ref(), &bundle, signals).await;
    let counters = engine.shutdown(options.engine.drain_timeout).await;
    info!(counters, "sandbox done");
    status
}

async fn run_child(
    command: &[OsString],
    cgroup: &TransientCgroup,
    netns: Option<&NetNs>,
    bundle: &TrustBundle,
    signals: &mut Signals,
) -> Result<i32, ExecError> {
    let program = command.first().cloned().unwrap_or_default();
    let confinement = Confinement::new(cgroup.cgroup(), netns)?.die_with_parent();
    let mut std_command = Command::new(&program);
    std_command.args(&command[1..]);
    for var in TRUST_VARS {
        std_command.env(var, &bundle.path);
    }
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
                if let Some(pid) = pid {
                    warn!(signal = %signal, "forwarding signal to the command");
                    if let Err(err) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::from(signal)) {
                        warn!(signal = %signal, error = %err, "could not forward the signal");
                    }
                }
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Environment variables through which common TLS stacks (OpenSSL, curl, Python requests,
/// Node.js) pick up the trust bundle.
const TRUST_VARS: [&str; 4] = [
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
];

/// Where Debian, Fedora and Alpine-likes keep the system's trusted roots.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// System roots plus the gateway CA, in a file removed when the command is done.
#[derive(Debug)]
struct TrustBundle {
    dir: PathBuf,
    path: PathBuf,
}

impl TrustBundle {
    fn write(name: &str, ca_pem: &str) -> Result<Self, ExecError> {
        let dir = std::env::temp_dir().join(name);
        let bundle_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ExecError::Bundle { path, source }
        };
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(bundle_err(&dir))?;
        let bundle = TrustBundle {
            path: dir.join("ca-bundle.pem"),
            dir,
        };
        let mut contents = match SYSTEM_BUNDLES
            .iter()
            .find_map(|p| fs::read_to_string(p).ok())
        {
            Some(system) => system,
            None => {
                warn!("no system CA bundle found; the command trusts only the gateway CA");
                String::new()
            }
        };
        if !contents.is_empty() && !contents.ends_with('\n') {
            contents.push('\n');
        }
        contents.push_str(ca_pem);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&bundle.path)
            .map_err(bundle_err(&bundle.path))?;
        file.write_all(contents.as_bytes())
            .map_err(bundle_err(&bundle.path))?;
        Ok(bundle)
    }
}

impl Drop for TrustBundle {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(&self.dir);
    }
}
