//! Stacks as the kernel side records them: kernel stacks in a `STACK_TRACE` map (ids), user
//! stacks as frame arrays in a hash map keyed by a hash of their frames, so every unwinder
//! (frame pointers now, `.eh_frame` tables later) feeds the same representation.

use crate::{TASK_COMM_LEN, impl_pod};

/// Frames kept per user stack (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const MAX_USER_FRAMES: usize = 127;

/// `USER_STACKS`: `u64` stack hash → [`UserStack`].
pub const USER_STACKS_MAP: &str = "USER_STACKS";
/// `KERNEL_STACKS`: `BPF_MAP_TYPE_STACK_TRACE`, stack id → kernel frames.
pub const KERNEL_STACKS_MAP: &str = "KERNEL_STACKS";
/// `SCRATCH_STACK`: one [`UserStack`] per CPU to build a stack in (too big for the BPF stack).
pub const SCRATCH_STACK_MAP: &str = "SCRATCH_STACK";

/// `STACK_CACHE`: [`WalkKey`] → [`WalkCache`], a thread's last table walk from one place.
pub const STACK_CACHE_MAP: &str = "STACK_CACHE";

/// `STACKS_EPOCH`: one `u64`, moved on by userspace each time it removes kernel stacks from
/// `KERNEL_STACKS` (the agent's drains), so the kernel side knows a stack id it kept may be gone.
pub const STACKS_EPOCH_MAP: &str = "STACKS_EPOCH";

/// Kernel stack id meaning "no kernel stack" (the sample was taken in user mode).
pub const NO_KERNEL_STACK: i32 = -1;
/// User stack hash meaning "no user stack" (a kernel thread, or the walk failed).
pub const NO_USER_STACK: u64 = 0;

/// Which unwinder produced a user stack.
pub mod unwinder {
    /// Frame pointers only.
    pub const FRAME_POINTER: u8 = 1;
    /// `.eh_frame` tables for every frame.
    pub const DWARF: u8 = 2;
    /// Tables for some frames, frame pointers for others.
    pub const MIXED: u8 = 3;
}

/// Why a table walk stopped.
pub mod stop {
    /// Not a table walk (frame pointers via `bpf_get_stack`).
    pub const NONE: u8 = 0;
    /// The outermost frame: return address undefined or zero. A complete stack.
    pub const END: u8 = 1;
    /// [`super::MAX_USER_FRAMES`] frames walked.
    pub const TRUNCATED: u8 = 2;
    /// A pc in no known mapping (JIT code, a mapping newer than our last refresh).
    pub const NO_MAPPING: u8 = 3;
    /// A pc no row covers, in `dwarf` mode.
    pub const NO_ROW: u8 = 4;
    /// A CFI rule the kernel walk does not evaluate.
    pub const UNSUPPORTED: u8 = 5;
    /// Reading the stack failed (a bad frame pointer, an unmapped page).
    pub const READ_FAULT: u8 = 6;
    /// The stack pointer did not move up: a loop or garbage.
    pub const BAD_FRAME: u8 = 7;
    /// A frame needed rbp after a frame that lost track of it.
    pub const RBP_UNKNOWN: u8 = 8;
    /// The process's mappings exceed what the kernel side holds.
    pub const TOO_MANY_MAPPINGS: u8 = 9;

    pub const NAMES: [&str; 10] = [
        "none",
        "end",
        "truncated",
        "no_mapping",
        "no_row",
        "unsupported_rule",
        "read_fault",
        "bad_frame",
        "rbp_unknown",
        "too_many_mappings",
    ];
}

/// A user stack: return addresses, innermost first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UserStack {
    /// Number of valid entries in `frames`.
    pub len: u32,
    /// One of [`unwinder`].
    pub unwinder: u8,
    /// One of [`stop`].
    pub stop: u8,
    pub _pad: [u8; 2],
    pub frames: [u64; MAX_USER_FRAMES],
}
const _: () = assert!(core::mem::size_of::<UserStack>() == 8 + 8 * MAX_USER_FRAMES);

/// A thread's last table walk: where it started, what it found, and where each return address
/// was read. If the thread is at the same registers and every one of those stack slots still
/// holds the same return address, a new walk would find the same stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WalkCache {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    /// The stack's hash in `USER_STACKS`.
    pub hash: u64,
    /// Frames walked; `slots[i]` is where frame `i + 1`'s return address was read.
    pub len: u32,
    pub _pad: u32,
    pub slots: [u64; MAX_USER_FRAMES],
}
const _: () = assert!(core::mem::size_of::<WalkCache>() == 40 + 8 * MAX_USER_FRAMES);

/// Who was running and where: the key every stack-aggregating map uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub tgid: u32,
    pub tid: u32,
    /// Hash into `USER_STACKS`, or [`NO_USER_STACK`].
    pub user_stack: u64,
    /// Id in `KERNEL_STACKS`, [`NO_KERNEL_STACK`], or another negative errno from the kernel.
    pub kernel_stack: i32,
    pub _pad: u32,
    /// Thread name, NUL-padded.
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<StackKey>() == 40);

/// A thread at one instruction: threads walked from a few places in turn (a lock's wait and
/// its wake, a blocking call and a preemption) keep a walk for each, not one that each evicts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalkKey {
    pub pc: u64,
    pub tid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<WalkKey>() == 16);

impl_pod!(UserStack, StackKey, WalkCache, WalkKey);
