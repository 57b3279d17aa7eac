//! `Daemon`: detached processes with a log file, signals, stop and kill (no root needed).

#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::{Daemon, TempDir};

#[test]
fn output_goes_to_the_log_and_the_status_is_kept() {
    let dir = TempDir::new("daemon").unwrap();
    let log = dir.path().join("out.log");
    let mut d = Daemon::spawn(
        "sh",
        ["-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
        &log,
    )
    .unwrap();
    let status = d.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.code(), Some(3));
    let text = d.log();
    assert!(
        text.contains("to-stdout") && text.contains("to-stderr"),
        "{text}"
    );
    assert_eq!(d.try_wait().map(|s| s.code()), Some(Some(3)));
}

#[test]
fn signals_stop_and_kill() {
    let dir = TempDir::new("daemon").unwrap();
    let log = dir.path().join("sleep.log");

    let mut hup = Daemon::spawn("sleep", ["30"], &log).unwrap();
    assert!(hup.wait_timeout(Duration::from_millis(100)).is_none());
    hup.signal("HUP");
    let status = hup.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(1));

    let mut stopped = Daemon::spawn("sleep", ["30"], &log).unwrap();
    let start = Instant::now();
    assert_eq!(stopped.stop().unwrap().signal(), Some(15));
    assert!(start.elapsed() < Daemon::STOP_GRACE);
    assert!(stopped.stop().is_none(), "stop is idempotent");
    assert!(stopped.pid().is_none());

    let mut killed = Daemon::spawn("sleep", ["30"], &log).unwrap();
    assert_eq!(killed.kill().unwrap().signal(), Some(9));

    // A process that ignores SIGTERM is killed after the grace period.
    let mut stubborn = Daemon::spawn(
        "sh",
        ["-c", "trap '' TERM; while :; do sleep 0.1; done"],
        &log,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let status = stubborn.stop().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(start.elapsed() >= Daemon::STOP_GRACE);
}

#[test]
fn a_prepared_command_keeps_its_environment_and_folder() {
    let dir = TempDir::new("daemon").unwrap();
    let log = dir.path().join("env.log");
    let mut command = Command::new("sh");
    command
        .args(["-c", "echo \"$TESTBED_VALUE $(pwd)\""])
        .env("TESTBED_VALUE", "from-env")
        .current_dir(dir.path());
    let mut d = Daemon::spawn_command(command, &log).unwrap();
    d.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(d.log().trim(), format!("from-env {}", dir.path().display()));
    assert!(d.command_line().starts_with("sh -c"));
}

#[test]
fn dropping_a_daemon_stops_it() {
    let dir = TempDir::new("daemon").unwrap();
    let d = Daemon::spawn("sleep", ["30"], &dir.path().join("drop.log")).unwrap();
    let pid = d.pid().unwrap();
    drop(d);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
