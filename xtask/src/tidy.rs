//! The layering check: SPEC's dependency rules, read from `cargo tree`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// (crate, names that must not appear in its normal dependency graph)
const RULES: &[(&str, &[&str])] = &[
    ("wg-core", &["smoltcp", "netstack", "hyper", "local-proxy"]),
    (
        "netstack",
        &["boringtun", "wg-core", "hyper", "local-proxy"],
    ),
    (
        "local-proxy",
        &["boringtun", "wg-core", "smoltcp", "netstack"],
    ),
];

pub(crate) fn run(root: &Path) -> Result<()> {
    let mut broken = Vec::new();
    for (krate, forbidden) in RULES {
        let out = Command::new("cargo")
            .args([
                "tree", "--quiet", "-p", krate, "-e", "normal", "--prefix", "none", "--format",
                "{p}",
            ])
            .current_dir(root)
            .output()
            .with_context(|| format!("cannot run `cargo tree -p {krate}`"))?;
        if !out.status.success() {
            bail!(
                "`cargo tree -p {krate}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if forbidden.contains(&name) {
                broken.push(format!("{krate} depends on {name}"));
            }
        }
    }
    broken.sort();
    broken.dedup();
    if !broken.is_empty() {
        bail!(
            "layering broken (see SPEC, crate boundaries): {}",
            broken.join(", ")
        );
    }
    eprintln!("tidy: layering ok ({} crates checked)", RULES.len());
    Ok(())
}
