//! PROXY protocol version 2 header (binary), sent to a TCP route's upstream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Encode a `PROXY` command for a TCP connection from `source` to `destination`.
///
/// Mixed families are sent as IPv6 (IPv4 mapped). Without a known destination, the unspecified
/// address of the source's family with port 0 is sent.
pub fn encode_v2(source: SocketAddr, destination: Option<SocketAddr>) -> Vec<u8> {
    let destination = destination.unwrap_or_else(|| match source {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    });
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&to_v6(src).octets());
            out.extend_from_slice(&to_v6(dst).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ipv4_header_layout() {
        let h = encode_v2(
            "10.1.0.1:40000".parse().unwrap(),
            Some("10.1.0.100:5432".parse().unwrap()),
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[10, 1, 0, 1]);
        assert_eq!(&h[20..24], &[10, 1, 0, 100]);
        assert_eq!(&h[24..], &[0x9c, 0x40, 0x15, 0x38]);
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let h = encode_v2(
            "10.1.0.1:1".parse().unwrap(),
            Some("[fd00::1]:2".parse().unwrap()),
        );
        assert_eq!(h.len(), 52);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            &h[16..32],
            &Ipv4Addr::new(10, 1, 0, 1).to_ipv6_mapped().octets()
        );
        let h = encode_v2("[fd00::1]:1".parse().unwrap(), None);
        assert_eq!(&h[48..], &[0, 1, 0, 0]);
    }
}
