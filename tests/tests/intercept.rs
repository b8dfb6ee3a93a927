//! TLS interception: real clients (curl, python, openssl) in a sandbox cgroup see certificates
//! forged by the gateway's CA and get the upstream's bytes; bypass, private CAs, verify-off,
//! large transfers, certificate generation under concurrency and hostile first bytes.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{
    cmd,
    daemon::Daemon,
    gateway_bin,
    net::UpstreamHost,
    nginx::Nginx,
    pki::TestPki,
    py_script, require_root,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::{Site, Upstream},
};
use serde_json::Value;

/// The site's IPv4 HTTPS address.
fn addr(site: &Site) -> String {
    site.socket(false, 443)
}

/// `curl -v` to https://<name><path> resolved to `site`, trusting `ca`.
fn curl(ca: &Path, site: &Site, name: &str, path: &str) -> Command {
    let mut command = cmd(
        "curl",
        ["-sS", "-v", "--fail", "--max-time", "30", "--cacert"],
    );
    command.arg(ca).args([
        "--resolve",
        &format!("{name}:443:{}", site.host.v4),
        &format!("https://{name}{path}"),
    ]);
    command
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The issuer line curl -v prints for the server certificate.
fn curl_issuer(output: &Output) -> String {
    stderr(output)
        .lines()
        .find_map(|line| {
            line.trim_start_matches('*')
                .trim()
                .strip_prefix("issuer:")
                .map(str::trim)
                .map(String::from)
        })
        .unwrap_or_else(|| panic!("no issuer in curl output: {}", stderr(output)))
}

struct Env {
    pki: TestPki,
    cgroup: SandboxCgroup,
}

impl Env {
    fn new() -> Env {
        require_root().unwrap();
        Env {
            pki: TestPki::new("gateway-tests upstream CA").unwrap(),
            cgroup: SandboxCgroup::new().unwrap(),
        }
    }

    fn daemon(&self, extra_config: &str) -> Daemon {
        let config = format!("{}{extra_config}", self.pki.trusted_config());
        Daemon::builder()
            .sandbox(self.cgroup.path().display().to_string())
            .config(&config)
            .start()
            .unwrap()
    }

    fn run(&self, command: &mut Command) -> Output {
        self.cgroup.output(None, command).unwrap()
    }
}

#[test]
fn curl_http1_sees_a_forged_certificate_and_the_upstream_body() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-a.test", &["up-a.test"]).unwrap();
    let mut daemon = env.daemon("");

    let mut request = curl(&daemon.ca_file(), &site, "up-a.test", "/");
    request.args(["--http1.1", "-o", "-", "-w", "\n%{http_version}"]);
    let output = env.run(&mut request);
    let text = stdout_ok(&output).unwrap();
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(json(body)["name"], "up-a.test");
    assert_eq!(version, "1.1");
    let issuer = curl_issuer(&output);
    assert!(issuer.contains("gateway local CA"), "issuer: {issuer}");
    assert!(
        stderr(&output).contains("subject: CN=up-a.test"),
        "{}",
        stderr(&output)
    );

    let line = daemon
        .wait_for("the intercepted connection", Duration::from_secs(10), |v| {
            v["message"] == "connection closed"
        })
        .unwrap();
    assert_eq!(line["mode"], "intercept", "{line}");
    assert_eq!(line["sni"], "up-a.test");
    assert_eq!(line["alpn"], "http/1.1");
    assert_eq!(line["orig_dst"], addr(&site));
}

#[test]
fn curl_http2_is_http2_end_to_end() {
    let env = Env::new();
    let host = UpstreamHost::new().unwrap();
    let cert = env.pki.issue("h2", &["h2.test"], &[]).unwrap();
    let _nginx = Nginx::start(
        &host.ns,
        "h2.test",
        &cert,
        SocketAddr::new(host.v4.into(), 443),
    )
    .unwrap();
    let mut daemon = env.daemon("");

    let mut request = cmd(
        "curl",
        [
            "-sS",
            "-v",
            "--fail",
            "--max-time",
            "30",
            "--http2",
            "-w",
            "\n%{http_version}",
            "--cacert",
        ],
    );
    request.arg(daemon.ca_file()).args([
        "--resolve",
        &format!("h2.test:443:{}", host.v4),
        "https://h2.test/",
    ]);
    let output = env.run(&mut request);
    let text = stdout_ok(&output).unwrap();
    assert_eq!(text, "nginx h2.test\n\n2", "{}", stderr(&output));
    assert!(curl_issuer(&output).contains("gateway local CA"));
    let line = daemon
        .wait_for("the intercepted connection", Duration::from_secs(10), |v| {
            v["message"] == "connection closed"
        })
        .unwrap();
    assert_eq!(line["alpn"], "h2", "{line}");
}

#[test]
fn python_urllib_trusts_the_exported_ca_and_gets_an_ip_certificate_without_sni() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-a.test", &["up-a.test"]).unwrap();
    let mut daemon = env.daemon("");

    // `gateway ca export`, as an operator would hand the CA to a sandbox image.
    let export = cmd(gateway_bin().unwrap().to_str().unwrap(), ["ca", "export"])
        .env("GATEWAY_HOME", daemon.home())
        .output()
        .unwrap();
    let exported = stdout_ok(&export).unwrap();
    assert_eq!(exported, fs::read_to_string(daemon.ca_file()).unwrap());
    let ca = daemon.home().join("exported.pem");
    fs::write(&ca, exported).unwrap();

    // An IP literal URL: no SNI, so the forged certificate carries the IP.
    let mut client = cmd("python3", [py_script("client.py")]);
    client
        .args(["urllib", &format!("https://{}/", site.host.v4), "--cafile"])
        .arg(&ca);
    let result = json(&stdout_ok(&env.run(&mut client)).unwrap());
    assert_eq!(result["status"], 200);
    assert_eq!(json(result["body"].as_str().unwrap())["name"], "up-a.test");
    assert_eq!(
        result["issuer"]["commonName"], "gateway local CA",
        "{result}"
    );
    assert_eq!(
        result["subject_alt_names"],
        serde_json::json!([["IP Address", site.host.v4.to_string()]])
    );
    let line = daemon
        .wait_for("the intercepted connection", Duration::from_secs(10), |v| {
            v["message"] == "connection closed"
        })
        .unwrap();
    assert_eq!(line["sni"], "", "{line}");
    assert_eq!(line["mode"], "intercept");
}

fn openssl_s_client(env: &Env, daemon: &Daemon, site: &Site, version_flag: &str) -> String {
    let mut client = cmd(
        "openssl",
        [
            "s_client",
            version_flag,
            "-connect",
            &addr(site),
            "-servername",
            &site.name,
            "-CAfile",
        ],
    );
    client.arg(daemon.ca_file()).stdin(Stdio::null());
    stdout_ok(&env.run(&mut client)).unwrap()
}

#[test]
fn openssl_s_client_tls12_and_tls13_see_the_gateway_issuer() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-a.test", &["up-a.test"]).unwrap();
    let daemon = env.daemon("");
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = openssl_s_client(&env, &daemon, &site, flag);
        assert!(out.contains(&format!("New, {protocol}")), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(out.contains("issuer=CN = gateway local CA"), "{out}");
    }
}

/// Sessions resume on both legs: a sandbox client that kept its session (`-sess_out`, then
/// `-sess_in`) is resumed by the gateway, over TLS 1.2 and 1.3; and the gateway's second
/// upstream connection for the same name resumes the session the upstream gave the first (the
/// upstream reports `session_reused`), although each came from a different client process.
#[test]
fn tls_sessions_resume_towards_the_sandbox_and_the_upstream() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-a.test", &["up-a.test"]).unwrap();
    let daemon = env.daemon("");
    let session = tempfile::tempdir().unwrap();
    // A request, so a TLS 1.3 client reads the tickets that follow the handshake.
    let request = session.path().join("request");
    fs::write(&request, "GET / HTTP/1.0\r\n\r\n").unwrap();
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let file = session.path().join(protocol);
        let s_client = |session_flag: &str| {
            let mut client = cmd(
                "openssl",
                [
                    "s_client",
                    flag,
                    "-connect",
                    &addr(&site),
                    "-servername",
                    &site.name,
                    // Read until the server closes (after the answer), tickets included.
                    "-ign_eof",
                    session_flag,
                ],
            );
            client
                .arg(&file)
                .arg("-CAfile")
                .arg(daemon.ca_file())
                .stdin(fs::File::open(&request).unwrap());
            stdout_ok(&env.run(&mut client)).unwrap()
        };
        let first = s_client("-sess_out");
        assert!(first.contains(&format!("New, {protocol}")), "{first}");
        let second = s_client("-sess_in");
        assert!(
            second.contains(&format!("Reused, {protocol}")),
            "the gateway did not resume the sandbox's session: {second}"
        );
        assert!(second.contains("issuer=CN = gateway local CA"), "{second}");
    }

    let reused: Vec<Value> = (0..3)
        .map(|_| {
            let output = env.run(&mut curl(&daemon.ca_file(), &site, &site.name, "/"));
            json(&stdout_ok(&output).unwrap())["session_reused"].clone()
        })
        .collect();
    // The first of these may already resume a session from the s_client runs above.
    assert_eq!(
        reused[1..],
        [Value::Bool(true), Value::Bool(true)],
        "the gateway's upstream connections did not resume: {reused:?}"
    );
}

#[test]
fn bypassed_names_see_the_upstream_certificate() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-b.test", &["up-b.test", "api.up-b.test"]).unwrap();
    let mut daemon = env.daemon("bypass = [\"*.UP-B.test.\"]\n");

    // Trusting only the upstream's own CA works: nothing in between re-signs.
    for name in ["up-b.test", "api.up-b.test"] {
        let output = env.run(&mut curl(&env.pki.ca_file(), &site, name, "/"));
        assert_eq!(json(&stdout_ok(&output).unwrap())["name"], "up-b.test");
        assert!(
            curl_issuer(&output).contains("gateway-tests upstream CA"),
            "{}",
            stderr(&output)
        );
    }
    let lines = daemon.messages("connection closed");
    daemon
        .wait_until("two bypassed connections", Duration::from_secs(10), |d| {
            d.messages("connection closed").len() == 2
        })
        .unwrap();
    for line in lines
        .iter()
        .chain(daemon.messages("connection closed").iter())
    {
        assert_eq!(line["mode"], "bypass", "{line}");
    }
    assert!(daemon.messages("certificate generated").is_empty());
}

#[test]
fn private_ca_upstreams_fail_closed_until_their_ca_is_scoped_to_them() {
    let env = Env::new();
    let private = TestPki::new("private upstream CA").unwrap();
    let site = Site::start(&private, "priv.test", &["priv.test"]).unwrap();

    // Not configured: the client gets an alert, never a working connection; the log says why.
    let mut daemon = env.daemon("");
    let ca = daemon.ca_file();
    let output = env.run(&mut curl(&ca, &site, "priv.test", "/"));
    assert!(!output.status.success());
    assert_eq!(output.status.code(), Some(35), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("alert handshake failure"),
        "{}",
        stderr(&output)
    );
    let line = daemon
        .wait_for("the refused upstream", Duration::from_secs(10), |v| {
            v["message"] == "connection failed"
        })
        .unwrap();
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("upstream TLS") && error.contains("UnknownIssuer"),
        "{line}"
    );
    drop(daemon);

    // The private CA scoped to that name.
    let scoped = format!(
        "[[tls.upstream]]\npattern = \"priv.test\"\nextra_ca_files = [{:?}]\n",
        private.ca_file()
    );
    let daemon = env.daemon(&scoped);
    let output = env.run(&mut curl(&daemon.ca_file(), &site, "priv.test", "/"));
    assert_eq!(json(&stdout_ok(&output).unwrap())["name"], "priv.test");
}

#[test]
fn verify_off_applies_only_to_its_pattern() {
    let env = Env::new();
    let site = Site::with_cert(
        "self.test",
        |_| env.pki.self_signed("self", &["a.self.test", "other.test"]),
        &[],
    )
    .unwrap();
    let mut daemon = env.daemon("[[tls.upstream]]\npattern = \"*.self.test\"\nverify = false\n");

    let output = env.run(&mut curl(&daemon.ca_file(), &site, "a.self.test", "/"));
    assert_eq!(json(&stdout_ok(&output).unwrap())["name"], "self.test");

    let line = daemon
        .wait_for("the unverified connection", Duration::from_secs(10), |v| {
            v["message"] == "connection closed"
        })
        .unwrap();
    assert_eq!(
        line["mode"], "intercept-unverified",
        "the log says verification was off: {line}"
    );

    let output = env.run(&mut curl(&daemon.ca_file(), &site, "other.test", "/"));
    assert_eq!(output.status.code(), Some(35), "{}", stderr(&output));
    daemon
        .wait_for("the refused upstream", Duration::from_secs(10), |v| {
            v["message"] == "connection failed" && v["sni"] == "other.test"
        })
        .unwrap();
}

fn sha256_file(path: &Path) -> String {
    let out = stdout_ok(&cmd("sha256sum", [path]).output().unwrap()).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
fn large_upload_and_download_arrive_intact() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-a.test", &["up-a.test"]).unwrap();
    let daemon = env.daemon("");
    let dir = tempfile::tempdir().unwrap();

    // 1 MiB POST: the upstream hashes what it received.
    let upload = dir.path().join("upload.bin");
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&upload, &data).unwrap();
    let mut post = curl(&daemon.ca_file(), &site, "up-a.test", "/sha256");
    post.arg("--data-binary")
        .arg(format!("@{}", upload.display()))
        .args(["-H", "Content-Type: application/octet-stream"]);
    let answer = json(&stdout_ok(&env.run(&mut post)).unwrap());
    assert_eq!(answer["length"], 1024 * 1024);
    assert_eq!(answer["sha256"], sha256_file(&upload).as_str());

    // 64 MiB GET: the upstream says the hash of what it sent.
    let download = dir.path().join("download.bin");
    let headers = dir.path().join("headers.txt");
    let mut get = curl(
        &daemon.ca_file(),
        &site,
        "up-a.test",
        &format!("/bytes/{}", 64 * 1024 * 1024),
    );
    get.arg("-o").arg(&download).arg("-D").arg(&headers);
    stdout_ok(&env.run(&mut get)).unwrap();
    let headers = fs::read_to_string(&headers).unwrap();
    let sent = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-content-sha256:")
                .map(|v| v.trim().to_string())
        })
        .unwrap();
    assert_eq!(fs::metadata(&download).unwrap().len(), 64 * 1024 * 1024);
    assert_eq!(sha256_file(&download), sent);
}

#[test]
fn a_hundred_parallel_first_connections_generate_one_certificate() {
    let env = Env::new();
    let site = Site::start(&env.pki, "fresh.test", &["fresh.test"]).unwrap();
    let mut daemon = env.daemon("");
    let mut client = cmd("python3", [py_script("client.py")]);
    client
        .args(["parallel", "--count", "100", "--cafile"])
        .arg(daemon.ca_file());
    client.args(["--target", &format!("fresh.test={}", addr(&site))]);
    let results = json(&stdout_ok(&env.run(&mut client)).unwrap());
    for result in results.as_array().unwrap() {
        assert_eq!(result["answered_by"], "fresh.test", "{result}");
    }
    daemon
        .wait_until("100 connections logged", Duration::from_secs(20), |d| {
            d.messages("connection closed").len() == 100
        })
        .unwrap();
    let generated: Vec<_> = daemon
        .messages("certificate generated")
        .into_iter()
        .filter(|v| v["subject"] == "fresh.test")
        .collect();
    assert_eq!(generated.len(), 1, "{generated:#?}");
}

/// Starts `client.py raw` in the sandbox, in the background.
fn raw_client(env: &Env, daemon_addr: &str, hex: &str, wait: f64) -> std::process::Child {
    let (host, port) = daemon_addr.rsplit_once(':').unwrap();
    let mut command = cmd("python3", [py_script("client.py")]);
    command
        .args(["raw", host, port, hex, &wait.to_string()])
        .stdout(Stdio::piped());
    env.cgroup.spawn(None, &mut command).unwrap()
}

#[test]
fn garbage_silence_and_truncated_hellos_close_only_their_own_connection() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-a.test", &["up-a.test"]).unwrap();
    let mut daemon = env.daemon("hello_timeout = \"1500ms\"\n");
    let hello = include_bytes!("../../gateway-proto/testdata/client-hello/curl-h2-sni.bin");
    let truncated: String = hello[..60].iter().map(|b| format!("{b:02x}")).collect();
    let garbage: String = b"GET / HTTP/1.1\r\nHost: up-a.test\r\n\r\n"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let started = Instant::now();
    let silent = raw_client(&env, &addr(&site), "", 10.0);
    let partial = raw_client(&env, &addr(&site), &truncated, 10.0);
    let junk = raw_client(&env, &addr(&site), &garbage, 10.0);
    // Meanwhile a real client is served as usual.
    let output = env.run(&mut curl(&daemon.ca_file(), &site, "up-a.test", "/"));
    assert_eq!(json(&stdout_ok(&output).unwrap())["name"], "up-a.test");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the good client waited for the bad ones"
    );

    let junk = json(&String::from_utf8_lossy(
        &junk.wait_with_output().unwrap().stdout,
    ));
    assert_eq!(junk["closed_by_peer"], true, "{junk}");
    assert!(junk["elapsed"].as_f64().unwrap() < 1.0, "{junk}");
    assert_eq!(junk["received_hex"], "");
    for child in [silent, partial] {
        let result = json(&String::from_utf8_lossy(
            &child.wait_with_output().unwrap().stdout,
        ));
        assert_eq!(result["closed_by_peer"], true, "{result}");
        let elapsed = result["elapsed"].as_f64().unwrap();
        assert!(
            (1.3..5.0).contains(&elapsed),
            "closed after {elapsed}s, expected the 1.5 s hello timeout"
        );
    }
    daemon
        .wait_until("three failures logged", Duration::from_secs(10), |d| {
            d.messages("connection failed").len() == 3
        })
        .unwrap();
    let errors: Vec<String> = daemon
        .messages("connection failed")
        .iter()
        .map(|v| v["error"].as_str().unwrap().to_string())
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("not TLS")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no ClientHello within 1.5s (0 bytes received)")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no ClientHello within 1.5s (60 bytes received)")),
        "{errors:?}"
    );
    // Still serving.
    let output = env.run(&mut curl(&daemon.ca_file(), &site, "up-a.test", "/"));
    assert!(output.status.success());
}

#[test]
fn ca_path_and_export_and_half_configured_ca() {
    let home = tempfile::tempdir().unwrap();
    let gateway = |args: &[&str], config: Option<&str>| {
        let mut command = cmd(gateway_bin().unwrap().to_str().unwrap(), args);
        command.env("GATEWAY_HOME", home.path());
        if let Some(config) = config {
            let path = home.path().join("gateway.toml");
            fs::write(&path, config).unwrap();
            command.arg("--config").arg(path);
        }
        command.output().unwrap()
    };
    let path = stdout_ok(&gateway(&["ca", "path"], None)).unwrap();
    assert_eq!(
        path.trim(),
        home.path().join("tls/ca.crt").display().to_string()
    );
    let pem = stdout_ok(&gateway(&["ca", "export"], None)).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(pem, fs::read_to_string(path.trim()).unwrap());
    let key = home.path().join("tls/ca.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Exported again: the same CA, not a new one.
    assert_eq!(stdout_ok(&gateway(&["ca", "export"], None)).unwrap(), pem);

    let half = gateway(&["ca", "export"], Some("[tls]\nca_cert = \"/etc/x.crt\"\n"));
    assert!(!half.status.success());
    let err = stderr(&half);
    assert!(
        err.contains("tls.ca_cert") && err.contains("tls.ca_key") && err.contains("gateway.toml"),
        "{err}"
    );
}

#[test]
fn tls12_only_upstreams_and_tls13_clients_meet_through_the_gateway() {
    let env = Env::new();
    let site = Site::with_cert(
        "old.test",
        |_| env.pki.issue("old", &["old.test"], &[]),
        &["--tls12-only"],
    )
    .unwrap();
    let daemon = env.daemon("");
    let mut request = curl(&daemon.ca_file(), &site, "old.test", "/");
    request.arg("--tlsv1.3");
    let output = env.run(&mut request);
    let body = json(&stdout_ok(&output).unwrap());
    assert_eq!(body["tls_version"], "TLSv1.2", "the upstream leg");
    assert!(
        stderr(&output).contains("TLSv1.3"),
        "the client leg: {}",
        stderr(&output)
    );
}

#[test]
fn plain_tcp_is_refused_by_default_and_relayed_when_configured() {
    let env = Env::new();
    let host = UpstreamHost::new().unwrap();
    let cert = env.pki.issue("plain", &["plain.test"], &[]).unwrap();
    let _server = Upstream::start(
        &host.ns,
        "plain.test",
        &cert,
        &[],
        &[format!("{}:443", host.v4)],
    )
    .unwrap();
    let url = format!("http://{}:443/", host.v4);
    // A confined command is used once: its pre-exec step holds the cgroup's descriptor.
    let request = || cmd("curl", ["-sS", "--max-time", "10", &url]);

    let mut daemon = env.daemon("");
    let refused = env.run(&mut request());
    assert!(
        !refused.status.success(),
        "plain HTTP got through: {refused:?}"
    );
    let line = daemon
        .wait_for("the refusal", Duration::from_secs(10), |v| {
            v["message"] == "connection failed"
        })
        .unwrap();
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("plain_tcp = \"refuse\""),
        "{line}"
    );
    drop(daemon);

    let mut daemon = env.daemon("plain_tcp = \"relay\"\n");
    let body = json(&stdout_ok(&env.run(&mut request())).unwrap());
    assert_eq!(body["name"], "plain.test");
    let line = daemon
        .wait_for("the relay", Duration::from_secs(10), |v| {
            v["message"] == "connection closed"
        })
        .unwrap();
    assert_eq!(line["mode"], "plain", "{line}");
}

#[test]
fn an_sni_that_cannot_be_a_certificate_name_fails_alone() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-a.test", &["up-a.test"]).unwrap();
    let mut daemon = env.daemon("");
    let mut client = cmd(
        "openssl",
        [
            "s_client",
            "-connect",
            &addr(&site),
            "-servername",
            "snowman.☃",
        ],
    );
    client.stdin(Stdio::null());
    let output = env.run(&mut client);
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    daemon
        .wait_for("the failure", Duration::from_secs(10), |v| {
            v["message"] == "connection failed"
        })
        .unwrap();
    let output = env.run(&mut curl(&daemon.ca_file(), &site, "up-a.test", "/"));
    assert!(output.status.success(), "{:#?}", daemon.logs());
    let output = env.run(&mut curl(&daemon.ca_file(), &site, "up-a.test", "/"));
    assert_eq!(json(&stdout_ok(&output).unwrap())["name"], "up-a.test");
}
