//! The checklist's lines: what each step's figures must be, PASS, FAIL or SKIP, and the
//! checklist as the terminal, `checklist.txt` and `checklist.json` show it.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use super::driver::LoadReport;
use crate::{compare::Comparison, report::alloc::MemoryGrowth};

/// Bumped when a field changes meaning or goes away. 2: `server` and `url` say what was
/// checked; `regression` says the comparison failed.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Nothing to check against (no previous release): not a failure.
    Skipped,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub check: String,
    pub requirement: String,
    pub result: Outcome,
    pub measured: String,
}

impl Line {
    fn new(check: &str, requirement: &str, pass: bool, measured: String) -> Self {
        Self {
            check: check.into(),
            requirement: requirement.into(),
            result: if pass { Outcome::Pass } else { Outcome::Fail },
            measured,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checklist {
    pub schema_version: u32,
    pub release: String,
    /// What was checked, for people: the testbed and its arguments, the command, or the pid.
    pub server: String,
    #[serde(default)]
    pub url: Option<String>,
    pub stamp: String,
    pub previous: Option<String>,
    /// No line failed.
    pub passed: bool,
    /// The comparison with the previous release found a regression.
    #[serde(default)]
    pub regression: bool,
    pub lines: Vec<Line>,
}

impl Checklist {
    pub fn render(&self, archive: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nrelease checklist {} ({}), {}",
            self.release, self.server, self.stamp
        );
        for line in &self.lines {
            let result = match line.result {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skipped => "SKIP",
            };
            let _ = writeln!(
                out,
                "  {result}  {:<46} {}",
                format!("{}: {}", line.check, line.requirement),
                line.measured
            );
        }
        let failed = self
            .lines
            .iter()
            .filter(|l| l.result == Outcome::Fail)
            .count();
        let verdict = if failed == 0 {
            "PASS".to_string()
        } else {
            format!("FAIL ({failed} of {} lines)", self.lines.len())
        };
        let _ = writeln!(
            out,
            "{}: {verdict}; archive in {}",
            self.release,
            archive.display()
        );
        out
    }
}

/// What the load lines read from a load report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadFigures {
    /// Miners or connections the profile runs.
    pub clients: u64,
    pub clients_connected: u64,
    pub established: u64,
    pub connect_errors: u64,
    /// Connections the server ended without the protocol announcing it: failures.
    pub unannounced_closes: u64,
    /// The driver's failures by kind, and whether they stayed within `--max-error-rate`.
    pub failures: BTreeMap<String, u64>,
    pub failures_passed: bool,
    pub p99_us: Option<u64>,
    pub replies: u64,
}

impl From<&LoadReport> for LoadFigures {
    fn from(r: &LoadReport) -> Self {
        Self {
            clients: r.settings.miners as u64,
            clients_connected: r.connections.clients_connected,
            established: r.connections.established,
            connect_errors: r.errors.connect,
            unannounced_closes: r.connections.closed_unexpectedly,
            failures: r.failures.by_kind.clone(),
            failures_passed: r.failures.passed,
            p99_us: r.latency_us.map(|l| l.p99),
            replies: r.latency_us.map_or(0, |l| l.count),
        }
    }
}

fn kinds(failures: &BTreeMap<String, u64>) -> String {
    failures
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Smoke: every client connected, no connection failed (a failed connect, or a close the
/// protocol did not announce), and the run's failures within the allowed rate.
pub fn smoke_line(load: Result<&LoadFigures, &str>) -> Line {
    const CHECK: (&str, &str) = ("smoke", "0 connection failures");
    let f = match load {
        Ok(f) => f,
        Err(e) => return Line::new(CHECK.0, CHECK.1, false, e.to_string()),
    };
    let mut measured = format!(
        "{} connect errors, {} unannounced closes, {}/{} clients connected",
        f.connect_errors, f.unannounced_closes, f.clients_connected, f.clients
    );
    if !f.failures_passed {
        let _ = write!(measured, "; failures: {}", kinds(&f.failures));
    }
    let pass = f.connect_errors == 0
        && f.unannounced_closes == 0
        && f.clients_connected == f.clients
        && f.failures_passed;
    Line::new(CHECK.0, CHECK.1, pass, measured)
}

/// Standard: reply latency p99 within the objective.
pub fn p99_line(load: Result<&LoadFigures, &str>, slo_ms: f64) -> Line {
    let requirement = format!("p99 under its SLO ({slo_ms} ms)");
    let f = match load {
        Ok(f) => f,
        Err(e) => return Line::new("standard", &requirement, false, e.to_string()),
    };
    match f.p99_us {
        Some(p99) => Line::new(
            "standard",
            &requirement,
            p99 as f64 <= slo_ms * 1000.0,
            format!(
                "p99 {:.2} ms over {} replies",
                p99 as f64 / 1000.0,
                f.replies
            ),
        ),
        None => Line::new("standard", &requirement, false, "no replies".into()),
    }
}

/// Stress: connections that failed (failed connects, and established connections the server
/// closed without announcing it) under 1% of connection attempts.
pub fn stress_line(load: Result<&LoadFigures, &str>) -> Line {
    const CHECK: (&str, &str) = ("stress", "under 1% connection failures");
    let f = match load {
        Ok(f) => f,
        Err(e) => return Line::new(CHECK.0, CHECK.1, false, e.to_string()),
    };
    let attempts = f.established + f.connect_errors;
    if attempts == 0 {
        return Line::new(CHECK.0, CHECK.1, false, "no connection attempted".into());
    }
    let failed = f.connect_errors + f.unannounced_closes;
    let share = failed as f64 / attempts as f64 * 100.0;
    Line::new(
        CHECK.0,
        CHECK.1,
        share < 1.0,
        format!(
            "{share:.2}% ({failed} failed of {attempts} attempts: {} connect errors, {} \
             unannounced closes)",
            f.connect_errors, f.unannounced_closes
        ),
    )
}

/// Soak: RSS growth under 10%, as the alloc family measures it (from one minute into the
/// capture when it is longer, so start-up growth does not count).
pub fn rss_line(memory: Result<Option<&MemoryGrowth>, &str>, samples: usize) -> Line {
    const CHECK: (&str, &str) = ("soak", "RSS growth under 10%");
    match memory {
        Err(e) => Line::new(CHECK.0, CHECK.1, false, e.to_string()),
        Ok(Some(m)) if m.rss_baseline_kb > 0 && samples >= 2 => Line::new(
            CHECK.0,
            CHECK.1,
            m.rss_growth_percent < 10.0,
            format!(
                "{:+.1}% ({} -> {} KiB over {samples} samples)",
                m.rss_growth_percent, m.rss_baseline_kb, m.rss_end_kb
            ),
        ),
        Ok(_) => Line::new(
            CHECK.0,
            CHECK.1,
            false,
            format!("no RSS growth figure ({samples} memory samples)"),
        ),
    }
}

/// The standard capture's CPU flamegraph is in the archive.
pub fn flamegraph_line(dir: Result<&str, &str>, svg_bytes: Option<u64>) -> Line {
    const CHECK: (&str, &str) = ("flamegraph", "archived");
    match (dir, svg_bytes) {
        (Ok(dir), Some(bytes)) if bytes > 0 => Line::new(
            CHECK.0,
            CHECK.1,
            true,
            format!("{dir}/cpu.svg ({:.0} KiB)", bytes as f64 / 1024.0),
        ),
        (Ok(dir), _) => Line::new(
            CHECK.0,
            CHECK.1,
            false,
            format!("{dir}/cpu.svg missing or empty"),
        ),
        (Err(e), _) => Line::new(CHECK.0, CHECK.1, false, format!("no standard capture: {e}")),
    }
}

/// A capture's drop counters by name, or why there are none.
pub type Drops<'a> = Result<&'a BTreeMap<String, u64>, &'a str>;

/// Every kernel-side drop counter of every capture is zero. (The allocator's own facts, frees
/// of blocks from before the attach and calls from inside the allocator, are not drops: the
/// summary keeps them in its `alloc` section.)
pub fn dropped_line(captures: &[(&str, Drops<'_>)]) -> Line {
    const CHECK: (&str, &str) = ("event pipeline", "no dropped events");
    let mut dropped = Vec::new();
    let mut counters = 0;
    for (name, counts) in captures {
        match counts {
            Ok(counts) if counts.is_empty() => dropped.push(format!("{name}: no drop counters")),
            Ok(counts) => {
                counters += counts.len();
                for (counter, value) in counts.iter().filter(|(_, v)| **v != 0) {
                    dropped.push(format!("{name} {counter}={value}"));
                }
            }
            Err(e) => dropped.push(format!("{name}: {e}")),
        }
    }
    let names: Vec<&str> = captures.iter().map(|(n, _)| *n).collect();
    let measured = if dropped.is_empty() {
        format!("{}: all {counters} counters zero", names.join(" and "))
    } else {
        dropped.join(", ")
    };
    Line::new(CHECK.0, CHECK.1, dropped.is_empty(), measured)
}

/// The comparison with the previous release: its verdict, and the gates that failed.
pub fn gate_line(previous: Option<&str>, compare: Option<Result<&Comparison, &str>>) -> Line {
    let Some(previous) = previous else {
        return Line {
            check: "compare".into(),
            requirement: "no regression vs the previous release".into(),
            result: Outcome::Skipped,
            measured: "no earlier release of this server archived".into(),
        };
    };
    let requirement = format!("no regression vs {previous}");
    let compare = match compare {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Line::new("compare", &requirement, false, e.to_string()),
        None => return Line::new("compare", &requirement, false, "not compared".into()),
    };
    let failed: Vec<String> = compare
        .gates
        .iter()
        .filter(|g| g.result == "fail")
        .map(|g| match g.change_percent {
            Some(change) => format!("{} {change:+.0}% (limit {})", g.name, g.limit),
            None => format!("{} (limit {})", g.name, g.limit),
        })
        .collect();
    let measured = if failed.is_empty() {
        compare.verdict.clone()
    } else {
        format!("{}: {}", compare.verdict, failed.join(", "))
    };
    Line::new("compare", &requirement, compare.verdict == "pass", measured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::GateResult;

    fn load(connect_errors: u64, connected: u64, established: u64, p99: u64) -> LoadFigures {
        LoadFigures {
            clients: 10,
            clients_connected: connected,
            established,
            connect_errors,
            failures_passed: connect_errors == 0,
            p99_us: Some(p99),
            replies: 300,
            ..LoadFigures::default()
        }
    }

    #[test]
    fn smoke_needs_every_client_and_no_failed_connection() {
        let line = smoke_line(Ok(&load(0, 10, 10, 900)));
        assert_eq!(line.result, Outcome::Pass, "{line:?}");
        assert_eq!(
            line.measured,
            "0 connect errors, 0 unannounced closes, 10/10 clients connected"
        );
        assert_eq!(smoke_line(Ok(&load(1, 10, 11, 900))).result, Outcome::Fail);
        assert_eq!(smoke_line(Ok(&load(0, 9, 9, 900))).result, Outcome::Fail);
        // A close the protocol did not announce is a failed connection.
        let closed = LoadFigures {
            unannounced_closes: 2,
            failures: [("closed-by-server".to_string(), 2)].into(),
            failures_passed: false,
            ..load(0, 10, 12, 900)
        };
        let line = smoke_line(Ok(&closed));
        assert_eq!(line.result, Outcome::Fail);
        assert!(
            line.measured.ends_with("; failures: closed-by-server 2"),
            "{line:?}"
        );
        // Other failures over the allowed rate fail it too.
        let timeouts = LoadFigures {
            failures: [("timeouts".to_string(), 3)].into(),
            failures_passed: false,
            ..load(0, 10, 10, 900)
        };
        assert_eq!(smoke_line(Ok(&timeouts)).result, Outcome::Fail);
        let missing = smoke_line(Err("the load driver failed"));
        assert_eq!(
            (missing.result, missing.measured.as_str()),
            (Outcome::Fail, "the load driver failed")
        );
    }

    #[test]
    fn p99_is_held_to_the_objective() {
        assert_eq!(
            p99_line(Ok(&load(0, 10, 10, 10_000)), 10.0).result,
            Outcome::Pass
        );
        let over = p99_line(Ok(&load(0, 10, 10, 10_001)), 10.0);
        assert_eq!(over.result, Outcome::Fail);
        assert_eq!(over.measured, "p99 10.00 ms over 300 replies");
        let none = LoadFigures {
            p99_us: None,
            ..load(0, 10, 10, 0)
        };
        let none = p99_line(Ok(&none), 10.0);
        assert_eq!(
            (none.result, none.measured.as_str()),
            (Outcome::Fail, "no replies")
        );
    }

    #[test]
    fn stress_counts_failed_connects_and_unannounced_closes_against_attempts() {
        // 9 failures in 1009 attempts: 0.89%.
        let line = stress_line(Ok(&load(9, 1000, 1000, 0)));
        assert_eq!(line.result, Outcome::Pass, "{line:?}");
        assert!(
            line.measured
                .starts_with("0.89% (9 failed of 1009 attempts")
        );
        assert_eq!(
            stress_line(Ok(&load(11, 1000, 1000, 0))).result,
            Outcome::Fail
        );
        let closes = LoadFigures {
            unannounced_closes: 11,
            ..load(0, 1000, 1000, 0)
        };
        assert_eq!(stress_line(Ok(&closes)).result, Outcome::Fail);
        assert_eq!(stress_line(Ok(&load(0, 0, 0, 0))).result, Outcome::Fail);
    }

    #[test]
    fn rss_growth_needs_samples() {
        let growth = |percent: f64| MemoryGrowth {
            rss_baseline_kb: 5000,
            rss_end_kb: (5000.0 * (1.0 + percent / 100.0)) as u64,
            rss_growth_percent: percent,
            over_10_percent: percent > 10.0,
        };
        let line = rss_line(Ok(Some(&growth(2.0))), 12);
        assert_eq!(line.result, Outcome::Pass, "{line:?}");
        assert_eq!(line.measured, "+2.0% (5000 -> 5100 KiB over 12 samples)");
        assert_eq!(rss_line(Ok(Some(&growth(10.0))), 12).result, Outcome::Fail);
        assert_eq!(
            rss_line(Ok(Some(&growth(0.0))), 1).result,
            Outcome::Fail,
            "one sample shows nothing"
        );
        assert_eq!(
            rss_line(Ok(None), 12).result,
            Outcome::Fail,
            "no alloc family"
        );
    }

    #[test]
    fn flamegraph_must_be_there_and_not_empty() {
        assert_eq!(
            flamegraph_line(Ok("standard-x"), Some(4096)).result,
            Outcome::Pass
        );
        assert_eq!(
            flamegraph_line(Ok("standard-x"), Some(0)).result,
            Outcome::Fail
        );
        assert_eq!(
            flamegraph_line(Ok("standard-x"), None).result,
            Outcome::Fail
        );
        assert_eq!(flamegraph_line(Err("x"), None).result, Outcome::Fail);
    }

    #[test]
    fn any_dropped_event_fails_and_is_named() {
        let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let clean = counts(&[("cpu_counts_full", 0), ("user_stacks_full", 0)]);
        let line = dropped_line(&[("standard", Ok(&clean)), ("soak", Ok(&clean))]);
        assert_eq!(line.result, Outcome::Pass);
        assert_eq!(line.measured, "standard and soak: all 4 counters zero");
        let lossy = counts(&[("cpu_counts_full", 0), ("user_stacks_full", 3)]);
        let line = dropped_line(&[("standard", Ok(&clean)), ("soak", Ok(&lossy))]);
        assert_eq!(
            (line.result, line.measured.as_str()),
            (Outcome::Fail, "soak user_stacks_full=3")
        );
        // A lost allocator return is a drop like any other.
        let soak = counts(&[("alloc_live_full", 0), ("alloc_missed_returns", 2)]);
        let line = dropped_line(&[("standard", Ok(&clean)), ("soak", Ok(&soak))]);
        assert_eq!(line.measured, "soak alloc_missed_returns=2");
        let line = dropped_line(&[("standard", Ok(&clean)), ("soak", Err("attach failed"))]);
        assert_eq!(
            (line.result, line.measured.as_str()),
            (Outcome::Fail, "soak: attach failed")
        );
    }

    fn gate(name: &str, result: &str, change: f64) -> GateResult {
        GateResult {
            name: name.into(),
            old: Some(1.0),
            new: Some(1.0 + change / 100.0),
            change_percent: Some(change),
            limit: "+10%".into(),
            result: result.into(),
        }
    }

    fn comparison(verdict: &str, gates: Vec<GateResult>) -> Comparison {
        Comparison {
            schema_version: 1,
            old: "old".into(),
            new: "new".into(),
            verdict: verdict.into(),
            gates,
            cpu_functions: Vec::new(),
            latency: Vec::new(),
            locks: Vec::new(),
            new_leak_suspects: Vec::new(),
            outputs: Vec::new(),
        }
    }

    #[test]
    fn the_gate_is_skipped_without_a_previous_release_and_names_what_failed() {
        assert_eq!(gate_line(None, None).result, Outcome::Skipped);
        let pass = comparison("pass", vec![gate("p99 latency", "pass", 1.0)]);
        assert_eq!(
            gate_line(Some("v0.1.0"), Some(Ok(&pass))).result,
            Outcome::Pass
        );
        let regression = comparison(
            "regression",
            vec![
                gate("p99 latency", "fail", 85.2),
                gate("throughput", "pass", -1.0),
                gate("CPU", "fail", 900.0),
            ],
        );
        let line = gate_line(Some("v0.1.0"), Some(Ok(&regression)));
        assert_eq!(line.result, Outcome::Fail);
        assert_eq!(line.requirement, "no regression vs v0.1.0");
        assert_eq!(
            line.measured,
            "regression: p99 latency +85% (limit +10%), CPU +900% (limit +10%)"
        );
        let broken = gate_line(Some("v0.1.0"), Some(Err("no standard capture")));
        assert_eq!(broken.result, Outcome::Fail);
    }

    #[test]
    fn a_skipped_line_does_not_fail_the_checklist() {
        let checklist = Checklist {
            schema_version: SCHEMA_VERSION,
            release: "v0.1.0".into(),
            server: "testbed-pool".into(),
            url: None,
            stamp: "20261201T120000Z".into(),
            previous: None,
            passed: true,
            regression: false,
            lines: vec![smoke_line(Ok(&load(0, 10, 10, 900))), gate_line(None, None)],
        };
        let text = checklist.render(Path::new("results/v0.1.0"));
        assert!(
            text.contains("  PASS  smoke: 0 connection failures"),
            "{text}"
        );
        assert!(
            text.contains("  SKIP  compare: no regression vs the previous release"),
            "{text}"
        );
        assert!(
            text.ends_with("v0.1.0: PASS; archive in results/v0.1.0\n"),
            "{text}"
        );
    }
}
