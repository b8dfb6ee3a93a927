//! Command-line interface: `gateway run` and `gateway exec`.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{ebpf::pins::DEFAULT_PIN_DIR, sandbox::SandboxSpec};

/// Egress gateway for sandboxes: redirects a sandbox cgroup's HTTPS through this host's gateway.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    /// Log format on stderr (level via RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Configuration file (TOML); without it, built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon for one or more sandbox cgroups.
    Run(RunArgs),
    /// Run a command in a transient sandbox whose HTTPS goes through the gateway.
    Exec(ExecArgs),
    /// The gateway's local CA (created on first use).
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `gateway ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), for clients to trust.
    Export,
    /// Print the path of the CA certificate file.
    Path,
}

/// Tunables shared by `run` and `exec`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Give up reaching an upstream (TCP connect, then its TLS handshake) after this long
    /// (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Close a connection when no data has moved either way for this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On shutdown, how long open connections may finish before they are closed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// `gateway run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A sandbox: its cgroup v2 directory (absolute, or relative to the cgroup2 mount), optionally
    /// its network namespace file and its intercepted ports (default 443). Repeatable.
    #[arg(
        long = "sandbox",
        value_name = "CGROUP[,netns=PATH][,port=N]...",
        required = true
    )]
    pub sandboxes: Vec<SandboxSpec>,
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `gateway exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// `new`: run the command in a fresh network namespace that has only `lo`.
    #[arg(long, value_enum)]
    pub netns: Option<NetnsMode>,
    /// Intercepted TCP port (repeatable; default 443).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The command to run and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// `--netns` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetnsMode {
    /// A fresh namespace with only loopback.
    New,
}

/// Parses `250ms`, `10s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 10s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" | "" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("`{text}`: unknown unit `{unit}` (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn exec_takes_the_rest_as_the_command() {
        let cli = Cli::try_parse_from([
            "gateway",
            "exec",
            "--netns",
            "new",
            "--",
            "curl",
            "-k",
            "https://x",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(args.netns, Some(NetnsMode::New));
        assert_eq!(
            args.command,
            ["curl", "-k", "https://x"].map(OsString::from)
        );
    }

    #[test]
    fn run_needs_a_sandbox_and_reports_bad_ones() {
        assert!(Cli::try_parse_from(["gateway", "run"]).is_err());
        let err = Cli::try_parse_from(["gateway", "run", "--sandbox", "x,port=0"]).unwrap_err();
        assert!(err.to_string().contains("port `0`"), "{err}");
    }
}
