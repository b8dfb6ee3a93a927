//! `cargo xtask install`: puts the release binary, the systemd unit and a default config where
//! a systemd host expects them, idempotently. Files are compared before they are written, so a
//! second run changes nothing; the config is written only when none exists, so an operator's
//! edits are never overwritten. systemctl is not run: the printed next steps say what to run.

use std::{
    fmt, fs,
    io::{self, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The binary path the shipped unit names; replaced by `<prefix>/bin/gateway`.
const UNIT_BINARY: &str = "/usr/local/bin/gateway";
/// Where the unit goes (under the destination directory).
pub const UNIT_PATH: &str = "etc/systemd/system/gateway.service";
/// Where the config goes (under the destination directory); the unit passes it to `run`.
pub const CONFIG_PATH: &str = "etc/gateway/gateway.toml";

/// What to install, and where.
#[derive(Debug)]
pub struct Plan {
    /// The built gateway binary.
    pub binary: PathBuf,
    /// The unit as shipped in packaging/ (it names [`UNIT_BINARY`]).
    pub unit_template: String,
    /// `gateway config default`.
    pub default_config: String,
    /// Installation prefix as seen on the target host (absolute), e.g. /usr/local.
    pub prefix: PathBuf,
    /// Staging root all paths are written under (like make's DESTDIR); none: `/`.
    pub dest_dir: Option<PathBuf>,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist and was written.
    Installed,
    /// It existed with other contents or mode and was replaced.
    Updated,
    /// It already had these contents and mode.
    Unchanged,
    /// It exists and belongs to the operator (the config): left alone.
    Kept,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Installed => "installed",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Kept => "kept (existing config, not overwritten)",
        })
    }
}

/// One file's result, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// Where it was written (under the destination directory).
    pub path: PathBuf,
    /// What happened.
    pub outcome: Outcome,
}

impl Plan {
    /// The binary's path on the target host.
    fn binary_target(&self) -> PathBuf {
        self.prefix.join("bin/gateway")
    }

    /// `target` (an absolute path on the target host) under the destination directory.
    fn staged(&self, target: &Path) -> PathBuf {
        let relative = target.strip_prefix("/").unwrap_or(target);
        match &self.dest_dir {
            Some(dest) => dest.join(relative),
            None => Path::new("/").join(relative),
        }
    }

    /// The unit with the binary path of this prefix.
    pub fn unit(&self) -> String {
        self.unit_template
            .replace(UNIT_BINARY, &self.binary_target().to_string_lossy())
    }
}

/// Installs the three files; returns what happened to each, in order.
pub fn install(plan: &Plan) -> anyhow::Result<Vec<Done>> {
    if !plan.prefix.is_absolute() {
        bail!("--prefix must be absolute (got {})", plan.prefix.display());
    }
    if !plan.unit_template.contains(UNIT_BINARY) {
        bail!("the unit template does not name {UNIT_BINARY}");
    }
    let binary = fs::read(&plan.binary)
        .with_context(|| format!("reading the built binary {}", plan.binary.display()))?;
    let binary_path = plan.staged(&plan.binary_target());
    let unit_path = plan.staged(Path::new("/").join(UNIT_PATH).as_path());
    let config_path = plan.staged(Path::new("/").join(CONFIG_PATH).as_path());
    Ok(vec![
        Done {
            outcome: put(&binary_path, &binary, 0o755)?,
            path: binary_path,
        },
        Done {
            outcome: put(&unit_path, plan.unit().as_bytes(), 0o644)?,
            path: unit_path,
        },
        Done {
            outcome: put_if_absent(&config_path, plan.default_config.as_bytes(), 0o644)?,
            path: config_path,
        },
    ])
}

/// Writes `contents` with `mode` unless the file already has both.
fn put(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<Outcome> {
    let existing = match fs::symlink_metadata(path) {
        Ok(metadata) => Some(metadata),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).with_context(|| format!("inspecting {}", path.display())),
    };
    if let Some(metadata) = &existing {
        let same_mode = metadata.permissions().mode() & 0o7777 == mode;
        if metadata.is_file() && same_mode && fs::read(path).ok().as_deref() == Some(contents) {
            return Ok(Outcome::Unchanged);
        }
    }
    write_replacing(path, contents, mode)?;
    Ok(match existing {
        Some(_) => Outcome::Updated,
        None => Outcome::Installed,
    })
}

/// Writes `contents` only when nothing (not even a dangling link) is at `path`.
fn put_if_absent(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<Outcome> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(Outcome::Kept),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            write_replacing(path, contents, mode)?;
            Ok(Outcome::Installed)
        }
        Err(error) => Err(error).with_context(|| format!("inspecting {}", path.display())),
    }
}

/// Writes a temporary file beside `path` and renames it over `path`: a running binary cannot be
/// written in place (ETXTBSY), and a reader never sees half a file.
fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dir.join(format!(".{name}.xtask-{}", std::process::id()));
    let written = write_new(&temporary, contents, mode)
        .and_then(|()| fs::rename(&temporary, path))
        .with_context(|| format!("writing {}", path.display()));
    if written.is_err() {
        // Best effort: the error above is what matters.
        let _ = fs::remove_file(&temporary);
    }
    written
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(contents)?;
    // Set explicitly: the umask must not decide the installed modes.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.sync_all()
}

/// The report: one line per file, then what to do next.
pub fn report(plan: &Plan, done: &[Done]) -> String {
    let mut text = String::new();
    for file in done {
        text.push_str(&format!("  {}: {}\n", file.path.display(), file.outcome));
    }
    if let Some(dest) = &plan.dest_dir {
        text.push_str(&format!(
            "Staged under {}; copy that tree to the target host, then on it:\n",
            dest.display()
        ));
    } else {
        text.push_str("Next:\n");
    }
    text.push_str(&format!(
        "  edit /{CONFIG_PATH} (check it with: {} config check /{CONFIG_PATH})\n",
        plan.binary_target().display()
    ));
    text.push_str(
        "  optional: /etc/gateway/gateway.env (mode 0600) for secret values (value_env) and\n    \
         GATEWAY_ARGS (extra `run` options, e.g. --sandbox CGROUP)\n",
    );
    text.push_str("  systemctl daemon-reload && systemctl enable --now gateway\n");
    text.push_str("  journalctl -u gateway -o json   # its logs\n");
    text
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// The unit as shipped.
    fn shipped_unit() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/gateway.service");
        fs::read_to_string(path).expect("packaging/gateway.service")
    }

    /// A plan that installs a stand-in binary from `dir` into `dir/root`.
    fn plan_in(dir: &Path) -> Plan {
        let binary = dir.join("built-gateway");
        fs::write(&binary, b"#!/bin/sh\necho gateway\n").expect("write stand-in binary");
        Plan {
            binary,
            unit_template: shipped_unit(),
            default_config: "# every key at its default\n[tls]\n".to_owned(),
            prefix: PathBuf::from("/opt/gateway"),
            dest_dir: Some(dir.join("root")),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    fn outcomes(done: &[Done]) -> Vec<Outcome> {
        done.iter().map(|file| file.outcome).collect()
    }

    #[test]
    fn installs_the_three_files_with_their_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_in(dir.path());
        let done = install(&plan).expect("install");
        assert_eq!(outcomes(&done), vec![Outcome::Installed; 3]);

        let root = dir.path().join("root");
        let binary = root.join("opt/gateway/bin/gateway");
        let unit = root.join("etc/systemd/system/gateway.service");
        let config = root.join("etc/gateway/gateway.toml");
        assert_eq!(done[0].path, binary);
        assert_eq!(done[1].path, unit);
        assert_eq!(done[2].path, config);
        assert_eq!(mode(&binary), 0o755);
        assert_eq!(mode(&unit), 0o644);
        assert_eq!(mode(&config), 0o644);
        assert_eq!(
            fs::read(&binary).expect("binary"),
            fs::read(&plan.binary).expect("source")
        );
        assert_eq!(
            fs::read_to_string(&config).expect("config"),
            plan.default_config
        );
        let unit = fs::read_to_string(&unit).expect("unit");
        assert!(
            unit.contains(
                "\nExecStart=/opt/gateway/bin/gateway --log-format json run --config /etc/gateway/gateway.toml"
            ),
            "{unit}"
        );
        assert!(!unit.contains(UNIT_BINARY), "{unit}");
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(root.join("etc/gateway"))
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec!["gateway.toml"]);
    }

    #[test]
    fn a_second_run_changes_nothing_and_the_config_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_in(dir.path());
        install(&plan).expect("first install");
        let done = install(&plan).expect("second install");
        assert_eq!(
            outcomes(&done),
            vec![Outcome::Unchanged, Outcome::Unchanged, Outcome::Kept]
        );

        // The operator edits the config; a new build comes; a mode was changed by hand.
        let config = &done[2].path;
        fs::write(config, "# mine\n").expect("edit config");
        fs::write(&plan.binary, b"#!/bin/sh\necho new build\n").expect("new build");
        fs::set_permissions(&done[1].path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let done = install(&plan).expect("third install");
        assert_eq!(
            outcomes(&done),
            vec![Outcome::Updated, Outcome::Updated, Outcome::Kept]
        );
        assert_eq!(fs::read_to_string(config).expect("config"), "# mine\n");
        assert_eq!(
            fs::read(&done[0].path).expect("binary"),
            b"#!/bin/sh\necho new build\n"
        );
        assert_eq!(mode(&done[1].path), 0o644);
    }

    #[test]
    fn a_relative_prefix_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut plan = plan_in(dir.path());
        plan.prefix = PathBuf::from("usr/local");
        let error = install(&plan).expect_err("relative prefix").to_string();
        assert!(error.contains("--prefix must be absolute"), "{error}");
    }

    #[test]
    fn the_report_names_each_file_and_the_next_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_in(dir.path());
        let done = install(&plan).expect("install");
        let report = report(&plan, &done);
        assert!(
            report.contains("opt/gateway/bin/gateway: installed"),
            "{report}"
        );
        assert!(
            report.contains("systemctl daemon-reload && systemctl enable --now gateway"),
            "{report}"
        );
        assert!(report.contains("journalctl -u gateway -o json"), "{report}");
    }

    /// What the unit must keep saying, whoever edits it next.
    #[test]
    fn the_shipped_unit_keeps_its_promises() {
        let unit = shipped_unit();
        let has = |line: &str| unit.lines().any(|l| l == line);
        for line in [
            "Type=simple",
            "ExecStart=/usr/local/bin/gateway --log-format json run --config /etc/gateway/gateway.toml $GATEWAY_ARGS",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "LimitNOFILE=1048576",
            "RuntimeDirectory=gateway",
            "StateDirectory=gateway",
            "ProtectSystem=strict",
            "ReadWritePaths=/sys/fs/bpf /sys/fs/cgroup",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_PTRACE",
            "WantedBy=multi-user.target",
        ] {
            assert!(has(line), "the unit lacks `{line}`");
        }
        // Fail closed: stopping must not detach the programs. ProtectKernelTunables= would make
        // the pin directory read-only.
        for directive in [
            "ExecStopPost=",
            "ProtectKernelTunables=",
            "ProtectControlGroups=",
        ] {
            assert!(
                !unit.lines().any(|l| l.starts_with(directive)),
                "the unit must not set {directive}"
            );
        }
    }

    /// `systemd-analyze verify` on the unit as installed (its ExecStart pointed at the staged
    /// binary, which verify wants to exist); skipped, saying so, where the tool is missing.
    #[test]
    fn systemd_analyze_accepts_the_installed_unit() {
        let Ok(analyze) = which("systemd-analyze") else {
            eprintln!(
                "skipped: systemd-analyze is not installed (it comes with the systemd package)"
            );
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_in(dir.path());
        let done = install(&plan).expect("install");
        let staged_binary = done[0].path.to_string_lossy().into_owned();
        let unit = fs::read_to_string(&done[1].path)
            .expect("unit")
            .replace("/opt/gateway/bin/gateway", &staged_binary);
        let check = dir.path().join("gateway.service");
        fs::write(&check, unit).expect("write unit to check");
        let output = Command::new(analyze)
            .arg("verify")
            .arg(&check)
            .output()
            .expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && !stderr.contains("gateway.service"),
            "systemd-analyze verify: {}\n{stderr}",
            output.status
        );
    }

    /// The first `name` on PATH.
    fn which(name: &str) -> Result<PathBuf, ()> {
        let path = std::env::var_os("PATH").ok_or(())?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
            .ok_or(())
    }
}
