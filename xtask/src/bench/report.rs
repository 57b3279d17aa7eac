//! The end-to-end report: rows of ours beside the reference, each with the target, as
//! markdown and JSON under `target/bench-report/`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

/// What a row is judged by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// ours / reference must be at least this.
    RatioAtLeast(f64),
    /// ours / reference must be at most this.
    RatioAtMost(f64),
    /// ours must be at most this (in the row's unit).
    OursAtMost(f64),
}

impl Target {
    fn describe(self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("ratio ≥ {r}"),
            Target::RatioAtMost(r) => format!("ratio ≤ {r}"),
            Target::OursAtMost(v) => format!("ours ≤ {v} {unit}"),
        }
    }
}

/// One figure for both sides.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) metric: String,
    pub(crate) unit: &'static str,
    pub(crate) ours: Option<f64>,
    pub(crate) reference: Option<f64>,
    pub(crate) target: Option<Target>,
}

impl Row {
    pub(crate) fn new(metric: impl Into<String>, unit: &'static str) -> Self {
        Self {
            metric: metric.into(),
            unit,
            ours: None,
            reference: None,
            target: None,
        }
    }

    pub(crate) fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// Sets the figure of side `index` (0 ours, 1 reference).
    pub(crate) fn set(&mut self, index: usize, value: f64) {
        if index == 0 {
            self.ours = Some(value);
        } else {
            self.reference = Some(value);
        }
    }

    /// ours / reference, when both exist and the reference is not zero.
    pub(crate) fn ratio(&self) -> Option<f64> {
        match (self.ours, self.reference) {
            (Some(o), Some(r)) if r != 0.0 => Some(o / r),
            _ => None,
        }
    }

    /// Whether the target is met (`None`: no target, or a figure is missing).
    pub(crate) fn met(&self) -> Option<bool> {
        match self.target? {
            Target::RatioAtLeast(r) => Some(self.ratio()? >= r),
            Target::RatioAtMost(r) => Some(self.ratio()? <= r),
            Target::OursAtMost(v) => Some(self.ours? <= v),
        }
    }
}

/// Rows plus notes on how the run went.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    /// The markdown table and notes.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::from(
            "| metric | unit | ours | reference | ours/ref | target | met |\n\
             | --- | --- | ---: | ---: | ---: | --- | --- |\n",
        );
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.metric,
                row.unit,
                number(row.ours),
                number(row.reference),
                row.ratio().map_or("–".into(), |r| format!("{r:.2}")),
                row.target.map_or(String::new(), |t| t.describe(row.unit)),
                match row.met() {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }

    /// The JSON document.
    pub(crate) fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|row| {
                json!({
                    "metric": row.metric,
                    "unit": row.unit,
                    "ours": row.ours,
                    "reference": row.reference,
                    "ratio": row.ratio(),
                    "target": row.target.map(|t| t.describe(row.unit)),
                    "met": row.met(),
                })
            })
            .collect();
        json!({ "rows": rows, "notes": self.notes })
    }

    /// Writes `e2e.md` and `e2e.json` into `dir`; returns their paths.
    pub(crate) fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let md = dir.join("e2e.md");
        let json = dir.join("e2e.json");
        fs::write(&md, self.markdown())
            .with_context(|| format!("cannot write {}", md.display()))?;
        fs::write(&json, serde_json::to_string_pretty(&self.json())?)
            .with_context(|| format!("cannot write {}", json.display()))?;
        Ok((md, json))
    }

    /// The ratios, one line each, for the end of the output.
    pub(crate) fn ratio_lines(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            let verdict = match row.met() {
                Some(true) => " (target met)",
                Some(false) => " (TARGET MISSED)",
                None => "",
            };
            let _ = match row.ratio() {
                Some(r) => writeln!(out, "  {:<48} ours/ref {r:>7.2}{verdict}", row.metric),
                None => writeln!(
                    out,
                    "  {:<48} ours {} {}{verdict}",
                    row.metric,
                    number(row.ours),
                    row.unit
                ),
            };
        }
        out
    }
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 0.1 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_ratios_and_absolute_targets() {
        let mut row = Row::new("download", "MB/s").target(Target::RatioAtLeast(1.2));
        row.ours = Some(120.0);
        row.reference = Some(100.0);
        assert_eq!(row.met(), Some(true));
        row.ours = Some(110.0);
        assert_eq!(row.met(), Some(false));
        let mut rss = Row::new("idle RSS", "MiB").target(Target::OursAtMost(10.0));
        rss.ours = Some(9.5);
        assert_eq!(rss.met(), Some(true));
        assert_eq!(rss.ratio(), None);
        let report = Report {
            rows: vec![row, rss],
            notes: vec!["n".into()],
        };
        assert!(
            report
                .markdown()
                .contains("| download | MB/s | 110 | 100 | 1.10 |")
        );
        assert_eq!(report.json()["rows"][0]["met"], false);
    }
}
