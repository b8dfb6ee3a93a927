//! Events from the eBPF programs (refusals, connections bypassed at connect), as the daemon
//! reads them.

use std::net::{IpAddr, SocketAddr};

use gateway_common::{BypassEvent, Reason, RefusalEvent};

use crate::{net::addr::ip_from_words, sandbox::SandboxId};

/// One refusal, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The sandbox.
    pub sandbox: SandboxId,
    /// Why.
    pub reason: Reason,
    /// Where to (for connects and sends).
    pub destination: Option<SocketAddr>,
    /// `tcp`, `udp`, or the socket's protocol number.
    pub protocol: u16,
    /// The socket type (1 stream, 2 datagram, 3 raw, ...).
    pub sock_type: u16,
    /// The address rule that denied it, if one did.
    pub rule_id: Option<u32>,
}

impl Refusal {
    /// Decodes an event; `None` for bytes that are not one (a newer program's reason, a short
    /// record).
    pub fn decode(bytes: &[u8]) -> Option<Refusal> {
        if bytes.len() < size_of::<RefusalEvent>() {
            return None;
        }
        // SAFETY: the length is checked above; RefusalEvent is plain old data valid for every
        // bit pattern, and read_unaligned makes no alignment assumption.
        let event: RefusalEvent = unsafe { bytes.as_ptr().cast::<RefusalEvent>().read_unaligned() };
        let reason = Reason::from_u8(event.reason)?;
        let destination = (reason != Reason::Socket)
            .then(|| SocketAddr::new(ip_from_words(event.addr), event.port));
        Some(Refusal {
            sandbox: SandboxId(event.sandbox_id),
            reason,
            destination,
            protocol: event.protocol,
            sock_type: event.sock_type,
            rule_id: (event.rule_id != 0).then_some(event.rule_id),
        })
    }

    /// The protocol's name in logs.
    pub fn protocol_name(&self) -> String {
        match self.protocol {
            6 => "tcp".into(),
            17 => "udp".into(),
            1 => "icmp".into(),
            58 => "icmpv6".into(),
            255 => "raw".into(),
            other => other.to_string(),
        }
    }

    /// The destination address, if any.
    pub fn ip(&self) -> Option<IpAddr> {
        self.destination.map(|dst| dst.ip())
    }
}

/// A connection bypassed at connect (its address bound only to bypass names) that
/// established, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bypass {
    /// The sandbox.
    pub sandbox: SandboxId,
    /// Where it went, directly.
    pub destination: SocketAddr,
}

impl Bypass {
    /// Decodes an event; `None` for a short record.
    pub fn decode(bytes: &[u8]) -> Option<Bypass> {
        if bytes.len() < size_of::<BypassEvent>() {
            return None;
        }
        // SAFETY: the length is checked above; BypassEvent is plain old data valid for every
        // bit pattern, and read_unaligned makes no alignment assumption.
        let event: BypassEvent = unsafe { bytes.as_ptr().cast::<BypassEvent>().read_unaligned() };
        Some(Bypass {
            sandbox: SandboxId(event.sandbox_id),
            destination: SocketAddr::new(ip_from_words(event.addr), event.port),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::addr::words_from_ip;

    fn bytes(event: &RefusalEvent) -> Vec<u8> {
        // SAFETY: RefusalEvent is repr(C) plain old data without implicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const RefusalEvent).cast::<u8>(),
                size_of::<RefusalEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_connect_refusal() {
        let event = RefusalEvent {
            sandbox_id: 3,
            rule_id: 2,
            addr: words_from_ip("127.0.0.1".parse().unwrap()),
            port: 9999,
            protocol: 6,
            reason: Reason::Address as u8,
            _pad: 0,
            sock_type: 1,
        };
        let refusal = Refusal::decode(&bytes(&event)).unwrap();
        assert_eq!(refusal.sandbox, SandboxId(3));
        assert_eq!(refusal.destination, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(refusal.rule_id, Some(2));
        assert_eq!(refusal.protocol_name(), "tcp");
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let event = RefusalEvent {
            sandbox_id: 1,
            rule_id: 0,
            addr: [0; 4],
            port: 0,
            protocol: 255,
            reason: 99,
            _pad: 0,
            sock_type: 3,
        };
        assert_eq!(Refusal::decode(&bytes(&event)), None);
        assert_eq!(Refusal::decode(&[0; 4]), None);
    }

    #[test]
    fn decodes_a_bypass() {
        let event = BypassEvent {
            sandbox_id: 4,
            addr: words_from_ip("192.0.2.9".parse().unwrap()),
            port: 443,
            _pad: 0,
        };
        // SAFETY: BypassEvent is repr(C) plain old data without implicit padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&event as *const BypassEvent).cast::<u8>(),
                size_of::<BypassEvent>(),
            )
        };
        assert_eq!(
            Bypass::decode(bytes),
            Some(Bypass {
                sandbox: SandboxId(4),
                destination: "192.0.2.9:443".parse().unwrap(),
            })
        );
        assert_eq!(Bypass::decode(&bytes[..10]), None);
    }
}
