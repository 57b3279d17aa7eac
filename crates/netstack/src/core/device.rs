//! The smoltcp `Device` of one shard: one borrowed inbound packet at a time, outbound
//! packets appended to the shard's transmit batch.

use bytes::{Bytes, BytesMut};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Capabilities for `Medium::Ip` at `mtu`: checksums computed on transmit only
/// (WireGuard's AEAD already authenticates every inbound packet), no burst limit. With
/// `offload`, smoltcp computes no TCP checksum at all: the device fills it on segments
/// that go out as they are, and the shard on the pieces of the larger ones it splits
/// (one checksum pass per wire segment; see `offload.rs`).
pub(crate) fn capabilities(mtu: usize, offload: bool) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps.max_burst_size = None;
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.tcp = if offload {
        Checksum::None
    } else {
        Checksum::Tx
    };
    checksum.udp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    checksum.icmpv6 = Checksum::Tx;
    caps.checksum = checksum;
    caps
}

/// A smoltcp interface on `addrs` whose random generator starts from `seed` (`Medium::Ip`:
/// no hardware address). Building one draws from the generator in a fixed way, which the
/// SYN table's ISN prediction relies on (see `synq.rs`).
pub(crate) fn interface(
    caps: &DeviceCapabilities,
    seed: u64,
    addrs: &[smoltcp::wire::IpCidr],
    now: Instant,
) -> smoltcp::iface::Interface {
    let mut config = smoltcp::iface::Config::new(smoltcp::wire::HardwareAddress::Ip);
    config.random_seed = seed;
    let mut tx = Vec::new();
    let mut dev = Dev {
        rx: None,
        tx: &mut tx,
        tx_limit: 0,
        bytes_limit: 0,
        bytes: 0,
        fill_below: 0,
        caps,
        spare: None,
    };
    let mut iface = smoltcp::iface::Interface::new(config, &mut dev, now);
    iface.update_ip_addrs(|a| {
        for addr in addrs {
            // Capacity is 2: one address per family.
            let _ = a.push(*addr);
        }
    });
    iface
}

/// A device over one inbound packet and the outbound batch.
pub(crate) struct Dev<'a> {
    /// The packet smoltcp will read next, if any.
    pub(crate) rx: Option<&'a [u8]>,
    /// Where transmitted packets go.
    pub(crate) tx: &'a mut Vec<Bytes>,
    /// `transmit` refuses past this many queued packets (a backstop: the caller stops
    /// polling egress when the outbound queue is full).
    pub(crate) tx_limit: usize,
    /// `transmit` also refuses once this many bytes were transmitted through this device
    /// (smoltcp's segments may be large: the queue is bounded in bytes too).
    pub(crate) bytes_limit: usize,
    /// Bytes transmitted so far.
    pub(crate) bytes: usize,
    /// TCP segments up to this length get their checksum filled here (0: none, smoltcp
    /// fills them); longer ones are split by the shard, which fills each piece's.
    pub(crate) fill_below: usize,
    /// Capabilities handed to smoltcp.
    pub(crate) caps: &'a DeviceCapabilities,
    /// Buffers of large segments already split, for the next ones (see [`Spare`]).
    pub(crate) spare: Option<&'a mut Spare>,
}

/// Buffers of smoltcp's large segments that were split into wire segments and dropped,
/// kept for the next large segments: a fresh buffer costs an allocation of up to 64 KiB
/// and zeroing it (the zeroing alone was a tenth of the in-memory bulk bench's CPU).
/// smoltcp writes every byte of a segment but the padding of its TCP options, so a
/// reused buffer gets its headers zeroed and nothing of an earlier packet goes out.
/// At most [`Spare::MAX`] are kept; the shard empties it after each egress pass, so an
/// idle shard holds none.
#[derive(Debug, Default)]
pub(crate) struct Spare(Vec<BytesMut>);

impl Spare {
    /// Buffers kept at most.
    const MAX: usize = 4;
    /// Bytes zeroed at the start of a reused buffer: IPv6 and TCP headers with options.
    const HEADERS: usize = 40 + 60;

    /// Keeps `packet`'s buffer if nothing else refers to it and there is room.
    pub(crate) fn put(&mut self, packet: Bytes) {
        if self.0.len() < Self::MAX
            && let Ok(buf) = packet.try_into_mut()
        {
            self.0.push(buf);
        }
    }

    /// A buffer of `len` initialized bytes (the first [`Spare::HEADERS`] zeroed), from
    /// one kept no more than twice as long.
    fn take(&mut self, len: usize) -> Option<BytesMut> {
        let i = self
            .0
            .iter()
            .position(|b| b.len() >= len && b.len() <= 2 * len)?;
        let mut buf = self.0.swap_remove(i);
        buf.truncate(len);
        buf[..len.min(Self::HEADERS)].fill(0);
        Some(buf)
    }

    /// Drops every buffer kept.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

impl phy::Device for Dev<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let packet = self.rx.take()?;
        Some((Rx(packet), self.token()))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        (self.tx.len() < self.tx_limit && self.bytes < self.bytes_limit).then(|| self.token())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

impl Dev<'_> {
    fn token(&mut self) -> Tx<'_> {
        Tx {
            tx: self.tx,
            bytes: &mut self.bytes,
            fill_below: self.fill_below,
            spare: self.spare.as_deref_mut(),
        }
    }
}

/// Receive token: the borrowed packet.
pub(crate) struct Rx<'a>(&'a [u8]);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// Transmit token: appends one packet to the batch.
pub(crate) struct Tx<'a> {
    tx: &'a mut Vec<Bytes>,
    bytes: &'a mut usize,
    fill_below: usize,
    spare: Option<&'a mut Spare>,
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // A segment longer than `fill_below` is split, and its buffer comes back.
        let reused = (len > self.fill_below && self.fill_below > 0)
            .then_some(self.spare)
            .flatten()
            .and_then(|s| s.take(len));
        let mut buf = reused.unwrap_or_else(|| BytesMut::zeroed(len));
        let r = f(&mut buf);
        if len <= self.fill_below && crate::offload::flags(&buf).is_some() {
            crate::offload::fill_tcp_checksum(&mut buf);
        }
        *self.bytes += len;
        self.tx.push(buf.freeze());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_buffer_comes_back_with_its_headers_zeroed_and_bounded() {
        let mut spare = Spare::default();
        // A buffer shared elsewhere is not kept.
        let shared = Bytes::from(vec![0xee; 4000]);
        let other = shared.clone();
        spare.put(shared);
        assert!(spare.take(4000).is_none());
        drop(other);
        for _ in 0..Spare::MAX + 2 {
            spare.put(Bytes::from(vec![0xee; 4000]));
        }
        assert_eq!(spare.0.len(), Spare::MAX, "bounded");
        // Too long for the request: a smaller segment would keep 4 KB alive.
        assert!(spare.take(1000).is_none());
        let buf = spare.take(3000).expect("reused");
        assert_eq!(buf.len(), 3000);
        assert!(
            buf[..Spare::HEADERS].iter().all(|&b| b == 0),
            "headers zeroed"
        );
        assert!(spare.take(5000).is_none(), "none long enough");
        spare.clear();
        assert!(spare.take(3000).is_none());
    }
}
