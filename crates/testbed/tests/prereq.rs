//! The skip / fail rule for real-gateway tests, checked in a child process whose `PATH` hides
//! `wg` and `ip` and whose `TESTBED_WIREGUARD_GO` names a missing binary: one `skipping` line
//! normally, a failure under `CI=true`.

#![allow(clippy::unwrap_used)]

use std::process::Output;

const CHILD: &str = "child_process_for_prereq_tests";

/// Not a check by itself: the tests below run it in a child process with a crafted
/// environment.
#[test]
#[ignore = "run by the prereq tests in a child process"]
fn child_process_for_prereq_tests() {
    testbed::require_gateway_prereqs!();
    println!("GATEWAY TEST BODY RAN");
}

fn run_child(ci: Option<&str>) -> Output {
    let mut command = testbed::child_test_command(CHILD).unwrap();
    command
        .env("PATH", "/nonexistent-testbed-path")
        .env(
            testbed::WIREGUARD_GO_ENV,
            "/nonexistent-testbed-path/wireguard-go",
        )
        .env_remove("CI");
    if let Some(value) = ci {
        command.env("CI", value);
    }
    command.output().unwrap()
}

#[test]
fn missing_prerequisites_skip_with_one_line() {
    let out = run_child(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let skips: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("skipping"))
        .collect();
    assert_eq!(skips.len(), 1, "{stderr}");
    assert!(
        skips[0].starts_with(&format!("skipping {CHILD}: ")),
        "{}",
        skips[0]
    );
    assert!(skips[0].contains("wireguard-go missing"), "{}", skips[0]);
    assert!(skips[0].contains("apt-get install"), "{}", skips[0]);
    assert!(!stdout.contains("GATEWAY TEST BODY RAN"), "{stdout}");
}

#[test]
fn missing_prerequisites_fail_under_ci() {
    for ci in ["true", "1"] {
        let out = run_child(Some(ci));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "CI={ci}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("CI=true and child_process_for_prereq_tests cannot run"),
            "{stderr}"
        );
        assert!(stderr.contains("wg missing"), "{stderr}");
        assert!(!stdout.contains("GATEWAY TEST BODY RAN"), "{stdout}");
    }
}

/// Both Debian builds of wireguard-go are fetched under `target/` (idempotently: a second call
/// finds them), from packages of the expected versions, and each runs by its path.
#[test]
fn both_wireguard_go_versions_are_fetched_and_run_by_path() {
    testbed::require_gateway_prereqs!();
    testbed::fetch_wireguard_go().unwrap();
    testbed::fetch_wireguard_go().unwrap();
    for version in testbed::WireguardGoVersion::ALL {
        assert!(version.is_fetched(), "{version}");
        let package = version.package_version().unwrap();
        assert!(
            package.starts_with(version.upstream()),
            "{version}: {package}"
        );
        let reported = testbed::binary_version(&version.binary()).unwrap();
        assert!(
            reported.starts_with("wireguard-go v0.0.20"),
            "{version}: {reported}"
        );
    }
}
