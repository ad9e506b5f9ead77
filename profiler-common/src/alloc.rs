//! `alloc`: allocations that stay live, by stack. Uprobes on the target's allocator record the
//! requested size at entry and, at return, the address with the caller's stack; `free` retires
//! it. Per-stack aggregates live in the kernel, so userspace never walks the live set.

use crate::impl_pod;

/// Entry of `malloc`, `valloc` (size in arg 0).
pub const ENTER_SIZE_PROGRAM: &str = "alloc_enter_size";
/// Entry of `calloc` (arg 0 × arg 1).
pub const ENTER_CALLOC_PROGRAM: &str = "alloc_enter_calloc";
/// Entry of `aligned_alloc`, `memalign` (size in arg 1).
pub const ENTER_ALIGNED_PROGRAM: &str = "alloc_enter_aligned";
/// Entry of `realloc` (old pointer in arg 0, size in arg 1).
pub const ENTER_REALLOC_PROGRAM: &str = "alloc_enter_realloc";
/// Entry of `posix_memalign` (result pointer in arg 0, size in arg 2).
pub const ENTER_POSIX_MEMALIGN_PROGRAM: &str = "alloc_enter_posix_memalign";
/// Return of every allocating function.
pub const RETURN_PROGRAM: &str = "alloc_return";
/// Entry of `free`.
pub const FREE_PROGRAM: &str = "alloc_free";
/// `sys_enter_mmap`, `sys_exit_mmap`, `sys_enter_munmap`.
pub const MMAP_ENTER_PROGRAM: &str = "alloc_mmap_enter";
pub const MMAP_EXIT_PROGRAM: &str = "alloc_mmap_exit";
pub const MUNMAP_PROGRAM: &str = "alloc_munmap";

/// `ALLOC_LIVE`: address → [`LiveAlloc`].
pub const LIVE_MAP: &str = "ALLOC_LIVE";
/// `ALLOC_STACKS`: [`AllocKey`] → [`StackAllocs`].
pub const STACKS_MAP: &str = "ALLOC_STACKS";
/// `ALLOC_INFLIGHT`: tid → [`InFlight`], between an allocator's entry and its return.
pub const INFLIGHT_MAP: &str = "ALLOC_INFLIGHT";
/// `ALLOC_ARMED`: two `u32`s. Slot 0 is 1 while the programs account: set once every probe is
/// attached and cleared before the last read, so allocations and frees start and stop counting
/// at the same instant (attached one by one, a ring that reuses addresses was counted with its
/// frees missing in the windows). Slot [`WINDOW_SLOT`] numbers the allocation window open now.
pub const ARMED_MAP: &str = "ALLOC_ARMED";
/// `ALLOC_ARMED` slot: the allocation window open now (from 1), 0 between windows. Without
/// `--alloc-duty` one window lasts the whole capture. Only calls entered in a window are
/// opened; a call still open from an earlier window lost its return to the window's close.
pub const WINDOW_SLOT: u32 = 1;
/// [`AllocConfig`] global.
pub const CONFIG_GLOBAL: &str = "ALLOC_CONFIG";

/// Live allocations the kernel side tracks unless told otherwise.
pub const DEFAULT_MAX_LIVE: u32 = 1 << 20;

/// Which call made an allocation.
pub mod kind {
    pub const MALLOC: u8 = 1;
    pub const CALLOC: u8 = 2;
    pub const REALLOC: u8 = 3;
    pub const POSIX_MEMALIGN: u8 = 4;
    pub const ALIGNED_ALLOC: u8 = 5;
    pub const MEMALIGN: u8 = 6;
    pub const VALLOC: u8 = 7;
    pub const MMAP: u8 = 8;

    pub const NAMES: [&str; 9] = [
        "unknown",
        "malloc",
        "calloc",
        "realloc",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "mmap",
    ];
}

/// Fixed at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocConfig {
    /// Track one allocation in this many, by a hash of its address (1: all).
    pub sample_every: u32,
    /// sys_enter_mmap: `len`, `fd`; sys_exit_mmap: `ret`; sys_enter_munmap: `addr`.
    pub mmap_len_offset: u32,
    pub mmap_fd_offset: u32,
    pub mmap_ret_offset: u32,
    pub munmap_addr_offset: u32,
    /// 1 when the allocation probes come and go in windows (`--alloc-duty`): a free of an
    /// untracked block is then usually one allocated between windows, not before the attach.
    pub windowed: u32,
}
const _: () = assert!(core::mem::size_of::<AllocConfig>() == 24);

impl Default for AllocConfig {
    fn default() -> Self {
        Self {
            sample_every: 1,
            mmap_len_offset: 0,
            mmap_fd_offset: 0,
            mmap_ret_offset: 0,
            munmap_addr_offset: 0,
            windowed: 0,
        }
    }
}

/// A thread's allocator call: between entry and return, `open` is 1. Entries stay in the map
/// and are rewritten in place, so a call costs two lookups, not an insert and a delete.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InFlight {
    pub size: u64,
    /// realloc: the old pointer; posix_memalign: where the result is stored.
    pub ptr: u64,
    pub kind: u8,
    pub open: u8,
    pub _pad: [u8; 2],
    /// The window (`WINDOW_SLOT`) the call entered in.
    pub window: u32,
    /// The stack pointer at entry: a later entry at or below it is a call made from inside
    /// this one (or its tail call); above it, this call's frame is gone and its return lost.
    pub sp: u64,
    /// The return address at `sp` on entry, before the return probe replaced it with the
    /// `[uprobes]` trampoline: a stack walked inside the call (a page fault) reads it here.
    pub ret: u64,
}
const _: () = assert!(core::mem::size_of::<InFlight>() == 40);

/// A stack that allocates, and through which call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub user_stack: u64,
    pub tgid: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AllocKey>() == 16);

/// A live allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LiveAlloc {
    pub size: u64,
    pub ts: u64,
    pub key: AllocKey,
}
const _: () = assert!(core::mem::size_of::<LiveAlloc>() == 32);

/// What one stack has allocated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackAllocs {
    pub live_bytes: i64,
    pub live_count: i64,
    pub total_allocs: u64,
    pub total_bytes: u64,
    /// When this stack last went from no live allocation to one (ns, monotonic): its oldest
    /// live allocation is at least this old. 0 while none is live.
    pub live_since_ns: u64,
    pub _pad: u64,
}
const _: () = assert!(core::mem::size_of::<StackAllocs>() == 48);

impl_pod!(AllocConfig, InFlight, AllocKey, LiveAlloc, StackAllocs);

/// Whether an address is among the one-in-`every` tracked. Hashed, so malloc's return and the
/// matching free agree without sharing state, and allocator alignment does not bias it.
#[inline(always)]
pub const fn sampled(addr: u64, every: u32) -> bool {
    if every <= 1 {
        return true;
    }
    let mut h = addr;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h.is_multiple_of(every as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_about_one_in_n_even_for_aligned_addresses() {
        let every = 64;
        // 16-byte aligned addresses, as malloc returns them.
        let hits = (0..1_000_000u64)
            .filter(|i| sampled(0x5555_0000_0000 + i * 16, every))
            .count();
        let expected = 1_000_000 / 64;
        assert!(
            hits.abs_diff(expected) < expected / 10,
            "{hits} vs {expected}"
        );
        assert!(sampled(12345, 1));
    }
}
