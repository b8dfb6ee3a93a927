//! The DNS service end to end on loopback: a test upstream (hickory-server with an in-memory
//! zone, counting what it is asked), the shared resolver forwarding to it, and a sandbox's
//! service asked over raw UDP and TCP with messages built by hickory-proto.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use gateway_proto::{
    HostName,
    config::{BindingTtl, DeniedAnswer, DnsConfig, FilePath, Upstream},
};
use hickory_server::{
    Server,
    net::{runtime::Time, xfer::Protocol},
    proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{
            LowerName, Name, RData, Record, RecordType,
            rdata::{A, AAAA, CNAME, SOA},
        },
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

use super::*;
use crate::sandbox::{SandboxId, netns::NetNs};

/// Every test ends within this.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// One answer from the service under test.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Records of `big.test`: more than fit in 512 bytes, and more than the resolver's 1232-byte
/// EDNS buffer, so both the client and the resolver need TCP.
const BIG: u8 = 100;

/// One question the test upstream was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    name: String,
    qtype: RecordType,
    protocol: Protocol,
}

/// Answers from a catalog and writes down every question.
struct Counting {
    catalog: Catalog,
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if let Ok(info) = request.request_info() {
            lock(&self.seen).push(Seen {
                name: info.query.name().to_string(),
                qtype: info.query.query_type(),
                protocol: request.protocol(),
            });
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn name(text: &str) -> Name {
    Name::from_str(text).unwrap()
}

/// The test upstream: zone `test.` on 127.0.0.1, UDP and TCP on one random port.
struct TestUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: Server<Counting>,
}

impl TestUpstream {
    async fn start() -> TestUpstream {
        let origin = name("test.");
        let mut zone =
            InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
                origin.clone(),
                ZoneType::Primary,
                AxfrPolicy::Deny,
            );
        let soa = SOA::new(
            name("ns.test."),
            name("admin.test."),
            1,
            3600,
            600,
            86_400,
            60,
        );
        let mut records = vec![
            Record::from_rdata(origin.clone(), 60, RData::SOA(soa)),
            Record::from_rdata(name("up.test."), 30, RData::A(A::new(192, 0, 2, 1))),
            Record::from_rdata(
                name("v6.test."),
                300,
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 6)),
            ),
            Record::from_rdata(
                name("alias.test."),
                7200,
                RData::CNAME(CNAME(name("up.test."))),
            ),
            Record::from_rdata(name("hosts.test."), 300, RData::A(A::new(192, 0, 2, 99))),
            Record::from_rdata(name("denied.test."), 300, RData::A(A::new(192, 0, 2, 66))),
            Record::from_rdata(
                name("pinned.test."),
                300,
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99)),
            ),
            Record::from_rdata(name("long.test."), 86_400, RData::A(A::new(192, 0, 2, 77))),
        ];
        for i in 0..BIG {
            records.push(Record::from_rdata(
                name("big.test."),
                300,
                RData::A(A::new(10, 0, 0, i)),
            ));
        }
        for record in records {
            assert!(zone.upsert_mut(record, 1));
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut server = Server::new(Counting {
            catalog,
            seen: Arc::clone(&seen),
        });
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        TestUpstream {
            addr,
            seen,
            _server: server,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    /// How many times `qname` was asked (any type, any protocol).
    fn asked(&self, qname: &str) -> usize {
        let fqdn = format!("{qname}.");
        self.seen().iter().filter(|seen| seen.name == fqdn).count()
    }
}

/// Denies `denied.test` (and `*.denied.test`), as a sandbox's name rules would.
struct DenyList;

impl DnsPolicy for DenyList {
    fn judge(&self, name: &HostName) -> Result<(), String> {
        if name.is_at_or_below(&HostName::parse("denied.test").unwrap()) {
            Err("deny_hosts *.denied.test".to_owned())
        } else {
            Ok(())
        }
    }
}

/// Writes down every binding.
#[derive(Default)]
struct Recorded(Mutex<Vec<(IpAddr, HostName, Duration)>>);

impl Bindings for Recorded {
    fn bind(&self, addr: IpAddr, name: &HostName, ttl: Duration) {
        lock(&self.0).push((addr, name.clone(), ttl));
    }
}

impl Recorded {
    fn of(&self, host: &str) -> Vec<(IpAddr, Duration)> {
        let host = HostName::parse(host).unwrap();
        lock(&self.0)
            .iter()
            .filter(|(_, name, _)| *name == host)
            .map(|(addr, _, ttl)| (*addr, *ttl))
            .collect()
    }
}

/// A sandbox's service over a resolver forwarding to `upstream`.
struct Fixture {
    upstream: TestUpstream,
    service: DnsService,
    bindings: Arc<Recorded>,
    _dir: tempfile::TempDir,
}

fn config(upstream: SocketAddr, hosts_file: &std::path::Path) -> DnsConfig {
    DnsConfig {
        upstream: vec![Upstream::from(upstream)],
        hosts_file: FilePath::from(hosts_file.to_str().unwrap()),
        ..DnsConfig::default()
    }
}

impl Fixture {
    async fn start(change: impl FnOnce(&mut DnsConfig)) -> Fixture {
        let upstream = TestUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        let mut file = std::fs::File::create(&hosts).unwrap();
        writeln!(
            file,
            "# test hosts\n198.51.100.1 hosts.test\n2001:db8::1 hosts.test\n198.51.100.2 pinned.test"
        )
        .unwrap();
        let mut config = config(upstream.addr, &hosts);
        change(&mut config);
        // A resolv.conf that must not be read: upstream is set.
        let resolver = Arc::new(Resolver::new(&config, &dir.path().join("absent")).unwrap());
        assert_eq!(resolver.upstreams(), [upstream.addr]);
        let bindings = Arc::new(Recorded::default());
        let bound = bind(
            None,
            &[
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
            ],
        )
        .unwrap();
        let service = DnsService::start(
            bound,
            DnsContext {
                sandbox: SandboxId(7),
                resolver,
                policy: Arc::new(DenyList),
                bindings: Arc::clone(&bindings) as Arc<dyn Bindings>,
            },
        )
        .unwrap();
        Fixture {
            upstream,
            service,
            bindings,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.service.local_addrs()[0]
    }
}

fn query(qname: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = rand_id();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    if edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        message.set_edns(edns);
    }
    message.to_vec().unwrap()
}

fn rand_id() -> u16 {
    use std::hash::{BuildHasher as _, RandomState};
    u16::try_from(RandomState::new().hash_one(std::time::Instant::now()) & 0xffff).unwrap()
}

/// Asks over UDP; the reply must carry the query's id.
async fn ask_udp(server: SocketAddr, qname: &str, qtype: RecordType, edns: bool) -> Message {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (Ipv6Addr::LOCALHOST, 0).into()
    };
    let socket = UdpSocket::bind(bind).await.unwrap();
    let bytes = query(qname, qtype, edns);
    socket.send_to(&bytes, server).await.unwrap();
    let mut buf = vec![0; 65_535];
    let (len, from) = tokio::time::timeout(ANSWER_TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("no UDP answer in time")
        .unwrap();
    assert_eq!(from, server);
    let reply = Message::from_vec(&buf[..len]).unwrap();
    check_reply(&bytes, &reply);
    reply
}

/// Asks over TCP (two-byte length prefix).
async fn ask_tcp(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    ask_tcp_within(server, qname, qtype, ANSWER_TIMEOUT).await
}

async fn ask_tcp_within(
    server: SocketAddr,
    qname: &str,
    qtype: RecordType,
    within: Duration,
) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let bytes = query(qname, qtype, false);
    let len = u16::try_from(bytes.len()).unwrap();
    stream.write_all(&len.to_be_bytes()).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let reply = tokio::time::timeout(within, async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    })
    .await
    .expect("no TCP answer in time");
    let reply = Message::from_vec(&reply).unwrap();
    check_reply(&bytes, &reply);
    reply
}

fn check_reply(asked: &[u8], reply: &Message) {
    let asked = Message::from_vec(asked).unwrap();
    assert_eq!(reply.metadata.id, asked.metadata.id);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(reply.metadata.op_code, OpCode::Query);
    assert!(reply.metadata.recursion_available);
    assert_eq!(reply.queries, asked.queries);
}

fn addrs(reply: &Message) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test did not finish in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_with_its_ttl_and_binds_it_with_the_ttl_raised() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        let reply = ask_udp(fx.addr(), "up.test.", RecordType::A, true).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&reply), [ip("192.0.2.1")]);
        assert!(reply.answers[0].ttl <= 30 && reply.answers[0].ttl > 0);
        assert!(reply.edns.is_some(), "an EDNS query gets an EDNS answer");
        assert_eq!(
            fx.bindings.of("up.test"),
            [(ip("192.0.2.1"), Duration::from_secs(60))]
        );
        // Over IPv6 and TCP too, the same answer.
        if let Some(v6) = fx.service.local_addrs().get(1) {
            let reply = ask_udp(*v6, "up.test.", RecordType::A, false).await;
            assert_eq!(addrs(&reply), [ip("192.0.2.1")]);
        }
        let reply = ask_tcp(fx.addr(), "UP.Test.", RecordType::A).await;
        assert_eq!(addrs(&reply), [ip("192.0.2.1")]);
        // A long TTL is passed on, and lowered for the binding.
        let reply = ask_udp(fx.addr(), "long.test.", RecordType::A, false).await;
        assert!(reply.answers[0].ttl > 3600);
        assert_eq!(
            fx.bindings.of("long.test"),
            [(ip("192.0.2.77"), Duration::from_secs(3600))]
        );
        assert_eq!(fx.service.stats().answered, 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_only_names_answer_aaaa_and_nodata_for_a() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        let reply = ask_udp(fx.addr(), "v6.test.", RecordType::AAAA, false).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&reply), [ip("2001:db8::6")]);
        assert_eq!(
            fx.bindings.of("v6.test"),
            [(ip("2001:db8::6"), Duration::from_secs(300))]
        );
        let reply = ask_udp(fx.addr(), "v6.test.", RecordType::A, false).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert!(
            reply
                .authorities
                .iter()
                .any(|record| record.record_type() == RecordType::SOA),
            "NODATA carries the SOA: {reply:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_chain_is_answered_whole_and_binds_both_names() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        let reply = ask_udp(fx.addr(), "alias.test.", RecordType::A, false).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            reply.answers[0].data,
            RData::CNAME(CNAME(name("up.test."))),
            "{reply:?}"
        );
        assert_eq!(addrs(&reply), [ip("192.0.2.1")]);
        let bound = [(ip("192.0.2.1"), Duration::from_secs(60))];
        assert_eq!(fx.bindings.of("alias.test"), bound);
        assert_eq!(fx.bindings.of("up.test"), bound);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        let reply = ask_udp(fx.addr(), "big.test.", RecordType::A, false).await;
        assert!(
            reply.metadata.truncation,
            "512-byte UDP answer is truncated"
        );
        assert!(reply.answers.len() < usize::from(BIG));
        let reply = ask_tcp(fx.addr(), "big.test.", RecordType::A).await;
        assert!(!reply.metadata.truncation);
        assert_eq!(addrs(&reply).len(), usize::from(BIG));
        // The resolver needed TCP too (the answer exceeds its EDNS buffer), and asked once:
        // the TCP retry of the client was answered from the cache.
        let seen = fx.upstream.seen();
        let big: Vec<_> = seen.iter().filter(|s| s.name == "big.test.").collect();
        assert!(
            big.iter().any(|s| s.protocol == Protocol::Tcp),
            "upstream asked over TCP: {big:?}"
        );
        assert!(big.len() <= 2, "{big:?}");
        assert_eq!(fx.bindings.of("big.test").len(), 2 * usize::from(BIG));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_is_passed_through_with_the_soa() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        let reply = ask_udp(fx.addr(), "missing.test.", RecordType::A, false).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty());
        assert!(
            reply
                .authorities
                .iter()
                .any(|record| record.record_type() == RecordType::SOA)
        );
        assert_eq!(fx.service.stats().answered, 1);
        assert!(lock(&fx.bindings.0).is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_file_overrides_the_upstream() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        let reply = ask_udp(fx.addr(), "hosts.test.", RecordType::A, false).await;
        assert_eq!(addrs(&reply), [ip("198.51.100.1")]);
        let reply = ask_udp(fx.addr(), "hosts.test.", RecordType::AAAA, false).await;
        assert_eq!(addrs(&reply), [ip("2001:db8::1")]);
        // A name the file gives an IPv4 address only has no IPv6 one, whatever upstream says.
        let reply = ask_udp(fx.addr(), "pinned.test.", RecordType::AAAA, false).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        let reply = ask_udp(fx.addr(), "pinned.test.", RecordType::A, false).await;
        assert_eq!(addrs(&reply), [ip("198.51.100.2")]);
        assert_eq!(fx.upstream.asked("hosts.test"), 0);
        assert_eq!(fx.upstream.asked("pinned.test"), 0);
        assert_eq!(
            fx.bindings.of("hosts.test"),
            [
                (ip("198.51.100.1"), Duration::from_secs(3600)),
                (ip("2001:db8::1"), Duration::from_secs(3600)),
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_name_is_never_sent_upstream() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        for (qname, qtype) in [
            ("denied.test.", RecordType::A),
            ("x.denied.test.", RecordType::AAAA),
            ("Denied.Test.", RecordType::TXT),
        ] {
            let reply = ask_udp(fx.addr(), qname, qtype, false).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{qname}"
            );
            assert!(reply.answers.is_empty());
        }
        let reply = ask_tcp(fx.addr(), "denied.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(fx.upstream.asked("denied.test"), 0);
        assert_eq!(fx.upstream.asked("x.denied.test"), 0);
        assert!(lock(&fx.bindings.0).is_empty());
        assert_eq!(
            fx.service.stats(),
            DnsStats {
                answered: 0,
                refused: 4,
                failed: 0
            }
        );

        let fx = Fixture::start(|config| config.denied_answer = DeniedAnswer::Refused).await;
        let reply = ask_udp(fx.addr(), "denied.test.", RecordType::A, true).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert_eq!(fx.upstream.asked("denied.test"), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_query_is_answered_from_the_cache() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        for _ in 0..3 {
            let reply = ask_udp(fx.addr(), "up.test.", RecordType::A, false).await;
            assert_eq!(addrs(&reply), [ip("192.0.2.1")]);
        }
        for _ in 0..2 {
            let reply = ask_udp(fx.addr(), "missing.test.", RecordType::A, false).await;
            assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        }
        assert_eq!(fx.upstream.asked("up.test"), 1);
        assert_eq!(fx.upstream.asked("missing.test"), 1);
        // Every answer binds again, so the caller's entries are refreshed.
        assert_eq!(fx.bindings.of("up.test").len(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unsupported_requests_get_errors_not_panics() {
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        // Two questions.
        let mut message = Message::query();
        message.metadata.id = 1;
        message.add_query(Query::query(name("up.test."), RecordType::A));
        message.add_query(Query::query(name("v6.test."), RecordType::AAAA));
        // Garbage after a valid header, and a short datagram (no answer possible).
        let cases: [(Vec<u8>, Option<ResponseCode>); 3] = [
            (message.to_vec().unwrap(), Some(ResponseCode::FormErr)),
            (
                [&[0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0][..], &[0xff; 40][..]].concat(),
                Some(ResponseCode::FormErr),
            ),
            (vec![1, 2, 3], None),
        ];
        let mut buf = vec![0; 4096];
        for (bytes, expected) in cases {
            socket.send_to(&bytes, fx.addr()).await.unwrap();
            let got =
                tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await;
            match (expected, got) {
                (Some(code), Ok(Ok((len, _)))) => {
                    let reply = Message::from_vec(&buf[..len]).unwrap();
                    assert_eq!(reply.metadata.response_code, code);
                }
                (None, Err(_)) => {}
                (expected, got) => panic!("expected {expected:?}, got {got:?}"),
            }
        }
        // The service still answers.
        let reply = ask_udp(fx.addr(), "up.test.", RecordType::A, false).await;
        assert_eq!(addrs(&reply), [ip("192.0.2.1")]);
        assert_eq!(fx.upstream.asked("v6.test"), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_servfail() {
    bounded(async {
        // Nothing listens on this port (bound, then closed).
        let closed = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(closed, &dir.path().join("no-hosts"));
        config.binding_ttl_min = BindingTtl::try_from(Duration::from_secs(1)).unwrap();
        let resolver = Arc::new(Resolver::new(&config, &dir.path().join("absent")).unwrap());
        let bound = bind(None, &[SocketAddr::from((Ipv4Addr::LOCALHOST, 0))]).unwrap();
        let service = DnsService::start(
            bound,
            DnsContext {
                sandbox: SandboxId(8),
                resolver,
                policy: Arc::new(DenyList),
                bindings: Arc::new(Recorded::default()),
            },
        )
        .unwrap();
        let started = std::time::Instant::now();
        let reply = ask_tcp_within(
            service.local_addrs()[0],
            "up.test.",
            RecordType::A,
            Duration::from_secs(12),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        let stats = service.shutdown().await;
        assert_eq!(stats.failed, 1);
    })
    .await;
}

#[test]
fn empty_upstream_means_the_nameservers_of_resolv_conf() {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\nnameserver 2001:db8::53\n").unwrap();
    let config = DnsConfig {
        hosts_file: FilePath::from(dir.path().join("hosts").to_str().unwrap()),
        ..DnsConfig::default()
    };
    // Nothing is sent: building the resolver only reads the files.
    let resolver = Resolver::new(&config, &resolv).unwrap();
    let expected: Vec<SocketAddr> = vec![
        "192.0.2.53:53".parse().unwrap(),
        "[2001:db8::53]:53".parse().unwrap(),
    ];
    assert_eq!(resolver.upstreams(), expected);
    assert!(
        Resolver::new(&config, &dir.path().join("absent"))
            .unwrap()
            .upstreams()
            .is_empty()
    );
    // A hosts file that is a directory cannot be read: an error naming it.
    let config = DnsConfig {
        hosts_file: FilePath::from(dir.path().to_str().unwrap()),
        ..DnsConfig::default()
    };
    let error = Resolver::new(&config, &resolv).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("hosts file {}: ", dir.path().display())),
        "{error}"
    );
}

/// Bound inside a sandbox's own network namespace (only `lo`), served from tokio in the host's,
/// forwarding to an upstream in the host's: a client inside the namespace gets its answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_inside_a_network_namespace() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: creating a network namespace needs root");
        return;
    }
    bounded(async {
        let upstream = TestUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = config(upstream.addr, &dir.path().join("no-hosts"));
        let resolver = Arc::new(Resolver::new(&config, &dir.path().join("absent")).unwrap());
        let netns = NetNs::new_isolated("gateway-dns-unit-test").unwrap();
        let asked = [
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        ];
        let bound = bind(Some(&netns), &asked).unwrap();
        let bindings = Arc::new(Recorded::default());
        let service = DnsService::start(
            bound,
            DnsContext {
                sandbox: SandboxId(9),
                resolver,
                policy: Arc::new(DenyList),
                bindings: Arc::clone(&bindings) as Arc<dyn Bindings>,
            },
        )
        .unwrap();
        let server = service.local_addrs()[0];
        // In the host's namespace nothing listens there (the port may by chance be taken by
        // something else, so only the namespace's answer is checked).
        let bytes = query("up.test.", RecordType::A, false);
        let reply = tokio::task::spawn_blocking(move || {
            netns
                .run(move || {
                    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                    socket.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
                    socket.send_to(&bytes, server).unwrap();
                    let mut buf = vec![0; 4096];
                    let (len, _) = socket.recv_from(&mut buf).unwrap();
                    buf.truncate(len);
                    buf
                })
                .unwrap()
        })
        .await
        .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(addrs(&reply), [ip("192.0.2.1")]);
        assert_eq!(bindings.of("up.test").len(), 1);
        assert_eq!(upstream.asked("up.test"), 1);
    })
    .await;
}

#[test]
fn the_big_name_exceeds_the_resolvers_udp_buffer() {
    let records: Vec<Record> = (0..BIG)
        .map(|i| Record::from_rdata(name("big.test."), 300, RData::A(A::new(10, 0, 0, i))))
        .collect();
    let mut message = Message::response(1, OpCode::Query);
    message.add_query(Query::query(name("big.test."), RecordType::A));
    message.add_answers(records);
    assert!(message.to_vec().unwrap().len() > 1232);
}

/// This thread's log lines (debug and up) while the guard lives; see `http::log_capture` for
/// why a silent second dispatcher is registered.
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    static SILENT: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SILENT.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let text = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(Arc::clone(&text));
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (text, tracing::subscriber::set_default(subscriber))
}

/// One debug line per answered query and one info line per refused one, each naming the
/// sandbox, the name and the type (a current-thread runtime, so every task logs here).
#[tokio::test(flavor = "current_thread")]
async fn answered_and_refused_queries_are_logged() {
    let (logs, _guard) = capture_logs();
    bounded(async {
        let fx = Fixture::start(|_| {}).await;
        ask_udp(fx.addr(), "up.test.", RecordType::A, false).await;
        ask_udp(fx.addr(), "denied.test.", RecordType::AAAA, false).await;
    })
    .await;
    let text = String::from_utf8(lock(&logs).clone()).unwrap();
    let answered: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("DNS query answered"))
        .collect();
    assert_eq!(answered.len(), 1, "{text}");
    assert!(answered[0].contains(" DEBUG "), "{}", answered[0]);
    for field in ["sandbox=7", "name=up.test", "qtype=A", "answers=1"] {
        assert!(answered[0].contains(field), "{field}: {}", answered[0]);
    }
    let refused: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("DNS query refused by policy"))
        .collect();
    assert_eq!(refused.len(), 1, "{text}");
    assert!(refused[0].contains(" INFO "), "{}", refused[0]);
    for field in [
        "sandbox=7",
        "name=denied.test",
        "qtype=AAAA",
        "rule=\"deny_hosts *.denied.test\"",
    ] {
        assert!(refused[0].contains(field), "{field}: {}", refused[0]);
    }
}
