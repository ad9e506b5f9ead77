//! `offcpu`: time the target's threads spend off the CPU, by stack, from `sched:sched_switch`.

use crate::{impl_pod, stack::StackKey};

/// The sched_switch program.
pub const PROGRAM: &str = "offcpu_switch";
/// `OFFCPU_TIMES`: [`StackKey`] → nanoseconds off-CPU.
pub const TIMES_MAP: &str = "OFFCPU_TIMES";
/// `OFFCPU_START`: tid → [`OffcpuStart`] of a thread that is off the CPU now.
pub const START_MAP: &str = "OFFCPU_START";
/// `OFFCPU_ARMED`: one `u32`, 1 while the program counts: set with every other family's, once all are attached, so no family counts the stalls of another's attach (uprobe registration takes the target's mmap lock).
pub const ARMED_MAP: &str = "OFFCPU_ARMED";
/// [`OffcpuConfig`] global.
pub const CONFIG_GLOBAL: &str = "OFFCPU_CONFIG";

/// Fixed at load: where sched_switch's fields are, and the noise threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffcpuConfig {
    /// Offsets of `next_pid` (4 bytes) and `prev_state` (8) in the sched_switch record.
    pub next_pid_offset: u32,
    pub prev_state_offset: u32,
    /// Blocks shorter than this are not counted.
    pub min_block_ns: u64,
}
const _: () = assert!(core::mem::size_of::<OffcpuConfig>() == 16);

/// When and where a thread left the CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OffcpuStart {
    pub ts: u64,
    pub key: StackKey,
}
const _: () = assert!(core::mem::size_of::<OffcpuStart>() == 48);

impl_pod!(OffcpuConfig, OffcpuStart);
