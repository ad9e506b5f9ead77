//! Counters the kernel side keeps of what it saw and what it dropped, in one per-CPU array
//! (`STATS`), indexed by the constants below. Userspace sums over CPUs and reports every one.

/// `STATS`: `BPF_MAP_TYPE_PERCPU_ARRAY` of `u64`, [`COUNT`] entries.
pub const MAP: &str = "STATS";

/// cpu: samples taken of the target.
pub const CPU_SAMPLES: u32 = 0;
/// cpu: samples not counted because `CPU_COUNTS` was full.
pub const CPU_COUNTS_FULL: u32 = 1;
/// Kernel stacks lost to a hash collision in `KERNEL_STACKS` (we never pass `BPF_F_REUSE_STACKID`).
pub const KERNEL_STACK_COLLISION: u32 = 2;
/// Kernel stacks that could not be recorded for another reason (map full, fault).
pub const KERNEL_STACK_MISSING: u32 = 3;
/// User stacks that could not be walked at all.
pub const USER_STACK_MISSING: u32 = 4;
/// User stacks not stored because `USER_STACKS` was full.
pub const USER_STACKS_FULL: u32 = 5;
/// User stacks cut at [`crate::stack::MAX_USER_FRAMES`].
pub const USER_STACK_TRUNCATED: u32 = 6;

pub const COUNT: u32 = 7;

/// Names used in reports and `summary.json`, indexed like the constants.
pub const NAMES: [&str; COUNT as usize] = [
    "cpu_samples",
    "cpu_counts_full",
    "kernel_stack_collision",
    "kernel_stack_missing",
    "user_stack_missing",
    "user_stacks_full",
    "user_stack_truncated",
];
