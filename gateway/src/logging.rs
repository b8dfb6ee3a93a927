//! Log setup: `tracing` to stderr, human-readable or JSON, level from RUST_LOG (default info,
//! with hickory's own per-query lines left out: the DNS service logs its own).

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

use crate::cli::LogFormat;

/// The filter without RUST_LOG: info, but hickory (which logs every DNS request it serves at
/// info) only from warn.
const DEFAULT_FILTER: &str =
    "info,hickory_server=warn,hickory_resolver=warn,hickory_net=warn,hickory_proto=warn";

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::stderr().is_terminal();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
