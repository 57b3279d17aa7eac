//! Network namespaces that clean up after themselves, and veth pairs between them.
//!
//! Names carry the test process id and a counter (`wgtb-<label>-<pid>-<n>`), so tests running in
//! parallel processes never collide; a namespace left behind by a process that died (killed test,
//! `SIGKILL`ed runner) is removed, with its processes, by the first [`Netns::new`] of the next
//! test process (see [`cleanup_stale`](crate::cleanup_stale)).

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{pid_alive, run, run_command, signal};
use crate::daemon::Daemon;

/// Prefix of every namespace this crate creates.
pub const NETNS_PREFIX: &str = "wgtb-";

/// Test-only addresses for veth links: 198.18.0.0/15, the range RFC 2544 sets aside for network
/// benchmarks, cut into /30 links.
pub const VETH_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// Test-only IPv6 addresses for veth links ([`VethPair::add_ipv6`]): 2001:2::/48, the IPv6
/// benchmarking range (RFC 5180), one /64 per link (the link's /30 index as the fourth group).
pub const VETH_RANGE6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A network namespace, deleted on drop after every process inside it has been killed (also when
/// the test panics, as drop runs during unwinding).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `wgtb-<label>-<pid>-<n>` and brings its loopback up. `label` is short text such as
    /// `gw1` or `agent` (letters, digits).
    pub fn new(label: &str) -> Result<Self> {
        crate::stale::cleanup_stale_once();
        let name = format!("{NETNS_PREFIX}{label}-{}-{}", std::process::id(), next_id());
        run("ip", ["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`); add
    /// arguments and run it.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `program args...` inside the namespace to completion; returns stdout.
    pub fn run<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.command(program);
        command.args(args);
        run_command(&mut command)
    }

    /// Runs `ip -n NAME args...`; returns stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new("ip");
        command.args(["-n", &self.name]).args(args);
        run_command(&mut command)
    }

    /// Starts `program args...` inside the namespace as a [`Daemon`] (detached, its own
    /// session, output appended to `log`, stopped when dropped; the namespace's drop also kills
    /// it).
    pub fn spawn<I, S>(&self, program: &str, args: I, log: &Path) -> Result<Daemon>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.command(program);
        command.args(args);
        Daemon::spawn_command(command, log)
    }

    /// Runs `f` on a short-lived thread that has joined this namespace (`setns(2)`), and returns
    /// its result. Sockets created by `f` belong to the namespace for their whole life, whichever
    /// thread uses them afterwards: this is how the test process puts a socket (an agent's, a
    /// relay's) inside a namespace without a helper process.
    pub fn run_inside<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = Path::new("/run/netns").join(&self.name);
        let handle = std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || -> Result<T> {
                let file = fs::File::open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {}", path.display()))?;
                Ok(f())
            })
            .context("cannot spawn a thread")?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the thread inside {} panicked", self.name))?
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.run_inside(move || UdpSocket::bind(addr))?
            .with_context(|| format!("cannot bind udp {addr} in {}", self.name))
    }

    /// A TCP listener bound to `addr` inside the namespace.
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.run_inside(move || TcpListener::bind(addr))?
            .with_context(|| format!("cannot listen on tcp {addr} in {}", self.name))
    }

    /// A TCP connection to `addr` made from inside the namespace (at most `timeout`).
    pub fn connect_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.run_inside(move || TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("cannot connect to tcp {addr} from {}", self.name))
    }

    /// Pids of the processes running inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }

    /// Connects this namespace to `other` with a veth pair on a fresh /30 from [`VETH_RANGE`]:
    /// end `a` (with the lower address) here, end `b` there, both up.
    pub fn veth_to(&self, other: &Netns) -> Result<VethPair> {
        VethPair::create(Some(&self.name), Some(&other.name))
    }

    /// Connects this namespace to the host's (the test process's) namespace with a veth pair on
    /// a fresh /30: end `a` here, end `b` in the host. Sockets of the test process reach `a.ip`.
    pub fn veth_to_host(&self) -> Result<VethPair> {
        VethPair::create(Some(&self.name), None)
    }

    /// Rate-limits egress of `ifname` inside the namespace with a `tbf` qdisc (`rate` in tc's
    /// syntax, e.g. `20mbit`); netem does not exist on these kernels, tbf does.
    pub fn rate_limit(&self, ifname: &str, rate: &str) -> Result<()> {
        self.run(
            "tc",
            [
                "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", rate, "burst", "32kb",
                "latency", "200ms",
            ],
        )?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn pids_in(name: &str) -> Vec<u32> {
    run("ip", ["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `SIGTERM` to everything in the namespace, then `SIGKILL` to what is still there after 1 s.
fn kill_all_in(name: &str) {
    let pids = pids_in(name);
    if pids.is_empty() {
        return;
    }
    for &pid in &pids {
        signal(pid, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && !pids_in(name).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids_in(name) {
        signal(pid, "KILL");
    }
}

/// Whether `ip netns list` shows a namespace called `name` (one this crate made or any other).
pub fn netns_exists(name: &str) -> Result<bool> {
    Ok(netns_names()?.iter().any(|n| n == name))
}

/// The names `ip netns list` shows.
fn netns_names() -> Result<Vec<String>> {
    Ok(run("ip", ["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Deletes `wgtb-*-<pid>-<n>` namespaces whose creating process no longer exists, killing the
/// processes left inside them.
pub(crate) fn remove_stale_namespaces() {
    let Ok(names) = netns_names() else {
        return;
    };
    for name in &names {
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        if crate::stale::owner_pid(rest).is_some_and(|pid| !pid_alive(pid)) {
            kill_all_in(name);
            let _ = run("ip", ["netns", "del", name]);
        }
    }
}

/// One end of a veth pair.
#[derive(Debug, Clone)]
pub struct VethEnd {
    /// Namespace of this end; `None` for the host namespace.
    pub netns: Option<String>,
    /// Interface name (unique on the machine).
    pub ifname: String,
    /// Its IPv4 address (prefix length 30).
    pub ip: Ipv4Addr,
    /// Its IPv6 address (prefix length 64), after [`VethPair::add_ipv6`].
    pub ip6: Option<Ipv6Addr>,
}

/// A veth pair with a /30 on it. Dropping it deletes the link (if its namespace still exists)
/// and frees the addresses.
#[derive(Debug)]
pub struct VethPair {
    /// The end with the lower address.
    pub a: VethEnd,
    /// The other end.
    pub b: VethEnd,
    lease: Option<SubnetLease>,
}

impl VethPair {
    /// The prefix length of both addresses.
    pub const PREFIX_LEN: u8 = 30;

    fn create(a_ns: Option<&str>, b_ns: Option<&str>) -> Result<Self> {
        let lease = SubnetLease::acquire()?;
        let base = u32::from(lease.network);
        let tag = format!("vt{}{}", base36(std::process::id()), base36(next_id()));
        let a = VethEnd {
            netns: a_ns.map(str::to_owned),
            ifname: format!("{tag}a"),
            ip: Ipv4Addr::from(base + 1),
            ip6: None,
        };
        let b = VethEnd {
            netns: b_ns.map(str::to_owned),
            ifname: format!("{tag}b"),
            ip: Ipv4Addr::from(base + 2),
            ip6: None,
        };
        let pair = Self {
            a,
            b,
            lease: Some(lease),
        };
        run(
            "ip",
            [
                "link",
                "add",
                &pair.a.ifname,
                "type",
                "veth",
                "peer",
                "name",
                &pair.b.ifname,
            ],
        )?;
        for end in [&pair.a, &pair.b] {
            if let Some(ns) = &end.netns {
                run("ip", ["link", "set", &end.ifname, "netns", ns])?;
            }
            let cidr = format!("{}/{}", end.ip, Self::PREFIX_LEN);
            ip_in(
                end.netns.as_deref(),
                &["addr", "add", &cidr, "dev", &end.ifname],
            )?;
            ip_in(end.netns.as_deref(), &["link", "set", &end.ifname, "up"])?;
        }
        // A packet sent before the carrier is up is dropped: wait until both ends say UP.
        let deadline = Instant::now() + Duration::from_secs(3);
        for end in [&pair.a, &pair.b] {
            while !ip_in(end.netns.as_deref(), &["-o", "link", "show", &end.ifname])?
                .contains("state UP")
            {
                if Instant::now() > deadline {
                    bail!("veth {} did not come up within 3 s", end.ifname);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(pair)
    }
}

impl VethPair {
    /// Adds IPv6 addresses (a /64 from [`VETH_RANGE6`], `::1` on `a`, `::2` on `b`, without
    /// duplicate address detection so they work at once) and returns them.
    pub fn add_ipv6(&mut self) -> Result<(Ipv6Addr, Ipv6Addr)> {
        let index = self.lease.as_ref().map_or(0, |l| l.index);
        let group = u16::try_from(index).context("lease index above 16 bits")?;
        let [p0, p1, p2, ..] = VETH_RANGE6.0.segments();
        let a = Ipv6Addr::new(p0, p1, p2, group, 0, 0, 0, 1);
        let b = Ipv6Addr::new(p0, p1, p2, group, 0, 0, 0, 2);
        for (end, ip) in [(&mut self.a, a), (&mut self.b, b)] {
            let cidr = format!("{ip}/64");
            ip_in(
                end.netns.as_deref(),
                &["-6", "addr", "add", &cidr, "dev", &end.ifname, "nodad"],
            )?;
            end.ip6 = Some(ip);
        }
        Ok((a, b))
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting either end deletes both; it is already gone if its namespace was deleted.
        for end in [&self.a, &self.b] {
            let mut command = Command::new("ip");
            if let Some(ns) = &end.netns {
                command.args(["-n", ns]);
            }
            let gone = command
                .args(["link", "del", &end.ifname])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if gone {
                break;
            }
        }
        self.lease.take();
    }
}

fn ip_in(netns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut command = Command::new("ip");
    if let Some(ns) = netns {
        command.args(["-n", ns]);
    }
    command.args(args);
    run_command(&mut command)
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// A /30 out of [`VETH_RANGE`], held by a lock file `/run/wg-testbed/nets/<index>` that holds
/// the owner's pid (leases of dead processes are taken over).
#[derive(Debug)]
pub(crate) struct SubnetLease {
    index: u32,
    network: Ipv4Addr,
    file: PathBuf,
}

impl SubnetLease {
    pub(crate) const DIR: &'static str = "/run/wg-testbed/nets";

    fn acquire() -> Result<Self> {
        let dir = Path::new(Self::DIR);
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let slots = 1u32 << (VethPair::PREFIX_LEN - VETH_RANGE.1);
        let start = std::process::id().wrapping_mul(97).wrapping_add(next_id()) % slots;
        for i in 0..slots.min(4096) {
            let index = (start + i) % slots;
            let file = dir.join(index.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    let network = Ipv4Addr::from(u32::from(VETH_RANGE.0) + index * 4);
                    return Ok(Self {
                        index,
                        network,
                        file,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(&file)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    if owner.is_some_and(|pid| !pid_alive(pid)) {
                        // Dead owner: free the slot; a later pass of this loop may take it.
                        let _ = fs::remove_file(&file);
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", file.display()));
                }
            }
        }
        bail!("no free /30 left in the veth range (see {})", Self::DIR)
    }
}

impl Drop for SubnetLease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
    }
}
