//! oha (it verifies certificates) as the load generator: one run, read from its JSON output.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    mode::{Mode, Scheme},
    nginx,
    rig::Rig,
    secret,
};
use crate::sandbox::SandboxCgroup;

/// What one oha run measured.
#[derive(Debug, Clone)]
pub struct Oha {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests answered 200.
    pub ok: u64,
    /// oha's errors by kind, plus "non-200 status".
    pub errors: BTreeMap<String, u64>,
}

/// How long and how hard.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// A new connection per request.
    pub new_connections: bool,
    /// This many requests; `None`: for the bench's `--duration`.
    pub requests: Option<u64>,
}

/// Runs oha against nginx's 1 KiB file in `cgroup`, trusting `ca` (HTTPS), in `mode`.
pub fn run(
    rig: &Rig,
    cgroup: &SandboxCgroup,
    ca: &Path,
    mode: Mode,
    load: Load,
) -> anyhow::Result<Oha> {
    let host = mode.host();
    let port = mode.scheme.port();
    let mut command = Command::new("oha");
    command
        .args(["--no-tui", "--output-format", "json", "-c"])
        .arg(rig.opts.concurrency.to_string());
    match load.requests {
        Some(n) => command.arg("-n").arg(n.to_string()),
        None => command.arg("-z").arg(format!("{}s", rig.opts.duration)),
    };
    if mode.scheme == Scheme::Https {
        command.arg("--cacert").arg(ca);
    }
    // The name stays in the URL (SNI, Host) while the connection goes to nginx's address.
    command.args([
        "--connect-to",
        &format!("{host}:{port}:{}:{port}", rig.host.v4),
        "--http-version",
        if mode.h2 { "2" } else { "1.1" },
    ]);
    if load.new_connections {
        command.arg("--disable-keepalive");
    }
    if mode.sends_secret() {
        command.arg("-H").arg(secret::authorization());
    }
    command.arg(format!("{}://{host}{}", mode.scheme.as_str(), nginx::SMALL));
    let timeout = Duration::from_secs(rig.opts.duration + 60);
    let output = cgroup.output_within(&mut command, timeout)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "oha output is not JSON ({}): {text} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok(parse(&value))
}

fn parse(value: &Value) -> Oha {
    let statuses = &value["statusCodeDistribution"];
    let ok = statuses["200"].as_u64().unwrap_or(0);
    let mut errors = BTreeMap::new();
    if let Some(map) = value["errorDistribution"].as_object() {
        for (kind, n) in map {
            errors.insert(kind.clone(), n.as_u64().unwrap_or(0));
        }
    }
    let others: u64 = statuses
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
    let ms = |p: &str| value["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1e3;
    Oha {
        rps: ok as f64 / secs,
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        ok,
        errors,
    }
}
