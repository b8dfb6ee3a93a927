//! Keep-alive 1 KiB requests (oha, HTTP/1.1 and HTTP/2): the relay's per-request cost.

use super::{Series, oha_series, secrets_row};
use crate::bench::{
    mode::{BYPASS_H1, DIRECT_H1, DIRECT_H2, INTERCEPT_H1, INTERCEPT_H2},
    report::{Row, Target},
    rig::Rig,
};

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let workload = "keep-alive 1 KiB requests";
    let mut rows = oha_series(
        rig,
        &Series {
            workload,
            modes: &[DIRECT_H1, DIRECT_H2, BYPASS_H1, INTERCEPT_H1, INTERCEPT_H2],
            new_connections: false,
            latency: false,
            intercept_target: Some(Target::RatioAtLeast(0.6)),
            bypass_target: Some(Target::RatioAtLeast(0.95)),
        },
    )?;
    rows.push(secrets_row(workload));
    Ok(rows)
}
