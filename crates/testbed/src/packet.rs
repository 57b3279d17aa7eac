//! Hand-built IPv4 packets for tunnel tests: ICMP echo request and reply.

use std::net::Ipv4Addr;

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo request from `src` to `dst` with this identifier, sequence number and
/// payload (TTL 64, DF set), checksums filled in.
pub fn icmp_echo_request(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    icmp_echo(8, src, dst, ident, seq, payload)
}

fn icmp_echo(
    kind: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let ip_sum = internet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&[kind, 0, 0, 0]);
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    let icmp_sum = internet_checksum(&p[20..]);
    p[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    p
}

/// An ICMP echo (request or reply) read from an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpEcho {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// `true` for a reply (type 0), `false` for a request (type 8).
    pub is_reply: bool,
    /// Identifier.
    pub ident: u16,
    /// Sequence number.
    pub seq: u16,
    /// Payload after the ICMP header.
    pub payload: Vec<u8>,
}

/// Parses an IPv4 ICMP echo request or reply whose IP and ICMP checksums are valid; `None` for
/// anything else.
pub fn parse_icmp_echo(packet: &[u8]) -> Option<IcmpEcho> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    if header_len < 20 || total < header_len + 8 || packet.len() < total || packet[9] != 1 {
        return None;
    }
    if internet_checksum(&packet[..header_len]) != 0 {
        return None;
    }
    let icmp = &packet[header_len..total];
    if internet_checksum(icmp) != 0 || icmp[1] != 0 {
        return None;
    }
    let is_reply = match icmp[0] {
        0 => true,
        8 => false,
        _ => return None,
    };
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Some(IcmpEcho {
        src: addr(12),
        dst: addr(16),
        is_reply,
        ident: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        payload: icmp[8..].to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the one's complement sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn echo_request_round_trips_and_corruption_is_rejected() {
        let src = Ipv4Addr::new(10, 1, 0, 100);
        let dst = Ipv4Addr::new(10, 1, 0, 1);
        let packet = icmp_echo_request(src, dst, 0x1234, 7, b"hello tunnel!");
        assert_eq!(packet.len(), 20 + 8 + 13);
        let echo = parse_icmp_echo(&packet).unwrap();
        assert_eq!(
            echo,
            IcmpEcho {
                src,
                dst,
                is_reply: false,
                ident: 0x1234,
                seq: 7,
                payload: b"hello tunnel!".to_vec()
            }
        );
        let reply = icmp_echo(0, dst, src, 0x1234, 7, b"x");
        assert!(parse_icmp_echo(&reply).unwrap().is_reply);
        for i in 0..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x01;
            assert_ne!(parse_icmp_echo(&bad).as_ref(), Some(&echo), "byte {i}");
        }
        for len in 0..packet.len() {
            assert!(parse_icmp_echo(&packet[..len]).is_none());
        }
    }
}
