//! `futex`: lock contention from the futex syscalls. Waits are timed per (lock address, waiter
//! stack); wakes are counted per (lock address, waker stack) with the time the lock was held
//! while others waited, so a report shows who waits on a lock and who holds it.

use crate::{hist::Hist, impl_pod};

/// `sys_enter_futex`: classic futex(2), waits and wakes told apart by the op.
pub const ENTER_PROGRAM: &str = "futex_enter";
/// `sys_enter_futex_wait` (6.7+): always a wait.
pub const WAIT_ENTER_PROGRAM: &str = "futex_wait_enter";
/// `sys_enter_futex_waitv` (5.16+): waits on several; the first names the lock.
pub const WAITV_ENTER_PROGRAM: &str = "futex_waitv_enter";
/// `sys_enter_futex_wake` (6.7+): always a wake.
pub const WAKE_ENTER_PROGRAM: &str = "futex_wake_enter";
/// `sys_exit_futex*` of the waiting syscalls.
pub const EXIT_PROGRAM: &str = "futex_exit";

/// `FUTEX_WAITS`: [`FutexKey`] (waiter stack) → [`FutexWait`].
pub const WAITS_MAP: &str = "FUTEX_WAITS";
/// `FUTEX_WAKES`: [`FutexKey`] (waker stack) → [`FutexWake`].
pub const WAKES_MAP: &str = "FUTEX_WAKES";
/// `FUTEX_LOCKS`: [`FutexLockKey`] → [`FutexLock`], each contended lock's waiters now.
pub const LOCKS_MAP: &str = "FUTEX_LOCKS";
/// `FUTEX_WAITERS`: [`FutexWaiter`] → `u64` waits, to count distinct waiting threads.
pub const WAITERS_MAP: &str = "FUTEX_WAITERS";
/// `FUTEX_START`: tid → [`FutexStart`], its wait in progress (LRU: threads come and go).
pub const START_MAP: &str = "FUTEX_START";
/// A zeroed [`FutexWait`] that new entries are copied from (too big for the BPF stack).
pub const ZERO_MAP: &str = "FUTEX_ZERO";
/// [`FutexConfig`] global.
pub const CONFIG_GLOBAL: &str = "FUTEX_CONFIG";

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

/// Fixed at load: where the syscall records keep the futex address and op.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FutexConfig {
    /// sys_enter_futex: `uaddr` and `op`.
    pub futex_uaddr_offset: u32,
    pub futex_op_offset: u32,
    /// sys_enter_futex_wait / sys_enter_futex_wake: `uaddr`.
    pub wait_uaddr_offset: u32,
    pub wake_uaddr_offset: u32,
    /// sys_enter_futex_waitv: `waiters` (user pointer to `struct futex_waitv[]`).
    pub waitv_waiters_offset: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FutexConfig>() == 24);

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
    /// Per wake, from the later of the first waiter's wait and the previous wake to this one.
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

/// A lock's waiters now, and since when its holder has kept one waiting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FutexLock {
    /// Waits begun and not yet ended (changed by atomic adds).
    pub waiters: u64,
    /// When the current holder began keeping a waiter waiting: the first waiter's wait, or
    /// the previous wake; 0 while nobody waits.
    pub since: u64,
}
const _: () = assert!(core::mem::size_of::<FutexLock>() == 16);

/// A thread that waited on a lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FutexWaiter {
    pub uaddr: u64,
    pub tid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FutexWaiter>() == 16);

/// Waits shorter than this are timed and counted per lock but their stacks are not walked: they
/// are `FUTEX_WAIT`s that found the lock changed and returned at once, or a sleep of a few
/// microseconds, and together hold a sliver of the wait time (most of it is in long waits),
/// while a walk costs more than the wait. They are keyed by [`SHORT_WAIT_STACK`].
pub const MIN_WALKED_WAIT_NS: u64 = 10_000;
/// The waiter "stack" of waits under [`MIN_WALKED_WAIT_NS`]. Stack hashes are odd; this is not.
pub const SHORT_WAIT_STACK: u64 = 2;
/// The waker "stack" of wakes after the lock was held under [`MIN_WALKED_WAIT_NS`] while
/// others waited: timed and counted per lock, not walked (on a hot lock most handoffs are).
pub const SHORT_HOLD_STACK: u64 = 6;
/// The waker "stack" of wakes while nobody waited (glibc's unlock wakes whenever the lock was
/// contended once, so most of its wakes on a hot lock wake nobody): not walked.
pub const IDLE_WAKE_STACK: u64 = 4;

/// A thread's futex state, kept while it lives: the wait in progress, if any.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FutexStart {
    /// When the wait in progress began; 0 when the thread is not waiting.
    pub ts: u64,
    pub uaddr: u64,
    /// The waiter's stack, walked when it first blocks (by `offcpu`) or at the wait's end;
    /// `NO_USER_STACK` until then.
    pub user_stack: u64,
    /// The lock this thread was last counted a waiter of in `FUTEX_WAITERS`.
    pub counted_uaddr: u64,
}
const _: () = assert!(core::mem::size_of::<FutexStart>() == 32);

impl_pod!(
    FutexConfig,
    FutexKey,
    FutexWait,
    FutexWake,
    FutexLockKey,
    FutexLock,
    FutexWaiter,
    FutexStart
);
