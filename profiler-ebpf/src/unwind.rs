//! User-stack unwinding from compiled `.eh_frame` tables, in the kernel.
//!
//! Each frame: find the mapping holding the pc (binary search over the process's sorted
//! mappings), find the row covering it (binary search over that binary's run of rows), compute
//! the CFA from rsp or rbp, then read the return address at CFA-8 and, if the row says so, the
//! caller's rbp. Where no table covers a pc, `auto` mode takes one frame-pointer step instead.
//! Frames are walked by `bpf_loop`, so the verifier checks one step, not 127 of them.

use core::ffi::c_void;

use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::map,
    maps::Array,
};
use profiler_common::{
    stack::{MAX_USER_FRAMES, UserStack, WalkCache, stop, unwinder},
    unwind::{
        DEFAULT_ROWS, MAPPING_SEARCH_STEPS, MAX_MAPPINGS, MappingEntry, ProcessMappings,
        ROW_SEARCH_STEPS, UnwindRow, cfa, mode, rbp,
    },
};

use crate::shared::scratch_stack;

/// Where this CPU's walk records the stack slots it read return addresses from.
#[map]
static SCRATCH_WALK: aya_ebpf::maps::PerCpuArray<WalkCache> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

/// This CPU's walk record.
#[inline(always)]
pub fn scratch_walk() -> Option<&'static mut WalkCache> {
    // SAFETY: this CPU's slot; programs do not migrate or nest on one CPU.
    SCRATCH_WALK.get_ptr_mut(0).map(|w| unsafe { &mut *w })
}

/// Notes that frame `n + 1`'s return address came from `slot`.
#[inline(always)]
fn record_slot(n: usize, slot: u64) {
    if let Some(walk) = scratch_walk()
        && n < MAX_USER_FRAMES
    {
        walk.slots[n] = slot;
    }
}

/// One of `profiler_common::unwind::mode`, set by the loader.
#[unsafe(no_mangle)]
static UNWIND_MODE: Global<u32> = Global::new(mode::FRAME_POINTER);

#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(DEFAULT_ROWS, BPF_F_MMAPABLE);

#[map]
static UNWIND_MAPPINGS: Array<ProcessMappings> = Array::with_max_entries(2, 0);

#[map]
static UNWIND_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// All ones, in writable global data: the verifier cannot know a value loaded from it.
#[unsafe(no_mangle)]
static mut UNWIND_OPAQUE: u32 = u32::MAX;

/// `v`, with every bound the verifier had on it forgotten. The binary searches below would
/// otherwise carry exact `lo`/`hi` values down every path, and the verifier would explore each
/// of the 2^steps paths instead of merging them at the loop head.
#[inline(always)]
fn opaque(v: u32) -> u32 {
    // SAFETY: a plain read of a global nobody writes.
    v & unsafe { core::ptr::read_volatile(&raw const UNWIND_OPAQUE) }
}

#[inline(always)]
pub fn mode() -> u32 {
    UNWIND_MODE.load()
}

/// The registers the walk carries from frame to frame.
#[repr(C)]
struct Walk {
    pc: u64,
    sp: u64,
    bp: u64,
    /// Frames written so far.
    n: u32,
    mode: u32,
    bp_known: u8,
    used_table: u8,
    used_fp: u8,
    stop: u8,
    /// The pc is a function's first instruction (a uprobe): its return address is at [sp].
    at_entry: u8,
    _pad: [u8; 3],
    /// Where this thread's open allocator call keeps its return address, and the address a
    /// return probe replaced there (0, 0: none).
    hidden_slot: u64,
    hidden_ret: u64,
}

enum Next {
    Continue,
    Stop(u8),
}

/// The current task's user registers (pc, sp, bp), as saved when it entered the kernel.
#[inline(always)]
pub fn user_regs() -> Option<(u64, u64, u64)> {
    // SAFETY: both helpers take the current task; the returned pointer is only read through
    // bpf_probe_read_kernel, which tolerates any address.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task.cast()) as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        let ip = bpf_probe_read_kernel(&(*regs).rip).ok()?;
        let sp = bpf_probe_read_kernel(&(*regs).rsp).ok()?;
        let bp = bpf_probe_read_kernel(&(*regs).rbp).ok()?;
        Some((ip, sp, bp))
    }
}

/// Walks the user stack from `regs` (pc, sp, bp) into `stack`, recording in the scratch walk
/// where each return address was read. `at_entry`: the thread stopped at a function's first
/// instruction (uprobes).
#[inline(always)]
pub fn walk(stack: &mut UserStack, regs: (u64, u64, u64), at_entry: bool) -> bool {
    let (pc, sp, bp) = regs;
    let tid = bpf_get_current_pid_tgid() as u32;
    let (hidden_slot, hidden_ret) = crate::alloc::hidden_return(tid).unwrap_or((0, 0));
    let mut walk = Walk {
        pc,
        sp,
        bp,
        n: 0,
        mode: mode(),
        bp_known: 1,
        used_table: 0,
        used_fp: 0,
        stop: stop::NONE,
        at_entry: at_entry as u8,
        _pad: [0; 3],
        hidden_slot,
        hidden_ret,
    };
    // SAFETY: `step` is a BPF subprogram with bpf_loop's callback signature; the context is
    // our stack frame, alive for the whole call.
    unsafe {
        bpf_loop(
            MAX_USER_FRAMES as u32,
            step as *mut c_void,
            (&mut walk as *mut Walk).cast(),
            0,
        );
    }
    if walk.stop == stop::NONE {
        walk.stop = stop::TRUNCATED;
    }
    stack.len = walk.n;
    stack.stop = walk.stop;
    stack.unwinder = match (walk.used_table, walk.used_fp) {
        (1, 1) => unwinder::MIXED,
        (1, _) => unwinder::DWARF,
        _ => unwinder::FRAME_POINTER,
    };
    walk.n > 0
}

#[inline(never)]
extern "C" fn step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the context `walk` gave it.
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    match next(walk, index) {
        Next::Continue => 0,
        Next::Stop(reason) => {
            walk.stop = reason;
            1
        }
    }
}

/// One frame. The frame number is bpf_loop's index, not a counter of ours: the verifier knows
/// nothing of it, so every iteration looks alike and it checks the step once. A counter that
/// starts at a known 0 would make each iteration a new state, 127 times over.
#[inline(always)]
fn next(walk: &mut Walk, index: u64) -> Next {
    let Some(stack) = scratch_stack() else {
        return Next::Stop(stop::READ_FAULT);
    };
    if index >= MAX_USER_FRAMES as u64 {
        return Next::Stop(stop::TRUNCATED);
    }
    let n = index as usize;
    if walk.pc == 0 {
        return Next::Stop(stop::END);
    }
    stack.frames[n] = walk.pc;
    walk.n = index as u32 + 1;
    // A return address points after the call, possibly past the caller's last row.
    let lookup = if n == 0 { walk.pc } else { walk.pc - 1 };
    let slot = UNWIND_ACTIVE.get(0).copied().unwrap_or(0);
    let entry = match UNWIND_MAPPINGS.get(slot) {
        Some(mappings) => find_mapping(mappings, lookup),
        None => None,
    };
    let Some(entry) = entry else {
        return fallback(walk, n, stop::NO_MAPPING);
    };
    if entry.rows_len == 0 {
        return fallback(walk, n, stop::NO_ROW);
    }
    let Some(row) = find_row(&entry, lookup.wrapping_sub(entry.bias)) else {
        return fallback(walk, n, stop::NO_ROW);
    };
    let cfa = match row.cfa_type {
        cfa::RSP => walk.sp.wrapping_add(row.cfa_offset as i64 as u64),
        cfa::RBP => {
            if walk.bp_known == 0 {
                return Next::Stop(stop::RBP_UNKNOWN);
            }
            walk.bp.wrapping_add(row.cfa_offset as i64 as u64)
        }
        cfa::PLT => {
            let extra = if (walk.pc & 15) >= row.rbp_offset as u64 {
                8
            } else {
                0
            };
            walk.sp.wrapping_add(row.cfa_offset as i64 as u64) + extra
        }
        cfa::END => return Next::Stop(stop::END),
        cfa::NONE => return fallback(walk, n, stop::NO_ROW),
        _ => return Next::Stop(stop::UNSUPPORTED),
    };
    if cfa <= walk.sp {
        return Next::Stop(stop::BAD_FRAME);
    }
    // SAFETY: reads of user memory that may fault; the helper reports it.
    let Ok(ra) = (unsafe { bpf_probe_read_user((cfa - 8) as *const u64) }) else {
        return Next::Stop(stop::READ_FAULT);
    };
    record_slot(n, cfa - 8);
    let ra = unhide(walk, cfa - 8, ra);
    if row.cfa_type != cfa::PLT {
        match row.rbp_type {
            rbp::OFFSET => {
                let at = cfa.wrapping_add(row.rbp_offset as i64 as u64);
                // SAFETY: as above.
                match unsafe { bpf_probe_read_user(at as *const u64) } {
                    Ok(bp) => {
                        walk.bp = bp;
                        walk.bp_known = 1;
                    }
                    Err(_) => return Next::Stop(stop::READ_FAULT),
                }
            }
            rbp::UNKNOWN => walk.bp_known = 0,
            _ => {}
        }
    }
    walk.sp = cfa;
    walk.pc = ra;
    walk.used_table = 1;
    Next::Continue
}

/// One frame-pointer step where no table applies (`auto`); in `dwarf` mode, stop with `reason`.
#[inline(always)]
fn fallback(walk: &mut Walk, n: usize, reason: u8) -> Next {
    if walk.mode != mode::AUTO {
        return Next::Stop(reason);
    }
    walk.used_fp = 1;
    if n == 0 && walk.at_entry != 0 {
        // At a function's first instruction the frame is not set up yet: [sp] is the caller.
        // SAFETY: a read of user memory that may fault.
        let Ok(ra) = (unsafe { bpf_probe_read_user(walk.sp as *const u64) }) else {
            return Next::Stop(stop::READ_FAULT);
        };
        record_slot(n, walk.sp);
        walk.pc = unhide(walk, walk.sp, ra);
        walk.sp += 8;
        return Next::Continue;
    }
    if walk.bp_known == 0 {
        return Next::Stop(stop::RBP_UNKNOWN);
    }
    if walk.bp == 0 {
        return Next::Stop(stop::END);
    }
    if walk.bp < walk.sp {
        return Next::Stop(stop::BAD_FRAME);
    }
    // SAFETY: reads of user memory that may fault.
    let (Ok(next_bp), Ok(ra)) = (unsafe {
        (
            bpf_probe_read_user(walk.bp as *const u64),
            bpf_probe_read_user((walk.bp + 8) as *const u64),
        )
    }) else {
        return Next::Stop(stop::READ_FAULT);
    };
    walk.pc = unhide(walk, walk.bp + 8, ra);
    walk.sp = walk.bp + 16;
    walk.bp = next_bp;
    Next::Continue
}

/// The return address read at `slot`, or the one a return probe hid there (the trampoline
/// would end the walk).
#[inline(always)]
fn unhide(walk: &Walk, slot: u64, ra: u64) -> u64 {
    if walk.hidden_slot != 0 && slot == walk.hidden_slot {
        walk.hidden_ret
    } else {
        ra
    }
}

/// The mapping that holds `addr`: the last one starting at or below it, if it ends above it.
#[inline(always)]
fn find_mapping(mappings: &ProcessMappings, addr: u64) -> Option<MappingEntry> {
    let mut lo: u32 = 0;
    let mut hi: u32 = mappings.count.min(MAX_MAPPINGS as u32);
    for _ in 0..MAPPING_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        // The mask keeps the index provably in bounds for the verifier.
        let entry = &mappings.entries[mid as usize & (MAX_MAPPINGS - 1)];
        if entry.start <= addr {
            lo = opaque(mid + 1);
        } else {
            hi = opaque(mid);
        }
    }
    if lo == 0 {
        return None;
    }
    let entry = mappings.entries[(lo - 1) as usize & (MAX_MAPPINGS - 1)];
    (addr < entry.end).then_some(entry)
}

/// The last row of the mapping's table with `pc <= rel_pc`.
#[inline(always)]
fn find_row(entry: &MappingEntry, rel_pc: u64) -> Option<UnwindRow> {
    let first = entry.rows_start;
    let mut lo = first;
    let mut hi = first.wrapping_add(entry.rows_len);
    for _ in 0..ROW_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let row = UNWIND_ROWS.get(mid)?;
        if row.pc <= rel_pc {
            lo = opaque(mid + 1);
        } else {
            hi = opaque(mid);
        }
    }
    if lo == first {
        return None;
    }
    UNWIND_ROWS.get(lo - 1).copied()
}
