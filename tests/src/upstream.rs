//! Upstream HTTPS servers (tests/py/upstream.py) running inside a test host's namespace.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    net::{NetNs, UpstreamHost},
    pki::{CertFiles, TestPki},
    process::Guarded,
    py_script,
};

/// A running upstream server, stopped on drop.
#[derive(Debug)]
pub struct Upstream {
    process: Guarded,
}

impl Upstream {
    /// Starts a server named `name` in `ns`, serving TLS on each `listen` (`ADDR:PORT`, IPv6 in
    /// brackets) and plain HTTP on each `plain`, and waits until it is listening.
    pub fn start(
        ns: &NetNs,
        name: &str,
        cert: &CertFiles,
        listen: &[String],
        plain: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_with(ns, name, cert, listen, plain, &[])
    }

    /// As [`Upstream::start`], with extra upstream.py flags (e.g. `--tls12-only`).
    pub fn start_with(
        ns: &NetNs,
        name: &str,
        cert: &CertFiles,
        listen: &[String],
        plain: &[String],
        flags: &[&str],
    ) -> anyhow::Result<Self> {
        let mut command = ns.exec("python3", [py_script("upstream.py")]);
        command
            .args(flags)
            .args(["--name", name])
            .arg("--cert")
            .arg(&cert.cert)
            .arg("--key")
            .arg(&cert.key);
        for addr in listen {
            command.args(["--listen", addr]);
        }
        for addr in plain {
            command.args(["--plain", addr]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting upstream.py")?;
        let stdout = child.stdout.take().context("upstream stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // The receiver is gone only if `start` stopped waiting for READY.
            tx.send(lines.next().and_then(Result::ok)).ok();
            // Keep draining, so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut upstream = Upstream {
            process: Guarded::new(format!("upstream {name}"), child, Duration::from_secs(5)),
        };
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Some(line)) if line == "READY" => Ok(upstream),
            other => {
                let status = upstream.process.try_wait().ok().flatten();
                bail!("upstream {name} did not start (got {other:?}, exit status {status:?})")
            }
        }
    }
}

/// A test host (its own namespace, on a veth) serving HTTPS as `name`: TLS on its IPv4 and
/// IPv6 addresses, port 443, and plain HTTP on IPv4 port 8443.
#[derive(Debug)]
pub struct Site {
    /// The name the upstream answers with.
    pub name: String,
    /// The host and its addresses.
    pub host: UpstreamHost,
    _server: Upstream,
}

impl Site {
    /// A site whose certificate `pki` issues for `names` and the host's addresses.
    pub fn start(pki: &TestPki, name: &str, names: &[&str]) -> anyhow::Result<Site> {
        Site::with_cert(
            name,
            |host| pki.issue(name, names, &[host.v4.into(), host.v6.into()]),
            &[],
        )
    }

    /// A site serving the certificate `cert` makes for the host, with extra upstream.py `flags`.
    pub fn with_cert(
        name: &str,
        cert: impl FnOnce(&UpstreamHost) -> anyhow::Result<CertFiles>,
        flags: &[&str],
    ) -> anyhow::Result<Site> {
        let host = UpstreamHost::new()?;
        let cert = cert(&host)?;
        let listen = [format!("{}:443", host.v4), format!("[{}]:443", host.v6)];
        let plain = [format!("{}:8443", host.v4)];
        let server = Upstream::start_with(&host.ns, name, &cert, &listen, &plain, flags)?;
        Ok(Site {
            name: name.into(),
            host,
            _server: server,
        })
    }

    /// `ip:port` (IPv6 in brackets) of the site.
    pub fn socket(&self, v6: bool, port: u16) -> String {
        match self.host.addr(v6) {
            std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
            ip => format!("{ip}:{port}"),
        }
    }
}
