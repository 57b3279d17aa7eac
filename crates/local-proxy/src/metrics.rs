//! Per-route counters and a lock-free latency histogram, rendered as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds (`+Inf` is implied).
pub const LATENCY_BUCKETS_SECONDS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const LATENCY_BUCKETS_MICROS: [u64; 15] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Live counters of one route. Every update is one relaxed atomic add; no lock anywhere.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    requests: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    upstream_errors: AtomicU64,
    client_timeouts: AtomicU64,
    open_connections: AtomicU64,
    connections: AtomicU64,
    connections_rejected: AtomicU64,
    over_request_limit: AtomicU64,
    over_socket_budget: AtomicU64,
    latency_buckets: [AtomicU64; 16],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

/// A copy of a route's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Responses sent, by status class: index 0 is `1xx`, 4 is `5xx`.
    pub requests_by_class: [u64; 5],
    /// Bytes received from clients (HTTP bodies; every byte for TCP routes and tunnels).
    pub bytes_in: u64,
    /// Bytes sent to clients (HTTP bodies; every byte for TCP routes and tunnels).
    pub bytes_out: u64,
    /// Upstream connects refused or timed out, upstream responses timed out or broken.
    pub upstream_errors: u64,
    /// Connections closed by `header_read_timeout`: a slow or silent client, or a kept-alive
    /// HTTP/1 connection that sent no further request in that time.
    pub client_timeouts: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Connections accepted since start.
    pub connections: u64,
    /// Connections refused because `max_connections` was reached or shutdown had begun.
    pub connections_rejected: u64,
    /// Requests answered `503` because `max_upstream_requests` were in flight.
    pub over_request_limit: u64,
    /// HTTP requests answered `503`, or TCP connections closed, because every descriptor of
    /// `max_upstream_sockets` was in use.
    pub over_socket_budget: u64,
    /// Latency histogram: time from request head received to response head ready.
    pub latency: HistogramSnapshot,
}

/// A latency histogram at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS_SECONDS`], then `+Inf`.
    pub cumulative: [u64; 16],
    /// Observations.
    pub count: u64,
    /// Sum of observations, in microseconds.
    pub sum_micros: u64,
}

impl RouteMetrics {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one response with `status`.
    pub fn record_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].fetch_add(1, Relaxed);
    }

    /// Record one request's latency.
    pub fn record_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(micros, Relaxed);
    }

    pub(crate) fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    pub(crate) fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn client_timeout(&self) {
        self.client_timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_rejected(&self) {
        self.connections_rejected.fetch_add(1, Relaxed);
    }

    pub(crate) fn over_request_limit(&self) {
        self.over_request_limit.fetch_add(1, Relaxed);
    }

    pub(crate) fn over_socket_budget(&self) {
        self.over_socket_budget.fetch_add(1, Relaxed);
    }

    /// Count an open connection until the returned guard drops.
    pub(crate) fn open_connection(self: &std::sync::Arc<Self>) -> OpenConnection {
        self.connections.fetch_add(1, Relaxed);
        self.open_connections.fetch_add(1, Relaxed);
        OpenConnection {
            metrics: std::sync::Arc::clone(self),
        }
    }

    /// Read every counter (each one atomically; the set is not one atomic picture).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut cumulative = [0; 16];
        let mut running = 0;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.latency_buckets) {
            running += bucket.load(Relaxed);
            *slot = running;
        }
        MetricsSnapshot {
            requests_by_class: std::array::from_fn(|i| self.requests[i].load(Relaxed)),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            upstream_errors: self.upstream_errors.load(Relaxed),
            client_timeouts: self.client_timeouts.load(Relaxed),
            open_connections: self.open_connections.load(Relaxed),
            connections: self.connections.load(Relaxed),
            connections_rejected: self.connections_rejected.load(Relaxed),
            over_request_limit: self.over_request_limit.load(Relaxed),
            over_socket_budget: self.over_socket_budget.load(Relaxed),
            latency: HistogramSnapshot {
                // The +Inf bucket equals the total of the buckets read above, which keeps the
                // rendered histogram consistent even while requests complete.
                count: running,
                cumulative,
                sum_micros: self.latency_sum_micros.load(Relaxed),
            },
        }
    }
}

/// Decrements the open-connection gauge on drop.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    metrics: std::sync::Arc<RouteMetrics>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.open_connections.fetch_sub(1, Relaxed);
    }
}

impl MetricsSnapshot {
    /// This route alone in Prometheus text format; see [`render_prometheus`].
    pub fn to_prometheus(&self, prefix: &str, labels: &str) -> String {
        let mut out = String::new();
        render_prometheus(&mut out, prefix, &[(labels, self)]);
        out
    }
}

/// Append Prometheus text for several routes to `out`, each family's `HELP`/`TYPE` once.
///
/// `prefix` starts every metric name (for example `wg_agent_route`); each route comes with its
/// label set written as Prometheus labels without braces (for example `port="80"`).
///
/// Families: `{prefix}_requests_total{class="2xx"}`, `{prefix}_received_bytes_total`,
/// `{prefix}_sent_bytes_total`, `{prefix}_upstream_errors_total`,
/// `{prefix}_client_timeouts_total`, `{prefix}_open_connections`, `{prefix}_connections_total`,
/// `{prefix}_rejected_connections_total`,
/// `{prefix}_limit_refusals_total{limit="max_upstream_requests"|"max_upstream_sockets"}` and
/// the histogram `{prefix}_request_duration_seconds`.
pub fn render_prometheus(out: &mut String, prefix: &str, routes: &[(&str, &MetricsSnapshot)]) {
    let help = "Responses sent, by status class.";
    family(out, prefix, "requests_total", "counter", help);
    for (labels, m) in routes {
        for (i, n) in m.requests_by_class.iter().enumerate() {
            let set = braces(labels, &format!("class=\"{}xx\"", i + 1));
            let _ = writeln!(out, "{prefix}_requests_total{set} {n}");
        }
    }
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&MetricsSnapshot) -> u64,
    );
    let simple: [Family; 7] = [
        (
            "received_bytes_total",
            "counter",
            "Bytes received from clients.",
            |m| m.bytes_in,
        ),
        (
            "sent_bytes_total",
            "counter",
            "Bytes sent to clients.",
            |m| m.bytes_out,
        ),
        (
            "upstream_errors_total",
            "counter",
            "Upstream failures (refused, timed out).",
            |m| m.upstream_errors,
        ),
        (
            "client_timeouts_total",
            "counter",
            "Connections closed waiting for a request head.",
            |m| m.client_timeouts,
        ),
        ("open_connections", "gauge", "Connections open now.", |m| {
            m.open_connections
        }),
        (
            "connections_total",
            "counter",
            "Connections accepted.",
            |m| m.connections,
        ),
        (
            "rejected_connections_total",
            "counter",
            "Connections refused at the limit.",
            |m| m.connections_rejected,
        ),
    ];
    for (name, kind, help, get) in simple {
        family(out, prefix, name, kind, help);
        for (labels, m) in routes {
            let _ = writeln!(out, "{prefix}_{name}{} {}", braces(labels, ""), get(m));
        }
    }
    let help = "Requests (503) or TCP connections refused at a shared limit.";
    family(out, prefix, "limit_refusals_total", "counter", help);
    for (labels, m) in routes {
        for (limit, n) in [
            ("max_upstream_requests", m.over_request_limit),
            ("max_upstream_sockets", m.over_socket_budget),
        ] {
            let set = braces(labels, &format!("limit=\"{limit}\""));
            let _ = writeln!(out, "{prefix}_limit_refusals_total{set} {n}");
        }
    }
    let name = "request_duration_seconds";
    family(
        out,
        prefix,
        name,
        "histogram",
        "Time from request head to response head.",
    );
    for (labels, m) in routes {
        let bounds = LATENCY_BUCKETS_SECONDS.iter().map(|b| b.to_string());
        let bounds = bounds.chain(std::iter::once("+Inf".to_owned()));
        for (bound, n) in bounds.zip(&m.latency.cumulative) {
            let set = braces(labels, &format!("le=\"{bound}\""));
            let _ = writeln!(out, "{prefix}_{name}_bucket{set} {n}");
        }
        let set = braces(labels, "");
        let sum = m.latency.sum_micros as f64 / 1e6;
        let _ = writeln!(out, "{prefix}_{name}_sum{set} {sum}");
        let _ = writeln!(out, "{prefix}_{name}_count{set} {}", m.latency.count);
    }
}

/// `{labels,extra}`, leaving out empty parts; nothing at all when both are empty.
fn braces(labels: &str, extra: &str) -> String {
    match (labels.is_empty(), extra.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("{{{labels}}}"),
        (true, false) => format!("{{{extra}}}"),
        (false, false) => format!("{{{labels},{extra}}}"),
    }
}

fn family(out: &mut String, prefix: &str, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
    let _ = writeln!(out, "# TYPE {prefix}_{name} {kind}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn histogram_and_classes() {
        let m = RouteMetrics::new();
        m.record_status(200);
        m.record_status(204);
        m.record_status(502);
        m.record_status(101);
        m.record_latency(Duration::from_micros(900));
        m.record_latency(Duration::from_millis(30));
        m.record_latency(Duration::from_secs(100));
        let s = m.snapshot();
        assert_eq!(s.requests_by_class, [1, 2, 0, 0, 1]);
        assert_eq!(s.latency.count, 3);
        assert_eq!(s.latency.cumulative[0], 1);
        assert_eq!(s.latency.cumulative[4], 1);
        assert_eq!(s.latency.cumulative[5], 2);
        assert_eq!(s.latency.cumulative[14], 2);
        assert_eq!(s.latency.cumulative[15], 3);
        let text = s.to_prometheus("p", "port=\"80\"");
        assert!(
            text.contains("p_requests_total{port=\"80\",class=\"2xx\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("p_request_duration_seconds_bucket{port=\"80\",le=\"0.05\"} 2\n"));
        assert!(text.contains("p_request_duration_seconds_bucket{port=\"80\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("p_request_duration_seconds_count{port=\"80\"} 3\n"));
        assert_eq!(text.matches("# TYPE p_requests_total counter").count(), 1);
    }

    #[test]
    fn several_routes_share_one_family_header() {
        let a = RouteMetrics::new();
        a.record_status(200);
        let b = RouteMetrics::new();
        b.record_status(503);
        b.add_bytes_in(10);
        let (sa, sb) = (a.snapshot(), b.snapshot());
        let mut out = String::new();
        render_prometheus(
            &mut out,
            "r",
            &[("port=\"80\"", &sa), ("port=\"5432\"", &sb)],
        );
        for family in [
            "requests_total",
            "received_bytes_total",
            "request_duration_seconds",
        ] {
            assert_eq!(
                out.matches(&format!("# TYPE r_{family} ")).count(),
                1,
                "{out}"
            );
        }
        assert!(out.contains("r_requests_total{port=\"80\",class=\"2xx\"} 1\n"));
        assert!(out.contains("r_requests_total{port=\"5432\",class=\"5xx\"} 1\n"));
        assert!(out.contains("r_received_bytes_total{port=\"5432\"} 10\n"));
        // Every sample line is `name{labels} value`.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(
                series.starts_with("r_") && value.parse::<f64>().is_ok(),
                "{line}"
            );
        }
        // No labels at all is valid too.
        let bare = sa.to_prometheus("r", "");
        assert!(
            bare.contains("r_requests_total{class=\"2xx\"} 1\n"),
            "{bare}"
        );
        assert!(bare.contains("r_open_connections 0\n"), "{bare}");
    }
}
