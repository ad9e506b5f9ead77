//! `.eh_frame` unwinding tables as the kernel walks them.
//!
//! Userspace compiles each binary's CFI into [`UnwindRow`]s sorted by address and stores them in
//! one array map, a contiguous run per binary (shared by every mapping of that binary). Each
//! process has a sorted list of its executable mappings ([`ProcessMappings`]) saying where each
//! mapping's run of rows is and how the binary was relocated.

use crate::impl_pod;

/// `UNWIND_ROWS`: `BPF_MAP_TYPE_ARRAY` of [`UnwindRow`], mmapable so userspace fills it with
/// plain stores.
pub const ROWS_MAP: &str = "UNWIND_ROWS";
/// `UNWIND_MAPPINGS`: two [`ProcessMappings`] slots of the target: one in use, one being
/// rewritten (an array element rewritten in place could be read half-written).
pub const MAPPINGS_MAP: &str = "UNWIND_MAPPINGS";
/// `UNWIND_ACTIVE`: one `u32`, the slot of `UNWIND_MAPPINGS` in use.
pub const ACTIVE_MAP: &str = "UNWIND_ACTIVE";
/// `u32` global: one of [`mode`].
pub const MODE_GLOBAL: &str = "UNWIND_MODE";

/// Rows the array holds unless userspace sizes it otherwise at load time.
pub const DEFAULT_ROWS: u32 = 1 << 20;
/// Executable mappings per process the kernel can search.
pub const MAX_MAPPINGS: usize = 256;
/// Iterations of the binary search over rows: enough for 2^24 rows.
pub const ROW_SEARCH_STEPS: u32 = 24;
/// Iterations of the binary search over mappings: 2^9 > [`MAX_MAPPINGS`].
pub const MAPPING_SEARCH_STEPS: u32 = 9;

/// How user stacks are walked.
pub mod mode {
    /// `bpf_get_stack`: frame pointers only.
    pub const FRAME_POINTER: u32 = 0;
    /// Tables where a binary has CFI, frame pointers elsewhere.
    pub const AUTO: u32 = 1;
    /// Tables only: stop where there are none.
    pub const DWARF: u32 = 2;
}

/// How the canonical frame address (the caller's stack pointer) is found.
pub mod cfa {
    /// No CFI covers this address (a gap between functions).
    pub const NONE: u8 = 0;
    /// `rsp + cfa_offset`.
    pub const RSP: u8 = 1;
    /// `rbp + cfa_offset`.
    pub const RBP: u8 = 2;
    /// A PLT stub: `rsp + cfa_offset + ((rip & 15) >= threshold ? 8 : 0)`, threshold in
    /// `rbp_offset`.
    pub const PLT: u8 = 3;
    /// The return address is undefined: the outermost frame (`_start`, `clone`).
    pub const END: u8 = 4;
    /// A rule the kernel walk does not evaluate (other expressions, other registers).
    pub const UNSUPPORTED: u8 = 5;
}

/// Where the caller's rbp is.
pub mod rbp {
    /// Unchanged by this frame.
    pub const SAME: u8 = 0;
    /// Saved at `cfa + rbp_offset`.
    pub const OFFSET: u8 = 1;
    /// Recomputed in a way we do not follow: unknown from here on.
    pub const UNKNOWN: u8 = 2;
}

/// One row of a compiled table: from `pc` up to the next row's `pc`, this rule applies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// Address as in the ELF file (before relocation).
    pub pc: u64,
    pub cfa_offset: i32,
    pub rbp_offset: i16,
    /// One of [`cfa`].
    pub cfa_type: u8,
    /// One of [`rbp`].
    pub rbp_type: u8,
}
const _: () = assert!(core::mem::size_of::<UnwindRow>() == 16);

/// An executable mapping of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingEntry {
    pub start: u64,
    pub end: u64,
    /// Runtime address minus ELF address.
    pub bias: u64,
    /// First row of this binary's table in `UNWIND_ROWS`.
    pub rows_start: u32,
    /// Number of rows; 0: no table, use frame pointers.
    pub rows_len: u32,
}
const _: () = assert!(core::mem::size_of::<MappingEntry>() == 32);

/// A process's executable mappings, sorted by `start`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessMappings {
    pub count: u32,
    pub _pad: u32,
    pub entries: [MappingEntry; MAX_MAPPINGS],
}
const _: () = assert!(core::mem::size_of::<ProcessMappings>() == 8 + 32 * MAX_MAPPINGS);

impl_pod!(UnwindRow, MappingEntry, ProcessMappings);
