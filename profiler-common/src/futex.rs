//! `futex`: lock contention from the scheduler. A target thread that blocks inside a futex wait
//! (its saved syscall registers say which lock) is timed until it is switched back in, per
//! (lock address, waiter stack); the target thread whose futex call wakes it is counted per
//! (lock address, waker stack) with the time the lock was held while others waited, so a
//! report shows who waits on a lock and who holds it. A futex call that does not sleep or wake
//! anyone costs nothing: no syscall is traced.

use crate::{hist::Hist, impl_pod};

/// `sched:sched_switch`: a target thread that blocks inside a futex wait begins a wait; one
/// switched back in ends it.
pub const SWITCH_PROGRAM: &str = "futex_switch";
/// `sched:sched_waking`: a waiter woken by a target thread's futex call; the waker held the lock.
pub const WAKING_PROGRAM: &str = "futex_waking";

/// `FUTEX_WAITS`: [`FutexKey`] (waiter stack) → [`FutexWait`].
pub const WAITS_MAP: &str = "FUTEX_WAITS";
/// `FUTEX_WAKES`: [`FutexKey`] (waker stack) → [`FutexWake`].
pub const WAKES_MAP: &str = "FUTEX_WAKES";
/// `FUTEX_LOCKS`: [`FutexLockKey`] → `u64`, when the lock was last released to a waiter (ns).
pub const LOCKS_MAP: &str = "FUTEX_LOCKS";
/// `FUTEX_WAITERS`: [`FutexWaiter`] → `u64` waits, to count distinct waiting threads.
pub const WAITERS_MAP: &str = "FUTEX_WAITERS";
/// `FUTEX_START`: tid → [`FutexStart`], its wait in progress (LRU: threads come and go).
pub const START_MAP: &str = "FUTEX_START";
/// A zeroed [`FutexWait`] that new entries are copied from (too big for the BPF stack).
pub const ZERO_MAP: &str = "FUTEX_ZERO";
/// `FUTEX_ARMED`: one `u32`, 1 while the program counts: set with every other family's, once all are attached, so no family counts the stalls of another's attach (uprobe registration takes the target's mmap lock).
pub const ARMED_MAP: &str = "FUTEX_ARMED";
/// [`FutexConfig`] global.
pub const CONFIG_GLOBAL: &str = "FUTEX_CONFIG";

/// x86-64 numbers of the futex syscalls, as a blocked thread's saved `orig_ax` holds them (the
/// unwinder is x86-64 only too).
pub mod nr {
    pub const FUTEX: u64 = 202;
    pub const FUTEX_WAITV: u64 = 449;
    pub const FUTEX_WAKE: u64 = 454;
    pub const FUTEX_WAIT: u64 = 455;
    pub const FUTEX_REQUEUE: u64 = 456;
}

/// futex(2) operations (`op & FUTEX_CMD_MASK`).
pub mod op {
    pub const CMD_MASK: u32 = !(128 | 256);
    pub const WAIT: u32 = 0;
    pub const WAKE: u32 = 1;
    pub const REQUEUE: u32 = 3;
    pub const CMP_REQUEUE: u32 = 4;
    pub const WAKE_OP: u32 = 5;
    pub const LOCK_PI: u32 = 6;
    pub const UNLOCK_PI: u32 = 7;
    pub const WAIT_BITSET: u32 = 9;
    pub const WAKE_BITSET: u32 = 10;
    pub const WAIT_REQUEUE_PI: u32 = 11;
    pub const CMP_REQUEUE_PI: u32 = 12;
    pub const LOCK_PI2: u32 = 13;

    /// Operations that put the caller to sleep on the futex.
    #[inline(always)]
    pub const fn is_wait(cmd: u32) -> bool {
        matches!(
            cmd,
            WAIT | WAIT_BITSET | LOCK_PI | LOCK_PI2 | WAIT_REQUEUE_PI
        )
    }

    /// Operations that wake (or hand over to) waiters.
    #[inline(always)]
    pub const fn is_wake(cmd: u32) -> bool {
        matches!(
            cmd,
            WAKE | WAKE_BITSET | WAKE_OP | UNLOCK_PI | REQUEUE | CMP_REQUEUE | CMP_REQUEUE_PI
        )
    }
}

/// Fixed at load: where the sched records keep their fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FutexConfig {
    /// sched_switch: `prev_state`, `next_pid`.
    pub prev_state_offset: u32,
    pub next_pid_offset: u32,
    /// sched_waking: `pid`.
    pub waking_pid_offset: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FutexConfig>() == 16);

/// A lock and a stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FutexKey {
    pub uaddr: u64,
    pub user_stack: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FutexKey>() == 24);

/// Waits on one lock from one stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FutexWait {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub _pad: u64,
    pub hist: Hist,
}

/// Wakes of one lock from one stack, and how long the lock was held while others waited before
/// each: a lock's holder is who kept its waiters waiting longest, not who released it most
/// often (a background job holding a lock 15 ms wakes it ten times a second; a request path
/// holding it for microseconds, thousands of times).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FutexWake {
    pub wakes: u64,
    /// Per wake, from the later of the woken waiter's wait and the lock's previous release to a
    /// waiter, to this wake.
    pub held_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FutexWake>() == 16);

/// A lock of the target (futexes of several processes may share an address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FutexLockKey {
    pub uaddr: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FutexLockKey>() == 16);

/// A thread that waited on a lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FutexWaiter {
    pub uaddr: u64,
    pub tid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FutexWaiter>() == 16);

/// Wakes after the lock was held less than this while others waited are timed and counted per
/// lock, but the waker's stack is not walked (on a hot lock most handoffs are that short, and a
/// walk costs more than the hold). They are keyed by [`SHORT_HOLD_STACK`].
pub const MIN_WALKED_HOLD_NS: u64 = 10_000;
/// The waker "stack" of wakes after holds under [`MIN_WALKED_HOLD_NS`]. Stack hashes are odd;
/// this is not.
pub const SHORT_HOLD_STACK: u64 = 6;

/// A thread's futex state, kept while it lives: the wait in progress, if any.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FutexStart {
    /// When the thread blocked in the wait in progress; 0 when it is not waiting.
    pub ts: u64,
    pub uaddr: u64,
    /// The waiter's stack, walked as it blocked.
    pub user_stack: u64,
    /// The lock this thread was last counted a waiter of in `FUTEX_WAITERS`.
    pub counted_uaddr: u64,
    /// Its process: the wait ends as it is switched back in, while another task runs.
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FutexStart>() == 40);

impl_pod!(
    FutexConfig,
    FutexKey,
    FutexWait,
    FutexWake,
    FutexLockKey,
    FutexWaiter,
    FutexStart
);
