//! What every probe family uses: the target filter, the stats counters, and stack capture.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_stack, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, StackTrace},
    programs::tracing::StackIdContext,
};
use profiler_common::{
    futex::{nr, op},
    sched,
    stack::{
        MAX_USER_FRAMES, NO_KERNEL_STACK, NO_USER_STACK, UserStack, WalkCache, WalkKey, stop,
        unwinder,
    },
    stats,
    unwind::mode,
};

use crate::unwind;

/// `EEXIST`; map updates return it negated.
pub const EEXIST: i32 = 17;

/// `ENOSYS`: a syscall's saved `ax` holds it negated until the call returns.
const ENOSYS: i64 = 38;

/// The target's tgid, set by the loader.
#[unsafe(no_mangle)]
static TARGET_TGID: Global<u32> = Global::new(0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

#[map]
static USER_STACKS: HashMap<u64, UserStack> = HashMap::with_max_entries(16384, 0);

#[map]
static KERNEL_STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

#[map]
static SCRATCH_STACK: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// The current thread as (tgid, tid) if it belongs to the target.
#[inline(always)]
pub fn target_thread() -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let target = TARGET_TGID.load();
    (target != 0 && tgid == target).then_some((tgid, pid_tgid as u32))
}

/// Whether a family's `*_ARMED` flag is set (an array lookup the verifier inlines).
#[inline(always)]
pub fn is_armed(armed: &Array<u32>) -> bool {
    armed.get(0).is_some_and(|v| *v != 0)
}

/// Bumps a stats counter. Per-CPU, so a plain add suffices.
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer is into this CPU's slot of a live map.
        unsafe { *slot += 1 };
    }
}

/// Adds `by` to a stats counter.
#[inline(always)]
pub fn count_by(stat: u32, by: u64) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer is into this CPU's slot of a live map.
        unsafe { *slot += by };
    }
}

/// This CPU's value of a stats counter.
#[inline(always)]
pub fn this_cpu_count(stat: u32) -> u64 {
    STATS.get(stat).copied().unwrap_or(0)
}

/// Adds `by` to `map[key]`, creating the entry. Returns false, having counted `full_stat`,
/// when the map has no room.
#[inline(always)]
pub fn add_to<K>(map: &HashMap<K, u64>, key: &K, by: u64, full_stat: u32) -> bool {
    if let Some(value) = map.get_ptr_mut(key) {
        atomic_add(value, by);
        return true;
    }
    match map.insert(key, by, BPF_NOEXIST as u64) {
        Ok(()) => true,
        // Another CPU created it between our lookup and insert.
        Err(e) if e == -EEXIST => {
            if let Some(value) = map.get_ptr_mut(key) {
                atomic_add(value, by);
            }
            true
        }
        Err(_) => {
            count(full_stat);
            false
        }
    }
}

/// An atomic add on map memory (BPF_ATOMIC_ADD): core's atomics have no RMW for the BPF target.
#[inline(always)]
pub fn atomic_add(value: *mut u64, by: u64) {
    // SAFETY: callers pass pointers to live, 8-byte aligned map values.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            value, by,
        );
    }
}

/// Records the kernel stack; [`NO_KERNEL_STACK`] when the context was in user mode.
#[inline(always)]
pub fn kernel_stack<C: StackIdContext>(ctx: &C, in_user_mode: bool) -> i32 {
    if in_user_mode {
        return NO_KERNEL_STACK;
    }
    match ctx.get_stackid(&KERNEL_STACKS, 0) {
        Ok(id) => id as i32,
        Err(e) => {
            count(if e == -EEXIST {
                stats::KERNEL_STACK_COLLISION
            } else {
                stats::KERNEL_STACK_MISSING
            });
            e
        }
    }
}

/// This CPU's scratch stack.
#[inline(always)]
pub fn scratch_stack() -> Option<&'static mut UserStack> {
    // SAFETY: this CPU's slot; BPF programs do not migrate while running, and a program does
    // not nest on its own CPU.
    SCRATCH_STACK
        .get_ptr_mut(0)
        .map(|stack| unsafe { &mut *stack })
}

/// Walks the current thread's user stack and stores it in `USER_STACKS`; returns its hash.
///
/// The one seam every probe goes through: frame pointers (`bpf_get_stack`) or the `.eh_frame`
/// tables, per the unwind mode. `at_entry`: the thread sits at a function's first instruction
/// (uprobes), where the return address is still on top of the stack.
#[inline(always)]
pub fn user_stack<C: EbpfContext>(ctx: &C, tid: u32, at_entry: bool) -> u64 {
    let Some(stack) = scratch_stack() else {
        return NO_USER_STACK;
    };
    if unwind::mode() != mode::FRAME_POINTER {
        let Some(regs) = unwind::user_regs() else {
            count(stats::USER_STACK_MISSING);
            return NO_USER_STACK;
        };
        if let Some(hash) = cached_walk(tid, regs) {
            return hash;
        }
        if !unwind::walk(stack, regs, at_entry) {
            count(stats::USER_STACK_MISSING);
            return NO_USER_STACK;
        }
        if stack.stop == stop::TRUNCATED {
            count(stats::USER_STACK_TRUNCATED);
        }
        let hash = store_user_stack(stack);
        // Only a walk the same registers and stack will always repeat: one that stopped at
        // a mapping or row the tables lack yet (a library loaded after the attach) must be
        // walked again once they have it.
        if hash != NO_USER_STACK && matches!(stack.stop, stop::END | stop::TRUNCATED) {
            remember_walk(tid, regs, hash, stack.len);
        }
        return hash;
    }
    let size = core::mem::size_of_val(&stack.frames) as u32;
    // SAFETY: the buffer is `size` bytes of map memory.
    let written = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            stack.frames.as_mut_ptr().cast(),
            size,
            BPF_F_USER_STACK as u64,
        )
    };
    if written <= 0 {
        count(stats::USER_STACK_MISSING);
        return NO_USER_STACK;
    }
    let len = (written as usize / 8).min(MAX_USER_FRAMES);
    if len == MAX_USER_FRAMES {
        count(stats::USER_STACK_TRUNCATED);
    }
    stack.len = len as u32;
    stack.unwinder = unwinder::FRAME_POINTER;
    stack.stop = stop::NONE;
    store_user_stack(stack)
}

/// A thread's last table walk from each place, by (pc, tid). LRU: threads come and go. Keyed
/// by tid alone, a thread that waits for a lock and wakes its waiters in turn missed on every
/// walk (a futex wait's walk cost 1.5 µs on the hot-mutex bench).
#[map]
static STACK_CACHE: LruHashMap<WalkKey, WalkCache> = LruHashMap::with_max_entries(16384, 0);

/// The stack of this thread's last walk, if it would come out the same: same registers, and
/// every return address still in the slot it was read from. Checking costs one read per frame;
/// walking costs two table searches and up to two reads per frame. Threads that block, lock or
/// allocate from the same place over and over hit it.
#[inline(always)]
fn cached_walk(tid: u32, (pc, sp, bp): (u64, u64, u64)) -> Option<u64> {
    let key = WalkKey { pc, tid, _pad: 0 };
    // SAFETY: read only; a concurrent replacement can only make the check fail.
    let cache = unsafe { &*STACK_CACHE.get_ptr(key)? };
    if cache.pc != pc || cache.sp != sp || cache.bp != bp {
        return None;
    }
    // SAFETY: as above.
    let stack = unsafe { &*USER_STACKS.get_ptr(cache.hash)? };
    let len = cache.len as usize;
    for i in 0..MAX_USER_FRAMES - 1 {
        if i + 1 >= len {
            break;
        }
        // SAFETY: a read of user memory that may fault; a fault means a miss.
        let ra = unsafe { bpf_probe_read_user(cache.slots[i] as *const u64) }.ok()?;
        if ra != stack.frames[i + 1] {
            return None;
        }
    }
    Some(cache.hash)
}

/// Keeps this CPU's walk record as the thread's cache entry.
#[inline(always)]
fn remember_walk(tid: u32, (pc, sp, bp): (u64, u64, u64), hash: u64, len: u32) {
    let Some(walk) = unwind::scratch_walk() else {
        return;
    };
    walk.pc = pc;
    walk.sp = sp;
    walk.bp = bp;
    walk.hash = hash;
    walk.len = len;
    // By reference: the record is 1 KiB, far more than the BPF stack holds.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value would copy 1 KiB onto the 512-byte BPF stack"
    )]
    let _ = STACK_CACHE.insert(&WalkKey { pc, tid, _pad: 0 }, &*walk, 0);
}

/// Hashes `stack` and inserts it into `USER_STACKS` unless it is there already.
#[inline(always)]
fn store_user_stack(stack: &UserStack) -> u64 {
    let len = stack.len as usize;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ len as u64;
    for i in 0..MAX_USER_FRAMES {
        if i >= len {
            break;
        }
        hash = mix(hash ^ stack.frames[i]);
    }
    // 0 is the "no stack" sentinel.
    let hash = hash | 1;
    if USER_STACKS.get_ptr(hash).is_none()
        && let Err(e) = USER_STACKS.insert(hash, stack, BPF_NOEXIST as u64)
        && e != -EEXIST
    {
        count(stats::USER_STACKS_FULL);
        return NO_USER_STACK;
    }
    hash
}

/// The finalizer of MurmurHash3: cheap and spreads every input bit.
#[inline(always)]
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The stacks of the last target thread to leave this CPU, so `futex`, `offcpu` and `why`, all
/// on `sched_switch`, walk them once per switch.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SwitchWalk {
    tid: u32,
    /// [`KERNEL_NOT_WALKED`] while only the user stack was asked for.
    kernel: i32,
    /// When the walk ended.
    at: u64,
    user: u64,
}

#[map]
static SWITCH_WALK: PerCpuArray<SwitchWalk> = PerCpuArray::with_max_entries(1, 0);

/// Programs on one tracepoint run back to back, well within this; a thread cannot leave the
/// CPU, come back and leave again in it.
const SAME_SWITCH_NS: u64 = 1000;

/// Not a stack id nor an error `get_stackid` returns.
const KERNEL_NOT_WALKED: i32 = i32::MIN;

/// This switch's walk record for `tid`, if one was made already.
#[inline(always)]
fn this_switch(tid: u32) -> Option<&'static mut SwitchWalk> {
    let memo = SWITCH_WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; programs do not nest on one CPU.
    let memo = unsafe { &mut *memo };
    (memo.tid == tid && now_ns().saturating_sub(memo.at) < SAME_SWITCH_NS).then_some(memo)
}

/// Records this switch's walk for `tid`.
#[inline(always)]
fn remember_switch(tid: u32, user: u64, kernel: i32) {
    if let Some(memo) = SWITCH_WALK.get_ptr_mut(0) {
        // SAFETY: as in `this_switch`.
        unsafe {
            *memo = SwitchWalk {
                tid,
                kernel,
                at: now_ns(),
                user,
            }
        };
    }
}

/// The user and kernel stacks of target thread `tid` leaving the CPU (`prev_state` from
/// `sched_switch`), walked once per switch however many programs ask.
#[inline(always)]
pub fn switch_stacks<C: EbpfContext + StackIdContext>(
    ctx: &C,
    tid: u32,
    prev_state: u64,
) -> (u64, i32) {
    let memo = this_switch(tid);
    if let Some(memo) = &memo
        && memo.kernel != KERNEL_NOT_WALKED
    {
        return (memo.user, memo.kernel);
    }
    let user = match memo {
        Some(memo) => memo.user,
        None => user_stack(ctx, tid, false),
    };
    let kernel = switch_kernel_stack(ctx, prev_state);
    remember_switch(tid, user, kernel);
    (user, kernel)
}

/// `STACKS_EPOCH`: moved on by userspace whenever it removes stacks from `KERNEL_STACKS`.
#[map]
static STACKS_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// A kernel stack id kept for reuse, valid while `STACKS_EPOCH` has not moved since the walk.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelMemo {
    epoch: u64,
    id: i32,
    /// 0 until the first walk.
    walked: u32,
}

/// The kernel stack of a sleep in `futex(FUTEX_WAIT)` and in `futex(FUTEX_WAIT_BITSET)`, in that
/// order. Every such sleep goes through the same calls (the syscall entry, `do_futex`,
/// `futex_wait`, the wait queue, `schedule`), and a stack id names frames by their hash, so the
/// id of the first walk is the id of every later one. On the hot-mutex bench nearly half the
/// target's switches are these sleeps, and walking the kernel stack (ORC) took 2.1-2.7 µs of
/// the 3.7-4.4 µs `offcpu` spent per switch (bpf_stats).
#[map]
static FUTEX_WAIT_KERNEL_STACK: Array<KernelMemo> = Array::with_max_entries(2, 0);

/// The memo slot for the current thread's switch-out, if it goes to sleep (`S`) inside a
/// futex wait call that has not returned yet: the saved `ax` still holds `-ENOSYS`, which
/// tells the wait itself from a sleep after the call (a frozen cgroup's trap, on the way out
/// to a signal, also sleeps in `S` with the call's number still saved). Sleeps of other kinds
/// inside the call (a page fault on the futex word, a mutex) are `D`.
#[inline(always)]
fn futex_wait_slot(prev_state: u64) -> Option<u32> {
    if prev_state != sched::INTERRUPTIBLE {
        return None;
    }
    // SAFETY: both helpers take the current task; the pointer is only read through
    // bpf_probe_read_kernel, which tolerates any address.
    let (number, futex_op, ret) = unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task.cast()) as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        (
            bpf_probe_read_kernel(&(*regs).orig_rax).ok()?,
            bpf_probe_read_kernel(&(*regs).rsi).ok()?,
            bpf_probe_read_kernel(&(*regs).rax).ok()?,
        )
    };
    if number != nr::FUTEX || ret as i64 != -ENOSYS {
        return None;
    }
    match futex_op as u32 & op::CMD_MASK {
        op::WAIT => Some(0),
        op::WAIT_BITSET => Some(1),
        _ => None,
    }
}

/// The kernel stack of the current thread leaving the CPU: walked, or for a futex wait the id
/// its first walk gave, unless userspace has removed stacks since.
#[inline(always)]
fn switch_kernel_stack<C: StackIdContext>(ctx: &C, prev_state: u64) -> i32 {
    let Some(slot) = futex_wait_slot(prev_state) else {
        return kernel_stack(ctx, false);
    };
    // Read before the walk: an id walked after a removal began is stored under the old epoch
    // and walked again, never reused after the removal.
    let epoch = STACKS_EPOCH.get(0).copied().unwrap_or(0);
    let Some(memo) = FUTEX_WAIT_KERNEL_STACK.get_ptr_mut(slot) else {
        return kernel_stack(ctx, false);
    };
    // SAFETY: a live map value. CPUs race only to write the same id (a stack's id is its
    // bucket by hash), so a torn read is harmless.
    let memo = unsafe { &mut *memo };
    if memo.walked != 0 && memo.epoch == epoch {
        return memo.id;
    }
    let id = kernel_stack(ctx, false);
    if id >= 0 {
        *memo = KernelMemo {
            epoch,
            id,
            walked: 1,
        };
    }
    id
}

/// The user stack of target thread `tid` leaving the CPU, shared with [`switch_stacks`].
#[inline(always)]
pub fn switch_user_stack<C: EbpfContext>(ctx: &C, tid: u32) -> u64 {
    if let Some(memo) = this_switch(tid) {
        return memo.user;
    }
    let user = user_stack(ctx, tid, false);
    remember_switch(tid, user, KERNEL_NOT_WALKED);
    user
}

/// Monotonic nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}
