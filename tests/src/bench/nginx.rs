//! The bench upstream: the harness nginx, serving a 1 KiB and a 64 MiB file over HTTPS and plain
//! HTTP.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::{net::NetNs, nginx::Nginx, pki::CertFiles};

/// Path of the small file, under the server root.
pub const SMALL: &str = "/files/1k";
/// Path of the large file.
pub const LARGE: &str = "/files/64m";
/// Size of the small file.
pub const SMALL_LEN: u64 = 1024;
/// Size of the large file.
pub const LARGE_LEN: u64 = 64 << 20;

/// Starts the harness nginx in `ns` on `listen` with `cert`, serving the 1 KiB and 64 MiB files.
pub fn start(ns: &NetNs, cert: &CertFiles, listen: SocketAddr) -> anyhow::Result<Nginx> {
    let nginx = Nginx::start(ns, "bench", cert, listen)?;
    write_file(&nginx.files().join("1k"), SMALL_LEN)?;
    write_file(&large_file(&nginx), LARGE_LEN)?;
    Ok(nginx)
}

/// The file nginx serves at [`LARGE`], what downloads are compared with.
pub fn large_file(nginx: &Nginx) -> PathBuf {
    nginx.files().join("64m")
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
