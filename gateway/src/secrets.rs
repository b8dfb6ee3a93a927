//! Secrets in the daemon: their values, loaded at start and reloaded on SIGHUP (new requests
//! use the new values), the ones each sandbox was given, and the filter that substitutes them
//! on the HTTP path. Values stay inside `gateway_proto::secrets`' redacting type; only names,
//! hosts and places are ever logged.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use gateway_proto::{
    HostName,
    config::{SecretConfig, SecretName},
    secrets::{
        Destination, Location, Rewrite, Secret, Secrets, StreamError, StreamReplace, ValueError,
        Violation,
    },
};
use http::{HeaderValue, StatusCode, Uri, header};
use tracing::warn;

use crate::{
    http::{Filter, Refused, StreamRewrite},
    sandbox::SandboxTag,
};

/// The largest request body secrets are substituted in; a larger one is refused (413), since
/// its end would otherwise reach the upstream unchecked.
pub const MAX_SUBSTITUTED_BODY: u64 = 64 << 20;

/// Why secrets could not be loaded or given to a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A value could not be read.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A sandbox was given a secret the config does not have.
    #[error("no secret {name} in the config's [[secrets]]")]
    Unknown {
        /// The name asked for.
        name: SecretName,
    },
}

/// Every configured secret with its current value.
#[derive(Debug)]
pub struct SecretStore {
    configs: Vec<SecretConfig>,
    loaded: RwLock<Arc<BTreeMap<SecretName, Secret>>>,
    /// Bumped by every reload, so sandboxes rebuild their matchers.
    generation: AtomicU64,
}

impl SecretStore {
    /// Loads every configured secret's value.
    ///
    /// # Errors
    /// The first value that cannot be read, naming its secret and source.
    pub fn load(configs: &[SecretConfig]) -> Result<SecretStore, SecretsError> {
        Ok(SecretStore {
            loaded: RwLock::new(Arc::new(load_all(configs)?)),
            configs: configs.to_vec(),
            generation: AtomicU64::new(0),
        })
    }

    /// Reads every value again; on any failure the old values stay. Returns how many were
    /// loaded.
    ///
    /// # Errors
    /// As [`SecretStore::load`].
    pub fn reload(&self) -> Result<usize, SecretsError> {
        let fresh = Arc::new(load_all(&self.configs)?);
        let count = fresh.len();
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(count)
    }

    /// The secrets `names` of a sandbox.
    ///
    /// # Errors
    /// [`SecretsError::Unknown`] for a name the config does not have.
    pub fn for_sandbox(
        self: &Arc<Self>,
        names: &[SecretName],
    ) -> Result<SandboxSecrets, SecretsError> {
        let loaded = self.current();
        if let Some(name) = names.iter().find(|name| !loaded.contains_key(*name)) {
            return Err(SecretsError::Unknown { name: name.clone() });
        }
        Ok(SandboxSecrets {
            store: Arc::clone(self),
            names: names.to_vec(),
            cache: Mutex::new(None),
        })
    }

    /// The environment a command given `names` gets: each secret's variable set to its
    /// placeholder.
    ///
    /// # Errors
    /// [`SecretsError::Unknown`] for a name the config does not have.
    pub fn environment(&self, names: &[SecretName]) -> Result<Vec<(String, String)>, SecretsError> {
        names
            .iter()
            .map(|name| {
                let config = self
                    .configs
                    .iter()
                    .find(|config| &config.name == name)
                    .ok_or_else(|| SecretsError::Unknown { name: name.clone() })?;
                Ok((config.env_name(), config.placeholder().as_str().to_owned()))
            })
            .collect()
    }

    fn current(&self) -> Arc<BTreeMap<SecretName, Secret>> {
        Arc::clone(&self.loaded.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn load_all(configs: &[SecretConfig]) -> Result<BTreeMap<SecretName, Secret>, SecretsError> {
    configs
        .iter()
        .map(|config| {
            Ok((
                config.name.clone(),
                Secret::new(config, config.load_value()?),
            ))
        })
        .collect()
}

/// The secrets one sandbox was given, with their matchers rebuilt after each reload.
#[derive(Debug)]
pub struct SandboxSecrets {
    store: Arc<SecretStore>,
    names: Vec<SecretName>,
    cache: Mutex<Option<(u64, Secrets)>>,
}

impl SandboxSecrets {
    /// No secrets.
    pub fn none(store: &Arc<SecretStore>) -> SandboxSecrets {
        SandboxSecrets {
            store: Arc::clone(store),
            names: Vec::new(),
            cache: Mutex::new(None),
        }
    }

    /// Whether the sandbox was given any.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, for logs.
    pub fn names(&self) -> &[SecretName] {
        &self.names
    }

    /// The hosts any of these secrets may go to: where the HTTP-aware path is needed.
    pub fn scope(&self) -> SecretScope {
        let configs = self
            .store
            .configs
            .iter()
            .filter(|config| self.names.contains(&config.name));
        let mut scope = SecretScope::default();
        for config in configs {
            scope.any |= config.allow_any_host;
            scope.patterns.extend(config.hosts.iter().cloned());
        }
        scope
    }

    /// The secrets with their current values.
    pub fn current(&self) -> Secrets {
        let generation = self.store.generation.load(Ordering::Acquire);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built, secrets)) = cache.as_ref()
            && *built == generation
        {
            return secrets.clone();
        }
        let loaded = self.store.current();
        let secrets = Secrets::new(
            self.names
                .iter()
                .filter_map(|name| loaded.get(name).cloned())
                .collect(),
        );
        *cache = Some((generation, secrets.clone()));
        secrets
    }
}

/// The hosts a sandbox's secrets may be sent to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretScope {
    /// A secret may go to any host.
    pub any: bool,
    /// The hosts patterns of its secrets.
    pub patterns: Vec<gateway_proto::Pattern>,
}

impl SecretScope {
    /// Whether a secret may go to `host`.
    pub fn covers(&self, host: &HostName) -> bool {
        self.any || self.patterns.iter().any(|pattern| pattern.matches(host))
    }
}

/// Substitutes a sandbox's secrets in its requests and scrubs them from responses: the
/// [`Filter`] of the HTTP path.
#[derive(Debug)]
pub struct SecretsFilter {
    secrets: Secrets,
    sandbox: SandboxTag,
    /// Plain HTTP: nothing is substituted, placeholders are violations.
    cleartext: bool,
}

impl SecretsFilter {
    /// The filter for one connection of `sandbox` (values as of now).
    pub fn new(secrets: Secrets, sandbox: SandboxTag, cleartext: bool) -> SecretsFilter {
        SecretsFilter {
            secrets,
            sandbox,
            cleartext,
        }
    }

    fn destination(&self, host: &HostName) -> Destination {
        Destination {
            host: host.clone(),
            cleartext: self.cleartext,
        }
    }

    /// Applies a rewrite's outcome: logs what was let through, turns a block into a refusal.
    fn settle(&self, rewrite: Result<Rewrite, Violation>) -> Result<Option<Vec<u8>>, Refused> {
        match rewrite {
            Ok(rewrite) => {
                rewrite.passed.iter().for_each(|v| self.sandbox.report(v));
                Ok(rewrite.output)
            }
            Err(violation) => {
                self.sandbox.report(&violation);
                Err(Refused {
                    status: StatusCode::FORBIDDEN,
                    reason: violation.to_string(),
                })
            }
        }
    }

    fn rewrite_headers(
        &self,
        dst: &Destination,
        headers: &mut http::HeaderMap,
    ) -> Result<(), Refused> {
        for (name, value) in headers.iter_mut() {
            let mut bytes = value.as_bytes().to_vec();
            if name == header::AUTHORIZATION
                && let Some(basic) = self.settle(self.secrets.substitute_basic(dst, &bytes))?
            {
                bytes = basic;
            }
            let rewritten = self
                .settle(self.secrets.substitute(dst, Location::Header, &bytes))?
                .unwrap_or(bytes);
            if rewritten.as_slice() != value.as_bytes() {
                *value = header_value(rewritten)?;
            }
        }
        Ok(())
    }

    fn rewrite_query(&self, dst: &Destination, uri: &mut Uri) -> Result<(), Refused> {
        let Some(query) = uri.query() else {
            return Ok(());
        };
        let Some(query) = self.settle(self.secrets.substitute(
            dst,
            Location::Query,
            query.as_bytes(),
        ))?
        else {
            return Ok(());
        };
        let path = uri.path();
        let path_and_query = [path.as_bytes(), b"?", &query].concat();
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::try_from(path_and_query).map_err(
            |_| Refused {
                status: StatusCode::BAD_REQUEST,
                reason: "a secret's value cannot be put in the query as it is".to_owned(),
            },
        )?);
        *uri = Uri::from_parts(parts).map_err(|_| Refused {
            status: StatusCode::BAD_REQUEST,
            reason: "the query cannot be rebuilt".to_owned(),
        })?;
        Ok(())
    }
}

/// A header value from rewritten bytes; values hold no line breaks (checked when loaded), but
/// other control bytes are refused here rather than sent.
fn header_value(bytes: Vec<u8>) -> Result<HeaderValue, Refused> {
    HeaderValue::from_bytes(&bytes).map_err(|_| Refused {
        status: StatusCode::BAD_REQUEST,
        reason: "a secret's value cannot be put in this header".to_owned(),
    })
}

/// Reports a violation: its log line and the metrics.
trait ReportViolation {
    fn report(&self, violation: &Violation);
}

impl ReportViolation for SandboxTag {
    fn report(&self, violation: &Violation) {
        warn!(
            sandbox = %self.id, name = %self.name, secret = %violation.secret,
            host = %violation.host, location = violation.location.name(),
            action = ?violation.action, reason = %violation,
            "secret violation"
        );
        self.metrics
            .secret_violation(&self.name, violation.secret.as_str());
    }
}

/// Whether a message's body is encoded (compressed): nothing in it can be substituted.
fn encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
}

impl Filter for SecretsFilter {
    fn request_head(
        &self,
        host: &HostName,
        parts: &mut http::request::Parts,
    ) -> Result<(), Refused> {
        if self.secrets.is_empty() {
            return Ok(());
        }
        let dst = self.destination(host);
        self.rewrite_headers(&dst, &mut parts.headers)?;
        self.rewrite_query(&dst, &mut parts.uri)?;
        // An echoed value inside a compressed response could not be scrubbed: ask for none.
        parts.headers.remove(header::ACCEPT_ENCODING);
        Ok(())
    }

    fn request_body(
        &self,
        host: &HostName,
        parts: &http::request::Parts,
    ) -> Option<Box<dyn StreamRewrite>> {
        // Plain HTTP gets no value anywhere, so its bodies need not be read.
        if self.secrets.is_empty() || self.cleartext {
            return None;
        }
        let stream = self.secrets.request_body(
            self.destination(host),
            encoded(&parts.headers),
            MAX_SUBSTITUTED_BODY,
        );
        Some(Box::new(Rewriter {
            stream,
            sandbox: self.sandbox.clone(),
        }))
    }

    fn response_head(&self, _host: &HostName, parts: &mut http::response::Parts) {
        for value in parts.headers.values_mut() {
            if let Some(scrubbed) = self.secrets.scrub(value.as_bytes())
                && let Ok(scrubbed) = HeaderValue::from_bytes(&scrubbed)
            {
                *value = scrubbed;
            }
        }
    }

    fn response_body(
        &self,
        _host: &HostName,
        parts: &http::response::Parts,
    ) -> Option<Box<dyn StreamRewrite>> {
        if self.secrets.is_empty() || encoded(&parts.headers) {
            return None;
        }
        Some(Box::new(Rewriter {
            stream: self.secrets.response_body(),
            sandbox: self.sandbox.clone(),
        }))
    }
}

/// A [`StreamReplace`] as the HTTP path's body rewriter.
#[derive(Debug)]
struct Rewriter {
    stream: StreamReplace,
    sandbox: SandboxTag,
}

impl Rewriter {
    fn settle(&mut self, result: Result<Vec<u8>, StreamError>) -> Result<Bytes, Refused> {
        for violation in self.stream.take_passed() {
            self.sandbox.report(&violation);
        }
        result.map(Bytes::from).map_err(|error| match error {
            StreamError::Violation(violation) => {
                self.sandbox.report(&violation);
                Refused {
                    status: StatusCode::FORBIDDEN,
                    reason: violation.to_string(),
                }
            }
            StreamError::TooLarge { .. } => Refused {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                reason: error.to_string(),
            },
        })
    }
}

impl StreamRewrite for Rewriter {
    fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, Refused> {
        let result = self.stream.feed(chunk);
        self.settle(result)
    }

    fn finish(&mut self) -> Result<Bytes, Refused> {
        let result = self.stream.finish();
        self.settle(result)
    }
}
