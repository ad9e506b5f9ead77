//! The bundled load driver (`profiler load TARGET`).
//!
//! Miners (stratum) or keep-alive connections (HTTP) start spread over a ramp-up, then send on an
//! open-loop schedule: every request has a send time fixed in advance, and its latency counts
//! from that time to its reply, so a server that stalls cannot hide the stall by slowing the
//! driver down (no coordinated omission). One tokio task per client; latencies go into
//! hdrhistograms; the report shows outcomes, percentiles, connection figures, errors by class,
//! and the driver's own CPU use.
//!
//! Every scheduled send time ends in exactly one of: a reply, a timeout, unanswered (the run was
//! cut short), cut by a server close, unsent (the client had no connection through its own
//! failure), or unsent while the server had closed the connection. A run fails (exit status 2)
//! when an SLO is missed or when failures (errors, timeouts, unanswered and unsent requests,
//! HTTP non-2xx, closes the protocol did not announce) exceed `--max-error-rate` of the
//! scheduled requests. A server's closes are told from failed connects; stratum's
//! `client.reconnect` is followed (on loopback only).
//!
//! From code: build [`LoadOptions`] (e.g. `LoadOptions::new(target, Profile::Smoke)`, then set
//! fields) and call [`run_options`], which returns a [`LoadReport`] and writes it under
//! `output_dir` if set.

mod client;
mod cpu;
mod http;
pub mod profile;
pub mod report;
mod schedule;
pub mod slo;
mod stamped;
mod stats;
mod stratum;
pub mod target;
pub mod wire;

use std::{
    io::IsTerminal,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use tokio::{sync::watch, task::JoinSet};

use self::{
    client::{Plan, StopSignal},
    stats::{Live, Recorder},
};
pub use self::{
    http::HttpMethod,
    profile::{Profile, ProfileSettings},
    report::{
        CloseExample, Connections, DriverUsage, Errors, Failures, LoadReport, Percentiles,
        Requests, Settings, round_to,
    },
    slo::{Slo, SloMetric, SloResult},
    stratum::Credentials,
    target::{Target, TargetError},
};

/// Exit status of `profiler load` for a failed run: an `--slo` bound missed, or failures over
/// `--max-error-rate`. Usage errors, and a run in which no connection ever succeeded, exit 1.
pub const RUN_FAILED: u8 = 2;

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `profiler load` on the command line. Becomes [`LoadOptions`] before anything runs.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// stratum://host:port or http://host:port/path
    pub target: String,
    /// Load profile; the options below override its values.
    #[arg(long, value_enum, default_value_t = Profile::Smoke)]
    pub profile: Profile,
    /// Miners (stratum) or keep-alive connections (HTTP).
    #[arg(long, visible_alias = "connections", value_name = "N")]
    pub miners: Option<usize>,
    /// How long to send, e.g. 30s or 2m.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Shares (or HTTP requests) per minute per miner (or connection).
    #[arg(long, value_name = "PER_MIN")]
    pub share_rate: Option<f64>,
    /// HTTP: requests per second over all connections together (overrides --share-rate).
    #[arg(long, value_name = "PER_S")]
    pub rate: Option<f64>,
    /// Clients start evenly spread over this time, e.g. 10s.
    #[arg(long, value_parser = parse_duration)]
    pub ramp_up: Option<Duration>,
    /// A request without a reply for this long counts as a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// HTTP method [default: POST with --body, else GET].
    #[arg(long, value_enum)]
    pub method: Option<HttpMethod>,
    /// HTTP: file whose contents every POST sends.
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// Stratum worker name prefix: miners authorize as USER.0, USER.1, ...
    #[arg(long, default_value = "loadtest")]
    pub user: String,
    /// Stratum password.
    #[arg(long, default_value = "x")]
    pub password: String,
    /// Latency objective, e.g. p99=5ms (repeatable; p50 p90 p95 p99 p99.9 max mean). A missed
    /// one makes the exit status 2.
    #[arg(long = "slo", value_name = "METRIC=BOUND")]
    pub slos: Vec<Slo>,
    /// Failures allowed before the run fails (exit status 2), as a fraction of the scheduled
    /// requests, e.g. 0.01 for 1 %. Failures: errors (connect, timeout, protocol), unanswered
    /// and unsent requests, HTTP non-2xx replies, connections the server closed without
    /// announcing it (stratum: no client.reconnect first) and the requests those closes cost.
    /// Stratum rejections (low difficulty, stale, duplicate) are not failures.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = parse_rate)]
    pub max_error_rate: f64,
    /// Stratum: note a run in which no share was accepted. Turn off against a pool at real
    /// difficulty, where random nonces are rejected for low difficulty as expected.
    #[arg(long, value_enum, value_name = "on|off", default_value = "on")]
    pub accept_check: Switch,
    /// Where the loadtest_<profile>_<timestamp>.txt and .json reports go.
    #[arg(long, value_name = "DIR", default_value = "results")]
    pub output_dir: PathBuf,
    /// Print the report only; write no files.
    #[arg(long)]
    pub no_files: bool,
    /// No live progress line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Driver runtime threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a fraction from 0 to 1 (e.g. 0.01 for 1 %)"
        )),
    }
}

/// A duration on any of the profiler's command lines: `30s`, `2m`, `1m30s`, `500ms`, or a bare
/// number of seconds. The one parser every subcommand uses.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    // A bare number means seconds.
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|err| err.to_string());
    }
    humantime::parse_duration(text).map_err(|err| format!("{err} (e.g. 30s, 2m, 500ms)"))
}

impl LoadArgs {
    /// The plain options the driver runs on; reads the body file.
    pub fn into_options(self) -> Result<LoadOptions, LoadError> {
        let target: Target = self.target.parse()?;
        let mut options = LoadOptions::new(target, self.profile);
        if let Some(miners) = self.miners {
            options.miners = miners;
        }
        if let Some(duration) = self.duration {
            options.duration = duration;
        }
        if let Some(share_rate) = self.share_rate {
            options.share_rate = share_rate;
        }
        if let Some(ramp_up) = self.ramp_up {
            options.ramp_up = ramp_up;
        }
        options.rate = self.rate;
        options.timeout = self.timeout;
        if let Some(path) = &self.body {
            let body = std::fs::read(path).map_err(|source| LoadError::Body {
                path: path.clone(),
                source,
            })?;
            options.body = Bytes::from(body);
        }
        options.method = self.method.unwrap_or(if self.body.is_some() {
            HttpMethod::Post
        } else {
            HttpMethod::Get
        });
        options.credentials = Credentials {
            user: self.user,
            password: self.password,
        };
        options.slos = self.slos;
        options.max_error_rate = self.max_error_rate;
        options.accept_check = self.accept_check == Switch::On;
        options.output_dir = (!self.no_files).then_some(self.output_dir);
        options.progress = !self.quiet;
        options.threads = self.threads;
        options.handle_ctrl_c = true;
        Ok(options)
    }
}

/// Ends a run early from elsewhere (another thread or task); the run still reports.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl StopHandle {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Default for StopHandle {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a run needs, free of the command line.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    pub target: Target,
    /// Named in the report and the file names; the values below are what runs.
    pub profile: Profile,
    /// Miners (stratum) or connections (HTTP).
    pub miners: usize,
    pub duration: Duration,
    /// Shares (or HTTP requests) per minute per miner (or connection).
    pub share_rate: f64,
    /// HTTP: requests per second over all connections (overrides `share_rate`).
    pub rate: Option<f64>,
    pub ramp_up: Duration,
    pub timeout: Duration,
    pub method: HttpMethod,
    /// HTTP POST body.
    pub body: Bytes,
    pub credentials: Credentials,
    pub slos: Vec<Slo>,
    /// Failures allowed, as a fraction of scheduled requests, before the run fails.
    pub max_error_rate: f64,
    /// Stratum: note a run with no accepted share.
    pub accept_check: bool,
    /// Write `loadtest_<profile>_<timestamp>.{txt,json}` here (`None`: no files).
    pub output_dir: Option<PathBuf>,
    /// A live progress line on stderr.
    pub progress: bool,
    /// Runtime worker threads (`None`: one per core). [`run_options`] builds its runtime with
    /// this many; [`drive`] only reports it.
    pub threads: Option<usize>,
    /// Ctrl-C stops the run early (it still reports).
    pub handle_ctrl_c: bool,
    /// Another way to stop early.
    pub stop: Option<StopHandle>,
}

impl LoadOptions {
    /// The profile's values, GET for HTTP, no SLOs, no files, no progress line.
    pub fn new(target: Target, profile: Profile) -> Self {
        let settings = profile.settings();
        Self {
            target,
            profile,
            miners: settings.miners,
            duration: settings.duration,
            share_rate: settings.share_rate,
            rate: None,
            ramp_up: settings.ramp_up,
            timeout: Duration::from_secs(10),
            method: HttpMethod::Get,
            body: Bytes::new(),
            credentials: Credentials {
                user: "loadtest".to_string(),
                password: "x".to_string(),
            },
            slos: Vec::new(),
            max_error_rate: 0.0,
            accept_check: true,
            output_dir: None,
            progress: false,
            threads: None,
            handle_ctrl_c: false,
            stop: None,
        }
    }

    /// Requests per second all clients together send once ramped up.
    pub fn offered_rate(&self) -> f64 {
        match (&self.target, self.rate) {
            (Target::Http { .. }, Some(rate)) => rate,
            _ => self.miners as f64 * self.share_rate / 60.0,
        }
    }

    fn check(&self) -> Result<Duration, LoadError> {
        let bad = |what: String| Err(LoadError::Options(what));
        if self.miners == 0 {
            return bad("--miners must be at least 1".into());
        }
        if self.duration.is_zero() {
            return bad("--duration must be positive".into());
        }
        if self.timeout.is_zero() {
            return bad("--timeout must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return bad(format!(
                "--max-error-rate must be a fraction from 0 to 1, got {}",
                self.max_error_rate
            ));
        }
        let rate = self.offered_rate();
        if !(rate.is_finite() && rate > 0.0) {
            return bad(format!("the request rate must be positive, got {rate}"));
        }
        if self.rate.is_some() && matches!(self.target, Target::Stratum { .. }) {
            return bad("--rate is for HTTP targets; use --share-rate for stratum".into());
        }
        let interval = Duration::try_from_secs_f64(self.miners as f64 / rate)
            .map_err(|_| LoadError::Options(format!("rate {rate} is out of range")))?;
        if interval < Duration::from_micros(10) {
            return bad(format!(
                "{rate:.0} requests/s over {} clients is over 100000/s per client: add clients",
                self.miners
            ));
        }
        Ok(interval)
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::new(
            Target::Stratum {
                host: "127.0.0.1".to_string(),
                port: 3333,
            },
            Profile::Smoke,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("invalid load options: {0}")]
    Options(String),
    #[error("cannot resolve {target}: check the host name")]
    Resolve {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the request body {}: check --body", path.display())]
    Body {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the driver's async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write the report into {}: make it writable or pass another --output-dir", dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `profiler load`: runs, prints the report, writes its files; exit status 2 when the run failed
/// (an SLO missed, or failures over `--max-error-rate`), an error (1) when no connection ever
/// succeeded.
pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let options = args.into_options()?;
    let report = run_options(options)?;
    print!("{}", report.render_text());
    for file in &report.files {
        println!("report written to {}", file.display());
    }
    if report.connections.established == 0 {
        anyhow::bail!(
            "no connection to {} succeeded: is the server running and listening there?",
            report.target
        );
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(RUN_FAILED)
    })
}

/// Runs the load on a runtime of its own (so call it from outside any tokio runtime), writes
/// the report files if `output_dir` is set, and returns the report.
pub fn run_options(options: LoadOptions) -> Result<LoadReport, LoadError> {
    let threads = options.threads.unwrap_or_else(cpu::cores).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("load-driver")
        .enable_all()
        .build()
        .map_err(LoadError::Runtime)?;
    runtime.block_on(drive(options))
}

/// Runs the load on the current (multi-threaded) runtime, for callers that have one.
pub async fn drive(options: LoadOptions) -> Result<LoadReport, LoadError> {
    let interval = options.check()?;
    let threads = options.threads.unwrap_or_else(cpu::cores).max(1);
    let addr = resolve(&options.target).await?;
    let recorder = Arc::new(Recorder::default());
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let cpu_before = cpu::process_cpu_time();
    let start = Instant::now();
    let plan = Arc::new(Plan {
        addr,
        clients: options.miners,
        start,
        end: start + options.duration,
        ramp_up: options.ramp_up.min(options.duration),
        interval,
        timeout: options.timeout,
        recorder: recorder.clone(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped_at = Arc::new(Mutex::new(None::<Instant>));
    let mut watchers = JoinSet::new();
    {
        let stop_tx = stop_tx.clone();
        let stopped_at = stopped_at.clone();
        let external = options.stop.clone();
        let ctrl_c = options.handle_ctrl_c;
        watchers.spawn(async move {
            let external = async {
                match external {
                    Some(handle) => {
                        let mut rx = handle.0.subscribe();
                        if rx.wait_for(|&stop| stop).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let interrupt = async {
                if !ctrl_c || tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
                eprintln!("\nstopping: waiting up to 1 s for replies in flight");
            };
            tokio::select! {
                () = external => {}
                () = interrupt => {}
            }
            *stopped_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            stop_tx.send_replace(true);
        });
    }
    if options.progress {
        watchers.spawn(progress(plan.clone(), options.duration, threads));
    }

    let mut clients = JoinSet::new();
    match &options.target {
        Target::Stratum { .. } => {
            let credentials = Arc::new(options.credentials.clone());
            for index in 0..options.miners {
                clients.spawn(stratum::miner(
                    plan.clone(),
                    index,
                    credentials.clone(),
                    StopSignal::new(stop_rx.clone()),
                ));
            }
        }
        Target::Http { path, .. } => {
            let spec = Arc::new(http::RequestSpec {
                method: options.method,
                path: path.clone(),
                host: options.target.authority(),
                body: options.body.clone(),
            });
            for index in 0..options.miners {
                clients.spawn(http::connection(
                    plan.clone(),
                    index,
                    spec.clone(),
                    StopSignal::new(stop_rx.clone()),
                ));
            }
        }
    }
    // A client task that panicked is a bug; the others' figures still stand.
    while clients.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let cpu = cpu::process_cpu_time().saturating_sub(cpu_before);
    watchers.abort_all();
    if options.progress && std::io::stderr().is_terminal() {
        eprintln!();
    }

    let stopped = *stopped_at.lock().unwrap_or_else(PoisonError::into_inner);
    let stopped_early = stopped.is_some_and(|at| at < plan.end);
    let window = match stopped {
        Some(at) if stopped_early => at - start,
        _ => options.duration,
    }
    .as_secs_f64()
    .max(1e-9);
    let report = build_report(
        &options,
        &recorder,
        Measured {
            started_at,
            elapsed,
            window,
            stopped_early,
            cpu,
            threads,
        },
    );
    finish(report, options.output_dir.as_deref())
}

async fn resolve(target: &Target) -> Result<SocketAddr, LoadError> {
    let authority = target.authority();
    let resolve_err = |source| LoadError::Resolve {
        target: target.to_string(),
        source,
    };
    tokio::net::lookup_host(&authority)
        .await
        .map_err(resolve_err)?
        .next()
        .ok_or_else(|| {
            resolve_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no addresses",
            ))
        })
}

struct Measured {
    started_at: String,
    elapsed: Duration,
    /// Seconds of the send window (shorter when stopped early).
    window: f64,
    stopped_early: bool,
    cpu: Duration,
    threads: usize,
}

fn build_report(options: &LoadOptions, recorder: &Recorder, measured: Measured) -> LoadReport {
    let live = &recorder.live;
    let replies = Live::get(&live.replies);
    let accepted = Live::get(&live.accepted);
    let latency = recorder.latency();
    let slo = slo::evaluate(&options.slos, latency.as_ref());
    let slo_passed = slo.iter().all(|r| r.passed);
    let protocol = options.target.protocol();
    let requests = Requests {
        scheduled: Live::get(&live.scheduled),
        sent: Live::get(&live.sent),
        replies,
        accepted,
        rejected: Live::get(&live.rejected),
        rejected_by_reason: recorder.reasons(),
        timed_out: Live::get(&live.timed_out),
        unsent: Live::get(&live.unsent),
        unsent_while_closed: Live::get(&live.unsent_while_closed),
        cut_by_close: Live::get(&live.cut_by_close),
        lost_to_closes: Live::get(&live.lost_to_closes),
        unanswered: Live::get(&live.unanswered),
        late_replies: Live::get(&live.late_replies),
        unstamped: Live::get(&live.unstamped),
        send_unstamped: Live::get(&live.send_unstamped),
    };
    let connections = Connections {
        clients_connected: Live::get(&live.clients_connected),
        established: Live::get(&live.established),
        peak_concurrent: Live::get(&live.peak_connections),
        closed_by_server: Live::get(&live.closed_by_server),
        closed_unexpectedly: Live::get(&live.closed_unexpectedly),
        close_examples: recorder.close_examples(),
        reconnect_requests: Live::get(&live.reconnect_requests),
        reconnects_not_followed: Live::get(&live.reconnects_not_followed),
    };
    let errors = Errors {
        connect: Live::get(&live.connect_errors),
        timeout: Live::get(&live.timeouts),
        protocol: Live::get(&live.protocol_errors),
    };
    let failures = Failures::count(
        protocol,
        &requests,
        &errors,
        &connections,
        options.max_error_rate,
    );
    let mut notes = Vec::new();
    if protocol == "stratum" && options.accept_check {
        notes.extend(report::accept_note(&requests, recorder.difficulty()));
    }
    let elapsed_s = measured.elapsed.as_secs_f64();
    let cpu_s = measured.cpu.as_secs_f64();
    let cores = cpu::cores();
    let cpu_cores = cpu_s / elapsed_s.max(1e-9);
    LoadReport {
        schema_version: report::SCHEMA_VERSION,
        profile: options.profile.name().to_string(),
        target: options.target.to_string(),
        protocol: protocol.to_string(),
        started_at: measured.started_at,
        settings: Settings {
            miners: options.miners,
            duration_s: round_to(options.duration.as_secs_f64(), 3),
            share_rate_per_min: round_to(options.offered_rate() * 60.0 / options.miners as f64, 3),
            offered_rate_per_s: round_to(options.offered_rate(), 3),
            ramp_up_s: round_to(options.ramp_up.min(options.duration).as_secs_f64(), 3),
            timeout_s: round_to(options.timeout.as_secs_f64(), 3),
            method: matches!(options.target, Target::Http { .. })
                .then(|| options.method.as_str().to_string()),
            max_error_rate: options.max_error_rate,
            accept_check: options.accept_check,
        },
        elapsed_s: round_to(elapsed_s, 3),
        stopped_early: measured.stopped_early,
        requests,
        achieved_rate_per_s: round_to(replies as f64 / measured.window, 3),
        accepted_rate_per_s: round_to(accepted as f64 / measured.window, 3),
        latency_us: latency,
        sent_latency_us: recorder.sent_latency(),
        connect_us: recorder.connect_time(),
        handshake_us: recorder.handshake_time(),
        connections,
        errors,
        driver: DriverUsage {
            cpu_s: round_to(cpu_s, 3),
            cpu_cores: round_to(cpu_cores, 4),
            cpu_share: round_to(cpu_cores / cores as f64, 4),
            cores,
            threads: measured.threads,
        },
        slo_passed,
        slo,
        passed: slo_passed && failures.passed,
        failures,
        notes,
        files: Vec::new(),
    }
}

fn finish(
    mut report: LoadReport,
    output_dir: Option<&std::path::Path>,
) -> Result<LoadReport, LoadError> {
    if let Some(dir) = output_dir {
        let (txt, json) = report.write_files(dir).map_err(|source| LoadError::Write {
            dir: dir.to_path_buf(),
            source,
        })?;
        report.files = vec![txt, json];
    }
    Ok(report)
}

/// A live line on stderr: rewritten in place on a terminal, a new line every 10 s otherwise.
async fn progress(plan: Arc<Plan>, duration: Duration, threads: usize) {
    let interactive = std::io::stderr().is_terminal();
    let every = if interactive {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let mut ticks = tokio::time::interval_at((plan.start + every).into(), every);
    let cpu_start = cpu::process_cpu_time();
    let (mut last_sent, mut last_at, mut last_cpu) = (0, plan.start, cpu_start);
    loop {
        ticks.tick().await;
        let live = &plan.recorder.live;
        let now = Instant::now();
        let sent = Live::get(&live.sent);
        let cpu = cpu::process_cpu_time();
        let dt = (now - last_at).as_secs_f64().max(1e-9);
        let p99 = plan
            .recorder
            .latency()
            .map(|p| report::format_us(p.p99))
            .unwrap_or_else(|| "-".to_string());
        let line = format!(
            "[{:>5.0}/{:.0} s] clients {}/{} | sent {} ({:.1}/s) | accepted {} rejected {} | errors connect {} timeout {} protocol {} | closed by server {} | p99 {p99} | driver cpu {:.0} % of a core ({threads} threads)",
            (now - plan.start).as_secs_f64(),
            duration.as_secs_f64(),
            Live::get(&live.connections),
            plan.clients,
            sent,
            (sent - last_sent) as f64 / dt,
            Live::get(&live.accepted),
            Live::get(&live.rejected),
            Live::get(&live.connect_errors),
            Live::get(&live.timeouts),
            Live::get(&live.protocol_errors),
            Live::get(&live.closed_by_server),
            (cpu - last_cpu).as_secs_f64() / dt * 100.0,
        );
        if interactive {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        (last_sent, last_at, last_cpu) = (sent, now, cpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn options(args: &[&str]) -> Result<LoadOptions, LoadError> {
        let mut argv = vec!["load"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().load.into_options()
    }

    #[test]
    fn overrides_replace_profile_values() {
        let o = options(&[
            "stratum://127.0.0.1:3333",
            "--profile",
            "stress",
            "--miners",
            "7",
            "--duration",
            "8s",
            "--ramp-up",
            "500ms",
        ])
        .unwrap();
        assert_eq!(o.miners, 7);
        assert_eq!(o.duration, Duration::from_secs(8));
        assert_eq!(o.ramp_up, Duration::from_millis(500));
        assert_eq!(o.share_rate, 20.0, "kept from the stress profile");
        assert_eq!(o.output_dir, Some(PathBuf::from("results")));
        assert!(o.progress);
        assert_eq!(o.check().unwrap(), Duration::from_secs(3));
    }

    #[test]
    fn http_rate_is_spread_over_connections() {
        let o = options(&[
            "http://127.0.0.1:8080/roots",
            "--connections",
            "4",
            "--rate",
            "200",
            "--no-files",
            "-q",
        ])
        .unwrap();
        assert_eq!(o.offered_rate(), 200.0);
        assert_eq!(o.check().unwrap(), Duration::from_millis(20));
        assert_eq!(o.method, HttpMethod::Get);
        assert_eq!(o.output_dir, None);
        assert!(!o.progress);
        // Without --rate the profile's per-connection rate applies: 10 x 5/min.
        let smoke = options(&["http://127.0.0.1:8080/roots", "--duration", "60"]).unwrap();
        assert!((smoke.offered_rate() - 50.0 / 60.0).abs() < 1e-9);
        assert_eq!(smoke.duration, Duration::from_secs(60));
    }

    #[test]
    fn a_body_file_makes_a_post() {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("batch.json");
        std::fs::write(&body, "{\"entries\":[]}").unwrap();
        let o = options(&[
            "http://127.0.0.1:8080/ingest",
            "--body",
            body.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(o.method, HttpMethod::Post);
        assert_eq!(&o.body[..], b"{\"entries\":[]}");
        let missing = options(&[
            "http://127.0.0.1:8080/ingest",
            "--body",
            "/nonexistent/body",
        ]);
        assert!(matches!(missing, Err(LoadError::Body { .. })));
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert!(matches!(options(&["tcp://x:1"]), Err(LoadError::Target(_))));
        for args in [
            &["stratum://127.0.0.1:3333", "--miners", "0"][..],
            &["stratum://127.0.0.1:3333", "--share-rate", "0"],
            &["stratum://127.0.0.1:3333", "--rate", "100"],
            &["stratum://127.0.0.1:3333", "--duration", "0s"],
        ] {
            let err = options(args).unwrap().check().unwrap_err();
            assert!(matches!(err, LoadError::Options(_)), "{args:?}: {err}");
        }
    }

    #[test]
    fn error_rate_and_accept_check_flags() {
        let o = options(&["stratum://127.0.0.1:3333"]).unwrap();
        assert_eq!(o.max_error_rate, 0.0, "any failure fails a run by default");
        assert!(o.accept_check);
        let o = options(&[
            "stratum://127.0.0.1:3333",
            "--max-error-rate",
            "0.01",
            "--accept-check",
            "off",
        ])
        .unwrap();
        assert_eq!(o.max_error_rate, 0.01);
        assert!(!o.accept_check);
        for bad in ["1.5", "-0.1", "1%", "NaN"] {
            let flag = format!("--max-error-rate={bad}");
            let parsed = Cli::try_parse_from(["load", "stratum://h:1", &flag]);
            let Err(err) = parsed else {
                panic!("{bad} was accepted")
            };
            assert!(err.to_string().contains("fraction from 0 to 1"), "{err}");
        }
    }
}
