//! The test DNS server (`gateway-test-dns`) itself, before tests of DNS through the gateway rely
//! on it: started in a test host's namespace and asked from the host over the veth, over UDP
//! and TCP, IPv4 and IPv6, with messages built by hickory-proto.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use gateway_tests::{
    dns::{Query, TestDns, Transport, Zone, ask},
    net::UpstreamHost,
    pki::TestPki,
    require_root,
    upstream::Site,
};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{Name, RData, RecordType, rdata::CNAME},
};

/// Records of `big.test`: 100 A records do not fit in 512 bytes (nor in 1232).
const BIG: u8 = 100;

fn v4(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

/// The zone `test.`: an address pair with a 1 s TTL, an AAAA-only name, a two-level CNAME
/// chain, a name with [`BIG`] A records.
fn test_zone() -> Zone {
    Zone::new("test")
        .a("web.test", [v4("192.0.2.1")])
        .aaaa("web.test", [v6("2001:db8::1")])
        .ttl("web.test", 1)
        .aaaa("v6.test", [v6("2001:db8::6")])
        .cname("alias.test", "mid.test")
        .cname("mid.test", "web.test")
        .a("big.test", (0..BIG).map(|i| Ipv4Addr::new(10, 0, 0, i)))
        .negative_ttl(2)
}

/// A test host serving [`test_zone`] on port 53 of its addresses.
fn serving() -> (UpstreamHost, TestDns) {
    require_root().unwrap();
    let host = UpstreamHost::new().unwrap();
    let dns = TestDns::on_host(&host, &[test_zone()]).unwrap();
    (host, dns)
}

fn server(dns: &TestDns, v6: bool) -> SocketAddr {
    dns.addr(v6).unwrap()
}

fn addrs(answer: &Message) -> Vec<IpAddr> {
    answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

/// An authoritative answer with this code.
fn assert_authoritative(answer: &Message, code: ResponseCode) {
    assert_eq!(answer.metadata.response_code, code, "{answer:?}");
    assert!(answer.metadata.authoritative, "{answer:?}");
    assert!(!answer.metadata.truncation, "{answer:?}");
}

/// A negative answer: no records, the zone's SOA in the authority section with its TTL.
fn assert_negative(answer: &Message, code: ResponseCode) {
    assert_authoritative(answer, code);
    assert!(answer.answers.is_empty(), "{answer:?}");
    let soa = answer
        .authorities
        .iter()
        .find(|record| matches!(record.data, RData::SOA(_)))
        .unwrap_or_else(|| panic!("no SOA: {answer:?}"));
    assert_eq!(soa.name, name("test."));
    assert_eq!(soa.ttl, 2);
}

#[test]
fn answers_addresses_with_their_ttl_over_udp_and_tcp_on_both_families() {
    let (host, dns) = serving();
    for (over_v6, transport) in [
        (false, Transport::Udp),
        (false, Transport::Tcp),
        (true, Transport::Udp),
        (true, Transport::Tcp),
    ] {
        let answer = ask(server(&dns, over_v6), "web.test", RecordType::A, transport).unwrap();
        assert_authoritative(&answer, ResponseCode::NoError);
        assert_eq!(addrs(&answer), [IpAddr::from(v4("192.0.2.1"))]);
        assert_eq!(answer.answers[0].ttl, 1);
        let answer = ask(
            server(&dns, over_v6),
            "WEB.test.",
            RecordType::AAAA,
            transport,
        )
        .unwrap();
        assert_authoritative(&answer, ResponseCode::NoError);
        assert_eq!(addrs(&answer), [IpAddr::from(v6("2001:db8::1"))]);
    }
    // Every question logged, as asked, with who asked it and how.
    let queries = dns.queries();
    assert_eq!(queries.len(), 8, "{queries:#?}");
    assert!(queries.iter().all(|q| q.is("web.test")));
    let first = &queries[0];
    assert_eq!(first.name, "web.test.");
    assert_eq!(first.qtype, "A");
    assert_eq!(first.protocol, Transport::Udp);
    assert_eq!(first.peer.ip(), IpAddr::from(host.host_v4));
    assert_eq!(queries[1].name, "WEB.test.", "the asker's case is kept");
    assert_eq!(queries[1].qtype, "AAAA");
    let last = &queries[7];
    assert_eq!(last.protocol, Transport::Tcp);
    assert_eq!(last.peer.ip(), IpAddr::from(host.host_v6));
    assert!(dns.asked("web.test") && !dns.asked("v6.test"));
}

#[test]
fn an_aaaa_only_name_answers_nodata_for_a() {
    let (_host, dns) = serving();
    let answer = ask(
        server(&dns, false),
        "v6.test",
        RecordType::AAAA,
        Transport::Udp,
    )
    .unwrap();
    assert_authoritative(&answer, ResponseCode::NoError);
    assert_eq!(addrs(&answer), [IpAddr::from(v6("2001:db8::6"))]);
    assert_eq!(answer.answers[0].ttl, 300, "the default TTL");
    let answer = ask(
        server(&dns, false),
        "v6.test",
        RecordType::A,
        Transport::Udp,
    )
    .unwrap();
    assert_negative(&answer, ResponseCode::NoError);
}

#[test]
fn a_cname_chain_is_answered_whole() {
    let (_host, dns) = serving();
    let answer = ask(
        server(&dns, false),
        "alias.test",
        RecordType::A,
        Transport::Udp,
    )
    .unwrap();
    assert_authoritative(&answer, ResponseCode::NoError);
    let data: Vec<&RData> = answer.answers.iter().map(|r| &r.data).collect();
    assert_eq!(
        data,
        [
            &RData::CNAME(CNAME(name("mid.test."))),
            &RData::CNAME(CNAME(name("web.test."))),
            &RData::A(v4("192.0.2.1").into()),
        ],
        "{answer:?}"
    );
    // One question: the chain is followed inside the server.
    assert_eq!(dns.queries().len(), 1);
}

#[test]
fn unknown_names_are_nxdomain_and_other_zones_refused() {
    let (_host, dns) = serving();
    let answer = ask(
        server(&dns, true),
        "nope.test",
        RecordType::A,
        Transport::Udp,
    )
    .unwrap();
    assert_negative(&answer, ResponseCode::NXDomain);
    let answer = ask(
        server(&dns, true),
        "deep.web.test",
        RecordType::A,
        Transport::Tcp,
    )
    .unwrap();
    assert_negative(&answer, ResponseCode::NXDomain);
    let answer = ask(
        server(&dns, true),
        "example.org",
        RecordType::A,
        Transport::Udp,
    )
    .unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    assert!(dns.asked("nope.test") && dns.asked("example.org."));
}

#[test]
fn a_big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let (_host, dns) = serving();
    let answer = ask(
        server(&dns, false),
        "big.test",
        RecordType::A,
        Transport::Udp,
    )
    .unwrap();
    assert!(answer.metadata.truncation, "{answer:?}");
    assert!(answer.answers.len() < usize::from(BIG));
    let answer = ask(
        server(&dns, false),
        "big.test",
        RecordType::A,
        Transport::Tcp,
    )
    .unwrap();
    assert_authoritative(&answer, ResponseCode::NoError);
    let mut got = addrs(&answer);
    got.sort();
    let want: Vec<IpAddr> = (0..BIG)
        .map(|i| Ipv4Addr::new(10, 0, 0, i).into())
        .collect();
    assert_eq!(got, want);
    let protocols: Vec<Transport> = dns.queries().iter().map(|q| q.protocol).collect();
    assert_eq!(protocols, [Transport::Udp, Transport::Tcp]);
}

#[test]
fn a_sites_zone_answers_its_addresses() {
    require_root().unwrap();
    let pki = TestPki::new("dns_server test CA").unwrap();
    let site = Site::start(&pki, "site.test", &["site.test"]).unwrap();
    let dns = TestDns::on_host(&site.host, &[Zone::new("test").site(&site)]).unwrap();
    for (qtype, want) in [
        (RecordType::A, IpAddr::from(site.host.v4)),
        (RecordType::AAAA, IpAddr::from(site.host.v6)),
    ] {
        let answer = ask(server(&dns, false), "site.test", qtype, Transport::Udp).unwrap();
        assert_eq!(addrs(&answer), [want]);
    }
}

#[test]
fn waits_for_a_question_and_stops_on_sigterm() {
    let (_host, mut dns) = serving();
    let err = dns
        .wait_for("about web.test", Duration::from_millis(100), |q| {
            q.is("web.test")
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("no question about web.test"));
    ask(
        server(&dns, false),
        "web.test",
        RecordType::A,
        Transport::Udp,
    )
    .unwrap();
    let query: Query = dns
        .wait_for("about web.test", Duration::from_secs(5), |q| {
            q.is("web.test")
        })
        .unwrap();
    assert_eq!(query.protocol, Transport::Udp);
    assert!(dns.stop().unwrap().success());
}

#[test]
fn exits_by_itself_after_its_lifetime() {
    require_root().unwrap();
    let host = UpstreamHost::new().unwrap();
    let listen = [SocketAddr::new(host.v4.into(), 53)];
    let mut dns =
        TestDns::start_for(&host.ns, &listen, &[test_zone()], Duration::from_secs(1)).unwrap();
    let status = dns.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn a_bad_zone_is_refused_before_starting() {
    let check = |zone: Zone| zone.check().map_err(|err| format!("{err:#}"));
    assert!(check(test_zone()).is_ok());
    let err = check(Zone::new("test").a("web.example", [v4("192.0.2.1")])).unwrap_err();
    assert!(err.contains("not at or below the origin"), "{err}");
    let err = check(
        Zone::new("test")
            .cname("web.test", "x.test")
            .a("web.test", [v4("192.0.2.1")]),
    )
    .unwrap_err();
    assert!(err.contains("a CNAME and addresses"), "{err}");
    let err = check(Zone::new("test").ttl("empty.test", 5)).unwrap_err();
    assert!(err.contains("no records"), "{err}");
}
