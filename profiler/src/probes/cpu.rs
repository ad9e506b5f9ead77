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

use super::{Counters, Family, Finish, ProbeError, Setup, map, program_mut};
use crate::{
    ebpf::LoadConfig,
    report::{
        cpu::{CpuSummary, TOP_FUNCTIONS},
        flamegraph::Labels,
        pprof,
        profile::function_totals,
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
    program.load().map_err(|source| ProbeError::Load {
        probe: PROBE,
        program: cpu::PROGRAM,
        source: Box::new(source),
    })?;
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

    fn configure(&mut self, _: &Setup<'_>, _: &mut LoadConfig) -> Result<(), ProbeError> {
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, _: &Setup<'_>) -> Result<(), ProbeError> {
        attach(ebpf, &self.config)
    }

    fn progress(&self, counters: &Counters) -> String {
        format!("{} samples", counters.get(stats::CPU_SAMPLES))
    }

    fn finish(&mut self, f: &mut Finish<'_>) -> Result<(), ProbeError> {
        let counts = read(f.ebpf)?;
        let resolved = stacks::resolve(f.ebpf, &counts, f.maps, f.symbolizer)?;
        let title = f.title("cpu");
        let subtitle = format!("{} Hz on-CPU samples", self.config.frequency);
        f.writer.flamegraph(
            "cpu",
            &resolved.stacks,
            &Labels {
                title: &title,
                subtitle: Some(&subtitle),
                count_name: "samples",
            },
        )?;
        let profile = pprof::cpu_profile(
            &resolved.stacks,
            self.config.frequency,
            f.started_at.as_nanosecond() as i64,
            f.duration.as_nanos() as i64,
        );
        f.writer
            .write("profile.pb.gz", |out| pprof::write(&profile, out))?;
        let totals = function_totals(&resolved.stacks, TOP_FUNCTIONS);
        let samples = f.counters.get(stats::CPU_SAMPLES);
        f.writer.say(&format!(
            "cpu: {samples} samples at {} Hz over {:.1}s\n",
            self.config.frequency,
            f.duration.as_secs_f64()
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
        f.summary().cpu = Some(CpuSummary {
            frequency_hz: self.config.frequency,
            samples,
            stacks: counts.len() as u64,
            threads: thread_weights(&resolved.stacks),
            top_self: totals.top_self,
            top_total: totals.top_total,
            unwinders: resolved.unwinders,
            unwind_stops: resolved.stops,
        });
        f.outcome.cpu_stacks = Some(resolved.stacks);
        Ok(())
    }
}
