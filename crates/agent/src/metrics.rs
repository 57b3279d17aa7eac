//! Prometheus text exposition (format 0.0.4): a small writer, and the agent's own series.
//!
//! ```
//! use agent::metrics::{MetricKind, MetricsWriter};
//! let mut text = String::new();
//! let mut w = MetricsWriter::new(&mut text);
//! w.family("demo_requests_total", MetricKind::Counter, "Requests served.");
//! w.sample("demo_requests_total", &[("port", "80")], 3.0);
//! let lines: Vec<&str> = text.lines().collect();
//! assert_eq!(lines[0], "# HELP demo_requests_total Requests served.");
//! assert_eq!(lines[1], "# TYPE demo_requests_total counter");
//! assert_eq!(lines[2], r#"demo_requests_total{port="80"} 3"#);
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::snapshot::{GatewayState, StatusSnapshot};

/// The `# TYPE` of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (resets on restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Appends Prometheus text to a `String`. Label values and help texts are escaped.
#[derive(Debug)]
pub struct MetricsWriter<'a> {
    out: &'a mut String,
}

impl<'a> MetricsWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut String) -> Self {
        Self { out }
    }

    /// The text written so far, to append series rendered elsewhere (for example
    /// `local_proxy::render_prometheus`). Appended text must be complete lines.
    pub fn text(&mut self) -> &mut String {
        self.out
    }

    /// Appends text rendered elsewhere (complete lines, families not already written).
    pub fn raw(&mut self, text: &str) {
        self.out.push_str(text);
        if !text.is_empty() && !text.ends_with('\n') {
            self.out.push('\n');
        }
    }

    /// Writes the `# HELP` and `# TYPE` lines that open a family.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
    }

    /// Writes one sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.out.push(' ');
        self.value(value);
        self.out.push('\n');
    }

    /// Writes one sample line with an integer value (exact above 2^53).
    pub fn sample_u64(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// Writes a histogram's series: `buckets` are `(upper bound, cumulative count)` in
    /// increasing order; the `+Inf` bucket is added from `count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        let bucket = format!("{name}_bucket");
        for (le, cumulative) in buckets {
            self.out.push_str(&bucket);
            self.labels(labels, Some(&format_value(*le)));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.out.push_str(&bucket);
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample_u64(&format!("{name}_count"), labels, count);
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        for (i, (key, value)) in all.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(key);
            self.out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn value(&mut self, value: f64) {
        self.out.push_str(&format_value(value));
    }
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{value}")
    }
}

/// Agent-wide counters the runtime keeps, beside the per-gateway ones in the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentCounters {
    /// TCP connections currently open on the virtual IP(s).
    pub open_connections: u64,
    /// Packets dropped, by reason (`malformed`, `unauthenticated`, `no_route`, ...).
    pub dropped_packets: BTreeMap<String, u64>,
    /// TCP segments the virtual IP's stack sent again because the peer's SACK blocks
    /// showed them lost (netstack's loss repair).
    pub tcp_repaired: u64,
    /// Tail-loss probes sent by that loss repair.
    pub tcp_probes: u64,
    /// Retransmissions by the TCP stack itself (smoltcp's fast retransmit or timeout).
    pub tcp_stack_resent: u64,
    /// Of those, the ones not sent because the client already had every byte.
    pub tcp_stack_resends_dropped: u64,
    /// Liveness probes per gateway id: (sent, unanswered).
    pub liveness_probes: BTreeMap<String, (u64, u64)>,
}

/// Writes the per-gateway series (`wg_agent_gateway_*`, label `gateway="<id>"`; listed in
/// docs/operations.md).
pub fn write_gateway_metrics(w: &mut MetricsWriter<'_>, snapshot: &StatusSnapshot) {
    let series: [(&str, MetricKind, &str); 4] = [
        (
            "wg_agent_gateway_rx_bytes_total",
            MetricKind::Counter,
            "Bytes received from the gateway on the wire (UDP payload, handshakes included).",
        ),
        (
            "wg_agent_gateway_tx_bytes_total",
            MetricKind::Counter,
            "Bytes sent to the gateway on the wire (UDP payload, handshakes included).",
        ),
        (
            "wg_agent_gateway_last_handshake_timestamp_seconds",
            MetricKind::Gauge,
            "Unix time of the last completed handshake with the gateway (0: none yet).",
        ),
        (
            "wg_agent_gateway_up",
            MetricKind::Gauge,
            "1 when the gateway is up (recent authenticated traffic), else 0.",
        ),
    ];
    for (index, (name, kind, help)) in series.iter().enumerate() {
        w.family(name, *kind, help);
        for g in &snapshot.gateways {
            let value = match index {
                0 => g.rx_bytes,
                1 => g.tx_bytes,
                2 => g.last_handshake_unix.unwrap_or(0),
                _ => u64::from(g.state == GatewayState::Up),
            };
            w.sample_u64(name, &[("gateway", &g.id)], value);
        }
    }
    w.family(
        "wg_agent_gateway_stale",
        MetricKind::Gauge,
        "1 when the gateway has had no handshake for 180 s, else 0.",
    );
    for g in &snapshot.gateways {
        w.sample_u64(
            "wg_agent_gateway_stale",
            &[("gateway", &g.id)],
            u64::from(g.state == GatewayState::Stale),
        );
    }
    w.family(
        "wg_agent_gateway_icmp_filtered",
        MetricKind::Gauge,
        "1 when the liveness probe goes unanswered though the handshakes it forces succeed \
         (the gateway filters ICMP echo), else 0.",
    );
    for g in &snapshot.gateways {
        w.sample_u64(
            "wg_agent_gateway_icmp_filtered",
            &[("gateway", &g.id)],
            u64::from(g.icmp_filtered),
        );
    }
}

/// Writes the agent-wide series: open virtual-IP connections and dropped packets by reason.
pub fn write_agent_counters(w: &mut MetricsWriter<'_>, counters: &AgentCounters) {
    w.family(
        "wg_agent_open_connections",
        MetricKind::Gauge,
        "TCP connections currently open on the virtual IP.",
    );
    w.sample_u64("wg_agent_open_connections", &[], counters.open_connections);
    w.family(
        "wg_agent_dropped_packets_total",
        MetricKind::Counter,
        "Packets dropped, by reason.",
    );
    for (reason, count) in &counters.dropped_packets {
        w.sample_u64(
            "wg_agent_dropped_packets_total",
            &[("reason", reason)],
            *count,
        );
    }
    w.family(
        "wg_agent_tcp_loss_repair_total",
        MetricKind::Counter,
        "TCP segments the virtual IP sent again: kind=\"sack\" (shown lost by the peer's SACK \
         blocks), kind=\"probe\" (tail-loss probes), kind=\"stack_resent\" (by the TCP stack's \
         own fast retransmit or timeout), kind=\"stack_resend_dropped\" (stack retransmissions \
         not sent: the peer had every byte).",
    );
    w.sample_u64(
        "wg_agent_tcp_loss_repair_total",
        &[("kind", "sack")],
        counters.tcp_repaired,
    );
    w.sample_u64(
        "wg_agent_tcp_loss_repair_total",
        &[("kind", "probe")],
        counters.tcp_probes,
    );
    w.sample_u64(
        "wg_agent_tcp_loss_repair_total",
        &[("kind", "stack_resent")],
        counters.tcp_stack_resent,
    );
    w.sample_u64(
        "wg_agent_tcp_loss_repair_total",
        &[("kind", "stack_resend_dropped")],
        counters.tcp_stack_resends_dropped,
    );
    for (name, help, unanswered) in [
        (
            "wg_agent_gateway_liveness_probes_total",
            "ICMP echo probes sent to the gateway's virtual IP after 25 s of silence.",
            false,
        ),
        (
            "wg_agent_gateway_liveness_probes_unanswered_total",
            "Liveness probes that got no answer in 10 s (each forced a fresh handshake, but \
             the one confirming such a handshake).",
            true,
        ),
    ] {
        w.family(name, MetricKind::Counter, help);
        for (id, (sent, failed)) in &counters.liveness_probes {
            let value = if unanswered { *failed } else { *sent };
            w.sample_u64(name, &[("gateway", id)], value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::GatewayStatus;

    #[test]
    fn escaping_and_values() {
        let mut text = String::new();
        let mut w = MetricsWriter::new(&mut text);
        w.family("m", MetricKind::Gauge, "line one\nback\\slash");
        w.sample("m", &[("a", "q\"uote"), ("b", "back\\slash\nnl")], 0.25);
        w.sample("m", &[], f64::NAN);
        w.sample("m", &[], f64::INFINITY);
        w.sample("m", &[], f64::NEG_INFINITY);
        w.sample_u64("m", &[], u64::MAX);
        assert_eq!(
            text,
            "# HELP m line one\\nback\\\\slash\n# TYPE m gauge\n\
             m{a=\"q\\\"uote\",b=\"back\\\\slash\\nnl\"} 0.25\n\
             m NaN\nm +Inf\nm -Inf\nm 18446744073709551615\n"
        );
    }

    #[test]
    fn histogram_series() {
        let mut text = String::new();
        MetricsWriter::new(&mut text).histogram(
            "lat_seconds",
            &[("port", "80")],
            &[(0.005, 1), (0.1, 3)],
            0.2,
            4,
        );
        assert_eq!(
            text,
            "lat_seconds_bucket{port=\"80\",le=\"0.005\"} 1\n\
             lat_seconds_bucket{port=\"80\",le=\"0.1\"} 3\n\
             lat_seconds_bucket{port=\"80\",le=\"+Inf\"} 4\n\
             lat_seconds_sum{port=\"80\"} 0.2\n\
             lat_seconds_count{port=\"80\"} 4\n"
        );
    }

    #[test]
    fn gateway_and_agent_series() {
        let gw = |id: &str, state, hs| {
            GatewayStatus::new(id.into(), None, "pk".into(), "e".into(), state, hs, 10, 20)
        };
        let snapshot = StatusSnapshot::new(
            "10.1.0.100".parse().unwrap(),
            vec![
                gw("gw1", GatewayState::Up, Some(1_764_000_000)).with_icmp_filtered(true),
                gw("g\"2", GatewayState::Stale, None),
            ],
            vec![],
        );
        let mut text = String::new();
        let mut w = MetricsWriter::new(&mut text);
        write_gateway_metrics(&mut w, &snapshot);
        let mut counters = AgentCounters {
            open_connections: 7,
            tcp_repaired: 3,
            tcp_probes: 1,
            ..Default::default()
        };
        counters.dropped_packets.insert("malformed".into(), 2);
        counters.liveness_probes.insert("gw1".into(), (5, 2));
        write_agent_counters(&mut w, &counters);
        for line in [
            "# TYPE wg_agent_gateway_rx_bytes_total counter",
            "wg_agent_gateway_rx_bytes_total{gateway=\"gw1\"} 10",
            "wg_agent_gateway_tx_bytes_total{gateway=\"gw1\"} 20",
            "wg_agent_gateway_last_handshake_timestamp_seconds{gateway=\"gw1\"} 1764000000",
            "wg_agent_gateway_last_handshake_timestamp_seconds{gateway=\"g\\\"2\"} 0",
            "wg_agent_gateway_up{gateway=\"gw1\"} 1",
            "wg_agent_gateway_up{gateway=\"g\\\"2\"} 0",
            "wg_agent_gateway_stale{gateway=\"g\\\"2\"} 1",
            "wg_agent_gateway_icmp_filtered{gateway=\"gw1\"} 1",
            "wg_agent_gateway_icmp_filtered{gateway=\"g\\\"2\"} 0",
            "wg_agent_open_connections 7",
            "wg_agent_dropped_packets_total{reason=\"malformed\"} 2",
            "wg_agent_tcp_loss_repair_total{kind=\"sack\"} 3",
            "wg_agent_tcp_loss_repair_total{kind=\"probe\"} 1",
            "# TYPE wg_agent_gateway_liveness_probes_total counter",
            "wg_agent_gateway_liveness_probes_total{gateway=\"gw1\"} 5",
            "wg_agent_gateway_liveness_probes_unanswered_total{gateway=\"gw1\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every family is announced exactly once.
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(types, 11);
    }
}
