//! First connections to N distinct names: the cost of forging N certificates, as the cold
//! handshake minus the warm (cached) one to the same name.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    bench::{
        mode::{DIRECT_H1, DOMAIN, INTERCEPT_H1},
        report::{Row, Target},
        rig::{Rig, daemon_use},
        stats::{min, percentile},
    },
    sandbox::SandboxCgroup,
};

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let workload = format!("first connections to {} distinct names", rig.opts.names);
    let mut direct_runs: Vec<Vec<f64>> = Vec::new();
    let mut cold_runs: Vec<Vec<f64>> = Vec::new();
    let mut warm_runs: Vec<Vec<f64>> = Vec::new();
    let mut usages = Vec::new();
    for (round, mode) in rig.schedule(&[DIRECT_H1, INTERCEPT_H1]) {
        eprintln!(
            "gateway-bench: {workload}: round {} {}",
            round + 1,
            mode.label()
        );
        // Through the gateway, a second pass over the same names measures the cached case.
        let passes = if mode.through_gateway() { 2 } else { 1 };
        let (result, usage) =
            rig.in_mode(mode, |cgroup, ca, _| handshakes(rig, cgroup, ca, passes))?;
        if let Some(u) = &usage
            && u.certs_generated != rig.opts.names as u64
        {
            rig.notes.push(format!(
                "{workload}, round {}: the daemon logged {} `certificate generated` lines for \
                 {} names",
                round + 1,
                u.certs_generated,
                rig.opts.names
            ));
        }
        rig.note_run(&workload, mode, &usage);
        let mut passes = result.into_iter();
        if mode.through_gateway() {
            cold_runs.push(passes.next().unwrap_or_default());
            warm_runs.push(passes.next().unwrap_or_default());
            usages.push(usage);
        } else {
            direct_runs.push(passes.next().unwrap_or_default());
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
    for (q, p) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            "direct h1",
            &format!("handshake {p}"),
            ms(&direct_runs, q),
            None,
            None,
        );
    }
    for (q, p) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            "intercept h1, cold",
            &format!("handshake {p}"),
            ms(&cold_runs, q),
            Some(q),
            None,
        );
    }
    for (q, p) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            "intercept h1, warm (cached)",
            &format!("handshake {p}"),
            ms(&warm_runs, q),
            Some(q),
            None,
        );
    }
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

/// Sequential handshakes to `--names` distinct names, run in `cgroup`; µs per pass.
fn handshakes(
    rig: &Rig,
    cgroup: &SandboxCgroup,
    ca: &Path,
    passes: usize,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut command = rig.client("handshakes");
    command.arg("--ca").arg(ca).args([
        "--addr",
        &rig.upstream().to_string(),
        "--prefix",
        "n",
        "--domain",
        DOMAIN,
        "--count",
        &rig.opts.names.to_string(),
        "--passes",
        &passes.to_string(),
    ]);
    let output = cgroup.output_within(&mut command, Duration::from_secs(660))?;
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
