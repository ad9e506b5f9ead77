//! `alloc`: allocations that stay live, by the stack that made them.
//!
//! Entry probes only note the request in `ALLOC_INFLIGHT` (cheap: no stack walk). The return
//! probe decides by a hash of the returned address whether to track it; only then does it walk
//! the stack, from the caller's context, so the function that called the allocator is the
//! leaf. `free` retires tracked addresses and is a hash check for the rest.
//!
//! With `--alloc-duty` the user side attaches the allocating functions' probes only in
//! windows; `free` and `realloc`'s entry stay attached, so a block tracked in a window is
//! retired whenever it goes, and only calls entered in a window are opened.

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user},
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use profiler_common::{
    alloc::{AllocConfig, AllocKey, InFlight, LiveAlloc, StackAllocs, WINDOW_SLOT, kind, sampled},
    stats,
};

use crate::shared::{EEXIST, atomic_add, count, is_armed, now_ns, target_thread, user_stack};

#[unsafe(no_mangle)]
static ALLOC_CONFIG: Global<AllocConfig> = Global::new(AllocConfig {
    sample_every: 1,
    mmap_len_offset: 0,
    mmap_fd_offset: 0,
    mmap_ret_offset: 0,
    munmap_addr_offset: 0,
    windowed: 0,
});

/// Preallocated (inserting into a map that allocates per element costs ~0.6 µs more per
/// malloc), so one entry here: the `alloc` family sizes it at load, and with `alloc` off it
/// costs nothing.
#[map]
static ALLOC_LIVE: HashMap<u64, LiveAlloc> = HashMap::with_max_entries(1, 0);

#[map]
static ALLOC_STACKS: HashMap<AllocKey, StackAllocs> = HashMap::with_max_entries(65536, 0);

#[map]
static ALLOC_INFLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(16384, 0);

/// 1 while the programs account, and the window open now (see
/// `profiler_common::alloc::ARMED_MAP`).
#[map]
static ALLOC_ARMED: Array<u32> = Array::with_max_entries(2, 0);

#[inline(always)]
fn armed() -> bool {
    is_armed(&ALLOC_ARMED)
}

/// The allocation window open now, 0 between windows.
#[inline(always)]
fn window() -> u32 {
    ALLOC_ARMED.get(WINDOW_SLOT).copied().unwrap_or(0)
}

/// The target thread calling, while the programs are armed.
#[inline(always)]
fn accounting_thread() -> Option<(u32, u32)> {
    if !armed() {
        return None;
    }
    target_thread()
}

/// The stack pointer at a uprobe: the function's entry (the probe point leaves `rsp` alone).
#[inline(always)]
fn entry_sp(ctx: &ProbeContext) -> u64 {
    // SAFETY: a uprobe's context is the user registers at the breakpoint.
    unsafe { (*ctx.regs).rsp }
}

/// The return address at a uprobe on a function's entry. The entry programs run before the
/// kernel swaps it for the return probe's trampoline.
#[inline(always)]
fn entry_ret(sp: u64) -> u64 {
    // SAFETY: a read of the target's stack that may fault (then 0: nothing to put back).
    unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
}

/// The stack slot of this thread's open allocator call holding its return address, and the
/// address the return probe hid there: a walk inside the call (a page fault in malloc) would
/// otherwise end at the `[uprobes]` trampoline.
#[inline(always)]
pub fn hidden_return(tid: u32) -> Option<(u64, u64)> {
    // SAFETY: a read of the thread's entry; a racing rewrite only makes the pair not match.
    let call = unsafe { ALLOC_INFLIGHT.get(tid) }?;
    (call.open != 0 && call.ret != 0).then_some((call.sp, call.ret))
}

/// Opens a call of this thread, in a window; `sp` is the stack pointer at its entry.
#[inline(always)]
fn enter(sp: u64, tid: u32, size: u64, ptr: u64, kind: u8) {
    let window = window();
    if window == 0 {
        return;
    }
    count(stats::ALLOC_CALLS);
    if let Some(call) = ALLOC_INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: this thread's own entry; only this thread writes it.
        let call = unsafe { &mut *call };
        if call.open != 0 && call.window != window {
            // Opened in an earlier window whose return probe went before the call returned.
            count(stats::ALLOC_WINDOW_CUT);
        } else if call.open != 0 {
            // At or below the open call's entry: made from inside it, or a tail call reusing
            // its frame (glibc's memalign ends in `return __libc_malloc (n)`). The inner call's
            // block is the outer's, and the outer's return then finds nothing open. Above it,
            // that frame is gone and its return was lost. (A return lost with the next call at
            // the same depth or deeper looks like nesting: losses are counted when provable.)
            count(if sp <= call.sp {
                stats::ALLOC_NESTED
            } else {
                stats::ALLOC_MISSED_RETURNS
            });
        }
        call.size = size;
        call.ptr = ptr;
        call.kind = kind;
        call.open = 1;
        call.window = window;
        call.sp = sp;
        call.ret = if sp == 0 { 0 } else { entry_ret(sp) };
        return;
    }
    let call = InFlight {
        size,
        ptr,
        kind,
        open: 1,
        _pad: [0; 2],
        window,
        sp,
        ret: if sp == 0 { 0 } else { entry_ret(sp) },
    };
    let _ = ALLOC_INFLIGHT.insert(tid, call, BPF_ANY as u64);
}

/// Closes this thread's open call and returns it, if it entered in the window open now: a
/// block is tracked only when its call entered and returned inside one window.
#[inline(always)]
fn close(tid: u32) -> Option<InFlight> {
    let call = ALLOC_INFLIGHT.get_ptr_mut(tid)?;
    // SAFETY: this thread's own entry.
    let call = unsafe { &mut *call };
    if call.open == 0 {
        return None;
    }
    call.open = 0;
    if call.window != window() {
        count(stats::ALLOC_WINDOW_CUT);
        return None;
    }
    Some(*call)
}

/// Whether this thread is inside an allocator call.
#[inline(always)]
fn inside_allocator(tid: u32) -> bool {
    // SAFETY: a read of this thread's own entry.
    unsafe { ALLOC_INFLIGHT.get(tid) }.is_some_and(|call| call.open != 0)
}

/// The call's kind, from the cookie it was attached with (several functions share a program).
#[inline(always)]
fn cookie_kind(ctx: &ProbeContext) -> u8 {
    // SAFETY: the helper reads the cookie of the running attachment.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) as u8 }
}

/// `malloc(size)`, `valloc(size)`.
#[uprobe]
pub fn alloc_enter_size(ctx: ProbeContext) -> u32 {
    if let Some((_, tid)) = accounting_thread() {
        let size: u64 = ctx.arg(0).unwrap_or(0);
        enter(entry_sp(&ctx), tid, size, 0, cookie_kind(&ctx));
    }
    0
}

#[uprobe]
pub fn alloc_enter_calloc(ctx: ProbeContext) -> u32 {
    if let Some((_, tid)) = accounting_thread() {
        let n: u64 = ctx.arg(0).unwrap_or(0);
        let size: u64 = ctx.arg(1).unwrap_or(0);
        // An overflowing request fails (NULL), so the wrapped product is never tracked.
        enter(entry_sp(&ctx), tid, n.wrapping_mul(size), 0, kind::CALLOC);
    }
    0
}

/// `aligned_alloc(alignment, size)`, `memalign(alignment, size)`.
#[uprobe]
pub fn alloc_enter_aligned(ctx: ProbeContext) -> u32 {
    if let Some((_, tid)) = accounting_thread() {
        let size: u64 = ctx.arg(1).unwrap_or(0);
        enter(entry_sp(&ctx), tid, size, 0, cookie_kind(&ctx));
    }
    0
}

/// realloc hands the old block over. It is retired here, before the call: once realloc has
/// freed it inside, another thread's malloc can get the address back and be tracked before
/// this call's return probe runs, which would then retire the new block. (A failed realloc
/// leaves the old block live but untracked; its later free counts as unknown.) Attached
/// between windows too, as `free` is: the new block is then untracked, but the old is retired.
#[uprobe]
pub fn alloc_enter_realloc(ctx: ProbeContext) -> u32 {
    if let Some((_, tid)) = accounting_thread() {
        let old: u64 = ctx.arg(0).unwrap_or(0);
        let size: u64 = ctx.arg(1).unwrap_or(0);
        if old != 0 {
            retire(old, ALLOC_CONFIG.load().sample_every);
        }
        enter(entry_sp(&ctx), tid, size, old, kind::REALLOC);
    }
    0
}

#[uprobe]
pub fn alloc_enter_posix_memalign(ctx: ProbeContext) -> u32 {
    if let Some((_, tid)) = accounting_thread() {
        let memptr: u64 = ctx.arg(0).unwrap_or(0);
        let size: u64 = ctx.arg(2).unwrap_or(0);
        enter(entry_sp(&ctx), tid, size, memptr, kind::POSIX_MEMALIGN);
    }
    0
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some((tgid, tid)) = accounting_thread() else {
        return 0;
    };
    let Some(call) = close(tid) else {
        return 0;
    };
    let ret: u64 = ctx.ret();
    let every = ALLOC_CONFIG.load().sample_every;
    let addr = match call.kind {
        kind::POSIX_MEMALIGN => {
            if ret != 0 {
                return 0;
            }
            // SAFETY: reads the result the call just stored; a fault means no allocation.
            match unsafe { bpf_probe_read_user(call.ptr as *const u64) } {
                Ok(addr) => addr,
                Err(_) => return 0,
            }
        }
        _ => ret,
    };
    if addr != 0 && sampled(addr, every) {
        track(&ctx, (tgid, tid), addr, call.size, call.kind);
    }
    0
}

/// Records a new tracked allocation and bumps its stack's totals.
#[inline(always)]
fn track<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    (tgid, tid): (u32, u32),
    addr: u64,
    size: u64,
    kind: u8,
) {
    count(stats::ALLOC_TRACKED);
    let key = AllocKey {
        user_stack: user_stack(ctx, tid, false),
        tgid,
        kind,
        _pad: [0; 3],
    };
    let now = now_ns();
    let live = LiveAlloc { size, ts: now, key };
    match ALLOC_LIVE.insert(addr, live, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // The allocator never hands out a live block: this address's free went by unseen (a
        // free function we do not probe). Its block is gone; retire it, then track this one.
        Err(e) if e == -EEXIST => {
            count(stats::ALLOC_MISSED_FREES);
            release(addr);
            if ALLOC_LIVE.insert(addr, live, BPF_ANY as u64).is_err() {
                count(stats::ALLOC_LIVE_FULL);
                return;
            }
        }
        Err(_) => {
            count(stats::ALLOC_LIVE_FULL);
            return;
        }
    }
    let Some(entry) = stack_entry(&key) else {
        count(stats::ALLOC_STACKS_FULL);
        return;
    };
    // SAFETY: a live map value; counters move by atomic adds, the timestamp benignly races.
    unsafe {
        atomic_add((&raw mut (*entry).live_bytes).cast(), size);
        atomic_add((&raw mut (*entry).live_count).cast(), 1);
        atomic_add(&raw mut (*entry).total_allocs, 1);
        atomic_add(&raw mut (*entry).total_bytes, size);
        if (*entry).live_since_ns == 0 {
            (*entry).live_since_ns = now;
        }
    }
}

#[inline(always)]
fn stack_entry(key: &AllocKey) -> Option<*mut StackAllocs> {
    if let Some(entry) = ALLOC_STACKS.get_ptr_mut(key) {
        return Some(entry);
    }
    let _ = ALLOC_STACKS.insert(key, StackAllocs::default(), BPF_NOEXIST as u64);
    ALLOC_STACKS.get_ptr_mut(key)
}

/// Forgets a tracked address; counts a free of an address that should have been tracked but
/// was not seen: allocated before the attach, or with `--alloc-duty` between windows too.
#[inline(always)]
fn retire(addr: u64, every: u32) {
    if !sampled(addr, every) {
        return;
    }
    if release(addr) {
        count(stats::ALLOC_FREES);
    } else if ALLOC_CONFIG.load().windowed != 0 {
        count(stats::ALLOC_UNSAMPLED_FREES);
    } else {
        count(stats::ALLOC_UNKNOWN_FREES);
    }
}

/// Removes a tracked address and takes its block off its stack's live figures; false when
/// the address was not tracked.
#[inline(always)]
fn release(addr: u64) -> bool {
    // SAFETY: copied out before the entry is removed.
    let Some(live) = (unsafe { ALLOC_LIVE.get(addr) }).copied() else {
        return false;
    };
    let _ = ALLOC_LIVE.remove(addr);
    // Created when missing: the agent drains this map every second, and a block allocated
    // before the drain is freed in the next one as a negative figure.
    let Some(entry) = stack_entry(&live.key) else {
        count(stats::ALLOC_STACKS_FULL);
        return true;
    };
    // SAFETY: a live map value; two's complement adds subtract.
    unsafe {
        atomic_add(
            (&raw mut (*entry).live_bytes).cast(),
            live.size.wrapping_neg(),
        );
        atomic_add((&raw mut (*entry).live_count).cast(), u64::MAX);
        if (*entry).live_count == 0 {
            (*entry).live_since_ns = 0;
        }
    }
    true
}

#[uprobe]
pub fn alloc_free(ctx: ProbeContext) -> u32 {
    if accounting_thread().is_none() {
        return 0;
    }
    let addr: u64 = ctx.arg(0).unwrap_or(0);
    if addr != 0 {
        retire(addr, ALLOC_CONFIG.load().sample_every);
    }
    0
}

/// mmap calls made by the allocator itself (inside a tracked call) are its business: the
/// allocation it returns is what counts.
#[tracepoint]
pub fn alloc_mmap_enter(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = accounting_thread() else {
        return 0;
    };
    if inside_allocator(tid) {
        return 0;
    }
    let config = ALLOC_CONFIG.load();
    // SAFETY: offsets from this kernel's sys_enter_mmap format.
    let (Ok(len), Ok(fd)) = (unsafe {
        (
            ctx.read_at::<u64>(config.mmap_len_offset as usize),
            ctx.read_at::<u64>(config.mmap_fd_offset as usize),
        )
    }) else {
        return 0;
    };
    // Anonymous memory only: a mapped file is not an allocation.
    if fd as i64 != -1 {
        return 0;
    }
    // A syscall has no frame for a call to nest in: any entry while it is open means its exit
    // was lost.
    enter(0, tid, len, 0, kind::MMAP);
    0
}

#[tracepoint]
pub fn alloc_mmap_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = accounting_thread() else {
        return 0;
    };
    // SAFETY: a read of this thread's own entry.
    if !unsafe { ALLOC_INFLIGHT.get(tid) }.is_some_and(|c| c.open != 0 && c.kind == kind::MMAP) {
        return 0;
    }
    let Some(call) = close(tid) else {
        return 0;
    };
    let offset = ALLOC_CONFIG.load().mmap_ret_offset as usize;
    // SAFETY: the offset comes from this kernel's sys_exit_mmap format.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(offset) }) else {
        return 0;
    };
    // Errors come back as small negative numbers.
    if ret > 0 && sampled(ret as u64, ALLOC_CONFIG.load().sample_every) {
        track(&ctx, (tgid, tid), ret as u64, call.size, kind::MMAP);
    }
    0
}

#[tracepoint]
pub fn alloc_munmap(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = accounting_thread() else {
        return 0;
    };
    if inside_allocator(tid) {
        return 0;
    }
    let config = ALLOC_CONFIG.load();
    // SAFETY: the offset comes from this kernel's sys_enter_munmap format.
    if let Ok(addr) = unsafe { ctx.read_at::<u64>(config.munmap_addr_offset as usize) } {
        // Only whole mappings we saw made are retired; partial unmaps keep their record.
        if ALLOC_LIVE.get_ptr(addr).is_some() {
            retire(addr, config.sample_every);
        }
    }
    0
}
