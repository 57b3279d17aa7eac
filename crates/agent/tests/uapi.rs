//! The UAPI socket against the real `wg` binary (Debian's wireguard-tools): `wg show NAME`
//! and `wg showconf NAME` on a running `wg-agent run`, the socket's mode, a second agent with
//! the same name refused, a stale socket replaced. Skips when `wg` is not installed, fails
//! under CI=true.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::process::{AgentFixture, admin_get, free_port, signal, wait_exit, wait_for};
use wg_core::PrivateKey;

fn wg_available() -> bool {
    let found = Command::new("wg").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "`wg` (wireguard-tools) is required under CI"
        );
        eprintln!("skipped: `wg` is not installed");
    }
    found
}

/// The `[uapi] name` in the fixture's config.
fn uapi_name(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("name = \"t"))
        .expect("a [uapi] name");
    line.trim_start_matches("name = \"")
        .trim_end_matches('"')
        .to_owned()
}

fn socket_path(name: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{name}.sock"))
}

fn wg(args: &[&str]) -> Output {
    Command::new("wg").args(args).output().expect("run wg")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One raw UAPI exchange: the whole answer up to the blank line.
fn uapi_request(path: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(path).expect("connect to the UAPI socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let mut answer = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\n" {
            return answer;
        }
        answer.push_str(&line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uapi_wg_show_and_showconf_read_the_running_agent() {
    if !wg_available() {
        return;
    }
    let agent_key = PrivateKey::generate();
    let psk = wg_core::PresharedKey::generate();
    let (fx, _gw) = AgentFixture::start(agent_key.clone(), Some(psk.clone())).await;
    let extra = format!(
        "preshared_key = \"{}\"\nallowed_ips = [\"10.1.0.1/32\", \"10.1.0.128/25\"]\n",
        psk.to_base64_secret().as_str()
    );
    let config = fx.config_text(&extra, "routes = []\n", "1s");
    // `routes = []` must precede every table: move it to the top.
    let config = format!("routes = []\n{}", config.replace("\nroutes = []\n", "\n"));
    fx.write_config(&config);
    let name = uapi_name(&config);
    let mut child = fx.spawn();
    let admin = fx.admin;
    wait_for("/readyz 200", Duration::from_secs(30), || {
        admin_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });

    let socket = socket_path(&name);
    let mode = std::fs::metadata(&socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let show = wg(&["show", &name]);
    let shown = text(&show);
    assert!(show.status.success(), "{shown}");
    let gateway_key = fx.gateway_key.public_key().to_base64();
    for expected in [
        format!("interface: {name}"),
        format!("public key: {}", agent_key.public_key().to_base64()),
        "private key: (hidden)".to_owned(),
        format!("peer: {gateway_key}"),
        format!("endpoint: 127.0.0.1:{}", fx.gateway_port),
        "allowed ips: 10.1.0.1/32, 10.1.0.128/25".to_owned(),
        "latest handshake:".to_owned(),
        "transfer:".to_owned(),
        "persistent keepalive: every 25 seconds".to_owned(),
    ] {
        assert!(
            shown.contains(&expected),
            "missing `{expected}` in:\n{shown}"
        );
    }
    // Preshared keys are never returned.
    assert!(!shown.contains("preshared key"), "{shown}");

    let conf = wg(&["showconf", &name]);
    let conf_text = text(&conf);
    assert!(conf.status.success(), "{conf_text}");
    assert!(
        conf_text.contains(&format!(
            "PrivateKey = {}",
            agent_key.to_base64_secret().as_str()
        )),
        "showconf lacks the private key"
    );
    assert!(
        conf_text.contains(&format!("PublicKey = {gateway_key}")),
        "{conf_text}"
    );
    assert!(!conf_text.contains("PresharedKey"), "{conf_text}");
    assert!(
        !conf_text.contains(psk.to_base64_secret().as_str()),
        "the preshared key leaked"
    );

    // `wg syncconf NAME <(wg showconf NAME)` sends the running private key and port back, and
    // every peer as it is: accepted, nothing changes (the preshared key, which `get` never
    // shows, stays).
    let saved = fx.config.with_file_name("showconf.conf");
    std::fs::write(&saved, &conf.stdout).unwrap();
    let sync = wg(&["syncconf", &name, saved.to_str().unwrap()]);
    std::fs::remove_file(&saved).unwrap();
    assert!(sync.status.success(), "{}", text(&sync));
    // The log is written by a background thread: the line may follow the answer.
    wait_for("the UAPI set in the log", Duration::from_secs(30), || {
        fx.log_text().contains("UAPI set applied")
    });
    let log = fx.log_text();
    let applied = log
        .lines()
        .find(|l| l.contains("UAPI set applied"))
        .unwrap_or_else(|| panic!("no UAPI set in the log:\n{log}"));
    assert!(applied.contains("no changes"), "{applied}");

    // A malformed request gets errno=22.
    assert_eq!(uapi_request(&socket, "hello=1\n\n"), "errno=22\n");
    // Restart-only settings are refused as invalid (`uapi_wg_set_*` covers the rest of set).
    assert_eq!(
        uapi_request(&socket, "set=1\nlisten_port=1\n\n"),
        "errno=22\n"
    );

    // A second agent with the same name (and its own admin port) is refused and says why.
    let second_config = fx.config.with_file_name("second.toml");
    let other_admin = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &second_config,
        config.replace(&admin.to_string(), &other_admin),
    )
    .unwrap();
    std::fs::set_permissions(&second_config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_wg-agent"))
        .args(["run", "--config"])
        .arg(&second_config)
        .output()
        .expect("second agent");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("in use") && err.contains(&name), "{err}");

    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    assert!(!socket.exists(), "the socket is removed on exit");
}

fn show(name: &str) -> String {
    let out = wg(&["show", name]);
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// The gateways in `/status`: (id, endpoint).
fn status_gateways(admin: std::net::SocketAddr) -> Vec<(String, String)> {
    let (code, body) = admin_get(admin, "/status").expect("/status");
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("status json");
    doc["gateways"]
        .as_array()
        .expect("gateways")
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap().to_owned(),
                g["endpoint"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `wg set` against the running agent: keepalive and allowed IPs of a gateway, a peer added
/// and removed, restart-only keys refused with nothing changed, a malformed request refused
/// whole; then `SIGHUP` restores the file's state and says which UAPI changes it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uapi_wg_set_changes_peers_until_a_reload() {
    if !wg_available() {
        return;
    }
    let (fx, _gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    let config = fx.config_text("", "", "1s");
    fx.write_config(&config);
    let name = uapi_name(&config);
    let socket = socket_path(&name);
    let mut child = fx.spawn();
    let admin = fx.admin;
    wait_for("/readyz 200", Duration::from_secs(30), || {
        admin_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let gateway_key = fx.gateway_key.public_key().to_base64();
    let before = show(&name);
    assert!(
        before.contains("persistent keepalive: every 25 seconds"),
        "{before}"
    );

    // Keepalive and allowed IPs of the configured gateway; the session is kept.
    let set = wg(&[
        "set",
        &name,
        "peer",
        &gateway_key,
        "persistent-keepalive",
        "7",
        "allowed-ips",
        "10.1.0.1/32,10.1.0.64/26",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    let shown = show(&name);
    assert!(
        shown.contains("persistent keepalive: every 7 seconds"),
        "{shown}"
    );
    assert!(
        shown.contains("allowed ips: 10.1.0.1/32, 10.1.0.64/26"),
        "{shown}"
    );
    wait_for("the UAPI set in the log", Duration::from_secs(30), || {
        fx.log_text().contains("UAPI set applied")
    });
    assert!(admin_get(admin, "/readyz").is_some_and(|(s, _)| s == 200));

    // A peer added: its id comes from its key; /status and wg show list it.
    let new_key = PrivateKey::generate().public_key().to_base64();
    let id = format!("gw-{}", &new_key[..8].replace('+', "-").replace('/', "_"));
    let set = wg(&[
        "set",
        &name,
        "peer",
        &new_key,
        "endpoint",
        "127.0.0.1:9",
        "allowed-ips",
        "10.1.0.7/32",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    let shown = show(&name);
    assert!(shown.contains(&format!("peer: {new_key}")), "{shown}");
    assert!(shown.contains("endpoint: 127.0.0.1:9"), "{shown}");
    let gateways = status_gateways(admin);
    assert!(
        gateways.contains(&(id.clone(), "127.0.0.1:9".to_owned())),
        "{gateways:?}"
    );

    // Restart-only keys: errno=22 (wg prints the error and exits non-zero), nothing changed.
    let before = show(&name);
    for args in [
        vec!["listen-port", "1"],
        vec!["fwmark", "7"],
        vec!["private-key", "/dev/stdin"],
    ] {
        let mut command = Command::new("wg");
        command.args(["set", &name]).args(&args);
        command.stdin(std::process::Stdio::piped());
        command.stdout(std::process::Stdio::piped());
        command.stderr(std::process::Stdio::piped());
        let mut running = command.spawn().unwrap();
        let key = PrivateKey::generate().to_base64_secret();
        // Only `private-key` reads it: the others may have exited already (a broken pipe).
        let _ = running.stdin.take().unwrap().write_all(key.as_bytes());
        let out = running.wait_with_output().unwrap();
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("Invalid argument") || text(&out).contains("-22"),
            "{args:?}: {}",
            text(&out)
        );
    }
    // A malformed request, after a valid change in the same request: nothing applies.
    let new_hex: String = wg_core::PublicKey::from_base64(&new_key)
        .unwrap()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        uapi_request(
            &socket,
            &format!(
                "set=1\npublic_key={new_hex}\npersistent_keepalive_interval=9\nallowed_ip=10.1.0.300/32\n\n"
            )
        ),
        "errno=22\n"
    );
    let after = show(&name);
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.contains("handshake") && !l.contains("transfer"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "a refused set changed something"
    );

    // Removed again.
    let set = wg(&["set", &name, "peer", &new_key, "remove"]);
    assert!(set.status.success(), "{}", text(&set));
    assert!(!show(&name).contains(&new_key));
    assert!(!status_gateways(admin).iter().any(|(i, _)| *i == id));

    // Add it again, then SIGHUP: the file's state comes back, and the log says what went.
    let set = wg(&["set", &name, "peer", &new_key, "endpoint", "127.0.0.1:9"]);
    assert!(set.status.success(), "{}", text(&set));
    signal(&child, "-HUP");
    wait_for("the reload", Duration::from_secs(30), || {
        fx.log_text().contains("reload replaced runtime changes")
    });
    let log = fx.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("reload replaced runtime changes made through UAPI"))
        .unwrap();
    for part in [
        "gw1 allowed IPs changed",
        "gw1 persistent keepalive changed",
        &format!("peer {id} added"),
    ] {
        assert!(line.contains(part), "missing `{part}` in: {line}");
    }
    let shown = show(&name);
    assert!(
        shown.contains("persistent keepalive: every 25 seconds"),
        "{shown}"
    );
    assert!(shown.contains("allowed ips: 10.1.0.1/32\n"), "{shown}");
    assert!(!shown.contains(&new_key), "{shown}");
    assert!(admin_get(admin, "/readyz").is_some_and(|(s, _)| s == 200));

    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uapi_stale_socket_is_replaced() {
    if !wg_available() {
        return;
    }
    let (fx, _gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    let config = fx.config_text("", "", "1s");
    fx.write_config(&config);
    let name = uapi_name(&config);
    let socket = socket_path(&name);
    std::fs::create_dir_all("/var/run/wireguard").unwrap();
    // A socket nobody listens on: what a killed agent leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let mut child = fx.spawn();
    wait_for("the UAPI socket", Duration::from_secs(30), || {
        UnixStream::connect(&socket).is_ok()
    });
    let show = wg(&["show", &name, "public-key"]);
    assert!(show.status.success(), "{}", text(&show));
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

/// The package's layout: tmpfiles.d links `/run/wireguard/NAME.sock` to the socket in the
/// service's runtime directory (the service cannot create files in /run/wireguard). The agent
/// finds the link in `wg`'s folder, binds in `RUNTIME_DIRECTORY`, and `wg` follows the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uapi_tmpfiles_link_reaches_the_runtime_directory_socket() {
    if !wg_available() {
        return;
    }
    let (fx, _gw) = AgentFixture::start(PrivateKey::generate(), None).await;
    let config = fx.config_text("", "", "1s");
    fx.write_config(&config);
    let name = uapi_name(&config);
    let runtime = fx.config.with_file_name("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let target = runtime.join(format!("{name}.sock"));
    let link = socket_path(&name);
    std::fs::create_dir_all("/var/run/wireguard").unwrap();
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).expect("the tmpfiles link");
    // The link is removed however the test ends (the folder is shared).
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _link_guard = RemoveOnDrop(link.clone());
    let mut child = fx.spawn_with_env(&[("RUNTIME_DIRECTORY", runtime.to_str().unwrap())]);
    let started = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        target.exists() || child.try_wait().unwrap().is_some()
    });
    let log = fx.log_text();
    assert!(
        started && target.exists(),
        "no socket at {}:\n{log}",
        target.display()
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was replaced"
    );
    let show = wg(&["show", &name, "public-key"]);
    assert!(show.status.success(), "{}", text(&show));
    assert_eq!(
        text(&show).trim(),
        fx.agent_key.public_key().to_base64(),
        "wg follows the link to the agent"
    );
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    assert!(!target.exists(), "the socket is removed on exit");
}
