//! `cargo xtask demo`: a sandboxed curl reaches a demo upstream through `gateway exec`.
//!
//! Sets up an upstream HTTPS server in its own network namespace (test CA made on the spot),
//! runs `gateway exec -- curl https://demo.test/`, shows what curl got and what the gateway
//! logged, and removes everything it created.

use std::process::{ExitCode, Stdio};

use anyhow::Context as _;
use gateway_tests::{
    cmd, gateway_bin, net::UpstreamHost, pki::TestPki, require_root, upstream::Upstream,
};

fn main() -> ExitCode {
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("demo failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> anyhow::Result<bool> {
    require_root()?;
    let pki = TestPki::new("gateway demo upstream CA")?;
    let host = UpstreamHost::new().context("creating the demo upstream's network namespace")?;
    let cert = pki.issue("demo", &["demo.test"], &[])?;
    let _server = Upstream::start(
        &host.ns,
        "demo.test",
        &cert,
        &[format!("{}:443", host.v4)],
        &[],
    )?;
    println!(
        "== upstream: https://demo.test/ at {}:443 in netns {} (veth, host side {})",
        host.v4,
        host.ns.name(),
        host.host_v4
    );

    let mut exec = cmd(gateway_bin()?.to_str().context("path")?, ["exec", "--"]);
    exec.args(["curl", "-sS", "--fail", "--max-time", "15", "--cacert"])
        .arg(pki.ca_file())
        .args([
            "--resolve",
            &format!("demo.test:443:{}", host.v4),
            "https://demo.test/",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("== running: {exec:?}");
    let output = exec.output().context("running gateway exec")?;
    println!(
        "\n== curl (inside the sandbox cgroup) received:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    println!(
        "== gateway log:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("== exit status: {}", output.status);
    if output.status.success() {
        println!(
            "\nThe upstream saw the connection come from {} (the gateway's side of the veth),",
            host.host_v4
        );
        println!("and the gateway logged the original destination it recovered from ORIG_DST.");
    }
    Ok(output.status.success())
}
