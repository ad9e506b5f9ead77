//! `memory`: the target's memory growth by the stack that grew it, without probing the
//! allocator.
//!
//! **Growth.** A write fault of a target thread on a user page (`exceptions:page_fault_user`,
//! and `page_fault_kernel` for the kernel writing to a user buffer on the thread's behalf, as
//! `read()` into a fresh buffer does) makes the kernel create a private page: first touch of
//! anonymous memory, copy-on-write of the zero page a read had mapped, or of a page shared
//! since a fork. A read of untouched memory maps the shared zero page and costs nothing, so it
//! is not counted. The kernel cannot tell a first touch from a fault on a page it swapped out
//! (the tracepoint fires before the fault is handled, and knows no major/minor), so the rule is
//! kept by the profiler: each page is counted once, against the stack that faulted it, and held
//! (its stack written in its slot of a [`Chunk`]) until it is released; a later write fault on
//! a held page (swap-in, a fork's copy-on-write) is not growth.
//!
//! **Release.** `munmap`, `madvise` with `MADV_DONTNEED`, `MADV_FREE`, `MADV_REMOVE` or
//! `MADV_DONTNEED_LOCKED`, `brk` moving down, `mremap` shrinking, and `mmap(MAP_FIXED)` over a
//! range give pages back: every held page in the range leaves its growing stack (pages
//! `mremap` moves keep their stack at their new address). The calls themselves are counted by
//! stack too ([`CHANGES_MAP`]), with the address space they add and remove.
//!
//! Held pages live in [`CHUNKS_MAP`], one [`Chunk`] per 512 pages (2 MiB at 4 KiB pages) with
//! the stack of each page and a count of those held: a fault costs one lookup, releasing
//! address space that holds nothing costs one lookup per chunk, and releasing held pages a
//! lookup and a store each. (A hash map entry per page cost 0.9 µs per page released and
//! 0.4 µs more per page grown, measured with `kernel.bpf_stats_enabled`.)

use crate::impl_pod;

/// `exceptions:page_fault_user`.
pub const FAULT_USER_PROGRAM: &str = "memory_fault_user";
/// `exceptions:page_fault_kernel`.
pub const FAULT_KERNEL_PROGRAM: &str = "memory_fault_kernel";
/// `syscalls:sys_exit_brk` (the new break is its return value).
pub const BRK_PROGRAM: &str = "memory_brk";
/// `syscalls:sys_enter_mmap`.
pub const MMAP_PROGRAM: &str = "memory_mmap";
/// `syscalls:sys_enter_munmap`.
pub const MUNMAP_PROGRAM: &str = "memory_munmap";
/// `syscalls:sys_enter_madvise`.
pub const MADVISE_PROGRAM: &str = "memory_madvise";
/// `syscalls:sys_enter_mremap`, `syscalls:sys_exit_mremap`.
pub const MREMAP_ENTER_PROGRAM: &str = "memory_mremap_enter";
pub const MREMAP_EXIT_PROGRAM: &str = "memory_mremap_exit";
/// Tail-called by `brk`, `mmap`, `munmap` and `madvise` (never attached): the release and the
/// call's count, verified once instead of in each.
pub const RELEASE_PROGRAM: &str = "memory_release";

/// `MEMORY_CHUNKS`: page number / [`CHUNK_PAGES`] → [`Chunk`].
pub const CHUNKS_MAP: &str = "MEMORY_CHUNKS";
/// `MEMORY_ZERO`: one all-zero [`Chunk`], what a new chunk is inserted from.
pub const ZERO_MAP: &str = "MEMORY_ZERO";
/// `MEMORY_GROWTH`: [`GrowthKey`] → [`Growth`].
pub const GROWTH_MAP: &str = "MEMORY_GROWTH";
/// `MEMORY_CHANGES`: [`ChangeKey`] → [`Change`].
pub const CHANGES_MAP: &str = "MEMORY_CHANGES";
/// `MEMORY_BRK`: one u64, the target's program break as last seen (set by userspace at attach
/// from the `[heap]` mapping, then by every `brk`).
pub const BRK_MAP: &str = "MEMORY_BRK";
/// `MEMORY_REMAPS`: tid → [`Remap`], an `mremap` between its entry and exit.
pub const REMAPS_MAP: &str = "MEMORY_REMAPS";
/// `MEMORY_ARMED`: one `u32`, 1 while the programs account.
pub const ARMED_MAP: &str = "MEMORY_ARMED";
/// `MEMORY_TAIL`: a program array whose slot 0 is [`RELEASE_PROGRAM`].
pub const TAIL_MAP: &str = "MEMORY_TAIL";
/// `MEMORY_PENDING`: one [`Pending`] per CPU, the tail-called program's arguments.
pub const PENDING_MAP: &str = "MEMORY_PENDING";
/// [`MemoryConfig`] global.
pub const CONFIG_GLOBAL: &str = "MEMORY_CONFIG";

/// Pages per chunk.
pub const CHUNK_PAGES: usize = 512;
/// log2 of [`CHUNK_PAGES`].
pub const CHUNK_PAGES_SHIFT: u32 = 9;

/// Chunks held at most unless told otherwise: 32 GiB of address space with growth in it at
/// 4 KiB pages. The map allocates per entry (4 KiB each), so what is not touched costs nothing.
pub const DEFAULT_MAX_CHUNKS: u32 = 1 << 14;

/// Steps one release may take (a step is a page of a chunk that holds some, or a chunk that
/// holds none): past it the rest of the range keeps its pages and
/// `stats::MEMORY_RELEASE_CUT` counts it.
pub const MAX_RELEASE_STEPS: u32 = 1 << 20;

/// The owner recorded for a page whose stack could not be walked (stack hashes are odd).
pub const NO_STACK_OWNER: u64 = 2;

/// How a page was grown.
pub mod fault {
    /// A write fault in user mode.
    pub const USER: u8 = 1;
    /// The kernel writing to a user page for the thread (a syscall filling a buffer).
    pub const KERNEL: u8 = 2;
}

/// The calls that change mappings.
pub mod op {
    pub const BRK: u8 = 1;
    pub const MMAP: u8 = 2;
    pub const MUNMAP: u8 = 3;
    pub const MREMAP: u8 = 4;
    pub const MADVISE: u8 = 5;

    pub const NAMES: [&str; 6] = ["unknown", "brk", "mmap", "munmap", "mremap", "madvise"];
}

/// Fixed at load: tracepoint field offsets (from tracefs) and the page size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryConfig {
    /// `page_fault_user`/`page_fault_kernel`: `address`, `error_code`.
    pub fault_address_offset: u32,
    pub fault_error_offset: u32,
    /// `sys_exit_brk`: `ret`.
    pub brk_ret_offset: u32,
    /// `sys_enter_mmap`: `addr`, `len`, `flags`, `fd`.
    pub mmap_addr_offset: u32,
    pub mmap_len_offset: u32,
    pub mmap_flags_offset: u32,
    pub mmap_fd_offset: u32,
    /// `sys_enter_munmap`: `addr`, `len`.
    pub munmap_addr_offset: u32,
    pub munmap_len_offset: u32,
    /// `sys_enter_madvise`: `start`, `len_in`, `behavior`.
    pub madvise_start_offset: u32,
    pub madvise_len_offset: u32,
    pub madvise_behavior_offset: u32,
    /// `sys_enter_mremap`: `addr`, `old_len`, `new_len`; `sys_exit_mremap`: `ret`.
    pub mremap_addr_offset: u32,
    pub mremap_old_len_offset: u32,
    pub mremap_new_len_offset: u32,
    pub mremap_ret_offset: u32,
    /// log2 of the page size.
    pub page_shift: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<MemoryConfig>() == 72);

/// A stack that grew memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrowthKey {
    pub user_stack: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<GrowthKey>() == 16);

/// What one stack grew.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Growth {
    /// Pages it grew since the attach.
    pub pages: u64,
    /// Of those, pages still held (not released since).
    pub held_pages: i64,
    /// Of `pages`, those the kernel wrote for it in a syscall ([`fault::KERNEL`]).
    pub kernel_pages: u64,
}
const _: () = assert!(core::mem::size_of::<Growth>() == 24);

/// 512 consecutive pages: who grew each one held (its stack hash, [`NO_STACK_OWNER`], or 0
/// when not held), and how many are.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Chunk {
    pub held: u64,
    pub owners: [u64; CHUNK_PAGES],
}
const _: () = assert!(core::mem::size_of::<Chunk>() == 8 + 8 * CHUNK_PAGES);

/// A stack that called a mapping syscall, and which.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChangeKey {
    pub user_stack: u64,
    pub tgid: u32,
    /// One of [`op`].
    pub op: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<ChangeKey>() == 16);

/// What one stack's mapping calls did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub calls: u64,
    /// Address space added (`brk` up, anonymous `mmap`, `mremap` growing), bytes.
    pub bytes_added: u64,
    /// Address space removed or given back (`brk` down, `munmap`, `mremap` shrinking,
    /// `madvise`), bytes.
    pub bytes_removed: u64,
    /// Held pages these calls released.
    pub pages_released: u64,
}
const _: () = assert!(core::mem::size_of::<Change>() == 32);

/// An `mremap` in flight: its arguments, until its exit says where the mapping went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Remap {
    pub addr: u64,
    pub old_len: u64,
    pub new_len: u64,
}
const _: () = assert!(core::mem::size_of::<Remap>() == 24);

/// A mapping call for [`RELEASE_PROGRAM`]: the range to release (empty: none) and the call's
/// count against its stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Pending {
    pub start: u64,
    pub len: u64,
    pub added: u64,
    pub removed: u64,
    /// One of [`op`].
    pub op: u8,
    /// 1: count the call only if it released something (a file mapped over memory).
    pub only_if_released: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Pending>() == 40);

impl_pod!(
    Pending,
    MemoryConfig,
    GrowthKey,
    Growth,
    ChangeKey,
    Change,
    Remap,
    Chunk
);

/// `error_code` bit 1 of an x86 page fault: the access was a write.
pub const FAULT_WRITE: u64 = 1 << 1;

/// madvise behaviours that give pages back: MADV_DONTNEED, MADV_FREE, MADV_REMOVE and
/// MADV_DONTNEED_LOCKED.
#[inline(always)]
pub const fn madvise_releases(behavior: u64) -> bool {
    matches!(behavior, 4 | 8 | 9 | 24)
}

/// `MAP_FIXED`: the new mapping replaces whatever was in its range.
pub const MAP_FIXED: u64 = 0x10;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u64 = 0x20;

/// The highest user address on x86-64 with 5-level paging: faults above are the kernel's own.
pub const USER_ADDRESS_END: u64 = 1 << 56;
