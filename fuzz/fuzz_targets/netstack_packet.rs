//! IP packets from the tunnel into a netstack.
//!
//! One stack per process answers on `10.0.0.1` and `fd00::1`, with a TCP listener on port 80
//! (its accepted streams echo) and UDP echo sockets (port 53 on IPv4, 54 on IPv6), so packets reach smoltcp's
//! sockets, not only the parser. State carries over between inputs the way it does in the
//! agent (half-open connections, timers); every input is one packet, pushed with `push_inbound`,
//! then the stack runs briefly and its output is drained. A panic, or a bound broken, is a bug.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netstack::{Netstack, NetstackConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const MAX_OUTBOUND: usize = 256;
const MAX_CONNECTIONS: usize = 512;

struct Target {
    runtime: Runtime,
    stack: Netstack,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let stack = runtime.block_on(async {
            let mut config = NetstackConfig::new([IpAddr::V4(V4), IpAddr::V6(V6)]);
            config.shards = 4;
            config.tcp_rx_buffer = 16 << 10;
            config.tcp_rx_buffer_max = 16 << 10;
            config.tcp_tx_buffer = 16 << 10;
            config.tcp_tx_buffer_max = 16 << 10;
            config.max_connections = MAX_CONNECTIONS;
            config.max_pending_syns = 128;
            config.max_outbound_packets = MAX_OUTBOUND;
            let stack = Netstack::new(config).expect("a valid netstack config");
            // UDP ports are per stack, not per address: 53 on IPv4, 54 on IPv6.
            for (ip, udp_port) in [(IpAddr::V4(V4), 53), (IpAddr::V6(V6), 54)] {
                let listener = stack
                    .listen(SocketAddr::new(ip, 80))
                    .expect("listen on port 80");
                tokio::spawn(async move {
                    while let Ok((mut stream, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            let mut buf = [0u8; 2048];
                            while let Ok(n) = stream.read(&mut buf).await {
                                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                });
                let udp = stack
                    .bind_udp(SocketAddr::new(ip, udp_port))
                    .expect("bind the udp port");
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                        let _ = udp.send_to(&buf[..n], from).await;
                    }
                });
            }
            stack
        });
        Target { runtime, stack }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = target();
    t.runtime.block_on(async {
        t.stack.push_inbound(&[data]);
        // Let the driver and the socket tasks run, then drain what the stack sent.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let mut out = Vec::new();
        while t.stack.try_recv_outbound(&mut out, 64) > 0 {
            for p in out.drain(..) {
                std::hint::black_box(p.len());
            }
        }
        // A brief pause now and then lets smoltcp's timers fire.
        if data.first() == Some(&0xff) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let stats = t.stack.stats();
    assert!(stats.tcp_sockets <= MAX_CONNECTIONS + 4, "{stats:?}");
    // Immediate replies (RST, echo) may pass the bound up to twice, then are dropped.
    assert!(t.stack.pending_outbound() <= 2 * MAX_OUTBOUND, "{stats:?}");
});
