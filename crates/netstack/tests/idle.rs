//! CPU use of an idle stack (its own test binary, so other tests' work is not counted).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn idle_stack_uses_no_cpu() {
    let p = pair();
    let listener = p.b.listen(sa(B, 80)).expect("listen");
    let mut c = p.a.connect(sa(B, 80)).await.expect("connect");
    let (mut s, _) = listener.accept().await.expect("accept");
    c.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.expect("read");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_time() - before;
    assert!(
        used < Duration::from_millis(50),
        "idle stack used {used:?} of cpu in 1 s"
    );
}

/// User + system CPU time of this process, from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("proc stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}
