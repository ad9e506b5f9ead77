//! Report values and writers: weighted stacks (`profile`), collapsed stacks (`folded`),
//! flamegraphs (`flamegraph`), the run summary (`summary`) and terminal tables (`table`).

pub mod flamegraph;
pub mod folded;
pub mod hist;
pub mod html;
pub mod latency;
pub mod leaks;
pub mod locks;
pub mod pprof;
pub mod profile;
pub mod summary;
pub mod table;
