//! `cargo xtask bench --demo-vs REV`: `wg-agent demo`'s 64 MiB download of the work tree's
//! build against that of another revision built beside it (issue 12's large-segment target:
//! ≥ 1.9× the round-1 build, commit 44d6899). The revision's tree is exported with `git archive`
//! into `target/demo-vs/src-<rev>/` (no worktree is registered) and built in release with its
//! own lock file into `target/demo-vs/target/`, which stays warm between runs. The two builds
//! then run alternately, N times each, the order swapped every round; the medians are compared.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{cargo, root, run as run_cmd};

/// The demo's bulk line, kept as it is across rounds: `  download 64 MiB      N MB/s (...)`.
const DOWNLOAD_LINE: &str = "download 64 MiB";

/// Target of ours / REV on the median download.
const TARGET: f64 = 1.9;

pub(crate) fn run(rev: &str, runs: u32, current: Option<&Path>) -> Result<()> {
    let short = git(&["rev-parse", "--short", &format!("{rev}^{{commit}}")])
        .with_context(|| format!("`{rev}` is not a commit of this repository"))?;
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let baseline = build_revision(&short)?;
    let ours = match current {
        Some(path) => path.to_path_buf(),
        None => {
            run_cmd(cargo().args(["build", "--release", "-p", "agent", "--bin", "wg-agent"]))?;
            root().join("target/release/wg-agent")
        }
    };
    let mut base_figures = Vec::new();
    let mut our_figures = Vec::new();
    for round in 0..runs {
        let order: [(&Path, bool); 2] = if round % 2 == 0 {
            [(&baseline, false), (&ours, true)]
        } else {
            [(&ours, true), (&baseline, false)]
        };
        for (binary, is_ours) in order {
            let figure = demo_download(binary)?;
            eprintln!(
                "bench: demo round {}: {} {figure:.0} MB/s",
                round + 1,
                if is_ours { "work tree" } else { short.as_str() }
            );
            if is_ours {
                our_figures.push(figure);
            } else {
                base_figures.push(figure);
            }
        }
    }
    let (base, mine) = (median(&base_figures), median(&our_figures));
    let ratio = mine / base;
    let met = ratio >= TARGET;
    let markdown = format!(
        "| build | download 64 MiB, MB/s (runs) | median |\n| --- | --- | ---: |\n\
         | {short} | {} | {base:.0} |\n| work tree ({head}) | {} | {mine:.0} |\n\n\
         ratio work tree / {short}: {ratio:.2} (target ≥ {TARGET}: {})\n\n\
         - load average at end {}\n",
        list(&base_figures),
        list(&our_figures),
        if met { "met" } else { "**missed**" },
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let dir = root().join("target/bench-report");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("demo-vs.md"), &markdown)?;
    fs::write(
        dir.join("demo-vs.json"),
        serde_json::to_string_pretty(&json!({
            "baseline": { "rev": short, "runs": base_figures, "median": base },
            "work_tree": { "head": head, "runs": our_figures, "median": mine },
            "ratio": ratio,
            "target": TARGET,
            "met": met,
        }))?,
    )?;
    println!("{markdown}");
    println!("report: {}", dir.join("demo-vs.md").display());
    Ok(())
}

/// Exports `rev` and builds its `wg-agent` in release; returns the binary.
fn build_revision(rev: &str) -> Result<PathBuf> {
    let base = root().join("target/demo-vs");
    let src = base.join(format!("src-{rev}"));
    if !src.join("Cargo.toml").exists() {
        let _ = fs::remove_dir_all(&src);
        fs::create_dir_all(&src).with_context(|| format!("cannot create {}", src.display()))?;
        let archive = Command::new("git")
            .args(["archive", "--format=tar", rev])
            .current_dir(root())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start git archive")?;
        let status = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&src)
            .stdin(archive.stdout.context("git archive has no stdout")?)
            .status()
            .context("cannot start tar")?;
        if !status.success() {
            let _ = fs::remove_dir_all(&src);
            bail!("cannot unpack {rev} into {}", src.display());
        }
    }
    let target = base.join("target");
    run_cmd(
        cargo()
            .args(["build", "--release", "-p", "agent", "--bin", "wg-agent"])
            .arg("--manifest-path")
            .arg(src.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target),
    )?;
    // Keep the binary of this revision apart: another revision built later reuses the target.
    let binary = base.join(format!("wg-agent-{rev}"));
    fs::copy(target.join("release/wg-agent"), &binary)
        .with_context(|| format!("cannot copy the {rev} build"))?;
    Ok(binary)
}

/// Runs `binary demo` (bounded: 180 s) and reads its download figure.
fn demo_download(binary: &Path) -> Result<f64> {
    let out = Command::new("timeout")
        .args(["-k", "5", "180"])
        .arg(binary)
        .arg("demo")
        .output()
        .with_context(|| format!("cannot run {} demo", binary.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} demo failed ({}):\n{stdout}{}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_download(&stdout)
        .with_context(|| format!("no `{DOWNLOAD_LINE} N MB/s` line in:\n{stdout}"))
}

fn parse_download(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.contains(DOWNLOAD_LINE))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let unit = words.iter().position(|w| *w == "MB/s")?;
    words.get(unit.checked_sub(1)?)?.parse().ok()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_demo_download_line() {
        let out = "wg-agent demo: ...\n  requests        200 ok, p50 0.4 ms\n\
                   \x20 download 64 MiB      412 MB/s (0.16 s, verified)\n\
                   \x20 upload 16 MiB        300 MB/s (0.05 s, verified by the app)\n";
        assert_eq!(parse_download(out), Some(412.0));
        assert_eq!(parse_download("download 64 MiB failed"), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
