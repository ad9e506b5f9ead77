//! The load report: what the terminal shows, and the `.txt` and `.json` files under the results
//! directory.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::slo::SloResult;

/// Bumped when a field changes meaning or goes away. 2: `errors.connect` counts failed connects
/// only (server closes moved to `connections.closed_by_server`); `requests.missed` became
/// `requests.unsent`, which now also counts the send times of clients that never connected.
pub const SCHEMA_VERSION: u32 = 2;

/// Latency figures in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    /// `None` for an empty histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Self {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: round_to(h.mean(), 1),
        })
    }

    /// Each figure at most the next: min <= p50 <= ... <= p99.9 <= max.
    pub fn is_ordered(&self) -> bool {
        let chain = [
            self.min, self.p50, self.p90, self.p95, self.p99, self.p999, self.max,
        ];
        chain.windows(2).all(|w| w[0] <= w[1])
            && self.mean >= self.min as f64
            && self.mean <= self.max as f64
    }
}

/// How the run was set up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Miners (stratum) or connections (HTTP).
    pub miners: usize,
    pub duration_s: f64,
    /// Shares or requests per minute per miner or connection.
    pub share_rate_per_min: f64,
    /// What all clients together were scheduled to send, per second, once ramped up.
    pub offered_rate_per_s: f64,
    pub ramp_up_s: f64,
    pub timeout_s: f64,
    /// HTTP method (`None` for stratum).
    pub method: Option<String>,
    /// Failures allowed, as a fraction of scheduled requests (`--max-error-rate`).
    #[serde(default)]
    pub max_error_rate: f64,
    /// Stratum: a run with no accepted share gets a note (`--accept-check`).
    #[serde(default = "yes")]
    pub accept_check: bool,
}

fn yes() -> bool {
    true
}

/// Timed requests: shares (stratum) or HTTP requests. Every scheduled send time ends in exactly
/// one of `replies`, `timed_out`, `unanswered`, `cut_by_close`, `unsent` and
/// `unsent_while_closed` (see [`Requests::accounted`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Requests {
    /// Send times before the end of the run (or the stop), over all clients.
    #[serde(default)]
    pub scheduled: u64,
    pub sent: u64,
    /// Replies matched to a request sent in this run.
    pub replies: u64,
    /// Shares accepted, or HTTP 2xx.
    pub accepted: u64,
    /// Shares refused, or HTTP non-2xx.
    pub rejected: u64,
    /// Why: `low-difficulty`, `stale`, `duplicate`, ... or `status 503`.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// No reply within the timeout.
    #[serde(default)]
    pub timed_out: u64,
    /// Send times that passed while a client had no connection for a reason on its side: a
    /// failed connect, a connection it dropped (timeout, unreadable reply), a refused login, or
    /// no connection ever.
    #[serde(alias = "missed")]
    pub unsent: u64,
    /// Send times that passed while a client was away because the server had closed its
    /// connection (waiting out a `client.reconnect`, or the reconnection backoff).
    #[serde(default)]
    pub unsent_while_closed: u64,
    /// In flight when the server closed the connection.
    #[serde(default)]
    pub cut_by_close: u64,
    /// Of `cut_by_close` and `unsent_while_closed`, those lost to closes the protocol did not
    /// announce (`connections.closed_unexpectedly`): failures.
    #[serde(default)]
    pub lost_to_closes: u64,
    /// Sent and still waiting when the run was cut short, or answered with bytes we could not
    /// read.
    pub unanswered: u64,
    /// Arrived after their request had timed out (counted as timeouts, not replies).
    pub late_replies: u64,
    /// Replies timed in `sent_latency_us` to when the driver read them (and from the start of
    /// its write call), the kernel having given no receive stamp.
    #[serde(default)]
    pub unstamped: u64,
    /// Of the replies with a receive stamp, those timed in `sent_latency_us` from the driver's
    /// write call, the kernel having given no send stamp for the request.
    #[serde(default)]
    pub send_unstamped: u64,
}

impl Requests {
    /// What became of the scheduled send times, summed: equals `scheduled` in every run.
    pub fn accounted(&self) -> u64 {
        self.replies
            + self.timed_out
            + self.unanswered
            + self.cut_by_close
            + self.unsent
            + self.unsent_while_closed
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Connections {
    /// Clients that connected at least once (of `settings.miners`).
    pub clients_connected: u64,
    /// Connections established, reconnections included.
    pub established: u64,
    pub peak_concurrent: u64,
    /// Established connections the server ended: it closed them, or asked us to leave with
    /// `client.reconnect`.
    #[serde(default)]
    pub closed_by_server: u64,
    /// Of those, the ones the protocol did not announce, which count as failures: stratum with
    /// no `client.reconnect` first; HTTP with a request in flight (an idle keep-alive
    /// connection may be closed at any time).
    #[serde(default)]
    pub closed_unexpectedly: u64,
    /// What the server said last before a close: the first few distinct messages, each with
    /// the number of closes that followed it.
    #[serde(default)]
    pub close_examples: Vec<CloseExample>,
    /// `client.reconnect` messages received.
    #[serde(default)]
    pub reconnect_requests: u64,
    /// Of those, the ones naming a host off loopback: the miner reconnected to the run's target
    /// instead.
    #[serde(default)]
    pub reconnects_not_followed: u64,
}

/// The last message received before a server closed a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseExample {
    /// The line (stratum) or status (HTTP), shortened; or that nothing came.
    pub last: String,
    /// Closes that followed this same message.
    pub closes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Errors {
    /// The connect itself failed (a server closing an established connection is
    /// `connections.closed_by_server`).
    pub connect: u64,
    /// No reply within the timeout (requests and handshakes).
    pub timeout: u64,
    /// Unreadable replies, or replies saying our request was malformed (JSON-RPC errors).
    pub protocol: u64,
}

/// What counts against `--max-error-rate`: failed requests and failed connections, each once.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Failures {
    /// Nonzero counts by kind: `non-2xx` (HTTP), `timeouts`, `protocol-errors`,
    /// `connect-errors`, `unanswered`, `unsent`, `closed-by-server` (closes not announced),
    /// `lost-to-closes` (requests those closes cut or kept from being sent).
    pub by_kind: BTreeMap<String, u64>,
    pub total: u64,
    /// `total / requests.scheduled`, at most 1.
    pub rate: f64,
    /// `rate <= settings.max_error_rate`.
    pub passed: bool,
}

impl Failures {
    /// Stratum rejections (low difficulty, stale, duplicate ...) are the protocol at work and
    /// do not count; an HTTP reply other than 2xx does.
    pub fn count(
        protocol: &str,
        requests: &Requests,
        errors: &Errors,
        connections: &Connections,
        max_rate: f64,
    ) -> Self {
        let kinds = [
            (
                "non-2xx",
                if protocol == "http" {
                    requests.rejected
                } else {
                    0
                },
            ),
            ("timeouts", errors.timeout),
            ("protocol-errors", errors.protocol),
            ("connect-errors", errors.connect),
            ("unanswered", requests.unanswered),
            ("unsent", requests.unsent),
            ("closed-by-server", connections.closed_unexpectedly),
            ("lost-to-closes", requests.lost_to_closes),
        ];
        let by_kind: BTreeMap<String, u64> = kinds
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(kind, n)| (kind.to_string(), n))
            .collect();
        let total = by_kind.values().sum::<u64>();
        let rate = match (total, requests.scheduled) {
            (0, _) => 0.0,
            (_, 0) => 1.0,
            (failed, scheduled) => (failed as f64 / scheduled as f64).min(1.0),
        };
        Self {
            by_kind,
            total,
            passed: rate <= max_rate,
            rate: round_to(rate, 6),
        }
    }
}

/// The note for a stratum run in which no share was accepted, unless the check is off.
pub fn accept_note(requests: &Requests, difficulty: Option<f64>) -> Option<String> {
    if requests.accepted > 0 || requests.replies == 0 {
        return None;
    }
    let reasons: Vec<String> = requests
        .rejected_by_reason
        .iter()
        .map(|(why, n)| format!("{why} {n}"))
        .collect();
    let set = difficulty
        .map(|d| format!(" (it set difficulty {d})"))
        .unwrap_or_default();
    Some(format!(
        "no share accepted (0 of {} replies; {}): the driver submits random nonces, which meet \
         difficulty D about once in D x 2^32 tries, so a pool at real difficulty{set} accepts \
         none. Latency and errors still hold. Against such a pool pass --accept-check off; \
         testbed-pool's default difficulty accepts half of random nonces.",
        requests.replies,
        if reasons.is_empty() {
            "no reason given".to_string()
        } else {
            reasons.join(", ")
        },
    ))
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.protocol
    }
}

/// The driver's own CPU use, so a reader can tell whether the driver was the bottleneck.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DriverUsage {
    /// User plus system CPU time of the driver's process over the run.
    pub cpu_s: f64,
    /// `cpu_s / elapsed_s`: cores kept busy on average.
    pub cpu_cores: f64,
    /// `cpu_cores / cores`: share of the whole machine.
    pub cpu_share: f64,
    pub cores: usize,
    /// Runtime worker threads the driver ran on.
    pub threads: usize,
}

/// Everything a load run measured. Serializes to the `.json` report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub schema_version: u32,
    pub profile: String,
    pub target: String,
    /// `stratum` or `http`.
    pub protocol: String,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub settings: Settings,
    /// Wall time from start to the last reply or timeout.
    pub elapsed_s: f64,
    /// Ctrl-C (or the caller) ended the run before its duration.
    pub stopped_early: bool,
    pub requests: Requests,
    /// Replies per second over the send window.
    pub achieved_rate_per_s: f64,
    pub accepted_rate_per_s: f64,
    /// Reply latency, from each request's scheduled send time to its reply.
    pub latency_us: Option<Percentiles>,
    /// The same replies from the moment each request left (the kernel's send stamp of its last
    /// byte) to the moment the reply arrived in the driver's socket (the kernel's receive
    /// stamp): what the server and the network took, without the driver's own lateness in
    /// sending or reading. A server-side view such as `attach --sock` lies inside it. Replies
    /// missing a stamp are timed from the write call or to the read (`requests.send_unstamped`,
    /// `requests.unstamped`).
    #[serde(default)]
    pub sent_latency_us: Option<Percentiles>,
    /// New-connection time: TCP connect.
    pub connect_us: Option<Percentiles>,
    /// Connect to ready for work (stratum: subscribed, authorized, first job received).
    pub handshake_us: Option<Percentiles>,
    pub connections: Connections,
    pub errors: Errors,
    pub driver: DriverUsage,
    pub slo: Vec<SloResult>,
    /// Every objective met (true when none were set).
    pub slo_passed: bool,
    /// Failures against `settings.max_error_rate`.
    #[serde(default)]
    pub failures: Failures,
    /// Every objective met and failures within the allowed rate: `profiler load` exits 0 then,
    /// 2 otherwise.
    #[serde(default)]
    pub passed: bool,
    /// What an operator should know about this run, e.g. why no share was accepted.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Where the report was written, if it was.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// `x` rounded to `decimals` places: the report keeps meaningful digits only, and such short
/// decimals survive a JSON round trip exactly.
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A latency for people: `412 µs`, `1.21 ms`, `3.40 s`.
pub fn format_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

/// A fraction as a percentage with no needless digits: `0 %`, `0.05 %`, `37.5 %`, `100 %`.
fn rate_percent(rate: f64) -> String {
    let percent = rate * 100.0;
    let text = if percent >= 1.0 {
        format!("{percent:.1}")
    } else {
        format!("{percent:.3}")
    };
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} %")
}

fn latency_line(p: &Percentiles) -> String {
    format!(
        "p50 {}  p90 {}  p95 {}  p99 {}  p99.9 {}  max {}  mean {}  (n={})",
        format_us(p.p50),
        format_us(p.p90),
        format_us(p.p95),
        format_us(p.p99),
        format_us(p.p999),
        format_us(p.max),
        format_us(p.mean.round() as u64),
        p.count
    )
}

impl LoadReport {
    fn nouns(&self) -> (&'static str, &'static str) {
        if self.protocol == "stratum" {
            ("miners", "shares")
        } else {
            ("connections", "requests")
        }
    }

    /// The report as the terminal and the `.txt` file show it.
    pub fn render_text(&self) -> String {
        let (clients, units) = self.nouns();
        let s = &self.settings;
        let r = &self.requests;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "profiler load: {} (profile {})",
            self.target, self.profile
        );
        let method = s
            .method
            .as_deref()
            .map(|m| format!(" {m},"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {clients},{method} {:.0} s with {:.0} s ramp-up, {} {units}/min each = {:.1} {units}/s offered, timeout {:.0} s",
            s.miners,
            s.duration_s,
            s.ramp_up_s,
            s.share_rate_per_min,
            s.offered_rate_per_s,
            s.timeout_s
        );
        let _ = writeln!(
            out,
            "  started {}, ran {:.1} s{}",
            self.started_at,
            self.elapsed_s,
            if self.stopped_early {
                " (stopped early)"
            } else {
                ""
            }
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "{units}");
        let _ = writeln!(
            out,
            "  scheduled  {:>9}   sent {}, unsent {}, unanswered {}, timed out {} (late replies {})",
            r.scheduled, r.sent, r.unsent, r.unanswered, r.timed_out, r.late_replies
        );
        let _ = writeln!(
            out,
            "  replies    {:>9}   {:.1}/s achieved",
            r.replies, self.achieved_rate_per_s
        );
        if r.cut_by_close + r.unsent_while_closed > 0 {
            let _ = writeln!(
                out,
                "  server closes: cut in flight {}, unsent while closed {} ({} of them lost to unexpected closes)",
                r.cut_by_close, r.unsent_while_closed, r.lost_to_closes
            );
        }
        let (ok, refused) = if self.protocol == "stratum" {
            ("accepted", "rejected")
        } else {
            ("2xx", "non-2xx")
        };
        let _ = writeln!(
            out,
            "  {ok:<9}  {:>9}   {}   {:.1}/s",
            r.accepted,
            percent(r.accepted, r.replies),
            self.accepted_rate_per_s
        );
        let reasons: Vec<String> = r
            .rejected_by_reason
            .iter()
            .map(|(why, n)| format!("{why} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  {refused:<9}  {:>9}   {}{}",
            r.rejected,
            percent(r.rejected, r.replies),
            if reasons.is_empty() {
                String::new()
            } else {
                format!("   ({})", reasons.join(", "))
            }
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "reply latency, from each request's scheduled send time"
        );
        match &self.latency_us {
            Some(p) => {
                let _ = writeln!(out, "  {}", latency_line(p));
            }
            None => {
                let _ = writeln!(out, "  no replies");
            }
        }
        if let Some(p) = &self.sent_latency_us {
            let _ = writeln!(
                out,
                "  from the request leaving to the reply's arrival (kernel send and receive stamps):"
            );
            let _ = writeln!(out, "  {}", latency_line(p));
            if r.unstamped > 0 {
                let _ = writeln!(
                    out,
                    "  ({} of them to our read of the reply: no kernel receive stamp)",
                    r.unstamped
                );
            }
            if r.send_unstamped > 0 {
                let _ = writeln!(
                    out,
                    "  ({} of them from our write call: no kernel send stamp)",
                    r.send_unstamped
                );
            }
        }
        let _ = writeln!(out);
        let c = &self.connections;
        let _ = writeln!(out, "connections");
        let _ = writeln!(
            out,
            "  {clients} connected {}/{}, peak concurrent {}, established {} (reconnections included)",
            c.clients_connected, s.miners, c.peak_concurrent, c.established
        );
        if let Some(p) = &self.connect_us {
            let _ = writeln!(
                out,
                "  new connection (TCP connect)  p50 {}  p99 {}  max {}",
                format_us(p.p50),
                format_us(p.p99),
                format_us(p.max)
            );
        }
        if let Some(p) = &self.handshake_us {
            let _ = writeln!(
                out,
                "  ready for work (connect, subscribe, authorize, first job)  p50 {}  p99 {}  max {}",
                format_us(p.p50),
                format_us(p.p99),
                format_us(p.max)
            );
        }
        if c.closed_by_server + c.reconnect_requests > 0 {
            let stratum = if self.protocol == "stratum" {
                format!(
                    "without client.reconnect first; client.reconnect received {}{}",
                    c.reconnect_requests,
                    if c.reconnects_not_followed > 0 {
                        format!(
                            " ({} named a host off loopback: reconnected to the target instead)",
                            c.reconnects_not_followed
                        )
                    } else {
                        String::new()
                    }
                )
            } else {
                "with a request in flight".to_string()
            };
            let _ = writeln!(
                out,
                "  CLOSED BY THE SERVER {}, {} of them {stratum}",
                c.closed_by_server, c.closed_unexpectedly,
            );
            for example in &c.close_examples {
                let _ = writeln!(out, "    {} x after: {}", example.closes, example.last);
            }
        }
        let _ = writeln!(out);
        let e = &self.errors;
        let _ = writeln!(
            out,
            "errors          connect {}   timeout {}   protocol {}",
            e.connect, e.timeout, e.protocol
        );
        let d = &self.driver;
        let _ = writeln!(
            out,
            "driver CPU      {:.2} s = {:.1} % of one core, {:.1} % of the machine's {} cores ({} threads){}",
            d.cpu_s,
            d.cpu_cores * 100.0,
            d.cpu_share * 100.0,
            d.cores,
            d.threads,
            if d.cpu_cores >= 0.8 * d.threads as f64 {
                "\n                WARNING: the driver kept its threads busy; latencies include its own delays: add --threads or drive from another machine"
            } else {
                ""
            }
        );
        for result in &self.slo {
            let actual = result
                .actual_us
                .map(format_us)
                .unwrap_or_else(|| "no replies".to_string());
            let _ = writeln!(
                out,
                "SLO             {:<14} {}  (actual {actual})",
                result.objective,
                if result.passed { "PASS" } else { "FAIL" }
            );
        }
        let f = &self.failures;
        let allowed = format!("allowed {}", rate_percent(s.max_error_rate));
        if f.total == 0 {
            let _ = writeln!(
                out,
                "failures        PASS  0 of {} scheduled ({allowed})",
                r.scheduled
            );
        } else {
            let kinds: Vec<String> = f
                .by_kind
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "failures        {}  {} = {} of {} scheduled ({allowed}): {}",
                if f.passed { "PASS" } else { "FAIL" },
                f.total,
                rate_percent(f.rate),
                r.scheduled,
                kinds.join(", ")
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note            {note}");
        }
        out
    }

    /// Writes `loadtest_<profile>_<timestamp>.txt` and `.json` into `dir` (created if needed),
    /// never overwriting an earlier report; returns both paths.
    pub fn write_files(&self, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir)?;
        let stamp: String = self
            .started_at
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        let base = format!("loadtest_{}_{stamp}", self.profile);
        let json = serde_json::to_string_pretty(self)?;
        let text = self.render_text();
        let create = |path: &Path| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
        };
        for attempt in 1..=1000 {
            let name = if attempt == 1 {
                base.clone()
            } else {
                format!("{base}_{attempt}")
            };
            let txt_path = dir.join(format!("{name}.txt"));
            let json_path = dir.join(format!("{name}.json"));
            // create_new claims each name atomically, so parallel runs never share one.
            match create(&json_path) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
            match create(&txt_path) {
                Ok(_) => {}
                Err(err) => {
                    let _ = fs::remove_file(&json_path);
                    if err.kind() == io::ErrorKind::AlreadyExists {
                        continue;
                    }
                    return Err(err);
                }
            }
            fs::write(&txt_path, &text)?;
            fs::write(&json_path, format!("{json}\n"))?;
            return Ok((txt_path, json_path));
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("1000 reports named {base} already in {}", dir.display()),
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::slo::{self, Slo};

    pub(crate) fn sample() -> LoadReport {
        let latency = Percentiles {
            count: 1000,
            min: 90,
            p50: 412,
            p90: 800,
            p95: 950,
            p99: 1210,
            p999: 3400,
            max: 5000,
            mean: 520.2,
        };
        let slos: Vec<Slo> = vec!["p99=5ms".parse().unwrap(), "max=1ms".parse().unwrap()];
        let slo = slo::evaluate(&slos, Some(&latency));
        LoadReport {
            schema_version: SCHEMA_VERSION,
            profile: "standard".into(),
            target: "stratum://127.0.0.1:3333".into(),
            protocol: "stratum".into(),
            started_at: "2026-11-23T01:05:57Z".into(),
            settings: Settings {
                miners: 100,
                duration_s: 60.0,
                share_rate_per_min: 10.0,
                offered_rate_per_s: 16.7,
                ramp_up_s: 10.0,
                timeout_s: 10.0,
                method: None,
                max_error_rate: 0.0,
                accept_check: true,
            },
            elapsed_s: 61.2,
            stopped_early: false,
            requests: Requests {
                scheduled: 1000,
                sent: 1000,
                replies: 1000,
                accepted: 503,
                rejected: 497,
                rejected_by_reason: [
                    ("low-difficulty".to_string(), 490),
                    ("stale".to_string(), 7),
                ]
                .into(),
                ..Requests::default()
            },
            achieved_rate_per_s: 16.6,
            accepted_rate_per_s: 8.4,
            latency_us: Some(latency),
            sent_latency_us: None,
            connect_us: Some(Percentiles {
                count: 100,
                ..latency
            }),
            handshake_us: None,
            connections: Connections {
                clients_connected: 100,
                established: 100,
                peak_concurrent: 100,
                ..Connections::default()
            },
            errors: Errors::default(),
            driver: DriverUsage {
                cpu_s: 1.23,
                cpu_cores: 0.02,
                cpu_share: 0.01,
                cores: 2,
                threads: 2,
            },
            slo_passed: slo.iter().all(|r| r.passed),
            slo,
            failures: Failures {
                passed: true,
                ..Failures::default()
            },
            passed: false,
            notes: Vec::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn text_reads_like_a_pool_report() {
        let text = sample().render_text();
        for expected in [
            "profiler load: stratum://127.0.0.1:3333 (profile standard)",
            "100 miners",
            "accepted         503   50.3 %",
            "(low-difficulty 490, stale 7)",
            "p50 412 µs  p90 800 µs  p95 950 µs  p99 1.21 ms  p99.9 3.40 ms  max 5.00 ms  mean 520 µs  (n=1000)",
            "miners connected 100/100, peak concurrent 100",
            "errors          connect 0   timeout 0   protocol 0",
            "p99<=5ms       PASS",
            "max<=1ms       FAIL  (actual 5.00 ms)",
            "scheduled       1000   sent 1000, unsent 0, unanswered 0, timed out 0 (late replies 0)",
            "failures        PASS  0 of 1000 scheduled (allowed 0 %)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("WARNING"));
        assert!(!text.contains("CLOSED BY THE SERVER"), "no close, no line");
    }

    /// An outage: a server answering 500, then gone. Every kind of failure is named with its
    /// count, and the rate is over the scheduled requests.
    #[test]
    fn failures_name_what_failed_and_how_many() {
        let mut report = sample();
        report.protocol = "http".into();
        report.requests = Requests {
            scheduled: 3200,
            sent: 1300,
            replies: 1290,
            rejected: 1290,
            rejected_by_reason: [("status 500".to_string(), 1290)].into(),
            cut_by_close: 10,
            lost_to_closes: 10,
            unsent: 1900,
            ..Requests::default()
        };
        assert_eq!(report.requests.accounted(), report.requests.scheduled);
        report.errors.connect = 30;
        report.connections.closed_by_server = 10;
        report.connections.closed_unexpectedly = 10;
        report.connections.close_examples = vec![CloseExample {
            last: "HTTP 500".into(),
            closes: 10,
        }];
        let failures = Failures::count(
            "http",
            &report.requests,
            &report.errors,
            &report.connections,
            0.0,
        );
        assert_eq!(failures.total, 1290 + 30 + 1900 + 10 + 10);
        assert_eq!(failures.by_kind["non-2xx"], 1290);
        assert_eq!(failures.by_kind["unsent"], 1900);
        assert_eq!(failures.by_kind["closed-by-server"], 10);
        assert!(
            !failures.by_kind.contains_key("timeouts"),
            "only nonzero kinds"
        );
        assert!(!failures.passed);
        assert_eq!(
            failures.rate, 1.0,
            "more failures than requests is still 100 %"
        );
        report.failures = failures;
        let text = report.render_text();
        for expected in [
            "failures        FAIL  3240 = 100 % of 3200 scheduled (allowed 0 %): closed-by-server 10, connect-errors 30, lost-to-closes 10, non-2xx 1290, unsent 1900",
            "CLOSED BY THE SERVER 10, 10 of them with a request in flight",
            "    10 x after: HTTP 500",
            "server closes: cut in flight 10, unsent while closed 0 (10 of them lost to unexpected closes)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // The same rejections from a stratum pool are the protocol at work.
        let stratum = Failures::count(
            "stratum",
            &report.requests,
            &Errors::default(),
            &Connections::default(),
            0.0,
        );
        assert_eq!(
            stratum.by_kind.keys().collect::<Vec<_>>(),
            ["lost-to-closes", "unsent"]
        );
        // A rate allows a share of the scheduled requests.
        let mut few = Requests {
            scheduled: 1000,
            replies: 995,
            unsent: 5,
            ..Requests::default()
        };
        let allowed = |requests: &Requests, rate| {
            Failures::count(
                "stratum",
                requests,
                &Errors::default(),
                &Connections::default(),
                rate,
            )
        };
        assert!(allowed(&few, 0.005).passed);
        assert!(!allowed(&few, 0.004).passed);
        few.unsent = 0;
        assert!(allowed(&few, 0.0).passed);
        assert_eq!(allowed(&few, 0.0).rate, 0.0);
    }

    #[test]
    fn no_accepted_share_gets_a_note_saying_why() {
        let mut requests = sample().requests;
        assert_eq!(
            accept_note(&requests, Some(1.0)),
            None,
            "some were accepted"
        );
        requests.rejected += requests.accepted;
        requests.accepted = 0;
        requests.rejected_by_reason = [("low-difficulty".to_string(), 1000)].into();
        let note = accept_note(&requests, Some(65536.0)).unwrap();
        assert!(
            note.contains("0 of 1000 replies; low-difficulty 1000"),
            "{note}"
        );
        assert!(note.contains("random nonces"), "{note}");
        assert!(note.contains("difficulty 65536"), "{note}");
        assert!(note.contains("--accept-check off"), "{note}");
        requests.replies = 0;
        assert_eq!(
            accept_note(&requests, None),
            None,
            "no reply, nothing to say"
        );
    }

    /// A schema-1 report still reads: `missed` is `unsent`, new fields default.
    #[test]
    fn schema_1_reports_still_read() {
        let mut json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        let requests = json["requests"].as_object_mut().unwrap();
        for new in [
            "scheduled",
            "timed_out",
            "unsent_while_closed",
            "cut_by_close",
            "lost_to_closes",
        ] {
            requests.remove(new);
        }
        let unsent = requests.remove("unsent").unwrap();
        requests.insert("missed".into(), unsent);
        json.as_object_mut().unwrap().remove("failures");
        json["settings"]
            .as_object_mut()
            .unwrap()
            .remove("accept_check");
        json["schema_version"] = 1.into();
        let back: LoadReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.requests.unsent, 0);
        assert!(back.settings.accept_check);
        assert_eq!(back.failures, Failures::default());
    }

    #[test]
    fn json_round_trips_and_files_never_overwrite() {
        let report = sample();
        let dir = tempfile::tempdir().unwrap();
        let (txt, json) = report.write_files(dir.path()).unwrap();
        assert_eq!(
            json.file_name().unwrap(),
            "loadtest_standard_20261123T010557Z.json"
        );
        let back: LoadReport = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(back, report);
        assert_eq!(fs::read_to_string(&txt).unwrap(), report.render_text());
        let (txt2, json2) = report.write_files(dir.path()).unwrap();
        assert_ne!(txt2, txt);
        assert!(json2.to_string_lossy().ends_with("_2.json"));
    }

    #[test]
    fn percentile_order_is_checked() {
        let report = sample();
        assert!(report.latency_us.unwrap().is_ordered());
        let broken = Percentiles {
            p99: 100,
            ..report.latency_us.unwrap()
        };
        assert!(!broken.is_ordered());
    }

    #[test]
    fn rates_read_naturally() {
        assert_eq!(rate_percent(0.0), "0 %");
        assert_eq!(rate_percent(0.0005), "0.05 %");
        assert_eq!(rate_percent(0.01), "1 %");
        assert_eq!(rate_percent(0.67914), "67.9 %");
        assert_eq!(rate_percent(1.0), "100 %");
    }

    #[test]
    fn latencies_read_naturally() {
        assert_eq!(format_us(999), "999 µs");
        assert_eq!(format_us(1_000), "1.00 ms");
        assert_eq!(format_us(20_480), "20.48 ms");
        assert_eq!(format_us(3_400_000), "3.40 s");
    }
}
