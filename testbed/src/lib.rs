//! The programs `profiler` is tested and demonstrated against: the testbed servers (binaries in
//! `src/bin/`), small C fixtures with known behaviour (`fixtures/*.c`), and the helpers tests use
//! to build them and to clean up what they start.

pub mod fixture;
pub mod process;
