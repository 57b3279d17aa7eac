//! curl inside a gateway namespace, talking to the agent's virtual IP through wireguard-go:
//! downloads hashed as they stream in, uploads streamed from the pattern (chunked), every run
//! bounded by `--max-time`.

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use testbed::Netns;

use super::pattern::{Pattern, sha256_of};

/// What a transfer moved.
#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    /// sha256 (hex) of the body: downloaded bytes, or as the app computed it for an upload.
    pub(crate) sha256: String,
    /// Body bytes.
    pub(crate) bytes: u64,
    /// Wall time of the curl run.
    pub(crate) elapsed: Duration,
}

fn curl(ns: &Netns, url: &str, max_time: Duration, extra: &[&str]) -> std::process::Command {
    let mut command = ns.command("curl");
    command
        .args(["-sS", "--fail", "--max-time"])
        .arg(max_time.as_secs().max(1).to_string())
        .args(["--connect-timeout", "10"])
        .args(extra)
        .arg(url);
    command
}

fn finish(mut child: Child, url: &str) -> Result<String> {
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("curl {url}: {status}: {}", err.trim());
    }
    Ok(err)
}

/// `GET url` from `ns`, the body hashed as it arrives.
pub(crate) fn get(ns: &Netns, url: &str, max_time: Duration, extra: &[&str]) -> Result<Transfer> {
    let download = start_get(ns, url, max_time, extra)?;
    download()
}

/// [`get`] on a thread.
pub(crate) fn get_in_background(
    ns: &Netns,
    url: &str,
    max_time: Duration,
    extra: &[&str],
) -> Result<JoinHandle<Result<Transfer>>> {
    Ok(std::thread::spawn(start_get(ns, url, max_time, extra)?))
}

/// Starts curl for [`get`]; the closure hashes the body as it arrives and waits for curl.
fn start_get(
    ns: &Netns,
    url: &str,
    max_time: Duration,
    extra: &[&str],
) -> Result<impl FnOnce() -> Result<Transfer> + Send + 'static> {
    let start = Instant::now();
    let mut child = curl(ns, url, max_time, extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start curl")?;
    let url = url.to_owned();
    Ok(move || {
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let hashed = sha256_of(stdout);
        finish(child, &url)?;
        let (sha256, bytes) = hashed?;
        Ok(Transfer {
            sha256,
            bytes,
            elapsed: start.elapsed(),
        })
    })
}

/// `GET url` expecting a small text body.
pub(crate) fn get_text(ns: &Netns, url: &str, max_time: Duration) -> Result<String> {
    testbed::run_command(&mut curl(ns, url, max_time, &[]))
}

/// `POST url` with `len` bytes of the pattern of `seed`, streamed (chunked) from stdin; the
/// app answers `<sha256> <bytes>`.
pub(crate) fn post(
    ns: &Netns,
    url: &str,
    seed: u64,
    len: u64,
    max_time: Duration,
) -> Result<Transfer> {
    let start = Instant::now();
    let mut child = curl(
        ns,
        url,
        max_time,
        &[
            "-X",
            "POST",
            "-T",
            "-",
            "-H",
            "Expect:",
            "-H",
            "Content-Type: application/octet-stream",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .context("cannot start curl")?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let writer = std::thread::spawn(move || -> std::io::Result<u64> {
        let n = std::io::copy(&mut Pattern::new(seed, len), &mut stdin)?;
        stdin.flush()?;
        Ok(n)
    });
    let mut answer = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut answer)?;
    }
    let result = finish(child, url);
    let written = writer
        .join()
        .map_err(|_| anyhow!("upload writer panicked"))?;
    result?;
    let written = written.context("writing the upload to curl")?;
    let mut words = answer.split_whitespace();
    let sha256 = words.next().unwrap_or_default().to_owned();
    let bytes = words
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("the app answered {answer:?}"))?;
    if written != len {
        bail!("wrote {written} of {len} bytes to curl");
    }
    Ok(Transfer {
        sha256,
        bytes,
        elapsed: start.elapsed(),
    })
}

/// The agent's app URL: `http://10.1.0.100<path>`.
pub(crate) fn url(path: &str) -> String {
    format!("http://{}{path}", super::AGENT_VIP)
}
