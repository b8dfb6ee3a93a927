//! The bench's markdown report: how it was measured, then a table of each figure, its runs, its
//! ratio to direct and its target, the cross-checks and the notes.

use std::{process::Command, time::Duration};

use super::{
    mode::DOMAIN,
    rig::{DAEMON_RUST_LOG, Rig},
    secret,
};
use crate::nginx::PLAIN_PORT;

/// A target a figure must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The ratio to direct must be at least this.
    RatioAtLeast(f64),
    /// The value itself must be at most this (in the row's unit).
    AtMost(f64),
}

impl Target {
    fn text(self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("≥ {r:.2}× direct"),
            Target::AtMost(v) => format!("≤ {} {unit}", number(v)),
        }
    }

    /// Whether `row` meets it; `None` when the row has no value.
    fn met(self, row: &Row) -> Option<bool> {
        match self {
            Target::RatioAtLeast(r) => row.ratio.filter(|x| x.is_finite()).map(|x| x >= r),
            Target::AtMost(v) => row.value.filter(|x| x.is_finite()).map(|x| x <= v),
        }
    }
}

/// What the daemon used during a row's runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DaemonUse {
    /// CPU seconds (user + system), mean over the runs.
    pub cpu_secs: f64,
    /// Peak RSS (VmHWM of a daemon started for the run), MiB, max over the runs.
    pub peak_rss_mib: f64,
}

/// One line of the table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// The workload, e.g. "new TLS connection per 1 KiB request".
    pub workload: String,
    /// The mode, e.g. "intercept h2".
    pub mode: String,
    /// What is measured, e.g. "req/s" or "p50".
    pub figure: String,
    /// Unit of `value`, e.g. "req/s", "ms".
    pub unit: String,
    /// Each round's figure, in run order.
    pub runs: Vec<f64>,
    /// The reported figure (mean of the runs unless said otherwise).
    pub value: Option<f64>,
    /// Shown instead of a value (e.g. a ratio between two modes, "0.87").
    pub text: Option<String>,
    /// `value` over the direct figure of the same workload; `None` for direct itself.
    pub ratio: Option<f64>,
    /// Whether this row is the direct baseline.
    pub baseline: bool,
    /// The target, when the issue sets one.
    pub target: Option<Target>,
    /// The daemon's CPU and memory over the runs, for gateway modes.
    pub daemon: Option<DaemonUse>,
}

impl Row {
    /// Whether the row has a target it misses.
    pub fn missed(&self) -> bool {
        self.target.and_then(|t| t.met(self)) == Some(false)
    }
}

/// A number with a precision that suits its size.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | mode | figure | value | runs | ratio to direct | target | met? | daemon CPU s | daemon peak RSS MiB |\n",
    );
    out.push_str("|---|---|---|---:|---:|---:|---|---|---:|---:|\n");
    for row in rows {
        let value = match (&row.text, row.value) {
            (Some(text), _) => text.clone(),
            (None, Some(v)) if v.is_finite() => format!("{} {}", number(v), row.unit),
            (None, _) => "–".to_owned(),
        };
        let runs = row
            .runs
            .iter()
            .map(|v| number(*v))
            .collect::<Vec<_>>()
            .join(" / ");
        let ratio = if row.baseline {
            "1.00 (baseline)".to_owned()
        } else {
            row.ratio.map_or_else(String::new, |r| {
                if r.is_finite() {
                    format!("{r:.2}")
                } else {
                    "–".to_owned()
                }
            })
        };
        let target = row.target.map_or_else(String::new, |t| t.text(&row.unit));
        let met = match row.target.map(|t| t.met(row)) {
            None => "",
            Some(None) => "n/a",
            Some(Some(true)) => "met",
            Some(Some(false)) => "**missed**",
        };
        let (cpu, rss) = row.daemon.map_or_else(
            || (String::new(), String::new()),
            |d| {
                (
                    format!("{:.2}", d.cpu_secs),
                    format!("{:.1}", d.peak_rss_mib),
                )
            },
        );
        out.push_str(&format!(
            "| {} | {} | {} | {value} | {runs} | {ratio} | {target} | {met} | {cpu} | {rss} |\n",
            row.workload, row.mode, row.figure
        ));
    }
    out
}

/// The first line a tool prints (stdout, else stderr) when run with `args`: its version.
fn tool_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_else(|e| format!("({e})"))
}

/// The whole report: how it was measured, `rows`, the `cross` checks and the rig's notes.
pub fn markdown(rig: &Rig, rows: &[Row], cross: &[Row], elapsed: Duration) -> String {
    let opts = &rig.opts;
    let mut md = String::new();
    md.push_str("# gateway bench\n\n");
    md.push_str(&format!(
        "- when: {} ({:.0} s for the whole bench)\n",
        tool_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        elapsed.as_secs_f64()
    ));
    md.push_str(&format!(
        "- machine: {} CPUs (shared, so absolute figures are noisy: read the ratios, measured \
         in this one run), kernel {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        tool_line("uname", &["-r"])
    ));
    md.push_str(&format!(
        "- gateway: {} ({}), daemons logging with RUST_LOG={DAEMON_RUST_LOG}, one daemon started \
         per measured run\n",
        opts.gateway.display(),
        tool_line(opts.gateway.to_str().unwrap_or("gateway"), &["--version"]),
    ));
    md.push_str(&format!(
        "- tools: {}, {}, {}; upstream nginx (HTTP/1.1 + HTTP/2, worker_processes auto) in \
         netns {} at {v4}:443, test CA, certificate for `{DOMAIN}` and `*.{DOMAIN}`; the same \
         locations as plain HTTP/1.1 at {v4}:{PLAIN_PORT}\n",
        tool_line("oha", &["--version"]),
        tool_line("curl", &["--version"]),
        tool_line("nginx", &["-v"]),
        rig.host.ns.name(),
        v4 = rig.host.v4
    ));
    md.push_str(&format!(
        "- load: oha -c {} -z {}s inside a sandbox cgroup (direct: a cgroup with no \
         programs), {} rounds, modes interleaved with the order rotated each round; the value \
         is the best round (highest rate, lowest time: noise from other tenants of the \
         machine only slows runs down), `runs` lists every round; ratios are best to best. oha verifies certificates \
         (--cacert, never --insecure); the 64 MiB download is curl (3 per run, median, after \
         one untimed download per run compared byte for byte with the file nginx serves).\n",
        opts.concurrency, opts.duration, opts.rounds
    ));
    md.push_str(&format!(
        "- intercept + secret: intercepted, the daemon's config adding a secret `{name}` for \
         `{DOMAIN}` and `*.{DOMAIN}` (value: a 40-byte test value in its environment) and the \
         sandbox given it (`,secret={name}`), so connections to `{DOMAIN}` take the HTTP-aware \
         path (hyper on both sides, placeholders substituted in headers); oha and curl send \
         `{authorization}` in these modes only. Before each such run (untimed) one request to \
         `/headers` with the placeholder must reach nginx carrying the value, the sandbox seeing \
         nginx's echo with the placeholder, else the workload fails: {checks}. Rows `intercept \
         + secret hN / intercept hN`: the figure over plain intercept's, best to best (`runs`: \
         round by round).\n",
        name = secret::NAME,
        authorization = secret::authorization(),
        checks = rig
            .secret_checks()
            .unwrap_or_else(|| "no intercept + secret mode ran".into()),
    ));
    md.push_str(&format!(
        "- daemon CPU s: user+system over the measured part of a run (mean of the runs); \
         daemon peak RSS: max of VmRSS sampled every 50 ms during the run (max of the \
         runs); VmHWM is not used because the daemon's start-up peak dominates it \
         (VmHWM right after start: up to {:.1} MiB).\n\n",
        rig.start_hwm_kib() as f64 / 1024.0
    ));
    md.push_str(&table(rows));
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
        md.push_str(&table(cross));
    }
    if !rig.notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        md.push_str(
            "- Daemon warnings below are its per-connection error lines. oha aborts the \
             requests in flight when its duration ends (resets, broken pipes, \
             `client closed ... before a complete ClientHello`): a few per run are expected.\n",
        );
        for note in &rig.notes {
            md.push_str(&format!("- {note}\n"));
        }
    }
    md
}
