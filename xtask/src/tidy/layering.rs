//! The layering check: the crates' dependency rules (docs/ARCHITECTURE.md, "Crates and their
//! boundaries"), read from `cargo tree`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One rule: `cargo tree -p krate -e normal` run with `args` must not name any of `forbidden`.
struct Rule {
    krate: &'static str,
    args: &'static [&'static str],
    forbidden: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        krate: "wg-core",
        args: &[],
        forbidden: &["smoltcp", "netstack", "hyper", "local-proxy"],
    },
    Rule {
        krate: "netstack",
        args: &[],
        forbidden: &["boringtun", "wg-core", "hyper", "local-proxy"],
    },
    Rule {
        krate: "local-proxy",
        args: &[],
        forbidden: &["boringtun", "wg-core", "smoltcp", "netstack"],
    },
    // A service that embeds the Manager builds the agent without its application layer
    // (the default feature `cli`): no command line, no config file, no log subscriber.
    Rule {
        krate: "agent",
        args: &["--no-default-features"],
        forbidden: &["clap", "toml", "tracing-subscriber"],
    },
];

pub(crate) fn run(root: &Path) -> Result<()> {
    let mut broken = Vec::new();
    for rule in RULES {
        let krate = rule.krate;
        let shown = if rule.args.is_empty() {
            krate.to_owned()
        } else {
            format!("{krate} ({})", rule.args.join(" "))
        };
        let out = Command::new("cargo")
            .args([
                "tree", "--quiet", "-p", krate, "-e", "normal", "--prefix", "none", "--format",
                "{p}",
            ])
            .args(rule.args)
            .current_dir(root)
            .output()
            .with_context(|| format!("cannot run `cargo tree -p {shown}`"))?;
        if !out.status.success() {
            bail!(
                "`cargo tree -p {shown}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        for name in forbidden_in(&tree, rule.forbidden) {
            broken.push(format!("{shown} depends on {name}"));
        }
    }
    broken.sort();
    broken.dedup();
    if !broken.is_empty() {
        bail!(
            "layering broken (see docs/ARCHITECTURE.md, crates and their boundaries): {}",
            broken.join(", ")
        );
    }
    eprintln!("tidy: layering ok ({} crates checked)", RULES.len());
    Ok(())
}

/// The forbidden crate names found in `cargo tree --prefix none --format {p}` output.
fn forbidden_in<'a>(tree: &'a str, forbidden: &[&str]) -> Vec<&'a str> {
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| forbidden.contains(name))
        .collect()
}

#[cfg(test)]
mod tests {
    /// The layering check runs with the test suite too (nextest runs it), not only through
    /// `cargo xtask tidy`: a dependency that breaks the crate boundaries fails here.
    #[test]
    fn layering_holds() {
        if let Err(error) = super::run(&crate::root()) {
            panic!("{error:#}");
        }
    }

    /// The check can fail: a rule naming a crate that is in the graph is reported.
    #[test]
    fn a_forbidden_dependency_is_reported() {
        let tree = "wg-core v0.1.0\nboringtun v0.7.1\nbytes v1.10.0\n";
        let found = super::forbidden_in(tree, &["boringtun", "hyper"]);
        assert_eq!(found, vec!["boringtun"]);
    }
}
