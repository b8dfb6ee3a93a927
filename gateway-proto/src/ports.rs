//! Port lists of a sandbox (intercepted TLS and HTTP ports, ports allowed direct), as given on
//! the command line or in the config.

use std::fmt;

use gateway_common::MAX_PORTS;
use serde::Deserialize;

/// Up to [`MAX_PORTS`] distinct ports, each in 1..=65535, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<i64>")]
pub struct PortList(Vec<u16>);

/// Why a list of ports was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortsError {
    /// Not a destination port.
    #[error("port {port} is not a destination port (use 1 to 65535)")]
    OutOfRange {
        /// What was given.
        port: i64,
    },
    /// More than one sandbox holds per list.
    #[error("at most {MAX_PORTS} ports per list (got {count})")]
    TooMany {
        /// How many distinct ports were given.
        count: usize,
    },
}

impl PortList {
    /// The given ports with duplicates dropped.
    ///
    /// # Errors
    /// [`PortsError`] for a port outside 1..=65535 or more than [`MAX_PORTS`] distinct ports.
    pub fn new(ports: impl IntoIterator<Item = i64>) -> Result<PortList, PortsError> {
        let mut distinct = Vec::new();
        for port in ports {
            let valid = u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(PortsError::OutOfRange { port })?;
            if !distinct.contains(&valid) {
                distinct.push(valid);
            }
        }
        if distinct.len() > MAX_PORTS {
            return Err(PortsError::TooMany {
                count: distinct.len(),
            });
        }
        Ok(PortList(distinct))
    }

    /// The ports, in the order given.
    #[must_use]
    pub fn as_slice(&self) -> &[u16] {
        &self.0
    }

    /// Whether `port` is in the list.
    #[must_use]
    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }

    /// Whether the list is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This list followed by the ports of `other` it lacks.
    ///
    /// # Errors
    /// [`PortsError::TooMany`] when the union is too long.
    pub fn union(&self, other: &PortList) -> Result<PortList, PortsError> {
        PortList::new(self.0.iter().chain(&other.0).map(|p| i64::from(*p)))
    }
}

impl TryFrom<Vec<i64>> for PortList {
    type Error = PortsError;

    fn try_from(ports: Vec<i64>) -> Result<Self, PortsError> {
        PortList::new(ports)
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&texts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_in_order() {
        let ports = PortList::new([8443, 443, 8443]).unwrap();
        assert_eq!(ports.as_slice(), &[8443, 443]);
        assert_eq!(ports.to_string(), "8443,443");
        assert!(PortList::new([]).unwrap().is_empty());
    }

    #[test]
    fn out_of_range_and_too_many_are_refused() {
        for port in [0, -1, 65536] {
            assert_eq!(
                PortList::new([443, port]),
                Err(PortsError::OutOfRange { port })
            );
        }
        let too_many = 1..=i64::try_from(MAX_PORTS + 1).unwrap();
        assert_eq!(
            PortList::new(too_many),
            Err(PortsError::TooMany {
                count: MAX_PORTS + 1
            })
        );
        let repeats = (1..=8).chain(1..=8);
        assert_eq!(PortList::new(repeats).unwrap().as_slice().len(), 8);
    }

    #[test]
    fn union_keeps_order_and_limits() {
        let a = PortList::new([80, 443]).unwrap();
        let b = PortList::new([443, 8080]).unwrap();
        assert_eq!(a.union(&b).unwrap().as_slice(), &[80, 443, 8080]);
    }
}
