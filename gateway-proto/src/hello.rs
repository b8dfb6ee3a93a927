//! TLS ClientHello parsing: extracts SNI and ALPN from the first bytes a client sends, so the
//! gateway can decide where a connection may go before anything is forwarded.

use std::borrow::Cow;

use crate::name::HostName;

/// Largest ClientHello (all records that carry it, headers included) that is accepted.
pub const MAX_HELLO_LEN: usize = 16 * 1024;

const RECORD_HEADER_LEN: usize = 5;
const MAX_RECORD_LEN: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const RECORD_VERSION_MAJOR: u8 = 3;
// TLS 1.3 is 0x0304; anything newer does not exist yet and is more likely garbage.
const MAX_RECORD_VERSION_MINOR: u8 = 4;

const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RANDOM_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 32;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// More bytes are needed before the input can be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incomplete;

/// What the first bytes of a connection turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A well-formed ClientHello.
    Hello(ClientHello),
    /// Not TLS at all: the first byte is not a TLS handshake record (plain HTTP, SSH, ...).
    NotTls {
        /// Short human-readable cause, for logs only.
        reason: &'static str,
    },
    /// Starts as a TLS handshake record but is not a well-formed ClientHello: never relayed,
    /// since a server might read it differently than this parser.
    Malformed {
        /// Short human-readable cause, for logs only.
        reason: &'static str,
    },
}

/// The parts of a ClientHello the proxy routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The normalized SNI host name, if the client sent one.
    pub sni: Option<HostName>,
    /// ALPN protocols offered, in the client's order (empty when no ALPN extension).
    pub alpn: Vec<Vec<u8>>,
    /// Number of input bytes that make up the ClientHello records (the rest, if any, follows it).
    pub len: usize,
}

/// Parses the start of a connection. Never panics, never reads past `buf`, never allocates more than the input size.
///
/// # Errors
///
/// [`Incomplete`] while `buf` is a valid prefix of a ClientHello whose records have not all
/// arrived; call again with more bytes.
pub fn parse(buf: &[u8]) -> Result<Parsed, Incomplete> {
    let span = match locate_message(buf) {
        Ok(span) => span,
        Err(Stop::Incomplete) => return Err(Incomplete),
        Err(Stop::NotTls(reason)) => return Ok(Parsed::NotTls { reason }),
        Err(Stop::Malformed(reason)) => return Ok(Parsed::Malformed { reason }),
    };
    let message = message_bytes(buf, &span);
    let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
    Ok(match parse_client_hello(body) {
        Ok((sni, alpn)) => Parsed::Hello(ClientHello {
            sni,
            alpn,
            len: span.end,
        }),
        Err(reason) => Parsed::Malformed { reason },
    })
}

/// Why record-level scanning stopped before a complete message was found.
enum Stop {
    Incomplete,
    NotTls(&'static str),
    Malformed(&'static str),
}

/// Where the handshake message lies in the input, once all its records are present.
struct Span {
    /// Offset just past the record that completes the message.
    end: usize,
    /// Number of records carrying the message.
    records: usize,
    /// Handshake message length, header included.
    message_len: usize,
}

/// The 4-byte handshake header, collected as it arrives because it may itself be fragmented.
#[derive(Default)]
struct HandshakeHeader {
    bytes: [u8; HANDSHAKE_HEADER_LEN],
    filled: usize,
}

impl HandshakeHeader {
    fn feed(&mut self, data: &[u8]) {
        for (slot, &b) in self.bytes.iter_mut().skip(self.filled).zip(data) {
            *slot = b;
            self.filled += 1;
        }
    }

    fn message_type(&self) -> Option<u8> {
        self.bytes.first().copied().filter(|_| self.filled >= 1)
    }

    /// Whole message length (header included), once all four header bytes are known.
    fn message_len(&self) -> Option<usize> {
        let [_, a, b, c] = self.bytes;
        let body = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
        (self.filled == HANDSHAKE_HEADER_LEN).then_some(HANDSHAKE_HEADER_LEN + body)
    }
}

/// Walks the records until the handshake message is complete, rejecting garbage as early as the
/// bytes allow so that a plain-text client is not kept waiting for bytes that will never come.
///
/// No sum here can overflow: offsets stay below `MAX_HELLO_LEN` plus one record and the
/// handshake length is a 24-bit number.
fn locate_message(buf: &[u8]) -> Result<Span, Stop> {
    let mut pos = 0;
    let mut records = 0;
    let mut header = HandshakeHeader::default();
    // Message bytes carried by the complete records before `pos`.
    let mut carried = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let fragment_len = record_header(rest, records == 0)?;
        records += 1;
        let fragment_start = pos + RECORD_HEADER_LEN;
        let record_end = fragment_start + fragment_len;
        if record_end > MAX_HELLO_LEN {
            return Err(Stop::Malformed("ClientHello too large"));
        }
        let available = buf
            .get(fragment_start..record_end.min(buf.len()))
            .unwrap_or_default();
        header.feed(available);
        if header
            .message_type()
            .is_some_and(|t| t != HANDSHAKE_CLIENT_HELLO)
        {
            return Err(Stop::Malformed("not a ClientHello"));
        }
        let carried_with_this = carried + fragment_len;
        if let Some(message_len) = header.message_len() {
            let missing = message_len.saturating_sub(carried_with_this);
            // Any missing byte needs at least one more record header.
            let more_headers = if missing > 0 { RECORD_HEADER_LEN } else { 0 };
            if record_end + missing + more_headers > MAX_HELLO_LEN {
                return Err(Stop::Malformed("ClientHello too large"));
            }
            // Clients send nothing else until the server answers, so extra handshake bytes
            // would only be there to confuse a parser that disagrees with the server's.
            if carried_with_this > message_len {
                return Err(Stop::Malformed("data after ClientHello in its record"));
            }
            if buf.len() < record_end {
                return Err(Stop::Incomplete);
            }
            if missing == 0 {
                return Ok(Span {
                    end: record_end,
                    records,
                    message_len,
                });
            }
        } else if buf.len() < record_end {
            return Err(Stop::Incomplete);
        }
        carried = carried_with_this;
        pos = record_end;
    }
}

/// Checks a record header one byte at a time and returns the fragment length.
fn record_header(rest: &[u8], first: bool) -> Result<usize, Stop> {
    let byte = |i: usize| rest.get(i).copied().ok_or(Stop::Incomplete);
    if byte(0)? != CONTENT_TYPE_HANDSHAKE {
        return Err(if first {
            Stop::NotTls("not a TLS handshake record")
        } else {
            Stop::Malformed("non-handshake record inside ClientHello")
        });
    }
    if byte(1)? != RECORD_VERSION_MAJOR || byte(2)? > MAX_RECORD_VERSION_MINOR {
        return Err(Stop::Malformed("unsupported record version"));
    }
    // The high length byte alone can already prove the record oversized.
    let high = usize::from(byte(3)?) << 8;
    if high > MAX_RECORD_LEN {
        return Err(Stop::Malformed("bad record length"));
    }
    let len = high | usize::from(byte(4)?);
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(Stop::Malformed("bad record length"));
    }
    Ok(len)
}

/// The handshake message as one slice; copied only when it was split over several records.
fn message_bytes<'a>(buf: &'a [u8], span: &Span) -> Cow<'a, [u8]> {
    if span.records == 1 {
        let end = RECORD_HEADER_LEN + span.message_len;
        return Cow::Borrowed(buf.get(RECORD_HEADER_LEN..end).unwrap_or_default());
    }
    // Headers were validated by `locate_message`, so the fragments add up to exactly
    // `message_len` and the vector never reallocates.
    let mut message = Vec::with_capacity(span.message_len);
    let mut records = Reader::new(buf.get(..span.end).unwrap_or_default());
    while records.skip(RECORD_HEADER_LEN - 2).is_some() {
        let Some(fragment) = records.prefixed_u16() else {
            break;
        };
        message.extend_from_slice(fragment.rest);
    }
    Cow::Owned(message)
}

/// SNI and ALPN, the parts of the hello the proxy routes on.
type HelloFields = (Option<HostName>, Vec<Vec<u8>>);

/// Parses the ClientHello body (after the handshake header).
fn parse_client_hello(body: &[u8]) -> Result<HelloFields, &'static str> {
    let mut r = Reader::new(body);
    let version = r.u16().ok_or("truncated ClientHello")?;
    if version >> 8 != u16::from(RECORD_VERSION_MAJOR) {
        return Err("bad ClientHello version");
    }
    r.skip(RANDOM_LEN).ok_or("truncated random")?;
    let session_id_len = usize::from(r.u8().ok_or("truncated session id")?);
    if session_id_len > MAX_SESSION_ID_LEN {
        return Err("session id too long");
    }
    r.skip(session_id_len).ok_or("truncated session id")?;
    let suites = r.prefixed_u16().ok_or("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad cipher suites length");
    }
    let compression = r.prefixed_u8().ok_or("truncated compression methods")?;
    if compression.is_empty() {
        return Err("no compression methods");
    }
    // Pre-TLS-1.2 clients may stop here: no extensions at all.
    if r.is_empty() {
        return Ok((None, Vec::new()));
    }
    let extensions = r.prefixed_u16().ok_or("truncated extensions")?;
    if !r.is_empty() {
        return Err("trailing bytes after extensions");
    }
    parse_extensions(extensions)
}

fn parse_extensions(mut exts: Reader<'_>) -> Result<HelloFields, &'static str> {
    let mut sni = None;
    let mut seen_sni = false;
    let mut alpn = None;
    while !exts.is_empty() {
        let ext_type = exts.u16().ok_or("truncated extension header")?;
        let body = exts
            .prefixed_u16()
            .ok_or("extension overruns extensions block")?;
        match ext_type {
            EXT_SERVER_NAME => {
                // Two of them could make us route on a different name than the server uses.
                if seen_sni {
                    return Err("duplicate server_name extension");
                }
                seen_sni = true;
                sni = parse_server_name(body)?;
            }
            EXT_ALPN => {
                if alpn.is_some() {
                    return Err("duplicate ALPN extension");
                }
                alpn = Some(parse_alpn(body)?);
            }
            _ => {}
        }
    }
    Ok((sni, alpn.unwrap_or_default()))
}

/// Parses the server_name extension body, returning its host_name entry if any.
fn parse_server_name(mut body: Reader<'_>) -> Result<Option<HostName>, &'static str> {
    let mut list = body.prefixed_u16().ok_or("truncated server name list")?;
    if !body.is_empty() {
        return Err("trailing bytes in server_name extension");
    }
    if list.is_empty() {
        return Err("empty server name list");
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8().ok_or("truncated server name entry")?;
        let name = list.prefixed_u16().ok_or("server name overruns list")?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        // RFC 6066 forbids a second host_name; OpenSSL and Go reject it too, and accepting it
        // would let the client show us one name and the server another.
        if host.is_some() {
            return Err("duplicate host_name");
        }
        host = Some(host_name(name.rest)?);
    }
    Ok(host)
}

fn host_name(bytes: &[u8]) -> Result<HostName, &'static str> {
    HostName::from_bytes(bytes).map_err(|_| "invalid server name")
}

/// Parses the ALPN extension body into the protocol list, keeping the client's order.
fn parse_alpn(mut body: Reader<'_>) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut list = body.prefixed_u16().ok_or("truncated ALPN list")?;
    if !body.is_empty() {
        return Err("trailing bytes in ALPN extension");
    }
    if list.is_empty() {
        return Err("empty ALPN list");
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let protocol = list.prefixed_u8().ok_or("ALPN protocol overruns list")?;
        if protocol.is_empty() {
            return Err("empty ALPN protocol");
        }
        protocols.push(protocol.rest.to_vec());
    }
    Ok(protocols)
}

/// Bounds-checked big-endian cursor: every read either fits or returns `None`.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn len(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        let (&bytes, tail) = self.rest.split_first_chunk::<2>()?;
        self.rest = tail;
        Some(u16::from_be_bytes(bytes))
    }

    /// A sub-reader over a vector with a 1-byte length prefix.
    fn prefixed_u8(&mut self) -> Option<Reader<'a>> {
        let len = self.u8()?;
        self.take(usize::from(len)).map(Reader::new)
    }

    /// A sub-reader over a vector with a 2-byte length prefix.
    fn prefixed_u16(&mut self) -> Option<Reader<'a>> {
        let len = self.u16()?;
        self.take(usize::from(len)).map(Reader::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/testdata/client-hello/",
                    $name,
                    ".bin"
                ))
                .as_slice(),
            )
        };
    }

    const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
    const H1: &[&[u8]] = &[b"http/1.1"];
    const NONE: &[&[u8]] = &[];

    /// (name, bytes, SNI, ALPN) as listed in testdata/client-hello/README.md.
    type Fixture = (
        &'static str,
        &'static [u8],
        Option<&'static str>,
        &'static [&'static [u8]],
    );

    fn fixtures() -> Vec<Fixture> {
        let table = [
            (fixture!("curl-h1-sni"), Some("api.example.com"), H1),
            (fixture!("curl-h2-sni"), Some("api.example.com"), H2_H1),
            (fixture!("curl-no-sni-ip"), None, H2_H1),
            (fixture!("node-https-sni"), Some("api.example.com"), H2_H1),
            (fixture!("openssl-tls12"), Some("api.example.com"), NONE),
            (fixture!("openssl-tls13"), Some("api.example.com"), NONE),
            (
                fixture!("openssl-upper-trailing-dot"),
                Some("api.example.com"),
                NONE,
            ),
            (fixture!("python-urllib-sni"), Some("api.example.com"), NONE),
            (fixture!("wget-gnutls-sni"), Some("localhost"), NONE),
        ];
        table
            .into_iter()
            .map(|((name, bytes), sni, alpn)| (name, bytes, sni, alpn))
            .collect()
    }

    fn hello(buf: &[u8]) -> ClientHello {
        match parse(buf) {
            Ok(Parsed::Hello(h)) => h,
            other => panic!("expected a ClientHello, got {other:?}"),
        }
    }

    fn not_tls(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Ok(Parsed::NotTls { reason }) => reason,
            other => panic!("expected NotTls, got {other:?}"),
        }
    }

    fn malformed(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Ok(Parsed::Malformed { reason }) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    fn name(text: &str) -> Option<HostName> {
        Some(HostName::parse(text).unwrap())
    }

    fn assert_all_prefixes_incomplete(name: &str, buf: &[u8]) {
        for n in 0..buf.len() {
            assert_eq!(parse(&buf[..n]), Err(Incomplete), "{name}: prefix {n}");
        }
    }

    /// Deterministic xorshift64 so the "random" cases are reproducible.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn u16_be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }

    /// Frames a handshake message into consecutive type-22 records of the given fragment sizes.
    fn frame_records(message: &[u8], mut next_size: impl FnMut() -> usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = message;
        while !rest.is_empty() {
            let (fragment, tail) = rest.split_at(next_size().min(rest.len()));
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&u16_be(fragment.len()));
            out.extend_from_slice(fragment);
            rest = tail;
        }
        out
    }

    /// A ClientHello handshake message (header included) with the given raw extensions block.
    fn message(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0xab; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        if let Some(exts) = extensions {
            body.extend_from_slice(&u16_be(exts.len()));
            body.extend_from_slice(exts);
        }
        let mut msg = vec![1];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn ext(ext_type: u16, body: &[u8]) -> Vec<u8> {
        let mut out = ext_type.to_be_bytes().to_vec();
        out.extend_from_slice(&u16_be(body.len()));
        out.extend_from_slice(body);
        out
    }

    fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (name_type, name) in entries {
            list.push(*name_type);
            list.extend_from_slice(&u16_be(name.len()));
            list.extend_from_slice(name);
        }
        let mut body = u16_be(list.len()).to_vec();
        body.extend_from_slice(&list);
        ext(EXT_SERVER_NAME, &body)
    }

    fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for p in protocols {
            list.push(u8::try_from(p.len()).unwrap());
            list.extend_from_slice(p);
        }
        let mut body = u16_be(list.len()).to_vec();
        body.extend_from_slice(&list);
        ext(EXT_ALPN, &body)
    }

    fn single_record(msg: &[u8]) -> Vec<u8> {
        frame_records(msg, || MAX_RECORD_LEN)
    }

    fn record_with_extensions(exts: &[Vec<u8>]) -> Vec<u8> {
        single_record(&message(Some(&exts.concat())))
    }

    /// Offsets of the length fields of a single-record fixture, found by walking it.
    struct Fields {
        session_id: usize,
        cipher_suites: usize,
        compression: usize,
        extensions: usize,
        /// (offset of extension length, offset of its first inner length) for SNI and ALPN.
        sni: Option<(usize, usize)>,
        alpn: Option<(usize, usize)>,
        /// Offset of the last extension's length.
        last_ext: usize,
    }

    fn fields(buf: &[u8]) -> Fields {
        let be16 = |at: usize| usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
        let session_id = 5 + 4 + 2 + 32;
        let cipher_suites = session_id + 1 + usize::from(buf[session_id]);
        let compression = cipher_suites + 2 + be16(cipher_suites);
        let extensions = compression + 1 + usize::from(buf[compression]);
        let (mut sni, mut alpn, mut last_ext) = (None, None, 0);
        let mut at = extensions + 2;
        while at < buf.len() {
            last_ext = at + 2;
            let found = Some((at + 2, at + 4));
            match be16(at) {
                0 => sni = found,
                16 => alpn = found,
                _ => {}
            }
            at += 4 + be16(at + 2);
        }
        Fields {
            session_id,
            cipher_suites,
            compression,
            extensions,
            sni,
            alpn,
            last_ext,
        }
    }

    fn bump(buf: &[u8], at: usize, width: usize, delta: i32) -> Vec<u8> {
        let mut out = buf.to_vec();
        if width == 1 {
            out[at] = (i32::from(out[at]) + delta) as u8;
        } else {
            let v = i32::from(u16::from_be_bytes([out[at], out[at + 1]])) + delta;
            out[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
        }
        out
    }

    #[test]
    fn fixtures_parse_to_readme_values() {
        for (name, bytes, sni, alpn) in fixtures() {
            let h = hello(bytes);
            assert_eq!(h.sni.as_ref().map(HostName::as_str), sni, "{name}");
            assert_eq!(h.alpn, alpn, "{name}");
            // Every capture is exactly one record holding just the hello.
            assert_eq!(h.len, bytes.len(), "{name}");
        }
    }

    #[test]
    fn bytes_after_the_hello_are_not_part_of_it() {
        for (name, bytes, ..) in fixtures() {
            let mut buf = bytes.to_vec();
            // A TLS 1.3 early-data style record following the hello.
            buf.extend_from_slice(&[23, 3, 3, 0, 2, 0xde, 0xad]);
            assert_eq!(hello(&buf).len, bytes.len(), "{name}");
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for (name, bytes, ..) in fixtures() {
            assert_all_prefixes_incomplete(name, bytes);
        }
    }

    #[test]
    fn refragmented_fixtures_parse_the_same() {
        let mut rng = XorShift(0x5eed_1234_5678_9abc);
        for (name, bytes, ..) in fixtures() {
            let expected = hello(bytes);
            let split = frame_records(&bytes[5..], || 1 + rng.below(7));
            let h = hello(&split);
            assert_eq!((&h.sni, &h.alpn), (&expected.sni, &expected.alpn), "{name}");
            assert_eq!(h.len, split.len(), "{name}");
            assert_all_prefixes_incomplete(name, &split);
        }
    }

    #[test]
    fn one_byte_fragments_split_the_handshake_header() {
        let (_, bytes) = fixture!("openssl-tls12");
        let split = frame_records(&bytes[5..], || 1);
        assert_eq!(hello(&split).sni, name("api.example.com"));
        assert_all_prefixes_incomplete("1-byte", &split);
    }

    #[test]
    fn plain_http_is_rejected_from_the_first_byte() {
        let request = b"GET / HTTP/1.1\r\n";
        for n in 1..=request.len() {
            assert_eq!(not_tls(&request[..n]), "not a TLS handshake record");
        }
        assert_eq!(parse(b""), Err(Incomplete));
    }

    #[test]
    fn random_garbage_is_never_a_hello() {
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        for _ in 0..200 {
            let len = rng.below(600);
            let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(!matches!(parse(&garbage), Ok(Parsed::Hello(_))));
        }
    }

    #[test]
    fn bad_record_headers_are_rejected() {
        assert_eq!(malformed(&[22, 2]), "unsupported record version");
        assert_eq!(malformed(&[22, 3, 5]), "unsupported record version");
        assert_eq!(malformed(&[22, 0x30, 0x31]), "unsupported record version");
        assert_eq!(malformed(&[22, 3, 1, 0, 0]), "bad record length");
        assert_eq!(malformed(&[22, 3, 1, 0x41]), "bad record length");
        assert_eq!(malformed(&[22, 3, 1, 0x40, 1]), "bad record length");
        // 0x0300..=0x0304 are all fine as record versions.
        for minor in 0..=4 {
            assert_eq!(parse(&[22, 3, minor, 0, 5, 1]), Err(Incomplete));
        }
    }

    #[test]
    fn other_handshake_types_are_rejected() {
        for hs_type in [0u8, 2, 11, 16, 20] {
            assert_eq!(malformed(&[22, 3, 1, 0, 4, hs_type]), "not a ClientHello");
        }
    }

    #[test]
    fn non_handshake_record_inside_a_fragmented_hello() {
        let (_, bytes) = fixture!("curl-h2-sni");
        let mut split = frame_records(&bytes[5..], || 100);
        split[105] = 23;
        assert_eq!(malformed(&split), "non-handshake record inside ClientHello");
    }

    #[test]
    fn corrupted_length_fields() {
        for (name, bytes, ..) in fixtures() {
            let f = fields(bytes);
            // A message longer than its record only means "wait for the next record".
            assert_eq!(parse(&bump(bytes, 7, 2, 1)), Err(Incomplete), "{name}");
            let short_record = bump(bytes, 3, 2, -1);
            let cut = bytes.len() - 1;
            assert_eq!(parse(&short_record[..cut]), Err(Incomplete), "{name}");
            // ...and the byte left over is not a record header.
            let reason = malformed(&short_record);
            assert_eq!(reason, "non-handshake record inside ClientHello", "{name}");
            // A record longer than the message it carries is decided at once.
            for (at, delta) in [(3, 1), (7, -1)] {
                let reason = malformed(&bump(bytes, at, 2, delta));
                assert_eq!(reason, "data after ClientHello in its record", "{name}");
            }
            let mut inner = vec![
                (f.session_id, 1),
                (f.cipher_suites, 2),
                (f.compression, 1),
                (f.extensions, 2),
            ];
            for (ext_len, list_len) in f.sni.into_iter().chain(f.alpn) {
                inner.extend([(ext_len, 2), (list_len, 2)]);
            }
            if let Some((_, list_len)) = f.sni {
                inner.push((list_len + 3, 2)); // host_name length
            }
            if let Some((_, list_len)) = f.alpn {
                inner.push((list_len + 2, 1)); // first protocol length
            }
            for (at, width) in inner {
                for delta in [1, -1] {
                    let reason = malformed(&bump(bytes, at, width, delta));
                    assert!(!reason.is_empty(), "{name}@{at}{delta:+}");
                }
            }
        }
    }

    #[test]
    fn specific_reasons_for_corrupted_fields() {
        let (_, bytes) = fixture!("curl-h2-sni");
        let f = fields(bytes);
        assert_eq!(
            malformed(&bump(bytes, f.extensions, 2, 1)),
            "truncated extensions"
        );
        assert_eq!(
            malformed(&bump(bytes, f.last_ext, 2, 1)),
            "extension overruns extensions block"
        );
        let (sni_ext_len, sni_list_len) = f.sni.unwrap();
        assert_eq!(
            malformed(&bump(bytes, sni_ext_len, 2, 1)),
            "trailing bytes in server_name extension"
        );
        assert_eq!(
            malformed(&bump(bytes, sni_list_len + 3, 2, 1)),
            "server name overruns list"
        );
    }

    #[test]
    fn fuzzed_fixtures_never_panic() {
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        for (_, bytes, ..) in fixtures() {
            let mut cumulative = bytes.to_vec();
            for _ in 0..2000 {
                let mut buf = bytes.to_vec();
                let at = rng.below(buf.len());
                let flip = 1 + rng.below(255) as u8;
                buf[at] ^= flip;
                cumulative[at] ^= flip;
                let cut = rng.below(buf.len() + 1);
                for input in [&buf[..], &buf[..cut], &cumulative[..], &cumulative[..cut]] {
                    let _ = parse(input);
                }
            }
        }
    }

    #[test]
    fn too_large_is_rejected_as_soon_as_the_header_is_read() {
        // Message needs 16384 + 4 bytes: cannot fit with any record header.
        let header = [22, 3, 1, 2, 0, 1, 0, 0x40, 0];
        for n in 0..header.len() {
            assert_eq!(parse(&header[..n]), Err(Incomplete));
        }
        assert_eq!(malformed(&header), "ClientHello too large");
        // A single record whose end is past the limit is too large before its payload arrives.
        assert_eq!(malformed(&[22, 3, 1, 0x40, 0]), "ClientHello too large");
    }

    #[test]
    fn size_limit_boundary() {
        let fits = |total: usize, split: bool| {
            let base = message(Some(&[])).len();
            // Padding extension (21) sized so the framed result is exactly `total` bytes.
            let headers = if split { 10 } else { 5 };
            let pad = total - headers - base - 4;
            let msg = message(Some(&ext(21, &vec![0; pad])));
            if split {
                let first = msg.len() / 2;
                let mut sizes = [first, msg.len()].into_iter();
                frame_records(&msg, || sizes.next().unwrap())
            } else {
                single_record(&msg)
            }
        };
        for split in [false, true] {
            let at_limit = fits(MAX_HELLO_LEN, split);
            assert_eq!(at_limit.len(), MAX_HELLO_LEN);
            assert_eq!(hello(&at_limit).len, MAX_HELLO_LEN);
            let over = fits(MAX_HELLO_LEN + 1, split);
            assert_eq!(malformed(&over), "ClientHello too large");
        }
    }

    #[test]
    fn hello_without_extensions_is_valid() {
        let h = hello(&single_record(&message(None)));
        assert_eq!((h.sni, h.alpn), (None, Vec::<Vec<u8>>::new()));
    }

    #[test]
    fn malformed_hello_bodies() {
        let mut trailing = message(Some(&[]));
        trailing.push(0);
        trailing[3] += 1;
        assert_eq!(
            malformed(&single_record(&trailing)),
            "trailing bytes after extensions"
        );
        let mut empty_suites = message(None);
        empty_suites[4 + 2 + 32 + 1..][..4].copy_from_slice(&[0, 0, 1, 0]);
        empty_suites.truncate(empty_suites.len() - 2);
        empty_suites[3] -= 2;
        assert_eq!(
            malformed(&single_record(&empty_suites)),
            "bad cipher suites length"
        );
        let mut bad_version = message(None);
        bad_version[4] = 0x7f;
        assert_eq!(
            malformed(&single_record(&bad_version)),
            "bad ClientHello version"
        );
        let mut long_session_id = message(None);
        long_session_id[4 + 2 + 32] = 33;
        assert_eq!(
            malformed(&single_record(&long_session_id)),
            "session id too long"
        );
    }

    #[test]
    fn server_name_extension_rules() {
        let sni = |entries: &[(u8, &[u8])]| parse(&record_with_extensions(&[sni_ext(entries)]));
        let name = name("example.com");
        assert_eq!(
            hello(&record_with_extensions(&[sni_ext(&[(0, b"Example.COM")])])).sni,
            name
        );
        // Unknown name types are skipped; the host_name entry is used.
        let h = sni(&[(7, b"ignored"), (0, b"example.com")]).unwrap();
        assert!(matches!(h, Parsed::Hello(ClientHello { sni, .. }) if sni == name));
        let h = sni(&[(7, b"ignored")]).unwrap();
        assert!(matches!(h, Parsed::Hello(ClientHello { sni: None, .. })));
        for (entries, reason) in [
            (&[(0u8, &b"a\0b"[..])][..], "invalid server name"),
            (&[(0, b"")], "invalid server name"),
            (&[(0, b".")], "invalid server name"),
            (&[(0, b"a b")], "invalid server name"),
            (&[(0, b"\xff\xfe")], "invalid server name"),
            (&[(0, b"a.com"), (0, b"b.com")], "duplicate host_name"),
            (&[], "empty server name list"),
        ] {
            assert_eq!(
                sni(entries),
                Ok(Parsed::Malformed { reason }),
                "{entries:?}"
            );
        }
        let twice = [sni_ext(&[(0, b"a.com")]), sni_ext(&[(0, b"a.com")])];
        assert_eq!(
            malformed(&record_with_extensions(&twice)),
            "duplicate server_name extension"
        );
        assert_eq!(
            malformed(&record_with_extensions(&[ext(0, &[])])),
            "truncated server name list"
        );
    }

    #[test]
    fn alpn_extension_rules() {
        let h = hello(&record_with_extensions(&[alpn_ext(&[b"h2", b"http/1.1"])]));
        assert_eq!(h.alpn, H2_H1);
        let empty_protocol = record_with_extensions(&[alpn_ext(&[b"h2", b""])]);
        assert_eq!(malformed(&empty_protocol), "empty ALPN protocol");
        let empty_list = record_with_extensions(&[alpn_ext(&[])]);
        assert_eq!(malformed(&empty_list), "empty ALPN list");
        let twice = [alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])];
        assert_eq!(
            malformed(&record_with_extensions(&twice)),
            "duplicate ALPN extension"
        );
        let overrun = record_with_extensions(&[ext(16, &[0, 3, 5, b'h', b'2'])]);
        assert_eq!(malformed(&overrun), "ALPN protocol overruns list");
    }
}
