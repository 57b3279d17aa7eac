//! What `cargo xtask test` needs from the machine, checked and (as root) installed.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::run;

/// Debian packages the suites use: the gateways' tools (wg), namespaces (ip), clients (curl)
/// and the package check (man); wireguard-go itself is fetched by version
/// ([`ensure_wireguard_go`]).
const PACKAGES: &[(&str, &str)] = &[
    ("wg", "wireguard-tools"),
    ("ip", "iproute2"),
    ("curl", "curl"),
    // the package install check: `man -w wg-agent`
    ("man", "man-db"),
];

pub(crate) fn ensure_toolchain() -> Result<()> {
    for (component, probe) in [
        ("rustfmt", ["fmt", "--version"]),
        ("clippy", ["clippy", "--version"]),
    ] {
        if !succeeds(Command::new("cargo").args(probe)) {
            if succeeds(Command::new("rustup").arg("--version")) {
                run(Command::new("rustup").args(["component", "add", component]))?;
            } else {
                bail!(
                    "`cargo {}` is missing and rustup is not available to add `{component}`",
                    probe[0]
                );
            }
        }
    }
    Ok(())
}

pub(crate) fn has_nextest() -> bool {
    succeeds(Command::new("cargo").args(["nextest", "--version"]))
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(crate) fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Installs missing Debian packages when running as root. Without root the interop tests skip
/// themselves; under `CI=true` a missing package is an error.
pub(crate) fn ensure_system_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || !on_path("apt-get") {
        if ci() {
            bail!(
                "CI=true and these packages are missing: {} (install them as root)",
                missing.join(" ")
            );
        }
        eprintln!(
            "skipping install of {} (not root or no apt-get): interop tests will skip",
            missing.join(" ")
        );
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// Fetches both Debian builds of wireguard-go under `target/wireguard-go/` (testbed's
/// `WireguardGoVersion`: `apt-get download`, `dpkg-deb -x`; idempotent) when running as root.
/// Without root the interop tests skip themselves; under `CI=true` that is an error.
pub(crate) fn ensure_wireguard_go() -> Result<()> {
    if is_root() {
        eprintln!(
            "$ fetch wireguard-go 2023 (bookworm-backports) and 2022 (bookworm) into target/"
        );
        return testbed::fetch_wireguard_go();
    }
    if ci() {
        bail!("CI=true and not root: cannot fetch wireguard-go for the interop tests");
    }
    eprintln!("not root: wireguard-go not fetched, interop tests will skip");
    Ok(())
}

pub(crate) fn on_path(bin: &str) -> bool {
    succeeds(Command::new("sh").args(["-c", &format!("command -v {bin}")]))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
