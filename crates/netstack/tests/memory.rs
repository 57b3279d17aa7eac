//! Memory of idle connections (its own test binary, so other tests do not disturb RSS).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident set size of this process in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_pin_their_buffers() {
    const CONNS: usize = 1000;
    let p = pair();
    let listener = p.b.listen(sa(B, 80)).expect("listen");
    // Warm up allocator and runtime with one round before measuring.
    let mut keep = Vec::new();
    let round = |n: usize| {
        let (a, listener) = (p.a.clone(), &listener);
        async move {
            let mut pairs = Vec::new();
            for _ in 0..n {
                let mut c = a.connect(sa(B, 80)).await.expect("connect");
                let (mut s, _) = listener.accept().await.expect("accept");
                c.write_all(&[b'q'; 300]).await.expect("request");
                let mut req = [0u8; 300];
                s.read_exact(&mut req).await.expect("read request");
                s.write_all(&[b'r'; 2000]).await.expect("response");
                let mut resp = [0u8; 2000];
                c.read_exact(&mut resp).await.expect("read response");
                pairs.push((c, s));
            }
            pairs
        }
    };
    keep.extend(round(10).await);
    // Churn: connections that moved a lot and were closed, so freed memory is reused.
    for _ in 0..4 {
        let mut c = p.a.connect(sa(B, 80)).await.expect("connect");
        let (mut s, _) = listener.accept().await.expect("accept");
        let big = vec![7u8; 1 << 20];
        let w = tokio::spawn(async move {
            c.write_all(&big).await.expect("write");
            c.shutdown().await.expect("shutdown");
            c
        });
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).await.expect("read");
        drop(w.await.expect("writer"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib();
    keep.extend(round(CONNS).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib();
    let per_conn = (after.saturating_sub(before)) as f64 / CONNS as f64;
    eprintln!(
        "RSS {before} KiB -> {after} KiB for {CONNS} idle connections (both ends): \
         {per_conn:.1} KiB per connection pair; full buffers would pin {} KiB per pair",
        4 * 1024
    );
    let sockets = p.a.stats().tcp_sockets;
    assert!((CONNS + 10..=CONNS + 14).contains(&sockets), "{sockets}");

    // Baseline in the same process: 1 MiB heap buffers of connections that came and went
    // (glibc then serves new ones from its heap and zero-fills them), one byte written.
    let churn = |fill: u8| -> Vec<Vec<u8>> {
        (0..100)
            .map(|i| {
                let mut v = vec![0u8; 1 << 20];
                v[0] = i as u8;
                if fill != 0 {
                    v.fill(fill);
                }
                v
            })
            .collect()
    };
    let heap_before = rss_kib();
    let mut used = churn(1);
    used.truncate(99); // keep the top chunk busy so the heap is not trimmed
    let pinned = used.pop();
    drop(used);
    let bufs = churn(0);
    let heap_after = rss_kib();
    eprintln!(
        "baseline: heap buffers of 1 MiB reused after churn, one byte written: {:.1} KiB resident each",
        (heap_after.saturating_sub(heap_before)) as f64 / 100.0
    );
    drop(pinned);
    drop(bufs);
    // Both ends together: far below the 4 MiB of buffers each pair could pin.
    assert!(per_conn < 128.0, "{per_conn} KiB per connection pair");
}
