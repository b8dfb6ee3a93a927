//! `gateway exec`: run one command in a transient sandbox whose HTTPS goes through an in-process
//! gateway, confined so that it cannot leave, and remove everything created when it exits.
//!
//! The command is hostile and may be uid 0. exec creates the sandbox (cgroup, optional netns,
//! the engine with its programs attached, the trust material) and starts the single-threaded
//! helper `gateway __exec-init` inside the cgroup and netns ([`init`]); the helper gives the
//! command private mount, cgroup and PID namespaces, read-only cgroup2, the distribution's
//! bundle paths holding the gateway CA, a resolv.conf sending DNS to the gateway, and the target
//! user without capabilities.
//!
//! Lifetimes chain with PR_SET_PDEATHSIG: exec → helper → PID 1 of the namespace → everything
//! in it. So `kill -9` of exec takes the whole sandbox down; the cgroup such an exec leaves
//! behind is removed by the next one ([`remove_stale_exec_cgroups`]).

pub mod init;
mod mounts;
mod pid1;
mod privileges;
pub mod trust;
pub mod user;

use std::{
    ffi::OsString,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::PathBuf,
    process::Command,
};

use clap::ValueEnum as _;
use gateway_proto::{
    config::{PolicyOverrides, SecretName},
    sandbox_spec::SandboxSpec,
};
use nix::unistd::Pid;
use tracing::{info, warn};

use self::{
    trust::{TrustBundle, TrustError},
    user::{Identity, SudoEnv, UserError, UserSpec},
};
use crate::{
    cli::LogFormat,
    control::{self, ControlError, Request, Response},
    engine::{Engine, EngineError, EngineOptions},
    process::{self, ProcessError, Signals},
    sandbox::{
        Confinement,
        cgroup::{CgroupError, TransientCgroup, exec_cgroup_name, remove_stale_exec_cgroups},
        netns::{NetNs, NetNsError},
    },
};

/// The helper is this very binary.
const SELF_EXE: &str = "/proc/self/exe";

/// Errors of `gateway exec` (the command's own failure is its exit code, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Not root, or no signal handling.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The user to run the command as could not be determined.
    #[error(transparent)]
    User(#[from] UserError),
    /// The transient cgroup could not be created, used or removed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The new network namespace could not be created.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// The gateway engine could not be set up for the sandbox.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The trust material for the command could not be written.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The helper could not be started.
    #[error("starting the exec helper ({SELF_EXE} {}): {source}", init::SUBCOMMAND)]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the helper failed.
    #[error("waiting for the exec helper: {source}")]
    Wait {
        #[source]
        source: std::io::Error,
    },
    /// The running daemon refused the sandbox.
    #[error("the gateway daemon refused the sandbox: {error}")]
    Daemon {
        /// Its answer.
        error: String,
    },
    /// The running daemon could not be asked.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A blocking task (user lookup, trust material, cleanup) did not finish.
    #[error("{task}: {source}")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
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
    /// `--user`: who the command runs as, instead of the sudo invoker or root.
    pub user: Option<UserSpec>,
    /// `--secret`: the secrets substituted for this command (it gets their placeholders).
    pub secrets: Vec<SecretName>,
    /// Where a running daemon's control socket is.
    pub state_dir: PathBuf,
    /// The log format, passed on to the helper.
    pub log_format: LogFormat,
    /// The command and its arguments (at least the program).
    pub command: Vec<OsString>,
}

/// Runs the command and returns its exit code (128 + signal number when it was killed).
pub async fn exec(options: ExecOptions) -> Result<i32, ExecError> {
    process::require_root()?;
    process::raise_nofile_limit();
    process::no_core_dumps();
    let mut signals = Signals::new()?;
    blocking("removing what killed execs left", remove_leftovers).await?;
    let spec = options.user.clone();
    let identity = blocking("looking up the user", move || {
        Identity::resolve(spec.as_ref(), &SudoEnv::from_env())
    })
    .await??;
    let name = exec_cgroup_name(std::process::id());
    let cgroup = TransientCgroup::create(&name)?;
    let mut trust = None;
    let status = run_in_sandbox(
        &name,
        &cgroup,
        &identity,
        &options,
        &mut signals,
        &mut trust,
    )
    .await;
    // Removal kills leftovers and polls until they have exited: kept off the runtime, and done
    // whether or not the command ran.
    let removed = blocking("cleaning up the transient cgroup", move || {
        drop(trust);
        cgroup.remove()
    })
    .await;
    let code = status?;
    removed??;
    Ok(code)
}

/// Cgroups and trust directories of execs that were killed before they could clean up.
fn remove_leftovers() {
    if let Err(err) = remove_stale_exec_cgroups() {
        warn!(error = %err, "could not look for cgroups left by killed execs");
    }
    trust::remove_stale();
}

/// Runs `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    task: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ExecError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ExecError::Task { task, source })
}

/// Everything between creating the cgroup and removing it. The trust material goes into
/// `trust`, for the caller to remove off the runtime whatever happens here.
async fn run_in_sandbox(
    name: &str,
    cgroup: &TransientCgroup,
    identity: &Identity,
    options: &ExecOptions,
    signals: &mut Signals,
    trust: &mut Option<TrustBundle>,
) -> Result<i32, ExecError> {
    let netns = options
        .new_netns
        .then(|| NetNs::new_isolated(name))
        .transpose()?;
    let spec = exec_spec(cgroup, netns.as_ref(), options);
    let socket = control::socket_path(&options.state_dir);
    let served = if control::daemon_running(&socket) {
        Served::through_daemon(socket, spec).await?
    } else {
        Served::in_process(options, spec)?
    };
    let (name, ca_pem) = (name.to_string(), served.ca_pem.clone());
    let bundle = trust.insert(
        blocking("writing the trust bundle", move || {
            TrustBundle::prepare(&name, &ca_pem)
        })
        .await??,
    );
    info!(
        sandbox = %served.name, cgroup = %cgroup.cgroup().path().display(),
        netns = netns.as_ref().map(NetNs::label).unwrap_or("host"),
        gateway = served.gateway.describe(),
        uid = identity.uid.as_raw(), user = %identity.name,
        "sandbox ready"
    );
    let helper = Helper {
        identity,
        trust: bundle,
        placeholders: &served.placeholders,
    };
    let status = run_helper(options, cgroup, netns.as_ref(), &helper, signals).await;
    served.finish(options.engine.drain_timeout).await;
    status
}

/// The sandbox of this command: its spec as the engine takes it. A daemon learns the command's
/// network namespace through a path into this process, and watches this process (the owner).
fn exec_spec(
    cgroup: &TransientCgroup,
    netns: Option<&NetNs>,
    options: &ExecOptions,
) -> SandboxSpec {
    let mut spec = SandboxSpec::new(cgroup.cgroup().path().to_owned());
    spec.netns = netns.map(NetNs::proc_path);
    spec.owner = Some(std::process::id());
    spec.policy = options.policy.clone();
    spec.secrets = options.secrets.clone();
    spec
}

/// Where the sandbox is served.
enum Gateway {
    /// By the running daemon, which removes it when asked (or when this process is gone).
    Daemon { socket: PathBuf },
    /// By an engine of this process, for the command's lifetime.
    Own(Box<Engine>),
}

impl Gateway {
    fn describe(&self) -> &'static str {
        match self {
            Gateway::Daemon { .. } => "daemon",
            Gateway::Own(_) => "in-process",
        }
    }
}

/// The sandbox as served, with what the command needs from its gateway.
struct Served {
    gateway: Gateway,
    name: String,
    ca_pem: String,
    placeholders: Vec<(String, String)>,
}

impl Served {
    /// Registers the sandbox with the running daemon: no second engine.
    async fn through_daemon(socket: PathBuf, spec: SandboxSpec) -> Result<Served, ExecError> {
        let request = Request::SandboxAdd {
            spec: spec.to_string(),
        };
        let asked = socket.clone();
        let response = blocking("registering with the daemon", move || {
            control::request(&asked, &request)
        })
        .await??;
        match response {
            Response::Added(added) => Ok(Served {
                gateway: Gateway::Daemon { socket },
                name: added.sandbox.name,
                ca_pem: added.ca_pem,
                placeholders: added.environment,
            }),
            Response::Error { error } => Err(ExecError::Daemon { error }),
            other => Err(ExecError::Daemon {
                error: format!("unexpected answer {other:?}"),
            }),
        }
    }

    /// Serves the sandbox from an engine of this process (no daemon runs).
    fn in_process(options: &ExecOptions, spec: SandboxSpec) -> Result<Served, ExecError> {
        let mut engine = Engine::new(None, options.engine.clone(), None)?;
        let placeholders = engine
            .secret_environment(&spec.secrets)
            .map_err(EngineError::from)?;
        let info = engine.add_sandbox(spec)?;
        Ok(Served {
            name: info.name.to_string(),
            ca_pem: engine.ca_pem().to_owned(),
            placeholders,
            gateway: Gateway::Own(Box::new(engine)),
        })
    }

    /// The command is done: the sandbox goes.
    async fn finish(self, drain: std::time::Duration) {
        match self.gateway {
            Gateway::Own(engine) => {
                let counters = engine.shutdown(drain).await;
                info!(counters, "sandbox done");
            }
            Gateway::Daemon { socket } => {
                let request = Request::SandboxRm { name: self.name };
                match blocking("unregistering from the daemon", move || {
                    control::request(&socket, &request)
                })
                .await
                {
                    Ok(Ok(Response::Removed { .. })) => info!("sandbox done"),
                    Ok(Ok(other)) => {
                        warn!(answer = ?other, "the daemon did not remove the sandbox; it will when this process is gone")
                    }
                    Ok(Err(err)) => {
                        warn!(error = %err, "could not unregister from the daemon; it removes the sandbox when this process is gone")
                    }
                    Err(err) => warn!(error = %err, "unregistering did not finish"),
                }
            }
        }
    }
}

/// Starts the helper confined to the sandbox and waits for it, passing SIGINT and SIGTERM on.
async fn run_helper(
    options: &ExecOptions,
    cgroup: &TransientCgroup,
    netns: Option<&NetNs>,
    helper: &Helper<'_>,
    signals: &mut Signals,
) -> Result<i32, ExecError> {
    let confinement = Confinement::new(cgroup.cgroup(), netns)?.die_with_parent();
    let mut command = helper_command(options, helper);
    confinement.apply(&mut command);
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ExecError::Spawn { source })?;
    drop(confinement);
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|source| ExecError::Wait { source })?,
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
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Environment variables through which common TLS stacks (OpenSSL, curl, Python requests,
/// Node.js) pick up the trust bundle; the rest read the distribution paths the helper covers.
const TRUST_VARS: [&str; 4] = [
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
];

/// What the helper and the command it starts are given.
struct Helper<'a> {
    identity: &'a Identity,
    trust: &'a TrustBundle,
    /// Each given secret's variable and placeholder.
    placeholders: &'a [(String, String)],
}

/// `gateway [--log-format F] __exec-init --uid U --gid G [--groups ...] --trust-dir D -- CMD...`
/// with the command's environment: the helper passes its own on unchanged. That is exec's own
/// environment, minus every variable a secret's value is read from (the command must never
/// see a value), plus the placeholders of the secrets it was given.
fn helper_command(options: &ExecOptions, helper: &Helper<'_>) -> Command {
    let (identity, trust) = (helper.identity, helper.trust);
    let mut command = Command::new(SELF_EXE);
    command.arg0("gateway");
    if let Some(format) = options.log_format.to_possible_value() {
        command.args(["--log-format", format.get_name()]);
    }
    command
        .arg(init::SUBCOMMAND)
        .args(["--uid", &identity.uid.to_string()])
        .args(["--gid", &identity.gid.to_string()]);
    if !identity.groups.is_empty() {
        let groups: Vec<String> = identity.groups.iter().map(ToString::to_string).collect();
        command.args(["--groups", &groups.join(",")]);
    }
    command
        .arg("--trust-dir")
        .arg(trust.dir())
        .arg("--")
        .args(&options.command);
    command
        .env("HOME", &identity.home)
        .env("USER", &identity.name)
        .env("LOGNAME", &identity.name);
    for var in TRUST_VARS {
        command.env(var, trust.bundle());
    }
    for secret in &options.engine.secrets {
        if let Some(var) = &secret.value_env {
            command.env_remove(var.as_str());
        }
    }
    for (var, placeholder) in helper.placeholders {
        command.env(var, placeholder);
    }
    command
}
