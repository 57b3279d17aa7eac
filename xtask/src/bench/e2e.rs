//! The end-to-end comparison (issue 7): `wg-agent` against wireguard-go + kernel TCP + nginx,
//! each behind its own wireguard-go gateway, the same upstream nginx and the same clients.
//! Every step runs ours then the reference, so a busy moment of the machine hits both alike.
//! A step that fails becomes a note in the report; a side that cannot start ends the run.
//! Everything is torn down on return (also on error): namespaces, processes, files.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testbed::WireguardGoSelection;

use super::measure::{self, Transfer, Usage, usage};
use super::report::{Report, Row, Target};
use super::setup::{Files, Kind, Side};
use super::{Options, lossy};
use crate::prereq::{is_root, on_path};
use crate::{cargo, root, run as run_cmd};

/// Debian packages the comparison needs: (program or file that shows it is there, package).
const PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    ("wrk", "wrk"),
    ("iperf3", "iperf3"),
    ("curl", "curl"),
    ("wg", "wireguard-tools"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("sysctl", "procps"),
];

/// CPU seconds of the agent side and of the gateway, UDP drops and payload bytes moved, over
/// the bulk transfers.
#[derive(Debug, Default, Clone, Copy)]
struct CpuTally {
    cpu_secs: f64,
    gateway_cpu_secs: f64,
    udp_drops: u64,
    bytes: u64,
}

/// A snapshot taken before a transfer.
struct Before {
    agent: Usage,
    gateway: Usage,
    drops: u64,
}

impl CpuTally {
    fn before(side: &Side) -> Before {
        Before {
            agent: usage(&side.agent_pids()),
            gateway: usage(&side.gateway_pids()),
            drops: side.udp_drops(),
        }
    }

    fn add(&mut self, side: &Side, before: &Before, bytes: u64) {
        let agent = usage(&side.agent_pids());
        let gateway = usage(&side.gateway_pids());
        self.cpu_secs += (agent.cpu_secs - before.agent.cpu_secs).max(0.0);
        self.gateway_cpu_secs += (gateway.cpu_secs - before.gateway.cpu_secs).max(0.0);
        self.udp_drops += side.udp_drops().saturating_sub(before.drops);
        self.bytes += bytes;
    }
}

/// Runs the comparison and writes the report.
pub(crate) fn run(options: &Options) -> Result<()> {
    if !is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            bail!("CI=true: the end-to-end bench needs root (namespaces, TUN)");
        }
        eprintln!("skipping the end-to-end bench: it needs root (namespaces, TUN)");
        return Ok(());
    }
    let wall = Instant::now();
    ensure_packages()?;
    let gateway = WireguardGoSelection::parse(&options.gateway)?;
    let gateway_binary = gateway
        .binary()
        .with_context(|| format!("no wireguard-go for --gateway {}", options.gateway))?;
    raise_fd_limit();
    let binary = match &options.agent_binary {
        Some(path) => path.clone(),
        None => {
            run_cmd(cargo().args(["build", "--release", "-p", "agent"]))?;
            root().join("target/release/wg-agent")
        }
    };
    testbed::cleanup_stale();

    let mut report = Report::default();
    report.notes.push(format!(
        "machine: {} CPUs, load average at start {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        loadavg()
    ));
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    report.notes.push(format!(
        "agent binary {} (work tree at commit {commit})",
        binary.display()
    ));
    if options.main_rows() {
        report.notes.push(format!(
            "clean rows: steps of {:?}, large file {} MiB",
            options.step,
            options.large_bytes >> 20
        ));
    }
    if options.lossy_rows() {
        report.notes.push(format!(
            "lossy rows: each transfer bounded at {:?}",
            options.lossy_limit
        ));
    }
    report.notes.push(format!(
        "gateways (and the reference's own wireguard-go): {}",
        gateway.describe()
    ));
    let files = Files::create(if options.main_rows() {
        options.large_bytes
    } else {
        1 << 20
    })?;
    if options.main_rows() {
        main_rows(options, &files, &binary, &gateway_binary, &mut report)?;
    }
    if options.lossy_rows() {
        eprintln!("bench: starting both sides behind impaired relays");
        let ours = Side::start(Kind::Ours, &files, &binary, &gateway_binary, true)?;
        let reference = Side::start(Kind::Reference, &files, &binary, &gateway_binary, true)?;
        lossy::run(
            &[&ours, &reference],
            &files,
            options.lossy_limit,
            &options.lossy_profiles,
            &mut report,
        );
        drop(reference);
        drop(ours);
    }
    report.notes.push(format!(
        "load average at end {}; whole run {:.0} s",
        loadavg(),
        wall.elapsed().as_secs_f64()
    ));

    let (md, json) = report.write(&root().join("target/bench-report"))?;
    println!("{}", report.markdown());
    println!("report: {} and {}", md.display(), json.display());
    println!("ratios ours/reference:\n{}", report.ratio_lines());
    Ok(())
}

/// The clean-link rows (issue 7): start-up, memory, bulk, requests, iperf3, CPU, idle.
fn main_rows(
    options: &Options,
    files: &Files,
    binary: &Path,
    gateway_binary: &Path,
    report: &mut Report,
) -> Result<()> {
    eprintln!("bench: starting both sides");
    let ours = Side::start(Kind::Ours, files, binary, gateway_binary, false)?;
    let reference = Side::start(Kind::Reference, files, binary, gateway_binary, false)?;
    let sides = [&ours, &reference];
    std::thread::sleep(Duration::from_secs(1));

    let mut row = Row::new("time to first request", "ms");
    let mut rss = Row::new("RSS at idle, after start", "MiB").target(Target::OursAtMost(10.0));
    for (i, side) in sides.iter().enumerate() {
        row.set(i, side.startup.as_secs_f64() * 1e3);
        rss.set(i, mib(usage(&side.agent_pids()).rss_kib));
    }
    report.rows.extend([row, rss]);

    idle_connections(&sides, options.idle_connections, report);
    if !options.pause.is_zero() {
        eprintln!(
            "bench: pausing {:?}; namespaces: ours {} / {}, reference {} / {}",
            options.pause,
            ours.gw_ns.name(),
            ours.agent_ns.name(),
            reference.gw_ns.name(),
            reference.agent_ns.name()
        );
        std::thread::sleep(options.pause);
    }
    let mut cpu = [CpuTally::default(); 2];
    bulk(&sides, files, report, &mut cpu);
    note_rss(&sides, "after download and upload", report);
    requests(&sides, options.step, report);
    note_rss(&sides, "after wrk", report);
    iperf(&sides, options.step, report, &mut cpu);
    note_rss(&sides, "after iperf3", report);
    let mut row = Row::new("agent CPU per GB moved", "s/GB").target(Target::RatioAtMost(0.7));
    let mut gateway = Row::new(
        "gateway wireguard-go CPU per GB (same program both sides)",
        "s/GB",
    );
    let mut drops = Row::new(
        "UDP receive-buffer drops in bulk runs (both namespaces)",
        "datagrams",
    );
    for (i, tally) in cpu.iter().enumerate() {
        if tally.bytes > 0 {
            let gb = tally.bytes as f64 / 1e9;
            row.set(i, tally.cpu_secs / gb);
            gateway.set(i, tally.gateway_cpu_secs / gb);
        }
        drops.set(i, tally.udp_drops as f64);
    }
    report.rows.extend([row, gateway, drops]);
    idle(&sides, options.idle, report);

    let mut peak = Row::new("agent peak RSS (VmHWM)", "MiB").target(Target::OursAtMost(128.0));
    for (i, side) in sides.iter().enumerate() {
        peak.set(i, mib(usage(&side.agent_pids()).hwm_kib));
    }
    report.rows.push(peak);
    report.notes.push(
        "reference = wireguard-go + nginx (master and workers) on the agent side; CPU per GB over \
         the download, upload and iperf3 runs"
            .to_owned(),
    );
    drop(reference);
    drop(ours);
    Ok(())
}

/// Download and upload of the large file, one each per side.
fn bulk(sides: &[&Side; 2], files: &Files, report: &mut Report, cpu: &mut [CpuTally; 2]) {
    let mib_size = files.large_bytes >> 20;
    let large = files.large.to_string_lossy().into_owned();
    let mut down =
        Row::new(format!("download {mib_size} MiB"), "MB/s").target(Target::RatioAtLeast(1.2));
    let mut up =
        Row::new(format!("upload {mib_size} MiB"), "MB/s").target(Target::RatioAtLeast(1.2));
    for (i, side) in sides.iter().enumerate() {
        let result = measured(side, &mut cpu[i], || {
            measure::download(&side.gw_ns, &Side::url("large"), files.large_bytes)
        });
        record(report, &mut down, i, side, "download", result);
        let result = measured(side, &mut cpu[i], || {
            measure::upload(&side.gw_ns, &Side::url("upload"), &large, files.large_bytes)
        });
        record(report, &mut up, i, side, "upload", result);
    }
    report.rows.extend([down, up]);
}

/// Runs a transfer, adding the agent side's CPU time and the bytes to `tally`.
fn measured(
    side: &Side,
    tally: &mut CpuTally,
    transfer: impl FnOnce() -> Result<Transfer>,
) -> Result<Transfer> {
    let before = CpuTally::before(side);
    let result = transfer()?;
    tally.add(side, &before, result.bytes);
    Ok(result)
}

fn record(
    report: &mut Report,
    row: &mut Row,
    index: usize,
    side: &Side,
    what: &str,
    result: Result<Transfer>,
) {
    match result {
        Ok(transfer) => row.set(index, transfer.mb_per_s()),
        Err(error) => report
            .notes
            .push(format!("{}: {what} failed: {error:#}", side.kind.label())),
    }
}

/// wrk at 1 and 64 connections on the 100-byte and the 1 MiB file.
fn requests(sides: &[&Side; 2], step: Duration, report: &mut Report) {
    for (file, label) in [("small", "100 B"), ("1m", "1 MiB")] {
        for connections in [1u32, 64] {
            let name = format!("{label}, {connections} conn");
            let mut rps = Row::new(format!("requests/s {name}"), "req/s");
            let mut p50 = Row::new(format!("p50 latency {name}"), "ms");
            let mut p99 = Row::new(format!("p99 latency {name}"), "ms");
            if file == "small" && connections == 64 {
                rps = rps.target(Target::RatioAtLeast(1.0));
                p99 = p99.target(Target::RatioAtMost(1.0));
            }
            for (i, side) in sides.iter().enumerate() {
                match measure::wrk(&side.gw_ns, &Side::url(file), connections, step) {
                    Ok(wrk) if wrk.requests == 0 => {
                        rps.set(i, 0.0);
                        report.notes.push(format!(
                            "{}: wrk {name}: no request completed in {step:?}",
                            side.kind.label()
                        ));
                    }
                    Ok(wrk) => {
                        rps.set(i, wrk.requests_per_s);
                        p50.set(i, wrk.p50_ms);
                        p99.set(i, wrk.p99_ms);
                        if wrk.errors > 0 {
                            report.notes.push(format!(
                                "{}: wrk {name}: {} errors in {} requests",
                                side.kind.label(),
                                wrk.errors,
                                wrk.requests
                            ));
                        }
                    }
                    Err(error) => report.notes.push(format!(
                        "{}: wrk {name} failed: {error:#}",
                        side.kind.label()
                    )),
                }
            }
            report.rows.extend([rps, p50, p99]);
        }
    }
}

/// iperf3 through the TCP route: 1 and 4 streams, gateway → agent and agent → gateway (-R).
fn iperf(sides: &[&Side; 2], step: Duration, report: &mut Report, cpu: &mut [CpuTally; 2]) {
    for streams in [1u32, 4] {
        for reverse in [false, true] {
            let direction = if reverse { "agent→gw" } else { "gw→agent" };
            let name = format!("iperf3 tcp route {streams} stream(s) {direction}");
            let mut row = Row::new(name.clone(), "MB/s");
            for (i, side) in sides.iter().enumerate() {
                let result = measured(side, &mut cpu[i], || {
                    measure::iperf(&side.gw_ns, streams, reverse, step)
                });
                record(report, &mut row, i, side, &name, result);
            }
            report.rows.push(row);
        }
    }
}

/// RSS while holding `count` idle keep-alive connections that each served one small request.
fn idle_connections(sides: &[&Side; 2], count: usize, report: &mut Report) {
    let mut row = Row::new(format!("RSS holding {count} idle keep-alive conns"), "MiB")
        .target(Target::OursAtMost(64.0));
    for (i, side) in sides.iter().enumerate() {
        match measure::hold_idle_connections(&side.gw_ns, count) {
            Ok((open, failed)) => {
                std::thread::sleep(Duration::from_secs(1));
                row.set(i, mib(usage(&side.agent_pids()).rss_kib));
                if failed > 0 {
                    report.notes.push(format!(
                        "{}: {failed} of {count} keep-alive connections failed",
                        side.kind.label()
                    ));
                }
                drop(open);
            }
            Err(error) => report.notes.push(format!(
                "{}: idle connections failed: {error:#}",
                side.kind.label()
            )),
        }
    }
    report.rows.push(row);
    // Let both sides notice the closed connections before the idle window.
    std::thread::sleep(Duration::from_secs(2));
}

/// CPU use of both sides over one shared idle window, then RSS after all the load.
fn idle(sides: &[&Side; 2], window: Duration, report: &mut Report) {
    let before: Vec<Usage> = sides.iter().map(|s| usage(&s.agent_pids())).collect();
    let started = Instant::now();
    eprintln!("bench: idle window of {window:?}");
    std::thread::sleep(window);
    let secs = started.elapsed().as_secs_f64();
    let mut cpu =
        Row::new(format!("idle CPU over {:.0} s", secs), "%").target(Target::OursAtMost(0.5));
    let mut rss = Row::new("RSS at idle, after the load", "MiB");
    for (i, side) in sides.iter().enumerate() {
        let after = usage(&side.agent_pids());
        cpu.set(i, (after.cpu_secs - before[i].cpu_secs) / secs * 100.0);
        rss.set(i, mib(after.rss_kib));
    }
    report.rows.extend([cpu, rss]);
}

/// Records RSS and peak RSS of both agent sides after a step (where the peak comes from).
fn note_rss(sides: &[&Side; 2], when: &str, report: &mut Report) {
    let [ours, reference] = sides.map(|side| usage(&side.agent_pids()));
    report.notes.push(format!(
        "RSS {when}: ours {:.1} MiB (peak {:.1}), reference {:.1} MiB (peak {:.1})",
        mib(ours.rss_kib),
        mib(ours.hwm_kib),
        mib(reference.rss_kib),
        mib(reference.hwm_kib)
    ));
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ensure_packages() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(probe, _)| {
            if probe.starts_with('/') {
                !std::path::Path::new(probe).exists()
            } else {
                !on_path(probe)
            }
        })
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        bail!(
            "missing {} and no apt-get to install them",
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Lets this process (and what it starts: wg-agent, nginx, the held connections) open enough
/// files for the 1,000 connections.
fn raise_fd_limit() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(4).map(str::to_owned)
        })
        .unwrap_or_else(|| "4096".into());
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
}
