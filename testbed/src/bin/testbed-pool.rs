//! `testbed-pool`: a stratum v1 mining pool with ground-truth knobs. See `testbed::pool`.

use std::{net::SocketAddr, num::NonZeroUsize, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use testbed::{
    conn::Timeout,
    knobs::KnobArgs,
    pool::{self, PoolConfig},
    stratum,
};

#[derive(Parser)]
#[command(
    name = "testbed-pool",
    version,
    about = "A stratum v1 mining pool for load tests"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the startup line says which)
    #[arg(long, default_value = "127.0.0.1:3333")]
    listen: SocketAddr,
    /// Starting and lowest share difficulty [default: 0xffff/2^47, so that half of random
    /// nonces meet the target]
    #[arg(long, value_name = "D")]
    difficulty: Option<f64>,
    /// Seconds between new jobs (each is a new block; older jobs become stale)
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    job_interval: f64,
    /// Accepted shares per minute per miner that vardiff retargets toward
    #[arg(long, value_name = "RATE", default_value_t = 30.0)]
    vardiff_rate: f64,
    /// Runtime worker threads
    #[arg(long, value_name = "N", default_value_t = 4)]
    workers: usize,
    /// Seconds between statistics lines (0: only at exit)
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stats_every: u64,
    /// Drop a connection that sends no complete line for this long (0s: never). Miners submit
    /// every few seconds; bytes without a newline do not count
    #[arg(long, value_name = "DURATION", default_value_t = Timeout(Some(pool::DEFAULT_IDLE_TIMEOUT)))]
    idle_timeout: Timeout,
    /// Most open connections; one more is closed at once, logged and tallied
    /// (refused_over_cap). The open-file limit is raised to fit, or the cap lowered if it cannot
    /// be
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(pool::DEFAULT_MAX_CONNECTIONS).unwrap_or(NonZeroUsize::MIN))]
    max_connections: NonZeroUsize,
    #[command(flatten)]
    knobs: KnobArgs,
}

impl Args {
    fn config(self) -> anyhow::Result<PoolConfig> {
        let difficulty = self
            .difficulty
            .unwrap_or(stratum::HALF_OF_NONCES_DIFFICULTY);
        anyhow::ensure!(
            difficulty.is_finite() && difficulty > 0.0,
            "--difficulty must be a positive number, got {difficulty}"
        );
        anyhow::ensure!(
            self.vardiff_rate > 0.0,
            "--vardiff-rate must be positive, got {}",
            self.vardiff_rate
        );
        let job_interval = Duration::try_from_secs_f64(self.job_interval)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!("--job-interval must be positive, got {}", self.job_interval)
            })?;
        Ok(PoolConfig {
            listen: self.listen,
            difficulty,
            job_interval,
            workers: self.workers,
            vardiff_rate: self.vardiff_rate,
            stats_every: (self.stats_every > 0).then(|| Duration::from_secs(self.stats_every)),
            idle_timeout: self.idle_timeout.0,
            max_connections: self.max_connections.get(),
            knobs: self.knobs.into(),
        })
    }
}

fn main() -> ExitCode {
    let result = Args::parse()
        .config()
        .and_then(|config| testbed::pool::run(config).map_err(anyhow::Error::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("testbed-pool: {err:#}");
            ExitCode::FAILURE
        }
    }
}
