//! Command-line interface: `gateway run`, `gateway exec`, `gateway ca`, `gateway config`.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use gateway_proto::{
    Pattern,
    cidr::Cidr,
    config::PolicyOverrides,
    duration::parse_duration,
    ports::{PortList, PortsError},
    sandbox_spec::SandboxSpec,
};

use crate::{control::DEFAULT_STATE_DIR, ebpf::pins::DEFAULT_PIN_DIR};

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
    /// Where the daemon keeps its control socket and remembers its sandboxes.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
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
    Exec(Box<ExecArgs>),
    /// The gateway's local CA (created on first use).
    #[command(subcommand)]
    Ca(CaCommand),
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Sandboxes of the running daemon.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// The running daemon's state.
    Status(JsonArg),
    /// Make the running daemon read its config file again.
    Reload,
    /// Detach every sandbox and remove every pin (stopping the daemon when one runs).
    Down(DownArgs),
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

/// `gateway sandbox ...`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Serve a cgroup: attach the programs, open its listeners.
    Add(Box<SandboxAddArgs>),
    /// Stop serving a sandbox; its established connections finish.
    Rm {
        /// Its name.
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The sandboxes served.
    Ls(JsonArg),
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `gateway sandbox add`.
#[derive(Debug, Args)]
pub struct SandboxAddArgs {
    /// The sandbox's cgroup v2 directory (absolute, or relative to the cgroup2 mount).
    #[arg(long)]
    pub cgroup: PathBuf,
    /// Its network namespace file (e.g. /run/netns/NAME), when it has its own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Its name (default: the cgroup directory's name).
    #[arg(long)]
    pub name: Option<gateway_proto::sandbox_spec::SandboxName>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// A `[[secrets]]` entry substituted for it. Repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<gateway_proto::config::SecretName>,
    #[command(flatten)]
    pub json: JsonArg,
}

/// `gateway down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// bpffs directory where maps and links are pinned (when no daemon runs).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
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
    /// A sandbox: its cgroup v2 directory (absolute, or relative to the cgroup2 mount),
    /// optionally its network namespace file, and changes to the config's policy with the
    /// names of exec's policy flags (port=N, http-port=N, allow-host=P, deny-host=P,
    /// allow-cidr=C, deny-cidr=C, allow-tcp-port=N, allow-udp-port=N, dns-binding=on|off), and
    /// the secrets it is given (secret=NAME). Repeatable.
    #[arg(long = "sandbox", value_name = "CGROUP[,netns=PATH][,OPTION=VALUE]...")]
    pub sandboxes: Vec<SandboxSpec>,
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9464) at /metrics. Off by default;
    /// refused when a sandbox's policy would let it connect there.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `gateway exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// `new`: run the command in a fresh network namespace that has only `lo`.
    #[arg(long, value_enum)]
    pub netns: Option<NetnsMode>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Run the command as USER (name or uid), with GROUP as its primary group. Default: the
    /// user who invoked sudo (SUDO_UID/SUDO_GID), else root without capabilities.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<crate::exec::user::UserSpec>,
    /// A `[[secrets]]` entry substituted for this command; it gets the placeholder in the
    /// secret's `env` variable. Repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<gateway_proto::config::SecretName>,
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

/// One sandbox's changes to the config's `[policy]`: lists are added to, ports replaced.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Intercepted TLS port (repeatable; replaces the config's tls_ports, default 443).
    #[arg(long = "port", value_name = "PORT", value_parser = port)]
    pub tls_ports: Vec<u16>,
    /// Plain HTTP port through the gateway (repeatable; replaces http_ports, default 80).
    #[arg(long = "http-port", value_name = "PORT", value_parser = port)]
    pub http_ports: Vec<u16>,
    /// Host name pattern that may be reached; any makes the sandbox allow-list only.
    #[arg(long = "allow-host", value_name = "PATTERN")]
    pub allow_hosts: Vec<Pattern>,
    /// Host name pattern that may not be reached.
    #[arg(long = "deny-host", value_name = "PATTERN")]
    pub deny_hosts: Vec<Pattern>,
    /// Address range that may be reached even inside a denied range (longest prefix wins).
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allow_cidrs: Vec<Cidr>,
    /// Address range that may not be reached.
    #[arg(long = "deny-cidr", value_name = "CIDR")]
    pub deny_cidrs: Vec<Cidr>,
    /// TCP port the command may connect to directly.
    #[arg(long = "allow-tcp-port", value_name = "PORT", value_parser = port)]
    pub allow_tcp_ports: Vec<u16>,
    /// UDP port the command may send to.
    #[arg(long = "allow-udp-port", value_name = "PORT", value_parser = port)]
    pub allow_udp_ports: Vec<u16>,
    /// Whether an SNI or Host must be a name DNS answered for the dialled address (replaces
    /// dns_binding; unset, it is on when allow_hosts is set).
    #[arg(long = "dns-binding", value_name = "on|off", value_enum)]
    pub dns_binding: Option<Switch>,
}

/// A setting turned `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl From<Switch> for bool {
    fn from(switch: Switch) -> bool {
        switch == Switch::On
    }
}

impl PolicyArgs {
    /// The flags as overrides of the config's policy.
    ///
    /// # Errors
    /// [`PortsError`] when `--port` or `--http-port` is given too often.
    pub fn overrides(&self) -> Result<PolicyOverrides, PortsError> {
        let list = |ports: &[u16]| {
            (!ports.is_empty())
                .then(|| PortList::new(ports.iter().map(|p| i64::from(*p))))
                .transpose()
        };
        Ok(PolicyOverrides {
            tls_ports: list(&self.tls_ports)?,
            http_ports: list(&self.http_ports)?,
            allow_tcp_ports: self.allow_tcp_ports.clone(),
            allow_udp_ports: self.allow_udp_ports.clone(),
            allow_cidrs: self.allow_cidrs.clone(),
            deny_cidrs: self.deny_cidrs.clone(),
            allow_hosts: self.allow_hosts.clone(),
            deny_hosts: self.deny_hosts.clone(),
            block_quic: None,
            require_sni: None,
            dns_binding: self.dns_binding.map(bool::from),
        })
    }
}

/// A destination port, 1 to 65535.
fn port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("`{text}` is not a port from 1 to 65535"))
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
    fn run_reports_bad_sandboxes() {
        assert!(
            Cli::try_parse_from(["gateway", "run"]).is_ok(),
            "zero sandboxes is fine"
        );
        let err = Cli::try_parse_from(["gateway", "run", "--sandbox", "x,port=0"]).unwrap_err();
        assert!(err.to_string().contains("port=0"), "{err}");
    }

    #[test]
    fn exec_policy_flags_become_overrides() {
        let cli = Cli::try_parse_from([
            "gateway",
            "exec",
            "--allow-host",
            "*.github.com",
            "--deny-cidr",
            "192.0.2.0/24",
            "--allow-tcp-port",
            "22",
            "--port",
            "8443",
            "--",
            "true",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        let overrides = args.policy.overrides().unwrap();
        assert_eq!(overrides.allow_hosts[0].to_string(), "*.github.com");
        assert_eq!(overrides.deny_cidrs[0].to_string(), "192.0.2.0/24");
        assert_eq!(overrides.allow_tcp_ports, vec![22]);
        assert_eq!(overrides.tls_ports.unwrap().as_slice(), &[8443]);
        assert_eq!(overrides.http_ports, None);
        assert_eq!(overrides.dns_binding, None);
        for bad in [
            &["--allow-host", "a b"][..],
            &["--dns-binding", "yes"],
            &["--allow-cidr", "10.1.2.3/8"],
            &["--allow-tcp-port", "0"],
        ] {
            let argv = ["gateway", "exec"].iter().chain(bad).chain(&["--", "true"]);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_binding_is_on_or_off_for_exec_and_sandbox_add() {
        let binding = |argv: &[&str]| {
            let policy = match Cli::try_parse_from(argv).unwrap().command {
                Command::Exec(args) => args.policy,
                Command::Sandbox(SandboxCommand::Add(args)) => args.policy,
                other => panic!("{other:?}"),
            };
            policy.overrides().unwrap().dns_binding
        };
        let exec = ["gateway", "exec", "--dns-binding", "off", "--", "true"];
        assert_eq!(binding(&exec), Some(false));
        let add = [
            "gateway",
            "sandbox",
            "add",
            "--cgroup",
            "a",
            "--dns-binding",
            "on",
        ];
        assert_eq!(binding(&add), Some(true));
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
