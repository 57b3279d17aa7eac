//! Can the real-gateway tests run here? Root, `/dev/net/tun`, `ip`, `wg`, `curl`, the selected
//! `wireguard-go` (fetched under `target/` when missing, see [`crate::WireguardGoVersion`]), and
//! a network namespace that can actually be created.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::cmd::on_path;

/// Programs the real-gateway tests run from `PATH`, with the Debian package that provides each
/// (`wireguard-go` is run by path: [`crate::wireguard_go_binary`]).
pub const REQUIRED_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("wg", "wireguard-tools"),
    ("curl", "curl"),
];

/// Whether the environment says this is CI (`CI=true` or `CI=1`): a missing prerequisite is then
/// a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks every prerequisite of the real-gateway tests (cached for the process).
///
/// `Ok(())` when they can run; otherwise every reason, joined in one line, e.g.
/// `not root; wg missing; install with: apt-get install --no-install-recommends wireguard-tools`.
pub fn check_gateway_prereqs() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT.get_or_init(check_uncached).clone()
}

fn check_uncached() -> Result<(), String> {
    let mut reasons = Vec::new();
    let root = is_root();
    if !root {
        reasons.push("not root".to_owned());
    }
    if !Path::new("/dev/net/tun").exists() {
        reasons.push("/dev/net/tun missing".to_owned());
    }
    let mut missing = Vec::new();
    for (program, package) in REQUIRED_PROGRAMS {
        if !on_path(program) {
            reasons.push(format!("{program} missing"));
            missing.push(*package);
        }
    }
    if let Err(why) = crate::wgbin::wireguard_go_binary() {
        reasons.push(format!("wireguard-go missing: {why:#}"));
    }
    if !missing.is_empty() {
        reasons.push(format!(
            "install with: apt-get install --no-install-recommends {}",
            missing.join(" ")
        ));
    }
    if reasons.is_empty() {
        // Root in a container may still lack CAP_SYS_ADMIN: try once for real.
        if let Err(why) = probe_netns() {
            reasons.push(why);
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons.join("; "))
    }
}

/// Whether the effective user id is 0 (read from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn probe_netns() -> Result<(), String> {
    // Named like `Netns` names, so that a probe left behind by a killed process is cleaned up.
    let name = format!(
        "{}probe-{}-0",
        crate::netns::NETNS_PREFIX,
        std::process::id()
    );
    let quiet = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let out = quiet(&["netns", "add", &name]).map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let _ = quiet(&["netns", "del", &name]);
    Ok(())
}

/// For a test that needs real gateways: `true` when it can run. Otherwise prints one line
/// (`skipping <test>: <reasons>`, the test named by its thread) and returns `false` so the test
/// returns early, or panics when `CI=true`, where a missing prerequisite is a failure.
#[track_caller]
pub fn gateway_tests_can_run() -> bool {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    match check_gateway_prereqs() {
        Ok(()) => true,
        Err(reasons) if in_ci() => {
            panic!("CI=true and {test} cannot run (real-gateway prerequisites): {reasons}")
        }
        Err(reasons) => {
            eprintln!("skipping {test}: {reasons}");
            false
        }
    }
}

/// Returns from the calling test (with `()`, or with the given value such as `Ok(())`) when the
/// real-gateway prerequisites are missing, after printing one `skipping ...` line; panics
/// instead under `CI=true`. See [`gateway_tests_can_run`].
///
/// ```
/// fn my_interop_test() {
///     testbed::require_gateway_prereqs!();
///     // ... namespaces, wireguard-go ...
/// }
/// fn my_fallible_test() -> anyhow::Result<()> {
///     testbed::require_gateway_prereqs!(Ok(()));
///     Ok(())
/// }
/// # let _ = (my_interop_test, my_fallible_test);
/// ```
#[macro_export]
macro_rules! require_gateway_prereqs {
    () => {
        $crate::require_gateway_prereqs!(())
    };
    ($ret:expr) => {
        if !$crate::gateway_tests_can_run() {
            return $ret;
        }
    };
}
