//! `cargo xtask dist`: the Debian package `wg-agent`, built with cargo-deb (installed when
//! missing), and the install check `cargo xtask test` runs on it as root.
//!
//! The package holds `/usr/bin/wg-agent`, the hardened systemd unit (not enabled), a
//! tmpfiles.d entry for the UAPI socket link, the example config as a conffile, the man page
//! and the shell completions. The last two come from the binary itself (`wg-agent man`,
//! `wg-agent completions SHELL`), written to `target/dist/` before cargo-deb runs; the asset
//! list is in `crates/agent/Cargo.toml` under `[package.metadata.deb]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cargo, prereq, root, run};

/// The package name.
const PACKAGE: &str = "wg-agent";

/// `cargo xtask dist [--profile NAME]`: builds the binary (release by default), generates the
/// man page and completions, and builds the package; prints its path.
/// `cargo xtask dist --install-check`: the step `cargo xtask test` runs (see [`install_check`]).
pub(crate) fn task(args: &[String]) -> Result<()> {
    let mut profile = "release".to_owned();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--profile" => {
                profile = rest.next().context("--profile needs a name")?.clone();
            }
            "--install-check" => return install_check(),
            other => bail!("dist: unknown argument `{other}`"),
        }
    }
    let deb = build(&profile, true)?;
    println!("{}", deb.display());
    Ok(())
}

/// The folder cargo puts `profile`'s output in (`dev` builds into `debug`).
fn profile_dir(profile: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join(if profile == "dev" { "debug" } else { profile })
}

/// Builds the package from `profile`'s binary (compiling it first when `compile`); returns the
/// `.deb`'s path.
pub(crate) fn build(profile: &str, compile: bool) -> Result<PathBuf> {
    ensure_cargo_deb()?;
    if compile {
        run(cargo().args([
            "build",
            "-p",
            "agent",
            "--bin",
            PACKAGE,
            "--profile",
            profile,
        ]))?;
    }
    let binary = profile_dir(profile).join(PACKAGE);
    if !binary.is_file() {
        bail!("{} is missing: build it first", binary.display());
    }
    stage_files(&binary)?;
    let out_dir = root().join("target").join("debian");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    // Every asset is staged or in the source tree: cargo-deb builds nothing.
    run(cargo()
        .args(["deb", "-p", "agent", "--no-build", "--output"])
        .arg(&out_dir))?;
    newest_deb(&out_dir)
}

/// The binary, `wg-agent man` (gzipped, as Debian ships man pages) and `wg-agent completions
/// SHELL` into the workspace's `target/dist/`, where the package's asset list expects them.
fn stage_files(binary: &Path) -> Result<()> {
    let dist = root().join("target").join("dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("cannot create {}", dist.display()))?;
    let staged = dist.join(PACKAGE);
    let _ = std::fs::remove_file(&staged);
    std::fs::copy(binary, &staged)
        .with_context(|| format!("cannot copy {} to {}", binary.display(), staged.display()))?;
    // Debian ships stripped binaries (debug info stays in the build tree).
    if prereq::on_path("strip") {
        run(Command::new("strip").arg("--strip-debug").arg(&staged))?;
    }
    let output = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new(binary)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("`wg-agent {}` failed ({})", args.join(" "), out.status);
        }
        Ok(out.stdout)
    };
    for (shell, file) in [
        ("bash", "wg-agent.bash"),
        ("zsh", "_wg-agent"),
        ("fish", "wg-agent.fish"),
    ] {
        write(&dist.join(file), &output(&["completions", shell])?)?;
    }
    let page = dist.join("wg-agent.1");
    write(&page, &output(&["man"])?)?;
    let gz = dist.join("wg-agent.1.gz");
    let _ = std::fs::remove_file(&gz);
    // -n: no name or time stamp, so the same page gives the same bytes.
    run(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&page))?;
    if !gz.is_file() {
        bail!("gzip did not write {}", gz.display());
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn newest_deb(dir: &Path) -> Result<PathBuf> {
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(PACKAGE))
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop()
        .map(|(_, p)| p)
        .with_context(|| format!("cargo deb wrote no {PACKAGE}*.deb in {}", dir.display()))
}

/// Installs cargo-deb when `cargo deb` is missing.
fn ensure_cargo_deb() -> Result<()> {
    if succeeds(cargo().args(["deb", "--version"])) {
        return Ok(());
    }
    run(cargo().args(["install", "cargo-deb", "--locked"]))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What `cargo xtask test` checks: the package built from the test build's binary installs
/// with `dpkg -i`, its `wg-agent --version` runs, `man -w wg-agent` finds its page, the unit
/// and the example config are where they belong, and it removes cleanly. Root only: without
/// root it is skipped with one line (under `CI=true` that is a failure).
pub(crate) fn install_check() -> Result<()> {
    let missing: Vec<&str> = ["dpkg", "man", "gzip"]
        .into_iter()
        .filter(|bin| !prereq::on_path(bin))
        .collect();
    if !prereq::is_root() || !missing.is_empty() {
        let why = if missing.is_empty() {
            "not root".to_owned()
        } else {
            format!("missing {}", missing.join(", "))
        };
        if prereq::ci() {
            bail!("CI=true: the package install check cannot run ({why})");
        }
        eprintln!("skipping the package install check ({why})");
        return Ok(());
    }
    if installed() {
        bail!(
            "a {PACKAGE} package is already installed on this machine: the install check would replace it; remove it first (dpkg -r {PACKAGE})"
        );
    }
    // The test run just built the binary (profile dev, as the integration tests run it): reuse
    // it rather than compiling the workspace again in release.
    let compiled = profile_dir("dev").join(PACKAGE).is_file();
    let deb = build("dev", !compiled)?;
    run(Command::new("dpkg").arg("-i").arg(&deb))?;
    let checked = check_installed();
    let removed = run(Command::new("dpkg").args(["--purge", PACKAGE]));
    checked?;
    removed?;
    if installed() {
        bail!("{PACKAGE} is still installed after dpkg --purge");
    }
    if std::fs::symlink_metadata(UAPI_LINK).is_ok() {
        bail!("{UAPI_LINK} is still there after dpkg --purge (postrm removes it)");
    }
    eprintln!("package install check ok: {}", deb.display());
    Ok(())
}

/// The link the package's tmpfiles.d entry makes, and where it leads (the unit's
/// `RuntimeDirectory=`, where the agent binds its UAPI socket).
const UAPI_LINK: &str = "/run/wireguard/wg-agent.sock";
const UAPI_SOCKET: &str = "/run/wg-agent/wg-agent.sock";

/// The postinst ran the tmpfiles.d entry: `wg show wg-agent` finds the link at once (where
/// systemd-tmpfiles exists; the postinst skips it elsewhere).
fn check_uapi_link() -> Result<()> {
    if !prereq::on_path("systemd-tmpfiles") {
        eprintln!("no systemd-tmpfiles: the UAPI link is not checked");
        return Ok(());
    }
    let target = std::fs::read_link(UAPI_LINK)
        .with_context(|| format!("{UAPI_LINK} is not a link after install (postinst)"))?;
    if target != Path::new(UAPI_SOCKET) {
        bail!(
            "{UAPI_LINK} leads to {}, not {UAPI_SOCKET}",
            target.display()
        );
    }
    eprintln!("UAPI link: {UAPI_LINK} -> {UAPI_SOCKET}");
    Ok(())
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn check_installed() -> Result<()> {
    let version = Command::new("/usr/bin/wg-agent")
        .arg("--version")
        .output()
        .context("cannot run /usr/bin/wg-agent")?;
    let text = String::from_utf8_lossy(&version.stdout);
    if !version.status.success() || !text.starts_with("wg-agent ") {
        bail!("/usr/bin/wg-agent --version: {} {text}", version.status);
    }
    eprintln!("installed: {}", text.trim());
    let man = Command::new("man")
        .args(["-w", PACKAGE])
        .output()
        .context("cannot run man")?;
    let page = String::from_utf8_lossy(&man.stdout);
    if !man.status.success() || !page.contains("/usr/share/man/man1/wg-agent.1") {
        bail!(
            "man -w wg-agent: {} {page}{}",
            man.status,
            String::from_utf8_lossy(&man.stderr)
        );
    }
    eprintln!("man page: {}", page.trim());
    for file in [
        "/lib/systemd/system/wg-agent.service",
        "/usr/lib/tmpfiles.d/wg-agent.conf",
        "/etc/wg-agent/agent.toml",
        "/usr/share/bash-completion/completions/wg-agent",
        "/usr/share/zsh/vendor-completions/_wg-agent",
        "/usr/share/fish/vendor_completions.d/wg-agent.fish",
    ] {
        if !Path::new(file).is_file() {
            bail!("{file} is not installed");
        }
    }
    check_uapi_link()?;
    let conffiles = Command::new("dpkg-query")
        .args(["-W", "-f", "${Conffiles}", PACKAGE])
        .output()
        .context("cannot run dpkg-query")?;
    if !String::from_utf8_lossy(&conffiles.stdout).contains("/etc/wg-agent/agent.toml") {
        bail!("/etc/wg-agent/agent.toml is not a conffile");
    }
    Ok(())
}
