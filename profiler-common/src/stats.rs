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

/// offcpu: switches of a target thread off the CPU.
pub const OFFCPU_SWITCHES: u32 = 7;
/// offcpu: off-CPU intervals not recorded because `OFFCPU_START` was full.
pub const OFFCPU_START_FULL: u32 = 8;
/// offcpu: time not counted because `OFFCPU_TIMES` was full.
pub const OFFCPU_TIMES_FULL: u32 = 9;
/// futex: waits of target threads timed.
pub const FUTEX_WAITS: u32 = 10;
/// futex: waits not recorded because a map was full.
pub const FUTEX_MAPS_FULL: u32 = 11;
/// futex: wakes counted.
pub const FUTEX_WAKES: u32 = 12;

/// alloc: allocator calls of the target seen (sampled or not).
pub const ALLOC_CALLS: u32 = 13;
/// alloc: allocations tracked (sampled in).
pub const ALLOC_TRACKED: u32 = 14;
/// alloc: frees of tracked allocations.
pub const ALLOC_FREES: u32 = 15;
/// alloc: frees of sampled-in addresses never seen allocated (allocated before the attach).
pub const ALLOC_UNKNOWN_FREES: u32 = 16;
/// alloc: calls whose return never came (lost: their blocks are not tracked).
pub const ALLOC_MISSED_RETURNS: u32 = 17;
/// alloc: allocations not tracked because `ALLOC_LIVE` was full.
pub const ALLOC_LIVE_FULL: u32 = 18;
/// alloc: allocations not counted by stack because `ALLOC_STACKS` was full.
pub const ALLOC_STACKS_FULL: u32 = 19;

/// sock: requests of the target replied to.
pub const SOCK_REQUESTS: u32 = 20;
/// sock: sockets of the target that could not be added to `SOCK_SOCKETS` (an LRU, so this
/// is rare: when it is full the least recently used socket goes instead).
pub const SOCK_SOCKETS_FULL: u32 = 21;
/// sock: new connections not timed because `SOCK_NEW` was full.
pub const SOCK_NEW_FULL: u32 = 22;
/// sock: the local port of a socket could not be read.
pub const SOCK_PORT_UNREADABLE: u32 = 23;
/// alloc: allocator calls made from inside another (glibc's `memalign` and `realloc(NULL, n)`
/// call `malloc`): the inner call's block is the outer's, tracked once.
pub const ALLOC_NESTED: u32 = 24;
/// alloc: a tracked address came back from the allocator while still live: its free went
/// through a path we do not probe. The old block is retired then, so live bytes stay true.
pub const ALLOC_MISSED_FREES: u32 = 25;
/// why: requests followed to their reply.
pub const WHY_REQUESTS: u32 = 26;
/// why: requests not followed because `WHY_REQUESTS` was full.
pub const WHY_REQUESTS_FULL: u32 = 27;
/// why: finished requests lost because the ring buffer to userspace was full.
pub const WHY_RECORDS_LOST: u32 = 28;
/// memory: write faults of the target on user pages.
pub const MEMORY_FAULTS: u32 = 29;
/// memory: pages counted as growth (a write fault on a page not held already).
pub const MEMORY_GROWN: u32 = 30;
/// memory: held pages released (munmap, madvise, brk down, mremap shrinking, MAP_FIXED).
pub const MEMORY_RELEASED: u32 = 31;
/// memory: growth not counted because `MEMORY_PAGES` or `MEMORY_CHUNKS` was full.
pub const MEMORY_PAGES_FULL: u32 = 32;
/// memory: growth or mapping calls not counted by stack because their map was full.
pub const MEMORY_STACKS_FULL: u32 = 33;
/// memory: releases of ranges too large to follow to their end (past
/// `memory::MAX_RELEASE_STEPS`): the rest of the range kept its pages; or not followed at all
/// (the tail call to `memory::RELEASE_PROGRAM` failed).
pub const MEMORY_RELEASE_CUT: u32 = 34;

/// alloc, `--alloc-duty`: frees of sampled-in addresses never seen allocated: blocks made
/// between allocation windows (or before the attach), ignored.
pub const ALLOC_UNSAMPLED_FREES: u32 = 35;
/// alloc, `--alloc-duty`: calls whose return went unseen because their window closed first
/// (their blocks are not tracked, as if allocated between windows).
pub const ALLOC_WINDOW_CUT: u32 = 36;

pub const COUNT: u32 = 37;

/// Names used in reports and `summary.json`, indexed like the constants.
pub const NAMES: [&str; COUNT as usize] = [
    "cpu_samples",
    "cpu_counts_full",
    "kernel_stack_collision",
    "kernel_stack_missing",
    "user_stack_missing",
    "user_stacks_full",
    "user_stack_truncated",
    "offcpu_switches",
    "offcpu_start_full",
    "offcpu_times_full",
    "futex_waits",
    "futex_maps_full",
    "futex_wakes",
    "alloc_calls",
    "alloc_tracked",
    "alloc_frees",
    "alloc_unknown_frees",
    "alloc_missed_returns",
    "alloc_live_full",
    "alloc_stacks_full",
    "sock_requests",
    "sock_sockets_full",
    "sock_new_full",
    "sock_port_unreadable",
    "alloc_nested",
    "alloc_missed_frees",
    "why_requests",
    "why_requests_full",
    "why_records_lost",
    "memory_faults",
    "memory_grown",
    "memory_released",
    "memory_pages_full",
    "memory_stacks_full",
    "memory_release_cut",
    "alloc_unsampled_frees",
    "alloc_window_cut",
];

/// Counters that count events rather than losses; summaries keep them apart from drops.
pub const EVENTS: [u32; 16] = [
    CPU_SAMPLES,
    WHY_REQUESTS,
    SOCK_REQUESTS,
    OFFCPU_SWITCHES,
    FUTEX_WAITS,
    FUTEX_WAKES,
    ALLOC_CALLS,
    ALLOC_TRACKED,
    ALLOC_FREES,
    // Facts of the target's allocator, not losses: blocks from before the attach being freed,
    // and glibc calling itself.
    ALLOC_UNKNOWN_FREES,
    ALLOC_NESTED,
    // What sampling in time leaves out by design: reported beside the estimate.
    ALLOC_UNSAMPLED_FREES,
    ALLOC_WINDOW_CUT,
    MEMORY_FAULTS,
    MEMORY_GROWN,
    MEMORY_RELEASED,
];
