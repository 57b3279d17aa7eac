//! `cargo xtask bench`: the criterion benches (short settings), then the end-to-end comparison
//! of `wg-agent` with a kernel-TCP reference through real wireguard-go gateways
//! ([`e2e`], docs/PERFORMANCE.md).

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{cargo, run};

mod demo_ab;
mod e2e;
mod lossy;
mod measure;
mod report;
mod setup;

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Run the criterion benches.
    pub(crate) criterion: bool,
    /// Run the end-to-end comparison.
    pub(crate) e2e: bool,
    /// Length of each load step (wrk, iperf3).
    pub(crate) step: Duration,
    /// The idle window over which idle CPU is measured.
    pub(crate) idle: Duration,
    /// Idle keep-alive connections held open for the RSS figure.
    pub(crate) idle_connections: usize,
    /// Size of the large file (download and upload), bytes.
    pub(crate) large_bytes: u64,
    /// A pause after start-up with both sides running (for poking at them by hand).
    pub(crate) pause: Duration,
    /// A `wg-agent` binary to measure instead of building `target/release/wg-agent` (A/B runs).
    pub(crate) agent_binary: Option<std::path::PathBuf>,
    /// Arguments passed through to the criterion benches.
    pub(crate) criterion_args: Vec<String>,
    /// Which end-to-end rows to run: all (`None`), only the clean-link ones, only the lossy ones.
    pub(crate) only: Option<Part>,
    /// The gateways' wireguard-go: `current` (0.0.20231211), `2022`, or a path; by default
    /// `TESTBED_WIREGUARD_GO`, else `current`.
    pub(crate) gateway: String,
    /// Time bound of each lossy transfer.
    pub(crate) lossy_limit: Duration,
    /// The lossy profiles to run (`--profiles a,c`); all when empty.
    pub(crate) lossy_profiles: Vec<String>,
    /// `--demo-vs REV`: compare `wg-agent demo` of the work tree with that of REV.
    pub(crate) demo_vs: Option<String>,
    /// Demo runs per build (alternating) for `--demo-vs`.
    pub(crate) demo_runs: u32,
}

/// A part of the end-to-end comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The clean-link rows of issue 7.
    Main,
    /// The lossy rows of issue 12.
    Lossy,
}

impl Options {
    /// Whether the clean-link rows run.
    pub(crate) fn main_rows(&self) -> bool {
        self.only != Some(Part::Lossy)
    }

    /// Whether the lossy rows run.
    pub(crate) fn lossy_rows(&self) -> bool {
        self.only != Some(Part::Main)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            criterion: true,
            e2e: true,
            step: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            idle_connections: 1_000,
            large_bytes: 256 << 20,
            pause: Duration::ZERO,
            agent_binary: None,
            criterion_args: Vec::new(),
            only: None,
            // testbed's selection variable, so that tests and bench agree unless told otherwise.
            gateway: std::env::var(testbed::WIREGUARD_GO_ENV)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "current".to_owned()),
            lossy_limit: Duration::from_secs(120),
            lossy_profiles: Vec::new(),
            demo_vs: None,
            demo_runs: 3,
        }
    }
}

/// Parses the arguments and runs the benches.
pub(crate) fn task(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    if let Some(rev) = &options.demo_vs {
        return demo_ab::run(rev, options.demo_runs, options.agent_binary.as_deref());
    }
    if options.criterion {
        criterion(&options.criterion_args)?;
    }
    if options.e2e {
        e2e::run(&options)?;
    }
    Ok(())
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut number = |name: &str| -> Result<u64> {
            let value = iter
                .next()
                .with_context(|| format!("{name} needs a number"))?;
            value
                .parse()
                .with_context(|| format!("{name}: `{value}` is not a whole number"))
        };
        match arg.as_str() {
            "--no-criterion" => options.criterion = false,
            "--no-e2e" => options.e2e = false,
            "--secs" => options.step = Duration::from_secs(number("--secs")?.clamp(1, 30)),
            "--idle-secs" => options.idle = Duration::from_secs(number("--idle-secs")?.min(120)),
            "--agent-binary" => {
                let path = iter.next().context("--agent-binary needs a path")?;
                options.agent_binary = Some(path.into());
            }
            "--pause-secs" => options.pause = Duration::from_secs(number("--pause-secs")?),
            "--only" => {
                options.only = match iter.next().map(String::as_str) {
                    Some("lossy") => Some(Part::Lossy),
                    Some("main") => Some(Part::Main),
                    other => bail!("--only needs `lossy` or `main`, not {other:?}"),
                };
                options.criterion = false;
            }
            "--gateway" => {
                let value = iter
                    .next()
                    .context("--gateway needs current, 2022 or a path")?;
                testbed::WireguardGoSelection::parse(value)?;
                options.gateway = value.clone();
            }
            "--lossy-secs" => {
                options.lossy_limit = Duration::from_secs(number("--lossy-secs")?.clamp(5, 600));
            }
            "--profiles" => {
                let value = iter
                    .next()
                    .context("--profiles needs names, e.g. `b` or `a,c`")?;
                let known = lossy::names();
                options.lossy_profiles = value.split(',').map(|n| n.trim().to_owned()).collect();
                if let Some(bad) = options
                    .lossy_profiles
                    .iter()
                    .find(|n| !known.contains(&n.as_str()))
                {
                    bail!(
                        "--profiles: no lossy profile `{bad}` (there are {})",
                        known.join(", ")
                    );
                }
            }
            "--demo-vs" => {
                let rev = iter.next().context("--demo-vs needs a git revision")?;
                options.demo_vs = Some(rev.clone());
            }
            "--runs" => {
                options.demo_runs = u32::try_from(number("--runs")?.clamp(1, 9)).unwrap_or(3);
            }
            "--large-mib" => options.large_bytes = number("--large-mib")?.clamp(1, 1024) << 20,
            "--idle-conns" => {
                options.idle_connections =
                    usize::try_from(number("--idle-conns")?.min(10_000)).unwrap_or(1_000);
            }
            "--" => {
                options.criterion_args = iter.by_ref().cloned().collect();
            }
            other => bail!("bench: unknown argument `{other}` (see `cargo xtask help`)"),
        }
    }
    Ok(options)
}

/// The criterion benches with short warm-up and measurement times (unless overridden).
fn criterion(extra: &[String]) -> Result<()> {
    let mut command = cargo();
    // `--bench '*'`: the bench targets only (the library's test harness rejects criterion's
    // flags).
    command.args(["bench", "-p", "benches", "--bench", "*", "--"]);
    if extra.is_empty() {
        command.args(["--warm-up-time", "1", "--measurement-time", "3"]);
    } else {
        command.args(extra);
    }
    run(&mut command)
}
