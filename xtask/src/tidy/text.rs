//! Text-only tidy rules: read files, never build.
//!
//! 1. Every Rust source file opens with a `//!` header saying what the module does.
//! 2. Every path named in `docs/ARCHITECTURE.md`'s "Code map" section exists. A name is a
//!    backticked token that ends in `.rs`, `.md`, `.toml` or `.sh`, or a backticked folder
//!    (`crates/agent/src/`); a relative name is resolved against the last folder the section
//!    named before it, or against the repository root.
//! 3. `allow(unsafe_code)` (or `expect(unsafe_code)`) appears only on `mod NAME;`
//!    declarations whose module file `docs/ARCHITECTURE.md` names by its repository path:
//!    unsafe code is confined to modules a reader is told about.
//! 4. The agent's Manager (`crates/agent/src/manager.rs` and `manager/`) names none of the
//!    application modules behind the `cli` feature (`crate::config`, `crate::snapshot`, ...):
//!    it builds without them (the layering check reads the dependency side from `cargo tree`).
//! 5. Comments cite documents in this repository (`docs/`), never the design notes kept
//!    beside it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Folders whose Rust files are checked (relative to the root).
const SOURCE_ROOTS: &[&str] = &["crates", "xtask", "benches", "fuzz"];
/// Folder names never descended into: build output and generated fuzz data.
const SKIPPED_DIRS: &[&str] = &["target", "corpus", "artifacts", ".git"];
const ARCHITECTURE: &str = "docs/ARCHITECTURE.md";
/// The Manager's files: a path starting with this (`manager.rs`, `manager/...`).
const MANAGER: &str = "crates/agent/src/manager";
/// The agent's modules behind its `cli` feature, which the Manager must not use.
const APPLICATION_MODULES: &[&str] = &[
    "crate::admin",
    "crate::config",
    "crate::demo",
    "crate::metrics",
    "crate::runtime",
    "crate::snapshot",
    "crate::status",
];

pub(crate) fn run(root: &Path) -> Result<()> {
    let findings = check(root)?;
    if !findings.is_empty() {
        bail!(
            "tidy: {} finding(s):\n  {}",
            findings.len(),
            findings.join("\n  ")
        );
    }
    eprintln!("tidy: module headers, code map and unsafe allowances ok");
    Ok(())
}

/// Every finding of the three rules, as lines naming the file.
fn check(root: &Path) -> Result<Vec<String>> {
    let architecture_path = root.join(ARCHITECTURE);
    let architecture = fs::read_to_string(&architecture_path)
        .with_context(|| format!("cannot read {}", architecture_path.display()))?;
    let mut sources = Vec::new();
    for dir in SOURCE_ROOTS {
        rust_files(&root.join(dir), &mut sources)?;
    }
    sources.sort();
    let mut findings = Vec::new();
    for path in &sources {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let shown = relative(root, path);
        if !text.trim_start().starts_with("//!") {
            findings.push(format!("{shown}: does not open with a `//!` module header"));
        }
        findings.extend(unsafe_allowances(root, path, &text, &architecture));
        if shown.starts_with(MANAGER) {
            findings.extend(application_uses(&shown, &text));
        }
        findings.extend(outside_citations(&shown, &text));
    }
    findings.extend(missing_code_map_paths(root, &architecture));
    Ok(findings)
}

/// Documents that live beside the repository, not in it: comments must not send a reader
/// there (whole words; `UNSPECIFIED` is not a citation).
const OUTSIDE_DOCUMENTS: &[&str] = &["SPEC", "NOTES.md", "STYLE.md", "../shared"];

/// Rule 5: comments that cite a document outside the repository.
fn outside_citations(shown: &str, text: &str) -> Vec<String> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut findings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some((_, comment)) = line.split_once("//") else {
            continue;
        };
        for name in OUTSIDE_DOCUMENTS {
            let cited = comment.match_indices(name).any(|(at, _)| {
                !word(comment[..at].chars().next_back())
                    && !word(comment[at + name.len()..].chars().next())
            });
            if cited {
                findings.push(format!(
                    "{shown}:{}: a comment cites `{name}`, which is not in the repository \
                     (cite docs/ instead)",
                    n + 1
                ));
            }
        }
    }
    findings
}

/// Rule 4: the application modules a Manager file names.
fn application_uses(shown: &str, text: &str) -> Vec<String> {
    APPLICATION_MODULES
        .iter()
        .filter(|module| text.contains(*module))
        .map(|module| {
            format!(
                "{shown}: the Manager uses `{module}`, which is behind the `cli` feature \
                 (move what it needs next to the Manager)"
            )
        })
        .collect()
}

/// The `.rs` files under `dir`, recursively, skipping build output.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if !SKIPPED_DIRS.iter().any(|s| name == *s) {
                rust_files(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Findings for rule 3 in one file.
fn unsafe_allowances(root: &Path, path: &Path, text: &str, architecture: &str) -> Vec<String> {
    let shown = relative(root, path);
    let lines: Vec<&str> = text.lines().collect();
    let mut findings = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        if !code.starts_with('#') || !allows_unsafe(code) {
            continue;
        }
        let declared = lines[n + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with("#["))
            .and_then(module_name);
        let Some(module) = declared.filter(|_| code.starts_with("#[")) else {
            findings.push(format!(
                "{shown}:{}: `unsafe_code` is allowed on something other than a `mod NAME;` \
                 declaration",
                n + 1
            ));
            continue;
        };
        let file = module_file(root, path, module);
        if !architecture.contains(&format!("`{file}`")) {
            findings.push(format!(
                "{shown}:{}: module `{module}` allows unsafe code but {ARCHITECTURE} does not \
                 name `{file}`",
                n + 1
            ));
        }
    }
    findings
}

/// Whether an attribute line (one starting with `#`) lets `unsafe_code` through.
fn allows_unsafe(code: &str) -> bool {
    (code.contains("allow(") || code.contains("expect(")) && code.contains("unsafe_code")
}

/// `NAME` of `mod NAME;` (with any visibility), else `None`.
fn module_name(line: &str) -> Option<&str> {
    let rest = line.strip_suffix(';')?;
    let name = rest.rsplit_once("mod ")?.1.trim();
    let visibility = rest.rsplit_once("mod ")?.0.trim();
    let plain = visibility.is_empty() || visibility.starts_with("pub");
    (plain && !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .then_some(name)
}

/// The repository path of module `name` declared in `parent` (Rust 2018 layout:
/// `lib.rs`/`main.rs`/`mod.rs` declare siblings, `foo.rs` declares `foo/name.rs`).
fn module_file(root: &Path, parent: &Path, name: &str) -> String {
    let dir = parent.parent().unwrap_or(root);
    let stem = parent.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let base = if ["lib", "main", "mod"].contains(&stem) {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    let candidate = base.join(format!("{name}.rs"));
    let file = if candidate.exists() {
        candidate
    } else {
        base.join(name).join("mod.rs")
    };
    relative(root, &file)
}

/// Findings for rule 2: code-map names that exist nowhere.
fn missing_code_map_paths(root: &Path, architecture: &str) -> Vec<String> {
    let mut findings = Vec::new();
    let mut in_map = false;
    let mut folder: Option<String> = None;
    for (n, line) in architecture.lines().enumerate() {
        if let Some(heading) = line.strip_prefix("## ") {
            in_map = heading.trim().eq_ignore_ascii_case("code map");
            folder = None;
            continue;
        }
        if !in_map {
            continue;
        }
        for name in backticked(line) {
            let is_folder = name.ends_with('/') && name.contains('/');
            let is_file = [".rs", ".md", ".toml", ".sh"]
                .iter()
                .any(|ext| name.ends_with(ext));
            if !is_folder && !is_file {
                continue;
            }
            let candidates = [
                folder.as_deref().map(|f| root.join(f).join(name)),
                Some(root.join(name)),
            ];
            let exists = candidates.iter().flatten().any(|p| p.exists());
            if !exists {
                findings.push(format!(
                    "{ARCHITECTURE}:{}: the code map names `{name}`, which does not exist",
                    n + 1
                ));
            } else if is_folder && root.join(name).is_dir() {
                folder = Some(name.to_owned());
            }
        }
    }
    findings
}

/// The backticked tokens of a line that contain no space.
fn backticked(line: &str) -> impl Iterator<Item = &str> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| !t.is_empty() && !t.contains(' '))
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tree with one crate and an ARCHITECTURE.md, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xtask-tidy-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            let tree = Self(dir);
            tree.write(
                "crates/demo/src/lib.rs",
                "//! A demo crate.\n\n#[allow(unsafe_code)]\nmod raw;\nmod plain;\n",
            );
            tree.write("crates/demo/src/raw.rs", "//! Raw memory.\n");
            tree.write("crates/demo/src/plain.rs", "//! Plain code.\n");
            tree.write(
                ARCHITECTURE,
                "# Architecture\n\n## Code map\n\n`crates/demo/src/`:\n\n- `lib.rs` — the crate.\n\
                 - `raw.rs` — raw memory.\n\n## Invariants\n\nUnsafe code lives only in \
                 `crates/demo/src/raw.rs`; `not/checked.rs` is outside the map.\n",
            );
            tree
        }

        fn write(&self, path: &str, text: &str) {
            let path = self.0.join(path);
            fs::create_dir_all(path.parent().expect("a file has a folder")).expect("mkdir");
            fs::write(path, text).expect("write");
        }

        fn findings(&self) -> Vec<String> {
            check(&self.0).expect("check runs")
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The repository itself passes every rule.
    #[test]
    fn the_tree_is_tidy() {
        let findings = check(&crate::root()).expect("check runs");
        assert!(findings.is_empty(), "{}", findings.join("\n"));
    }

    #[test]
    fn a_clean_tree_has_no_findings() {
        assert_eq!(Tree::new("clean").findings(), Vec::<String>::new());
    }

    #[test]
    fn a_file_without_a_header_is_reported() {
        let tree = Tree::new("header");
        tree.write(
            "crates/demo/src/plain.rs",
            "// not a module doc\nfn f() {}\n",
        );
        let findings = tree.findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].starts_with("crates/demo/src/plain.rs: does not open"));
    }

    #[test]
    fn the_manager_using_the_application_layer_is_reported() {
        let tree = Tree::new("manager");
        tree.write(
            "crates/agent/src/manager/upkeep.rs",
            "//! Upkeep.\n\nuse crate::config::Endpoint;\n",
        );
        tree.write(
            "crates/agent/src/runtime.rs",
            "//! Runtime.\n\nuse crate::config::Config;\n",
        );
        let findings = tree.findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].starts_with(
                "crates/agent/src/manager/upkeep.rs: the Manager uses `crate::config`"
            ),
            "{findings:?}"
        );
    }

    #[test]
    fn a_code_map_path_that_does_not_exist_is_reported() {
        let tree = Tree::new("map");
        fs::remove_file(tree.0.join("crates/demo/src/raw.rs")).expect("rm");
        tree.write(
            "crates/demo/src/lib.rs",
            "//! A demo crate.\n\n#[allow(unsafe_code)]\nmod raw {}\n",
        );
        let findings = tree.findings();
        assert!(
            findings
                .iter()
                .any(|f| f.contains("the code map names `raw.rs`, which does not exist")),
            "{findings:?}"
        );
    }

    #[test]
    fn unsafe_allowed_on_an_unlisted_module_is_reported() {
        let tree = Tree::new("unlisted");
        tree.write(
            "crates/demo/src/lib.rs",
            "//! A demo crate.\n\n#[allow(unsafe_code)]\nmod raw;\n#[allow(unsafe_code)]\nmod plain;\n",
        );
        let findings = tree.findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].contains("does not name `crates/demo/src/plain.rs`"));
    }

    #[test]
    fn unsafe_allowed_on_anything_but_a_module_is_reported() {
        let tree = Tree::new("item");
        tree.write(
            "crates/demo/src/plain.rs",
            "//! Plain code.\n#![allow(unsafe_code)]\n\n#[allow(unsafe_code)]\nfn f() {}\n",
        );
        let findings = tree.findings();
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert!(
            findings
                .iter()
                .all(|f| f.contains("other than a `mod NAME;`"))
        );
    }

    #[test]
    fn a_comment_citing_an_outside_document_is_reported() {
        let tree = Tree::new("citation");
        tree.write(
            "crates/demo/src/plain.rs",
            // Spelled with an escape, so this file does not cite it itself.
            "//! Plain code (see S\u{50}EC).\nconst A: u8 = 0; // UNSPECIFIED is fine\n",
        );
        let findings = tree.findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].contains("crates/demo/src/plain.rs:1: a comment cites `SPEC`"));
    }

    #[test]
    fn module_names_and_files() {
        assert_eq!(module_name("mod buffer;"), Some("buffer"));
        assert_eq!(module_name("pub(crate) mod buffer;"), Some("buffer"));
        assert_eq!(module_name("mod buffer {"), None);
        assert_eq!(module_name("fn f();"), None);
        let root = Path::new("/r");
        assert_eq!(
            module_file(root, Path::new("/r/crates/a/src/lib.rs"), "x"),
            "crates/a/src/x/mod.rs"
        );
        assert_eq!(
            module_file(root, Path::new("/r/crates/a/src/peers.rs"), "x"),
            "crates/a/src/peers/x/mod.rs"
        );
    }
}
