//! One capture, start to finish: a runner over the list of probe families (`probes::Family`).
//! It checks what can be checked first, loads the eBPF object with every family's settings,
//! attaches and arms them together, runs the capture loop (progress, Ctrl-C, SIGTERM, target
//! exit, dlopen), then disarms them together and has each family write its reports, before
//! writing the summary and the page.
//!
//! Tests and benchmarks drive this the same way the CLI does: `start`, `run`, `finish`.

use std::{
    io::{self, Write as _},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::Ebpf;

pub use crate::{options::AttachOptions, report::Outcome};

use crate::{
    ebpf::{self, LoadConfig},
    framepointers::FramePointerCheck,
    preflight::{self, OutputDir, PreflightError, Target},
    probes::{self, Counters, Family, Finish, ProbeError, Setup, Tick},
    procmaps::ProcessMaps,
    progress::Progress,
    report::{
        findings::{self, Finding, FindingsFile},
        html,
        summary::{SCHEMA_VERSION, Summary, TargetSummary, TargetUsage},
    },
    rundir::{self, RunWriter, WriteError},
    symbolize::{BpfSymbols, Symbolizer},
    unwind::{UnwindError, Unwinder},
};

/// How often the capture loop wakes to check for a stop, refresh mappings and tick families.
const TICK: Duration = Duration::from_millis(100);
/// How often the target's mappings are re-read, so libraries loaded by dlopen get their
/// unwind tables well within a second. Reading /proc/PID/maps costs tens of microseconds.
const MAPS_REFRESH: Duration = Duration::from_millis(250);
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Snapshot period when `--interval` is not given.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("could not load the eBPF programs")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("could not load the unwinding tables")]
    Unwind(#[from] UnwindError),
    #[error("could not read the mappings of pid {pid}")]
    Maps {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Why a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Duration,
    Interrupted,
    TargetExited,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duration => "duration",
            Self::Interrupted => "interrupted",
            Self::TargetExited => "target_exited",
        }
    }
}

/// A target with every family's programs loaded, attached and armed.
pub struct Loaded {
    pub families: Vec<Box<dyn Family>>,
    pub ebpf: Ebpf,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub maps: ProcessMaps,
    pub unwinder: Unwinder,
    pub frame_pointers: Option<FramePointerCheck>,
    pub notes: Vec<String>,
}

/// Configures `families` for `pid`, loads the object, builds and installs the unwinding
/// tables if a family walks stacks, attaches every family, then arms them together. Shared by
/// one capture (`Session`) and the agent, which loads one per target.
pub fn load(
    pid: u32,
    mut families: Vec<Box<dyn Family>>,
    unwind: crate::unwind::UnwindMode,
    verbose: bool,
) -> Result<Loaded, AttachError> {
    // Where an attach spends its time (`-v`): the agent re-attaches a restarted target
    // through here, and its delay is this sum.
    let mut phases = Phases::new();
    let maps = ProcessMaps::snapshot(pid).map_err(|source| AttachError::Maps { pid, source })?;
    let setup = Setup { pid, maps: &maps };
    // Every family reads what its kernel half needs first: a kernel without a tracepoint
    // fails here, before anything loads.
    let mut load = LoadConfig::new(pid, verbose);
    phases.mark("maps");
    // Then each family's configure, and its attach further on, under its own name.
    for family in &mut families {
        family.configure(&setup, &mut load)?;
        phases.mark(format!("configure {}", family.name()));
    }
    let mut notes = Vec::new();
    // Tables for a large binary take a core for a good part of a second to build: a
    // capture that walks no stacks (`--sock` alone) does not spend that on the machine it
    // measures.
    let (mut unwinder, frame_pointers) = if families.iter().any(|f| f.walks_stacks()) {
        let unwinder = Unwinder::prepare(unwind, &maps);
        let check = crate::unwind::check_main_binary(&maps, &unwinder, &mut notes);
        (unwinder, check)
    } else {
        (Unwinder::unused(), None)
    };
    phases.mark("unwind tables");
    load.unwind_mode = unwinder.mode().kernel_mode();
    load.unwind_rows = unwinder.rows_capacity();
    let mut ebpf = ebpf::load(&load).map_err(|source| AttachError::Load {
        source: Box::new(source),
    })?;
    phases.mark("object load");
    let programs: Vec<&'static str> = families.iter().flat_map(|f| f.programs()).collect();
    ebpf::preload(&mut ebpf, &programs);
    phases.mark("verify");
    unwinder.install(&mut ebpf, &maps)?;
    phases.mark("tables install");
    let logger = if verbose {
        aya_log::EbpfLogger::init(&mut ebpf)
            .map_err(|err| log::warn!("kernel-side logging unavailable: {err}"))
            .ok()
    } else {
        None
    };
    for family in &mut families {
        family.attach(&mut ebpf, &setup)?;
        phases.mark(format!("attach {}", family.name()));
    }
    // A program a family loads without listing it is verified alone, after the others: not
    // wrong, only slower, so tests (debug builds) catch it.
    debug_assert!(
        ebpf.programs()
            .all(|(name, p)| p.fd().is_err() || programs.contains(&name)),
        "a family loads a program its `programs` does not list"
    );
    // Together, so every family counts from the same instant.
    for family in &mut families {
        family.arm(&mut ebpf, true)?;
    }
    phases.mark("arm");
    log::debug!("pid {pid}: loaded in {}", phases.text());
    Ok(Loaded {
        families,
        ebpf,
        logger,
        maps,
        unwinder,
        frame_pointers,
        notes,
    })
}

/// Consecutive phases' durations, for the log.
struct Phases {
    last: Instant,
    took: Vec<(String, Duration)>,
}

impl Phases {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            took: Vec::new(),
        }
    }

    fn mark(&mut self, phase: impl Into<String>) {
        let now = Instant::now();
        self.took.push((phase.into(), now - self.last));
        self.last = now;
    }

    fn text(&self) -> String {
        self.took
            .iter()
            .map(|(phase, d)| format!("{phase} {:.0} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A running capture.
pub struct Session {
    opts: AttachOptions,
    families: Vec<Box<dyn Family>>,
    target: Target,
    out_dir: PathBuf,
    /// Kept once attached; until then a failure removes the directory if we made it.
    _output: OutputDir,
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    maps: ProcessMaps,
    unwinder: Unwinder,
    pidfd: OwnedFd,
    started: Instant,
    started_at: jiff::Timestamp,
    frame_pointers: Option<FramePointerCheck>,
    notes: Vec<String>,
    /// The target's CPU time when the capture started.
    cpu_at_start: Option<f64>,
    placement: crate::container::Placement,
}

impl Session {
    /// Checks everything that can be checked first, then loads, attaches and arms.
    pub fn start(opts: AttachOptions) -> Result<Self, AttachError> {
        preflight::check_privileges()?;
        let target = preflight::check_target(opts.pid)?;
        let started_at = jiff::Timestamp::now();
        let out_dir = opts
            .output
            .clone()
            .unwrap_or_else(|| preflight::default_output_dir(&target, started_at));
        let mut output = OutputDir::prepare(&out_dir, rundir::REPORTS, opts.overwrite)?;
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(opts.pid as i32)
                .ok_or(PreflightError::PidNotFound { pid: opts.pid })?,
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|_| PreflightError::PidNotFound { pid: opts.pid })?;
        let Loaded {
            families,
            ebpf,
            logger,
            maps,
            unwinder,
            frame_pointers,
            notes,
        } = load(opts.pid, opts.families(), opts.unwind, opts.verbose)?;
        output.keep();
        let pid = opts.pid;
        Ok(Self {
            opts,
            families,
            target,
            out_dir,
            _output: output,
            ebpf,
            logger,
            maps,
            unwinder,
            pidfd,
            started: Instant::now(),
            started_at,
            frame_pointers,
            notes,
            cpu_at_start: preflight::cpu_seconds(pid),
            placement: crate::container::placement(pid),
        })
    }

    fn interval(&self) -> Duration {
        self.opts.interval.unwrap_or(DEFAULT_INTERVAL)
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `each` over every family with a tick of the capture.
    fn tick_all(
        &mut self,
        interval_due: bool,
        target_alive: bool,
        each: fn(&mut dyn Family, &mut Tick<'_>),
    ) {
        let mut tick = Tick {
            ebpf: &mut self.ebpf,
            pid: self.opts.pid,
            elapsed: self.started.elapsed(),
            interval_due,
            target_alive,
            interval: self.opts.interval.unwrap_or(DEFAULT_INTERVAL),
            notes: &mut self.notes,
        };
        for family in &mut self.families {
            each(family.as_mut(), &mut tick);
        }
    }

    /// Captures until the duration passes, `stop` is set (Ctrl-C, SIGTERM) or the target exits.
    pub fn run(&mut self, stop: &AtomicBool) -> EndReason {
        let mut last_refresh = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut progress = Progress::new(self.opts.progress);
        self.tick_all(false, true, |f, t| f.begin(t));
        loop {
            let elapsed = self.started.elapsed();
            let end = if stop.load(Ordering::Relaxed) {
                Some(EndReason::Interrupted)
            } else if self.opts.duration.is_some_and(|d| elapsed >= d) {
                Some(EndReason::Duration)
            } else {
                let left = self.opts.duration.map(|d| d.saturating_sub(elapsed));
                let wait = left.map_or(TICK, |l| l.min(TICK));
                preflight::exited(&self.pidfd, wait).then_some(EndReason::TargetExited)
            };
            if let Some(end) = end {
                progress.clear();
                return end;
            }
            if let Some(logger) = &mut self.logger {
                logger.flush();
            }
            if last_refresh.elapsed() >= MAPS_REFRESH {
                last_refresh = Instant::now();
                match self.maps.refresh() {
                    Ok(true) => {
                        if let Err(err) = self.unwinder.sync(&mut self.ebpf, &self.maps) {
                            log::warn!("updating unwind tables: {err:#}");
                        }
                    }
                    Ok(false) => {}
                    Err(err) => log::debug!("refreshing maps of pid {}: {err}", self.opts.pid),
                }
            }
            let interval_due = last_snapshot.elapsed() >= self.interval();
            if interval_due {
                last_snapshot = Instant::now();
            }
            self.tick_all(interval_due, true, |f, t| f.tick(t));
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let counters = Counters::read(&self.ebpf);
                let events: Vec<String> = self
                    .families
                    .iter()
                    .map(|f| f.progress(&counters))
                    .collect();
                progress.draw(
                    self.started.elapsed(),
                    self.opts.duration,
                    &events.join(", "),
                );
            }
        }
    }

    /// Disarms and detaches, reads the maps and writes every output.
    pub fn finish(mut self, end: EndReason) -> Result<Outcome, AttachError> {
        let duration = self.started.elapsed();
        // Ages are as of the end of the capture, not of the (slower) report writing.
        let ended_ns = preflight::monotonic_ns();
        let alive = end != EndReason::TargetExited;
        let usage = usage(self.opts.pid, self.cpu_at_start, duration).filter(|_| alive);
        // Every family stops counting at one instant before anything is detached: detached one
        // by one, a target allocating flat out had its frees (or allocations) counted alone in
        // the window, and the last snapshot was off by a whole burst.
        for family in &mut self.families {
            if let Err(err) = family.arm(&mut self.ebpf, false) {
                log::warn!("stopping {}: {err}", family.name());
            }
        }
        // Our programs leave kallsyms when unloaded: their names are taken first.
        let bpf_symbols = BpfSymbols::snapshot();
        probes::unload_all(&mut self.ebpf);
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        if alive {
            let _ = self.maps.refresh();
        }
        self.tick_all(false, alive, |f, t| f.end(t));
        let counters = Counters::read(&self.ebpf);
        let symbolizer = Symbolizer::new().with_bpf(bpf_symbols);
        let mut notes = std::mem::take(&mut self.notes);
        if !alive {
            notes.push(format!(
                "pid {} exited after {:.1}s; the outputs hold what was captured until then",
                self.target.pid,
                duration.as_secs_f64()
            ));
        }
        let mut writer = RunWriter::new(&self.out_dir);
        let mut outcome = Outcome {
            dir: self.out_dir.clone(),
            summary: self.summary(duration, end, usage),
            terminal: String::new(),
            cpu_stacks: None,
            offcpu_stacks: None,
            locks: None,
            leaks: None,
            findings: Vec::new(),
            growth: None,
            latency: None,
        };
        let mut finish = Finish {
            ebpf: &self.ebpf,
            maps: &self.maps,
            symbolizer: &symbolizer,
            counters: &counters,
            target: &self.target,
            duration,
            started_at: self.started_at,
            ended_ns,
            interval: self.opts.interval.unwrap_or(DEFAULT_INTERVAL),
            writer: &mut writer,
            outcome: &mut outcome,
            notes: &mut notes,
        };
        for family in &mut self.families {
            family.finish(&mut finish)?;
        }

        let drops = counters.drops();
        let losses: Vec<String> = drops
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(name, count)| format!("{name}={count}"))
            .collect();
        if !losses.is_empty() {
            let said = format!("kernel-side drops: {}", losses.join(", "));
            outcome.findings.push(Finding {
                family: "warning".into(),
                subject: "drops".into(),
                impact: 1.0,
                what: format!("{said}: figures that depend on them undercount"),
                file: rundir::SUMMARY.into(),
            });
            notes.push(said);
        }
        let digest = findings::digest(&outcome.findings);
        writer.json(
            findings::FILE,
            &FindingsFile {
                schema_version: findings::SCHEMA_VERSION,
                findings: digest.clone(),
            },
        )?;
        let summary = &mut outcome.summary;
        summary.findings = digest;
        summary.notes = notes.clone();
        summary.unwind = self.unwinder.stats().clone();
        summary.dropped = drops;
        summary.outputs = writer.outputs().to_vec();
        summary.outputs.push(rundir::SUMMARY.into());
        summary.outputs.push(html::FILE.into());
        writer.json(rundir::SUMMARY, &*summary)?;
        let page = html::render(&self.out_dir, summary);
        writer.write(html::FILE, |out| out.write_all(page.as_bytes()))?;
        for note in &notes {
            writer.say(&format!("note: {note}"));
        }
        // The digest first; the tables after it, unless only the digest was asked for.
        let mut terminal = findings::text(&outcome.summary.findings);
        if self.opts.details {
            terminal.push_str("\ndetails:\n");
            terminal.push_str(&writer.into_terminal());
        }
        outcome.terminal = terminal;
        Ok(outcome)
    }

    /// The summary's fixed parts; each family fills in its own section.
    fn summary(&self, duration: Duration, end: EndReason, usage: Option<TargetUsage>) -> Summary {
        Summary {
            schema_version: SCHEMA_VERSION,
            profiler_version: env!("CARGO_PKG_VERSION").to_string(),
            target: TargetSummary {
                pid: self.target.pid,
                comm: self.target.comm.clone(),
                exe: self.target.exe.as_ref().map(|p| p.display().to_string()),
                cmdline: self.target.cmdline.clone(),
                frame_pointers: self.frame_pointers.clone(),
                usage,
                placement: self.placement.clone(),
            },
            kernel: preflight::kernel_release(),
            started_at: self.started_at.to_string(),
            duration_secs: duration.as_secs_f64(),
            end_reason: end.as_str().to_string(),
            ..Summary::default()
        }
    }
}

/// What `pid` used since `cpu_at_start` seconds of CPU: its CPU over `duration` and its RSS now.
fn usage(
    pid: u32,
    cpu_at_start: Option<f64>,
    duration: std::time::Duration,
) -> Option<TargetUsage> {
    let (before, after) = (cpu_at_start?, preflight::cpu_seconds(pid)?);
    Some(TargetUsage {
        cpu_seconds: after - before,
        cpu_percent: (after - before) / duration.as_secs_f64().max(1e-9) * 100.0,
        rss_kb: preflight::rss_kb(pid)?,
    })
}
