//! `futex`: who waits on which lock, for how long, from where; and who wakes them.

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_probe_read_user,
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use profiler_common::{
    futex::{
        FutexConfig, FutexKey, FutexLock, FutexLockKey, FutexStart, FutexWait, FutexWaiter,
        FutexWake, IDLE_WAKE_STACK, MIN_WALKED_WAIT_NS, SHORT_HOLD_STACK, SHORT_WAIT_STACK, op,
    },
    hist::{SLOTS, slot_of},
    stack::NO_USER_STACK,
    stats,
};

use crate::shared::{EEXIST, add_to, atomic_add, count, now_ns, target_thread, user_stack};

#[unsafe(no_mangle)]
static FUTEX_CONFIG: Global<FutexConfig> = Global::new(FutexConfig {
    futex_uaddr_offset: 0,
    futex_op_offset: 0,
    wait_uaddr_offset: 0,
    wake_uaddr_offset: 0,
    waitv_waiters_offset: 0,
    _pad: 0,
});

/// 16 KiB values, so allocated as used rather than preallocated for every slot.
#[map]
static FUTEX_WAITS: HashMap<FutexKey, FutexWait> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

#[map]
static FUTEX_WAKES: HashMap<FutexKey, FutexWake> = HashMap::with_max_entries(8192, 0);

/// Per lock, who is waiting since when. LRU: locks come and go (per connection, per object)
/// over a long run (`profiler agent`), and the least recently used have nobody waiting.
#[map]
static FUTEX_LOCKS: LruHashMap<FutexLockKey, FutexLock> = LruHashMap::with_max_entries(8192, 0);

#[map]
static FUTEX_WAITERS: HashMap<FutexWaiter, u64> = HashMap::with_max_entries(16384, 0);

/// Each thread's wait in progress, kept between waits so a wait updates it in place (an insert
/// and a delete per wait cost more than the rest of the bookkeeping). `offcpu` reads it too:
/// a thread blocking in a wait has its stack walked once, for both.
#[map]
pub static FUTEX_START: LruHashMap<u32, FutexStart> = LruHashMap::with_max_entries(16384, 0);

#[map]
static FUTEX_ZERO: PerCpuArray<FutexWait> = PerCpuArray::with_max_entries(1, 0);

/// The state of the lock at `uaddr`, made if new.
#[inline(always)]
fn lock_state(tgid: u32, uaddr: u64) -> Option<*mut FutexLock> {
    let key = FutexLockKey {
        uaddr,
        tgid,
        _pad: 0,
    };
    if let Some(lock) = FUTEX_LOCKS.get_ptr_mut(key) {
        return Some(lock);
    }
    match FUTEX_LOCKS.insert(key, FutexLock::default(), BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU made it first.
        Err(e) if e == -EEXIST => {}
        Err(_) => {
            count(stats::FUTEX_MAPS_FULL);
            return None;
        }
    }
    FUTEX_LOCKS.get_ptr_mut(key)
}

#[inline(always)]
fn begin_wait(tgid: u32, tid: u32, uaddr: u64) {
    let now = now_ns();
    if let Some(lock) = lock_state(tgid, uaddr) {
        // SAFETY: a live map value. The count moves atomically; `since` is 0 while nobody
        // waits (BPF for generic CPUs has no fetch-and-add to tell the first waiter), so a
        // race can only lose a little held time, never count time nobody waited.
        unsafe {
            atomic_add(&raw mut (*lock).waiters, 1);
            if (*lock).since == 0 {
                (*lock).since = now;
            }
        }
    }
    // The stack is walked at the wait's end, when it lasted long enough to matter: the user
    // registers are the same then.
    if let Some(start) = FUTEX_START.get_ptr_mut(tid) {
        // SAFETY: this thread's own entry.
        unsafe {
            (*start).ts = now;
            (*start).uaddr = uaddr;
            (*start).user_stack = NO_USER_STACK;
        }
        return;
    }
    let start = FutexStart {
        ts: now,
        uaddr,
        user_stack: NO_USER_STACK,
        counted_uaddr: 0,
    };
    if FUTEX_START.insert(tid, start, BPF_ANY as u64).is_err() {
        count(stats::FUTEX_MAPS_FULL);
    }
}

#[inline(always)]
fn wake(ctx: &TracePointContext, tgid: u32, tid: u32, uaddr: u64) {
    count(stats::FUTEX_WAKES);
    let now = now_ns();
    let key = FutexLockKey {
        uaddr,
        tgid,
        _pad: 0,
    };
    // The waker held the lock while someone waited from `since` to now; whoever runs next
    // holds it from now.
    let held = match FUTEX_LOCKS.get_ptr_mut(key) {
        // SAFETY: a live map value; `since` races benignly between two wakes of one lock.
        Some(lock) => unsafe {
            let since = (*lock).since;
            if since == 0 {
                0
            } else {
                (*lock).since = now;
                now.saturating_sub(since)
            }
        },
        None => 0,
    };
    // A wake while nobody waited released nothing anyone needed, and one after a short hold
    // kept its waiters little: counted and timed, not walked (a walk costs more than either).
    let stack = if held == 0 {
        IDLE_WAKE_STACK
    } else if held < MIN_WALKED_WAIT_NS {
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

#[tracepoint]
pub fn futex_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target_thread() else {
        return 0;
    };
    let config = FUTEX_CONFIG.load();
    // SAFETY: offsets come from this kernel's sys_enter_futex format.
    let (Ok(uaddr), Ok(op)) = (unsafe {
        (
            ctx.read_at::<u64>(config.futex_uaddr_offset as usize),
            ctx.read_at::<u64>(config.futex_op_offset as usize),
        )
    }) else {
        return 0;
    };
    let cmd = op as u32 & op::CMD_MASK;
    if op::is_wait(cmd) {
        begin_wait(tgid, tid, uaddr);
    } else if op::is_wake(cmd) {
        wake(&ctx, tgid, tid, uaddr);
    }
    0
}

#[tracepoint]
pub fn futex_wait_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target_thread() else {
        return 0;
    };
    let offset = FUTEX_CONFIG.load().wait_uaddr_offset as usize;
    // SAFETY: the offset comes from this kernel's sys_enter_futex_wait format.
    if let Ok(uaddr) = unsafe { ctx.read_at::<u64>(offset) } {
        begin_wait(tgid, tid, uaddr);
    }
    0
}

#[tracepoint]
pub fn futex_waitv_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target_thread() else {
        return 0;
    };
    let offset = FUTEX_CONFIG.load().waitv_waiters_offset as usize;
    // SAFETY: the offset comes from this kernel's sys_enter_futex_waitv format.
    let Ok(waiters) = (unsafe { ctx.read_at::<u64>(offset) }) else {
        return 0;
    };
    // struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 reserved; }: the first entry's
    // uaddr names the wait.
    // SAFETY: a read of user memory that may fault; the helper reports it.
    if let Ok(uaddr) = unsafe { bpf_probe_read_user((waiters + 8) as *const u64) } {
        begin_wait(tgid, tid, uaddr);
    }
    0
}

#[tracepoint]
pub fn futex_wake_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target_thread() else {
        return 0;
    };
    let offset = FUTEX_CONFIG.load().wake_uaddr_offset as usize;
    // SAFETY: the offset comes from this kernel's sys_enter_futex_wake format.
    if let Ok(uaddr) = unsafe { ctx.read_at::<u64>(offset) } {
        wake(&ctx, tgid, tid, uaddr);
    }
    0
}

#[tracepoint]
pub fn futex_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target_thread() else {
        return 0;
    };
    let Some(start) = FUTEX_START.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: this thread's own entry.
    let start = unsafe { &mut *start };
    // Not waiting: a wake's exit, or a wait that began before the attach.
    if start.ts == 0 {
        return 0;
    }
    let now = now_ns();
    let waited = now.saturating_sub(start.ts);
    start.ts = 0;
    let uaddr = start.uaddr;
    let lock = FutexLockKey {
        uaddr,
        tgid,
        _pad: 0,
    };
    if let Some(lock) = FUTEX_LOCKS.get_ptr_mut(lock) {
        // SAFETY: a live map value; every wait that began counted itself in. The last
        // waiter out: nobody is kept waiting any more.
        unsafe {
            // A lock evicted and made again while this wait ran never counted it in: no
            // decrement below zero.
            if (*lock).waiters > 0 {
                atomic_add(&raw mut (*lock).waiters, u64::MAX);
            }
            if (*lock).waiters == 0 {
                (*lock).since = 0;
            }
        }
    }
    count(stats::FUTEX_WAITS);
    let stack = if start.user_stack != NO_USER_STACK {
        start.user_stack
    } else if waited >= MIN_WALKED_WAIT_NS {
        user_stack(&ctx, tid, false)
    } else {
        SHORT_WAIT_STACK
    };
    let key = FutexKey {
        uaddr,
        user_stack: stack,
        tgid,
        _pad: 0,
    };
    let Some(entry) = wait_entry(&key) else {
        count(stats::FUTEX_MAPS_FULL);
        return 0;
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
