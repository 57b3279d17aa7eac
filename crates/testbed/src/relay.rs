//! `ImpairedRelay`: a UDP relay between an agent and a gateway that drops, delays (base ± jitter),
//! reorders (holding one back, or sending one without the delay) and duplicates datagrams from a seeded random generator — the impairment these
//! kernels cannot do (no `netem`).
//!
//! The agent sends to the relay's address; the relay forwards from its own upstream socket to the
//! gateway, and sends what comes back to the agent's latest source address (like a NAT with one
//! client). Each direction has its own generator, seeded from the one seed, so a run is
//! reproducible for a given order of arrivals. Three threads: one receiver per socket and one
//! scheduler that sends each datagram when it is due. The queue is bounded; overflow is dropped
//! and counted.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the relay does to each datagram. Probabilities are in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Each datagram's delay is `delay` plus a uniform value in `-jitter..=jitter` (at least 0).
    /// Jitter alone reorders datagrams closer together than the jitter, as netem does, unless
    /// [`keep_order`](Self::keep_order) is set.
    pub jitter: Duration,
    /// With jitter, never send a datagram before one that arrived earlier in the same direction
    /// (a jittery but FIFO path, like a queue); reordering then comes from `reorder` only.
    pub keep_order: bool,
    /// Probability that a datagram is held back and sent right after the next datagram of the
    /// same direction (or after [`reorder_hold`](Self::reorder_hold) if none comes). One
    /// datagram per direction is held at a time; a held datagram is not also duplicated.
    pub reorder: f64,
    /// Longest time a held-back datagram waits for a successor.
    pub reorder_hold: Duration,
    /// Probability that a datagram skips the delay and is sent at once, overtaking those in
    /// flight (netem's `reorder`). It does not move the [`keep_order`](Self::keep_order)
    /// point of the datagrams after it.
    pub undelayed: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Seed of the random generators.
    pub seed: u64,
    /// Most datagrams waiting in the relay; more are dropped (`queue_full`).
    pub queue_limit: usize,
}

impl Default for Impairment {
    /// A transparent relay (nothing dropped, delayed, reordered or duplicated), seed 1.
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            keep_order: false,
            reorder: 0.0,
            reorder_hold: Duration::from_millis(50),
            undelayed: 0.0,
            duplicate: 0.0,
            seed: 1,
            queue_limit: 4096,
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams received on this direction's input.
    pub received: u64,
    /// Datagrams sent out (duplicates included).
    pub sent: u64,
    /// Dropped on purpose (`loss`).
    pub dropped: u64,
    /// Extra copies scheduled (`duplicate`).
    pub duplicated: u64,
    /// Held back to be sent after their successor (`reorder`).
    pub reordered: u64,
    /// Sent without the delay (`undelayed`).
    pub undelayed: u64,
    /// Dropped because the queue was full.
    pub queue_full: u64,
    /// Sends that failed, or replies with no known agent address.
    pub send_errors: u64,
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Agent → gateway.
    pub to_gateway: DirectionStats,
    /// Gateway → agent.
    pub to_agent: DirectionStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    ToGateway,
    ToAgent,
}

struct Scheduled {
    due: Instant,
    seq: u64,
    direction: Direction,
    payload: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Lane {
    rng: StdRng,
    held: Option<(Instant, Vec<u8>)>,
    /// Due time of the last datagram queued (for `keep_order`).
    last_due: Option<Instant>,
    stats: DirectionStats,
}

struct State {
    impairment: Impairment,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    lanes: [Lane; 2],
    agent: Option<SocketAddr>,
}

impl State {
    fn lane(&mut self, direction: Direction) -> &mut Lane {
        &mut self.lanes[direction as usize]
    }

    fn queued(&self) -> usize {
        self.queue.len() + self.lanes.iter().filter(|l| l.held.is_some()).count()
    }

    fn push(&mut self, due: Instant, direction: Direction, payload: Vec<u8>) {
        if self.queue.len() >= self.impairment.queue_limit {
            self.lane(direction).stats.queue_full += 1;
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        self.queue.push(Reverse(Scheduled {
            due,
            seq,
            direction,
            payload,
        }));
    }

    /// Applies the impairment to one arriving datagram.
    fn arrive(&mut self, direction: Direction, payload: Vec<u8>, now: Instant) {
        let imp = self.impairment.clone();
        let lane = self.lane(direction);
        lane.stats.received += 1;
        if lane.rng.random_bool(probability(imp.loss)) {
            lane.stats.dropped += 1;
            return;
        }
        let jitter = imp.jitter.as_nanos() as i128;
        let offset = if jitter > 0 {
            lane.rng.random_range(-jitter..=jitter)
        } else {
            0
        };
        let delay_ns = (imp.delay.as_nanos() as i128 + offset).max(0);
        let mut due = now + Duration::from_nanos(u64::try_from(delay_ns).unwrap_or(u64::MAX));
        // Drawn only when asked for, so that seeds without it keep their sequences.
        let undelayed = imp.undelayed > 0.0 && lane.rng.random_bool(probability(imp.undelayed));
        if undelayed {
            lane.stats.undelayed += 1;
            due = now;
        } else if imp.keep_order {
            due = lane.last_due.map_or(due, |last| due.max(last));
            lane.last_due = Some(due);
        }
        let duplicate = lane.rng.random_bool(probability(imp.duplicate));
        let reorder = lane.rng.random_bool(probability(imp.reorder));
        if reorder && lane.held.is_none() {
            if self.queued() >= imp.queue_limit {
                self.lane(direction).stats.queue_full += 1;
                return;
            }
            let lane = self.lane(direction);
            lane.stats.reordered += 1;
            lane.held = Some((due.max(now + imp.reorder_hold), payload));
            return;
        }
        let held = lane.held.take();
        if duplicate {
            lane.stats.duplicated += 1;
            self.push(due, direction, payload.clone());
        }
        self.push(due, direction, payload);
        if let Some((_, held)) = held {
            // Sent after the datagram that overtook it.
            self.push(due, direction, held);
        }
    }

    /// Moves held datagrams whose hold time is over into the queue.
    fn release_expired(&mut self, now: Instant) {
        for direction in [Direction::ToGateway, Direction::ToAgent] {
            if let Some((deadline, _)) = &self.lane(direction).held
                && *deadline <= now
                && let Some((deadline, payload)) = self.lane(direction).held.take()
            {
                self.push(deadline, direction, payload);
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let queue = self.queue.peek().map(|Reverse(s)| s.due);
        let held = self
            .lanes
            .iter()
            .filter_map(|l| l.held.as_ref().map(|h| h.0));
        queue.into_iter().chain(held).min()
    }
}

/// A probability the generator accepts: clamped to `0.0..=1.0`, NaN as 0.
fn probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a relay thread must not hide the counters from the test.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A running impaired relay; its threads stop on drop.
pub struct ImpairedRelay {
    local_addr: SocketAddr,
    upstream_local_addr: SocketAddr,
    gateway: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ImpairedRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImpairedRelay")
            .field("local_addr", &self.local_addr)
            .field("gateway", &self.gateway)
            .field("stats", &self.stats())
            .finish()
    }
}

const MAX_DATAGRAM: usize = 65_535;
const POLL: Duration = Duration::from_millis(20);

impl ImpairedRelay {
    /// Binds `listen` (the address the agent sends to; port 0 = any) and an upstream socket,
    /// and forwards between the agent and `gateway` with `impairment`. The upstream socket is
    /// bound to loopback when `listen` is a loopback address, else to the unspecified address
    /// so that the kernel picks the source address of the route to `gateway` (the relay may
    /// join two namespaces' veth links in the host); to choose it, see
    /// [`start_with_upstream`](Self::start_with_upstream).
    pub fn start(
        listen: SocketAddr,
        gateway: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Self> {
        let upstream_ip = if listen.ip().is_loopback() {
            listen.ip()
        } else if gateway.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        Self::start_with_upstream(listen, SocketAddr::new(upstream_ip, 0), gateway, impairment)
    }

    /// Like [`start`](Self::start), with the upstream socket bound to `upstream`.
    pub fn start_with_upstream(
        listen: SocketAddr,
        upstream: SocketAddr,
        gateway: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Self> {
        let front = bind_udp(listen)?;
        let back = bind_udp(upstream)?;
        Self::from_sockets(front, back, gateway, impairment)
    }

    /// Starts the relay inside `netns`: both sockets are created there (the threads run in the
    /// test process, which does not matter once a socket exists). `upstream` is where the
    /// upstream socket binds (e.g. `0.0.0.0:0`).
    pub fn start_in(
        netns: &crate::Netns,
        listen: SocketAddr,
        upstream: SocketAddr,
        gateway: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Self> {
        let sockets = netns
            .run_inside(move || Ok::<_, io::Error>((bind_udp(listen)?, bind_udp(upstream)?)))
            .map_err(io::Error::other)??;
        Self::from_sockets(sockets.0, sockets.1, gateway, impairment)
    }

    /// Starts the relay on sockets bound already: `front` faces the agent, `back` the gateway.
    pub fn from_sockets(
        front: UdpSocket,
        back: UdpSocket,
        gateway: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Self> {
        front.set_read_timeout(Some(POLL))?;
        back.set_read_timeout(Some(POLL))?;
        let seed = impairment.seed;
        let lane = |salt: u64| Lane {
            rng: StdRng::seed_from_u64(seed ^ salt),
            held: None,
            last_due: None,
            stats: DirectionStats::default(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                impairment,
                queue: BinaryHeap::new(),
                seq: 0,
                lanes: [lane(0x746f_6777), lane(0x746f_6167)],
                agent: None,
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let local_addr = front.local_addr()?;
        let upstream_local_addr = back.local_addr()?;
        let front = Arc::new(front);
        let back = Arc::new(back);
        let mut threads = Vec::new();
        threads.push(spawn_receiver(
            "relay-from-agent",
            Arc::clone(&front),
            Direction::ToGateway,
            Arc::clone(&shared),
            None,
        )?);
        threads.push(spawn_receiver(
            "relay-from-gateway",
            Arc::clone(&back),
            Direction::ToAgent,
            Arc::clone(&shared),
            Some(gateway),
        )?);
        let scheduler_shared = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("relay-scheduler".into())
                .spawn(move || scheduler(&scheduler_shared, &front, &back, gateway))?,
        );
        Ok(Self {
            local_addr,
            upstream_local_addr,
            gateway,
            shared,
            threads,
        })
    }

    /// The address the agent should use as the gateway's endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the gateway sees the agent at (the relay's upstream socket).
    pub fn upstream_local_addr(&self) -> SocketAddr {
        self.upstream_local_addr
    }

    /// The gateway address datagrams are forwarded to.
    pub fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RelayStats {
        let state = self.shared.lock();
        RelayStats {
            to_gateway: state.lanes[Direction::ToGateway as usize].stats,
            to_agent: state.lanes[Direction::ToAgent as usize].stats,
        }
    }

    /// Datagrams waiting in the relay right now.
    pub fn queued(&self) -> usize {
        self.shared.lock().queued()
    }

    /// Replaces the impairment from now on (the generators keep their state; the seed is
    /// ignored).
    pub fn set_impairment(&self, impairment: Impairment) {
        self.shared.lock().impairment = impairment;
    }
}

impl Drop for ImpairedRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Socket buffers the relay asks for: the kernel default (about 200 KiB) would add drops of its
/// own at a few hundred Mbit/s, on top of the configured loss.
const SOCKET_BUFFER: usize = 4 << 20;

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: capped by net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn spawn_receiver(
    name: &str,
    socket: Arc<UdpSocket>,
    direction: Direction,
    shared: Arc<Shared>,
    only_from: Option<SocketAddr>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while !shared.stop.load(Ordering::Relaxed) {
                let (len, from) = match socket.recv_from(&mut buf) {
                    Ok(got) => got,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue;
                    }
                    // ICMP port unreachable from an earlier send shows up here: keep going,
                    // without spinning should an error repeat.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                };
                if only_from.is_some_and(|gateway| gateway != from) {
                    continue;
                }
                let now = Instant::now();
                let mut state = shared.lock();
                if direction == Direction::ToGateway {
                    state.agent = Some(from);
                }
                state.arrive(direction, buf[..len].to_vec(), now);
                drop(state);
                shared.wake.notify_all();
            }
        })
}

fn scheduler(shared: &Shared, front: &UdpSocket, back: &UdpSocket, gateway: SocketAddr) {
    let mut state = shared.lock();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        state.release_expired(now);
        let due = state
            .queue
            .peek()
            .is_some_and(|Reverse(scheduled)| scheduled.due <= now);
        if due && let Some(Reverse(scheduled)) = state.queue.pop() {
            let agent = state.agent;
            drop(state);
            let result = match scheduled.direction {
                Direction::ToGateway => back.send_to(&scheduled.payload, gateway).map(|_| ()),
                Direction::ToAgent => match agent {
                    Some(agent) => front.send_to(&scheduled.payload, agent).map(|_| ()),
                    None => Err(io::Error::other("no agent address yet")),
                },
            };
            state = shared.lock();
            let stats = &mut state.lane(scheduled.direction).stats;
            match result {
                Ok(()) => stats.sent += 1,
                Err(_) => stats.send_errors += 1,
            }
            continue;
        }
        let wait = state
            .next_wakeup()
            .map_or(POLL, |at| at.saturating_duration_since(now).min(POLL));
        state = shared
            .wake
            .wait_timeout(state, wait)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|poison| poison.into_inner().0);
    }
}
