use std::path::Path;

use super::*;
use crate::config::Config;

const CONFIG: &str = r#"
[[secrets]]
name = "OPENAI"
value_env = "X"
hosts = ["api.openai.test"]
substitute = { headers = true, basic_auth = true, query = true, body = true }

[[secrets]]
name = "GITHUB"
value_env = "Y"
hosts = ["*.github.test"]
on_violation = "passthrough"
"#;

const OPENAI: &[u8] = b"GATEWAY_SECRET_OPENAI";
const GITHUB: &[u8] = b"GATEWAY_SECRET_GITHUB";
const OPENAI_VALUE: &[u8] = b"sk-live-0penai-value";
const GITHUB_VALUE: &[u8] = b"ghp_github_value_1234";

fn secrets() -> Secrets {
    let config = Config::parse(CONFIG, Path::new("t.toml")).unwrap();
    let values = [OPENAI_VALUE, GITHUB_VALUE];
    Secrets::new(
        config
            .secrets
            .iter()
            .zip(values)
            .map(|(c, v)| Secret::new(c, SecretValue::new(v.to_vec())))
            .collect(),
    )
}

fn tls(host: &str) -> Destination {
    Destination {
        host: HostName::parse(host).unwrap(),
        cleartext: false,
    }
}

fn out(rewrite: &Rewrite) -> &[u8] {
    rewrite.output.as_deref().unwrap()
}

#[test]
fn a_bearer_placeholder_becomes_the_value_for_its_host_only() {
    let secrets = secrets();
    let header = [b"Bearer ".as_slice(), OPENAI].concat();
    let rewrite = secrets
        .substitute(&tls("api.openai.test"), Location::Header, &header)
        .unwrap();
    assert_eq!(
        out(&rewrite),
        [b"Bearer ".as_slice(), OPENAI_VALUE].concat()
    );

    let violation = secrets
        .substitute(&tls("evil.test"), Location::Header, &header)
        .unwrap_err();
    assert_eq!(violation.breach, Breach::HostNotAllowed);
    assert_eq!(
        violation.to_string(),
        "secret OPENAI may not be sent to evil.test (placeholder in a header)"
    );
    assert!(!violation.to_string().contains("sk-live"));
}

#[test]
fn passthrough_secrets_go_on_unchanged_and_are_reported() {
    let secrets = secrets();
    let rewrite = secrets
        .substitute(&tls("evil.test"), Location::Header, GITHUB)
        .unwrap();
    assert_eq!(rewrite.output, None);
    assert_eq!(rewrite.passed.len(), 1);
    assert_eq!(rewrite.passed[0].action, ViolationAction::Passthrough);
    let allowed = secrets
        .substitute(&tls("api.github.test"), Location::Header, GITHUB)
        .unwrap();
    assert_eq!(out(&allowed), GITHUB_VALUE);
}

#[test]
fn places_not_enabled_keep_the_placeholder() {
    let secrets = secrets();
    let query = [b"token=".as_slice(), GITHUB].concat();
    let rewrite = secrets
        .substitute(&tls("api.github.test"), Location::Query, &query)
        .unwrap();
    assert_eq!(
        rewrite,
        Rewrite::default(),
        "query substitution is off for GITHUB"
    );
    let rewrite = secrets
        .substitute(
            &tls("api.openai.test"),
            Location::Query,
            &[b"k=".as_slice(), OPENAI].concat(),
        )
        .unwrap();
    assert_eq!(out(&rewrite), [b"k=".as_slice(), OPENAI_VALUE].concat());
}

#[test]
fn plain_http_never_gets_a_value() {
    let secrets = secrets();
    let cleartext = Destination {
        host: HostName::parse("api.openai.test").unwrap(),
        cleartext: true,
    };
    let violation = secrets
        .substitute(&cleartext, Location::Header, OPENAI)
        .unwrap_err();
    assert_eq!(violation.breach, Breach::Cleartext);
}

#[test]
fn basic_auth_is_decoded_replaced_and_encoded_again() {
    let secrets = secrets();
    let credentials = [b"user:".as_slice(), OPENAI].concat();
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&credentials)
    );
    let rewrite = secrets
        .substitute_basic(&tls("api.openai.test"), header.as_bytes())
        .unwrap();
    let encoded = std::str::from_utf8(out(&rewrite))
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(decoded, [b"user:".as_slice(), OPENAI_VALUE].concat());
    assert!(
        secrets
            .substitute_basic(&tls("evil.test"), header.as_bytes())
            .is_err()
    );
    assert_eq!(
        secrets
            .substitute_basic(&tls("api.openai.test"), b"Bearer x")
            .unwrap(),
        Rewrite::default()
    );
}

#[test]
fn scrub_puts_placeholders_back() {
    let secrets = secrets();
    let echoed = [b"{\"auth\":\"".as_slice(), OPENAI_VALUE, b"\"}"].concat();
    assert_eq!(
        secrets.scrub(&echoed).unwrap(),
        [b"{\"auth\":\"".as_slice(), OPENAI, b"\"}"].concat()
    );
    assert_eq!(secrets.scrub(b"nothing here"), None);
}

/// Feeds `body` to `stream` in chunks of `size`, returns everything it passed on.
fn stream_in_chunks(
    stream: &mut StreamReplace,
    body: &[u8],
    size: usize,
) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    for chunk in body.chunks(size.max(1)) {
        out.extend(stream.feed(chunk)?);
    }
    out.extend(stream.finish()?);
    Ok(out)
}

#[test]
fn a_placeholder_split_across_chunks_is_still_replaced() {
    let secrets = secrets();
    let body = [
        b"{\"key\": \"".as_slice(),
        OPENAI,
        b"\", \"again\": \"",
        OPENAI,
        b"\"}",
    ]
    .concat();
    let expected = [
        b"{\"key\": \"".as_slice(),
        OPENAI_VALUE,
        b"\", \"again\": \"",
        OPENAI_VALUE,
        b"\"}",
    ]
    .concat();
    for size in 1..=body.len() {
        let mut stream = secrets.request_body(tls("api.openai.test"), false, 1 << 20);
        assert_eq!(
            stream_in_chunks(&mut stream, &body, size).unwrap(),
            expected,
            "chunks of {size}"
        );
    }
}

#[test]
fn body_violations_compression_and_the_cap() {
    let secrets = secrets();
    let body = [b"x".as_slice(), OPENAI, b"y"].concat();
    let mut elsewhere = secrets.request_body(tls("evil.test"), false, 1 << 20);
    assert!(matches!(
        stream_in_chunks(&mut elsewhere, &body, 3),
        Err(StreamError::Violation(v)) if v.breach == Breach::HostNotAllowed
    ));
    let mut compressed = secrets.request_body(tls("api.openai.test"), true, 1 << 20);
    assert!(matches!(
        stream_in_chunks(&mut compressed, &body, 100),
        Err(StreamError::Violation(v)) if v.breach == Breach::Compressed
    ));
    let mut capped = secrets.request_body(tls("api.openai.test"), false, 10);
    assert_eq!(
        stream_in_chunks(&mut capped, &[0u8; 11], 4),
        Err(StreamError::TooLarge { cap: 10 })
    );
    // GITHUB's body substitution is off: kept as it is.
    let mut kept = secrets.request_body(tls("x.github.test"), false, 1 << 20);
    assert_eq!(stream_in_chunks(&mut kept, GITHUB, 5).unwrap(), GITHUB);
}

#[test]
fn response_scrub_streams_too() {
    let secrets = secrets();
    let body = [b"echo: ".as_slice(), GITHUB_VALUE, b" and ", OPENAI_VALUE].concat();
    let expected = [b"echo: ".as_slice(), GITHUB, b" and ", OPENAI].concat();
    for size in [1, 2, 7, 64] {
        let mut stream = secrets.response_body();
        assert_eq!(
            stream_in_chunks(&mut stream, &body, size).unwrap(),
            expected
        );
    }
}

#[test]
fn scoping_says_which_hosts_need_the_http_aware_path() {
    let secrets = secrets();
    assert!(secrets.scoped_to(&HostName::parse("api.openai.test").unwrap()));
    assert!(secrets.scoped_to(&HostName::parse("x.github.test").unwrap()));
    assert!(!secrets.scoped_to(&HostName::parse("evil.test").unwrap()));
    assert!(!Secrets::default().scoped_to(&HostName::parse("api.openai.test").unwrap()));
}
