//! Secret placeholders on the wire: the sandbox holds only placeholders, and this engine
//! replaces them by the real values in requests to the hosts each secret is allowed for (in
//! the places it may be put), reports the ones headed anywhere else, and puts placeholders
//! back where an upstream echoes a real value. Pure: the HTTP plumbing calls it with header
//! values, query strings and body chunks.
//!
//! What happens to a placeholder found in a request, by where it is going:
//! - a host the secret is allowed for, a place its `substitute` table enables, over TLS the
//!   gateway terminated: replaced by the value;
//! - the same host, a place not enabled: left as it is;
//! - another host, a plain HTTP request (the value would cross the network in clear text), or
//!   a compressed body (nothing in it can be replaced): a [`Violation`]; the secret's
//!   `on_violation` says whether it blocks the request or the placeholder goes on unchanged.
//!
//! A value never goes anywhere a placeholder was not replaced for.

mod stream;
mod value;

use std::{fmt, sync::Arc};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

pub use self::{
    stream::{StreamError, StreamReplace},
    value::{SecretValue, ValueError},
};
use crate::{
    HostName,
    config::{Placeholder, SecretConfig, SecretName, Substitute, ViolationAction},
    pattern::PatternSet,
};

/// One secret with its value, ready to substitute.
#[derive(Debug, Clone)]
pub struct Secret {
    name: SecretName,
    placeholder: Placeholder,
    value: SecretValue,
    hosts: PatternSet,
    allow_any_host: bool,
    substitute: Substitute,
    on_violation: ViolationAction,
}

impl Secret {
    /// The secret of `config` with `value`.
    #[must_use]
    pub fn new(config: &SecretConfig, value: SecretValue) -> Secret {
        Secret {
            name: config.name.clone(),
            placeholder: config.placeholder(),
            value,
            hosts: PatternSet::new(config.hosts.clone()),
            allow_any_host: config.allow_any_host,
            substitute: config.substitute,
            on_violation: config.on_violation,
        }
    }

    /// Whether the value may go to `host`.
    #[must_use]
    pub fn allowed_for(&self, host: &HostName) -> bool {
        self.allow_any_host || self.hosts.matches(host)
    }

    /// The secret's name.
    #[must_use]
    pub fn name(&self) -> &SecretName {
        &self.name
    }

    /// The placeholder.
    #[must_use]
    pub fn placeholder(&self) -> &Placeholder {
        &self.placeholder
    }
}

/// Where in a request a placeholder was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A header value.
    Header,
    /// The credentials of `Authorization: Basic`.
    BasicAuth,
    /// The query string.
    Query,
    /// The body.
    Body,
}

impl Location {
    fn enabled(self, substitute: &Substitute) -> bool {
        match self {
            Location::Header => substitute.headers,
            Location::BasicAuth => substitute.basic_auth,
            Location::Query => substitute.query,
            Location::Body => substitute.body,
        }
    }

    /// How the location reads in messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Location::Header => "a header",
            Location::BasicAuth => "Basic credentials",
            Location::Query => "the query",
            Location::Body => "the body",
        }
    }
}

/// Where a request is going, as far as substitution cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The host (the SNI on TLS; the Host on plain HTTP).
    pub host: HostName,
    /// Plain HTTP: the request crosses the network unencrypted, so nothing is replaced.
    pub cleartext: bool,
}

/// Why a placeholder may not be replaced where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// The host is not among the secret's hosts.
    HostNotAllowed,
    /// The request is plain HTTP.
    Cleartext,
    /// The body is compressed.
    Compressed,
}

/// A placeholder headed where its value may not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The secret.
    pub secret: SecretName,
    /// The host the request is for.
    pub host: HostName,
    /// Where in the request.
    pub location: Location,
    /// Why it may not be replaced there.
    pub breach: Breach,
    /// What the secret says to do about it.
    pub action: ViolationAction,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secret, host, place) = (&self.secret, &self.host, self.location.name());
        match self.breach {
            Breach::HostNotAllowed => {
                write!(
                    f,
                    "secret {secret} may not be sent to {host} (placeholder in {place})"
                )
            }
            Breach::Cleartext => write!(
                f,
                "secret {secret} may not be sent to {host} over plain HTTP (placeholder in {place})"
            ),
            Breach::Compressed => write!(
                f,
                "secret {secret} cannot be substituted in a compressed body (to {host})"
            ),
        }
    }
}

/// The result of rewriting one piece of a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The new bytes, when anything changed.
    pub output: Option<Vec<u8>>,
    /// Violations let through (`on_violation = "passthrough"`), for the log.
    pub passed: Vec<Violation>,
}

/// What to do with one placeholder occurrence.
enum Decision<'a> {
    Replace(&'a [u8]),
    Keep,
    Violate(Violation),
}

/// The secrets of one sandbox, with matchers for their placeholders and values. Cheap to
/// clone; replaced as a whole when values are rotated.
#[derive(Debug, Clone)]
pub struct Secrets(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    secrets: Vec<Secret>,
    placeholders: Option<AhoCorasick>,
    values: Option<AhoCorasick>,
    longest_placeholder: usize,
    longest_value: usize,
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets::new(Vec::new())
    }
}

impl Secrets {
    /// The set of `secrets`.
    #[must_use]
    pub fn new(secrets: Vec<Secret>) -> Secrets {
        let matcher = |patterns: Vec<&[u8]>| {
            (!patterns.is_empty()).then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(patterns)
                    .expect("a few short literal patterns always build")
            })
        };
        let placeholders = matcher(
            secrets
                .iter()
                .map(|s| s.placeholder.as_str().as_bytes())
                .collect(),
        );
        let values = matcher(secrets.iter().map(|s| s.value.expose()).collect());
        Secrets(Arc::new(Inner {
            longest_placeholder: secrets
                .iter()
                .map(|s| s.placeholder.as_str().len())
                .max()
                .unwrap_or(0),
            longest_value: secrets
                .iter()
                .map(|s| s.value.expose().len())
                .max()
                .unwrap_or(0),
            placeholders,
            values,
            secrets,
        }))
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.secrets.is_empty()
    }

    /// The secrets.
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.secrets.iter()
    }

    /// Whether any secret may go to `host`: then its connections need the HTTP-aware path.
    #[must_use]
    pub fn scoped_to(&self, host: &HostName) -> bool {
        self.0.secrets.iter().any(|secret| secret.allowed_for(host))
    }

    /// Replaces the placeholders in one header value, query string or decoded credentials
    /// (`location`) of a request going to `dst`.
    ///
    /// # Errors
    /// The first [`Violation`] whose secret says `block`.
    pub fn substitute(
        &self,
        dst: &Destination,
        location: Location,
        input: &[u8],
    ) -> Result<Rewrite, Violation> {
        let Some(matcher) = &self.0.placeholders else {
            return Ok(Rewrite::default());
        };
        let mut rewrite = Rewrite::default();
        let mut output = Vec::new();
        let mut last = 0;
        for found in matcher.find_iter(input) {
            let replacement = match self.decide(found.pattern().as_usize(), dst, location, false) {
                Decision::Replace(value) => value,
                Decision::Keep => continue,
                Decision::Violate(violation) => match violation.action {
                    ViolationAction::Block => return Err(violation),
                    ViolationAction::Passthrough => {
                        rewrite.passed.push(violation);
                        continue;
                    }
                },
            };
            output.extend_from_slice(&input[last..found.start()]);
            output.extend_from_slice(replacement);
            last = found.end();
        }
        if last > 0 {
            output.extend_from_slice(&input[last..]);
            rewrite.output = Some(output);
        }
        Ok(rewrite)
    }

    /// [`Secrets::substitute`] inside the credentials of an `Authorization: Basic …` value
    /// (decoded, replaced, encoded again); other values are left to the header rules.
    ///
    /// # Errors
    /// As [`Secrets::substitute`].
    pub fn substitute_basic(&self, dst: &Destination, header: &[u8]) -> Result<Rewrite, Violation> {
        let Some(encoded) = basic_credentials(header) else {
            return Ok(Rewrite::default());
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return Ok(Rewrite::default());
        };
        let decoded = zeroize::Zeroizing::new(decoded);
        let mut rewrite = self.substitute(dst, Location::BasicAuth, &decoded)?;
        rewrite.output = rewrite.output.map(|credentials| {
            let credentials = zeroize::Zeroizing::new(credentials);
            let encoded = base64::engine::general_purpose::STANDARD.encode(&*credentials);
            format!("Basic {encoded}").into_bytes()
        });
        Ok(rewrite)
    }

    /// `input` with every real value replaced by its placeholder, if it held any.
    #[must_use]
    pub fn scrub(&self, input: &[u8]) -> Option<Vec<u8>> {
        let matcher = self.0.values.as_ref()?;
        if !matcher.is_match(input) {
            return None;
        }
        let placeholders: Vec<&[u8]> = self
            .0
            .secrets
            .iter()
            .map(|s| s.placeholder.as_str().as_bytes())
            .collect();
        Some(matcher.replace_all_bytes(input, &placeholders))
    }

    /// A streaming substitution for a request body to `dst`; `compressed` bodies have nothing
    /// replaced (any placeholder in them is a violation); at most `cap` bytes are taken.
    #[must_use]
    pub fn request_body(&self, dst: Destination, compressed: bool, cap: u64) -> StreamReplace {
        StreamReplace::substitute(self.clone(), dst, compressed, cap)
    }

    /// A streaming scrub of a response body (real values back to placeholders).
    #[must_use]
    pub fn response_body(&self) -> StreamReplace {
        StreamReplace::scrub(self.clone())
    }

    fn decide(
        &self,
        index: usize,
        dst: &Destination,
        location: Location,
        compressed: bool,
    ) -> Decision<'_> {
        let secret = &self.0.secrets[index];
        let breach = if !secret.allowed_for(&dst.host) {
            Some(Breach::HostNotAllowed)
        } else if dst.cleartext {
            Some(Breach::Cleartext)
        } else if compressed {
            Some(Breach::Compressed)
        } else {
            None
        };
        match breach {
            Some(breach) => Decision::Violate(Violation {
                secret: secret.name.clone(),
                host: dst.host.clone(),
                location,
                breach,
                action: secret.on_violation,
            }),
            None if location.enabled(&secret.substitute) => {
                Decision::Replace(secret.value.expose())
            }
            None => Decision::Keep,
        }
    }
}

/// The base64 part of `Basic <credentials>` (scheme case-insensitive).
fn basic_credentials(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(6)?;
    scheme
        .eq_ignore_ascii_case(b"basic ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests;
