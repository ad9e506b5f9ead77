//! The `cpu` family's summary section.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::profile::{FunctionShare, ThreadWeight};

/// How many functions the summary and the terminal list.
pub const TOP_FUNCTIONS: usize = 10;

/// The root frame probe overhead is drawn under, in place of the thread.
pub const OVERHEAD: &str = "[probe overhead]";

/// Kernel frames of a uprobe's trap and single step.
const UPROBE_FRAMES: &[&str] = &[
    "uprobe_notify_resume_[k]",
    "handle_swbp_[k]",
    "exc_int3_[k]",
    "asm_exc_int3_[k]",
    "exc_debug_user_[k]",
    "asm_exc_debug_[k]",
    "arch_uprobe_",
    "uprobe_dispatcher_[k]",
    "uretprobe_",
];

/// Whether a sample was spent in probes rather than the target's own code: a BPF program
/// (ours, named from kallsyms as `bpf_prog_<tag>_<name>`) or a uprobe's trap, in the target's
/// context. Its cost is the profiler's, shown as such, never as the target's top function.
pub fn is_probe_overhead(frames: &[String]) -> bool {
    frames.iter().any(|f| {
        (f.starts_with("bpf_prog_") && f.ends_with(crate::symbolize::KERNEL_SUFFIX))
            || UPROBE_FRAMES.iter().any(|u| f.starts_with(u))
            || f.starts_with("[uprobes]")
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuSummary {
    pub frequency_hz: u64,
    /// Samples of the target the kernel took (including any it could not store).
    pub samples: u64,
    /// Distinct (thread, user stack, kernel stack) keys.
    pub stacks: u64,
    pub threads: Vec<ThreadWeight>,
    pub top_self: Vec<FunctionShare>,
    pub top_total: Vec<FunctionShare>,
    /// Samples whose user stack each unwinder produced ("none": no user stack).
    pub unwinders: BTreeMap<String, u64>,
    /// Samples by why their table walk stopped ("end": the whole stack was walked).
    pub unwind_stops: BTreeMap<String, u64>,
    /// Samples spent in probes (BPF programs, uprobe traps) in the target's context: the
    /// profiler's own cost, not in `top_self`/`top_total`.
    #[serde(default)]
    pub overhead_samples: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_programs_and_uprobe_traps_are_overhead() {
        let frames = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_probe_overhead(&frames(&[
            "main",
            "malloc",
            "asm_exc_int3_[k]",
            "bpf_prog_9ca0d2a519f207c5_alloc_return_[k]"
        ])));
        assert!(is_probe_overhead(&frames(&[
            "main",
            "free",
            "asm_exc_debug_[k]"
        ])));
        assert!(!is_probe_overhead(&frames(&[
            "main",
            "sha256d",
            "asm_sysvec_apic_timer_interrupt_[k]"
        ])));
    }
}
