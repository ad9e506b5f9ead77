//! `summary.json`: what was profiled, for how long, what was found and what was dropped.
//! Versioned so that `compare` and other tools can read archives from older releases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    alloc::AllocSummary, cpu::CpuSummary, futex::FutexSummary, offcpu::OffcpuSummary,
    sock::LatencyReport, why::WhyReport,
};
use crate::{
    container::Placement, framepointers::FramePointerCheck, report::memory::MemorySummary,
};

/// Bumped whenever a field changes meaning or is removed (adding fields does not bump it).
/// Readers take every version up to this one, older ones through serde defaults.
///
/// 2: `sock` rates are over the span requests were served (`served_secs`), not the capture,
/// and socket-to-reply ends at the start of the reply's send call.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub schema_version: u32,
    pub profiler_version: String,
    pub target: TargetSummary,
    /// `uname -r` of the machine the capture ran on.
    pub kernel: String,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub duration_secs: f64,
    /// Why the capture ended: `duration`, `interrupted` or `target_exited`.
    pub end_reason: String,
    /// Things the user should know about this capture, in words.
    pub notes: Vec<String>,
    /// The findings digest, strongest first (also `findings.json`).
    #[serde(default)]
    pub findings: Vec<super::findings::Finding>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu: Option<CpuSummary>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub offcpu: Option<OffcpuSummary>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub futex: Option<FutexSummary>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alloc: Option<AllocSummary>,
    /// Memory growth by stack (page faults and mapping calls).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory: Option<MemorySummary>,
    /// Socket-to-reply latency per listening port.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sock: Option<LatencyReport>,
    /// What made the slowest requests slow, per listening port.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub why: Option<WhyReport>,
    /// How user stacks were walked, and what the tables cost.
    pub unwind: UnwindStats,
    /// Every kernel-side counter of dropped or incomplete data, by name; all zero is a clean run.
    pub dropped: BTreeMap<String, u64>,
    /// Files written next to this one.
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetSummary {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: String,
    /// Whether the main binary seems to have been built with frame pointers.
    pub frame_pointers: Option<FramePointerCheck>,
    /// What the target used during the capture (None if it exited first).
    #[serde(default)]
    pub usage: Option<TargetUsage>,
    /// Its cgroup, container id and namespaces.
    #[serde(default)]
    pub placement: Placement,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetUsage {
    /// CPU time of all the target's threads during the capture.
    pub cpu_seconds: f64,
    /// The same as a share of one core, in percent.
    pub cpu_percent: f64,
    /// Resident memory at the end.
    pub rss_kb: u64,
}

/// What the unwinding tables cost and cover, for `summary.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UnwindStats {
    pub mode: String,
    /// Distinct binaries with a table.
    pub binaries: usize,
    /// Mapped binaries without CFI (walked with frame pointers in `auto`).
    pub binaries_without_cfi: usize,
    pub rows: u64,
    pub rows_capacity: u64,
    /// Rows whose rule the kernel cannot evaluate (walks stop there).
    pub unsupported_rows: u64,
    /// Kernel memory for rows and mappings.
    pub map_bytes: u64,
    /// Time spent compiling tables.
    pub build_ms: f64,
    /// Times the mappings changed during the capture (dlopen, dlclose).
    pub mapping_updates: u64,
    /// Executable mappings beyond what the kernel side holds.
    pub mappings_dropped: u64,
}

pub use super::profile::{StackWeight, ThreadWeight, thread_weights};
