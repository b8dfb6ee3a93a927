use std::{path::Path, time::Duration};

use super::*;
use crate::name::HostName;

const FILE: &str = "/etc/gateway.toml";

const FULL_EXAMPLE: &str = r#"
[tls]
ca_cert = "/path/ca.crt"
ca_key = "/path/ca.key"
validity_hours = 24
cache_capacity = 1000
plain_tcp = "refuse"
hello_timeout = "10s"
bypass = ["pinned.example.com", "*.bank.test"]
extra_ca_files = ["/etc/gateway/corp-ca.pem"]

[[tls.upstream]]
pattern = "*.internal.test"
extra_ca_files = ["/etc/gateway/internal-ca.pem"]
verify = true
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE))
}

fn tls(body: &str) -> Result<TlsConfig, ConfigError> {
    parse(&format!("[tls]\n{body}\n")).map(|config| config.tls)
}

fn error_text(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn tls_error(body: &str) -> String {
    error_text(&format!("[tls]\n{body}\n"))
}

/// The key of an Invalid error, which must be what `text` produces.
fn error_key(text: &str) -> String {
    match parse(text).unwrap_err() {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

fn exact(name: &str) -> Pattern {
    Pattern::Exact(HostName::parse(name).unwrap())
}

fn suffix(name: &str) -> Pattern {
    Pattern::Suffix(HostName::parse(name).unwrap())
}

#[test]
fn empty_file_gives_defaults() {
    for text in ["", "\n\n", "# only a comment\n", "[tls]\n"] {
        assert_eq!(parse(text).unwrap(), Config::default(), "{text:?}");
    }
}

#[test]
fn the_default_file_is_the_default_config() {
    assert_eq!(
        Config::parse(DEFAULT_TOML, Path::new("default.toml")).unwrap(),
        Config::default()
    );
}

/// Every commented-out key of the default file is a real key: uncommented, it still parses.
#[test]
fn the_default_files_commented_keys_exist() {
    let uncommented: String = DEFAULT_TOML
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") || rest.starts_with("[[") => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let config = Config::parse(&uncommented, Path::new("uncommented.toml")).unwrap();
    assert!(config.tls.ca().is_some());
    assert_eq!(config.tls.upstream.len(), 1);
}

#[test]
fn defaults_are_the_documented_ones() {
    let tls = TlsConfig::default();
    assert_eq!(tls.ca(), None);
    assert_eq!(tls.validity_hours.hours(), 24);
    assert_eq!(tls.cache_capacity.get().get(), 1000);
    assert_eq!(tls.plain_tcp, PlainTcp::Refuse);
    assert_eq!(tls.hello_timeout.get(), Duration::from_secs(10));
    assert!(tls.bypass.is_empty());
    assert!(tls.kernel_splice);
    assert!(tls.extra_ca_files.is_empty());
    assert!(tls.upstream.is_empty());
}

#[test]
fn full_example_parses_into_expected_struct() {
    let tls = parse(FULL_EXAMPLE).unwrap().tls;
    assert_eq!(
        tls.ca(),
        Some(CaFiles {
            cert: "/path/ca.crt".into(),
            key: "/path/ca.key".into(),
        })
    );
    assert_eq!(
        tls.bypass,
        vec![exact("pinned.example.com"), suffix("bank.test")]
    );
    assert_eq!(
        tls.extra_ca_files,
        vec![FilePath::from("/etc/gateway/corp-ca.pem")]
    );
    assert_eq!(
        tls.upstream,
        vec![UpstreamRule {
            pattern: suffix("internal.test"),
            extra_ca_files: vec![FilePath::from("/etc/gateway/internal-ca.pem")],
            verify: true,
        }]
    );
}

#[test]
fn non_default_values_are_kept() {
    let tls = tls(r#"
validity_hours = 8760
cache_capacity = 5
plain_tcp = "relay"
hello_timeout = "1m"
bypass = ["API.Example.COM."]
kernel_splice = false
[[tls.upstream]]
pattern = "self-signed.test"
verify = false
[[tls.upstream]]
pattern = "*.self-signed.test"
"#)
    .unwrap();
    assert_eq!(tls.validity_hours.hours(), 8760);
    assert_eq!(tls.cache_capacity.get().get(), 5);
    assert_eq!(tls.plain_tcp, PlainTcp::Relay);
    assert_eq!(tls.hello_timeout.get(), Duration::from_secs(60));
    assert_eq!(tls.bypass, vec![exact("api.example.com")]);
    assert!(!tls.kernel_splice);
    assert_eq!(
        tls.upstream,
        vec![
            UpstreamRule {
                pattern: exact("self-signed.test"),
                extra_ca_files: vec![],
                verify: false,
            },
            UpstreamRule {
                pattern: suffix("self-signed.test"),
                extra_ca_files: vec![],
                verify: true,
            },
        ]
    );
}

#[test]
fn minimal_bounds_are_accepted() {
    let tls = tls("validity_hours = 1\nhello_timeout = \"1ms\"").unwrap();
    assert_eq!(tls.validity_hours.hours(), 1);
    assert_eq!(tls.hello_timeout.get(), Duration::from_millis(1));
}

#[test]
fn cache_capacity_zero_means_default() {
    assert_eq!(
        tls("cache_capacity = 0")
            .unwrap()
            .cache_capacity
            .get()
            .get(),
        1000
    );
}

#[test]
fn negative_cache_capacity_is_rejected() {
    assert_eq!(
        tls_error("cache_capacity = -3"),
        "/etc/gateway.toml: tls.cache_capacity: must be 0 (the default, 1000) \
         or a positive number of entries (got -3) (line 2, column 18)"
    );
}

#[test]
fn validity_hours_out_of_range() {
    let cases = [
        ("0", "must be at least 1 (got 0)"),
        ("-1", "must be at least 1 (got -1)"),
        ("8761", "must be at most 8760 (got 8761)"),
        ("99999999999", "must be at most 8760 (got 99999999999)"),
    ];
    for (value, reason) in cases {
        assert_eq!(
            tls_error(&format!("validity_hours = {value}")),
            format!("/etc/gateway.toml: tls.validity_hours: {reason} (line 2, column 18)")
        );
    }
}

#[test]
fn hello_timeout_out_of_range_or_not_a_duration() {
    let cases = [
        ("0s", "must be from 1ms to 1m (got 0s)"),
        ("61s", "must be from 1ms to 1m (got 61s)"),
        (
            "10",
            "`10` is not a duration such as 500ms, 10s or 5m: time unit needed, for example 10sec or 10ms",
        ),
        (
            "99999999999999999999h",
            "`99999999999999999999h` is not a duration such as 500ms, 10s or 5m: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported)",
        ),
    ];
    for (value, reason) in cases {
        assert_eq!(
            tls_error(&format!("hello_timeout = \"{value}\"")),
            format!("/etc/gateway.toml: tls.hello_timeout: {reason} (line 2, column 17)")
        );
    }
    assert!(tls_error("hello_timeout = 10").contains("expected a string"));
}

#[test]
fn ca_key_without_cert_names_the_key_and_its_line() {
    assert_eq!(
        tls_error(r#"ca_key = "/path/ca.key""#),
        "/etc/gateway.toml: tls.ca_key: set tls.ca_cert and tls.ca_key together \
         (only tls.ca_key is set) (line 2, column 10)"
    );
}

#[test]
fn ca_cert_without_key() {
    assert_eq!(
        tls_error(r#"ca_cert = "/path/ca.crt""#),
        "/etc/gateway.toml: tls.ca_cert: set tls.ca_cert and tls.ca_key together \
         (only tls.ca_cert is set) (line 2, column 11)"
    );
}

#[test]
fn empty_paths_are_rejected() {
    assert_eq!(
        tls_error("ca_cert = \"\"\nca_key = \"/k\""),
        "/etc/gateway.toml: tls.ca_cert: must not be an empty path (line 2, column 11)"
    );
    assert_eq!(
        tls_error(r#"extra_ca_files = ["/a.pem", ""]"#),
        "/etc/gateway.toml: tls.extra_ca_files[1]: must not be an empty path (line 2, column 29)"
    );
    let text = "[[tls.upstream]]\npattern = \"a.test\"\nextra_ca_files = [\"\"]\n";
    assert_eq!(
        error_text(text),
        "/etc/gateway.toml: tls.upstream[0].extra_ca_files[0]: must not be an empty path \
         (line 3, column 19)"
    );
}

#[test]
fn invalid_bypass_pattern_names_index_and_value() {
    assert_eq!(
        tls_error(r#"bypass = ["ok.test", "a b"]"#),
        "/etc/gateway.toml: tls.bypass[1]: invalid name pattern \"a b\": contains ' '; \
         write a bare host name such as `api.example.com` or `*.example.com` (line 2, column 22)"
    );
    assert_eq!(
        tls_error(r#"bypass = ["*"]"#),
        "/etc/gateway.toml: tls.bypass[0]: invalid name pattern \"*\": \
         `*` is only allowed as a leading `*.` (as in `*.example.com`) (line 2, column 11)"
    );
}

#[test]
fn invalid_upstream_pattern_names_field() {
    let text = "[[tls.upstream]]\npattern = \"a.test\"\n[[tls.upstream]]\npattern = \"a..test\"\n";
    assert_eq!(
        error_text(text),
        "/etc/gateway.toml: tls.upstream[1].pattern: invalid name pattern \"a..test\": \
         has an empty label (line 4, column 11)"
    );
}

#[test]
fn duplicate_upstream_pattern_names_both_rules_and_the_line() {
    let text = r#"
[[tls.upstream]]
pattern = "*.internal.test"
[[tls.upstream]]
pattern = "internal.test"
[[tls.upstream]]
pattern = "*.Internal.TEST."
verify = false
"#;
    assert_eq!(
        error_text(text),
        "/etc/gateway.toml: tls.upstream[2].pattern: duplicates tls.upstream[0].pattern \
         (both are *.internal.test) (line 7, column 11)"
    );
}

#[test]
fn kernel_splice_must_be_a_boolean() {
    assert_eq!(
        error_key("[tls]\nkernel_splice = \"yes\"\n"),
        "tls.kernel_splice"
    );
    assert!(tls("kernel_splice = true").unwrap().kernel_splice);
}

#[test]
fn unknown_keys_are_named() {
    assert_eq!(error_key("foo = 1\n"), "foo");
    assert!(error_text("foo = 1\n").starts_with("/etc/gateway.toml: foo: unknown field `foo`"));
    assert_eq!(error_key("[tls]\nvalidity = 3\n"), "tls.validity");
    // The old spelling of hello_timeout is refused by name, not ignored.
    assert_eq!(
        error_key("[tls]\nhello_timeout_ms = 3\n"),
        "tls.hello_timeout_ms"
    );
    let text = "[[tls.upstream]]\npattern = \"a.test\"\nverfy = false\n";
    assert_eq!(error_key(text), "tls.upstream[0].verfy");
    assert!(
        error_text(text)
            .starts_with("/etc/gateway.toml: tls.upstream[0].verfy: unknown field `verfy`")
    );
}

#[test]
fn missing_upstream_pattern_is_named() {
    let text = "[[tls.upstream]]\nverify = false\n";
    assert_eq!(error_key(text), "tls.upstream[0]");
    assert!(error_text(text).contains("missing field `pattern`"));
}

#[test]
fn wrong_type_names_field_and_line() {
    assert_eq!(
        error_key("[tls]\nvalidity_hours = \"x\"\n"),
        "tls.validity_hours"
    );
    assert_eq!(
        tls_error(r#"validity_hours = "x""#),
        "/etc/gateway.toml: tls.validity_hours: invalid type: string \"x\", expected i64 \
         (line 2, column 18)"
    );
    assert_eq!(error_key("[tls]\nbypass = [\"a\", 3]\n"), "tls.bypass[1]");
    assert_eq!(error_key("tls = 5\n"), "tls");
}

#[test]
fn unknown_plain_tcp_value_lists_choices() {
    assert_eq!(
        tls_error(r#"plain_tcp = "drop""#),
        "/etc/gateway.toml: tls.plain_tcp: unknown variant `drop`, \
         expected `refuse` or `relay` (line 2, column 13)"
    );
}

#[test]
fn syntax_error_has_line_and_column_but_no_key() {
    let text = "[tls]\nvalidity_hours = = 3\n";
    match parse(text).unwrap_err() {
        ConfigError::Syntax { position, .. } => {
            assert_eq!(
                position,
                Some(Position {
                    line: 2,
                    column: 18
                })
            );
        }
        other => panic!("expected a Syntax error, got {other:?}"),
    }
    assert!(error_text(text).starts_with("/etc/gateway.toml: line 2, column 18: "));
}

#[test]
fn duplicate_key_is_a_syntax_error_with_line() {
    let text = "[tls]\nvalidity_hours = 1\nvalidity_hours = 2\n";
    assert!(error_text(text).starts_with("/etc/gateway.toml: line 3, "));
}

#[test]
fn errors_stay_on_one_line() {
    let texts = [
        "[tls\n",
        "[tls]\nbypass = [\n",
        "[tls]\nfoo = 1\n",
        "\"a\nb\" = 1\n",
    ];
    for text in texts {
        assert!(!error_text(text).contains('\n'), "{text:?}");
    }
}

#[test]
fn load_missing_file_names_the_file() {
    let path = std::env::temp_dir().join(format!(
        "gateway-config-test-missing-{}.toml",
        std::process::id()
    ));
    let error = Config::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let path = std::env::temp_dir().join(format!(
        "gateway-config-test-load-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, "[tls]\nvalidity_hours = 48\n").unwrap();
    let loaded = Config::load(&path);
    std::fs::write(&path, "[tls]\nvalidity_hours = 0\n").unwrap();
    let rejected = Config::load(&path);
    std::fs::remove_file(&path).unwrap();

    assert_eq!(loaded.unwrap().tls.validity_hours.hours(), 48);
    assert_eq!(
        rejected.unwrap_err().to_string(),
        format!(
            "{}: tls.validity_hours: must be at least 1 (got 0) (line 2, column 18)",
            path.display()
        )
    );
}

#[test]
fn secrets_parse_with_their_defaults() {
    let text = "[[secrets]]\nname = \"api_key\"\nvalue_env = \"API_KEY\"\nhosts = [\"api.test\"]\n";
    let secret = parse(text).unwrap().secrets.remove(0);
    assert_eq!(secret.placeholder().as_str(), "GATEWAY_SECRET_API_KEY");
    assert_eq!(secret.env_name(), "api_key");
    assert_eq!(secret.substitute, Substitute::default());
    assert!(secret.substitute.headers && secret.substitute.basic_auth);
    assert!(!secret.substitute.query && !secret.substitute.body);
    assert_eq!(secret.on_violation, ViolationAction::Block);
}

#[test]
fn secrets_are_checked_with_the_key_and_line() {
    let cases = [
        (
            "[[secrets]]\nname = \"K\"\nhosts = [\"a.test\"]\n",
            "secrets[0].name: set value_env or value_file: where the value comes from (never the config) (line 2, column 8)",
        ),
        (
            "[[secrets]]\nname = \"K\"\nvalue_env = \"A\"\nvalue_file = \"/k\"\nhosts = [\"a.test\"]\n",
            "secrets[0].value_file: set value_env or value_file, not both (line 4, column 14)",
        ),
        (
            "[[secrets]]\nname = \"K\"\nvalue_env = \"A\"\n",
            "secrets[0].hosts: name the hosts the value may go to (or set allow_any_host = true) (line 1, column 1)",
        ),
        (
            "[[secrets]]\nname = \"K\"\nvalue_env = \"A\"\nhosts = [\"*\"]\n",
            "secrets[0].hosts[0]: invalid name pattern \"*\": `*` is only allowed as a leading `*.` (as in `*.example.com`) (line 4, column 10)",
        ),
        (
            "[[secrets]]\nname = \"K\"\nvalue_env = \"A\"\nhosts = [\"a.test\"]\nplaceholder = \"short\"\n",
            "secrets[0].placeholder: must be 8 to 1024 bytes long (got 5) (line 5, column 15)",
        ),
        (
            "[[secrets]]\nname = \"K\"\nvalue_env = \"A\"\nhosts = [\"a.test\"]\nplaceholder = \"a\\nbcdefghi\"\n",
            "secrets[0].placeholder: must not contain NUL, CR or LF (line 5, column 15)",
        ),
        (
            "[[secrets]]\nname = \"bad name\"\nvalue_env = \"A\"\nhosts = [\"a.test\"]\n",
            "secrets[0].name: may hold only ASCII letters, digits and `_` (line 2, column 8)",
        ),
        (
            "[[secrets]]\nname = \"A\"\nvalue_env = \"A\"\nhosts = [\"a.test\"]\n[[secrets]]\nname = \"AB\"\nvalue_env = \"B\"\nhosts = [\"a.test\"]\nplaceholder = \"GATEWAY_SECRET_A\"\n",
            "secrets[1].placeholder: the placeholders of secrets A and AB overlap; make neither contain the other (line 9, column 15)",
        ),
        (
            "[[secrets]]\nname = \"A\"\nvalue_env = \"A\"\nhosts = [\"a.test\"]\n[[secrets]]\nname = \"A\"\nvalue_env = \"B\"\nallow_any_host = true\n",
            "secrets[1].name: duplicates secrets[0].name (A) (line 6, column 8)",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error_text(text), format!("{FILE}: {expected}"), "{text}");
    }
}

#[test]
fn sandbox_tables_become_specs_and_need_known_secrets() {
    let text = "[[sandbox]]\ncgroup = \"/cg/agent1\"\nname = \"agent1\"\nallow_tcp_ports = [22]\n\
                allow_hosts = [\"*.github.com\"]\ndns_binding = false\n";
    let spec = parse(text).unwrap().sandbox[0].to_spec();
    assert_eq!(
        spec.to_string(),
        "/cg/agent1,name=agent1,allow-tcp-port=22,allow-host=*.github.com,dns-binding=off"
    );
    assert_eq!(
        error_text("[[sandbox]]\ncgroup = \"/cg/a\"\nsecrets = [\"NOPE\"]\n"),
        "/etc/gateway.toml: sandbox[0].secrets[0]: there is no [[secrets]] entry named NOPE \
         (line 3, column 12)"
    );
}

#[test]
fn dns_defaults_are_the_documented_ones() {
    let dns = DnsConfig::default();
    assert!(dns.upstream.is_empty());
    assert_eq!(dns.hosts_file, FilePath::from("/etc/hosts"));
    assert_eq!(dns.denied_answer, DeniedAnswer::Nxdomain);
    assert_eq!(dns.binding_ttl_min.get(), Duration::from_secs(60));
    assert_eq!(dns.binding_ttl_max.get(), Duration::from_secs(3600));
    assert_eq!(dns.cache_size.get().get(), 4096);
}

#[test]
fn dns_section_parses() {
    let text = r#"
[dns]
upstream = ["192.0.2.53", "[2001:db8::53]:5353"]
hosts_file = "/tmp/hosts"
denied_answer = "refused"
binding_ttl_min = "5s"
binding_ttl_max = "5s"
cache_size = 10
"#;
    let dns = parse(text).unwrap().dns;
    let addrs: Vec<String> = dns.upstream.iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["192.0.2.53:53", "[2001:db8::53]:5353"]);
    assert_eq!(dns.hosts_file, FilePath::from("/tmp/hosts"));
    assert_eq!(dns.denied_answer, DeniedAnswer::Refused);
    assert_eq!(dns.binding_ttl_min.get(), Duration::from_secs(5));
    assert_eq!(dns.binding_ttl_max.get(), Duration::from_secs(5));
    assert_eq!(dns.cache_size.get().get(), 10);
}

#[test]
fn dns_errors_name_the_key_and_line() {
    let cases = [
        (
            "[dns]\nupstream = [\"192.0.2.1\", \"dns.example\"]\n",
            "dns.upstream[1]: invalid resolver \"dns.example\": write an IP address, optionally with a port (192.0.2.53, 192.0.2.53:5353, 2001:db8::53, [2001:db8::53]:5353) (line 2, column 26)",
        ),
        (
            "[dns]\nupstream = [\"192.0.2.1:0\"]\n",
            "dns.upstream[0]: invalid resolver \"192.0.2.1:0\": port 0 is not a port (line 2, column 13)",
        ),
        (
            "[dns]\ndenied_answer = \"drop\"\n",
            "dns.denied_answer: unknown variant `drop`, expected `nxdomain` or `refused` (line 2, column 17)",
        ),
        (
            "[dns]\nbinding_ttl_min = \"0s\"\n",
            "dns.binding_ttl_min: must be from 1s to 7days (got 0s) (line 2, column 19)",
        ),
        (
            "[dns]\nbinding_ttl_max = \"10\"\n",
            "dns.binding_ttl_max: `10` is not a duration such as 500ms, 10s or 5m: time unit needed, for example 10sec or 10ms (line 2, column 19)",
        ),
        (
            "[dns]\nbinding_ttl_min = \"2h\"\n",
            "dns.binding_ttl_min: must not be longer than dns.binding_ttl_max (2h > 1h) (line 2, column 19)",
        ),
        (
            "[dns]\ncache_size = 0\n",
            "dns.cache_size: must be from 1 to 1000000 entries (got 0) (line 2, column 14)",
        ),
        (
            "[dns]\nhosts_file = \"\"\n",
            "dns.hosts_file: must not be an empty path (line 2, column 14)",
        ),
        (
            "[dns]\nupstreams = []\n",
            "dns.upstreams: unknown field `upstreams`",
        ),
    ];
    for (text, expected) in cases {
        let error = error_text(text);
        assert!(
            error.starts_with(&format!("{FILE}: {expected}")),
            "{text:?}\n{error}"
        );
    }
}

#[test]
fn dns_binding_is_unset_unless_written() {
    assert_eq!(parse("").unwrap().policy.dns_binding, None);
    let off = parse("[policy]\ndns_binding = false\nallow_hosts = [\"a.test\"]\n").unwrap();
    assert_eq!(off.policy.dns_binding, Some(false));
    assert!(!off.policy.dns_binding_effective());
    assert!(error_text("[policy]\ndns_binding = \"on\"\n").contains("dns_binding"));
}
