//! Segmentation offload inside the stack: smoltcp works in large TCP segments (up to
//! about 64 KiB) while the wire keeps the path's MSS.
//!
//! - SYNs: the MSS option is rewritten in both directions ([`rewrite_mss`]). smoltcp is
//!   told the peer accepts a large multiple of the wire segment size; the peer is told
//!   the path's MSS, not the large one smoltcp derives from its internal MTU.
//! - Outbound: a segment larger than the connection's wire segment is cut into wire
//!   segments ([`split`]): consecutive sequence numbers, the same options, FIN and PSH
//!   only on the last piece, one checksum pass per piece. The sender (`sender.rs`) only
//!   ever sees wire segments.
//! - Inbound: in-order data segments of one connection from one batch are joined into
//!   one ([`Merge`]) before smoltcp sees them. Only pure data (ACK, optionally PSH) with
//!   identical options and contiguous sequence numbers is joined, so a hole, a
//!   retransmission, a control flag or an older ACK ends a run.
//! - ACKs: smoltcp acknowledges a joined segment once; [`ack_at`] builds the cumulative
//!   ACKs in between, so the peer gets one ACK per two wire segments at least.
//! - Windows: every window we announce is one scale unit short of smoltcp's, and never
//!   short of one announced before ([`Offload::kept_window`]), so the peer never sends
//!   past the edge smoltcp takes data up to.
//!
//! Sans-IO and allocation-light: everything works on packet bytes. Checksums are not
//! filled on joined inbound segments: the device does not verify them (WireGuard's AEAD
//! authenticates every inbound packet).

pub(crate) mod sack;

use bytes::{Bytes, BytesMut};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Packet, Ipv6Packet, TcpPacket};

mod checksum;
use checksum::Sum;

/// The IP MTU smoltcp works in when segmentation offload is on: the largest IPv4 packet.
pub(crate) const SEGMENT_MTU: usize = 65_535;

pub(crate) const FIN: u8 = 0x01;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// Per-connection state of the offload.
#[derive(Debug, Clone)]
pub(crate) struct Offload {
    /// Largest payload of one segment on the wire towards the peer (its MSS bounded by
    /// the path MTU), options not counted.
    pub(crate) wire_mss: u16,
    /// The window scale we announced in our SYN, if any.
    our_scale: Option<u8>,
    /// The peer's SYN carried a window scale option.
    peer_scales: bool,
    /// The highest ACK number that went out on this connection.
    pub(crate) wire_ack: Option<u32>,
    /// Where each wire segment that arrived since our last ACK ended, in arrival order
    /// (at most [`MAX_ENDS`]).
    ends: Vec<u32>,
    /// The out-of-order data held, for the SACK option of our ACKs.
    pub(crate) sack: sack::Sack,
    /// The last data smoltcp emitted was cut with a short piece of the data before
    /// joined in front (`split_after`): its wire segments are offset from smoltcp's cuts,
    /// so a short piece ending it comes from that offset, not from a window edge, and is
    /// joined to the data after it too (see `Sender::unsent_tail`).
    pub(crate) carried: bool,
    /// The right edge of the window we announced last (see [`Offload::kept_window`]).
    edge: Option<u32>,
}

/// Wire segment ends remembered per connection between two ACKs of smoltcp (it ACKs
/// after each inbound batch; a batch holds far fewer segments).
const MAX_ENDS: usize = 1024;

impl Offload {
    /// A connection on a path whose MSS is `path_mss` (until the peer's SYN says less).
    pub(crate) fn new(path_mss: u16) -> Self {
        Self {
            wire_mss: path_mss,
            our_scale: None,
            peer_scales: false,
            wire_ack: None,
            ends: Vec::new(),
            sack: sack::Sack::default(),
            carried: false,
            edge: None,
        }
    }

    /// The window field to announce with `ack` in place of smoltcp's `window`.
    ///
    /// smoltcp takes data only up to the right edge its latest segment announced, and
    /// rounds the window down to the scale unit; so as its ACK number advances by other
    /// than a multiple of the unit, that edge moves back by up to a unit, and bytes the
    /// peer sent to an earlier edge are cut (it has room for them). Each edge smoltcp
    /// announces lies within one unit below the end of its ring's free space, and that
    /// end never moves back. So an edge one unit below any smoltcp announced is below
    /// every edge it will announce: we announce the furthest such edge so far. The
    /// window is a unit smaller than smoltcp's, and no edge on the wire moves back.
    pub(crate) fn kept_window(&mut self, ack: u32, window: u16) -> u16 {
        let shift = self.shift();
        if shift == 0 {
            // Exact windows: smoltcp's edge never moves back.
            return window;
        }
        let below = ack
            .wrapping_add(u32::from(window) << shift)
            .wrapping_sub(1 << shift);
        let edge = match self.edge {
            Some(e) if seq_ge(e, below) => e,
            _ => below,
        };
        self.edge = Some(edge);
        if !seq_ge(edge, ack) {
            return 0;
        }
        u16::try_from(edge.wrapping_sub(ack) >> shift).unwrap_or(u16::MAX)
    }

    /// The shift of the windows we advertise.
    pub(crate) fn shift(&self) -> u8 {
        match self.our_scale {
            Some(s) if self.peer_scales => s,
            _ => 0,
        }
    }

    /// Our SYN (or SYN-ACK) is on its way out: record its window scale.
    pub(crate) fn on_our_syn(&mut self, packet: &[u8]) {
        let opts = options(packet).unwrap_or_default();
        self.our_scale = opts.scale;
        self.sack.on_our_syn(opts.sack_permitted);
    }

    /// The peer's SYN (or SYN-ACK) arrived (`packet`, before any rewrite): record its
    /// window scale and MSS; returns the MSS to announce to smoltcp instead, a multiple
    /// of the wire segment no larger than `smoltcp_mss`. `None`: leave the SYN alone
    /// (no MSS option: smoltcp then uses 536 bytes, which needs no splitting).
    pub(crate) fn on_peer_syn(
        &mut self,
        packet: &[u8],
        path_mss: u16,
        smoltcp_mss: u16,
    ) -> Option<u16> {
        let opts = options(packet)?;
        self.sack.on_peer_syn(opts.sack_permitted);
        self.peer_scales = opts.scale.is_some();
        let peer = opts.mss?;
        self.wire_mss = peer.clamp(64, path_mss.max(64));
        let k = (smoltcp_mss / self.wire_mss).max(1);
        Some(k * self.wire_mss)
    }

    /// A data segment (maybe joined) of `len` payload bytes at `seq` arrived from the
    /// peer; `ends` are where its wire segments ended.
    pub(crate) fn on_peer_data(&mut self, seq: u32, len: u32, ends: &[u32]) {
        let room = MAX_ENDS.saturating_sub(self.ends.len());
        self.ends.extend(ends.iter().take(room));
        self.sack.on_data(seq, len);
    }

    /// We emit a segment acknowledging `ack`: returns the ACKs to send before it, and
    /// records `ack` as sent. Of the wire segments that arrived since the last ACK, those
    /// `ack` covers get cumulative ACKs at every second end (each with [`window_for`]);
    /// those above it (out of order) get duplicate ACKs of `ack` at every second end, each
    /// naming its run up to that end (RFC 5681 section 4.2 asks for one per segment; one
    /// per two is what a joined run allows). A repaired hole gets no partial ACK: the
    /// data above it was answered when it arrived, so the ACK jumps as Linux's does.
    pub(crate) fn on_our_ack(&mut self, ack: u32) -> Added {
        let mut out = Added::default();
        if let Some(wire) = self.wire_ack {
            let mut covered: Vec<u32> = self
                .ends
                .iter()
                .copied()
                .filter(|&e| seq_ge(ack, e) && !seq_ge(wire, e))
                .collect();
            covered.sort_by_key(|&e| e.wrapping_sub(wire));
            for (i, &e) in covered.iter().enumerate() {
                if i % 2 == 1 && e != ack {
                    out.cumulative.push(e);
                }
            }
            let above: Vec<u32> = self
                .ends
                .iter()
                .copied()
                .filter(|&e| !seq_ge(ack, e))
                .collect();
            for (i, &e) in above.iter().enumerate() {
                if i % 2 == 1 && i + 1 < above.len() {
                    out.duplicate.push(e);
                }
            }
        }
        self.ends.clear();
        if self.wire_ack.is_none_or(|w| seq_ge(ack, w)) {
            self.wire_ack = Some(ack);
        }
        out
    }
}

/// The ACKs the stack adds before one of smoltcp's (see [`Offload::on_our_ack`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Added {
    /// Cumulative ACK numbers inside in-order data.
    pub(crate) cumulative: Vec<u32>,
    /// Duplicate ACKs, each by where the out-of-order run it names ends.
    pub(crate) duplicate: Vec<u32>,
}

/// Options of a TCP header this module reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Options {
    mss: Option<u16>,
    /// Byte offset of the MSS value within the packet.
    mss_at: Option<usize>,
    scale: Option<u8>,
    /// The SACK-permitted option (RFC 2018).
    sack_permitted: bool,
}

/// The source and destination of a TCP segment.
pub(crate) fn endpoints(packet: &[u8]) -> Option<(IpEndpoint, IpEndpoint)> {
    let (ip, _) = headers(packet)?;
    let (src, dst) = addresses(packet)?;
    let port = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    Some((
        IpEndpoint::new(src, port(ip)),
        IpEndpoint::new(dst, port(ip + 2)),
    ))
}

/// The IP header length of a TCP packet (IPv4 with any header length, IPv6 without
/// extension headers), with the TCP header length; `None` for anything else or when
/// the headers do not fit.
fn headers(packet: &[u8]) -> Option<(usize, usize)> {
    let ip = match packet.first()? >> 4 {
        4 if *packet.get(9)? == 6 => usize::from(packet[0] & 0x0f) * 4,
        6 if *packet.get(6)? == 6 => 40,
        _ => return None,
    };
    if ip < 20 {
        return None;
    }
    let tcp = usize::from(*packet.get(ip + 12)? >> 4) * 4;
    (tcp >= 20 && packet.len() >= ip + tcp).then_some((ip, tcp))
}

fn options(packet: &[u8]) -> Option<Options> {
    let (ip, tcp) = headers(packet)?;
    let mut out = Options::default();
    let mut i = ip + 20;
    let end = ip + tcp;
    while i < end {
        match packet[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(*packet.get(i + 1)?);
                if len < 2 || i + len > end {
                    break;
                }
                match (kind, len) {
                    (2, 4) => {
                        out.mss = Some(u16::from_be_bytes([packet[i + 2], packet[i + 3]]));
                        out.mss_at = Some(i + 2);
                    }
                    (3, 3) => out.scale = Some(packet[i + 2].min(14)),
                    (4, 2) => out.sack_permitted = true,
                    _ => {}
                }
                i += len;
            }
        }
    }
    Some(out)
}

pub(crate) fn has_psh(packet: &[u8]) -> bool {
    flags(packet).is_some_and(|f| f & PSH != 0)
}

/// The TCP flags of `packet`, if it is a TCP segment.
pub(crate) fn flags(packet: &[u8]) -> Option<u8> {
    let (ip, _) = headers(packet)?;
    Some(packet[ip + 13])
}

/// Whether `packet` is a TCP segment with SYN set.
pub(crate) fn is_syn(packet: &[u8]) -> bool {
    flags(packet).is_some_and(|f| f & SYN != 0)
}

/// Replaces the MSS option of `packet` (a TCP segment) with `mss`, updating the TCP
/// checksum incrementally; returns the old value, `None` when it has no MSS option.
pub(crate) fn rewrite_mss(packet: &mut [u8], mss: u16) -> Option<u16> {
    let (ip, _) = headers(packet)?;
    let opts = options(packet)?;
    let (old, at) = (opts.mss?, opts.mss_at?);
    if old != mss {
        // The option starts at an even offset from the TCP header when it is aligned
        // (it always is in practice); otherwise the 16-bit words straddle it.
        let word_at = |k: usize| ip + ((k - ip) & !1);
        let a = word_at(at);
        let b = word_at(at + 1);
        let words = |p: &[u8]| {
            (
                u16::from_be_bytes([p[a], p[a + 1]]),
                u16::from_be_bytes([p[b], p[b + 1]]),
            )
        };
        let (old_a, old_b) = words(packet);
        packet[at..at + 2].copy_from_slice(&mss.to_be_bytes());
        let (new_a, new_b) = words(packet);
        let c = ip + 16;
        let mut check = u16::from_be_bytes([packet[c], packet[c + 1]]);
        check = crate::wire::checksum_update(check, old_a, new_a);
        if b != a {
            check = crate::wire::checksum_update(check, old_b, new_b);
        }
        packet[c..c + 2].copy_from_slice(&check.to_be_bytes());
    }
    Some(old)
}

fn addresses(packet: &[u8]) -> Option<(IpAddress, IpAddress)> {
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            Some((ip.src_addr().into(), ip.dst_addr().into()))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            Some((ip.src_addr().into(), ip.dst_addr().into()))
        }
        _ => None,
    }
}

/// Sets the IP length field of `packet` (whose IP header is `ip` bytes long) to its
/// length, and refills the IPv4 header checksum.
fn set_ip_len(packet: &mut [u8], ip: usize) {
    let total = u16::try_from(packet.len()).unwrap_or(u16::MAX);
    if packet[0] >> 4 == 4 {
        let mut p = Ipv4Packet::new_unchecked(&mut packet[..]);
        p.set_total_len(total);
        p.fill_checksum();
    } else {
        packet[4..6].copy_from_slice(&(total - ip as u16).to_be_bytes());
    }
}

/// Fills the TCP checksum of `packet` (a TCP segment) over its whole length.
pub(crate) fn fill_tcp_checksum(packet: &mut [u8]) {
    let (Some((ip, _)), Some((src, dst))) = (headers(packet), addresses(packet)) else {
        return;
    };
    TcpPacket::new_unchecked(&mut packet[ip..]).fill_checksum(&src, &dst);
}

/// Cuts `packet` (a TCP segment) into segments of at most `max_payload` payload bytes,
/// appended to `out`; returns how many, `None` (nothing appended) when it needs no cut
/// or is not a data segment. Each piece has the headers and options of the original,
/// its own sequence number, IP length, IPv4 identification and checksums; FIN and PSH
/// stay on the last piece. A piece's payload is summed in the pass that copies it
/// (`checksum.rs`): the payload is read once.
pub(crate) fn split(packet: &[u8], max_payload: usize, out: &mut Vec<Bytes>) -> Option<usize> {
    let (ip, tcp) = headers(packet)?;
    if packet.len() - ip - tcp <= max_payload {
        return None;
    }
    split_after(&[], packet, max_payload, out)
}

/// [`split`] of `prefix` followed by `packet`'s payload: the pieces start `prefix.len()`
/// bytes before `packet`'s sequence number and carry `packet`'s headers otherwise. This
/// joins a short piece not sent yet (the end of what smoltcp emitted before) to the data
/// that follows it, so that only the end of the stream's data so far is shorter than a
/// wire segment. Cuts even when the whole fits one piece (it is a new packet then);
/// `None` (nothing appended) when `packet` is not a data segment.
pub(crate) fn split_after(
    prefix: &[u8],
    packet: &[u8],
    max_payload: usize,
    out: &mut Vec<Bytes>,
) -> Option<usize> {
    let (ip, tcp) = headers(packet)?;
    let head = ip + tcp;
    let payload = &packet[head..];
    if max_payload == 0 || payload.is_empty() || packet[ip + 13] & (SYN | RST) != 0 {
        return None;
    }
    let (src, dst) = addresses(packet)?;
    let seq = u32::from_be_bytes(packet[ip + 4..ip + 8].try_into().ok()?)
        .wrapping_sub(u32::try_from(prefix.len()).ok()?);
    let ident = u16::from_be_bytes([packet[4], packet[5]]);
    let total = prefix.len() + payload.len();
    let pieces = total.div_ceil(max_payload);
    // One allocation for all pieces, each a view into it.
    let mut buf = BytesMut::zeroed(pieces * head + total);
    let mut bounds = Vec::with_capacity(pieces);
    let mut at = 0;
    for i in 0..pieces {
        let from = i * max_payload;
        let len = max_payload.min(total - from);
        let end = at + head + len;
        let p = &mut buf[at..end];
        p[..head].copy_from_slice(&packet[..head]);
        if p[0] >> 4 == 4 {
            // Linux's TSO numbers the pieces too (RFC 6864 allows either with DF).
            p[4..6].copy_from_slice(&ident.wrapping_add(i as u16).to_be_bytes());
        }
        set_ip_len(p, ip);
        let s = seq.wrapping_add(from as u32);
        p[ip + 4..ip + 8].copy_from_slice(&s.to_be_bytes());
        if i + 1 < pieces {
            p[ip + 13] &= !(FIN | PSH);
        }
        p[ip + 16..ip + 18].fill(0);
        let mut sum = Sum::default();
        sum.add_tcp_pseudo_header(&src, &dst, end - at - ip);
        sum.add(&p[ip..head]);
        if from >= prefix.len() {
            let chunk = &payload[from - prefix.len()..from - prefix.len() + len];
            sum.copy_add(&mut p[head..], chunk);
        } else {
            // The piece holding (part of) the prefix: copied, then summed.
            let own = len.min(prefix.len() - from);
            p[head..head + own].copy_from_slice(&prefix[from..from + own]);
            p[head + own..].copy_from_slice(&payload[..len - own]);
            sum.add(&p[head..]);
        }
        p[ip + 16..ip + 18].copy_from_slice(&sum.field());
        bounds.push(at..end);
        at = end;
    }
    let all = buf.freeze();
    out.extend(bounds.into_iter().map(|r| all.slice(r)));
    Some(pieces)
}

/// The payload length, sequence number and ACK number (when ACK is set) of a TCP
/// segment.
pub(crate) fn seq_ack(packet: &[u8]) -> Option<(usize, u32, Option<u32>)> {
    let (ip, tcp) = headers(packet)?;
    let seq = u32::from_be_bytes(packet[ip + 4..ip + 8].try_into().ok()?);
    let ack = u32::from_be_bytes(packet[ip + 8..ip + 12].try_into().ok()?);
    let has_ack = packet[ip + 13] & ACK != 0;
    Some((packet.len() - ip - tcp, seq, has_ack.then_some(ack)))
}

/// The ACK number of a pure ACK (only the ACK flag, no payload).
pub(crate) fn pure_ack(packet: &[u8]) -> Option<u32> {
    let (ip, tcp) = headers(packet)?;
    (packet[ip + 13] == ACK && packet.len() == ip + tcp).then(|| {
        u32::from_be_bytes([
            packet[ip + 8],
            packet[ip + 9],
            packet[ip + 10],
            packet[ip + 11],
        ])
    })
}

/// `a` is at or after `b` in sequence space.
pub(crate) fn seq_at_or_after(a: u32, b: u32) -> bool {
    seq_ge(a, b)
}

/// The TCP header length of `packet` minus 20 (its options), if it is a TCP segment.
pub(crate) fn options_len(packet: &[u8]) -> Option<usize> {
    headers(packet).map(|(_, tcp)| tcp - 20)
}

/// A pure ACK with the headers of `packet` (a TCP segment we emit), acknowledging `ack`
/// with window field `window`: no payload, only the ACK flag, checksums filled.
pub(crate) fn ack_at(packet: &[u8], ack: u32, window: u16) -> Option<Bytes> {
    let (ip, tcp) = headers(packet)?;
    let (src, dst) = addresses(packet)?;
    let mut buf = BytesMut::from(&packet[..ip + tcp]);
    let p = &mut buf[..];
    set_ip_len(p, ip);
    p[ip + 8..ip + 12].copy_from_slice(&ack.to_be_bytes());
    p[ip + 13] = ACK;
    p[ip + 14..ip + 16].copy_from_slice(&window.to_be_bytes());
    TcpPacket::new_unchecked(&mut p[ip..]).fill_checksum(&src, &dst);
    Some(buf.freeze())
}

/// The blocks of the SACK option of `packet` (a TCP segment), in option order; empty
/// without one.
pub(crate) fn sack_blocks(packet: &[u8]) -> Vec<(u32, u32)> {
    let Some((ip, tcp)) = headers(packet) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (mut i, end) = (ip + 20, ip + tcp);
    while i < end {
        match packet[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(packet.get(i + 1).copied().unwrap_or(0));
                if len < 2 || i + len > end {
                    break;
                }
                if kind == 5 {
                    for b in packet[i + 2..i + len].chunks_exact(8) {
                        let word =
                            |k: usize| u32::from_be_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]]);
                        out.push((word(0), word(4)));
                    }
                }
                i += len;
            }
        }
    }
    out
}

/// How many SACK blocks fit beside the other options of `packet` (a TCP segment).
pub(crate) fn sack_room(packet: &[u8]) -> usize {
    let Some(kept) = kept_options(packet) else {
        return 0;
    };
    (40usize.saturating_sub(kept.len() + 4) / 8).min(sack::MAX_BLOCKS)
}

/// The options of `packet` other than SACK, up to the end-of-list option, verbatim.
fn kept_options(packet: &[u8]) -> Option<Vec<u8>> {
    let (ip, tcp) = headers(packet)?;
    let mut out = Vec::with_capacity(tcp - 20);
    let (mut i, end) = (ip + 20, ip + tcp);
    while i < end {
        match packet[i] {
            0 => break,
            1 => {
                out.push(1);
                i += 1;
            }
            kind => {
                let len = usize::from(*packet.get(i + 1)?);
                if len < 2 || i + len > end {
                    return None;
                }
                if kind != 5 {
                    out.extend_from_slice(&packet[i..i + len]);
                }
                i += len;
            }
        }
    }
    Some(out)
}

/// `packet` (a TCP segment without payload) with its SACK option replaced by `blocks`
/// (none: removed), after the other options; lengths and checksums refilled. `None` when
/// the blocks do not fit or `packet` carries data.
pub(crate) fn with_sack(packet: &[u8], blocks: &[(u32, u32)]) -> Option<Bytes> {
    let (ip, tcp) = headers(packet)?;
    if packet.len() != ip + tcp || blocks.len() > sack_room(packet) {
        return None;
    }
    let (src, dst) = addresses(packet)?;
    let mut options = kept_options(packet)?;
    if !blocks.is_empty() {
        options.extend_from_slice(&[1, 1, 5, 2 + 8 * blocks.len() as u8]);
        for &(s, e) in blocks {
            options.extend_from_slice(&s.to_be_bytes());
            options.extend_from_slice(&e.to_be_bytes());
        }
    }
    while options.len() % 4 != 0 {
        options.push(0);
    }
    let mut buf = BytesMut::with_capacity(ip + 20 + options.len());
    buf.extend_from_slice(&packet[..ip + 20]);
    buf.extend_from_slice(&options);
    let p = &mut buf[..];
    p[ip + 12] = (((20 + options.len()) / 4) as u8) << 4 | (p[ip + 12] & 0x0f);
    set_ip_len(p, ip);
    TcpPacket::new_unchecked(&mut p[ip..]).fill_checksum(&src, &dst);
    Some(buf.freeze())
}

/// `packet` (a TCP segment with FIN) without its payload: the bare FIN after it, sequence
/// number moved past the data, lengths and checksums refilled.
pub(crate) fn bare_fin(packet: &[u8]) -> Option<Vec<u8>> {
    let (ip, tcp) = headers(packet)?;
    let (src, dst) = addresses(packet)?;
    let len = u32::try_from(packet.len() - ip - tcp).ok()?;
    let seq = u32::from_be_bytes(packet[ip + 4..ip + 8].try_into().ok()?);
    let mut p = packet[..ip + tcp].to_vec();
    p[ip + 4..ip + 8].copy_from_slice(&seq.wrapping_add(len).to_be_bytes());
    p[ip + 13] &= !PSH;
    set_ip_len(&mut p, ip);
    TcpPacket::new_unchecked(&mut p[ip..]).fill_checksum(&src, &dst);
    Some(p)
}

/// The window field of `packet` (a TCP segment).
pub(crate) fn window(packet: &[u8]) -> Option<u16> {
    let (ip, _) = headers(packet)?;
    Some(u16::from_be_bytes([packet[ip + 14], packet[ip + 15]]))
}

/// `a` is at or after `b` in sequence space.
fn seq_ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// The window field that keeps the right edge `ack + (window << shift)` for an ACK of
/// `at` (at or before `ack`), rounded down.
pub(crate) fn window_for(ack: u32, window: u16, shift: u8, at: u32) -> u16 {
    let edge = u64::from(ack.wrapping_sub(at)) + (u64::from(window) << shift);
    u16::try_from(edge >> shift).unwrap_or(u16::MAX)
}

/// In-order data segments of one connection joined into one (see the module docs).
pub(crate) struct Merge {
    buf: Vec<u8>,
    /// IP and TCP header lengths (equal in every joined segment).
    ip: usize,
    tcp: usize,
    /// Sequence number after the last payload byte.
    next: u32,
    /// Segments joined so far.
    pub(crate) segments: u32,
    /// Where each of them ends.
    pub(crate) ends: Vec<u32>,
}

impl Merge {
    /// Starts a run with `packet` if it may be joined with later ones, in `buf` (cleared;
    /// handed back by [`Merge::finish`] or [`Merge::into_buf`] for reuse).
    pub(crate) fn start(packet: &[u8], mut buf: Vec<u8>) -> Result<Self, Vec<u8>> {
        let Some((ip, tcp, seq, len)) = Self::eligible(packet) else {
            return Err(buf);
        };
        buf.clear();
        buf.reserve(SEGMENT_MTU);
        buf.extend_from_slice(packet);
        Ok(Self {
            buf,
            ip,
            tcp,
            next: seq.wrapping_add(len as u32),
            segments: 1,
            ends: vec![seq.wrapping_add(len as u32)],
        })
    }

    /// Header lengths, sequence number and payload length of a segment that may be
    /// joined: pure data (ACK, maybe PSH), IP length equal to the packet's, IPv4
    /// without options.
    fn eligible(packet: &[u8]) -> Option<(usize, usize, u32, usize)> {
        let (ip, tcp) = headers(packet)?;
        let declared = match packet[0] >> 4 {
            4 if ip == 20 => usize::from(u16::from_be_bytes([packet[2], packet[3]])),
            6 => 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]])),
            _ => return None,
        };
        let flags = packet[ip + 13];
        let len = packet.len() - ip - tcp;
        if declared != packet.len() || flags & !PSH != ACK || len == 0 {
            return None;
        }
        let seq = u32::from_be_bytes(packet[ip + 4..ip + 8].try_into().ok()?);
        Some((ip, tcp, seq, len))
    }

    /// Joins `packet` (a segment of the same connection) if it continues the run;
    /// returns whether it did.
    pub(crate) fn push(&mut self, packet: &[u8]) -> bool {
        let Some((ip, tcp, seq, len)) = Self::eligible(packet) else {
            return false;
        };
        let (hi, ht) = (self.ip, self.tcp);
        let head = hi + ht;
        let last = &self.buf;
        let same = ip == hi
            && tcp == ht
            && seq == self.next
            // Same ports (the caller groups by 4-tuple), same ECN/DSCP byte, same
            // options (timestamps included, as GRO requires).
            && packet[hi..hi + 4] == last[hi..hi + 4]
            && tos(packet) == tos(last)
            && packet[hi + 20..head] == last[hi + 20..head]
            && self.buf.len() + len <= SEGMENT_MTU
            && seq_ge(
                u32::from_be_bytes(packet[ip + 8..ip + 12].try_into().unwrap_or_default()),
                u32::from_be_bytes(last[hi + 8..hi + 12].try_into().unwrap_or_default()),
            );
        if !same {
            return false;
        }
        // The newest ACK number and window; PSH if any piece had it.
        let psh = self.buf[hi + 13] & PSH;
        self.buf[hi + 8..hi + 12].copy_from_slice(&packet[hi + 8..hi + 12]);
        self.buf[hi + 13] = packet[hi + 13] | psh;
        self.buf[hi + 14..hi + 16].copy_from_slice(&packet[hi + 14..hi + 16]);
        self.buf.extend_from_slice(&packet[head..]);
        self.next = seq.wrapping_add(len as u32);
        self.segments += 1;
        self.ends.push(self.next);
        true
    }

    /// The buffer, for the next run.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// The joined segment (lengths updated; checksums not refilled, see the module docs).
    pub(crate) fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        let ip = self.ip;
        set_ip_len(&mut self.buf, ip);
        (self.buf, self.ends)
    }
}

/// The IPv4 TOS or IPv6 traffic class byte.
fn tos(packet: &[u8]) -> u8 {
    if packet[0] >> 4 == 4 {
        packet[1]
    } else {
        (packet[0] << 4) | (packet[1] >> 4)
    }
}

#[cfg(test)]
mod tests;
