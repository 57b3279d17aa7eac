//! The smoltcp `Device` of one shard: one borrowed inbound packet at a time, outbound
//! packets appended to the shard's transmit batch.

use bytes::{Bytes, BytesMut};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Capabilities for `Medium::Ip` at `mtu`: checksums computed on transmit only
/// (WireGuard's AEAD already authenticates every inbound packet), no burst limit.
pub(crate) fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps.max_burst_size = None;
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.tcp = Checksum::Tx;
    checksum.udp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    checksum.icmpv6 = Checksum::Tx;
    caps.checksum = checksum;
    caps
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
    /// Capabilities handed to smoltcp.
    pub(crate) caps: &'a DeviceCapabilities,
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
        Some((Rx(packet), Tx(self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        (self.tx.len() < self.tx_limit).then_some(Tx(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
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
pub(crate) struct Tx<'a>(&'a mut Vec<Bytes>);

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = BytesMut::zeroed(len);
        let r = f(&mut buf);
        self.0.push(buf.freeze());
        r
    }
}
