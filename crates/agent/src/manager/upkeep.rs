//! Device upkeep, once a second: gateway state changes (logged once), the liveness probe, and
//! DNS re-resolution.
//!
//! A WireGuard peer answers data, never keepalives, so on an idle tunnel a healthy gateway and
//! a restarted one (which lost the session) look alike. After [`PROBE_AFTER`] with nothing
//! received from a gateway that had a session, an ICMP echo goes to its virtual IP through the
//! tunnel; no answer within [`PROBE_TIMEOUT`] forces a fresh handshake. A restarted gateway is
//! so found again within about 35 s with no traffic flowing.
//!
//! A probe that goes unanswered while the forced handshake that follows succeeds means the
//! gateway is there but does not answer ICMP echo (a firewall, `icmp_echo_ignore_all`): once
//! that handshake completed, one more probe goes at once; unanswered too, the gateway is
//! marked `icmp_filtered` and a warning names the fix, once, until a probe is answered again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use super::tasks::{self, Sockets};
use super::{
    Device, Endpoint, GatewayState, Host, Inner, LivenessProbe, endpoint_is_dns, gateway_stats,
};

/// Silence after which a gateway is probed.
pub(crate) const PROBE_AFTER: Duration = Duration::from_secs(25);
/// How long a probe waits for its answer.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// DNS names are re-resolved this often even when all is well.
const RESOLVE_EVERY: Duration = Duration::from_secs(300);
/// ... and this often while the gateway is not up.
const RESOLVE_WHILE_DOWN: Duration = Duration::from_secs(30);
/// ... and this often while the name has never resolved.
const RESOLVE_UNRESOLVED: Duration = Duration::from_secs(5);
/// A look-up that takes longer is abandoned.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Upkeep bookkeeping of one gateway.
#[derive(Debug, Clone)]
pub(crate) struct GatewayUpkeep {
    pub(crate) probes_sent: u64,
    pub(crate) probes_failed: u64,
    pub(crate) probes_answered: u64,
    /// Probes go unanswered though handshakes succeed.
    pub(crate) icmp_filtered: bool,
    /// A probe went unanswered and forced a handshake; the gateway had completed this many
    /// handshakes then. One more completed: confirm with a probe at once.
    confirm_after: Option<u64>,
    probe_in_flight: bool,
    last_probe: Option<Instant>,
    /// Set when handshakes start failing: re-resolve at the next tick.
    pub(crate) resolve_soon: bool,
    last_resolve: Instant,
    resolving: bool,
    dns_failing: bool,
}

impl GatewayUpkeep {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            probes_sent: 0,
            probes_failed: 0,
            probes_answered: 0,
            icmp_filtered: false,
            confirm_after: None,
            probe_in_flight: false,
            last_probe: None,
            resolve_soon: false,
            last_resolve: now,
            resolving: false,
            dns_failing: false,
        }
    }
}

/// Resolves an endpoint: a literal IP at once, a DNS name with a time limit. Prefers IPv4
/// when the socket has no IPv6. `None` when nothing usable came back.
pub(crate) async fn resolve(endpoint: &Endpoint, sockets: &Sockets) -> Option<SocketAddr> {
    match &endpoint.host {
        Host::Ip(ip) => Some(SocketAddr::new(*ip, endpoint.port)),
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), endpoint.port));
            let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => {
                    tracing::debug!(host = %name, error = %e, "dns look-up failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(host = %name, "dns look-up timed out");
                    return None;
                }
            };
            let v6 = sockets.has_ipv6();
            // IPv4 first: loopback names such as `localhost` resolve to both, and gateways
            // usually listen on IPv4.
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.iter().find(|a| v6 && a.is_ipv6()))
                .copied()
        }
    }
}

enum Job {
    Probe {
        key: wg_core::PublicKey,
        id: String,
        target: std::net::IpAddr,
        /// Sent right after the handshake an unanswered probe forced.
        confirming: bool,
    },
    Resolve {
        key: wg_core::PublicKey,
        id: String,
        endpoint: Endpoint,
    },
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|closed| *closed) => return,
        }
        let mut changes = Vec::new();
        let jobs = {
            let mut t = inner.lock();
            plan(&mut t, inner.probe_after, Instant::now(), &mut changes)
        };
        // Logged with the lock released.
        for (state, id, endpoint) in changes {
            match state {
                GatewayState::Up => tracing::info!(gateway = %id, "gateway up"),
                GatewayState::Stale => tracing::warn!(
                    gateway = %id,
                    endpoint = %endpoint,
                    "gateway stale: no handshake for 180 s"
                ),
                GatewayState::Connecting => {
                    tracing::info!(gateway = %id, "gateway not answering: reconnecting")
                }
            }
        }
        for job in jobs {
            tokio::spawn(run_job(Arc::clone(&inner), job));
        }
    }
}

/// Looks at every gateway: notes state changes in `changes` (state, id, endpoint; the caller
/// logs them after the lock) and decides which probes and look-ups to start.
fn plan(
    t: &mut Device,
    probe_after: Duration,
    now: Instant,
    changes: &mut Vec<(GatewayState, String, String)>,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    let Device { peers, gateways } = t;
    for (key, g) in gateways.iter_mut() {
        let stats = gateway_stats(peers, g, now);
        if stats.state != g.reported {
            changes.push((stats.state, g.spec.id.clone(), stats.endpoint.clone()));
            g.reported = stats.state;
        }
        let u = &mut g.upkeep;
        let confirm_due = u.confirm_after.is_some_and(|n| stats.handshakes > n);
        let probe_due = stats.last_handshake.is_some()
            && stats
                .last_received_age
                .is_some_and(|age| age >= probe_after)
            && u.last_probe
                .is_none_or(|at| now.saturating_duration_since(at) >= probe_after);
        // A gateway without a virtual IP (added over the UAPI with none in `subnet`) is not
        // probed.
        if g.spec.liveness_probe == LivenessProbe::Icmp
            && let Some(target) = g.spec.virtual_ip
            && !u.probe_in_flight
            && (confirm_due || probe_due)
        {
            if confirm_due {
                u.confirm_after = None;
            }
            u.probe_in_flight = true;
            u.last_probe = Some(now);
            u.probes_sent += 1;
            jobs.push(Job::Probe {
                key: *key,
                id: g.spec.id.clone(),
                target,
                confirming: confirm_due,
            });
        }
        if let Some(endpoint) = g.spec.endpoint.as_ref().filter(|e| endpoint_is_dns(e))
            && !u.resolving
        {
            let since = now.saturating_duration_since(u.last_resolve);
            let due = u.resolve_soon
                || since >= RESOLVE_EVERY
                || (g.resolved.is_none() && since >= RESOLVE_UNRESOLVED)
                || (stats.state != GatewayState::Up && since >= RESOLVE_WHILE_DOWN);
            if due {
                u.resolving = true;
                u.resolve_soon = false;
                u.last_resolve = now;
                jobs.push(Job::Resolve {
                    key: *key,
                    id: g.spec.id.clone(),
                    endpoint: endpoint.clone(),
                });
            }
        }
    }
    jobs
}

async fn run_job(inner: Arc<Inner>, job: Job) {
    match job {
        Job::Probe {
            key,
            id,
            target,
            confirming,
        } => {
            let answered = inner.netstack.ping(target, inner.probe_timeout).await;
            // What to log, decided under the lock and logged after it.
            enum Icmp {
                Quiet,
                Filtered,
                Answering,
            }
            let (forced, icmp) = {
                let mut t = inner.lock();
                let Device { peers, gateways } = &mut *t;
                let Some(g) = gateways.get_mut(&key) else {
                    return;
                };
                let u = &mut g.upkeep;
                u.probe_in_flight = false;
                let now = Instant::now();
                match &answered {
                    Ok(_) => {
                        u.probes_answered += 1;
                        u.confirm_after = None;
                        let was = std::mem::take(&mut u.icmp_filtered);
                        (false, if was { Icmp::Answering } else { Icmp::Quiet })
                    }
                    // The handshake just completed, yet no echo reply: ICMP is filtered.
                    Err(_) if confirming => {
                        u.probes_failed += 1;
                        let first = !u.icmp_filtered;
                        u.icmp_filtered = true;
                        (false, if first { Icmp::Filtered } else { Icmp::Quiet })
                    }
                    Err(_) => {
                        u.probes_failed += 1;
                        u.confirm_after =
                            Some(peers.peer_stats(&key, now).map_or(0, |s| s.handshakes));
                        (peers.force_handshake(&key, now), Icmp::Quiet)
                    }
                }
            };
            match &answered {
                Ok(rtt) => {
                    tracing::debug!(gateway = %id, rtt_ms = rtt.as_millis() as u64, "liveness probe answered");
                }
                Err(e) if confirming => tracing::debug!(
                    gateway = %id,
                    error = %e,
                    "liveness probe unanswered right after a handshake"
                ),
                Err(e) => tracing::info!(
                    gateway = %id,
                    error = %e,
                    "liveness probe unanswered: forcing a fresh handshake"
                ),
            }
            match icmp {
                Icmp::Quiet => {}
                Icmp::Filtered => tracing::warn!(
                    gateway = %id,
                    "gateway {id}: the liveness probe (ICMP echo to {target}) goes unanswered \
                     though handshakes succeed: ICMP is filtered on the gateway. Allow ICMP echo \
                     to {target} there (its firewall, or net.ipv4.icmp_echo_ignore_all; and check \
                     that {target} is the gateway's tunnel address), or set \
                     liveness_probe = \"off\" for this gateway; until then each probe costs a \
                     fresh handshake"
                ),
                Icmp::Answering => {
                    tracing::info!(gateway = %id, "gateway {id} answers the liveness probe again");
                }
            }
            if forced {
                tasks::flush(&inner).await;
            }
        }
        Job::Resolve { key, id, endpoint } => {
            let addr = resolve(&endpoint, &inner.sockets).await;
            // What to log, decided under the lock and logged after it.
            enum Outcome {
                Quiet,
                FirstFailure,
                Moved(Option<SocketAddr>, SocketAddr),
            }
            let outcome = {
                let mut t = inner.lock();
                let Device { peers, gateways } = &mut *t;
                let Some(g) = gateways.get_mut(&key) else {
                    return;
                };
                g.upkeep.resolving = false;
                // A newer configuration may have replaced the endpoint meanwhile.
                if g.spec.endpoint.as_ref() != Some(&endpoint) {
                    return;
                }
                match addr {
                    None => {
                        let first = !g.upkeep.dns_failing;
                        g.upkeep.dns_failing = true;
                        if first {
                            Outcome::FirstFailure
                        } else {
                            Outcome::Quiet
                        }
                    }
                    Some(addr) => {
                        g.upkeep.dns_failing = false;
                        if g.resolved == Some(addr) {
                            Outcome::Quiet
                        } else {
                            let old = g.resolved;
                            g.resolved = Some(addr);
                            peers.set_endpoint(&key, addr);
                            if old.is_none() || g.reported != GatewayState::Up {
                                peers.force_handshake(&key, Instant::now());
                            }
                            Outcome::Moved(old, addr)
                        }
                    }
                }
            };
            let changed = match outcome {
                Outcome::Quiet => false,
                Outcome::FirstFailure => {
                    tracing::warn!(gateway = %id, endpoint = %endpoint, "cannot resolve the gateway endpoint; retrying");
                    false
                }
                Outcome::Moved(old, new) => {
                    tracing::info!(gateway = %id, endpoint = %endpoint, old = ?old, new = %new, "endpoint re-resolved");
                    true
                }
            };
            if changed {
                tasks::flush(&inner).await;
            }
        }
    }
}
