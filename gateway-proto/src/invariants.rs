//! Invariants of the parsers and of secret substitution, checked on every fuzz input; they panic when one does not hold.
//! Shared by the fuzz targets in `fuzz/` and by `tests/fuzz_regressions.rs`, which replays the
//! kept corpus under `cargo test`.

use std::path::Path;

use crate::{
    config::{Config, ConfigError},
    hello::{self, Incomplete, MAX_HELLO_LEN, Parsed},
    name::{HostName, MAX_LABEL_LEN, MAX_NAME_LEN},
    pattern::Pattern,
    secrets::{Destination, Location, Secret, SecretValue, Secrets},
};

/// How many prefixes of an input are parsed besides the input itself.
const PREFIXES: usize = 64;

/// The file name `config` passes to `Config::parse`, which every error must start with.
pub const CONFIG_PATH: &str = "fuzz.toml";

/// ClientHello parser: never panics, and its answers are consistent across prefixes.
pub fn client_hello(data: &[u8]) {
    let full = hello::parse(data);
    check_parsed(data, &full);

    // A decision, once made on a prefix, is final: more bytes never change it. This also
    // covers "every strict prefix of a hello is Incomplete" (a prefix cannot hold `len` bytes).
    for cut in spread(data.len(), PREFIXES) {
        let prefix = &data[..cut];
        let partial = hello::parse(prefix);
        check_parsed(prefix, &partial);
        if partial.is_ok() {
            assert_eq!(partial, full, "prefix of {cut} bytes decided differently");
        }
    }

    if let Ok(Parsed::Hello(h)) = &full {
        // The hello is exactly its first `len` bytes: they alone give the same answer...
        assert_eq!(hello::parse(&data[..h.len]), full, "hello alone");
        // ...and any fewer are not enough (checked at the edges, where mistakes live).
        let cuts = [
            0,
            1,
            4,
            5,
            6,
            9,
            h.len / 2,
            h.len.saturating_sub(2),
            h.len - 1,
        ];
        for cut in cuts.into_iter().filter(|&cut| cut < h.len) {
            assert_eq!(
                hello::parse(&data[..cut]),
                Err(Incomplete),
                "strict prefix of {cut} of a {}-byte hello",
                h.len
            );
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        host_name(text);
    }
}

/// What holds for any single answer of the parser.
fn check_parsed(data: &[u8], parsed: &Result<Parsed, Incomplete>) {
    match parsed {
        Ok(Parsed::Hello(h)) => {
            assert!(h.len > 0, "empty hello");
            assert!(h.len <= data.len(), "hello longer than the input");
            assert!(h.len <= MAX_HELLO_LEN, "hello over the size limit");
            if let Some(name) = &h.sni {
                check_normalized(name);
            }
            for protocol in &h.alpn {
                assert!(
                    !protocol.is_empty() && protocol.len() <= 255,
                    "{protocol:?}"
                );
            }
        }
        Ok(Parsed::NotTls { reason } | Parsed::Malformed { reason }) => {
            assert!(!reason.is_empty(), "empty reason");
        }
        // Waiting only makes sense while the hello could still fit: every record end is
        // checked against MAX_HELLO_LEN before the parser asks for it, and a further record
        // header is only awaited when its bytes still fit too.
        Err(Incomplete) => assert!(
            data.len() < MAX_HELLO_LEN,
            "Incomplete at {} bytes",
            data.len()
        ),
    }
}

/// `HostName::parse` accepts exactly the documented names and normalizes them as documented.
fn host_name(text: &str) {
    let stripped = text.strip_suffix('.').unwrap_or(text);
    let valid = !stripped.is_empty()
        && stripped.len() <= MAX_NAME_LEN
        && stripped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && stripped
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= MAX_LABEL_LEN);
    let name = HostName::parse(text);
    assert_eq!(name.is_ok(), valid, "HostName::parse({text:?}) = {name:?}");
    if let Ok(name) = name {
        check_normalized(&name);
        assert_eq!(name.as_str(), stripped.to_ascii_lowercase());
        assert_eq!(name.to_string(), name.as_str());
        assert_eq!(HostName::parse(name.as_str()).as_ref(), Ok(&name));
    }
}

fn check_normalized(name: &HostName) {
    let s = name.as_str();
    assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN, "{s:?}");
    assert!(!s.ends_with('.') && !s.starts_with('.'), "{s:?}");
    assert!(
        s.bytes().all(|b| b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'-' | b'_' | b'.')),
        "{s:?}"
    );
}

/// Config parser: never panics, errors name the file and stay on one line, accepted values
/// are within the documented bounds.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new(CONFIG_PATH)) {
        Ok(config) => check_config(&config),
        Err(error) => check_config_error(&error),
    }
    pattern(text);
    // Config-shaped inputs rarely are a pattern as a whole; their quoted strings may be.
    for quoted in text.split('"').skip(1).step_by(2).take(16) {
        pattern(quoted);
    }
}

fn check_config_error(error: &ConfigError) {
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("{CONFIG_PATH}: ")),
        "error does not name the file: {text:?}"
    );
    // The errors go to logs: no line break of any kind (config.rs `one_line`).
    let breaks = [
        '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}',
    ];
    assert!(!text.contains(breaks), "error spans lines: {text:?}");
}

fn check_config(config: &Config) {
    let tls = &config.tls;
    assert!((1..=8760).contains(&tls.validity_hours.hours()), "{tls:?}");
    let millis = tls.hello_timeout.get().as_millis();
    assert!((1..=60_000).contains(&millis), "{tls:?}");
    assert_eq!(
        tls.ca_cert.is_some(),
        tls.ca_key.is_some(),
        "half a CA accepted: {tls:?}"
    );
    let rule_files = tls.upstream.iter().flat_map(|rule| &rule.extra_ca_files);
    let ca_files = tls.ca_cert.iter().chain(&tls.ca_key);
    for file in tls.extra_ca_files.iter().chain(rule_files).chain(ca_files) {
        assert!(!file.path().as_os_str().is_empty(), "{tls:?}");
    }
    for pattern in tls
        .bypass
        .iter()
        .chain(tls.upstream.iter().map(|rule| &rule.pattern))
    {
        check_pattern(pattern);
    }
    for (i, rule) in tls.upstream.iter().enumerate() {
        let later = tls.upstream.iter().skip(i + 1);
        assert!(
            later
                .map(|other| &other.pattern)
                .all(|p| *p != rule.pattern),
            "duplicate upstream pattern {}",
            rule.pattern
        );
    }
}

/// `Pattern::parse` never panics; what it accepts round-trips and matches its own name.
fn pattern(text: &str) {
    let Ok(parsed) = Pattern::parse(text) else {
        return;
    };
    check_pattern(&parsed);
    // Case-insensitive: the upper-cased text is the same pattern.
    assert_eq!(
        Pattern::parse(&text.to_ascii_uppercase()).as_ref(),
        Ok(&parsed),
        "{text:?}"
    );
}

fn check_pattern(parsed: &Pattern) {
    let shown = parsed.to_string();
    assert_eq!(Pattern::parse(&shown).as_ref(), Ok(parsed), "{shown:?}");
    let (Pattern::Exact(name) | Pattern::Suffix(name)) = parsed;
    check_normalized(name);
    assert_eq!(shown.trim_start_matches("*."), name.as_str());
    assert!(parsed.matches(name), "{shown:?} does not match itself");
    // Only whole labels are added below the name.
    let glued = HostName::parse(&format!("x{name}"));
    assert!(
        !glued.is_ok_and(|glued| parsed.matches(&glued)),
        "{shown:?}"
    );
    if let Ok(below) = HostName::parse(&format!("x.{name}")) {
        assert_eq!(
            parsed.matches(&below),
            matches!(parsed, Pattern::Suffix(_)),
            "{shown:?}"
        );
    }
}

/// Up to `count` lengths spread over `0..len` (all of them when `len <= count`).
fn spread(len: usize, count: usize) -> impl Iterator<Item = usize> {
    let step = len.div_ceil(count).max(1);
    (0..len).step_by(step)
}

/// The secrets the `secrets` target substitutes: one that substitutes everywhere, one with the
/// defaults and `passthrough`.
fn fuzz_secrets() -> Secrets {
    const CONFIG: &str = "[[secrets]]\nname = \"A\"\nvalue_env = \"X\"\nhosts = [\"a.test\"]\n\
        substitute = { headers = true, basic_auth = true, query = true, body = true }\n\
        [[secrets]]\nname = \"B\"\nvalue_env = \"Y\"\nhosts = [\"*.b.test\"]\non_violation = \"passthrough\"\n";
    let config = Config::parse(CONFIG, Path::new(CONFIG_PATH)).expect("the fuzz secrets parse");
    let values: [&[u8]; 2] = [b"VALUE-OF-A-1234", b"value:b"];
    Secrets::new(
        config
            .secrets
            .iter()
            .zip(values)
            .map(|(c, v)| Secret::new(c, SecretValue::new(v.to_vec())))
            .collect(),
    )
}

/// Substitution: never panics; a value reaches only hosts its secret allows; a body gives the
/// same result whole and in any chunking; a scrub leaves no value behind.
pub fn secrets(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let secrets = fuzz_secrets();
    let hosts = ["a.test", "x.b.test", "evil.test"];
    let host = HostName::parse(hosts[usize::from(selector % 3)]).expect("fixed hosts parse");
    let dst = Destination {
        host,
        cleartext: selector & 0x80 != 0,
    };
    let chunk = usize::from(selector >> 2 & 0x1f) + 1;

    let whole = secrets.substitute(&dst, Location::Body, rest);
    let mut stream = secrets.request_body(dst.clone(), false, u64::MAX);
    let streamed = stream_all(&mut stream, rest, chunk);
    match (&whole, &streamed) {
        (Ok(rewrite), Ok(out)) => {
            let expected = rewrite.output.as_deref().unwrap_or(rest);
            assert_eq!(out.as_slice(), expected, "chunks of {chunk} disagree");
            for secret in secrets.iter() {
                let value = value_of(secret);
                let smuggled = !contains(rest, value) && contains(out, value);
                let allowed = secret.allowed_for(&dst.host) && !dst.cleartext;
                assert!(!smuggled || allowed, "a value went to {}", dst.host);
            }
            let scrubbed = secrets.scrub(out).unwrap_or_else(|| out.clone());
            for secret in secrets.iter() {
                assert!(
                    !contains(&scrubbed, value_of(secret)),
                    "a value survived the scrub"
                );
            }
        }
        (Err(a), Err(crate::secrets::StreamError::Violation(b))) => assert_eq!(a, b),
        other => panic!("whole and streamed disagree: {other:?}"),
    }
    let _ = secrets.substitute_basic(&dst, rest);
}

fn stream_all(
    stream: &mut crate::secrets::StreamReplace,
    body: &[u8],
    chunk: usize,
) -> Result<Vec<u8>, crate::secrets::StreamError> {
    let mut out = Vec::new();
    for piece in body.chunks(chunk) {
        out.extend(stream.feed(piece)?);
    }
    out.extend(stream.finish()?);
    Ok(out)
}

fn value_of(secret: &Secret) -> &[u8] {
    // The fuzz values are fixed: find which one by the placeholder.
    if secret.placeholder().as_str().ends_with('A') {
        b"VALUE-OF-A-1234"
    } else {
        b"value:b"
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
