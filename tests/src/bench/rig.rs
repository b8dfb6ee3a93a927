//! The rig every workload shares: nginx and the test DNS server (the daemons' `[dns] upstream`)
//! in a test host's network namespace, a sandbox cgroup with no programs attached (direct) and
//! one served by a gateway daemon started fresh for each measured run, and the notes gathered
//! for the report.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use gateway_common::Counter;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use super::{
    cli::Options,
    mode::{BYPASS_NAME, DOMAIN, Mode, Route},
    nginx,
    report::DaemonUse,
    secret,
    stats::mean,
};
use crate::{
    daemon::{Daemon, DaemonBuilder, LogSink},
    dns::{TestDns, Zone},
    dns_fixture::dns_query,
    net::UpstreamHost,
    nginx::PLAIN_PORT,
    pki::TestPki,
    proc,
    sandbox::SandboxCgroup,
};

/// The RUST_LOG filter the bench daemons run with: warnings (per-connection lines at info would
/// dominate the daemon's CPU time), plus `gateway ready` and `certificate generated`.
pub const DAEMON_RUST_LOG: &str = "warn,gateway::run=info,gateway::tls::certs=info";

/// The zone the rig's DNS server serves (under [`DOMAIN`]): the bypass name, and the names of
/// the lookup workload.
const DNS_ZONE: &str = DOMAIN;
/// TTL of the bypass name's address: longer than any run, so its binding outlasts it.
const BYPASS_TTL: u32 = 3600;
/// How long the DNS server runs unless stopped: longer than a whole bench.
const DNS_LIFETIME: Duration = Duration::from_secs(4 * 3600);

/// Set by SIGINT/SIGTERM: stop between runs, and let the guards clean up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag that [`check_stop`] reads.
pub fn stop_on_signals() -> anyhow::Result<()> {
    // SA_RESTART: system calls interrupted by the signal resume (as with signal(2)).
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("handling {signal}"))?;
    }
    Ok(())
}

/// Fails once SIGINT or SIGTERM arrived.
pub fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// What a daemon used and logged during one measured run.
#[derive(Debug, Clone, Default)]
pub struct RunUse {
    pub cpu_secs: f64,
    /// Max of VmRSS sampled every 50 ms during the run.
    pub peak_rss_kib: u64,
    pub redirected: u64,
    /// Connections the programs left alone at connect (bound only to bypass names).
    pub bypassed_at_connect: u64,
    pub certs_generated: u64,
    pub warnings: u64,
    pub first_warnings: Vec<String>,
    /// Why the daemon did not stop cleanly, if it did not.
    pub stop_problem: Option<String>,
}

/// Mean CPU seconds and max peak RSS over the runs that had a daemon.
pub fn daemon_use<'a>(usages: impl Iterator<Item = &'a Option<RunUse>>) -> Option<DaemonUse> {
    let usages: Vec<&RunUse> = usages.flatten().collect();
    if usages.is_empty() {
        return None;
    }
    Some(DaemonUse {
        cpu_secs: mean(&usages.iter().map(|u| u.cpu_secs).collect::<Vec<_>>()),
        peak_rss_mib: usages
            .iter()
            .map(|u| u.peak_rss_kib as f64 / 1024.0)
            .fold(0.0, f64::max),
    })
}

// Field order is drop order: nginx and the DNS server before the host whose namespace they
// run in.
#[derive(Debug)]
pub struct Rig {
    pub nginx: crate::nginx::Nginx,
    /// The daemons' upstream resolver, on the host's IPv4 address, port 53.
    pub dns: TestDns,
    /// A cgroup with no programs attached.
    pub direct: SandboxCgroup,
    /// The cgroup the daemons serve.
    pub sandbox: SandboxCgroup,
    pub host: UpstreamHost,
    pub pki: TestPki,
    pub opts: Options,
    /// This binary, re-executed for its clients.
    exe: PathBuf,
    /// The daemons' config: trust the test CA, bypass [`BYPASS_NAME`].
    config: String,
    /// Lines for the report's notes.
    pub notes: Vec<String>,
    /// The largest VmHWM seen right after a daemon started.
    start_hwm_kib: Cell<u64>,
    /// Per intercept + secret mode: runs whose daemon passed [`secret::check`], and the
    /// protocols nginx received those checks' requests over.
    secret_checks: RefCell<BTreeMap<String, (u64, BTreeSet<String>)>>,
}

impl Rig {
    /// Sets up the upstream (test CA, namespace, nginx) and the two cgroups.
    pub fn new(opts: Options) -> anyhow::Result<Rig> {
        let pki = TestPki::new("gateway-bench upstream CA")?;
        let host = UpstreamHost::new().context("creating the upstream's network namespace")?;
        let cert = pki.issue("bench", &[DOMAIN, "*.bench.test"], &[host.v4.into()])?;
        let nginx = nginx::start(&host.ns, &cert, SocketAddr::new(host.v4.into(), 443))?;
        let zone = super::workload::lookup_names(&opts)
            .fold(Zone::new(DNS_ZONE), |zone, name| zone.a(&name, [host.v4]))
            .a(BYPASS_NAME, [host.v4])
            .ttl(BYPASS_NAME, BYPASS_TTL);
        let dns = TestDns::start_for(
            &host.ns,
            &[SocketAddr::new(host.v4.into(), 53)],
            &[zone],
            DNS_LIFETIME,
        )
        .context("starting the test DNS server")?;
        let config = format!(
            "{}bypass = [{BYPASS_NAME:?}]\n[dns]\nupstream = [\"{}\"]\n",
            pki.trusted_config(),
            host.v4
        );
        let rig = Rig {
            nginx,
            dns,
            direct: SandboxCgroup::new()?,
            sandbox: SandboxCgroup::new()?,
            host,
            pki,
            exe: std::env::current_exe()?,
            config,
            notes: Vec::new(),
            start_hwm_kib: Cell::new(0),
            secret_checks: RefCell::new(BTreeMap::new()),
            opts,
        };
        eprintln!(
            "gateway-bench: upstream https://{DOMAIN}/ at {v4}:443 and http://{DOMAIN}/ at \
             {v4}:{PLAIN_PORT}, DNS at {v4}:53 (netns {}), direct cgroup {}, sandbox cgroup {}",
            rig.host.ns.name(),
            rig.direct.path().display(),
            rig.sandbox.path().display(),
            v4 = rig.host.v4,
        );
        Ok(rig)
    }

    /// nginx's HTTPS address.
    pub fn upstream(&self) -> SocketAddr {
        SocketAddr::new(self.host.v4.into(), 443)
    }

    /// `gateway-bench client <kind>`: one of this binary's clients.
    pub fn client(&self, kind: &str) -> Command {
        let mut command = Command::new(&self.exe);
        command.args(["client", kind]);
        command
    }

    /// The largest VmHWM seen right after a daemon started, KiB.
    pub fn start_hwm_kib(&self) -> u64 {
        self.start_hwm_kib.get()
    }

    /// What the secret checks showed, for the report: e.g. `intercept + secret h1: passed 4
    /// times (nginx received HTTP/1.1)`; `None` if no intercept + secret mode ran.
    pub fn secret_checks(&self) -> Option<String> {
        let checks = self.secret_checks.borrow();
        if checks.is_empty() {
            return None;
        }
        let parts: Vec<String> = checks
            .iter()
            .map(|(label, (runs, protocols))| {
                let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
                format!(
                    "{label}: passed {runs} times (nginx received {})",
                    protocols.join(", ")
                )
            })
            .collect();
        Some(parts.join("; "))
    }

    /// The interleaved rounds: each round runs every mode once, the order rotated by one.
    pub fn schedule(&self, modes: &[Mode]) -> Vec<(usize, Mode)> {
        let mut out = Vec::new();
        for round in 0..self.opts.rounds {
            for i in 0..modes.len() {
                out.push((round, modes[(i + round) % modes.len()]));
            }
        }
        out
    }

    /// A daemon serving the sandbox cgroup with the config's policy, logging at warn and keeping
    /// counts only.
    pub fn start_daemon(&self) -> anyhow::Result<Daemon> {
        self.start_daemon_with("")
    }

    /// [`Rig::start_daemon`] with extra `--sandbox` options for the sandbox, comma-separated
    /// (e.g. `allow-tcp-port=9000`): for workloads that need more than the closed default policy.
    pub fn start_daemon_with(&self, options: &str) -> anyhow::Result<Daemon> {
        self.daemon_builder(options).config(&self.config).start()
    }

    /// [`Rig::start_daemon`] with the bench secret ([`secret::config`]) in the config, its value
    /// in the daemon's environment, and the sandbox given it: connections to the bench's domain
    /// take the HTTP-aware path.
    pub fn start_secret_daemon(&self) -> anyhow::Result<Daemon> {
        self.daemon_builder(&format!("secret={}", secret::NAME))
            .config(&format!("{}{}", self.config, secret::config()))
            .env(secret::VALUE_ENV, secret::VALUE)
            .start()
    }

    /// A daemon serving the sandbox cgroup with `options`, logging [`DAEMON_RUST_LOG`] and
    /// keeping counts only; its config still to be set.
    fn daemon_builder(&self, options: &str) -> DaemonBuilder {
        let mut spec = self.sandbox.path().display().to_string();
        if !options.is_empty() {
            spec.push(',');
            spec.push_str(options);
        }
        Daemon::builder()
            .bin(&self.opts.gateway)
            .sandbox(spec)
            .rust_log(DAEMON_RUST_LOG)
            .log_sink(LogSink::CountOnly)
    }

    /// Runs `f` in `mode`: for gateway modes with a daemon started for this run only (so its
    /// peak RSS is this run's), measuring the daemon's CPU time around `f`. For intercept +
    /// secret modes the daemon must first pass [`secret::check`] (untimed), else this fails.
    pub fn in_mode<T>(
        &self,
        mode: Mode,
        f: impl FnOnce(&SandboxCgroup, &Path, Option<&Daemon>) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Option<RunUse>)> {
        check_stop()?;
        if mode.route == Route::Direct {
            return Ok((f(&self.direct, &self.pki.ca_file(), None)?, None));
        }
        let mut daemon = match mode.route {
            Route::InterceptSecret => self.start_secret_daemon()?,
            Route::Direct
            | Route::Bypass
            | Route::BypassAtConnect
            | Route::Intercept
            | Route::Http => self.start_daemon()?,
        };
        // Plain HTTP uses no certificate: the upstream's CA is as good as any.
        let ca = match mode.route {
            Route::Bypass | Route::BypassAtConnect | Route::Http => self.pki.ca_file(),
            Route::Direct | Route::Intercept | Route::InterceptSecret => daemon.ca_file(),
        };
        if mode.route == Route::BypassAtConnect {
            self.bind_bypass_name()?;
        }
        if mode.sends_secret() {
            let protocol = secret::check(self, &self.sandbox, &ca, mode)?;
            let mut checks = self.secret_checks.borrow_mut();
            let entry = checks.entry(mode.label()).or_default();
            entry.0 += 1;
            entry.1.insert(protocol);
        }
        let before = daemon.usage()?;
        self.start_hwm_kib
            .set(self.start_hwm_kib.get().max(before.hwm_kib));
        // VmHWM is dominated by the daemon's start (loading the programs): sample VmRSS instead.
        let sampling = AtomicBool::new(true);
        let peak = AtomicU64::new(before.rss_kib);
        let pid = daemon.pid()?;
        let value = std::thread::scope(|scope| {
            scope.spawn(|| {
                while sampling.load(Ordering::SeqCst) {
                    if let Ok(u) = proc::usage(pid) {
                        peak.fetch_max(u.rss_kib, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let value = f(&self.sandbox, &ca, Some(&daemon));
            sampling.store(false, Ordering::SeqCst);
            value
        })?;
        let after = daemon.usage()?;
        peak.fetch_max(after.rss_kib, Ordering::SeqCst);
        // Give the log reader a moment to see the last lines.
        std::thread::sleep(Duration::from_millis(200));
        let log = daemon.summary();
        let usage = RunUse {
            cpu_secs: after.cpu_secs - before.cpu_secs,
            peak_rss_kib: peak.load(Ordering::SeqCst),
            redirected: redirected(&daemon).unwrap_or(0),
            bypassed_at_connect: daemon.counter(Counter::BypassedAtConnect).unwrap_or(0),
            certs_generated: log.count("certificate generated"),
            warnings: log.warnings,
            first_warnings: log.first_warnings,
            stop_problem: match daemon.stop() {
                Ok(status) if status.success() => None,
                Ok(status) => Some(format!("exited with {status} on SIGTERM")),
                Err(err) => Some(format!("{err:#}")),
            },
        };
        Ok((value, Some(usage)))
    }

    /// Looks the bypass name up from the sandbox, through the daemon's DNS (the query is sent
    /// to the resolver's address, as a stub resolver would; the programs send it to the
    /// daemon): from then on nginx's address is bound to the bypass name only.
    fn bind_bypass_name(&self) -> anyhow::Result<()> {
        let server = self.host.v4.to_string();
        let answer = dns_query(&self.sandbox, &["udp", &server, BYPASS_NAME, "A"])?;
        if answer["answers"] != serde_json::json!([server]) {
            bail!("looking up {BYPASS_NAME} through the gateway: {answer}");
        }
        Ok(())
    }

    /// Notes what the daemon of a run logged at warn and above, and a stop that went wrong.
    pub fn note_run(&mut self, what: &str, mode: Mode, usage: &Option<RunUse>) {
        let Some(u) = usage else { return };
        if u.warnings > 0 {
            self.notes.push(format!(
                "{what}, {}: the daemon logged {} warnings, e.g. {}",
                mode.label(),
                u.warnings,
                u.first_warnings.join("; ")
            ));
        }
        if let Some(problem) = &u.stop_problem {
            self.notes.push(format!(
                "**{what}, {}: the daemon did not stop cleanly**: {problem}",
                mode.label()
            ));
        }
    }
}

/// Fails unless a run's connections took `mode`'s path: redirected to the gateway (at least
/// one), or, bypassed at connect, none redirected and at least `connections` left alone.
pub fn check_path(
    workload: &str,
    mode: Mode,
    usage: &Option<RunUse>,
    connections: u64,
) -> anyhow::Result<()> {
    let Some(u) = usage else { return Ok(()) };
    let label = mode.label();
    if mode.redirected() && u.redirected == 0 && connections > 0 {
        bail!("{workload}, {label}: nothing was redirected");
    }
    if mode.route == Route::BypassAtConnect
        && (u.redirected != 0 || u.bypassed_at_connect < connections)
    {
        bail!(
            "{workload}, {label}: {} connections redirected and {} bypassed at connect, for \
             {connections} made: not bypassed at connect",
            u.redirected,
            u.bypassed_at_connect
        );
    }
    Ok(())
}

/// Connections the daemon's programs redirected so far (IPv4 + IPv6 counters, via bpftool).
pub fn redirected(daemon: &Daemon) -> anyhow::Result<u64> {
    Ok(daemon.counter(Counter::RedirectedV4)? + daemon.counter(Counter::RedirectedV6)?)
}
