//! TOML text through the agent's config parser and validator (`wg-agent check` and SIGHUP
//! reloads read operator files; a bad file must give an error, never a panic).
//!
//! Environment variables resolve to a valid key, so inputs that name `private_key_env` get
//! past key loading into the rest of the validation. Files named in the config resolve
//! against an empty folder.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// A valid base64 key (32 bytes of 0x42), what every environment variable holds.
const ENV_KEY: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

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
    match agent::config::Config::from_toml_with_env(text, path, &|_| Some(ENV_KEY.to_owned())) {
        Ok(config) => {
            // Debug output (what a log line could show) never holds the secret.
            let shown = format!("{config:?}");
            assert!(
                !shown.contains(ENV_KEY),
                "the key in the config's Debug output"
            );
        }
        Err(error) => {
            let message = error.to_string();
            // Messages never echo the secret.
            assert!(!message.contains(ENV_KEY), "{message}");
        }
    }
});
