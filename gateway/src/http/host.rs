//! The host a request is for: the authority of an absolute-form target, else its one `Host`
//! field (for HTTP/2, the `:authority` is the URI's). What is judged is exactly what the
//! upstream is told (the `Host` field or `:authority` sent upstream is rewritten from the judged
//! authority).

use std::str::FromStr as _;

use gateway_proto::{HostName, name::NameError};
use http::{HeaderValue, Request, header::HOST, uri::Authority};

/// The host of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The normalized name, port removed: what the rules judge.
    pub(crate) name: HostName,
    /// `host[:port]` as the client wrote it: the `:authority` sent upstream (HTTP/2).
    pub(crate) authority: Authority,
    /// The same as a `Host` field, sent upstream (HTTP/1).
    pub(crate) host_field: HeaderValue,
}

/// Why a request has no usable host; Display is shown to the client and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostError {
    /// Neither an absolute-form target nor a `Host` field.
    #[error("the request has no Host header")]
    Missing,
    /// Two `Host` fields, which could be read two ways.
    #[error("the request has more than one Host header")]
    Repeated,
    /// Not `host[:port]` (user info, a bad port, bytes that are not text).
    #[error("the Host is not host[:port]")]
    Malformed,
    /// The host part is not a host name (IP literals other than IPv4 included).
    #[error("the Host is not a host name: it {0}")]
    Name(#[source] NameError),
}

/// The host `request` is for.
pub(crate) fn target<B>(request: &Request<B>) -> Result<Target, HostError> {
    if let Some(authority) = request.uri().authority() {
        // RFC 9112 §3.2.2: an absolute-form target's authority wins over the Host field.
        return from_authority(authority);
    }
    let mut fields = request.headers().get_all(HOST).iter();
    let (Some(value), None) = (fields.next(), fields.next()) else {
        return Err(if request.headers().contains_key(HOST) {
            HostError::Repeated
        } else {
            HostError::Missing
        });
    };
    let text = value.to_str().map_err(|_| HostError::Malformed)?;
    let authority = Authority::from_str(text).map_err(|_| HostError::Malformed)?;
    from_authority(&authority)
}

fn from_authority(authority: &Authority) -> Result<Target, HostError> {
    // The http crate accepts user info in an authority; a Host never carries it, and a
    // `user@host` target is a classic way to make two parsers see two hosts.
    if authority.as_str().contains('@') {
        return Err(HostError::Malformed);
    }
    // The http crate accepts any text after the colon and then reports no port.
    let port = authority.as_str().strip_prefix(authority.host());
    if !port.is_some_and(|port| port.is_empty() || is_port(port)) {
        return Err(HostError::Malformed);
    }
    let name = HostName::parse(authority.host()).map_err(HostError::Name)?;
    let host_field = HeaderValue::from_str(authority.as_str()).map_err(|_| HostError::Malformed)?;
    Ok(Target {
        name,
        authority: authority.clone(),
        host_field,
    })
}

/// `:` and a port number of one to five digits.
fn is_port(text: &str) -> bool {
    text.strip_prefix(':').is_some_and(|digits| {
        (1..=5).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.parse::<u16>().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::get(target);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).unwrap()
    }

    fn name_of(target: &str, hosts: &[&str]) -> Result<(String, String), HostError> {
        super::target(&request(target, hosts)).map(|t| {
            assert_eq!(t.host_field, t.authority.as_str());
            (t.name.to_string(), t.authority.to_string())
        })
    }

    #[test]
    fn the_host_field_gives_the_name_without_its_port() {
        assert_eq!(
            name_of("/x", &["API.Example.com:8080"]),
            Ok(("api.example.com".into(), "API.Example.com:8080".into()))
        );
        assert_eq!(
            name_of("/", &["a.test."]),
            Ok(("a.test".into(), "a.test.".into()))
        );
        assert_eq!(
            name_of("/", &["10.0.0.1:80"]),
            Ok(("10.0.0.1".into(), "10.0.0.1:80".into()))
        );
    }

    #[test]
    fn an_absolute_target_wins_over_the_host_field() {
        assert_eq!(
            name_of("http://b.test:81/p?q", &["a.test"]),
            Ok(("b.test".into(), "b.test:81".into()))
        );
    }

    #[test]
    fn unusable_hosts_are_refused_with_the_reason() {
        assert_eq!(name_of("/", &[]), Err(HostError::Missing));
        assert_eq!(
            name_of("/", &["a.test", "b.test"]),
            Err(HostError::Repeated)
        );
        for bad in [
            "user@a.test",
            "a.test:http",
            "a.test:99999",
            "a.test:+80",
            "a.test:",
            "",
            "a b",
        ] {
            assert!(name_of("/", &[bad]).is_err(), "{bad:?}");
        }
        assert!(matches!(
            name_of("/", &["[::1]:80"]),
            Err(HostError::Name(_))
        ));
        assert!(matches!(
            name_of("/", &["*.a.test"]),
            Err(HostError::Name(_))
        ));
        assert_eq!(
            name_of("http://user@b.test/", &["a.test"]),
            Err(HostError::Malformed)
        );
    }

    #[test]
    fn reasons_read_as_words() {
        assert_eq!(
            HostError::Name(NameError::BadChar('*')).to_string(),
            "the Host is not a host name: it contains '*'; write a bare host name such as \
             `api.example.com` or `*.example.com`"
        );
    }
}
