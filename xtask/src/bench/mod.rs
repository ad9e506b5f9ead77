//! Overhead and speed measurements. Every figure is a ratio measured side by side in one run
//! (interleaved with the bare baseline), the median over several rounds.

mod cpu;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::util;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    pub which: Which,
    /// Interleaved rounds (each runs every configuration once).
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// Work per run, in fixture iterations (about 5 µs each on this machine).
    #[arg(long, default_value_t = 500_000)]
    pub iterations: u64,
    /// cpu: how the profiler walks stacks. `dwarf` also builds the fixture without frame
    /// pointers and compares with `perf record --call-graph dwarf`.
    #[arg(long, value_enum, default_value_t = Unwind::Auto)]
    pub unwind: Unwind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Unwind {
    Auto,
    Fp,
    Dwarf,
}

impl Unwind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fp => "fp",
            Self::Dwarf => "dwarf",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Cpu,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Which::Cpu => cpu::run(&args),
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Writes a bench result as `results/bench/<name>-<timestamp>.json` and returns the path.
pub fn write_result(name: &str, value: &impl Serialize) -> anyhow::Result<PathBuf> {
    let dir = util::workspace_root().join("results/bench");
    std::fs::create_dir_all(&dir)?;
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let path = dir.join(format!("{name}-{stamp}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
