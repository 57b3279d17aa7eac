//! UDP routes through a real wireguard-go gateway (issue 14): the `wg-agent` binary in its
//! namespace forwards datagrams sent to `10.1.0.100:PORT` from the gateway's namespace to a
//! UDP app on the agent's loopback (an echo server, and a tiny DNS responder), one flow per
//! client address. Checked: several flows, each reply at the right client, idle flows
//! expiring (metrics and `/status`), oversize replies dropped and counted, the flow bound
//! dropping and counting. Root only: without it each case prints one `skipping` line, under
//! `CI=true` a missing prerequisite fails. All traffic stays in the namespaces it creates.

#![allow(clippy::unwrap_used)]

mod suite;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use suite::{AGENT_VIP, AgentOptions, AgentProcess, Topology, metric, poll_until};
use testbed::Netns;

/// The echo route's port on the virtual IP.
const ECHO_PORT: u16 = 7;
/// The DNS route's port on the virtual IP.
const DNS_PORT: u16 = 53;
/// The echo route's flow bound.
const MAX_FLOWS: usize = 4;
/// The largest UDP payload through the tunnel at the agent's MTU (1420 - 20 - 8).
const MAX_PAYLOAD: usize = 1392;

/// A UDP server thread in a namespace; stops on drop.
struct UdpApp {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpApp {
    /// `answer` maps a request to its reply (`None`: no reply).
    fn start(ns: &Netns, answer: fn(&[u8]) -> Option<Vec<u8>>) -> Self {
        let socket = ns.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = answer(&buf[..n]) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The echo app: `size:N` is answered with N bytes, anything else with `echo:` and itself.
fn echo(request: &[u8]) -> Option<Vec<u8>> {
    let size = std::str::from_utf8(request)
        .ok()
        .and_then(|s| s.strip_prefix("size:"))
        .and_then(|s| s.parse::<usize>().ok());
    Some(match size {
        Some(n) => vec![b'x'; n],
        None => [b"echo:".as_slice(), request].concat(),
    })
}

/// The address the DNS responder gives every `A` question.
const DNS_ANSWER: [u8; 4] = [192, 0, 2, 53];

/// A tiny DNS responder: one question of type `A`, answered with [`DNS_ANSWER`] (TTL 60);
/// anything else is ignored.
fn dns(query: &[u8]) -> Option<Vec<u8>> {
    // Header (12 bytes), one question: QNAME labels, QTYPE, QCLASS.
    if query.len() < 12 || query[4..6] != [0, 1] || query[2] & 0x80 != 0 {
        return None;
    }
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let question = query.get(12..end + 4)?;
    if question[question.len() - 4..] != [0, 1, 0, 1] {
        return None;
    }
    let mut reply = Vec::with_capacity(end + 4 + 16);
    reply.extend_from_slice(&query[0..2]); // the query's ID
    reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]); // response, RD RA; 1 Q, 1 A
    reply.extend_from_slice(question);
    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]); // name ptr, A IN, TTL, len
    reply.extend_from_slice(&DNS_ANSWER);
    Some(reply)
}

/// A DNS query for `name`, type `A`, with `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A client socket in the gateway's namespace.
fn client(ns: &Netns) -> UdpSocket {
    let socket = ns.bind_udp("0.0.0.0:0".parse().unwrap()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
}

fn vip(port: u16) -> SocketAddr {
    format!("{AGENT_VIP}:{port}").parse().unwrap()
}

/// One request and its reply, retried (a datagram may be lost on a loaded machine).
fn exchange(socket: &UdpSocket, to: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..10 {
        socket.send_to(request, to).unwrap();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            assert_eq!(from, to, "the reply comes from the address asked");
            return buf[..n].to_vec();
        }
    }
    panic!(
        "no reply from {to} to {:?}",
        String::from_utf8_lossy(request)
    );
}

/// Waits until the metric sample `name{label...}` satisfies `ok`; its value.
fn wait_metric(agent: &AgentProcess<'_>, name: &str, label: &str, ok: impl Fn(f64) -> bool) -> f64 {
    poll_until(
        &format!("{name}{{{label}}}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let text = agent.metrics().ok()?;
            metric(&text, name, label).filter(|v| ok(*v))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.metrics().unwrap_or_default()))
    .0
}

#[test]
fn interop_suite_udp_route() {
    testbed::require_gateway_prereqs!();
    let topo = Topology::new("sud", 1).unwrap();
    let echo_app = UdpApp::start(&topo.agent_ns, echo);
    let dns_app = UdpApp::start(&topo.agent_ns, dns);
    let extra = format!(
        "\n[[routes]]\nport = {ECHO_PORT}\nupstream = \"{}\"\nprotocol = \"udp\"\nidle_timeout = \"5s\"\nmax_flows = {MAX_FLOWS}\n\
         \n[[routes]]\nport = {DNS_PORT}\nupstream = \"{}\"\nprotocol = \"udp\"\nidle_timeout = \"5s\"\n",
        echo_app.addr, dns_app.addr
    );
    let agent = topo
        .start_agent(
            &[topo.gateway(0)],
            AgentOptions {
                extra,
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let gw = &topo.sites[0].ns;
    let port = format!("port=\"{ECHO_PORT}\"");

    // Several flows, each reply at its own client.
    let clients: Vec<UdpSocket> = (0..MAX_FLOWS).map(|_| client(gw)).collect();
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            let request = format!("client {i} round {round}");
            let reply = exchange(c, vip(ECHO_PORT), request.as_bytes());
            assert_eq!(reply, format!("echo:{request}").as_bytes());
        }
    }
    let text = agent.metrics().unwrap();
    assert_eq!(
        metric(&text, "wg_agent_udp_open_flows", &port),
        Some(MAX_FLOWS as f64),
        "{text}"
    );

    // One flow more than the bound: dropped and counted, the others unaffected.
    let extra_client = client(gw);
    extra_client
        .send_to(b"over the bound", vip(ECHO_PORT))
        .unwrap();
    wait_metric(
        &agent,
        "wg_agent_udp_dropped_total",
        &format!("{port},reason=\"flow_limit\""),
        |v| v >= 1.0,
    );
    assert_eq!(
        exchange(&clients[0], vip(ECHO_PORT), b"still"),
        b"echo:still"
    );

    // The largest reply the tunnel carries arrives whole; one byte more is dropped, counted.
    let full = exchange(
        &clients[1],
        vip(ECHO_PORT),
        format!("size:{MAX_PAYLOAD}").as_bytes(),
    );
    assert_eq!(full.len(), MAX_PAYLOAD);
    clients[1]
        .send_to(
            format!("size:{}", MAX_PAYLOAD + 1).as_bytes(),
            vip(ECHO_PORT),
        )
        .unwrap();
    wait_metric(
        &agent,
        "wg_agent_udp_dropped_total",
        &format!("{port},reason=\"oversize\""),
        |v| v == 1.0,
    );

    // DNS through the route: each query from a fresh socket, as a resolver does; each a
    // one-shot flow.
    for id in 0..3u16 {
        let resolver = client(gw);
        let answer = exchange(
            &resolver,
            vip(DNS_PORT),
            &dns_query(0x4200 + id, "app.test"),
        );
        assert_eq!(answer[..2], (0x4200 + id).to_be_bytes(), "the query's id");
        assert_eq!(answer[answer.len() - 4..], DNS_ANSWER);
    }

    // Quiet flows expire (5 s on both routes; one-shot DNS flows after about 2 s, unless a
    // query had to be sent again), seen in the metrics and in `wg-agent status --json`.
    let expired = wait_metric(&agent, "wg_agent_udp_open_flows", &port, |v| v == 0.0);
    assert_eq!(expired, 0.0);
    wait_metric(
        &agent,
        "wg_agent_udp_open_flows",
        &format!("port=\"{DNS_PORT}\""),
        |v| v == 0.0,
    );
    let text = agent.metrics().unwrap();
    assert!(
        metric(&text, "wg_agent_udp_expired_flows_total", &port).unwrap_or(0.0) >= MAX_FLOWS as f64,
        "{text}"
    );
    let status = agent.status_json().unwrap();
    let routes = status["routes"].as_array().unwrap();
    let echo_route = routes
        .iter()
        .find(|r| r["port"] == ECHO_PORT && r["protocol"] == "udp")
        .unwrap();
    assert_eq!(echo_route["open_flows"], 0, "{status}");
    assert_eq!(echo_route["idle_timeout"], "5s", "{status}");

    // With the flows gone, the client refused before gets a flow of its own.
    assert_eq!(
        exchange(&extra_client, vip(ECHO_PORT), b"now in"),
        b"echo:now in"
    );
    drop(agent);
}

/// The largest UDP payload through the tunnel over IPv6 (1420 - 40 - 8).
const MAX_PAYLOAD6: usize = 1372;

/// A dual-stack agent (`virtual_ip = ["10.1.0.100", "fd00::100"]`): one UDP route answers
/// clients of both families from the address they asked, and the MTU rule counts IPv6's
/// larger header.
#[test]
fn interop_suite_udp_route_dual_stack() {
    testbed::require_gateway_prereqs!();
    let topo = Topology::new_dual_stack("sdu", 1).unwrap();
    let echo_app = UdpApp::start(&topo.agent_ns, echo);
    let extra = format!(
        "\n[[routes]]\nport = {ECHO_PORT}\nupstream = \"{}\"\nprotocol = \"udp\"\n",
        echo_app.addr
    );
    let agent = topo
        .start_agent(
            &[topo.gateway(0)],
            AgentOptions {
                extra,
                dual_stack: true,
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let gw = &topo.sites[0].ns;
    let vip6: SocketAddr = format!("[{}]:{ECHO_PORT}", suite::AGENT_VIP6)
        .parse()
        .unwrap();
    let v6 = gw.bind_udp("[::]:0".parse().unwrap()).unwrap();
    v6.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let v4 = client(gw);
    for round in 0..3 {
        let request = format!("v6 round {round}");
        assert_eq!(
            exchange(&v6, vip6, request.as_bytes()),
            format!("echo:{request}").as_bytes()
        );
        let request = format!("v4 round {round}");
        assert_eq!(
            exchange(&v4, vip(ECHO_PORT), request.as_bytes()),
            format!("echo:{request}").as_bytes()
        );
    }
    let full = exchange(&v6, vip6, format!("size:{MAX_PAYLOAD6}").as_bytes());
    assert_eq!(full.len(), MAX_PAYLOAD6);
    v6.send_to(format!("size:{}", MAX_PAYLOAD6 + 1).as_bytes(), vip6)
        .unwrap();
    let port = format!("port=\"{ECHO_PORT}\"");
    wait_metric(
        &agent,
        "wg_agent_udp_dropped_total",
        &format!("{port},reason=\"oversize\""),
        |v| v == 1.0,
    );
    let text = agent.metrics().unwrap();
    assert_eq!(
        metric(&text, "wg_agent_udp_open_flows", &port),
        Some(2.0),
        "{text}"
    );
    drop(agent);
}
