//! The running agent: the [`Manager`] plus one proxy per route on the virtual IP, the admin
//! endpoint, `SIGHUP` reload and graceful drain. [`run`] is what `wg-agent run` calls.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use local_proxy::{ConnectionTracker, HttpProxy, RouteMetrics, TcpForwarder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{AdminAddr, AdminServer, StatusSource};
use crate::config::{Config, ConfigChanges, GatewayConfig, RouteConfig, RouteProtocol};
use crate::manager::{GatewaySpec, Manager, ManagerConfig};
use crate::metrics::{AgentCounters, MetricsWriter, write_agent_counters};
use crate::snapshot::{AgentStatus, GatewayStatus, RouteStatus, StatusSnapshot};

/// How long a stopping agent waits for closed connections to flush through the tunnel.
const LINGER: Duration = Duration::from_secs(3);

/// Runs the agent described by `config` until `shutdown` completes (SIGTERM/SIGINT in the
/// binary), then drains: `/readyz` turns 503, in-flight requests get `drain_timeout`, then
/// the tunnel closes. `SIGHUP` re-reads `config.path` and applies it.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let admin_listen = AdminAddr::from_listen(&config.admin);
    let agent = Agent::start(config).await?;
    // Gateway operators need this key first (their `[Peer] PublicKey`); it is public.
    tracing::info!(
        public_key = %agent.manager().public_key(),
        listen_port = agent.listen_port(),
        virtual_ip = %agent.manager().virtual_ip(),
        "agent started"
    );
    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin_task = match admin_listen {
        Some(addr) => {
            let server = AdminServer::bind(&addr)
                .await
                .with_context(|| format!("admin endpoint {addr}"))?;
            let source: Arc<dyn StatusSource> = Arc::new(agent.clone());
            let mut stopped = admin_stopped;
            Some(tokio::spawn(server.serve(source, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })))
        }
        None => None,
    };
    sd_notify("READY=1");
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            reason = agent.manager().failed() => {
                // Traffic has stopped for good: exit 1 so the service manager restarts us.
                sd_notify("STOPPING=1");
                anyhow::bail!("{reason}: exiting so the service manager restarts the agent");
            }
            _ = hangup.recv() => {
                sd_notify("RELOADING=1");
                agent.reload().await;
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
    config: Mutex<Config>,
    routes: Mutex<BTreeMap<u16, Route>>,
    tracker: ConnectionTracker,
    draining: AtomicBool,
}

struct Route {
    config: RouteConfig,
    metrics: Arc<RouteMetrics>,
    task: JoinHandle<()>,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The Manager's view of one configured gateway.
pub fn gateway_spec(g: &GatewayConfig) -> GatewaySpec {
    let mut spec = GatewaySpec::new(
        g.id.clone(),
        g.public_key,
        Some(g.endpoint.clone()),
        g.virtual_ip,
    );
    spec.name = g.name.clone();
    spec.allowed_ips = g.allowed_ips.clone();
    spec.preshared_key = g.preshared_key.clone();
    spec.persistent_keepalive = (g.persistent_keepalive > 0)
        .then(|| Duration::from_secs(u64::from(g.persistent_keepalive)));
    spec.liveness_probe = g.liveness_probe;
    spec
}

/// The Manager's configuration from the agent's.
pub fn manager_config(config: &Config) -> ManagerConfig {
    let mut m = ManagerConfig::new(config.agent.private_key.clone(), config.agent.virtual_ip);
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
                tracker,
                draining: AtomicBool::new(false),
            }),
        };
        agent.apply_routes(&config, false).await?;
        Ok(agent)
    }

    /// The tunnel underneath.
    pub fn manager(&self) -> &Manager {
        &self.inner.manager
    }

    /// Starts, replaces or stops route proxies so they match `config.routes`; unchanged routes
    /// (same port, protocol, upstream and options) keep serving untouched.
    async fn apply_routes(&self, config: &Config, restart_all: bool) -> anyhow::Result<()> {
        let wanted: BTreeMap<u16, &RouteConfig> =
            config.routes.iter().map(|r| (r.port, r)).collect();
        // Stop what goes away first, and wait until its listener is closed so the port is free
        // for a replacement. A new `[proxy]` restarts every route; connections already
        // accepted finish under the old settings.
        let stopped: Vec<Route> = {
            let mut routes = lock(&self.inner.routes);
            let ports: Vec<u16> = routes
                .iter()
                .filter(|(port, route)| {
                    restart_all || wanted.get(*port).is_none_or(|w| **w != route.config)
                })
                .map(|(port, _)| *port)
                .collect();
            ports.iter().filter_map(|p| routes.remove(p)).collect()
        };
        for mut route in stopped {
            route.task.abort();
            let _ = (&mut route.task).await;
            tracing::info!(port = route.config.port, "route stopped");
        }
        let mut routes = lock(&self.inner.routes);
        for (port, route) in wanted {
            if routes.contains_key(&port) {
                continue;
            }
            let listener = self.inner.manager.listen(port).with_context(|| {
                format!(
                    "{}: routes: cannot listen on port {port}",
                    config.path.display()
                )
            })?;
            let tracker = self.inner.tracker.clone();
            let (metrics, task) = match route.protocol {
                RouteProtocol::Tcp => {
                    let tcp = route
                        .tcp_route()
                        .context("tcp route without tcp settings")?;
                    let forwarder = TcpForwarder::new(tcp, &config.proxy);
                    let metrics = Arc::clone(forwarder.metrics());
                    let task =
                        tokio::spawn(async move { forwarder.serve(listener, &tracker).await });
                    (metrics, task)
                }
                _ => {
                    let http = route
                        .http_route()
                        .context("http route without http settings")?;
                    let proxy = HttpProxy::new(http, &config.proxy);
                    let metrics = Arc::clone(proxy.metrics());
                    let task = tokio::spawn(async move { proxy.serve(listener, &tracker).await });
                    (metrics, task)
                }
            };
            tracing::info!(port, protocol = %route.protocol, upstream = %route.upstream, "route serving");
            routes.insert(
                port,
                Route {
                    config: route.clone(),
                    metrics,
                    task,
                },
            );
        }
        Ok(())
    }

    /// Re-reads the config file and applies gateways (by difference), routes and the private
    /// key. An invalid file is refused with one log line; the running config stays.
    pub async fn reload(&self) {
        let path = lock(&self.inner.config).path.clone();
        let new = match Config::load(&path) {
            Ok(new) => new,
            Err(error) => {
                tracing::error!("config reload refused, keeping the running config: {error}");
                return;
            }
        };
        let old = lock(&self.inner.config).clone();
        let changes = ConfigChanges::between(&old, &new);
        for field in &changes.needs_restart {
            tracing::warn!(
                "{}: `{field}` changed: it applies at the next restart",
                path.display()
            );
        }
        let manager = &self.inner.manager;
        manager.set_private_key(new.agent.private_key.clone()).await;
        let specs = new.gateways.iter().map(gateway_spec).collect();
        let update = match manager.update_gateways(specs).await {
            Ok(update) => update,
            Err(error) => {
                tracing::error!("config reload refused, keeping the running config: {error}");
                return;
            }
        };
        if let Err(error) = self.apply_routes(&new, changes.proxy_changed).await {
            tracing::error!("config reload: routes not fully applied: {error:#}");
        }
        tracing::info!(
            unchanged_gateways = update.unchanged.len(),
            "config reloaded: {changes}"
        );
        *lock(&self.inner.config) = new;
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
        let outcome = self.inner.tracker.shutdown().await;
        tracing::info!(outcome = ?outcome, "proxies stopped");
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
            })
            .collect();
        let routes = lock(&self.inner.config)
            .routes
            .iter()
            .map(RouteStatus::from_config)
            .collect();
        let manager = &self.inner.manager;
        let agent = AgentStatus::new(manager.public_key().to_base64(), self.listen_port());
        StatusSnapshot::new(manager.virtual_ip(), gateways, routes).with_agent(agent)
    }

    /// The local UDP port in use (the configured one, or the one the system picked).
    pub fn listen_port(&self) -> u16 {
        self.inner
            .manager
            .local_addrs()
            .first()
            .map_or(0, std::net::SocketAddr::port)
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
        w.raw(&text);
    }

    fn draining(&self) -> bool {
        self.inner.draining.load(Relaxed)
    }
}

/// Tells systemd (`Type=notify`) about readiness when `NOTIFY_SOCKET` is set.
fn sd_notify(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(error) = sent {
        tracing::debug!(%error, "sd_notify failed");
    }
}
