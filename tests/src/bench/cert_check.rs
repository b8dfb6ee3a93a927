//! Before measuring: oha must succeed with the right CA and fail with the wrong one, in every
//! route. Proof that it verifies certificates and that each route is what it claims (a bypassed
//! connection shows the upstream's certificate, an intercepted one the gateway's).

use anyhow::bail;

use super::{
    mode::{
        BYPASS_AT_CONNECT_H1, BYPASS_H1, DIRECT_H1, INTERCEPT_H1, INTERCEPT_H2,
        INTERCEPT_SECRET_H1, Route,
    },
    oha::{self, Load},
    rig::Rig,
};
use crate::pki::TestPki;

/// Requests with the right CA, all of which must succeed.
const GOOD: u64 = 20;
/// Requests with the wrong CA, none of which may succeed.
const BAD: u64 = 4;

/// Runs the checks; adds a note saying what each route showed.
pub fn run(rig: &mut Rig) -> anyhow::Result<()> {
    eprintln!("gateway-bench: certificate checks");
    let mut lines = Vec::new();
    for mode in [
        DIRECT_H1,
        BYPASS_H1,
        BYPASS_AT_CONNECT_H1,
        INTERCEPT_H1,
        INTERCEPT_H2,
        INTERCEPT_SECRET_H1,
    ] {
        let ((good, bad), _) = rig.in_mode(mode, |cgroup, ca, daemon| {
            let wrong = match (mode.route, daemon) {
                (Route::Intercept | Route::InterceptSecret, _) => rig.pki.ca_file(),
                (_, Some(d)) => d.ca_file(),
                // Direct: no daemon; a CA of its own that signed nothing here.
                (_, None) => rig.pki.dir().join("ca.pem.none"),
            };
            if !wrong.exists() {
                let other = TestPki::new("gateway-bench unrelated CA")?;
                std::fs::copy(other.ca_file(), &wrong)?;
            }
            let load = |requests| Load {
                new_connections: false,
                requests: Some(requests),
            };
            let good = oha::run(rig, cgroup, ca, mode, load(GOOD))?;
            let bad = oha::run(rig, cgroup, &wrong, mode, load(BAD))?;
            Ok((good, bad))
        })?;
        if good.ok != GOOD || !good.errors.is_empty() {
            bail!(
                "{}: oha with the right CA got {} OK, errors {:?}",
                mode.label(),
                good.ok,
                good.errors
            );
        }
        if bad.ok != 0 {
            bail!(
                "{}: oha with the wrong CA got {} OK: certificates are not verified",
                mode.label(),
                bad.ok
            );
        }
        let why = bad.errors.keys().next().cloned().unwrap_or_default();
        lines.push(format!(
            "{}: {GOOD}/{GOOD} OK with the right CA, 0/{BAD} with the wrong one (`{}`)",
            mode.label(),
            why.chars().take(120).collect::<String>()
        ));
    }
    rig.notes.push(format!(
        "Certificate checks (oha verifies): {}",
        lines.join("; ")
    ));
    Ok(())
}
