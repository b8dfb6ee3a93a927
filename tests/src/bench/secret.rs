//! The secret of the intercept + secret modes: the `[[secrets]]` table their daemons are started
//! with, its value and placeholder, and the check that such a daemon really takes the
//! HTTP-aware path (nginx receives the value where the client sent the placeholder).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{
    mode::{DOMAIN, Mode},
    rig::Rig,
};
use crate::sandbox::SandboxCgroup;

/// The secret's name; the sandbox is given it with `secret=BENCH`.
pub const NAME: &str = "BENCH";
/// The daemon's environment variable holding the value.
pub const VALUE_ENV: &str = "GATEWAY_BENCH_SECRET";
/// The value, a 40-byte test value.
pub const VALUE: &str = "bench-secret-0123456789abcdefghijklmnopq";
/// What clients send instead: the default placeholder, `GATEWAY_SECRET_<NAME>`.
pub const PLACEHOLDER: &str = "GATEWAY_SECRET_BENCH";

const _: () = assert!(VALUE.len() == 40);

/// The header clients send in the intercept + secret modes (and only there).
pub fn authorization() -> String {
    format!("Authorization: Bearer {PLACEHOLDER}")
}

/// The `[[secrets]]` table added to the daemon's config: the secret, allowed for [`DOMAIN`] and
/// its subdomains.
pub fn config() -> String {
    format!(
        "[[secrets]]\nname = {NAME:?}\nvalue_env = {VALUE_ENV:?}\nhosts = [{DOMAIN:?}, \
         \"*.{DOMAIN}\"]\n"
    )
}

/// One request to nginx's `/headers` with the placeholder, from `cgroup` in `mode` (its HTTP
/// version): nginx must have received the value (the HTTP-aware path substituted it), and the
/// client must have seen nginx's echo with the placeholder, never the value. Returns the
/// protocol nginx received the request over (e.g. `HTTP/2.0`).
pub fn check(rig: &Rig, cgroup: &SandboxCgroup, ca: &Path, mode: Mode) -> anyhow::Result<String> {
    let label = mode.label();
    let logged_before = rig.nginx.headers_log().lines().count();
    let host = mode.host();
    let version = if mode.h2 { "2" } else { "1.1" };
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--fail", "--max-time", "15", "--cacert"])
        .arg(ca)
        .args([
            if mode.h2 { "--http2" } else { "--http1.1" },
            "--resolve",
            &format!("{host}:443:{}", rig.host.v4),
            "-H",
            &authorization(),
            "-w",
            "%{http_version}",
            &format!("https://{host}/headers"),
        ]);
    let output = cgroup.output_within(&mut command, Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{label}: curl /headers with the placeholder: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if text.contains(VALUE) {
        bail!("{label}: the sandbox received the secret's value in nginx's echo");
    }
    let echo = format!("authorization=Bearer {PLACEHOLDER}\n{version}");
    if text != echo {
        bail!("{label}: curl /headers got {text:?}, expected {echo:?}");
    }
    // nginx writes the access-log line as the request ends, maybe just after curl has its
    // response.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = rig.nginx.headers_log();
        if let Some(line) = log.lines().nth(logged_before) {
            break line.to_owned();
        }
        if Instant::now() > deadline {
            bail!("{label}: nginx logged no /headers request");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut fields = line.splitn(3, ' ');
    let (protocol, uri, authorization) = (
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
    );
    if uri != "/headers" || authorization != format!("authorization=Bearer {VALUE}") {
        // Never the value in a message: say what arrived instead.
        let arrived = if authorization.contains(PLACEHOLDER) {
            "the placeholder (the plain byte relay, not the HTTP-aware path)"
        } else {
            "neither the value nor the placeholder"
        };
        bail!("{label}: nginx received {arrived} in Authorization ({protocol} {uri})");
    }
    Ok(protocol.to_owned())
}
