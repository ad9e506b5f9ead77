//! `cpu`: on-CPU stack sampling. A software cpu-clock perf event on every online CPU (so it
//! works in VMs without a PMU) runs `cpu_sample`, which keeps only the target's threads (new
//! ones included) and counts (thread, user stack, kernel stack) in `CPU_COUNTS`.

use aya::{
    Ebpf,
    maps::HashMap,
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use profiler_common::{cpu, stack::StackKey, stats};

use super::{Counters, Drain, Family, Finish, ProbeError, Setup, map, program_mut};
use crate::{
    ebpf::LoadConfig,
    report::{
        cpu::{CpuSummary, OVERHEAD, TOP_FUNCTIONS, is_probe_overhead},
        findings::{Finding, percent},
        flamegraph::Labels,
        pprof,
        profile::{WeightedStack, function_totals},
        summary::thread_weights,
        table,
    },
    stacks,
};

const PROBE: &str = "cpu";

#[derive(Debug, Clone)]
pub struct Config {
    /// Samples per second per CPU.
    pub frequency: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { frequency: 99 }
    }
}

pub fn attach(ebpf: &mut Ebpf, config: &Config) -> Result<(), ProbeError> {
    let program: &mut PerfEvent = program_mut(ebpf, PROBE, cpu::PROGRAM)?;
    super::load_once(program, PROBE, cpu::PROGRAM)?;
    let cpus = online_cpus().map_err(|(what, source)| ProbeError::Other {
        probe: PROBE,
        what: format!("cannot list online CPUs ({what})"),
        source,
    })?;
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(config.frequency),
                false,
            )
            .map_err(|source| ProbeError::Attach {
                probe: PROBE,
                program: cpu::PROGRAM,
                target: format!("cpu-clock on CPU {cpu}"),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// Sample counts per (thread, user stack, kernel stack).
pub fn read(ebpf: &Ebpf) -> Result<Vec<(StackKey, u64)>, ProbeError> {
    let counts: HashMap<_, StackKey, u64> = map(ebpf, PROBE, cpu::COUNTS_MAP)?;
    counts
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: cpu::COUNTS_MAP,
            source: Box::new(source),
        })
}

/// The `cpu` family: on-CPU stacks sampled by a software cpu-clock event on every CPU.
pub struct Cpu {
    config: Config,
}

impl Cpu {
    pub fn new(config: Config) -> Self {
        Self { config }
    }
}

impl Family for Cpu {
    fn name(&self) -> &'static str {
        PROBE
    }

    fn programs(&self) -> Vec<&'static str> {
        vec![cpu::PROGRAM]
    }

    fn configure(&mut self, _: &Setup<'_>, _: &mut LoadConfig) -> Result<(), ProbeError> {
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, _: &Setup<'_>) -> Result<(), ProbeError> {
        attach(ebpf, &self.config)
    }

    fn arm(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
        super::set_armed(ebpf, PROBE, cpu::ARMED_MAP, on)
    }

    fn progress(&self, counters: &Counters) -> String {
        format!("{} samples", counters.get(stats::CPU_SAMPLES))
    }

    fn drain(&mut self, d: &mut Drain<'_>) -> Result<bool, ProbeError> {
        let counts: Vec<(StackKey, u64)> = super::take_all(d.ebpf, PROBE, cpu::COUNTS_MAP)?;
        let resolved = stacks::resolve(d.ebpf, &counts, d.maps, d.symbolizer)?;
        d.into
            .user_stacks
            .extend(counts.iter().map(|(k, _)| k.user_stack));
        d.into
            .kernel_stacks
            .extend(counts.iter().map(|(k, _)| k.kernel_stack));
        // As in `finish`: the probes' own samples under one root, never the target's.
        d.into.cpu = resolved
            .stacks
            .into_iter()
            .map(|s| {
                if is_probe_overhead(&s.frames) {
                    WeightedStack {
                        thread: OVERHEAD.into(),
                        ..s
                    }
                } else {
                    s
                }
            })
            .collect();
        Ok(true)
    }

    fn finish(&mut self, f: &mut Finish<'_>) -> Result<(), ProbeError> {
        let counts = read(f.ebpf)?;
        let resolved = stacks::resolve(f.ebpf, &counts, f.maps, f.symbolizer)?;
        // The probes' own samples are drawn apart, under one root, and left out of the
        // target's top functions.
        let (overhead, own): (Vec<WeightedStack>, Vec<WeightedStack>) = resolved
            .stacks
            .iter()
            .cloned()
            .partition(|s| is_probe_overhead(&s.frames));
        let overhead_samples: u64 = overhead.iter().map(|s| s.weight).sum();
        let mut drawn = own.clone();
        drawn.extend(overhead.into_iter().map(|s| WeightedStack {
            thread: OVERHEAD.into(),
            ..s
        }));
        let title = f.title("cpu");
        let subtitle = format!("{} Hz on-CPU samples", self.config.frequency);
        f.writer.flamegraph(
            "cpu",
            &drawn,
            &Labels {
                title: &title,
                subtitle: Some(&subtitle),
                count_name: "samples",
            },
        )?;
        let profile = pprof::cpu_profile(
            &drawn,
            self.config.frequency,
            f.started_at.as_nanosecond() as i64,
            f.duration.as_nanos() as i64,
        );
        f.writer
            .write("profile.pb.gz", |out| pprof::write(&profile, out))?;
        let totals = function_totals(&own, TOP_FUNCTIONS);
        let samples = f.counters.get(stats::CPU_SAMPLES);
        let all: u64 = resolved.stacks.iter().map(|s| s.weight).sum();
        f.writer.say(&format!(
            "cpu: {samples} samples at {} Hz over {:.1}s; probe overhead {overhead_samples} \
             ({}: our BPF programs and uprobe traps in the target's threads)\n",
            self.config.frequency,
            f.duration.as_secs_f64(),
            percent(overhead_samples as f64 / all.max(1) as f64),
        ));
        f.writer.say(&table::top_functions(
            "Top functions by self time",
            "samples",
            &totals.top_self,
        ));
        f.writer.say(&table::top_functions(
            "Top functions by total time",
            "samples",
            &totals.top_total,
        ));
        for hot in totals.top_self.iter().filter(|s| s.share >= 0.1).take(3) {
            let under = callers_of(&own, &hot.function);
            f.outcome.findings.push(Finding {
                family: PROBE.into(),
                subject: format!("cpu {}", hot.function),
                impact: hot.share * 0.8,
                what: format!("{} of CPU in {}{under}", percent(hot.share), hot.function),
                file: "cpu.svg".into(),
            });
        }
        let overhead_share = overhead_samples as f64 / all.max(1) as f64;
        if overhead_share >= 0.05 {
            f.outcome.findings.push(Finding {
                family: PROBE.into(),
                subject: "probe overhead".into(),
                impact: overhead_share * 0.5,
                what: format!(
                    "{} of the target's CPU samples were the profiler's own probes (BPF programs, \
                     uprobe traps): drawn apart under {OVERHEAD}",
                    percent(overhead_share)
                ),
                file: "cpu.svg".into(),
            });
        }
        f.summary().cpu = Some(CpuSummary {
            frequency_hz: self.config.frequency,
            samples,
            stacks: counts.len() as u64,
            threads: thread_weights(&resolved.stacks),
            top_self: totals.top_self,
            top_total: totals.top_total,
            unwinders: resolved.unwinders,
            unwind_stops: resolved.stops,
            overhead_samples,
        });
        f.outcome.cpu_stacks = Some(resolved.stacks);
        Ok(())
    }
}

/// A frame where a hot function's paths part, its weight, and its heaviest caller's name and
/// weight.
type Branch<'a> = (&'a str, u64, Option<(&'a str, u64)>);

/// Where a hot leaf `function` is called from, in a few words: " via handler → slow_path (79%),
/// stall_loop → stall_work (21%)" at the first level up where its callers part ways, else
/// " under" its caller. Each branch also names its own caller, since the frame where paths part
/// is often a shared helper (a hashing loop, a copy) and the branch's purpose is one level up.
fn callers_of(stacks: &[WeightedStack], function: &str) -> String {
    let theirs: Vec<&WeightedStack> = stacks
        .iter()
        .filter(|s| s.frames.last().is_some_and(|f| f == function))
        .collect();
    let total: u64 = theirs.iter().map(|s| s.weight).sum();
    if total == 0 {
        return String::new();
    }
    use std::collections::HashMap;
    let mut single = None;
    for up in 1..=8 {
        // Per frame at this level: its weight, and its callers' weights.
        let mut at: HashMap<&str, (u64, HashMap<&str, u64>)> = HashMap::new();
        for s in &theirs {
            if let Some(i) = s.frames.len().checked_sub(1 + up) {
                let entry = at.entry(&s.frames[i]).or_default();
                entry.0 += s.weight;
                if let Some(caller) = i.checked_sub(1).map(|c| s.frames[c].as_str()) {
                    *entry.1.entry(caller).or_default() += s.weight;
                }
            }
        }
        // A branch is named by its frame's heaviest caller, with that pair's own share (a
        // helper's other callers are not in it).
        let mut parts: Vec<Branch<'_>> = at
            .into_iter()
            .map(|(frame, (weight, callers))| {
                let caller = callers
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)));
                (frame, weight, caller)
            })
            .collect();
        parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let big: Vec<_> = parts.iter().filter(|(_, w, _)| *w * 10 >= total).collect();
        if big.len() >= 2 {
            let share = |w: u64| percent(w as f64 / total as f64);
            let via: Vec<String> = big
                .iter()
                .take(3)
                .map(|(f, w, caller)| match caller {
                    Some((c, cw)) => format!("{c} → {f} ({})", share(*cw)),
                    None => format!("{f} ({})", share(*w)),
                })
                .collect();
            return format!(" via {}", via.join(", "));
        }
        if up == 1 {
            single = parts.first().map(|(f, _, _)| format!(" under {f}"));
        }
    }
    single.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str], weight: u64) -> WeightedStack {
        WeightedStack {
            frames: frames.iter().map(|f| f.to_string()).collect(),
            weight,
            thread: "t".into(),
            tid: 1,
        }
    }

    #[test]
    fn each_branch_names_its_caller_where_paths_part() {
        let stacks = [
            stack(&["main", "stall_loop", "stall_work", "digest"], 85),
            stack(&["main", "handle", "slow_path", "burn_cpu", "digest"], 15),
            stack(&["main", "handle", "other"], 50),
        ];
        assert_eq!(
            callers_of(&stacks, "digest"),
            " via stall_loop → stall_work (85%), slow_path → burn_cpu (15%)"
        );
        // A helper with two callers: the share is its named caller's, not the helper's.
        let stacks = [
            stack(&["main", "a", "helper", "digest"], 35),
            stack(&["main", "b", "helper", "digest"], 25),
            stack(&["main", "other", "digest"], 40),
        ];
        assert_eq!(
            callers_of(&stacks, "digest"),
            " via a → helper (35%), main → other (40%)"
        );
    }

    #[test]
    fn one_caller_is_named_under() {
        let stacks = [stack(&["main", "work", "digest"], 10)];
        assert_eq!(callers_of(&stacks, "digest"), " under work");
        assert_eq!(callers_of(&stacks, "absent"), "");
    }
}
