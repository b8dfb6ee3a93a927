//! The gateway engine (programs + per-sandbox listeners) and the long-lived `gateway run` daemon.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::task::JoinSet;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::TlsConfig,
    ebpf::{Attachment, EbpfError, PinDir, Programs},
    net::listener::{self, ListenError, SandboxContext},
    relay::Timeouts,
    sandbox::{
        SandboxId, SandboxSpec,
        cgroup::{Cgroup, CgroupError},
        netns::{NetNs, NetNsError},
    },
    tls::{TlsContext, TlsSetupError, ca::gateway_home},
};

/// Errors starting or running the gateway.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The gateway needs root for eBPF, cgroups and namespaces.
    #[error(
        "gateway must run as root (it loads eBPF programs, attaches them to cgroups and enters network namespaces)"
    )]
    NotRoot,
    /// A sandbox's cgroup could not be used.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A sandbox's network namespace could not be used.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// Loading, attaching or pinning eBPF failed.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The CA or an upstream connector could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// Pinning failed.
    #[error(transparent)]
    Pin(#[from] crate::ebpf::pins::PinError),
    /// A sandbox's listener could not be opened.
    #[error("sandbox {sandbox} (cgroup {cgroup}): {source}")]
    Listen {
        sandbox: SandboxId,
        cgroup: PathBuf,
        #[source]
        source: ListenError,
    },
    /// The gateway process itself is inside a sandbox cgroup, so its upstream dials would loop.
    #[error(
        "the gateway runs inside sandbox cgroup {cgroup} (its own cgroup is {own}); run it outside every sandbox"
    )]
    InsideSandbox { cgroup: PathBuf, own: PathBuf },
    /// Waiting for signals failed.
    #[error("installing signal handlers: {source}")]
    Signals {
        #[source]
        source: std::io::Error,
    },
}

/// Fails unless the effective user is root.
pub fn require_root() -> Result<(), DaemonError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(DaemonError::NotRoot)
    }
}

/// Tunables shared by every sandbox.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// TLS interception settings (from the config file).
    pub tls: TlsConfig,
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
    attachment: Attachment,
    accept_loops: Vec<tokio::task::AbortHandle>,
}

/// The running gateway: loaded programs, and one listener (and accept tasks) per sandbox.
#[derive(Debug)]
pub struct Engine {
    programs: Programs,
    tls: Arc<TlsContext>,
    options: EngineOptions,
    served: Vec<Served>,
    /// The id the next sandbox gets; ids are never reused, even after a sandbox is dropped.
    next_id: u32,
    accept_loops: JoinSet<()>,
    connections: TaskTracker,
    cancel: CancellationToken,
}

/// What [`Engine::add_sandbox`] set up, for logs and callers.
#[derive(Clone, Copy, Debug)]
pub struct SandboxInfo {
    /// The sandbox's id.
    pub id: SandboxId,
    /// Its listener's port (127.0.0.1 and ::1 in its namespace).
    pub listener_port: u16,
}

impl Engine {
    /// Loads the programs, pinning state in `pins` when given.
    pub fn new(pins: Option<PinDir>, options: EngineOptions) -> Result<Self, DaemonError> {
        // TLS state first: a bad CA or CA file fails before anything is loaded.
        let tls = Arc::new(TlsContext::new(&options.tls, &gateway_home())?);
        Ok(Engine {
            programs: Programs::load(pins)?,
            tls,
            options,
            served: Vec::new(),
            next_id: 1,
            accept_loops: JoinSet::new(),
            connections: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    /// Starts redirecting `cgroup`'s connections to `ports` through a new listener. Must be
    /// called inside the tokio runtime.
    pub fn add_sandbox(
        &mut self,
        cgroup: &Cgroup,
        netns: Option<&NetNs>,
        ports: &[u16],
    ) -> Result<SandboxInfo, DaemonError> {
        refuse_own_cgroup(cgroup.path())?;
        let id = SandboxId(self.next_id);
        self.next_id += 1;
        let listen_err = |source| DaemonError::Listen {
            sandbox: id,
            cgroup: cgroup.path().into(),
            source,
        };
        let bound = listener::bind(netns).map_err(listen_err)?;
        let listener_port = bound.port;
        let listeners = bound.into_tokio().map_err(|source| {
            listen_err(ListenError::Bind {
                op: "register",
                addr: ([127, 0, 0, 1], listener_port).into(),
                source,
            })
        })?;
        // Listeners accept before the programs redirect anything, so no connect is lost.
        let ctx = Arc::new(SandboxContext {
            id,
            orig_dst: self.programs.orig_dst(),
            timeouts: self.options.timeouts,
            tls: Arc::clone(&self.tls),
            connections: self.connections.clone(),
            cancel: self.cancel.clone(),
        });
        let mut handles = Vec::new();
        for listener in listeners {
            handles.push(
                self.accept_loops
                    .spawn(listener::serve(listener, Arc::clone(&ctx))),
            );
        }
        match self.programs.attach(cgroup, id, listener_port, ports) {
            Ok(attachment) => {
                self.served.push(Served {
                    id,
                    cgroup_id: cgroup.id(),
                    cgroup: cgroup.path().into(),
                    accept_loops: handles,
                    attachment,
                });
                Ok(SandboxInfo { id, listener_port })
            }
            Err(err) => {
                handles.iter().for_each(|h| h.abort());
                let _ = self.programs.forget(cgroup.id());
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
            attachment,
            accept_loops,
            ..
        } = served;
        accept_loops
            .iter()
            .for_each(tokio::task::AbortHandle::abort);
        drop(attachment);
        if let Err(err) = self.programs.forget(cgroup_id) {
            warn!(sandbox = %id, error = %err, "failed to forget sandbox");
        }
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
fn refuse_own_cgroup(sandbox: &Path) -> Result<(), DaemonError> {
    let own = crate::sandbox::cgroup::own_cgroup()?;
    if own.starts_with(sandbox) {
        return Err(DaemonError::InsideSandbox {
            cgroup: sandbox.into(),
            own,
        });
    }
    Ok(())
}

/// Options of `gateway run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Sandboxes to serve.
    pub sandboxes: Vec<SandboxSpec>,
    /// Where maps and links are pinned.
    pub pin_dir: PathBuf,
    /// Engine tunables.
    pub engine: EngineOptions,
}

/// `gateway run`: serves the sandboxes until SIGINT or SIGTERM.
pub async fn run(options: RunOptions) -> Result<(), DaemonError> {
    require_root()?;
    raise_nofile_limit();
    let mut signals = Signals::new()?;
    // Every sandbox is checked before anything is loaded or pinned.
    let mut opened = Vec::with_capacity(options.sandboxes.len());
    for spec in &options.sandboxes {
        let cgroup = Cgroup::open(&spec.cgroup)?;
        let netns = spec.netns.as_deref().map(NetNs::open).transpose()?;
        opened.push((spec, cgroup, netns));
    }
    let pins = PinDir::create(&options.pin_dir)?;
    let mut engine = Engine::new(Some(pins), options.engine.clone())?;
    for (spec, cgroup, netns) in opened {
        let info = engine.add_sandbox(&cgroup, netns.as_ref(), &spec.ports)?;
        info!(
            sandbox = %info.id, cgroup = %cgroup.path().display(), cgroup_id = cgroup.id(),
            netns = netns.as_ref().map(NetNs::label).unwrap_or("host"),
            listener_port = info.listener_port, ports = ?spec.ports,
            "sandbox attached"
        );
    }
    info!(pin_dir = %options.pin_dir.display(), sandboxes = options.sandboxes.len(), "gateway ready");
    let signal = serve_until_signal(&mut engine, &mut signals).await;
    info!(signal, "shutting down");
    let counters = engine.shutdown(options.engine.drain_timeout).await;
    info!(counters, "gateway stopped");
    Ok(())
}

/// How often the daemon checks that sandbox cgroups and its pins still exist.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Serves until SIGINT/SIGTERM, meanwhile noticing sandboxes whose cgroup is removed and pins
/// removed under the daemon.
async fn serve_until_signal(engine: &mut Engine, signals: &mut Signals) -> &'static str {
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut pins_warned = false;
    let mut trim = Trim::default();
    loop {
        tokio::select! {
            signal = signals.recv() => return signal,
            _ = housekeeping.tick() => {
                engine.drop_removed_sandboxes();
                trim.after_load(engine.open_connections());
                if !engine.pins_present() && !pins_warned {
                    pins_warned = true;
                    warn!("pinned maps and links were removed under the daemon; sandboxes stay redirected while it runs, but would not fail closed if it died: restart it to pin again");
                }
            }
        }
    }
}

/// Gives memory back to the system once a load has passed: the allocator keeps freed memory
/// of thousands of closed connections otherwise, and the daemon's RSS would stay at its peak.
#[derive(Debug, Default)]
struct Trim {
    peak_since_trim: usize,
}

impl Trim {
    /// Connections at which a drop to at most a quarter of the peak triggers a trim.
    const MIN_PEAK: usize = 256;

    fn after_load(&mut self, open: usize) {
        self.peak_since_trim = self.peak_since_trim.max(open);
        if self.peak_since_trim >= Self::MIN_PEAK && open <= self.peak_since_trim / 4 {
            release_free_memory();
            tracing::debug!(
                peak = self.peak_since_trim,
                open,
                "returned free memory to the system"
            );
            self.peak_since_trim = open;
        }
    }
}

#[cfg(target_env = "gnu")]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer is passed.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn release_free_memory() {}

/// Raises the open-file soft limit to the hard limit: every relayed connection holds two
/// descriptors.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(err) => warn!(soft, hard, error = %err, "could not raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit"),
        Err(err) => warn!(error = %err, "could not read the open-file limit"),
    }
}

/// SIGINT and SIGTERM.
#[derive(Debug)]
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening (must run inside the runtime).
    pub fn new() -> Result<Self, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let int =
            signal(SignalKind::interrupt()).map_err(|source| DaemonError::Signals { source })?;
        let term =
            signal(SignalKind::terminate()).map_err(|source| DaemonError::Signals { source })?;
        Ok(Signals { int, term })
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
