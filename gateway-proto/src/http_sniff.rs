//! Whether the first bytes of a connection on an HTTP port start an HTTP/1 request: just enough
//! to route it (hyper parses the request itself).

use crate::hello::Incomplete;

/// Longest method token accepted (the registered ones are at most 17 letters long).
const MAX_METHOD_LEN: usize = 20;

/// What the first bytes on an HTTP port are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// They start like a request line: a method token and a space.
    Http,
    /// Anything else.
    NotHttp {
        /// Short cause, for logs.
        reason: &'static str,
    },
}

/// Judges `buf` as the start of an HTTP/1 request line.
///
/// # Errors
/// [`Incomplete`] while `buf` could still become a method and a space.
pub fn sniff_request(buf: &[u8]) -> Result<Sniffed, Incomplete> {
    for (index, &byte) in buf.iter().enumerate() {
        if byte == b' ' {
            return Ok(if index == 0 {
                Sniffed::NotHttp {
                    reason: "request line starts with a space",
                }
            } else {
                Sniffed::Http
            });
        }
        if !byte.is_ascii_uppercase() && byte != b'-' && byte != b'_' {
            return Ok(Sniffed::NotHttp {
                reason: "not an HTTP method",
            });
        }
        if index + 1 >= MAX_METHOD_LEN {
            return Ok(Sniffed::NotHttp {
                reason: "method too long",
            });
        }
    }
    Err(Incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_http_at_the_first_space() {
        let request = b"GET / HTTP/1.1\r\n";
        for n in 0..4 {
            assert_eq!(sniff_request(&request[..n]), Err(Incomplete), "{n}");
        }
        assert_eq!(sniff_request(&request[..4]), Ok(Sniffed::Http));
        assert_eq!(sniff_request(b"M-SEARCH * HTTP/1.1"), Ok(Sniffed::Http));
    }

    #[test]
    fn anything_else_is_not_http_as_soon_as_it_shows() {
        for input in [
            &b"\x16\x03\x01"[..],
            b"get / ",
            b" GET",
            b"SSH-2.0",
            b"GET\t/",
        ] {
            assert!(
                matches!(sniff_request(input), Ok(Sniffed::NotHttp { .. })),
                "{input:?}"
            );
        }
        let long = [b'A'; MAX_METHOD_LEN];
        assert!(matches!(sniff_request(&long), Ok(Sniffed::NotHttp { .. })));
        assert_eq!(sniff_request(&long[..MAX_METHOD_LEN - 1]), Err(Incomplete));
    }
}
