//! `--alloc-duty`: sampling allocations in time by attaching the allocating functions' probes
//! only in windows.
//!
//! A uprobe costs its trap whether or not its program does anything: on redis at load, empty
//! programs on malloc and free alone left 0.31 of bare throughput, and an "armed" flag checked
//! inside the programs 0.27. So between windows `malloc` and `calloc`'s probes are detached,
//! not disarmed. `free` and `realloc`'s entry stay attached, so every block tracked in a window
//! is retired when it goes and no false leak is born; a free of a block made between windows
//! is ignored (`alloc_unsampled_frees`). Live figures are scaled by the measured duty: the
//! time the kernel's window slot was set (only then are calls opened) over the time armed.

use std::{
    num::NonZeroU32,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use profiler_common::alloc;

use super::{PROBE, load_program};
use crate::probes::{ProbeError, map_mut, program_mut};

/// How long a window lasts unless told otherwise: attaching its four probes takes a few ms,
/// and a 10% duty still opens one every two seconds. Detaching them (about 0.4 s, on a thread
/// of its own) follows each window; on redis, 1 s windows cost no less than 200 ms ones.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(200);

/// One probe that comes and goes with the windows.
#[derive(Debug, Clone)]
pub struct Probe {
    pub program: &'static str,
    /// In the allocator's file, resolved once (by symbol, each attach would parse the file).
    pub file_offset: u64,
    pub cookie: Option<u64>,
    /// A return probe: attached before the entries, so no call they open returns unseen.
    pub ret: bool,
}

/// The windows of one capture, and the time they were open.
#[derive(Debug)]
pub struct Windows {
    /// Share of the time the allocation probes are attached, in (0, 1).
    duty: f64,
    window: Duration,
    probes: Vec<Probe>,
    path: PathBuf,
    pid: Option<NonZeroU32>,
    /// The open window's probes.
    links: Vec<(&'static str, UProbeLinkId)>,
    /// The window open now (`WINDOW_SLOT`'s value), or the last one.
    number: u32,
    open_since: Option<Instant>,
    closed_since: Option<Instant>,
    /// When accounting began (`arm`), and how long windows were open since, closed ones only.
    armed_at: Option<Instant>,
    open_total: Duration,
    /// The measured duty once accounting stopped.
    final_duty: Option<f64>,
    /// Dropping the last window's links.
    detaching: Option<std::thread::JoinHandle<()>>,
    /// Set when a window could not be opened or closed: windows stop, and the report says why.
    pub failed: Option<String>,
}

impl Windows {
    pub fn new(duty: f64, window: Duration) -> Self {
        Self {
            duty,
            window,
            probes: Vec::new(),
            path: PathBuf::new(),
            pid: None,
            links: Vec::new(),
            number: 0,
            open_since: None,
            closed_since: None,
            armed_at: None,
            open_total: Duration::ZERO,
            final_duty: None,
            detaching: None,
            failed: None,
        }
    }

    pub fn set_probes(&mut self, path: PathBuf, pid: NonZeroU32, probes: Vec<Probe>) {
        self.path = path;
        self.pid = Some(pid);
        self.probes = probes;
    }

    /// The gap between windows that gives the duty.
    fn gap(&self) -> Duration {
        self.window.mul_f64((1.0 - self.duty) / self.duty)
    }

    /// Accounting starts: the window opened at attach starts counting now.
    pub fn armed(&mut self) {
        let now = Instant::now();
        self.armed_at = Some(now);
        self.open_total = Duration::ZERO;
        if self.open_since.is_some() {
            self.open_since = Some(now);
        }
    }

    /// Accounting stops: the open window's time so far counts, the probes stay until unload.
    pub fn disarmed(&mut self) {
        self.final_duty = Some(self.measured_duty());
        if let Some(since) = self.open_since.take() {
            self.open_total += since.elapsed();
        }
        self.armed_at = None;
        self.join_detach();
    }

    /// Measured share of the armed time the allocation probes were attached (1 before any).
    pub fn measured_duty(&self) -> f64 {
        let Some(armed_at) = self.armed_at else {
            return self.final_duty.unwrap_or(1.0);
        };
        let total = armed_at.elapsed().as_secs_f64();
        let open = self.open_total + self.open_since.map_or(Duration::ZERO, |s| s.elapsed());
        if total <= 0.0 {
            return 1.0;
        }
        (open.as_secs_f64() / total).clamp(f64::MIN_POSITIVE, 1.0)
    }

    /// Windows opened so far.
    pub fn count(&self) -> u32 {
        self.number
    }

    /// Opens or closes a window when its time has come.
    pub fn step(&mut self, ebpf: &mut Ebpf) {
        if self.failed.is_some() || self.armed_at.is_none() {
            return;
        }
        let result = match (self.open_since, self.closed_since) {
            (Some(since), _) if since.elapsed() >= self.window => self.close(ebpf),
            (None, Some(since)) if since.elapsed() >= self.gap() => self.open(ebpf),
            _ => Ok(()),
        };
        if let Err(err) = result {
            log::warn!("alloc window: {err}");
            self.failed = Some(format!(
                "allocation windows stopped after {}: {err}",
                self.number
            ));
        }
    }

    /// Attaches the probes, returns first, then opens the window in the kernel: a call
    /// entered before that is not opened, so its return tracks nothing.
    pub fn open(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        let pid = self.pid.ok_or(ProbeError::Other {
            probe: PROBE,
            what: "a window opened before its probes were set".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // The last window's probes are detached first (the kernel would serialise the
        // attaches behind those detaches anyway).
        self.join_detach();
        let mut probes = self.probes.clone();
        probes.sort_by_key(|p| !p.ret);
        for probe in &probes {
            self.attach_one(ebpf, probe, pid)?;
        }
        self.number += 1;
        set_window(ebpf, self.number)?;
        self.open_since = Some(Instant::now());
        Ok(())
    }

    /// Closes the window in the kernel, then detaches its probes on a thread of their own:
    /// each detach waits for an RCU-tasks grace period (~100 ms), which would stall the
    /// capture loop. Only calls that entered and returned inside the window were tracked, so
    /// the measured duty is exactly the time the window was open; the probes' cost lingers
    /// while they detach.
    fn close(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        set_window(ebpf, 0)?;
        if let Some(since) = self.open_since.take() {
            self.open_total += since.elapsed();
        }
        self.closed_since = Some(Instant::now());
        let mut links = Vec::new();
        for (program, link) in std::mem::take(&mut self.links) {
            let prog: &mut UProbe = program_mut(ebpf, PROBE, program)?;
            links.push(prog.take_link(link).map_err(|source| ProbeError::Detach {
                probe: PROBE,
                program,
                source: Box::new(source),
            })?);
        }
        // Dropping a link detaches it.
        self.detaching = Some(std::thread::spawn(move || drop(links)));
        Ok(())
    }

    /// Waits for the last window's probes to be detached.
    pub fn join_detach(&mut self) {
        if let Some(thread) = self.detaching.take()
            && thread.join().is_err()
        {
            log::warn!("alloc: the thread detaching a window's probes panicked");
        }
    }

    fn attach_one(
        &mut self,
        ebpf: &mut Ebpf,
        probe: &Probe,
        pid: NonZeroU32,
    ) -> Result<(), ProbeError> {
        let prog = load_program(ebpf, probe.program)?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
            cookie: probe.cookie,
        };
        let link = prog
            .attach(point, &self.path, UProbeScope::OneProcess(pid))
            .map_err(|source| ProbeError::Attach {
                probe: PROBE,
                program: probe.program,
                target: format!("{:#x} in {}", probe.file_offset, self.path.display()),
                source: Box::new(source),
            })?;
        self.links.push((probe.program, link));
        Ok(())
    }
}

/// Sets the window the kernel side opens calls in (0: none).
pub fn set_window(ebpf: &mut Ebpf, number: u32) -> Result<(), ProbeError> {
    let mut armed: aya::maps::Array<_, u32> = map_mut(ebpf, PROBE, alloc::ARMED_MAP)?;
    armed
        .set(alloc::WINDOW_SLOT, number, 0)
        .map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: alloc::ARMED_MAP,
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_gives_the_duty() {
        let w = Windows::new(0.1, Duration::from_millis(200));
        assert_eq!(w.gap(), Duration::from_millis(1800));
        let w = Windows::new(0.5, Duration::from_millis(200));
        assert_eq!(w.gap(), Duration::from_millis(200));
    }
}
