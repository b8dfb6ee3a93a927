//! RSS per idle connection: the daemon's VmRSS before and after a client in the sandbox opens N
//! TLS connections (handshake complete) and leaves them idle.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    bench::{
        mode::{BYPASS_H1, INTERCEPT_H1, Mode, Route},
        report::{Row, Target},
        rig::{Rig, daemon_use},
    },
    daemon::Daemon,
    process::{Guarded, output_within},
    sandbox::SandboxCgroup,
};

/// How long the hold client may take to open its connections and report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long it may take to close them and exit once its stdin closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let workload = format!("{} idle connections held", rig.opts.idle);
    let mut rows = Vec::new();
    for mode in [INTERCEPT_H1, BYPASS_H1] {
        eprintln!("gateway-bench: {workload}: {}", mode.label());
        let ((per_conn, before, after), usage) = rig.in_mode(mode, |cgroup, ca, daemon| {
            let daemon = daemon.context("no daemon")?;
            hold(rig, cgroup, ca, mode, daemon)
        })?;
        rig.note_run(&workload, mode, &usage);
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

/// KiB of daemon RSS per held connection, and VmRSS (KiB) before and while holding them.
fn hold(
    rig: &Rig,
    cgroup: &SandboxCgroup,
    ca: &Path,
    mode: Mode,
    daemon: &Daemon,
) -> anyhow::Result<(f64, u64, u64)> {
    let count = rig.opts.idle;
    warm_up(rig, cgroup, ca, mode)?;
    std::thread::sleep(Duration::from_secs(1));
    let before = daemon.usage()?.rss_kib;

    let mut command = rig.client("hold");
    command.arg("--ca").arg(ca).args([
        "--addr",
        &rig.upstream().to_string(),
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
    let mut client = Guarded::new("hold client", child, Duration::from_secs(5));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        // The receiver is gone only when the bench stopped waiting for the report.
        tx.send(read).ok();
    });
    let line = rx
        .recv_timeout(REPORT_TIMEOUT)
        .with_context(|| format!("the hold client did not report within {REPORT_TIMEOUT:?}"))?
        .context("reading the hold client's report")?;
    let value: Value =
        serde_json::from_str(&line).with_context(|| format!("hold client said {line:?}"))?;
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
    // Closing stdin tells the client to close its connections and exit; the guard ends it if
    // it does not.
    drop(stdin);
    client.wait_timeout(CLOSE_TIMEOUT)?;
    Ok(((after as f64 - before as f64) / count as f64, before, after))
}

/// One connection first, so that the forged certificate and the connectors exist.
fn warm_up(rig: &Rig, cgroup: &SandboxCgroup, ca: &Path, mode: Mode) -> anyhow::Result<()> {
    let mut warm = rig.client("hold");
    warm.arg("--ca").arg(ca).args([
        "--addr",
        &rig.upstream().to_string(),
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
    let output = output_within(child, Duration::from_secs(60))?;
    let value: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("warm-up: {}", String::from_utf8_lossy(&output.stderr)))?;
    if value["opened"].as_u64() != Some(1) {
        bail!("warm-up connection failed: {value}");
    }
    Ok(())
}
