//! The findings digest: the few things a capture found that matter most, across every family
//! that ran, each in one line (what, how much, where) with the file to open for details. It is
//! the first thing the terminal prints, the top of report.html, and `findings.json`. Families
//! add their own findings in `finish`; the digest ranks them by impact.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

/// Findings in the digest, at most.
pub const DIGEST_LEN: usize = 10;
/// Its file in a run directory.
pub const FILE: &str = "findings.json";
/// Bumped when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// One thing a capture found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The family that found it; `warning` for a figure that cannot be trusted as it stands.
    pub family: String,
    /// What it is about (`latency :3333`, `cpu sha256d`): of several findings on one subject
    /// only the strongest stays (tail attribution explains a port's p99 better than the p99).
    pub subject: String,
    /// How much it matters, 0 to 1: the share of the tail it explains, of the CPU it takes, of
    /// the memory it grows. Ranks the digest.
    pub impact: f64,
    /// One line: what, how much, where.
    pub what: String,
    /// The file with the details.
    pub file: String,
}

/// `findings.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FindingsFile {
    pub schema_version: u32,
    /// Strongest first; warnings last.
    pub findings: Vec<Finding>,
}

/// The digest of `found`: one finding per subject (the strongest), strongest first, warnings
/// after the rest, at most [`DIGEST_LEN`] besides the warnings.
pub fn digest(found: &[Finding]) -> Vec<Finding> {
    let mut by_subject: BTreeMap<&str, &Finding> = BTreeMap::new();
    for finding in found {
        let kept = by_subject.entry(&finding.subject).or_insert(finding);
        if finding.impact > kept.impact {
            *kept = finding;
        }
    }
    let (mut warnings, mut findings): (Vec<Finding>, Vec<Finding>) = by_subject
        .into_values()
        .cloned()
        .partition(|f| f.family == "warning");
    findings.sort_by(|a, b| b.impact.total_cmp(&a.impact).then(a.what.cmp(&b.what)));
    findings.truncate(DIGEST_LEN);
    warnings.sort_by(|a, b| a.what.cmp(&b.what));
    findings.extend(warnings);
    findings
}

/// The digest for the terminal.
pub fn text(digest: &[Finding]) -> String {
    let mut out = String::from("findings:\n");
    if digest.is_empty() {
        out.push_str("  nothing stood out (no hot function, contended lock, slow tail or leak)\n");
    }
    for (i, f) in digest.iter().enumerate() {
        let label = if f.family == "warning" {
            "  warning:".to_string()
        } else {
            format!("  {:>2}.", i + 1)
        };
        let _ = writeln!(out, "{label} {}  [{}]", f.what, f.file);
    }
    out
}

/// A share as a percentage, without false precision.
pub fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(family: &str, subject: &str, impact: f64, what: &str) -> Finding {
        Finding {
            family: family.into(),
            subject: subject.into(),
            impact,
            what: what.into(),
            file: "x".into(),
        }
    }

    #[test]
    fn strongest_per_subject_strongest_first_warnings_last() {
        let found = [
            finding("sock", "latency :3333", 0.3, "p99 14 ms on :3333"),
            finding("cpu", "cpu sha256d", 0.4, "42% of CPU in sha256d"),
            finding("warning", "drops", 1.0, "kernel-side drops"),
            finding(
                "why",
                "latency :3333",
                0.81,
                "p99 14 ms on :3333: 81% SHARE_LOG",
            ),
        ];
        let digest = digest(&found);
        let whats: Vec<&str> = digest.iter().map(|f| f.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "p99 14 ms on :3333: 81% SHARE_LOG",
                "42% of CPU in sha256d",
                "kernel-side drops"
            ]
        );
        let text = text(&digest);
        assert!(
            text.contains("   1. p99 14 ms on :3333: 81% SHARE_LOG  [x]"),
            "{text}"
        );
        assert!(text.contains("  warning: kernel-side drops"), "{text}");
    }
}
