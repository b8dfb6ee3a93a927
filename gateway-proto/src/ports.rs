//! The TCP ports a sandbox has intercepted, as given on the command line or in the config.

use std::fmt;

use gateway_common::MAX_PORTS;

/// Intercepted ports when none are named.
pub const DEFAULT_PORTS: [u16; 1] = [443];

/// One to [`MAX_PORTS`] distinct ports, each in 1..=65535, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(Vec<u16>);

/// Why a list of ports was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortsError {
    /// Port 0 cannot be dialled.
    #[error("port 0 is not a destination port (use 1 to 65535)")]
    Zero,
    /// More than the eBPF map value holds.
    #[error("at most {MAX_PORTS} ports can be intercepted (got {count})")]
    TooMany {
        /// How many distinct ports were given.
        count: usize,
    },
}

impl Ports {
    /// The given ports with duplicates dropped; [`DEFAULT_PORTS`] when there are none.
    ///
    /// # Errors
    /// [`PortsError`] for port 0 or more than [`MAX_PORTS`] distinct ports.
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Result<Ports, PortsError> {
        let mut distinct = Vec::new();
        for port in ports {
            if port == 0 {
                return Err(PortsError::Zero);
            }
            if !distinct.contains(&port) {
                distinct.push(port);
            }
        }
        if distinct.is_empty() {
            distinct.extend(DEFAULT_PORTS);
        }
        if distinct.len() > MAX_PORTS {
            return Err(PortsError::TooMany {
                count: distinct.len(),
            });
        }
        Ok(Ports(distinct))
    }

    /// The ports, in the order given.
    #[must_use]
    pub fn as_slice(&self) -> &[u16] {
        &self.0
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports(DEFAULT_PORTS.to_vec())
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&texts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_means_the_default() {
        assert_eq!(Ports::new([]).unwrap().as_slice(), &[443]);
        assert_eq!(Ports::new([]).unwrap(), Ports::default());
    }

    #[test]
    fn duplicates_are_dropped_in_order() {
        let ports = Ports::new([8443, 443, 8443]).unwrap();
        assert_eq!(ports.as_slice(), &[8443, 443]);
        assert_eq!(ports.to_string(), "8443,443");
    }

    #[test]
    fn zero_and_too_many_are_refused() {
        assert_eq!(Ports::new([443, 0]), Err(PortsError::Zero));
        let nine = 1..=u16::try_from(MAX_PORTS + 1).unwrap();
        assert_eq!(
            Ports::new(nine),
            Err(PortsError::TooMany {
                count: MAX_PORTS + 1
            })
        );
        let eight_with_repeats = (1..=8).chain(1..=8);
        assert_eq!(Ports::new(eight_with_repeats).unwrap().as_slice().len(), 8);
    }
}
