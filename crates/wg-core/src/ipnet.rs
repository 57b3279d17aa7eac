//! Allowed-IP prefixes ([`IpNet`]) and the longest-prefix table that maps addresses to peers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix such as `10.1.0.1/32` or `fd00::/64`.
///
/// Host bits are cleared when parsed or built (`10.1.0.7/24` becomes `10.1.0.0/24`), as `wg` does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why a prefix could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpNetError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("`{0}` is not an IP address")]
    Address(String),
    /// The prefix length is not a number or too long for the address family.
    #[error("prefix length `{0}` is not valid for this address family")]
    PrefixLen(String),
}

impl IpNet {
    /// A prefix from an address and a length (host bits are cleared).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, IpNetError> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix_len > max {
            return Err(IpNetError::PrefixLen(prefix_len.to_string()));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix_len))),
        };
        Ok(Self { addr, prefix_len })
    }

    /// The single-address prefix (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix_len }
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies in this prefix (an IPv4 address never lies in an IPv6 prefix).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix_len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix_len) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = IpNetError;

    /// Parses `ADDR/LEN`, or a bare `ADDR` as a host prefix.
    fn from_str(s: &str) -> Result<Self, IpNetError> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetError::Address(addr.to_owned()))?;
        match len {
            None => Ok(Self::host(addr)),
            Some(l) => {
                let len: u8 = l.parse().map_err(|_| IpNetError::PrefixLen(l.to_owned()))?;
                Self::new(addr, len)
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl fmt::Debug for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A longest-prefix-match table from prefixes to a value (wg-core stores peer slots in it).
///
/// Entries are kept sorted longest prefix first, so a lookup is a short linear scan: right for
/// the handful of prefixes a set of gateways has. Inserting a prefix that is already present
/// replaces its value (a prefix belongs to one peer, as in WireGuard).
///
/// [`RouteTable::route`] remembers its last answer per [`Lookup`] stream (consecutive packets
/// of a flow share an address, and a scan grows with the table); any change forgets them all.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable<T> {
    v4: Vec<(u32, u32, u8, T)>,
    v6: Vec<(u128, u128, u8, T)>,
    memo: [Memo<T>; 2],
}

/// Which remembered lookup [`RouteTable::route`] uses: outbound destinations and inbound
/// sources are two streams of addresses, so each keeps its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The destination of an outbound packet.
    Destination = 0,
    /// The source of a decrypted inbound packet.
    Source = 1,
}

/// The last successful lookup of one stream: the address and its answer.
#[derive(Debug, Clone, Copy, Default)]
struct Memo<T> {
    /// [`MEMO_V4`] | the IPv4 address's octets as a native-endian integer (no byte swap on the
    /// per-packet path), or 0 for nothing remembered.
    v4_key: u64,
    /// The answer for `v4_key` (meaningless while it is 0).
    v4: T,
    v6: Option<(u128, T)>,
}

/// Marks a remembered IPv4 lookup (so the key 0 means "nothing").
const MEMO_V4: u64 = 1 << 32;

impl<T: Copy + PartialEq + Default> RouteTable<T> {
    pub(crate) fn insert(&mut self, net: IpNet, value: T) {
        self.memo = [Memo::default(); 2];
        let len = net.prefix_len;
        match net.addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.retain(|e| !(e.0 == a && e.2 == len));
                let pos = self.v4.partition_point(|e| e.2 >= len);
                self.v4.insert(pos, (a, mask_v4(len), len, value));
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.retain(|e| !(e.0 == a && e.2 == len));
                let pos = self.v6.partition_point(|e| e.2 >= len);
                self.v6.insert(pos, (a, mask_v6(len), len, value));
            }
        }
    }

    /// The value of the longest prefix holding `ip`, without the memo.
    #[cfg(test)]
    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<T> {
        match ip {
            IpAddr::V4(ip) => self.lookup_v4(ip.to_bits()),
            IpAddr::V6(ip) => self.lookup_v6(ip.to_bits()),
        }
    }

    /// [`RouteTable::lookup`], answered from the memo of `stream` when `ip` is the address it
    /// saw last.
    #[inline(always)]
    pub(crate) fn route(&mut self, ip: IpAddr, stream: Lookup) -> Option<T> {
        match ip {
            IpAddr::V4(ip) => self.route_v4(ip.octets(), stream),
            IpAddr::V6(ip) => {
                let ip = ip.to_bits();
                if let Some((last, value)) = self.memo[stream as usize].v6
                    && last == ip
                {
                    return Some(value);
                }
                let value = self.lookup_v6(ip)?;
                self.memo[stream as usize].v6 = Some((ip, value));
                Some(value)
            }
        }
    }

    /// [`RouteTable::route`] for an IPv4 address given as its octets.
    #[inline(always)]
    pub(crate) fn route_v4(&mut self, octets: [u8; 4], stream: Lookup) -> Option<T> {
        let key = MEMO_V4 | u64::from(u32::from_ne_bytes(octets));
        let memo = &self.memo[stream as usize];
        if memo.v4_key == key {
            return Some(memo.v4);
        }
        let value = self.lookup_v4(u32::from_be_bytes(octets))?;
        let memo = &mut self.memo[stream as usize];
        memo.v4_key = key;
        memo.v4 = value;
        Some(value)
    }

    fn lookup_v4(&self, ip: u32) -> Option<T> {
        self.v4.iter().find(|e| ip & e.1 == e.0).map(|e| e.3)
    }

    fn lookup_v6(&self, ip: u128) -> Option<T> {
        self.v6.iter().find(|e| ip & e.1 == e.0).map(|e| e.3)
    }

    pub(crate) fn clear(&mut self) {
        self.memo = [Memo::default(); 2];
        self.v4.clear();
        self.v6.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(net("10.1.0.1/32").to_string(), "10.1.0.1/32");
        assert_eq!(net("10.1.0.7/24").to_string(), "10.1.0.0/24");
        assert_eq!(net("10.1.0.7").to_string(), "10.1.0.7/32");
        assert_eq!(net("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(net("::/0").to_string(), "::/0");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!("10.1.0.1/33".parse::<IpNet>().is_err());
        assert!("fd00::/129".parse::<IpNet>().is_err());
        assert!("10.1.0/24".parse::<IpNet>().is_err());
        assert!("10.1.0.1/x".parse::<IpNet>().is_err());
    }

    #[test]
    fn contains() {
        assert!(net("10.1.0.0/24").contains("10.1.0.200".parse().unwrap()));
        assert!(!net("10.1.0.0/24").contains("10.1.1.1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(!net("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(net("fd00::/8").contains("fdff::1".parse().unwrap()));
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = RouteTable::default();
        t.insert(net("0.0.0.0/0"), 1);
        t.insert(net("10.1.0.0/24"), 2);
        t.insert(net("10.1.0.1/32"), 3);
        t.insert(net("::/0"), 4);
        assert_eq!(t.lookup("10.1.0.1".parse().unwrap()), Some(3));
        assert_eq!(t.lookup("10.1.0.2".parse().unwrap()), Some(2));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Some(1));
        assert_eq!(t.lookup("fd00::1".parse().unwrap()), Some(4));
        t.insert(net("10.1.0.0/24"), 5);
        assert_eq!(t.lookup("10.1.0.2".parse().unwrap()), Some(5));
        t.clear();
        assert_eq!(t.lookup("10.1.0.2".parse().unwrap()), None);
    }

    #[test]
    fn remembered_routes_follow_every_change() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut t = RouteTable::default();
        t.insert(net("10.1.0.0/24"), 1);
        t.insert(net("fd00::/64"), 7);
        for stream in [Lookup::Destination, Lookup::Source] {
            assert_eq!(t.route(ip("10.1.0.9"), stream), Some(1));
            assert_eq!(t.route(ip("10.1.0.9"), stream), Some(1), "remembered");
            assert_eq!(t.route(ip("10.2.0.9"), stream), None);
            assert_eq!(t.route(ip("10.2.0.9"), stream), None, "again");
            assert_eq!(t.route(ip("fd00::9"), stream), Some(7));
            assert_eq!(t.route(ip("fd00::9"), stream), Some(7));
        }
        // A longer prefix, a replaced prefix, a cleared table: never a stale answer.
        t.insert(net("10.1.0.9/32"), 2);
        assert_eq!(t.route(ip("10.1.0.9"), Lookup::Destination), Some(2));
        assert_eq!(t.route(ip("10.1.0.9"), Lookup::Source), Some(2));
        t.insert(net("10.1.0.9/32"), 3);
        assert_eq!(t.route(ip("10.1.0.9"), Lookup::Destination), Some(3));
        t.insert(net("10.2.0.0/16"), 4);
        assert_eq!(t.route(ip("10.2.0.9"), Lookup::Source), Some(4));
        t.insert(net("fd00::9/128"), 8);
        assert_eq!(t.route(ip("fd00::9"), Lookup::Destination), Some(8));
        t.clear();
        for stream in [Lookup::Destination, Lookup::Source] {
            assert_eq!(t.route(ip("10.1.0.9"), stream), None);
            assert_eq!(t.route(ip("fd00::9"), stream), None);
        }
    }
}
