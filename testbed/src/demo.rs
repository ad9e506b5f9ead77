//! The demo's planted problems: `testbed-pool` started with [`ARGS`] has a background job
//! holding its hot lock, a leak and a CPU-heavy path, each in a function of a known name, and
//! [`found`] checks a capture's findings name every one. `cargo xtask demo` and the profiler's
//! demo test both use it.

/// The pool's arguments that plant the problems.
pub const ARGS: &[&str] = &[
    // A background job takes SHARE_LOG for 15 ms every 100 ms (stall_loop).
    "--stall-every",
    "100",
    "--stall-ms",
    "15",
    // Every accepted share leaks 4 KiB from leak_bytes.
    "--leak-bytes",
    "4096",
    // Every fourth request spins 8 ms in slow_path: faster than what the lock costs the
    // slowest requests.
    "--slow-every",
    "4",
    "--slow-ms",
    "8",
    "--slow-spin",
];

/// One planted problem, and the words a finding must carry to have found it.
#[derive(Debug, Clone, Copy)]
pub struct Plant {
    pub name: &'static str,
    /// Every one of these in the same finding.
    pub needles: &'static [&'static str],
}

pub const PLANTS: [Plant; 3] = [
    Plant {
        name: "a background job holding the hot lock SHARE_LOG (stall_loop)",
        needles: &["SHARE_LOG", "stall"],
    },
    Plant {
        name: "a leak in leak_bytes",
        needles: &["leak_bytes"],
    },
    Plant {
        name: "a CPU-heavy path, slow_path",
        needles: &["slow_path"],
    },
];

/// Which plants the findings (their one-line texts) name.
pub fn found(findings: &[String]) -> Vec<(Plant, bool)> {
    PLANTS
        .iter()
        .map(|plant| {
            let hit = findings
                .iter()
                .any(|f| plant.needles.iter().all(|needle| f.contains(needle)));
            (*plant, hit)
        })
        .collect()
}

/// "found 3 of 3 planted problems", and a line per plant.
pub fn verdict(findings: &[String]) -> (bool, String) {
    let found = found(findings);
    let hits = found.iter().filter(|(_, hit)| *hit).count();
    let mut text = format!("found {hits} of {} planted problems", found.len());
    for (plant, hit) in &found {
        let mark = if *hit { "found" } else { "MISSED" };
        text.push_str(&format!("\n  {mark}: {}", plant.name));
    }
    (hits == found.len(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plant_needs_its_words() {
        let findings = [
            "slowest requests on :3333 (p99, ≥ 14.1 ms): 81% of their time waiting for lock \
             testbed::pool::share_log::SHARE_LOG (held by testbed::pool::share_log::stall_share_log)"
                .to_string(),
            "leak_bytes grows 1.7 MiB/min (oldest 30s, 944.0 KiB live), RSS +21%".to_string(),
        ];
        let (all, text) = verdict(&findings);
        assert!(!all);
        assert!(text.starts_with("found 2 of 3 planted problems"), "{text}");
        assert!(text.contains("MISSED: a CPU-heavy path"), "{text}");
    }
}
