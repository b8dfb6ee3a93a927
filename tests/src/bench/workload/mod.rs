//! The measured workloads, one per file, each a function of the shared [`Rig`] giving rows of
//! the report; and the interleaved oha series three of them share.

mod cold_certs;
mod connect_cost;
mod cross_checks;
mod dns_lookup;
mod download;
mod idle_rss;
mod keepalive;
mod new_conn;
mod plain_http;

use std::collections::BTreeMap;

use anyhow::bail;

use super::{
    mode::{Mode, Route},
    oha::{self, Load, Oha},
    report::{Row, Target},
    rig::{Rig, RunUse, check_path, daemon_use},
    stats::{max, min},
};

/// The workloads, in the order they run; `--only` picks by these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// A new TLS connection per 1 KiB request (oha).
    New,
    /// Keep-alive 1 KiB requests (oha).
    Keepalive,
    /// One 64 MiB download (curl).
    Download,
    /// Plain HTTP: keep-alive 1 KiB requests (oha) and one 64 MiB download (curl).
    Http,
    /// First connections to many distinct names: the cost of forging certificates.
    Cold,
    /// connect() to an allowed port in a tight loop, with and without the programs attached.
    Connect,
    /// Daemon memory per idle connection held.
    Idle,
    /// Cross-checks of the keep-alive ratios with h2load and wrk.
    Cross,
    /// DNS lookups through the gateway (cached, uncached) against asking the resolver directly.
    Dns,
}

impl Workload {
    /// Every workload, in running order.
    pub const ALL: [Workload; 9] = [
        Workload::New,
        Workload::Keepalive,
        Workload::Download,
        Workload::Http,
        Workload::Cold,
        Workload::Connect,
        Workload::Idle,
        Workload::Dns,
        Workload::Cross,
    ];

    /// Its `--only` name.
    pub fn key(self) -> &'static str {
        match self {
            Workload::New => "new",
            Workload::Keepalive => "keepalive",
            Workload::Download => "download",
            Workload::Http => "http",
            Workload::Cold => "cold",
            Workload::Connect => "connect",
            Workload::Idle => "idle",
            Workload::Cross => "cross",
            Workload::Dns => "dns",
        }
    }

    /// Runs it; its rows for the report.
    pub fn run(self, rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
        match self {
            Workload::New => new_conn::run(rig),
            Workload::Keepalive => keepalive::run(rig),
            Workload::Download => download::run(rig),
            Workload::Http => plain_http::run(rig),
            Workload::Cold => cold_certs::run(rig),
            Workload::Connect => connect_cost::run(rig),
            Workload::Idle => idle_rss::run(rig),
            Workload::Cross => cross_checks::run(rig),
            Workload::Dns => dns_lookup::run(rig),
        }
    }
}

pub use dns_lookup::lookup_names;

/// The target for connections bypassed at connect, against direct.
const BYPASS_AT_CONNECT_TARGET: Target = Target::RatioAtLeast(0.97);

/// For each intercept + secret mode among `modes`, a row giving its `figure` over plain
/// intercept's (same HTTP version, same run of the workload, best to best; `runs`: round by
/// round): the throughput cost of the HTTP-aware path against the plain intercept path.
fn against_intercept(rows: &[Row], modes: &[Mode], figure: &str) -> Vec<Row> {
    let find = |mode: Mode| {
        rows.iter()
            .find(|r| r.mode == mode.label() && r.figure == figure)
    };
    let mut out = Vec::new();
    for &mode in modes {
        let Some(plain) = mode.without_secret() else {
            continue;
        };
        let (Some(secret), Some(plain_row)) = (find(mode), find(plain)) else {
            continue;
        };
        let ratio = match (secret.value, plain_row.value) {
            (Some(s), Some(p)) => s / p,
            _ => f64::NAN,
        };
        out.push(Row {
            workload: secret.workload.clone(),
            mode: format!("{} / {}", mode.label(), plain.label()),
            figure: format!("{figure} ratio: HTTP-aware path / plain intercept"),
            unit: "×".into(),
            runs: secret
                .runs
                .iter()
                .zip(&plain_row.runs)
                .map(|(s, p)| s / p)
                .collect(),
            value: Some(ratio),
            text: Some(if ratio.is_finite() {
                format!("{ratio:.2}")
            } else {
                "–".into()
            }),
            ..Row::default()
        });
    }
    out
}

/// A figure of an oha run: name, unit, how to read it.
type Figure = (&'static str, &'static str, fn(&Oha) -> f64);

/// What an oha series measures, and the targets of its req/s row.
struct Series<'a> {
    workload: &'a str,
    modes: &'a [Mode],
    new_connections: bool,
    /// p50 and p99 rows besides req/s.
    latency: bool,
    intercept_target: Option<Target>,
    bypass_target: Option<Target>,
}

/// oha for `--duration` in each mode, interleaved; rows for req/s (and p50/p99 if asked).
fn oha_series(rig: &mut Rig, series: &Series<'_>) -> anyhow::Result<Vec<Row>> {
    let workload = series.workload;
    let mut runs: BTreeMap<String, Vec<(Oha, Option<RunUse>)>> = BTreeMap::new();
    for (round, mode) in rig.schedule(series.modes) {
        eprintln!(
            "gateway-bench: {workload}: round {} {}",
            round + 1,
            mode.label()
        );
        let load = Load {
            new_connections: series.new_connections,
            requests: None,
        };
        let (result, usage) =
            rig.in_mode(mode, |cgroup, ca, _| oha::run(rig, cgroup, ca, mode, load))?;
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
            rig.notes.push(format!(
                "{workload}, {} round {}: oha errors {real:?} ({} OK)",
                mode.label(),
                round + 1,
                result.ok
            ));
        }
        // A new connection per request: each successful one made at least one connection.
        let connections = if series.new_connections {
            result.ok
        } else {
            result.ok.min(1)
        };
        check_path(workload, mode, &usage, connections)?;
        rig.note_run(workload, mode, &usage);
        runs.entry(mode.label()).or_default().push((result, usage));
    }
    let figures: &[Figure] = if series.latency {
        &[
            ("req/s", "req/s", |o| o.rps),
            ("p50 latency", "ms", |o| o.p50_ms),
            ("p99 latency", "ms", |o| o.p99_ms),
        ]
    } else {
        &[("req/s", "req/s", |o| o.rps)]
    };
    let mut rows = Vec::new();
    for mode in series.modes {
        let mode_runs = &runs[&mode.label()];
        let base_runs = &runs[&mode.baseline().label()];
        for (i, (figure, unit, get)) in figures.iter().enumerate() {
            let values: Vec<f64> = mode_runs.iter().map(|(o, _)| get(o)).collect();
            // req/s: the highest run; latencies: the lowest.
            let best = if i == 0 { max } else { min };
            let base = best(&base_runs.iter().map(|(o, _)| get(o)).collect::<Vec<_>>());
            let value = best(&values);
            let gw = mode.through_gateway();
            rows.push(Row {
                workload: workload.into(),
                mode: mode.label(),
                figure: (*figure).into(),
                unit: (*unit).into(),
                runs: values,
                value: Some(value),
                ratio: gw.then_some(value / base),
                baseline: !gw,
                target: match (i, mode.route) {
                    (0, Route::Intercept) => series.intercept_target,
                    (0, Route::Bypass) => series.bypass_target,
                    (0, Route::BypassAtConnect) => Some(BYPASS_AT_CONNECT_TARGET),
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
