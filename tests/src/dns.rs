//! The test DNS server (`gateway-test-dns`, src/bin) inside a test namespace: the zone file it
//! serves ([`ZoneFile`], JSON, built with [`Zone`]), the guard that starts and stops it
//! ([`TestDns`]), the log of the questions it was asked ([`Query`]), and a small blocking client
//! ([`ask`]) to check its answers from the host.
//!
//! The zone file (`--zones FILE`):
//!
//! ```json
//! {"zones": [{"origin": "test", "negative_ttl": 5, "names": {
//!   "web.test":   {"ttl": 1, "a": ["198.18.1.2"], "aaaa": ["2001:db8:7761:1::2"]},
//!   "v6.test":    {"aaaa": ["2001:db8::6"]},
//!   "alias.test": {"cname": "web.test"}
//! }}]}
//! ```
//!
//! Each zone is authoritative for its origin and every name below it: a name not listed is
//! NXDOMAIN, a listed name without records of the type asked is NODATA (both with the zone's
//! SOA, whose TTL is `negative_ttl`, 5 s unless set); a name outside every zone is REFUSED.
//! Names are written without the trailing dot (one is accepted) and in any case. A name has
//! A and AAAA records or one CNAME (a target in the same zone is followed in the answer, also
//! through a chain); `ttl` (300 s unless set) applies to all its records.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{ExitStatus, Stdio},
    str::FromStr as _,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hickory_proto::{
    op::{Message, Query as Question},
    rr::{Name, RecordType},
};
use serde::{Deserialize, Serialize};

use crate::{
    net::{NetNs, UpstreamHost},
    process::Guarded,
    upstream::Site,
};

/// TTL of a name's records unless its entry sets one.
pub const DEFAULT_TTL: u32 = 300;
/// TTL of NXDOMAIN and NODATA answers (the SOA's) unless the zone sets one.
pub const DEFAULT_NEGATIVE_TTL: u32 = 5;
/// How long the server runs unless stopped: a test that leaks it does not leak it for long.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// How long the server may take to print READY.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long it may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long [`ask`] waits for an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's zone file: `{"zones": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneFile {
    /// The zones it serves.
    pub zones: Vec<Zone>,
}

/// One authoritative zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// Its apex, e.g. `test`.
    pub origin: String,
    /// TTL of its SOA, so of its NXDOMAIN and NODATA answers.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: u32,
    /// Its names (at or below the origin) and their records.
    #[serde(default)]
    pub names: BTreeMap<String, Entry>,
}

/// The records of one name: addresses, or a CNAME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// TTL of each of its records.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Its A records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub a: Vec<Ipv4Addr>,
    /// Its AAAA records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aaaa: Vec<Ipv6Addr>,
    /// Its CNAME target (then it has no addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cname: Option<String>,
}

fn default_ttl() -> u32 {
    DEFAULT_TTL
}

fn default_negative_ttl() -> u32 {
    DEFAULT_NEGATIVE_TTL
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            ttl: DEFAULT_TTL,
            a: Vec::new(),
            aaaa: Vec::new(),
            cname: None,
        }
    }
}

/// `name` as zone files and [`Query::is`] compare it: lower case, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl ZoneFile {
    /// The zone file of these zones.
    pub fn new(zones: impl IntoIterator<Item = Zone>) -> Self {
        ZoneFile {
            zones: zones.into_iter().collect(),
        }
    }

    /// Checks every zone ([`Zone::check`]).
    pub fn check(&self) -> anyhow::Result<()> {
        self.zones.iter().try_for_each(Zone::check)
    }
}

impl Zone {
    /// An empty zone for `origin`.
    pub fn new(origin: &str) -> Self {
        Zone {
            origin: normalize(origin),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            names: BTreeMap::new(),
        }
    }

    /// The entry of `name`, made empty when missing.
    fn entry(&mut self, name: &str) -> &mut Entry {
        self.names.entry(normalize(name)).or_default()
    }

    /// Adds A records to `name`.
    pub fn a(mut self, name: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.entry(name).a.extend(addrs);
        self
    }

    /// Adds AAAA records to `name`.
    pub fn aaaa(mut self, name: &str, addrs: impl IntoIterator<Item = Ipv6Addr>) -> Self {
        self.entry(name).aaaa.extend(addrs);
        self
    }

    /// Adds A or AAAA records to `name`, by each address's family.
    pub fn addrs(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let entry = self.entry(name);
        for addr in addrs {
            match addr {
                IpAddr::V4(v4) => entry.a.push(v4),
                IpAddr::V6(v6) => entry.aaaa.push(v6),
            }
        }
        self
    }

    /// Makes `name` a CNAME of `target`.
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        self.entry(name).cname = Some(normalize(target));
        self
    }

    /// Sets the TTL of `name`'s records.
    pub fn ttl(mut self, name: &str, secs: u32) -> Self {
        self.entry(name).ttl = secs;
        self
    }

    /// Sets the TTL of the zone's negative answers.
    pub fn negative_ttl(mut self, secs: u32) -> Self {
        self.negative_ttl = secs;
        self
    }

    /// Adds the site's name with its IPv4 and IPv6 addresses.
    pub fn site(self, site: &Site) -> Self {
        let host = &site.host;
        let name = site.name.clone();
        self.a(&name, [host.v4]).aaaa(&name, [host.v6])
    }

    /// Fails on a name outside the origin, a CNAME with addresses or at the apex, a name
    /// without records, or a name that is not a DNS name.
    pub fn check(&self) -> anyhow::Result<()> {
        let origin = normalize(&self.origin);
        Name::from_str(&format!("{origin}."))
            .with_context(|| format!("zone origin {:?}", self.origin))?;
        for (name, entry) in &self.names {
            let context = || format!("zone {origin}, name {name:?}");
            check_entry(&origin, name, entry).with_context(context)?;
        }
        Ok(())
    }
}

fn check_entry(origin: &str, name: &str, entry: &Entry) -> anyhow::Result<()> {
    let name = normalize(name);
    Name::from_str(&format!("{name}."))?;
    if !is_at_or_below(&name, origin) {
        bail!("not at or below the origin");
    }
    let addresses = !entry.a.is_empty() || !entry.aaaa.is_empty();
    match &entry.cname {
        Some(_) if addresses => bail!("a CNAME and addresses"),
        Some(_) if name == origin => bail!("a CNAME at the apex"),
        Some(target) => {
            Name::from_str(&format!("{}.", normalize(target)))?;
        }
        None if !addresses => bail!("no records"),
        None => {}
    }
    Ok(())
}

fn is_at_or_below(name: &str, origin: &str) -> bool {
    origin.is_empty() || name == origin || name.ends_with(&format!(".{origin}"))
}

/// How a question reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A TCP connection.
    Tcp,
}

/// One question the server received: a line of its query log,
/// `{"name":"web.test.","type":"A","protocol":"udp","peer":"198.18.1.1:40000"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The name as asked (absolute, with its trailing dot and the asker's case).
    pub name: String,
    /// The type asked (`A`, `AAAA`, `CNAME`...).
    #[serde(rename = "type")]
    pub qtype: String,
    /// How it came.
    pub protocol: Transport,
    /// Who asked.
    pub peer: SocketAddr,
}

impl Query {
    /// Whether it asked about `name` (case and trailing dot ignored).
    pub fn is(&self, name: &str) -> bool {
        normalize(&self.name) == normalize(name)
    }
}

/// The gateway-test-dns binary: $GATEWAY_TEST_DNS_BIN, else the one cargo built next to the
/// running executable. A test of this package runs from target/debug/deps (cargo builds the
/// package's binaries for its integration tests), the bench and soak from target/debug; the
/// harness is a library, so `env!("CARGO_BIN_EXE_gateway-test-dns")` is not available here.
pub fn test_dns_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("GATEWAY_TEST_DNS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("finding the running executable")?;
    let mut dir = exe.parent().context("the executable's directory")?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().context("the target directory")?;
    }
    let path = dir.join("gateway-test-dns");
    if !path.exists() {
        bail!(
            "{} not found: build it (cargo build -p gateway-tests) or set GATEWAY_TEST_DNS_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// A running test DNS server, stopped on drop (SIGTERM).
#[derive(Debug)]
pub struct TestDns {
    process: Guarded,
    listen: Vec<SocketAddr>,
    dir: tempfile::TempDir,
}

impl TestDns {
    /// Starts the server in `ns`, serving `zones` over UDP and TCP on each of `listen` (a port
    /// other than 0), and waits until it is listening.
    pub fn start(ns: &NetNs, listen: &[SocketAddr], zones: &[Zone]) -> anyhow::Result<Self> {
        Self::start_for(ns, listen, zones, DEFAULT_LIFETIME)
    }

    /// Starts the server on port 53 of the host's IPv4 and IPv6 addresses, in its namespace.
    pub fn on_host(host: &UpstreamHost, zones: &[Zone]) -> anyhow::Result<Self> {
        let listen = [
            SocketAddr::new(host.v4.into(), 53),
            SocketAddr::new(host.v6.into(), 53),
        ];
        Self::start(&host.ns, &listen, zones)
    }

    /// As [`TestDns::start`], the server exiting by itself after `lifetime`.
    pub fn start_for(
        ns: &NetNs,
        listen: &[SocketAddr],
        zones: &[Zone],
        lifetime: Duration,
    ) -> anyhow::Result<Self> {
        let file = ZoneFile::new(zones.iter().cloned());
        file.check()?;
        let dir = tempfile::tempdir()?;
        let zones_path = dir.path().join("zones.json");
        std::fs::write(&zones_path, serde_json::to_vec_pretty(&file)?)?;
        let bin = test_dns_bin()?;
        let bin = bin.to_str().context("the binary's path is not UTF-8")?;
        let mut command = ns.exec(bin, ["--zones"]);
        command
            .arg(&zones_path)
            .arg("--log")
            .arg(dir.path().join("queries.jsonl"))
            .args(["--max-time", &lifetime.as_secs().max(1).to_string()]);
        for addr in listen {
            command.args(["--listen", &addr.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdout = child.stdout.take().context("gateway-test-dns stdout")?;
        let mut dns = TestDns {
            process: Guarded::new("test DNS server", child, STOP_GRACE),
            listen: listen.to_vec(),
            dir,
        };
        match first_line(stdout).recv_timeout(READY_TIMEOUT) {
            Ok(Some(line)) if line == "READY" => Ok(dns),
            other => {
                let status = dns.process.try_wait().ok().flatten();
                bail!("gateway-test-dns did not start (got {other:?}, exit status {status:?})")
            }
        }
    }

    /// Where it listens.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Its first address of the given family.
    pub fn addr(&self, v6: bool) -> Option<SocketAddr> {
        self.listen
            .iter()
            .copied()
            .find(|addr| addr.is_ipv6() == v6)
    }

    /// Every question received so far, oldest first. A question is logged before it is
    /// answered, so once a client has its answer the question is here.
    ///
    /// # Panics
    /// When the log cannot be read or has a line that is not a [`Query`] (a harness bug).
    pub fn queries(&self) -> Vec<Query> {
        self.read_queries()
            .unwrap_or_else(|err| panic!("reading the test DNS query log: {err:#}"))
    }

    fn read_queries(&self) -> anyhow::Result<Vec<Query>> {
        let text = match std::fs::read_to_string(self.dir.path().join("queries.jsonl")) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            read => read?,
        };
        // Only whole lines: one being written has no newline yet.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("line {line:?}")))
            .collect()
    }

    /// The questions about `name` (any type, any protocol).
    pub fn queries_for(&self, name: &str) -> Vec<Query> {
        self.queries().into_iter().filter(|q| q.is(name)).collect()
    }

    /// Whether it was asked about `name`.
    pub fn asked(&self, name: &str) -> bool {
        !self.queries_for(name).is_empty()
    }

    /// Waits up to `timeout` until a question satisfies `pred` and returns it.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Query) -> bool,
    ) -> anyhow::Result<Query> {
        let deadline = Instant::now() + timeout;
        loop {
            let queries = self.read_queries()?;
            if let Some(found) = queries.iter().find(|q| pred(q)) {
                return Ok(found.clone());
            }
            if Instant::now() > deadline {
                bail!("no question {what} within {timeout:?}; asked: {queries:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for it to exit by itself (its lifetime over); `None` if it runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.process.wait_timeout(timeout)?)
    }

    /// Stops it now (SIGTERM); fails unless it exited by itself within 5 s.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let ending = self.process.terminate().context("already stopped")?;
        ending
            .status()
            .with_context(|| format!("test DNS server {ending}"))
    }
}

/// Reads the first line of `stdout` on a thread (then keeps draining it).
fn first_line(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        // The receiver is gone only if the start stopped waiting for READY.
        tx.send(lines.next().and_then(Result::ok)).ok();
        for _ in lines {}
    });
    rx
}

/// A DNS question as bytes: recursion desired, no EDNS (so UDP answers are cut at 512 bytes).
pub fn query_message(name: &str, qtype: RecordType, id: u16) -> anyhow::Result<Vec<u8>> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    // from_ascii keeps the case (from_str would lower it, through IDNA).
    let name = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))?;
    message.add_query(Question::query(name, qtype));
    Ok(message.to_vec()?)
}

/// Asks `server` about `name` over `transport` (no EDNS), from the host's namespace, and
/// returns the answer, which must carry the question's id.
pub fn ask(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    transport: Transport,
) -> anyhow::Result<Message> {
    let id = question_id();
    let question = query_message(name, qtype, id)?;
    let bytes = match transport {
        Transport::Udp => ask_udp(server, &question),
        Transport::Tcp => ask_tcp(server, &question),
    }
    .with_context(|| format!("asking {server} over {transport:?} for {name} {qtype}"))?;
    let answer = Message::from_vec(&bytes)?;
    if answer.metadata.id != id {
        bail!("answer id {} for question id {id}", answer.metadata.id);
    }
    Ok(answer)
}

/// A question id that differs from run to run.
fn question_id() -> u16 {
    use std::hash::{BuildHasher as _, RandomState};
    let bytes = RandomState::new().hash_one(Instant::now()).to_le_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

fn ask_udp(server: SocketAddr, question: &[u8]) -> anyhow::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    socket.send(question)?;
    let mut buf = vec![0; 65_535];
    let len = socket.recv(&mut buf).context("no UDP answer")?;
    buf.truncate(len);
    Ok(buf)
}

fn ask_tcp(server: SocketAddr, question: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, ANSWER_TIMEOUT)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let len = u16::try_from(question.len())?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(question)?;
    let mut len = [0; 2];
    stream.read_exact(&mut len).context("no TCP answer")?;
    let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}
