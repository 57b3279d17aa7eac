//! The Internet checksum (RFC 1071) of the pieces `split` cuts, in the pass that copies
//! their payload.
//!
//! Words are added in native byte order into wide lanes and folded once at the end; RFC
//! 1071 (section 2, byte order independence) makes the folded native-order sum, stored in
//! native order, the same bytes as the big-endian computation.

use smoltcp::wire::IpAddress;

/// Bytes per step of the lane loops: 16 lanes of one 16-bit word each.
const STEP: usize = 32;
/// Steps a lane may take before it is flushed into the total: each adds at most
/// 0xffff, so 65,536 of them fit 32 bits.
const FLUSH_STEPS: usize = 1 << 16;

/// A running ones'-complement sum: the words added so far, not yet folded.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sum(u64);

impl Sum {
    /// Adds the 16-bit words of `data`, which starts at an even offset of the summed
    /// region (an odd last byte is padded with zero, as RFC 1071 does).
    pub(crate) fn add(&mut self, data: &[u8]) {
        let mut chunks = data.chunks_exact(STEP * FLUSH_STEPS);
        for block in chunks.by_ref() {
            self.add_block(block);
        }
        self.add_block(chunks.remainder());
    }

    /// [`Sum::add`] of `src` while copying it into `dst` (the same length): one pass.
    pub(crate) fn copy_add(&mut self, dst: &mut [u8], src: &[u8]) {
        debug_assert_eq!(dst.len(), src.len());
        let mut d = dst.chunks_exact_mut(STEP * FLUSH_STEPS);
        let mut s = src.chunks_exact(STEP * FLUSH_STEPS);
        for (d, s) in d.by_ref().zip(s.by_ref()) {
            self.copy_block(d, s);
        }
        self.copy_block(d.into_remainder(), s.remainder());
    }

    /// At most `FLUSH_STEPS` steps: lanes cannot overflow.
    fn add_block(&mut self, block: &[u8]) {
        let mut lanes = [0u32; STEP / 2];
        let mut steps = block.chunks_exact(STEP);
        for step in steps.by_ref() {
            for (lane, word) in lanes.iter_mut().zip(step.chunks_exact(2)) {
                *lane += u32::from(u16::from_ne_bytes([word[0], word[1]]));
            }
        }
        self.flush(&lanes);
        self.add_tail(steps.remainder());
    }

    /// [`Sum::add_block`] while copying.
    fn copy_block(&mut self, dst: &mut [u8], src: &[u8]) {
        let mut lanes = [0u32; STEP / 2];
        let mut d = dst.chunks_exact_mut(STEP);
        let mut s = src.chunks_exact(STEP);
        for (d, s) in d.by_ref().zip(s.by_ref()) {
            let s: &[u8; STEP] = s.try_into().unwrap_or(&[0; STEP]);
            d.copy_from_slice(s);
            for (lane, word) in lanes.iter_mut().zip(s.chunks_exact(2)) {
                *lane += u32::from(u16::from_ne_bytes([word[0], word[1]]));
            }
        }
        self.flush(&lanes);
        let (d, s) = (d.into_remainder(), s.remainder());
        d.copy_from_slice(s);
        self.add_tail(s);
    }

    fn flush(&mut self, lanes: &[u32]) {
        self.0 += lanes.iter().map(|&l| u64::from(l)).sum::<u64>();
    }

    /// Fewer than `STEP` bytes.
    fn add_tail(&mut self, tail: &[u8]) {
        let mut words = tail.chunks_exact(2);
        for word in words.by_ref() {
            self.0 += u64::from(u16::from_ne_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            self.0 += u64::from(u16::from_ne_bytes([*last, 0]));
        }
    }

    /// Adds the TCP pseudo header of a segment of `len` bytes (header included).
    pub(crate) fn add_tcp_pseudo_header(&mut self, src: &IpAddress, dst: &IpAddress, len: usize) {
        match (src, dst) {
            (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
                self.add(&s.octets());
                self.add(&d.octets());
            }
            (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                self.add(&s.octets());
                self.add(&d.octets());
            }
            // One family per packet: `addresses` reads both from one header.
            _ => {}
        }
        // Zero, protocol (6), then the length: 32 bits for IPv6 (RFC 8200), 16 for IPv4
        // (the same words while the length fits 16 bits, as every segment's does).
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.add(&[0, 6]);
        self.add(&len.to_be_bytes());
    }

    /// The checksum field: the folded sum's complement, in the bytes the wire carries.
    pub(crate) fn field(self) -> [u8; 2] {
        let mut s = self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        (!(s as u16)).to_ne_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Ipv4Address, Ipv6Address, TcpPacket};

    /// Pseudo-random bytes (a fixed LCG): no test data depends on a seed elsewhere.
    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn copy_add_copies_and_sums_as_add_does_at_every_length() {
        for n in (0..100).chain([1379, 1380, 1381, 4095, 65_535, STEP * 3 + 7]) {
            let src = bytes(n, n as u32);
            let mut dst = vec![0u8; n];
            let (mut a, mut b) = (Sum::default(), Sum::default());
            a.add(&src);
            b.copy_add(&mut dst, &src);
            assert_eq!(dst, src, "{n} bytes copied");
            assert_eq!(a.field(), b.field(), "{n} bytes summed");
        }
    }

    #[test]
    fn long_runs_of_ones_do_not_overflow_a_lane() {
        // 0xffff words everywhere: the worst case for the lanes and the fold.
        let src = vec![0xffu8; STEP * FLUSH_STEPS * 2 + 33];
        let mut sum = Sum::default();
        sum.add(&src);
        // An even count of 0xffff words folds to 0xffff: the field is 0.
        let words = src.len() / 2;
        let mut want = (words as u64) * 0xffff + u64::from(u16::from_ne_bytes([0xff, 0]));
        while want > 0xffff {
            want = (want & 0xffff) + (want >> 16);
        }
        assert_eq!(sum.field(), (!(want as u16)).to_ne_bytes());
    }

    /// A TCP segment (20-byte header, then payload) checked by smoltcp.
    fn verify(src: IpAddress, dst: IpAddress, payload_len: usize) {
        let mut segment = bytes(20 + payload_len, payload_len as u32 + 1);
        segment[12] = 5 << 4; // data offset: 5 words
        segment[16..18].fill(0);
        let mut sum = Sum::default();
        sum.add_tcp_pseudo_header(&src, &dst, segment.len());
        sum.add(&segment);
        let field = sum.field();
        segment[16..18].copy_from_slice(&field);
        let packet = TcpPacket::new_unchecked(&segment[..]);
        assert!(
            packet.verify_checksum(&src, &dst),
            "{payload_len} bytes of payload"
        );
    }

    #[test]
    fn tcp_checksums_verify_with_smoltcp_for_both_families() {
        let v4 = (
            IpAddress::Ipv4(Ipv4Address::new(10, 1, 0, 100)),
            IpAddress::Ipv4(Ipv4Address::new(10, 1, 0, 1)),
        );
        let v6 = (
            IpAddress::Ipv6(Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x64)),
            IpAddress::Ipv6(Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        );
        for n in [0, 1, 2, 31, 32, 33, 1379, 1380, 1400] {
            verify(v4.0, v4.1, n);
            verify(v6.0, v6.1, n);
        }
    }
}
