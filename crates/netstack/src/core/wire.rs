//! Classifies an inbound IP packet before smoltcp sees it: which shard owns it, and
//! whether it must be dropped (and under which reason).

use smoltcp::wire::{
    IpAddress, IpEndpoint, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};

use crate::stats::DropReason;

/// A TCP connection's 4-tuple, from this stack's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tuple {
    /// Our virtual IP and port.
    pub(crate) local: IpEndpoint,
    /// The peer's.
    pub(crate) remote: IpEndpoint,
}

/// What an inbound packet is, as far as demultiplexing cares.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Class {
    /// A TCP segment.
    Tcp {
        /// Its connection.
        tuple: Tuple,
        /// SYN without ACK: may open a connection.
        syn_only: bool,
        /// RST set.
        rst: bool,
    },
    /// A UDP datagram to our `port`.
    Udp {
        /// Destination port.
        port: u16,
    },
    /// ICMP and anything else smoltcp may answer.
    Other,
}

/// Parses the headers of `packet`; `ours` are the stack's addresses.
pub(crate) fn classify(packet: &[u8], ours: &[IpAddress]) -> Result<Class, DropReason> {
    let (src, dst, proto, payload) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).map_err(|_| DropReason::Malformed)?;
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(DropReason::Unsupported);
            }
            let (src, dst) = (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
            );
            (src, dst, ip.next_header(), ip.payload())
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).map_err(|_| DropReason::Malformed)?;
            // Extension headers (hop-by-hop, routing, fragment, options, ...): smoltcp would
            // parse past them and answer TCP itself, bypassing the connection table and its
            // limits (an RST with a sequence number the sender picked). Nothing a tunnel
            // peer needs uses them towards us.
            if !matches!(
                ip.next_header(),
                IpProtocol::Tcp | IpProtocol::Udp | IpProtocol::Icmpv6
            ) {
                return Err(DropReason::Unsupported);
            }
            let (src, dst) = (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
            );
            (src, dst, ip.next_header(), ip.payload())
        }
        _ => return Err(DropReason::Malformed),
    };
    if !ours.contains(&dst) {
        return Err(DropReason::NotForUs);
    }
    if src.is_unspecified() || src.is_multicast() || src.is_broadcast() {
        return Err(DropReason::Malformed);
    }
    match proto {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if tcp.src_port() == 0 || tcp.dst_port() == 0 {
                return Err(DropReason::Malformed);
            }
            let tuple = Tuple {
                local: IpEndpoint::new(dst, tcp.dst_port()),
                remote: IpEndpoint::new(src, tcp.src_port()),
            };
            let syn_only = tcp.syn() && !tcp.ack() && !tcp.rst();
            Ok(Class::Tcp {
                tuple,
                syn_only,
                rst: tcp.rst(),
            })
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            Ok(Class::Udp {
                port: udp.dst_port(),
            })
        }
        _ => Ok(Class::Other),
    }
}

/// The fields of a TCP segment the sender reads (see `sender.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The sender's address and port.
    pub(crate) src: IpEndpoint,
    /// The receiver's.
    pub(crate) dst: IpEndpoint,
    /// Sequence number of the first payload byte.
    pub(crate) seq: u32,
    /// Acknowledgement number, when the ACK flag is set.
    pub(crate) ack: Option<u32>,
    /// Payload bytes (SYN and FIN not counted).
    pub(crate) len: u32,
    /// SYN or RST set: not a data or ACK segment the sender cares about.
    pub(crate) control: bool,
    /// RST set.
    pub(crate) rst: bool,
    /// FIN set.
    pub(crate) fin: bool,
    /// The advertised window field, unscaled.
    pub(crate) window: u16,
    /// SACK blocks, `[left, right)`.
    pub(crate) sacks: [Option<(u32, u32)>; 3],
}

/// Reads a TCP segment's header fields from an IP packet; `None` for anything else or a
/// malformed header (the classifier has already counted it).
pub(crate) fn tcp_segment(packet: &[u8]) -> Option<Segment> {
    let (src, dst, payload) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
                ip.payload(),
            )
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
                ip.payload(),
            )
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(payload).ok()?;
    // The sequence number is a u32 on the wire; smoltcp keeps it as an i32.
    let seq = tcp.seq_number().0 as u32;
    Some(Segment {
        src: IpEndpoint::new(src, tcp.src_port()),
        dst: IpEndpoint::new(dst, tcp.dst_port()),
        seq,
        ack: tcp.ack().then(|| tcp.ack_number().0 as u32),
        len: u32::try_from(tcp.payload().len()).unwrap_or(u32::MAX),
        control: tcp.syn() || tcp.rst(),
        rst: tcp.rst(),
        fin: tcp.fin(),
        window: tcp.window_len(),
        sacks: tcp.selective_ack_ranges().unwrap_or([None; 3]),
    })
}

/// `packet` (a TCP segment we sent) with its acknowledgement number and window replaced,
/// the TCP checksum updated incrementally (RFC 1624); `None` when both are unchanged or
/// the packet is not a TCP segment this stack emitted.
///
/// The sender resends old packets: a receiver that has since sent data itself would take
/// an older ACK number as a duplicate (smoltcp drops such a segment, data and all) and an
/// older window as current.
pub(crate) fn with_ack_and_window(packet: &[u8], ack: u32, window: u16) -> Option<Vec<u8>> {
    // Most resends and every first transmission of a split piece carry the latest values
    // already: only a change is worth the copy.
    let tcp = packet.get(tcp_offset(packet)?..)?;
    let current = (
        u32::from_be_bytes(tcp.get(8..12)?.try_into().ok()?),
        u16::from_be_bytes(tcp.get(14..16)?.try_into().ok()?),
    );
    if current == (ack, window) {
        return None;
    }
    let mut out = packet.to_vec();
    set_ack_and_window(&mut out, ack, window).then_some(out)
}

/// Where the TCP header of `packet` (IPv4 or IPv6 without extension headers) starts.
fn tcp_offset(packet: &[u8]) -> Option<usize> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => Some(usize::from(packet[0] & 0x0f) * 4),
        Some(6) => Some(40),
        _ => None,
    }
}

/// [`with_ack_and_window`] in place: returns whether `packet` changed.
pub(crate) fn set_ack_and_window(packet: &mut [u8], ack: u32, window: u16) -> bool {
    let Some(off) = tcp_offset(packet) else {
        return false;
    };
    let Some(tcp) = packet.get_mut(off..off + 20) else {
        return false;
    };
    let old_ack = [
        u16::from_be_bytes([tcp[8], tcp[9]]),
        u16::from_be_bytes([tcp[10], tcp[11]]),
    ];
    let old_win = u16::from_be_bytes([tcp[14], tcp[15]]);
    let new_ack = [(ack >> 16) as u16, ack as u16];
    if old_ack == new_ack && old_win == window {
        return false;
    }
    let mut check = u16::from_be_bytes([tcp[16], tcp[17]]);
    for (old, new) in old_ack
        .into_iter()
        .chain([old_win])
        .zip(new_ack.into_iter().chain([window]))
    {
        check = checksum_update(check, old, new);
    }
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[14..16].copy_from_slice(&window.to_be_bytes());
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    true
}

pub(crate) fn checksum_update(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `packet` (a TCP segment we sent, starting at sequence number `seq`) without its
/// payload bytes before `from`: the same headers, sequence number `from`, lengths and
/// checksums recomputed. `None` when it is not such a segment or `from` is outside it.
///
/// smoltcp may re-cut what it sends again so that a segment starts in bytes the sender
/// already holds and ends in new ones; only the new part may go out. (A smoltcp receiver
/// drops a segment whose payload is all old even when it carries a new FIN.)
pub(crate) fn trimmed_front(packet: &[u8], seq: u32, from: u32) -> Option<Vec<u8>> {
    let cut = usize::try_from(from.wrapping_sub(seq)).ok()?;
    let (ip_len, src, dst) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            (
                usize::from(ip.header_len()),
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
            )
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            (
                40,
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
            )
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(packet.get(ip_len..)?).ok()?;
    let tcp_len = usize::from(tcp.header_len());
    if cut > tcp.payload().len() {
        return None;
    }
    let mut out = Vec::with_capacity(packet.len() - cut);
    out.extend_from_slice(&packet[..ip_len + tcp_len]);
    out.extend_from_slice(&packet[ip_len + tcp_len + cut..]);
    let total = u16::try_from(out.len()).ok()?;
    match src {
        IpAddress::Ipv4(_) => {
            let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
            ip.set_total_len(total);
            ip.fill_checksum();
        }
        IpAddress::Ipv6(_) => {
            Ipv6Packet::new_unchecked(&mut out[..]).set_payload_len(total - 40);
        }
    }
    let mut tcp = TcpPacket::new_unchecked(&mut out[ip_len..]);
    tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(from as i32));
    tcp.fill_checksum(&src, &dst);
    Some(out)
}

/// The shard of a TCP connection: a keyed hash of the peer and both ports.
pub(crate) fn shard_of(key: u64, tuple: &Tuple, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = key;
    let mut mix = |v: u64| h = (h ^ v).wrapping_mul(K).rotate_left(29);
    match tuple.remote.addr {
        IpAddress::Ipv4(a) => mix(u64::from(a.to_bits())),
        IpAddress::Ipv6(a) => {
            let bits = a.to_bits();
            // Truncation intended: both halves are mixed.
            mix(bits as u64);
            mix((bits >> 64) as u64);
        }
    }
    mix(u64::from(tuple.remote.port) << 16 | u64::from(tuple.local.port));
    let h = h ^ (h >> 32);
    // Multiply-shift maps the hash uniformly onto 0..shards.
    ((u128::from(h) * shards as u128) >> 64) as usize
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber};

    fn syn(src: Ipv4Address, dst: Ipv4Address) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1),
            ack_number: None,
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        ipv4_tcp(src, dst, &tcp)
    }

    /// `tcp` in an IPv4 packet from `src` to `dst`, checksums filled in.
    pub(crate) fn ipv4_tcp(src: Ipv4Address, dst: Ipv4Address, tcp: &TcpRepr<'_>) -> Vec<u8> {
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut pkt = Ipv4Packet::new_unchecked(&mut buf);
        ip.emit(&mut pkt, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(pkt.payload_mut()),
            &src.into(),
            &dst.into(),
            &caps,
        );
        buf
    }

    #[test]
    fn a_resent_segment_gets_the_new_ack_and_window_with_a_valid_checksum() {
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let payload = [0xa5u8; 333];
        let tcp = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            control: TcpControl::None,
            seq_number: TcpSeqNumber(7),
            ack_number: Some(TcpSeqNumber(1000)),
            window_len: 512,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &payload,
        };
        let buf = ipv4_tcp(src, dst, &tcp);
        assert_eq!(with_ack_and_window(&buf, 1000, 512), None, "unchanged");
        for (ack, window) in [(0xdead_beef, 77), (1000, 0), (u32::MAX, u16::MAX), (0, 0)] {
            let new = with_ack_and_window(&buf, ack, window).expect("changed");
            let ip = Ipv4Packet::new_checked(&new[..]).expect("ip");
            let t = TcpPacket::new_checked(ip.payload()).expect("tcp");
            assert!(
                t.verify_checksum(&src.into(), &dst.into()),
                "{ack} {window}"
            );
            assert_eq!(t.ack_number(), TcpSeqNumber(ack as i32));
            assert_eq!(t.window_len(), window);
            assert_eq!(t.payload(), &payload[..]);
            assert_eq!(t.seq_number(), TcpSeqNumber(7));
        }
        assert_eq!(with_ack_and_window(&buf[..30], 1, 1), None, "truncated");
    }

    #[test]
    fn a_trimmed_segment_keeps_only_the_new_bytes_and_its_fin() {
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let payload: Vec<u8> = (0..100u8).collect();
        let tcp = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            control: TcpControl::Fin,
            seq_number: TcpSeqNumber(1000),
            ack_number: Some(TcpSeqNumber(77)),
            window_len: 500,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &payload,
        };
        let packet = ipv4_tcp(src, dst, &tcp);
        for cut in [0u32, 40, 100] {
            let out = trimmed_front(&packet, 1000, 1000 + cut).expect("trimmed");
            let ip = Ipv4Packet::new_checked(&out[..]).expect("ipv4");
            assert!(ip.verify_checksum());
            let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
            assert!(seg.verify_checksum(&src.into(), &dst.into()));
            assert_eq!(seg.seq_number(), TcpSeqNumber(1000 + cut as i32));
            assert_eq!(seg.payload(), &payload[cut as usize..]);
            assert!(seg.fin());
            assert_eq!(seg.ack_number(), TcpSeqNumber(77));
        }
        assert_eq!(trimmed_front(&packet, 1000, 1101), None);
        assert_eq!(trimmed_front(b"junk", 0, 1), None);
    }

    #[test]
    fn classifies_a_syn_and_drops_what_is_not_ours() {
        let ours = [IpAddress::v4(10, 0, 0, 2)];
        let pkt = syn(Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        match classify(&pkt, &ours) {
            Ok(Class::Tcp {
                tuple, syn_only, ..
            }) => {
                assert!(syn_only);
                assert_eq!(tuple.local.port, 80);
                assert_eq!(tuple.remote.port, 40000);
            }
            other => panic!("unexpected {other:?}"),
        }
        let other = syn(Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 3));
        assert_eq!(classify(&other, &ours).err(), Some(DropReason::NotForUs));
        assert_eq!(
            classify(&pkt[..30], &ours).err(),
            Some(DropReason::Malformed)
        );
        assert_eq!(classify(&[], &ours).err(), Some(DropReason::Malformed));
    }

    #[test]
    fn shard_hash_is_in_range_and_spreads() {
        let mut seen = [0usize; 8];
        for port in 1..=800u16 {
            let t = Tuple {
                local: IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 80),
                remote: IpEndpoint::new(IpAddress::v4(10, 0, 0, 1), port),
            };
            seen[shard_of(7, &t, 8)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = classify(&data, &[IpAddress::v4(10, 0, 0, 2)]);
        }
    }
}
