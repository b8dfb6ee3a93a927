//! Hop-by-hop header fields (RFC 9110 §7.6.1): they describe one connection, so a proxy drops
//! them and hyper frames each leg itself (Content-Length stays, Transfer-Encoding goes).

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, TE, UPGRADE},
};

/// Fields that are hop-by-hop whether or not `Connection` names them.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Whether a request asks to switch protocols (`Connection: upgrade` and an `Upgrade` field)
/// to something the gateway relays. Never to `h2c`: after the switch the bytes are relayed
/// unread, and HTTP/2 requests inside could name hosts the rules deny (h2c smuggling). Such a
/// request goes upstream as a plain one, which a server answers in HTTP/1.1 (RFC 7540 §3.2).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    let offered =
        headers.contains_key(UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade");
    offered && !offers_h2c(headers)
}

/// Whether any `Upgrade` field offers h2c (as `h2c` or `h2c/version`); fields that are not text
/// count as offering it.
fn offers_h2c(headers: &HeaderMap) -> bool {
    headers.get_all(UPGRADE).iter().any(|value| {
        value.to_str().map_or(true, |text| {
            text.split(',')
                .filter_map(|protocol| protocol.trim().split('/').next())
                .any(|name| name.eq_ignore_ascii_case("h2c"))
        })
    })
}

/// Removes the hop-by-hop fields, those `Connection` names included. With `upgrade` (a request
/// asking to switch protocols, or the 101 answering it) `Upgrade` is kept and `Connection`
/// becomes `upgrade`, since the switch concerns both legs.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let kept_upgrade: Vec<HeaderValue> = if upgrade {
        headers.get_all(UPGRADE).iter().cloned().collect()
    } else {
        Vec::new()
    };
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !kept_upgrade.is_empty() {
        for value in kept_upgrade {
            headers.append(UPGRADE, value);
        }
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the client declared that it accepts trailers (`TE: trailers`). TE is hop-by-hop, but
/// the gateway passes trailers on, so the declaration holds for the next leg too (gRPC servers
/// require it).
pub(crate) fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|coding| coding.split(';').next())
        .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"))
}

/// The lower-cased tokens of every `Connection` field; values that are not text are skipped.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use http::header::{CONTENT_LENGTH, HOST};

    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_dropped() {
        let mut map = headers(&[
            ("host", "a.test"),
            ("connection", "keep-alive, X-Trace"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("content-length", "3"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut map, false);
        let names: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, [HOST.as_str(), CONTENT_LENGTH.as_str()]);
    }

    #[test]
    fn an_upgrade_keeps_its_fields() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(wants_upgrade(&map));
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map[UPGRADE], "websocket");
        assert_eq!(map[CONNECTION], "upgrade");
        assert_eq!(map["sec-websocket-key"], "abc");
    }

    #[test]
    fn h2c_is_never_an_upgrade() {
        for offer in ["h2c", "H2C", "websocket, h2c", "h2c/1"] {
            let mut map = headers(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ]);
            map.append(UPGRADE, HeaderValue::from_static(offer));
            assert!(!wants_upgrade(&map), "{offer}");
            strip_hop_by_hop(&mut map, false);
            assert!(map.is_empty(), "{offer}: {map:?}");
        }
    }

    #[test]
    fn trailers_are_accepted_only_when_declared() {
        assert!(accepts_trailers(&headers(&[("te", "trailers")])));
        assert!(accepts_trailers(&headers(&[(
            "te",
            "gzip;q=0.5, Trailers"
        )])));
        assert!(!accepts_trailers(&headers(&[("te", "gzip")])));
        assert!(!accepts_trailers(&headers(&[])));
    }

    #[test]
    fn upgrade_needs_both_fields() {
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
        assert!(wants_upgrade(&headers(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "websocket")
        ])));
    }
}
