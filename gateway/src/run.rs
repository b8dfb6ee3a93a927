//! `gateway run`: the long-lived daemon. It adopts what a previous daemon left pinned, serves
//! the sandboxes of its command line and config, takes requests on its control socket, reloads
//! its config on SIGHUP, and on SIGINT/SIGTERM drains and exits leaving the programs pinned
//! (fail closed) for the next daemon to adopt.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use gateway_proto::{config::Config, sandbox_spec::SandboxSpec};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    control::{self, Added, ControlError, Incoming, Request, Response},
    ebpf::{PinDir, pins::PinError},
    engine::{Engine, EngineError, EngineOptions, remove_owned_cgroups},
    metrics::{self, MetricsError},
    process::{self, ProcessError, Signal, Signals, Trim},
    sandbox::cgroup::Cgroup,
    state::{StateError, StateFile},
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Not root, or no signal handling.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The pin directory could not be taken.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// The state directory could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The control socket could not be made.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The engine or a sandbox could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The metrics endpoint could not listen.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Options of `gateway run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Sandboxes to serve (command line, then config).
    pub sandboxes: Vec<SandboxSpec>,
    /// Where maps and links are pinned.
    pub pin_dir: PathBuf,
    /// Where to serve metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the control socket and the remembered sandboxes live.
    pub state_dir: PathBuf,
    /// The config file, read again on reload.
    pub config_path: Option<PathBuf>,
    /// Engine tunables.
    pub engine: EngineOptions,
}

/// How often the daemon checks that sandbox cgroups, owners and its pins still exist.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the daemon until SIGINT/SIGTERM (drain, leave the pins) or `gateway down` (detach
/// everything, remove the pins).
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    process::require_root()?;
    process::raise_nofile_limit();
    process::no_core_dumps();
    let mut signals = Signals::new()?;
    let fresh = !options.pin_dir.exists();
    let (engine, metrics_listener) = match start_engine(&options) {
        Ok(started) => started,
        Err(err) => {
            // A first start that failed leaves nothing behind; a restart keeps what it found.
            if fresh {
                let _ = std::fs::remove_dir_all(&options.pin_dir);
            }
            return Err(err);
        }
    };
    let socket = control::socket_path(&options.state_dir);
    let listener = control::bind(&socket)?;
    let (requests, mut incoming) = mpsc::channel(16);
    let stop_control = CancellationToken::new();
    let metrics_task = metrics_listener.map(|listener| {
        tokio::spawn(metrics::serve_listener(
            listener,
            engine.metrics(),
            stop_control.clone(),
        ))
    });
    let control_task = tokio::spawn(control::serve(listener, requests, stop_control.clone()));
    info!(pin_dir = %options.pin_dir.display(), control = %socket.display(), sandboxes = engine.list().len(), "gateway ready");
    let mut daemon = Daemon {
        engine,
        options: &options,
    };
    let ending = daemon.serve(&mut signals, &mut incoming).await;
    stop_control.cancel();
    let _ = std::fs::remove_file(&socket);
    let Daemon { engine, .. } = daemon;
    let result = finish(engine, ending, options.engine.drain_timeout).await;
    // Requests that arrived too late are refused; answers already given are written.
    drop(incoming);
    let _ = control_task.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    result
}

/// Stops serving as `ending` asks: drain and leave the pins, or detach and unpin everything.
async fn finish(engine: Engine, ending: Ending, drain_timeout: Duration) -> Result<(), RunError> {
    match ending {
        Ending::Signal(signal) => {
            info!(signal = %signal, "shutting down; the sandboxes stay confined until a daemon adopts them");
            let counters = engine.shutdown(drain_timeout).await;
            info!(counters, "gateway stopped");
        }
        Ending::Down(reply) => {
            let result = engine.down().await;
            let response = match &result {
                Ok(removed) => Response::Down { removed: *removed },
                Err(err) => Response::Error {
                    error: err.to_string(),
                },
            };
            let _ = reply.send(response);
            let removed = result?;
            info!(
                removed_pins = removed,
                "gateway down: every sandbox detached, every pin removed"
            );
        }
    }
    Ok(())
}

/// Takes the pin directory, adopts what is pinned there and serves the sandboxes named at
/// start.
fn start_engine(options: &RunOptions) -> Result<(Engine, Option<TcpListener>), RunError> {
    // A sandbox named at start that cannot be served is refused before anything is pinned.
    for spec in &options.sandboxes {
        Cgroup::open(&spec.cgroup).map_err(EngineError::from)?;
    }
    let pins = PinDir::create(&options.pin_dir)?;
    let state = StateFile::in_dir(&options.state_dir)?;
    let mut engine = Engine::new(Some(pins), options.engine.clone(), Some(state))?;
    for info in engine.adopt_pinned()? {
        info!(sandbox = %info.id, name = %info.name, listener_port = info.listener_port, dns_port = info.dns_port, "sandbox adopted");
    }
    for spec in &options.sandboxes {
        add_configured(&mut engine, spec)?;
    }
    let metrics_listener = match options.metrics_addr {
        Some(addr) => {
            engine.protect_metrics(addresses_of(addr))?;
            Some(bind_metrics(addr)?)
        }
        None => None,
    };
    Ok((engine, metrics_listener))
}

/// Every address a connect to `addr` reaches it by: itself, and when it is the unspecified
/// address, each address of this host's interfaces (of its family; IPv4 too for `::`).
fn addresses_of(addr: SocketAddr) -> Vec<SocketAddr> {
    let mut addrs = vec![addr];
    if !addr.ip().is_unspecified() {
        return addrs;
    }
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        warn!("interface addresses unreadable; judging the metrics address by itself");
        return addrs;
    };
    let local = interfaces.filter_map(|interface| {
        let address = interface.address?;
        match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
            (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
            (_, Some(v6)) if addr.is_ipv6() => Some(IpAddr::V6(v6.ip())),
            _ => None,
        }
    });
    addrs.extend(local.map(|ip| SocketAddr::new(ip, addr.port())));
    addrs
}

fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    let listen_err = |source| MetricsError::Listen {
        op: "bind",
        addr,
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    TcpListener::from_std(listener).map_err(listen_err)
}

/// A sandbox of the command line or config: added, unless one was adopted for its cgroup.
fn add_configured(engine: &mut Engine, spec: &SandboxSpec) -> Result<(), EngineError> {
    if let Some(existing) = engine.list().into_iter().find(|s| s.cgroup == spec.cgroup) {
        info!(name = existing.name, cgroup = %spec.cgroup.display(), "sandbox already adopted");
        return Ok(());
    }
    let info = engine.add_sandbox(spec.clone())?;
    info!(
        sandbox = %info.id, name = %info.name, cgroup = %spec.cgroup.display(),
        netns = spec.netns.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_else(|| "host".into()),
        listener_port = info.listener_port, dns_port = info.dns_port, tls_ports = %info.tls_ports,
        http_ports = %info.http_ports,
        "sandbox attached"
    );
    Ok(())
}

/// How serving ended.
enum Ending {
    Signal(Signal),
    /// `gateway down`: the reply goes out once everything is detached.
    Down(tokio::sync::oneshot::Sender<Response>),
}

struct Daemon<'a> {
    engine: Engine,
    options: &'a RunOptions,
}

impl Daemon<'_> {
    async fn serve(
        &mut self,
        signals: &mut Signals,
        incoming: &mut mpsc::Receiver<Incoming>,
    ) -> Ending {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let mut pins_warned = false;
        let mut trim = Trim::default();
        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Signal::Hangup => {
                        if let Err(err) = self.reload() {
                            warn!(error = err, "config not reloaded; the previous one stays");
                        }
                    }
                    stop => return Ending::Signal(stop),
                },
                Some(Incoming { request, reply }) = incoming.recv() => {
                    if request == Request::Down {
                        return Ending::Down(reply);
                    }
                    let _ = reply.send(self.answer(request));
                }
                _ = housekeeping.tick() => {
                    let owned = self.engine.drop_gone_sandboxes();
                    self.engine.expire_dns_bindings();
                    tokio::spawn(remove_owned_cgroups(owned));
                    trim.after_load(self.engine.open_connections());
                    if !self.engine.pins_present() && !pins_warned {
                        pins_warned = true;
                        warn!("pinned maps and links were removed under the daemon; sandboxes stay confined while it runs, but would not fail closed if it died: restart it to pin again");
                    }
                }
            }
        }
    }

    fn answer(&mut self, request: Request) -> Response {
        let result = match request {
            Request::SandboxAdd { spec } => self.add(&spec),
            Request::SandboxRm { name } => self
                .engine
                .remove_sandbox(&name)
                .map(|()| Response::Removed { name })
                .map_err(|err| err.to_string()),
            Request::SandboxLs => Ok(Response::Sandboxes(self.engine.list())),
            Request::Status => Ok(Response::Status(Box::new(self.engine.status()))),
            Request::Reload => self.reload().map(|()| Response::Reloaded),
            Request::Down => Err("down is handled by the main loop".to_owned()),
        };
        result.unwrap_or_else(|error| Response::Error { error })
    }

    fn add(&mut self, spec: &str) -> Result<Response, String> {
        let spec: SandboxSpec = spec
            .parse()
            .map_err(|err: gateway_proto::sandbox_spec::SpecError| err.to_string())?;
        let environment = self
            .engine
            .secret_environment(&spec.secrets)
            .map_err(|err| err.to_string())?;
        let info = self
            .engine
            .add_sandbox(spec)
            .map_err(|err| err.to_string())?;
        info!(sandbox = %info.id, name = %info.name, listener_port = info.listener_port, dns_port = info.dns_port, "sandbox added");
        let sandbox = self
            .engine
            .sandbox_status(&info.name)
            .ok_or_else(|| "the sandbox went away at once".to_owned())?;
        Ok(Response::Added(Box::new(Added {
            sandbox,
            ca_pem: self.engine.ca_pem().to_owned(),
            environment,
        })))
    }

    /// Reads the config file again and judges every sandbox by it from now on.
    fn reload(&mut self) -> Result<(), String> {
        let Some(path) = &self.options.config_path else {
            return Err(
                "the daemon runs without a config file (--config): nothing to reload".into(),
            );
        };
        let config = Config::load(path).map_err(|err| err.to_string())?;
        let options = EngineOptions {
            tls: config.tls,
            policy: config.policy,
            secrets: config.secrets,
            ..self.options.engine.clone()
        };
        self.engine.reload(options).map_err(|err| err.to_string())?;
        info!(config = %path.display(), "config reloaded");
        // New [[sandbox]] tables are served from now on; one that cannot be is logged and
        // the others still are. Tables removed from the file leave their sandboxes alone
        // (`gateway sandbox rm` removes one).
        for table in &config.sandbox {
            if let Err(err) = add_configured(&mut self.engine, &table.to_spec()) {
                warn!(cgroup = %table.cgroup.display(), error = %err, "a [[sandbox]] of the reloaded config is not served");
            }
        }
        Ok(())
    }
}
