//! `cargo xtask bench`: see [`gateway_tests::bench`]. `gateway-bench client ...` is this binary
//! re-executed inside a sandbox cgroup as one of the bench's clients.

use std::process::ExitCode;

use clap::Parser as _;
use gateway_tests::bench::{
    self,
    cli::{Cli, Command},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Client(client)) => client.run(),
        None => bench::run(cli.options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gateway-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
