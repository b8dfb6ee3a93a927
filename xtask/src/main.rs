//! Project tasks. `cargo xtask demo` shows the gateway working; `cargo xtask test` runs every
//! check CI runs. Both first install what they need (scripts/setup.sh, idempotent).
//!
//! This crate depends on nothing of the workspace so that it builds before bpf-linker exists.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

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
    }
}

fn setup(root: &Path) -> anyhow::Result<()> {
    let mut command = Command::new("bash");
    command.arg(root.join("scripts/setup.sh"));
    step("setup", command)
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
    step(
        "unit tests",
        cargo(
            root,
            &[
                "test",
                "-p",
                "gateway-common",
                "-p",
                "gateway",
                "-p",
                "xtask",
            ],
        ),
    )?;
    step(
        "build the gateway",
        cargo(root, &["build", "-p", "gateway"]),
    )?;
    let mut integration = cargo(root, &["test", "-p", "gateway-tests"]);
    integration.env("GATEWAY_BIN", gateway_bin(root));
    step("integration tests (privileged)", integration)
}

fn gateway_bin(root: &Path) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
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
