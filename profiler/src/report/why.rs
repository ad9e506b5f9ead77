//! The `why` family's reports: what made the slowest requests slow, against typical ones
//! (`tail.txt`, `tail.json`, `tail.svg`, `tail-vs-typical.svg`, the summary's `why` section).
//!
//! Pure: it works on requests whose stacks are already named, so it is tested from made-up
//! requests.

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use profiler_common::why::category;
use serde::{Deserialize, Serialize};

use super::{futex::classify, profile::named_frame as leaf};

/// Frames of a stack, root first (shared between the requests that hit it).
pub type Frames = Arc<Vec<String>>;

/// A request's longest lock wait, named.
#[derive(Debug, Clone, PartialEq)]
pub struct LockWait {
    /// The lock's name (`SHARE_LOG`, `heap 0x…`).
    pub name: String,
    /// Where the request's thread waited.
    pub waiter: Frames,
    /// Where the thread that released it (woke the waiter) was.
    pub holder: Frames,
}

/// One finished request, its stacks named.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub port: u16,
    pub latency_ns: u64,
    /// Nanoseconds per `profiler_common::why::category`; they sum to the latency.
    pub ns: [u64; category::COUNT],
    /// CPU samples taken while it ran.
    pub samples: Vec<Frames>,
    pub lock: Option<LockWait>,
    /// Its longest block other than a futex wait.
    pub blocked: Option<Frames>,
}

/// Which requests are the tail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tail {
    /// At or above this quantile of the port's latencies (0.99 for p99).
    Quantile(f64),
    /// At or above this latency, in nanoseconds.
    Latency(u64),
}

impl Default for Tail {
    fn default() -> Self {
        Self::Quantile(0.99)
    }
}

impl std::str::FromStr for Tail {
    type Err = String;

    /// `p99`, `p99.9`, or a latency such as `5ms`.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(p) = text.strip_prefix('p') {
            let p: f64 = p
                .parse()
                .map_err(|_| format!("{text:?}: a percentile is p99 or p99.9"))?;
            if !(0.0 < p && p < 100.0) {
                return Err(format!("{text:?}: a percentile is between p0 and p100"));
            }
            return Ok(Self::Quantile(p / 100.0));
        }
        let latency = humantime::parse_duration(text)
            .map_err(|e| format!("{text:?}: {e} (e.g. p99, p99.9 or 5ms)"))?;
        Ok(Self::Latency(
            latency.as_nanos().min(u64::MAX as u128) as u64
        ))
    }
}

impl std::fmt::Display for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quantile(q) => write!(f, "p{}", q * 100.0),
            Self::Latency(ns) => write!(f, "{}", duration(*ns as f64 / 1000.0)),
        }
    }
}

/// One reason requests waited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    /// `lock`, `cpu`, `runqueue`, `blocked`, `queued` or `other`.
    pub kind: String,
    /// The lock, the function on the CPU, where it blocked, or what the kind means.
    pub name: String,
    /// Of the group's total time, 0 to 1; a group's shares sum to 1.
    pub share: f64,
    /// Per request of the group, microseconds.
    pub mean_us: f64,
    /// The heaviest stack of this cause, root first: the CPU path, where it blocked, or where
    /// it waited for the lock.
    pub stack: Vec<String>,
    /// For a lock: the heaviest stack that released it to a waiting request (the holder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holder_stack: Vec<String>,
}

/// Requests between two latencies, and where their time went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The lowest latency in the group, microseconds.
    pub threshold_us: f64,
    /// The highest, for the typical band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_us: Option<f64>,
    pub requests: u64,
    pub mean_us: f64,
    /// Heaviest first.
    pub causes: Vec<Cause>,
}

/// One listening port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortWhy {
    pub port: u16,
    /// Requests followed to their reply.
    pub requests: u64,
    /// On-CPU time per request, all requests: the "CPU at N requests/s" figure.
    pub cpu_us_per_request: f64,
    /// The slowest requests.
    pub tail: Group,
    /// p25 to p75.
    pub typical: Group,
}

/// `tail.json` and the summary's `why` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WhyReport {
    /// Which requests are the tail: `p99`, `p99.9`, or a latency.
    pub tail_rule: String,
    /// Busiest port first.
    pub ports: Vec<PortWhy>,
    /// Requests not kept because the capture followed more than it holds (a uniform sample
    /// of them was kept instead).
    #[serde(default)]
    pub requests_not_kept: u64,
    /// No CPU samples were taken (`cpu` off): on-CPU time has no stacks.
    #[serde(default)]
    pub cpu_without_stacks: bool,
}

/// The latency at quantile `q` of sorted latencies.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Default)]
struct Acc {
    ns: f64,
    stacks: HashMap<Frames, f64>,
    holders: HashMap<Frames, f64>,
}

fn heaviest(weights: &HashMap<Frames, f64>) -> Vec<String> {
    weights
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(frames, _)| frames.as_ref().clone())
        .unwrap_or_default()
}

/// Time per cause, with the stacks it was spent in.
#[derive(Default)]
struct Causes(HashMap<(&'static str, String), Acc>);

impl Causes {
    fn add(
        &mut self,
        kind: &'static str,
        name: String,
        ns: f64,
        stack: Option<&Frames>,
    ) -> Option<&mut Acc> {
        if ns <= 0.0 {
            return None;
        }
        let acc = self.0.entry((kind, name)).or_default();
        acc.ns += ns;
        if let Some(stack) = stack {
            *acc.stacks.entry(stack.clone()).or_default() += ns;
        }
        Some(acc)
    }
}

/// How CPU samples are named: by their leafmost own frame, or by the frame that sets them apart
/// from another group's samples.
enum CpuNames<'a> {
    Leaf,
    /// The frame whose share of this group's samples most exceeds its share of the other
    /// group's (the shallowest of near ties): the tail's CPU is named by what typical requests
    /// do not run, `slow_path` rather than the hashing it calls. With fewer than
    /// [`MIN_REFERENCE`] samples the other group says nothing (typical requests of tens of
    /// microseconds rarely get a sample at 99 Hz), and a sample is named by the deepest own
    /// frame nearly all of the group's samples share.
    Apart(&'a HashMap<String, f64>, usize),
}

/// Samples the other group needs before its shares set frames apart: below this, a frame the
/// tail runs through (the thread's start, the runtime, the request handler) looked distinctive
/// only because the typical requests were not sampled.
const MIN_REFERENCE: usize = 10;

/// The deepest own frame on `stack` that at least 90% of the group's samples run through: the
/// path the tail's CPU time shares, as deep as it agrees (below the thread's start and the
/// handler every request runs, where nothing says those are not the cause).
fn shared_path(stack: &Frames, shares: &HashMap<String, f64>) -> Option<String> {
    stack
        .iter()
        .filter(|f| !f.ends_with(crate::symbolize::KERNEL_SUFFIX))
        .take_while(|f| shares.get(*f).copied().unwrap_or(0.0) >= 0.9)
        .filter(|f| !super::profile::is_machinery(f))
        .last()
        .cloned()
}

/// The share of `samples` that each frame appears in.
fn frame_shares<'a>(samples: impl Iterator<Item = &'a Frames>) -> HashMap<String, f64> {
    let mut counts: HashMap<String, f64> = HashMap::new();
    let mut n = 0.0;
    for stack in samples {
        n += 1.0;
        let mut seen: Vec<&String> = stack.iter().collect();
        seen.sort();
        seen.dedup();
        for frame in seen {
            *counts.entry(frame.clone()).or_default() += 1.0;
        }
    }
    for count in counts.values_mut() {
        *count /= n;
    }
    counts
}

impl CpuNames<'_> {
    fn name(&self, stack: &Frames, shares: &HashMap<String, f64>) -> String {
        if super::cpu::is_probe_overhead(stack) {
            return super::cpu::OVERHEAD.into();
        }
        let Self::Apart(other, reference) = self else {
            return leaf(stack);
        };
        if *reference < MIN_REFERENCE {
            return shared_path(stack, shares).unwrap_or_else(|| leaf(stack));
        }
        let excess = |f: &String| {
            shares.get(f).copied().unwrap_or(0.0) - other.get(f).copied().unwrap_or(0.0)
        };
        let own = stack
            .iter()
            .filter(|f| !f.ends_with(crate::symbolize::KERNEL_SUFFIX));
        let best = own.clone().map(excess).fold(f64::MIN, f64::max);
        if best <= 0.1 {
            return leaf(stack);
        }
        own.filter(|f| excess(f) >= best - 0.05)
            .find(|f| !super::profile::is_machinery(f))
            .cloned()
            .unwrap_or_else(|| leaf(stack))
    }
}

/// Where the time of `requests` went.
fn group(requests: &[&Request], names: &CpuNames<'_>) -> Group {
    let n = requests.len() as u64;
    let total: f64 = requests.iter().map(|r| r.latency_ns as f64).sum();
    let mut causes = Causes::default();
    // CPU samples fall uniformly over CPU time, but a request of a few microseconds rarely
    // gets one: the group's CPU time is split by where the group's samples fell.
    let mut cpu_ns = 0.0;
    let mut samples: HashMap<Frames, f64> = HashMap::new();
    for r in requests {
        let ns = |c: usize| r.ns[c] as f64;
        causes.add(
            "queued",
            "before the server read it".into(),
            ns(category::QUEUED),
            None,
        );
        causes.add(
            "runqueue",
            "waiting for a CPU".into(),
            ns(category::RUNQUEUE),
            None,
        );
        causes.add(
            "other",
            "waiting in the server, carried by no thread".into(),
            ns(category::OTHER),
            None,
        );
        cpu_ns += ns(category::CPU);
        for sample in &r.samples {
            *samples.entry(sample.clone()).or_default() += 1.0;
        }
        match &r.lock {
            // A condition variable's wait is waiting for another thread's work, not a lock.
            Some(lock) if classify(&lock.waiter) == "wait" => {
                causes.add(
                    "blocked",
                    format!("waiting on {}", lock.name),
                    ns(category::LOCK),
                    Some(&lock.waiter),
                );
            }
            Some(lock) => {
                let held = ns(category::LOCK);
                if let Some(acc) = causes.add("lock", lock.name.clone(), held, Some(&lock.waiter)) {
                    *acc.holders.entry(lock.holder.clone()).or_default() += held;
                }
            }
            None => {
                causes.add("lock", "a futex".into(), ns(category::LOCK), None);
            }
        }
        match &r.blocked {
            // Its threads went back to waiting for new work (poll, epoll, select): nothing
            // worked on this request meanwhile, which is not the same as being blocked in it.
            Some(at) if super::idle::is_idle(at) => causes.add(
                "other",
                "waiting in the server, its threads back at waiting for new work".into(),
                ns(category::BLOCKED),
                Some(at),
            ),
            Some(at) => causes.add("blocked", leaf(at), ns(category::BLOCKED), Some(at)),
            None => causes.add("blocked", "off CPU".into(), ns(category::BLOCKED), None),
        };
    }
    let taken: f64 = samples.values().sum();
    if taken == 0.0 {
        causes.add("cpu", "on CPU (no sample)".into(), cpu_ns, None);
    }
    let shares = frame_shares(requests.iter().flat_map(|r| &r.samples));
    for (stack, n) in &samples {
        let name = names.name(stack, &shares);
        causes.add("cpu", name, cpu_ns * n / taken, Some(stack));
    }
    let mut causes: Vec<Cause> = causes
        .0
        .into_iter()
        .map(|((kind, name), acc)| Cause {
            kind: kind.into(),
            name,
            share: if total > 0.0 { acc.ns / total } else { 0.0 },
            mean_us: acc.ns / n.max(1) as f64 / 1000.0,
            stack: heaviest(&acc.stacks),
            holder_stack: heaviest(&acc.holders),
        })
        .collect();
    causes.sort_by(|a, b| {
        b.share
            .total_cmp(&a.share)
            .then_with(|| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)))
    });
    Group {
        threshold_us: requests.iter().map(|r| r.latency_ns).min().unwrap_or(0) as f64 / 1000.0,
        upper_us: None,
        requests: n,
        mean_us: total / n.max(1) as f64 / 1000.0,
        causes,
    }
}

/// The tail and the typical band of each port.
/// Of one port's requests (`(latency, time by cause)`), the tail by the same rule as
/// [`analyze`]: how many, and their time by cause. For the agent, per drain window.
pub fn tail_time(
    requests: &mut [(u64, [u64; category::COUNT])],
    tail: Tail,
) -> (u64, [u64; category::COUNT]) {
    requests.sort_by_key(|r| r.0);
    let slow: &[(u64, [u64; category::COUNT])] = match tail {
        Tail::Quantile(_) if requests.is_empty() => &[],
        Tail::Quantile(q) => {
            let from = ((q * requests.len() as f64).floor() as usize).min(requests.len() - 1);
            &requests[from..]
        }
        Tail::Latency(ns) => &requests[requests.partition_point(|r| r.0 < ns)..],
    };
    let mut ns = [0u64; category::COUNT];
    for (_, by_cause) in slow {
        for (sum, n) in ns.iter_mut().zip(by_cause) {
            *sum += n;
        }
    }
    (slow.len() as u64, ns)
}

pub fn analyze(requests: &[Request], tail: Tail) -> Vec<PortWhy> {
    let mut by_port: HashMap<u16, Vec<&Request>> = HashMap::new();
    for r in requests {
        by_port.entry(r.port).or_default().push(r);
    }
    let mut ports: Vec<PortWhy> = by_port
        .into_iter()
        .map(|(port, mut reqs)| {
            reqs.sort_by_key(|r| r.latency_ns);
            let sorted: Vec<u64> = reqs.iter().map(|r| r.latency_ns).collect();
            // The tail is the slowest (1 - q) of the requests (at least one), or those at or
            // above a latency.
            let slow: Vec<&Request> = match tail {
                Tail::Quantile(q) => {
                    let from = ((q * reqs.len() as f64).floor() as usize).min(reqs.len() - 1);
                    reqs[from..].to_vec()
                }
                Tail::Latency(ns) => reqs
                    .iter()
                    .copied()
                    .filter(|r| r.latency_ns >= ns)
                    .collect(),
            };
            let (p25, p75) = (quantile(&sorted, 0.25), quantile(&sorted, 0.75));
            let typical: Vec<&Request> = reqs
                .iter()
                .copied()
                .filter(|r| (p25..=p75).contains(&r.latency_ns))
                .collect();
            let cpu_ns: u64 = reqs.iter().map(|r| r.ns[category::CPU]).sum();
            let typical_shares = frame_shares(typical.iter().flat_map(|r| &r.samples));
            let typical_samples: usize = typical.iter().map(|r| r.samples.len()).sum();
            let mut typical = group(&typical, &CpuNames::Leaf);
            typical.upper_us = Some(p75 as f64 / 1000.0);
            let tail = group(&slow, &CpuNames::Apart(&typical_shares, typical_samples));
            PortWhy {
                port,
                requests: reqs.len() as u64,
                cpu_us_per_request: cpu_ns as f64 / reqs.len().max(1) as f64 / 1000.0,
                tail,
                typical,
            }
        })
        .collect();
    ports.sort_by_key(|p| (std::cmp::Reverse(p.requests), p.port));
    ports
}

fn duration(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// A cause in a few words: "81% waiting for lock SHARE_LOG (held by stall_loop)".
pub fn phrase(c: &Cause) -> String {
    format!("{:.0}% {}", c.share * 100.0, describe(c))
}

/// What a cause is: "waiting for lock SHARE_LOG (held by stall_loop)".
fn describe(c: &Cause) -> String {
    let holder = if c.holder_stack.is_empty() {
        String::new()
    } else {
        format!(" (held by {})", leaf(&c.holder_stack))
    };
    match c.kind.as_str() {
        "lock" => format!("waiting for lock {}{holder}", c.name),
        "cpu" if c.stack.is_empty() => c.name.clone(),
        "cpu" => format!("on CPU in {}", c.name),
        "runqueue" => "in the run queue".into(),
        "queued" => "queued before the read".into(),
        "blocked" => format!("blocked in {}", c.name),
        _ => c.name.clone(),
    }
}

fn summary_line(g: &Group, most: usize) -> String {
    let parts: Vec<String> = g
        .causes
        .iter()
        .take(most)
        .filter(|c| c.share >= 0.005)
        .map(phrase)
        .collect();
    parts.join(", ")
}

/// The digest's line for a port: its tail's top cause, and the next when it has a tenth.
pub fn finding(p: &PortWhy, rule: &str) -> Option<super::findings::Finding> {
    let top = p.tail.causes.first()?;
    let next = p
        .tail
        .causes
        .get(1)
        .filter(|c| c.share >= 0.1)
        .map(|c| format!(", {:.0}% {}", c.share * 100.0, describe(c)))
        .unwrap_or_default();
    Some(super::findings::Finding {
        family: "why".into(),
        subject: format!("latency :{}", p.port),
        // Explaining a port's tail outranks its bare p99 (`sock`'s finding on the subject).
        impact: top.share.max(0.5),
        what: format!(
            "slowest requests on :{} ({rule}, ≥ {}): {:.0}% of their time {}{next}",
            p.port,
            duration(p.tail.threshold_us),
            top.share * 100.0,
            describe(top)
        ),
        file: "tail.txt".into(),
    })
}

/// `tail.txt` and the terminal's tail section.
pub fn text(report: &WhyReport) -> String {
    let mut out = String::new();
    if report.ports.is_empty() {
        out.push_str("no request was followed to its reply\n");
    }
    for p in &report.ports {
        let t = &p.tail;
        let _ = writeln!(
            out,
            "port {}: slowest {} of {} requests (≥ {}, {} tail, mean {}): {}",
            p.port,
            t.requests,
            p.requests,
            duration(t.threshold_us),
            report.tail_rule,
            duration(t.mean_us),
            summary_line(t, 4),
        );
        let y = &p.typical;
        let _ = writeln!(
            out,
            "  typical requests (p25–p75, {}–{}, mean {}): {}",
            duration(y.threshold_us),
            duration(y.upper_us.unwrap_or(0.0)),
            duration(y.mean_us),
            summary_line(y, 3),
        );
        let _ = writeln!(
            out,
            "  CPU per request: {:.1} µs (all {} requests)",
            p.cpu_us_per_request, p.requests
        );
        for (label, g) in [("tail", t), ("typical", y)] {
            let _ = writeln!(out, "  {label} causes:");
            for c in g.causes.iter().take(8) {
                let _ = writeln!(
                    out,
                    "    {:>5.1}%  {:>9}/req  {:<8} {}{}",
                    c.share * 100.0,
                    duration(c.mean_us),
                    c.kind,
                    c.name,
                    if c.stack.is_empty() {
                        String::new()
                    } else {
                        format!("  at {}", super::futex::leaf_frames(&c.stack, 4))
                    }
                );
                if !c.holder_stack.is_empty() {
                    let _ = writeln!(
                        out,
                        "    {:>32}held by {}",
                        "",
                        super::futex::leaf_frames(&c.holder_stack, 4)
                    );
                }
            }
        }
        out.push('\n');
    }
    if report.cpu_without_stacks {
        out.push_str("on-CPU time has no stacks: capture with --cpu (or --all) for them\n");
    }
    if report.requests_not_kept > 0 {
        let _ = writeln!(
            out,
            "{} requests beyond what a capture keeps were sampled uniformly",
            report.requests_not_kept
        );
    }
    out
}

/// Collapsed stacks of a group's time by cause, in microseconds: the cause is the root frame
/// (`lock SHARE_LOG`, `cpu`, …), its heaviest stack under it; a lock's holder stack hangs
/// under `held by`.
pub fn folded(port: u16, g: &Group) -> Vec<String> {
    g.causes
        .iter()
        .filter_map(|c| {
            let us = (c.mean_us * g.requests as f64).round() as u64;
            if us == 0 {
                return None;
            }
            let root = format!(":{port} {} {}", c.kind, c.name).replace(';', ",");
            let mut frames = vec![root];
            if c.kind == "lock" && !c.holder_stack.is_empty() {
                frames.push("held by".into());
                frames.extend(c.holder_stack.iter().cloned());
            } else {
                frames.extend(c.stack.iter().cloned());
            }
            Some(format!("{} {us}", frames.join(";")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &[&str]) -> Frames {
        Arc::new(f.iter().map(|s| s.to_string()).collect())
    }

    fn request(latency_us: u64, lock_us: u64) -> Request {
        let mut ns = [0; category::COUNT];
        ns[category::QUEUED] = 10_000;
        ns[category::LOCK] = lock_us * 1000;
        ns[category::CPU] = latency_us * 1000 - ns[category::QUEUED] - ns[category::LOCK];
        Request {
            port: 3333,
            latency_ns: latency_us * 1000,
            ns,
            samples: vec![frames(&["main", "handle", "validate_share", "sha256d"])],
            lock: (lock_us > 0).then(|| LockWait {
                name: "SHARE_LOG".into(),
                waiter: frames(&["main", "submit", "pthread_mutex_lock"]),
                holder: frames(&["stall_thread", "stall_loop"]),
            }),
            blocked: None,
        }
    }

    /// 990 fast requests on the CPU, 10 slow ones waiting for a lock a stall holds.
    fn sample() -> Vec<Request> {
        let mut requests: Vec<Request> = (0..990).map(|i| request(30 + i % 20, 0)).collect();
        requests.extend((0..10).map(|_| request(15_000, 14_000)));
        requests
    }

    #[test]
    fn the_tail_is_the_lock_and_its_holder() {
        let ports = analyze(&sample(), Tail::default());
        let p = &ports[0];
        assert_eq!((p.port, p.requests), (3333, 1000));
        let tail = &p.tail;
        assert_eq!(tail.requests, 10, "{tail:#?}");
        let top = &tail.causes[0];
        assert_eq!(
            (top.kind.as_str(), top.name.as_str()),
            ("lock", "SHARE_LOG")
        );
        assert!(top.share > 0.9, "{top:#?}");
        assert_eq!(top.holder_stack.last().unwrap(), "stall_loop");
        let sum: f64 = tail.causes.iter().map(|c| c.share).sum();
        assert!((sum - 1.0).abs() < 1e-9, "shares sum to {sum}");
        // Typical requests never waited for the lock.
        let typical = &p.typical;
        assert!(typical.causes.iter().all(|c| c.kind != "lock"));
        assert_eq!(typical.causes[0].name, "sha256d");
        let text = text(&WhyReport {
            tail_rule: Tail::default().to_string(),
            ports: ports.clone(),
            ..WhyReport::default()
        });
        assert!(
            text.contains("waiting for lock SHARE_LOG (held by stall_loop)"),
            "{text}"
        );
        let lines = folded(3333, tail);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(":3333 lock SHARE_LOG;held by;stall_thread;stall_loop ")),
            "{lines:?}"
        );
    }

    #[test]
    fn tail_time_takes_the_slowest_by_the_rule() {
        let mut reqs: Vec<(u64, [u64; category::COUNT])> = (1..=100u64)
            .map(|i| {
                let mut ns = [0; category::COUNT];
                ns[category::CPU] = i;
                ns[category::LOCK] = if i > 98 { 1000 } else { 0 };
                (i * 10, ns)
            })
            .rev()
            .collect();
        // p99 of 100: the slowest two (index 99 only once floored: 0.99 × 100 = 99).
        let (n, ns) = tail_time(&mut reqs, Tail::Quantile(0.99));
        assert_eq!(n, 1);
        assert_eq!(ns[category::LOCK], 1000);
        assert_eq!(ns[category::CPU], 100);
        let (n, ns) = tail_time(&mut reqs, Tail::Latency(990));
        assert_eq!((n, ns[category::LOCK], ns[category::CPU]), (2, 2000, 199));
        assert_eq!(tail_time(&mut [], Tail::Quantile(0.99)).0, 0);
    }

    #[test]
    fn tail_rules_parse() {
        assert_eq!("p99".parse::<Tail>().unwrap(), Tail::Quantile(0.99));
        let Ok(Tail::Quantile(q)) = "p99.9".parse::<Tail>() else {
            panic!("p99.9")
        };
        assert!((q - 0.999).abs() < 1e-12);
        assert_eq!("5ms".parse::<Tail>(), Ok(Tail::Latency(5_000_000)));
        assert!("p100".parse::<Tail>().is_err());
        assert!("soon".parse::<Tail>().is_err());
        let ports = analyze(&sample(), Tail::Latency(1_000_000));
        assert_eq!(ports[0].tail.requests, 10);
    }

    /// 40 slow requests spin in `slow_path` → `burn`; typical requests hash too, in
    /// `validate_share`: the tail's CPU is named by what sets it apart.
    #[test]
    fn the_tail_cpu_is_named_by_what_typical_requests_do_not_run() {
        let mut requests: Vec<Request> = (0..960).map(|i| request(30 + i % 20, 0)).collect();
        let slow = frames(&["main", "handle", "slow_path", "burn", "sha256d"]);
        requests.extend((0..40).map(|_| {
            let mut r = request(20_000, 0);
            r.samples = vec![slow.clone(), slow.clone()];
            r
        }));
        let ports = analyze(&requests, Tail::Quantile(0.97));
        let top = &ports[0].tail.causes[0];
        assert_eq!(
            (top.kind.as_str(), top.name.as_str()),
            ("cpu", "slow_path"),
            "{top:#?}"
        );
        assert!(top.share > 0.9);
        assert_eq!(ports[0].typical.causes[0].name, "sha256d");
    }

    #[test]
    fn an_unsampled_typical_group_names_the_path_the_tail_shares() {
        // Typical requests too short for a 99 Hz sample: nothing to compare with, so the
        // thread's start and the handler every request runs must not be the cause; the deepest
        // frame 90% of the tail's samples share is.
        let mut requests: Vec<Request> = (0..960)
            .map(|i| {
                let mut r = request(30 + i % 20, 0);
                r.samples.clear();
                r
            })
            .collect();
        let slow = frames(&[
            "clone3",
            "start_thread",
            "handle",
            "slow_path",
            "burn",
            "sha256d",
        ]);
        let parse = frames(&["clone3", "start_thread", "handle", "parse"]);
        requests.extend((0..40).map(|i| {
            let mut r = request(20_000, 0);
            r.samples = vec![
                slow.clone(),
                if i % 8 == 0 {
                    parse.clone()
                } else {
                    slow.clone()
                },
            ];
            r
        }));
        let ports = analyze(&requests, Tail::Quantile(0.97));
        let top = &ports[0].tail.causes[0];
        assert_eq!(
            (top.kind.as_str(), top.name.as_str()),
            ("cpu", "sha256d"),
            "{:#?}",
            ports[0].tail
        );
    }

    #[test]
    fn an_event_loops_wait_for_work_is_not_a_block() {
        let mut r = request(5_000, 0);
        r.ns[category::BLOCKED] = 4_000_000;
        r.ns[category::CPU] -= 4_000_000;
        r.blocked = Some(frames(&[
            "main",
            "read_requests",
            "poll",
            "do_sys_poll_[k]",
        ]));
        let g = group(&[&r], &CpuNames::Leaf);
        assert_eq!(g.causes[0].kind, "other", "{g:#?}");
    }

    #[test]
    fn condvar_waits_are_not_locks() {
        let mut r = request(15_000, 14_000);
        if let Some(lock) = &mut r.lock {
            lock.waiter = frames(&["worker", "pthread_cond_wait"]);
        }
        let g = group(&[&r], &CpuNames::Leaf);
        assert_eq!(g.causes[0].kind, "blocked", "{g:#?}");
    }
}
