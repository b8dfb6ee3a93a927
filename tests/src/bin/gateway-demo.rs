//! `cargo xtask demo`: a sandboxed curl reaches a demo upstream through `gateway exec`.
//!
//! Sets up an upstream HTTPS server in its own network namespace (test CA made on the spot),
//! runs `gateway exec -- curl https://demo.test/`, shows what curl got and what the gateway
//! logged, and removes everything it created.

use std::process::{ExitCode, Stdio};

use anyhow::Context as _;
use gateway_tests::{cmd, gateway_bin, pki::TestPki, require_root, upstream::Site};

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
    let site =
        Site::start(&pki, "demo.test", &["demo.test"]).context("starting the demo upstream")?;
    let host = &site.host;
    println!(
        "== upstream: https://demo.test/ at {}:443 in netns {} (veth, host side {})",
        host.v4,
        host.ns.name(),
        host.host_v4
    );

    // The gateway must trust the demo upstream's private CA; everything else is the default
    // (the gateway CA lives under /var/lib/gateway, created on first use).
    let config = pki.dir().join("gateway.toml");
    std::fs::write(&config, pki.trusted_config())?;
    let curl_log = pki.dir().join("curl.log");
    let mut exec = cmd(gateway_bin()?.to_str().context("path")?, ["--config"]);
    exec.arg(&config).args(["exec", "--"]);
    // No --cacert: curl trusts the bundle gateway exec hands it (system roots + gateway CA).
    exec.args([
        "curl",
        "-sS",
        "-v",
        "--fail",
        "--max-time",
        "15",
        "--stderr",
    ])
    .arg(&curl_log)
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
    let curl_log = std::fs::read_to_string(&curl_log).unwrap_or_default();
    println!("== the certificate curl was shown:");
    let shown = ["SSL connection using", "subject:", "issuer:", "curl: ("];
    for line in curl_log
        .lines()
        .filter(|l| shown.iter().any(|s| l.contains(s)))
    {
        println!("{line}");
    }
    println!(
        "\n== gateway log:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("== exit status: {}", output.status);
    if output.status.success() {
        println!(
            "\nThe sandboxed curl was shown a certificate forged by the gateway's CA; the gateway"
        );
        println!(
            "verified the real upstream (its private CA is configured) and relayed the request."
        );
        println!(
            "The upstream saw the connection come from {} (the gateway's side of the veth),",
            host.host_v4
        );
        println!("and the gateway logged the original destination it recovered from ORIG_DST.");
    }
    Ok(output.status.success())
}
