//! DNS binding as the route decision sees it: the names a sandbox's DNS answers bound to the
//! address a connection dialled. With binding on, the SNI (or each plain HTTP `Host`) must be
//! one of them, or the client is claiming one host while dialling another ("SNI spoofing").
//!
//! The table of bindings lives with the DNS service, which sees the answers; a connection sees
//! it through [`BoundNames`] and takes one [`Bound`] value per check, so the decision itself
//! stays a pure function.

use std::{fmt, net::IpAddr};

use gateway_proto::HostName;

/// The names DNS bound to addresses for one sandbox.
pub trait BoundNames: Send + Sync + fmt::Debug {
    /// The names whose answers gave this sandbox `addr` and have not expired, in any order;
    /// empty when no answer did. `addr` is canonical (an IPv4-mapped address comes as IPv4).
    fn names(&self, addr: IpAddr) -> Vec<HostName>;
}

/// A table that knows no binding: every address has no name.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBindings;

impl BoundNames for NoBindings {
    fn names(&self, _addr: IpAddr) -> Vec<HostName> {
        Vec::new()
    }
}

/// What DNS binding says about one connection's original destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// The sandbox's DNS binding is off: names are judged by the name rules alone.
    NotEnforced,
    /// Binding is on, and DNS bound these names to the address (none: no answer gave it).
    Names(Vec<HostName>),
}

/// A name claimed for an address DNS did not bind it to; Display is the reason logged and
/// shown on a 403 page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spoofed {
    /// The name the client claimed (SNI or Host).
    pub name: HostName,
    /// The address it dialled.
    pub addr: IpAddr,
    /// The names DNS did bind to that address for the sandbox.
    pub bound: Vec<HostName>,
}

impl fmt::Display for Spoofed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not a name DNS gave this sandbox for {} (names bound: ",
            self.name, self.addr
        )?;
        if self.bound.is_empty() {
            f.write_str("none")?;
        }
        for (i, name) in self.bound.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name}")?;
        }
        f.write_str(")")
    }
}

impl Bound {
    /// Whether `name`, claimed for a connection to `addr`, is one DNS bound there. A name that
    /// is `addr` itself written as an address claims no other host: like TLS without SNI, it
    /// is judged by the address, which the kernel only lets a sandbox with binding on dial
    /// when DNS gave it.
    ///
    /// # Errors
    /// [`Spoofed`] when binding is on and `name` is not among the bound names.
    pub fn check(&self, addr: IpAddr, name: &HostName) -> Result<(), Spoofed> {
        let Bound::Names(bound) = self else {
            return Ok(());
        };
        let addr = addr.to_canonical();
        let names_the_address = name
            .as_str()
            .parse::<IpAddr>()
            .is_ok_and(|literal| literal.to_canonical() == addr);
        if names_the_address || bound.contains(name) {
            return Ok(());
        }
        Err(Spoofed {
            name: name.clone(),
            addr,
            bound: bound.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn name(text: &str) -> HostName {
        HostName::parse(text).unwrap()
    }

    fn names(texts: &[&str]) -> Bound {
        Bound::Names(texts.iter().map(|t| name(t)).collect())
    }

    const ADDR: &str = "198.51.100.7";

    fn check(bound: &Bound, claimed: &str) -> Result<(), String> {
        bound
            .check(ADDR.parse().unwrap(), &name(claimed))
            .map_err(|spoofed| spoofed.to_string())
    }

    #[test]
    fn not_enforced_allows_any_name() {
        assert_eq!(check(&Bound::NotEnforced, "any.test"), Ok(()));
    }

    #[test]
    fn only_bound_names_pass_whatever_their_spelling() {
        let bound = names(&["a.test", "cdn.b.test"]);
        assert_eq!(check(&bound, "a.test"), Ok(()));
        assert_eq!(check(&bound, "A.Test."), Ok(()));
        assert_eq!(check(&bound, "CDN.b.TEST"), Ok(()));
        assert_eq!(
            check(&bound, "evil.test"),
            Err(format!(
                "evil.test is not a name DNS gave this sandbox for {ADDR} \
                 (names bound: a.test, cdn.b.test)"
            ))
        );
        // Exact names only: a binding of a name says nothing about its neighbours.
        assert!(check(&bound, "x.a.test").is_err());
        assert!(check(&bound, "b.test").is_err());
    }

    #[test]
    fn an_address_no_answer_gave_binds_no_name() {
        assert_eq!(
            check(&names(&[]), "a.test"),
            Err(format!(
                "a.test is not a name DNS gave this sandbox for {ADDR} (names bound: none)"
            ))
        );
    }

    #[test]
    fn the_dialled_address_as_a_name_is_judged_by_the_address() {
        assert_eq!(check(&names(&[]), ADDR), Ok(()));
        assert!(check(&names(&[]), "198.51.100.8").is_err());
        let mapped: IpAddr = format!("::ffff:{ADDR}").parse().unwrap();
        assert_eq!(names(&[]).check(mapped, &name(ADDR)), Ok(()));
    }

    #[test]
    fn no_bindings_knows_no_name() {
        assert!(NoBindings.names(ADDR.parse().unwrap()).is_empty());
        let shared: Arc<dyn BoundNames> = Arc::new(NoBindings);
        assert!(shared.names(ADDR.parse().unwrap()).is_empty());
    }
}
