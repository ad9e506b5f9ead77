//! `why`: what made the slowest requests slow. The kernel half follows every request `sock`
//! pairs through the threads that carry it and sends one record per request at its reply
//! (see `profiler_common::why`); here the records are drained every tick, their stacks named
//! at the end, and the tail compared with typical requests (`report::why`).

use std::{collections::HashMap, io::Write as _, sync::Arc};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
};
use profiler_common::{
    sock as sock_common, stats,
    why::{self, ReqRecord, SAMPLES, Stack, WhyConfig, category},
};

use super::{Counters, Drain, Family, Finish, ProbeError, Setup, Tick, attach_tracepoint, map};
use crate::{
    ebpf::LoadConfig,
    probes::futex::namer::LockNamer,
    report::{
        flamegraph::Labels,
        folded,
        why::{self as report, Frames, LockWait, Request, Tail, WhyReport},
    },
    stacks::StackTable,
    tracefs::Format,
};

const PROBE: &str = "why";

/// Requests kept for the analysis; beyond, a uniform sample of them (200 MB of records would
/// be kept for a million otherwise).
const MAX_KEPT: usize = 1_000_000;

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Which requests are the tail.
    pub tail: Tail,
}

fn offset(category: &str, event: &str, field: &str, size: u32) -> Result<u32, ProbeError> {
    let format = Format::load(category, event).map_err(|e| super::tracefs_error(PROBE, &e))?;
    format
        .offset(category, event, field, size)
        .map_err(|e| super::tracefs_error(PROBE, &e))
}

pub fn kernel_config() -> Result<WhyConfig, ProbeError> {
    Ok(WhyConfig {
        prev_state_offset: offset("sched", "sched_switch", "prev_state", 8)?,
        next_pid_offset: offset("sched", "sched_switch", "next_pid", 4)?,
        waking_pid_offset: offset("sched", "sched_waking", "pid", 4)?,
    })
}

/// A finished request as kept until the end: its stacks interned.
#[derive(Debug, Clone, Copy)]
struct Kept {
    port_index: u32,
    latency_ns: u64,
    ns: [u64; category::COUNT],
    samples: [Option<u32>; SAMPLES],
    /// (futex, waiter, holder).
    lock: Option<(u64, u32, u32)>,
    blocked: Option<u32>,
}

/// Distinct stacks, numbered.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Stack, u32>,
    stacks: Vec<Stack>,
}

impl Interner {
    fn id(&mut self, stack: Stack) -> u32 {
        *self.ids.entry(stack).or_insert_with(|| {
            self.stacks.push(stack);
            (self.stacks.len() - 1) as u32
        })
    }
}

/// The `why` family.
pub struct Why {
    config: Config,
    records: Option<RingBuf<MapData>>,
    kept: Vec<Kept>,
    /// Requests seen, kept or not.
    seen: u64,
    stacks: Interner,
    /// For the uniform sample beyond [`MAX_KEPT`] (xorshift).
    rng: u64,
}

impl Why {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            records: None,
            kept: Vec::new(),
            seen: 0,
            stacks: Interner::default(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Takes every record the kernel has sent so far.
    fn drain(&mut self) {
        let Some(ring) = self.records.as_mut() else {
            return;
        };
        let mut records = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<ReqRecord>() {
                // SAFETY: the kernel wrote a whole `ReqRecord` (checked length); unaligned.
                records.push(unsafe { item.as_ptr().cast::<ReqRecord>().read_unaligned() });
            }
        }
        for record in records {
            self.keep(&record);
        }
    }

    fn keep(&mut self, r: &ReqRecord) {
        self.seen += 1;
        let stack = |s: Stack| (s.user != 0 || s.kernel >= 0).then_some(s);
        let mut samples = [None; SAMPLES];
        for (slot, s) in samples
            .iter_mut()
            .zip(r.sample.iter().take(r.samples.min(SAMPLES as u32) as usize))
        {
            *slot = stack(*s).map(|s| self.stacks.id(s));
        }
        let kept = Kept {
            port_index: r.port_index,
            latency_ns: r.latency_ns,
            ns: r.ns,
            samples,
            lock: (r.lock.futex != 0).then(|| {
                (
                    r.lock.futex,
                    self.stacks.id(r.lock.waiter),
                    self.stacks.id(r.lock.holder),
                )
            }),
            blocked: stack(r.blocked.at).map(|s| self.stacks.id(s)),
        };
        if self.kept.len() < MAX_KEPT {
            self.kept.push(kept);
            return;
        }
        // Reservoir sampling: every request seen has the same chance of being kept.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let slot = self.rng % self.seen;
        if let Some(place) = self.kept.get_mut(slot as usize) {
            *place = kept;
        }
    }
}

/// The target's listening ports by their index in the kernel's port table (`sock`'s).
fn ports(ebpf: &Ebpf) -> Result<HashMap<u32, u16>, ProbeError> {
    let table: BpfHashMap<_, u16, u32> = map(ebpf, PROBE, sock_common::PORTS_MAP)?;
    Ok(table
        .iter()
        .filter_map(Result::ok)
        .map(|(port, index)| (index, port))
        .collect())
}

impl Family for Why {
    fn name(&self) -> &'static str {
        PROBE
    }

    fn programs(&self) -> Vec<&'static str> {
        vec![why::SWITCH_PROGRAM, why::WAKING_PROGRAM, why::IDLE_PROGRAM]
    }

    fn configure(&mut self, _: &Setup<'_>, load: &mut LoadConfig) -> Result<(), ProbeError> {
        load.global(why::CONFIG_GLOBAL, &kernel_config()?);
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, _: &Setup<'_>) -> Result<(), ProbeError> {
        for (program, category, event) in [
            (why::SWITCH_PROGRAM, "sched", "sched_switch"),
            (why::WAKING_PROGRAM, "sched", "sched_waking"),
        ] {
            attach_tracepoint(ebpf, PROBE, program, category, event)?;
        }
        let idle: &mut aya::programs::TracePoint =
            super::program_mut(ebpf, PROBE, why::IDLE_PROGRAM)?;
        super::load_once(idle, PROBE, why::IDLE_PROGRAM)?;
        for syscall in why::IDLE_SYSCALLS {
            let event = format!("sys_enter_{syscall}");
            if !crate::tracefs::exists("syscalls", &event) {
                continue;
            }
            idle.attach("syscalls", &event)
                .map_err(|source| ProbeError::Attach {
                    probe: PROBE,
                    program: why::IDLE_PROGRAM,
                    target: format!("syscalls:{event}"),
                    source: Box::new(source),
                })?;
        }
        let ring = ebpf.take_map(why::RECORDS_MAP).ok_or(ProbeError::Map {
            probe: PROBE,
            map: why::RECORDS_MAP,
            source: Box::new(aya::maps::MapError::InvalidName {
                name: why::RECORDS_MAP.into(),
            }),
        })?;
        self.records = Some(RingBuf::try_from(ring).map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: why::RECORDS_MAP,
            source: Box::new(source),
        })?);
        Ok(())
    }

    fn arm(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
        super::set_armed(ebpf, PROBE, why::ARMED_MAP, on)
    }

    fn tick(&mut self, _: &mut Tick<'_>) {
        self.drain();
    }

    fn end(&mut self, _: &mut Tick<'_>) {
        self.drain();
    }

    fn progress(&self, counters: &Counters) -> String {
        format!("{} requests followed", counters.get(stats::WHY_REQUESTS))
    }

    /// The records sent since the last drain, summed per port by cause, with the window's
    /// tail apart; nothing is kept, and the stacks they named are forgotten.
    fn drain(&mut self, d: &mut Drain<'_>) -> Result<bool, ProbeError> {
        let Some(ring) = self.records.as_mut() else {
            return Ok(false);
        };
        let mut by_port: HashMap<u32, Vec<(u64, [u64; category::COUNT])>> = HashMap::new();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<ReqRecord>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `ReqRecord` (checked length); unaligned.
            let r = unsafe { item.as_ptr().cast::<ReqRecord>().read_unaligned() };
            let stacks = r
                .sample
                .iter()
                .take(r.samples.min(SAMPLES as u32) as usize)
                .chain([&r.lock.waiter, &r.lock.holder, &r.blocked.at]);
            for s in stacks {
                d.into.user_stacks.push(s.user);
                d.into.kernel_stacks.push(s.kernel);
            }
            by_port
                .entry(r.port_index)
                .or_default()
                .push((r.latency_ns, r.ns));
        }
        if by_port.is_empty() {
            return Ok(true);
        }
        let ports = ports(d.ebpf)?;
        for (index, mut requests) in by_port {
            let Some(&port) = ports.get(&index) else {
                continue;
            };
            let mut ns = [0u64; category::COUNT];
            for (_, by_cause) in &requests {
                for (sum, n) in ns.iter_mut().zip(by_cause) {
                    *sum += n;
                }
            }
            let (tail_requests, tail_ns) = report::tail_time(&mut requests, self.config.tail);
            d.into.why.push(crate::probes::WhyPort {
                port,
                requests: requests.len() as u64,
                ns,
                tail_requests,
                tail_ns,
            });
        }
        Ok(true)
    }

    fn finish(&mut self, f: &mut Finish<'_>) -> Result<(), ProbeError> {
        let stacks = &self.stacks.stacks;
        let table = StackTable::load(
            f.ebpf,
            stacks.iter().map(|s| s.user),
            stacks.iter().map(|s| s.kernel).filter(|&k| k >= 0),
            f.maps,
            f.symbolizer,
        )?;
        let named: Vec<Frames> = stacks
            .iter()
            .map(|s| {
                let mut frames = table.user_frames(s.user);
                frames.extend(table.kernel_frames(s.kernel));
                Arc::new(frames)
            })
            .collect();
        let ports = ports(f.ebpf)?;
        let mut namer = LockNamer::new(f.maps);
        let mut lock_names: HashMap<u64, String> = HashMap::new();
        let requests: Vec<Request> = self
            .kept
            .iter()
            .filter_map(|k| {
                let port = *ports.get(&k.port_index)?;
                Some(Request {
                    port,
                    latency_ns: k.latency_ns,
                    ns: k.ns,
                    samples: k
                        .samples
                        .iter()
                        .flatten()
                        .map(|&i| named[i as usize].clone())
                        .collect(),
                    lock: k.lock.map(|(futex, waiter, holder)| LockWait {
                        name: lock_names
                            .entry(futex)
                            .or_insert_with(|| namer.name(futex).name)
                            .clone(),
                        waiter: named[waiter as usize].clone(),
                        holder: named[holder as usize].clone(),
                    }),
                    blocked: k.blocked.map(|i| named[i as usize].clone()),
                })
            })
            .collect();
        let analysis = WhyReport {
            tail_rule: self.config.tail.to_string(),
            ports: report::analyze(&requests, self.config.tail),
            requests_not_kept: self.seen.saturating_sub(self.kept.len() as u64),
            cpu_without_stacks: f.outcome.summary.cpu.is_none(),
        };
        let text = report::text(&analysis);
        f.writer
            .write("tail.txt", |out| out.write_all(text.as_bytes()))?;
        f.writer.json("tail.json", &analysis)?;
        let lines = |typical: bool| -> Vec<String> {
            analysis
                .ports
                .iter()
                .flat_map(|p| report::folded(p.port, if typical { &p.typical } else { &p.tail }))
                .collect()
        };
        let title = f.title("tail latency by cause");
        let tail_lines = lines(false);
        f.writer.write("tail.svg", |out| {
            crate::report::flamegraph::write(
                &tail_lines,
                &Labels {
                    title: &title,
                    subtitle: Some(&format!(
                        "the {} tail's time by cause, microseconds; a lock's holder under it",
                        analysis.tail_rule
                    )),
                    count_name: "us",
                },
                out,
            )
        })?;
        let diff = folded::differential(&lines(true), &tail_lines).map_err(|source| {
            ProbeError::Other {
                probe: PROBE,
                what: "drawing tail-vs-typical.svg".into(),
                source,
            }
        })?;
        let diff_title = f.title("tail vs typical requests");
        f.writer.write("tail-vs-typical.svg", |out| {
            crate::report::flamegraph::write(
                &diff,
                &Labels {
                    title: &diff_title,
                    subtitle: Some("time by cause per request group: red grew in the tail, blue shrank (normalised)"),
                    count_name: "us",
                },
                out,
            )
        })?;
        f.writer.say(&format!("tail latency:\n{}", text.trim_end()));
        f.outcome.findings.extend(
            analysis
                .ports
                .iter()
                .filter_map(|p| report::finding(p, &analysis.tail_rule)),
        );
        f.summary().why = Some(analysis);
        Ok(())
    }
}
