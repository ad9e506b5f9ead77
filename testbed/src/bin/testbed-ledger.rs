//! `testbed-ledger`: an HTTP/1.1 ingest service with a write-ahead file and ground-truth knobs.
//! See `testbed::ledger`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use testbed::{knobs::KnobArgs, ledger::LedgerConfig};

#[derive(Parser)]
#[command(
    name = "testbed-ledger",
    version,
    about = "An HTTP ingest service for load tests"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the startup line says which)
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Write-ahead file; created if missing, replayed if present
    #[arg(long, value_name = "PATH", default_value = "ledger.wal")]
    wal: PathBuf,
    /// Largest POST /ingest body, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    max_body: usize,
    /// Runtime worker threads
    #[arg(long, value_name = "N", default_value_t = 4)]
    workers: usize,
    /// Seconds between statistics lines (0: only at exit)
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stats_every: u64,
    #[command(flatten)]
    knobs: KnobArgs,
}

impl From<Args> for LedgerConfig {
    fn from(args: Args) -> Self {
        Self {
            listen: args.listen,
            wal: args.wal,
            workers: args.workers,
            max_body: args.max_body,
            stats_every: (args.stats_every > 0).then(|| Duration::from_secs(args.stats_every)),
            knobs: args.knobs.into(),
        }
    }
}

fn main() -> ExitCode {
    match testbed::ledger::run(Args::parse().into()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("testbed-ledger: {:#}", anyhow::Error::from(err));
            ExitCode::FAILURE
        }
    }
}
