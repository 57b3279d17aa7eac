//! Runs the real `wg-agent` binary: exit codes, messages on stderr, key commands.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::files::{TempDir, agent_section, gateway_section};

const BIN: &str = env!("CARGO_BIN_EXE_wg-agent");

// RFC 7748 section 6.1 (Alice), in `wg` base64.
const RFC_PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
const RFC_PUBLIC: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn genkey() -> String {
    let o = run(&["genkey"]);
    assert_eq!(o.status.code(), Some(0));
    stdout(&o).trim().to_owned()
}

fn pubkey(private: &str) -> String {
    let o = run_with_stdin(&["pubkey"], private);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o).trim().to_owned()
}

fn config_text(agent_key_line: &str, gateway_public: &str) -> String {
    agent_section(agent_key_line)
        + &gateway_section("gw1", gateway_public, "gw1.example.net:51820", "10.1.0.1")
}

/// A valid config (mode `mode`) whose key is in `agent.key` (mode 600) beside it.
fn write_config_with_key_file(dir: &TempDir, mode: u32) -> PathBuf {
    dir.write("agent.key", &genkey(), 0o600);
    dir.write(
        "agent.toml",
        &config_text("private_key_file = \"agent.key\"", &pubkey(&genkey())),
        mode,
    )
}

fn check(path: &Path) -> Output {
    run(&["check", "--config", path.to_str().unwrap()])
}

#[test]
fn version() {
    let o = run(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o).trim(),
        format!("wg-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["bogus"],
        &["check"],
        &["run"],
        &["status", "--json", "--nope"],
        &["run", "--config", "a", "--log-format", "xml"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "{args:?}: usage goes to stderr");
        assert!(stdout(&o).is_empty(), "{args:?}");
    }
    let o = run(&["status", "--admin", "127.0.0.1:1", "--config", "x.toml"]);
    assert_eq!(o.status.code(), Some(2), "--admin and --config conflict");
    let o = run(&["status", "--admin", "nowhere"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn genkey_pubkey_round_trip() {
    let a = genkey();
    let b = genkey();
    assert_eq!(a.len(), 44);
    assert_ne!(a, b);
    let public = pubkey(&a);
    assert_eq!(public.len(), 44);
    assert_ne!(public, a);
    assert_eq!(
        pubkey(&format!("{a}\n")),
        public,
        "trailing newline from `genkey` is fine"
    );
    assert_eq!(pubkey(RFC_PRIVATE), RFC_PUBLIC);
    // Compare with the reference tool when it is installed.
    if let Ok(wg) = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        let mut wg = wg;
        wg.stdin.take().unwrap().write_all(a.as_bytes()).unwrap();
        let out = wg.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            public,
            "wg pubkey disagrees"
        );
    } else {
        eprintln!("`wg` not installed: comparison with `wg pubkey` skipped");
    }
}

#[test]
fn genkey_warns_when_writing_to_a_readable_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new();
    for (mode, warns) in [(0o644, true), (0o600, false)] {
        let path = dir.write("agent.key", "", mode);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let o = Command::new(BIN)
            .arg("genkey")
            .stdout(file)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(
            stderr(&o).contains("chmod 600"),
            warns,
            "mode {mode:o}: {}",
            stderr(&o)
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 44);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            mode
        );
    }
}

#[test]
fn pubkey_refuses_bad_input_with_exit_2() {
    for input in ["", "not-a-key", "AAAA", &"A".repeat(5000)] {
        let o = run_with_stdin(&["pubkey"], input);
        assert_eq!(o.status.code(), Some(2), "{input:.20}");
        assert!(
            stderr(&o).contains("pubkey: stdin is not a base64 private key"),
            "{}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn check_valid_config_exits_0() {
    let dir = TempDir::new();
    let path = write_config_with_key_file(&dir, 0o644);
    let o = check(&path);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ok (1 gateway, 1 route, admin 127.0.0.1:5182)"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn run_refuses_a_bad_log_level_with_exit_2() {
    let dir = TempDir::new();
    let path = write_config_with_key_file(&dir, 0o600);
    let o = run(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--log-level",
        "loud=[",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("log level `loud=[`"), "{}", stderr(&o));
}

#[test]
fn check_zero_gateways_warns_but_passes() {
    let dir = TempDir::new();
    let text = format!(
        "[agent]\nprivate_key = \"{}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n",
        genkey()
    );
    let path = dir.write("agent.toml", &text, 0o600);
    let o = check(&path);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning") && stderr(&o).contains("no [[gateways]]"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_invalid_config_exits_2_naming_the_field() {
    let dir = TempDir::new();
    let secret = genkey();
    let text = config_text(&format!("private_key = \"{secret}\""), "bm90IGEga2V5");
    let path = dir.write("agent.toml", &text, 0o600);
    let o = check(&path);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(path.to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(
        err.contains("gateways[0].public_key"),
        "names the field: {err}"
    );
    assert!(
        err.contains("bm90IGEga2V5"),
        "shows the bad (public) value: {err}"
    );
    assert!(!err.contains(&secret), "never the secret: {err}");

    let o = run(&["check", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/agent.toml: cannot read config file"));

    let o = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "run refuses an invalid config the same way"
    );
    assert!(stderr(&o).contains("gateways[0].public_key"));
}

#[test]
fn bad_secret_is_not_echoed() {
    let dir = TempDir::new();
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";
    let path = dir.write(
        "agent.toml",
        &config_text(&format!("private_key = \"{secret}\""), &pubkey(&genkey())),
        0o600,
    );
    let o = check(&path);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("agent.private_key"), "{}", stderr(&o));
    assert!(!stderr(&o).contains(secret), "{}", stderr(&o));
}

#[test]
fn key_file_readable_by_others_is_refused_with_the_fix() {
    let dir = TempDir::new();
    let key = dir.write("agent.key", &genkey(), 0o644);
    let path = dir.write(
        "agent.toml",
        &config_text("private_key_file = \"agent.key\"", &pubkey(&genkey())),
        0o600,
    );
    let o = check(&path);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    assert!(err.contains("agent.private_key_file"), "{err}");
}

#[test]
fn key_from_environment_variable() {
    let dir = TempDir::new();
    let path = dir.write(
        "agent.toml",
        &config_text(
            "private_key_env = \"WG_AGENT_TEST_KEY\"",
            &pubkey(&genkey()),
        ),
        0o600,
    );
    let ok = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .env("WG_AGENT_TEST_KEY", genkey())
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let missing = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .env_remove("WG_AGENT_TEST_KEY")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("`WG_AGENT_TEST_KEY` is not set"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn non_loopback_admin_is_refused() {
    let dir = TempDir::new();
    let text = config_text(
        &format!("private_key = \"{}\"", genkey()),
        &pubkey(&genkey()),
    ) + "\n[admin]\nlisten = \"0.0.0.0:9090\"\n";
    let path = dir.write("agent.toml", &text, 0o600);
    let o = check(&path);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("admin.listen") && err.contains("0.0.0.0:9090") && err.contains("loopback"),
        "{err}"
    );
}

#[test]
fn duplicate_gateway_and_route_port_are_refused() {
    let dir = TempDir::new();
    let gw = pubkey(&genkey());
    let text = config_text(&format!("private_key = \"{}\"", genkey()), &gw)
        + &gateway_section("gw2", &gw, "192.0.2.2:51820", "10.1.0.2");
    let o = check(&dir.write("a.toml", &text, 0o600));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("gateways[1].public_key"),
        "{}",
        stderr(&o)
    );

    let text = config_text(&format!("private_key = \"{}\"", genkey()), &gw)
        + "\n[[routes]]\nport = 80\nupstream = \"127.0.0.1:1\"\n\n[[routes]]\nport = 80\nupstream = \"127.0.0.1:2\"\n";
    let o = check(&dir.write("b.toml", &text, 0o600));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("routes[1].port"), "{}", stderr(&o));
}

#[test]
fn status_against_nothing_exits_1() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let o = run(&["status", "--admin", &addr]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("cannot reach the admin endpoint at {addr}")),
        "{}",
        stderr(&o)
    );

    let dir = TempDir::new();
    let path = dir.write("agent.toml", "[admin]\nlisten = \"off\"\n", 0o600);
    let o = run(&["status", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("admin endpoint is off"),
        "{}",
        stderr(&o)
    );
}
