//! What `profiler attach` is asked to do, as plain options (the CLI builds them; tests and
//! benchmarks set them directly), and the list of families they name.

use std::{path::PathBuf, time::Duration};

use crate::{
    probes::{
        self, Family, alloc::Alloc, cpu::Cpu, futex::Futex, memory::Memory, offcpu::Offcpu,
        sock::Sock, why::Why,
    },
    unwind::UnwindMode,
};

/// Everything `profiler attach` can be asked to do, independent of how it was asked. A
/// family runs when its config is set.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub pid: u32,
    /// None: until interrupted or the target exits.
    pub duration: Option<Duration>,
    /// None: `results/<comm>-<pid>-<UTC timestamp>/`.
    pub output: Option<PathBuf>,
    pub cpu: Option<probes::cpu::Config>,
    pub offcpu: Option<probes::offcpu::Config>,
    pub futex: Option<probes::futex::Config>,
    pub alloc: Option<probes::alloc::Config>,
    /// Memory growth by stack from page faults and mapping calls.
    pub memory: Option<probes::memory::Config>,
    pub sock: Option<probes::sock::Config>,
    /// Tail attribution; needs `sock`, which pairs the requests.
    pub why: Option<probes::why::Config>,
    /// How often periodic snapshots are taken (allocation live bytes, memory, latency
    /// percentiles); None: default.
    pub interval: Option<Duration>,
    pub unwind: UnwindMode,
    /// Kernel-side diagnostics (aya-log) on.
    pub verbose: bool,
    /// Draw a live progress line on stderr.
    pub progress: bool,
    /// Replace an earlier run's reports in `output` instead of refusing.
    pub overwrite: bool,
    /// The terminal text: every family's tables after the findings digest (false: the digest
    /// alone).
    pub details: bool,
}

impl AttachOptions {
    /// The families asked for, in the order their reports are written: the one place that
    /// knows every family by name.
    pub fn families(&self) -> Vec<Box<dyn Family>> {
        let mut families: Vec<Box<dyn Family>> = Vec::new();
        if let Some(config) = &self.cpu {
            families.push(Box::new(Cpu::new(config.clone())));
        }
        if let Some(config) = &self.offcpu {
            families.push(Box::new(Offcpu::new(config.clone())));
        }
        if let Some(config) = &self.futex {
            families.push(Box::new(Futex::new(config.clone())));
        }
        if let Some(config) = &self.alloc {
            families.push(Box::new(Alloc::new(config.clone())));
        }
        // After `alloc`: it writes the memory series and leaks.txt itself when `alloc` did not.
        if let Some(config) = &self.memory {
            families.push(Box::new(Memory::new(config.clone())));
        }
        if let Some(config) = &self.sock {
            families.push(Box::new(Sock::new(config.clone())));
        }
        // After `sock`: it reads the port table `sock` fills.
        if let Some(config) = &self.why {
            families.push(Box::new(Why::new(config.clone())));
        }
        families
    }
}
