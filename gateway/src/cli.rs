//! Command-line interface: `gateway run`, `gateway exec`, `gateway ca`, `gateway config`.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use gateway_proto::{duration::parse_duration, sandbox_spec::SandboxSpec};

use crate::ebpf::pins::DEFAULT_PIN_DIR;

/// Egress gateway for sandboxes: redirects a sandbox cgroup's HTTPS through this host's gateway.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    /// Log format on stderr (level via RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Configuration file (TOML); without it, built-in defaults (`gateway config default`).
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
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// exec's single-threaded helper (namespaces, privileges, PID 1); started by exec only.
    #[command(name = crate::exec::init::SUBCOMMAND, hide = true)]
    ExecInit(crate::exec::init::InitArgs),
}

/// `gateway ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), for clients to trust.
    Export,
    /// Print the path of the CA certificate file.
    Path,
}

/// `gateway config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file: exit 0 when it is valid, else print why and exit 1.
    Check {
        /// The file (`/dev/stdin` reads standard input).
        file: PathBuf,
    },
    /// Print a commented configuration file with every key at its default.
    Default,
}

/// Tunables shared by `run` and `exec`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Give up reaching an upstream (TCP connect, then its TLS handshake) after this long
    /// (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Close a connection when no data has moved either way for this long.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub idle_timeout: Duration,
    /// On shutdown, how long open connections may finish before they are closed.
    #[arg(long, default_value = "5s", value_parser = duration)]
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
    /// Intercepted TCP port (repeatable, at most 8; default 443).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Run the command as USER (name or uid), with GROUP as its primary group. Default: the
    /// user who invoked sudo (SUDO_UID/SUDO_GID), else root without capabilities.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<crate::exec::user::UserSpec>,
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

/// The config file's duration parser, for clap.
fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_config_parser() {
        let cli = Cli::try_parse_from([
            "gateway",
            "exec",
            "--connect-timeout",
            "1m 30s",
            "--idle-timeout",
            "250ms",
            "--",
            "true",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(args.engine.connect_timeout, Duration::from_secs(90));
        assert_eq!(args.engine.idle_timeout, Duration::from_millis(250));
        let err = Cli::try_parse_from(["gateway", "exec", "--idle-timeout", "5", "--", "true"])
            .unwrap_err();
        assert!(err.to_string().contains("is not a duration"), "{err}");
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
    fn exec_takes_a_user_and_group() {
        use crate::exec::user::{Principal, UserSpec};
        let cli =
            Cli::try_parse_from(["gateway", "exec", "--user", "nobody:65534", "--", "id"]).unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(
            args.user,
            Some(UserSpec {
                user: Principal::Name("nobody".into()),
                group: Some(Principal::Id(65534)),
            })
        );
        assert!(Cli::try_parse_from(["gateway", "exec", "--user", "", "--", "id"]).is_err());
    }

    #[test]
    fn run_needs_a_sandbox_and_reports_bad_ones() {
        assert!(Cli::try_parse_from(["gateway", "run"]).is_err());
        let err = Cli::try_parse_from(["gateway", "run", "--sandbox", "x,port=0"]).unwrap_err();
        assert!(err.to_string().contains("port 0"), "{err}");
    }

    #[test]
    fn config_check_takes_a_file() {
        let cli = Cli::try_parse_from(["gateway", "config", "check", "/dev/stdin"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Config(ConfigCommand::Check { file }) if file.as_os_str() == "/dev/stdin"
        ));
    }
}
