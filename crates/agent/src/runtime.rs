//! The running agent: the [`Manager`] plus one proxy per route on the virtual IP, the admin
//! endpoint, `SIGHUP` reload and graceful drain. [`run`] is what `wg-agent run` calls.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use local_proxy::{
    Accept, ConnectionTracker, HttpProxy, RouteMetrics, TcpForwarder, UdpForwarder, UdpMetrics,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{AdminAddr, AdminServer, PingFuture, StatusSource};
use crate::config::{Config, ConfigChanges, GatewayConfig, RouteConfig, RouteProtocol};
use crate::manager::{
    GatewaySpec, Listener, LivenessProbe, Manager, ManagerConfig, PreparedGateways,
};
use crate::metrics::{AgentCounters, MetricsWriter, write_agent_counters};
use crate::ping::{PingError, PingReply};
use crate::snapshot::{AgentStatus, GatewayStatus, RouteStatus, StatusSnapshot};
use crate::vip_stream::{VipDatagram, VipStream};

/// How long a stopping agent waits for closed connections to flush through the tunnel.
const LINGER: Duration = Duration::from_secs(3);

/// Sets the log level (a level or a `tracing` filter) of the running process.
pub type LogLevelControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How [`run_with`] hooks into the process around it.
#[derive(Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Applies `[log] level` on reload. `None`: the level is fixed (the command line's
    /// `--log-level` wins), and a reload that changes it says so.
    pub log_level: Option<LogLevelControl>,
    /// The `SIGHUP` stream, installed by the caller as early as it can; `None`: installed at
    /// once by [`run_with`], before anything else.
    pub hangup: Option<tokio::signal::unix::Signal>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("log_level", &self.log_level.is_some())
            .field("hangup", &self.hangup.is_some())
            .finish()
    }
}

/// Runs the agent described by `config` until `shutdown` completes (SIGTERM/SIGINT in the
/// binary), then drains: `/readyz` turns 503, in-flight requests get `drain_timeout`, then
/// the tunnel closes. `SIGHUP` re-reads `config.path` and applies it.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    run_with(config, shutdown, RunOptions::default()).await
}

/// [`run`], with the process hooks of [`RunOptions`]. Returns an error (the binary exits 1)
/// when the tunnel cannot start or a packet task dies.
pub async fn run_with(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    options: RunOptions,
) -> anyhow::Result<()> {
    // SIGHUP's default action kills the process: take it over before anything can take time.
    let mut hangup = match options.hangup {
        Some(signal) => signal,
        None => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?,
    };
    tokio::pin!(shutdown);
    let admin_listen = AdminAddr::from_listen(&config.admin);
    // Startup resolves gateway names: a SIGTERM meanwhile ends it at once.
    let agent = tokio::select! {
        agent = Agent::start(config) => agent?,
        () = &mut shutdown => return Ok(()),
    };
    *lock(&agent.inner.log_level) = options.log_level;
    // Gateway operators need this key first (their `[Peer] PublicKey`); it is public.
    tracing::info!(
        public_key = %agent.manager().public_key(),
        listen_port = agent.listen_port(),
        virtual_ip = %agent.manager().virtual_ip(),
        virtual_ips = %agent
            .manager()
            .virtual_ips()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        "agent started"
    );
    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin_task = match admin_listen {
        Some(addr) => {
            let server = match AdminServer::bind(&addr).await {
                Ok(server) => server,
                Err(error) => {
                    agent.stop().await;
                    return Err(error).context(
                        "the [admin] listen address must be free: stop what uses it, or pick another one",
                    );
                }
            };
            let source: Arc<dyn StatusSource> = Arc::new(agent.clone());
            let mut stopped = admin_stopped;
            Some(tokio::spawn(server.serve(source, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })))
        }
        None => None,
    };
    let uapi = match crate::uapi::UapiServer::bind(&agent.config().uapi_name).await {
        Ok(server) => server,
        Err(error) => {
            agent.stop().await;
            let _ = admin_stop.send(true);
            return Err(error);
        }
    };
    tracing::info!(socket = %uapi.path().display(), "UAPI socket ready (wg show)");
    let uapi_task = {
        let mut stopped = admin_stop.subscribe();
        tokio::spawn(uapi.serve(agent.clone(), async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    };
    sd_notify("READY=1");
    #[cfg(feature = "test-hooks")]
    crate::hooks::slow_after_ready().await;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            reason = agent.manager().failed() => {
                // Traffic has stopped for good: exit 1 so the service manager restarts us.
                sd_notify("STOPPING=1");
                anyhow::bail!("{reason}: exiting so the service manager restarts the agent");
            }
            _ = hangup.recv() => {
                sd_notify(&reloading_message());
                // Preparing changes nothing, so a SIGTERM may cut it short.
                let prepared = tokio::select! {
                    prepared = agent.prepare_reload() => prepared,
                    () = &mut shutdown => break,
                };
                match prepared {
                    Ok(prepared) => {
                        agent.commit_reload(prepared).await;
                    }
                    Err(error) => tracing::error!(
                        "config reload refused, keeping the running config: {error:#}"
                    ),
                }
                sd_notify("READY=1");
            }
        }
    }
    sd_notify("STOPPING=1");
    agent.stop().await;
    let _ = admin_stop.send(true);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    let _ = uapi_task.await;
    Ok(())
}

/// The agent: a [`Manager`] with its routes and their proxies. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("manager", &self.inner.manager)
            .finish_non_exhaustive()
    }
}

struct AgentInner {
    manager: Manager,
    /// The configuration that runs (restart-only settings as they were at startup).
    config: Mutex<Config>,
    /// HTTP and TCP routes, by port.
    routes: Mutex<BTreeMap<u16, Route>>,
    /// UDP routes, by port (a port may serve both a UDP and a TCP or HTTP route).
    udp_routes: Mutex<BTreeMap<u16, UdpRoute>>,
    tracker: ConnectionTracker,
    draining: AtomicBool,
    log_level: Mutex<Option<LogLevelControl>>,
    /// Taken by each reload and UAPI set from prepare to commit, so each is prepared from
    /// the configuration that runs when it applies.
    reconfigure: Arc<tokio::sync::Mutex<()>>,
    /// The configuration as last applied from the file (startup or `SIGHUP`): where the
    /// running one differs, the difference was made through UAPI.
    from_file: Mutex<Config>,
}

struct Route {
    config: RouteConfig,
    metrics: Arc<RouteMetrics>,
    /// Kept here, not only in the task, so a replaced route takes over the same listener.
    listener: Arc<Listener>,
    task: JoinHandle<()>,
}

struct UdpRoute {
    config: RouteConfig,
    metrics: Arc<UdpMetrics>,
    /// Kept here, not only in the task, so a replaced route takes over the same socket.
    socket: Arc<netstack::UdpSocket>,
    task: JoinHandle<()>,
}

impl Drop for UdpRoute {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running route of either kind, as [`Agent::apply_routes`] reconciles them.
trait Running {
    /// What the route serves on (a listener, a UDP socket): kept across a restart.
    type On;
    fn config(&self) -> &RouteConfig;
    fn on(&self) -> &Arc<Self::On>;
    fn task(&mut self) -> &mut JoinHandle<()>;
}

impl Running for Route {
    type On = Listener;
    fn config(&self) -> &RouteConfig {
        &self.config
    }
    fn on(&self) -> &Arc<Listener> {
        &self.listener
    }
    fn task(&mut self) -> &mut JoinHandle<()> {
        &mut self.task
    }
}

impl Running for UdpRoute {
    type On = netstack::UdpSocket;
    fn config(&self) -> &RouteConfig {
        &self.config
    }
    fn on(&self) -> &Arc<netstack::UdpSocket> {
        &self.socket
    }
    fn task(&mut self) -> &mut JoinHandle<()> {
        &mut self.task
    }
}

/// The routes of `config` that carry datagrams (`datagram`) or streams, by port.
fn wanted_routes(config: &Config, datagram: bool) -> BTreeMap<u16, &RouteConfig> {
    config
        .routes
        .iter()
        .filter(|r| r.protocol.is_datagram() == datagram)
        .map(|r| (r.port, r))
        .collect()
}

/// Stops the running routes that go away or change (every one with `restart_all`) and waits
/// for their tasks; a stream route's connections already accepted finish under the old
/// settings, a UDP route's flows end with its task. What a changed route served on goes
/// into `bound`, so the route that replaces it takes over the same listener or socket.
async fn stop_changed<R: Running>(
    routes: &Mutex<BTreeMap<u16, R>>,
    wanted: &BTreeMap<u16, &RouteConfig>,
    restart_all: bool,
    bound: &mut BTreeMap<u16, Arc<R::On>>,
) {
    let stopped: Vec<R> = {
        let mut routes = lock(routes);
        let ports: Vec<u16> = routes
            .iter()
            .filter(|(port, route)| {
                restart_all || wanted.get(*port).is_none_or(|w| **w != *route.config())
            })
            .map(|(port, _)| *port)
            .collect();
        ports.iter().filter_map(|p| routes.remove(p)).collect()
    };
    for mut route in stopped {
        let task = route.task();
        task.abort();
        let _ = task.await;
        let config = route.config();
        if wanted.contains_key(&config.port) {
            bound.insert(config.port, Arc::clone(route.on()));
        } else {
            tracing::info!(port = config.port, protocol = %config.protocol, "route stopped");
        }
    }
}

/// Sockets and listeners bound ahead of [`Agent::apply_routes`] (by a reload's preparation, or
/// kept from the routes a change replaces).
#[derive(Default)]
struct Bound {
    listeners: BTreeMap<u16, Arc<Listener>>,
    udp: BTreeMap<u16, Arc<netstack::UdpSocket>>,
}

/// Where a configuration change comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeOrigin {
    /// The config file, re-read (`SIGHUP`): it replaces any change made through UAPI.
    File,
    /// A UAPI `set=1` (`wg set`): runtime state until the next reload or restart.
    Uapi,
}

/// A reload checked and prepared by [`Agent::prepare_reload`] or [`Agent::prepare_change`]:
/// nothing has changed yet. Other reloads and UAPI sets wait until it is committed or
/// dropped.
pub struct PreparedReload {
    /// The new configuration as it can apply (restart-only settings kept at their running
    /// values).
    applied: Config,
    changes: ConfigChanges,
    gateways: PreparedGateways,
    /// Listeners and UDP sockets bound for ports no route serves yet.
    bound: Bound,
    origin: ChangeOrigin,
    /// This change's turn (see `AgentInner::reconfigure`).
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl PreparedReload {
    /// What the change will change.
    pub fn changes(&self) -> &ConfigChanges {
        &self.changes
    }
}

impl std::fmt::Debug for PreparedReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedReload")
            .field("origin", &self.origin)
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener on the virtual IP, shared with the route that may replace this one, as
/// local-proxy accepts connections: closed once the manager closes.
struct VipListener(Arc<Listener>);

impl Accept for VipListener {
    type Stream = VipStream;

    async fn accept(&mut self) -> io::Result<Option<(Self::Stream, SocketAddr)>> {
        let accepted = self.0.next_connection().await?;
        Ok(accepted.map(|(stream, peer)| (VipStream(stream), peer)))
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.0.local_addr())
    }

    /// On a dual-stack agent the listener is a wildcard: the stream knows which virtual IP
    /// the client reached.
    fn connection_local_addr(&self, stream: &VipStream) -> Option<SocketAddr> {
        Some(stream.0.local_addr())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The Manager's view of one configured gateway.
pub fn gateway_spec(g: &GatewayConfig) -> GatewaySpec {
    GatewaySpec {
        id: g.id.clone(),
        name: g.name.clone(),
        public_key: g.public_key,
        endpoint: Some(g.endpoint.clone()),
        virtual_ip: g.virtual_ip,
        allowed_ips: g.allowed_ips.clone(),
        preshared_key: g.preshared_key.clone(),
        persistent_keepalive: (g.persistent_keepalive > 0)
            .then(|| Duration::from_secs(u64::from(g.persistent_keepalive))),
        // Without a virtual IP there is nothing to probe.
        liveness_probe: if g.virtual_ip.is_some() {
            g.liveness_probe
        } else {
            LivenessProbe::Off
        },
    }
}

/// The Manager's configuration from the agent's.
pub fn manager_config(config: &Config) -> ManagerConfig {
    let mut m = ManagerConfig::new(config.agent.private_key.clone(), config.agent.virtual_ip);
    m.second_virtual_ip = config.agent.virtual_ips.get(1).copied();
    m.listen_port = config.agent.listen_port;
    m.mtu = config.agent.mtu;
    m.gateways = config.gateways.iter().map(gateway_spec).collect();
    // Room for every proxied connection plus closing ones.
    m.netstack.max_connections = m
        .netstack
        .max_connections
        .max(config.proxy.max_connections * 2);
    m
}

impl Agent {
    /// Starts the Manager (tunnel) and one proxy per route.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let manager = Manager::start(manager_config(&config))
            .await
            .with_context(|| format!("{}: cannot start the tunnel", config.path.display()))?;
        let tracker = ConnectionTracker::new(&config.proxy);
        let agent = Self {
            inner: Arc::new(AgentInner {
                manager,
                config: Mutex::new(config.clone()),
                routes: Mutex::new(BTreeMap::new()),
                udp_routes: Mutex::new(BTreeMap::new()),
                tracker,
                draining: AtomicBool::new(false),
                log_level: Mutex::new(None),
                reconfigure: Arc::new(tokio::sync::Mutex::new(())),
                from_file: Mutex::new(config.clone()),
            }),
        };
        agent.apply_routes(&config, false, Bound::default()).await?;
        Ok(agent)
    }

    /// The tunnel underneath.
    pub fn manager(&self) -> &Manager {
        &self.inner.manager
    }

    /// Starts, replaces or stops route proxies so they match `config.routes`; unchanged routes
    /// (same port, protocol, upstream and options) keep serving untouched. A replaced route
    /// takes over its predecessor's listener; a new port takes its listener from `bound`
    /// (prepared by a reload) or binds it here (startup).
    async fn apply_routes(
        &self,
        config: &Config,
        restart_all: bool,
        bound: Bound,
    ) -> anyhow::Result<()> {
        let Bound {
            listeners: mut bound,
            udp,
        } = bound;
        self.apply_udp_routes(config, restart_all, udp).await?;
        let wanted = wanted_routes(config, false);
        // Stop what goes away or changes; a new `[proxy]` restarts every route.
        stop_changed(&self.inner.routes, &wanted, restart_all, &mut bound).await;
        let mut routes = lock(&self.inner.routes);
        for (port, route) in wanted {
            if routes.contains_key(&port) {
                continue;
            }
            let listener = match bound.remove(&port) {
                Some(listener) => listener,
                None => Arc::new(self.inner.manager.listen(port).with_context(|| {
                    format!(
                        "{}: routes: cannot listen on port {port}",
                        config.path.display()
                    )
                })?),
            };
            let accept = VipListener(Arc::clone(&listener));
            let tracker = self.inner.tracker.clone();
            let proxy_config = route.proxy_config(&config.proxy);
            let (metrics, task) = match route.protocol {
                RouteProtocol::Tcp => {
                    let tcp = route
                        .tcp_route()
                        .context("tcp route without tcp settings")?;
                    let forwarder = TcpForwarder::new(tcp, &proxy_config);
                    let metrics = Arc::clone(forwarder.metrics());
                    let task = tokio::spawn(async move { forwarder.serve(accept, &tracker).await });
                    (metrics, task)
                }
                _ => {
                    let http = route
                        .http_route()
                        .context("http route without http settings")?;
                    let proxy = HttpProxy::new(http, &proxy_config, &tracker);
                    let metrics = Arc::clone(proxy.metrics());
                    let task = tokio::spawn(async move { proxy.serve(accept, &tracker).await });
                    (metrics, task)
                }
            };
            tracing::info!(port, protocol = %route.protocol, upstream = %route.upstream, "route serving");
            routes.insert(
                port,
                Route {
                    config: route.clone(),
                    metrics,
                    listener,
                    task,
                },
            );
        }
        Ok(())
    }

    /// [`apply_routes`](Self::apply_routes) for the UDP routes: each a forwarder on a socket
    /// bound on every virtual IP.
    async fn apply_udp_routes(
        &self,
        config: &Config,
        restart_all: bool,
        mut bound: BTreeMap<u16, Arc<netstack::UdpSocket>>,
    ) -> anyhow::Result<()> {
        let wanted = wanted_routes(config, true);
        stop_changed(&self.inner.udp_routes, &wanted, restart_all, &mut bound).await;
        let mut routes = lock(&self.inner.udp_routes);
        for (port, route) in wanted {
            if routes.contains_key(&port) {
                continue;
            }
            let socket = match bound.remove(&port) {
                Some(socket) => socket,
                None => Arc::new(self.inner.manager.bind_udp(port).with_context(|| {
                    format!(
                        "{}: routes: cannot bind udp port {port}",
                        config.path.display()
                    )
                })?),
            };
            let udp = route
                .udp_route()
                .context("udp route without udp settings")?;
            let forwarder = UdpForwarder::new(udp);
            let metrics = Arc::clone(forwarder.metrics());
            let tracker = self.inner.tracker.clone();
            let datagrams = VipDatagram(Arc::clone(&socket));
            let task = tokio::spawn(async move { forwarder.serve(datagrams, &tracker).await });
            tracing::info!(port, protocol = %route.protocol, upstream = %route.upstream, "route serving");
            routes.insert(
                port,
                UdpRoute {
                    config: route.clone(),
                    metrics,
                    socket,
                    task,
                },
            );
        }
        Ok(())
    }

    /// Re-reads the config file and applies it: [`prepare_reload`](Self::prepare_reload)
    /// then [`commit_reload`](Self::commit_reload). All or nothing: when it fails, nothing
    /// changed. Returns what changed.
    pub async fn reload(&self) -> anyhow::Result<ConfigChanges> {
        let prepared = self.prepare_reload().await?;
        Ok(self.commit_reload(prepared).await)
    }

    /// Everything a reload needs, changing nothing: reads and validates the file (the key
    /// included), then [`prepare_change`](Self::prepare_change). Dropping the future, or the
    /// result, leaves the agent as it was.
    pub async fn prepare_reload(&self) -> anyhow::Result<PreparedReload> {
        self.prepare_change(ChangeOrigin::File, |running| {
            Ok(Config::load(&running.path)?)
        })
        .await
    }

    /// Prepares the configuration `build` makes from the running one, changing nothing:
    /// resolves new gateway names (a name that does not resolve is kept and resolved later)
    /// and binds the listeners of new ports. A reload and a UAPI set both come this way, one
    /// at a time: `build` sees the configuration that runs until this change is committed or
    /// dropped. Dropping the future, or the result, leaves the agent as it was.
    pub async fn prepare_change(
        &self,
        origin: ChangeOrigin,
        build: impl FnOnce(&Config) -> anyhow::Result<Config>,
    ) -> anyhow::Result<PreparedReload> {
        let turn = Arc::clone(&self.inner.reconfigure).lock_owned().await;
        let running = self.config();
        let new = build(&running)?;
        let mut changes = ConfigChanges::between(&running, &new);
        let applied = ConfigChanges::as_applied(&running, &new);
        if origin == ChangeOrigin::File {
            let from_file = lock(&self.inner.from_file).clone();
            changes.runtime_replaced =
                ConfigChanges::runtime_replaced(&from_file, &running, &applied);
        }
        let gateways = self
            .inner
            .manager
            .prepare_gateways(applied.gateways.iter().map(gateway_spec).collect())
            .await?;
        // A served port keeps its listener (a replaced route takes it over): bind only new ones.
        let served: Vec<u16> = lock(&self.inner.routes).keys().copied().collect();
        let served_udp: Vec<u16> = lock(&self.inner.udp_routes).keys().copied().collect();
        let mut bound = Bound::default();
        for route in &applied.routes {
            if route.protocol.is_datagram() {
                if served_udp.contains(&route.port) {
                    continue;
                }
                let socket = self.inner.manager.bind_udp(route.port).with_context(|| {
                    format!(
                        "{}: routes: cannot bind udp port {}",
                        running.path.display(),
                        route.port
                    )
                })?;
                bound.udp.insert(route.port, Arc::new(socket));
                continue;
            }
            if served.contains(&route.port) {
                continue;
            }
            let listener = self.inner.manager.listen(route.port).with_context(|| {
                format!(
                    "{}: routes: cannot listen on port {}",
                    running.path.display(),
                    route.port
                )
            })?;
            bound.listeners.insert(route.port, Arc::new(listener));
        }
        Ok(PreparedReload {
            applied,
            changes,
            gateways,
            bound,
            origin,
            _turn: turn,
        })
    }

    /// Applies a prepared reload: the key, the gateways (by difference), the routes and the
    /// log level; then stores the configuration as applied. Cannot fail.
    pub async fn commit_reload(&self, prepared: PreparedReload) -> ConfigChanges {
        let PreparedReload {
            applied,
            changes,
            gateways,
            bound,
            origin,
            _turn,
        } = prepared;
        let path = applied.path.display().to_string();
        if !changes.runtime_replaced.is_empty() {
            tracing::warn!(
                "{path}: reload replaced runtime changes made through UAPI: {}",
                changes.runtime_replaced.join(", ")
            );
        }
        for field in &changes.needs_restart {
            tracing::warn!("{path}: `{field}` changed: it applies at the next restart");
        }
        let manager = &self.inner.manager;
        manager
            .set_private_key(applied.agent.private_key.clone())
            .await;
        let update = manager.apply_prepared(gateways).await;
        let restart_all = lock(&self.inner.config).proxy != applied.proxy;
        if let Err(error) = self.apply_routes(&applied, restart_all, bound).await {
            // Every listener was bound beforehand: this is a bug, not a bad file.
            tracing::error!("config reload: routes not fully applied: {error:#}");
        }
        if changes.log_level_changed {
            let control = lock(&self.inner.log_level).clone();
            match control {
                Some(set) => match set(&applied.log.level) {
                    Ok(()) => tracing::info!(level = %applied.log.level, "log level applied"),
                    Err(error) => tracing::warn!("{path}: log.level not applied: {error}"),
                },
                None => tracing::warn!(
                    "{path}: `log.level` changed, but the level given on the command line (--log-level) stays in force"
                ),
            }
        }
        match origin {
            ChangeOrigin::File => {
                tracing::info!(
                    unchanged_gateways = update.unchanged.len(),
                    "config reloaded: {changes}"
                );
                *lock(&self.inner.from_file) = applied.clone();
            }
            ChangeOrigin::Uapi => tracing::info!(
                unchanged_gateways = update.unchanged.len(),
                "UAPI set applied (runtime state until the next reload): {changes}"
            ),
        }
        *lock(&self.inner.config) = applied;
        changes
    }

    /// The configuration the agent runs.
    pub fn config(&self) -> Config {
        lock(&self.inner.config).clone()
    }

    /// Graceful stop: readiness off, listeners closed (connections never accepted get a
    /// reset, so their clients retry elsewhere at once), in-flight requests drain within
    /// `drain_timeout`, then the tunnel closes.
    pub async fn stop(&self) {
        self.inner.draining.store(true, Relaxed);
        tracing::info!("shutting down: draining in-flight requests");
        self.inner.tracker.begin_shutdown();
        let routes: Vec<Route> = std::mem::take(&mut *lock(&self.inner.routes))
            .into_values()
            .collect();
        for mut route in routes {
            route.task.abort();
            let _ = (&mut route.task).await;
        }
        // UDP has nothing to drain: flows close with their route.
        let udp_routes: Vec<UdpRoute> = std::mem::take(&mut *lock(&self.inner.udp_routes))
            .into_values()
            .collect();
        for mut route in udp_routes {
            route.task.abort();
            let _ = (&mut route.task).await;
        }
        // The drain timeout of the running config (a reload may have changed it).
        let drain_timeout = lock(&self.inner.config).proxy.drain_timeout;
        let tracker = &self.inner.tracker;
        tracing::info!(open = tracker.open_connections(), "proxy draining");
        if tokio::time::timeout(drain_timeout, tracker.drained())
            .await
            .is_ok()
        {
            tracing::info!("proxies drained");
        } else {
            let closed = tracker.open_connections();
            tracing::warn!(closed, "drain timeout passed, closing busy connections");
            tracker.force_close();
            tracker.drained().await;
        }
        // Closed connections may still hold unsent or unacknowledged bytes in the stack: the
        // manager's drain gives them a moment to reach the gateway before the tunnel goes.
        self.inner.manager.close_within(LINGER).await;
    }

    /// The status document (`/status`, `wg-agent status --json`).
    pub fn snapshot(&self) -> StatusSnapshot {
        let gateways = self
            .inner
            .manager
            .stats()
            .into_iter()
            .map(|s| {
                let last = s.last_handshake_unix();
                GatewayStatus::new(
                    s.id,
                    s.name,
                    s.public_key.to_base64(),
                    s.endpoint,
                    s.state,
                    last,
                    s.rx_bytes,
                    s.tx_bytes,
                )
                .with_icmp_filtered(s.icmp_filtered)
            })
            .collect();
        let open_flows: BTreeMap<u16, u64> = lock(&self.inner.udp_routes)
            .iter()
            .map(|(port, r)| (*port, r.metrics.snapshot().open_flows))
            .collect();
        let routes = {
            let config = lock(&self.inner.config);
            config
                .routes
                .iter()
                .map(|r| {
                    let status = RouteStatus::from_config(r, &config.proxy);
                    match open_flows.get(&r.port) {
                        Some(open) if r.protocol.is_datagram() => status.with_open_flows(*open),
                        _ => status,
                    }
                })
                .collect()
        };
        let manager = &self.inner.manager;
        let agent = AgentStatus::new(manager.public_key().to_base64(), self.listen_port());
        StatusSnapshot::new(manager.virtual_ip(), gateways, routes)
            .with_virtual_ips(manager.virtual_ips().to_vec())
            .with_agent(agent)
    }

    /// The local UDP port in use (the configured one, or the one the system picked).
    pub fn listen_port(&self) -> u16 {
        self.inner
            .manager
            .local_addrs()
            .first()
            .map_or(0, SocketAddr::port)
    }
}

impl StatusSource for Agent {
    fn snapshot(&self) -> StatusSnapshot {
        Agent::snapshot(self)
    }

    fn write_metrics(&self, w: &mut MetricsWriter<'_>) {
        let manager = &self.inner.manager;
        let stack = manager.netstack().stats();
        let mut counters = AgentCounters {
            open_connections: stack.tcp_sockets as u64,
            tcp_repaired: stack.tcp_repaired,
            tcp_probes: stack.tcp_probes,
            tcp_stack_resent: stack.tcp_smoltcp_resent,
            tcp_stack_resends_dropped: stack.tcp_resends_dropped,
            ..AgentCounters::default()
        };
        for (reason, n) in manager.wg_drops().iter() {
            *counters
                .dropped_packets
                .entry(format!("wg_{}", reason.as_str()))
                .or_default() += n;
        }
        for reason in netstack::DropReason::ALL {
            *counters
                .dropped_packets
                .entry(format!("stack_{}", reason.as_str()))
                .or_default() += stack.dropped.get(reason);
        }
        counters.liveness_probes = manager
            .stats()
            .into_iter()
            .map(|g| (g.id, (g.probes_sent, g.probes_failed)))
            .collect();
        let t = manager.counters();
        counters.dropped_packets.insert(
            "transmit_overflow".into(),
            t.transmit_overflow.load(Relaxed),
        );
        write_agent_counters(w, &counters);
        let routes: Vec<(String, local_proxy::MetricsSnapshot)> = lock(&self.inner.routes)
            .iter()
            .map(|(port, r)| (format!("port=\"{port}\""), r.metrics.snapshot()))
            .collect();
        let refs: Vec<(&str, &local_proxy::MetricsSnapshot)> =
            routes.iter().map(|(l, m)| (l.as_str(), m)).collect();
        let mut text = String::new();
        local_proxy::render_prometheus(&mut text, "wg_agent_route", &refs);
        let udp: Vec<(String, local_proxy::UdpMetricsSnapshot)> = lock(&self.inner.udp_routes)
            .iter()
            .map(|(port, r)| (format!("port=\"{port}\""), r.metrics.snapshot()))
            .collect();
        if !udp.is_empty() {
            let refs: Vec<(&str, &local_proxy::UdpMetricsSnapshot)> =
                udp.iter().map(|(l, m)| (l.as_str(), m)).collect();
            local_proxy::render_udp_prometheus(&mut text, "wg_agent_udp", &refs);
        }
        text.push_str(&format!(
            "# HELP wg_agent_log_lines_dropped_total Log lines dropped because the log sink was too slow.\n\
             # TYPE wg_agent_log_lines_dropped_total counter\n\
             wg_agent_log_lines_dropped_total {}\n",
            crate::logging::dropped_lines()
        ));
        w.raw(&text);
    }

    fn draining(&self) -> bool {
        self.inner.draining.load(Relaxed)
    }

    fn ping(&self, target: String, timeout: Duration) -> PingFuture {
        let manager = self.inner.manager.clone();
        let draining = self.draining();
        Box::pin(async move {
            if draining {
                return Err(PingError::Unavailable("the agent is shutting down".into()));
            }
            let (ip, gateway) = match manager.gateway_virtual_ip(&target) {
                Some(Some(ip)) => (ip, target),
                Some(None) => return Err(PingError::NoVirtualIp(target)),
                None => {
                    let ip: IpAddr = target
                        .parse()
                        .map_err(|_| PingError::UnknownTarget(target.clone()))?;
                    let gateway = manager.gateway_routing(ip).ok_or(PingError::NoRoute(ip))?;
                    (ip, gateway)
                }
            };
            Ok(match manager.ping(ip, timeout).await {
                Ok(rtt) => PingReply::answered(ip, gateway, rtt),
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                    PingReply::unanswered(ip, gateway, "timed out".into())
                }
                Err(error) => PingReply::unanswered(ip, gateway, error.to_string()),
            })
        })
    }
}

/// Makes the process non-dumpable: no core dump (which would hold the private key), and no
/// `ptrace` attach or `/proc/PID/mem` read by other processes of the same user. Call it before
/// the key is read.
pub fn disable_core_dumps() -> io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(io::Error::from)
}

/// The reload notice: systemd (253 and later) wants `MONOTONIC_USEC` beside `RELOADING=1`, the
/// `CLOCK_MONOTONIC` time the reload began, to tell this reload from an earlier one.
fn reloading_message() -> String {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => {
            let usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000;
            format!("RELOADING=1\nMONOTONIC_USEC={usec}")
        }
        Err(_) => "RELOADING=1".to_owned(),
    }
}

/// Tells systemd (`Type=notify`) about readiness when `NOTIFY_SOCKET` is set.
fn sd_notify(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        sd_notify_to(&path, state);
    }
}

/// Sends `state` to the notification socket at `path` (a leading `@` names an abstract socket).
fn sd_notify_to(path: &std::ffi::OsStr, state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), path)
    };
    if let Err(error) = sent {
        tracing::debug!(%error, "sd_notify failed");
    }
}

#[cfg(test)]
mod notify_tests {
    #[test]
    fn the_reload_notice_carries_the_monotonic_time() {
        let path = std::env::temp_dir().join(format!("wg-agent-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        let before = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
        super::sd_notify_to(path.as_os_str(), &super::reloading_message());
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("recv");
        let _ = std::fs::remove_file(&path);
        let text = std::str::from_utf8(&buf[..n]).expect("utf-8");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {text:?}"));
        let before_usec = before.tv_sec() as u64 * 1_000_000 + before.tv_nsec() as u64 / 1_000;
        assert!(usec >= before_usec, "{usec} is before {before_usec}");
    }
}

#[cfg(test)]
mod hardening_tests {
    #[test]
    fn the_process_becomes_non_dumpable() {
        super::disable_core_dumps().expect("prctl");
        assert!(!nix::sys::prctl::get_dumpable().expect("prctl"));
    }
}
