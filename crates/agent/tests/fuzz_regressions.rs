//! Inputs found by the fuzz targets in `fuzz/` (see docs/fuzzing.md), kept as ordinary tests
//! so the bugs stay fixed.

use std::path::Path;

use agent::config::Config;

/// A valid base64 key (32 bytes of 0x42): what the config_toml target's environment holds.
const KEY: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

fn error_for(text: &str) -> String {
    let path = Path::new("/etc/wg-agent/agent.toml");
    match Config::from_toml_with_env(text, path, &|_| Some(KEY.to_owned())) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// config_toml, crash-e9343ef1: a table header left unclosed on the key's line. The syntax
/// error named the "field" from the rest of that line, value included, so the private key
/// reached the message (and `reload refused` log lines).
#[test]
fn an_unclosed_table_header_does_not_echo_the_key() {
    let text = format!(
        "[ag'ntivate_key = \"{KEY}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n"
    );
    let e = error_for(&text);
    assert!(!e.contains(KEY), "{e}");
    assert!(!e.contains(&KEY[..20]), "part of the key in: {e}");
    assert!(
        e.contains("agent.toml:1:"),
        "the message still names the line: {e}"
    );
}

/// The same bug by other roads: a key pasted on a line of its own (a bare key in TOML's
/// grammar, then a missing value), or used as a field name (serde's `unknown field` message
/// repeats it).
#[test]
fn a_key_pasted_alone_on_a_line_is_not_echoed() {
    let bare = KEY.trim_end_matches('=');
    for line in [
        KEY.to_owned(),
        bare.to_owned(),
        format!("{bare} "),
        format!("{bare} = 1"),
    ] {
        let text =
            format!("[agent]\n{line}\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n");
        let e = error_for(&text);
        assert!(!e.contains(&KEY[..20]), "part of the key in: {e}");
        assert!(e.contains("agent.toml:2:"), "{e}");
    }
}
