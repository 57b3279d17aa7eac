//! TOML text through the agent's config parser and validator (`wg-agent check` and SIGHUP
//! reloads read operator files; a bad file must give an error, never a panic).
//!
//! Environment variables resolve to a valid key, so inputs that name `private_key_env` get
//! past key loading into the rest of the validation. Files named in the config resolve
//! against an empty folder.
//!
//! Secrets never reach an error message or the config's `Debug` output: neither the
//! environment's key (which no input contains) nor an inline `private_key` or `preshared_key`
//! value (checked when that value appears nowhere else in the input: a public key field
//! holding the same text may be echoed, public keys are not secret).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// A valid base64 key (32 bytes of 0x44), what every environment variable holds. No seed
/// contains it.
const ENV_KEY: &str = "REREREREREREREREREREREREREREREREREREREREREQ=";

/// Inline secret values of `text` that appear exactly once in it (base64 text of at least 16
/// characters, so a coincidence with a field name in a message is ruled out).
fn inline_secrets(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            if key != "private_key" && key != "preshared_key" {
                return None;
            }
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            let base64 = value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            (base64 && value.len() >= 16 && text.matches(value).count() == 1).then_some(value)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Key files may be absolute paths; keep devices and escaped paths (which could name
    // /dev/stdin and block) out of the run.
    if ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    let path = Path::new("/nonexistent-wg-agent-fuzz/agent.toml");
    let secrets = inline_secrets(text);
    // Debug output (what a log line could show) and error messages never hold a secret: the
    // environment's key or an inline key of the input.
    let shown = match agent::config::Config::from_toml_with_env(text, path, &|_| {
        Some(ENV_KEY.to_owned())
    }) {
        Ok(config) => format!("{config:?}"),
        Err(error) => error.to_string(),
    };
    assert!(!shown.contains(ENV_KEY), "the environment's key in: {shown}");
    for secret in secrets {
        assert!(!shown.contains(secret), "an inline secret in: {shown}");
    }
});
