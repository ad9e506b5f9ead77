//! `offcpu`: where the target's threads wait, by stack, weighted by time off the CPU. One
//! program on `sched:sched_switch` records when a target thread leaves the CPU and adds the
//! time it was away when it comes back.

use std::time::Duration;

use aya::{Ebpf, maps::HashMap};
use profiler_common::{
    offcpu::{self, OffcpuConfig},
    stack::StackKey,
};

use super::{ProbeError, map};
use crate::tracefs::Format;

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
    let format = Format::load("sched", "sched_switch").map_err(|e| tracefs_error(&e))?;
    let next_pid_offset = format
        .offset("sched", "sched_switch", "next_pid", 4)
        .map_err(|e| tracefs_error(&e))?;
    Ok(OffcpuConfig {
        next_pid_offset,
        _pad: 0,
        min_block_ns: config.min_block.as_nanos().min(u64::MAX as u128) as u64,
    })
}

pub(crate) fn tracefs_error(err: &crate::tracefs::FormatError) -> ProbeError {
    ProbeError::Other {
        probe: PROBE,
        what: err.to_string(),
        source: std::io::Error::other(err.to_string()),
    }
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
