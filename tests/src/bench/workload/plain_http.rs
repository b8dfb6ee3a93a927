//! Plain HTTP on port 80, direct and through the gateway's HTTP path (hyper judges each request's
//! Host and forwards it): keep-alive 1 KiB requests (oha) and one 64 MiB download (curl).

use super::{Series, download, oha_series};
use crate::bench::{
    mode::{DIRECT_HTTP_H1, GATEWAY_HTTP_H1},
    report::Row,
    rig::Rig,
};

pub(super) fn run(rig: &mut Rig) -> anyhow::Result<Vec<Row>> {
    let modes = [DIRECT_HTTP_H1, GATEWAY_HTTP_H1];
    let mut rows = oha_series(
        rig,
        &Series {
            workload: "keep-alive 1 KiB requests, plain HTTP",
            modes: &modes,
            new_connections: false,
            latency: false,
            // No target is set for plain HTTP yet: the rows give the ratio only.
            intercept_target: None,
            bypass_target: None,
        },
    )?;
    rows.extend(download::series(
        rig,
        "one 64 MiB download, plain HTTP",
        &modes,
    )?);
    Ok(rows)
}
