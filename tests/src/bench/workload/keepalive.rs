//! Keep-alive 1 KiB requests (oha, HTTP/1.1 and HTTP/2): the relay's per-request cost.

use super::{Series, against_intercept, oha_series};
use crate::bench::{
    mode::{
        BYPASS_AT_CONNECT_H1, BYPASS_H1, DIRECT_H1, DIRECT_H2, INTERCEPT_H1, INTERCEPT_H2,
        INTERCEPT_SECRET_H1, INTERCEPT_SECRET_H2,
    },
    report::{Row, Target},
    rig::Rig,
};

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let modes = [
        DIRECT_H1,
        DIRECT_H2,
        BYPASS_AT_CONNECT_H1,
        BYPASS_H1,
        INTERCEPT_H1,
        INTERCEPT_H2,
        INTERCEPT_SECRET_H1,
        INTERCEPT_SECRET_H2,
    ];
    let mut rows = oha_series(
        rig,
        &Series {
            workload: "keep-alive 1 KiB requests",
            modes: &modes,
            new_connections: false,
            latency: false,
            intercept_target: Some(Target::RatioAtLeast(0.6)),
            bypass_target: Some(Target::RatioAtLeast(0.95)),
        },
    )?;
    rows.extend(against_intercept(&rows, &modes, "req/s"));
    Ok(rows)
}
