//! What `testbed-pool` is started with: the command line ([`PoolArgs`]), checked into a plain
//! [`PoolConfig`] that the rest of the pool sees.

use std::{net::SocketAddr, num::NonZeroUsize, time::Duration};

use clap::Parser;

use crate::{
    conn::Timeout,
    knobs::{KnobArgs, Knobs},
    stratum,
};

/// A miner that sends no complete line for this long is dropped. Miners stay connected and
/// submit every few seconds (vardiff aims for 30 shares a minute; the load driver's slowest
/// profiles send one a minute), so ten minutes of silence is a dead or stuck client.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Ten times the load driver's largest profile (stress: 1000 miners).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// `testbed-pool`'s command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "testbed-pool",
    version,
    about = "A stratum v1 mining pool for load tests"
)]
pub struct PoolArgs {
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
    #[arg(long, value_name = "DURATION", default_value_t = Timeout(Some(DEFAULT_IDLE_TIMEOUT)))]
    idle_timeout: Timeout,
    /// Most open connections; one more is closed at once, logged and tallied
    /// (refused_over_cap). The open-file limit is raised to fit, or the cap lowered if it cannot
    /// be
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(DEFAULT_MAX_CONNECTIONS).unwrap_or(NonZeroUsize::MIN))]
    max_connections: NonZeroUsize,
    #[command(flatten)]
    knobs: KnobArgs,
}

/// A command line `testbed-pool` refuses.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--difficulty must be a positive number, got {0}")]
    Difficulty(f64),
    #[error("--vardiff-rate must be positive, got {0}")]
    VardiffRate(f64),
    #[error("--job-interval must be positive, got {0}")]
    JobInterval(f64),
}

impl PoolArgs {
    /// Checks the values clap cannot, and makes the plain config.
    pub fn config(self) -> Result<PoolConfig, ConfigError> {
        let difficulty = self
            .difficulty
            .unwrap_or(stratum::HALF_OF_NONCES_DIFFICULTY);
        if !(difficulty.is_finite() && difficulty > 0.0) {
            return Err(ConfigError::Difficulty(difficulty));
        }
        if self.vardiff_rate.is_nan() || self.vardiff_rate <= 0.0 {
            return Err(ConfigError::VardiffRate(self.vardiff_rate));
        }
        let job_interval = Duration::try_from_secs_f64(self.job_interval)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(ConfigError::JobInterval(self.job_interval))?;
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

/// Everything `testbed-pool` is started with.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub listen: SocketAddr,
    /// Starting (and lowest) share difficulty.
    pub difficulty: f64,
    /// A new block, and so a new clean job, this often.
    pub job_interval: Duration,
    /// Runtime worker threads.
    pub workers: usize,
    /// Accepted shares per minute that vardiff aims for, per miner.
    pub vardiff_rate: f64,
    /// Print a statistics line this often (`None`: only at exit).
    pub stats_every: Option<Duration>,
    /// Drop a connection that sends no complete line for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Refuse connections beyond this many open ones.
    pub max_connections: usize,
    pub knobs: Knobs,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3333)),
            difficulty: stratum::HALF_OF_NONCES_DIFFICULTY,
            job_interval: Duration::from_secs(30),
            workers: 4,
            vardiff_rate: 30.0,
            stats_every: Some(Duration::from_secs(10)),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            knobs: Knobs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<PoolConfig, ConfigError> {
        let argv = std::iter::once("testbed-pool").chain(args.iter().copied());
        PoolArgs::try_parse_from(argv).unwrap().config()
    }

    #[test]
    fn flag_defaults_are_the_config_defaults() {
        // The knobs' flags carry defaults for when a knob is turned on; both are off.
        let parsed = PoolConfig {
            knobs: Knobs::default(),
            ..config(&[]).unwrap()
        };
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", PoolConfig::default())
        );
    }

    #[test]
    fn values_clap_cannot_check_are_refused() {
        for (args, message) in [
            (
                &["--difficulty", "0"][..],
                "--difficulty must be a positive number, got 0",
            ),
            (
                &["--difficulty", "NaN"],
                "--difficulty must be a positive number, got NaN",
            ),
            (
                &["--vardiff-rate=-1"],
                "--vardiff-rate must be positive, got -1",
            ),
            (
                &["--vardiff-rate", "NaN"],
                "--vardiff-rate must be positive, got NaN",
            ),
            (
                &["--job-interval", "0"],
                "--job-interval must be positive, got 0",
            ),
        ] {
            let err = config(args).unwrap_err();
            assert_eq!(err.to_string(), message, "{args:?}");
        }
        assert_eq!(
            config(&["--stats-every", "0", "--idle-timeout", "0s"])
                .unwrap()
                .stats_every,
            None
        );
    }
}
