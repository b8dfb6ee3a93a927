//! The benchmark behind `cargo xtask bench` (binary `gateway-bench`): the gateway's cost against
//! going direct, as ratios measured in one run.
//!
//! Rig: nginx (HTTP/1.1 + HTTP/2, test CA, `*.bench.test`) in a test host's network namespace;
//! load generators (oha, which verifies certificates; curl; this binary's own clients) run
//! inside sandbox cgroups: one with no programs attached (direct), one served by a gateway daemon
//! started fresh for each measured run (bypass, intercept, intercept + secret: the HTTP-aware
//! path). Modes are interleaved, rotating the
//! order each round. Writes a markdown table (each figure, its runs, its ratio to direct, its
//! target) to `--out` and prints it.

pub mod cert_check;
pub mod cli;
pub mod clients;
pub mod mode;
pub mod nginx;
pub mod oha;
pub mod report;
pub mod rig;
pub mod secret;
pub mod stats;
pub mod workload;

use std::time::Instant;

use anyhow::{Context as _, bail};

use self::{
    cli::Options,
    report::Row,
    rig::{Rig, check_stop, stop_on_signals},
    workload::Workload,
};
use crate::{find_tool, require_root};

/// Tools the bench cannot run without.
const TOOLS: [&str; 4] = ["oha", "curl", "bpftool", "nginx"];

/// The whole bench: the rig, the certificate checks, every workload asked for, the report.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let opts = opts.resolve()?;
    require_root()?;
    stop_on_signals()?;
    if let Some(missing) = TOOLS.iter().find(|tool| find_tool(tool).is_none()) {
        bail!("{missing} not found: run scripts/setup.sh and scripts/setup-bench.sh");
    }
    let started = Instant::now();
    let nofile = gateway::process::raise_nofile_limit();
    let mut rig = Rig::new(opts)?;
    rig.notes.push(format!(
        "RLIMIT_NOFILE of the bench and what it starts (daemons, nginx, clients): {nofile}"
    ));
    cert_check::run(&mut rig)?;
    let mut rows = Vec::new();
    let mut cross = Vec::new();
    let mut failed = Vec::new();
    for workload in Workload::ALL {
        if !rig.opts.runs(workload) {
            continue;
        }
        // A failed workload (e.g. a stalled transfer) is reported, and the others still run.
        match workload.run(&mut rig) {
            Ok(r) if workload == Workload::Cross => cross = r,
            Ok(r) => rows.extend(r),
            Err(err) => {
                check_stop()?;
                let key = workload.key();
                eprintln!("gateway-bench: workload {key} failed: {err:#}");
                rig.notes
                    .push(format!("**Workload `{key}` failed**: {err:#}"));
                rows.push(failed_row(key));
                failed.push(key);
            }
        }
    }
    note_nginx_errors(&mut rig);
    let elapsed = started.elapsed();
    let markdown = report::markdown(&rig, &rows, &cross, elapsed);
    let out = &rig.opts.out;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    println!("{markdown}");
    eprintln!(
        "gateway-bench: wrote {} in {:.0} s",
        out.display(),
        elapsed.as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("workloads failed: {} (see the notes)", failed.join(", "));
    }
    Ok(())
}

fn failed_row(key: &str) -> Row {
    Row {
        workload: key.into(),
        mode: "–".into(),
        figure: "–".into(),
        text: Some("failed (see notes)".into()),
        ..Row::default()
    }
}

/// Notes nginx's serious error-log lines (crit, alert, emerg), if any.
fn note_nginx_errors(rig: &mut Rig) {
    let errors = rig.nginx.error_log();
    let serious: Vec<&str> = errors
        .lines()
        .filter(|l| l.contains("[crit]") || l.contains("[alert]") || l.contains("[emerg]"))
        .collect();
    if let Some(first) = serious.first() {
        rig.notes.push(format!(
            "nginx logged {} crit/alert/emerg lines; first: {first}",
            serious.len()
        ));
    }
}
