//! The `nameserver` lines of a resolv.conf: the resolvers a sandbox may send DNS to.

use std::net::IpAddr;

/// The addresses of the `nameserver` lines, in order (zone suffixes like `%eth0` dropped;
/// lines that do not hold an address are skipped, as the C library does).
#[must_use]
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|addr| addr.split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameserver_lines_only() {
        let text = "# generated\nsearch example.com\nnameserver 10.255.255.53\n\
                    nameserver fe80::1%eth0\nnameserver not-an-address\noptions ndots:2\n\
                    nameserver   127.0.0.53  # local\n";
        let expected: Vec<IpAddr> = ["10.255.255.53", "fe80::1", "127.0.0.53"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(nameservers(text), expected);
        assert!(nameservers("").is_empty());
    }
}
