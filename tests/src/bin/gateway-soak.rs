//! `cargo xtask soak`: a long mixed load (default 10 minutes; SOAK_SECONDS to change) of
//! intercepted, bypassed, refused and faulted connections from one sandbox, then the leak checks
//! of the load tests: descriptors and eBPF map entries back at their baseline, memory back near
//! it, and no connection that should have worked failed.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::bail;
use gateway_tests::{
    cmd, daemon::Daemon, pki::TestPki, py_script, require_root, sandbox::SandboxCgroup,
    upstream::Site,
};

/// Connections started per round, per kind.
const PER_ROUND: usize = 4;
/// Upper bound on rounds, whatever the duration.
const MAX_ROUNDS: usize = 100_000;

fn main() -> ExitCode {
    match soak() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("soak failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What each round starts, and whether it must succeed.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Intercept,
    Bypass,
    Refused,
    UpstreamReset,
    Unreachable,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Intercept,
        Kind::Bypass,
        Kind::Refused,
        Kind::UpstreamReset,
        Kind::Unreachable,
    ];

    fn must_succeed(self) -> bool {
        matches!(self, Kind::Intercept | Kind::Bypass)
    }
}

struct Rig {
    pki: TestPki,
    site: Site,
    daemon: Daemon,
    cgroup: SandboxCgroup,
}

impl Rig {
    fn command(&self, kind: Kind) -> Command {
        let curl = |ca: &Path, name: &str, ip: Ipv4Addr, path: &str| {
            let mut command = cmd(
                "curl",
                ["-sS", "--max-time", "20", "-o", "/dev/null", "--cacert"],
            );
            command.arg(ca).args([
                "--resolve",
                &format!("{name}:443:{ip}"),
                &format!("https://{name}{path}"),
            ]);
            command
        };
        let mut command = match kind {
            Kind::Intercept => curl(
                &self.daemon.ca_file(),
                "soak.test",
                self.site.host.v4,
                "/bytes/65536",
            ),
            Kind::Bypass => curl(&self.pki.ca_file(), "by.soak.test", self.site.host.v4, "/"),
            Kind::UpstreamReset => curl(
                &self.daemon.ca_file(),
                "soak.test",
                self.site.host.v4,
                "/reset",
            ),
            // The host side of the veth: a real address where nothing listens on 443.
            Kind::Unreachable => curl(
                &self.daemon.ca_file(),
                "soak.test",
                self.site.host.host_v4,
                "/",
            ),
            Kind::Refused => {
                let mut raw = cmd("python3", [py_script("client.py")]);
                raw.args([
                    "raw",
                    &self.site.host.v4.to_string(),
                    "443",
                    "474554202f20485454502f312e310d0a0d0a",
                    "5",
                ]);
                raw
            }
        };
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    }
}

fn soak() -> anyhow::Result<()> {
    require_root()?;
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(600);
    let pki = TestPki::new("gateway soak upstream CA")?;
    let site = Site::start(&pki, "soak.test", &["soak.test", "by.soak.test"])?;
    let cgroup = SandboxCgroup::new()?;
    let config = format!(
        "{}bypass = [\"by.soak.test\"]\nhello_timeout = \"2s\"\n",
        pki.trusted_config()
    );
    let daemon = Daemon::builder()
        .sandbox(cgroup.path().display().to_string())
        .config(&config)
        .args(["--connect-timeout", "1s", "--idle-timeout", "5s"])
        .start()?;
    let rig = Rig {
        pki,
        site,
        daemon,
        cgroup,
    };
    let (rss_before, fds_before) = rig.daemon.rss_kib_and_fds()?;
    println!(
        "soak: {seconds} s; daemon RSS {rss_before} KiB, {fds_before} descriptors at the start"
    );

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut started = [0usize; 5];
    let mut failed_must_succeed = 0usize;
    let mut peak_rss = rss_before;
    let mut rounds = 0;
    while Instant::now() < deadline && rounds < MAX_ROUNDS {
        rounds += 1;
        let mut children: Vec<(Kind, Child)> = Vec::new();
        for _ in 0..PER_ROUND {
            for (i, kind) in Kind::ALL.iter().enumerate() {
                children.push((*kind, rig.cgroup.spawn(None, &mut rig.command(*kind))?));
                started[i] += 1;
            }
        }
        for (kind, mut child) in children {
            let ok = child.wait()?.success();
            if kind.must_succeed() && !ok {
                failed_must_succeed += 1;
                eprintln!("soak: a {kind:?} connection failed");
            }
        }
        peak_rss = peak_rss.max(rig.daemon.rss_kib_and_fds()?.0);
        if rounds % 50 == 0 {
            let (rss, fds) = rig.daemon.rss_kib_and_fds()?;
            println!("soak: round {rounds}: RSS {rss} KiB, {fds} descriptors");
        }
    }
    let total: usize = started.iter().sum();
    println!(
        "soak: {rounds} rounds, {total} connections: {:?}",
        Kind::ALL.iter().zip(started).collect::<Vec<_>>()
    );

    // Quiescence: every connection logged, then the leak checks.
    let expected_logged = total;
    let quiet_by = Instant::now() + Duration::from_secs(30);
    while logged(&rig.daemon) < expected_logged && Instant::now() < quiet_by {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (rss_after, fds_after) = rig.daemon.rss_kib_and_fds()?;
    let orig_dst = rig.daemon.map_entries("orig_dst")?;
    let pending = rig.daemon.map_entries("pending")?;
    println!(
        "soak: logged {} of {expected_logged}; RSS KiB start {rss_before}, peak {peak_rss}, end {rss_after}; descriptors {fds_before} -> {fds_after}; ORIG_DST {orig_dst}, PENDING {pending}; failures that should have succeeded: {failed_must_succeed}",
        logged(&rig.daemon)
    );
    let mut problems = Vec::new();
    if failed_must_succeed > 0 {
        problems.push(format!(
            "{failed_must_succeed} intercepted/bypassed connections failed"
        ));
    }
    if fds_after != fds_before {
        problems.push(format!("descriptors {fds_before} -> {fds_after}"));
    }
    if orig_dst != 0 || pending != 0 {
        problems.push(format!(
            "map entries left: ORIG_DST {orig_dst}, PENDING {pending}"
        ));
    }
    if rss_after > rss_before + 16 * 1024 {
        problems.push(format!("RSS {rss_before} -> {rss_after} KiB"));
    }
    if logged(&rig.daemon) < expected_logged {
        problems.push("not every connection was logged".into());
    }
    if !problems.is_empty() {
        bail!("leak checks failed: {}", problems.join("; "));
    }
    println!("soak: ok");
    Ok(())
}

/// Connections the daemon logged the end of.
fn logged(daemon: &Daemon) -> usize {
    let log = daemon.summary();
    usize::try_from(log.count("connection closed") + log.count("connection failed"))
        .unwrap_or(usize::MAX)
}
