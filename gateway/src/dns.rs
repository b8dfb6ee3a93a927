//! The per-sandbox DNS service. Each sandbox's queries are answered by its own [`DnsService`]
//! (UDP and TCP, bound inside the sandbox's network namespace): a name the caller's
//! [`DnsPolicy`] denies is answered NXDOMAIN (or REFUSED) without asking anyone; the others are
//! resolved by the [`Resolver`] every sandbox shares (hosts file, cache, upstreams), and every
//! address answered is reported to the caller's [`Bindings`] under each name of its CNAME chain,
//! so the caller can record which addresses a sandbox was given for which names: the daemon
//! keeps them in a [`SandboxBindings`] table per sandbox, written through to the eBPF
//! `DNS_BINDINGS` map.
//!
//! Wire handling is hickory's: hickory-server parses requests and encodes responses
//! (truncation to the client's UDP size included), hickory-resolver forwards, caches and retries
//! over TCP.

pub mod bindings;
pub mod listener;
pub mod resolver;
pub mod service;

pub use self::{
    bindings::{BindingSink, SandboxBindings},
    listener::{BoundDns, DnsListenError, bind},
    resolver::{LookupError, Resolution, Resolver, ResolverError},
    service::{Bindings, DnsContext, DnsCounters, DnsPolicy, DnsService, DnsStats},
};

#[cfg(test)]
mod tests;
