//! Request heads (and whatever follows them) from a client into local-proxy's HTTP server.
//!
//! Each input is written into one end of an in-memory duplex stream whose other end
//! `HttpProxy::serve_connection` serves; the client then half-closes and reads the answer to
//! the end. A tiny upstream on 127.0.0.1 answers every request with `200 ok`. Every timeout of
//! the proxy is short, so each input is bounded in time; a connection still open after
//! `PER_INPUT` is a hang and fails the run, as does a panic.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use local_proxy::{ConnectionTracker, HttpProxy, HttpRouteConfig, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// Far above every proxy timeout below: only a hang gets here.
const PER_INPUT: Duration = Duration::from_secs(10);
/// Bytes of response read per input; a larger answer to one small input is a bug.
const MAX_RESPONSE: usize = 1 << 20;

struct Target {
    runtime: Runtime,
    proxy: HttpProxy,
    tracker: ConnectionTracker,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (proxy, tracker) = runtime.block_on(async {
            let app = start_upstream().await;
            let mut config = ProxyConfig::default();
            config.header_read_timeout = Duration::from_millis(200);
            config.upstream_connect_timeout = Duration::from_millis(500);
            config.upstream_response_timeout = Duration::from_millis(500);
            config.idle_timeout = Duration::from_millis(500);
            config.drain_timeout = Duration::from_millis(200);
            config.max_header_bytes = 16 << 10;
            let tracker = ConnectionTracker::new(&config);
            (HttpProxy::new(HttpRouteConfig::new(app), &config, &tracker), tracker)
        });
        Target {
            runtime,
            proxy,
            tracker,
        }
    })
}

/// An upstream that answers each request head with a short `200`, keeping the connection.
async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream on loopback");
    let addr = listener.local_addr().expect("the upstream's address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 || head.len() > 64 << 10 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tcp.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fuzz_target!(|data: &[u8]| {
    let t = target();
    t.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let peer = SocketAddr::from(([10, 1, 0, 1], 40_000));
        let serve = t.proxy.serve_connection(server, peer, &t.tracker);
        let talk = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                assert!(got.len() <= MAX_RESPONSE, "{} response bytes", got.len());
            }
            got
        };
        let done = tokio::time::timeout(PER_INPUT, async { tokio::join!(serve, talk) }).await;
        assert!(
            done.is_ok(),
            "the proxy held a connection past every timeout"
        );
    });
    assert_eq!(t.tracker.open_connections(), 0, "a connection slot leaked");
});
