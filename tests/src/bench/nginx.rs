//! The bench upstream: nginx (HTTP/1.1 and HTTP/2 over TLS) in a test host's namespace, tuned
//! for load (workers per core, unlimited keep-alive requests, many connections) and serving a
//! 1 KiB and a 64 MiB file. Its own config, so the tests' `crate::nginx` stays as it is.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{net::NetNs, pki::CertFiles};

/// Path of the small file, under the server root.
pub const SMALL: &str = "/files/1k";
/// Path of the large file.
pub const LARGE: &str = "/files/64m";
/// Size of the small file.
pub const SMALL_LEN: u64 = 1024;
/// Size of the large file.
pub const LARGE_LEN: u64 = 64 << 20;

/// A running nginx, stopped (by PID) on drop.
#[derive(Debug)]
pub struct BenchNginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl BenchNginx {
    /// Starts nginx in `ns` on `listen` with `cert`, and waits until it accepts connections.
    pub fn start(ns: &NetNs, cert: &CertFiles, listen: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files)?;
        std::fs::create_dir_all(dir.path().join("tmp"))?;
        write_file(&files.join("1k"), SMALL_LEN)?;
        write_file(&files.join("64m"), LARGE_LEN)?;
        let d = dir.path().display();
        // As many descriptors as the hard limit allows (raising it needs CAP_SYS_RESOURCE).
        let nofile = hard_nofile().clamp(1024, 65536);
        let listen_text = match listen {
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            SocketAddr::V4(a) => a.to_string(),
        };
        let conf = format!(
            r#"worker_processes auto;
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log;
daemon off;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
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
        listen {listen_text} ssl http2 backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = / {{ return 200 "nginx bench\n"; }}
        location /files/ {{ alias {d}/files/; }}
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
        let mut nginx = BenchNginx { child, dir };
        nginx.wait_listening(listen)?;
        Ok(nginx)
    }

    /// The server's directory (config, error log, files).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!("nginx exited ({status}): {}", self.error_log());
            }
            if Instant::now() > deadline {
                bail!("nginx not listening on {addr}: {}", self.error_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

fn write_file(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

/// The hard RLIMIT_NOFILE of this process (inherited by what it starts).
pub fn hard_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_max
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return 0;
        }
    }
    limit.rlim_cur
}

impl Drop for BenchNginx {
    fn drop(&mut self) {
        // nginx forks workers; SIGTERM to the master stops them all.
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
