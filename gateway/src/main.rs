//! The `gateway` binary: parses the command line and runs the chosen command.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Parser as _;
use gateway::{
    admin,
    cli::{CaCommand, Cli, Command, ConfigCommand, EngineArgs, NetnsMode},
    engine::EngineOptions,
    exec::{self, ExecOptions},
    logging,
    relay::Timeouts,
    run::{self, RunOptions},
    tls::ca::{CertAuthority, gateway_home, locate},
};
use gateway_proto::config::{Config, DEFAULT_TOML, SandboxTable};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Each error's message already carries its causes.
            eprintln!("gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format;
    let cli = match cli.command {
        Command::Config(command) => return Ok(config_command(&command)),
        Command::Sandbox(command) => return admin_output(admin::sandbox(&cli.state_dir, command)),
        Command::Status(json) => return admin_output(admin::status(&cli.state_dir, json.json)),
        Command::Reload => return admin_output(admin::reload(&cli.state_dir)),
        Command::Down(args) => return admin_output(admin::down(&cli.state_dir, &args)),
        // Before anything starts a thread: the helper forks.
        Command::ExecInit(args) => return Ok(exit_code(exec::init::run(args)?)),
        command => Cli { command, ..cli },
    };
    let config = match cli.config.as_deref() {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|err| anyhow!("starting the async runtime: {err}"))?;
    match cli.command {
        Command::Config(_)
        | Command::ExecInit(_)
        | Command::Sandbox(_)
        | Command::Status(_)
        | Command::Reload
        | Command::Down(_) => unreachable!("handled above"),
        Command::Ca(command) => {
            let home = gateway_home();
            let ca = config.tls.ca();
            match command {
                CaCommand::Path => println!("{}", locate(ca.as_ref(), &home).cert.display()),
                CaCommand::Export => {
                    print!("{}", CertAuthority::resolve(ca.as_ref(), &home)?.cert_pem());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let mut sandboxes = args.sandboxes;
            sandboxes.extend(config.sandbox.iter().map(SandboxTable::to_spec));
            let options = RunOptions {
                sandboxes,
                pin_dir: args.pin_dir,
                metrics_addr: args.metrics_addr,
                state_dir: cli.state_dir.clone(),
                config_path: cli.config.clone(),
                engine: engine(&args.engine, &config),
            };
            runtime.block_on(run::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => {
            let options = ExecOptions {
                new_netns: args.netns == Some(NetnsMode::New),
                policy: args
                    .policy
                    .overrides()
                    .map_err(|err| anyhow!("--port/--http-port: {err}"))?,
                engine: engine(&args.engine, &config),
                user: args.user,
                secrets: args.secrets,
                state_dir: cli.state_dir.clone(),
                log_format,
                command: args.command,
            };
            Ok(exit_code(runtime.block_on(exec::exec(options))?))
        }
    }
}

/// A command's exit code as this process's (codes outside 0..=255 saturate).
fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

/// Prints what an operator command answered; its error goes to stderr with exit 1.
fn admin_output(result: Result<String, admin::AdminError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Err(err.into()),
    }
}

/// `gateway config check|default`: works without root and without a runtime.
fn config_command(command: &ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Default => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        ConfigCommand::Check { file } => match Config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("gateway: {err}");
                ExitCode::FAILURE
            }
        },
    }
}

fn engine(args: &EngineArgs, config: &Config) -> EngineOptions {
    EngineOptions {
        tls: config.tls.clone(),
        policy: config.policy.clone(),
        secrets: config.secrets.clone(),
        dns: config.dns.clone(),
        timeouts: Timeouts {
            hello: config.tls.hello_timeout.get(),
            connect: args.connect_timeout,
            idle: args.idle_timeout,
        },
        drain_timeout: args.drain_timeout,
    }
}
