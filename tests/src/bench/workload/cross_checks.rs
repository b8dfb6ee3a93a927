//! h2load (keep-alive, HTTP/1.1 and HTTP/2) and wrk (HTTP/1.1, IP URL so no SNI): they do not
//! verify certificates, so they only cross-check oha's keep-alive ratios. Each runs only when
//! installed.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    bench::{
        mode::{BYPASS_H1, DIRECT_H1, DIRECT_H2, INTERCEPT_H1, INTERCEPT_H2, Mode},
        nginx,
        report::Row,
        rig::Rig,
    },
    find_tool,
};

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if find_tool("h2load").is_some() {
        rows.extend(h2load(rig)?);
    }
    if find_tool("wrk").is_some() {
        rows.extend(wrk(rig)?);
    }
    Ok(rows)
}

/// Seconds per cross-check run.
fn seconds(rig: &Rig) -> u64 {
    rig.opts.duration.min(5)
}

fn h2load(rig: &Rig) -> anyhow::Result<Vec<Row>> {
    let secs = seconds(rig);
    let modes = [DIRECT_H1, DIRECT_H2, BYPASS_H1, INTERCEPT_H1, INTERCEPT_H2];
    let mut results: BTreeMap<String, f64> = BTreeMap::new();
    for mode in modes {
        eprintln!("gateway-bench: cross-check h2load {}", mode.label());
        let (rps, _) = rig.in_mode(mode, |cgroup, _, _| {
            let mut command = Command::new("h2load");
            command.args([
                "-D",
                &secs.to_string(),
                "-c",
                &rig.opts.concurrency.to_string(),
                "-t",
                "2",
                "-m",
                "1",
                &format!("--connect-to={}:443", rig.host.v4),
            ]);
            if !mode.h2 {
                command.arg("--h1");
            }
            command.arg(format!("https://{}{}", mode.host(), nginx::SMALL));
            let output = cgroup.output_within(&mut command, Duration::from_secs(secs + 60))?;
            let text = String::from_utf8_lossy(&output.stdout);
            parse_h2load(&text).with_context(|| format!("h2load said: {text}"))
        })?;
        results.insert(mode.label(), rps);
    }
    Ok(modes
        .iter()
        .map(|mode| {
            let value = results[&mode.label()];
            let base = results[&mode.baseline().label()];
            row(
                "keep-alive 1 KiB (h2load, no cert check)",
                *mode,
                value,
                base,
            )
        })
        .collect())
}

fn wrk(rig: &Rig) -> anyhow::Result<Vec<Row>> {
    let secs = seconds(rig);
    let mut results = Vec::new();
    for mode in [DIRECT_H1, INTERCEPT_H1] {
        eprintln!("gateway-bench: cross-check wrk {}", mode.label());
        let (rps, _) = rig.in_mode(mode, |cgroup, _, _| {
            let mut command = Command::new("wrk");
            command.args([
                "-t",
                "2",
                "-c",
                &rig.opts.concurrency.to_string(),
                "-d",
                &format!("{secs}s"),
                &format!("https://{}{}", rig.host.v4, nginx::SMALL),
            ]);
            let output = cgroup.output_within(&mut command, Duration::from_secs(secs + 60))?;
            let text = String::from_utf8_lossy(&output.stdout);
            text.lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .with_context(|| format!("wrk said: {text}"))
        })?;
        results.push((mode, rps));
    }
    let base = results[0].1;
    Ok(results
        .into_iter()
        .map(|(mode, value)| {
            row(
                "keep-alive 1 KiB (wrk, IP URL, no SNI, no cert check)",
                mode,
                value,
                base,
            )
        })
        .collect())
}

/// A req/s row of one run, compared with `base` (the direct run of the same HTTP version).
fn row(workload: &str, mode: Mode, value: f64, base: f64) -> Row {
    let gw = mode.through_gateway();
    Row {
        workload: workload.into(),
        mode: mode.label(),
        figure: "req/s".into(),
        unit: "req/s".into(),
        runs: vec![value],
        value: Some(value),
        ratio: gw.then_some(value / base),
        baseline: !gw,
        ..Row::default()
    }
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
