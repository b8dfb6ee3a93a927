//! Substitution over a body that arrives in chunks: a placeholder (or value) split across two
//! chunks is still found, by holding back the last `longest pattern - 1` bytes of each chunk
//! until the next one (or the end) shows how they continue. The body is never gathered whole.

use zeroize::Zeroizing;

use super::{Decision, Destination, Location, Secrets, Violation};
use crate::config::ViolationAction;

/// Why a streamed body cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A placeholder headed where its value may not go, with `on_violation = "block"`.
    #[error("{0}")]
    Violation(Violation),
    /// The body is larger than substitution looks at.
    #[error("body larger than {cap} bytes, the most the gateway substitutes secrets in")]
    TooLarge {
        /// The cap.
        cap: u64,
    },
}

/// What the stream does with its matches.
#[derive(Debug)]
enum Mode {
    /// Placeholders to values, for a request to `dst`.
    Substitute {
        dst: Destination,
        compressed: bool,
        cap: u64,
    },
    /// Values to placeholders, in a response.
    Scrub,
}

/// A body rewritten as it streams.
#[derive(Debug)]
pub struct StreamReplace {
    secrets: Secrets,
    mode: Mode,
    /// Bytes held back from the previous chunk (they may begin a pattern). Wiped on drop: in
    /// a scrub they may be part of a value.
    tail: Zeroizing<Vec<u8>>,
    taken: u64,
    passed: Vec<Violation>,
}

impl StreamReplace {
    pub(super) fn substitute(
        secrets: Secrets,
        dst: Destination,
        compressed: bool,
        cap: u64,
    ) -> Self {
        StreamReplace {
            secrets,
            mode: Mode::Substitute {
                dst,
                compressed,
                cap,
            },
            tail: Zeroizing::new(Vec::new()),
            taken: 0,
            passed: Vec::new(),
        }
    }

    pub(super) fn scrub(secrets: Secrets) -> Self {
        StreamReplace {
            secrets,
            mode: Mode::Scrub,
            tail: Zeroizing::new(Vec::new()),
            taken: 0,
            passed: Vec::new(),
        }
    }

    /// Takes the next chunk; returns what may be passed on now.
    ///
    /// # Errors
    /// [`StreamError`] when the body may not go on; the caller must then abort it.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, StreamError> {
        self.taken += chunk.len() as u64;
        if let Mode::Substitute { cap, .. } = self.mode
            && self.taken > cap
        {
            return Err(StreamError::TooLarge { cap });
        }
        let mut buf = Zeroizing::new(std::mem::take(&mut *self.tail));
        buf.extend_from_slice(chunk);
        let hold = self.longest().saturating_sub(1);
        let keep_from = buf.len().saturating_sub(hold);
        self.rewrite(&buf, Some(keep_from))
    }

    /// The end of the body: the rest.
    ///
    /// # Errors
    /// As [`StreamReplace::feed`].
    pub fn finish(&mut self) -> Result<Vec<u8>, StreamError> {
        let buf = Zeroizing::new(std::mem::take(&mut *self.tail));
        self.rewrite(&buf, None)
    }

    /// Violations let through so far (`on_violation = "passthrough"`), for the log.
    pub fn take_passed(&mut self) -> Vec<Violation> {
        std::mem::take(&mut self.passed)
    }

    fn longest(&self) -> usize {
        match self.mode {
            Mode::Substitute { .. } => self.secrets.0.longest_placeholder,
            Mode::Scrub => self.secrets.0.longest_value,
        }
    }

    /// Rewrites `buf` up to `keep_from` (matches starting there or later wait for more bytes,
    /// unless this is the end); keeps the rest as the new tail.
    fn rewrite(&mut self, buf: &[u8], keep_from: Option<usize>) -> Result<Vec<u8>, StreamError> {
        let inner = &self.secrets.0;
        let matcher = match self.mode {
            Mode::Substitute { .. } => inner.placeholders.as_ref(),
            Mode::Scrub => inner.values.as_ref(),
        };
        let Some(matcher) = matcher else {
            return Ok(buf.to_vec());
        };
        let limit = keep_from.unwrap_or(buf.len());
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for found in matcher.find_iter(buf) {
            // Every occurrence starting before `limit` ends inside `buf` (none is longer than
            // the held-back tail plus one); later ones may continue in the next chunk.
            if found.start() >= limit {
                break;
            }
            let index = found.pattern().as_usize();
            let replacement = match &self.mode {
                Mode::Scrub => inner.secrets[index].placeholder.as_str().as_bytes(),
                Mode::Substitute {
                    dst, compressed, ..
                } => match self.secrets.decide(index, dst, Location::Body, *compressed) {
                    Decision::Replace(value) => value,
                    Decision::Keep => continue,
                    Decision::Violate(violation) => match violation.action {
                        ViolationAction::Block => return Err(StreamError::Violation(violation)),
                        ViolationAction::Passthrough => {
                            self.passed.push(violation);
                            continue;
                        }
                    },
                },
            };
            out.extend_from_slice(&buf[pos..found.start()]);
            out.extend_from_slice(replacement);
            pos = found.end();
        }
        let emit_to = limit.max(pos);
        out.extend_from_slice(&buf[pos..emit_to]);
        self.tail = Zeroizing::new(buf[emit_to..].to_vec());
        Ok(out)
    }
}
