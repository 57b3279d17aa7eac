//! Key hygiene of the real `wg-agent run` process: at `--log-level trace`, through a
//! handshake, HTTP through the tunnel, a reload, a refused reload of a broken file and a
//! drain, neither the private key nor the preshared key appears in its output (base64, base64
//! without padding, hex in either case), in `/status` or in `/metrics`. And the key types
//! zeroize their bytes on drop.

mod common;

use std::time::Duration;

use common::http_get;
use common::process::{AgentFixture, admin_get_raw, signal, wait_exit, wait_for};
use wg_core::{PresharedKey, PrivateKey};

/// Every spelling of a secret that could leak.
fn spellings(bytes: &[u8; 32], base64: &str) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        base64.to_owned(),
        base64.trim_end_matches('=').to_owned(),
        // A long prefix catches a key cut or wrapped in a message.
        base64[..24].to_owned(),
        hex.clone(),
        hex.to_uppercase(),
        hex[..32].to_owned(),
    ]
}

fn assert_no_secret(what: &str, text: &str, secrets: &[(&str, Vec<String>)]) {
    for (name, forms) in secrets {
        for form in forms {
            assert!(
                !text.contains(form.as_str()),
                "the {name} appears in {what} (as `{}…`)",
                &form[..8]
            );
        }
    }
}

fn random_bytes(seed: u64) -> [u8; 32] {
    let mut x = seed | 1;
    let mut out = [0u8; 32];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    x ^= u64::from(nanos) << 17;
    for b in &mut out {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_trace_logs_status_or_metrics() {
    let private_bytes = random_bytes(0x9e37_79b9_7f4a_7c15);
    let psk_bytes = random_bytes(0xc2b2_ae3d_27d4_eb4f);
    let agent_key = PrivateKey::from_bytes(private_bytes);
    let psk = PresharedKey::from_bytes(psk_bytes);
    let private_b64 = agent_key.to_base64_secret();
    let psk_b64 = psk.to_base64_secret();
    let secrets = [
        (
            "private key",
            spellings(&private_bytes, private_b64.as_str()),
        ),
        ("preshared key", spellings(&psk_bytes, psk_b64.as_str())),
    ];

    // The gateway knows the agent's public key and the preshared key.
    let (fx, gw) = AgentFixture::start(agent_key, Some(psk.clone())).await;
    let route80 = format!("[[routes]]\nport = 80\nupstream = \"{}\"\n", fx.app);
    let config_text = fx.config_text(
        &format!("preshared_key = \"{}\"\n", psk_b64.as_str()),
        &route80,
        "2s",
    );
    fx.write_config(&config_text);
    let mut child = fx.spawn();
    let admin = fx.admin;

    wait_for("agent ready", Duration::from_secs(20), || {
        admin_get_raw(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let resp = http_get(&gw, 80, "/k")
        .await
        .expect("HTTP through the tunnel");
    assert!(resp.ends_with("app:/k"), "{resp}");
    let (_, status) = admin_get_raw(admin, "/status").expect("/status");
    let (_, metrics) = admin_get_raw(admin, "/metrics").expect("/metrics");
    assert!(status.contains("gw1"), "{status}");
    assert!(metrics.contains("wg_agent_gateway_up"), "{metrics}");
    assert_no_secret("/status", &status, &secrets);
    assert_no_secret("/metrics", &metrics, &secrets);

    // A reload of the same file, then of a broken file whose bad line holds a secret.
    signal(&child, "-HUP");
    std::thread::sleep(Duration::from_millis(300));
    let broken = config_text.replace(
        &format!("preshared_key = \"{}\"", psk_b64.as_str()),
        &format!("preshared_key = {}", psk_b64.as_str()),
    );
    assert_ne!(broken, config_text);
    fx.write_config(&format!("{broken}[{}\n", private_b64.as_str()));
    signal(&child, "-HUP");
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        fx.log_text().contains("reload refused")
    });
    let resp = http_get(&gw, 80, "/k").await.expect("still serving");
    assert!(resp.ends_with("app:/k"), "{resp}");

    signal(&child, "-TERM");
    let exit = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(exit.code(), Some(0));

    let log = fx.log_text();
    let out = fx.out_text();
    // The run was really logged at trace level, packets included.
    assert!(log.contains("TRACE"), "trace lines in the log");
    assert!(
        log.contains("handshake completed"),
        "the handshake was logged"
    );
    assert!(
        log.lines().count() > 20,
        "a busy trace log: {} lines",
        log.lines().count()
    );
    assert_no_secret("the log (stderr)", &log, &secrets);
    assert_no_secret("stdout", &out, &secrets);
    if std::env::var_os("KEYS_TEST_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    eprintln!(
        "keys: {} log lines ({} KiB) searched, no secret in any spelling",
        log.lines().count(),
        log.len() >> 10
    );
    gw.close().await;
}

/// The secret key types wipe their bytes when dropped (and so can never be printed: `Debug`
/// is redacted, there is no `Display`).
#[test]
fn secret_key_types_zeroize_on_drop_and_redact_debug() {
    fn zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroize_on_drop::<PrivateKey>();
    zeroize_on_drop::<PresharedKey>();
    let key = PrivateKey::from_bytes([7; 32]);
    assert_eq!(format!("{key:?}"), "PrivateKey(..)");
    let psk = PresharedKey::from_bytes([7; 32]);
    assert_eq!(format!("{psk:?}"), "PresharedKey(..)");
}
