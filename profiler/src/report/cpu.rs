//! The `cpu` family's summary section.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{profile::FunctionShare, summary::ThreadWeight};

/// How many functions the summary and the terminal list.
pub const TOP_FUNCTIONS: usize = 10;

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
}
