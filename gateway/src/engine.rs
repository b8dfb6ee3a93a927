//! The engine: the loaded eBPF programs, the sandboxes being served (added, removed, adopted
//! from a previous daemon, re-judged on reload) with their listeners and DNS services, and the
//! connections in flight. Used by `gateway run` and by `gateway exec` in-process.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use gateway_proto::{
    config::{DnsConfig, PolicyConfig, PolicyError, SecretConfig, SecretName, TlsConfig},
    ports::PortList,
    sandbox_spec::{SandboxName, SandboxSpec},
};
use rustls::crypto::CryptoProvider;
use tokio::task::JoinSet;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    conn::{ConnStats, SandboxContext, SandboxState},
    control::{SandboxStatus, Status},
    dns::{DnsContext, DnsListenError, DnsService, Resolver, ResolverError, SandboxBindings},
    ebpf::{Attachment, EbpfError, PinDir, Programs, SandboxRules},
    metrics::Metrics,
    net::listener::{self, ListenError},
    policy::{
        SandboxPolicy, TlsPolicy,
        refusals::{Policies, log_refusals},
    },
    process::Pidfd,
    relay::Timeouts,
    sandbox::{
        SandboxId,
        cgroup::{Cgroup, CgroupError},
        netns::{NetNs, NetNsError},
    },
    secrets::{SecretStore, SecretsError},
    state::{Record, StateError, StateFile},
    tls::{TlsContext, TlsSetupError, ca::gateway_home, crypto_provider, upstream::UpstreamError},
};

/// Errors setting up the engine or a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A sandbox's cgroup could not be used.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A sandbox's network namespace could not be used.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
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
    /// A sandbox's DNS service could not be started.
    #[error("sandbox {sandbox} (cgroup {cgroup}): DNS service: {source}")]
    Dns {
        /// The sandbox.
        sandbox: SandboxId,
        /// Its cgroup.
        cgroup: PathBuf,
        /// Why.
        #[source]
        source: DnsListenError,
    },
    /// The resolver the sandboxes' DNS services share could not be made.
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    /// A secret's value could not be loaded, or a sandbox was given an unknown one.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The sandbox's overrides do not fit the config's policy.
    #[error("sandbox {name}: {source}")]
    Policy {
        /// The sandbox.
        name: SandboxName,
        /// Why.
        #[source]
        source: PolicyError,
    },
    /// The sandboxes could not be remembered for the next daemon.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another sandbox has the name.
    #[error("there is already a sandbox named {name}")]
    NameTaken {
        /// The name.
        name: SandboxName,
    },
    /// Another sandbox has the cgroup.
    #[error("cgroup {} is already the sandbox {name}", .cgroup.display())]
    CgroupTaken {
        /// The cgroup.
        cgroup: PathBuf,
        /// The sandbox that has it.
        name: SandboxName,
    },
    /// No sandbox has the name.
    #[error("there is no sandbox named {name}")]
    NoSuchSandbox {
        /// The name asked for.
        name: String,
    },
    /// The process a sandbox lives for is already gone.
    #[error("the owner process {pid} of the sandbox is gone")]
    OwnerGone {
        /// Its pid.
        pid: u32,
    },
    /// A sandbox's policy would let it connect to the metrics endpoint.
    #[error(
        "sandbox {name} may connect to {addr}, where the metrics endpoint listens (its policy allows that address and TCP port {}); refuse the port or the address to it, or choose another --metrics-addr",
        .addr.port()
    )]
    ReachesMetrics {
        /// The sandbox.
        name: SandboxName,
        /// The endpoint's address it could reach.
        addr: SocketAddr,
    },
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
    /// The sandboxes' DNS service (from the config file); its resolver forwards to the
    /// nameservers of `policy.resolv_conf` unless `dns.upstream` names others. Read when the
    /// engine starts (a reload keeps the running resolver).
    pub dns: DnsConfig,
    /// Connection time limits.
    pub timeouts: Timeouts,
    /// How long shutdown waits for open connections before closing them.
    pub drain_timeout: Duration,
}

/// A sandbox being served.
#[derive(Debug)]
struct Served {
    id: SandboxId,
    spec: SandboxSpec,
    cgroup_id: u64,
    rules: SandboxRules,
    attachment: Attachment,
    accept_loops: Vec<tokio::task::AbortHandle>,
    listener_port: u16,
    /// Its DNS service (stopped when it is no longer served).
    dns: DnsService,
    /// The DNS service's port (127.0.0.1 and ::1 in its namespace).
    dns_port: u16,
    /// What its connections are judged by; replaced on reload.
    state: Arc<RwLock<Arc<SandboxState>>>,
    /// The process it lives for (`gateway exec` through the daemon).
    owner: Option<Pidfd>,
    /// Its network namespace, held open so its listener's namespace cannot go away.
    _netns: Option<OwnedFd>,
    context: Arc<SandboxContext>,
}

mod observed;
mod sandbox_dns;

use observed::{Attached, AttachedSandbox, EbpfMetrics};

/// The running gateway: loaded programs, and one listener (and accept tasks) per sandbox.
#[derive(Debug)]
pub struct Engine {
    programs: Programs,
    tls: Arc<TlsContext>,
    provider: Arc<CryptoProvider>,
    tls_policy: Arc<TlsPolicy>,
    secrets: Arc<SecretStore>,
    /// The policies of the sandboxes served, by id (read by the refusal log).
    policies: Policies,
    options: EngineOptions,
    served: BTreeMap<SandboxName, Served>,
    /// The id the next sandbox gets; ids are never reused, even after a sandbox is dropped.
    next_id: u32,
    accept_loops: JoinSet<()>,
    connections: TaskTracker,
    stats: Arc<ConnStats>,
    cancel: CancellationToken,
    started: Instant,
    state_file: Option<StateFile>,
    metrics: Arc<Metrics>,
    /// The attached sandboxes by id (for the metrics and the bypass log).
    attached: Attached,
    /// The resolver every sandbox's DNS service shares.
    resolver: Arc<Resolver>,
    /// When expired DNS bindings were last swept from the whole eBPF map.
    bindings_swept: Instant,
    /// Where the metrics endpoint listens: no sandbox may reach these.
    metrics_addrs: Vec<SocketAddr>,
}

/// What [`Engine::add_sandbox`] set up, for logs and callers.
#[derive(Clone, Debug)]
pub struct SandboxInfo {
    /// The sandbox's id.
    pub id: SandboxId,
    /// Its name.
    pub name: SandboxName,
    /// Its listener's port (127.0.0.1 and ::1 in its namespace).
    pub listener_port: u16,
    /// Its DNS service's port (127.0.0.1 and ::1 in its namespace).
    pub dns_port: u16,
    /// Its intercepted TLS ports.
    pub tls_ports: PortList,
    /// Its plain HTTP ports.
    pub http_ports: PortList,
}

/// Whether a sandbox is new or a previous daemon's.
enum Origin {
    New,
    /// Adopted: its id, and the listener and DNS ports its pinned config names.
    Adopted {
        id: SandboxId,
        port: u16,
        dns_port: u16,
    },
}

impl Engine {
    /// Loads the programs, pinning state in `pins` when given (and remembering the sandboxes
    /// in `state_file`). Must be called inside the tokio runtime (it starts the task logging
    /// refusals).
    pub fn new(
        pins: Option<PinDir>,
        options: EngineOptions,
        state_file: Option<StateFile>,
    ) -> Result<Self, EngineError> {
        // TLS state first: a bad CA or CA file fails before anything is loaded.
        let provider = Arc::new(crypto_provider());
        let metrics = Arc::new(Metrics::new());
        let tls = Arc::new(TlsContext::new(
            &options.tls,
            &gateway_home(),
            &provider,
            Arc::clone(&metrics),
        )?);
        let tls_policy = Arc::new(TlsPolicy::new(&options.tls, &provider)?);
        let secrets = Arc::new(SecretStore::load(&options.secrets)?);
        let resolver = Arc::new(Resolver::new(
            &options.dns,
            options.policy.resolv_conf.path(),
        )?);
        let mut programs = Programs::load(pins)?;
        let policies = Policies::default();
        let mut accept_loops = JoinSet::new();
        if let Some(events) = programs.take_refusal_events() {
            accept_loops.spawn(log_refusals(events, Arc::clone(&policies)));
        }
        let attached = Attached::default();
        if let Some(events) = programs.take_bypass_events() {
            accept_loops.spawn(sandbox_dns::log_bypasses(
                events,
                attached.clone(),
                Arc::clone(&metrics),
            ));
        }
        metrics.set_ebpf_source(Arc::new(EbpfMetrics {
            counts: programs.counts(),
            attached: attached.clone(),
        }));
        Ok(Engine {
            programs,
            tls,
            provider,
            tls_policy,
            secrets,
            policies,
            options,
            served: BTreeMap::new(),
            next_id: 1,
            accept_loops,
            connections: TaskTracker::new(),
            stats: Arc::new(ConnStats::default()),
            cancel: CancellationToken::new(),
            started: Instant::now(),
            state_file,
            metrics,
            attached,
            metrics_addrs: Vec::new(),
            resolver,
            bindings_swept: Instant::now(),
        })
    }

    /// Takes over the sandboxes a previous daemon left pinned (and remembered): their links
    /// stay attached, their listeners open again (on the same port when free), their rules are
    /// made again from the current config. A remembered sandbox whose cgroup is gone is
    /// detached and forgotten; so is a pinned one nobody remembers.
    pub fn adopt_pinned(&mut self) -> Result<Vec<SandboxInfo>, EngineError> {
        let records = match &self.state_file {
            Some(file) => file.load()?,
            None => Vec::new(),
        };
        let pinned: BTreeMap<u64, _> = self.programs.pinned_sandboxes().into_iter().collect();
        self.next_id = records
            .iter()
            .map(|r| r.id + 1)
            .chain(pinned.values().map(|c| c.sandbox_id + 1))
            .max()
            .unwrap_or(1);
        let mut adopted = Vec::new();
        for record in &records {
            let conf = pinned.get(&record.cgroup_id);
            match self.adopt_one(record, conf.map(|c| (c.listener_port, c.dns_port))) {
                Ok(info) => adopted.push(info),
                Err(err) => {
                    warn!(sandbox = record.id, spec = record.spec, error = %err, "could not adopt a sandbox; detaching it");
                    self.programs.abandon(record.cgroup_id, record.id);
                }
            }
        }
        for (cgroup_id, conf) in &pinned {
            if !records.iter().any(|r| r.cgroup_id == *cgroup_id) {
                warn!(
                    sandbox = conf.sandbox_id,
                    cgroup_id, "a pinned sandbox nobody remembers; detaching it"
                );
                self.programs.abandon(*cgroup_id, conf.sandbox_id);
            }
        }
        self.save_state()?;
        Ok(adopted)
    }

    fn adopt_one(
        &mut self,
        record: &Record,
        ports: Option<(u16, u16)>,
    ) -> Result<SandboxInfo, EngineError> {
        let spec: SandboxSpec = record
            .spec
            .parse()
            .map_err(|_| EngineError::NoSuchSandbox {
                name: record.spec.clone(),
            })?;
        let cgroup = Cgroup::open(&spec.cgroup)?;
        if cgroup.id() != record.cgroup_id {
            return Err(EngineError::Cgroup(CgroupError::Missing {
                path: spec.cgroup.clone(),
            }));
        }
        let (port, dns_port) = ports.unwrap_or((0, 0));
        let origin = Origin::Adopted {
            id: SandboxId(record.id),
            port,
            dns_port,
        };
        self.serve(spec, &cgroup, origin)
    }

    /// Starts enforcing its policy on the cgroup of `spec` and serving its redirected
    /// connections through a new listener. Must be called inside the tokio runtime.
    pub fn add_sandbox(&mut self, spec: SandboxSpec) -> Result<SandboxInfo, EngineError> {
        let cgroup = Cgroup::open(&spec.cgroup)?;
        let info = self.serve(spec, &cgroup, Origin::New)?;
        self.save_state()?;
        Ok(info)
    }

    /// What adding and adopting share: the policy, the listener, the programs.
    fn serve(
        &mut self,
        mut spec: SandboxSpec,
        cgroup: &Cgroup,
        origin: Origin,
    ) -> Result<SandboxInfo, EngineError> {
        refuse_own_cgroup(cgroup.path())?;
        spec.cgroup = cgroup.path().to_owned();
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| SandboxName::from_cgroup(cgroup.path()));
        spec.name = Some(name.clone());
        self.refuse_duplicate(&name, cgroup.path())?;
        let owner =
            spec.owner
                .map(Pidfd::open)
                .transpose()
                .map_err(|_| EngineError::OwnerGone {
                    pid: spec.owner.unwrap_or(0),
                })?;
        let netns = spec.netns.as_deref().map(NetNs::open).transpose()?;
        let state = Arc::new(self.sandbox_state(&spec, &name)?);
        let (id, preferred, preferred_dns) = match origin {
            Origin::New => {
                let id = SandboxId(self.next_id);
                self.next_id += 1;
                (id, None, None)
            }
            Origin::Adopted { id, port, dns_port } => (
                id,
                (port != 0).then_some(port),
                (dns_port != 0).then_some(dns_port),
            ),
        };
        let listen_err = |source| EngineError::Listen {
            sandbox: id,
            cgroup: cgroup.path().into(),
            source,
        };
        let bound = listener::bind(netns.as_ref(), preferred).map_err(listen_err)?;
        let listener_port = bound.port;
        let listeners = bound.into_tokio().map_err(listen_err)?;
        let dns_err = |source| EngineError::Dns {
            sandbox: id,
            cgroup: cgroup.path().into(),
            source,
        };
        let bound_dns = sandbox_dns::bind(netns.as_ref(), preferred_dns).map_err(dns_err)?;
        let dns_port = sandbox_dns::port_of(&bound_dns);
        let slot = Arc::new(RwLock::new(Arc::clone(&state)));
        let bindings = Arc::new(SandboxBindings::new(Arc::new(sandbox_dns::EbpfSink {
            map: self.programs.dns_bindings(),
            sandbox: id,
        })));
        let hooks = Arc::new(sandbox_dns::Hooks {
            state: Arc::clone(&slot),
            bindings: Arc::clone(&bindings),
        });
        // Served before the programs send any DNS here, so no query is lost.
        let dns = DnsService::start(
            bound_dns,
            DnsContext {
                sandbox: id,
                resolver: Arc::clone(&self.resolver),
                policy: hooks.clone(),
                bindings: hooks,
            },
        )
        .map_err(dns_err)?;
        let context = Arc::new(SandboxContext {
            id,
            name: name.clone(),
            orig_dst: self.programs.orig_dst(),
            timeouts: self.options.timeouts,
            state: Arc::clone(&slot),
            tls: Arc::clone(&self.tls),
            connections: self.connections.clone(),
            stats: Arc::clone(&self.stats),
            open: Default::default(),
            cancel: self.cancel.clone(),
            metrics: Arc::clone(&self.metrics),
            label: Arc::from(name.as_str()),
            dns_bindings: Arc::clone(&bindings),
            kernel_splice: self
                .options
                .tls
                .kernel_splice
                .then(|| self.programs.splice_maps()),
        });
        // Listeners accept before the programs redirect anything, so no connect is lost.
        let accept_loops: Vec<_> = listeners
            .into_iter()
            .map(|listener| {
                self.accept_loops
                    .spawn(listener::serve(listener, Arc::clone(&context)))
            })
            .collect();
        let rules = state.policy.rules(id, listener_port, dns_port);
        let attached = match origin {
            Origin::New => self.programs.attach(cgroup, &rules),
            Origin::Adopted { .. } => self.programs.adopt(cgroup, &rules),
        };
        let attachment = match attached {
            Ok(attachment) => attachment,
            Err(err) => {
                accept_loops
                    .iter()
                    .for_each(tokio::task::AbortHandle::abort);
                return Err(err.into());
            }
        };
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&state.policy));
        self.attached.insert(
            id.0,
            AttachedSandbox {
                name: Arc::clone(&context.label),
                dns: dns.counters(),
                bindings,
            },
        );
        let info = SandboxInfo {
            id,
            name: name.clone(),
            listener_port,
            dns_port,
            tls_ports: state.policy.config.tls_ports.clone(),
            http_ports: state.policy.config.http_ports.clone(),
        };
        self.served.insert(
            name,
            Served {
                id,
                spec,
                cgroup_id: cgroup.id(),
                rules,
                attachment,
                accept_loops,
                listener_port,
                dns,
                dns_port,
                state: slot,
                owner,
                _netns: netns.map(|ns| ns.into_fd()),
                context,
            },
        );
        Ok(info)
    }

    fn refuse_duplicate(&self, name: &SandboxName, cgroup: &Path) -> Result<(), EngineError> {
        if self.served.contains_key(name) {
            return Err(EngineError::NameTaken { name: name.clone() });
        }
        if let Some((other, _)) = self.served.iter().find(|(_, s)| s.spec.cgroup == cgroup) {
            return Err(EngineError::CgroupTaken {
                cgroup: cgroup.to_owned(),
                name: other.clone(),
            });
        }
        Ok(())
    }

    /// The policy and secrets of a sandbox of `spec`, from the current config.
    fn sandbox_state(
        &self,
        spec: &SandboxSpec,
        name: &SandboxName,
    ) -> Result<SandboxState, EngineError> {
        let policy = self
            .options
            .policy
            .with_overrides(&spec.policy)
            .map_err(|source| EngineError::Policy {
                name: name.clone(),
                source,
            })?;
        let secrets = Arc::new(self.secrets.for_sandbox(&spec.secrets)?);
        let policy = Arc::new(SandboxPolicy::new(
            policy,
            Arc::clone(&self.tls_policy),
            secrets.scope(),
        ));
        self.refuse_reaching_metrics(name, &policy, &self.metrics_addrs)?;
        Ok(SandboxState { policy, secrets })
    }

    /// The daemon's metrics, for its endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Keeps every sandbox, now and later, from reaching `addrs` (where the metrics endpoint
    /// listens): refused now if a sandbox served already could.
    ///
    /// # Errors
    /// [`EngineError::ReachesMetrics`] naming the first sandbox that could.
    pub fn protect_metrics(&mut self, addrs: Vec<SocketAddr>) -> Result<(), EngineError> {
        for (name, served) in &self.served {
            let state = served.context.state();
            self.refuse_reaching_metrics(name, &state.policy, &addrs)?;
        }
        self.metrics_addrs = addrs;
        Ok(())
    }

    fn refuse_reaching_metrics(
        &self,
        name: &SandboxName,
        policy: &SandboxPolicy,
        addrs: &[SocketAddr],
    ) -> Result<(), EngineError> {
        match addrs.iter().find(|addr| policy.reaches_tcp(**addr)) {
            Some(addr) => Err(EngineError::ReachesMetrics {
                name: name.clone(),
                addr: *addr,
            }),
            None => Ok(()),
        }
    }

    /// Stops serving the sandbox `name` and detaches its programs; its open connections go on
    /// until they end.
    pub fn remove_sandbox(&mut self, name: &str) -> Result<(), EngineError> {
        let key: SandboxName = name
            .parse()
            .map_err(|_| EngineError::NoSuchSandbox { name: name.into() })?;
        let served = self
            .served
            .remove(&key)
            .ok_or_else(|| EngineError::NoSuchSandbox { name: name.into() })?;
        self.stop_serving(served, "removed");
        self.save_state()?;
        Ok(())
    }

    /// Stops serving sandboxes whose cgroup was removed (the kernel has already detached their
    /// programs) or whose owner process is gone, logging each; other sandboxes are untouched.
    /// Returns the cgroups of the owned ones, for the caller to remove (off the runtime).
    pub fn drop_gone_sandboxes(&mut self) -> Vec<PathBuf> {
        let gone: Vec<SandboxName> = self
            .served
            .iter()
            .filter(|(_, s)| !s.spec.cgroup.exists() || s.owner.as_ref().is_some_and(Pidfd::exited))
            .map(|(name, _)| name.clone())
            .collect();
        let mut owned_cgroups = Vec::new();
        for name in gone {
            let Some(served) = self.served.remove(&name) else {
                continue;
            };
            let why = if served.spec.cgroup.exists() {
                "its owner process is gone"
            } else {
                "its cgroup was removed"
            };
            warn!(sandbox = %served.id, name = %name, cgroup = %served.spec.cgroup.display(), why, "no longer serving a sandbox");
            if served.owner.is_some() && served.spec.cgroup.exists() {
                owned_cgroups.push(served.spec.cgroup.clone());
            }
            self.stop_serving(served, "gone");
        }
        if !owned_cgroups.is_empty()
            && let Err(err) = self.save_state()
        {
            warn!(error = %err, "could not remember the sandboxes");
        }
        owned_cgroups
    }

    /// Stops accepting for a sandbox, detaches its programs and forgets its entries. Its open
    /// connections go on until they end (or shutdown closes them).
    fn stop_serving(&mut self, served: Served, why: &str) {
        let Served {
            id,
            spec,
            cgroup_id,
            rules,
            attachment,
            accept_loops,
            context,
            dns,
            ..
        } = served;
        accept_loops
            .iter()
            .for_each(tokio::task::AbortHandle::abort);
        attachment.detach();
        let name = spec.name.map(|n| n.to_string()).unwrap_or_default();
        let dns_stats = dns.stats();
        // Queries being answered finish; nothing new reaches it once detached.
        tokio::spawn(dns.shutdown());
        match self.programs.refusals(id.0) {
            Ok(refusals) => info!(
                sandbox = %id, name, why, refused_address = refusals.address,
                refused_tcp_port = refusals.tcp_port, refused_udp_port = refusals.udp_port,
                refused_quic = refusals.quic, refused_socket = refusals.socket,
                refused_unbound = refusals.unbound, dns_answered = dns_stats.answered,
                dns_refused = dns_stats.refused, dns_failed = dns_stats.failed,
                "sandbox detached"
            ),
            Err(err) => {
                warn!(sandbox = %id, name, error = %err, "sandbox detached; its refusal counts are unreadable");
            }
        }
        // Before the map entries go, so an answer still in flight cannot bind one again.
        context.dns_bindings.close();
        self.programs.forget(cgroup_id, &rules);
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        self.attached.remove(id.0);
        tokio::spawn(forget_when_closed(
            context,
            Arc::clone(&self.metrics),
            self.attached.clone(),
        ));
    }

    /// Judges every sandbox by `options` from now on (bypass, upstream rules, policy, secrets):
    /// new connections see the new settings, established ones go on. Nothing changes unless
    /// every part of it could be made.
    pub fn reload(&mut self, options: EngineOptions) -> Result<(), EngineError> {
        let tls_policy = Arc::new(TlsPolicy::new(&options.tls, &self.provider)?);
        let secrets = Arc::new(SecretStore::load(&options.secrets)?);
        let previous = std::mem::replace(&mut self.options, options);
        let (old_tls, old_secrets) = (
            std::mem::replace(&mut self.tls_policy, tls_policy),
            std::mem::replace(&mut self.secrets, secrets),
        );
        let mut states = BTreeMap::new();
        for (name, served) in &self.served {
            match self.sandbox_state(&served.spec, name) {
                Ok(state) => {
                    states.insert(name.clone(), state);
                }
                Err(err) => {
                    self.options = previous;
                    self.tls_policy = old_tls;
                    self.secrets = old_secrets;
                    return Err(err);
                }
            }
        }
        for (name, state) in states {
            let Some(served) = self.served.get_mut(&name) else {
                continue;
            };
            let rules = state
                .policy
                .rules(served.id, served.listener_port, served.dns_port);
            self.programs
                .update_rules(served.cgroup_id, &served.rules, &rules)?;
            served.rules = rules;
            // The bypass patterns may have changed: which addresses are bypass only too.
            let bypass = &state.policy.tls.bypass;
            served
                .context
                .dns_bindings
                .rejudge(|name| bypass.matches(name));
            self.policies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(served.id, Arc::clone(&state.policy));
            *served.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
        }
        Ok(())
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

    /// The sandboxes, as `sandbox ls` shows them.
    pub fn list(&self) -> Vec<SandboxStatus> {
        self.served
            .iter()
            .map(|(name, served)| status_of(name, served))
            .collect()
    }

    /// One sandbox, as `sandbox ls` shows it.
    pub fn sandbox_status(&self, name: &SandboxName) -> Option<SandboxStatus> {
        self.served.get(name).map(|served| status_of(name, served))
    }

    /// The daemon's state, as `status` shows it.
    pub fn status(&self) -> Status {
        let mut counters: Vec<(String, u64)> = match self.programs.counters() {
            Ok(counters) => counters
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            Err(err) => {
                warn!(error = %err, "counters unreadable");
                Vec::new()
            }
        };
        counters.push(("certs_generated".into(), self.tls.certs.generated()));
        let dns = self
            .served
            .values()
            .map(|served| served.dns.stats())
            .fold((0, 0, 0), |(a, r, f), s| {
                (a + s.answered, r + s.refused, f + s.failed)
            });
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            sandboxes: self.served.len(),
            connections: self.stats.open_by_mode(),
            certs_cached: self.tls.certs.len(),
            certs_generated: self.tls.certs.generated(),
            counters,
            dns_answered: dns.0,
            dns_refused: dns.1,
            dns_failed: dns.2,
            pin_dir: self
                .programs
                .pin_dir()
                .map(Path::to_owned)
                .unwrap_or_default(),
        }
    }

    /// Forgets the DNS bindings that expired (in each sandbox's table and the eBPF map); now
    /// and then also sweeps the whole map, for bindings no table knows (a previous daemon's).
    pub fn expire_dns_bindings(&mut self) {
        for served in self.served.values() {
            served.context.dns_bindings.expire();
        }
        if self.bindings_swept.elapsed() >= BINDINGS_SWEEP_INTERVAL {
            self.bindings_swept = Instant::now();
            let removed = self.programs.dns_bindings().remove_expired();
            if removed > 0 {
                tracing::debug!(removed, "expired DNS bindings swept");
            }
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

    fn save_state(&self) -> Result<(), EngineError> {
        let Some(file) = &self.state_file else {
            return Ok(());
        };
        let records: Vec<Record> = self
            .served
            .values()
            .map(|served| Record {
                id: served.id.0,
                cgroup_id: served.cgroup_id,
                spec: served.spec.to_string(),
            })
            .collect();
        Ok(file.save(&records)?)
    }

    /// Stops accepting; lets open connections finish for up to `drain` and then closes them
    /// (each logs its line). The sandboxes' pinned programs stay attached, so their connects
    /// fail until a daemon adopts them (fail closed); unpinned ones (exec on its own) are
    /// detached. Returns the final counters (see [`Engine::counters`]).
    pub async fn shutdown(mut self, drain: Duration) -> String {
        for served in self.served.values() {
            served
                .accept_loops
                .iter()
                .for_each(tokio::task::AbortHandle::abort);
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
        let counters = self.counters();
        // Dropping the attachments keeps pinned links attached and detaches the rest.
        self.served.clear();
        counters
    }

    /// `gateway down`: detaches every sandbox, forgets its entries, removes every pin and the
    /// remembered sandboxes. Returns how many pins were removed.
    pub async fn down(mut self) -> Result<usize, EngineError> {
        for (_, served) in std::mem::take(&mut self.served) {
            self.stop_serving(served, "down");
        }
        self.accept_loops.shutdown().await;
        self.cancel.cancel();
        self.connections.close();
        self.connections.wait().await;
        if let Some(file) = &self.state_file {
            file.remove()?;
        }
        Ok(self.programs.remove_pins()?)
    }
}

/// How often [`Engine::expire_dns_bindings`] sweeps the whole eBPF map (each sandbox's own
/// expired bindings go at every call).
const BINDINGS_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How `sandbox ls` shows a sandbox.
fn status_of(name: &SandboxName, served: &Served) -> SandboxStatus {
    let state = Arc::clone(&served.state.read().unwrap_or_else(PoisonError::into_inner));
    let dns = served.dns.stats();
    SandboxStatus {
        name: name.to_string(),
        id: served.id.0,
        cgroup: served.spec.cgroup.clone(),
        netns: served.spec.netns.clone(),
        listener_port: served.listener_port,
        dns_port: served.dns_port,
        dns_answered: dns.answered,
        dns_refused: dns.refused,
        dns_failed: dns.failed,
        tls_ports: state.policy.config.tls_ports.as_slice().to_vec(),
        http_ports: state.policy.config.http_ports.as_slice().to_vec(),
        secrets: served
            .spec
            .secrets
            .iter()
            .map(ToString::to_string)
            .collect(),
        spec: served.spec.to_string(),
        connections: served.context.open_connections(),
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

/// Drops a removed sandbox's series from the metrics once its last connection has closed
/// (unless a sandbox of the same name was added meanwhile).
async fn forget_when_closed(
    context: Arc<SandboxContext>,
    metrics: Arc<Metrics>,
    attached: Attached,
) {
    while context.open_connections() > 0 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !attached.has_name(&context.label) {
        metrics.forget_sandbox(&context.label);
    }
}

/// Removes cgroups left by execs whose owner died (killing what is left in them), off the
/// runtime.
pub async fn remove_owned_cgroups(cgroups: Vec<PathBuf>) {
    if cgroups.is_empty() {
        return;
    }
    let removed =
        tokio::task::spawn_blocking(crate::sandbox::cgroup::remove_stale_exec_cgroups).await;
    match removed {
        Ok(Ok(paths)) => {
            for path in cgroups.iter().filter(|c| !paths.contains(c)) {
                warn!(cgroup = %path.display(), "a dead exec's cgroup is still there");
            }
        }
        Ok(Err(err)) => warn!(error = %err, "could not remove dead execs' cgroups"),
        Err(err) => warn!(error = %err, "removing dead execs' cgroups did not finish"),
    }
}
