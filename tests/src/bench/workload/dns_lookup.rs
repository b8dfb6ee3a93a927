//! DNS lookups through the gateway against asking the resolver directly: one A query at a
//! time over UDP (`gateway-bench client lookups`), from the cgroup without programs straight to
//! the rig's DNS server, and from the sandbox, whose port-53 datagrams the programs send to the
//! daemon's DNS service: names it has never resolved (each one forwarded upstream) and one name
//! asked again and again (answered from its cache). A fresh daemon per round, so nothing is
//! cached across rounds; the DNS server's query log proves which answers came from where.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    bench::{
        cli::Options,
        mode::DOMAIN,
        report::Row,
        rig::{Rig, check_stop},
        stats::min,
    },
    sandbox::SandboxCgroup,
};

/// The label under [`DOMAIN`] the lookup names live in.
const LABEL: &str = "dns";

/// How one run asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Straight to the resolver, distinct names.
    Direct,
    /// Through the gateway, names it has not resolved yet.
    Uncached,
    /// Through the gateway, one name it has resolved.
    Cached,
}

impl Lookup {
    const ALL: [Lookup; 3] = [Lookup::Direct, Lookup::Uncached, Lookup::Cached];

    fn label(self) -> &'static str {
        match self {
            Lookup::Direct => "direct to the resolver",
            Lookup::Uncached => "through the gateway, uncached",
            Lookup::Cached => "through the gateway, cached",
        }
    }
}

/// The first label's prefix of round `round`'s names.
fn prefix(round: usize) -> String {
    format!("q{round}-")
}

fn domain() -> String {
    format!("{LABEL}.{DOMAIN}")
}

/// Every name the workload asks for, for the DNS server's zone: per round, `--lookups`
/// distinct names and the one asked again and again.
pub fn lookup_names(opts: &Options) -> impl Iterator<Item = String> + use<> {
    let (rounds, lookups) = (opts.rounds, opts.lookups);
    (0..rounds).flat_map(move |round| {
        let prefix = prefix(round);
        let domain = domain();
        (0..lookups)
            .map(|i| i.to_string())
            .chain(["cached".to_owned()])
            .map(move |label| format!("{prefix}{label}.{domain}"))
    })
}

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let workload = format!("DNS lookup (A over UDP), {} per run", rig.opts.lookups);
    let mut p50 = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rig.opts.rounds {
        // A daemon of its own per round: an empty cache.
        let daemon = rig.start_daemon()?;
        for i in 0..Lookup::ALL.len() {
            let lookup = Lookup::ALL[(i + round) % Lookup::ALL.len()];
            check_stop()?;
            eprintln!(
                "gateway-bench: {workload}: round {} {}",
                round + 1,
                lookup.label()
            );
            let cgroup = match lookup {
                Lookup::Direct => &rig.direct,
                Lookup::Uncached | Lookup::Cached => &rig.sandbox,
            };
            let value = measure(rig, cgroup, round, lookup == Lookup::Cached)?;
            p50[lookup as usize].push(value);
        }
        check_upstream(rig, round)?;
        drop(daemon);
    }
    let base = min(&p50[Lookup::Direct as usize]);
    Ok(Lookup::ALL
        .iter()
        .map(|&lookup| {
            let runs = p50[lookup as usize].clone();
            let value = min(&runs);
            let gateway = lookup != Lookup::Direct;
            Row {
                workload: workload.clone(),
                mode: lookup.label().into(),
                figure: "p50 latency".into(),
                unit: "µs".into(),
                value: Some(value),
                runs,
                ratio: gateway.then_some(value / base),
                baseline: !gateway,
                text: gateway.then(|| format!("{:.0} µs (+{:.0} µs)", value, value - base)),
                ..Row::default()
            }
        })
        .collect())
}

/// One run of the lookup client in `cgroup`; its p50 in µs. Every lookup must succeed.
fn measure(rig: &Rig, cgroup: &SandboxCgroup, round: usize, same: bool) -> anyhow::Result<f64> {
    let mut command = rig.client("lookups");
    command.args([
        "--server",
        &format!("{}:53", rig.host.v4),
        "--prefix",
        &prefix(round),
        "--domain",
        &domain(),
        "--count",
        &rig.opts.lookups.to_string(),
    ]);
    if same {
        command.arg("--same");
    }
    let output = cgroup.output_within(&mut command, Duration::from_secs(300))?;
    let value: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "lookup client ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if value["failures"].as_u64() != Some(0) {
        bail!(
            "DNS lookups: {} failed, first: {}",
            value["failures"],
            value["first_error"]
        );
    }
    value["p50_us"].as_f64().context("no p50_us")
}

/// What the DNS server saw in `round`: each distinct name asked twice (directly, and once by
/// the gateway), the repeated name once (the gateway answered the rest from its cache).
fn check_upstream(rig: &Rig, round: usize) -> anyhow::Result<()> {
    let prefix = prefix(round);
    let asked: Vec<_> = rig
        .dns
        .queries()
        .into_iter()
        .filter(|q| q.name.starts_with(&prefix))
        .collect();
    let cached = format!("{prefix}cached.{}", domain());
    let repeated = asked.iter().filter(|q| q.is(&cached)).count();
    let distinct = asked.len() - repeated;
    if repeated != 1 || distinct < 2 * rig.opts.lookups {
        bail!(
            "round {}: the DNS server was asked {cached} {repeated} times (expected once) and \
             the other names {distinct} times (expected at least {})",
            round + 1,
            2 * rig.opts.lookups
        );
    }
    Ok(())
}
