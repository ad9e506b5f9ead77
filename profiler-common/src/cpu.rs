//! `cpu`: on-CPU stack sampling from a software cpu-clock perf event on every CPU.

/// The perf_event program.
pub const PROGRAM: &str = "cpu_sample";
/// `CPU_COUNTS`: [`crate::stack::StackKey`] → `u64` samples.
pub const COUNTS_MAP: &str = "CPU_COUNTS";
