//! The route decision: a pure function of a sandbox's policy, the original destination, what
//! the first bytes said and what DNS bound to the destination, returning what to do with the
//! connection. No sockets, so every case is a unit test.
//!
//! With DNS binding on, a name (SNI, or each plain HTTP request's Host) must be one DNS gave the
//! sandbox for the dialled address, unless an `allow_cidrs` rule opens that address: the
//! operator named it, so no answer is needed to reach it. The name rules are asked first, so a
//! denied name keeps its more telling refusal (and its 403 page). TLS without SNI claims no
//! name and is judged by its address, as without binding (`require_sni` refuses it).

use std::{fmt, net::IpAddr, sync::Arc};

use gateway_proto::{
    HostName, Pattern,
    config::{NameDenial, PlainTcp},
    hello::ClientHello,
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName as PkiServerName;

use super::{
    PortKind, SandboxPolicy,
    addr::Action,
    bound::{Bound, Spoofed},
};
use crate::{net::OrigDst, tls::certs::Subject};

/// TLS alert: the client may not have what it asked for.
pub const ALERT_ACCESS_DENIED: u8 = 49;

/// What the first bytes of a connection turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum First {
    /// A ClientHello (on a TLS port).
    Hello(ClientHello),
    /// The start of an HTTP/1 request (on an HTTP port).
    Http,
    /// Not the port's protocol.
    Other {
        /// What they looked like, for the log.
        reason: &'static str,
    },
    /// Started as TLS but is not a well-formed ClientHello.
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What the gateway does with one connection.
#[derive(Debug)]
pub enum Route {
    /// Close it (with a TLS alert when [`Refusal::tls_alert`] says so), for this reason.
    Refuse(Refusal),
    /// Relay the bytes raw to the original destination, replaying what was read.
    Splice(Splice),
    /// Terminate TLS with a forged certificate and re-encrypt upstream.
    Intercept(Intercept),
    /// Terminate TLS with a forged certificate and answer every request with a 403 page: the
    /// name is denied, and the programs we sandbox read that text.
    Forbid(Forbid),
    /// Serve plain HTTP, judging each request's Host.
    PlainHttp,
}

/// Why a connection is refused; Display is the reason in its log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The original destination is this host's loopback or unspecified address.
    #[error("original destination {dst} is host-local")]
    HostLocal {
        /// Where it was going.
        dst: OrigDst,
    },
    /// The destination port is not one the gateway serves (its policy changed meanwhile).
    #[error("port {port} is neither a TLS nor an HTTP port of this sandbox")]
    UnknownPort {
        /// The port.
        port: u16,
    },
    /// Not the port's protocol, and plain TCP is refused.
    #[error("not {expected} ({reason}); refused (plain_tcp = \"refuse\")")]
    Unexpected {
        /// `TLS` or `HTTP`.
        expected: &'static str,
        /// What the first bytes looked like.
        reason: &'static str,
    },
    /// Started as TLS but is not a well-formed ClientHello.
    #[error("malformed ClientHello ({reason})")]
    MalformedHello {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The SNI is a host name but not one a TLS client may ask a server for.
    #[error("SNI {sni} is not a valid DNS name for TLS")]
    BadSni {
        /// The SNI.
        sni: HostName,
    },
    /// A bypassed name that the name rules deny.
    #[error("name {sni} denied by {denial}")]
    NameDenied {
        /// The SNI.
        sni: HostName,
        /// Which rule.
        denial: NameDenial,
    },
    /// TLS without SNI while `require_sni = true`.
    #[error("TLS without SNI (require_sni = true)")]
    NoSni,
    /// DNS binding is on and the SNI is not a name DNS gave the sandbox for the address
    /// dialled: the client claims one host while dialling another.
    #[error("SNI spoofing: {0}")]
    SniSpoofing(Spoofed),
}

impl Refusal {
    /// The TLS alert the client gets before the close, if any: a client that sent a
    /// ClientHello for a name it may not reach learns why at once.
    pub fn tls_alert(&self) -> Option<u8> {
        match self {
            Refusal::NameDenied { .. } | Refusal::NoSni | Refusal::SniSpoofing(_) => {
                Some(ALERT_ACCESS_DENIED)
            }
            _ => None,
        }
    }
}

/// Why a connection is spliced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Splice {
    /// Its SNI matched a bypass pattern.
    Bypass {
        /// The pattern that matched.
        pattern: Pattern,
    },
    /// Not the port's protocol, and `plain_tcp = "relay"`.
    PlainTcp,
}

/// An interception: the name the forged certificate is for, how to reach the upstream, and
/// through which connector.
#[derive(Debug, Clone)]
pub struct Intercept {
    /// Whom the forged certificate names: the SNI, or the destination address without one.
    pub subject: Subject,
    /// The name sent upstream (SNI) and verified in the upstream's certificate.
    pub server_name: PkiServerName<'static>,
    /// The upstream connector chosen for the name.
    pub connector: Arc<ClientConfig>,
    /// Whether that connector verifies the upstream's certificate.
    pub verify: bool,
    /// Whether requests are read (HTTP-aware: secrets substituted, Host checked against the
    /// SNI) rather than relayed as bytes: only for names some secret of the sandbox may go to.
    pub http_aware: bool,
}

/// A denied name, answered with a 403 page after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbid {
    /// The SNI (the forged certificate's name).
    pub sni: HostName,
    /// Which rule denies it.
    pub denial: NameDenial,
}

/// Why a plain HTTP request's host is refused; Display is the reason on its 403 page and in
/// its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDenial {
    /// The name rules deny it.
    Name(NameDenial),
    /// DNS binding is on and DNS did not bind the host to the address dialled.
    Spoofed(Spoofed),
}

impl fmt::Display for HostDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostDenial::Name(denial) => denial.fmt(f),
            HostDenial::Spoofed(spoofed) => write!(f, "Host spoofing: {spoofed}"),
        }
    }
}

impl SandboxPolicy {
    /// The refusal a destination gets before any byte is read, if any.
    pub fn refuse_destination(&self, dst: OrigDst) -> Option<Refusal> {
        if dst.is_host_local() {
            return Some(Refusal::HostLocal { dst });
        }
        if self.port_kind(dst.0.port()).is_none() {
            return Some(Refusal::UnknownPort { port: dst.0.port() });
        }
        None
    }

    /// Decides what to do with a connection to `dst` whose first bytes were `first`; `bound`
    /// is what DNS binding says about `dst` (plain HTTP checks it per request, see
    /// [`SandboxPolicy::judge_host`]).
    pub fn route(&self, dst: OrigDst, first: &First, bound: &Bound) -> Route {
        if let Some(refusal) = self.refuse_destination(dst) {
            return Route::Refuse(refusal);
        }
        match first {
            First::Hello(hello) => self.route_tls(dst, hello, bound),
            First::Http => Route::PlainHttp,
            First::Other { reason } => self.route_other(dst, reason),
            First::Malformed { reason } => Route::Refuse(Refusal::MalformedHello { reason }),
        }
    }

    fn route_other(&self, dst: OrigDst, reason: &'static str) -> Route {
        match self.tls.plain_tcp {
            PlainTcp::Relay => Route::Splice(Splice::PlainTcp),
            PlainTcp::Refuse => Route::Refuse(Refusal::Unexpected {
                expected: match self.port_kind(dst.0.port()) {
                    Some(PortKind::Http) => "HTTP",
                    Some(PortKind::Tls) | None => "TLS",
                },
                reason,
            }),
        }
    }

    /// Whether plain HTTP requests for `host` may go to `dst`: the name rules, then DNS binding.
    ///
    /// # Errors
    /// The [`HostDenial`] saying why not.
    pub fn judge_host(
        &self,
        dst: OrigDst,
        host: &HostName,
        bound: &Bound,
    ) -> Result<(), HostDenial> {
        self.names.judge(host).map_err(HostDenial::Name)?;
        self.check_binding(dst.0.ip(), host, bound)
            .map_err(HostDenial::Spoofed)
    }

    /// Whether `name` may be claimed for `ip` as far as DNS binding goes: always for an address
    /// an `allow_cidrs` rule opens, else when DNS bound it there (or binding is off).
    fn check_binding(&self, ip: IpAddr, name: &HostName, bound: &Bound) -> Result<(), Spoofed> {
        let opened = self
            .addrs
            .judge(ip)
            .is_some_and(|rule| rule.action == Action::Allow);
        if opened {
            return Ok(());
        }
        bound.check(ip, name)
    }

    fn route_tls(&self, dst: OrigDst, hello: &ClientHello, bound: &Bound) -> Route {
        let Some(sni) = &hello.sni else {
            if self.config.require_sni {
                return Route::Refuse(Refusal::NoSni);
            }
            let ip = dst.0.ip();
            let (connector, verify) = self.tls.connectors.for_name(None);
            return Route::Intercept(Intercept {
                subject: Subject::Ip(ip),
                server_name: PkiServerName::IpAddress(ip.into()),
                connector: Arc::clone(connector),
                verify,
                http_aware: false,
            });
        };
        let bypass = self.tls.bypass.best_match(sni);
        if let Err(denial) = self.names.judge(sni) {
            let sni = sni.clone();
            return match bypass {
                Some(_) => Route::Refuse(Refusal::NameDenied { sni, denial }),
                None => Route::Forbid(Forbid { sni, denial }),
            };
        }
        if let Err(spoofed) = self.check_binding(dst.0.ip(), sni, bound) {
            return Route::Refuse(Refusal::SniSpoofing(spoofed));
        }
        if let Some(pattern) = bypass {
            return Route::Splice(Splice::Bypass {
                pattern: pattern.clone(),
            });
        }
        let Ok(server_name) = PkiServerName::try_from(sni.as_str().to_owned()) else {
            return Route::Refuse(Refusal::BadSni { sni: sni.clone() });
        };
        let (connector, verify) = self.tls.connectors.for_name(Some(sni));
        Route::Intercept(Intercept {
            subject: Subject::Dns(sni.clone()),
            server_name,
            connector: Arc::clone(connector),
            verify,
            http_aware: self.secret_scope.covers(sni),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use gateway_proto::config::Config;

    use super::*;
    use crate::{policy::TlsPolicy, secrets::SecretScope};

    fn policy(config: &str) -> SandboxPolicy {
        let config = Config::parse(config, Path::new("test.toml")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = Arc::new(TlsPolicy::new(&config.tls, &provider).unwrap());
        SandboxPolicy::new(config.policy, tls, SecretScope::default())
    }

    fn dst(text: &str) -> OrigDst {
        OrigDst(text.parse().unwrap())
    }

    fn hello(sni: Option<&str>) -> First {
        First::Hello(ClientHello {
            sni: sni.map(|name| HostName::parse(name).unwrap()),
            alpn: vec![b"h2".to_vec()],
            len: 100,
        })
    }

    const UPSTREAM: &str = "198.51.100.7:443";
    const HTTP_UPSTREAM: &str = "198.51.100.7:80";

    #[test]
    fn host_local_and_unknown_ports_are_refused_before_reading() {
        let policy = policy("");
        for local in [
            "127.0.0.1:443",
            "[::1]:443",
            "0.0.0.0:443",
            "[::ffff:127.0.0.1]:443",
        ] {
            let expected = Refusal::HostLocal { dst: dst(local) };
            assert_eq!(
                policy.refuse_destination(dst(local)),
                Some(expected.clone())
            );
            let route = policy.route(dst(local), &hello(Some("a.test")), &Bound::NotEnforced);
            assert!(
                matches!(route, Route::Refuse(r) if r == expected),
                "{local}"
            );
        }
        assert_eq!(
            policy.refuse_destination(dst("198.51.100.7:8443")),
            Some(Refusal::UnknownPort { port: 8443 })
        );
        assert_eq!(policy.refuse_destination(dst(UPSTREAM)), None);
        assert_eq!(policy.refuse_destination(dst(HTTP_UPSTREAM)), None);
    }

    #[test]
    fn a_named_hello_is_intercepted_with_a_certificate_for_its_name() {
        let Route::Intercept(intercept) =
            policy("").route(dst(UPSTREAM), &hello(Some("a.test")), &Bound::NotEnforced)
        else {
            panic!("not intercepted")
        };
        assert_eq!(
            intercept.subject,
            Subject::Dns(HostName::parse("a.test").unwrap())
        );
        assert_eq!(intercept.server_name.to_str(), "a.test");
        assert!(intercept.verify);
    }

    #[test]
    fn a_hello_without_sni_is_judged_by_address_or_refused_when_sni_is_required() {
        let Route::Intercept(intercept) =
            policy("").route(dst(UPSTREAM), &hello(None), &Bound::NotEnforced)
        else {
            panic!("not intercepted")
        };
        assert_eq!(
            intercept.subject,
            Subject::Ip("198.51.100.7".parse().unwrap())
        );
        assert_eq!(intercept.server_name.to_str(), "198.51.100.7");
        let strict = policy("[policy]\nrequire_sni = true\nallow_hosts = [\"a.test\"]\n");
        match strict.route(dst(UPSTREAM), &hello(None), &Bound::NotEnforced) {
            Route::Refuse(refusal) => {
                assert_eq!(refusal, Refusal::NoSni);
                assert_eq!(refusal.tls_alert(), Some(ALERT_ACCESS_DENIED));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bypass_names_are_spliced_with_the_most_specific_pattern() {
        let policy = policy("[tls]\nbypass = [\"*.bank.test\", \"pay.bank.test\"]\n");
        for (name, pattern) in [
            ("bank.test", "*.bank.test"),
            ("x.bank.test", "*.bank.test"),
            ("pay.bank.test", "pay.bank.test"),
        ] {
            match policy.route(dst(UPSTREAM), &hello(Some(name)), &Bound::NotEnforced) {
                Route::Splice(Splice::Bypass { pattern: matched }) => {
                    assert_eq!(matched.to_string(), pattern, "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            policy.route(
                dst(UPSTREAM),
                &hello(Some("notbank.test")),
                &Bound::NotEnforced
            ),
            Route::Intercept(_)
        ));
    }

    #[test]
    fn denied_names_get_a_403_when_intercepted_and_an_alert_when_bypassed() {
        let policy = policy(
            "[tls]\nbypass = [\"*.bank.test\"]\n[policy]\ndeny_hosts = [\"*.evil.test\", \"x.bank.test\"]\n",
        );
        match policy.route(
            dst(UPSTREAM),
            &hello(Some("a.evil.test")),
            &Bound::NotEnforced,
        ) {
            Route::Forbid(forbid) => {
                assert_eq!(forbid.sni.as_str(), "a.evil.test");
                assert_eq!(forbid.denial.to_string(), "deny_hosts *.evil.test");
            }
            other => panic!("{other:?}"),
        }
        match policy.route(
            dst(UPSTREAM),
            &hello(Some("x.bank.test")),
            &Bound::NotEnforced,
        ) {
            Route::Refuse(refusal) => {
                assert!(matches!(refusal, Refusal::NameDenied { .. }), "{refusal}");
                assert_eq!(refusal.tls_alert(), Some(ALERT_ACCESS_DENIED));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            policy.route(
                dst(UPSTREAM),
                &hello(Some("y.bank.test")),
                &Bound::NotEnforced
            ),
            Route::Splice(_)
        ));
    }

    #[test]
    fn allow_list_mode_forbids_every_other_name() {
        let policy = policy("[policy]\nallow_hosts = [\"*.good.test\"]\n");
        assert!(matches!(
            policy.route(
                dst(UPSTREAM),
                &hello(Some("api.good.test")),
                &Bound::NotEnforced
            ),
            Route::Intercept(_)
        ));
        match policy.route(
            dst(UPSTREAM),
            &hello(Some("other.test")),
            &Bound::NotEnforced,
        ) {
            Route::Forbid(forbid) => assert_eq!(forbid.denial, NameDenial::NotAllowed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upstream_rules_choose_the_connector() {
        let policy = policy("[[tls.upstream]]\npattern = \"*.lab.test\"\nverify = false\n");
        let verify =
            |name| match policy.route(dst(UPSTREAM), &hello(Some(name)), &Bound::NotEnforced) {
                Route::Intercept(intercept) => intercept.verify,
                other => panic!("{other:?}"),
            };
        assert!(!verify("x.lab.test"));
        assert!(verify("x.other.test"));
    }

    #[test]
    fn http_goes_to_the_http_path_and_other_bytes_follow_plain_tcp() {
        let other = First::Other { reason: "plain" };
        let malformed = First::Malformed { reason: "bad" };
        let refuse = policy("");
        let relay = policy("[tls]\nplain_tcp = \"relay\"\n");
        assert!(matches!(
            refuse.route(dst(HTTP_UPSTREAM), &First::Http, &Bound::NotEnforced),
            Route::PlainHttp
        ));
        match refuse.route(dst(HTTP_UPSTREAM), &other, &Bound::NotEnforced) {
            Route::Refuse(refusal) => assert_eq!(
                refusal.to_string(),
                "not HTTP (plain); refused (plain_tcp = \"refuse\")"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refuse.route(dst(UPSTREAM), &other, &Bound::NotEnforced),
            Route::Refuse(Refusal::Unexpected {
                expected: "TLS",
                ..
            })
        ));
        assert!(matches!(
            relay.route(dst(UPSTREAM), &other, &Bound::NotEnforced),
            Route::Splice(Splice::PlainTcp)
        ));
        for policy in [&refuse, &relay] {
            assert!(matches!(
                policy.route(dst(UPSTREAM), &malformed, &Bound::NotEnforced),
                Route::Refuse(Refusal::MalformedHello { reason: "bad" })
            ));
        }
    }

    #[test]
    fn names_a_secret_may_go_to_take_the_http_aware_path() {
        let mut policy = policy("");
        policy.secret_scope = SecretScope {
            any: false,
            patterns: vec![Pattern::parse("api.openai.test").unwrap()],
        };
        let aware =
            |name| match policy.route(dst(UPSTREAM), &hello(Some(name)), &Bound::NotEnforced) {
                Route::Intercept(intercept) => intercept.http_aware,
                other => panic!("{other:?}"),
            };
        assert!(aware("api.openai.test"));
        assert!(!aware("other.test"));
        assert!(matches!(
            policy.route(dst(UPSTREAM), &hello(None), &Bound::NotEnforced),
            Route::Intercept(Intercept {
                http_aware: false,
                ..
            })
        ));
    }

    #[test]
    fn a_name_tls_cannot_carry_is_refused() {
        // A valid host name whose label ends in a hyphen: no certificate can name it.
        match policy("").route(
            dst(UPSTREAM),
            &hello(Some("bad-.test")),
            &Bound::NotEnforced,
        ) {
            Route::Refuse(Refusal::BadSni { sni }) => assert_eq!(sni.as_str(), "bad-.test"),
            other => panic!("{other:?}"),
        }
    }

    /// Binding on (an allow-list turns it on), allowing the test names and a bypassed family.
    const BINDING: &str = "[tls]\nbypass = [\"*.bank.test\"]\n[policy]\n\
                           allow_hosts = [\"*.good.test\", \"*.bank.test\"]\n";

    fn bound(names: &[&str]) -> Bound {
        Bound::Names(names.iter().map(|n| HostName::parse(n).unwrap()).collect())
    }

    fn expect_spoofed(route: Route) -> Spoofed {
        match route {
            Route::Refuse(refusal @ Refusal::SniSpoofing(_)) => {
                assert_eq!(refusal.tls_alert(), Some(ALERT_ACCESS_DENIED));
                let Refusal::SniSpoofing(spoofed) = refusal else {
                    unreachable!()
                };
                spoofed
            }
            other => panic!("not refused as SNI spoofing: {other:?}"),
        }
    }

    #[test]
    fn an_allow_list_turns_binding_on_unless_it_is_set_off() {
        assert!(!policy("").dns_binding());
        assert!(policy(BINDING).dns_binding());
        assert!(!policy(&format!("{BINDING}dns_binding = false\n")).dns_binding());
        assert!(policy("[policy]\ndns_binding = true\n").dns_binding());
    }

    #[test]
    fn with_binding_on_an_intercepted_sni_must_be_bound_to_the_address() {
        let policy = policy(BINDING);
        let names = bound(&["api.good.test", "cdn.good.test"]);
        assert!(matches!(
            policy.route(dst(UPSTREAM), &hello(Some("api.good.test")), &names),
            Route::Intercept(_)
        ));
        let spoofed =
            expect_spoofed(policy.route(dst(UPSTREAM), &hello(Some("www.good.test")), &names));
        assert_eq!(spoofed.name.as_str(), "www.good.test");
        assert_eq!(spoofed.addr, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            Refusal::SniSpoofing(spoofed).to_string(),
            "SNI spoofing: www.good.test is not a name DNS gave this sandbox for 198.51.100.7 \
             (names bound: api.good.test, cdn.good.test)"
        );
        // An address no answer gave: every name is a spoof.
        expect_spoofed(policy.route(dst(UPSTREAM), &hello(Some("api.good.test")), &bound(&[])));
    }

    #[test]
    fn with_binding_on_a_bypassed_sni_must_be_bound_too() {
        let policy = policy(BINDING);
        assert!(matches!(
            policy.route(
                dst(UPSTREAM),
                &hello(Some("pay.bank.test")),
                &bound(&["pay.bank.test"])
            ),
            Route::Splice(Splice::Bypass { .. })
        ));
        let spoofed = expect_spoofed(policy.route(
            dst(UPSTREAM),
            &hello(Some("pay.bank.test")),
            &bound(&["api.good.test"]),
        ));
        assert_eq!(spoofed.bound, [HostName::parse("api.good.test").unwrap()]);
    }

    #[test]
    fn bound_names_match_whatever_their_case_and_trailing_dot() {
        let policy = policy(BINDING);
        let names = bound(&["API.Good.TEST.", "Pay.Bank.Test"]);
        for sni in ["api.good.test", "Api.GOOD.test.", "pay.bank.test."] {
            assert!(
                !matches!(
                    policy.route(dst(UPSTREAM), &hello(Some(sni)), &names),
                    Route::Refuse(_)
                ),
                "{sni}"
            );
        }
    }

    #[test]
    fn an_address_allow_cidrs_opens_needs_no_binding() {
        let policy = policy(&format!(
            "{BINDING}allow_cidrs = [\"198.51.100.0/24\", \"10.20.0.5/32\"]\n\
             deny_cidrs = [\"203.0.113.0/24\"]\n"
        ));
        for (to, name) in [
            (UPSTREAM, "api.good.test"),
            ("10.20.0.5:443", "api.good.test"),
            ("[::ffff:198.51.100.9]:443", "api.good.test"),
        ] {
            assert!(
                matches!(
                    policy.route(dst(to), &hello(Some(name)), &bound(&[])),
                    Route::Intercept(_)
                ),
                "{to}"
            );
        }
        assert!(matches!(
            policy.route(dst(UPSTREAM), &hello(Some("pay.bank.test")), &bound(&[])),
            Route::Splice(_)
        ));
        // Outside the opened ranges (a deny rule included) the binding is checked again.
        for to in ["198.51.101.7:443", "10.20.0.6:443", "203.0.113.1:443"] {
            expect_spoofed(policy.route(dst(to), &hello(Some("api.good.test")), &bound(&[])));
        }
    }

    #[test]
    fn without_sni_a_bound_address_is_judged_by_the_address() {
        let policy = policy(BINDING);
        for names in [bound(&[]), bound(&["api.good.test"])] {
            assert!(matches!(
                policy.route(dst(UPSTREAM), &hello(None), &names),
                Route::Intercept(Intercept {
                    subject: Subject::Ip(_),
                    ..
                })
            ));
        }
        let strict = self::policy(&format!("{BINDING}require_sni = true\n"));
        assert!(matches!(
            strict.route(dst(UPSTREAM), &hello(None), &bound(&[])),
            Route::Refuse(Refusal::NoSni)
        ));
    }

    #[test]
    fn a_denied_name_keeps_its_own_refusal_with_binding_on() {
        let policy = policy(&format!("{BINDING}deny_hosts = [\"x.bank.test\"]\n"));
        match policy.route(dst(UPSTREAM), &hello(Some("other.test")), &bound(&[])) {
            Route::Forbid(forbid) => assert_eq!(forbid.denial, NameDenial::NotAllowed),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            policy.route(dst(UPSTREAM), &hello(Some("x.bank.test")), &bound(&[])),
            Route::Refuse(Refusal::NameDenied { .. })
        ));
    }

    #[test]
    fn binding_off_judges_names_alone_and_never_asks_the_table() {
        #[derive(Debug, Default)]
        struct Counting(std::sync::atomic::AtomicUsize);
        impl crate::policy::bound::BoundNames for Counting {
            fn names(&self, addr: IpAddr) -> Vec<HostName> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                assert!(addr.is_ipv4(), "the table gets canonical addresses: {addr}");
                vec![HostName::parse("api.good.test").unwrap()]
            }
        }
        let table = Counting::default();
        let off = policy(&format!("{BINDING}dns_binding = false\n"));
        let mapped = dst("[::ffff:198.51.100.7]:443");
        let not_enforced = off.bound(mapped.0.ip(), &table);
        assert_eq!(not_enforced, Bound::NotEnforced);
        assert_eq!(table.0.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(matches!(
            off.route(mapped, &hello(Some("www.good.test")), &not_enforced),
            Route::Intercept(_)
        ));
        let on = policy(BINDING);
        let names = on.bound(mapped.0.ip(), &table);
        assert_eq!(names, bound(&["api.good.test"]));
        assert!(matches!(
            on.route(mapped, &hello(Some("api.good.test")), &names),
            Route::Intercept(_)
        ));
        expect_spoofed(on.route(mapped, &hello(Some("www.good.test")), &names));
    }

    #[test]
    fn plain_http_is_routed_whatever_is_bound_and_each_host_is_judged() {
        let policy = policy(
            "[policy]\nallow_hosts = [\"plain.test\", \"*.good.test\"]\n\
             allow_cidrs = [\"10.20.0.5/32\"]\n",
        );
        let to = dst(HTTP_UPSTREAM);
        assert!(matches!(
            policy.route(to, &First::Http, &bound(&[])),
            Route::PlainHttp
        ));
        let judge = |to: OrigDst, host: &str, bound: &Bound| {
            policy
                .judge_host(to, &HostName::parse(host).unwrap(), bound)
                .map_err(|denial| denial.to_string())
        };
        let names = bound(&["plain.test"]);
        assert_eq!(judge(to, "plain.test", &names), Ok(()));
        assert_eq!(judge(to, "PLAIN.test.", &names), Ok(()));
        assert_eq!(
            judge(to, "api.good.test", &names),
            Err(
                "Host spoofing: api.good.test is not a name DNS gave this sandbox for \
                 198.51.100.7 (names bound: plain.test)"
                    .into()
            )
        );
        assert_eq!(
            judge(to, "other.test", &names),
            Err("allow_hosts (no pattern matches)".into()),
            "the name rules speak first"
        );
        assert_eq!(judge(to, "api.good.test", &Bound::NotEnforced), Ok(()));
        assert_eq!(
            judge(dst("10.20.0.5:80"), "api.good.test", &bound(&[])),
            Ok(())
        );
        // A Host that is the dialled address names no other host (when the rules allow it).
        let open = self::policy("[policy]\ndns_binding = true\n");
        let literal = HostName::parse("198.51.100.7").unwrap();
        assert_eq!(open.judge_host(to, &literal, &bound(&[])), Ok(()));
        let other = HostName::parse("198.51.100.8").unwrap();
        assert!(matches!(
            open.judge_host(to, &other, &bound(&[])),
            Err(HostDenial::Spoofed(_))
        ));
    }
}
