//! The programs `profiler` is tested and demonstrated against: the testbed servers (binaries in
//! `src/bin/`, their logic here), small C fixtures with known behaviour (`fixtures/*.c`, sharing
//! `fixtures/fixture.h`), and the helpers tests use to build them and to clean up what they
//! start.
//!
//! - [`pool`]: `testbed-pool`, a stratum v1 mining pool ([`stratum`] validates shares, [`vardiff`]
//!   sets per-miner difficulty);
//! - [`ledger`]: `testbed-ledger`, an HTTP/1.1 ingest service over a write-ahead file ([`wal`]);
//! - [`skeleton`]: what both servers share apart from their protocol: runtime, listener,
//!   signals, statistics ticker, accept loop and exit line;
//! - [`conn`]: what both do per connection against idle, slow and surplus clients (timeouts,
//!   the connection cap, closes tallied by reason);
//! - [`knobs`]: the ground-truth knobs both servers share (`--contend`, `--leak-bytes`,
//!   `--slow-every`);
//! - [`server`]: start either server on a free port from a test, a benchmark or the demo;
//! - [`demo`]: the problems the demo plants in the pool, and the check that a capture found
//!   them.

pub mod conn;
pub mod demo;
pub mod fixture;
pub mod knobs;
pub mod ledger;
pub mod pool;
pub mod process;
pub mod server;
pub mod skeleton;
pub mod stratum;
pub mod vardiff;
pub mod wal;
