//! One 64 MiB download with curl (it verifies certificates), 3 per run, median MB/s: the relay's
//! throughput. Each run first checks one untimed download byte for byte against nginx's file.

use std::{
    collections::BTreeMap, fs::File, io::Read as _, path::Path, process::Command, time::Duration,
};

use anyhow::{Context as _, bail};

use super::against_intercept;
use crate::{
    bench::{
        mode::{
            BYPASS_AT_CONNECT_H1, BYPASS_H1, DIRECT_H1, DIRECT_H2, INTERCEPT_H1, INTERCEPT_H2,
            INTERCEPT_SECRET_H1, INTERCEPT_SECRET_H2, Mode, Route, Scheme,
        },
        nginx,
        report::{Row, Target},
        rig::{Rig, RunUse, check_path, daemon_use},
        secret,
        stats::{max, median},
    },
    sandbox::SandboxCgroup,
};

/// Downloads per measured run.
const PER_RUN: usize = 3;

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let workload = "one 64 MiB download";
    let modes = [
        DIRECT_H1,
        DIRECT_H2,
        BYPASS_AT_CONNECT_H1,
        BYPASS_H1,
        INTERCEPT_H1,
        INTERCEPT_H2,
        INTERCEPT_SECRET_H1,
        INTERCEPT_SECRET_H2,
    ];
    let mut rows = series(rig, workload, &modes)?;
    rows.extend(against_intercept(&rows, &modes, "throughput"));
    Ok(rows)
}

/// The downloads in each of `modes`, interleaved; a throughput row per mode, compared with the
/// direct mode of the same scheme and HTTP version.
pub(super) fn series(rig: &mut Rig, workload: &str, modes: &[Mode]) -> anyhow::Result<Vec<Row>> {
    let mut runs: BTreeMap<String, Vec<(f64, Option<RunUse>)>> = BTreeMap::new();
    for (round, mode) in rig.schedule(modes) {
        eprintln!(
            "gateway-bench: {workload}: round {} {}",
            round + 1,
            mode.label()
        );
        let ((mbps, failures), usage) = rig.in_mode(mode, |cgroup, ca, _| {
            check_content(rig, cgroup, ca, mode)?;
            let mut speeds = Vec::new();
            let mut failures = Vec::new();
            for _ in 0..PER_RUN {
                match curl_download(rig, cgroup, ca, mode, Path::new("/dev/null")) {
                    Ok(speed) => speeds.push(speed),
                    Err(err) => failures.push(format!("{err:#}")),
                }
            }
            Ok((median(&speeds), failures))
        })?;
        // Without a certificate to tell, only the counters show the path taken.
        check_path(workload, mode, &usage, 1)?;
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
            target: target(mode.route),
            daemon: daemon_use(mode_runs.iter().map(|(_, u)| u)),
            ..Row::default()
        });
    }
    Ok(rows)
}

/// The throughput targets; plain HTTP and intercept + secret have none.
fn target(route: Route) -> Option<Target> {
    match route {
        Route::Intercept => Some(Target::RatioAtLeast(0.8)),
        Route::Bypass => Some(Target::RatioAtLeast(0.95)),
        Route::BypassAtConnect => Some(super::BYPASS_AT_CONNECT_TARGET),
        Route::Direct | Route::InterceptSecret | Route::Http => None,
    }
}

/// One untimed download into a file, which must hold exactly the bytes nginx served.
fn check_content(rig: &Rig, cgroup: &SandboxCgroup, ca: &Path, mode: Mode) -> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    curl_download(rig, cgroup, ca, mode, file.path())?;
    let served = nginx::large_file(&rig.nginx);
    if !same_content(file.path(), &served)
        .with_context(|| format!("comparing the download with {}", served.display()))?
    {
        bail!(
            "{}: the 64 MiB download differs from the file nginx served",
            mode.label()
        );
    }
    Ok(())
}

/// Whether two files hold the same bytes, read a chunk at a time.
fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let mut chunk_a = vec![0u8; 1 << 20];
    let mut chunk_b = vec![0u8; 1 << 20];
    loop {
        let n = a.read(&mut chunk_a)?;
        if n == 0 {
            return Ok(true);
        }
        // Same length: b has at least as many bytes left as a.
        b.read_exact(&mut chunk_b[..n])?;
        if chunk_a[..n] != chunk_b[..n] {
            return Ok(false);
        }
    }
}

/// One download of nginx's large file into `out`; MB/s.
fn curl_download(
    rig: &Rig,
    cgroup: &SandboxCgroup,
    ca: &Path,
    mode: Mode,
    out: &Path,
) -> anyhow::Result<f64> {
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
        ])
        .arg(out);
    if mode.scheme == Scheme::Https {
        command.arg("--cacert").arg(ca);
    }
    if mode.sends_secret() {
        command.arg("-H").arg(secret::authorization());
    }
    command.args([
        if mode.h2 { "--http2" } else { "--http1.1" },
        "--resolve",
        &format!("{host}:{}:{}", mode.scheme.port(), rig.host.v4),
        "-w",
        "%{size_download} %{time_total} %{http_version}",
        &format!("{}://{host}{}", mode.scheme.as_str(), nginx::LARGE),
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
