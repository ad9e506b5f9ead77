//! One capture, start to finish: checks, load and attach, the capture loop (progress, Ctrl-C,
//! SIGTERM, target exit, dlopen), then reading the maps and writing every output.
//!
//! Tests and benchmarks drive this the same way the CLI does: `start`, `run`, `finish`.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, IsTerminal, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{Ebpf, maps::PerCpuArray};
use profiler_common::stats;

use crate::{
    ebpf,
    framepointers::{self, FramePointerCheck},
    preflight::{self, PreflightError, Target},
    probes::{self, ProbeError, cpu},
    procmaps::ProcessMaps,
    report::{
        flamegraph::{self, Labels},
        folded,
        profile::{WeightedStack, function_totals},
        summary::{CpuSummary, SCHEMA_VERSION, Summary, TargetSummary, ThreadWeight},
        table,
    },
    stacks,
    symbolize::Symbolizer,
    unwind::{UnwindError, UnwindMode, Unwinder},
};

/// How many functions the summary and the terminal list.
const TOP_FUNCTIONS: usize = 10;
/// How often the capture loop wakes to check for a stop, refresh mappings and draw progress.
const TICK: Duration = Duration::from_millis(100);
/// How often the target's mappings are re-read, so libraries loaded by dlopen get their
/// unwind tables well within a second. Reading /proc/PID/maps costs tens of microseconds.
const MAPS_REFRESH: Duration = Duration::from_millis(250);
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Everything `profiler attach` can be asked to do, independent of how it was asked.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub pid: u32,
    /// None: until interrupted or the target exits.
    pub duration: Option<Duration>,
    /// None: `results/<comm>-<pid>-<UTC timestamp>/`.
    pub output: Option<PathBuf>,
    pub cpu: Option<cpu::Config>,
    pub unwind: UnwindMode,
    /// Kernel-side diagnostics (aya-log) on.
    pub verbose: bool,
    /// Draw a live progress line on stderr.
    pub progress: bool,
}

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
    #[error("could not write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

/// A running capture.
pub struct Session {
    opts: AttachOptions,
    target: Target,
    out_dir: PathBuf,
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    maps: ProcessMaps,
    unwinder: Unwinder,
    pidfd: OwnedFd,
    started: Instant,
    started_at: jiff::Timestamp,
    frame_pointers: Option<FramePointerCheck>,
    notes: Vec<String>,
}

/// What a finished capture produced.
pub struct Outcome {
    pub dir: PathBuf,
    pub summary: Summary,
    /// The tables and notes for the terminal.
    pub terminal: String,
    /// The cpu samples as named stacks, when `cpu` ran.
    pub cpu_stacks: Option<Vec<WeightedStack>>,
}

impl Session {
    /// Checks everything that can be checked first, then loads and attaches.
    pub fn start(opts: AttachOptions) -> Result<Self, AttachError> {
        preflight::check_privileges()?;
        let target = preflight::check_target(opts.pid)?;
        let started_at = jiff::Timestamp::now();
        let out_dir = opts
            .output
            .clone()
            .unwrap_or_else(|| default_output_dir(&target, started_at));
        preflight::prepare_output(&out_dir)?;
        let pidfd =
            pidfd_open(opts.pid).map_err(|_| PreflightError::PidNotFound { pid: opts.pid })?;

        let maps = ProcessMaps::snapshot(opts.pid).map_err(|source| AttachError::Maps {
            pid: opts.pid,
            source,
        })?;
        let mut notes = Vec::new();
        let mut unwinder = Unwinder::prepare(opts.unwind, &maps);
        let frame_pointers = check_main_binary(&maps, &unwinder, &mut notes);
        let mut ebpf = ebpf::load(&ebpf::LoadConfig {
            target_tgid: opts.pid,
            verbose: opts.verbose,
            unwind_mode: opts.unwind.kernel_mode(),
            unwind_rows: unwinder.rows_capacity(),
        })
        .map_err(|source| AttachError::Load {
            source: Box::new(source),
        })?;
        unwinder.install(&mut ebpf, &maps)?;
        let logger = if opts.verbose {
            aya_log::EbpfLogger::init(&mut ebpf)
                .map_err(|err| log::warn!("kernel-side logging unavailable: {err}"))
                .ok()
        } else {
            None
        };
        if let Some(config) = &opts.cpu {
            cpu::attach(&mut ebpf, config)?;
        }
        Ok(Self {
            opts,
            target,
            out_dir,
            ebpf,
            logger,
            maps,
            unwinder,
            pidfd,
            started: Instant::now(),
            started_at,
            frame_pointers,
            notes,
        })
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Captures until the duration passes, `stop` is set (Ctrl-C, SIGTERM) or the target exits.
    pub fn run(&mut self, stop: &AtomicBool) -> EndReason {
        let mut last_refresh = Instant::now();
        let mut last_progress = Instant::now();
        let mut progress = Progress::new(self.opts.progress);
        loop {
            let elapsed = self.started.elapsed();
            if stop.load(Ordering::Relaxed) {
                return EndReason::Interrupted;
            }
            if self.opts.duration.is_some_and(|d| elapsed >= d) {
                progress.clear();
                return EndReason::Duration;
            }
            let left = self.opts.duration.map(|d| d.saturating_sub(elapsed));
            if wait_for_exit(&self.pidfd, left.map_or(TICK, |l| l.min(TICK))) {
                progress.clear();
                return EndReason::TargetExited;
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
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                progress.draw(self.started.elapsed(), self.opts.duration, self.samples());
            }
        }
    }

    /// Target samples so far, summed over CPUs.
    pub fn samples(&self) -> u64 {
        read_stats(&self.ebpf)
            .get(stats::NAMES[stats::CPU_SAMPLES as usize])
            .copied()
            .unwrap_or(0)
    }

    /// Detaches, reads the maps and writes every output.
    pub fn finish(mut self, end: EndReason) -> Result<Outcome, AttachError> {
        let duration = self.started.elapsed();
        probes::unload_all(&mut self.ebpf);
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        if end != EndReason::TargetExited {
            let _ = self.maps.refresh();
        }
        let dropped = read_stats(&self.ebpf);
        let symbolizer = Symbolizer::new();
        let mut notes = std::mem::take(&mut self.notes);
        if end == EndReason::TargetExited {
            notes.push(format!(
                "pid {} exited after {:.1}s; the outputs hold what was captured until then",
                self.target.pid,
                duration.as_secs_f64()
            ));
        }
        let mut outputs = Vec::new();
        let mut terminal = String::new();

        let mut cpu_stacks = None;
        let cpu = match &self.opts.cpu {
            Some(config) => {
                let counts = cpu::read(&self.ebpf)?;
                let resolved = stacks::resolve(&self.ebpf, &counts, &self.maps, &symbolizer)?;
                let lines = folded::fold(&resolved.stacks);
                self.write("cpu.folded", &mut outputs, |out| {
                    lines.iter().try_for_each(|line| writeln!(out, "{line}"))
                })?;
                let title = format!(
                    "cpu: {} (pid {}), {:.1}s",
                    self.target.comm,
                    self.target.pid,
                    duration.as_secs_f64()
                );
                let subtitle = format!("{} Hz on-CPU samples", config.frequency);
                let labels = Labels {
                    title: &title,
                    subtitle: Some(&subtitle),
                    count_name: "samples",
                };
                self.write("cpu.svg", &mut outputs, |out| {
                    flamegraph::write(&lines, &labels, out)
                })?;
                let totals = function_totals(&resolved.stacks, TOP_FUNCTIONS);
                let samples = dropped
                    .get(stats::NAMES[stats::CPU_SAMPLES as usize])
                    .copied()
                    .unwrap_or(0);
                terminal.push_str(&format!(
                    "cpu: {samples} samples at {} Hz over {:.1}s\n\n",
                    config.frequency,
                    duration.as_secs_f64()
                ));
                terminal.push_str(&table::top_functions(
                    "Top functions by self time",
                    "samples",
                    &totals.top_self,
                ));
                terminal.push('\n');
                terminal.push_str(&table::top_functions(
                    "Top functions by total time",
                    "samples",
                    &totals.top_total,
                ));
                let summary = CpuSummary {
                    frequency_hz: config.frequency,
                    samples,
                    stacks: counts.len() as u64,
                    threads: crate::report::profile::thread_totals(&resolved.stacks)
                        .into_iter()
                        .map(|(name, weight)| ThreadWeight { name, weight })
                        .collect(),
                    top_self: totals.top_self,
                    top_total: totals.top_total,
                    unwinders: resolved.unwinders,
                    unwind_stops: resolved.stops,
                };
                cpu_stacks = Some(resolved.stacks);
                Some(summary)
            }
            None => None,
        };

        let losses: Vec<String> = dropped
            .iter()
            .filter(|(name, count)| {
                **count > 0 && *name != stats::NAMES[stats::CPU_SAMPLES as usize]
            })
            .map(|(name, count)| format!("{name}={count}"))
            .collect();
        if !losses.is_empty() {
            notes.push(format!("kernel-side drops: {}", losses.join(", ")));
        }
        outputs.push("summary.json".to_string());
        let summary = Summary {
            schema_version: SCHEMA_VERSION,
            profiler_version: env!("CARGO_PKG_VERSION").to_string(),
            target: TargetSummary {
                pid: self.target.pid,
                comm: self.target.comm.clone(),
                exe: self.target.exe.as_ref().map(|p| p.display().to_string()),
                cmdline: self.target.cmdline.clone(),
                frame_pointers: self.frame_pointers.clone(),
            },
            kernel: kernel_release(),
            started_at: self.started_at.to_string(),
            duration_secs: duration.as_secs_f64(),
            end_reason: end.as_str().to_string(),
            notes: notes.clone(),
            cpu,
            unwind: self.unwinder.stats().clone(),
            dropped: dropped
                .into_iter()
                .filter(|(name, _)| name != stats::NAMES[stats::CPU_SAMPLES as usize])
                .collect(),
            outputs: outputs.clone(),
        };
        let json = serde_json::to_string_pretty(&summary).map_err(io::Error::other);
        self.write("summary.json", &mut Vec::new(), |out| {
            out.write_all(
                json.as_ref()
                    .map_err(|e| io::Error::other(e.to_string()))?
                    .as_bytes(),
            )
        })?;
        for note in &notes {
            terminal.push_str(&format!("\nnote: {note}"));
        }
        Ok(Outcome {
            dir: self.out_dir.clone(),
            summary,
            terminal,
            cpu_stacks,
        })
    }

    fn write(
        &self,
        name: &str,
        outputs: &mut Vec<String>,
        body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
    ) -> Result<(), AttachError> {
        let path = self.out_dir.join(name);
        let fail = |source| AttachError::Write {
            path: path.clone(),
            source,
        };
        let mut out = BufWriter::new(File::create(&path).map_err(fail)?);
        body(&mut out).map_err(fail)?;
        out.flush().map_err(fail)?;
        outputs.push(name.to_string());
        Ok(())
    }
}

fn default_output_dir(target: &Target, at: jiff::Timestamp) -> PathBuf {
    let comm: String = target
        .comm
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from("results").join(format!(
        "{comm}-{}-{}",
        target.pid,
        at.strftime("%Y%m%dT%H%M%SZ")
    ))
}

/// Says so when the main binary lacks frame pointers and nothing else will walk it.
fn check_main_binary(
    maps: &ProcessMaps,
    unwinder: &Unwinder,
    notes: &mut Vec<String>,
) -> Option<FramePointerCheck> {
    let binary = maps.main_binary()?;
    // SAFETY: read-only map of a file we hold open; a concurrent truncation could fault, which
    // for an executable that is running cannot happen (ETXTBSY).
    let data = unsafe { memmap2::Mmap::map(&binary.file) }.ok()?;
    let check = framepointers::check(&data).ok()?;
    if check.has_frame_pointers == Some(false) {
        let what = format!(
            "{} seems built without frame pointers ({} of {} functions set one up)",
            binary.path.display(),
            check.with_frame_pointer,
            check.functions_checked
        );
        if unwinder.has_table(binary.id) {
            log::info!("{what}; walking it with its .eh_frame tables");
        } else if unwinder.mode() == UnwindMode::FramePointer {
            notes.push(format!(
                "{what}: user stacks through it will be short (--unwind auto walks its .eh_frame tables)"
            ));
        } else {
            notes.push(format!(
                "{what} and has no .eh_frame tables: user stacks through it will be short"
            ));
        }
    }
    Some(check)
}

/// Every stats counter summed over CPUs, by name.
fn read_stats(ebpf: &Ebpf) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    let Ok(array) = probes::map::<PerCpuArray<_, u64>>(ebpf, "stats", stats::MAP) else {
        return totals;
    };
    for (index, name) in stats::NAMES.iter().enumerate() {
        let sum = array
            .get(&(index as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        totals.insert((*name).to_string(), sum);
    }
    totals
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sleeps up to `timeout`; true if the process behind `pidfd` has exited. A signal ends the
/// wait early (poll returns EINTR), so Ctrl-C is handled within one tick.
fn wait_for_exit(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    ready > 0 && pfd.revents & libc::POLLIN != 0
}

/// The live line on stderr: elapsed, remaining, samples. Redrawn in place on a terminal;
/// elsewhere (logs, CI) a line every ten seconds.
struct Progress {
    enabled: bool,
    tty: bool,
    last_plain: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: io::stderr().is_terminal(),
            last_plain: None,
        }
    }

    fn draw(&mut self, elapsed: Duration, total: Option<Duration>, samples: u64) {
        if !self.enabled {
            return;
        }
        let left = match total {
            Some(total) => format!("{:.0}s left", total.saturating_sub(elapsed).as_secs_f64()),
            None => "until Ctrl-C".to_string(),
        };
        let line = format!(
            "capturing: {:.0}s elapsed, {left}, {samples} samples",
            elapsed.as_secs_f64()
        );
        if self.tty {
            eprint!("\r\x1b[K{line}");
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_plain = Some(Instant::now());
            eprintln!("{line}");
        }
    }

    fn clear(&self) {
        if self.enabled && self.tty {
            eprint!("\r\x1b[K");
        }
    }
}
