//! netstack: bulk TCP throughput and small request/response rate between two in-memory
//! stacks (baseline: kernel TCP over loopback, same run; bulk also without segment
//! offload, and the process's CPU time per byte from `getrusage`, printed after the
//! group), and the cost of a round trip
//! as the number of open connections grows (1 / 100 / 1,000 / 10,000), sharded (the
//! default, 64 shards) against one socket set (baseline).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netstack::{Netstack, NetstackConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const CHUNK: usize = 1 << 20;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("bench address")
}

/// Two stacks joined in memory by two pump tasks.
fn stacks(shards: usize, buffer: usize) -> (Netstack, Netstack) {
    stacks_with(shards, buffer, true)
}

/// [`stacks`], with segment offload on or off.
fn stacks_with(shards: usize, buffer: usize, offload: bool) -> (Netstack, Netstack) {
    let mk = |ip: &str| {
        let mut c = NetstackConfig::new([ip.parse().expect("ip")]);
        c.segment_offload = offload;
        c.shards = shards;
        c.tcp_rx_buffer = buffer;
        c.tcp_rx_buffer_max = buffer;
        c.tcp_tx_buffer = buffer;
        c.tcp_tx_buffer_max = buffer;
        c.max_connections = 32_768;
        Netstack::new(c).expect("stack")
    };
    let (a, b) = (mk("10.0.0.1"), mk("10.0.0.2"));
    for (from, to) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
        tokio::spawn(async move {
            let mut batch: Vec<Bytes> = Vec::with_capacity(256);
            loop {
                from.recv_outbound(&mut batch, 256).await;
                to.push_inbound(&batch);
                batch.clear();
            }
        });
    }
    (a, b)
}

/// A connected pair of streams over the in-memory stacks.
async fn netstack_pair(
    a: &Netstack,
    b: &Netstack,
    port: u16,
) -> (netstack::TcpStream, netstack::TcpStream) {
    let listener = b.listen(addr(&format!("10.0.0.2:{port}"))).expect("listen");
    let c = a
        .connect(addr(&format!("10.0.0.2:{port}")))
        .await
        .expect("connect");
    let (s, _) = listener.accept().await.expect("accept");
    (c, s)
}

/// A connected pair over kernel loopback TCP.
async fn kernel_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let c = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (s, _) = listener.accept().await.expect("accept");
    c.set_nodelay(true).expect("nodelay");
    s.set_nodelay(true).expect("nodelay");
    (c, s)
}

/// A sink task that reports every CHUNK received.
fn sink<R: AsyncRead + Unpin + Send + 'static>(mut r: R) -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0;
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got += n;
                    while got >= CHUNK {
                        got -= CHUNK;
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    rx
}

/// CPU time (user + system) of this process so far (`getrusage`).
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) * 1000) as u32)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

/// CPU time and bytes of one bulk bench, summed over criterion's samples, and its slowest
/// 1 MiB: a mean hides a stall (a 200 ms retransmission timeout once in a few thousand
/// iterations moved the mean by a fraction and the slowest iteration 100-fold).
#[derive(Default)]
struct CpuPerByte {
    cpu: Duration,
    bytes: u64,
    slowest: Duration,
}

impl CpuPerByte {
    fn ns_per_kib(&self) -> f64 {
        self.cpu.as_nanos() as f64 / (self.bytes as f64 / 1024.0).max(1.0)
    }
}

async fn bulk<W: AsyncWrite + Unpin>(
    w: &mut W,
    done: &mut mpsc::UnboundedReceiver<()>,
    iters: u64,
    cpu: &mut CpuPerByte,
) -> Duration {
    let data = vec![0x5au8; CHUNK];
    let cpu_start = cpu_time();
    let start = Instant::now();
    for _ in 0..iters {
        let at = Instant::now();
        w.write_all(&data).await.expect("write");
        done.recv().await.expect("sink");
        cpu.slowest = cpu.slowest.max(at.elapsed());
    }
    let elapsed = start.elapsed();
    cpu.cpu += cpu_time().saturating_sub(cpu_start);
    cpu.bytes += iters * CHUNK as u64;
    elapsed
}

/// An echo task for request/response.
fn echo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut s: S) {
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
}

async fn round_trips<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, iters: u64) -> Duration {
    let mut buf = [7u8; 64];
    let start = Instant::now();
    for _ in 0..iters {
        s.write_all(&buf).await.expect("write");
        s.read_exact(&mut buf).await.expect("read");
    }
    black_box(buf);
    start.elapsed()
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("netstack/bulk_tcp");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    let mut cpu: [CpuPerByte; 3] = Default::default();
    for (k, (name, offload)) in [
        ("netstack_in_memory", true),
        ("netstack_in_memory_wire_segments", false),
    ]
    .into_iter()
    .enumerate()
    {
        let (mut ns_w, mut ns_done) = rt.block_on(async {
            let (a, b) = stacks_with(NetstackConfig::default().shards, 1 << 20, offload);
            let (c, s) = netstack_pair(&a, &b, 5000).await;
            (c, sink(s))
        });
        g.bench_function(name, |bch| {
            bch.iter_custom(|iters| rt.block_on(bulk(&mut ns_w, &mut ns_done, iters, &mut cpu[k])));
        });
    }
    let (mut k_w, mut k_done) = rt.block_on(async {
        let (c, s) = kernel_pair().await;
        (c, sink(s))
    });
    g.bench_function("baseline_kernel_loopback", |bch| {
        bch.iter_custom(|iters| rt.block_on(bulk(&mut k_w, &mut k_done, iters, &mut cpu[2])));
    });
    g.finish();
    if cpu.iter().all(|c| c.bytes > 0) {
        let [slow_ours, slow_wire, slow_kernel] = cpu.each_ref().map(|c| c.slowest);
        let [ours, wire, kernel] = cpu.map(|c| c.ns_per_kib());
        println!(
            "netstack/bulk_tcp cpu per KiB (getrusage, whole process): netstack_in_memory \
             {ours:.0} ns, netstack_in_memory_wire_segments {wire:.0} ns, \
             baseline_kernel_loopback {kernel:.0} ns; kernel/ours {:.2}, kernel/wire {:.2}",
            kernel / ours,
            kernel / wire
        );
        println!(
            "netstack/bulk_tcp slowest 1 MiB: netstack_in_memory {slow_ours:.2?}, \
             netstack_in_memory_wire_segments {slow_wire:.2?}, baseline_kernel_loopback \
             {slow_kernel:.2?}"
        );
    }

    let mut g = c.benchmark_group("netstack/request_response_64B");
    g.throughput(Throughput::Elements(1));
    let mut ns = rt.block_on(async {
        let (a, b) = stacks(NetstackConfig::default().shards, 1 << 20);
        let (c, s) = netstack_pair(&a, &b, 5001).await;
        echo(s);
        c
    });
    g.bench_function("netstack_in_memory", |bch| {
        bch.iter_custom(|iters| rt.block_on(round_trips(&mut ns, iters)));
    });
    let mut k = rt.block_on(async {
        let (c, s) = kernel_pair().await;
        echo(s);
        c
    });
    g.bench_function("baseline_kernel_loopback", |bch| {
        bch.iter_custom(|iters| rt.block_on(round_trips(&mut k, iters)));
    });
    g.finish();
}

/// Round trip on one connection while `open` other connections sit idle.
fn scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("netstack/round_trip_with_open_connections");
    g.throughput(Throughput::Elements(1));
    for open in [1usize, 100, 1_000, 10_000] {
        let default_shards = NetstackConfig::default().shards;
        for (label, shards) in [
            ("sharded_default", default_shards),
            ("baseline_one_socket_set", 1),
        ] {
            let rt = runtime();
            let (mut conn, idle) = rt.block_on(async {
                let (a, b) = stacks(shards, 64 << 10);
                let listener = b
                    .listen_with_backlog(addr("10.0.0.2:80"), 1024)
                    .expect("listen");
                let mut idle = Vec::with_capacity(open * 2);
                let mut left = open;
                while left > 0 {
                    let n = left.min(256);
                    let mut tasks = Vec::new();
                    for _ in 0..n {
                        let a = a.clone();
                        tasks.push(tokio::spawn(async move {
                            a.connect(addr("10.0.0.2:80")).await.expect("connect")
                        }));
                    }
                    for _ in 0..n {
                        idle.push(listener.accept().await.expect("accept").0);
                    }
                    for t in tasks {
                        idle.push(t.await.expect("join"));
                    }
                    left -= n;
                }
                let (c, s) = netstack_pair(&a, &b, 81).await;
                echo(s);
                (c, (idle, a, b))
            });
            g.bench_with_input(BenchmarkId::new(label, open), &open, |bch, _| {
                bch.iter_custom(|iters| rt.block_on(round_trips(&mut conn, iters)));
            });
            drop(idle);
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
    g.finish();
}

criterion_group!(benches, throughput, scale);
criterion_main!(benches);
