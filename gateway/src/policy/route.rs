//! The route decision: a pure function of the config, the original destination and what the
//! first bytes said, returning what to do with the connection. No sockets, so every case is a
//! unit test.

use std::sync::Arc;

use gateway_proto::{
    HostName, Pattern,
    config::{PlainTcp, TlsConfig},
    hello::{ClientHello, Parsed},
    pattern::PatternSet,
};
use rustls::{ClientConfig, crypto::CryptoProvider};
use rustls_pki_types::ServerName as PkiServerName;

use crate::{
    net::OrigDst,
    tls::{
        certs::Subject,
        upstream::{Connectors, UpstreamError},
    },
};

/// What the gateway does with one connection.
#[derive(Debug)]
pub enum Route {
    /// Close it, for this reason.
    Refuse(Refusal),
    /// Relay the bytes raw to the original destination, replaying what was read.
    Splice(Splice),
    /// Terminate TLS with a forged certificate and re-encrypt upstream.
    Intercept(Intercept),
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
    /// Not TLS, and plain TCP is refused.
    #[error("not TLS ({reason}); refused (plain_tcp = \"refuse\")")]
    NotTls {
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
}

/// Why a connection is spliced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Splice {
    /// Its SNI matched a bypass pattern.
    Bypass {
        /// The pattern that matched.
        pattern: Pattern,
    },
    /// Not TLS, and `plain_tcp = "relay"`.
    PlainTcp,
}

/// An interception: the name the forged certificate is for, how to reach the upstream, and
/// through which connector.
#[derive(Debug)]
pub struct Intercept {
    /// Whom the forged certificate names: the SNI, or the destination address without one.
    pub subject: Subject,
    /// The name sent upstream (SNI) and verified in the upstream's certificate.
    pub server_name: PkiServerName<'static>,
    /// The upstream connector chosen for the name.
    pub connector: Arc<ClientConfig>,
    /// Whether that connector verifies the upstream's certificate.
    pub verify: bool,
}

/// The parts of the configuration the decision reads.
#[derive(Debug)]
pub struct RoutePolicy {
    /// Names spliced raw.
    pub bypass: PatternSet,
    /// What to do with non-TLS first bytes.
    pub plain_tcp: PlainTcp,
    /// Upstream connectors by name.
    pub connectors: Connectors,
}

impl RoutePolicy {
    /// The policy of a `[tls]` section; builds (and so checks) every upstream connector.
    ///
    /// # Errors
    /// [`UpstreamError`] naming a CA file that cannot be used.
    pub fn from_config(
        tls: &TlsConfig,
        provider: &Arc<CryptoProvider>,
    ) -> Result<RoutePolicy, UpstreamError> {
        Ok(RoutePolicy {
            bypass: PatternSet::new(tls.bypass.clone()),
            plain_tcp: tls.plain_tcp,
            connectors: Connectors::build(tls, provider)?,
        })
    }

    /// The refusal a destination gets before any byte is read, if any.
    pub fn refuse_destination(&self, dst: OrigDst) -> Option<Refusal> {
        dst.is_host_local().then_some(Refusal::HostLocal { dst })
    }

    /// Decides what to do with a connection to `dst` whose first bytes parsed as `first`.
    pub fn route(&self, dst: OrigDst, first: &Parsed) -> Route {
        if let Some(refusal) = self.refuse_destination(dst) {
            return Route::Refuse(refusal);
        }
        match first {
            Parsed::Hello(hello) => self.route_tls(dst, hello),
            Parsed::NotTls { reason } => match self.plain_tcp {
                PlainTcp::Refuse => Route::Refuse(Refusal::NotTls { reason }),
                PlainTcp::Relay => Route::Splice(Splice::PlainTcp),
            },
            Parsed::Malformed { reason } => Route::Refuse(Refusal::MalformedHello { reason }),
        }
    }

    fn route_tls(&self, dst: OrigDst, hello: &ClientHello) -> Route {
        let Some(sni) = &hello.sni else {
            let ip = dst.0.ip();
            let (connector, verify) = self.connectors.for_name(None);
            return Route::Intercept(Intercept {
                subject: Subject::Ip(ip),
                server_name: PkiServerName::IpAddress(ip.into()),
                connector: Arc::clone(connector),
                verify,
            });
        };
        if let Some(pattern) = self.bypass.best_match(sni) {
            return Route::Splice(Splice::Bypass {
                pattern: pattern.clone(),
            });
        }
        let Ok(server_name) = PkiServerName::try_from(sni.as_str().to_owned()) else {
            return Route::Refuse(Refusal::BadSni { sni: sni.clone() });
        };
        let (connector, verify) = self.connectors.for_name(Some(sni));
        Route::Intercept(Intercept {
            subject: Subject::Dns(sni.clone()),
            server_name,
            connector: Arc::clone(connector),
            verify,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use gateway_proto::config::Config;

    use super::*;

    fn policy(config: &str) -> RoutePolicy {
        let config = Config::parse(config, Path::new("test.toml")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        RoutePolicy::from_config(&config.tls, &provider).unwrap()
    }

    fn dst(text: &str) -> OrigDst {
        OrigDst(text.parse().unwrap())
    }

    fn hello(sni: Option<&str>) -> Parsed {
        Parsed::Hello(ClientHello {
            sni: sni.map(|name| HostName::parse(name).unwrap()),
            alpn: vec![b"h2".to_vec()],
            len: 100,
        })
    }

    const UPSTREAM: &str = "198.51.100.7:443";

    #[test]
    fn host_local_destinations_are_refused_before_and_after_reading() {
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
        assert_eq!(policy.refuse_destination(dst(UPSTREAM)), None);
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
    fn a_hello_without_sni_is_intercepted_for_the_destination_address() {
        let Route::Intercept(intercept) = policy("").route(dst(UPSTREAM), &hello(None)) else {
            panic!("not intercepted")
        };
        assert_eq!(
            intercept.subject,
            Subject::Ip("198.51.100.7".parse().unwrap())
        );
        assert_eq!(intercept.server_name.to_str(), "198.51.100.7");
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
    fn plain_tcp_follows_the_setting_and_malformed_hellos_are_always_refused() {
        let not_tls = Parsed::NotTls { reason: "plain" };
        let malformed = Parsed::Malformed { reason: "bad" };
        let refuse = policy("");
        let relay = policy("[tls]\nplain_tcp = \"relay\"\n");
        assert!(matches!(
            refuse.route(dst(UPSTREAM), &not_tls),
            Route::Refuse(Refusal::NotTls { reason: "plain" })
        ));
        assert!(matches!(
            relay.route(dst(UPSTREAM), &not_tls),
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
    fn a_name_tls_cannot_carry_is_refused() {
        // A valid host name whose label ends in a hyphen: no certificate can name it.
        match policy("").route(dst(UPSTREAM), &hello(Some("bad-.test"))) {
            Route::Refuse(Refusal::BadSni { sni }) => assert_eq!(sni.as_str(), "bad-.test"),
            other => panic!("{other:?}"),
        }
    }
}
