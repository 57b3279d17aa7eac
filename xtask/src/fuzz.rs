//! `cargo xtask fuzz [TARGET] [--secs N] [--seeds]`: the libFuzzer targets in `fuzz/`.
//!
//! cargo-fuzz passes nightly-only flags to rustc (`-Zsanitizer=address`, sanitizer coverage);
//! `RUSTC_BOOTSTRAP=1` lets the installed stable toolchain accept them, so no nightly is needed.
//! Each target runs with a scratch corpus under `fuzz/target/corpus/<target>` (written by
//! libFuzzer, kept between runs, ignored by git) plus the committed seeds in
//! `fuzz/corpus/<target>` (read only). A crash fails the task and names the artifact under
//! `fuzz/artifacts/<target>/`. See docs/fuzzing.md.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{root, run};

mod seeds;

/// Every target, one per untrusted input.
pub(crate) const TARGETS: &[&str] = &["wg_datagram", "netstack_packet", "config_toml", "http_head"];

/// Seconds per target for `cargo xtask fuzz`.
const DEFAULT_SECS: u64 = 30;
/// Seconds per target inside `cargo xtask test`.
pub(crate) const TEST_SECS: u64 = 20;
/// Faster sanitizer builds for a slightly slower fuzzer (cargo-fuzz's default is 1).
const CODEGEN_UNITS: &str = "16";

/// `cargo xtask fuzz` with its arguments.
pub(crate) fn task(args: &[String]) -> Result<()> {
    let mut secs = DEFAULT_SECS;
    let mut only = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => {
                let value = args.next().context("--secs needs a number of seconds")?;
                secs = value
                    .parse()
                    .with_context(|| format!("--secs `{value}` is not a number of seconds"))?;
            }
            "--seeds" => return write_seeds(&root()),
            name if TARGETS.contains(&name) => only = Some(name),
            other => bail!(
                "unknown fuzz argument `{other}` (targets: {})",
                TARGETS.join(", ")
            ),
        }
    }
    let targets: Vec<&str> = match only {
        Some(t) => vec![t],
        None => TARGETS.to_vec(),
    };
    run_targets(&targets, secs)
}

/// Builds the fuzz crate once, then runs each target for `secs` seconds.
pub(crate) fn run_targets(targets: &[&str], secs: u64) -> Result<()> {
    let started = Instant::now();
    ensure_cargo_fuzz()?;
    let dir = root().join("fuzz");
    run(cargo_fuzz(&dir).args(["build", "--codegen-units", CODEGEN_UNITS]))
        .context("building the fuzz targets")?;
    let mut summary = Vec::new();
    for target in targets {
        summary.push(run_one(&dir, target, secs)?);
    }
    for line in &summary {
        eprintln!("fuzz: {line}");
    }
    eprintln!(
        "fuzz: {} target(s) clean in {:.0?} (build included)",
        targets.len(),
        started.elapsed()
    );
    Ok(())
}

fn run_one(dir: &Path, target: &str, secs: u64) -> Result<String> {
    let work = dir.join("target").join("corpus").join(target);
    let seeds = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    let logs = dir.join("target").join("logs");
    for d in [&work, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let before = artifact_names(&artifacts);
    eprintln!(
        "$ cargo fuzz run {target} ({secs} s; log {})",
        log_path.display()
    );
    let mut child = cargo_fuzz(dir)
        .args(["run", "--codegen-units", CODEGEN_UNITS, target])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start `cargo fuzz run`")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut log = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait().context("waiting for `cargo fuzz run`")?;
    fs::write(&log_path, &log).with_context(|| format!("cannot write {}", log_path.display()))?;
    let new: Vec<PathBuf> = artifact_names(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !status.success() || !new.is_empty() {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        for line in tail.iter().rev() {
            eprintln!("  | {line}");
        }
        let found = new
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        bail!(
            "fuzz target `{target}` failed ({status}); artifact: {}; full log: {}; reproduce with \
             `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {target} ARTIFACT`, then add the input \
             to the owning crate's tests/fuzz_regressions.rs",
            if found.is_empty() {
                "none written"
            } else {
                &found
            },
            log_path.display()
        );
    }
    Ok(summarize(target, &log))
}

/// `target: N runs, M exec/s, K corpus units` from libFuzzer's final stats.
fn summarize(target: &str, log: &str) -> String {
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let corpus = log
        .lines()
        .rev()
        .find_map(|l| l.split("corp: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?");
    format!(
        "{target}: {} runs, {} exec/s, corpus {corpus} units, peak RSS {} MB",
        stat("number_of_executed_units"),
        stat("average_exec_per_sec"),
        stat("peak_rss_mb"),
    )
}

fn artifact_names(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn cargo_fuzz(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    // Warnings fail the build (the fuzz crate is outside the workspace, so clippy's
    // `-D warnings` never sees it); cargo-fuzz appends RUSTFLAGS to its own flags. `build`
    // and `run` get the same flags, so `run` reuses what `build` compiled.
    cmd.arg("fuzz")
        .current_dir(dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-D warnings");
    cmd
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz")?;
    }
    Ok(())
}

/// Writes the seed corpora (`fuzz/corpus/<target>/seed-*`), small valid inputs of each kind.
fn write_seeds(root: &Path) -> Result<()> {
    let mut count = 0;
    for (target, name, bytes) in seeds::all() {
        let dir = root.join("fuzz").join("corpus").join(target);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("seed-{name}"));
        fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        count += 1;
    }
    eprintln!("fuzz: wrote {count} seed inputs under fuzz/corpus/");
    Ok(())
}
