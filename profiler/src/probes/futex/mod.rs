//! `futex`: lock contention. Every futex wait a target thread sleeps in is timed per (lock
//! address, waiter stack), and the wakes that end them are counted per (lock address, waker
//! stack), from the scheduler's tracepoints and the sleeper's syscall registers (see
//! `profiler_common::futex`). futex(2) covers glibc (WAIT|PRIVATE) and Rust's std
//! (WAIT_BITSET|PRIVATE); the newer futex_wait/futex_waitv/futex_wake calls are read too.

pub mod namer;

use std::{collections::HashMap, io::Write as _};

use aya::{Ebpf, maps::HashMap as BpfHashMap};
use profiler_common::{
    futex::{
        self, FutexConfig, FutexKey, FutexWait, FutexWaiter, FutexWake, MIN_WALKED_HOLD_NS,
        SHORT_HOLD_STACK,
    },
    stats,
};

use self::namer::LockNamer;
use super::{Counters, Drain, Family, Finish, ProbeError, Setup, map};
use crate::{
    ebpf::LoadConfig,
    report::{
        self,
        flamegraph::Labels,
        futex::{
            FutexSummary, LockReport, LockStack, STACKS_PER_LOCK, UNWALKED, classify, rank, us,
        },
        hist::Merged,
        profile::WeightedStack,
    },
    stacks::StackTable,
    tracefs::Format,
};

const PROBE: &str = "futex";

/// Locks in `locks.txt` and the summary; the terminal shows fewer.
const LOCKS_LISTED: usize = 20;
const TERMINAL_LOCKS: usize = 3;

#[derive(Debug, Clone, Default)]
pub struct Config {}

/// Everything the futex maps held.
pub struct FutexData {
    pub waits: Vec<(FutexKey, FutexWait)>,
    pub wakes: Vec<(FutexKey, FutexWake)>,
    pub waiters: Vec<(FutexWaiter, u64)>,
}

fn offset(event: &str, field: &str, size: u32) -> Result<u32, ProbeError> {
    let format = Format::load("sched", event).map_err(|e| super::tracefs_error(PROBE, &e))?;
    format
        .offset("sched", event, field, size)
        .map_err(|e| super::tracefs_error(PROBE, &e))
}

pub fn kernel_config(_config: &Config) -> Result<FutexConfig, ProbeError> {
    Ok(FutexConfig {
        prev_state_offset: offset("sched_switch", "prev_state", 8)?,
        next_pid_offset: offset("sched_switch", "next_pid", 4)?,
        waking_pid_offset: offset("sched_waking", "pid", 4)?,
        _pad: 0,
    })
}

pub fn attach(ebpf: &mut Ebpf, _config: &Config) -> Result<(), ProbeError> {
    for (program, event) in [
        (futex::SWITCH_PROGRAM, "sched_switch"),
        (futex::WAKING_PROGRAM, "sched_waking"),
    ] {
        super::attach_tracepoint(ebpf, PROBE, program, "sched", event)?;
    }
    Ok(())
}

fn entries<K: aya::Pod, V: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Vec<(K, V)>, ProbeError> {
    let table: BpfHashMap<_, K, V> = map(ebpf, PROBE, name)?;
    table
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: name,
            source: Box::new(source),
        })
}

pub fn read(ebpf: &Ebpf) -> Result<FutexData, ProbeError> {
    Ok(FutexData {
        waits: entries(ebpf, futex::WAITS_MAP)?,
        wakes: entries(ebpf, futex::WAKES_MAP)?,
        waiters: entries(ebpf, futex::WAITERS_MAP)?,
    })
}

/// A waiter's or holder's stack; holds too short to walk are one pseudo-frame saying so.
fn frames(stacks: &StackTable, hash: u64) -> Vec<String> {
    match hash {
        SHORT_HOLD_STACK => vec![format!("{UNWALKED}under {} us]", MIN_WALKED_HOLD_NS / 1000)],
        _ => stacks.user_frames(hash),
    }
}

/// Every lock that was waited on: contended locks first, then condition waits, each most
/// total wait first.
pub fn build(data: &FutexData, stacks: &StackTable, namer: &mut LockNamer<'_>) -> Vec<LockReport> {
    struct Acc {
        waits: u64,
        total: u64,
        max: u64,
        hist: Merged,
        waiter_stacks: Vec<(u64, u64, u64)>,
    }
    let mut by_lock: HashMap<u64, Acc> = HashMap::new();
    for (key, wait) in &data.waits {
        let acc = by_lock.entry(key.uaddr).or_insert_with(|| Acc {
            waits: 0,
            total: 0,
            max: 0,
            hist: Merged::default(),
            waiter_stacks: Vec::new(),
        });
        acc.waits += wait.count;
        acc.total += wait.total_ns;
        acc.max = acc.max.max(wait.max_ns);
        acc.hist.add(&wait.hist);
        acc.waiter_stacks
            .push((key.user_stack, wait.count, wait.total_ns));
    }
    let mut waiters: HashMap<u64, u64> = HashMap::new();
    for (waiter, _) in &data.waiters {
        *waiters.entry(waiter.uaddr).or_default() += 1;
    }
    let mut wakers: HashMap<u64, Vec<(u64, FutexWake)>> = HashMap::new();
    for (key, wake) in &data.wakes {
        wakers
            .entry(key.uaddr)
            .or_default()
            .push((key.user_stack, *wake));
    }
    let mut reports: Vec<LockReport> = by_lock
        .into_iter()
        .map(|(uaddr, mut acc)| {
            let lock = namer.name(uaddr);
            acc.waiter_stacks.sort_by_key(|s| std::cmp::Reverse(s.2));
            let mut lock_wakers = wakers.remove(&uaddr).unwrap_or_default();
            // Holders by how long they kept others waiting; wakes break ties (a lock whose
            // waits all began before the attach has no held time yet).
            lock_wakers.sort_by_key(|(_, w)| std::cmp::Reverse((w.held_ns, w.wakes)));
            let top_waiters: Vec<LockStack> = acc
                .waiter_stacks
                .iter()
                .take(STACKS_PER_LOCK)
                .map(|&(stack, count, total)| LockStack {
                    frames: frames(stacks, stack),
                    count,
                    wait_us: us(total),
                    held_us: 0.0,
                })
                .collect();
            // The heaviest stack decides.
            let class = acc
                .waiter_stacks
                .first()
                .map_or("unknown", |s| classify(&stacks.user_frames(s.0)));
            LockReport {
                address: format!("{uaddr:#x}"),
                name: lock.name,
                kind: lock.kind,
                class: class.into(),
                waiters: waiters.get(&uaddr).copied().unwrap_or(0),
                waits: acc.waits,
                total_wait_us: us(acc.total),
                mean_wait_us: if acc.waits == 0 {
                    0.0
                } else {
                    us(acc.total) / acc.waits as f64
                },
                max_wait_us: us(acc.max),
                p50_us: us(acc.hist.quantile(0.50)),
                p90_us: us(acc.hist.quantile(0.90)),
                p99_us: us(acc.hist.quantile(0.99)),
                top_waiters,
                top_wakers: lock_wakers
                    .iter()
                    .take(STACKS_PER_LOCK)
                    .map(|&(stack, wake)| LockStack {
                        frames: frames(stacks, stack),
                        count: wake.wakes,
                        wait_us: 0.0,
                        held_us: us(wake.held_ns),
                    })
                    .collect(),
            }
        })
        .collect();
    reports.sort_by(|a, b| {
        rank(&a.class)
            .cmp(&rank(&b.class))
            .then(b.total_wait_us.total_cmp(&a.total_wait_us))
    });
    reports
}

/// Every (lock, waiter stack) as a stack rooted at the lock, weighted by microseconds waited.
pub fn weighted_stacks(
    data: &FutexData,
    stacks: &StackTable,
    reports: &[LockReport],
) -> Vec<WeightedStack> {
    let names: HashMap<&str, &str> = reports
        .iter()
        .map(|r| (r.address.as_str(), r.name.as_str()))
        .collect();
    data.waits
        .iter()
        .map(|(key, wait)| {
            let address = format!("{:#x}", key.uaddr);
            let name = names.get(address.as_str()).copied().unwrap_or(&address);
            WeightedStack {
                thread: format!("lock {name}"),
                tid: 0,
                frames: frames(stacks, key.user_stack),
                weight: wait.total_ns / 1000,
            }
        })
        .collect()
}

/// The `futex` family: lock contention by lock and stack, and who wakes the waiters.
pub struct Futex {
    config: Config,
}

impl Futex {
    pub fn new(config: Config) -> Self {
        Self { config }
    }
}

impl Family for Futex {
    fn name(&self) -> &'static str {
        PROBE
    }

    fn programs(&self) -> Vec<&'static str> {
        vec![futex::SWITCH_PROGRAM, futex::WAKING_PROGRAM]
    }

    fn configure(&mut self, _: &Setup<'_>, load: &mut LoadConfig) -> Result<(), ProbeError> {
        load.global(futex::CONFIG_GLOBAL, &kernel_config(&self.config)?);
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, _: &Setup<'_>) -> Result<(), ProbeError> {
        attach(ebpf, &self.config)
    }

    fn arm(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
        super::set_armed(ebpf, PROBE, futex::ARMED_MAP, on)
    }

    fn progress(&self, counters: &Counters) -> String {
        format!("{} futex waits", counters.get(stats::FUTEX_WAITS))
    }

    fn drain(&mut self, d: &mut Drain<'_>) -> Result<bool, ProbeError> {
        let waits: Vec<(FutexKey, FutexWait)> = super::take_all(d.ebpf, PROBE, futex::WAITS_MAP)?;
        // Wakes and waiters feed only the one-shot report's holder stacks: emptied so they
        // stay bounded, and their stacks forgotten with the rest.
        let wakes: Vec<(FutexKey, FutexWake)> = super::take_all(d.ebpf, PROBE, futex::WAKES_MAP)?;
        let _: Vec<(FutexWaiter, u64)> = super::take_all(d.ebpf, PROBE, futex::WAITERS_MAP)?;
        let table = StackTable::load(
            d.ebpf,
            waits.iter().map(|(k, _)| k.user_stack),
            std::iter::empty(),
            d.maps,
            d.symbolizer,
        )?;
        let mut namer = LockNamer::new(d.maps);
        let mut names: HashMap<u64, String> = HashMap::new();
        let mut by_lock: HashMap<String, u64> = HashMap::new();
        for (key, wait) in &waits {
            let name = names
                .entry(key.uaddr)
                .or_insert_with(|| namer.name(key.uaddr).name)
                .clone();
            *by_lock.entry(name.clone()).or_default() += wait.total_ns;
            d.into.locks.push(WeightedStack {
                thread: format!("lock {name}"),
                tid: 0,
                frames: frames(&table, key.user_stack),
                weight: wait.total_ns,
            });
        }
        d.into.lock_waits = by_lock.into_iter().collect();
        d.into.user_stacks.extend(
            waits
                .iter()
                .map(|(k, _)| k.user_stack)
                .chain(wakes.iter().map(|(k, _)| k.user_stack)),
        );
        Ok(true)
    }

    fn finish(&mut self, f: &mut Finish<'_>) -> Result<(), ProbeError> {
        let data = read(f.ebpf)?;
        let table = StackTable::load(
            f.ebpf,
            data.waits
                .iter()
                .map(|(k, _)| k.user_stack)
                .chain(data.wakes.iter().map(|(k, _)| k.user_stack)),
            std::iter::empty(),
            f.maps,
            f.symbolizer,
        )?;
        let mut namer = LockNamer::new(f.maps);
        let locks = build(&data, &table, &mut namer);
        let text = report::futex::render(&locks, LOCKS_LISTED);
        f.writer
            .write("locks.txt", |out| out.write_all(text.as_bytes()))?;
        let title = f.title("lock waits");
        f.writer.flamegraph(
            "locks",
            &weighted_stacks(&data, &table, &locks),
            &Labels {
                title: &title,
                subtitle: Some("futex waits by lock and waiter stack, weighted by microseconds"),
                count_name: "us",
            },
        )?;
        let (waits, wakes) = (
            f.counters.get(stats::FUTEX_WAITS),
            f.counters.get(stats::FUTEX_WAKES),
        );
        f.writer.say(&format!(
            "locks: {waits} futex waits, {wakes} wakes; top locks by total wait:\n{}",
            report::futex::render(&locks, TERMINAL_LOCKS)
        ));
        if let Some(finding) = report::futex::finding(&locks, f.duration) {
            f.outcome.findings.push(finding);
        }
        f.summary().futex = Some(FutexSummary {
            waits,
            wakes,
            locks: locks.iter().take(LOCKS_LISTED).cloned().collect(),
        });
        f.outcome.locks = Some(locks);
        Ok(())
    }
}
