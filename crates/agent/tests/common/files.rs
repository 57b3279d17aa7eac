//! Scratch folders and agent config text. Shared by the integration tests (through
//! `common`) and by the config unit tests (`src/config/tests.rs` includes this file by path).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir (`wg-agent-<test crate>-<pid>-<n>`), removed on
/// drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wg-agent-{}-{}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    /// Writes `text` to a fresh file `name` with permissions `mode`; returns its path.
    pub(crate) fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.0.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, text).expect("write file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `[agent]` section at 10.1.0.100 in 10.1.0.0/24, with one line naming its key
/// (`private_key = ...`, `private_key_file = ...` or `private_key_env = ...`).
/// The `[uapi]` table comes first, with a name unique to this test: the socket directory is
/// shared by every test and network namespace on the machine.
pub(crate) fn agent_section(key_line: &str) -> String {
    format!(
        "[uapi]\nname = \"{}\"\n\n[agent]\n{key_line}\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n",
        unique_uapi_name()
    )
}

/// An interface name (at most 15 characters) no other test process uses at the same time.
pub(crate) fn unique_uapi_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{:x}-{n:x}", std::process::id())
}

/// One `[[gateways]]` entry (after a blank line) with its required fields.
pub(crate) fn gateway_section(id: &str, public_key: &str, endpoint: &str, vip: &str) -> String {
    format!(
        "\n[[gateways]]\nid = \"{id}\"\npublic_key = \"{public_key}\"\nendpoint = \"{endpoint}\"\nvirtual_ip = \"{vip}\"\n"
    )
}
