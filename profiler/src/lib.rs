//! `profiler`: an eBPF profiler and latency tracer. The binary in `main.rs` only parses the
//! command line and dispatches here, so tests and benchmarks run the same code the CLI does.

pub mod agent;
pub mod btf;
pub mod checklist;
pub mod cli;
pub mod compare;
pub mod container;
pub mod ebpf;
pub mod elf;
pub mod framepointers;
/// The load driver (`profiler load`), its own crate.
pub use loadgen as load;

pub mod options;
pub mod preflight;
pub mod probes;
pub mod procmaps;
pub mod progress;
pub mod report;
pub mod rundir;
pub mod session;
pub mod stacks;
pub mod symbolize;
pub mod tracefs;
pub mod unwind;
