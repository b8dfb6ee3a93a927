//! The `gateway` binary: parses the command line and runs the chosen command.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Parser as _;
use gateway::{
    cli::{Cli, Command, EngineArgs, NetnsMode},
    daemon::{self, EngineOptions, RunOptions},
    exec::{self, ExecOptions},
    logging,
    sandbox::DEFAULT_PORTS,
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

fn engine(args: &EngineArgs) -> EngineOptions {
    EngineOptions {
        connect_timeout: args.connect_timeout,
        drain_timeout: args.drain_timeout,
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| anyhow!("starting the async runtime: {e}"))?;
    match cli.command {
        Command::Run(args) => {
            let options = RunOptions {
                sandboxes: args.sandboxes,
                pin_dir: args.pin_dir,
                engine: engine(&args.engine),
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
                engine: engine(&args.engine),
                command: args.command,
            };
            let code = runtime.block_on(exec::exec(options))?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
        }
    }
}
