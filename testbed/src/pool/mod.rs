//! `testbed-pool`: a stratum v1 mining pool. Each connection is a [`Session`] (the protocol,
//! free of sockets) driven by one tokio task on a multi-threaded runtime; every share outcome
//! goes into [`SHARE_LOG`], one `static` mutex that all connections share.
//!
//! - `config`: the command line and the [`PoolConfig`] it becomes;
//! - `share_log`: [`SHARE_LOG`], the hot lock under `--contend`;
//! - `session`: the protocol state of one connection, without a socket;
//! - `replies`: the JSON-RPC lines it sends;
//! - `connection`: the socket loop around a session: line reads, writes, the idle deadline;
//! - here: the jobs, the statistics, and the [`Service`] the server skeleton runs.

mod config;
mod connection;
mod replies;
mod session;
mod share_log;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{net::TcpStream, sync::watch};

use self::connection::serve_connection;
pub use self::{
    config::{ConfigError, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, PoolArgs, PoolConfig},
    connection::MAX_LINE,
    session::{Output, Session, SessionConfig},
    share_log::{SHARE_LOG, ShareLog, WorkerTally, share_log},
};
use crate::{
    conn::{Close, Timeout},
    knobs,
    skeleton::{Gauges, ServeError, Service, Spec},
    stratum::{Job, JobMaker},
    vardiff::VardiffConfig,
};

/// The closes the pool can make, in its statistics and exit lines.
const CLOSES: [Close; 4] = [
    Close::Idle,
    Close::LineTooLong,
    Close::WriteTimeout,
    Close::OverCap,
];

/// Why the pool could not start or serve.
pub type PoolError = ServeError;

/// The pool as the skeleton serves it: what every connection shares.
struct Pool {
    sessions: Arc<SessionConfig>,
    jobs: watch::Receiver<Arc<Job>>,
    idle_timeout: Option<Duration>,
    /// The next connection's extranonce1: unique per connection.
    extranonces: AtomicU32,
    /// Accepted shares at the last statistics line.
    last_accepted: AtomicU64,
}

impl Service for Pool {
    fn connection(
        self: &Arc<Self>,
        stream: TcpStream,
    ) -> impl Future<Output = Option<Close>> + Send + 'static {
        let extranonce1 = self
            .extranonces
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes();
        let session = Session::new(
            self.sessions.clone(),
            extranonce1,
            Some(self.jobs.borrow().clone()),
            Instant::now(),
        );
        let jobs = self.jobs.clone();
        let idle_timeout = self.idle_timeout;
        async move {
            // Errors here are one client's problem: drop it and keep serving.
            serve_connection(stream, session, jobs, idle_timeout)
                .await
                .ok()
                .flatten()
        }
    }

    fn stats(&self, gauges: &Gauges, every: Duration) -> String {
        let accepted = share_log().accepted();
        let last = self.last_accepted.swap(accepted, Ordering::Relaxed);
        format!(
            "{} ({:.1} accepted/s)",
            self.summary(gauges),
            (accepted - last) as f64 / every.as_secs_f64()
        )
    }

    /// One line of `key=value` tallies; tests parse it.
    fn summary(&self, gauges: &Gauges) -> String {
        let (accepted, rejected, reasons, workers) = {
            let log = share_log();
            let reasons: Vec<String> = log
                .rejected_by_reason()
                .iter()
                .map(|(reason, n)| format!("{reason}:{n}"))
                .collect();
            (
                log.accepted(),
                log.rejected(),
                reasons.join(","),
                log.workers(),
            )
        };
        format!(
            "connections={} peak_connections={} total_connections={} {} workers={workers} accepted={accepted} rejected={rejected} reasons={} leaked_bytes={} leaked_allocations={} slow_paths={} stalls={}",
            gauges.connections(),
            gauges.peak_connections(),
            gauges.total_connections(),
            gauges.closes.tallies(&CLOSES),
            if reasons.is_empty() { "-" } else { &reasons },
            knobs::LEAKED_BYTES.load(Ordering::Relaxed),
            knobs::LEAKED_ALLOCATIONS.load(Ordering::Relaxed),
            knobs::SLOW_PATHS.load(Ordering::Relaxed),
            knobs::STALLS.load(Ordering::Relaxed),
        )
    }
}

/// Runs the pool until SIGINT or SIGTERM, then prints a summary line and returns.
pub fn run(config: PoolConfig) -> Result<(), PoolError> {
    let spec = Spec {
        name: "testbed-pool",
        thread_name: "pool-worker",
        listen: config.listen,
        workers: config.workers,
        stats_every: config.stats_every,
        max_connections: config.max_connections,
    };
    spec.runtime()?.block_on(serve(spec, config))
}

async fn serve(spec: Spec, config: PoolConfig) -> Result<(), PoolError> {
    let listening = spec.bind().await?;
    let mut maker = JobMaker::new(840_000, 8);
    let (jobs_tx, jobs_rx) = watch::channel(Arc::new(maker.next_job(unix_time())));
    let pool = Arc::new(Pool {
        sessions: Arc::new(SessionConfig {
            difficulty: config.difficulty,
            vardiff: VardiffConfig::new(config.vardiff_rate, config.difficulty),
            knobs: config.knobs.clone(),
        }),
        jobs: jobs_rx,
        idle_timeout: config.idle_timeout,
        extranonces: AtomicU32::new(1),
        last_accepted: AtomicU64::new(0),
    });
    println!(
        "testbed-pool listening on {} (difficulty {:.3e}, new job every {}s, vardiff {} shares/min, {} workers, idle timeout {}, {}, knobs: {})",
        listening.local_addr(),
        config.difficulty,
        config.job_interval.as_secs_f64(),
        config.vardiff_rate,
        config.workers.max(1),
        Timeout(config.idle_timeout),
        listening.describe_cap(),
        config.knobs.describe()
    );
    config
        .knobs
        .start_stalls(share_log::stall_share_log)
        .map_err(ServeError::Stalls)?;

    let job_interval = config.job_interval;
    tokio::spawn(async move {
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + job_interval, job_interval);
        loop {
            ticks.tick().await;
            jobs_tx.send_replace(Arc::new(maker.next_job(unix_time())));
        }
    });
    listening.serve(pool).await;
    Ok(())
}

fn unix_time() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}
