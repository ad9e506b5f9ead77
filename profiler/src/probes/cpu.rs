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
use profiler_common::{cpu, stack::StackKey};

use super::{ProbeError, map, program_mut};

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
