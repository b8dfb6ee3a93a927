//! The resolver every sandbox's DNS service shares: the hosts file first, then a cache, then
//! the upstream resolvers (hickory-resolver: EDNS, UDP with a TCP retry on truncation,
//! CNAME chains kept, negative answers cached).

use std::{
    fs::File,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gateway_proto::{
    config::{DnsConfig, Upstream},
    resolv_conf,
};
use hickory_resolver::{
    Hosts, TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::{Query, ResponseCode},
        rr::{Name, Record, RecordType},
    },
};
use tracing::warn;

/// How long one attempt at an upstream may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the shared resolver could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// The hosts file exists but could not be read.
    #[error("hosts file {}: {source}", .path.display())]
    HostsFile {
        /// The configured `hosts_file`.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// hickory refused the configuration.
    #[error("DNS resolver for upstreams {upstreams:?}: {source}")]
    Build {
        /// The resolvers it was to forward to.
        upstreams: Vec<SocketAddr>,
        /// What hickory said.
        #[source]
        source: NetError,
    },
}

/// Why one query could not be answered (the sandbox gets SERVFAIL).
#[derive(Debug, thiserror::Error)]
#[error("resolving {name} {record_type}: {source}")]
pub struct LookupError {
    /// The name asked for.
    pub name: Name,
    /// The type asked for.
    pub record_type: RecordType,
    /// What failed: no upstream, a timeout, an upstream error code, ...
    #[source]
    pub source: NetError,
}

/// What the resolver found for one query: the sections of the answer to give the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// NOERROR (answers, or none of that type: NODATA) or NXDOMAIN.
    pub response_code: ResponseCode,
    /// The answers, CNAME chain included, with their TTLs (counted down while cached).
    pub answers: Vec<Record>,
    /// The authority section (the SOA of a negative answer, so clients can cache it).
    pub authorities: Vec<Record>,
    /// The additional section.
    pub additionals: Vec<Record>,
}

/// The resolver shared by every sandbox's DNS service, with the `[dns]` settings the services
/// apply.
pub struct Resolver {
    inner: TokioResolver,
    hosts: Arc<Hosts>,
    upstreams: Vec<SocketAddr>,
    config: DnsConfig,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("upstreams", &self.upstreams)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// The resolver of `config`: its `upstream` resolvers, or, when there are none, the
    /// nameservers of `resolv_conf` (`[policy] resolv_conf`) on port 53. A missing hosts file
    /// or resolv.conf is logged and treated as empty; with no resolver at all, every name the
    /// hosts file lacks fails (SERVFAIL).
    ///
    /// # Errors
    /// [`ResolverError`] when the hosts file cannot be read or hickory refuses the settings.
    pub fn new(config: &DnsConfig, resolv_conf: &Path) -> Result<Resolver, ResolverError> {
        let upstreams = if config.upstream.is_empty() {
            host_resolvers(resolv_conf)
        } else {
            config.upstream.iter().map(|u| u.addr()).collect()
        };
        if upstreams.is_empty() {
            warn!(
                resolv_conf = %resolv_conf.display(),
                "no upstream resolver for the sandboxes' DNS: names outside the hosts file will fail"
            );
        }
        let hosts = Arc::new(read_hosts(config.hosts_file.path())?);
        let name_servers = upstreams.iter().map(|addr| name_server(*addr)).collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        );
        *builder.options_mut() = options(config);
        let mut inner = builder.build().map_err(|source| ResolverError::Build {
            upstreams: upstreams.clone(),
            source,
        })?;
        inner.set_hosts(Arc::clone(&hosts));
        Ok(Resolver {
            inner,
            hosts,
            upstreams,
            config: config.clone(),
        })
    }

    /// The resolvers queries are forwarded to.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The `[dns]` settings (denied answer, binding TTL bounds).
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Answers `name` (fully qualified) of `record_type`: from the hosts file, the cache, or
    /// the upstreams. NXDOMAIN and NODATA are answers, not errors. A name the hosts file has
    /// is never asked upstream for its addresses: when the file lacks the type asked (an IPv6
    /// address of a name it only gives IPv4 for), the answer is NODATA.
    ///
    /// # Errors
    /// [`LookupError`] when no upstream gave a usable answer (none configured, timeouts,
    /// SERVFAIL or REFUSED upstream, ...).
    pub async fn resolve(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Resolution, LookupError> {
        if self.hosts_lack_only_this_type(name, record_type) {
            return Ok(Resolution {
                response_code: ResponseCode::NoError,
                answers: Vec::new(),
                authorities: Vec::new(),
                additionals: Vec::new(),
            });
        }
        match self.inner.lookup(name.clone(), record_type).await {
            Ok(lookup) => Ok(Resolution {
                response_code: ResponseCode::NoError,
                answers: lookup.answers().to_vec(),
                authorities: lookup.authorities().to_vec(),
                additionals: lookup.additionals().to_vec(),
            }),
            Err(NetError::Dns(DnsError::NoRecordsFound(none)))
                if matches!(
                    none.response_code,
                    ResponseCode::NoError | ResponseCode::NXDomain
                ) =>
            {
                // The SOA is kept apart by hickory; put it back where the client expects it.
                let mut authorities: Vec<Record> = none
                    .authorities
                    .iter()
                    .flat_map(|records| records.iter())
                    .filter(|record| record.record_type() != RecordType::SOA)
                    .cloned()
                    .collect();
                if let Some(soa) = none.soa {
                    authorities.push(soa.into_record_of_rdata());
                }
                Ok(Resolution {
                    response_code: none.response_code,
                    answers: Vec::new(),
                    authorities,
                    additionals: Vec::new(),
                })
            }
            Err(source) => Err(LookupError {
                name: name.clone(),
                record_type,
                source,
            }),
        }
    }

    /// Whether the hosts file has `name`, but for the other address type only.
    fn hosts_lack_only_this_type(&self, name: &Name, record_type: RecordType) -> bool {
        let other = match record_type {
            RecordType::A => RecordType::AAAA,
            RecordType::AAAA => RecordType::A,
            _ => return false,
        };
        let has = |record_type| {
            self.hosts
                .lookup_static_host(&Query::query(name.clone(), record_type))
                .is_some()
        };
        !has(record_type) && has(other)
    }
}

/// The nameservers of the host's resolv.conf, on port 53.
fn host_resolvers(resolv_conf: &Path) -> Vec<SocketAddr> {
    match std::fs::read_to_string(resolv_conf) {
        Ok(text) => resolv_conf::nameservers(&text)
            .into_iter()
            .map(|ip| Upstream::from(ip).addr())
            .collect(),
        Err(error) => {
            warn!(file = %resolv_conf.display(), %error, "cannot read the host's resolvers");
            Vec::new()
        }
    }
}

fn read_hosts(path: &Path) -> Result<Hosts, ResolverError> {
    let mut hosts = Hosts::default();
    let read = File::open(path).and_then(|file| hosts.read_hosts_conf(file));
    match read {
        Ok(()) => Ok(hosts),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            warn!(file = %path.display(), "no hosts file; every name goes to the resolvers");
            Ok(Hosts::default())
        }
        Err(source) => Err(ResolverError::HostsFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// One upstream, asked over UDP first and over TCP when the answer is truncated.
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

fn options(config: &DnsConfig) -> ResolverOpts {
    let mut options = ResolverOpts::default();
    // Queries arrive fully qualified; search lists and ndots never apply.
    options.ndots = 0;
    options.cache_size = u64::try_from(config.cache_size.get().get()).unwrap_or(u64::MAX);
    // The hosts file is ours (set after build), never the system's.
    options.use_hosts_file = ResolveHosts::Never;
    // A forwarder hands the client the whole chain (RFC 1034 4.3.2).
    options.preserve_intermediates = true;
    options.edns0 = true;
    // Per attempt (UDP is resent within it); one retry (hickory counts retries), so a dead
    // upstream costs a client about 6 s of waiting for its SERVFAIL, not 15 s.
    options.timeout = UPSTREAM_TIMEOUT;
    options.attempts = 1;
    options
}
