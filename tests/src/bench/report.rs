//! The bench's markdown table: each figure, its runs, its ratio to direct, and its target.

use std::fmt::Write as _;

/// A target a figure must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The ratio to direct must be at least this.
    RatioAtLeast(f64),
    /// The value itself must be at most this (in the row's unit).
    AtMost(f64),
}

impl Target {
    fn text(self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("≥ {r:.2}× direct"),
            Target::AtMost(v) => format!("≤ {} {unit}", number(v)),
        }
    }

    /// Whether `row` meets it; `None` when the row has no value.
    fn met(self, row: &Row) -> Option<bool> {
        match self {
            Target::RatioAtLeast(r) => row.ratio.filter(|x| x.is_finite()).map(|x| x >= r),
            Target::AtMost(v) => row.value.filter(|x| x.is_finite()).map(|x| x <= v),
        }
    }
}

/// What the daemon used during a row's runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DaemonUse {
    /// CPU seconds (user + system), mean over the runs.
    pub cpu_secs: f64,
    /// Peak RSS (VmHWM of a daemon started for the run), MiB, max over the runs.
    pub peak_rss_mib: f64,
}

/// One line of the table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// The workload, e.g. "new TLS connection per 1 KiB request".
    pub workload: String,
    /// The mode, e.g. "intercept h2".
    pub mode: String,
    /// What is measured, e.g. "req/s" or "p50".
    pub figure: String,
    /// Unit of `value`, e.g. "req/s", "ms".
    pub unit: String,
    /// Each round's figure, in run order.
    pub runs: Vec<f64>,
    /// The reported figure (mean of the runs unless said otherwise).
    pub value: Option<f64>,
    /// Shown instead of a value (e.g. "n/a (secrets not implemented)").
    pub text: Option<String>,
    /// `value` over the direct figure of the same workload; `None` for direct itself.
    pub ratio: Option<f64>,
    /// Whether this row is the direct baseline.
    pub baseline: bool,
    /// The target, when the issue sets one.
    pub target: Option<Target>,
    /// The daemon's CPU and memory over the runs, for gateway modes.
    pub daemon: Option<DaemonUse>,
}

impl Row {
    /// Whether the row has a target it misses.
    pub fn missed(&self) -> bool {
        self.target.and_then(|t| t.met(self)) == Some(false)
    }
}

/// A number with a precision that suits its size.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | mode | figure | value | runs | ratio to direct | target | met? | daemon CPU s | daemon peak RSS MiB |\n",
    );
    out.push_str("|---|---|---|---:|---:|---:|---|---|---:|---:|\n");
    for row in rows {
        let value = match (&row.text, row.value) {
            (Some(text), _) => text.clone(),
            (None, Some(v)) if v.is_finite() => format!("{} {}", number(v), row.unit),
            (None, _) => "–".to_owned(),
        };
        let runs = row
            .runs
            .iter()
            .map(|v| number(*v))
            .collect::<Vec<_>>()
            .join(" / ");
        let ratio = if row.baseline {
            "1.00 (baseline)".to_owned()
        } else {
            row.ratio.map_or_else(String::new, |r| {
                if r.is_finite() {
                    format!("{r:.2}")
                } else {
                    "–".to_owned()
                }
            })
        };
        let target = row.target.map_or_else(String::new, |t| t.text(&row.unit));
        let met = match row.target.map(|t| t.met(row)) {
            None => "",
            Some(None) => "n/a",
            Some(Some(true)) => "met",
            Some(Some(false)) => "**missed**",
        };
        let (cpu, rss) = row.daemon.map_or_else(
            || (String::new(), String::new()),
            |d| {
                (
                    format!("{:.2}", d.cpu_secs),
                    format!("{:.1}", d.peak_rss_mib),
                )
            },
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {value} | {runs} | {ratio} | {target} | {met} | {cpu} | {rss} |",
            row.workload, row.mode, row.figure
        );
    }
    out
}
