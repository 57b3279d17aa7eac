//! Measuring tools: process CPU and memory from `/proc`, and the load clients (curl, wrk,
//! iperf3, held keep-alive connections) run inside a gateway namespace, each bounded in time.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testbed::Netns;

use super::setup::{IPERF_PORT, VIP};

/// Kernel clock ticks per second for `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user + system) and memory of a set of processes at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// Seconds of CPU used since the processes started.
    pub(crate) cpu_secs: f64,
    /// Resident set now (KiB), summed.
    pub(crate) rss_kib: u64,
    /// Peak resident set (VmHWM, KiB), summed over processes.
    pub(crate) hwm_kib: u64,
}

/// Reads [`Usage`] of `pids` (processes that vanished count as zero).
pub(crate) fn usage(pids: &[u32]) -> Usage {
    let mut total = Usage::default();
    for &pid in pids {
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command name (which may contain spaces) start at `state` (3rd).
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime are fields 14 and 15, i.e. 11 and 12 after `state`.
                let ticks: u64 = [11, 12]
                    .iter()
                    .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
                    .sum();
                total.cpu_secs += ticks as f64 / TICKS_PER_SECOND;
            }
        }
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            total.rss_kib += status_kib(&status, "VmRSS:");
            total.hwm_kib += status_kib(&status, "VmHWM:");
        }
    }
    total
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// UDP datagrams the kernel dropped for a full socket receive buffer inside `ns` (IPv4 and
/// IPv6 counters of `/proc/net/snmp{,6}` as seen from inside).
pub(crate) fn udp_rcvbuf_drops(ns: &Netns) -> u64 {
    let mut total = 0;
    if let Ok(snmp) = ns.run("cat", ["/proc/net/snmp", "/proc/net/snmp6"]) {
        let lines: Vec<&str> = snmp.lines().collect();
        for pair in lines.windows(2) {
            let (head, values) = (pair[0], pair[1]);
            if head.starts_with("Udp: ") && values.starts_with("Udp: ") {
                let index = head.split_whitespace().position(|w| w == "RcvbufErrors");
                total += index
                    .and_then(|i| values.split_whitespace().nth(i)?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total += lines
            .iter()
            .filter_map(|line| line.strip_prefix("Udp6RcvbufErrors"))
            .filter_map(|rest| rest.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// Direct children of `parent` (nginx workers of their master).
pub(crate) fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Runs `program args` inside `ns` under `timeout`; fails with its output when it fails.
fn run_in(ns: &Netns, limit: Duration, program: &str, args: &[&str]) -> Result<String> {
    let mut command: Command = ns.command("timeout");
    command
        .arg("-k")
        .arg("2")
        .arg(limit.as_secs().max(1).to_string())
        .arg(program)
        .args(args);
    let out = command
        .output()
        .with_context(|| format!("cannot start {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// One bulk transfer: payload bytes and wall time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
    /// Whether every byte arrived; `false`: the time bound ended it (`bytes` got through).
    pub(crate) complete: bool,
}

impl Transfer {
    /// Megabytes (10^6) per second.
    pub(crate) fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }
}

/// `curl` GET of `url` to /dev/null from `ns`; the whole `expected` bytes must arrive with 200.
pub(crate) fn download(ns: &Netns, url: &str, expected: u64) -> Result<Transfer> {
    let out = run_in(
        ns,
        Duration::from_secs(120),
        "curl",
        &[
            "-sS",
            "--max-time",
            "110",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            url,
        ],
    )?;
    curl_result(&out, 200, expected)
}

/// `curl -T FILE` PUT to `url` from `ns` (no `Expect: 100-continue`, for both sides alike).
pub(crate) fn upload(ns: &Netns, url: &str, file: &str, expected: u64) -> Result<Transfer> {
    let out = run_in(
        ns,
        Duration::from_secs(120),
        "curl",
        &[
            "-sS",
            "--max-time",
            "110",
            "-H",
            "Expect:",
            "-T",
            file,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_upload} %{time_total}",
            url,
        ],
    )?;
    curl_result(&out, 204, expected)
}

fn curl_result(out: &str, status: u16, expected: u64) -> Result<Transfer> {
    let fields: Vec<&str> = out.split_whitespace().collect();
    let (Some(code), Some(bytes), Some(secs)) = (
        fields.first().and_then(|s| s.parse::<u16>().ok()),
        fields.get(1).and_then(|s| s.parse::<u64>().ok()),
        fields.get(2).and_then(|s| s.parse::<f64>().ok()),
    ) else {
        bail!("cannot read curl's summary `{out}`");
    };
    if code != status || bytes != expected {
        bail!("curl: status {code} and {bytes} bytes, expected {status} and {expected}");
    }
    Ok(Transfer {
        bytes,
        secs,
        complete: true,
    })
}

/// curl's exit code when `--max-time` ended the transfer.
const CURL_TIMED_OUT: i32 = 28;

/// `curl` GET (or, with `upload = Some(file)`, PUT of `file`) of `expected` bytes, ended by curl
/// after `limit`: a transfer that cannot finish comes back with `complete: false` and the bytes
/// that got through in that time, never hangs.
pub(crate) fn bounded_transfer(
    ns: &Netns,
    url: &str,
    upload: Option<&str>,
    expected: u64,
    limit: Duration,
) -> Result<Transfer> {
    let max_time = limit.as_secs().max(1).to_string();
    let mut command: Command = ns.command("timeout");
    command
        .args(["-k", "2"])
        .arg((limit.as_secs() + 15).to_string())
        .args(["curl", "-sS", "--max-time", &max_time, "-o", "/dev/null"]);
    let (status, size) = match upload {
        Some(file) => {
            command.args(["-H", "Expect:", "-T", file]);
            (204, "size_upload")
        }
        None => (200, "size_download"),
    };
    command
        .args(["-w", &format!("%{{http_code}} %{{{size}}} %{{time_total}}")])
        .arg(url);
    let out = command.output().context("cannot start curl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => curl_result(&stdout, status, expected),
        Some(CURL_TIMED_OUT) => {
            let fields: Vec<&str> = stdout.split_whitespace().collect();
            let (Some(bytes), Some(secs)) = (
                fields.get(1).and_then(|s| s.parse::<u64>().ok()),
                fields.get(2).and_then(|s| s.parse::<f64>().ok()),
            ) else {
                bail!("cannot read curl's summary `{stdout}` after its time limit");
            };
            Ok(Transfer {
                bytes,
                secs,
                complete: false,
            })
        }
        _ => bail!(
            "curl {url} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// What `wrk --latency` reports.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wrk {
    pub(crate) requests_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Socket errors plus non-2xx/3xx responses.
    pub(crate) errors: u64,
    /// Bytes read by wrk.
    pub(crate) requests: u64,
}

/// `wrk` with `connections` for `duration` against `url`, from `ns`.
pub(crate) fn wrk(ns: &Netns, url: &str, connections: u32, duration: Duration) -> Result<Wrk> {
    let threads = connections.clamp(1, 2).to_string();
    let conns = connections.to_string();
    let secs = format!("{}s", duration.as_secs());
    let out = run_in(
        ns,
        duration + Duration::from_secs(15),
        "wrk",
        &[
            "-t",
            &threads,
            "-c",
            &conns,
            "-d",
            &secs,
            "--timeout",
            "5s",
            "--latency",
            url,
        ],
    )?;
    parse_wrk(&out).with_context(|| format!("cannot read wrk's output:\n{out}"))
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut result = Wrk::default();
    let mut in_distribution = false;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", "Distribution", ..] => in_distribution = true,
            ["50%", value] if in_distribution => result.p50_ms = wrk_duration_ms(value)?,
            ["99%", value] if in_distribution => result.p99_ms = wrk_duration_ms(value)?,
            ["Requests/sec:", value] => result.requests_per_s = value.parse()?,
            [count, "requests", "in", ..] => result.requests = count.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                result.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => result.errors += n.parse::<u64>()?,
            _ => {}
        }
    }
    Ok(result)
}

fn wrk_duration_ms(text: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e3)
    } else {
        bail!("unknown duration `{text}`");
    };
    Ok(number.parse::<f64>()? * scale)
}

/// `iperf3 -c` through the TCP route from `ns`: `streams` parallel streams, `reverse` for
/// agent → gateway. Returns the bytes received and the time.
pub(crate) fn iperf(
    ns: &Netns,
    streams: u32,
    reverse: bool,
    duration: Duration,
) -> Result<Transfer> {
    let streams = streams.to_string();
    let secs = duration.as_secs().to_string();
    let port = IPERF_PORT.to_string();
    let mut args = vec![
        "-c",
        VIP,
        "-p",
        &port,
        "-P",
        &streams,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if reverse {
        args.push("-R");
    }
    let out = run_in(ns, duration + Duration::from_secs(20), "iperf3", &args)?;
    let json: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("iperf3 output is not JSON: {out}"))?;
    if let Some(error) = json.get("error") {
        bail!("iperf3: {error}");
    }
    let received = &json["end"]["sum_received"];
    let (Some(bytes), Some(secs)) = (received["bytes"].as_u64(), received["seconds"].as_f64())
    else {
        bail!("iperf3 output has no end.sum_received: {out}");
    };
    Ok(Transfer {
        bytes,
        secs,
        complete: true,
    })
}

/// Opens `count` connections to the virtual IP from inside `ns`, each serving one small
/// request and then left open (keep-alive). Returns the open streams and how many failed.
pub(crate) fn hold_idle_connections(ns: &Netns, count: usize) -> Result<(Vec<TcpStream>, usize)> {
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    ns.run_inside(move || {
        let mut open = Vec::with_capacity(count);
        let mut failed = 0;
        for _ in 0..count {
            if Instant::now() > deadline {
                failed += 1;
                continue;
            }
            match one_keepalive_request(target) {
                Ok(stream) => open.push(stream),
                Err(_) => failed += 1,
            }
        }
        (open, failed)
    })
}

fn one_keepalive_request(target: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    // Read the head and the 100-byte body (the head says content-length: 100).
    let mut got = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() >= end + 4 + 100
        {
            break;
        }
    }
    if !got.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200 response"));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() -> Result<()> {
        let out = "Running 5s test @ http://10.1.0.100/small\n  1 threads and 1 connections\n\
          Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   210.00us  50.00us   2.00ms   90.00%\n\
          \x20 Latency Distribution\n     50%  200.00us\n     75%  220.00us\n     90%  250.00us\n     99%    1.50ms\n\
          \x20 23000 requests in 5.00s, 6.00MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n\
          Non-2xx or 3xx responses: 3\nRequests/sec:   4600.00\nTransfer/sec:      1.20MB\n";
        let wrk = parse_wrk(out)?;
        assert_eq!(wrk.requests, 23_000);
        assert!((wrk.requests_per_s - 4600.0).abs() < 1e-9);
        assert!((wrk.p50_ms - 0.2).abs() < 1e-9);
        assert!((wrk.p99_ms - 1.5).abs() < 1e-9);
        assert_eq!(wrk.errors, 6);
        Ok(())
    }

    #[test]
    fn reads_own_process_usage() {
        let me = usage(&[std::process::id()]);
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        assert_eq!(usage(&[u32::MAX]).rss_kib, 0);
    }
}
