//! `cpu`: on-CPU stack sampling from a software cpu-clock perf event on every CPU.

/// The perf_event program.
pub const PROGRAM: &str = "cpu_sample";
/// `CPU_COUNTS`: [`crate::stack::StackKey`] → `u64` samples.
pub const COUNTS_MAP: &str = "CPU_COUNTS";
/// `CPU_ARMED`: one `u32`, 1 while the program counts: set with every other family's, once all are attached, so no family counts the stalls of another's attach (uprobe registration takes the target's mmap lock).
pub const ARMED_MAP: &str = "CPU_ARMED";
