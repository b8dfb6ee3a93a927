//! A new TLS connection per 1 KiB request (oha, HTTP/1.1): the handshake cost.

use super::{Series, oha_series};
use crate::bench::{
    mode::{BYPASS_AT_CONNECT_H1, BYPASS_H1, DIRECT_H1, INTERCEPT_H1, INTERCEPT_SECRET_H1},
    report::{Row, Target},
    rig::Rig,
};

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    // oha does not support --disable-keepalive with HTTP/2: HTTP/1.1 only.
    oha_series(
        rig,
        &Series {
            workload: "new TLS connection per 1 KiB request",
            modes: &[
                DIRECT_H1,
                BYPASS_AT_CONNECT_H1,
                BYPASS_H1,
                INTERCEPT_H1,
                INTERCEPT_SECRET_H1,
            ],
            new_connections: true,
            latency: true,
            intercept_target: Some(Target::RatioAtLeast(0.6)),
            bypass_target: Some(Target::RatioAtLeast(0.95)),
        },
    )
}
