//! `cargo xtask`: every project task beyond `cargo build`.
//!
//! - `cargo xtask test`: the one command CI runs. Checks (and, as root, installs) what the suites
//!   need, then runs formatting, clippy, the layering tidy check, every workspace test, the
//!   doc tests and every fuzz target for a short while.
//! - `cargo xtask bench`: the criterion benches, then the end-to-end comparison with a kernel-TCP
//!   reference, clean and lossy links (docs/PERFORMANCE.md); `--demo-vs REV` compares
//!   `wg-agent demo` with another revision's build.
//! - `cargo xtask fuzz [TARGET] [--secs N]`: the libFuzzer targets in `fuzz/` (docs/fuzzing.md).
//! - `cargo xtask dist`: the Debian package `wg-agent` (cargo-deb) under `target/debian/`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod bench;
mod dist;
mod fuzz;
mod prereq;
mod tidy;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("tidy") => tidy::run(&root()),
        Some("fuzz") => fuzz::task(&args[1..]),
        Some("dist") => dist::task(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("unknown task `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test [--quick]   formatting, clippy, layering, all tests, every fuzz target
                   for a short while (what CI runs); --quick skips fmt, clippy
                   and fuzzing
  bench [--no-criterion] [--no-e2e] [--only lossy|main] [--secs N]
        [--idle-secs N] [--large-mib N] [--idle-conns N]
        [--agent-binary PATH] [--gateway current|2022|PATH]
        [--lossy-secs N] [--profiles a,b,c] [--pause-secs N]
        [-- CRITERION_ARGS..]
                   criterion benches (short settings), then as root the
                   end-to-end comparison with a kernel-TCP reference through
                   wireguard-go in namespaces (installs nginx, wrk, iperf3),
                   clean-link rows then lossy rows (impaired relay; --only
                   picks one part and skips criterion; --profiles the lossy
                   profiles to run); gateways run
                   wireguard-go 0.0.20231211 unless --gateway says otherwise;
                   report in target/bench-report/
  bench --demo-vs REV [--runs N] [--agent-binary PATH]
                   `wg-agent demo` of the work tree against REV built in a
                   temporary worktree, N alternating runs each (default 3),
                   medians of the 64 MiB download
  tidy             the layering check and the text rules (headers, code map, unsafe)
  fuzz [TARGET] [--secs N]
                   build and run the fuzz targets (all, or TARGET), N seconds
                   each (default 30); fails on a crash and names the artifact
  fuzz --seeds     rewrite the seed corpora under fuzz/corpus/
  dist [--profile NAME]
                   the Debian package wg-agent (binary, hardened systemd unit,
                   tmpfiles.d link, example config, man page, completions) in
                   target/debian/; installs cargo-deb when missing
  dist --install-check
                   as root: build the package from the test build, dpkg -i it,
                   run wg-agent --version and man -w wg-agent, dpkg --purge it
                   (a step of `test`)";

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// Runs a command in the workspace root, echoing it, and fails when it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("$ {shown}");
    let started = Instant::now();
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    eprintln!("  ok in {:.1?}", started.elapsed());
    Ok(())
}

pub(crate) fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut passed = 0u32;
    prereq::ensure_toolchain()?;
    passed += 1;
    prereq::ensure_system_packages()?;
    passed += 1;
    prereq::ensure_wireguard_go()?;
    passed += 1;
    if !quick {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        passed += 1;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        passed += 1;
        // The Manager embedded without the application layer (`cli` off) must build too:
        // the tidy check only reads `cargo tree`.
        run(cargo().args([
            "clippy",
            "-p",
            "agent",
            "--no-default-features",
            "--lib",
            "--",
            "-D",
            "warnings",
        ]))?;
        passed += 1;
    }
    tidy::run(&root())?;
    passed += 1;
    if prereq::has_nextest() {
        run(cargo().args([
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "--profile",
            "ci",
        ]))?;
        passed += 1;
    } else {
        eprintln!("cargo-nextest not found: running plain `cargo test`");
        run(cargo().args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
        ]))?;
        passed += 1;
    }
    // The interop suites ran behind the current wireguard-go (testbed's default); a
    // representative subset runs again behind bookworm's 2022 build, which operators still run.
    if prereq::has_nextest() {
        run(cargo()
            .args([
                "nextest",
                "run",
                "-p",
                "testbed",
                "--no-fail-fast",
                "--profile",
                "ci",
            ])
            .args(["-E", GATEWAY_2022_SUBSET])
            .env(testbed::WIREGUARD_GO_ENV, "2022"))?;
    } else {
        run(cargo()
            .args(["test", "-p", "testbed", "--no-fail-fast"])
            .args([
                "--test",
                "interop_wg_core",
                "--test",
                "interop_wg_core_driver",
            ])
            .env(testbed::WIREGUARD_GO_ENV, "2022"))?;
    }
    passed += 1;
    // The Debian package from the binary the tests just built: dpkg -i, --version, man -w,
    // dpkg --purge (root only; skipped with a line otherwise, a failure under CI=true).
    dist::install_check()?;
    passed += 1;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    passed += 1;
    // The API docs build without a broken or private link: the crates are meant for reuse.
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    passed += 1;
    // boringtun's own long timers (rekey 120 s, reject 180 s, give-up 90 s) on its mock clock:
    // a separate workspace, so `mock-instant` never reaches the real binary (docs/dev/style.md).
    run(cargo()
        .args([
            "test",
            "--tests",
            "--manifest-path",
            "crates/wg-core/timer-tests/Cargo.toml",
        ])
        .env(
            "CARGO_TARGET_DIR",
            root().join("target").join("timer-tests"),
        ))?;
    passed += 1;
    if !quick {
        fuzz::run_targets(fuzz::TARGETS, fuzz::TEST_SECS)?;
        passed += 1;
    }
    // Every step above fails the task on its own; reaching here means all of them passed.
    println!("steps: {passed} passed, 0 failed");
    Ok(())
}

/// The interop cases that run a second time behind wireguard-go 2022 (14 tests, 16 s): wg-core's
/// handshake, keepalive, preshared-key, IPv6 and burst cases, the testbed's own gateway pair and
/// relay, and the agent binary's GET/POST, two-gateway counters, outbound dial and dual stack.
const GATEWAY_2022_SUBSET: &str = "binary(=interop_wg_core) | binary(=interop_wg_core_driver) \
    | test(=interop_two_wireguard_go_gateways_handshake_and_carry_tcp) \
    | test(=interop_impaired_relay_carries_wireguard_between_namespaces) \
    | test(=interop_suite_get_post_1mib) | test(=interop_suite_two_gateways_stats_agree) \
    | test(=interop_suite_outbound_dial) | test(=interop_suite_dual_stack)";

fn bench(args: &[String]) -> Result<()> {
    bench::task(args)
}
