//! `offcpu`: where the target's threads wait, by stack, weighted by time off the CPU. One
//! program on `sched:sched_switch` records when a target thread leaves the CPU and adds the
//! time it was away when it comes back.

use std::time::Duration;

use aya::{Ebpf, maps::HashMap};
use profiler_common::{
    offcpu::{self, OffcpuConfig},
    stack::StackKey,
    stats,
};

use super::{Counters, Drain, Family, Finish, ProbeError, Setup, map};
use crate::{
    ebpf::LoadConfig,
    report::{
        cpu::{OVERHEAD, TOP_FUNCTIONS},
        findings::{Finding, percent},
        flamegraph::Labels,
        futex::leaf_frames,
        idle,
        offcpu::OffcpuSummary,
        profile::WeightedStack,
        summary::{StackWeight, thread_weights},
    },
    stacks,
    tracefs::Format,
};

const PROBE: &str = "offcpu";

#[derive(Debug, Clone)]
pub struct Config {
    /// Shorter blocks are not counted (noise: a futex that was free by the time we slept).
    pub min_block: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_block: Duration::from_micros(1),
        }
    }
}

/// What the kernel side needs fixed at load: sched_switch's layout on this kernel.
pub fn kernel_config(config: &Config) -> Result<OffcpuConfig, ProbeError> {
    let err = |e| super::tracefs_error(PROBE, &e);
    let format = Format::load("sched", "sched_switch").map_err(err)?;
    let offset = |field, size| format.offset("sched", "sched_switch", field, size);
    Ok(OffcpuConfig {
        next_pid_offset: offset("next_pid", 4).map_err(err)?,
        prev_state_offset: offset("prev_state", 8).map_err(err)?,
        min_block_ns: config.min_block.as_nanos().min(u64::MAX as u128) as u64,
    })
}

pub fn attach(ebpf: &mut Ebpf, _config: &Config) -> Result<(), ProbeError> {
    super::attach_tracepoint(ebpf, PROBE, offcpu::PROGRAM, "sched", "sched_switch")
}

/// Nanoseconds off-CPU per (thread, user stack, kernel stack).
pub fn read(ebpf: &Ebpf) -> Result<Vec<(StackKey, u64)>, ProbeError> {
    let times: HashMap<_, StackKey, u64> = map(ebpf, PROBE, offcpu::TIMES_MAP)?;
    times
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: offcpu::TIMES_MAP,
            source: Box::new(source),
        })
}

/// The `offcpu` family: where threads block and for how long (`sched:sched_switch`).
pub struct Offcpu {
    config: Config,
}

impl Offcpu {
    pub fn new(config: Config) -> Self {
        Self { config }
    }
}

impl Family for Offcpu {
    fn name(&self) -> &'static str {
        PROBE
    }

    fn programs(&self) -> Vec<&'static str> {
        vec![offcpu::PROGRAM]
    }

    fn configure(&mut self, _: &Setup<'_>, load: &mut LoadConfig) -> Result<(), ProbeError> {
        load.global(offcpu::CONFIG_GLOBAL, &kernel_config(&self.config)?);
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, _: &Setup<'_>) -> Result<(), ProbeError> {
        attach(ebpf, &self.config)
    }

    fn arm(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
        super::set_armed(ebpf, PROBE, offcpu::ARMED_MAP, on)
    }

    fn progress(&self, counters: &Counters) -> String {
        format!("{} switches", counters.get(stats::OFFCPU_SWITCHES))
    }

    fn drain(&mut self, d: &mut Drain<'_>) -> Result<bool, ProbeError> {
        let times: Vec<(StackKey, u64)> = super::take_all(d.ebpf, PROBE, offcpu::TIMES_MAP)?;
        let resolved = stacks::resolve(d.ebpf, &times, d.maps, d.symbolizer)?;
        d.into
            .user_stacks
            .extend(times.iter().map(|(k, _)| k.user_stack));
        d.into
            .kernel_stacks
            .extend(times.iter().map(|(k, _)| k.kernel_stack));
        // Weighed in nanoseconds, rooted at their class as in `finish`.
        d.into.offcpu = resolved
            .stacks
            .into_iter()
            .map(|mut s| {
                s.frames.insert(0, format!("[{}]", idle::class(&s.frames)));
                s
            })
            .collect();
        Ok(true)
    }

    fn finish(&mut self, f: &mut Finish<'_>) -> Result<(), ProbeError> {
        let times = read(f.ebpf)?;
        let mut resolved = stacks::resolve(f.ebpf, &times, f.maps, f.symbolizer)?;
        // Flamegraphs weigh by whole microseconds.
        for stack in &mut resolved.stacks {
            stack.weight /= 1000;
        }
        resolved.stacks.retain(|s| s.weight > 0);
        // Waiting for new work is idle, drawn and counted apart from blocking inside work.
        for stack in &mut resolved.stacks {
            let class = format!("[{}]", idle::class(&stack.frames));
            stack.frames.insert(0, class);
        }
        let title = f.title("off-CPU time");
        let subtitle = format!(
            "weighted by microseconds off-CPU, [blocked] inside work apart from [idle] waiting \
             for it, [preempted] waiting for a CPU and [probe overhead] asleep in our uprobe \
             traps; blocks under {} not counted",
            humantime::format_duration(self.config.min_block)
        );
        f.writer.flamegraph(
            "offcpu",
            &resolved.stacks,
            &Labels {
                title: &title,
                subtitle: Some(&subtitle),
                count_name: "us",
            },
        )?;
        let of = |class: &str| -> Vec<&WeightedStack> {
            resolved
                .stacks
                .iter()
                .filter(|s| s.frames[0] == class)
                .collect()
        };
        let (idle, blocked, preempted) = (of("[idle]"), of("[blocked]"), of("[preempted]"));
        let sum = |stacks: &[&WeightedStack]| stacks.iter().map(|s| s.weight).sum::<u64>();
        let (blocked_us, idle_us, preempted_us) = (sum(&blocked), sum(&idle), sum(&preempted));
        let probe_us = sum(&of(OVERHEAD));
        let heaviest = |mut stacks: Vec<&WeightedStack>, n: usize| {
            stacks.sort_by_key(|s| std::cmp::Reverse(s.weight));
            stacks.truncate(n);
            stacks
                .into_iter()
                .map(|s| StackWeight {
                    thread: s.thread.clone(),
                    frames: s.frames[1..].to_vec(),
                    weight: s.weight,
                })
                .collect::<Vec<_>>()
        };
        let top = heaviest(blocked, TOP_FUNCTIONS);
        let idle_top = heaviest(idle, 3);
        let switches = f.counters.get(stats::OFFCPU_SWITCHES);
        let ms = |us: u64| us as f64 / 1000.0;
        // Our probes' sleeps are said only when there were any (`--alloc-duty` moving probes).
        let ours = if probe_us > 0 {
            format!(
                ", {:.1} ms asleep in our probes' uprobe traps (under {OVERHEAD})",
                ms(probe_us)
            )
        } else {
            String::new()
        };
        let mut text = format!(
            "off-CPU: {:.1} ms blocked inside work, {:.1} ms idle (waiting for work), {:.1} ms \
             preempted (waiting for a CPU){ours}, in {switches} switches over {:.1}s; top \
             blocking stacks:\n",
            ms(blocked_us),
            ms(idle_us),
            ms(preempted_us),
            f.duration.as_secs_f64()
        );
        for stack in &top {
            text.push_str(&format!(
                "  {:>10.1} ms  {}: {}\n",
                ms(stack.weight),
                stack.thread,
                leaf_frames(&stack.frames, 6)
            ));
        }
        if let Some(stack) = idle_top.first() {
            text.push_str(&format!(
                "  idle, most in {:.1} ms  {}: {}\n",
                ms(stack.weight),
                stack.thread,
                leaf_frames(&stack.frames, 4)
            ));
        }
        f.writer.say(&text);
        // Thread time the capture covered: the share of it one blocking stack took.
        let threads = thread_weights(&resolved.stacks).len().max(1) as f64;
        let covered_us = f.duration.as_secs_f64() * 1e6 * threads;
        // A sleep is waiting for time, not for a resource: drawn as blocked, not a finding
        // (the tail report says when a request slept).
        let asleep = |s: &&StackWeight| {
            s.frames
                .iter()
                .any(|f| f.starts_with("do_nanosleep") || f.starts_with("hrtimer_nanosleep"))
        };
        if let Some(worst) = top.iter().find(|s| !asleep(s)) {
            let share = worst.weight as f64 / covered_us.max(1.0);
            if share >= 0.05 {
                f.outcome.findings.push(Finding {
                    family: PROBE.into(),
                    subject: format!("blocked {}", leaf_frames(&worst.frames, 1)),
                    // Below what explains a tail or a lock: blocking here is per thread, and
                    // some of it is a background job's own waiting.
                    impact: share.min(1.0) * 0.3,
                    what: format!(
                        "{} of the threads' time blocked in {} ({})",
                        percent(share),
                        leaf_frames(&worst.frames, 3),
                        worst.thread
                    ),
                    file: "offcpu.svg".into(),
                });
            }
        }
        f.summary().offcpu = Some(OffcpuSummary {
            min_block_us: self.config.min_block.as_secs_f64() * 1e6,
            total_us: blocked_us + idle_us + preempted_us + probe_us,
            switches,
            threads: thread_weights(&resolved.stacks),
            top_stacks: top,
            blocked_us,
            idle_us,
            preempted_us,
            probe_us,
            idle_stacks: idle_top,
            unwinders: resolved.unwinders,
            unwind_stops: resolved.stops,
        });
        f.outcome.offcpu_stacks = Some(resolved.stacks);
        Ok(())
    }
}
