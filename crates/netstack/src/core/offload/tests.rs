//! Unit tests of the offload's packet surgery: every output checked by parsing it with
//! smoltcp and verifying its checksums.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpProtocol, Ipv4Address, Ipv6Address, Ipv6Packet, Ipv6Repr, TcpControl, TcpRepr, TcpSeqNumber,
    TcpTimestampRepr,
};

use super::*;
use crate::wire::tests::ipv4_tcp;

const SRC: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
const DST: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

fn repr<'a>(control: TcpControl, seq: u32, ack: u32, payload: &'a [u8]) -> TcpRepr<'a> {
    TcpRepr {
        src_port: 80,
        dst_port: 40000,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: Some(TcpSeqNumber(ack as i32)),
        window_len: 1000,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    }
}

fn ipv6_tcp(tcp: &TcpRepr<'_>) -> Vec<u8> {
    let (src, dst) = (
        Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
        Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
    );
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    let mut pkt = Ipv6Packet::new_unchecked(&mut buf);
    ip.emit(&mut pkt);
    tcp.emit(
        &mut TcpPacket::new_unchecked(pkt.payload_mut()),
        &src.into(),
        &dst.into(),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// Parses `packet`, checks its IP length and both checksums; returns (seq, ack, flags,
/// window, payload, options).
fn check(packet: &[u8]) -> (u32, u32, u8, u16, Vec<u8>, Vec<u8>) {
    let (src, dst, tcp_bytes): (IpAddress, IpAddress, &[u8]) = if packet[0] >> 4 == 4 {
        let ip = Ipv4Packet::new_checked(packet).expect("ipv4");
        assert!(ip.verify_checksum(), "ipv4 header checksum");
        assert_eq!(usize::from(ip.total_len()), packet.len());
        (ip.src_addr().into(), ip.dst_addr().into(), &packet[20..])
    } else {
        let ip = Ipv6Packet::new_checked(packet).expect("ipv6");
        assert_eq!(usize::from(ip.payload_len()) + 40, packet.len());
        (ip.src_addr().into(), ip.dst_addr().into(), &packet[40..])
    };
    let tcp = TcpPacket::new_checked(tcp_bytes).expect("tcp");
    assert!(tcp.verify_checksum(&src, &dst), "tcp checksum");
    let head = usize::from(tcp.header_len());
    (
        tcp.seq_number().0 as u32,
        tcp.ack_number().0 as u32,
        tcp_bytes[13],
        tcp.window_len(),
        tcp.payload().to_vec(),
        tcp_bytes[20..head].to_vec(),
    )
}

fn split_across_wraparound(make: impl Fn(&TcpRepr<'_>) -> Vec<u8>) {
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let seq = u32::MAX - 3000;
    let mut tcp = repr(TcpControl::Fin, seq, 77, &payload);
    tcp.timestamp = Some(TcpTimestampRepr::new(11, 22));
    tcp.control = TcpControl::Fin;
    let mut big = make(&tcp);
    // PSH too (TcpRepr has no field for it).
    let ip = if big[0] >> 4 == 4 { 20 } else { 40 };
    big[ip + 13] |= PSH;
    fill_tcp_checksum(&mut big);
    check(&big);
    let mut out = Vec::new();
    assert_eq!(split(&big, 1368, &mut out), Some(8));
    assert_eq!(out.len(), 8);
    let mut joined = Vec::new();
    let mut next = seq;
    for (i, piece) in out.iter().enumerate() {
        let (s, ack, flags, window, data, options) = check(piece);
        assert_eq!(s, next, "piece {i} continues the sequence (wrapping)");
        assert_eq!(ack, 77);
        assert_eq!(window, 1000);
        assert!(!options.is_empty(), "options copied");
        assert_eq!(options, check(&big).5);
        let last = i + 1 == out.len();
        assert_eq!(
            flags & (FIN | PSH) != 0,
            last,
            "FIN and PSH on the last piece only"
        );
        assert_eq!(flags & ACK, ACK);
        assert!(data.len() <= 1368 && (last || data.len() == 1368));
        next = next.wrapping_add(data.len() as u32);
        joined.extend_from_slice(&data);
    }
    assert_eq!(joined, payload);
    assert_eq!(next, seq.wrapping_add(10_000));
    assert!(next < seq, "the test crosses the wraparound");
    // Small enough already, or a SYN: nothing to do.
    assert_eq!(split(&out[0], 1368, &mut Vec::new()), None);
    let syn = make(&repr(TcpControl::Syn, 1, 0, &[]));
    assert_eq!(split(&syn, 1, &mut Vec::new()), None);
}

/// Pieces of every size (odd ones too: a peer's MSS may be odd) carry valid checksums
/// and the payload, byte for byte.
fn split_at_every_size(make: impl Fn(&TcpRepr<'_>) -> Vec<u8>) {
    let payload: Vec<u8> = (0..3_001u32).map(|i| (i * 13 + 5) as u8).collect();
    let big = make(&repr(TcpControl::None, 9, 77, &payload));
    for max in [1, 2, 31, 32, 33, 1367, 1368, 1379, 3_000] {
        let mut out = Vec::new();
        assert_eq!(split(&big, max, &mut out), Some(3_001usize.div_ceil(max)));
        let mut joined = Vec::new();
        for piece in &out {
            // `check` verifies the IP and TCP checksums.
            joined.extend_from_slice(&check(piece).4);
        }
        assert_eq!(joined, payload, "pieces of {max} bytes");
    }
}

#[test]
fn pieces_of_every_size_have_valid_checksums_v4() {
    split_at_every_size(|t| ipv4_tcp(SRC, DST, t));
}

#[test]
fn pieces_of_every_size_have_valid_checksums_v6() {
    split_at_every_size(ipv6_tcp);
}

#[test]
fn a_large_segment_splits_into_wire_segments_across_wraparound_v4() {
    split_across_wraparound(|t| ipv4_tcp(SRC, DST, t));
}

#[test]
fn a_large_segment_splits_into_wire_segments_across_wraparound_v6() {
    split_across_wraparound(ipv6_tcp);
}

#[test]
fn the_mss_option_is_rewritten_with_a_valid_checksum() {
    for make in [
        &(|t: &TcpRepr<'_>| ipv4_tcp(SRC, DST, t)) as &dyn Fn(&TcpRepr<'_>) -> Vec<u8>,
        &ipv6_tcp,
    ] {
        let mut syn = repr(TcpControl::Syn, 5, 0, &[]);
        syn.ack_number = None;
        syn.max_seg_size = Some(65_495);
        syn.window_scale = Some(7);
        syn.sack_permitted = true;
        let mut p = make(&syn);
        assert!(is_syn(&p));
        let mut off = Offload::new(1380);
        off.on_our_syn(&p);
        assert_eq!(rewrite_mss(&mut p, 1380), Some(65_495));
        check(&p);
        assert_eq!(options(&p).and_then(|o| o.mss), Some(1380));
        // The peer's SYN: its MSS is recorded, smoltcp gets a multiple of it.
        let mut peer = syn;
        peer.max_seg_size = Some(1200);
        let p = make(&peer);
        let big = off.on_peer_syn(&p, 1380, 65_495).expect("has an MSS");
        assert_eq!(off.wire_mss, 1200);
        assert_eq!(big % 1200, 0);
        assert!(big <= 65_495 && big > 65_495 - 1200);
        assert_eq!(off.shift(), 7, "both sides scale");
        // A peer MSS above the path's is bounded by it.
        peer.max_seg_size = Some(9000);
        off.on_peer_syn(&make(&peer), 1380, 65_495);
        assert_eq!(off.wire_mss, 1380);
        // No MSS option: nothing to rewrite.
        peer.max_seg_size = None;
        let mut p = make(&peer);
        assert_eq!(rewrite_mss(&mut p, 1380), None);
        assert_eq!(Offload::new(1380).on_peer_syn(&p, 1380, 65_495), None);
    }
}

#[test]
fn contiguous_data_segments_merge_and_a_hole_or_a_flag_ends_the_run() {
    let seq = u32::MAX - 1000;
    let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1380]).collect();
    let seg = |k: usize, ack: u32, window: u16| {
        let mut t = repr(
            TcpControl::None,
            seq.wrapping_add(1380 * k as u32),
            ack,
            &chunks[k],
        );
        t.window_len = window;
        ipv4_tcp(SRC, DST, &t)
    };
    let mut m = Merge::start(&seg(0, 10, 100), Vec::new()).expect("data");
    assert!(m.push(&seg(1, 10, 100)));
    assert!(m.push(&seg(2, 20, 90)), "a newer ACK and window");
    assert!(
        !m.push(&seg(2, 20, 90)),
        "a retransmission is not contiguous"
    );
    assert!(!m.push(&seg(3, 19, 90)), "an older ACK ends the run");
    let mut fin = repr(TcpControl::Fin, seq.wrapping_add(1380 * 3), 20, &chunks[3]);
    assert!(!m.push(&ipv4_tcp(SRC, DST, &fin)), "FIN is not joined");
    fin.control = TcpControl::None;
    fin.timestamp = Some(TcpTimestampRepr::new(1, 2));
    assert!(!m.push(&ipv4_tcp(SRC, DST, &fin)), "different options");
    assert_eq!(m.segments, 3);
    let (mut merged, ends) = m.finish();
    assert_eq!(ends, [1, 2, 3].map(|k| seq.wrapping_add(1380 * k)));
    fill_tcp_checksum(&mut merged);
    let (s, ack, flags, window, data, _) = check(&merged);
    assert_eq!((s, ack, flags, window), (seq, 20, ACK, 90));
    assert_eq!(data, [&chunks[0][..], &chunks[1], &chunks[2]].concat());
    // Past a hole nothing is joined; pure ACKs and SYNs never start a run.
    let mut m = Merge::start(&seg(0, 10, 100), Vec::new()).expect("data");
    assert!(!m.push(&seg(2, 10, 100)));
    let ack_only = ipv4_tcp(SRC, DST, &repr(TcpControl::None, 1, 1, &[]));
    assert!(Merge::start(&ack_only, Vec::new()).is_err());
    assert_eq!(pure_ack(&ack_only), Some(1));
    let syn = ipv4_tcp(SRC, DST, &repr(TcpControl::Syn, 1, 1, &[]));
    assert!(Merge::start(&syn, Vec::new()).is_err());
    assert_eq!(pure_ack(&syn), None);
    // Never past the largest IP packet.
    let mut m = Merge::start(&seg(0, 10, 100), Vec::new()).expect("data");
    let mut k = 1u32;
    loop {
        let t = repr(TcpControl::None, seq.wrapping_add(1380 * k), 10, &chunks[0]);
        if !m.push(&ipv4_tcp(SRC, DST, &t)) {
            break;
        }
        k += 1;
    }
    assert_eq!(k, (SEGMENT_MTU as u32 - 40) / 1380);
    assert!(m.finish().0.len() <= SEGMENT_MTU);
}

#[test]
fn intermediate_acks_come_every_two_wire_segments_with_the_right_edge_kept() {
    let start = u32::MAX - 2000;
    let mut off = Offload::new(1380);
    assert!(
        off.on_our_ack(start) == Added::default(),
        "the first ACK only records"
    );
    // Seven segments of uneven sizes arrive in two joined runs (across the wraparound).
    let sizes = [1000u32, 1000, 700, 1000, 1000, 300, 1000];
    let mut ends = Vec::new();
    let mut at = start;
    for len in sizes {
        at = at.wrapping_add(len);
        ends.push(at);
    }
    off.on_peer_data(start, ends[2].wrapping_sub(start), &ends[..3]);
    off.on_peer_data(ends[2], at.wrapping_sub(ends[2]), &ends[3..]);
    let acks = off.on_our_ack(at).cumulative;
    assert_eq!(
        acks,
        [ends[1], ends[3], ends[5]],
        "every second segment end, the last one left to the ACK itself"
    );
    assert_eq!(off.wire_ack, Some(at));
    // Two segments need no ACK in between; an older ACK adds nothing.
    let e = [at.wrapping_add(1000), at.wrapping_add(2000)];
    off.on_peer_data(at, 2000, &e);
    assert_eq!(off.on_our_ack(e[1]), Added::default());
    assert_eq!(off.on_our_ack(start), Added::default());
    assert_eq!(off.wire_ack, Some(e[1]));
    // A hole repaired: ACKs only inside the run that arrived in order, not over the hole.
    let base = e[1];
    let run: Vec<u32> = (1..=4)
        .map(|k| base.wrapping_add(10_000 + 1000 * k))
        .collect();
    off.on_peer_data(base.wrapping_add(10_000), 4000, &run);
    assert_eq!(off.on_our_ack(run[3]).cumulative, [run[1]]);
    // The right edge stays where the final ACK puts it (rounded down to the scale).
    let (ack, window, shift) = (at, 300u16, 7u8);
    for a in acks {
        let w = window_for(ack, window, shift, a);
        let edge = a.wrapping_add(u32::from(w) << shift);
        let want = ack.wrapping_add(u32::from(window) << shift);
        assert!(
            want.wrapping_sub(edge) < 1 << shift,
            "{a}: {edge} vs {want}"
        );
    }
    assert_eq!(window_for(10, 65_535, 0, 0), u16::MAX, "capped");
}

#[test]
fn a_run_above_a_hole_gets_a_duplicate_ack_every_two_wire_segments() {
    let start = u32::MAX - 3000;
    let mut off = Offload::new(1000);
    assert_eq!(off.on_our_ack(start), Added::default());
    // Segment 0 is lost; 1..=5 arrive joined, then 6..=8, then 9 alone.
    let end = |k: u32| start.wrapping_add(1000 * (k + 1));
    let ends: Vec<u32> = (1..=5).map(end).collect();
    off.on_peer_data(end(0), 5000, &ends);
    let added = off.on_our_ack(start);
    assert!(added.cumulative.is_empty());
    assert_eq!(
        added.duplicate,
        [end(2), end(4)],
        "smoltcp's own ACK names 5"
    );
    let ends: Vec<u32> = (6..=8).map(end).collect();
    off.on_peer_data(end(5), 3000, &ends);
    assert_eq!(off.on_our_ack(start).duplicate, [end(7)]);
    off.on_peer_data(end(8), 1000, &[end(9)]);
    assert_eq!(off.on_our_ack(start), Added::default());
    // The hole fills: the ACK jumps over the run, nothing added over the repaired hole.
    off.on_peer_data(start, 1000, &[end(0)]);
    assert_eq!(off.on_our_ack(end(9)), Added::default());
    assert_eq!(off.wire_ack, Some(end(9)));
}

#[test]
fn an_intermediate_ack_is_a_pure_ack_with_valid_checksums() {
    let payload = [9u8; 500];
    let mut t = repr(TcpControl::Psh, 1234, 99, &payload);
    t.timestamp = Some(TcpTimestampRepr::new(5, 6));
    for p in [ipv4_tcp(SRC, DST, &t), ipv6_tcp(&t)] {
        let a = ack_at(&p, 50, 7).expect("tcp");
        let (seq, ack, flags, window, data, options) = check(&a);
        assert_eq!((seq, ack, flags, window), (1234, 50, ACK, 7));
        assert!(data.is_empty());
        assert_eq!(options, check(&p).5, "options kept (timestamps)");
        assert_eq!(seq_ack(&a), Some((0, 1234, Some(50))));
    }
}

/// Whether a receiver's GRO may join `pieces`, in this order, into one packet: the
/// conditions wireguard-go 0.0.20231211 checks before it writes TCP segments of one
/// flow to its TUN as one packet (tun/offload_linux.go; they follow Linux's GRO self
/// tests), written from those conditions. Returns the first one that fails.
fn gro_joinable(pieces: &[Bytes]) -> Result<(), String> {
    struct Piece<'a> {
        v6: bool,
        ip: &'a [u8],
        tcp: &'a [u8],
        payload: usize,
    }
    let mut parsed = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let v6 = p[0] >> 4 == 6;
        let ip_len = if v6 {
            // Only TCP right after the fixed header (no extension headers).
            if p[6] != 6 {
                return Err(format!("{i}: IPv6 next header {}", p[6]));
            }
            if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
                return Err(format!("{i}: IPv6 payload length"));
            }
            40
        } else {
            if p[0] & 0x0f != 5 {
                return Err(format!("{i}: IPv4 options"));
            }
            if p[9] != 6 {
                return Err(format!("{i}: not TCP"));
            }
            if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
                return Err(format!("{i}: IPv4 total length"));
            }
            if p[6] & 0x20 != 0 || u16::from_be_bytes([p[6] & 0x1f, p[7]]) != 0 {
                return Err(format!("{i}: a fragment"));
            }
            20
        };
        let tcp_len = usize::from(p[ip_len + 12] >> 4) * 4;
        if !(20..=60).contains(&tcp_len) || p.len() < ip_len + tcp_len {
            return Err(format!("{i}: TCP header length {tcp_len}"));
        }
        let flags = p[ip_len + 13];
        if flags != ACK && flags != ACK | PSH {
            return Err(format!(
                "{i}: flags {flags:#04x} (only ACK, or ACK and PSH)"
            ));
        }
        let payload = p.len() - ip_len - tcp_len;
        if payload == 0 {
            return Err(format!("{i}: no payload"));
        }
        let (src, dst) = addresses(p).ok_or("addresses")?;
        if !TcpPacket::new_checked(&p[ip_len..])
            .map_err(|e| e.to_string())?
            .verify_checksum(&src, &dst)
        {
            return Err(format!("{i}: TCP checksum"));
        }
        parsed.push(Piece {
            v6,
            ip: &p[..ip_len],
            tcp: &p[ip_len..ip_len + tcp_len],
            payload,
        });
    }
    let Some(first) = parsed.first() else {
        return Err("nothing".into());
    };
    let seq = |t: &[u8]| u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let addrs = |p: &Piece<'_>| -> Vec<u8> {
        if p.v6 {
            p.ip[8..40].to_vec()
        } else {
            p.ip[12..20].to_vec()
        }
    };
    let mut total = first.ip.len() + first.tcp.len();
    for (i, (prev, p)) in parsed.iter().zip(&parsed[1..]).enumerate() {
        let i = i + 1;
        // One flow: addresses, ports and the ACK number.
        if p.v6 != first.v6 || addrs(p) != addrs(first) || p.tcp[..4] != first.tcp[..4] {
            return Err(format!("{i}: another flow"));
        }
        if p.tcp[8..12] != first.tcp[8..12] {
            return Err(format!("{i}: another ACK number"));
        }
        // The same TCP header length and option bytes.
        if p.tcp.len() != first.tcp.len() || p.tcp[20..] != first.tcp[20..] {
            return Err(format!("{i}: other TCP options"));
        }
        // The IP fields GRO keeps from the first.
        if p.v6 {
            if p.ip[0] != first.ip[0] || p.ip[1] >> 4 != first.ip[1] >> 4 {
                return Err(format!("{i}: another traffic class"));
            }
            if p.ip[7] != first.ip[7] {
                return Err(format!("{i}: another hop limit"));
            }
        } else {
            if p.ip[1] != first.ip[1] {
                return Err(format!("{i}: another TOS"));
            }
            if p.ip[6] >> 5 != first.ip[6] >> 5 {
                return Err(format!("{i}: other DF or reserved bits"));
            }
            if p.ip[8] != first.ip[8] {
                return Err(format!("{i}: another TTL"));
            }
        }
        if seq(p.tcp) != seq(prev.tcp).wrapping_add(prev.payload as u32) {
            return Err(format!("{i}: does not follow the previous piece"));
        }
        if prev.tcp[13] & PSH != 0 {
            return Err(format!("{i}: follows a piece with PSH"));
        }
        if prev.payload != first.payload {
            return Err(format!(
                "{i}: follows a piece of {} bytes, the first has {}",
                prev.payload, first.payload
            ));
        }
        if p.payload > first.payload {
            return Err(format!("{i}: larger than the first"));
        }
        total += prev.payload;
    }
    total += parsed.last().map_or(0, |p| p.payload);
    if total > usize::from(u16::MAX) {
        return Err(format!("{total} bytes joined"));
    }
    Ok(())
}

/// A large segment as smoltcp emits it behind this stack's MSS rewrite: the largest
/// multiple of the wire segment under 64 KiB, PSH set (it emptied the send ring).
fn large_segment(make: &dyn Fn(&TcpRepr<'_>) -> Vec<u8>, seq: u32, payload: &[u8]) -> Vec<u8> {
    let big = make(&repr(TcpControl::Psh, seq, 77, payload));
    check(&big);
    let ip = if big[0] >> 4 == 4 { 20 } else { 40 };
    assert_eq!(big[ip + 13], ACK | PSH);
    big
}

fn split_pieces_are_joinable_by_gro(make: &dyn Fn(&TcpRepr<'_>) -> Vec<u8>) {
    const WIRE: usize = 1380;
    for len in [47 * WIRE, 20 * WIRE + 777, 2 * WIRE, WIRE + 1] {
        let payload: Vec<u8> = (0..len as u32).map(|i| (i * 31) as u8).collect();
        let big = large_segment(make, u32::MAX - 5_000, &payload);
        let mut out = Vec::new();
        assert!(split(&big, WIRE, &mut out).is_some());
        gro_joinable(&out).unwrap_or_else(|e| panic!("{len} bytes: {e}"));
    }
}

#[test]
fn the_pieces_of_a_large_segment_meet_the_gateways_gro_conditions_v4() {
    split_pieces_are_joinable_by_gro(&|t| ipv4_tcp(SRC, DST, t));
}

#[test]
fn the_pieces_of_a_large_segment_meet_the_gateways_gro_conditions_v6() {
    split_pieces_are_joinable_by_gro(&ipv6_tcp);
}

/// Two emissions of smoltcp in a row, the first ending short (it emptied the send ring
/// before the writer queued more): cut apart, the short piece in the middle stops the
/// gateway's GRO; joined to the data after it (`split_after`), every piece but the last
/// is full and the run is joinable, byte-exact.
fn a_short_piece_joined_to_the_next_emission(make: &dyn Fn(&TcpRepr<'_>) -> Vec<u8>) {
    const WIRE: usize = 1380;
    let data: Vec<u8> = (0..9_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let seq = u32::MAX - 4_000;
    let first = large_segment(make, seq, &data[..5_000]);
    let second = large_segment(make, seq.wrapping_add(5_000), &data[5_000..]);

    let mut apart = Vec::new();
    split(&first, WIRE, &mut apart).expect("cut");
    split(&second, WIRE, &mut apart).expect("cut");
    assert!(
        gro_joinable(&apart).is_err(),
        "a short piece followed by more is not joinable"
    );

    let mut joined = Vec::new();
    split(&first, WIRE, &mut joined).expect("cut");
    let tail = joined.pop().expect("a short last piece");
    let tail_payload = check(&tail).4;
    assert!(tail_payload.len() < WIRE);
    assert_eq!(
        split_after(&tail_payload, &second, WIRE, &mut joined),
        Some((tail_payload.len() + 4_000).div_ceil(WIRE))
    );
    gro_joinable(&joined).unwrap_or_else(|e| panic!("{e}"));
    let mut bytes = Vec::new();
    let mut next = seq;
    for piece in &joined {
        let (s, ack, _, _, payload, _) = check(piece);
        assert_eq!((s, ack), (next, 77));
        next = next.wrapping_add(payload.len() as u32);
        bytes.extend_from_slice(&payload);
    }
    assert_eq!(bytes, data);
    // A prefix is joined even when the whole fits one piece.
    let small = large_segment(make, seq.wrapping_add(10), &data[10..20]);
    let mut one = Vec::new();
    assert_eq!(split_after(&data[..10], &small, WIRE, &mut one), Some(1));
    assert_eq!(check(&one[0]).0, seq);
    assert_eq!(check(&one[0]).4, data[..20]);
}

#[test]
fn a_short_piece_joined_to_the_next_emission_keeps_the_run_joinable_v4() {
    a_short_piece_joined_to_the_next_emission(&|t| ipv4_tcp(SRC, DST, t));
}

#[test]
fn a_short_piece_joined_to_the_next_emission_keeps_the_run_joinable_v6() {
    a_short_piece_joined_to_the_next_emission(&ipv6_tcp);
}
