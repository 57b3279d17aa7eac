//! Cleaning up after test processes that died without running their destructors (`SIGKILL`,
//! a runner's timeout): their namespaces and the processes inside, wireguard-go control
//! sockets, veth address leases and scratch folders. Everything this crate creates carries the
//! creating process's pid, so only leftovers of dead processes are touched.

use std::fs;
use std::path::Path;
use std::sync::Once;

use crate::cmd::pid_alive;
use crate::netns::{SubnetLease, remove_stale_namespaces};
use crate::wggo::CONTROL_DIR;

/// Removes what dead test processes left behind: `wgtb-*` namespaces (killing what runs inside),
/// `/run/wireguard/wg<pid>x<n>.sock`, leases in `/run/wg-testbed/nets` and
/// `$TMPDIR/wg-testbed-*` folders. [`Netns::new`](crate::Netns::new) runs it once per process.
pub fn cleanup_stale() {
    remove_stale_namespaces();
    remove_dead_entries(Path::new(CONTROL_DIR), |name| {
        let rest = name.strip_prefix("wg")?.strip_suffix(".sock")?;
        let (pid, n) = rest.split_once('x')?;
        n.parse::<u32>().ok()?;
        pid.parse().ok()
    });
    remove_dead_entries(Path::new(SubnetLease::DIR), |name| {
        name.parse::<u32>().ok()?;
        let content = fs::read_to_string(Path::new(SubnetLease::DIR).join(name)).ok()?;
        content.trim().parse().ok()
    });
    remove_dead_entries(&std::env::temp_dir(), |name| {
        owner_pid(name.strip_prefix("wg-testbed-")?)
    });
}

pub(crate) fn cleanup_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(cleanup_stale);
}

/// The pid in a `<label>-<pid>-<n>` name.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let mut fields = name.rsplit('-');
    fields.next()?.parse::<u32>().ok()?;
    fields.next()?.parse().ok()
}

/// Removes each entry of `dir` whose owner (from `owner`) is a dead process.
fn remove_dead_entries(dir: &Path, owner: impl Fn(&str) -> Option<u32>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(&owner) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            let _ = fs::remove_dir_all(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_label_pid_counter_names() {
        assert_eq!(owner_pid("gw1-1234-0"), Some(1234));
        assert_eq!(owner_pid("wg99x1-77-12"), Some(77));
        assert_eq!(owner_pid("a-b-c-42-3"), Some(42));
        assert_eq!(owner_pid("probe-1234"), None);
        assert_eq!(owner_pid("x-y-1"), None);
        assert_eq!(owner_pid(""), None);
    }
}
