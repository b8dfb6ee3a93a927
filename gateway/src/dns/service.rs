//! One sandbox's DNS service: hickory-server serving its UDP and TCP sockets, each query judged
//! by the caller's [`DnsPolicy`] (a denied name is answered at once, never sent on), the rest
//! resolved by the shared [`Resolver`], and every address answered reported to the caller's
//! [`Bindings`] under each name of the answer's chain.

use std::{
    fmt, iter,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_proto::{HostName, config::DeniedAnswer};
use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode},
        rr::{DNSClass, Name, RData, Record, RecordType, rdata::CNAME},
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use super::{
    listener::{BoundDns, DnsListenError},
    resolver::{Resolution, Resolver},
};
use crate::sandbox::SandboxId;

/// How long a TCP client may stay silent before its connection is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Queries of one sandbox being resolved at once; more get SERVFAIL at once, so a flood of
/// names costs the sandbox its own answers rather than the gateway's memory.
const MAX_IN_FLIGHT: usize = 256;
/// Longest wait for the resolver (its own timeouts and retries normally end sooner).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest UDP payload offered to EDNS clients (the DNS flag day 2020 value).
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Refusal lines logged per sandbox per [`LOG_WINDOW`]; the next line counts those skipped.
const LOG_LINES_PER_WINDOW: u32 = 10;
/// See [`LOG_LINES_PER_WINDOW`].
const LOG_WINDOW: Duration = Duration::from_secs(1);

/// Judges the names a sandbox asks for; supplied by the caller (the sandbox's name rules).
pub trait DnsPolicy: Send + Sync {
    /// `Ok` when `name` may be resolved, else the rule that denies it (for the log line).
    ///
    /// # Errors
    /// The denying rule, as text.
    fn judge(&self, name: &HostName) -> Result<(), String>;
}

/// Receives every address given to a sandbox, once per name it was given under; supplied by
/// the caller (which records (sandbox, address) → names for the eBPF programs).
pub trait Bindings: Send + Sync {
    /// `addr` was given as an address of `name`, valid for `ttl` (already clamped to
    /// `[binding_ttl_min, binding_ttl_max]`). Called before the answer is sent.
    fn bind(&self, addr: IpAddr, name: &HostName, ttl: Duration);
}

/// What one sandbox's DNS service did, counted as it goes.
#[derive(Debug, Default)]
pub struct DnsCounters {
    answered: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// A reading of [`DnsCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Queries answered from the hosts file, the cache or an upstream (NXDOMAIN and NODATA
    /// included).
    pub answered: u64,
    /// Queries for names the policy denies (or that are not host names), answered with the
    /// configured `denied_answer` without asking anyone.
    pub refused: u64,
    /// Queries that got an error: no upstream answer (SERVFAIL), too many in flight,
    /// malformed or unsupported requests.
    pub failed: u64,
}

impl DnsCounters {
    /// The counts so far.
    pub fn stats(&self) -> DnsStats {
        DnsStats {
            answered: self.answered.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What a sandbox's DNS service is made of, besides its sockets.
#[derive(Clone)]
pub struct DnsContext {
    /// The sandbox served (for logs).
    pub sandbox: SandboxId,
    /// The resolver shared by every sandbox.
    pub resolver: Arc<Resolver>,
    /// Judges each name asked for.
    pub policy: Arc<dyn DnsPolicy>,
    /// Receives each address answered.
    pub bindings: Arc<dyn Bindings>,
}

impl fmt::Debug for DnsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsContext")
            .field("sandbox", &self.sandbox)
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

/// A sandbox's running DNS service. Dropping it stops serving at once; [`DnsService::shutdown`]
/// stops gracefully.
pub struct DnsService {
    sandbox: SandboxId,
    addrs: Vec<SocketAddr>,
    counters: Arc<DnsCounters>,
    server: Server<Handler>,
}

impl fmt::Debug for DnsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsService")
            .field("sandbox", &self.sandbox)
            .field("addrs", &self.addrs)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl DnsService {
    /// Serves `bound` (from [`super::bind`]) for `ctx.sandbox`. Must be called inside the
    /// tokio runtime.
    ///
    /// # Errors
    /// [`DnsListenError::Socket`] when a socket cannot be registered with tokio.
    pub fn start(bound: BoundDns, ctx: DnsContext) -> Result<DnsService, DnsListenError> {
        let counters = Arc::new(DnsCounters::default());
        let handler = Handler {
            ctx: ctx.clone(),
            counters: Arc::clone(&counters),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            log_budget: Mutex::new(LogBudget::default()),
        };
        let mut server = Server::new(handler);
        let mut addrs = Vec::with_capacity(bound.sockets.len());
        for pair in bound.sockets {
            let register = |protocol| {
                move |source| DnsListenError::Socket {
                    op: "register",
                    protocol,
                    addr: pair.addr,
                    source,
                }
            };
            let udp = tokio::net::UdpSocket::from_std(pair.udp).map_err(register("UDP"))?;
            let tcp = tokio::net::TcpListener::from_std(pair.tcp).map_err(register("TCP"))?;
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
            addrs.push(pair.addr);
        }
        Ok(DnsService {
            sandbox: ctx.sandbox,
            addrs,
            counters,
            server,
        })
    }

    /// The addresses served, UDP and TCP.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The counters, shared: still readable after the service is gone.
    pub fn counters(&self) -> Arc<DnsCounters> {
        Arc::clone(&self.counters)
    }

    /// The counts so far.
    pub fn stats(&self) -> DnsStats {
        self.counters.stats()
    }

    /// Stops accepting, lets the queries being answered finish, and returns the final counts.
    pub async fn shutdown(mut self) -> DnsStats {
        if let Err(error) = self.server.shutdown_gracefully().await {
            debug!(sandbox = %self.sandbox, %error, "DNS service stopped with an error");
        }
        self.counters.stats()
    }
}

/// hickory-server's request handler for one sandbox.
struct Handler {
    ctx: DnsContext,
    counters: Arc<DnsCounters>,
    in_flight: Arc<Semaphore>,
    log_budget: Mutex<LogBudget>,
}

/// Refusal lines left in the current window, so a sandbox asking for denied names in a loop
/// cannot flood the log.
#[derive(Debug, Default)]
struct LogBudget {
    start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    /// `Some(lines skipped since the last one)` when this line may be logged.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .start
            .is_none_or(|start| now.duration_since(start) >= LOG_WINDOW)
        {
            self.start = Some(now);
            self.lines = 0;
        }
        if self.lines >= LOG_LINES_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What a query is answered with.
enum Reply {
    /// The resolver's answer.
    Resolved(Resolution),
    /// Only a response code: a denied name, an error.
    Code(ResponseCode),
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let reply = self.reply(request).await;
        send(request, reply, response_handle).await
    }
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        let sandbox = self.ctx.sandbox;
        let fail = |code| {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            Reply::Code(code)
        };
        if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            return fail(ResponseCode::BADVERS);
        }
        if request.metadata.op_code != OpCode::Query {
            debug!(%sandbox, op_code = ?request.metadata.op_code, "DNS request that is not a query");
            return fail(ResponseCode::NotImp);
        }
        // Exactly one question: what every stub resolver sends.
        let Ok(info) = request.request_info() else {
            debug!(%sandbox, questions = request.queries.len(), "DNS query without exactly one question");
            return fail(ResponseCode::FormErr);
        };
        let query = info.query;
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN {
            debug!(%sandbox, name = %query.name(), class = %query.query_class(), "DNS query outside class IN");
            return fail(ResponseCode::Refused);
        }
        let name = Name::from(query.name().clone());
        let host = match host_name(&name) {
            Ok(host) => host,
            Err(reason) => {
                return self.deny(
                    &name.to_ascii(),
                    qtype,
                    &format!("not a host name: {reason}"),
                );
            }
        };
        if let Err(rule) = self.ctx.policy.judge(&host) {
            return self.deny(host.as_str(), qtype, &rule);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            debug!(%sandbox, name = %host, %qtype, "too many DNS queries in flight; SERVFAIL");
            return fail(ResponseCode::ServFail);
        };
        let resolved =
            tokio::time::timeout(RESOLVE_TIMEOUT, self.ctx.resolver.resolve(&name, qtype)).await;
        match resolved {
            Ok(Ok(resolution)) => {
                self.bind_answers(&name, &resolution);
                self.counters.answered.fetch_add(1, Ordering::Relaxed);
                debug!(
                    %sandbox, name = %host, %qtype, code = %resolution.response_code,
                    answers = resolution.answers.len(), "DNS query answered"
                );
                Reply::Resolved(resolution)
            }
            Ok(Err(error)) => {
                debug!(%sandbox, name = %host, %qtype, %error, "DNS query failed; SERVFAIL");
                fail(ResponseCode::ServFail)
            }
            Err(_) => {
                debug!(%sandbox, name = %host, %qtype, timeout = ?RESOLVE_TIMEOUT, "DNS query timed out; SERVFAIL");
                fail(ResponseCode::ServFail)
            }
        }
    }

    fn deny(&self, name: &str, qtype: RecordType, rule: &str) -> Reply {
        let sandbox = self.ctx.sandbox;
        let admitted = self
            .log_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(Instant::now());
        if let Some(suppressed) = admitted {
            info!(%sandbox, name = %name, %qtype, rule, suppressed, "DNS query refused by policy");
        }
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        Reply::Code(match self.ctx.resolver.config().denied_answer {
            DeniedAnswer::Nxdomain => ResponseCode::NXDomain,
            DeniedAnswer::Refused => ResponseCode::Refused,
        })
    }

    fn bind_answers(&self, query_name: &Name, resolution: &Resolution) {
        let config = self.ctx.resolver.config();
        for binding in bindings(query_name, &resolution.answers) {
            let ttl = config.binding_ttl(Duration::from_secs(u64::from(binding.ttl)));
            self.ctx.bindings.bind(binding.addr, &binding.name, ttl);
        }
    }
}

/// Sends `reply` to the client: recursion available, EDNS when the client used it; hickory
/// truncates (TC) what does not fit the client's UDP size.
async fn send<R: ResponseHandler>(
    request: &Request,
    reply: Reply,
    mut response_handle: R,
) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|asked| {
        let mut edns = Edns::new();
        edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        edns.set_version(0);
        edns
    });
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.recursion_available = true;
    let empty = Resolution {
        response_code: ResponseCode::NoError,
        answers: Vec::new(),
        authorities: Vec::new(),
        additionals: Vec::new(),
    };
    let resolution = match reply {
        Reply::Resolved(resolution) => resolution,
        Reply::Code(code) => Resolution {
            response_code: code,
            ..empty
        },
    };
    metadata.response_code = resolution.response_code;
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
        metadata,
        resolution.answers.iter(),
        resolution.authorities.iter(),
        iter::empty(),
        resolution.additionals.iter(),
    );
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            debug!(src = %request.src(), %error, "DNS response not sent");
            not_sent(metadata)
        }
    }
}

fn not_sent(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// A DNS name as the project's host name (its one normalizer), or why it is not one.
fn host_name(name: &Name) -> Result<HostName, String> {
    // `to_ascii` escapes what is not a plain label character, which the normalizer refuses.
    HostName::parse(&name.to_ascii()).map_err(|error| error.to_string())
}

/// One address given under one name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    addr: IpAddr,
    name: HostName,
    /// Seconds: the least TTL of the records linking `name` to `addr`.
    ttl: u32,
}

/// The addresses of `answers` bound to each name of the chain that starts at `query_name`
/// (the name asked, then each CNAME target in turn). Records off the chain bind nothing.
fn bindings(query_name: &Name, answers: &[Record]) -> Vec<Binding> {
    // chain[i] = (name, TTL of the CNAME record leading to it; MAX for the name asked).
    let mut chain: Vec<(&Name, u32)> = vec![(query_name, u32::MAX)];
    // Each step uses one record, so the walk is bounded by the answer's size.
    for _ in 0..answers.len() {
        let Some(&(last, _)) = chain.last() else {
            break;
        };
        let next = answers.iter().find_map(|record| match &record.data {
            RData::CNAME(CNAME(target)) if record.name == *last => Some((target, record.ttl)),
            _ => None,
        });
        match next {
            Some((target, ttl)) if !chain.iter().any(|(seen, _)| *seen == target) => {
                chain.push((target, ttl));
            }
            _ => break,
        }
    }
    let hosts: Vec<Option<HostName>> = chain.iter().map(|(name, _)| host_name(name).ok()).collect();
    let mut out = Vec::new();
    for record in answers {
        let addr = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        let Some(owner) = chain.iter().position(|(name, _)| **name == record.name) else {
            continue;
        };
        // Walking back from the owner: each earlier name reaches it through one more CNAME.
        let mut ttl = record.ttl;
        for index in (0..=owner).rev() {
            if let Some(name) = &hosts[index] {
                out.push(Binding {
                    addr,
                    name: name.clone(),
                    ttl,
                });
            }
            ttl = ttl.min(chain[index].1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use hickory_server::proto::rr::rdata::{A, AAAA};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    fn record(owner: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(name(owner), ttl, data)
    }

    fn binding(addr: &str, host: &str, ttl: u32) -> Binding {
        Binding {
            addr: addr.parse().unwrap(),
            name: HostName::parse(host).unwrap(),
            ttl,
        }
    }

    #[test]
    fn refusal_lines_are_limited_and_count_what_was_skipped() {
        let mut budget = LogBudget::default();
        let start = Instant::now();
        for _ in 0..LOG_LINES_PER_WINDOW {
            assert_eq!(budget.admit(start), Some(0));
        }
        assert_eq!(budget.admit(start), None);
        assert_eq!(budget.admit(start + LOG_WINDOW / 2), None);
        assert_eq!(budget.admit(start + LOG_WINDOW), Some(2));
    }

    #[test]
    fn addresses_bind_to_the_name_asked() {
        let answers = [
            record("up.test.", 30, RData::A(A::new(192, 0, 2, 1))),
            record(
                "up.test.",
                40,
                RData::AAAA(AAAA::from_str("2001:db8::1").unwrap()),
            ),
        ];
        assert_eq!(
            bindings(&name("UP.test."), &answers),
            [
                binding("192.0.2.1", "up.test", 30),
                binding("2001:db8::1", "up.test", 40),
            ]
        );
    }

    #[test]
    fn a_cname_chain_binds_every_name_with_the_least_ttl_on_the_way() {
        let answers = [
            record("a.test.", 10, RData::CNAME(CNAME(name("b.test.")))),
            record("b.test.", 500, RData::CNAME(CNAME(name("c.test.")))),
            record("c.test.", 100, RData::A(A::new(192, 0, 2, 7))),
            // Off the chain: passed to the client, bound to nothing.
            record("other.test.", 100, RData::A(A::new(192, 0, 2, 8))),
        ];
        assert_eq!(
            bindings(&name("a.test."), &answers),
            [
                binding("192.0.2.7", "c.test", 100),
                binding("192.0.2.7", "b.test", 100),
                binding("192.0.2.7", "a.test", 10),
            ]
        );
    }

    #[test]
    fn cname_loops_and_odd_names_end_the_walk() {
        let answers = [
            record("a.test.", 10, RData::CNAME(CNAME(name("b.test.")))),
            record("b.test.", 10, RData::CNAME(CNAME(name("a.test.")))),
            record("b.test.", 10, RData::A(A::new(192, 0, 2, 9))),
        ];
        assert_eq!(
            bindings(&name("a.test."), &answers),
            [
                binding("192.0.2.9", "b.test", 10),
                binding("192.0.2.9", "a.test", 10),
            ]
        );
        let odd = Name::from_labels(vec![b"we ird".to_vec(), b"test".to_vec()]).unwrap();
        let answers = [Record::from_rdata(
            odd.clone(),
            5,
            RData::A(A::new(192, 0, 2, 1)),
        )];
        assert!(bindings(&odd, &answers).is_empty());
        assert!(host_name(&Name::root()).is_err());
    }
}
