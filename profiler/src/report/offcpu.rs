//! The `offcpu` family's summary section.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::profile::{StackWeight, ThreadWeight};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OffcpuSummary {
    pub min_block_us: f64,
    /// Off-CPU time counted, all threads.
    pub total_us: u64,
    /// Times a target thread left the CPU.
    pub switches: u64,
    pub threads: Vec<ThreadWeight>,
    /// Heaviest blocking stacks (waits inside work), microseconds.
    pub top_stacks: Vec<StackWeight>,
    /// Of `total_us`, time blocked inside work, and time idle (waiting for new work: see
    /// `report::idle`).
    #[serde(default)]
    pub blocked_us: u64,
    #[serde(default)]
    pub idle_us: u64,
    /// Of `total_us`, time a runnable thread waited for a CPU after being preempted.
    #[serde(default)]
    pub preempted_us: u64,
    /// Of `total_us`, time a thread waited inside our probes: a uprobe's trap that sleeps (for
    /// the target's mmap lock while `--alloc-duty` adds or removes probes). The profiler's
    /// cost, drawn under `[probe overhead]`.
    #[serde(default)]
    pub probe_us: u64,
    /// Heaviest idle stacks, microseconds.
    #[serde(default)]
    pub idle_stacks: Vec<StackWeight>,
    pub unwinders: BTreeMap<String, u64>,
    pub unwind_stops: BTreeMap<String, u64>,
}
