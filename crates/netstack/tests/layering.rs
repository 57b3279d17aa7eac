//! The layering, checked on the source: nothing under `src/core/` (the sans-IO core)
//! reaches tokio or the socket layer (`src/socket/`: `stack`, `tcp`, `udp`, `icmp`; the
//! test harnesses `sim`, `sim_lossy`; the socket types re-exported at the crate root). Comments are
//! not code: a doc link to `TcpStream` or the word tokio in prose is allowed.

use std::path::{Path, PathBuf};

/// Socket-layer modules, reached as `crate::NAME` or `super::NAME`.
const SOCKET_MODULES: [&str; 7] = ["socket", "stack", "tcp", "udp", "icmp", "sim", "sim_lossy"];

/// Socket-layer types re-exported at the crate root.
const SOCKET_TYPES: [&str; 4] = ["Netstack", "TcpStream", "TcpListener", "UdpSocket"];

/// Whether a line's code reaches one of `modules` as `crate::NAME` or `super::NAME`.
fn reaches(line: &str, modules: &[&str]) -> bool {
    let code = line.split("//").next().unwrap_or("");
    code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .any(|word| {
            let parts: Vec<&str> = word.split("::").collect();
            parts
                .windows(2)
                .any(|w| matches!(w[0], "crate" | "super") && modules.contains(&w[1]))
        })
}

/// What is wrong with one line of a core file, if anything.
fn violation(line: &str) -> Option<String> {
    // Code only: what precedes a line comment (a `//` inside a string literal is rare
    // enough in this crate to ignore).
    let code = line.split("//").next().unwrap_or("");
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .collect();
    for word in &words {
        let parts: Vec<&str> = word.split("::").collect();
        if (parts.first() == Some(&"tokio") && parts.len() > 1)
            || (*word == "tokio" && code.contains("use "))
        {
            return Some(format!("imports tokio: {}", line.trim()));
        }
        for (i, part) in parts.iter().enumerate() {
            let after_root = i > 0 && matches!(parts[i - 1], "crate" | "super");
            if after_root && SOCKET_MODULES.contains(part) {
                return Some(format!("reaches the socket layer: {}", line.trim()));
            }
            if SOCKET_TYPES.contains(part) {
                return Some(format!("names a socket-layer type: {}", line.trim()));
            }
        }
    }
    // A grouped import (`use crate::{stack, ...}`) would hide the module from the check
    // above: the core imports one path at a time.
    let squeezed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if squeezed.contains("crate::{") || squeezed.contains("super::{") {
        return Some(format!("grouped crate import: {}", line.trim()));
    }
    None
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/core") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_core_knows_nothing_of_tokio_or_the_socket_layer() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    for expected in ["shard.rs", "wire.rs", "sender.rs", "env.rs", "mod.rs"] {
        assert!(
            files.iter().any(|f| f.ends_with(expected)),
            "src/core/{expected} is checked"
        );
    }
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a core file");
        for (n, line) in text.lines().enumerate() {
            if let Some(why) = violation(line) {
                found.push(format!("{}:{}: {why}", file.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core must stay sans-IO and below the socket layer:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_what_it_is_for() {
    for bad in [
        "use tokio::sync::Notify;",
        "    let n = tokio::sync::Notify::new();",
        "use crate::stack::Shared;",
        "use crate::tcp::{Accepted, ListenerShared};",
        "    let s: &super::stack::Shared = x;",
        "use crate::{stack, wire};",
        "use crate :: { wire, tcp };",
        "fn f(s: &crate::TcpStream) {}",
        "    crate::sim::run();",
        "use crate::socket::stack::Shared;",
    ] {
        assert!(violation(bad).is_some(), "missed: {bad}");
    }
    for good in [
        "use crate::wire::Tuple;",
        "use crate::sender::{Sender, Verdict};",
        "/// Its stream called [`TcpStream::abort`](crate::TcpStream::abort).",
        "    x += 1; // the tokio adapter does the rest (crate::stack)",
        "    #[error(\"netstack: must be created inside a tokio runtime\")]",
        "use crate::stats::DropReason;",
        "let tcp_sockets = crate::stats::Counters::default();",
    ] {
        assert_eq!(violation(good), None, "flagged: {good}");
    }
}

/// Inside the socket layer imports go one way too: the sockets (`tcp`, `udp`, `icmp`)
/// use `stack`; `stack` uses `accept` and the core, never a socket; `accept` uses neither.
#[test]
fn the_socket_layer_imports_go_one_way() {
    let socket = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/socket");
    let rules: [(&str, &[&str]); 2] = [
        ("stack.rs", &["tcp", "udp", "icmp"]),
        ("accept.rs", &["stack", "tcp", "udp", "icmp"]),
    ];
    let mut found = Vec::new();
    for (file, forbidden) in rules {
        let text = std::fs::read_to_string(socket.join(file)).expect("read a socket file");
        for (n, line) in text.lines().enumerate() {
            let grouped = line.replace(' ', "").contains("crate::{");
            if reaches(line, forbidden) || grouped {
                found.push(format!("src/socket/{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a cycle in the socket layer:\n{}",
        found.join("\n")
    );
    assert!(reaches(
        "use crate::tcp::{TcpListener, TcpStream};",
        &["tcp"]
    ));
    assert!(!reaches(
        "use crate::accept::ListenerShared; // not crate::tcp",
        &["tcp"]
    ));
}
