//! The route decision: a pure function of a sandbox's policy, the original destination and
//! what the first bytes said, returning what to do with the connection. No sockets, so every
//! case is a unit test.

use std::sync::Arc;

use gateway_proto::{
    HostName, Pattern,
    config::{NameDenial, PlainTcp},
    hello::ClientHello,
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName as PkiServerName;

use super::{PortKind, SandboxPolicy};
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
}

impl Refusal {
    /// The TLS alert the client gets before the close, if any: a client that sent a
    /// ClientHello for a name it may not reach learns why at once.
    pub fn tls_alert(&self) -> Option<u8> {
        match self {
            Refusal::NameDenied { .. } | Refusal::NoSni => Some(ALERT_ACCESS_DENIED),
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

    /// Decides what to do with a connection to `dst` whose first bytes were `first`.
    pub fn route(&self, dst: OrigDst, first: &First) -> Route {
        if let Some(refusal) = self.refuse_destination(dst) {
            return Route::Refuse(refusal);
        }
        match first {
            First::Hello(hello) => self.route_tls(dst, hello),
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

    fn route_tls(&self, dst: OrigDst, hello: &ClientHello) -> Route {
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
            let route = policy.route(dst(local), &hello(Some("a.test")));
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
        let Route::Intercept(intercept) = policy("").route(dst(UPSTREAM), &hello(Some("a.test")))
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
        let Route::Intercept(intercept) = policy("").route(dst(UPSTREAM), &hello(None)) else {
            panic!("not intercepted")
        };
        assert_eq!(
            intercept.subject,
            Subject::Ip("198.51.100.7".parse().unwrap())
        );
        assert_eq!(intercept.server_name.to_str(), "198.51.100.7");
        let strict = policy("[policy]\nrequire_sni = true\nallow_hosts = [\"a.test\"]\n");
        match strict.route(dst(UPSTREAM), &hello(None)) {
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
            match policy.route(dst(UPSTREAM), &hello(Some(name))) {
                Route::Splice(Splice::Bypass { pattern: matched }) => {
                    assert_eq!(matched.to_string(), pattern, "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            policy.route(dst(UPSTREAM), &hello(Some("notbank.test"))),
            Route::Intercept(_)
        ));
    }

    #[test]
    fn denied_names_get_a_403_when_intercepted_and_an_alert_when_bypassed() {
        let policy = policy(
            "[tls]\nbypass = [\"*.bank.test\"]\n[policy]\ndeny_hosts = [\"*.evil.test\", \"x.bank.test\"]\n",
        );
        match policy.route(dst(UPSTREAM), &hello(Some("a.evil.test"))) {
            Route::Forbid(forbid) => {
                assert_eq!(forbid.sni.as_str(), "a.evil.test");
                assert_eq!(forbid.denial.to_string(), "deny_hosts *.evil.test");
            }
            other => panic!("{other:?}"),
        }
        match policy.route(dst(UPSTREAM), &hello(Some("x.bank.test"))) {
            Route::Refuse(refusal) => {
                assert!(matches!(refusal, Refusal::NameDenied { .. }), "{refusal}");
                assert_eq!(refusal.tls_alert(), Some(ALERT_ACCESS_DENIED));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            policy.route(dst(UPSTREAM), &hello(Some("y.bank.test"))),
            Route::Splice(_)
        ));
    }

    #[test]
    fn allow_list_mode_forbids_every_other_name() {
        let policy = policy("[policy]\nallow_hosts = [\"*.good.test\"]\n");
        assert!(matches!(
            policy.route(dst(UPSTREAM), &hello(Some("api.good.test"))),
            Route::Intercept(_)
        ));
        match policy.route(dst(UPSTREAM), &hello(Some("other.test"))) {
            Route::Forbid(forbid) => assert_eq!(forbid.denial, NameDenial::NotAllowed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upstream_rules_choose_the_connector() {
        let policy = policy("[[tls.upstream]]\npattern = \"*.lab.test\"\nverify = false\n");
        let verify = |name| match policy.route(dst(UPSTREAM), &hello(Some(name))) {
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
            refuse.route(dst(HTTP_UPSTREAM), &First::Http),
            Route::PlainHttp
        ));
        match refuse.route(dst(HTTP_UPSTREAM), &other) {
            Route::Refuse(refusal) => assert_eq!(
                refusal.to_string(),
                "not HTTP (plain); refused (plain_tcp = \"refuse\")"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refuse.route(dst(UPSTREAM), &other),
            Route::Refuse(Refusal::Unexpected {
                expected: "TLS",
                ..
            })
        ));
        assert!(matches!(
            relay.route(dst(UPSTREAM), &other),
            Route::Splice(Splice::PlainTcp)
        ));
        for policy in [&refuse, &relay] {
            assert!(matches!(
                policy.route(dst(UPSTREAM), &malformed),
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
        let aware = |name| match policy.route(dst(UPSTREAM), &hello(Some(name))) {
            Route::Intercept(intercept) => intercept.http_aware,
            other => panic!("{other:?}"),
        };
        assert!(aware("api.openai.test"));
        assert!(!aware("other.test"));
        assert!(matches!(
            policy.route(dst(UPSTREAM), &hello(None)),
            Route::Intercept(Intercept {
                http_aware: false,
                ..
            })
        ));
    }

    #[test]
    fn a_name_tls_cannot_carry_is_refused() {
        // A valid host name whose label ends in a hyphen: no certificate can name it.
        match policy("").route(dst(UPSTREAM), &hello(Some("bad-.test"))) {
            Route::Refuse(Refusal::BadSni { sni }) => assert_eq!(sni.as_str(), "bad-.test"),
            other => panic!("{other:?}"),
        }
    }
}
