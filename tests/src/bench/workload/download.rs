//! One 64 MiB download with curl (it verifies certificates), 3 per run, median MB/s: the relay's
//! throughput.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::bail;

use super::secrets_row;
use crate::{
    bench::{
        mode::{BYPASS_H1, DIRECT_H1, DIRECT_H2, INTERCEPT_H1, INTERCEPT_H2, Mode, Route},
        nginx,
        report::{Row, Target},
        rig::{Rig, RunUse, daemon_use},
        stats::{max, median},
    },
    sandbox::SandboxCgroup,
};

/// Downloads per measured run.
const PER_RUN: usize = 3;

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let workload = "one 64 MiB download";
    let modes = [DIRECT_H1, DIRECT_H2, BYPASS_H1, INTERCEPT_H1, INTERCEPT_H2];
    let mut runs: BTreeMap<String, Vec<(f64, Option<RunUse>)>> = BTreeMap::new();
    for (round, mode) in rig.schedule(&modes) {
        eprintln!(
            "gateway-bench: {workload}: round {} {}",
            round + 1,
            mode.label()
        );
        let ((mbps, failures), usage) = rig.in_mode(mode, |cgroup, ca, _| {
            let mut speeds = Vec::new();
            let mut failures = Vec::new();
            for _ in 0..PER_RUN {
                match curl_download(rig, cgroup, ca, mode) {
                    Ok(speed) => speeds.push(speed),
                    Err(err) => failures.push(format!("{err:#}")),
                }
            }
            Ok((median(&speeds), failures))
        })?;
        for failure in failures {
            rig.notes.push(format!(
                "**{workload}, {} round {}: a download failed**: {}",
                mode.label(),
                round + 1,
                failure.trim()
            ));
        }
        rig.note_run(workload, mode, &usage);
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
        let gw = mode.through_gateway();
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
    rows.push(secrets_row(workload));
    Ok(rows)
}

/// One download of nginx's large file; MB/s.
fn curl_download(rig: &Rig, cgroup: &SandboxCgroup, ca: &Path, mode: Mode) -> anyhow::Result<f64> {
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
            &format!("{host}:443:{}", rig.host.v4),
            "-w",
            "%{size_download} %{time_total} %{http_version}",
            &format!("https://{host}{}", nginx::LARGE),
        ]);
    let output = cgroup.output_within(&mut command, Duration::from_secs(90))?;
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
