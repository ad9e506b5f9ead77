//! `memory`: growth by the stack that faulted the pages in, and releases by range (see
//! `profiler_common::memory` for the rule). Nothing here runs per allocator call: a fault
//! costs a lookup, and a stack walk only when it grows a page not held already; a mapping
//! call costs a lookup per chunk of its range plus one per page held in it.

use core::ffi::c_void;

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_loop,
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::TracePointContext,
};
use profiler_common::{
    memory::{
        CHUNK_PAGES, CHUNK_PAGES_SHIFT, Change, ChangeKey, Chunk, FAULT_WRITE, Growth, GrowthKey,
        MAP_ANONYMOUS, MAP_FIXED, MAX_RELEASE_STEPS, MemoryConfig, NO_STACK_OWNER, Pending, Remap,
        USER_ADDRESS_END, fault, madvise_releases, op,
    },
    stack::NO_USER_STACK,
    stats,
};

use crate::shared::{
    atomic_add, count, count_by, is_armed, target_thread, this_cpu_count, user_stack,
};

#[unsafe(no_mangle)]
static MEMORY_CONFIG: Global<MemoryConfig> = Global::new(MemoryConfig {
    fault_address_offset: 0,
    fault_error_offset: 0,
    brk_ret_offset: 0,
    mmap_addr_offset: 0,
    mmap_len_offset: 0,
    mmap_flags_offset: 0,
    mmap_fd_offset: 0,
    munmap_addr_offset: 0,
    munmap_len_offset: 0,
    madvise_start_offset: 0,
    madvise_len_offset: 0,
    madvise_behavior_offset: 0,
    mremap_addr_offset: 0,
    mremap_old_len_offset: 0,
    mremap_new_len_offset: 0,
    mremap_ret_offset: 0,
    page_shift: 12,
    _pad: 0,
});

/// Allocated per entry (4 KiB each): a target that grows little holds little here. Sized by
/// the family.
#[map]
static MEMORY_CHUNKS: HashMap<u64, Chunk> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Never written: the zeros a new chunk starts from (4 KiB is far more than the BPF stack).
#[map]
static MEMORY_ZERO: Array<Chunk> = Array::with_max_entries(1, 0);

#[map]
static MEMORY_GROWTH: HashMap<GrowthKey, Growth> = HashMap::with_max_entries(32768, 0);

#[map]
static MEMORY_CHANGES: HashMap<ChangeKey, Change> = HashMap::with_max_entries(16384, 0);

#[map]
static MEMORY_BRK: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static MEMORY_REMAPS: HashMap<u32, Remap> = HashMap::with_max_entries(4096, 0);

#[map]
static MEMORY_ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Slot 0: `memory_release` (see `profiler_common::memory::RELEASE_PROGRAM`).
#[map]
static MEMORY_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// `memory_release`'s arguments: a tail call stays on the CPU, so one slot per CPU.
#[map]
static MEMORY_PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// The target thread running, while the programs are armed.
#[inline(always)]
fn accounting_thread() -> Option<(u32, u32)> {
    if !is_armed(&MEMORY_ARMED) {
        return None;
    }
    target_thread()
}

#[tracepoint]
pub fn memory_fault_user(ctx: TracePointContext) -> u32 {
    on_fault(&ctx, fault::USER);
    0
}

#[tracepoint]
pub fn memory_fault_kernel(ctx: TracePointContext) -> u32 {
    on_fault(&ctx, fault::KERNEL);
    0
}

#[inline(always)]
fn on_fault(ctx: &TracePointContext, kind: u8) {
    let Some((tgid, tid)) = accounting_thread() else {
        return;
    };
    let config = MEMORY_CONFIG.load();
    // SAFETY: offsets from this kernel's exceptions:page_fault_* format.
    let (Ok(address), Ok(error)) = (unsafe {
        (
            ctx.read_at::<u64>(config.fault_address_offset as usize),
            ctx.read_at::<u64>(config.fault_error_offset as usize),
        )
    }) else {
        return;
    };
    // Reads map the zero page (or file pages) and grow nothing; faults above user space are
    // the kernel's own memory.
    if error & FAULT_WRITE == 0 || address >= USER_ADDRESS_END {
        return;
    }
    count(stats::MEMORY_FAULTS);
    let page = address >> config.page_shift;
    let Some(chunk) = chunk_for(page >> CHUNK_PAGES_SHIFT) else {
        count(stats::MEMORY_PAGES_FULL);
        return;
    };
    let slot = (page as usize) & (CHUNK_PAGES - 1);
    // SAFETY: a live map value; the index is masked into the array.
    let owner = unsafe { &mut (*chunk).owners[slot] };
    // Held already: swapped back in, or copied after a fork. Checked before the stack walk,
    // which is the expensive part. (Two threads faulting one page at the same instant may
    // both count it: no compare-and-swap here.)
    if *owner != 0 {
        return;
    }
    let stack = user_stack(ctx, tid, false);
    *owner = if stack == NO_USER_STACK {
        NO_STACK_OWNER
    } else {
        stack
    };
    // SAFETY: as above; counters move by atomic adds.
    unsafe { atomic_add(&raw mut (*chunk).held, 1) };
    count(stats::MEMORY_GROWN);
    let key = GrowthKey {
        user_stack: stack,
        tgid,
        _pad: 0,
    };
    let Some(entry) = growth_entry(&key) else {
        count(stats::MEMORY_STACKS_FULL);
        return;
    };
    // SAFETY: a live map value, changed only by atomic adds.
    unsafe {
        atomic_add(&raw mut (*entry).pages, 1);
        atomic_add((&raw mut (*entry).held_pages).cast(), 1);
        if kind == fault::KERNEL {
            atomic_add(&raw mut (*entry).kernel_pages, 1);
        }
    }
}

/// The chunk holding page numbers `index * CHUNK_PAGES ..`, created empty if need be.
#[inline(always)]
fn chunk_for(index: u64) -> Option<*mut Chunk> {
    if let Some(chunk) = MEMORY_CHUNKS.get_ptr_mut(index) {
        return Some(chunk);
    }
    let zero = MEMORY_ZERO.get_ptr(0)?;
    // SAFETY: the zero chunk is never written. Another CPU may insert it first; either way
    // the lookup below finds it.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value would copy the chunk onto the 512-byte BPF stack"
    )]
    let _ = MEMORY_CHUNKS.insert(index, unsafe { &*zero }, BPF_NOEXIST as u64);
    MEMORY_CHUNKS.get_ptr_mut(index)
}

#[inline(always)]
fn growth_entry(key: &GrowthKey) -> Option<*mut Growth> {
    if let Some(entry) = MEMORY_GROWTH.get_ptr_mut(key) {
        return Some(entry);
    }
    let _ = MEMORY_GROWTH.insert(key, Growth::default(), BPF_NOEXIST as u64);
    MEMORY_GROWTH.get_ptr_mut(key)
}

/// A release (or move) in progress, for `release_step`. Page numbers, not addresses.
#[repr(C)]
struct Release {
    cursor: u64,
    end: u64,
    /// mremap moving the mapping: added to each held page's number (0: a release).
    move_by: u64,
    tgid: u64,
    /// The run of pages released one after another from one stack, given back to that stack
    /// in one update when it ends. Its length comes from loop indices: a count kept in this
    /// context would be known exactly to the verifier, which then sees a new state every
    /// step and rejects the loop.
    run_owner: u64,
    run_first: u64,
    run_last: u64,
}

/// Gives the current run's pages back to the stack that grew them.
#[inline(always)]
fn end_run(r: &mut Release) {
    if r.run_owner == 0 {
        return;
    }
    let pages = r.run_last.wrapping_sub(r.run_first).wrapping_add(1);
    let key = GrowthKey {
        user_stack: if r.run_owner == NO_STACK_OWNER {
            NO_USER_STACK
        } else {
            r.run_owner
        },
        tgid: r.tgid as u32,
        _pad: 0,
    };
    // Created when missing: the agent drains this map every second, and the release of
    // pages grown before the drain belongs in the next one as a negative figure.
    match growth_entry(&key) {
        // SAFETY: a live map value; two's complement adds subtract.
        Some(entry) => unsafe {
            atomic_add((&raw mut (*entry).held_pages).cast(), pages.wrapping_neg())
        },
        None => count(stats::MEMORY_STACKS_FULL),
    }
    count_by(stats::MEMORY_RELEASED, pages);
    r.run_owner = 0;
}

/// One step: skips a chunk that holds no page, or looks at one page.
#[inline(never)]
extern "C" fn release_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the context `release` gave it.
    let r = unsafe { &mut *ctx.cast::<Release>() };
    if r.cursor >= r.end {
        return 1;
    }
    let chunk_index = r.cursor >> CHUNK_PAGES_SHIFT;
    let chunk = MEMORY_CHUNKS.get_ptr_mut(chunk_index);
    // SAFETY: a read of a live map value's counter.
    let Some(chunk) = chunk.filter(|c| unsafe { (**c).held } != 0) else {
        end_run(r);
        r.cursor = (chunk_index + 1) << CHUNK_PAGES_SHIFT;
        return 0;
    };
    let page = r.cursor;
    r.cursor += 1;
    // SAFETY: a live map value; the index is masked into the array.
    let slot = unsafe { &mut (*chunk).owners[(page as usize) & (CHUNK_PAGES - 1)] };
    let owner = *slot;
    if owner == 0 {
        end_run(r);
        return 0;
    }
    *slot = 0;
    // SAFETY: as above.
    unsafe { atomic_add(&raw mut (*chunk).held, u64::MAX) };
    if r.move_by != 0 {
        let to = page.wrapping_add(r.move_by);
        if let Some(dest) = chunk_for(to >> CHUNK_PAGES_SHIFT) {
            // SAFETY: as above.
            unsafe {
                (*dest).owners[(to as usize) & (CHUNK_PAGES - 1)] = owner;
                atomic_add(&raw mut (*dest).held, 1);
            }
            end_run(r);
            return 0;
        }
        count(stats::MEMORY_PAGES_FULL);
    }
    if owner != r.run_owner {
        end_run(r);
        r.run_owner = owner;
        r.run_first = index;
    }
    r.run_last = index;
    0
}

/// Releases every held page in `[start, start + len)`, or with `move_by` (bytes) moves them by
/// that much; returns the pages released.
#[inline(always)]
fn release(start: u64, len: u64, move_by: u64) -> u64 {
    let shift = MEMORY_CONFIG.load().page_shift;
    let end = start.saturating_add(len).min(USER_ADDRESS_END);
    let mut r = Release {
        cursor: start >> shift,
        end: (end + (1 << shift) - 1) >> shift,
        // A move to a lower address wraps: shifted arithmetically, it stays a negative step.
        move_by: ((move_by as i64) >> shift) as u64,
        tgid: u64::from(target_thread().map_or(0, |(tgid, _)| tgid)),
        run_owner: 0,
        run_first: 0,
        run_last: 0,
    };
    if r.end <= r.cursor {
        return 0;
    }
    // This CPU's count before and after is what this call released: nothing else runs on
    // the CPU meanwhile (programs do not nest, and do not migrate).
    let before = this_cpu_count(stats::MEMORY_RELEASED);
    // SAFETY: `release_step` is a BPF subprogram with bpf_loop's callback signature; the
    // context is our stack frame, alive for the whole call.
    unsafe {
        bpf_loop(
            MAX_RELEASE_STEPS,
            release_step as *mut c_void,
            (&mut r as *mut Release).cast(),
            0,
        );
    }
    end_run(&mut r);
    if r.cursor < r.end {
        count(stats::MEMORY_RELEASE_CUT);
    }
    this_cpu_count(stats::MEMORY_RELEASED).wrapping_sub(before)
}

/// Counts a mapping call against the calling stack.
#[inline(always)]
fn change(
    ctx: &TracePointContext,
    (tgid, tid): (u32, u32),
    op: u8,
    added: u64,
    removed: u64,
    released: u64,
) {
    let key = ChangeKey {
        user_stack: user_stack(ctx, tid, false),
        tgid,
        op,
        _pad: [0; 3],
    };
    let entry = match MEMORY_CHANGES.get_ptr_mut(key) {
        Some(entry) => entry,
        None => {
            let _ = MEMORY_CHANGES.insert(key, Change::default(), BPF_NOEXIST as u64);
            let Some(entry) = MEMORY_CHANGES.get_ptr_mut(key) else {
                count(stats::MEMORY_STACKS_FULL);
                return;
            };
            entry
        }
    };
    // SAFETY: a live map value, changed only by atomic adds.
    unsafe {
        atomic_add(&raw mut (*entry).calls, 1);
        atomic_add(&raw mut (*entry).bytes_added, added);
        atomic_add(&raw mut (*entry).bytes_removed, removed);
        atomic_add(&raw mut (*entry).pages_released, released);
    }
}

/// Reads a `u64` field of a tracepoint record at a configured offset.
#[inline(always)]
fn field(ctx: &TracePointContext, offset: u32) -> Option<u64> {
    // SAFETY: the offsets come from this kernel's tracepoint formats.
    unsafe { ctx.read_at::<u64>(offset as usize) }.ok()
}

/// `brk` returns the break as it now stands: moved up is address space added, moved down
/// releases what lay above the new break.
#[tracepoint]
pub fn memory_brk(ctx: TracePointContext) -> u32 {
    if accounting_thread().is_none() {
        return 0;
    }
    let Some(now) = field(&ctx, MEMORY_CONFIG.load().brk_ret_offset) else {
        return 0;
    };
    let Some(last) = MEMORY_BRK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the one slot of a live array; brk calls of one process are serialized by the
    // allocator that makes them (glibc's main arena lock).
    let before = unsafe { core::ptr::replace(last, now) };
    // A query (brk(0)), a failure, or a break not known before.
    if now == before || before == 0 {
        return 0;
    }
    if now > before {
        release_then_change(&ctx, op::BRK, (0, 0), now - before, 0)
    } else {
        release_then_change(&ctx, op::BRK, (now, before - now), 0, before - now)
    }
}

/// Hands a mapping call to `memory_release` by tail call: the release's `bpf_loop` and the
/// stack walk are verified once there, not in each of `brk`, `mmap`, `munmap` and `madvise`
/// (inline, each took 250-450 ms to verify on a busy 2-core machine, most of an agent's
/// re-attach of a restarted target).
#[inline(always)]
fn release_then_change(
    ctx: &TracePointContext,
    op: u8,
    (start, len): (u64, u64),
    added: u64,
    removed: u64,
) -> u32 {
    pend(
        ctx,
        Pending {
            start,
            len,
            added,
            removed,
            op,
            only_if_released: 0,
            _pad: [0; 6],
        },
    )
}

#[inline(always)]
fn pend(ctx: &TracePointContext, pending: Pending) -> u32 {
    if let Some(slot) = MEMORY_PENDING.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; nothing else runs on the CPU until the tail call's end.
        unsafe {
            *slot = pending;
            MEMORY_TAIL.tail_call(ctx, 0);
        }
    }
    // Reached only when the tail call failed: the release was not followed.
    count(stats::MEMORY_RELEASE_CUT);
    0
}

/// Tail-called with a [`Pending`] call: releases its range and counts it against the stack.
#[tracepoint]
pub fn memory_release(ctx: TracePointContext) -> u32 {
    let Some(thread) = accounting_thread() else {
        return 0;
    };
    // SAFETY: this CPU's slot, written just before the tail call.
    let Some(p) = MEMORY_PENDING.get(0).copied() else {
        return 0;
    };
    let released = if p.len > 0 {
        release(p.start, p.len, 0)
    } else {
        0
    };
    if p.only_if_released == 0 || released > 0 {
        change(&ctx, thread, p.op, p.added, p.removed, released);
    }
    0
}

#[tracepoint]
pub fn memory_mmap(ctx: TracePointContext) -> u32 {
    if accounting_thread().is_none() {
        return 0;
    }
    let config = MEMORY_CONFIG.load();
    let (Some(addr), Some(len), Some(flags)) = (
        field(&ctx, config.mmap_addr_offset),
        field(&ctx, config.mmap_len_offset),
        field(&ctx, config.mmap_flags_offset),
    ) else {
        return 0;
    };
    let anonymous = flags & MAP_ANONYMOUS != 0
        || field(&ctx, config.mmap_fd_offset).is_some_and(|fd| fd as i64 == -1);
    // MAP_FIXED drops whatever was mapped in the range (glibc discards heap tails so).
    let fixed = flags & MAP_FIXED != 0;
    if !anonymous && !fixed {
        return 0;
    }
    // A file mapped is not memory the process grows (its copy-on-write pages are faults):
    // counted only if it released something.
    pend(
        &ctx,
        Pending {
            start: addr,
            len: if fixed { len } else { 0 },
            added: if anonymous { len } else { 0 },
            removed: 0,
            op: op::MMAP,
            only_if_released: u8::from(!anonymous),
            _pad: [0; 6],
        },
    )
}

#[tracepoint]
pub fn memory_munmap(ctx: TracePointContext) -> u32 {
    if accounting_thread().is_none() {
        return 0;
    }
    let config = MEMORY_CONFIG.load();
    let (Some(addr), Some(len)) = (
        field(&ctx, config.munmap_addr_offset),
        field(&ctx, config.munmap_len_offset),
    ) else {
        return 0;
    };
    release_then_change(&ctx, op::MUNMAP, (addr, len), 0, len)
}

#[tracepoint]
pub fn memory_madvise(ctx: TracePointContext) -> u32 {
    if accounting_thread().is_none() {
        return 0;
    }
    let config = MEMORY_CONFIG.load();
    let (Some(start), Some(len), Some(behavior)) = (
        field(&ctx, config.madvise_start_offset),
        field(&ctx, config.madvise_len_offset),
        field(&ctx, config.madvise_behavior_offset),
    ) else {
        return 0;
    };
    // `behavior` is an int in an 8-byte slot.
    if !madvise_releases(behavior & 0xffff_ffff) {
        return 0;
    }
    release_then_change(&ctx, op::MADVISE, (start, len), 0, len)
}

/// Where a mapping goes is known at the exit; the arguments wait here until then.
#[tracepoint]
pub fn memory_mremap_enter(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = accounting_thread() else {
        return 0;
    };
    let config = MEMORY_CONFIG.load();
    let (Some(addr), Some(old_len), Some(new_len)) = (
        field(&ctx, config.mremap_addr_offset),
        field(&ctx, config.mremap_old_len_offset),
        field(&ctx, config.mremap_new_len_offset),
    ) else {
        return 0;
    };
    let remap = Remap {
        addr,
        old_len,
        new_len,
    };
    if MEMORY_REMAPS.insert(tid, remap, BPF_ANY as u64).is_err() {
        count(stats::MEMORY_STACKS_FULL);
    }
    0
}

#[tracepoint]
pub fn memory_mremap_exit(ctx: TracePointContext) -> u32 {
    let Some(thread) = accounting_thread() else {
        return 0;
    };
    let tid = thread.1;
    // SAFETY: copied out before the entry is removed.
    let Some(remap) = (unsafe { MEMORY_REMAPS.get(tid) }).copied() else {
        return 0;
    };
    let _ = MEMORY_REMAPS.remove(tid);
    let Some(ret) = field(&ctx, MEMORY_CONFIG.load().mremap_ret_offset) else {
        return 0;
    };
    // Errors are small negative numbers.
    if (ret as i64) < 0 && (ret as i64) > -4096 {
        return 0;
    }
    let kept = remap.old_len.min(remap.new_len);
    // Moved: the pages it kept now live at the new address, still the same stack's growth.
    if ret != remap.addr && kept > 0 {
        release(remap.addr, kept, ret.wrapping_sub(remap.addr));
    }
    if remap.new_len >= remap.old_len {
        change(
            &ctx,
            thread,
            op::MREMAP,
            remap.new_len - remap.old_len,
            0,
            0,
        );
    } else {
        let gone = remap.old_len - remap.new_len;
        let released = release(remap.addr + remap.new_len, gone, 0);
        change(&ctx, thread, op::MREMAP, 0, gone, released);
    }
    0
}
