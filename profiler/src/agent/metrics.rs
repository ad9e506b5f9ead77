//! What `/metrics` serves: per-target figures the collection loop updates after every drain,
//! encoded in OpenMetrics text by `prometheus-client` at scrape time.
//!
//! Socket-to-reply is an OpenMetrics histogram with fixed, exponent-aligned buckets: 16 per
//! power of two of nanoseconds (`2^e · (1 + j/16)`), from 2^14 ns (16 µs) to 2^34 ns (17 s).
//! Every bound is a slot boundary of the kernel's log-linear histogram (64 slots per power of
//! two), so each slot lands in exactly one bucket and nothing is interpolated twice; and every
//! host has the same bounds, so `sum by (le)` merges a fleet. A bucket is at most 6.25% of its
//! value wide, which bounds what `histogram_quantile`'s linear interpolation can add.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use profiler_common::{
    hist::{SLOTS, slot_high, slot_mid},
    why::category,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::report::sock::PortData;

/// Buckets per power of two, as bits.
const BUCKET_BITS: u32 = 4;
/// The first bucket's upper bound, as a power of two of nanoseconds.
const FIRST_EXP: u32 = 14;
/// The last finite bound, as a power of two of nanoseconds.
const LAST_EXP: u32 = 34;

/// The finite upper bounds in nanoseconds, ascending.
pub fn bucket_bounds_ns() -> Vec<u64> {
    let mut bounds = vec![1u64 << FIRST_EXP];
    for e in FIRST_EXP..LAST_EXP {
        for j in 1..=(1u64 << BUCKET_BITS) {
            bounds.push((1u64 << e) + j * (1u64 << (e - BUCKET_BITS)));
        }
    }
    bounds
}

/// Per kernel slot, the bucket it is counted in (`bounds.len()` is +Inf).
fn slot_buckets(bounds: &[u64]) -> Vec<usize> {
    (0..SLOTS)
        .map(|slot| bounds.partition_point(|&le| le < slot_high(slot)))
        .collect()
}

/// Locks given their own series per target; the rest are summed under `lock="other"`.
pub const TOP_LOCKS: usize = 20;
/// The series every lock past [`TOP_LOCKS`] is counted in.
pub const OTHER_LOCK: &str = "other";

/// One listening port's cumulative figures.
#[derive(Debug, Clone, Default)]
pub struct PortMetrics {
    /// Steady-state requests paired with their reply (socket-to-reply count, plus those whose
    /// arrival was not seen).
    pub requests: u64,
    /// Each connection's first request (subscribe, login), kept apart as setup.
    pub first_requests: u64,
    /// Socket-to-reply counts per bucket (not cumulative), the last one +Inf.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

/// One target's figures since it was attached.
#[derive(Debug, Clone, Default)]
pub struct TargetMetrics {
    pub pid: u32,
    pub comm: String,
    pub ports: BTreeMap<u16, PortMetrics>,
    pub cpu_samples: u64,
    pub offcpu_seconds: f64,
    /// Seconds waited per lock: at most [`TOP_LOCKS`] names plus [`OTHER_LOCK`].
    pub lock_wait_seconds: BTreeMap<String, f64>,
    /// Kernel-side drop counters by name, cumulative.
    pub dropped: BTreeMap<String, u64>,
    pub rss_bytes: Option<u64>,
    /// `alloc`: live bytes and blocks now; allocations and bytes since attach.
    pub live_bytes: Option<i64>,
    pub live_allocations: Option<i64>,
    pub allocations: Option<u64>,
    pub allocated_bytes: Option<u64>,
    /// `memory`: bytes first touched since attach; of all touched since attach, those held.
    pub grown_bytes: Option<u64>,
    pub held_bytes: Option<i64>,
    /// `why`: per port, requests' time by cause since attach, all and the tail's.
    pub why: BTreeMap<u16, WhyMetrics>,
}

/// One port's request time by cause (`profiler_common::why::category::NAMES`), cumulative.
#[derive(Debug, Clone, Default)]
pub struct WhyMetrics {
    pub seconds: [f64; category::COUNT],
    pub tail_requests: u64,
    pub tail_seconds: [f64; category::COUNT],
}

impl WhyMetrics {
    pub fn add(&mut self, port: &crate::probes::WhyPort) {
        for (i, (all, tail)) in port.ns.iter().zip(&port.tail_ns).enumerate() {
            self.seconds[i] += *all as f64 / 1e9;
            self.tail_seconds[i] += *tail as f64 / 1e9;
        }
        self.tail_requests += port.tail_requests;
    }
}

impl TargetMetrics {
    pub fn new(pid: u32, comm: &str) -> Self {
        Self {
            pid,
            comm: comm.to_string(),
            ..Self::default()
        }
    }

    /// Adds one drain's lock waits: a lock gets its own series while fewer than
    /// [`TOP_LOCKS`] have one (the heaviest of a drain first), and keeps it.
    pub fn add_lock_waits(&mut self, waits: &[(String, u64)]) {
        let mut waits: Vec<&(String, u64)> = waits.iter().collect();
        waits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (name, ns) in waits {
            let own = self.lock_wait_seconds.contains_key(name)
                || self
                    .lock_wait_seconds
                    .keys()
                    .filter(|k| *k != OTHER_LOCK)
                    .count()
                    < TOP_LOCKS;
            let key = if own { name.as_str() } else { OTHER_LOCK };
            *self.lock_wait_seconds.entry(key.to_string()).or_default() += *ns as f64 / 1e9;
        }
    }
}

/// Turns the kernel's cumulative per-port histograms into bucket counts.
pub struct Bucketer {
    bounds: Vec<u64>,
    slot_bucket: Vec<usize>,
}

impl Default for Bucketer {
    fn default() -> Self {
        let bounds = bucket_bounds_ns();
        let slot_bucket = slot_buckets(&bounds);
        Self {
            bounds,
            slot_bucket,
        }
    }
}

impl Bucketer {
    pub fn port(&self, data: &PortData) -> PortMetrics {
        let mut buckets = vec![0u64; self.bounds.len() + 1];
        let mut sum_ns = 0f64;
        for (slot, &count) in data.socket_to_reply.slots.iter().enumerate() {
            if count > 0 {
                buckets[self.slot_bucket[slot]] += count;
                sum_ns += count as f64 * slot_mid(slot) as f64;
            }
        }
        PortMetrics {
            requests: data.socket_to_reply.count() + data.unseen,
            first_requests: data.first_request.count(),
            buckets,
            sum_seconds: sum_ns / 1e9,
        }
    }

    /// `(upper bound in seconds, count in that bucket alone)`, +Inf last: the encoder sums
    /// them into OpenMetrics' cumulative buckets.
    fn labelled(&self, counts: &[u64]) -> Vec<(f64, u64)> {
        counts
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let le = self
                    .bounds
                    .get(i)
                    .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
                (le, c)
            })
            .collect()
    }
}

/// Everything `/metrics` reads, behind one lock the collection loop takes once per drain.
#[derive(Debug, Default)]
pub struct State {
    /// By pid; a target that exits is dropped with its series.
    pub targets: BTreeMap<u32, TargetMetrics>,
    /// Targets attached since the agent started, restarts included.
    pub attaches: u64,
    /// Attaches that failed (the target gone meanwhile, a kernel refusal).
    pub attach_failures: u64,
}

/// The `/metrics` collector over the shared [`State`].
pub struct Metrics {
    state: Arc<Mutex<State>>,
    bucketer: Bucketer,
    host: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

type Labels = Vec<(&'static str, String)>;

fn target_labels(t: &TargetMetrics) -> Labels {
    vec![("pid", t.pid.to_string()), ("comm", t.comm.clone())]
}

impl Metrics {
    pub fn registry(state: Arc<Mutex<State>>, host: String) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Self {
            state,
            bucketer: Bucketer::default(),
            host,
        }));
        registry
    }
}

/// Encodes one family of counters or gauges from `(labels, value)` rows.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut descriptor = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, metric) in rows {
        metric.encode(descriptor.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.state.lock().map_err(|_| std::fmt::Error)?;
        let targets: Vec<&TargetMetrics> = state.targets.values().collect();
        let port_rows = |f: &dyn Fn(&PortMetrics) -> u64| -> Vec<(Labels, ConstCounter<u64>)> {
            targets
                .iter()
                .flat_map(|t| {
                    t.ports.iter().map(move |(port, p)| {
                        let mut labels = target_labels(t);
                        labels.push(("port", port.to_string()));
                        (labels, ConstCounter::new(f(p)))
                    })
                })
                .collect()
        };
        family(
            &mut encoder,
            "profiler_requests",
            "Steady-state requests answered, per listening port (each connection's first \
             request is counted apart, in profiler_first_requests)",
            None,
            MetricType::Counter,
            port_rows(&|p| p.requests),
        )?;
        family(
            &mut encoder,
            "profiler_first_requests",
            "Each connection's first request (connection setup: subscribe, login)",
            None,
            MetricType::Counter,
            port_rows(&|p| p.first_requests),
        )?;
        {
            let mut descriptor = encoder.encode_descriptor(
                "profiler_socket_to_reply",
                "Request bytes queued on the socket to the start of the reply, per listening \
                 port; buckets 2^e*(1+j/16) ns, the same on every host",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for t in &targets {
                for (port, p) in &t.ports {
                    let mut labels = target_labels(t);
                    labels.push(("port", port.to_string()));
                    let buckets = self.bucketer.labelled(&p.buckets);
                    let count = p.buckets.iter().sum();
                    descriptor
                        .encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(p.sum_seconds, count, &buckets, None)?;
                }
            }
        }
        family(
            &mut encoder,
            "profiler_cpu_samples",
            "On-CPU stack samples of the target's threads",
            None,
            MetricType::Counter,
            targets
                .iter()
                .map(|t| (target_labels(t), ConstCounter::new(t.cpu_samples)))
                .collect(),
        )?;
        family(
            &mut encoder,
            "profiler_offcpu",
            "Time the target's threads spent off the CPU (blocked, idle, preempted and in our probes)",
            Some(&Unit::Seconds),
            MetricType::Counter,
            targets
                .iter()
                .map(|t| (target_labels(t), ConstCounter::new(t.offcpu_seconds)))
                .collect(),
        )?;
        family(
            &mut encoder,
            "profiler_lock_wait",
            "Time waited in futex waits per lock: the first 20 locks seen per target by name, \
             the rest under lock=\"other\"",
            Some(&Unit::Seconds),
            MetricType::Counter,
            targets
                .iter()
                .flat_map(|t| {
                    t.lock_wait_seconds.iter().map(move |(lock, s)| {
                        let mut labels = target_labels(t);
                        labels.push(("lock", lock.clone()));
                        (labels, ConstCounter::new(*s))
                    })
                })
                .collect(),
        )?;
        family(
            &mut encoder,
            "profiler_dropped",
            "Kernel-side drops (a full map, a lost stack): figures that depend on them undercount",
            None,
            MetricType::Counter,
            targets
                .iter()
                .flat_map(|t| {
                    t.dropped.iter().map(move |(counter, n)| {
                        let mut labels = target_labels(t);
                        labels.push(("counter", counter.clone()));
                        (labels, ConstCounter::new(*n))
                    })
                })
                .collect(),
        )?;
        let gauges = |f: &dyn Fn(&TargetMetrics) -> Option<i64>| -> Vec<(Labels, ConstGauge<i64>)> {
            targets
                .iter()
                .filter_map(|t| Some((target_labels(t), ConstGauge::new(f(t)?))))
                .collect()
        };
        let counters =
            |f: &dyn Fn(&TargetMetrics) -> Option<u64>| -> Vec<(Labels, ConstCounter<u64>)> {
                targets
                    .iter()
                    .filter_map(|t| Some((target_labels(t), ConstCounter::new(f(t)?))))
                    .collect()
            };
        family(
            &mut encoder,
            "profiler_live",
            "Bytes allocated through the target's allocator since the attach and not freed",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            gauges(&|t| t.live_bytes),
        )?;
        family(
            &mut encoder,
            "profiler_live_allocations",
            "Blocks allocated since the attach and not freed",
            None,
            MetricType::Gauge,
            gauges(&|t| t.live_allocations),
        )?;
        family(
            &mut encoder,
            "profiler_allocations",
            "Blocks allocated through the target's allocator",
            None,
            MetricType::Counter,
            counters(&|t| t.allocations),
        )?;
        family(
            &mut encoder,
            "profiler_allocated",
            "Bytes allocated through the target's allocator",
            Some(&Unit::Bytes),
            MetricType::Counter,
            counters(&|t| t.allocated_bytes),
        )?;
        family(
            &mut encoder,
            "profiler_memory_growth",
            "Memory the target first touched (page faults on new pages), whether released since \
             or not",
            Some(&Unit::Bytes),
            MetricType::Counter,
            counters(&|t| t.grown_bytes),
        )?;
        family(
            &mut encoder,
            "profiler_memory_held",
            "Of the memory the target touched since the attach, what it still holds",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            gauges(&|t| t.held_bytes),
        )?;
        let cause_rows = |tail: bool| -> Vec<(Labels, ConstCounter<f64>)> {
            targets
                .iter()
                .flat_map(|t| {
                    t.why.iter().flat_map(move |(port, w)| {
                        let of = if tail { &w.tail_seconds } else { &w.seconds };
                        category::NAMES.iter().zip(of).map(move |(cause, s)| {
                            let mut labels = target_labels(t);
                            labels.push(("port", port.to_string()));
                            labels.push(("cause", cause.to_string()));
                            (labels, ConstCounter::new(*s))
                        })
                    })
                })
                .collect()
        };
        family(
            &mut encoder,
            "profiler_request_time",
            "Socket-to-reply time of every request, by what its threads were doing (cause: \
             queued, cpu, runqueue, lock, blocked, other), per listening port",
            Some(&Unit::Seconds),
            MetricType::Counter,
            cause_rows(false),
        )?;
        family(
            &mut encoder,
            "profiler_tail_request_time",
            "The same for the tail requests only (--tail, p99 by default, of each second's \
             requests per port): a cause's share of it is what made the slowest slow",
            Some(&Unit::Seconds),
            MetricType::Counter,
            cause_rows(true),
        )?;
        family(
            &mut encoder,
            "profiler_tail_requests",
            "Requests counted as the tail (--tail of each second's requests per port)",
            None,
            MetricType::Counter,
            targets
                .iter()
                .flat_map(|t| {
                    t.why.iter().map(move |(port, w)| {
                        let mut labels = target_labels(t);
                        labels.push(("port", port.to_string()));
                        (labels, ConstCounter::new(w.tail_requests))
                    })
                })
                .collect(),
        )?;
        family(
            &mut encoder,
            "profiler_target_resident",
            "The target's resident memory",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            targets
                .iter()
                .filter_map(|t| Some((target_labels(t), ConstGauge::new(t.rss_bytes? as i64))))
                .collect(),
        )?;
        let host = vec![("host", self.host.clone())];
        family(
            &mut encoder,
            "profiler_agent_attaches",
            "Targets attached since the agent started, restarts included",
            None,
            MetricType::Counter,
            vec![(host.clone(), ConstCounter::new(state.attaches))],
        )?;
        family(
            &mut encoder,
            "profiler_agent_attach_failures",
            "Attaches that failed",
            None,
            MetricType::Counter,
            vec![(host.clone(), ConstCounter::new(state.attach_failures))],
        )?;
        drop(state);
        let own = std::process::id();
        if let Some(cpu) = crate::preflight::cpu_seconds(own) {
            family(
                &mut encoder,
                "profiler_agent_cpu",
                "CPU time of the agent itself (user and system)",
                Some(&Unit::Seconds),
                MetricType::Counter,
                vec![(host.clone(), ConstCounter::new(cpu))],
            )?;
        }
        if let Some(kb) = crate::preflight::rss_kb(own) {
            family(
                &mut encoder,
                "profiler_agent_resident",
                "Resident memory of the agent itself",
                Some(&Unit::Bytes),
                MetricType::Gauge,
                vec![(host, ConstGauge::new((kb * 1024) as i64))],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::hist::Merged;
    use profiler_common::hist::slot_of;

    #[test]
    fn bounds_are_slot_boundaries_and_tight() {
        let bounds = bucket_bounds_ns();
        assert_eq!(bounds.len(), 1 + 20 * 16);
        for pair in bounds.windows(2) {
            assert!(pair[1] > pair[0]);
            // At most 1/16 of the lower bound wide.
            assert!((pair[1] - pair[0]) * 16 <= pair[0], "{pair:?}");
        }
        // Each bound starts a slot: a slot never straddles one.
        for &le in &bounds {
            assert_eq!(profiler_common::hist::slot_low(slot_of(le)), le);
        }
    }

    #[test]
    fn ports_bucket_every_request_once() {
        let bucketer = Bucketer::default();
        let mut merged = Merged::default();
        for ns in [1_000u64, 20_000, 20_000, 999_999, 1 << 36] {
            merged.slots[slot_of(ns)] += 1;
        }
        let data = PortData {
            port: 3333,
            socket_to_reply: merged,
            service: Merged::default(),
            new_connection: Merged::default(),
            first_request: Merged::default(),
            pushes: 0,
            unseen: 2,
            replies_between: None,
        };
        let port = bucketer.port(&data);
        assert_eq!(port.requests, 7);
        let buckets = bucketer.labelled(&port.buckets);
        // 1 µs is under the first bound; 2^36 ns past the last, in +Inf.
        assert_eq!(buckets[0], (16384e-9, 1));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
        // 999,999 ns is in the bucket ending at 2^19·(1 + 15/16) ns, 1.016 ms.
        let to_1ms: u64 = buckets
            .iter()
            .take_while(|(le, _)| *le <= 1.016e-3)
            .map(|(_, c)| c)
            .sum();
        assert_eq!(to_1ms, 4);
        // The encoder writes them cumulative, as OpenMetrics has them.
        let registry = {
            let state = std::sync::Arc::new(std::sync::Mutex::new(State::default()));
            let mut t = TargetMetrics::new(7, "pool");
            t.ports.insert(3333, port);
            state.lock().unwrap().targets.insert(7, t);
            Metrics::registry(state, "host".into())
        };
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let bucket = |le: &str| {
            let prefix = format!(
                "profiler_socket_to_reply_seconds_bucket{{le=\"{le}\",pid=\"7\",comm=\"pool\",port=\"3333\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in {text}"))
                .to_string()
        };
        assert_eq!(bucket("0.000016384"), "1");
        assert_eq!(bucket("+Inf"), "5");
        assert!(text.contains("profiler_requests_total{pid=\"7\",comm=\"pool\",port=\"3333\"} 7"));
    }

    #[test]
    fn locks_past_the_top_share_one_series() {
        let mut t = TargetMetrics::new(1, "x");
        let many: Vec<(String, u64)> = (0..30).map(|i| (format!("l{i:02}"), 1_000 + i)).collect();
        t.add_lock_waits(&many);
        t.add_lock_waits(&[("l29".into(), 1_000_000_000), ("new".into(), 1)]);
        assert_eq!(t.lock_wait_seconds.len(), TOP_LOCKS + 1);
        // The heaviest of the first drain got their own series and keep them.
        assert!(t.lock_wait_seconds["l29"] > 1.0);
        assert!(t.lock_wait_seconds.contains_key(OTHER_LOCK));
        assert!(!t.lock_wait_seconds.contains_key("new"));
    }
}
