//! The `gateway` binary: parses the command line and runs the chosen command.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Parser as _;
use gateway::{
    cli::{CaCommand, Cli, Command, EngineArgs, NetnsMode},
    config::Config,
    daemon::{self, EngineOptions, RunOptions},
    exec::{self, ExecOptions},
    logging,
    relay::Timeouts,
    sandbox::DEFAULT_PORTS,
    tls::ca::{CertAuthority, gateway_home, locate},
};

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

fn engine(args: &EngineArgs, config: &Config) -> EngineOptions {
    EngineOptions {
        tls: config.tls.clone(),
        timeouts: Timeouts {
            connect: args.connect_timeout,
            idle: args.idle_timeout,
        },
        drain_timeout: args.drain_timeout,
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| anyhow!("starting the async runtime: {e}"))?;
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Ca(command) => {
            let home = gateway_home();
            match command {
                CaCommand::Path => {
                    println!("{}", locate(config.tls.ca.as_ref(), &home).cert.display())
                }
                CaCommand::Export => print!(
                    "{}",
                    CertAuthority::resolve(config.tls.ca.as_ref(), &home)?.cert_pem()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let options = RunOptions {
                sandboxes: args.sandboxes,
                pin_dir: args.pin_dir,
                engine: engine(&args.engine, &config),
            };
            runtime.block_on(daemon::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => {
            let ports = if args.ports.is_empty() {
                DEFAULT_PORTS.to_vec()
            } else {
                args.ports
            };
            let options = ExecOptions {
                new_netns: args.netns == Some(NetnsMode::New),
                ports,
                engine: engine(&args.engine, &config),
                command: args.command,
            };
            let code = runtime.block_on(exec::exec(options))?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
        }
    }
}
