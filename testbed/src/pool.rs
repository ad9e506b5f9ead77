//! `testbed-pool`: a stratum v1 mining pool. Each connection is a [`Session`] (the protocol,
//! free of sockets) driven by one tokio task on a multi-threaded runtime; every share outcome
//! goes into [`SHARE_LOG`], one `static` mutex that all connections share.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::watch,
};

use crate::{
    conn::{Close, Timeout},
    knobs::{self, Knobs},
    skeleton::{Gauges, ServeError, Service, Spec},
    stratum::{self, EXTRANONCE1_LEN, EXTRANONCE2_LEN, Job, JobMaker, Reject, Submit, Target},
    vardiff::{Vardiff, VardiffConfig},
};

/// Longest request line accepted; a longer one gets an error and a disconnect.
pub const MAX_LINE: usize = 16 * 1024;
/// A client that does not read its replies for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Share-log lines kept in memory.
const RECENT_SHARES: usize = 4096;
/// A miner that sends no complete line for this long is dropped. Miners stay connected and
/// submit every few seconds (vardiff aims for 30 shares a minute; the load driver's slowest
/// profiles send one a minute), so ten minutes of silence is a dead or stuck client.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Ten times the load driver's largest profile (stress: 1000 miners).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The closes the pool can make, in its statistics and exit lines.
const CLOSES: [Close; 4] = [
    Close::Idle,
    Close::LineTooLong,
    Close::WriteTimeout,
    Close::OverCap,
];

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

/// Why the pool could not start or serve.
pub type PoolError = ServeError;

/// The pool's share log, behind the one mutex every connection takes. A `static` on purpose:
/// under `--contend` this is the hot lock, and a profiler names it by this symbol.
pub static SHARE_LOG: Mutex<ShareLog> = Mutex::new(ShareLog::new());

/// Locks [`SHARE_LOG`]; the log stays usable after a panic elsewhere (it holds only tallies).
pub fn share_log() -> MutexGuard<'static, ShareLog> {
    SHARE_LOG.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tallies of every share outcome, the latest lines, and a digest chaining all lines so far.
#[derive(Debug)]
pub struct ShareLog {
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
    workers: BTreeMap<String, WorkerTally>,
    recent: VecDeque<String>,
    digest: [u8; 32],
    best_difficulty: f64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct WorkerTally {
    pub accepted: u64,
    pub rejected: u64,
}

impl ShareLog {
    pub const fn new() -> Self {
        Self {
            accepted: 0,
            rejected: BTreeMap::new(),
            workers: BTreeMap::new(),
            recent: VecDeque::new(),
            digest: [0; 32],
            best_difficulty: 0.0,
        }
    }

    /// Appends one share outcome: `Ok(achieved difficulty)` or the reason it was refused.
    pub fn record(&mut self, worker: &str, job_id: &str, outcome: Result<f64, &Reject>) {
        let tally = match self.workers.get_mut(worker) {
            Some(tally) => tally,
            None => self.workers.entry(worker.to_string()).or_default(),
        };
        let line = match outcome {
            Ok(achieved) => {
                self.accepted += 1;
                tally.accepted += 1;
                self.best_difficulty = self.best_difficulty.max(achieved);
                format!("{worker} job {job_id} accepted difficulty {achieved:.6e}")
            }
            Err(reject) => {
                *self.rejected.entry(reject.kind()).or_default() += 1;
                tally.rejected += 1;
                format!("{worker} job {job_id} rejected {}", reject.kind())
            }
        };
        let mut hasher = Sha256::new();
        hasher.update(self.digest);
        hasher.update(line.as_bytes());
        self.digest = hasher.finalize().into();
        if self.recent.len() == RECENT_SHARES {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Rejections by reason (`stale`, `duplicate`, `low-difficulty`, ...).
    pub fn rejected_by_reason(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected
    }

    pub fn worker(&self, name: &str) -> Option<WorkerTally> {
        self.workers.get(name).copied()
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn best_difficulty(&self) -> f64 {
        self.best_difficulty
    }

    /// The most recent lines, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(String::as_str)
    }

    /// `--contend`'s work: keeps hashing the log's digest until `deadline`.
    fn work_until(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            knobs::burn(&mut self.digest, left);
        }
    }
}

impl Default for ShareLog {
    fn default() -> Self {
        Self::new()
    }
}

/// What every session of one pool shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub difficulty: f64,
    pub vardiff: VardiffConfig,
    pub knobs: Knobs,
}

/// What a session wants written after handling input.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    /// JSON lines, each to be sent with a trailing newline, in order.
    pub lines: Vec<String>,
    /// Close the connection after writing them.
    pub close: bool,
}

/// One miner connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    extranonce1: [u8; EXTRANONCE1_LEN],
    subscribed: bool,
    authorized: HashSet<String>,
    vardiff: Vardiff,
    target: Target,
    /// The jobs a submit may name: those since the last clean job.
    jobs: HashMap<String, Arc<Job>>,
    current: Option<Arc<Job>>,
    /// Shares already submitted against `jobs`, to refuse duplicates.
    seen: HashSet<(String, Vec<u8>, u32, u32)>,
}

impl Session {
    pub fn new(
        config: Arc<SessionConfig>,
        extranonce1: [u8; EXTRANONCE1_LEN],
        job: Option<Arc<Job>>,
        now: Instant,
    ) -> Self {
        let vardiff = Vardiff::new(config.vardiff, config.difficulty, now);
        let mut session = Self {
            extranonce1,
            subscribed: false,
            authorized: HashSet::new(),
            target: Target::from_difficulty(vardiff.difficulty()),
            vardiff,
            jobs: HashMap::new(),
            current: None,
            seen: HashSet::new(),
            config,
        };
        if let Some(job) = job {
            session.remember(job);
        }
        session
    }

    pub fn difficulty(&self) -> f64 {
        self.vardiff.difficulty()
    }

    /// Handles one request line (without its newline).
    pub fn handle_line(&mut self, line: &[u8], now: Instant) -> Output {
        if line.trim_ascii().is_empty() {
            return Output::default();
        }
        let knobs = &self.config.knobs;
        knobs.on_request();
        // Under --contend the hot lock is held across the whole request.
        let held = knobs
            .contend
            .map(|work| (share_log(), Instant::now() + work));
        let mut output = Output::default();
        match held {
            Some((mut log, deadline)) => {
                self.dispatch(line, now, &mut output, Some(&mut log));
                log.work_until(deadline);
            }
            None => self.dispatch(line, now, &mut output, None),
        }
        output
    }

    fn dispatch(
        &mut self,
        line: &[u8],
        now: Instant,
        output: &mut Output,
        log: Option<&mut ShareLog>,
    ) {
        let request: Value = match serde_json::from_slice(line) {
            Ok(value) => value,
            Err(err) => {
                output
                    .lines
                    .push(error_reply(&Value::Null, &Reject::Parse(err.to_string())));
                return;
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = request.get("method").and_then(Value::as_str) else {
            let reject = Reject::InvalidRequest("expected an object with a method".into());
            output.lines.push(error_reply(&id, &reject));
            return;
        };
        let params = request.get("params").unwrap_or(&Value::Null);
        match method {
            "mining.subscribe" => self.subscribe(&id, output),
            "mining.authorize" => output.lines.push(match self.authorize(params) {
                Ok(()) => result_reply(&id, &json!(true)),
                Err(reject) => error_reply(&id, &reject),
            }),
            "mining.extranonce.subscribe" => output.lines.push(result_reply(&id, &json!(true))),
            "mining.submit" => self.submit(&id, params, now, output, log),
            other => output
                .lines
                .push(error_reply(&id, &Reject::UnknownMethod(other.to_string()))),
        }
    }

    fn subscribe(&mut self, id: &Value, output: &mut Output) {
        self.subscribed = true;
        let subscription = hex::encode(self.extranonce1);
        output.lines.push(result_reply(
            id,
            &json!([
                [
                    ["mining.set_difficulty", subscription],
                    ["mining.notify", subscription]
                ],
                hex::encode(self.extranonce1),
                EXTRANONCE2_LEN
            ]),
        ));
        output
            .lines
            .push(push("mining.set_difficulty", &json!([self.difficulty()])));
        if let Some(job) = &self.current {
            // The miner knows no job yet, so this one starts clean whatever the pool said.
            let mut params = job.notify_params();
            params[8] = json!(true);
            output.lines.push(push("mining.notify", &params));
        }
    }

    fn authorize(&mut self, params: &Value) -> Result<(), Reject> {
        let worker = params
            .get(0)
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty() && name.len() <= 128)
            .ok_or_else(|| {
                Reject::InvalidParams("expected [worker, password], worker 1-128 bytes".into())
            })?;
        self.authorized.insert(worker.to_string());
        Ok(())
    }

    fn submit(
        &mut self,
        id: &Value,
        params: &Value,
        now: Instant,
        output: &mut Output,
        log: Option<&mut ShareLog>,
    ) {
        let worker = params
            .get(0)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let job_id = params
            .get(1)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let outcome = self.check_submit(params);
        match log {
            Some(log) => log.record(&worker, &job_id, outcome.as_ref().copied()),
            None => share_log().record(&worker, &job_id, outcome.as_ref().copied()),
        }
        match outcome {
            Ok(_) => {
                output.lines.push(result_reply(id, &json!(true)));
                self.config.knobs.on_accepted();
                self.vardiff.record_share(now);
                output.lines.extend(self.retarget(now));
            }
            Err(reject) => output.lines.push(error_reply(id, &reject)),
        }
    }

    /// Validates a submit for real; `Ok` carries the difficulty the share achieved.
    fn check_submit(&mut self, params: &Value) -> Result<f64, Reject> {
        if !self.subscribed {
            return Err(Reject::NotSubscribed);
        }
        let submit = Submit::parse(params, EXTRANONCE2_LEN)?;
        if !self.authorized.contains(&submit.worker) {
            return Err(Reject::Unauthorized);
        }
        let job = self.jobs.get(&submit.job_id).ok_or(Reject::Stale)?;
        let key = (
            submit.job_id.clone(),
            submit.extranonce2.clone(),
            submit.ntime,
            submit.nonce,
        );
        // A repeat is refused before it costs a hash; only well-formed shares are remembered.
        if self.seen.contains(&key) {
            return Err(Reject::Duplicate);
        }
        let checked = stratum::check_share(job, &self.extranonce1, &submit, &self.target)?;
        self.seen.insert(key);
        if checked.accepted {
            Ok(stratum::hash_difficulty(&checked.hash))
        } else {
            Err(Reject::LowDifficulty)
        }
    }

    /// A new job from the pool: the `mining.notify` to send, if this miner has subscribed.
    pub fn on_job(&mut self, job: Arc<Job>, now: Instant) -> Output {
        self.remember(job.clone());
        let mut output = Output::default();
        if self.subscribed {
            output.lines.extend(self.retarget(now));
            output
                .lines
                .push(push("mining.notify", &job.notify_params()));
        }
        output
    }

    fn remember(&mut self, job: Arc<Job>) {
        if job.clean {
            self.jobs.clear();
            self.seen.clear();
        }
        self.jobs.insert(job.id.clone(), job.clone());
        self.current = Some(job);
    }

    fn retarget(&mut self, now: Instant) -> Option<String> {
        let next = self.vardiff.retarget(now)?;
        self.target = Target::from_difficulty(next);
        Some(push("mining.set_difficulty", &json!([next])))
    }
}

fn result_reply(id: &Value, result: &Value) -> String {
    json!({"id": id, "result": result, "error": null}).to_string()
}

fn error_reply(id: &Value, reject: &Reject) -> String {
    json!({"id": id, "result": null, "error": reject.to_json()}).to_string()
}

fn push(method: &str, params: &Value) -> String {
    json!({"id": null, "method": method, "params": params}).to_string()
}

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
            "connections={} peak_connections={} total_connections={} {} workers={workers} accepted={accepted} rejected={rejected} reasons={} leaked_bytes={} leaked_allocations={} slow_paths={}",
            gauges.connections(),
            gauges.peak_connections(),
            gauges.total_connections(),
            gauges.closes.tallies(&CLOSES),
            if reasons.is_empty() { "-" } else { &reasons },
            knobs::LEAKED_BYTES.load(Ordering::Relaxed),
            knobs::LEAKED_ALLOCATIONS.load(Ordering::Relaxed),
            knobs::SLOW_PATHS.load(Ordering::Relaxed),
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

/// How a read of one request line ended.
enum LineRead {
    /// `buf` holds a line, newline included.
    Line,
    /// The peer closed; `buf` holds whatever came after the last newline.
    Eof,
    /// More than [`MAX_LINE`] bytes without a newline.
    TooLong,
}

/// Reads up to the next newline into `buf`, never holding more than `MAX_LINE + 1` bytes.
/// Cancel-safe: bytes read before a cancellation stay in `buf` for the next call.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<LineRead> {
    let limit = (MAX_LINE + 1).saturating_sub(buf.len()) as u64;
    reader.take(limit).read_until(b'\n', buf).await?;
    Ok(if buf.last() == Some(&b'\n') {
        LineRead::Line
    } else if buf.len() > MAX_LINE {
        LineRead::TooLong
    } else {
        LineRead::Eof
    })
}

/// Serves one miner until it leaves (`Ok(None)`) or the pool drops it (`Ok(Some(why))`).
async fn serve_connection(
    stream: TcpStream,
    mut session: Session,
    mut jobs: watch::Receiver<Arc<Job>>,
    idle_timeout: Option<Duration>,
) -> io::Result<Option<Close>> {
    // Replies are small and latency is what we measure: no Nagle delay.
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::with_capacity(512);
    jobs.mark_unchanged();
    // Only complete lines restart it: bytes trickled without a newline keep nothing alive.
    let idle = tokio::time::sleep(idle_timeout.unwrap_or_default());
    tokio::pin!(idle);
    // Set when the pool ends the connection after the reply it is sending.
    let mut why = None;
    loop {
        let output = tokio::select! {
            read = read_line(&mut reader, &mut buf) => match read? {
                LineRead::Line => {
                    if let Some(timeout) = idle_timeout {
                        idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                    let output = session.handle_line(&buf, Instant::now());
                    buf.clear();
                    output
                }
                LineRead::Eof => {
                    // A last line without its newline still gets its (error) reply.
                    let mut output = session.handle_line(&buf, Instant::now());
                    output.close = true;
                    output
                }
                LineRead::TooLong => {
                    why = Some(Close::LineTooLong);
                    Output {
                        lines: vec![error_reply(
                            &Value::Null,
                            &Reject::InvalidRequest(format!("line longer than {MAX_LINE} bytes")),
                        )],
                        close: true,
                    }
                }
            },
            () = &mut idle, if idle_timeout.is_some() => {
                let _ = write.shutdown().await;
                return Ok(Some(Close::Idle));
            }
            changed = jobs.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
                let job = jobs.borrow_and_update().clone();
                session.on_job(job, Instant::now())
            }
        };
        if !output.lines.is_empty() {
            let mut bytes = Vec::with_capacity(output.lines.iter().map(|l| l.len() + 1).sum());
            for line in &output.lines {
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
            }
            let Ok(written) = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await
            else {
                return Ok(Some(Close::WriteTimeout));
            };
            written?;
        }
        if output.close {
            // Say we are done, then let the client see the reply before the socket goes.
            let _ = write.shutdown().await;
            return Ok(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(knobs: Knobs) -> (Session, Arc<Job>) {
        let config = Arc::new(SessionConfig {
            difficulty: stratum::HALF_OF_NONCES_DIFFICULTY,
            vardiff: VardiffConfig::new(30.0, stratum::HALF_OF_NONCES_DIFFICULTY),
            knobs,
        });
        let job = Arc::new(JobMaker::new(1, 4).next_job(1_700_000_000));
        let session = Session::new(config, [0, 0, 0, 7], Some(job.clone()), Instant::now());
        (session, job)
    }

    fn lines(session: &mut Session, line: &str) -> Vec<Value> {
        session
            .handle_line(line.as_bytes(), Instant::now())
            .lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn handshake(session: &mut Session) {
        let subscribed = lines(
            session,
            r#"{"id":1,"method":"mining.subscribe","params":["t/1"]}"#,
        );
        assert_eq!(
            subscribed.len(),
            3,
            "reply, set_difficulty, notify: {subscribed:?}"
        );
        let authorized = lines(
            session,
            r#"{"id":2,"method":"mining.authorize","params":["w1","x"]}"#,
        );
        assert_eq!(authorized[0]["result"], true);
    }

    fn submit_line(id: u64, job: &Job, extranonce2: &str, nonce: u32) -> String {
        json!({"id": id, "method": "mining.submit",
               "params": ["w1", job.id, extranonce2, format!("{:08x}", job.ntime), format!("{nonce:08x}")]})
        .to_string()
    }

    /// Finds a nonce whose share meets (or misses) this session's target, by hashing here.
    fn nonce_with(job: &Job, extranonce2: [u8; 4], meets: bool) -> u32 {
        let target = Target::from_difficulty(stratum::HALF_OF_NONCES_DIFFICULTY);
        (0..)
            .find(|&nonce| {
                let hash =
                    stratum::sha256d(&job.header(&[0, 0, 0, 7], &extranonce2, job.ntime, nonce));
                target.is_met_by(&hash) == meets
            })
            .unwrap()
    }

    #[test]
    fn subscribe_hands_out_extranonces_and_work() {
        let (mut session, job) = session(Knobs::default());
        let replies = lines(
            &mut session,
            r#"{"id":1,"method":"mining.subscribe","params":[]}"#,
        );
        assert_eq!(replies[0]["id"], 1);
        assert_eq!(replies[0]["result"][1], "00000007");
        assert_eq!(replies[0]["result"][2], EXTRANONCE2_LEN);
        assert_eq!(replies[1]["method"], "mining.set_difficulty");
        assert_eq!(replies[1]["id"], Value::Null);
        assert_eq!(replies[2]["method"], "mining.notify");
        assert_eq!(replies[2]["params"][0], job.id.as_str());
        assert_eq!(replies[2]["params"][8], true);
    }

    #[test]
    fn submits_are_validated_for_real() {
        let (mut session, job) = session(Knobs::default());
        handshake(&mut session);
        let good = nonce_with(&job, [0, 0, 0, 1], true);
        let bad = nonce_with(&job, [0, 0, 0, 1], false);
        let accepted = lines(&mut session, &submit_line(3, &job, "00000001", good));
        assert_eq!(accepted[0], json!({"id": 3, "result": true, "error": null}));
        let low = lines(&mut session, &submit_line(4, &job, "00000001", bad));
        assert_eq!(low[0]["id"], 4);
        assert_eq!(low[0]["error"][0], 23);
        let duplicate = lines(&mut session, &submit_line(5, &job, "00000001", good));
        assert_eq!(duplicate[0]["error"][0], 22);
    }

    #[test]
    fn shares_for_replaced_jobs_are_stale() {
        let (mut session, old) = session(Knobs::default());
        handshake(&mut session);
        let mut new = JobMaker::new(2, 4).next_job(1_700_000_030);
        new.id = "ff".to_string();
        let new = Arc::new(new);
        let pushed = session.on_job(new.clone(), Instant::now());
        assert_eq!(pushed.lines.len(), 1);
        let stale = lines(&mut session, &submit_line(6, &old, "00000001", 1));
        assert_eq!(stale[0]["error"][0], 21);
        let nonce = nonce_with(&new, [0, 0, 0, 1], true);
        let fresh = lines(&mut session, &submit_line(7, &new, "00000001", nonce));
        assert_eq!(fresh[0]["result"], true);
    }

    #[test]
    fn order_of_the_handshake_is_enforced() {
        let (mut session, job) = session(Knobs::default());
        let early = lines(&mut session, &submit_line(1, &job, "00000001", 1));
        assert_eq!(early[0]["error"][0], 25, "submit before subscribe");
        lines(
            &mut session,
            r#"{"id":2,"method":"mining.subscribe","params":[]}"#,
        );
        let unauthorized = lines(&mut session, &submit_line(3, &job, "00000001", 1));
        assert_eq!(unauthorized[0]["error"][0], 24, "submit before authorize");
    }

    #[test]
    fn malformed_requests_get_json_rpc_errors() {
        let (mut session, job) = session(Knobs::default());
        handshake(&mut session);
        for (line, code) in [
            ("not json at all", -32700),
            (r#"{"id":9,"method":"mining.subscribe","params":["#, -32700),
            (r#"[1,2,3]"#, -32600),
            (r#"{"id":9,"params":[]}"#, -32600),
            (
                r#"{"id":9,"method":"mining.frobnicate","params":[]}"#,
                -32601,
            ),
            (
                r#"{"id":9,"method":"mining.authorize","params":[]}"#,
                -32602,
            ),
            (
                r#"{"id":9,"method":"mining.submit","params":["w1"]}"#,
                -32602,
            ),
            (
                r#"{"id":9,"method":"mining.submit","params":"nope"}"#,
                -32602,
            ),
        ] {
            let replies = lines(&mut session, line);
            assert_eq!(replies.len(), 1, "{line}");
            assert_eq!(replies[0]["error"][0], code, "{line}");
            assert_eq!(replies[0]["result"], Value::Null, "{line}");
        }
        // And the session still works.
        let nonce = nonce_with(&job, [0, 0, 0, 2], true);
        assert_eq!(
            lines(&mut session, &submit_line(10, &job, "00000002", nonce))[0]["result"],
            true
        );
    }

    #[test]
    fn contend_holds_the_share_log_across_the_request() {
        let work = Duration::from_millis(3);
        let (mut session, job) = session(Knobs {
            contend: Some(work),
            ..Knobs::default()
        });
        handshake(&mut session);
        let start = Instant::now();
        lines(&mut session, &submit_line(3, &job, "00000003", 1));
        assert!(start.elapsed() >= work);
    }

    #[test]
    fn share_log_tallies_by_worker_and_reason() {
        let mut log = ShareLog::new();
        log.record("a", "1", Ok(3.0));
        log.record("a", "1", Err(&Reject::LowDifficulty));
        log.record("b", "1", Err(&Reject::Stale));
        log.record("b", "2", Ok(9.0));
        assert_eq!(log.accepted(), 2);
        assert_eq!(log.rejected(), 2);
        assert_eq!(
            log.worker("a"),
            Some(WorkerTally {
                accepted: 1,
                rejected: 1
            })
        );
        assert_eq!(log.rejected_by_reason().get("stale"), Some(&1));
        assert_eq!(log.best_difficulty(), 9.0);
        assert_eq!(log.recent().count(), 4);
        assert!(log.recent().last().unwrap().contains("b job 2 accepted"));
    }

    #[tokio::test]
    async fn read_line_caps_the_line_length() {
        let mut input = vec![b'x'; MAX_LINE];
        input.push(b'\n');
        input.extend(vec![b'y'; MAX_LINE + 10]);
        let mut reader = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut buf).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf.len(), MAX_LINE + 1);
        buf.clear();
        assert!(matches!(
            read_line(&mut reader, &mut buf).await.unwrap(),
            LineRead::TooLong
        ));
        assert_eq!(buf.len(), MAX_LINE + 1);

        let mut reader = BufReader::new(&b"{\"id\":1"[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut buf).await.unwrap(),
            LineRead::Eof
        ));
        assert_eq!(buf, b"{\"id\":1");
    }
}
