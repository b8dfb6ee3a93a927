//! DNS fixtures: a hosts file the gateway's resolver answers test names from (`[dns]
//! hosts_file`, so no DNS server is needed), a resolv.conf for clients, and clients run with
//! that resolv.conf (in a private mount namespace, so the host's file is never touched).

use std::{net::IpAddr, path::PathBuf, process::Command, time::Duration};

use anyhow::Context as _;
use serde_json::Value;

use crate::{cmd, py_script, sandbox::SandboxCgroup};

/// How long one query of tests/py/dns_query.py may take (it waits 5 s for an answer).
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// A hosts file and a resolv.conf in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct DnsFixture {
    dir: tempfile::TempDir,
}

impl DnsFixture {
    /// `hosts` (address, name) as the gateway's hosts file; `nameserver` as the clients'
    /// resolver (any address: the sandbox's DNS goes to the gateway whatever it names).
    pub fn new(hosts: &[(IpAddr, &str)], nameserver: IpAddr) -> anyhow::Result<DnsFixture> {
        let dir = tempfile::tempdir().context("creating the DNS fixture directory")?;
        let fixture = DnsFixture { dir };
        let lines: String = hosts
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect();
        std::fs::write(fixture.hosts_file(), lines).context("writing the hosts file")?;
        std::fs::write(
            fixture.resolv_conf(),
            format!("nameserver {nameserver}\noptions attempts:1 timeout:3\n"),
        )
        .context("writing the resolv.conf")?;
        Ok(fixture)
    }

    /// The gateway's hosts file.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// The clients' resolv.conf.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.path().join("resolv.conf")
    }

    /// A `[dns]` table naming the hosts file, followed by `extra` lines of that table.
    pub fn config(&self, extra: &str) -> String {
        format!("[dns]\nhosts_file = {:?}\n{extra}", self.hosts_file())
    }

    /// `program args` with this resolv.conf over /etc/resolv.conf, in its own mount namespace.
    pub fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = cmd(
            "unshare",
            [
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
            ],
        );
        command.arg(self.resolv_conf()).arg(program).args(args);
        command
    }
}

/// Runs tests/py/dns_query.py with `args` in `cgroup` and returns its JSON line.
pub fn dns_query(cgroup: &SandboxCgroup, args: &[&str]) -> anyhow::Result<Value> {
    let mut command = cmd("python3", [py_script("dns_query.py")]);
    command.args(args);
    let output = cgroup.output_within(&mut command, QUERY_TIMEOUT)?;
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "dns_query.py {args:?} printed {text:?} (stderr: {})",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
