//! Project tasks. `cargo xtask demo` shows the gateway working; `cargo xtask test` runs every
//! check CI runs; `bench`, `soak` and `fuzz` run the longer measurements and checks; `install`
//! puts the release daemon on this host as a systemd service. Each first installs what it needs
//! (scripts/setup.sh, idempotent).
//!
//! This crate depends on nothing of the workspace so that it builds before bpf-linker exists.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod install;

#[derive(Parser)]
#[command(name = "xtask", about = "gateway project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Set up a demo upstream and run `gateway exec -- curl` against it.
    Demo,
    /// fmt check, clippy -D warnings, unit tests, privileged integration tests.
    Test,
    /// Install the build and test prerequisites (apt packages, rust-src, bpf-linker, bpffs).
    Setup,
    /// Benchmark the release gateway against going direct; writes bench/results/latest.md.
    Bench {
        /// Extra gateway-bench flags (e.g. `--duration 5 --rounds 1 --only new,keepalive`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A 10-minute mixed load (SOAK_SECONDS to change) with leak checks at the end.
    Soak,
    /// Run each cargo-fuzz target for 10 minutes (FUZZ_SECONDS to change); fails on a crash.
    Fuzz,
    /// Build the release gateway and install it as a systemd service: PREFIX/bin/gateway,
    /// /etc/systemd/system/gateway.service and, when none exists, /etc/gateway/gateway.toml.
    Install {
        /// Where the binary goes (PREFIX/bin/gateway); the unit names it there.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Write every file under this directory instead of / (for packaging or a check).
        #[arg(long, value_name = "DIR")]
        dest_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    match Cli::parse().task {
        Task::Setup => setup(&root),
        Task::Demo => {
            setup(&root)?;
            step(
                "build the gateway",
                cargo(&root, &["build", "-p", "gateway"]),
            )?;
            step(
                "demo",
                cargo(
                    &root,
                    &["run", "-q", "-p", "gateway-tests", "--bin", "gateway-demo"],
                ),
            )
        }
        Task::Test => test(&root),
        Task::Bench { args } => bench(&root, &args),
        Task::Soak => {
            let gateway = build_release(&root)?;
            let mut soak = release_bin(&root, "gateway-soak");
            soak.env("GATEWAY_BIN", gateway);
            step("soak", soak)
        }
        Task::Fuzz => {
            setup(&root)?;
            step("fuzz", script(&root, "fuzz.sh"))
        }
        Task::Install { prefix, dest_dir } => install_service(&root, prefix, dest_dir),
    }
}

/// Builds the release gateway and installs it with its unit and a default config.
fn install_service(root: &Path, prefix: PathBuf, dest_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let binary = build_release(root)?;
    let unit = root.join("packaging/gateway.service");
    let plan = install::Plan {
        unit_template: std::fs::read_to_string(&unit)
            .with_context(|| format!("reading {}", unit.display()))?,
        default_config: default_config(&binary)?,
        binary,
        prefix,
        dest_dir,
    };
    let done = install::install(&plan)?;
    print!("{}", install::report(&plan, &done));
    Ok(())
}

/// `gateway config default`: every key at its default, commented.
fn default_config(binary: &Path) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .args(["config", "default"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} config default", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} config default failed ({})",
            binary.display(),
            output.status
        );
    }
    String::from_utf8(output.stdout).context("`gateway config default` printed non-UTF-8")
}

/// Installs prerequisites and builds the release gateway; returns its path.
fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    setup(root)?;
    step(
        "build the gateway (release)",
        cargo(root, &["build", "--release", "-p", "gateway"]),
    )?;
    Ok(target_dir(root).join("release/gateway"))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn bench(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let gateway = build_release(root)?;
    step("setup (bench)", script(root, "setup-bench.sh"))?;
    // The bench finds the test DNS server next to itself.
    step(
        "build the test DNS server",
        cargo(
            root,
            &[
                "build",
                "--release",
                "-p",
                "gateway-tests",
                "--bin",
                "gateway-test-dns",
            ],
        ),
    )?;
    let out = root.join("bench/results/latest.md");
    let mut run = release_bin(root, "gateway-bench");
    run.arg("--gateway")
        .arg(gateway)
        .arg("--out")
        .arg(out)
        .args(args);
    step("bench", run)
}

fn setup(root: &Path) -> anyhow::Result<()> {
    step("setup", script(root, "setup.sh"))
}

/// `bash scripts/<name>`, run from the workspace root.
fn script(root: &Path, name: &str) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(root.join("scripts").join(name))
        .current_dir(root);
    command
}

/// `cargo run --release -p gateway-tests --bin <bin> --` (arguments follow).
fn release_bin(root: &Path, bin: &str) -> Command {
    cargo(
        root,
        &[
            "run",
            "-q",
            "--release",
            "-p",
            "gateway-tests",
            "--bin",
            bin,
            "--",
        ],
    )
}

fn test(root: &Path) -> anyhow::Result<()> {
    setup(root)?;
    step("rustfmt", cargo(root, &["fmt", "--all", "--", "--check"]))?;
    step(
        "clippy",
        cargo(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    )?;
    let mut tally = Tally::default();
    let unit = cargo(
        root,
        &[
            "test",
            "--no-fail-fast",
            "-p",
            "gateway-common",
            "-p",
            "gateway-proto",
            "-p",
            "gateway",
            "-p",
            "xtask",
        ],
    );
    tally.add(test_step("unit tests", unit)?);
    step(
        "build the gateway",
        cargo(root, &["build", "-p", "gateway"]),
    )?;
    let mut integration = cargo(root, &["test", "--no-fail-fast", "-p", "gateway-tests"]);
    integration.env("GATEWAY_BIN", gateway_bin(root));
    tally.add(test_step("integration tests (privileged)", integration)?);
    // One closing line for the whole run, whatever order cargo printed its harnesses in.
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Passed and failed counts summed over cargo's `test result:` lines.
#[derive(Default, Debug, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }

    /// Reads `test result: ok. 8 passed; 0 failed; ...`.
    fn parse_line(line: &str) -> Option<Tally> {
        let rest = line.strip_prefix("test result: ")?;
        let rest = rest.split_once(". ")?.1;
        let count = |word: &str| {
            rest.split(';')
                .find_map(|part| part.trim().strip_suffix(word))
                .and_then(|n| n.trim().parse().ok())
        };
        Some(Tally {
            passed: count(" passed")?,
            failed: count(" failed")?,
        })
    }
}

/// Runs a `cargo test` step, passing its stdout through while counting results.
fn test_step(name: &str, mut command: Command) -> anyhow::Result<Tally> {
    command.stdout(Stdio::piped());
    eprintln!("xtask: == {name}: {command:?}");
    let start = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("test stdout")?;
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = Tally::parse_line(&line) {
            tally.add(result);
        }
    }
    let status = child.wait()?;
    eprintln!(
        "xtask: == {name}: {status} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        println!(
            "tests: {} passed, {} failed",
            tally.passed,
            tally.failed.max(1)
        );
        bail!("{name} failed ({status})");
    }
    Ok(tally)
}

fn gateway_bin(root: &Path) -> PathBuf {
    let target = target_dir(root);
    target.join("debug/gateway")
}

fn cargo(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.args(args).current_dir(root);
    command
}

fn step(name: &str, mut command: Command) -> anyhow::Result<()> {
    eprintln!("xtask: == {name}: {command:?}");
    let start = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("starting {name}"))?;
    eprintln!(
        "xtask: == {name}: {status} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_test_result_lines() {
        let ok = "test result: ok. 8 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.95s";
        assert_eq!(
            Tally::parse_line(ok),
            Some(Tally {
                passed: 8,
                failed: 0
            })
        );
        let failed =
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(
            Tally::parse_line(failed),
            Some(Tally {
                passed: 2,
                failed: 3
            })
        );
        assert_eq!(Tally::parse_line("running 8 tests"), None);
    }
}
