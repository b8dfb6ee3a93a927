//! The trust material of `gateway exec`: system roots plus the gateway CA, as one bundle file
//! (named by `SSL_CERT_FILE` and friends) and as a copy of OpenSSL's hashed directory; and the
//! resolver configuration that sends the command's DNS to its gateway.
//!
//! The parent writes them into a directory of its own; the helper bind-mounts them over the
//! distribution's paths inside its private mount namespace ([`overlays`]), so clients that
//! ignore the environment (GnuTLS wget and git, Go) trust forged certificates too, and every
//! resolver library asks the gateway's DNS service. The host's files are never written.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use tracing::{info, warn};

use crate::sandbox::cgroup::{exec_cgroup_pid, exec_is_gone};

/// Errors preparing the trust material.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file or directory of the trust material could not be written.
    #[error("writing the trust bundle {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The system's hashed certificate directory could not be copied.
    #[error("copying {path}: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The bundle file inside the trust directory.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";
/// The copy of the hashed directory inside the trust directory.
pub const CERTS_DIR: &str = "certs";
/// OpenSSL's (and Debian's) hashed directory of trusted certificates.
pub const SYSTEM_CERTS_DIR: &str = "/etc/ssl/certs";
/// The gateway CA inside the copy of the hashed directory (its `<hash>.N` links here).
const GATEWAY_CA_FILE: &str = "gateway-local-ca.pem";

/// Where Debian, Alpine-likes and Fedora keep the system's trusted roots as one file.
pub const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/cert.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The resolver configuration inside the trust directory.
pub const RESOLV_FILE: &str = "resolv.conf";
/// Where resolver libraries (glibc, musl, Go's) read their nameservers.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The command's resolver configuration: port 53 of any address is redirected by the eBPF
/// programs to the sandbox's DNS service, so the loopback address reaches it from the host's
/// network namespace and from a fresh one (which has only `lo`) alike. Nothing else: `search`
/// domains and options of the host's file would only make names the sandbox did not write.
pub const RESOLV_CONF: &str =
    "# gateway exec: DNS is answered by the gateway of this sandbox\nnameserver 127.0.0.1\n";

/// The trust directory of one exec, removed with this value.
#[derive(Debug)]
pub struct TrustBundle {
    dir: PathBuf,
}

impl TrustBundle {
    /// Writes `<temp dir>/<name>/`: the combined bundle and, when the system has a hashed
    /// directory, its copy with the bundle and the gateway CA added. Blocking (file copies and
    /// `openssl`): call it off the async runtime.
    pub fn prepare(name: &str, ca_pem: &str) -> Result<Self, TrustError> {
        let dir = std::env::temp_dir().join(name);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(write_err(&dir))?;
        let trust = TrustBundle { dir };
        let combined = combined_bundle(ca_pem);
        write_new(&trust.bundle(), &combined)?;
        write_new(&trust.dir.join(RESOLV_FILE), RESOLV_CONF)?;
        if Path::new(SYSTEM_CERTS_DIR).is_dir() {
            trust.write_hashed_dir(&combined, ca_pem)?;
        }
        Ok(trust)
    }

    /// The directory handed to the helper (`--trust-dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The combined bundle (what `SSL_CERT_FILE` names).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join(BUNDLE_FILE)
    }

    fn write_hashed_dir(&self, combined: &str, ca_pem: &str) -> Result<(), TrustError> {
        let certs = self.dir.join(CERTS_DIR);
        copy_tree(Path::new(SYSTEM_CERTS_DIR), &certs)?;
        // Clients that read /etc/ssl/certs/ca-certificates.crt by its compiled-in path.
        let bundle = certs.join("ca-certificates.crt");
        if bundle.symlink_metadata().is_ok() {
            fs::remove_file(&bundle).map_err(write_err(&bundle))?;
            write_new(&bundle, combined)?;
        }
        // Clients that look certificates up by subject hash (-CApath, SSL_CERT_DIR).
        write_new(&certs.join(GATEWAY_CA_FILE), ca_pem)?;
        match subject_hash(ca_pem) {
            Some(hash) => {
                let link = free_hash_name(&certs, &hash);
                symlink(GATEWAY_CA_FILE, &link).map_err(write_err(&link))?;
            }
            None => warn!(
                dir = SYSTEM_CERTS_DIR,
                "cannot compute the gateway CA's OpenSSL subject hash (is openssl installed?): \
                 clients that look CAs up by hash in the directory will not trust the gateway"
            ),
        }
        Ok(())
    }
}

impl Drop for TrustBundle {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            warn!(dir = %self.dir.display(), error = %err, "could not remove the trust bundle");
        }
    }
}

/// What the helper mounts, source over target: the copied hashed directory over the system's,
/// the combined bundle over every other distribution bundle path that exists (paths inside
/// the hashed directory are covered by its copy), and the resolver configuration over the
/// system's ([`resolv_conf_overlay`]).
pub fn overlays(trust_dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut overlays = Vec::new();
    let certs = trust_dir.join(CERTS_DIR);
    let certs_covered = certs.is_dir() && Path::new(SYSTEM_CERTS_DIR).is_dir();
    if certs_covered {
        overlays.push((certs, PathBuf::from(SYSTEM_CERTS_DIR)));
    }
    for path in SYSTEM_BUNDLES.map(Path::new) {
        if (certs_covered && path.starts_with(SYSTEM_CERTS_DIR)) || !path.exists() {
            continue;
        }
        overlays.push((trust_dir.join(BUNDLE_FILE), path.to_path_buf()));
    }
    overlays.extend(resolv_conf_overlay(
        trust_dir,
        Path::new(SYSTEM_RESOLV_CONF),
    ));
    overlays
}

/// The exec's resolver configuration over the file `system` names. When `system` is a symbolic
/// link (systemd-resolved's `/etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf`) the
/// mount goes over the file it leads to, so the link still reads as a link and every path to
/// that file shows the gateway's nameserver. None when no such file exists (missing, or a
/// dangling link): a mount needs a file to cover, and without one glibc and musl already ask
/// 127.0.0.1, which is where the configuration would point them.
pub fn resolv_conf_overlay(trust_dir: &Path, system: &Path) -> Option<(PathBuf, PathBuf)> {
    let source = trust_dir.join(RESOLV_FILE);
    if !source.is_file() {
        return None;
    }
    match fs::canonicalize(system) {
        Ok(target) if target.is_file() => Some((source, target)),
        Ok(target) => {
            warn!(file = %system.display(), target = %target.display(), "the resolver configuration is not a file; the command keeps it");
            None
        }
        Err(err) => {
            info!(file = %system.display(), error = %err, "no resolver configuration to cover; resolvers default to 127.0.0.1");
            None
        }
    }
}

/// Removes the trust directories of exec processes that died without cleaning up.
pub fn remove_stale() {
    let temp = std::env::temp_dir();
    let Ok(entries) = fs::read_dir(&temp) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(exec_cgroup_pid) else {
            continue;
        };
        // Only directories root made: /tmp is everyone's, and a name alone proves nothing.
        let ours = entry
            .path()
            .symlink_metadata()
            .is_ok_and(|meta| meta.is_dir() && meta.uid() == 0);
        if !ours || !exec_is_gone(pid) {
            continue;
        }
        match fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                info!(dir = %entry.path().display(), exec_pid = pid, "removed the trust bundle of an exec that is gone");
            }
            Err(err) => {
                warn!(dir = %entry.path().display(), error = %err, "could not remove the trust bundle of an exec that is gone");
            }
        }
    }
}

/// System roots (the first distribution bundle found) followed by the gateway CA.
fn combined_bundle(ca_pem: &str) -> String {
    let mut contents = match SYSTEM_BUNDLES
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
    {
        Some(system) => system,
        None => {
            warn!("no system CA bundle found; the command trusts only the gateway CA");
            String::new()
        }
    };
    if !contents.is_empty() && !contents.ends_with('\n') {
        contents.push('\n');
    }
    contents.push_str(ca_pem);
    contents
}

/// Copies a directory tree, symbolic links as links (the hashed entries point at their
/// neighbours by relative name, so they resolve inside the copy too).
fn copy_tree(from: &Path, to: &Path) -> Result<(), TrustError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(to)
        .map_err(write_err(to))?;
    let copy_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrustError::Copy { path, source }
    };
    for entry in fs::read_dir(from).map_err(copy_err(from))? {
        let entry = entry.map_err(copy_err(from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(copy_err(&source))?;
        if kind.is_symlink() {
            let link = fs::read_link(&source).map_err(copy_err(&source))?;
            symlink(link, &target).map_err(write_err(&target))?;
        } else if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_file() {
            fs::copy(&source, &target).map_err(copy_err(&source))?;
        }
    }
    Ok(())
}

/// The CA's OpenSSL subject hash (`openssl x509 -hash`), or None when it cannot be computed.
fn subject_hash(ca_pem: &str) -> Option<String> {
    let mut child = Command::new("openssl")
        .args(["x509", "-hash", "-noout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // The PEM is a few hundred bytes, far below the pipe buffer: no deadlock writing first.
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(ca_pem.as_bytes()));
    let output = child.wait_with_output().ok()?;
    let hash = String::from_utf8(output.stdout).ok()?.trim().to_string();
    let valid = hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    (matches!(written, Some(Ok(()))) && output.status.success() && valid).then_some(hash)
}

/// `<hash>.N` with the lowest N no certificate of the directory uses yet.
fn free_hash_name(dir: &Path, hash: &str) -> PathBuf {
    (0..)
        .map(|n| dir.join(format!("{hash}.{n}")))
        .find(|path| path.symlink_metadata().is_err())
        .unwrap_or_else(|| dir.join(format!("{hash}.0")))
}

fn write_new(path: &Path, contents: &str) -> Result<(), TrustError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(write_err(path))?;
    file.write_all(contents.as_bytes()).map_err(write_err(path))
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> TrustError {
    let path = path.to_path_buf();
    move |source| TrustError::Write { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_links_as_links_and_picks_a_free_hash_name() {
        let from = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        fs::write(from.path().join("a.pem"), "A").unwrap_or_else(|e| panic!("{e}"));
        symlink("a.pem", from.path().join("abcd0123.0")).unwrap_or_else(|e| panic!("{e}"));
        let to = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let copy = to.path().join("copy");
        copy_tree(from.path(), &copy).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fs::read_link(copy.join("abcd0123.0")).ok(),
            Some(PathBuf::from("a.pem"))
        );
        assert_eq!(
            fs::read_to_string(copy.join("abcd0123.0")).ok().as_deref(),
            Some("A")
        );
        assert_eq!(free_hash_name(&copy, "abcd0123"), copy.join("abcd0123.1"));
    }

    /// A trust directory holding the resolver configuration, and a directory standing for the
    /// host's paths.
    fn resolv_dirs() -> (tempfile::TempDir, tempfile::TempDir) {
        let trust = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_new(&trust.path().join(RESOLV_FILE), RESOLV_CONF).unwrap_or_else(|e| panic!("{e}"));
        let host = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        (trust, host)
    }

    #[test]
    fn the_resolver_configuration_covers_the_file_or_what_its_link_leads_to() {
        let (trust, host) = resolv_dirs();
        let source = trust.path().join(RESOLV_FILE);
        let host = host.path();
        let file = host.join("resolv.conf");
        fs::write(&file, "nameserver 192.0.2.1\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            resolv_conf_overlay(trust.path(), &file),
            Some((source.clone(), file.clone()))
        );
        // systemd-resolved's layout: a relative link, here through a second link.
        fs::create_dir(host.join("run")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(host.join("run/stub-resolv.conf"), "nameserver 127.0.0.53\n")
            .unwrap_or_else(|e| panic!("{e}"));
        symlink("run/stub-resolv.conf", host.join("resolv.link")).unwrap_or_else(|e| panic!("{e}"));
        symlink("resolv.link", host.join("etc-resolv.conf")).unwrap_or_else(|e| panic!("{e}"));
        let real =
            fs::canonicalize(host.join("run/stub-resolv.conf")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            resolv_conf_overlay(trust.path(), &host.join("etc-resolv.conf")),
            Some((source, real))
        );
    }

    #[test]
    fn a_missing_or_dangling_resolver_configuration_is_left_alone() {
        let (trust, host) = resolv_dirs();
        let host = host.path();
        assert_eq!(resolv_conf_overlay(trust.path(), &host.join("none")), None);
        symlink("nowhere.conf", host.join("dangling")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            resolv_conf_overlay(trust.path(), &host.join("dangling")),
            None
        );
        // A directory cannot take a file's bind mount.
        assert_eq!(resolv_conf_overlay(trust.path(), host), None);
        // Nor is anything mounted when the trust directory holds no configuration.
        let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        fs::write(host.join("resolv.conf"), "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            resolv_conf_overlay(empty.path(), &host.join("resolv.conf")),
            None
        );
    }

    #[test]
    fn the_resolver_configuration_names_only_the_loopback_nameserver() {
        let servers = gateway_proto::resolv_conf::nameservers(RESOLV_CONF);
        assert_eq!(
            servers,
            ["127.0.0.1"
                .parse::<std::net::IpAddr>()
                .unwrap_or_else(|e| panic!("{e}"))]
        );
    }
}
