//! Named network namespaces and the veth-connected upstream hosts that tests create.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

use crate::{cmd, run, unique};

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with `lo` up and nothing else.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = unique(prefix);
        run(&mut cmd("ip", ["netns", "add", &name])).context("creating a network namespace")?;
        let ns = NetNs { name };
        run(&mut ns.exec("ip", ["link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file, for `--sandbox ...,netns=PATH`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn exec<I, S>(&self, program: &str, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = cmd("ip", ["netns", "exec", &self.name, program]);
        command.args(args);
        command
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(err) = run(&mut cmd("ip", ["netns", "del", &self.name])) {
            eprintln!("harness: deleting network namespace {}: {err:#}", self.name);
        }
    }
}

/// A test host: a namespace joined to the host namespace by a veth pair, with IPv4 and IPv6
/// addresses on both ends (198.18.N.0/30, 2001:db8:7761:N::/64: ranges reserved for
/// benchmarks and documentation, which no sandbox policy denies by default).
#[derive(Debug)]
pub struct UpstreamHost {
    /// The host's namespace.
    pub ns: NetNs,
    /// Host-side veth name (its peer lives in `ns`).
    pub veth: String,
    /// The host namespace's end, IPv4: what the upstream sees as the gateway.
    pub host_v4: Ipv4Addr,
    /// The upstream's IPv4 address.
    pub v4: Ipv4Addr,
    /// The host namespace's end, IPv6.
    pub host_v6: Ipv6Addr,
    /// The upstream's IPv6 address.
    pub v6: Ipv6Addr,
    /// Holds the subnet for this host against other test processes (tests, bench, soak, demo).
    _subnet: SubnetLease,
}

/// An exclusive lock on subnet N (198.18.N.0/30, 2001:db8:7761:N::/64) across processes.
#[derive(Debug)]
struct SubnetLease {
    n: u8,
    _lock: Flock<std::fs::File>,
}

impl SubnetLease {
    const DIR: &str = "/run/gateway-tests";

    /// The first free subnet, locked until dropped (an exiting process releases it).
    fn take() -> anyhow::Result<Self> {
        std::fs::create_dir_all(Self::DIR)?;
        for n in 1..=250u8 {
            let path = format!("{}/subnet-{n}.lock", Self::DIR);
            let file = std::fs::File::create(&path).with_context(|| format!("creating {path}"))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(SubnetLease { n, _lock: lock }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
                Err((_, errno)) => anyhow::bail!("locking {path}: {errno}"),
            }
        }
        anyhow::bail!("all 250 test subnets are in use (locks in {})", Self::DIR)
    }
}

impl UpstreamHost {
    /// Creates the namespace, the veth pair and the addresses.
    pub fn new() -> anyhow::Result<Self> {
        let subnet = SubnetLease::take()?;
        let n = subnet.n;
        let ns = NetNs::new("gwt")?;
        let veth = unique("gv");
        let peer = format!("{veth}p");
        let host = UpstreamHost {
            ns,
            veth: veth.clone(),
            host_v4: Ipv4Addr::new(198, 18, n, 1),
            v4: Ipv4Addr::new(198, 18, n, 2),
            host_v6: format!("2001:db8:7761:{n:x}::1").parse()?,
            v6: format!("2001:db8:7761:{n:x}::2").parse()?,
            _subnet: subnet,
        };
        run(&mut cmd(
            "ip",
            ["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        ))?;
        run(&mut cmd(
            "ip",
            ["link", "set", &peer, "netns", host.ns.name()],
        ))?;
        run(&mut cmd(
            "ip",
            ["addr", "add", &format!("{}/30", host.host_v4), "dev", &veth],
        ))?;
        run(&mut cmd(
            "ip",
            [
                "-6",
                "addr",
                "add",
                &format!("{}/64", host.host_v6),
                "dev",
                &veth,
                "nodad",
            ],
        ))?;
        run(&mut cmd("ip", ["link", "set", &veth, "up"]))?;
        run(&mut host.ns.exec(
            "ip",
            ["addr", "add", &format!("{}/30", host.v4), "dev", &peer],
        ))?;
        run(&mut host.ns.exec(
            "ip",
            [
                "-6",
                "addr",
                "add",
                &format!("{}/64", host.v6),
                "dev",
                &peer,
                "nodad",
            ],
        ))?;
        run(&mut host.ns.exec("ip", ["link", "set", &peer, "up"]))?;
        Ok(host)
    }

    /// The upstream's address of the given family.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }

    /// The host side's address of the given family.
    pub fn host_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.host_v6.into()
        } else {
            self.host_v4.into()
        }
    }
}

impl Drop for UpstreamHost {
    fn drop(&mut self) {
        // Deleting one end removes the pair; the namespace guard then deletes the namespace.
        if let Err(err) = run(&mut cmd("ip", ["link", "del", &self.veth])) {
            eprintln!("harness: deleting veth {}: {err:#}", self.veth);
        }
    }
}
