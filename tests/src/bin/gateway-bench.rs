//! `cargo xtask bench`: the gateway's cost against going direct, as ratios measured in one run.
//!
//! Rig: nginx (HTTP/1.1 + HTTP/2, test CA, `*.bench.test`) in a test host's network namespace;
//! load generators (oha, which verifies certificates; curl; small clients of this binary) run
//! inside sandbox cgroups: one with no programs attached (direct), one served by a gateway daemon
//! started fresh for each measured run (bypass, intercept). Modes are interleaved, rotating the
//! order each round. Writes a markdown table (each figure, its runs, its ratio to direct, its
//! target) to `--out` and prints it.
//!
//! `gateway-bench client ...` is this binary re-executed inside a sandbox cgroup as a client.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_tests::{
    bench::{
        clients,
        daemon::{self, BenchDaemon},
        mean, median, nginx, percentile, proc,
        report::{self, DaemonUse, Row, Target},
        run_bounded, wait_bounded,
    },
    net::UpstreamHost,
    pki::TestPki,
    require_root,
    sandbox::SandboxCgroup,
    workspace_dir,
};
use serde_json::Value;

const USAGE: &str = "usage: gateway-bench [--gateway PATH] [--out FILE] [--duration SECS] \
[--concurrency N] [--rounds N] [--names N] [--idle N] [--connects N] [--no-cross-checks] \
[--only new,keepalive,download,cold,connect,idle,cross]";

/// Set by SIGINT/SIGTERM: stop between runs, and let the guards clean up.
static STOP: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("client") {
        client(&args[1..])
    } else {
        bench(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gateway-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Looks up `--key value` in `args` (the last one wins).
fn flag<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter()
        .rposition(|a| a == key)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn required<'a>(args: &'a [String], key: &str) -> anyhow::Result<&'a str> {
    flag(args, key).with_context(|| format!("missing {key}"))
}

fn number<T: std::str::FromStr>(args: &[String], key: &str, default: T) -> anyhow::Result<T> {
    match flag(args, key) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| anyhow::anyhow!("{key} {text}: not a number")),
    }
}

/// `gateway-bench client <kind> ...`, run inside a sandbox cgroup by the bench.
fn client(args: &[String]) -> anyhow::Result<()> {
    let kind = args.first().map(String::as_str).unwrap_or_default();
    let addr: SocketAddr = required(args, "--addr")?.parse()?;
    match kind {
        "handshakes" => clients::handshakes(
            Path::new(required(args, "--ca")?),
            addr,
            required(args, "--prefix")?,
            required(args, "--domain")?,
            number(args, "--count", 1000)?,
            number(args, "--passes", 1)?,
        ),
        "connects" => clients::connects(addr, number(args, "--count", 20_000)?),
        "hold" => clients::hold(
            Path::new(required(args, "--ca")?),
            addr,
            required(args, "--name")?,
            number(args, "--count", 5000)?,
            number(args, "--threads", 4)?,
        ),
        other => bail!("unknown client {other:?}"),
    }
}

#[derive(Debug)]
struct Options {
    gateway: PathBuf,
    out: PathBuf,
    duration: u64,
    concurrency: u32,
    rounds: usize,
    names: usize,
    idle: usize,
    connects: usize,
    cross_checks: bool,
    /// Only these workloads (`--only new,keepalive,...`); all when empty.
    only: Vec<String>,
}

/// The workloads `--only` can pick.
const WORKLOADS: [&str; 7] = [
    "new",
    "keepalive",
    "download",
    "cold",
    "connect",
    "idle",
    "cross",
];

impl Options {
    fn runs(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }

    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let known = [
            "--gateway",
            "--out",
            "--duration",
            "--concurrency",
            "--rounds",
            "--names",
            "--idle",
            "--connects",
            "--only",
        ];
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "--no-cross-checks" => i += 1,
                "-h" | "--help" => bail!("{USAGE}"),
                a if known.contains(&a) && i + 1 < args.len() => i += 2,
                a => bail!("unexpected argument {a:?}\n{USAGE}"),
            }
        }
        let absolute = |p: &str| -> anyhow::Result<PathBuf> {
            let path = PathBuf::from(p);
            Ok(if path.is_absolute() {
                path
            } else {
                std::env::current_dir()?.join(path)
            })
        };
        let options = Options {
            gateway: match flag(args, "--gateway") {
                Some(p) => absolute(p)?,
                None => workspace_dir().join("target/release/gateway"),
            },
            out: match flag(args, "--out") {
                Some(p) => absolute(p)?,
                None => workspace_dir().join("bench/results/latest.md"),
            },
            duration: number(args, "--duration", 10)?,
            concurrency: number(args, "--concurrency", 8)?,
            rounds: number(args, "--rounds", 2)?,
            names: number(args, "--names", 1000)?,
            idle: number(args, "--idle", 5000)?,
            connects: number(args, "--connects", 20_000)?,
            cross_checks: !args.iter().any(|a| a == "--no-cross-checks"),
            only: flag(args, "--only")
                .map(|list| list.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        };
        if let Some(bad) = options
            .only
            .iter()
            .find(|w| !WORKLOADS.contains(&w.as_str()))
        {
            bail!(
                "--only: unknown workload {bad:?} (known: {})",
                WORKLOADS.join(",")
            );
        }
        if !(1..=60).contains(&options.duration)
            || !(1..=10).contains(&options.rounds)
            || !(1..=9999).contains(&options.names)
            || !(1..=15_000).contains(&options.idle)
            || !(1..=1_000_000).contains(&options.connects)
            || !(1..=256).contains(&options.concurrency)
        {
            bail!(
                "out of range: duration 1..=60, rounds 1..=10, names 1..=9999, idle 1..=15000, \
                 connects 1..=1000000, concurrency 1..=256"
            );
        }
        if !options.gateway.exists() {
            bail!(
                "gateway binary {} not found (cargo build --release -p gateway)",
                options.gateway.display()
            );
        }
        Ok(options)
    }
}

/// Where a sandbox's HTTPS goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// No gateway: a cgroup without programs, straight to the upstream.
    Direct,
    /// Through the gateway, spliced raw (the name is in `bypass`).
    Bypass,
    /// Through the gateway, TLS intercepted with a forged certificate.
    Intercept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    route: Route,
    h2: bool,
}

const DIRECT_H1: Mode = Mode {
    route: Route::Direct,
    h2: false,
};
const DIRECT_H2: Mode = Mode {
    route: Route::Direct,
    h2: true,
};
const BYPASS_H1: Mode = Mode {
    route: Route::Bypass,
    h2: false,
};
const INTERCEPT_H1: Mode = Mode {
    route: Route::Intercept,
    h2: false,
};
const INTERCEPT_H2: Mode = Mode {
    route: Route::Intercept,
    h2: true,
};

const DOMAIN: &str = "bench.test";
const BYPASS_NAME: &str = "bypass.bench.test";

impl Mode {
    fn label(self) -> String {
        let route = match self.route {
            Route::Direct => "direct",
            Route::Bypass => "bypass",
            Route::Intercept => "intercept",
        };
        format!("{route} {}", if self.h2 { "h2" } else { "h1" })
    }

    /// The name clients ask for: the bypass name for bypass, the plain one otherwise.
    fn host(self) -> &'static str {
        match self.route {
            Route::Bypass => BYPASS_NAME,
            _ => DOMAIN,
        }
    }

    /// The direct mode this one is compared with (same HTTP version).
    fn baseline(self) -> Mode {
        Mode {
            route: Route::Direct,
            h2: self.h2,
        }
    }
}

/// What a daemon used during one measured run.
#[derive(Debug, Clone, Default)]
struct RunUse {
    cpu_secs: f64,
    /// Max of VmRSS sampled every 50 ms during the run.
    peak_rss_kib: u64,
    redirected: u64,
    certs_generated: u64,
    warnings: u64,
    first_warnings: Vec<String>,
}

/// A figure of an oha run: name, unit, how to read it.
type Figure = (&'static str, &'static str, fn(&Oha) -> f64);

/// One oha run.
#[derive(Debug, Clone)]
struct Oha {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

// Field order is drop order: nginx before the host whose namespace it runs in.
struct Rig {
    nginx: gateway_tests::nginx::Nginx,
    direct: SandboxCgroup,
    sandbox: SandboxCgroup,
    host: UpstreamHost,
    pki: TestPki,
    opts: Options,
    exe: PathBuf,
    config: String,
    notes: Vec<String>,
    /// The largest VmHWM seen right after a daemon started.
    start_hwm_kib: std::cell::Cell<u64>,
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    let opts = Options::parse(args)?;
    require_root()?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    for tool in ["oha", "curl", "bpftool", "nginx"] {
        if which(tool).is_none() {
            bail!("{tool} not found: run scripts/setup.sh and scripts/setup-bench.sh");
        }
    }
    let started = Instant::now();
    let nofile = gateway_tests::raise_nofile();
    let pki = TestPki::new("gateway-bench upstream CA")?;
    let host = UpstreamHost::new().context("creating the upstream's network namespace")?;
    let cert = pki.issue("bench", &[DOMAIN, "*.bench.test"], &[host.v4.into()])?;
    let nginx = nginx::start(&host.ns, &cert, SocketAddr::new(host.v4.into(), 443))?;
    let config = format!("{}bypass = [{BYPASS_NAME:?}]\n", pki.trusted_config());
    let mut rig = Rig {
        nginx,
        direct: SandboxCgroup::new()?,
        sandbox: SandboxCgroup::new()?,
        host,
        pki,
        exe: std::env::current_exe()?,
        config,
        notes: Vec::new(),
        start_hwm_kib: std::cell::Cell::new(0),
        opts,
    };
    eprintln!(
        "gateway-bench: upstream https://{DOMAIN}/ at {}:443 (netns {}), direct cgroup {}, \
         sandbox cgroup {}",
        rig.host.v4,
        rig.host.ns.name(),
        rig.direct.path().display(),
        rig.sandbox.path().display()
    );
    rig.notes.push(format!(
        "RLIMIT_NOFILE of the bench and what it starts (daemons, nginx, clients): {nofile}"
    ));

    rig.check_certificates()?;
    let mut rows = Vec::new();
    type Workload = fn(&mut Rig) -> anyhow::Result<Vec<Row>>;
    let workloads: [(&str, Workload); 7] = [
        ("new", Rig::new_connections),
        ("keepalive", Rig::keep_alive),
        ("download", Rig::download),
        ("cold", Rig::cold_certificates),
        ("connect", Rig::connect_cost),
        ("idle", Rig::idle_connections),
        ("cross", Rig::cross_checks),
    ];
    let mut cross = Vec::new();
    let mut failed = Vec::new();
    for (key, workload) in workloads {
        if !rig.opts.runs(key) || (key == "cross" && !rig.opts.cross_checks) {
            continue;
        }
        // A failed workload (e.g. a stalled transfer) is reported, and the others still run.
        match workload(&mut rig) {
            Ok(r) if key == "cross" => cross = r,
            Ok(r) => rows.extend(r),
            Err(err) => {
                check_stop()?;
                eprintln!("gateway-bench: workload {key} failed: {err:#}");
                rig.notes
                    .push(format!("**Workload `{key}` failed**: {err:#}"));
                rows.push(Row {
                    workload: key.into(),
                    mode: "–".into(),
                    figure: "–".into(),
                    text: Some("failed (see notes)".into()),
                    ..Row::default()
                });
                failed.push(key);
            }
        }
    }
    let errors = rig.nginx.error_log();
    let crit = errors
        .lines()
        .filter(|l| l.contains("[crit]") || l.contains("[alert]") || l.contains("[emerg]"))
        .count();
    if crit > 0 {
        rig.notes.push(format!(
            "nginx logged {crit} crit/alert/emerg lines; first: {}",
            errors
                .lines()
                .find(|l| l.contains("[crit]") || l.contains("[alert]") || l.contains("[emerg]"))
                .unwrap_or_default()
        ));
    }
    let elapsed = started.elapsed();
    let markdown = rig.render(&rows, &cross, elapsed)?;
    if let Some(dir) = rig.opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&rig.opts.out, &markdown)
        .with_context(|| format!("writing {}", rig.opts.out.display()))?;
    println!("{markdown}");
    eprintln!(
        "gateway-bench: wrote {} in {:.0} s",
        rig.opts.out.display(),
        elapsed.as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("workloads failed: {} (see the notes)", failed.join(", "));
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

impl Rig {
    fn upstream(&self) -> SocketAddr {
        SocketAddr::new(self.host.v4.into(), 443)
    }

    /// The interleaved rounds: each round runs every mode once, the order rotated by one.
    fn schedule(&self, modes: &[Mode]) -> Vec<(usize, Mode)> {
        let mut out = Vec::new();
        for round in 0..self.opts.rounds {
            for i in 0..modes.len() {
                out.push((round, modes[(i + round) % modes.len()]));
            }
        }
        out
    }

    /// Runs `f` in `mode`: for gateway modes with a daemon started for this run only (so its
    /// peak RSS is this run's), measuring the daemon's CPU time around `f`.
    fn in_mode<T>(
        &self,
        mode: Mode,
        f: impl FnOnce(&SandboxCgroup, &Path, Option<&BenchDaemon>) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Option<RunUse>)> {
        check_stop()?;
        if mode.route == Route::Direct {
            return Ok((f(&self.direct, &self.pki.ca_file(), None)?, None));
        }
        let mut daemon = BenchDaemon::start(&self.opts.gateway, self.sandbox.path(), &self.config)?;
        let ca = match mode.route {
            Route::Bypass => self.pki.ca_file(),
            _ => daemon.ca_file(),
        };
        let before = daemon.usage()?;
        self.start_hwm_kib
            .set(self.start_hwm_kib.get().max(before.hwm_kib));
        // VmHWM is dominated by the daemon's start (loading the programs): sample VmRSS instead.
        let sampling = AtomicBool::new(true);
        let peak = AtomicU64::new(before.rss_kib);
        let pid = daemon.pid();
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
        let log = daemon.log();
        let usage = RunUse {
            cpu_secs: after.cpu_secs - before.cpu_secs,
            peak_rss_kib: peak.load(Ordering::SeqCst),
            redirected: daemon.redirected().unwrap_or(0),
            certs_generated: log.certs_generated,
            warnings: log.warnings,
            first_warnings: log.first_warnings,
        };
        daemon.stop();
        Ok((value, Some(usage)))
    }

    fn oha(
        &self,
        cgroup: &SandboxCgroup,
        ca: &Path,
        mode: Mode,
        keep_alive: bool,
        requests: Option<u64>,
    ) -> anyhow::Result<Oha> {
        let host = mode.host();
        let mut command = Command::new("oha");
        command
            .args(["--no-tui", "--output-format", "json", "-c"])
            .arg(self.opts.concurrency.to_string());
        match requests {
            Some(n) => command.arg("-n").arg(n.to_string()),
            None => command.arg("-z").arg(format!("{}s", self.opts.duration)),
        };
        command.arg("--cacert").arg(ca).args([
            "--connect-to",
            &format!("{host}:443:{}:443", self.host.v4),
            "--http-version",
            if mode.h2 { "2" } else { "1.1" },
        ]);
        if !keep_alive {
            command.arg("--disable-keepalive");
        }
        command.arg(format!("https://{host}{}", nginx::SMALL));
        let timeout = Duration::from_secs(self.opts.duration + 60);
        let output = run_bounded(cgroup, &mut command, timeout)?;
        let text = String::from_utf8_lossy(&output.stdout);
        let value: Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "oha output is not JSON ({}): {text} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        let ok = value["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
        let mut errors = BTreeMap::new();
        if let Some(map) = value["errorDistribution"].as_object() {
            for (kind, n) in map {
                errors.insert(kind.clone(), n.as_u64().unwrap_or(0));
            }
        }
        let others: u64 = value["statusCodeDistribution"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.as_str() != "200")
                    .map(|(_, v)| v.as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if others > 0 {
            errors.insert("non-200 status".into(), others);
        }
        let secs = value["summary"]["total"].as_f64().unwrap_or(f64::NAN);
        Ok(Oha {
            rps: ok as f64 / secs,
            p50_ms: value["latencyPercentiles"]["p50"]
                .as_f64()
                .unwrap_or(f64::NAN)
                * 1e3,
            p99_ms: value["latencyPercentiles"]["p99"]
                .as_f64()
                .unwrap_or(f64::NAN)
                * 1e3,
            ok,
            errors,
        })
    }

    /// oha must succeed with the right CA and fail with the wrong one, in every route: proof
    /// that it verifies certificates and that each route is what it claims (a bypassed
    /// connection shows the upstream's certificate, an intercepted one the gateway's).
    fn check_certificates(&mut self) -> anyhow::Result<()> {
        eprintln!("gateway-bench: certificate checks");
        let mut lines = Vec::new();
        for mode in [DIRECT_H1, BYPASS_H1, INTERCEPT_H1, INTERCEPT_H2] {
            let ((good, bad), _) = self.in_mode(mode, |cgroup, ca, daemon| {
                let wrong = match (mode.route, daemon) {
                    (Route::Intercept, _) => self.pki.ca_file(),
                    (_, Some(d)) => d.ca_file(),
                    // Direct: no daemon; a CA of its own that signed nothing here.
                    (_, None) => self.pki.dir().join("ca.pem.none"),
                };
                if !wrong.exists() {
                    let other = TestPki::new("gateway-bench unrelated CA")?;
                    std::fs::copy(other.ca_file(), &wrong)?;
                }
                let good = self.oha(cgroup, ca, mode, true, Some(20))?;
                let bad = self.oha(cgroup, &wrong, mode, true, Some(4))?;
                Ok((good, bad))
            })?;
            if good.ok != 20 || !good.errors.is_empty() {
                bail!(
                    "{}: oha with the right CA got {} OK, errors {:?}",
                    mode.label(),
                    good.ok,
                    good.errors
                );
            }
            if bad.ok != 0 {
                bail!(
                    "{}: oha with the wrong CA got {} OK: certificates are not verified",
                    mode.label(),
                    bad.ok
                );
            }
            let why = bad.errors.keys().next().cloned().unwrap_or_default();
            lines.push(format!(
                "{}: 20/20 OK with the right CA, 0/4 with the wrong one (`{}`)",
                mode.label(),
                why.chars().take(120).collect::<String>()
            ));
        }
        self.notes.push(format!(
            "Certificate checks (oha verifies): {}",
            lines.join("; ")
        ));
        Ok(())
    }

    fn note_run(&mut self, what: &str, mode: Mode, usage: &Option<RunUse>) {
        if let Some(u) = usage
            && u.warnings > 0
        {
            self.notes.push(format!(
                "{what}, {}: the daemon logged {} warnings, e.g. {}",
                mode.label(),
                u.warnings,
                u.first_warnings.join("; ")
            ));
        }
    }

    /// oha for `duration` in each mode, interleaved; rows for req/s (and p50/p99 if asked).
    fn oha_workload(
        &mut self,
        workload: &str,
        modes: &[Mode],
        keep_alive: bool,
        latency: bool,
        target: (Target, Target),
    ) -> anyhow::Result<Vec<Row>> {
        let mut runs: BTreeMap<String, Vec<(Oha, Option<RunUse>)>> = BTreeMap::new();
        for (round, mode) in self.schedule(modes) {
            eprintln!(
                "gateway-bench: {workload}: round {} {}",
                round + 1,
                mode.label()
            );
            let (result, usage) = self.in_mode(mode, |cgroup, ca, _| {
                self.oha(cgroup, ca, mode, keep_alive, None)
            })?;
            if result.ok == 0 {
                bail!(
                    "{workload}, {}: no successful request: {:?}",
                    mode.label(),
                    result.errors
                );
            }
            let real: Vec<_> = result
                .errors
                .iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .collect();
            if !real.is_empty() {
                self.notes.push(format!(
                    "{workload}, {} round {}: oha errors {real:?} ({} OK)",
                    mode.label(),
                    round + 1,
                    result.ok
                ));
            }
            if let (Some(u), Route::Bypass | Route::Intercept) = (&usage, mode.route)
                && u.redirected < result.ok.min(1)
            {
                bail!("{workload}, {}: nothing was redirected", mode.label());
            }
            self.note_run(workload, mode, &usage);
            runs.entry(mode.label()).or_default().push((result, usage));
        }
        let mut rows = Vec::new();
        let figures: &[Figure] = if latency {
            &[
                ("req/s", "req/s", |o| o.rps),
                ("p50 latency", "ms", |o| o.p50_ms),
                ("p99 latency", "ms", |o| o.p99_ms),
            ]
        } else {
            &[("req/s", "req/s", |o| o.rps)]
        };
        for mode in modes {
            let mode_runs = &runs[&mode.label()];
            let base_runs = &runs[&mode.baseline().label()];
            for (i, (figure, unit, get)) in figures.iter().enumerate() {
                let values: Vec<f64> = mode_runs.iter().map(|(o, _)| get(o)).collect();
                // req/s: the highest run; latencies: the lowest.
                let best = if i == 0 { max } else { min };
                let base = best(&base_runs.iter().map(|(o, _)| get(o)).collect::<Vec<_>>());
                let value = best(&values);
                let bypass_or_intercept = mode.route != Route::Direct;
                rows.push(Row {
                    workload: workload.into(),
                    mode: mode.label(),
                    figure: (*figure).into(),
                    unit: (*unit).into(),
                    runs: values,
                    value: Some(value),
                    ratio: bypass_or_intercept.then_some(value / base),
                    baseline: !bypass_or_intercept,
                    target: match (i, mode.route) {
                        (0, Route::Intercept) => Some(target.0),
                        (0, Route::Bypass) => Some(target.1),
                        _ => None,
                    },
                    daemon: (i == 0)
                        .then(|| daemon_use(mode_runs.iter().map(|(_, u)| u)))
                        .flatten(),
                    ..Row::default()
                });
            }
        }
        Ok(rows)
    }

    fn secrets_row(workload: &str) -> Row {
        Row {
            workload: workload.into(),
            mode: "intercept + secret for the host".into(),
            figure: "–".into(),
            text: Some("n/a (secrets not implemented)".into()),
            ..Row::default()
        }
    }

    fn new_connections(&mut self) -> anyhow::Result<Vec<Row>> {
        // oha does not support --disable-keepalive with HTTP/2: HTTP/1.1 only.
        let workload = "new TLS connection per 1 KiB request";
        let mut rows = self.oha_workload(
            workload,
            &[DIRECT_H1, BYPASS_H1, INTERCEPT_H1],
            false,
            true,
            (Target::RatioAtLeast(0.6), Target::RatioAtLeast(0.95)),
        )?;
        rows.push(Self::secrets_row(workload));
        Ok(rows)
    }

    fn keep_alive(&mut self) -> anyhow::Result<Vec<Row>> {
        let workload = "keep-alive 1 KiB requests";
        let mut rows = self.oha_workload(
            workload,
            &[DIRECT_H1, DIRECT_H2, BYPASS_H1, INTERCEPT_H1, INTERCEPT_H2],
            true,
            false,
            (Target::RatioAtLeast(0.6), Target::RatioAtLeast(0.95)),
        )?;
        rows.push(Self::secrets_row(workload));
        Ok(rows)
    }

    /// One 64 MiB download with curl (it verifies certificates), 3 per run, median MB/s.
    fn download(&mut self) -> anyhow::Result<Vec<Row>> {
        let workload = "one 64 MiB download";
        let modes = [DIRECT_H1, DIRECT_H2, BYPASS_H1, INTERCEPT_H1, INTERCEPT_H2];
        let mut runs: BTreeMap<String, Vec<(f64, Option<RunUse>)>> = BTreeMap::new();
        for (round, mode) in self.schedule(&modes) {
            eprintln!(
                "gateway-bench: {workload}: round {} {}",
                round + 1,
                mode.label()
            );
            let ((mbps, failures), usage) = self.in_mode(mode, |cgroup, ca, _| {
                let mut speeds = Vec::new();
                let mut failures = Vec::new();
                for _ in 0..3 {
                    match self.curl_download(cgroup, ca, mode) {
                        Ok(speed) => speeds.push(speed),
                        Err(err) => failures.push(format!("{err:#}")),
                    }
                }
                Ok((median(&speeds), failures))
            })?;
            for failure in failures {
                self.notes.push(format!(
                    "**{workload}, {} round {}: a download failed**: {}",
                    mode.label(),
                    round + 1,
                    failure.trim()
                ));
            }
            self.note_run(workload, mode, &usage);
            runs.entry(mode.label()).or_default().push((mbps, usage));
        }
        let mut rows = Vec::new();
        for mode in modes {
            let mode_runs = &runs[&mode.label()];
            let values: Vec<f64> = mode_runs.iter().map(|(v, _)| *v).collect();
            let base = max(&runs[&mode.baseline().label()]
                .iter()
                .map(|(v, _)| *v)
                .collect::<Vec<_>>());
            let value = max(&values);
            let gw = mode.route != Route::Direct;
            rows.push(Row {
                workload: workload.into(),
                mode: mode.label(),
                figure: "throughput".into(),
                unit: "MB/s".into(),
                runs: values,
                value: Some(value),
                ratio: gw.then_some(value / base),
                baseline: !gw,
                target: match mode.route {
                    Route::Intercept => Some(Target::RatioAtLeast(0.8)),
                    Route::Bypass => Some(Target::RatioAtLeast(0.95)),
                    Route::Direct => None,
                },
                daemon: daemon_use(mode_runs.iter().map(|(_, u)| u)),
                ..Row::default()
            });
        }
        rows.push(Self::secrets_row(workload));
        Ok(rows)
    }

    fn curl_download(&self, cgroup: &SandboxCgroup, ca: &Path, mode: Mode) -> anyhow::Result<f64> {
        let host = mode.host();
        let mut command = Command::new("curl");
        command
            .args([
                "-sS",
                "--fail",
                "--max-time",
                "60",
                // A transfer stalled for 10 s fails then rather than at --max-time.
                "--speed-limit",
                "1000",
                "--speed-time",
                "10",
                "-o",
                "/dev/null",
                "--cacert",
            ])
            .arg(ca)
            .args([
                if mode.h2 { "--http2" } else { "--http1.1" },
                "--resolve",
                &format!("{host}:443:{}", self.host.v4),
                "-w",
                "%{size_download} %{time_total} %{http_version}",
                &format!("https://{host}{}", nginx::LARGE),
            ]);
        let output = run_bounded(cgroup, &mut command, Duration::from_secs(90))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "curl {}: {} {}",
                mode.label(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut parts = text.split_whitespace();
        let size: u64 = parts.next().unwrap_or_default().parse().unwrap_or(0);
        let secs: f64 = parts.next().unwrap_or_default().parse().unwrap_or(f64::NAN);
        let version = parts.next().unwrap_or_default();
        if size != nginx::LARGE_LEN || version != if mode.h2 { "2" } else { "1.1" } {
            bail!(
                "curl {}: got {size} bytes over HTTP/{version}",
                mode.label()
            );
        }
        Ok(size as f64 / secs / 1e6)
    }

    /// Sequential handshakes to `names` distinct names, run in `cgroup`; µs per pass.
    fn handshakes(
        &self,
        cgroup: &SandboxCgroup,
        ca: &Path,
        passes: usize,
    ) -> anyhow::Result<Vec<Vec<f64>>> {
        let mut command = Command::new(&self.exe);
        command
            .args(["client", "handshakes", "--ca"])
            .arg(ca)
            .args([
                "--addr",
                &self.upstream().to_string(),
                "--prefix",
                "n",
                "--domain",
                DOMAIN,
                "--count",
                &self.opts.names.to_string(),
                "--passes",
                &passes.to_string(),
            ]);
        let output = run_bounded(cgroup, &mut command, Duration::from_secs(660))?;
        let value: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "handshake client ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        if value["errors"].as_u64() != Some(0) {
            bail!(
                "handshake client: {} errors, first: {}",
                value["errors"],
                value["first_error"]
            );
        }
        let passes = value["passes"]
            .as_array()
            .context("no passes")?
            .iter()
            .map(|p| {
                p.as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default()
            })
            .collect();
        Ok(passes)
    }

    /// First connections to N distinct names: the cost of forging N certificates.
    fn cold_certificates(&mut self) -> anyhow::Result<Vec<Row>> {
        let workload = format!("first connections to {} distinct names", self.opts.names);
        let mut direct_runs: Vec<Vec<f64>> = Vec::new();
        let mut cold_runs: Vec<Vec<f64>> = Vec::new();
        let mut warm_runs: Vec<Vec<f64>> = Vec::new();
        let mut usages = Vec::new();
        for (round, mode) in self.schedule(&[DIRECT_H1, INTERCEPT_H1]) {
            eprintln!(
                "gateway-bench: {workload}: round {} {}",
                round + 1,
                mode.label()
            );
            let passes = if mode.route == Route::Direct { 1 } else { 2 };
            let (result, usage) =
                self.in_mode(mode, |cgroup, ca, _| self.handshakes(cgroup, ca, passes))?;
            if let Some(u) = &usage
                && u.certs_generated != self.opts.names as u64
            {
                self.notes.push(format!(
                    "{workload}, round {}: the daemon logged {} `certificate generated` lines for \
                     {} names",
                    round + 1,
                    u.certs_generated,
                    self.opts.names
                ));
            }
            self.note_run(&workload, mode, &usage);
            let mut passes = result.into_iter();
            match mode.route {
                Route::Direct => direct_runs.push(passes.next().unwrap_or_default()),
                _ => {
                    cold_runs.push(passes.next().unwrap_or_default());
                    warm_runs.push(passes.next().unwrap_or_default());
                    usages.push(usage);
                }
            }
        }
        // Per name: the cold handshake minus the warm one to the same name.
        let cost_runs: Vec<Vec<f64>> = cold_runs
            .iter()
            .zip(&warm_runs)
            .map(|(c, w)| c.iter().zip(w).map(|(c, w)| c - w).collect())
            .collect();
        let ms = |runs: &[Vec<f64>], q: f64| -> Vec<f64> {
            runs.iter().map(|r| percentile(r, q) / 1e3).collect()
        };
        let direct = |q: f64| min(&ms(&direct_runs, q));
        let daemon = daemon_use(usages.iter());
        let mut rows = Vec::new();
        let mut row = |mode: &str, figure: &str, runs: Vec<f64>, q: Option<f64>, target| {
            let value = min(&runs);
            rows.push(Row {
                workload: workload.clone(),
                mode: mode.into(),
                figure: figure.into(),
                unit: "ms".into(),
                value: Some(value),
                runs,
                ratio: q.map(|q| value / direct(q)),
                baseline: mode == "direct h1",
                target,
                daemon: (figure == "handshake p50" && mode == "intercept h1, cold")
                    .then_some(daemon)
                    .flatten(),
                ..Row::default()
            });
        };
        row(
            "direct h1",
            "handshake p50",
            ms(&direct_runs, 0.5),
            None,
            None,
        );
        row(
            "direct h1",
            "handshake p99",
            ms(&direct_runs, 0.99),
            None,
            None,
        );
        row(
            "intercept h1, cold",
            "handshake p50",
            ms(&cold_runs, 0.5),
            Some(0.5),
            None,
        );
        row(
            "intercept h1, cold",
            "handshake p99",
            ms(&cold_runs, 0.99),
            Some(0.99),
            None,
        );
        row(
            "intercept h1, warm (cached)",
            "handshake p50",
            ms(&warm_runs, 0.5),
            Some(0.5),
            None,
        );
        row(
            "intercept h1, warm (cached)",
            "handshake p99",
            ms(&warm_runs, 0.99),
            Some(0.99),
            None,
        );
        row(
            "intercept h1",
            "certificate cost p50 (cold − warm, per name)",
            ms(&cost_runs, 0.5),
            None,
            Some(Target::AtMost(2.0)),
        );
        row(
            "intercept h1",
            "certificate cost p99 (cold − warm, per name)",
            ms(&cost_runs, 0.99),
            None,
            None,
        );
        Ok(rows)
    }

    /// A tight loop of connects to a port that is not intercepted, from a cgroup with the
    /// programs attached and from one without.
    fn connect_cost(&mut self) -> anyhow::Result<Vec<Row>> {
        let workload = format!("connect() loop, {} connects", self.opts.connects);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // A long accept queue, so that the loop never waits for the accepting thread.
        // SAFETY: listen on a socket we own; it only changes the backlog of a listening socket.
        if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
            bail!("listen: {}", std::io::Error::last_os_error());
        }
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    drop(conn);
                }
            })
        };
        let result = (|| -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
            let daemon = BenchDaemon::start(&self.opts.gateway, self.sandbox.path(), &self.config)?;
            let mut without = Vec::new();
            let mut with = Vec::new();
            for round in 0..self.opts.rounds {
                for attached in [round % 2 == 1, round % 2 == 0] {
                    check_stop()?;
                    let cgroup = if attached {
                        &self.sandbox
                    } else {
                        &self.direct
                    };
                    eprintln!(
                        "gateway-bench: {workload}: round {} programs {}",
                        round + 1,
                        if attached { "attached" } else { "not attached" }
                    );
                    let mut command = Command::new(&self.exe);
                    command.args([
                        "client",
                        "connects",
                        "--addr",
                        &addr.to_string(),
                        "--count",
                        &self.opts.connects.to_string(),
                    ]);
                    let output = run_bounded(cgroup, &mut command, Duration::from_secs(300))?;
                    let value: Value =
                        serde_json::from_slice(&output.stdout).with_context(|| {
                            format!(
                                "connect client ({}): {}",
                                output.status,
                                String::from_utf8_lossy(&output.stderr)
                            )
                        })?;
                    let ns = value["ns_per_connect"]
                        .as_f64()
                        .context("no ns_per_connect")?;
                    if attached { &mut with } else { &mut without }.push(ns);
                }
            }
            if daemon.redirected()? != 0 {
                bail!("connects to a port that is not intercepted were redirected");
            }
            Ok((without, with))
        })();
        stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(addr);
        let _ = accepting.join();
        let (without, with) = result?;
        let base = min(&without);
        let value = min(&with);
        Ok(vec![
            Row {
                workload: workload.clone(),
                mode: "programs not attached".into(),
                figure: "per connect (socket, connect, close)".into(),
                unit: "ns".into(),
                value: Some(base),
                runs: without,
                baseline: true,
                ..Row::default()
            },
            Row {
                workload,
                mode: "programs attached (port not intercepted)".into(),
                figure: "per connect (socket, connect, close)".into(),
                unit: "ns".into(),
                value: Some(value),
                runs: with,
                ratio: Some(value / base),
                ..Row::default()
            },
        ])
    }

    /// RSS per idle connection: the daemon's VmRSS before and after a client in the sandbox
    /// opens N TLS connections (handshake complete) and leaves them idle.
    fn idle_connections(&mut self) -> anyhow::Result<Vec<Row>> {
        let workload = format!("{} idle connections held", self.opts.idle);
        let mut rows = Vec::new();
        for mode in [INTERCEPT_H1, BYPASS_H1] {
            eprintln!("gateway-bench: {workload}: {}", mode.label());
            let ((per_conn, before, after), usage) = self.in_mode(mode, |cgroup, ca, daemon| {
                let daemon = daemon.context("no daemon")?;
                self.hold(cgroup, ca, mode, daemon)
            })?;
            self.note_run(&workload, mode, &usage);
            let target = (mode.route == Route::Intercept).then_some(Target::AtMost(32.0));
            rows.push(Row {
                workload: workload.clone(),
                mode: mode.label(),
                figure: format!(
                    "daemon RSS per idle connection (VmRSS {:.1} → {:.1} MiB)",
                    before as f64 / 1024.0,
                    after as f64 / 1024.0
                ),
                unit: "KiB".into(),
                runs: vec![per_conn],
                value: Some(per_conn),
                target,
                daemon: daemon_use([usage].iter()),
                ..Row::default()
            });
        }
        Ok(rows)
    }

    fn hold(
        &self,
        cgroup: &SandboxCgroup,
        ca: &Path,
        mode: Mode,
        daemon: &BenchDaemon,
    ) -> anyhow::Result<(f64, u64, u64)> {
        let count = self.opts.idle;
        // One connection first, so that the forged certificate and the connectors exist.
        let mut warm = Command::new(&self.exe);
        warm.args(["client", "hold", "--ca"]).arg(ca).args([
            "--addr",
            &self.upstream().to_string(),
            "--name",
            mode.host(),
            "--count",
            "1",
            "--threads",
            "1",
        ]);
        warm.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cgroup.spawn(None, &mut warm)?;
        // stdin is /dev/null: it exits right after opening its connection.
        let output = wait_bounded(child, Duration::from_secs(60))?;
        let value: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("warm-up: {}", String::from_utf8_lossy(&output.stderr)))?;
        if value["opened"].as_u64() != Some(1) {
            bail!("warm-up connection failed: {value}");
        }
        std::thread::sleep(Duration::from_secs(1));
        let before = daemon.usage()?.rss_kib;

        let mut command = Command::new(&self.exe);
        command.args(["client", "hold", "--ca"]).arg(ca).args([
            "--addr",
            &self.upstream().to_string(),
            "--name",
            mode.host(),
            "--count",
            &count.to_string(),
            "--threads",
            "4",
        ]);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cgroup.spawn(None, &mut command)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("hold stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let result = (|| -> anyhow::Result<(f64, u64, u64)> {
            let line = rx
                .recv_timeout(Duration::from_secs(240))
                .context("the hold client did not report within 240 s")?;
            let value: Value = serde_json::from_str(&line)
                .with_context(|| format!("hold client said {line:?}"))?;
            let opened = value["opened"].as_u64().unwrap_or(0);
            if opened != count as u64 {
                bail!(
                    "only {opened} of {count} connections opened ({} errors, first: {})",
                    value["errors"],
                    value["first_error"]
                );
            }
            // Let the daemon finish its side of the last handshakes.
            std::thread::sleep(Duration::from_secs(2));
            let after = daemon.usage()?.rss_kib;
            Ok(((after as f64 - before as f64) / count as f64, before, after))
        })();
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        result
    }

    /// h2load (keep-alive, HTTP/1.1 and HTTP/2) and wrk (HTTP/1.1, IP URL so no SNI): they do
    /// not verify certificates, so they only cross-check oha's keep-alive ratios.
    fn cross_checks(&mut self) -> anyhow::Result<Vec<Row>> {
        let secs = self.opts.duration.min(5);
        let mut rows = Vec::new();
        let mut results: BTreeMap<String, f64> = BTreeMap::new();
        if which("h2load").is_some() {
            let modes = [DIRECT_H1, DIRECT_H2, BYPASS_H1, INTERCEPT_H1, INTERCEPT_H2];
            for mode in modes {
                eprintln!("gateway-bench: cross-check h2load {}", mode.label());
                let (rps, _) = self.in_mode(mode, |cgroup, _, _| {
                    let host = mode.host();
                    let mut command = Command::new("h2load");
                    command.args([
                        "-D",
                        &secs.to_string(),
                        "-c",
                        &self.opts.concurrency.to_string(),
                        "-t",
                        "2",
                        "-m",
                        "1",
                        &format!("--connect-to={}:443", self.host.v4),
                    ]);
                    if !mode.h2 {
                        command.arg("--h1");
                    }
                    command.arg(format!("https://{host}{}", nginx::SMALL));
                    let output = run_bounded(cgroup, &mut command, Duration::from_secs(secs + 60))?;
                    let text = String::from_utf8_lossy(&output.stdout);
                    parse_h2load(&text).with_context(|| format!("h2load said: {text}"))
                })?;
                results.insert(format!("h2load {}", mode.label()), rps);
            }
            for mode in modes {
                let value = results[&format!("h2load {}", mode.label())];
                let base = results[&format!("h2load {}", mode.baseline().label())];
                let gw = mode.route != Route::Direct;
                rows.push(Row {
                    workload: "keep-alive 1 KiB (h2load, no cert check)".into(),
                    mode: mode.label(),
                    figure: "req/s".into(),
                    unit: "req/s".into(),
                    runs: vec![value],
                    value: Some(value),
                    ratio: gw.then_some(value / base),
                    baseline: !gw,
                    ..Row::default()
                });
            }
        }
        if which("wrk").is_some() {
            let mut wrk_results = Vec::new();
            for mode in [DIRECT_H1, INTERCEPT_H1] {
                eprintln!("gateway-bench: cross-check wrk {}", mode.label());
                let (rps, _) = self.in_mode(mode, |cgroup, _, _| {
                    let mut command = Command::new("wrk");
                    command.args([
                        "-t",
                        "2",
                        "-c",
                        &self.opts.concurrency.to_string(),
                        "-d",
                        &format!("{secs}s"),
                        &format!("https://{}{}", self.host.v4, nginx::SMALL),
                    ]);
                    let output = run_bounded(cgroup, &mut command, Duration::from_secs(secs + 60))?;
                    let text = String::from_utf8_lossy(&output.stdout);
                    text.lines()
                        .find_map(|l| l.strip_prefix("Requests/sec:"))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .with_context(|| format!("wrk said: {text}"))
                })?;
                wrk_results.push((mode, rps));
            }
            let base = wrk_results[0].1;
            for (mode, value) in wrk_results {
                let gw = mode.route != Route::Direct;
                rows.push(Row {
                    workload: "keep-alive 1 KiB (wrk, IP URL, no SNI, no cert check)".into(),
                    mode: mode.label(),
                    figure: "req/s".into(),
                    unit: "req/s".into(),
                    runs: vec![value],
                    value: Some(value),
                    ratio: gw.then_some(value / base),
                    baseline: !gw,
                    ..Row::default()
                });
            }
        }
        Ok(rows)
    }

    fn render(&self, rows: &[Row], cross: &[Row], elapsed: Duration) -> anyhow::Result<String> {
        let tool = |program: &str, args: &[&str]| -> String {
            Command::new(program)
                .args(args)
                .output()
                .map(|o| {
                    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    text.lines().next().unwrap_or_default().trim().to_owned()
                })
                .unwrap_or_else(|e| format!("({e})"))
        };
        let mut md = String::new();
        md.push_str("# gateway bench\n\n");
        md.push_str(&format!(
            "- when: {} ({:.0} s for the whole bench)\n",
            tool("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            elapsed.as_secs_f64()
        ));
        md.push_str(&format!(
            "- machine: {} CPUs (shared, so absolute figures are noisy: read the ratios, measured \
             in this one run), kernel {}\n",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            tool("uname", &["-r"])
        ));
        md.push_str(&format!(
            "- gateway: {} ({}), daemons logging with RUST_LOG={}, one daemon started per \
             measured run\n",
            self.opts.gateway.display(),
            tool(
                self.opts.gateway.to_str().unwrap_or("gateway"),
                &["--version"]
            ),
            daemon::RUST_LOG
        ));
        md.push_str(&format!(
            "- tools: {}, {}, {}; upstream nginx (HTTP/1.1 + HTTP/2, worker_processes auto) in \
             netns {} at {}:443, test CA, certificate for `{DOMAIN}` and `*.{DOMAIN}`\n",
            tool("oha", &["--version"]),
            tool("curl", &["--version"]),
            tool("nginx", &["-v"]),
            self.host.ns.name(),
            self.host.v4
        ));
        md.push_str(&format!(
            "- load: oha -c {} -z {}s inside a sandbox cgroup (direct: a cgroup with no \
             programs), {} rounds, modes interleaved with the order rotated each round; the value \
             is the best round (highest rate, lowest time: noise from other tenants of the \
             machine only slows runs down), `runs` lists every round; ratios are best to best. oha verifies certificates \
             (--cacert, never --insecure); the 64 MiB download is curl (3 per run, median).\n",
            self.opts.concurrency, self.opts.duration, self.opts.rounds
        ));
        md.push_str(&format!(
            "- daemon CPU s: user+system over the measured part of a run (mean of the runs); \
             daemon peak RSS: max of VmRSS sampled every 50 ms during the run (max of the \
             runs); VmHWM is not used because the daemon's start-up peak dominates it \
             (VmHWM right after start: up to {:.1} MiB).\n\n",
            self.start_hwm_kib.get() as f64 / 1024.0
        ));
        md.push_str(&report::table(rows));
        let missed: Vec<String> = rows
            .iter()
            .filter(|r| r.missed())
            .map(|r| format!("{} / {} / {}", r.workload, r.mode, r.figure))
            .collect();
        md.push_str(&format!(
            "\nTargets missed: {}\n",
            if missed.is_empty() {
                "none".to_owned()
            } else {
                missed.join("; ")
            }
        ));
        if !cross.is_empty() {
            md.push_str(
                "\n## Cross-checks (h2load, wrk: they never verify certificates; one run each)\n\n",
            );
            md.push_str(&report::table(cross));
        }
        if !self.notes.is_empty() {
            md.push_str("\n## Notes\n\n");
            md.push_str(
                "- Daemon warnings below are its per-connection error lines. oha aborts the \
                 requests in flight when its duration ends (resets, broken pipes, \
                 `client closed ... before a complete ClientHello`): a few per run are expected.\n",
            );
            for note in &self.notes {
                md.push_str(&format!("- {note}\n"));
            }
        }
        Ok(md)
    }
}

/// The best run of a rate: the highest (noise on a shared machine only slows runs down).
fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// The best run of a time: the lowest.
fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

/// Mean CPU seconds and max peak RSS over the runs that had a daemon.
fn daemon_use<'a>(usages: impl Iterator<Item = &'a Option<RunUse>>) -> Option<DaemonUse> {
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

/// `finished in 5.00s, 12345.60 req/s, ...` and `requests: ... N succeeded, M failed`.
fn parse_h2load(text: &str) -> anyhow::Result<f64> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no req/s")?;
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| {
            l.split(", ")
                .find_map(|p| p.trim().strip_suffix(" succeeded"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    if succeeded == 0 {
        bail!("no request succeeded");
    }
    Ok(rps)
}
