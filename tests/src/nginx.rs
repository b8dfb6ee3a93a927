//! An nginx upstream (HTTP/1.1 and HTTP/2 over TLS, and plain HTTP/1.1 on port 80 of the same
//! address) inside a test host's namespace, tuned for load (workers per core, unlimited
//! keep-alive requests, as many connections as descriptors).

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{net::NetNs, pki::CertFiles, process::Guarded};

/// The port nginx also serves plain HTTP on, same address and locations as its TLS listener.
pub const PLAIN_PORT: u16 = 80;

/// A running nginx, stopped on drop (SIGTERM to the master stops its workers too).
// Field order is drop order: nginx stops before its directory goes.
#[derive(Debug)]
pub struct Nginx {
    process: Guarded,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves `https://<listen>/` (body `nginx <name>\n`) and the files put in [`Nginx::files`],
    /// with HTTP/2 offered by ALPN; and the same as plain HTTP/1.1 on [`PLAIN_PORT`] of the
    /// same address.
    pub fn start(
        ns: &NetNs,
        name: &str,
        cert: &CertFiles,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("files"))?;
        std::fs::create_dir_all(dir.path().join("tmp"))?;
        let d = dir.path().display();
        let tls_listen = listen_text(listen);
        let plain_listen = listen_text(SocketAddr::new(listen.ip(), PLAIN_PORT));
        // As many descriptors as the hard limit allows (raising it needs CAP_SYS_RESOURCE).
        let nofile = crate::hard_nofile().clamp(1024, 65536);
        let conf = format!(
            r#"worker_processes auto;
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log;
daemon off;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    log_format headers '$server_protocol $request_uri authorization=$http_authorization';
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen {tls_listen} ssl http2 backlog=4096;
        listen {plain_listen} backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = / {{ return 200 "nginx {name}\n"; }}
        location /files/ {{ alias {d}/files/; }}
        location /headers {{
            access_log {d}/headers.log headers;
            return 200 "authorization=$http_authorization\n";
        }}
    }}
}}
"#,
            conns = nofile / 2,
            cert = cert.cert.display(),
            key = cert.key.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut command = ns.exec("nginx", ["-e"]);
        command
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx {
            process: Guarded::new("nginx", child, Duration::from_secs(5)),
            dir,
        };
        // nginx binds every listener before it serves any: the TLS one answering is enough.
        nginx.wait_listening(listen)?;
        Ok(nginx)
    }

    /// The directory served under /files/.
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// What `/headers` requests carried, one line each: `PROTOCOL URI authorization=VALUE`
    /// (what nginx received).
    pub fn headers_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("headers.log")).unwrap_or_default()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        error_log(self.dir.path())
    }

    fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.process.try_wait()? {
                bail!("nginx exited ({status}): {}", error_log(self.dir.path()));
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx not listening on {addr}: {}",
                    error_log(self.dir.path())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// An address as nginx's `listen` takes it (IPv6 in brackets, no scope).
fn listen_text(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    }
}

fn error_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
}
