//! The sender in virtual time: segments in, packets and deadlines out.

use super::*;
use smoltcp::wire::{IpEndpoint, Ipv4Address};

const MSS: u32 = 1000;
/// Our ISS + 1: where data starts.
const ISS: u32 = 1_000_000;
/// The peer's sequence number (what our ACKs acknowledge).
const RCV: u32 = 5_000;
/// What one test segment is charged.
const CHARGE: usize = 4 + SEG_OVERHEAD;

fn ep(last: u8, port: u16) -> IpEndpoint {
    IpEndpoint::new(Ipv4Address::new(10, 0, 0, last).into(), port)
}

fn seg(seq: u32, len: u32) -> Segment {
    Segment {
        src: ep(1, 50_000),
        dst: ep(2, 80),
        seq,
        ack: Some(RCV),
        len,
        control: false,
        rst: false,
        fin: false,
        window: 1000,
        sacks: [None; 3],
    }
}

/// A packet that is not IP (so it is resent as it is), naming its sequence number.
fn packet(seq: u32) -> Bytes {
    Bytes::from(seq.to_be_bytes().to_vec())
}

fn seq_of(p: &Bytes) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

/// A peer's ACK (in our window) of `ack` with `sacks`.
fn ack(ack: u32, sacks: &[(u32, u32)]) -> Segment {
    let mut s = seg(RCV, 0);
    s.src = ep(2, 80);
    s.dst = ep(1, 50_000);
    s.ack = Some(ack);
    for (slot, b) in s.sacks.iter_mut().zip(sacks) {
        *slot = Some(*b);
    }
    s
}

fn at(n: u32) -> u32 {
    ISS + n * MSS
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct T {
    s: Sender,
    budget: Budget,
    now: Instant,
}

impl T {
    fn new() -> Self {
        Self::with_budget(1 << 20, 1 << 20)
    }

    fn with_budget(limit: usize, budget: usize) -> Self {
        let budget = Budget::new(budget);
        let mut s = Sender::new(limit, budget.clone(), 1 << 20, MSS, MIN_RTO);
        let now = Instant::now();
        let mut syn = seg(ISS - 1, 0);
        syn.control = true;
        syn.ack = None;
        assert_eq!(s.on_emitted(&syn, &packet(0), now), Verdict::Pass);
        Self { s, budget, now }
    }

    /// smoltcp emits `n` segments from segment index `from`.
    fn emit(&mut self, from: u32, n: u32) -> Vec<Verdict> {
        (from..from + n)
            .map(|i| {
                self.s
                    .on_emitted(&seg(at(i), MSS), &packet(at(i)), self.now)
            })
            .collect()
    }

    fn transmit(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        self.s.poll_transmit(self.now, &mut out, usize::MAX);
        out.iter().map(seq_of).collect()
    }

    fn ack(&mut self, a: u32, sacks: &[(u32, u32)]) -> Vec<u32> {
        self.s.on_segment(&ack(a, sacks), self.now);
        self.transmit()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Runs timers up to `until`, returning what they sent.
    fn run_until(&mut self, until: Instant) -> Vec<u32> {
        let mut sent = Vec::new();
        while let Some(t) = self.s.poll_timeout() {
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            self.s.handle_timeout(self.now);
            sent.extend(self.transmit());
        }
        self.now = self.now.max(until);
        sent
    }

    /// Delivers segments `0..n` with one ACK each, `rtt` after they were sent.
    fn warm_up(&mut self, n: u32, rtt: Duration) {
        self.emit(0, n);
        let sent = self.transmit();
        assert_eq!(sent.len(), n as usize);
        self.advance(rtt);
        for i in 1..=n {
            self.ack(at(i), &[]);
        }
    }
}

#[test]
fn new_data_is_held_until_the_window_lets_it_go() {
    let mut t = T::new();
    assert!(t.emit(0, 30).iter().all(|v| *v == Verdict::Held));
    assert_eq!(
        t.transmit(),
        (0..10).map(at).collect::<Vec<_>>(),
        "initial window"
    );
    assert!(t.transmit().is_empty());
    t.advance(ms(20));
    // Two segments delivered: slow start lets four more out.
    assert_eq!(t.ack(at(2), &[]), (10..14).map(at).collect::<Vec<_>>());
    assert_eq!(t.s.cwnd(), 12 * MSS);
    assert_eq!(t.budget.used(), 28 * CHARGE);
}

#[test]
fn smoltcp_resends_are_dropped_and_keep_alives_pass() {
    let mut t = T::new();
    t.emit(0, 4);
    t.transmit();
    // smoltcp's timeout goes back over everything it emitted, cut differently.
    let mut again = seg(at(0), 2 * MSS);
    assert_eq!(t.s.on_emitted(&again, &packet(0), t.now), Verdict::Drop);
    again.seq = at(3);
    again.len = MSS;
    assert_eq!(t.s.on_emitted(&again, &packet(0), t.now), Verdict::Drop);
    // Straddling new data: held, accounting only for the new bytes.
    again.seq = at(3) + 500;
    again.len = MSS;
    assert_eq!(
        t.s.on_emitted(&again, &packet(at(3) + 500), t.now),
        Verdict::Held
    );
    assert_eq!(t.s.end, at(4) + 500);
    assert_eq!(t.transmit(), [at(3) + 500]);
    t.ack(at(4) + 500, &[]);
    // Everything acknowledged: a keep-alive (the last byte again) goes out.
    let ka = seg(at(4) + 499, 1);
    assert_eq!(t.s.on_emitted(&ka, &packet(0), t.now), Verdict::Pass);
    assert_eq!(t.s.take_events().smoltcp_resends, 2);
}

#[test]
fn holes_below_sacked_data_are_repaired_in_one_round_trip_with_prr() {
    let mut t = T::new();
    t.warm_up(10, ms(20));
    // The window grew on every ACK: the round's flight filled it (window-limited is
    // judged per round trip, as Linux does, not on each ACK's view of what is left).
    assert_eq!(t.s.cwnd(), 20 * MSS);
    t.emit(10, 25);
    assert_eq!(t.transmit().len(), 20, "10..30 in flight, 30..35 held");
    t.advance(ms(20));
    // Segments 12 and 15 lost; the rest SACKed as their ACKs arrive.
    let mut sent = Vec::new();
    sent.extend(t.ack(at(12), &[]));
    sent.extend(t.ack(at(12), &[(at(13), at(14))]));
    sent.extend(t.ack(at(12), &[(at(13), at(15))]));
    assert!(t.s.recovery.is_none());
    let before = t.s.cwnd();
    sent.extend(t.ack(at(12), &[(at(13), at(15)), (at(16), at(17))]));
    // Three segments SACKed past the hole: lost at once (no reordering seen).
    let recovery = t.s.recovery.as_ref().expect("in recovery");
    assert!(sent.contains(&at(12)), "{sent:?}");
    assert!(
        !sent.contains(&at(15)),
        "15 is not yet below three SACKed segments"
    );
    // Cut to 0.7 of the window at the loss (which this ACK's delivery may have grown).
    let ssthresh = t.s.cc.ssthresh();
    assert!(
        (before * 7 / 10..=(before + MSS) * 7 / 10).contains(&ssthresh),
        "{ssthresh}"
    );
    let _ = recovery;
    for k in 18..=25 {
        sent.extend(t.ack(at(12), &[(at(16), at(k)), (at(13), at(15))]));
    }
    assert!(sent.contains(&at(15)), "{sent:?}");
    let rec = t.s.recovery.as_ref().expect("in recovery");
    // PRR: no more sent than delivered (plus one segment), whatever the window was.
    assert!(rec.prr_out <= rec.prr_delivered + u64::from(MSS), "{rec:?}");
    assert_eq!(t.s.take_events().retransmits, 2);
    // The repairs arrive: recovery ends with the window at ssthresh.
    t.advance(ms(20));
    t.transmit();
    let nxt = t.s.nxt;
    t.ack(nxt, &[]);
    assert!(t.s.recovery.is_none());
    // At ssthresh, plus congestion avoidance's growth for this ACK.
    let (cwnd, ssthresh) = (t.s.cwnd(), t.s.cc.ssthresh());
    assert!(
        (ssthresh..ssthresh + MSS).contains(&cwnd),
        "{cwnd} {ssthresh}"
    );
}

#[test]
fn a_lost_tail_is_found_by_the_probe() {
    let mut t = T::new();
    t.warm_up(4, ms(20));
    t.emit(4, 6);
    t.transmit();
    // 4..6 arrive; 6..10 are lost, so no SACK comes.
    t.advance(ms(20));
    t.ack(at(6), &[]);
    let probe_at = t.s.poll_timeout().expect("probe armed");
    assert_eq!(probe_at, t.now + ms(40));
    let sent = t.run_until(probe_at);
    assert_eq!(sent, [at(9)], "the last segment probes");
    // The peer SACKs the probe: 6, 7, 8 are lost (sent before it).
    t.advance(ms(20));
    let resent = t.ack(at(6), &[(at(9), at(10))]);
    assert_eq!(resent, [at(6), at(7), at(8)][..resent.len()].to_vec());
    assert!(!resent.is_empty());
    assert_eq!(t.s.take_events().probes, 1);
}

#[test]
fn a_late_timeout_still_resends_and_the_timer_stays_armed() {
    let mut t = T::new();
    t.warm_up(2, ms(20));
    t.emit(2, 5);
    t.transmit();
    // Nothing comes back, and the timers run 5 s late (a starved machine).
    t.advance(ms(5000));
    t.s.handle_timeout(t.now);
    let sent = t.transmit();
    assert!(sent.contains(&at(2)), "{sent:?}");
    assert!(
        t.s.poll_timeout().is_some(),
        "armed while data is outstanding"
    );
    // Many timeouts later the backoff is capped at MAX_RTO, never beyond.
    for _ in 0..20 {
        let next = t.s.poll_timeout().expect("armed");
        assert!(next - t.now <= MAX_RTO, "{:?}", next - t.now);
        t.now = next;
        t.s.handle_timeout(t.now);
        assert!(t.transmit().contains(&at(2)));
    }
    assert!(t.s.take_events().rtos >= 20);
    // The first ACK after that: the segments go out in slow start.
    t.ack(at(7), &[]);
    assert_eq!(t.s.poll_timeout(), None);
    assert_eq!(t.budget.used(), 0);
}

#[test]
fn rto_has_a_200_ms_floor() {
    let mut t = T::new();
    t.warm_up(1, ms(1));
    t.emit(1, 3);
    t.transmit();
    let start = t.now;
    // The probe first, then the timeout.
    let sent = t.run_until(start + ms(199));
    assert_eq!(sent, [at(3)], "only the probe before the floor");
    let sent = t.run_until(start + ms(260));
    assert!(sent.contains(&at(1)), "{sent:?}");
}

#[test]
fn out_of_window_or_out_of_range_acks_change_nothing() {
    let mut t = T::new();
    t.warm_up(2, ms(20));
    t.emit(2, 8);
    t.transmit();
    let timers = t.s.poll_timeout();
    // A forger's segment outside our window, with SACK blocks that would make 2..5 lost.
    let mut forged = ack(at(2), &[(at(5), at(10))]);
    forged.seq = RCV.wrapping_add(0x4000_0000);
    t.s.on_segment(&forged, t.now);
    // An ACK of data never sent, in window.
    t.s.on_segment(&ack(at(50), &[]), t.now);
    // SACK blocks beyond what was sent are ignored, in window.
    t.s.on_segment(&ack(at(2), &[(at(20), at(30))]), t.now);
    assert!(t.transmit().is_empty());
    assert_eq!(t.s.sacked, 0);
    assert_eq!(t.s.una, at(2));
    assert_eq!(t.s.poll_timeout(), timers);
    assert_eq!(t.s.take_events().ignored, 2);
}

#[test]
fn after_an_abort_nothing_is_held_armed_or_sent() {
    let mut t = T::new();
    t.warm_up(2, ms(20));
    t.emit(2, 8);
    t.transmit();
    assert!(t.budget.used() > 0);
    t.s.abort();
    assert_eq!(t.budget.used(), 0);
    assert_eq!(t.s.poll_timeout(), None);
    assert!(t.run_until(t.now + ms(120_000)).is_empty());
    // Whatever smoltcp or the peer sends next.
    assert_eq!(t.emit(10, 2), [Verdict::Pass, Verdict::Pass]);
    t.s.on_segment(&ack(at(4), &[(at(5), at(6))]), t.now);
    assert!(t.transmit().is_empty());
    assert_eq!(t.budget.used(), 0);
}

#[test]
fn an_rst_from_smoltcp_aborts() {
    let mut t = T::new();
    t.emit(0, 3);
    t.transmit();
    let mut rst = seg(at(3), 0);
    rst.rst = true;
    rst.control = true;
    assert_eq!(t.s.on_emitted(&rst, &packet(0), t.now), Verdict::Pass);
    assert_eq!(t.s.poll_timeout(), None);
    assert_eq!(t.budget.used(), 0);
}

#[test]
fn reordering_seen_and_dsack_widen_the_window_and_undo_the_cut() {
    let mut t = T::new();
    t.warm_up(10, ms(40));
    t.emit(10, 20);
    t.transmit();
    t.advance(ms(40));
    let before = t.s.cwnd();
    // 10 arrives late: 11..14 are SACKed first, so 10 is marked lost and resent.
    let mut sent = Vec::new();
    for k in 12..=14 {
        sent.extend(t.ack(at(10), &[(at(11), at(k))]));
    }
    assert!(sent.contains(&at(10)), "{sent:?}");
    assert!(t.s.cc.ssthresh() < before);
    // The original arrives at once; the peer then reports the resend with a D-SACK.
    t.advance(ms(1));
    t.ack(at(14), &[]);
    t.ack(at(14), &[(at(10), at(11))]);
    assert!(t.s.rack.reo_wnd_mult >= 2, "{}", t.s.rack.reo_wnd_mult);
    // Recovery ends: every retransmission was spurious, the cut is undone.
    t.advance(ms(40));
    t.transmit();
    let nxt = t.s.nxt;
    t.ack(nxt, &[]);
    assert!(t.s.recovery.is_none());
    assert!(t.s.cwnd() >= before, "cwnd {} < {before}", t.s.cwnd());
    assert_eq!(t.s.take_events().undos, 1);
    assert!(t.s.rack.reordering_seen);
    assert!(t.s.reo_wnd() > Duration::ZERO);
}

#[test]
fn memory_is_bounded_per_connection_and_over_the_stack_with_a_floor() {
    let mut a = T::with_budget(5 * CHARGE, 6 * CHARGE);
    let verdicts = a.emit(0, 8);
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Held).count(), 5);
    // Past the bound, later segments are gaps: dropped until smoltcp re-emits.
    assert_eq!(verdicts[5..], [Verdict::Drop; 3]);
    // Another connection on the same budget: past it, it still gets its floor.
    let mut b = Sender::new(1 << 20, a.budget.clone(), 1 << 20, MSS, MIN_RTO);
    let mut syn = seg(ISS - 1, 0);
    syn.control = true;
    b.on_emitted(&syn, &packet(0), a.now);
    let held = (0..6)
        .filter(|&i| b.on_emitted(&seg(at(i), MSS), &packet(at(i)), a.now) == Verdict::Held)
        .count();
    assert_eq!(
        held,
        1 + (FLOOR_SEGMENTS - 1),
        "one within the budget, then the floor"
    );
    assert!(a.budget.used() <= 6 * CHARGE + FLOOR_SEGMENTS * CHARGE);
    a.transmit();
    a.ack(at(5), &[]);
    // smoltcp's timeout re-emits the dropped ones: taken now.
    assert_eq!(a.emit(5, 3), [Verdict::Held; 3]);
    drop(b);
    drop(a.s);
    assert_eq!(a.budget.used(), 0);
}

#[test]
fn a_fin_takes_one_sequence_number() {
    let mut t = T::new();
    t.emit(0, 2);
    let mut fin = seg(at(2), 0);
    fin.fin = true;
    assert_eq!(t.s.on_emitted(&fin, &packet(at(2)), t.now), Verdict::Held);
    assert_eq!(t.transmit().len(), 3);
    // smoltcp sends the FIN again: dropped.
    assert_eq!(t.s.on_emitted(&fin, &packet(at(2)), t.now), Verdict::Drop);
    t.advance(ms(10));
    t.ack(at(2) + 1, &[]);
    assert_eq!(t.s.poll_timeout(), None);
    assert_eq!(t.budget.used(), 0);
}

#[test]
fn sequence_numbers_wrap() {
    let budget = Budget::new(1 << 20);
    let mut s = Sender::new(1 << 20, budget.clone(), 1 << 20, MSS, MIN_RTO);
    let now = Instant::now();
    let iss = u32::MAX - 2 * MSS;
    let mut syn = seg(iss, 0);
    syn.control = true;
    s.on_emitted(&syn, &packet(0), now);
    let first = iss.wrapping_add(1);
    for i in 0..6 {
        let q = first.wrapping_add(i * MSS);
        assert_eq!(s.on_emitted(&seg(q, MSS), &packet(q), now), Verdict::Held);
    }
    let mut out = Vec::new();
    assert_eq!(s.poll_transmit(now, &mut out, usize::MAX), 6);
    s.on_segment(&ack(first.wrapping_add(6 * MSS), &[]), now + ms(10));
    assert_eq!(budget.used(), 0);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn nonsense_segments_never_panic() {
    let mut t = T::new();
    t.emit(0, 5);
    t.transmit();
    for (a, sacks) in [
        (0, vec![(5, 1)]),
        (at(1), vec![(0, u32::MAX)]),
        (u32::MAX, vec![(7, 7)]),
        (at(3), vec![(at(1), at(2)), (at(0), at(4)), (at(4), at(9))]),
        (at(5), vec![(at(1), at(5))]),
    ] {
        t.ack(a, &sacks);
        t.advance(ms(300));
        t.run_until(t.now);
    }
    assert_eq!(t.budget.used(), 0);
}

#[test]
fn queued_data_is_paid_for_when_queued_and_never_twice() {
    let per_segment = MSS as usize + HEADERS + SEG_OVERHEAD;
    let mut t = T::with_budget(1 << 20, 10 * per_segment);
    // Room for ten segments in the budget: a 20-segment write gets ten.
    assert_eq!(t.s.reserve(20 * MSS as usize), 10 * MSS as usize);
    assert_eq!(t.budget.used(), 10 * per_segment);
    assert_eq!(t.s.reserve(MSS as usize), 0, "wait for an ACK");
    // Two were not queued after all.
    t.s.unreserve(2 * MSS as usize);
    assert_eq!(t.budget.used(), 8 * per_segment);
    // smoltcp emits the eight (packets of MSS + 40 bytes, as charged): paid already.
    let p = Bytes::from(vec![0u8; MSS as usize + HEADERS]);
    for i in 0..8 {
        assert_eq!(t.s.on_emitted(&seg(at(i), MSS), &p, t.now), Verdict::Held);
    }
    assert_eq!(t.budget.used(), 8 * per_segment);
    assert_eq!(t.s.reserved, 0);
    t.s.abort();
    assert_eq!(t.budget.used(), 0);
}

impl T {
    fn bbr() -> Self {
        let mut t = T::new();
        t.s.cc = Controller::Bbr(Box::new(Bbr::new(MSS)));
        t
    }
}

#[test]
fn bbr_paces_and_a_pacing_timer_that_fires_late_never_strands_the_connection() {
    let mut t = T::bbr();
    // The initial window goes out at once (no RTT yet, nothing to pace by).
    t.emit(0, 400);
    assert_eq!(t.transmit().len(), 10);
    t.advance(ms(20));
    for i in 1..=10 {
        t.ack(at(i), &[]);
    }
    // Now paced (the ACKs above let a few go): the rest wait for the pacing timer.
    let rate = t.s.cc.pacing_rate().expect("paced after an RTT sample");
    t.transmit();
    assert!(t.s.timers.get(Timer::Pace).is_some(), "pacing timer armed");
    assert!(!t.s.wants_transmit(), "nothing until the timer");
    let pace = t.s.poll_timeout().expect("a deadline");
    assert!(
        pace > t.now && pace <= t.now + MAX_PACE_GAP,
        "the next packet's time"
    );
    // The timer fires a full second late (a saturated machine): the backlog goes out,
    // at most a window at once, and the timer is armed again.
    t.now += Duration::from_secs(1);
    t.s.handle_timeout(t.now);
    assert!(t.s.wants_transmit());
    let late = t.transmit().len();
    assert!(late >= 1, "sent after the late timer");
    assert!(late as u32 <= t.s.cwnd() / MSS, "{late} packets at once");
    assert!(t.s.poll_timeout().is_some());
    // Those packets' rate samples measure the machine, not the path.
    assert_ne!(t.s.rate.app_limited_until, 0);
    let _ = rate;
    // Driving only by deadlines, however late each fires, everything goes out.
    for _ in 0..100_000 {
        if t.s.nxt == at(400) {
            break;
        }
        // What the shard does: send when the sender wants to, else sleep until its
        // deadline (here always 3 ms late).
        if !t.s.wants_transmit() {
            let at_ = t.s.poll_timeout().expect("held data always has a deadline");
            t.now = t.now.max(at_) + ms(3);
            t.s.handle_timeout(t.now);
        }
        t.transmit();
        // ACK everything sent so far, so the window never binds.
        let una = t.s.nxt;
        t.s.on_segment(&ack(una, &[]), t.now);
    }
    assert_eq!(t.s.nxt, at(400), "everything sent");
}

#[test]
fn bbr_keeps_its_window_through_a_random_loss() {
    let mut t = T::bbr();
    t.warm_up(10, ms(20));
    t.emit(10, 20);
    t.run_until(t.now + ms(5));
    let before = t.s.cwnd();
    t.advance(ms(20));
    // Segment 10 lost: later ones SACKed.
    let mut sent = Vec::new();
    for i in 12..16 {
        sent.extend(t.ack(at(10), &[(at(11), at(i))]));
    }
    sent.extend(t.run_until(t.now + ms(30)));
    assert!(sent.contains(&at(10)), "the hole is resent: {sent:?}");
    assert!(t.s.cwnd() >= before, "{} < {before}", t.s.cwnd());
}

#[test]
fn reserved_data_cut_into_more_segments_is_held_not_dropped() {
    // smoltcp cuts queued data where it likes (window edges, its own segment size), so the
    // data of a reservation may arrive in more packets than estimated, each with its
    // headers. A reservation made within the connection's limit must not turn into a
    // dropped segment: that leaves a gap only smoltcp's backed-off timeout fills, and the
    // connection stalls for seconds.
    let per_segment = MSS as usize + HEADERS + SEG_OVERHEAD;
    let mut t = T::with_budget(10 * per_segment, 1 << 20);
    assert_eq!(t.s.reserve(10 * MSS as usize), 10 * MSS as usize);
    // The ten MSS of data come out as twenty half segments.
    let half = MSS / 2;
    let p = Bytes::from(vec![0u8; half as usize + HEADERS]);
    for i in 0..20 {
        let verdict = t.s.on_emitted(&seg(ISS + i * half, half), &p, t.now);
        assert_eq!(verdict, Verdict::Held, "piece {i}");
    }
    assert_eq!(t.s.reserved, 0);
    t.s.abort();
    assert_eq!(t.budget.used(), 0);
}

/// A real TCP segment of `len` payload bytes at `seq`, with FIN when `fin`, else PSH
/// (smoltcp emptied its send ring).
fn data_packet(seq: u32, len: usize, fin: bool) -> (Segment, Bytes) {
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};
    let payload = vec![0x5a; len];
    let repr = TcpRepr {
        src_port: 50_000,
        dst_port: 80,
        control: if fin {
            TcpControl::Fin
        } else {
            TcpControl::Psh
        },
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: Some(TcpSeqNumber(RCV as i32)),
        window_len: 1000,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &payload,
    };
    let p = Bytes::from(crate::wire::tests::ipv4_tcp(
        Ipv4Address::new(10, 0, 0, 1),
        Ipv4Address::new(10, 0, 0, 2),
        &repr,
    ));
    let seg = crate::wire::tcp_segment(&p).expect("tcp");
    (seg, p)
}

#[test]
fn a_short_unsent_tail_is_handed_back_and_its_bytes_held_when_they_return() {
    let mut t = T::new();
    let max = MSS as usize;
    let (full, p) = data_packet(ISS, max, false);
    assert_eq!(t.s.on_emitted(&full, &p, t.now), Verdict::Held);
    let (short, q) = data_packet(ISS + MSS, 300, false);
    assert_eq!(t.s.on_emitted(&short, &q, t.now), Verdict::Held);
    let used = t.budget.used();
    // Only the last, short, unsent segment, and only for data that follows it.
    assert!(t.s.unsent_tail(ISS + MSS, max, false).is_none());
    assert!(
        t.s.unsent_tail(ISS + MSS + 300, 300, false).is_none(),
        "not short"
    );
    let tail =
        t.s.unsent_tail(ISS + MSS + 300, max, false)
            .expect("the tail");
    assert_eq!(&tail[..], &[0x5a; 300][..]);
    t.s.take_unsent_tail();
    assert_eq!(t.s.end, ISS + MSS);
    assert_eq!(t.budget.used(), used - (q.len() + SEG_OVERHEAD));
    assert_eq!(t.s.reserved_data, 300);
    // Its bytes come back joined to newer ones and are held, past a full budget too.
    t.budget.take(1 << 20, true);
    let (joined, r) = data_packet(ISS + MSS, max, false);
    assert_eq!(t.s.on_emitted(&joined, &r, t.now), Verdict::Held);
    assert_eq!(t.s.reserved_data, 0);
    t.budget.give(1 << 20);
    let (rest, s) = data_packet(ISS + 2 * MSS, 100, false);
    assert_eq!(t.s.on_emitted(&rest, &s, t.now), Verdict::Held);
    assert_eq!(t.s.end, ISS + 2 * MSS + 100);
    let mut out = Vec::new();
    t.s.poll_transmit(t.now, &mut out, usize::MAX);
    assert_eq!(out.len(), 3);
    // Sent: nothing to hand back; a FIN is never handed back either.
    assert!(t.s.unsent_tail(ISS + 2 * MSS + 100, max, true).is_none());
    let (fin, f) = data_packet(ISS + 2 * MSS + 100, 50, true);
    assert_eq!(t.s.on_emitted(&fin, &f, t.now), Verdict::Held);
    assert!(t.s.unsent_tail(ISS + 2 * MSS + 151, max, true).is_none());
}

#[test]
fn a_short_tail_without_psh_is_handed_back_only_behind_an_offset() {
    let mut t = T::new();
    let (mut short, q) = data_packet(ISS, 300, false);
    // Cut at the peer's window edge: no PSH.
    let mut q = q.to_vec();
    q[33] &= !0x08;
    crate::offload::fill_tcp_checksum(&mut q);
    short.len = 300;
    assert_eq!(
        t.s.on_emitted(&short, &Bytes::from(q), t.now),
        Verdict::Held
    );
    assert!(t.s.unsent_tail(ISS + 300, MSS as usize, false).is_none());
    assert!(t.s.unsent_tail(ISS + 300, MSS as usize, true).is_some());
}
