//! 1 GiB each way through the proxy, with the process's memory measured flat.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, channel::Channel};
use local_proxy::ProxyConfig;

const GIB: u64 = 1 << 30;
/// Growth of resident memory allowed while a gibibyte streams through (buffers are per
/// connection: tens of KiB; a buffered body would be 1,024 MiB).
const MAX_GROWTH_KIB: u64 = 48 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_download_of_1_gib_streams_in_constant_memory() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let _ = body_text(send(p.addr, get("/download?1000000")).await).await; // warm up
    let before = rss_kib();
    let watch = RssWatch::start();
    let started = Instant::now();
    let resp = send(p.addr, get(&format!("/download?{GIB}"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], GIB.to_string().as_str());
    let mut body = resp.into_body();
    let mut total = 0u64;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .unwrap()
    {
        total += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    let elapsed = started.elapsed();
    let peak = watch.stop();
    assert_eq!(total, GIB);
    report_gib("download", elapsed, before, peak);
    assert!(p.proxy.metrics().snapshot().bytes_out > GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_upload_of_1_gib_streams_in_constant_memory() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let _ = body_text(send(p.addr, get("/say?warm")).await).await;
    let before = rss_kib();
    let watch = RssWatch::start();
    let started = Instant::now();
    let (mut tx, body) = Channel::<Bytes, std::convert::Infallible>::new(4);
    let req = Request::post("/upload")
        .header("host", "x")
        .header("content-length", GIB.to_string())
        .body(body)
        .unwrap();
    let sending = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..GIB / chunk.len() as u64 {
            // The proxy's back-pressure is what paces this loop.
            tx.send_data(chunk.clone()).await.unwrap();
        }
    });
    let resp = send(p.addr, req).await;
    let counted = body_text(resp).await;
    sending.await.unwrap();
    let elapsed = started.elapsed();
    let peak = watch.stop();
    assert_eq!(counted, GIB.to_string());
    report_gib("upload", elapsed, before, peak);
    assert!(p.proxy.metrics().snapshot().bytes_in > GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_slow_reader_slows_the_upstream_instead_of_growing_memory() {
    let (_, p) = start_pair(ProxyConfig::default()).await;
    let _ = body_text(send(p.addr, get("/say?warm")).await).await;
    let before = rss_kib();
    let watch = RssWatch::start();
    let size = 256 * 1024 * 1024u64;
    let mut body = send(p.addr, get(&format!("/download?{size}")))
        .await
        .into_body();
    let first = body.frame().await.unwrap().unwrap();
    // Stop reading: the upstream can produce 256 MiB in well under a second, so if the proxy
    // buffered instead of pushing back, memory would grow by that much during the pause.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent_during_pause = p.proxy.metrics().snapshot().bytes_out;
    let peak_paused = rss_kib();
    let mut total = first.data_ref().map_or(0, |d| d.len() as u64);
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .unwrap()
    {
        total += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    let peak = watch.stop();
    assert_eq!(total, size);
    eprintln!(
        "slow reader: {sent_during_pause} bytes sent while paused; rss {before} -> {peak_paused} -> peak {peak} KiB"
    );
    assert!(
        sent_during_pause < 32 * 1024 * 1024,
        "proxy kept sending: {sent_during_pause}"
    );
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH_KIB,
        "rss grew from {before} to {peak} KiB"
    );
}

/// Prints how fast a gibibyte went and how memory moved, and checks that resident memory grew
/// by less than [`MAX_GROWTH_KIB`].
fn report_gib(what: &str, elapsed: Duration, before: u64, peak: u64) {
    eprintln!(
        "{what}: 1 GiB in {elapsed:.2?} ({:.0} MiB/s), rss {before} KiB -> peak {peak} KiB",
        1024.0 / elapsed.as_secs_f64()
    );
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH_KIB,
        "rss grew from {before} to {peak} KiB"
    );
}
