//! Report values and writers, none of which touch the kernel: each family's summary section
//! and text (`cpu`, `offcpu`, `futex`, `sock`, `alloc`), weighted stacks (`profile`), collapsed
//! stacks (`folded`), flamegraphs (`flamegraph`), pprof, the run summary (`summary`), the page
//! (`html`) and terminal tables (`table`).

pub mod alloc;
pub mod component;
pub mod cpu;
pub mod findings;
pub mod flamegraph;
pub mod folded;
pub mod futex;
pub mod hist;
pub mod html;
pub mod idle;
pub mod memory;
pub mod offcpu;
pub mod pprof;
pub mod profile;
pub mod sock;
pub mod summary;
pub mod table;
pub mod why;

use std::path::PathBuf;

use self::{
    alloc::LeakReport, futex::LockReport, profile::WeightedStack, sock::PortData, summary::Summary,
};

/// What a finished capture produced.
pub struct Outcome {
    pub dir: PathBuf,
    pub summary: Summary,
    /// The tables and notes for the terminal.
    pub terminal: String,
    /// The cpu samples as named stacks, when `cpu` ran.
    pub cpu_stacks: Option<Vec<WeightedStack>>,
    /// Off-CPU time (µs) as named stacks, when `offcpu` ran.
    pub offcpu_stacks: Option<Vec<WeightedStack>>,
    /// Every contended lock, most total wait first, when `futex` ran.
    pub locks: Option<Vec<LockReport>>,
    /// Leak suspects and live allocations, when `alloc` ran.
    pub leaks: Option<LeakReport>,
    /// What the families found, every one (the digest is drawn from these).
    pub findings: Vec<findings::Finding>,
    /// Memory growth by stack, when `memory` ran.
    pub growth: Option<memory::GrowthReport>,
    /// Every tracked port's histograms, when `sock` ran.
    pub latency: Option<Vec<PortData>>,
}
