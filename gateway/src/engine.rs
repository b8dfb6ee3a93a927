//! The engine: the loaded eBPF programs, the sandboxes being served and their listeners, and
//! the connections in flight. Used by `gateway run` and by `gateway exec` in-process.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError},
    time::Duration,
};

use gateway_proto::{
    config::{PolicyConfig, PolicyError, PolicyOverrides, SecretConfig, SecretName, TlsConfig},
    ports::PortList,
};
use tokio::task::JoinSet;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    conn::SandboxContext,
    ebpf::{Attachment, EbpfError, PinDir, Programs, SandboxRules},
    net::listener::{self, ListenError},
    policy::{
        SandboxPolicy, TlsPolicy,
        refusals::{Policies, log_refusals},
    },
    relay::Timeouts,
    sandbox::{
        SandboxId,
        cgroup::{Cgroup, CgroupError},
        netns::NetNs,
    },
    secrets::{SecretStore, SecretsError},
    tls::{TlsContext, TlsSetupError, ca::gateway_home, crypto_provider, upstream::UpstreamError},
};

/// Errors setting up the engine or a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A sandbox's cgroup could not be used.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Loading, attaching or pinning eBPF failed.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The CA could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// An upstream connector could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A sandbox's listener could not be opened.
    #[error("sandbox {sandbox} (cgroup {cgroup}): {source}")]
    Listen {
        /// The sandbox.
        sandbox: SandboxId,
        /// Its cgroup.
        cgroup: PathBuf,
        /// Why.
        #[source]
        source: ListenError,
    },
    /// A secret's value could not be loaded, or a sandbox was given an unknown one.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The sandbox's overrides do not fit the config's policy.
    #[error("sandbox policy: {0}")]
    Policy(#[from] PolicyError),
    /// The gateway process itself is inside a sandbox cgroup, so its upstream dials would loop.
    #[error(
        "the gateway runs inside sandbox cgroup {cgroup} (its own cgroup is {own}); run it outside every sandbox"
    )]
    InsideSandbox {
        /// The sandbox's cgroup.
        cgroup: PathBuf,
        /// The gateway's own cgroup.
        own: PathBuf,
    },
}

/// Tunables shared by every sandbox.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// TLS interception settings (from the config file).
    pub tls: TlsConfig,
    /// The policy of every sandbox, before its own overrides (from the config file).
    pub policy: PolicyConfig,
    /// The secrets sandboxes may be given (from the config file).
    pub secrets: Vec<SecretConfig>,
    /// Connection time limits.
    pub timeouts: Timeouts,
    /// How long shutdown waits for open connections before closing them.
    pub drain_timeout: Duration,
}

/// A sandbox being served.
#[derive(Debug)]
struct Served {
    id: SandboxId,
    cgroup_id: u64,
    cgroup: PathBuf,
    rules: SandboxRules,
    attachment: Attachment,
    accept_loops: Vec<tokio::task::AbortHandle>,
}

/// The running gateway: loaded programs, and one listener (and accept tasks) per sandbox.
#[derive(Debug)]
pub struct Engine {
    programs: Programs,
    tls: Arc<TlsContext>,
    tls_policy: Arc<TlsPolicy>,
    secrets: Arc<SecretStore>,
    /// The policies of the sandboxes served, by id (read by the refusal log).
    policies: Policies,
    options: EngineOptions,
    served: Vec<Served>,
    /// The id the next sandbox gets; ids are never reused, even after a sandbox is dropped.
    next_id: u32,
    accept_loops: JoinSet<()>,
    connections: TaskTracker,
    cancel: CancellationToken,
}

/// What [`Engine::add_sandbox`] set up, for logs and callers.
#[derive(Clone, Debug)]
pub struct SandboxInfo {
    /// The sandbox's id.
    pub id: SandboxId,
    /// Its listener's port (127.0.0.1 and ::1 in its namespace).
    pub listener_port: u16,
    /// Its intercepted TLS ports.
    pub tls_ports: PortList,
    /// Its plain HTTP ports.
    pub http_ports: PortList,
}

impl Engine {
    /// Loads the programs, pinning state in `pins` when given. Must be called inside the
    /// tokio runtime (it starts the task logging refusals).
    pub fn new(pins: Option<PinDir>, options: EngineOptions) -> Result<Self, EngineError> {
        // TLS state first: a bad CA or CA file fails before anything is loaded.
        let provider = Arc::new(crypto_provider());
        let tls = Arc::new(TlsContext::new(&options.tls, &gateway_home(), &provider)?);
        let tls_policy = Arc::new(TlsPolicy::new(&options.tls, &provider)?);
        let secrets = Arc::new(SecretStore::load(&options.secrets)?);
        let mut programs = Programs::load(pins)?;
        let policies = Policies::default();
        let mut accept_loops = JoinSet::new();
        if let Some(events) = programs.take_refusal_events() {
            accept_loops.spawn(log_refusals(events, Arc::clone(&policies)));
        }
        Ok(Engine {
            programs,
            tls,
            tls_policy,
            secrets,
            policies,
            options,
            served: Vec::new(),
            next_id: 1,
            accept_loops,
            connections: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    /// Starts enforcing the policy (with `overrides`) on `cgroup` and serving its redirected
    /// connections through a new listener; `secrets` are substituted in its requests. Must be
    /// called inside the tokio runtime.
    pub fn add_sandbox(
        &mut self,
        cgroup: &Cgroup,
        netns: Option<&NetNs>,
        overrides: &PolicyOverrides,
        secrets: &[SecretName],
    ) -> Result<SandboxInfo, EngineError> {
        refuse_own_cgroup(cgroup.path())?;
        let policy = self.options.policy.with_overrides(overrides)?;
        let secrets = Arc::new(self.secrets.for_sandbox(secrets)?);
        let id = SandboxId(self.next_id);
        self.next_id += 1;
        let policy = Arc::new(SandboxPolicy::new(
            policy,
            Arc::clone(&self.tls_policy),
            secrets.scope(),
        ));
        let listen_err = |source| EngineError::Listen {
            sandbox: id,
            cgroup: cgroup.path().into(),
            source,
        };
        let bound = listener::bind(netns).map_err(listen_err)?;
        let listener_port = bound.port;
        let listeners = bound.into_tokio().map_err(listen_err)?;
        // Listeners accept before the programs redirect anything, so no connect is lost.
        let ctx = Arc::new(SandboxContext {
            id,
            orig_dst: self.programs.orig_dst(),
            timeouts: self.options.timeouts,
            policy: Arc::clone(&policy),
            secrets,
            tls: Arc::clone(&self.tls),
            connections: self.connections.clone(),
            cancel: self.cancel.clone(),
        });
        let handles: Vec<_> = listeners
            .into_iter()
            .map(|listener| {
                self.accept_loops
                    .spawn(listener::serve(listener, Arc::clone(&ctx)))
            })
            .collect();
        let rules = policy.rules(id, listener_port);
        match self.programs.attach(cgroup, &rules) {
            Ok(attachment) => {
                self.policies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, Arc::clone(&policy));
                self.served.push(Served {
                    id,
                    cgroup_id: cgroup.id(),
                    cgroup: cgroup.path().into(),
                    rules,
                    accept_loops: handles,
                    attachment,
                });
                Ok(SandboxInfo {
                    id,
                    listener_port,
                    tls_ports: policy.config.tls_ports.clone(),
                    http_ports: policy.config.http_ports.clone(),
                })
            }
            Err(err) => {
                handles.iter().for_each(tokio::task::AbortHandle::abort);
                Err(err.into())
            }
        }
    }

    /// Stops serving sandboxes whose cgroup was removed (the kernel has already detached their
    /// programs), logging each; other sandboxes are untouched.
    pub fn drop_removed_sandboxes(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) =
            self.served.drain(..).partition(|s| !s.cgroup.exists());
        self.served = kept;
        for served in gone {
            warn!(sandbox = %served.id, cgroup = %served.cgroup.display(), "sandbox cgroup was removed; no longer serving it");
            self.stop_serving(served);
        }
    }

    /// Stops accepting for a sandbox, detaches its programs and forgets its config. Its open
    /// connections go on until they end (or shutdown closes them).
    fn stop_serving(&mut self, served: Served) {
        let Served {
            id,
            cgroup_id,
            rules,
            attachment,
            accept_loops,
            ..
        } = served;
        accept_loops
            .iter()
            .for_each(tokio::task::AbortHandle::abort);
        drop(attachment);
        match self.programs.refusals(id.0) {
            Ok(refusals) => info!(
                sandbox = %id, refused_address = refusals.address,
                refused_tcp_port = refusals.tcp_port, refused_udp_port = refusals.udp_port,
                refused_quic = refusals.quic, refused_socket = refusals.socket,
                "sandbox detached"
            ),
            Err(err) => {
                warn!(sandbox = %id, error = %err, "sandbox detached; its refusal counts are unreadable")
            }
        }
        self.programs.forget(cgroup_id, &rules);
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Connections being handled right now.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Whether the pin directory (if any) is still there.
    pub fn pins_present(&self) -> bool {
        self.programs.pin_dir().is_none_or(Path::exists)
    }

    /// Current counters (eBPF and daemon), as `name=value` pairs for a log line.
    pub fn counters(&self) -> String {
        match self.programs.counters() {
            Ok(mut counters) => {
                counters.insert("certs_generated", self.tls.certs.generated());
                format_counters(&counters)
            }
            Err(err) => format!("unavailable: {err}"),
        }
    }

    /// Reads every secret's value again; new requests use the new values. On failure the old
    /// values stay.
    ///
    /// # Errors
    /// The value that could not be read, naming its secret and source.
    pub fn reload_secrets(&self) -> Result<usize, SecretsError> {
        self.secrets.reload()
    }

    /// The environment a command given `names` gets (each secret's variable set to its
    /// placeholder).
    ///
    /// # Errors
    /// [`SecretsError::Unknown`] for a name the config does not have.
    pub fn secret_environment(
        &self,
        names: &[SecretName],
    ) -> Result<Vec<(String, String)>, SecretsError> {
        self.secrets.environment(names)
    }

    /// The gateway CA's certificate (PEM), for clients' trust.
    pub fn ca_pem(&self) -> &str {
        self.tls.ca.cert_pem()
    }

    /// Detaches every sandbox and stops accepting; lets open connections finish for up to
    /// `drain` and then closes them (each logs its line); removes the pins. Returns the final
    /// counters (see [`Engine::counters`]).
    pub async fn shutdown(mut self, drain: Duration) -> String {
        for served in std::mem::take(&mut self.served) {
            self.stop_serving(served);
        }
        self.accept_loops.shutdown().await;
        self.connections.close();
        if tokio::time::timeout(drain, self.connections.wait())
            .await
            .is_err()
        {
            warn!(
                open = self.connections.len(),
                ?drain,
                "closing connections still open after the drain time"
            );
            self.cancel.cancel();
            self.connections.wait().await;
        }
        self.counters()
    }
}

fn format_counters(counters: &BTreeMap<&'static str, u64>) -> String {
    counters
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The gateway must not be in a cgroup it redirects.
fn refuse_own_cgroup(sandbox: &Path) -> Result<(), EngineError> {
    let own = crate::sandbox::cgroup::own_cgroup()?;
    if own.starts_with(sandbox) {
        return Err(EngineError::InsideSandbox {
            cgroup: sandbox.into(),
            own,
        });
    }
    Ok(())
}
