//! `cargo xtask tidy`: checks of the tree that need no build beyond `cargo tree`.
//!
//! - `layering`: the crates' dependency rules (docs/ARCHITECTURE.md), read from `cargo tree`.
//! - `text`: text-only rules of the sources and docs (module headers, the code map, where
//!   `unsafe` may be allowed).

use std::path::Path;

use anyhow::Result;

mod layering;
mod text;

/// Runs every tidy check; the first failing one ends the run with its findings.
pub(crate) fn run(root: &Path) -> Result<()> {
    layering::run(root)?;
    text::run(root)
}
