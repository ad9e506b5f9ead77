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

/// Bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// Latency figures in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// Timed requests: shares (stratum) or HTTP requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    pub sent: u64,
    /// Replies matched to a request sent in this run.
    pub replies: u64,
    /// Shares accepted, or HTTP 2xx.
    pub accepted: u64,
    /// Shares refused, or HTTP non-2xx.
    pub rejected: u64,
    /// Why: `low-difficulty`, `stale`, `duplicate`, ... or `status 503`.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Send times that passed while a client had no connection.
    pub missed: u64,
    /// Still waiting when a connection dropped or the run was cut short.
    pub unanswered: u64,
    /// Arrived after their request had timed out (counted as timeouts, not replies).
    pub late_replies: u64,
    /// Replies timed in `sent_latency_us` to when the driver read them, the kernel having given
    /// no receive stamp (HTTP: all of them).
    #[serde(default)]
    pub unstamped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// Clients that connected at least once (of `settings.miners`).
    pub clients_connected: u64,
    /// Connections established, reconnections included.
    pub established: u64,
    pub peak_concurrent: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Errors {
    /// Connecting failed, or the server dropped an established connection.
    pub connect: u64,
    /// No reply within the timeout.
    pub timeout: u64,
    /// Unreadable replies, or replies saying our request was malformed.
    pub protocol: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.protocol
    }
}

/// The driver's own CPU use, so a reader can tell whether the driver was the bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The same replies from the moment each request was actually written to the moment the
    /// reply arrived in the driver's socket (the kernel's receive timestamp; HTTP: when it was
    /// read): what the server and the network took, without the driver's own lateness in
    /// sending or reading. This is what a server-side view such as `attach --sock` sees.
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
            "  submitted  {:>9}   {:.1}/s achieved",
            r.sent, self.achieved_rate_per_s
        );
        let _ = writeln!(
            out,
            "  replies    {:>9}   timed out {}, unanswered {}, late {}, missed sends {}",
            r.replies, self.errors.timeout, r.unanswered, r.late_replies, r.missed
        );
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
            let _ = writeln!(out, "  from the actual write to the reply's arrival:");
            let _ = writeln!(out, "  {}", latency_line(p));
            if r.unstamped > 0 {
                let _ = writeln!(
                    out,
                    "  ({} of them to our read of the reply: no kernel receive stamp)",
                    r.unstamped
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
    use crate::load::slo::{self, Slo};

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
            },
            elapsed_s: 61.2,
            stopped_early: false,
            requests: Requests {
                sent: 1000,
                replies: 1000,
                accepted: 503,
                rejected: 497,
                rejected_by_reason: [
                    ("low-difficulty".to_string(), 490),
                    ("stale".to_string(), 7),
                ]
                .into(),
                missed: 0,
                unanswered: 0,
                late_replies: 0,
                unstamped: 0,
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
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("WARNING"));
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
    fn latencies_read_naturally() {
        assert_eq!(format_us(999), "999 µs");
        assert_eq!(format_us(1_000), "1.00 ms");
        assert_eq!(format_us(20_480), "20.48 ms");
        assert_eq!(format_us(3_400_000), "3.40 s");
    }
}
