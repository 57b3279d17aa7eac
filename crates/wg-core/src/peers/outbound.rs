//! Outbound packets: the rare cases of `Peers::handle_ip_packet` (its per-packet path is inline
//! in `peers.rs`).

use super::*;

impl Peers {
    /// boringtun had no session and wrote a handshake initiation instead of the data (which it
    /// queued): an idle peer is connecting since the time of the packet.
    #[cold]
    pub(super) fn initiation_sent(&mut self, slot: usize) {
        let Some(peer) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Some(now) = peer.last_data_sent else {
            return;
        };
        if peer.lifecycle.initiation_sent(now) {
            self.ensure_fast_tick(now);
        }
    }

    #[cold]
    pub(super) fn no_route(&mut self, packet: &[u8]) -> PacketError {
        if let Some(dst) = Tunn::dst_address(packet) {
            tracing::trace!(%dst, "no route");
        }
        self.drop_global(DropReason::NoRoute)
    }
}
