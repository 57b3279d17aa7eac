//! The Manager: one WireGuard device ([`wg_core::Peers`]) on a batched UDP socket and one
//! userspace TCP/IP stack ([`netstack::Netstack`]) on the virtual IP, joined by packet tasks.
//! It is the entry point for a service that embeds the agent (`examples/embed.rs` is one).
//!
//! - [`Manager::start`] binds the socket, adds the gateways (handshakes start at once) and
//!   spawns the packet tasks (`tasks.rs`: receive, send, timer) and the upkeep (`upkeep.rs`:
//!   state changes, liveness probe, DNS re-resolution).
//! - [`Manager::update_gateways`] applies a new gateway list by difference: an unchanged
//!   gateway keeps its session and its connections.
//! - [`Manager::listen`], [`Manager::dial_tcp`], [`Manager::dial_udp`] and [`Manager::ping`]
//!   open sockets inside the tunnel; [`Manager::stats`] reports each gateway.
//! - [`Manager::close`] drains: no new connection, open ones finish within a bound, then the
//!   tasks stop.
//!
//! The device and the bookkeeping of each gateway (`Device`) share one lock, held only while
//! the engine is fed or read, never across an `.await`.

mod endpoint;
mod listener;
mod liveness;
mod tasks;
mod upkeep;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use netstack::{Netstack, NetstackConfig, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wg_core::{IpNet, PeerConfig, Peers, PresharedKey, PrivateKey, PublicKey};

pub use endpoint::{Endpoint, Host};
pub use listener::Listener;
pub use liveness::{
    GatewayState, HANDSHAKE_LIFETIME, Liveness, LivenessProbe, RECEIVE_WINDOW, gateway_state,
};
pub use tasks::PacketCounters;

/// How long [`Manager::close`] waits for open connections by default.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a packet task gets to stop after it was told to; then it is aborted.
const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How a [`Manager`] is set up: the agent's identity and address, and its gateways.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ManagerConfig {
    /// The agent's private key.
    pub private_key: PrivateKey,
    /// The agent's virtual IP inside the tunnel.
    pub virtual_ip: IpAddr,
    /// A second virtual IP, of the other IP family (dual stack: one IPv4 and one IPv6
    /// address). Listeners accept on both; outbound traffic leaves from the address of the
    /// destination's family.
    pub second_virtual_ip: Option<IpAddr>,
    /// Local UDP port (0: any).
    pub listen_port: u16,
    /// The tunnel MTU (IP packets inside WireGuard).
    pub mtu: u16,
    /// The gateways (peers), each identified by its public key.
    pub gateways: Vec<GatewaySpec>,
    /// Tuning of the userspace stack; `addresses` and `mtu` are set from the fields above.
    pub netstack: NetstackConfig,
    /// Silence from a gateway after which the liveness probe is sent (default 25 s).
    pub probe_after: Duration,
    /// How long the probe waits for its answer before forcing a handshake (default 10 s).
    pub probe_timeout: Duration,
    /// How long [`Manager::close`] lets open connections finish (default 5 s).
    pub drain_timeout: Duration,
}

impl ManagerConfig {
    /// A configuration with no gateways, listen port 0, MTU 1420 and default stack tuning.
    pub fn new(private_key: PrivateKey, virtual_ip: IpAddr) -> Self {
        Self {
            private_key,
            virtual_ip,
            second_virtual_ip: None,
            listen_port: 0,
            mtu: 1420,
            gateways: Vec::new(),
            netstack: NetstackConfig::default(),
            probe_after: upkeep::PROBE_AFTER,
            probe_timeout: upkeep::PROBE_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
}

/// One gateway as the [`Manager`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewaySpec {
    /// The label in logs, metrics and status.
    pub id: String,
    /// An optional human name.
    pub name: Option<String>,
    /// The gateway's identity across updates.
    pub public_key: PublicKey,
    /// Where it listens (IP or DNS name); `None`: learned when it sends a handshake.
    pub endpoint: Option<Endpoint>,
    /// Its address inside the tunnel (the liveness probe's target); `None`: no probe.
    pub virtual_ip: Option<IpAddr>,
    /// Inner addresses routed to it (default: `virtual_ip`/32 or /128).
    pub allowed_ips: Vec<IpNet>,
    /// Optional preshared key.
    pub preshared_key: Option<PresharedKey>,
    /// Persistent keepalive interval (`None`: off).
    pub persistent_keepalive: Option<Duration>,
    /// The liveness probe setting.
    pub liveness_probe: LivenessProbe,
}

impl GatewaySpec {
    /// A gateway with the documented defaults (docs/configuration.md): allowed IPs =
    /// `virtual_ip`, keepalive 25 s, ICMP liveness probe.
    pub fn new(
        id: impl Into<String>,
        public_key: PublicKey,
        endpoint: Option<Endpoint>,
        virtual_ip: IpAddr,
    ) -> Self {
        Self {
            id: id.into(),
            name: None,
            public_key,
            endpoint,
            virtual_ip: Some(virtual_ip),
            allowed_ips: vec![IpNet::host(virtual_ip)],
            preshared_key: None,
            persistent_keepalive: Some(Duration::from_secs(25)),
            liveness_probe: LivenessProbe::Icmp,
        }
    }
}

/// Why the [`Manager`] could not start or apply an update.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The local UDP socket could not be bound.
    #[error("cannot bind the UDP socket on port {port}: {source}")]
    Bind {
        /// The configured port.
        port: u16,
        /// The cause.
        source: io::Error,
    },
    /// The userspace stack refused its configuration.
    #[error("netstack: {0}")]
    Netstack(#[from] netstack::ConfigError),
    /// Two gateways share an id or a public key.
    #[error("gateway `{0}` appears twice (ids and public keys must be unique)")]
    Duplicate(String),
    /// The manager was closed.
    #[error("the manager is closed")]
    Closed,
}

/// What [`Manager::update_gateways`] did, by gateway id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayUpdate {
    /// New gateways (handshake started).
    pub added: Vec<String>,
    /// Gateways that are gone.
    pub removed: Vec<String>,
    /// Gateways whose settings changed (session kept unless the preshared key changed).
    pub changed: Vec<String>,
    /// Gateways left exactly as they were: session and open connections untouched.
    pub unchanged: Vec<String>,
}

/// One gateway's figures, like a peer of `wg show` plus the agent's view of its health.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayStats {
    /// The gateway's id.
    pub id: String,
    /// Its human name.
    pub name: Option<String>,
    /// Its public key.
    pub public_key: PublicKey,
    /// The endpoint in use (resolved, or learned by roaming), else the configured text.
    pub endpoint: String,
    /// Its virtual IP (`None`: a gateway added through UAPI without one).
    pub virtual_ip: Option<IpAddr>,
    /// up / connecting / stale (the rule in docs/operations.md).
    pub state: GatewayState,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Time since anything authenticated arrived from it.
    pub last_received_age: Option<Duration>,
    /// UDP payload bytes received (handshakes included), as `wg show` counts.
    pub rx_bytes: u64,
    /// UDP payload bytes sent.
    pub tx_bytes: u64,
    /// Completed handshakes since it was added.
    pub handshakes: u64,
    /// Liveness probes sent and unanswered.
    pub probes_sent: u64,
    /// Liveness probes that went unanswered (each forced a handshake, except the one sent
    /// right after such a handshake to confirm it).
    pub probes_failed: u64,
    /// Liveness probes answered.
    pub probes_answered: u64,
    /// The probe goes unanswered though the handshakes it forces succeed: the gateway does
    /// not answer ICMP echo (filtered). Cleared when a probe is answered.
    pub icmp_filtered: bool,
}

impl GatewayStats {
    /// The last handshake as Unix seconds.
    pub fn last_handshake_unix(&self) -> Option<u64> {
        self.last_handshake
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    }
}

/// The running agent core: WireGuard device, userspace stack and their tasks. Cheap to
/// clone; every clone drives the same device. Dropping the last clone does not stop the
/// tasks: call [`Manager::close`].
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("virtual_ips", &self.inner.virtual_ips)
            .finish_non_exhaustive()
    }
}

/// State shared by the handle and the tasks.
pub(crate) struct Inner {
    /// The agent's addresses: the primary one first, then one of the other family.
    pub(crate) virtual_ips: Vec<IpAddr>,
    pub(crate) probe_after: Duration,
    pub(crate) probe_timeout: Duration,
    drain_timeout: Duration,
    pub(crate) netstack: Netstack,
    pub(crate) device: Mutex<Device>,
    pub(crate) sockets: tasks::Sockets,
    pub(crate) timer: tasks::TimerWake,
    pub(crate) counters: PacketCounters,
    /// Set when the packet tasks must stop (the last step of closing).
    pub(crate) shutdown: watch::Sender<bool>,
    /// Where closing stands: listeners and dials watch it.
    closing: watch::Sender<Closing>,
    /// Set once a packet task ended while the manager was open (see [`Manager::failed`]).
    failure: watch::Sender<Option<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The steps of [`Manager::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Serving.
    Open,
    /// No new connection; open ones finish (within the drain bound).
    Draining,
    /// The packet tasks have stopped.
    Closed,
}

/// The device and the agent's bookkeeping of each gateway, under one lock.
pub(crate) struct Device {
    pub(crate) peers: Peers,
    pub(crate) gateways: BTreeMap<PublicKey, Gateway>,
}

/// What the agent tracks for one gateway beyond wg-core's peer.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) spec: GatewaySpec,
    /// When it was added (the clock of the stale rule before any handshake).
    pub(crate) since: Instant,
    /// The last address DNS gave (or the literal IP).
    pub(crate) resolved: Option<SocketAddr>,
    /// The state last reported in the log.
    pub(crate) reported: GatewayState,
    pub(crate) upkeep: upkeep::GatewayUpkeep,
}

/// The device lock, held. Nothing logs while holding it (a slow log sink must not stall
/// packets): test builds check it.
pub(crate) struct DeviceGuard<'a>(MutexGuard<'a, Device>);

impl std::ops::Deref for DeviceGuard<'_> {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.0
    }
}

impl std::ops::DerefMut for DeviceGuard<'_> {
    fn deref_mut(&mut self) -> &mut Device {
        &mut self.0
    }
}

#[cfg(test)]
impl Drop for DeviceGuard<'_> {
    fn drop(&mut self) {
        lock_held::leave();
    }
}

/// How many device locks this thread holds (test builds only).
#[cfg(test)]
pub(crate) mod lock_held {
    use std::cell::Cell;

    thread_local! {
        static HELD: Cell<u32> = const { Cell::new(0) };
    }

    pub(crate) fn enter() {
        HELD.with(|h| h.set(h.get() + 1));
    }

    pub(crate) fn leave() {
        HELD.with(|h| h.set(h.get().saturating_sub(1)));
    }

    pub(crate) fn now() -> bool {
        HELD.with(|h| h.get() > 0)
    }
}

impl Device {
    pub(crate) fn gateway_id(&self, key: &PublicKey) -> &str {
        self.gateways.get(key).map_or("?", |g| g.spec.id.as_str())
    }

    /// wg-core's view of each gateway. A gateway whose configured endpoint is unchanged keeps
    /// the address roaming taught the engine.
    fn peer_configs(
        &self,
        gateways: &[GatewaySpec],
        resolved: &[Option<SocketAddr>],
    ) -> Vec<PeerConfig> {
        gateways
            .iter()
            .zip(resolved)
            .map(|(spec, addr)| {
                let mut peer = PeerConfig::new(spec.public_key);
                peer.allowed_ips = spec.allowed_ips.clone();
                peer.persistent_keepalive = spec.persistent_keepalive;
                peer.preshared_key = spec.preshared_key.clone();
                let same_endpoint = self
                    .gateways
                    .get(&spec.public_key)
                    .is_some_and(|g| g.spec.endpoint == spec.endpoint);
                peer.endpoint = if same_endpoint {
                    self.peers
                        .peer_config(&spec.public_key)
                        .and_then(|p| p.endpoint)
                        .or(*addr)
                } else {
                    *addr
                };
                peer
            })
            .collect()
    }

    /// Replaces the bookkeeping with one entry per gateway: a gateway wg-core kept carries
    /// its clock, reported state and upkeep over; a new one starts connecting now. Returns
    /// the old entries.
    fn replace_gateways(
        &mut self,
        gateways: Vec<GatewaySpec>,
        resolved: Vec<Option<SocketAddr>>,
        diff: &wg_core::Update,
        now: Instant,
    ) -> BTreeMap<PublicKey, Gateway> {
        let old = std::mem::take(&mut self.gateways);
        for (spec, resolved) in gateways.into_iter().zip(resolved) {
            let entry = match old.get(&spec.public_key) {
                Some(prev) if !diff.added.contains(&spec.public_key) => Gateway {
                    since: prev.since,
                    resolved,
                    reported: prev.reported,
                    upkeep: prev.upkeep.clone(),
                    spec,
                },
                _ => Gateway {
                    since: now,
                    resolved,
                    reported: GatewayState::Connecting,
                    upkeep: upkeep::GatewayUpkeep::new(now),
                    spec,
                },
            };
            self.gateways.insert(entry.spec.public_key, entry);
        }
        old
    }
}

impl GatewayUpdate {
    /// wg-core's difference by public key, told by gateway id (sorted).
    fn new(
        diff: &wg_core::Update,
        old: &BTreeMap<PublicKey, Gateway>,
        new: &BTreeMap<PublicKey, Gateway>,
    ) -> Self {
        let ids = |keys: &[PublicKey], map: &BTreeMap<PublicKey, Gateway>| {
            let mut ids: Vec<String> = keys
                .iter()
                .map(|k| {
                    map.get(k)
                        .map_or_else(|| k.to_string(), |g| g.spec.id.clone())
                })
                .collect();
            ids.sort();
            ids
        };
        Self {
            added: ids(&diff.added, new),
            removed: ids(&diff.removed, old),
            changed: ids(&diff.changed, new),
            unchanged: ids(&diff.unchanged, new),
        }
    }

    /// One line per gateway added, removed or changed.
    fn log(&self) {
        for id in &self.added {
            tracing::info!(gateway = %id, "gateway added");
        }
        for id in &self.removed {
            tracing::info!(gateway = %id, "gateway removed");
        }
        for id in &self.changed {
            tracing::info!(gateway = %id, "gateway updated");
        }
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> DeviceGuard<'_> {
        // A panic while holding the lock cannot leave the device half-updated in a way that
        // matters more than stopping would: keep serving.
        let guard = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        #[cfg(test)]
        lock_held::enter();
        DeviceGuard(guard)
    }

    fn is_closed(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow() != Closing::Open
    }
}

impl Manager {
    /// Creates the device and the stack, binds the UDP socket, resolves gateway endpoints,
    /// adds every gateway as a peer (handshakes start at once) and spawns the tasks. Must be
    /// called inside a tokio runtime. A DNS name that does not resolve yet is not an error:
    /// the upkeep retries it.
    pub async fn start(config: ManagerConfig) -> Result<Self, ManagerError> {
        check_unique(&config.gateways)?;
        let mut stack_config = config.netstack.clone();
        let virtual_ips: Vec<IpAddr> = std::iter::once(config.virtual_ip)
            .chain(config.second_virtual_ip)
            .collect();
        // netstack refuses two addresses of one family (ManagerError::Netstack).
        stack_config.addresses = virtual_ips.clone();
        stack_config.path_mtu = usize::from(config.mtu);
        let netstack = Netstack::new(stack_config)?;
        let sockets =
            tasks::Sockets::bind(config.listen_port).map_err(|source| ManagerError::Bind {
                port: config.listen_port,
                source,
            })?;
        let wg_config = {
            let mut c = wg_core::Config::default();
            c.max_packet_size = usize::from(config.mtu);
            c
        };
        let peers = Peers::with_config(config.private_key.clone(), wg_config);
        let (shutdown, _) = watch::channel(false);
        let (failure, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            virtual_ips: virtual_ips.clone(),
            probe_after: config.probe_after,
            probe_timeout: config.probe_timeout,
            drain_timeout: config.drain_timeout,
            netstack,
            device: Mutex::new(Device {
                peers,
                gateways: BTreeMap::new(),
            }),
            sockets,
            timer: tasks::TimerWake::default(),
            counters: PacketCounters::default(),
            shutdown,
            closing: watch::channel(Closing::Open).0,
            failure,
            tasks: Mutex::new(Vec::new()),
        });
        let manager = Self { inner };
        let local = manager.inner.sockets.local_addrs();
        tracing::info!(virtual_ips = ?virtual_ips, udp = ?local, "device up");
        let resolved = resolve_all(&manager.inner, &config.gateways).await;
        manager.apply_gateways(config.gateways, resolved).await;
        let inner = &manager.inner;
        let tasks = vec![
            supervise(inner, "receive", tasks::receive_task(Arc::clone(inner))),
            supervise(inner, "send", tasks::send_task(Arc::clone(inner))),
            supervise(inner, "timer", tasks::timer_task(Arc::clone(inner))),
            supervise(inner, "upkeep", upkeep::run(Arc::clone(inner))),
        ];
        inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(tasks);
        Ok(manager)
    }

    /// Completes when a packet task (receive, send, timer, upkeep) has ended while the
    /// manager was open: by a panic or an unexpected return. Traffic has then stopped for
    /// good, so the caller should end the process and let the service manager restart it.
    /// The output says which task and why. Never completes after [`close`](Self::close).
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.failure.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in `inner`, which `self` holds: the channel cannot close.
            Err(_) => std::future::pending().await,
        }
    }

    /// Replaces the gateway list, applying the difference: a gateway whose public key,
    /// endpoint and settings are unchanged keeps its session and every open connection;
    /// a new one starts its handshake at once; a removed one is dropped.
    pub async fn update_gateways(
        &self,
        gateways: Vec<GatewaySpec>,
    ) -> Result<GatewayUpdate, ManagerError> {
        let prepared = self.prepare_gateways(gateways).await?;
        Ok(self.apply_prepared(prepared).await)
    }

    /// The first half of [`update_gateways`](Self::update_gateways), which changes nothing:
    /// checks the list and resolves new DNS endpoints, all at once. A name that does not
    /// resolve is no error: the gateway is kept unresolved and the upkeep retries it.
    /// Dropping the future cancels the look-ups.
    pub async fn prepare_gateways(
        &self,
        gateways: Vec<GatewaySpec>,
    ) -> Result<PreparedGateways, ManagerError> {
        if self.inner.is_closing() {
            return Err(ManagerError::Closed);
        }
        check_unique(&gateways)?;
        let resolved = resolve_all(&self.inner, &gateways).await;
        Ok(PreparedGateways { gateways, resolved })
    }

    /// The second half of [`update_gateways`](Self::update_gateways): applies what
    /// [`prepare_gateways`](Self::prepare_gateways) checked and resolved. Cannot fail.
    pub async fn apply_prepared(&self, prepared: PreparedGateways) -> GatewayUpdate {
        let PreparedGateways { gateways, resolved } = prepared;
        self.apply_gateways(gateways, resolved).await
    }

    /// Applies a gateway list by difference: hand the peers to wg-core, carry each kept
    /// gateway's bookkeeping over, then report, log and send the handshakes this started.
    async fn apply_gateways(
        &self,
        gateways: Vec<GatewaySpec>,
        resolved: Vec<Option<SocketAddr>>,
    ) -> GatewayUpdate {
        let now = Instant::now();
        let report = {
            let mut device = self.inner.lock();
            let peers = device.peer_configs(&gateways, &resolved);
            let diff = device.peers.set_peers(peers, now);
            let old = device.replace_gateways(gateways, resolved, &diff, now);
            GatewayUpdate::new(&diff, &old, &device.gateways)
        };
        report.log();
        tasks::flush(&self.inner).await;
        report
    }

    /// Replaces the agent's private key: every tunnel re-keys (new handshakes at once).
    pub async fn set_private_key(&self, key: PrivateKey) {
        {
            let mut t = self.inner.lock();
            if t.peers.public_key() == key.public_key() {
                return;
            }
            t.peers.set_private_key(key, Instant::now());
        }
        tracing::info!("private key replaced: re-keying every tunnel");
        tasks::flush(&self.inner).await;
    }

    /// Forces a fresh handshake with a gateway (by id). Returns `false` for an unknown id.
    pub async fn force_handshake(&self, id: &str) -> bool {
        let found = {
            let mut t = self.inner.lock();
            let key = t
                .gateways
                .values()
                .find(|g| g.spec.id == id)
                .map(|g| g.spec.public_key);
            key.is_some_and(|k| t.peers.force_handshake(&k, Instant::now()))
        };
        if found {
            tasks::flush(&self.inner).await;
        }
        found
    }

    /// A TCP listener on `port` of every virtual IP (the seed's `GetListener`). It stops
    /// accepting when [`close`](Self::close) begins.
    pub fn listen(&self, port: u16) -> io::Result<Listener> {
        if self.inner.is_closing() {
            return Err(listener::closing_error());
        }
        let listener = self.inner.netstack.listen(self.bind_addr(port))?;
        Ok(Listener::new(listener, self.inner.closing.subscribe()))
    }

    /// An outbound TCP connection from the virtual IP through the tunnel (the seed's `Dial`
    /// for TCP). The destination must be inside some gateway's allowed IPs.
    pub async fn dial_tcp(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        if self.inner.is_closing() {
            return Err(listener::closing_error());
        }
        self.inner.netstack.connect(addr).await
    }

    /// A UDP socket on the virtual IP (ephemeral port) for `send_to`/`recv_from` through the
    /// tunnel (the seed's `Dial` for UDP).
    pub fn dial_udp(&self) -> io::Result<UdpSocket> {
        if self.inner.is_closing() {
            return Err(listener::closing_error());
        }
        self.inner.netstack.bind_udp(self.bind_addr(0))
    }

    /// The local address that covers `port` on every virtual IP: the virtual IP itself when
    /// there is one, the unspecified address (all of the stack's addresses) with two. A
    /// connection accepted there knows its own address (`TcpStream::local_addr`).
    pub fn bind_addr(&self, port: u16) -> SocketAddr {
        match self.inner.virtual_ips.as_slice() {
            [only] => SocketAddr::new(*only, port),
            _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        }
    }

    /// A UDP socket on `port` of every virtual IP ([`bind_addr`](Self::bind_addr); a UDP
    /// route's socket): datagrams from the tunnel to that port, replies from the address of
    /// the client's family.
    pub fn bind_udp(&self, port: u16) -> io::Result<UdpSocket> {
        if self.inner.is_closing() {
            return Err(listener::closing_error());
        }
        self.inner.netstack.bind_udp(self.bind_addr(port))
    }

    /// The gateway with this id: `None` when there is none, else its virtual IP (`None` for a
    /// gateway added without one).
    pub fn gateway_virtual_ip(&self, id: &str) -> Option<Option<IpAddr>> {
        let t = self.inner.lock();
        t.gateways
            .values()
            .find(|g| g.spec.id == id)
            .map(|g| g.spec.virtual_ip)
    }

    /// The id of the gateway whose allowed IPs hold `ip` (the longest prefix wins, as for
    /// packets), if any.
    pub fn gateway_routing(&self, ip: IpAddr) -> Option<String> {
        let t = self.inner.lock();
        t.gateways
            .values()
            .filter_map(|g| {
                g.spec
                    .allowed_ips
                    .iter()
                    .filter(|net| net.contains(ip))
                    .map(IpNet::prefix_len)
                    .max()
                    .map(|len| (len, &g.spec.id))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, id)| id.clone())
    }

    /// ICMP echo to `ip` through the tunnel; the round-trip time.
    pub async fn ping(&self, ip: IpAddr, timeout: Duration) -> io::Result<Duration> {
        self.inner.netstack.ping(ip, timeout).await
    }

    /// The userspace stack (for its statistics, or sockets beyond those above).
    pub fn netstack(&self) -> &Netstack {
        &self.inner.netstack
    }

    /// The agent's (first) virtual IP.
    pub fn virtual_ip(&self) -> IpAddr {
        // Never empty: built from `ManagerConfig::virtual_ip` and an optional second one.
        self.inner.virtual_ips[0]
    }

    /// Every virtual IP of the agent, the first one first (one, or one per IP family).
    pub fn virtual_ips(&self) -> &[IpAddr] {
        &self.inner.virtual_ips
    }

    /// The agent's public key.
    pub fn public_key(&self) -> PublicKey {
        self.inner.lock().peers.public_key()
    }

    /// The local UDP addresses (one per bound socket family).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.sockets.local_addrs()
    }

    /// Per-gateway figures (the seed's `GetStats`), ordered by id.
    pub fn stats(&self) -> Vec<GatewayStats> {
        let now = Instant::now();
        let t = self.inner.lock();
        let mut out: Vec<GatewayStats> = t
            .gateways
            .values()
            .map(|g| gateway_stats(&t.peers, g, now))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Packets dropped by the WireGuard device, by reason (wg-core's reasons).
    pub fn wg_drops(&self) -> wg_core::DropCounts {
        self.inner.lock().peers.drops()
    }

    /// Counters of the packet tasks (socket errors and re-creations, queue drops).
    pub fn counters(&self) -> &PacketCounters {
        &self.inner.counters
    }

    /// Closes gracefully within [`ManagerConfig::drain_timeout`]: see
    /// [`close_within`](Self::close_within).
    pub async fn close(&self) {
        self.close_within(self.inner.drain_timeout).await;
    }

    /// Closes gracefully (the seed's `Close`):
    /// 1. stops accepting: every [`Listener`] stops, new listens and dials fail;
    /// 2. lets the connections already open finish, for up to `drain`: it returns once the
    ///    stack holds no TCP connection (closing ones included), or when `drain` has passed;
    /// 3. stops the packet tasks, the send task after it has sent what the stack still had
    ///    queued.
    ///
    /// A second call waits for the first to finish.
    pub async fn close_within(&self, drain: Duration) {
        let mut closing = self.inner.closing.subscribe();
        let first = self.inner.closing.send_if_modified(|c| {
            let open = *c == Closing::Open;
            if open {
                *c = Closing::Draining;
            }
            open
        });
        if !first {
            let _ = closing.wait_for(|c| *c == Closing::Closed).await;
            return;
        }
        self.drain(drain).await;
        self.inner.shutdown.send_replace(true);
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for mut task in tasks {
            if tokio::time::timeout(TASK_STOP_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a packet task did not stop in time: aborted");
                task.abort();
                let _ = task.await;
            }
        }
        self.inner.closing.send_replace(Closing::Closed);
        tracing::info!("device closed");
    }

    /// Waits until the stack holds no TCP connection, at most `bound`.
    async fn drain(&self, bound: Duration) {
        let open = self.inner.netstack.stats().tcp_sockets;
        if open == 0 {
            return;
        }
        tracing::info!(open, "device closing: letting open connections finish");
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let open = self.inner.netstack.stats().tcp_sockets;
            if open == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(open, "drain bound reached: closing with connections open");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Gateways checked and resolved by [`Manager::prepare_gateways`], ready to apply.
#[derive(Debug)]
pub struct PreparedGateways {
    gateways: Vec<GatewaySpec>,
    resolved: Vec<Option<SocketAddr>>,
}

/// Resolves every gateway's endpoint at once (an unchanged endpoint keeps its last address).
/// Literal IPs need no look-up; a DNS name gets its own task, so one slow name costs at most
/// one look-up timeout, and dropping this future cancels them all.
async fn resolve_all(inner: &Arc<Inner>, gateways: &[GatewaySpec]) -> Vec<Option<SocketAddr>> {
    let mut out = vec![None; gateways.len()];
    let mut lookups = tokio::task::JoinSet::new();
    for (i, spec) in gateways.iter().enumerate() {
        let keep = {
            let t = inner.lock();
            t.gateways
                .get(&spec.public_key)
                .filter(|g| g.spec.endpoint == spec.endpoint)
                .map(|g| g.resolved)
        };
        match (keep, &spec.endpoint) {
            (Some(addr), _) => out[i] = addr,
            (None, Some(endpoint)) if endpoint_is_dns(endpoint) => {
                let endpoint = endpoint.clone();
                let inner = Arc::clone(inner);
                lookups.spawn(async move { (i, upkeep::resolve(&endpoint, &inner.sockets).await) });
            }
            (None, Some(endpoint)) => out[i] = endpoint.socket_addr(),
            (None, None) => {}
        }
    }
    while let Some(done) = lookups.join_next().await {
        if let Ok((i, addr)) = done {
            out[i] = addr;
        }
    }
    out
}

/// Spawns a packet task and a supervisor that watches it through its `JoinHandle`: a panic
/// or a return while the manager is open is recorded for [`Manager::failed`]. Aborting the
/// returned supervisor aborts the task too.
fn supervise<F>(inner: &Arc<Inner>, name: &'static str, task: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut handle = tokio::spawn(task);
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        let _abort = AbortOnDrop(handle.abort_handle());
        let outcome = (&mut handle).await;
        if inner.is_closed() {
            return;
        }
        let reason = match outcome {
            Ok(()) => format!("packet task `{name}` ended unexpectedly"),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned());
                format!("packet task `{name}` panicked: {message}")
            }
            Err(_) => format!("packet task `{name}` was cancelled"),
        };
        tracing::error!("{reason}; traffic has stopped");
        inner.failure.send_replace(Some(reason));
    })
}

pub(crate) fn gateway_stats(peers: &Peers, g: &Gateway, now: Instant) -> GatewayStats {
    let stats = peers.peer_stats(&g.spec.public_key, now);
    let ago = |age: Option<Duration>| age.and_then(|a| now.checked_sub(a));
    let (last_handshake_at, last_received_at) = stats.as_ref().map_or((None, None), |s| {
        (ago(s.last_handshake_age), ago(s.last_received_age))
    });
    let state = gateway_state(
        &Liveness {
            since: g.since,
            last_handshake: last_handshake_at,
            last_received: last_received_at,
            probe: g.spec.liveness_probe,
        },
        now,
    );
    let endpoint = stats
        .as_ref()
        .and_then(|s| s.endpoint)
        .map(|a| a.to_string())
        .or_else(|| g.spec.endpoint.as_ref().map(ToString::to_string))
        .unwrap_or_else(|| "(none)".to_owned());
    GatewayStats {
        id: g.spec.id.clone(),
        name: g.spec.name.clone(),
        public_key: g.spec.public_key,
        endpoint,
        virtual_ip: g.spec.virtual_ip,
        state,
        last_handshake: stats
            .as_ref()
            .and_then(|s| s.last_handshake(SystemTime::now())),
        last_received_age: stats.as_ref().and_then(|s| s.last_received_age),
        rx_bytes: stats.as_ref().map_or(0, |s| s.rx_bytes),
        tx_bytes: stats.as_ref().map_or(0, |s| s.tx_bytes),
        handshakes: stats.as_ref().map_or(0, |s| s.handshakes),
        probes_sent: g.upkeep.probes_sent,
        probes_failed: g.upkeep.probes_failed,
        probes_answered: g.upkeep.probes_answered,
        icmp_filtered: g.upkeep.icmp_filtered,
    }
}

fn check_unique(gateways: &[GatewaySpec]) -> Result<(), ManagerError> {
    let mut ids = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    for g in gateways {
        if !ids.insert(g.id.as_str()) || !keys.insert(g.public_key) {
            return Err(ManagerError::Duplicate(g.id.clone()));
        }
    }
    Ok(())
}

/// The host of an endpoint, for log lines.
pub(crate) fn endpoint_is_dns(endpoint: &Endpoint) -> bool {
    matches!(endpoint.host, Host::Name(_))
}

// The log witness needs tracing-subscriber, which comes with the feature `cli`.
#[cfg(all(test, feature = "cli"))]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use wg_core::PrivateKey;

    use super::*;

    /// A log writer that counts the lines written while this thread holds the device lock.
    #[derive(Clone, Default)]
    struct Witness {
        under_lock: Arc<AtomicUsize>,
        lines: Arc<AtomicUsize>,
        /// Where the lines under the lock came from.
        culprits: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    }

    impl std::io::Write for Witness {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Witness {
        type Writer = Witness;
        fn make_writer(&'a self) -> Witness {
            self.clone()
        }

        fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Witness {
            self.lines.fetch_add(1, Ordering::Relaxed);
            // The agent's own lines. wg-core and boringtun log at debug level inside the calls
            // the agent makes under the lock; that is theirs to move (left as a known gap).
            if lock_held::now() && meta.target().starts_with("agent") {
                self.under_lock.fetch_add(1, Ordering::Relaxed);
                self.culprits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(format!("{}: {}", meta.target(), meta.name()));
            }
            self.clone()
        }
    }

    /// A gateway and an agent on loopback, handshakes, traffic, a forced handshake, a
    /// gateway update and upkeep ticks, all logged at trace level on one thread: the agent
    /// writes no line while the device lock is held.
    #[test]
    fn nothing_is_logged_under_the_device_lock() {
        let witness = Witness::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(witness.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let agent_key = PrivateKey::generate();
            let gw_key = PrivateKey::generate();
            let agent_vip = IpAddr::from([10, 1, 0, 100]);
            let gw_vip = IpAddr::from([10, 1, 0, 1]);
            let mut gw_config = ManagerConfig::new(gw_key.clone(), gw_vip);
            let mut peer = GatewaySpec::new("agent", agent_key.public_key(), None, agent_vip);
            peer.persistent_keepalive = None;
            peer.liveness_probe = LivenessProbe::Off;
            gw_config.gateways = vec![peer];
            let gw = Manager::start(gw_config).await.expect("gateway");
            let endpoint = Endpoint {
                host: Host::Ip(IpAddr::from([127, 0, 0, 1])),
                port: gw.local_addrs()[0].port(),
            };
            let mut config = ManagerConfig::new(agent_key.clone(), agent_vip);
            let spec = GatewaySpec::new("gw1", gw_key.public_key(), Some(endpoint), gw_vip);
            config.gateways = vec![spec.clone()];
            config.probe_after = Duration::from_millis(500);
            let agent = Manager::start(config).await.expect("agent");
            let listener = agent.listen(80).expect("listen");
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf).await {
                        let _ = s.write_all(&buf[..n]).await;
                    }
                }
            });
            let mut s = tokio::time::timeout(
                Duration::from_secs(20),
                gw.dial_tcp(SocketAddr::new(agent_vip, 80)),
            )
            .await
            .expect("connect in time")
            .expect("connect");
            s.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.expect("echo");
            assert!(agent.force_handshake("gw1").await);
            let mut renamed = spec;
            renamed.id = "gw1-renamed".into();
            agent.update_gateways(vec![renamed]).await.expect("update");
            // Upkeep ticks (state changes, probes) over a couple of seconds.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            agent.close().await;
            gw.close().await;
        });
        assert!(
            witness.lines.load(Ordering::Relaxed) > 0,
            "nothing was logged"
        );
        assert_eq!(
            witness.under_lock.load(Ordering::Relaxed),
            0,
            "log lines written under the device lock: {:?}",
            witness
                .culprits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        );
    }
}
