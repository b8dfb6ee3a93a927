//! Hooks that judge and rewrite the requests and responses passing through the gateway, for
//! plain HTTP and HTTP-aware interception alike. The gateway calls them; what they look for
//! (secret placeholders, echoed secret values) is the filter's business.
//!
//! Heads are handed over whole; bodies stream through a [`StreamRewrite`] chunk by chunk, so a
//! filter sees every byte but never makes the gateway hold a whole body.

use bytes::Bytes;
use gateway_proto::HostName;
use http::StatusCode;

/// A refusal by a filter: the client gets a page with `status` whose body is
/// [`forbidden_body`](super::forbidden_body)`(host, reason)`, and nothing (more) of the request
/// goes upstream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused with {status}: {reason}")]
pub struct Refused {
    /// The page's status: 403 for a violation, 413 for a body over a cap.
    pub status: StatusCode,
    /// Why, shown to the sandbox in the page and logged; never a secret value.
    pub reason: String,
}

impl Refused {
    /// 403: the request breaks a rule.
    pub fn forbidden(reason: impl Into<String>) -> Refused {
        Refused {
            status: StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }

    /// 413: a body is larger than the filter will look through.
    pub fn too_large(reason: impl Into<String>) -> Refused {
        Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            reason: reason.into(),
        }
    }
}

/// Judges and rewrites the requests to one host and their responses.
///
/// `host` is the host the request is for (normalized, port removed): on an intercepted
/// connection, the TLS name, which the request's authority has been checked to match.
/// A request refused by the host rules (or the TLS name check) never reaches the filter.
pub trait Filter: Send + Sync + 'static {
    /// Judges and rewrites a request head before it goes upstream. `parts` are as they will be
    /// sent: hop-by-hop fields dropped, `Host` (HTTP/1) or the URI's authority (HTTP/2) set to
    /// the authority that was judged, the URI in the form the upstream gets (origin-form for
    /// HTTP/1, absolute for HTTP/2), its query included.
    ///
    /// # Errors
    /// [`Refused`] when the request must not go upstream; the client gets the page.
    fn request_head(
        &self,
        host: &HostName,
        parts: &mut http::request::Parts,
    ) -> Result<(), Refused>;

    /// A rewriter for this request's body (`parts` after [`Filter::request_head`]), or `None` to
    /// stream it untouched. Not asked for a request known to have no body. A rewritten body
    /// has no `Content-Length`: its length may change.
    fn request_body(
        &self,
        host: &HostName,
        parts: &http::request::Parts,
    ) -> Option<Box<dyn StreamRewrite>>;

    /// Rewrites a response head before it goes to the client.
    fn response_head(&self, host: &HostName, parts: &mut http::response::Parts);

    /// A rewriter for this response's body (`parts` after [`Filter::response_head`]), or
    /// `None`. Not asked for a response known to have no body (to HEAD, 204, 304, 101). A
    /// rewritten body has no `Content-Length`.
    fn response_body(
        &self,
        host: &HostName,
        parts: &http::response::Parts,
    ) -> Option<Box<dyn StreamRewrite>>;
}

/// Rewrites a body as it streams: each chunk in, what may go on out. It may hold back a tail
/// between chunks (a pattern split across two chunks) but never gathers the whole body: what
/// it holds is what it keeps in memory.
pub trait StreamRewrite: Send {
    /// Takes the next chunk; returns the bytes to send on now (possibly none).
    ///
    /// # Errors
    /// [`Refused`] stops the body. For a request: the upstream request is aborted (the upstream
    /// never receives it complete) and the client gets the page if its response has not
    /// begun, else its connection (HTTP/1) or stream (HTTP/2) is reset. For a response: the
    /// client's response is cut off the same way.
    fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, Refused>;

    /// The body has ended: returns what was held back, rewritten.
    ///
    /// # Errors
    /// [`Refused`], as for [`StreamRewrite::feed`].
    fn finish(&mut self) -> Result<Bytes, Refused>;
}

#[cfg(test)]
pub(crate) mod tests {
    //! A fake filter for the tests of the paths that call filters: it stands in for the
    //! secrets engine with fixed strings.

    use http::{HeaderValue, Uri, request, response};

    use super::*;

    /// What requests carry in place of the secret.
    pub(crate) const PLACEHOLDER: &str = "PLACEHOLDER";
    /// What the upstream gets instead.
    pub(crate) const SECRET: &str = "s3cr3t";
    /// What the client sees where a response echoes the secret.
    pub(crate) const SCRUBBED: &str = "[scrubbed]";
    /// A request body holding this is refused part-way.
    pub(crate) const FORBIDDEN: &str = "FORBIDDEN";
    /// A request with this header is refused at its head.
    pub(crate) const REFUSE_HEADER: &str = "x-refuse";
    /// Why a head is refused.
    pub(crate) const HEAD_REASON: &str = "the fake filter refuses x-refuse";
    /// Why a body is refused.
    pub(crate) const BODY_REASON: &str = "the body holds FORBIDDEN";

    /// Puts [`SECRET`] for [`PLACEHOLDER`] in request header values, queries and bodies, and
    /// [`SCRUBBED`] for [`SECRET`] in response header values and bodies.
    #[derive(Debug)]
    pub(crate) struct Fake;

    impl Filter for Fake {
        fn request_head(
            &self,
            _host: &HostName,
            parts: &mut request::Parts,
        ) -> Result<(), Refused> {
            if parts.headers.contains_key(REFUSE_HEADER) {
                return Err(Refused::forbidden(HEAD_REASON));
            }
            replace_in_values(&mut parts.headers, PLACEHOLDER, SECRET);
            let uri = parts.uri.to_string();
            if uri.contains(PLACEHOLDER) {
                parts.uri = Uri::try_from(uri.replace(PLACEHOLDER, SECRET))
                    .map_err(|_| Refused::forbidden("unparsable URI"))?;
            }
            Ok(())
        }

        fn request_body(
            &self,
            _host: &HostName,
            _parts: &request::Parts,
        ) -> Option<Box<dyn StreamRewrite>> {
            Some(Box::new(Replace::new(vec![
                (PLACEHOLDER, Some(SECRET)),
                (FORBIDDEN, None),
            ])))
        }

        fn response_head(&self, _host: &HostName, parts: &mut response::Parts) {
            replace_in_values(&mut parts.headers, SECRET, SCRUBBED);
        }

        fn response_body(
            &self,
            _host: &HostName,
            _parts: &response::Parts,
        ) -> Option<Box<dyn StreamRewrite>> {
            Some(Box::new(Replace::new(vec![(SECRET, Some(SCRUBBED))])))
        }
    }

    fn replace_in_values(headers: &mut http::HeaderMap, from: &str, to: &str) {
        for value in headers.values_mut() {
            if let Some(text) = value.to_str().ok().filter(|t| t.contains(from)) {
                *value = HeaderValue::from_str(&text.replace(from, to)).unwrap();
            }
        }
    }

    /// Replaces patterns in a stream (`None`: refuse it), holding back a tail that may be the
    /// start of a pattern split across chunks.
    pub(crate) struct Replace {
        rules: Vec<(&'static str, Option<&'static str>)>,
        held: Vec<u8>,
    }

    impl Replace {
        pub(crate) fn new(rules: Vec<(&'static str, Option<&'static str>)>) -> Replace {
            Replace {
                rules,
                held: Vec::new(),
            }
        }

        /// The pattern `rest` starts with, if any.
        fn rule_at(&self, rest: &[u8]) -> Option<(&'static str, Option<&'static str>)> {
            self.rules
                .iter()
                .copied()
                .find(|(from, _)| rest.starts_with(from.as_bytes()))
        }

        /// Whether `rest` (the end of what has arrived) could be the start of a pattern.
        fn may_start_a_pattern(&self, rest: &[u8]) -> bool {
            self.rules
                .iter()
                .any(|(from, _)| rest.len() < from.len() && from.as_bytes().starts_with(rest))
        }
    }

    impl StreamRewrite for Replace {
        fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, Refused> {
            let mut data = std::mem::take(&mut self.held);
            data.extend_from_slice(chunk);
            let mut out = Vec::with_capacity(data.len());
            let mut i = 0;
            while i < data.len() {
                let rest = &data[i..];
                if let Some((from, to)) = self.rule_at(rest) {
                    let to = to.ok_or_else(|| Refused::forbidden(BODY_REASON))?;
                    out.extend_from_slice(to.as_bytes());
                    i += from.len();
                } else if self.may_start_a_pattern(rest) {
                    self.held = rest.to_vec();
                    break;
                } else {
                    out.push(data[i]);
                    i += 1;
                }
            }
            Ok(out.into())
        }

        fn finish(&mut self) -> Result<Bytes, Refused> {
            Ok(std::mem::take(&mut self.held).into())
        }
    }

    #[test]
    fn refusals_read_as_words() {
        assert_eq!(
            Refused::forbidden("placeholder not scoped to this host").to_string(),
            "refused with 403 Forbidden: placeholder not scoped to this host"
        );
        assert_eq!(
            Refused::too_large("body over 1 MiB").status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn the_fake_rewriter_holds_back_a_split_pattern() {
        let mut replace = Replace::new(vec![(PLACEHOLDER, Some(SECRET)), (FORBIDDEN, None)]);
        assert_eq!(replace.feed(b"abc PLACE").unwrap(), "abc ");
        assert_eq!(replace.feed(b"HOLDER def P").unwrap(), "s3cr3t def ");
        assert_eq!(replace.finish().unwrap(), "P");
        assert_eq!(
            replace.feed(b"xx FORBIDDEN").unwrap_err().reason,
            BODY_REASON
        );
    }
}
