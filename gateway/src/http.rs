//! The hyper path: plain HTTP/1 through the gateway ([`plain`]), HTTP-aware interception of
//! TLS connections ([`aware`]) and refusal pages on TLS connections whose name is denied
//! ([`deny`]). Policy stays with the caller: a [`HostJudge`] says what the name rules make of
//! each request's host, a [`Filter`] judges and rewrites what passes, and this module only acts
//! on them.
//!
//! Every HTTP the gateway speaks goes through hyper (see DESIGN.md); the first-bytes sniff in
//! `conn` is the only parsing done by hand.

pub mod aware;
mod body;
pub mod deny;
mod filter;
mod forward;
mod headers;
mod host;
mod io;
#[cfg(test)]
mod log_capture;
mod page;
pub mod plain;
mod upstream;

use std::{error::Error as StdError, fmt, time::Duration};

use gateway_proto::HostName;

use crate::relay::{RelayError, RelayStats};

pub use filter::{Filter, Refused, StreamRewrite};
pub use upstream::{Origin, UpstreamError};

/// What the name rules say about one host, decided by the caller (policy lives elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Requests to the host may go to the original destination.
    Allow,
    /// Requests to the host are refused with a 403 page.
    Deny {
        /// Why, naming the rule, e.g. `host denied by rule deny_hosts[0] = *.example.com`; shown
        /// to the sandbox in the page and logged.
        reason: String,
    },
}

/// Judges the host of each request.
pub trait HostJudge: Send + Sync {
    /// The verdict for `host` (normalized, port removed).
    fn judge(&self, host: &HostName) -> Verdict;
}

/// The text of a refusal page: shared by policy refusals now and by secrets violations later.
///
/// `gateway: request to api.example.com refused: host denied by rule deny_hosts[0] = *.example.com`
/// followed by a newline, so `curl` output ends cleanly.
pub fn forbidden_body(host: &str, reason: &str) -> String {
    format!("gateway: request to {host} refused: {reason}\n")
}

/// Which HTTP a connection spoke, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "HTTP/1",
            Protocol::Http2 => "HTTP/2",
        })
    }
}

/// Why an HTTP connection ended badly. Each variant carries the bytes moved on the client
/// connection until then ([`HttpError::stats`]), for the connection's log line.
///
/// Failures of one request (the upstream unreachable, a denied host, a filter's refusal before
/// the response began) are not connection errors: the client gets a page and the request's log
/// line says why.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The HTTP exchange with the client broke off: a malformed request (hyper answered it with
    /// a 4xx first), a socket error, the client leaving mid-message, or a response body that
    /// failed while it was being streamed to the client (the upstream's broke off, or a filter
    /// refused it or the request body part-way).
    #[error("serving {protocol} to the client failed: {}", ErrorChain(.source))]
    Serve {
        /// HTTP/1 or HTTP/2.
        protocol: Protocol,
        /// Bytes moved until then.
        stats: RelayStats,
        /// hyper's error (its causes are part of the message).
        #[source]
        source: hyper::Error,
    },
    /// The client began a request head and did not finish it in time (slowloris).
    #[error("no complete request head within {timeout:?} (header timeout)")]
    HeadTimeout {
        /// How long a head may take once its first byte arrived.
        timeout: Duration,
        /// Bytes moved until then.
        stats: RelayStats,
    },
    /// Nothing moved on either leg for this long while a request was open.
    #[error("no data either way for {idle:?} during a request (idle timeout)")]
    Idle {
        /// The idle timeout.
        idle: Duration,
        /// Bytes moved until then.
        stats: RelayStats,
    },
    /// A 101 answer was passed on but one side's connection could not be taken over.
    #[error("taking over the {side} connection after 101 Switching Protocols failed: {}", ErrorChain(.source))]
    Upgrade {
        /// `client` or `upstream`.
        side: &'static str,
        /// Bytes moved until then.
        stats: RelayStats,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// A 101 answer was passed on but one side's connection was not handed over in time.
    #[error(
        "taking over the {side} connection after 101 Switching Protocols: not done within {timeout:?}"
    )]
    UpgradeTimeout {
        /// `client` or `upstream`.
        side: &'static str,
        /// How long was waited.
        timeout: Duration,
        /// Bytes moved until then.
        stats: RelayStats,
    },
    /// The relay of an upgraded (e.g. WebSocket) connection failed or went idle.
    #[error("upgraded connection: {source}")]
    Tunnel {
        /// Bytes moved on the client connection until then, the HTTP part included.
        stats: RelayStats,
        /// The relay's error (its own counts are those of the tunnel alone).
        #[source]
        source: RelayError,
    },
}

impl HttpError {
    /// Bytes moved on the client connection before the failure.
    pub fn stats(&self) -> RelayStats {
        match self {
            HttpError::Serve { stats, .. }
            | HttpError::HeadTimeout { stats, .. }
            | HttpError::Idle { stats, .. }
            | HttpError::Upgrade { stats, .. }
            | HttpError::UpgradeTimeout { stats, .. }
            | HttpError::Tunnel { stats, .. } => *stats,
        }
    }
}

/// Displays an error followed by its causes (`a: b: c`). hyper's errors print only their own
/// kind ("connection error") and keep the useful part (the socket error) as a source.
struct ErrorChain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn the_forbidden_page_names_host_and_reason() {
        assert_eq!(
            forbidden_body(
                "api.example.com",
                "host denied by rule deny_hosts[0] = *.example.com"
            ),
            "gateway: request to api.example.com refused: host denied by rule \
             deny_hosts[0] = *.example.com\n"
        );
    }

    #[test]
    fn error_chains_read_as_words() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let error = Outer(io::Error::other("inner"));
        assert_eq!(ErrorChain(&error).to_string(), "outer: inner");
    }

    #[test]
    fn timeouts_read_as_words() {
        let error = HttpError::HeadTimeout {
            timeout: Duration::from_secs(10),
            stats: RelayStats {
                bytes_up: 3,
                bytes_down: 0,
            },
        };
        assert_eq!(
            error.to_string(),
            "no complete request head within 10s (header timeout)"
        );
        assert_eq!(error.stats().bytes_up, 3);
    }
}
