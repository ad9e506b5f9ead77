//! `profiler`: an eBPF profiler and latency tracer. The binary in `main.rs` only parses the
//! command line and dispatches here, so tests and benchmarks run the same code the CLI does.

pub mod load;
