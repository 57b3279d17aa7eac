//! The SYN table: half-open TCP connections held without a socket or a ring mapping.
//!
//! A SYN for a listener gets an entry here (the 4-tuple and what the handshake
//! negotiated, under 100 bytes) and a SYN-ACK built by this module. Only the ACK that
//! completes the handshake creates the smoltcp socket: the shard replays the peer's SYN
//! into a listening socket, then hands it the ACK. So a spoofed SYN flood costs table
//! entries, never sockets, and with tens of thousands of entries a half-open connection
//! outlives a real client's round trip even at 50,000 SYN/s (see `docs/ARCHITECTURE.md`).
//!
//! The socket must pick the initial sequence number our SYN-ACK announced. smoltcp 0.14
//! draws a listening socket's ISN from its interface's PRNG (`cx.rand()`, sPCG32 seeded
//! by `Config::random_seed`), whose step is invertible: [`seed_for_isn`] computes the
//! seed that makes a fresh interface draw a given ISN as its first number after the
//! IPv4 identifier it draws at creation. The SYN is replayed through such an interface,
//! so smoltcp's sequence space is the one on the wire and no offset is needed for the
//! connection's life. The workspace pins smoltcp to exactly 0.14.0, the
//! `smoltcp_assumption_*` tests pin the behaviour, and if it ever differs the
//! handshake-completing ACK finds the socket still in SYN-RECEIVED (smoltcp rejected the
//! ACK): the shard resets that connection rather than run it on a wrong sequence space.
//!
//! Options: the SYN-ACK echoes SACK-permitted and window scaling when the SYN offered
//! them, with the shift smoltcp derives from the receive ring the connection will get,
//! and the MSS of the path (as smoltcp's would). Timestamps are not offered (smoltcp
//! does not use them here either). Lost SYN-ACKs are not retransmitted by us: the
//! client's retransmitted SYN finds its entry and gets the same SYN-ACK again.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use smoltcp::iface::Interface;
use smoltcp::phy::{ChecksumCapabilities, DeviceCapabilities};
use smoltcp::wire::{
    IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::wire::Tuple;

/// A half-open connection: what the peer's SYN offered and what our SYN-ACK answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HalfOpen {
    /// The sequence number of the peer's SYN.
    pub(crate) peer_isn: u32,
    /// The sequence number of our SYN-ACK.
    pub(crate) our_isn: u32,
    /// The window field of the peer's SYN.
    pub(crate) peer_window: u16,
    /// The peer's MSS option.
    pub(crate) peer_mss: Option<u16>,
    /// The peer's window scale option.
    pub(crate) peer_wscale: Option<u8>,
    /// The peer offered SACK.
    pub(crate) sack: bool,
    /// The window scale we announce (used only when the peer offered scaling).
    pub(crate) our_wscale: u8,
    /// The window field of our SYN-ACK (unscaled): the connection's receive ring must
    /// hold at least this much, or the right edge the peer was told moves back.
    pub(crate) window: u16,
    /// Bytes of rings our SYN-ACK promised (counted in the budget's reckoning until the
    /// handshake completes or the entry goes): the window scale announced needs them.
    pub(crate) promised: usize,
    /// Whether those are the large rings of the budget's first step.
    pub(crate) large: bool,
    /// Dropped from the table past this.
    pub(crate) deadline: Instant,
    generation: u64,
}

impl HalfOpen {
    /// The peer's SYN, rebuilt, to be replayed into a listening socket.
    pub(crate) fn syn(&self, tuple: &Tuple) -> Option<Vec<u8>> {
        let tcp = TcpRepr {
            src_port: tuple.remote.port,
            dst_port: tuple.local.port,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(self.peer_isn as i32),
            ack_number: None,
            window_len: self.peer_window,
            window_scale: self.peer_wscale,
            max_seg_size: self.peer_mss,
            sack_permitted: self.sack,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        ip_tcp(tuple.remote.addr, tuple.local.addr, &tcp)
    }

    /// A segment from the peer acknowledging our SYN-ACK, at sequence number
    /// `peer_isn + 1 - back` with `payload`.
    pub(crate) fn ack(&self, tuple: &Tuple, back: u32, payload: &[u8]) -> Option<Vec<u8>> {
        let tcp = TcpRepr {
            src_port: tuple.remote.port,
            dst_port: tuple.local.port,
            control: TcpControl::None,
            seq_number: TcpSeqNumber(self.peer_isn.wrapping_add(1).wrapping_sub(back) as i32),
            ack_number: Some(TcpSeqNumber(self.our_isn.wrapping_add(1) as i32)),
            window_len: self.peer_window,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        ip_tcp(tuple.remote.addr, tuple.local.addr, &tcp)
    }

    /// Our SYN-ACK, with `mss` (the path's) and the window the entry announces.
    pub(crate) fn syn_ack(&self, tuple: &Tuple, mss: u16) -> Option<Vec<u8>> {
        let tcp = TcpRepr {
            src_port: tuple.local.port,
            dst_port: tuple.remote.port,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(self.our_isn as i32),
            ack_number: Some(TcpSeqNumber(self.peer_isn.wrapping_add(1) as i32)),
            window_len: self.window,
            window_scale: self.peer_wscale.map(|_| self.our_wscale),
            max_seg_size: Some(mss),
            sack_permitted: self.sack,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        ip_tcp(tuple.local.addr, tuple.remote.addr, &tcp)
    }
}

/// The fields of a peer's SYN the table keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Syn {
    pub(crate) seq: u32,
    pub(crate) window: u16,
    pub(crate) mss: Option<u16>,
    pub(crate) wscale: Option<u8>,
    pub(crate) sack: bool,
}

/// Reads a SYN (checksum verified); `None` for anything else.
pub(crate) fn parse_syn(packet: &[u8]) -> Option<Syn> {
    let caps = ChecksumCapabilities::default();
    let (src, dst, payload) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            (IpAddress::Ipv4(s), IpAddress::Ipv4(d), ip.payload())
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            (IpAddress::Ipv6(s), IpAddress::Ipv6(d), ip.payload())
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(payload).ok()?;
    let repr = TcpRepr::parse(&tcp, &src, &dst, &caps).ok()?;
    (repr.control == TcpControl::Syn && repr.ack_number.is_none()).then_some(Syn {
        seq: repr.seq_number.0 as u32,
        window: repr.window_len,
        mss: repr.max_seg_size,
        wscale: repr.window_scale,
        sack: repr.sack_permitted,
    })
}

/// An IP packet carrying `tcp` from `src` to `dst`, checksums filled in.
fn ip_tcp(src: IpAddress, dst: IpAddress, tcp: &TcpRepr<'_>) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    let mut buf;
    match (src, dst) {
        (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
            let mut pkt = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.emit(&mut pkt, &caps);
            tcp.emit(
                &mut TcpPacket::new_unchecked(pkt.payload_mut()),
                &src,
                &dst,
                &caps,
            );
        }
        (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
            let mut pkt = Ipv6Packet::new_unchecked(&mut buf[..]);
            ip.emit(&mut pkt);
            tcp.emit(
                &mut TcpPacket::new_unchecked(pkt.payload_mut()),
                &src,
                &dst,
                &caps,
            );
        }
        _ => return None,
    }
    Some(buf)
}

/// The window scale smoltcp 0.14 uses for a socket whose receive ring holds `rx` bytes
/// (`Socket::new`: the ring's bit length minus 16).
pub(crate) fn smoltcp_wscale(rx: usize) -> u8 {
    let bits = usize::BITS - rx.leading_zeros();
    u8::try_from(bits.saturating_sub(16)).unwrap_or(u8::MAX)
}

/// One shard's half-open connections, bounded, oldest evicted first.
pub(crate) struct SynTable {
    entries: HashMap<Tuple, HalfOpen>,
    /// `(deadline, generation, tuple)` in insertion order, hence deadline order; an
    /// element whose entry was removed or replaced is stale and skipped.
    fifo: VecDeque<(Instant, u64, Tuple)>,
    next_generation: u64,
    keys: RandomState,
    /// Stack-wide sum of the entries' `promised` bytes (all shards' tables).
    promised: Arc<AtomicUsize>,
}

impl SynTable {
    /// An empty table adding its entries' promises to `promised`.
    pub(crate) fn new(promised: Arc<AtomicUsize>) -> Self {
        Self {
            entries: HashMap::new(),
            fifo: VecDeque::new(),
            next_generation: 0,
            keys: RandomState::new(),
            promised,
        }
    }

    /// How many half-open connections it holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, tuple: &Tuple) -> Option<&HalfOpen> {
        self.entries.get(tuple)
    }

    /// Records the SYN of `tuple`, whose SYN-ACK announces `our_wscale` and `window`
    /// and promises `promised` bytes of large rings. A retransmitted SYN (same sequence
    /// number) keeps its entry (its window and its promise); returns the entry and
    /// whether it is new. The caller makes room first.
    pub(crate) fn insert(
        &mut self,
        tuple: Tuple,
        syn: Syn,
        (our_wscale, window): (u8, u16),
        (promised, large): (usize, bool),
        deadline: Instant,
    ) -> (HalfOpen, bool) {
        if let Some(e) = self.entries.get(&tuple)
            && e.peer_isn == syn.seq
        {
            return (*e, false);
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let our_isn = self.keys.hash_one((tuple, syn.seq, generation)) as u32;
        let e = HalfOpen {
            peer_isn: syn.seq,
            our_isn,
            peer_window: syn.window,
            peer_mss: syn.mss,
            peer_wscale: syn.wscale,
            sack: syn.sack,
            our_wscale,
            window,
            promised,
            large,
            deadline,
            generation,
        };
        self.promised.fetch_add(promised, Relaxed);
        let old = self.entries.insert(tuple, e);
        let new = old.is_none();
        self.forget(old);
        self.fifo.push_back((deadline, generation, tuple));
        if self.fifo.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.fifo
                .retain(|(_, g, t)| entries.get(t).is_some_and(|e| e.generation == *g));
        }
        (e, new)
    }

    pub(crate) fn remove(&mut self, tuple: &Tuple) -> Option<HalfOpen> {
        let e = self.entries.remove(tuple);
        self.forget(e);
        e
    }

    /// Gives a removed entry's promise back.
    fn forget(&self, removed: Option<HalfOpen>) {
        if let Some(e) = removed {
            self.promised.fetch_sub(e.promised, Relaxed);
        }
    }

    /// Removes the oldest entry; returns whether there was one.
    pub(crate) fn evict_oldest(&mut self) -> bool {
        while let Some((_, generation, tuple)) = self.fifo.pop_front() {
            if self.live(generation, &tuple) {
                self.remove(&tuple);
                return true;
            }
        }
        false
    }

    /// Removes the entries past their deadline; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(deadline, generation, tuple)) = self.fifo.front() {
            if deadline > now {
                break;
            }
            self.fifo.pop_front();
            if self.live(generation, &tuple) {
                self.remove(&tuple);
                n += 1;
            }
        }
        n
    }

    /// When [`SynTable::expire`] next has work (possibly early, for a stale element).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.fifo.front().map(|(at, _, _)| *at)
    }

    fn live(&self, generation: u64, tuple: &Tuple) -> bool {
        self.entries
            .get(tuple)
            .is_some_and(|e| e.generation == generation)
    }
}

impl Drop for SynTable {
    fn drop(&mut self) {
        let left: usize = self.entries.values().map(|e| e.promised).sum();
        self.promised.fetch_sub(left, Relaxed);
    }
}

// smoltcp 0.14's PRNG (`rand.rs`, sPCG32): state' = state * M + A, output from state'.
const PCG_M: u64 = 0xbb2e_fcec_3c39_611d;
const PCG_A: u64 = 0x7590_ef39;

/// The inverse of odd `m` modulo 2^64 (Newton's iteration; each step doubles the bits).
const fn inverse(m: u64) -> u64 {
    let mut x = m;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(x)));
        i += 1;
    }
    x
}

const PCG_M_INV: u64 = inverse(PCG_M);

fn pcg_output(state: u64) -> u32 {
    (state >> (29 - (state >> 61))) as u32
}

fn pcg_prev(state: u64) -> u64 {
    state.wrapping_sub(PCG_A).wrapping_mul(PCG_M_INV)
}

/// The `random_seed` for which a new smoltcp 0.14 interface (IPv4 enabled: it draws a
/// non-zero IPv4 identifier at creation) draws `isn` next, which is what a listening
/// socket takes on a SYN. `salt` picks among the many such seeds.
pub(crate) fn seed_for_isn(isn: u32, salt: u64) -> u64 {
    const LOW: u64 = (1 << 29) - 1;
    let mut low = salt & LOW;
    loop {
        // Top three bits clear: the output is bits 29..61, i.e. `isn`.
        let drawn_isn = (u64::from(isn) << 29) | low;
        let drawn_id = pcg_prev(drawn_isn);
        let n = pcg_output(drawn_id);
        if (n ^ (n >> 16)) as u16 != 0 {
            return pcg_prev(drawn_id);
        }
        low = (low + 1) & LOW;
    }
}

/// A throwaway interface on `addrs` whose next random draw is `isn`: the SYN replayed
/// through it gives the listening socket that ISN.
pub(crate) fn replay_iface(
    addrs: &[IpCidr],
    caps: &DeviceCapabilities,
    isn: u32,
    salt: u64,
    now: smoltcp::time::Instant,
) -> Interface {
    crate::device::interface(caps, seed_for_isn(isn, salt), addrs, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Dev;

    #[test]
    fn the_inverse_inverts() {
        assert_eq!(PCG_M.wrapping_mul(PCG_M_INV), 1);
        let s = 0x1234_5678_9abc_def0u64;
        assert_eq!(pcg_prev(s.wrapping_mul(PCG_M).wrapping_add(PCG_A)), s);
    }

    #[test]
    fn the_seed_draws_the_isn_after_a_nonzero_id() {
        for (isn, salt) in [(0u32, 0u64), (1, 7), (u32::MAX, 99), (0x8000_0000, 1 << 40)] {
            let seed = seed_for_isn(isn, salt);
            let s1 = seed.wrapping_mul(PCG_M).wrapping_add(PCG_A);
            let n = pcg_output(s1);
            assert_ne!((n ^ (n >> 16)) as u16, 0);
            let s2 = s1.wrapping_mul(PCG_M).wrapping_add(PCG_A);
            assert_eq!(pcg_output(s2), isn);
        }
    }

    /// smoltcp 0.14 gives a listening socket, on a SYN, the next number of its
    /// interface's PRNG, and window-scales by the receive ring's bit length less 16.
    #[test]
    fn smoltcp_assumption_a_listening_socket_takes_the_isn_and_scale_we_predict() {
        use smoltcp::socket::tcp;
        let caps = crate::device::capabilities(1420, false);
        let tuple = Tuple {
            local: smoltcp::wire::IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 80),
            remote: smoltcp::wire::IpEndpoint::new(IpAddress::v4(10, 0, 0, 1), 40_000),
        };
        for (isn, rx) in [
            (0x1234_5678u32, 1usize << 20),
            (u32::MAX, 256 << 10),
            (7, 4096),
        ] {
            let mut sockets = crate::buffer::Sockets::new();
            let handle = sockets.add_tcp(rx, 4096).expect("socket");
            sockets
                .get_mut::<tcp::Socket>(handle)
                .listen(tuple.local)
                .expect("listen");
            let mut table = SynTable::new(Arc::default());
            let syn = Syn {
                seq: 99,
                window: 5000,
                mss: Some(1300),
                wscale: Some(7),
                sack: true,
            };
            let deadline = Instant::now();
            let (mut entry, _) =
                table.insert(tuple, syn, (smoltcp_wscale(rx), 0), (0, false), deadline);
            entry.our_isn = isn;
            let t = smoltcp::time::Instant::from_millis(1000);
            let addrs = [IpCidr::new(tuple.local.addr, 32)];
            let mut iface = replay_iface(&addrs, &caps, isn, 42, t);
            let packet = entry.syn(&tuple).expect("syn");
            let mut out = Vec::new();
            let mut dev = Dev {
                rx: Some(&packet),
                tx: &mut out,
                tx_limit: usize::MAX,
                bytes_limit: usize::MAX,
                bytes: 0,
                fill_below: 0,
                caps: &caps,
                spare: None,
            };
            sockets.poll_ingress_single(&mut iface, t, &mut dev);
            sockets.poll_egress(&mut iface, t, &mut dev);
            let ours = entry.syn_ack(&tuple, 1380).expect("syn-ack");
            let theirs = out.first().expect("smoltcp's SYN-ACK").to_vec();
            let caps = ChecksumCapabilities::ignored();
            let (l, r) = (tuple.local.addr, tuple.remote.addr);
            let ours = TcpPacket::new_checked(&ours[20..]).expect("tcp");
            let ours = TcpRepr::parse(&ours, &l, &r, &caps).expect("ours");
            let theirs = TcpPacket::new_checked(&theirs[20..]).expect("tcp");
            let theirs = TcpRepr::parse(&theirs, &l, &r, &caps).expect("theirs");
            assert_eq!(theirs.seq_number, ours.seq_number);
            assert_eq!(theirs.ack_number, ours.ack_number);
            assert_eq!(theirs.window_scale, ours.window_scale, "rx {rx}");
            assert_eq!(theirs.sack_permitted, ours.sack_permitted);
            assert_eq!(theirs.max_seg_size, ours.max_seg_size);
        }
    }

    #[test]
    fn the_table_evicts_oldest_first_expires_by_deadline_and_returns_promises() {
        let t0 = Instant::now();
        let tuple = |port| Tuple {
            local: smoltcp::wire::IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 80),
            remote: smoltcp::wire::IpEndpoint::new(IpAddress::v4(10, 0, 0, 1), port),
        };
        let syn = |seq| Syn {
            seq,
            window: 1000,
            mss: Some(1400),
            wscale: None,
            sack: false,
        };
        let promised = Arc::new(AtomicUsize::new(0));
        let mut t = SynTable::new(Arc::clone(&promised));
        let ms = std::time::Duration::from_millis;
        let (a, new) = t.insert(tuple(1), syn(5), (0, 0), (100, true), t0 + ms(10));
        assert!(new);
        // A retransmitted SYN keeps the entry (and our ISN, and its promise).
        let (again, new) = t.insert(tuple(1), syn(5), (0, 0), (100, true), t0 + ms(11));
        assert!(!new);
        assert_eq!(again, a);
        assert_eq!(promised.load(Relaxed), 100);
        t.insert(tuple(2), syn(6), (0, 0), (20, true), t0 + ms(20));
        t.insert(tuple(3), syn(7), (0, 0), (3, true), t0 + ms(30));
        assert_eq!(promised.load(Relaxed), 123);
        assert!(t.evict_oldest());
        assert!(t.get(&tuple(1)).is_none());
        assert_eq!(promised.load(Relaxed), 23);
        assert_eq!(t.expire(t0 + ms(20)), 1);
        assert_eq!(t.len(), 1);
        assert!(t.get(&tuple(3)).is_some());
        assert_eq!(promised.load(Relaxed), 3);
        // A new SYN on the tuple (another sequence number) replaces the entry and its
        // promise; what is left goes back when the table goes.
        t.insert(tuple(3), syn(8), (0, 0), (4000, true), t0 + ms(40));
        assert_eq!(promised.load(Relaxed), 4000);
        drop(t);
        assert_eq!(promised.load(Relaxed), 0);
    }
}
