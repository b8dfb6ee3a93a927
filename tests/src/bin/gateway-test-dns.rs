//! `gateway-test-dns`: the authoritative DNS server of the integration tests.
//!
//! ```text
//! gateway-test-dns --zones FILE --listen ADDR:PORT [--listen ...] [--log FILE] [--max-time S]
//! ```
//!
//! Serves the zones of FILE (JSON, see `gateway_tests::dns`) with hickory-server over UDP and
//! TCP on each `--listen` address, prints `READY` on stdout once every socket is bound, and
//! writes one JSON line per question received (`{"name","type","protocol","peer"}`, flushed
//! per line, written before the answer is sent) to the `--log` file, else to stdout. It exits
//! (0) on SIGTERM or SIGINT, and by itself after `--max-time` seconds (300 by default).

use std::{
    fs::File,
    io::{BufWriter, Write},
    net::SocketAddr,
    path::PathBuf,
    str::FromStr as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use gateway_tests::dns::{Query, Transport, Zone, ZoneFile, normalize};
use hickory_server::{
    Server,
    net::{
        runtime::{Time, TokioRuntimeProvider},
        xfer::Protocol,
    },
    proto::rr::{
        LowerName, Name, RData, Record,
        rdata::{A, AAAA, CNAME, SOA},
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneType},
};
use tokio::{
    net::{TcpListener, UdpSocket},
    signal::unix::{SignalKind, signal},
};

/// How long a TCP connection may stay without a question.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 16;
/// How long the shutdown may take once asked.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(about = "The integration tests' authoritative DNS server")]
struct Args {
    /// The zone file (JSON).
    #[arg(long)]
    zones: PathBuf,
    /// Serve UDP and TCP on this address (`IP:PORT`, IPv6 in brackets; not port 0).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Where the query log goes (JSON lines); stdout when absent.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Exit by itself after this many seconds.
    #[arg(long, default_value_t = 300)]
    max_time: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let zones = read_zones(&args.zones)?;
    let catalog = catalog(&zones)?;
    let log = QueryLog::open(args.log.as_deref())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(&args, Logging { catalog, log }))
}

/// Reads and checks the zone file.
fn read_zones(path: &std::path::Path) -> anyhow::Result<ZoneFile> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let zones: ZoneFile =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    zones.check()?;
    Ok(zones)
}

/// A catalog with one in-memory zone handler per zone.
fn catalog(zones: &ZoneFile) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::new();
    for zone in &zones.zones {
        let origin = fqdn(&zone.origin)?;
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        for record in records(zone)? {
            if !handler.upsert_mut(record, 1) {
                bail!("zone {}: a record was refused", zone.origin);
            }
        }
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
    }
    Ok(catalog)
}

/// The zone's records: its SOA, then each name's.
fn records(zone: &Zone) -> anyhow::Result<Vec<Record>> {
    let origin = fqdn(&zone.origin)?;
    let soa = SOA::new(
        origin.prepend_label("ns")?,
        origin.prepend_label("admin")?,
        1,
        3600,
        600,
        86_400,
        zone.negative_ttl,
    );
    let mut records = vec![Record::from_rdata(
        origin,
        zone.negative_ttl,
        RData::SOA(soa),
    )];
    for (name, entry) in &zone.names {
        let name = fqdn(name)?;
        let ttl = entry.ttl;
        let record = |data| Record::from_rdata(name.clone(), ttl, data);
        records.extend(entry.a.iter().map(|ip| record(RData::A(A(*ip)))));
        records.extend(entry.aaaa.iter().map(|ip| record(RData::AAAA(AAAA(*ip)))));
        if let Some(target) = &entry.cname {
            records.push(record(RData::CNAME(CNAME(fqdn(target)?))));
        }
    }
    Ok(records)
}

/// `name` as an absolute DNS name.
fn fqdn(name: &str) -> anyhow::Result<Name> {
    let name = normalize(name);
    Name::from_str(&format!("{name}.")).with_context(|| format!("name {name:?}"))
}

/// Binds UDP and TCP on every address, says READY, and serves until a signal or the time limit.
async fn serve(args: &Args, handler: Logging) -> anyhow::Result<()> {
    let mut server = Server::new(handler);
    for addr in &args.listen {
        if addr.port() == 0 {
            bail!("--listen {addr}: give a port (UDP and TCP must share it)");
        }
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding UDP {addr}"))?;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    say_ready()?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        () = tokio::time::sleep(Duration::from_secs(args.max_time)) => {
            eprintln!("gateway-test-dns: exiting after {} s", args.max_time);
        }
    }
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, server.shutdown_gracefully()).await {
        Ok(done) => done.context("shutting down"),
        // The process exits anyway; the sockets go with it.
        Err(_) => Ok(()),
    }
}

fn say_ready() -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY")?;
    stdout.flush()?;
    Ok(())
}

/// Where the query lines go, one whole line per write.
struct QueryLog(Mutex<Box<dyn Write + Send>>);

impl QueryLog {
    /// The file at `path` (created or truncated), else stdout.
    fn open(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let out: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(BufWriter::new(
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            )),
            None => Box::new(std::io::stdout()),
        };
        Ok(QueryLog(Mutex::new(out)))
    }

    /// Writes `query` as one JSON line and flushes it.
    fn write(&self, query: &Query) {
        let mut line = match serde_json::to_vec(query) {
            Ok(line) => line,
            Err(err) => return eprintln!("gateway-test-dns: encoding {query:?}: {err}"),
        };
        line.push(b'\n');
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = out.write_all(&line).and_then(|()| out.flush()) {
            eprintln!("gateway-test-dns: writing the query log: {err}");
        }
    }
}

/// Logs each question, then answers it from the catalog.
struct Logging {
    catalog: Catalog,
    log: QueryLog,
}

#[async_trait::async_trait]
impl RequestHandler for Logging {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if let Some(query) = logged(request) {
            self.log.write(&query);
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// The log line of a request with a question (a malformed one has none: it gets FORMERR).
fn logged(request: &Request) -> Option<Query> {
    let info = request.request_info().ok()?;
    let protocol = match request.protocol() {
        Protocol::Udp => Transport::Udp,
        Protocol::Tcp => Transport::Tcp,
        // Only UDP and TCP sockets are registered.
        _ => return None,
    };
    Some(Query {
        name: info.query.original().name().to_string(),
        qtype: info.query.query_type().to_string(),
        protocol,
        peer: request.src(),
    })
}
