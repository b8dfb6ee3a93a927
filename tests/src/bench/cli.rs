//! The bench's command line: the options of a measured run, and `client ...`, the small clients
//! the bench runs inside sandbox cgroups by re-executing itself.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::bail;
use clap::{ArgAction, Parser, Subcommand, builder::RangedU64ValueParser};

use super::workload::Workload;
use crate::workspace_dir;

/// `gateway-bench`: the gateway's cost against going direct, as ratios measured in one run.
#[derive(Debug, Parser)]
#[command(
    name = "gateway-bench",
    // `cargo xtask bench` passes --gateway and --out before the user's flags: a later one wins.
    args_override_self = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What a measured run does.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The gateway binary to measure.
    #[arg(long, value_name = "PATH", default_value_os_t = workspace_dir().join("target/release/gateway"))]
    pub gateway: PathBuf,
    /// Where to write the markdown report.
    #[arg(long, value_name = "FILE", default_value_os_t = workspace_dir().join("bench/results/latest.md"))]
    pub out: PathBuf,
    /// Seconds per measured run (1-60).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = RangedU64ValueParser::<u64>::new().range(1..=60))]
    pub duration: u64,
    /// Connections oha keeps open (1-256).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = RangedU64ValueParser::<u32>::new().range(1..=256))]
    pub concurrency: u32,
    /// Rounds of every mode, interleaved (1-10).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(1..=10))]
    pub rounds: usize,
    /// Distinct names for the cold-certificate workload (1-9999).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=9999))]
    pub names: usize,
    /// Idle connections held for the memory workload (1-15000).
    #[arg(long, value_name = "N", default_value_t = 5000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=15_000))]
    pub idle: usize,
    /// Connects per run of the connect() loop (1-1000000).
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub connects: usize,
    /// DNS lookups per run of the lookup workload (1-5000).
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = RangedU64ValueParser::<usize>::new().range(1..=5000))]
    pub lookups: usize,
    /// Skip the h2load and wrk cross-checks.
    #[arg(long = "no-cross-checks", action = ArgAction::SetFalse)]
    pub cross_checks: bool,
    /// Only these workloads, comma-separated (all when not given).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WORKLOADS")]
    pub only: Vec<Workload>,
}

impl Options {
    /// Whether `workload` is to run.
    pub fn runs(&self, workload: Workload) -> bool {
        let picked = self.only.is_empty() || self.only.contains(&workload);
        picked && (workload != Workload::Cross || self.cross_checks)
    }

    /// Makes the paths absolute (they are printed in the report) and checks the gateway exists.
    pub fn resolve(mut self) -> anyhow::Result<Options> {
        self.gateway = std::path::absolute(&self.gateway)?;
        self.out = std::path::absolute(&self.out)?;
        if !self.gateway.exists() {
            bail!(
                "gateway binary {} not found (cargo build --release -p gateway)",
                self.gateway.display()
            );
        }
        Ok(self)
    }
}

/// Not a measured run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A client the bench runs inside a sandbox cgroup; prints one JSON object.
    #[command(subcommand, hide = true)]
    Client(Client),
}

/// The clients (see [`super::clients`]).
#[derive(Debug, Subcommand)]
pub enum Client {
    /// Timed TLS handshakes, one per name `<prefix><i>.<domain>`, sequentially.
    Handshakes {
        /// The CA certificate (PEM) to trust.
        #[arg(long)]
        ca: PathBuf,
        /// Where to connect.
        #[arg(long)]
        addr: SocketAddr,
        /// First label's prefix.
        #[arg(long)]
        prefix: String,
        /// The domain the names are under.
        #[arg(long)]
        domain: String,
        /// Names per pass.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Passes over the names.
        #[arg(long, default_value_t = 1)]
        passes: usize,
    },
    /// A tight loop of TCP connects.
    Connects {
        /// Where to connect.
        #[arg(long)]
        addr: SocketAddr,
        /// Connects measured.
        #[arg(long, default_value_t = 20_000)]
        count: usize,
    },
    /// Timed DNS lookups, one at a time, of `<prefix><i>.<domain>` (or one name, `--same`).
    Lookups {
        /// The resolver asked (port 53 goes to the gateway's DNS in a sandbox).
        #[arg(long)]
        server: SocketAddr,
        /// First label's prefix.
        #[arg(long)]
        prefix: String,
        /// The domain the names are under.
        #[arg(long)]
        domain: String,
        /// Lookups timed.
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// Ask `<prefix>cached.<domain>` every time, after one untimed lookup.
        #[arg(long)]
        same: bool,
    },
    /// TLS connections opened and held idle until stdin closes.
    Hold {
        /// The CA certificate (PEM) to trust.
        #[arg(long)]
        ca: PathBuf,
        /// Where to connect.
        #[arg(long)]
        addr: SocketAddr,
        /// The server name.
        #[arg(long)]
        name: String,
        /// Connections to hold.
        #[arg(long, default_value_t = 5000)]
        count: usize,
        /// Threads opening them.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
}

impl Client {
    /// Runs the client.
    pub fn run(self) -> anyhow::Result<()> {
        use super::clients;
        match self {
            Client::Handshakes {
                ca,
                addr,
                prefix,
                domain,
                count,
                passes,
            } => clients::handshakes(&ca, addr, &prefix, &domain, count, passes),
            Client::Connects { addr, count } => clients::connects(addr, count),
            Client::Lookups {
                server,
                prefix,
                domain,
                count,
                same,
            } => clients::lookups(server, &prefix, &domain, count, same),
            Client::Hold {
                ca,
                addr,
                name,
                count,
                threads,
            } => clients::hold(&ca, addr, &name, count, threads),
        }
    }
}
