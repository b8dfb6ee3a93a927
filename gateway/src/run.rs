//! `gateway run`: the long-lived daemon serving the sandboxes named on its command line until
//! SIGINT or SIGTERM.

use std::{path::PathBuf, time::Duration};

use gateway_proto::sandbox_spec::SandboxSpec;
use tracing::{info, warn};

use crate::{
    ebpf::{PinDir, pins::PinError},
    engine::{Engine, EngineError, EngineOptions},
    process::{self, ProcessError, Signal, Signals, Trim},
    sandbox::{
        cgroup::{Cgroup, CgroupError},
        netns::{NetNs, NetNsError},
    },
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Not root, or no signal handling.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A sandbox's cgroup could not be opened.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A sandbox's network namespace could not be opened.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// The pin directory could not be taken.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// The engine or a sandbox could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
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

/// SIGHUP: new requests use the secrets' current values (files may have been rotated).
fn reload_secrets(engine: &Engine) {
    match engine.reload_secrets() {
        Ok(count) => info!(secrets = count, "secret values reloaded"),
        Err(err) => warn!(error = %err, "secret values not reloaded; the previous ones stay"),
    }
}

/// How often the daemon checks that sandbox cgroups and its pins still exist.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Serves the sandboxes until SIGINT or SIGTERM, then drains and detaches.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    process::require_root()?;
    process::raise_nofile_limit();
    process::no_core_dumps();
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
        let info = engine.add_sandbox(&cgroup, netns.as_ref(), &spec.policy, &spec.secrets)?;
        info!(
            sandbox = %info.id, cgroup = %cgroup.path().display(), cgroup_id = cgroup.id(),
            netns = netns.as_ref().map(NetNs::label).unwrap_or("host"),
            listener_port = info.listener_port, tls_ports = %info.tls_ports,
            http_ports = %info.http_ports,
            "sandbox attached"
        );
    }
    info!(pin_dir = %options.pin_dir.display(), sandboxes = options.sandboxes.len(), "gateway ready");
    let signal = serve_until_signal(&mut engine, &mut signals).await;
    info!(signal = %signal, "shutting down");
    let counters = engine.shutdown(options.engine.drain_timeout).await;
    info!(counters, "gateway stopped");
    Ok(())
}

/// Serves until SIGINT/SIGTERM, meanwhile reloading secret values on SIGHUP and noticing
/// sandboxes whose cgroup is removed and pins removed under the daemon.
async fn serve_until_signal(engine: &mut Engine, signals: &mut Signals) -> Signal {
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut pins_warned = false;
    let mut trim = Trim::default();
    loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Signal::Hangup => reload_secrets(engine),
                stop => return stop,
            },
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
