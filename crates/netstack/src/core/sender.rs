//! The sending side of every TCP connection: what goes on the wire, when, and what is
//! sent again. smoltcp 0.14 stays the TCP engine (sequence numbers, segmentation, the
//! receive side, the handshake and the close); this module decides the sending schedule
//! below it.
//!
//! # Why below smoltcp
//!
//! smoltcp 0.14's sender cannot be changed from outside: its congestion `Controller`
//! trait is private, its retransmission timeout has a fixed 1 s floor, it ignores SACK
//! and repairs one hole per round trip. With congestion control off (`None`) it emits
//! everything the peer's window allows at once. So each connection's smoltcp socket runs
//! with congestion control off, and every data segment it emits passes through this
//! module, which holds it until the congestion window lets it go, keeps it until the peer
//! acknowledges it, and sends it again when it is lost.
//!
//! # Contract
//!
//! Inputs (all with `now` passed in; nothing here reads a clock or does I/O):
//! - [`Sender::on_emitted`]: every TCP segment smoltcp emits on this connection, as
//!   parsed header fields plus the packet. The answer ([`Verdict`]) says whether the
//!   caller sends the packet now (`Pass`: handshake, pure ACKs, window updates, RSTs,
//!   keep-alives of acknowledged bytes), or leaves it to the sender (`Held`: new data or
//!   FIN, now owned by the sender) or discards it (`Drop`: smoltcp's own retransmission
//!   of bytes the sender already has, or data past the memory bound, see below).
//! - [`Sender::on_segment`]: every segment the peer sent on this connection, after
//!   smoltcp processed it. Only an *acceptable* segment feeds the sender: its sequence
//!   number lies in the receive window we last advertised and its ACK in
//!   `[snd_una, snd_nxt]` (RFC 9293 §3.10.7.4, RFC 5961 §5); SACK blocks outside
//!   `[snd_una, snd_nxt]` are ignored. A forger knowing only the 4-tuple therefore cannot
//!   suppress or trigger retransmissions.
//! - [`Sender::handle_timeout`]: the deadline of [`Sender::poll_timeout`] passed. It may
//!   be called late (a busy machine): every expired timer still acts.
//! - [`Sender::abort`]: the connection was reset or aborted; everything is released and
//!   nothing is ever sent again.
//!
//! Outputs:
//! - [`Sender::poll_transmit`]: packets to send now (held data released by the window,
//!   retransmissions, probes), each carrying smoltcp's latest ACK number and window.
//! - [`Sender::poll_timeout`]: the earliest of the four timers of [`timer::TimerTable`]
//!   (reordering window, tail-loss probe, retransmission timeout, pacing).
//! - [`Sender::take_events`]: counts for the stack's statistics.
//!
//! Behaviour:
//! - Loss detection is RACK-TLP (RFC 8985): a segment sent before one that was delivered
//!   is lost once a reordering window has passed; the window is a quarter of
//!   max(min RTT, SRTT) times a multiplier that grows on each D-SACK or spurious
//!   retransmission (once per round trip) and falls back after 16 recoveries without
//!   one. (RFC 8985 uses the min RTT; where a few packets skip a queue it falls towards
//!   zero, and smoltcp peers send no D-SACK: see docs/ARCHITECTURE.md.) A tail-loss
//!   probe goes out after two RTTs without an ACK.
//! - Congestion control is chosen by [`CongestionControl`] (`NetstackConfig::congestion`),
//!   behind the small `Controller` enum:
//!   - **BBR** ([`bbr`], the default): a model of the path (bottleneck bandwidth from
//!     per-ACK delivery-rate samples, draft-cheng-iccrg-delivery-rate-estimation; min
//!     RTT) sets a pacing rate and a window of about two bandwidth-delay products.
//!     Recovery sends the lost segments first within that window; random loss does not
//!     cut it, a round losing more than 5 % lowers it towards 5/4 BDP. A timeout
//!     restarts the window at one segment and restores it when the recovery ends.
//!   - **Cubic** with HyStart++ ([`cubic`]): recovery is paced by Proportional Rate
//!     Reduction (RFC 6937): the bytes sent follow the bytes delivered, converging on
//!     ssthresh. A recovery whose every retransmission proves spurious (delivered sooner
//!     than max(min RTT, SRTT / 2) after it was resent, or reported by a D-SACK)
//!     restores the window it cut. Not paced.
//! - Pacing (BBR): a packet goes when the previous one's time at the pacing rate has
//!   passed; otherwise the pacing timer is armed for it. A sender that fell behind (a
//!   timer that fired late, an idle moment) may catch up by max(SRTT / 2, twice its
//!   pacing timer's recent lateness, [`PACE_HORIZON`]) worth of packets at once, within
//!   the window; the gap between packets is at most [`MAX_PACE_GAP`]. Packets sent after
//!   the pacing timer fired later than that are marked app-limited: their rate samples
//!   measure the machine, not the path, and must not lower the bandwidth estimate.
//! - The retransmission timeout follows RFC 6298 with a 200 ms floor and a 60 s cap;
//!   on expiry every outstanding unSACKed segment is marked lost, the window falls to
//!   one segment and slow start resends them in order from the sender's own copies.
//!
//! Invariants (tested):
//! - While any sent byte is unacknowledged, the retransmission timer is armed. Held data
//!   implies sent data in flight, or a send now, or the pacing timer armed (the window
//!   always admits one segment when nothing is in flight). So no connection waits on
//!   smoltcp's timers, however late timers fire; a pacing timer that fires late only
//!   delays what it holds.
//! - Memory: each segment is charged its packet plus [`SEG_OVERHEAD`]; a connection holds
//!   at most its limit (the send buffer size), and all connections together at most the
//!   shared [`Budget`], except that a connection holding nothing may always take
//!   [`FLOOR_SEGMENTS`] segments so that every connection can progress. The socket layer
//!   reserves memory for what it queues ([`Sender::reserve`]) and waits when there is none,
//!   so smoltcp never emits more than the sender can hold. Reserved data is always held,
//!   even when smoltcp cuts it into more packets than estimated (the limit is then passed
//!   by those packets' headers at most): dropping it would leave a gap that only smoltcp's
//!   backed-off timeout fills. Only unreserved data past the bound is dropped (`Drop`,
//!   counted), and smoltcp's own timeout re-emits it later.
//! - After [`Sender::abort`] nothing is held, nothing is armed, nothing is sent.
//!
//! What smoltcp still does on its own, and why it is harmless: its retransmission
//! timeout (1–60 s, measured from when it emitted a segment, which includes the time
//! the segment was held here, so it grows with the queue) and its fast retransmit re-emit
//! bytes this module already holds; those arrive as `Drop`. Its keep-alive re-emits the
//! last byte: passed when acknowledged (the peer holds it), dropped otherwise.
//! The workspace pins smoltcp to `=0.14.0`; the `smoltcp_assumption_*` tests in `sim.rs`
//! fail loudly if another version changes these.

mod bbr;
mod cubic;
mod timer;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::CongestionControl;
use crate::wire::Segment;
use bbr::{AckInfo, Bbr, RateSample};
use cubic::Cubic;
use timer::{Timer, TimerTable};

/// Floor of the retransmission timeout (Linux's).
pub(crate) const MIN_RTO: Duration = Duration::from_millis(200);
/// Cap of the retransmission timeout (RFC 6298 §2.5: at least 60 s).
pub(crate) const MAX_RTO: Duration = Duration::from_secs(60);
/// Before the first RTT sample (RFC 6298 §2.1).
const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Floor of the probe timeout.
const MIN_PTO: Duration = Duration::from_millis(10);
/// A receiver may delay the ACK of a lone segment this long (RFC 8985 §7.2 WCDelAckT).
const WORST_CASE_ACK_DELAY: Duration = Duration::from_millis(200);
/// Segments SACKed beyond a hole that make it lost without reordering window (DupThresh).
const DUP_THRESH: u32 = 3;
/// Largest reordering-window multiplier (RFC 8985 §6.2: the window stays under SRTT).
const MAX_REO_WND_MULT: u32 = 16;
/// Recoveries without D-SACK after which the multiplier falls back to 1.
const REO_WND_PERSIST: u32 = 16;
/// Bytes charged per segment beyond its packet (the entry, the allocation's header).
pub(crate) const SEG_OVERHEAD: usize = 64;
/// Segments a connection holding nothing may always take, past the shared budget.
pub(crate) const FLOOR_SEGMENTS: usize = 2;
/// IP and TCP headers of a full segment (IPv4, no options), for estimates.
const HEADERS: usize = 40;
/// Spare capacity of an emptied queue kept for the next burst.
const KEEP_CAPACITY: usize = 64;
/// Pacing lets a sender that fell behind its schedule (a timer that fired late, an idle
/// moment) catch up by at least this much time's worth of packets at once (see
/// `Sender::pace_horizon`).
const PACE_HORIZON: Duration = Duration::from_millis(2);
/// Longest gap pacing puts between two packets.
const MAX_PACE_GAP: Duration = Duration::from_millis(50);

/// `a < b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a <= b` in sequence space.
fn seq_le(a: u32, b: u32) -> bool {
    !seq_lt(b, a)
}

/// A byte budget shared by connections. The stack has one (`tcp_buffer_budget`, charged
/// by the rings in `autotune.rs`), and the senders' share of it is a [`Budget::share`]:
/// what they hold counts against both.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
    /// The budget this one is a share of.
    parent: Option<Arc<Budget>>,
}

impl Budget {
    /// A budget of `limit` bytes over all connections.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
            parent: None,
        }
    }

    /// A share of at most `limit` bytes of this budget: taking from it takes from both.
    pub(crate) fn share(&self, limit: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
            parent: Some(Arc::new(self.clone())),
        }
    }

    /// The limit, bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Bytes that may still be taken without `force` (here and in the budget this is a
    /// share of).
    pub(crate) fn room(&self) -> usize {
        let own = self.limit.saturating_sub(self.used());
        self.parent.as_ref().map_or(own, |p| own.min(p.room()))
    }

    /// Takes `n` bytes; past the limit only when `force`. Returns whether it took them.
    pub(crate) fn take(&self, n: usize, force: bool) -> bool {
        let mut cur = self.used.load(Relaxed);
        loop {
            if !force && cur.saturating_add(n) > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur.saturating_add(n), Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        match &self.parent {
            Some(parent) if !parent.take(n, force) => {
                self.used.fetch_sub(n, Relaxed);
                false
            }
            _ => true,
        }
    }

    /// Gives back `n` bytes taken before.
    pub(crate) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Relaxed);
        if let Some(parent) = &self.parent {
            parent.give(n);
        }
    }
}

/// What the caller does with a segment smoltcp emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it now.
    Pass,
    /// The sender owns it now: do not send it.
    Held,
    /// Discard it.
    Drop,
}

/// Counts of what the sender did since the last [`Sender::take_events`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Events {
    /// Segments sent again because RACK or the timeout found them lost.
    pub(crate) retransmits: u64,
    /// Tail-loss probes.
    pub(crate) probes: u64,
    /// Retransmission timeouts.
    pub(crate) rtos: u64,
    /// Recoveries undone as spurious.
    pub(crate) undos: u64,
    /// smoltcp's own retransmissions dropped (the sender has those bytes).
    pub(crate) smoltcp_resends: u64,
    /// Segments dropped past the memory bound (smoltcp's timeout re-emits them).
    pub(crate) deferred: u64,
    /// Peer segments ignored as unacceptable (outside our window, ACK out of range).
    pub(crate) ignored: u64,
}

/// Where a segment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Held: never sent.
    Unsent,
    /// Sent, not known delivered or lost.
    InFlight,
    /// Found lost, waiting to be sent again.
    Lost,
    /// Covered by a SACK block.
    Sacked,
}

/// A segment from the sender's queue.
#[derive(Debug)]
struct Seg {
    /// First sequence number it accounts for (the packet may start earlier: smoltcp may
    /// re-cut a segment so that it overlaps bytes already held).
    seq: u32,
    /// Sequence space it accounts for (payload, plus one for a FIN), > 0.
    len: u32,
    packet: Bytes,
    charged: usize,
    state: State,
    /// Last transmission.
    sent: Option<Instant>,
    /// Transmissions so far.
    xmits: u32,
    /// Delivery-rate state at the last transmission.
    stamp: Option<TxStamp>,
}

/// The connection's delivery state when a segment was sent
/// (draft-cheng-iccrg-delivery-rate-estimation §3.2).
#[derive(Debug, Clone, Copy)]
struct TxStamp {
    delivered: u64,
    delivered_time: Instant,
    first_sent: Instant,
    app_limited: bool,
}

/// Delivery-rate estimation of a connection (draft-cheng-iccrg-delivery-rate-estimation).
#[derive(Debug, Default)]
struct Delivery {
    /// Bytes delivered (acknowledged or SACKed) so far, and when the last were.
    delivered: u64,
    delivered_time: Option<Instant>,
    /// Send time of the most recently delivered segment's transmission.
    first_sent: Option<Instant>,
    /// Samples are app-limited until `delivered` passes this (0: not app-limited).
    app_limited_until: u64,
    /// The sample being built from the current ACK: the newest delivered segment's
    /// stamp, its send time.
    pending: Option<(TxStamp, Instant)>,
    /// Bytes declared lost so far.
    lost_total: u64,
}

/// The congestion controller a sender runs (see [`CongestionControl`]).
#[derive(Debug)]
enum Controller {
    Cubic(Cubic),
    Bbr(Box<Bbr>),
}

impl Controller {
    fn cwnd(&self) -> u32 {
        match self {
            Controller::Cubic(c) => c.cwnd(),
            Controller::Bbr(b) => u32::try_from(b.cwnd()).unwrap_or(u32::MAX),
        }
    }

    fn ssthresh(&self) -> u32 {
        match self {
            Controller::Cubic(c) => c.ssthresh(),
            Controller::Bbr(_) => u32::MAX,
        }
    }

    fn cubic(&mut self) -> Option<&mut Cubic> {
        match self {
            Controller::Cubic(c) => Some(c),
            Controller::Bbr(_) => None,
        }
    }

    fn pacing_rate(&self) -> Option<f64> {
        match self {
            Controller::Cubic(_) => None,
            Controller::Bbr(b) => b.pacing_rate().filter(|r| *r > 0.0),
        }
    }
}

impl Seg {
    fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }
}

/// RACK's state (RFC 8985 §6).
#[derive(Debug, Default)]
struct Rack {
    /// Latest transmission time among delivered segments, its end and its RTT.
    xmit: Option<Instant>,
    end_seq: u32,
    rtt: Duration,
    /// Highest end of a delivered segment.
    fack: Option<u32>,
    reordering_seen: bool,
    reo_wnd_mult: u32,
    /// Recoveries since the multiplier last grew.
    reo_wnd_persist: u32,
    /// Round trip in which the multiplier last grew.
    dsack_round: Option<u64>,
}

/// A recovery episode.
#[derive(Debug)]
struct Recovery {
    /// It ends when this is acknowledged (snd_nxt at its start).
    end: u32,
    /// After a timeout (slow start by the window) or fast recovery (PRR).
    after_rto: bool,
    /// PRR (RFC 6937): bytes delivered and sent since the start, flight at the start.
    prr_delivered: u64,
    prr_out: u64,
    recover_fs: u64,
    /// Bytes PRR lets out now.
    sndcnt: u64,
    /// What the window cut replaced.
    undo: Option<cubic::Undo>,
    /// Retransmissions in this episode, and those proved spurious.
    retrans: u32,
    spurious: u32,
}

/// RFC 6298 round-trip estimate.
#[derive(Debug, Default)]
struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Option<Duration>,
}

impl Rtt {
    fn sample(&mut self, r: Duration) {
        self.min = Some(self.min.map_or(r, |m| m.min(r)));
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
    }

    fn rto(&self, floor: Duration) -> Duration {
        match self.srtt {
            None => INITIAL_RTO.max(floor),
            Some(s) => (s + (4 * self.rttvar).max(Duration::from_millis(1))).clamp(floor, MAX_RTO),
        }
    }
}

/// The sending side of one TCP connection (see the module docs for the contract).
#[derive(Debug)]
pub(crate) struct Sender {
    /// From snd_una on, in sequence order: sent segments first, then held ones.
    segs: VecDeque<Seg>,
    /// Segments in `segs` sent at least once (a prefix).
    sent_count: usize,
    /// Sequence state, once smoltcp's SYN set it: acknowledged, sent, emitted by smoltcp.
    una: u32,
    nxt: u32,
    end: u32,
    started: bool,
    aborted: bool,
    /// Outstanding segments sent more than once (their send times are out of sequence
    /// order).
    resent_outstanding: usize,
    /// Bytes in each state.
    in_flight: u64,
    lost: u64,
    sacked: u64,
    /// ACK number and window of smoltcp's latest segment: what a released packet carries.
    latest: Option<(u32, u16)>,
    /// Upper bound of the receive window we advertise, bytes.
    rcv_window: u32,
    mss: u32,
    /// Floor of the retransmission timeout.
    min_rto: Duration,
    cc: Controller,
    rtt: Rtt,
    rate: Delivery,
    /// Pacing: the earliest time the next packet may go (paced controllers only).
    pace_at: Option<Instant>,
    /// The sender stopped for pacing with packets to send (the pacing timer is armed).
    pace_waiting: bool,
    /// How late the pacing timer fired lately (the largest, decaying by 1/8 per firing).
    pace_late: Duration,
    rack: Rack,
    recovery: Option<Recovery>,
    timers: TimerTable,
    /// Consecutive timeouts without progress.
    backoff: u32,
    /// A probe was sent and nothing was acknowledged since.
    probed: bool,
    /// A probe is due and goes out past the window.
    probe_pending: bool,
    /// Round trips: the current one ends when this is acknowledged.
    round_end: u32,
    round: u64,
    /// The most bytes in flight during the current round trip and the one before: whether
    /// the window limits the sender is judged on them, not on one ACK's view (a round's
    /// ACKs arrive together and drain the flight before anything new goes out).
    round_max_in_flight: u64,
    last_round_max_in_flight: u64,
    /// Memory: charged for held segments, and reserved for data queued in smoltcp and
    /// not yet emitted.
    bytes: usize,
    reserved: usize,
    /// Payload bytes of the reservations not yet emitted: such data is held whatever it
    /// costs once cut into packets, since the writer was told it fits.
    reserved_data: usize,
    limit: usize,
    budget: Budget,
    events: Events,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.budget.give(self.bytes + self.reserved);
    }
}

impl Sender {
    /// A sender holding at most `limit` bytes within `budget`; `rcv_window` bounds the
    /// receive window this side advertises; `mss` is the path's segment size; `min_rto`
    /// the floor of its retransmission timeout ([`MIN_RTO`] by default).
    pub(crate) fn new(
        limit: usize,
        budget: Budget,
        rcv_window: usize,
        mss: u32,
        min_rto: Duration,
    ) -> Self {
        Self {
            segs: VecDeque::new(),
            sent_count: 0,
            una: 0,
            nxt: 0,
            end: 0,
            started: false,
            aborted: false,
            resent_outstanding: 0,
            in_flight: 0,
            lost: 0,
            sacked: 0,
            latest: None,
            rcv_window: u32::try_from(rcv_window).unwrap_or(u32::MAX),
            mss: mss.max(1),
            min_rto,
            cc: Controller::Cubic(Cubic::new(mss)),
            rtt: Rtt::default(),
            rate: Delivery::default(),
            pace_at: None,
            pace_waiting: false,
            pace_late: Duration::ZERO,
            rack: Rack {
                reo_wnd_mult: 1,
                ..Rack::default()
            },
            recovery: None,
            timers: TimerTable::default(),
            backoff: 0,
            probed: false,
            probe_pending: false,
            round_end: 0,
            round_max_in_flight: 0,
            last_round_max_in_flight: 0,
            round: 0,
            bytes: 0,
            reserved: 0,
            reserved_data: 0,
            limit,
            budget,
            events: Events::default(),
        }
    }

    /// Runs `congestion` instead of the default Cubic.
    pub(crate) fn with_congestion(mut self, congestion: CongestionControl) -> Self {
        self.cc = match congestion {
            CongestionControl::Cubic => Controller::Cubic(Cubic::new(self.mss)),
            CongestionControl::Bbr => Controller::Bbr(Box::new(Bbr::new(self.mss))),
        };
        self
    }

    /// smoltcp emitted `seg` (whose packet is `packet`) on this connection.
    pub(crate) fn on_emitted(&mut self, seg: &Segment, packet: &Bytes, now: Instant) -> Verdict {
        if seg.rst {
            self.abort();
            return Verdict::Pass;
        }
        if let Some(ack) = seg.ack {
            self.latest = Some((ack, seg.window));
        }
        if seg.control {
            // SYN or SYN-ACK: the handshake is smoltcp's. Data starts after it.
            if !self.started && !self.aborted {
                let first = seg.seq.wrapping_add(1);
                (self.una, self.nxt, self.end, self.round_end) = (first, first, first, first);
                self.started = true;
            }
            return Verdict::Pass;
        }
        let len = seg.len + u32::from(seg.fin);
        if len == 0 || !self.started || self.aborted {
            return Verdict::Pass;
        }
        let end = seg.seq.wrapping_add(len);
        if seq_le(end, self.una) {
            // Bytes the peer acknowledged: smoltcp's keep-alive, which must draw an ACK.
            return Verdict::Pass;
        }
        if seq_le(end, self.end) {
            // smoltcp sending again what the sender holds (its timeout, fast retransmit,
            // a zero-window probe, a keep-alive while data is outstanding).
            self.events.smoltcp_resends += 1;
            return Verdict::Drop;
        }
        if seq_lt(self.end, seg.seq) {
            // After a segment past the memory bound: a gap the sender cannot queue.
            self.events.deferred += 1;
            return Verdict::Drop;
        }
        let n = packet.len() + SEG_OVERHEAD;
        // Paid for by the reservation made when the data was queued, if any.
        let prepaid = n.min(self.reserved);
        let covered = (seg.len as usize).min(self.reserved_data);
        let floor = self.bytes + n <= FLOOR_SEGMENTS * (packet.len() + SEG_OVERHEAD);
        // Reserved data may cost more than estimated (smoltcp cuts segments at window
        // edges and at its own size, each piece with its headers), and a bare FIN costs
        // its headers: both are taken past the limit and the budget rather than dropped.
        // A drop leaves a gap that only smoltcp's backed-off timeout fills.
        let force = floor || covered > 0 || prepaid > 0 || seg.len == 0;
        if (self.bytes + n > self.limit && !force) || !self.budget.take(n - prepaid, force) {
            self.events.deferred += 1;
            return Verdict::Drop;
        }
        self.reserved -= prepaid;
        self.reserved_data -= covered;
        let start = self.end;
        let packet = if seg.seq == start {
            packet.clone()
        } else {
            // Re-cut over bytes already held: keep only the new ones.
            match crate::wire::trimmed_front(packet, seg.seq, start) {
                Some(p) => Bytes::from(p),
                None => packet.clone(),
            }
        };
        self.bytes += n;
        self.segs.push_back(Seg {
            seq: start,
            len: end.wrapping_sub(start),
            packet,
            charged: n,
            state: State::Unsent,
            sent: None,
            xmits: 0,
            stamp: None,
        });
        self.end = end;
        let _ = now;
        Verdict::Held
    }

    /// The payload of the last held segment when it was never sent, ends at `seq`, is
    /// shorter than `max_payload`, carries no FIN, and either carries PSH (smoltcp
    /// emptied its send ring there: the writer was behind) or is short only because the
    /// wire segments before it were `offset` from smoltcp's cuts by an earlier join. The
    /// caller may join it to the data smoltcp emits next (starting at `seq`) and hand
    /// both back through [`Sender::on_emitted`] after [`Sender::take_unsent_tail`]. So a
    /// stream's wire segments are full except where the data ran out when they went
    /// out: a receiver's GRO (a gateway's, Linux's) joins only equal segments, a short
    /// one ending the run. A short segment cut at the peer's window edge is left alone:
    /// joining those too raised the overflow of a shallow lossy bottleneck in
    /// `sim_lossy` from 3-11 % to 7-21 % of the packets over four seeds (such a join at
    /// the start offsets every later wire segment; why BBR then overshoots is not known).
    pub(crate) fn unsent_tail(&self, seq: u32, max_payload: usize, offset: bool) -> Option<Bytes> {
        if self.aborted || !self.started || self.sent_count >= self.segs.len() {
            return None;
        }
        let last = self.segs.back()?;
        if last.state != State::Unsent || last.xmits > 0 || last.end() != seq {
            return None;
        }
        let seg = crate::wire::tcp_segment(&last.packet)?;
        if seg.fin || seg.rst || seg.control || seg.seq != last.seq || seg.len != last.len {
            return None;
        }
        let len = seg.len as usize;
        if len == 0 || len >= max_payload || !(offset || crate::offload::has_psh(&last.packet)) {
            return None;
        }
        let start = last.packet.len().checked_sub(len)?;
        Some(last.packet.slice(start..))
    }

    /// Gives up the segment [`Sender::unsent_tail`] returned: its memory is given back
    /// and its bytes come back, joined to newer ones, through [`Sender::on_emitted`],
    /// held whatever they cost as reserved data is.
    pub(crate) fn take_unsent_tail(&mut self) {
        debug_assert!(self.sent_count < self.segs.len());
        if self.sent_count >= self.segs.len() {
            return;
        }
        let Some(last) = self.segs.pop_back() else {
            return;
        };
        self.end = last.seq;
        self.bytes -= last.charged;
        self.budget.give(last.charged);
        // Its bytes come back inside fewer packets: charged as they are emitted, and
        // covered like reserved data so that they are never dropped.
        self.reserved_data += last.len as usize;
    }

    /// The peer sent `seg` on this connection (smoltcp has processed it).
    pub(crate) fn on_segment(&mut self, seg: &Segment, now: Instant) {
        if !self.started || self.aborted || seg.control || seg.rst {
            return;
        }
        let Some(ack) = seg.ack else {
            return;
        };
        if !self.acceptable(seg, ack) {
            self.events.ignored += 1;
            return;
        }
        if seq_lt(ack, self.una) {
            // An old ACK: nothing new.
            return;
        }
        let prior_in_flight = self.in_flight;
        let most_in_flight = prior_in_flight
            .max(self.round_max_in_flight)
            .max(self.last_round_max_in_flight);
        let cwnd_limited = most_in_flight + u64::from(self.mss) >= u64::from(self.cc.cwnd()) / 2;
        let mut delivered = 0u64;
        let mut rtt_sample = None;
        let progress = seq_lt(self.una, ack);
        if progress {
            delivered += self.cumulative(ack, now, &mut rtt_sample);
        }
        let (blocks, n) = sack_list(seg);
        let mut dsack = false;
        for (i, &(left, right)) in blocks[..n].iter().enumerate() {
            if !seq_lt(left, right) {
                continue;
            }
            // RFC 2883: a first block below the ACK, or inside the second, reports a
            // duplicate delivery.
            if i == 0
                && (seq_lt(left, ack)
                    || (n > 1 && seq_le(blocks[1].0, left) && seq_le(right, blocks[1].1)))
            {
                dsack = seq_le(self.una.wrapping_sub(self.rcv_window), left);
                continue;
            }
            if seq_lt(left, self.una) || seq_lt(self.nxt, right) {
                // Outside what is outstanding: not from this connection's receiver.
                continue;
            }
            delivered += self.sack(left, right, now, &mut rtt_sample);
        }
        if dsack {
            self.on_dsack();
        }
        if let Some(r) = rtt_sample {
            self.rtt.sample(r);
            if let Some(c) = self.cc.cubic() {
                c.on_rtt_sample(r);
            }
        }
        let mut round_start = false;
        if progress {
            self.backoff = 0;
            self.probed = false;
            if seq_le(self.round_end, self.una) {
                self.round += 1;
                self.round_end = self.nxt;
                self.last_round_max_in_flight = self.round_max_in_flight;
                self.round_max_in_flight = self.in_flight;
                round_start = true;
                if let Some(c) = self.cc.cubic() {
                    c.on_round_start();
                }
            }
        }
        let rate = self.rate_sample(delivered, now);
        self.detect_losses(now, prior_in_flight);
        let ack = AckInfo {
            now,
            acked: delivered,
            in_flight: self.in_flight,
            delivered_total: self.rate.delivered,
            lost_total: self.rate.lost_total,
            rtt: rtt_sample,
            srtt: self.rtt.srtt,
            rate,
            round_start,
            reordering: self.rack.reordering_seen,
        };
        self.after_delivery(&ack, cwnd_limited);
        self.check_app_limited();
        if progress {
            self.arm_rto(now);
        }
        self.arm_probe(now);
        if self.segs.is_empty() && self.segs.capacity() > KEEP_CAPACITY {
            self.segs.shrink_to(KEEP_CAPACITY);
        }
    }

    /// Runs the timers due at `now` (however late).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for timer in self.timers.expired(now) {
            match timer {
                Timer::Reorder => {
                    let fs = self.in_flight;
                    self.detect_losses(now, fs);
                    self.update_prr(0);
                }
                Timer::Probe => {
                    if self.sent_count > 0 && self.recovery.is_none() && !self.probed {
                        self.probed = true;
                        self.probe_pending = true;
                        self.events.probes += 1;
                    }
                }
                Timer::Rto => self.on_rto(now),
                // Pacing lets the next packet go: `wants_transmit` says so again.
                Timer::Pace => {}
            }
        }
        self.check_invariants();
    }

    /// Appends packets to send now to `out`, at most `max`; returns how many.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut Vec<Bytes>,
        max: usize,
    ) -> usize {
        let mut n = 0;
        let mut next_lost = 0;
        let mut sent_new = false;
        let pacing = self.cc.pacing_rate();
        let late = self
            .pace_at
            .filter(|_| self.pace_waiting)
            .map(|at| now.saturating_duration_since(at));
        if late.is_some_and(|late| late > self.pace_horizon()) {
            // The pacing timer fired later than the sender may catch up: what goes out
            // now is limited by the machine, not the path, so its rate samples must not
            // lower the bandwidth estimate (they would, round after round, down to
            // nothing on a busy machine).
            self.rate.app_limited_until = (self.rate.delivered + self.in_flight).max(1);
        }
        if let Some(late) = late {
            self.pace_late = late.max(self.pace_late * 7 / 8);
        }
        self.pace_waiting = false;
        while n < max {
            if self.probe_pending {
                self.probe_pending = false;
                // A new segment if one is held, else the last one sent (RFC 8985 §7.3).
                let i = if self.sent_count < self.segs.len() {
                    self.sent_count
                } else if let Some(i) = self.segs.iter().rposition(|s| s.state != State::Sacked) {
                    if i >= self.sent_count {
                        break;
                    }
                    i
                } else {
                    continue;
                };
                sent_new |= i == self.sent_count;
                self.transmit(i, now, out);
                n += 1;
                continue;
            }
            let allowance = self.allowance();
            if allowance == 0 {
                break;
            }
            if pacing.is_some()
                && let Some(at) = self.pace_at
                && at > now
                && (self.lost > 0 || self.sent_count < self.segs.len())
            {
                // Not yet: the pacing timer lets the next one go (however late it fires,
                // it only delays, and the horizon below lets a late sender catch up).
                self.timers.set(Timer::Pace, at);
                self.pace_waiting = true;
                break;
            }
            // Lost segments first, in order; then held ones.
            let i = if self.lost > 0 {
                match (next_lost..self.sent_count).find(|&i| self.segs[i].state == State::Lost) {
                    Some(i) => {
                        next_lost = i + 1;
                        i
                    }
                    None => {
                        // Counters say lost bytes exist but none is found: trust the scan.
                        debug_assert!(false, "lost bytes without a lost segment");
                        self.lost = 0;
                        continue;
                    }
                }
            } else if self.sent_count < self.segs.len() {
                sent_new = true;
                self.sent_count
            } else {
                break;
            };
            let len = self.segs[i].len;
            self.transmit(i, now, out);
            n += 1;
            if let Some(rate) = pacing {
                let base = self.pace_at.map_or(now, |at| {
                    at.max(now.checked_sub(self.pace_horizon()).unwrap_or(now))
                });
                let gap = Duration::from_secs_f64(f64::from(len) / rate).min(MAX_PACE_GAP);
                self.pace_at = Some(base + gap);
            }
        }
        self.check_app_limited();
        if n > 0 {
            if self.timers.get(Timer::Rto).is_none() {
                self.arm_rto(now);
            }
            if sent_new {
                self.arm_probe(now);
            }
        }
        self.check_invariants();
        n
    }

    /// Reserves memory for up to `payload` bytes the socket layer is about to queue in
    /// smoltcp; returns how many it may queue (0: wait for an ACK). Queued data is thus
    /// paid for before smoltcp emits it, so many bulk senders share the budget instead
    /// of smoltcp emitting segments no sender can hold.
    pub(crate) fn reserve(&mut self, payload: usize) -> usize {
        if self.aborted || payload == 0 {
            return payload;
        }
        let mss = self.mss as usize;
        let per_segment = mss + HEADERS + SEG_OVERHEAD;
        let own = self.limit.saturating_sub(self.bytes + self.reserved);
        let shared = self.budget.room();
        let floor = (FLOOR_SEGMENTS * per_segment).saturating_sub(self.bytes + self.reserved);
        let room = own.min(shared.max(floor));
        let granted = payload.min(room / per_segment * mss);
        if granted == 0 {
            return 0;
        }
        let charge = granted + granted.div_ceil(mss) * (HEADERS + SEG_OVERHEAD);
        self.budget.take(charge, true);
        self.reserved += charge;
        self.reserved_data += granted;
        granted
    }

    /// Gives back the reservation of `payload` bytes that were not queued after all.
    pub(crate) fn unreserve(&mut self, payload: usize) {
        let mss = self.mss as usize;
        let charge =
            (payload + payload.div_ceil(mss) * (HEADERS + SEG_OVERHEAD)).min(self.reserved);
        self.reserved -= charge;
        self.reserved_data -= payload.min(self.reserved_data);
        self.budget.give(charge);
    }

    /// Whether [`Sender::poll_transmit`] has something to send now.
    pub(crate) fn wants_transmit(&self) -> bool {
        self.probe_pending
            || ((self.lost > 0 || self.sent_count < self.segs.len())
                && self.allowance() > 0
                && self.timers.get(Timer::Pace).is_none())
    }

    /// When [`Sender::handle_timeout`] next has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The connection is gone: release everything, never send again.
    pub(crate) fn abort(&mut self) {
        self.aborted = true;
        self.budget.give(self.bytes + self.reserved);
        self.bytes = 0;
        self.reserved = 0;
        self.reserved_data = 0;
        self.segs = VecDeque::new();
        self.sent_count = 0;
        self.resent_outstanding = 0;
        self.in_flight = 0;
        self.lost = 0;
        self.sacked = 0;
        self.recovery = None;
        self.probe_pending = false;
        self.timers.clear();
    }

    /// A one-line summary of the state, for debugging dumps.
    pub(crate) fn debug(&self) -> String {
        format!(
            "front={:?} latest={:?} una={} nxt={} end={} segs={} sent={} in_flight={} lost={} sacked={} cwnd={} ssthresh={} recovery={:?} timers={:?} probe_pending={} aborted={}",
            self.segs
                .front()
                .and_then(
                    |s| crate::wire::tcp_segment(&refreshed(&s.packet, self.latest))
                        .map(|p| (s.seq, s.len, s.xmits, p.seq, p.len, p.fin, p.ack, p.window))
                ),
            self.latest,
            self.una,
            self.nxt,
            self.end,
            self.segs.len(),
            self.sent_count,
            self.in_flight,
            self.lost,
            self.sacked,
            self.cc.cwnd(),
            self.cc.ssthresh(),
            self.recovery
                .as_ref()
                .map(|r| (r.end, r.after_rto, r.sndcnt)),
            self.timers,
            self.probe_pending,
            self.aborted,
        )
    }

    /// Counts since the last call.
    pub(crate) fn take_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    /// Raises the bound on the bytes this connection may hold (never lowers it): the
    /// send side's autotuning (see `autotune.rs`) follows the bandwidth-delay product.
    pub(crate) fn grow_limit(&mut self, limit: usize) {
        self.limit = self.limit.max(limit);
    }

    /// The bound on the bytes this connection may hold.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Everything before this sequence number is acknowledged (what the sender
    /// accepted as the peer's cumulative ACK).
    pub(crate) fn una(&self) -> u32 {
        self.una
    }

    /// The smoothed round-trip time, once measured.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt
    }

    /// The congestion window, bytes.
    #[cfg(test)]
    pub(crate) fn cwnd(&self) -> u32 {
        self.cc.cwnd()
    }

    /// Whether `seg` (acknowledging `ack`) is one smoltcp could have accepted: its
    /// sequence number in the window we advertised, its ACK not beyond what was sent.
    fn acceptable(&self, seg: &Segment, ack: u32) -> bool {
        let Some((rcv_nxt, _)) = self.latest else {
            return false;
        };
        // `rcv_nxt` is what our last segment acknowledged; smoltcp may have taken more
        // since, never more than the window. A keep-alive sits one below.
        let left = rcv_nxt.wrapping_sub(1);
        let right = rcv_nxt.wrapping_add(self.rcv_window);
        let seq_ok = (seq_le(left, seg.seq) && seq_le(seg.seq, right))
            || (seg.len > 0 && {
                let last = seg.seq.wrapping_add(seg.len - 1);
                seq_le(rcv_nxt, last) && seq_le(last, right)
            });
        let max_back = self.rcv_window.max(1 << 16);
        let ack_ok = seq_le(ack, self.nxt) && seq_le(self.una.wrapping_sub(max_back), ack);
        seq_ok && ack_ok
    }

    /// Removes segments the peer acknowledged up to `ack`; returns bytes newly delivered.
    fn cumulative(&mut self, ack: u32, now: Instant, rtt: &mut Option<Duration>) -> u64 {
        let mut delivered = 0;
        while let Some(front) = self.segs.front_mut() {
            if seq_le(front.end(), ack) {
                let Some(seg) = self.segs.pop_front() else {
                    break;
                };
                self.sent_count = self.sent_count.saturating_sub(1);
                if seg.xmits > 1 {
                    self.resent_outstanding -= 1;
                }
                if seg.state != State::Sacked {
                    delivered += u64::from(seg.len);
                    self.note_delivery(&seg, now, rtt);
                }
                self.leave_state(seg.state, seg.len);
                self.bytes -= seg.charged;
                self.budget.give(seg.charged);
            } else {
                if seq_lt(front.seq, ack) {
                    // Partly acknowledged: account for the rest only.
                    let done = ack.wrapping_sub(front.seq);
                    let state = front.state;
                    front.seq = ack;
                    front.len -= done;
                    // Resent, it must carry only the rest: a smoltcp receiver drops a
                    // segment whose payload is all old even when it carries a new FIN.
                    if let Some(p) = crate::wire::tcp_segment(&front.packet)
                        .and_then(|h| crate::wire::trimmed_front(&front.packet, h.seq, ack))
                    {
                        front.packet = Bytes::from(p);
                    }
                    delivered += u64::from(done);
                    self.sub_state(state, u64::from(done));
                }
                break;
            }
        }
        self.una = ack;
        delivered
    }

    /// Marks segments inside `[left, right)` SACKed; returns bytes newly delivered.
    fn sack(&mut self, left: u32, right: u32, now: Instant, rtt: &mut Option<Duration>) -> u64 {
        let from = self.segs.partition_point(|s| seq_lt(s.seq, left));
        let mut delivered = 0;
        let mut i = from;
        while i < self.sent_count {
            let s = &self.segs[i];
            if !seq_le(s.end(), right) {
                break;
            }
            if s.state != State::Sacked {
                let (state, len) = (s.state, s.len);
                delivered += u64::from(len);
                let seg = &self.segs[i];
                let (sent, xmits, end, stamp) = (seg.sent, seg.xmits, seg.end(), seg.stamp);
                self.note(sent, xmits, end, stamp, now, rtt);
                self.leave_state(state, len);
                self.segs[i].state = State::Sacked;
                self.sacked += u64::from(len);
            }
            i += 1;
        }
        delivered
    }

    fn note_delivery(&mut self, seg: &Seg, now: Instant, rtt: &mut Option<Duration>) {
        self.note(seg.sent, seg.xmits, seg.end(), seg.stamp, now, rtt);
    }

    /// Builds the delivery-rate sample of the ACK that delivered `delivered` bytes
    /// (draft-cheng-iccrg-delivery-rate-estimation §3.3), from the newest segment it
    /// delivered.
    fn rate_sample(&mut self, delivered: u64, now: Instant) -> Option<RateSample> {
        let d = &mut self.rate;
        if delivered > 0 {
            d.delivered += delivered;
            d.delivered_time = Some(now);
        }
        if d.app_limited_until != 0 && d.delivered > d.app_limited_until {
            d.app_limited_until = 0;
        }
        let (stamp, sent) = d.pending.take()?;
        let send_elapsed = sent.saturating_duration_since(stamp.first_sent);
        let ack_elapsed = now.saturating_duration_since(stamp.delivered_time);
        Some(RateSample {
            delivered: d.delivered - stamp.delivered,
            interval: send_elapsed.max(ack_elapsed),
            app_limited: stamp.app_limited,
        })
    }

    /// The sender has less to send than its window allows: the rate samples of what
    /// is in flight now measure the application, not the path.
    fn check_app_limited(&mut self) {
        if self.sent_count == self.segs.len()
            && self.lost == 0
            && self.in_flight < u64::from(self.cc.cwnd())
        {
            self.rate.app_limited_until = (self.rate.delivered + self.in_flight).max(1);
        }
    }

    /// RACK's update for a delivered segment (RFC 8985 §6.2 steps 2 and 3), an RTT
    /// sample when it was sent once (Karn), and the spurious-retransmission check.
    fn note(
        &mut self,
        sent: Option<Instant>,
        xmits: u32,
        end: u32,
        stamp: Option<TxStamp>,
        now: Instant,
        rtt: &mut Option<Duration>,
    ) {
        let Some(sent) = sent else {
            return;
        };
        let r = now.saturating_duration_since(sent);
        // "Too soon": under the minimum RTT (RFC 8985), or half the smoothed one when a
        // few packets that skipped a queue have pulled the minimum far below it.
        let too_soon = self
            .rtt
            .min
            .map(|min| min.max(self.rtt.srtt.unwrap_or(min) / 2));
        if xmits > 1 && too_soon.is_some_and(|t| r < t) {
            // Delivered too soon to be the retransmission: the original arrived, so
            // this retransmission was spurious, and the "loss" was reordering. Peers
            // that send no D-SACK (smoltcp) show it only this way.
            self.rack.reordering_seen = true;
            self.widen_reo_wnd();
            if let Some(rec) = &mut self.recovery {
                rec.spurious += 1;
            }
            return;
        }
        if let Some(stamp) = stamp
            && self
                .rate
                .pending
                .is_none_or(|(p, _)| stamp.delivered >= p.delivered)
        {
            self.rate.pending = Some((stamp, sent));
            self.rate.first_sent = Some(sent);
        }
        if xmits == 1 {
            *rtt = Some(rtt.map_or(r, |x: Duration| x.min(r)));
        }
        let rack = &mut self.rack;
        if rack.fack.is_some_and(|f| seq_lt(end, f)) && xmits == 1 {
            rack.reordering_seen = true;
        }
        if rack.fack.is_none_or(|f| seq_lt(f, end)) {
            rack.fack = Some(end);
        }
        let newer = match rack.xmit {
            None => true,
            Some(t) => sent > t || (sent == t && seq_lt(rack.end_seq, end)),
        };
        if newer {
            rack.xmit = Some(sent);
            rack.end_seq = end;
            rack.rtt = r;
        }
    }

    /// A D-SACK: widen the reordering window (once per round trip) and count a
    /// spurious retransmission.
    fn on_dsack(&mut self) {
        self.widen_reo_wnd();
        if let Some(rec) = &mut self.recovery {
            rec.spurious += 1;
        }
    }

    /// Grows the reordering window's multiplier, at most once per round trip.
    fn widen_reo_wnd(&mut self) {
        let rack = &mut self.rack;
        if rack.dsack_round.is_none_or(|r| r < self.round) {
            rack.dsack_round = Some(self.round);
            rack.reo_wnd_mult = (rack.reo_wnd_mult + 1).min(MAX_REO_WND_MULT);
            rack.reo_wnd_persist = REO_WND_PERSIST;
        }
    }

    /// RACK's reordering window (RFC 8985 §6.2 step 4).
    fn reo_wnd(&self) -> Duration {
        if !self.rack.reordering_seen
            && (self.recovery.is_some() || self.sacked >= u64::from(DUP_THRESH * self.mss))
        {
            return Duration::ZERO;
        }
        // RFC 8985 counts in quarters of the minimum RTT. A path where a few packets skip
        // a queue (the reordering it is meant for) drives the minimum towards zero, and the
        // window with it; a quarter of the smoothed RTT, never less, keeps its meaning.
        let min = self.rtt.min.unwrap_or(Duration::ZERO);
        let srtt = self.rtt.srtt.unwrap_or(Duration::ZERO);
        (min.max(srtt) / 4 * self.rack.reo_wnd_mult).min(srtt)
    }

    /// Marks lost the segments RACK finds lost (§6.2 step 5); arms the reordering timer
    /// for those that may still be reordered; enters recovery on a new loss.
    fn detect_losses(&mut self, now: Instant, prior_in_flight: u64) {
        self.timers.stop(Timer::Reorder);
        let Some(rack_xmit) = self.rack.xmit else {
            return;
        };
        let wait = self.rack.rtt + self.reo_wnd();
        let mut next: Option<Instant> = None;
        let mut newly = false;
        for i in 0..self.sent_count {
            let s = &self.segs[i];
            let Some(sent) = s.sent else {
                continue;
            };
            let before =
                sent < rack_xmit || (sent == rack_xmit && seq_lt(s.end(), self.rack.end_seq));
            if !before && s.xmits == 1 && self.resent_outstanding == 0 {
                // First transmissions go out in sequence order: none after this one was
                // sent before the delivered one, and nothing outstanding was sent twice.
                break;
            }
            if !before || s.state != State::InFlight {
                continue;
            }
            let due = sent + wait;
            if due <= now {
                let len = s.len;
                self.segs[i].state = State::Lost;
                self.in_flight -= u64::from(len);
                self.lost += u64::from(len);
                self.rate.lost_total += u64::from(len);
                newly = true;
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        if let Some(at) = next {
            self.timers.set(Timer::Reorder, at);
        }
        if newly && self.recovery.is_none() {
            self.enter_recovery(prior_in_flight);
        }
    }

    fn enter_recovery(&mut self, prior_in_flight: u64) {
        // Cubic cuts (PRR brings the window down); BBR keeps its model and window.
        let undo = self.cc.cubic().map(|c| c.on_congestion());
        let rack = &mut self.rack;
        rack.reo_wnd_persist = rack.reo_wnd_persist.saturating_sub(1);
        if rack.reo_wnd_persist == 0 {
            rack.reo_wnd_mult = 1;
        }
        self.recovery = Some(Recovery {
            end: self.nxt,
            after_rto: false,
            prr_delivered: 0,
            prr_out: 0,
            recover_fs: prior_in_flight.max(1),
            sndcnt: 0,
            undo,
            retrans: 0,
            spurious: 0,
        });
        self.timers.stop(Timer::Probe);
        self.update_prr(0);
    }

    /// After an ACK: the end of a recovery, then PRR in recovery or window growth.
    fn after_delivery(&mut self, ack: &AckInfo, cwnd_limited: bool) {
        let delivered = ack.acked;
        let now = ack.now;
        if let Some(rec) = &self.recovery
            && seq_le(rec.end, self.una)
        {
            let rec = self.recovery.take();
            if let Some(rec) = rec {
                let spurious = rec.retrans > 0 && rec.spurious >= rec.retrans;
                if spurious {
                    self.rack.reordering_seen = true;
                }
                let pipe = u32::try_from(self.in_flight).unwrap_or(u32::MAX);
                match &mut self.cc {
                    Controller::Cubic(c) => {
                        if spurious && let Some(undo) = rec.undo {
                            c.undo(undo);
                            self.events.undos += 1;
                        } else if !rec.after_rto {
                            c.on_recovery_end(pipe);
                        }
                    }
                    Controller::Bbr(b) => b.on_recovery_end(),
                }
            }
        }
        let srtt = self.rtt.srtt.unwrap_or(INITIAL_RTO);
        let acked = u32::try_from(delivered).unwrap_or(u32::MAX);
        let in_recovery = self.recovery.is_some();
        let in_fast_recovery = self.recovery.as_ref().is_some_and(|r| !r.after_rto);
        if let Controller::Bbr(b) = &mut self.cc {
            b.on_ack(ack);
        } else if in_fast_recovery {
            self.update_prr(delivered);
        } else if let Some(c) = self.cc.cubic() {
            // After a timeout: slow start.
            c.on_ack(acked, now, srtt, in_recovery || cwnd_limited);
        }
    }

    /// PRR's send quota after `delivered` more bytes (RFC 6937 §3, with SSRB).
    fn update_prr(&mut self, delivered: u64) {
        if !matches!(self.cc, Controller::Cubic(_)) {
            return;
        }
        let ssthresh = u64::from(self.cc.ssthresh());
        let mss = u64::from(self.mss);
        let pipe = self.in_flight;
        let have_lost = self.lost > 0;
        let Some(rec) = &mut self.recovery else {
            return;
        };
        if rec.after_rto {
            return;
        }
        rec.prr_delivered += delivered;
        let sndcnt = if pipe > ssthresh {
            (rec.prr_delivered * ssthresh)
                .div_ceil(rec.recover_fs)
                .saturating_sub(rec.prr_out)
        } else {
            let limit = rec.prr_delivered.saturating_sub(rec.prr_out).max(delivered) + mss;
            (ssthresh - pipe).min(limit)
        };
        // The first retransmission goes out at once (RFC 6937bis).
        rec.sndcnt = if sndcnt == 0 && rec.prr_out == 0 && have_lost {
            mss
        } else {
            sndcnt
        };
        let cwnd = pipe + rec.sndcnt;
        if let Some(c) = self.cc.cubic() {
            c.set_cwnd(u32::try_from(cwnd).unwrap_or(u32::MAX));
        }
    }

    /// How far behind its pacing schedule the sender may catch up at once: half the
    /// smoothed RTT, or twice how late its pacing timer has lately fired, at least
    /// [`PACE_HORIZON`]. The window bounds the burst in any case.
    fn pace_horizon(&self) -> Duration {
        let srtt = self.rtt.srtt.unwrap_or(Duration::ZERO);
        (srtt / 2).max(2 * self.pace_late).max(PACE_HORIZON)
    }

    /// Bytes the window (or PRR) lets out now.
    fn allowance(&self) -> u64 {
        let prr = matches!(self.cc, Controller::Cubic(_));
        match &self.recovery {
            Some(rec) if prr && !rec.after_rto => rec.sndcnt,
            _ => {
                let cwnd = u64::from(self.cc.cwnd());
                if self.in_flight == 0 {
                    cwnd.max(u64::from(self.mss))
                } else {
                    cwnd.saturating_sub(self.in_flight)
                }
            }
        }
    }

    /// Sends segment `i` (held, lost, or probed again).
    fn transmit(&mut self, i: usize, now: Instant, out: &mut Vec<Bytes>) {
        let latest = self.latest;
        if self.in_flight == 0 {
            // Nothing in flight: a new delivery-rate interval starts now.
            self.rate.first_sent = Some(now);
            self.rate.delivered_time = Some(now);
        }
        let stamp = TxStamp {
            delivered: self.rate.delivered,
            delivered_time: self.rate.delivered_time.unwrap_or(now),
            first_sent: self.rate.first_sent.unwrap_or(now),
            app_limited: self.rate.app_limited_until != 0,
        };
        let seg = &mut self.segs[i];
        let len = u64::from(seg.len);
        let was = seg.state;
        refresh(&mut seg.packet, latest);
        out.push(seg.packet.clone());
        seg.sent = Some(now);
        seg.stamp = Some(stamp);
        seg.xmits += 1;
        let again = seg.xmits > 1;
        if seg.xmits == 2 {
            self.resent_outstanding += 1;
        }
        let end = seg.end();
        if was != State::Sacked {
            seg.state = State::InFlight;
        }
        match was {
            State::Unsent => {
                self.sent_count += 1;
                self.nxt = end;
                self.in_flight += len;
            }
            State::Lost => {
                self.lost -= len;
                self.in_flight += len;
            }
            State::InFlight | State::Sacked => {}
        }
        self.round_max_in_flight = self.round_max_in_flight.max(self.in_flight);
        if again {
            if was == State::Lost {
                self.events.retransmits += 1;
            }
            if let Some(rec) = &mut self.recovery {
                rec.retrans += 1;
            }
        }
        if let Some(rec) = &mut self.recovery
            && !rec.after_rto
        {
            rec.prr_out += len;
            rec.sndcnt = rec.sndcnt.saturating_sub(len);
        }
    }

    fn on_rto(&mut self, now: Instant) {
        if self.sent_count == 0 {
            return;
        }
        self.events.rtos += 1;
        for i in 0..self.sent_count {
            let s = &mut self.segs[i];
            if s.state == State::InFlight {
                s.state = State::Lost;
                self.in_flight -= u64::from(s.len);
                self.lost += u64::from(s.len);
                self.rate.lost_total += u64::from(s.len);
            }
        }
        // One cut per episode: a timeout during a timeout's recovery keeps ssthresh.
        let again = self.recovery.as_ref().is_some_and(|r| r.after_rto);
        let undo = match &mut self.cc {
            Controller::Cubic(c) if again => {
                c.set_cwnd(self.mss);
                None
            }
            Controller::Cubic(c) => Some(c.on_rto()),
            Controller::Bbr(b) => {
                b.on_rto();
                None
            }
        };
        self.recovery = Some(Recovery {
            end: self.nxt,
            after_rto: true,
            prr_delivered: 0,
            prr_out: 0,
            recover_fs: 1,
            sndcnt: 0,
            undo,
            retrans: 0,
            spurious: 0,
        });
        self.backoff = self.backoff.saturating_add(1);
        self.probed = true;
        // The timeout supersedes a probe due at the same time.
        self.probe_pending = false;
        self.timers.stop(Timer::Probe);
        self.timers.stop(Timer::Reorder);
        self.arm_rto(now);
    }

    fn arm_rto(&mut self, now: Instant) {
        if self.sent_count == 0 {
            self.timers.stop(Timer::Rto);
            return;
        }
        let rto = self
            .rtt
            .rto(self.min_rto)
            .saturating_mul(1 << self.backoff.min(16))
            .min(MAX_RTO);
        self.timers.set(Timer::Rto, now + rto);
    }

    /// Arms the tail-loss probe (RFC 8985 §7.2) when data is outstanding, no recovery
    /// runs and no probe went out since the last progress.
    fn arm_probe(&mut self, now: Instant) {
        if self.sent_count == 0 || self.recovery.is_some() || self.probed {
            self.timers.stop(Timer::Probe);
            return;
        }
        let pto = match self.rtt.srtt {
            None => INITIAL_RTO,
            Some(srtt) => {
                let mut pto = 2 * srtt;
                if self.in_flight <= u64::from(self.mss) {
                    pto += WORST_CASE_ACK_DELAY;
                }
                pto.max(MIN_PTO)
            }
        };
        let at = now + pto;
        if self.timers.get(Timer::Rto).is_some_and(|rto| rto <= at) {
            self.timers.stop(Timer::Probe);
        } else {
            self.timers.set(Timer::Probe, at);
        }
    }

    fn leave_state(&mut self, state: State, len: u32) {
        self.sub_state(state, u64::from(len));
    }

    fn sub_state(&mut self, state: State, n: u64) {
        match state {
            State::InFlight => self.in_flight -= n,
            State::Lost => self.lost -= n,
            State::Sacked => self.sacked -= n,
            State::Unsent => {}
        }
    }

    fn check_invariants(&self) {
        debug_assert!(
            self.sent_count == 0 || self.timers.get(Timer::Rto).is_some(),
            "data outstanding without a retransmission timer"
        );
        debug_assert!(
            self.sent_count > 0
                || self.segs.is_empty()
                || self.wants_transmit()
                || self.timers.get(Timer::Pace).is_some(),
            "held data with nothing in flight and nothing to send"
        );
    }
}

/// A segment's SACK blocks as a slice source, without allocating.
fn sack_list(seg: &Segment) -> ([(u32, u32); 3], usize) {
    let mut list = [(0, 0); 3];
    let mut n = 0;
    for block in seg.sacks.iter().flatten() {
        list[n] = *block;
        n += 1;
    }
    (list, n)
}

/// The packet to send: `packet` as it was, or a copy carrying smoltcp's latest ACK
/// number and window.
fn refreshed(packet: &Bytes, latest: Option<(u32, u16)>) -> Bytes {
    latest
        .and_then(|(ack, window)| crate::wire::with_ack_and_window(packet, ack, window))
        .map_or_else(|| packet.clone(), Bytes::from)
}

/// Makes `packet` carry smoltcp's latest ACK number and window: in place when the sender
/// holds the only reference (a first transmission), else as a copy.
fn refresh(packet: &mut Bytes, latest: Option<(u32, u16)>) {
    let Some((ack, window)) = latest else {
        return;
    };
    match std::mem::take(packet).try_into_mut() {
        Ok(mut unique) => {
            crate::wire::set_ack_and_window(&mut unique, ack, window);
            *packet = unique.freeze();
        }
        Err(shared) => *packet = refreshed(&shared, latest),
    }
}

#[cfg(test)]
mod tests;
