//! `testbed-ledger`: an HTTP/1.1 ingest service with a write-ahead file and ground-truth knobs.
//! See `testbed::ledger`.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use testbed::{
    conn::Timeout,
    knobs::KnobArgs,
    ledger::{self, LedgerConfig},
    wal::OnDamage,
};

#[derive(Parser)]
#[command(
    name = "testbed-ledger",
    version,
    about = "An HTTP ingest service for load tests",
    after_help = "Requests: a head (every byte from the request line through the blank line that \
ends it) of up to 65536 bytes is served, one byte more gets 431 and a close. A body is framed by \
Content-Length or by Transfer-Encoding: chunked alone; any other transfer coding gets 501 (400 \
when chunked is not the last)."
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the startup line says which)
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Write-ahead file; created if missing, replayed if present
    #[arg(long, value_name = "PATH", default_value = "ledger.wal")]
    wal: PathBuf,
    /// When a record of the write-ahead file fails its checksum (or sequence) and is not a torn
    /// tail, keep the whole batches before it and cut the rest, instead of refusing to start.
    /// Copy the file aside first to keep what is cut
    #[arg(long)]
    wal_keep_verified_prefix: bool,
    /// Largest POST /ingest body, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    max_body: usize,
    /// Runtime worker threads
    #[arg(long, value_name = "N", default_value_t = 4)]
    workers: usize,
    /// Seconds between statistics lines (0: only at exit)
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stats_every: u64,
    /// Close a keep-alive connection with no request in progress for this long: since it was
    /// accepted or since its last response (0s: never)
    #[arg(long, value_name = "DURATION", default_value_t = Timeout(Some(ledger::DEFAULT_IDLE_TIMEOUT)))]
    idle_timeout: Timeout,
    /// Close a connection whose request head (request line and headers) is not complete this
    /// long after its first byte arrived: slow-header clients (0s: never)
    #[arg(long, value_name = "DURATION", default_value_t = Timeout(Some(ledger::DEFAULT_HEADER_TIMEOUT)))]
    header_timeout: Timeout,
    /// Most open connections; one more gets 503 and a close, logged and tallied
    /// (refused_over_cap). The open-file limit is raised to fit, or the cap lowered if it cannot
    /// be
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(ledger::DEFAULT_MAX_CONNECTIONS).unwrap_or(NonZeroUsize::MIN))]
    max_connections: NonZeroUsize,
    #[command(flatten)]
    knobs: KnobArgs,
}

impl From<Args> for LedgerConfig {
    fn from(args: Args) -> Self {
        Self {
            listen: args.listen,
            wal: args.wal,
            wal_on_damage: if args.wal_keep_verified_prefix {
                OnDamage::KeepVerifiedPrefix
            } else {
                OnDamage::Refuse
            },
            workers: args.workers,
            max_body: args.max_body,
            stats_every: (args.stats_every > 0).then(|| Duration::from_secs(args.stats_every)),
            idle_timeout: args.idle_timeout.0,
            header_timeout: args.header_timeout.0,
            max_connections: args.max_connections.get(),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn help_states_the_head_limit_in_force() {
        let help = Args::command().render_long_help().to_string();
        let limit = format!("up to {} bytes is served", testbed::ledger::MAX_HEAD);
        assert!(help.contains(&limit), "{help}");
    }
}
