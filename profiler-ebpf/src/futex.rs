//! `futex`: who waits on which lock, for how long, from where; and who wakes them. Read from
//! the scheduler and the blocked thread's saved syscall registers, so futex calls that neither
//! sleep nor wake anyone (most of them on a hot lock) are not traced at all.

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use profiler_common::{
    futex::{
        FutexConfig, FutexKey, FutexLockKey, FutexStart, FutexWait, FutexWaiter, FutexWake,
        MIN_WALKED_HOLD_NS, SHORT_HOLD_STACK, nr, op,
    },
    hist::{SLOTS, slot_of},
    sched::stays_runnable,
    stats,
};

use crate::shared::{
    EEXIST, add_to, atomic_add, count, is_armed, now_ns, switch_user_stack, target_thread,
    user_stack,
};

#[unsafe(no_mangle)]
static FUTEX_CONFIG: Global<FutexConfig> = Global::new(FutexConfig {
    prev_state_offset: 0,
    next_pid_offset: 0,
    waking_pid_offset: 0,
    _pad: 0,
});

/// 16 KiB values, so allocated as used rather than preallocated for every slot.
#[map]
static FUTEX_WAITS: HashMap<FutexKey, FutexWait> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

#[map]
static FUTEX_WAKES: HashMap<FutexKey, FutexWake> = HashMap::with_max_entries(8192, 0);

#[map]
static FUTEX_ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Per lock, when it was last released to a waiter: the earliest its current holder can have
/// taken it. LRU: locks come and go (per connection, per object) over a long run (`profiler
/// agent`); a lock forgotten only credits its next hold from the woken waiter's wait.
#[map]
static FUTEX_LOCKS: LruHashMap<FutexLockKey, u64> = LruHashMap::with_max_entries(8192, 0);

#[map]
static FUTEX_WAITERS: HashMap<FutexWaiter, u64> = HashMap::with_max_entries(16384, 0);

/// Each thread's wait in progress, kept between waits so a wait updates it in place (an insert
/// and a delete per wait cost more than the rest of the bookkeeping).
#[map]
pub static FUTEX_START: LruHashMap<u32, FutexStart> = LruHashMap::with_max_entries(16384, 0);

#[map]
static FUTEX_ZERO: PerCpuArray<FutexWait> = PerCpuArray::with_max_entries(1, 0);

/// The current task's saved syscall registers: (syscall number, first and second argument).
#[inline(always)]
fn syscall_regs() -> Option<(u64, u64, u64)> {
    // SAFETY: both helpers take the current task; the pointer is only read through
    // bpf_probe_read_kernel, which tolerates any address.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task.cast()) as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        Some((
            bpf_probe_read_kernel(&(*regs).orig_rax).ok()?,
            bpf_probe_read_kernel(&(*regs).rdi).ok()?,
            bpf_probe_read_kernel(&(*regs).rsi).ok()?,
        ))
    }
}

/// The lock the current thread is blocking on, if it blocks inside a futex wait: its saved
/// registers are the syscall's (x86-64: number in `orig_ax`, arguments in di, si).
#[inline(always)]
pub fn blocking_futex() -> Option<u64> {
    let (number, arg0, arg1) = syscall_regs()?;
    match number {
        nr::FUTEX if op::is_wait(arg1 as u32 & op::CMD_MASK) => Some(arg0),
        nr::FUTEX_WAIT => Some(arg0),
        // struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 reserved; }: the first
        // entry's uaddr names the wait.
        // SAFETY: a read of user memory that may fault; the helper reports it.
        nr::FUTEX_WAITV => unsafe { bpf_probe_read_user((arg0 + 8) as *const u64) }.ok(),
        _ => None,
    }
}

/// The lock the current thread wakes a waiter of, if it is inside a futex call that wakes
/// (rather than, say, a signal or a timer waking a waiter).
#[inline(always)]
fn waking_futex() -> Option<u64> {
    match syscall_regs()? {
        (nr::FUTEX, uaddr, op) if op::is_wake(op as u32 & op::CMD_MASK) => Some(uaddr),
        (nr::FUTEX_WAKE, uaddr, _) => Some(uaddr),
        // The first struct futex_waitv's uaddr, as for futex_waitv.
        // SAFETY: a read of user memory that may fault; the helper reports it.
        (nr::FUTEX_REQUEUE, waiters, _) => {
            unsafe { bpf_probe_read_user((waiters + 8) as *const u64) }.ok()
        }
        _ => None,
    }
}

#[inline(always)]
fn begin_wait(tgid: u32, tid: u32, uaddr: u64, now: u64, stack: u64) {
    if let Some(start) = FUTEX_START.get_ptr_mut(tid) {
        // SAFETY: this thread's own entry; its end is read only once `ts` is set, on the
        // switch that runs it again.
        unsafe {
            (*start).uaddr = uaddr;
            (*start).user_stack = stack;
            (*start).tgid = tgid;
            (*start).ts = now;
        }
        return;
    }
    let start = FutexStart {
        ts: now,
        uaddr,
        user_stack: stack,
        counted_uaddr: 0,
        tgid,
        _pad: 0,
    };
    if FUTEX_START.insert(tid, start, BPF_ANY as u64).is_err() {
        count(stats::FUTEX_MAPS_FULL);
    }
}

/// Thread `tid` runs again after blocking in a wait: the wait ends.
#[inline(always)]
fn end_wait(tid: u32, start: &mut FutexStart, now: u64) {
    let waited = now.saturating_sub(start.ts);
    start.ts = 0;
    let (uaddr, tgid) = (start.uaddr, start.tgid);
    count(stats::FUTEX_WAITS);
    let key = FutexKey {
        uaddr,
        user_stack: start.user_stack,
        tgid,
        _pad: 0,
    };
    let Some(entry) = wait_entry(&key) else {
        count(stats::FUTEX_MAPS_FULL);
        return;
    };
    // SAFETY: a live map value; fields are updated atomically or (max) benignly racy.
    unsafe {
        atomic_add(&raw mut (*entry).count, 1);
        atomic_add(&raw mut (*entry).total_ns, waited);
        if waited > (*entry).max_ns {
            (*entry).max_ns = waited;
        }
        let slot = slot_of(waited) & (SLOTS - 1);
        atomic_add(&raw mut (*entry).hist.slots[slot], 1);
    }
    // Distinct waiting threads: a thread is added once per lock it turns to.
    if start.counted_uaddr != uaddr {
        start.counted_uaddr = uaddr;
        let waiter = FutexWaiter {
            uaddr,
            tid,
            _pad: 0,
        };
        add_to(&FUTEX_WAITERS, &waiter, 1, stats::FUTEX_MAPS_FULL);
    }
}

/// When the lock was released to a waiter before `now`; `now` becomes its last release.
#[inline(always)]
fn release(tgid: u32, uaddr: u64, now: u64) -> u64 {
    let key = FutexLockKey {
        uaddr,
        tgid,
        _pad: 0,
    };
    if let Some(released) = FUTEX_LOCKS.get_ptr_mut(key) {
        // SAFETY: a live map value; two wakes of one lock at once race benignly (each credits
        // up to its own wakee's wait).
        unsafe { core::mem::replace(&mut *released, now) }
    } else {
        if FUTEX_LOCKS.insert(key, now, BPF_ANY as u64).is_err() {
            count(stats::FUTEX_MAPS_FULL);
        }
        0
    }
}

/// Target thread `tid` wakes a waiter of `uaddr` who has waited since `waited_since`: it held
/// the lock while that waiter waited, from the later of the wait's start and the lock's
/// previous release to a waiter (before which someone else held it), to now. Neither bound
/// needs to know who else is waiting, so no count of waiters can drift and credit a hold with
/// time the lock sat free.
#[inline(always)]
fn wake(ctx: &TracePointContext, tgid: u32, tid: u32, uaddr: u64, waited_since: u64) {
    count(stats::FUTEX_WAKES);
    let now = now_ns();
    let held = now.saturating_sub(release(tgid, uaddr, now).max(waited_since));
    // A short hold kept its waiters little: counted and timed, not walked (a walk costs more).
    let stack = if held < MIN_WALKED_HOLD_NS {
        SHORT_HOLD_STACK
    } else {
        user_stack(ctx, tid, false)
    };
    let key = FutexKey {
        uaddr,
        user_stack: stack,
        tgid,
        _pad: 0,
    };
    if let Some(entry) = FUTEX_WAKES.get_ptr_mut(key) {
        credit(entry, held);
        return;
    }
    let wake = FutexWake {
        wakes: 1,
        held_ns: held,
    };
    match FUTEX_WAKES.insert(key, wake, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU made it between our lookup and insert.
        Err(e) if e == -EEXIST => {
            if let Some(entry) = FUTEX_WAKES.get_ptr_mut(key) {
                credit(entry, held);
            }
        }
        Err(_) => count(stats::FUTEX_MAPS_FULL),
    }
}

#[inline(always)]
fn credit(entry: *mut FutexWake, held: u64) {
    // SAFETY: a live map value, changed only by atomic adds.
    unsafe {
        atomic_add(&raw mut (*entry).wakes, 1);
        atomic_add(&raw mut (*entry).held_ns, held);
    }
}

/// Runs as the task leaving the CPU: a target thread that sleeps inside a futex wait begins
/// one; a thread switched in that was waiting ends its wait.
#[tracepoint]
pub fn futex_switch(ctx: TracePointContext) -> u32 {
    if !is_armed(&FUTEX_ARMED) {
        return 0;
    }
    let config = FUTEX_CONFIG.load();
    let now = now_ns();
    if let Some((tgid, tid)) = target_thread() {
        // SAFETY: the offset comes from this kernel's sched_switch format.
        let prev_state = unsafe { ctx.read_at::<u64>(config.prev_state_offset as usize) };
        // Preempted inside the call is not a wait; sleeping is.
        if let Ok(prev_state) = prev_state
            && !stays_runnable(prev_state)
            && let Some(uaddr) = blocking_futex()
        {
            let stack = switch_user_stack(&ctx, tid);
            begin_wait(tgid, tid, uaddr, now, stack);
        }
    }
    // SAFETY: the offset comes from this kernel's sched_switch format.
    let Ok(next) = (unsafe { ctx.read_at::<u32>(config.next_pid_offset as usize) }) else {
        return 0;
    };
    // Only target threads have an entry: the lookup is the filter.
    if let Some(start) = FUTEX_START.get_ptr_mut(next) {
        // SAFETY: the thread's entry; it is not running, so only this CPU touches it now.
        let start = unsafe { &mut *start };
        if start.ts != 0 {
            end_wait(next, start, now);
        }
    }
    0
}

/// Runs as the waker: a waiting thread woken by a target thread's futex call.
#[tracepoint]
pub fn futex_waking(ctx: TracePointContext) -> u32 {
    if !is_armed(&FUTEX_ARMED) {
        return 0;
    }
    let Some((tgid, tid)) = target_thread() else {
        return 0;
    };
    let offset = FUTEX_CONFIG.load().waking_pid_offset as usize;
    // SAFETY: the offset comes from this kernel's sched_waking format.
    let Ok(wakee) = (unsafe { ctx.read_at::<u32>(offset) }) else {
        return 0;
    };
    // Any wake inside a futex wake call hands a lock on: a wakee asleep in a wait we timed is
    // credited; any other (not yet asleep, between queueing on the futex and switching out,
    // or asleep since before the attach) still starts the next holder's credit here.
    let Some(uaddr) = waking_futex() else {
        return 0;
    };
    // SAFETY: copied out at once.
    match FUTEX_START.get_ptr(wakee).map(|start| unsafe { *start }) {
        Some(start) if start.ts != 0 && start.tgid == tgid => {
            wake(&ctx, tgid, tid, start.uaddr, start.ts);
        }
        _ => {
            release(tgid, uaddr, now_ns());
        }
    }
    0
}

/// The entry for `key`, created from the zero template if new.
#[inline(always)]
fn wait_entry(key: &FutexKey) -> Option<*mut FutexWait> {
    if let Some(entry) = FUTEX_WAITS.get_ptr_mut(key) {
        return Some(entry);
    }
    let zero = FUTEX_ZERO.get_ptr(0)?;
    // SAFETY: the template is a live map value of the right type; the kernel copies it.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value would copy 16 KiB onto the 512-byte BPF stack"
    )]
    let _ = FUTEX_WAITS.insert(key, unsafe { &*zero }, BPF_NOEXIST as u64);
    FUTEX_WAITS.get_ptr_mut(key)
}
