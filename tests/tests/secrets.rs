//! Secrets: the sandbox holds placeholders; the gateway puts the real value on the wire only to
//! the hosts a secret is allowed for. Real clients in a sandbox cgroup; an upstream in a test
//! namespace records what it received.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use base64::Engine as _;
use gateway_tests::{
    cmd,
    daemon::Daemon,
    gateway_bin,
    pki::TestPki,
    py_script, require_root,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::Site,
};
use serde_json::Value;

const OPENAI_VALUE: &str = "sk-live-OPENAI-0123456789abcdef";
const GITHUB_VALUE: &str = "ghp_GITHUB_fedcba9876543210";
const OPENAI: &str = "GATEWAY_SECRET_OPENAI";
const GITHUB: &str = "GATEWAY_SECRET_GITHUB";

/// A sandbox, an upstream answering for api.openai.test, api.github.test and free.test that
/// records every request, and a daemon with two secrets.
struct Env {
    /// Keeps the test CA (the daemon trusts its files) until the end.
    _pki: TestPki,
    cgroup: SandboxCgroup,
    site: Site,
    record: PathBuf,
    dir: tempfile::TempDir,
    daemon: Daemon,
}

impl Env {
    fn new(rust_log: &str) -> Env {
        require_root().unwrap();
        let pki = TestPki::new("gateway-tests upstream CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record.jsonl");
        std::fs::write(&record, "").unwrap();
        let names = ["api.openai.test", "api.github.test", "free.test"];
        let site = Site::with_cert(
            "secrets.test",
            |host| pki.issue("secrets", &names, &[host.v4.into()]),
            &["--record", record.to_str().unwrap()],
        )
        .unwrap();
        let github_file = dir.path().join("github");
        std::fs::write(&github_file, format!("{GITHUB_VALUE}\n")).unwrap();
        let cgroup = SandboxCgroup::new().unwrap();
        let config = format!(
            "{trusted}\
             [[secrets]]\nname = \"OPENAI\"\nvalue_env = \"GW_TEST_OPENAI\"\nhosts = [\"api.openai.test\"]\n\
             substitute = {{ headers = true, basic_auth = true, query = true, body = true }}\n\
             [[secrets]]\nname = \"GITHUB\"\nvalue_file = {github:?}\nhosts = [\"*.github.test\"]\n",
            trusted = pki.trusted_config(),
            github = github_file.display().to_string(),
        );
        let daemon = Daemon::builder()
            .sandbox(format!(
                "{},secret=OPENAI,secret=GITHUB",
                cgroup.path().display()
            ))
            .config(&config)
            .env("GW_TEST_OPENAI", OPENAI_VALUE)
            .rust_log(rust_log)
            .start()
            .unwrap();
        Env {
            _pki: pki,
            cgroup,
            site,
            record,
            dir,
            daemon,
        }
    }

    fn ip(&self) -> IpAddr {
        self.site.host.v4.into()
    }

    /// curl to `https://NAME/PATH`, pinned to the upstream, trusting the gateway's CA.
    fn curl(&self, name: &str, path: &str) -> Command {
        let mut command = cmd(
            "curl",
            [
                "-sS",
                "--max-time",
                "15",
                "--cacert",
                self.daemon.ca_file().to_str().unwrap(),
                "--resolve",
                &format!("{name}:443:{}", self.ip()),
                "-w",
                "\n%{http_code}",
            ],
        );
        command.arg(format!("https://{name}{path}"));
        command
    }

    fn run(&self, command: &mut Command) -> Output {
        self.cgroup.output(None, command).unwrap()
    }

    /// (body, status) of a curl run.
    fn fetch(&self, command: &mut Command) -> (String, u16) {
        let text = stdout_ok(&self.run(command)).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (body.to_owned(), status.parse().unwrap())
    }

    /// Every request the upstream received so far.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The one request the upstream received for `path`.
    fn received_for(&self, path: &str) -> Value {
        let matching: Vec<Value> = self
            .received()
            .into_iter()
            .filter(|r| r["path"].as_str().unwrap().starts_with(path))
            .collect();
        assert_eq!(matching.len(), 1, "requests for {path}: {matching:#?}");
        matching.into_iter().next().unwrap()
    }

    fn tls_client(&self, args: &[&str]) -> Value {
        let mut command = cmd("python3", [py_script("tls_client.py").to_str().unwrap()]);
        let output = self.run(command.args(args));
        serde_json::from_str(stdout_ok(&output).unwrap().trim()).unwrap()
    }
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap())
}

#[test]
fn a_bearer_placeholder_reaches_its_host_as_the_value_and_the_echo_is_scrubbed() {
    let mut env = Env::new("info");
    let mut request = env.curl("api.openai.test", "/headers?bearer");
    request.args([
        "--compressed",
        "-H",
        &format!("Authorization: Bearer {OPENAI}"),
    ]);
    let (body, status) = env.fetch(&mut request);
    assert_eq!(status, 200, "{body}");
    let received = env.received_for("/headers?bearer");
    assert_eq!(
        header(&received, "authorization"),
        Some(format!("Bearer {OPENAI_VALUE}").as_str())
    );
    // No compressed answer is asked for: an echoed value in one could not be scrubbed.
    assert_eq!(header(&received, "accept-encoding"), None);
    // The upstream echoed the header in its body: the sandbox sees the placeholder.
    assert!(body.contains(&format!("Bearer {OPENAI}")), "{body}");
    assert!(!body.contains(OPENAI_VALUE), "{body}");
    let line = env
        .daemon
        .wait_for("the request line", Duration::from_secs(10), |v| {
            v["message"] == "http request" && v["host"] == "api.openai.test"
        })
        .unwrap();
    assert_eq!(line["status"], 200);
}

#[test]
fn a_placeholder_for_another_host_is_refused_or_goes_on_unreplaced() {
    let mut env = Env::new("info");
    // To a host of another secret (an HTTP-aware one): a 403 naming the secret and the host.
    let mut elsewhere = env.curl("api.github.test", "/headers?stolen");
    elsewhere.args(["-H", &format!("Authorization: Bearer {OPENAI}")]);
    let (body, status) = env.fetch(&mut elsewhere);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("secret OPENAI may not be sent to api.github.test"),
        "{body}"
    );
    assert!(env.received().is_empty(), "{:#?}", env.received());
    let warning = env
        .daemon
        .wait_for("the violation", Duration::from_secs(10), |v| {
            v["message"] == "secret violation"
        })
        .unwrap();
    assert_eq!(warning["secret"], "OPENAI");
    assert_eq!(warning["host"], "api.github.test");

    // To a host no secret may go to: relayed as bytes, the placeholder never replaced.
    let mut free = env.curl("free.test", "/headers?free");
    free.args(["-H", &format!("Authorization: Bearer {OPENAI}")]);
    let (_, status) = env.fetch(&mut free);
    assert_eq!(status, 200);
    let received = env.received_for("/headers?free");
    assert_eq!(
        header(&received, "authorization"),
        Some(format!("Bearer {OPENAI}").as_str())
    );
}

#[test]
fn basic_auth_query_and_json_body_are_substituted() {
    let env = Env::new("info");
    let mut basic = env.curl("api.openai.test", "/headers?basic");
    basic.args(["-u", &format!("user:{OPENAI}")]);
    assert_eq!(env.fetch(&mut basic).1, 200);
    let authorization = header(&env.received_for("/headers?basic"), "authorization")
        .unwrap()
        .to_owned();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(authorization.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        format!("user:{OPENAI_VALUE}")
    );

    let mut query = env.curl("api.openai.test", &format!("/headers?key={OPENAI}&x=1"));
    assert_eq!(env.fetch(&mut query).1, 200);
    assert_eq!(
        env.received_for("/headers?key=")["path"],
        format!("/headers?key={OPENAI_VALUE}&x=1")
    );

    let json = format!("{{\"api_key\": \"{OPENAI}\", \"n\": 1}}");
    let mut post = env.curl("api.openai.test", "/echo");
    post.args([
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &json,
    ]);
    let (echo, status) = env.fetch(&mut post);
    assert_eq!(status, 200);
    assert_eq!(
        env.received_for("/echo")["body"],
        format!("{{\"api_key\": \"{OPENAI_VALUE}\", \"n\": 1}}")
    );
    // The echoed body is scrubbed back to the placeholder.
    assert_eq!(echo, json);
}

#[test]
fn a_placeholder_split_across_chunks_is_substituted() {
    let env = Env::new("info");
    let ip = env.ip().to_string();
    let ca = env.daemon.ca_file();
    let (head, tail) = OPENAI.split_at(9);
    let result = env.tls_client(&[
        "chunked",
        &ip,
        "443",
        "api.openai.test",
        ca.to_str().unwrap(),
        "/sha256",
        &format!("{{\"k\": \"{head}"),
        &format!("{tail}\", \"filler\": \"{}\"}}", "x".repeat(3000)),
    ]);
    assert_eq!(result["status"], 200, "{result}");
    let body = env.received_for("/sha256")["body"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        body.starts_with(&format!("{{\"k\": \"{OPENAI_VALUE}\"")),
        "{body}"
    );
    assert!(!body.contains(OPENAI));
}

#[test]
fn three_pipelined_requests_on_one_connection_are_each_substituted() {
    let env = Env::new("info");
    let ip = env.ip().to_string();
    let ca = env.daemon.ca_file();
    let result = env.tls_client(&[
        "pipeline",
        &ip,
        "443",
        "api.github.test",
        ca.to_str().unwrap(),
        "3",
        "/headers?pipelined",
        &format!("X-Token: {GITHUB}"),
    ]);
    let responses = result.as_array().unwrap();
    assert_eq!(responses.len(), 3, "{result}");
    assert!(responses.iter().all(|r| r["status"] == 200), "{result}");
    let received: Vec<Value> = env
        .received()
        .into_iter()
        .filter(|r| r["path"] == "/headers?pipelined")
        .collect();
    assert_eq!(received.len(), 3);
    for request in &received {
        assert_eq!(header(request, "x-token"), Some(GITHUB_VALUE));
    }
}

#[test]
fn a_host_header_other_than_the_sni_is_refused() {
    let env = Env::new("info");
    let mut fronted = env.curl("api.openai.test", "/headers?fronted");
    fronted.args(["-H", "Host: free.test"]);
    let (body, status) = env.fetch(&mut fronted);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("free.test"), "{body}");
    assert!(env.received().is_empty());
}

#[test]
fn values_never_reach_the_log_and_rotate_on_sighup() {
    let mut env = Env::new("trace");
    let mut bearer = env.curl("api.github.test", "/headers?before");
    bearer.args(["-H", &format!("Authorization: token {GITHUB}")]);
    assert_eq!(env.fetch(&mut bearer).1, 200);
    let mut stolen = env.curl("api.github.test", "/headers?stolen");
    stolen.args(["-H", &format!("Authorization: Bearer {OPENAI}")]);
    assert_eq!(env.fetch(&mut stolen).1, 403);

    // Rotation: a new value in the file, SIGHUP, and new requests carry it.
    let rotated = "ghp_ROTATED_00112233445566";
    std::fs::write(env.dir.path().join("github"), rotated).unwrap();
    let pid = nix::unistd::Pid::from_raw(env.daemon.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    env.daemon
        .wait_for("the reload", Duration::from_secs(10), |v| {
            v["message"] == "secret values reloaded"
        })
        .unwrap();
    let mut after = env.curl("api.github.test", "/headers?after");
    after.args(["-H", &format!("Authorization: token {GITHUB}")]);
    assert_eq!(env.fetch(&mut after).1, 200);
    assert_eq!(
        header(&env.received_for("/headers?after"), "authorization"),
        Some(format!("token {rotated}").as_str())
    );

    let logs = env.daemon.logs();
    assert!(logs.len() > 50, "trace logging is on: {} lines", logs.len());
    let text = serde_json::to_string(&logs).unwrap();
    for value in [OPENAI_VALUE, GITHUB_VALUE, rotated] {
        assert!(
            !text.contains(value),
            "a secret value is in the daemon's log"
        );
    }
}

#[test]
fn plain_http_never_carries_a_value() {
    let env = Env::new("info");
    // The upstream's plain HTTP port (8443) made an HTTP port of a second sandbox.
    let cgroup = SandboxCgroup::new().unwrap();
    let config = "[[secrets]]\nname = \"OPENAI\"\nvalue_env = \"GW_TEST_OPENAI\"\n\
                  hosts = [\"api.openai.test\"]\n";
    let daemon = Daemon::builder()
        .sandbox(format!(
            "{},http-port=8443,secret=OPENAI",
            cgroup.path().display()
        ))
        .config(config)
        .env("GW_TEST_OPENAI", OPENAI_VALUE)
        .start()
        .unwrap();
    let mut request = cmd(
        "curl",
        [
            "-sS",
            "--max-time",
            "15",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Authorization: Bearer {OPENAI}"),
            "--resolve",
            &format!("api.openai.test:8443:{}", env.ip()),
            "http://api.openai.test:8443/headers?plain",
        ],
    );
    let text = stdout_ok(&cgroup.output(None, &mut request).unwrap()).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("over plain HTTP"), "{body}");
    assert!(env.received().is_empty());
    drop(daemon);
}

#[test]
fn exec_hands_the_command_the_placeholder_never_the_value() {
    require_root().unwrap();
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[[secrets]]\nname = \"OPENAI\"\nvalue_env = \"OPENAI_API_KEY\"\nenv = \"OPENAI_API_KEY\"\n\
         hosts = [\"api.openai.test\"]\n",
    )
    .unwrap();
    let output = cmd(
        gateway_bin().unwrap().to_str().unwrap(),
        ["exec", "--config"],
    )
    .arg(&config)
    .args([
        "--secret",
        "OPENAI",
        "--",
        "sh",
        "-c",
        "echo \"$OPENAI_API_KEY\"; env",
    ])
    .env("GATEWAY_HOME", home.path())
    .env("OPENAI_API_KEY", OPENAI_VALUE)
    .output()
    .unwrap();
    let stdout = stdout_ok(&output).unwrap();
    assert_eq!(stdout.lines().next(), Some(OPENAI));
    assert!(!stdout.contains(OPENAI_VALUE), "the command saw the value");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(OPENAI_VALUE));
}
