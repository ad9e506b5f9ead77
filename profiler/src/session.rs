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
    locks::LockNamer,
    preflight::{self, PreflightError, Target},
    probes::{self, ProbeError, alloc, cpu, futex, offcpu, sock},
    procmaps::ProcessMaps,
    report::{
        self,
        flamegraph::{self, Labels},
        folded,
        latency::{self, LatencyReport, Timeseries},
        leaks::{self, MemorySample, Snapshots},
        locks::LockReport,
        profile::{WeightedStack, function_totals},
        summary::{
            AllocSummary, CpuSummary, FutexSummary, OffcpuSummary, SCHEMA_VERSION, StackWeight,
            Summary, TargetSummary, TargetUsage, ThreadWeight,
        },
        table,
    },
    stacks::{self, StackTable},
    symbolize::Symbolizer,
    unwind::{UnwindError, UnwindMode, UnwindStats, Unwinder},
};

/// How many functions the summary and the terminal list.
const TOP_FUNCTIONS: usize = 10;
/// How often the capture loop wakes to check for a stop, refresh mappings and draw progress.
const TICK: Duration = Duration::from_millis(100);
/// How often the target's mappings are re-read, so libraries loaded by dlopen get their
/// unwind tables well within a second. Reading /proc/PID/maps costs tens of microseconds.
const MAPS_REFRESH: Duration = Duration::from_millis(250);
/// How often the target's listening ports are re-read (`sock`): a scan of every open fd, so
/// less often than the mappings.
const PORTS_REFRESH: Duration = Duration::from_secs(2);
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Snapshot period when `--interval` is not given.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Everything `profiler attach` can be asked to do, independent of how it was asked.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub pid: u32,
    /// None: until interrupted or the target exits.
    pub duration: Option<Duration>,
    /// None: `results/<comm>-<pid>-<UTC timestamp>/`.
    pub output: Option<PathBuf>,
    pub cpu: Option<cpu::Config>,
    pub offcpu: Option<offcpu::Config>,
    pub futex: Option<futex::Config>,
    pub alloc: Option<alloc::Config>,
    pub sock: Option<sock::Config>,
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
    /// Kept once attached; until then a failure removes the directory if we made it.
    _output: preflight::OutputDir,
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
    allocator: Option<alloc::Allocator>,
    /// Per-stack live bytes over time (`alloc`).
    snapshots: Snapshots,
    /// The target's memory over time (`alloc`).
    memory: Vec<MemorySample>,
    /// Listening ports handed to the kernel (`sock`).
    ports: sock::Ports,
    /// Latency percentiles per interval (`sock`).
    latency_series: Timeseries,
}

/// What a finished capture produced.
pub struct Outcome {
    pub dir: PathBuf,
    pub summary: Summary,
    /// The tables and notes for the terminal.
    pub terminal: String,
    /// The cpu samples as named stacks, when `cpu` ran.
    pub cpu_stacks: Option<Vec<WeightedStack>>,
    /// Off-CPU time (µs) as named stacks, when `offcpu` ran.
    pub offcpu_stacks: Option<Vec<WeightedStack>>,
    /// Every contended lock, most total wait first, when `futex` ran.
    pub locks: Option<Vec<LockReport>>,
    /// Leak suspects and live allocations, when `alloc` ran.
    pub leaks: Option<leaks::LeakReport>,
    /// Every tracked port's histograms, when `sock` ran.
    pub latency: Option<Vec<sock::PortData>>,
}

/// Output files and terminal text as a capture's reports are written.
struct Writer {
    dir: PathBuf,
    outputs: Vec<String>,
    terminal: String,
}

impl Writer {
    fn write(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
    ) -> Result<(), AttachError> {
        let path = self.dir.join(name);
        let fail = |source| AttachError::Write {
            path: path.clone(),
            source,
        };
        let mut out = BufWriter::new(File::create(&path).map_err(fail)?);
        body(&mut out).map_err(fail)?;
        out.flush().map_err(fail)?;
        self.outputs.push(name.to_string());
        Ok(())
    }

    /// `<name>.folded` and `<name>.svg` of `stacks`.
    fn flamegraph(
        &mut self,
        name: &str,
        stacks: &[WeightedStack],
        labels: &Labels<'_>,
    ) -> Result<(), AttachError> {
        let lines = folded::fold(stacks);
        self.write(&format!("{name}.folded"), |out| {
            lines.iter().try_for_each(|line| writeln!(out, "{line}"))
        })?;
        self.write(&format!("{name}.svg"), |out| {
            flamegraph::write(&lines, labels, out)
        })
    }

    fn say(&mut self, text: &str) {
        if !self.terminal.is_empty() {
            self.terminal.push('\n');
        }
        self.terminal.push_str(text);
    }
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
        let mut output =
            preflight::OutputDir::prepare(&out_dir, crate::rundir::REPORTS, opts.overwrite)?;
        let pidfd =
            pidfd_open(opts.pid).map_err(|_| PreflightError::PidNotFound { pid: opts.pid })?;
        // Tracepoint layouts first: a kernel without them fails here, before anything loads.
        let offcpu_config = opts
            .offcpu
            .as_ref()
            .map(offcpu::kernel_config)
            .transpose()?
            .unwrap_or_default();
        let futex_config = opts
            .futex
            .as_ref()
            .map(futex::kernel_config)
            .transpose()?
            .unwrap_or_default();
        let alloc_config = opts
            .alloc
            .as_ref()
            .map(alloc::kernel_config)
            .transpose()?
            .unwrap_or_default();
        let sock_config = opts
            .sock
            .as_ref()
            .map(sock::kernel_config)
            .transpose()?
            .unwrap_or_default();

        let maps = ProcessMaps::snapshot(opts.pid).map_err(|source| AttachError::Maps {
            pid: opts.pid,
            source,
        })?;
        let allocator = opts
            .alloc
            .as_ref()
            .map(|config| alloc::discover(opts.pid, &maps, config))
            .transpose()?;
        let mut notes = Vec::new();
        // Tables for a large binary take a core for a good part of a second to build: a
        // capture that walks no stacks (`--sock` alone) does not spend that on the machine it
        // measures.
        let walks_stacks = opts.cpu.is_some()
            || opts.offcpu.is_some()
            || opts.futex.is_some()
            || opts.alloc.is_some();
        let (mut unwinder, frame_pointers) = if walks_stacks {
            let unwinder = Unwinder::prepare(opts.unwind, &maps);
            let check = check_main_binary(&maps, &unwinder, &mut notes);
            (unwinder, check)
        } else {
            (Unwinder::unused(), None)
        };
        let mut ebpf = ebpf::load(&ebpf::LoadConfig {
            target_tgid: opts.pid,
            verbose: opts.verbose,
            unwind_mode: unwinder.mode().kernel_mode(),
            unwind_rows: unwinder.rows_capacity(),
            offcpu: offcpu_config,
            futex: futex_config,
            alloc: alloc_config,
            sock: sock_config,
            alloc_live: opts
                .alloc
                .as_ref()
                .map_or(1, |_| profiler_common::alloc::DEFAULT_MAX_LIVE),
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
        if let Some(config) = &opts.offcpu {
            offcpu::attach(&mut ebpf, config)?;
        }
        if let Some(config) = &opts.futex {
            futex::attach(&mut ebpf, config)?;
        }
        if let Some(allocator) = &allocator {
            alloc::attach(&mut ebpf, opts.pid, allocator)?;
        }
        let mut ports = sock::Ports::default();
        if let Some(config) = &opts.sock {
            // Ports first, so the first connections after attaching are already known.
            ports.sync(&mut ebpf, opts.pid)?;
            sock::attach(&mut ebpf, config)?;
            if ports.indices.is_empty() {
                notes.push(format!(
                    "sock: pid {} listens on no TCP port yet; ports it opens later are picked up",
                    opts.pid
                ));
            }
        }
        let opts_pid = opts.pid;
        output.keep();
        Ok(Self {
            opts,
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
            cpu_at_start: preflight::cpu_seconds(opts_pid),
            placement: crate::container::placement(opts_pid),
            allocator,
            snapshots: Snapshots::default(),
            memory: Vec::new(),
            ports,
            latency_series: Timeseries::default(),
        })
    }

    fn interval(&self) -> Duration {
        self.opts.interval.unwrap_or(DEFAULT_INTERVAL)
    }

    /// A snapshot of per-stack live bytes and of the target's memory.
    fn snapshot(&mut self) {
        let at = self.started.elapsed().as_secs_f64();
        let scale = self
            .opts
            .alloc
            .as_ref()
            .map_or(1, |c| i64::from(c.sample_every.max(1)));
        let live = match alloc::read(&self.ebpf) {
            Ok(stacks) => {
                self.snapshots.record(at, &stacks);
                Some(leaks::live_totals(&stacks, scale))
            }
            Err(err) => {
                log::warn!("alloc snapshot: {err}");
                None
            }
        };
        if let Some(mut sample) = leaks::sample_memory(self.opts.pid, at) {
            if let Some((bytes, count)) = live {
                sample.live_bytes = bytes;
                sample.live_count = count;
            }
            self.memory.push(sample);
        }
    }

    /// Latency percentiles of the interval that just ended.
    fn latency_snapshot(&mut self) {
        let at = self.started.elapsed().as_secs_f64();
        match sock::read(&self.ebpf, &self.ports) {
            Ok(ports) => self.latency_series.record(at, &ports),
            Err(err) => log::warn!("latency snapshot: {err}"),
        }
    }

    /// The allocator probed, when `alloc` runs.
    pub fn allocator(&self) -> Option<&alloc::Allocator> {
        self.allocator.as_ref()
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
        let mut last_ports = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut progress = Progress::new(self.opts.progress);
        if self.opts.alloc.is_some() {
            self.snapshot();
        }
        loop {
            let elapsed = self.started.elapsed();
            if stop.load(Ordering::Relaxed) {
                progress.clear();
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
            if self.opts.sock.is_some() && last_ports.elapsed() >= PORTS_REFRESH {
                last_ports = Instant::now();
                if let Err(err) = self.ports.sync(&mut self.ebpf, self.opts.pid) {
                    log::debug!("refreshing listening ports: {err}");
                }
            }
            if last_snapshot.elapsed() >= self.interval() {
                last_snapshot = Instant::now();
                if self.opts.alloc.is_some() {
                    self.snapshot();
                }
                if self.opts.sock.is_some() {
                    self.latency_snapshot();
                }
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                progress.draw(self.started.elapsed(), self.opts.duration, &self.events());
            }
        }
    }

    /// Events so far ("412 samples, 90 switches"), for the progress line.
    fn events(&self) -> String {
        let stats = read_stats(&self.ebpf);
        let get = |i: u32| stats.get(stats::NAMES[i as usize]).copied().unwrap_or(0);
        let mut parts = Vec::new();
        if self.opts.cpu.is_some() {
            parts.push(format!("{} samples", get(stats::CPU_SAMPLES)));
        }
        if self.opts.offcpu.is_some() {
            parts.push(format!("{} switches", get(stats::OFFCPU_SWITCHES)));
        }
        if self.opts.futex.is_some() {
            parts.push(format!("{} futex waits", get(stats::FUTEX_WAITS)));
        }
        if self.opts.alloc.is_some() {
            parts.push(format!("{} allocations", get(stats::ALLOC_TRACKED)));
        }
        if self.opts.sock.is_some() {
            parts.push(format!("{} requests", get(stats::SOCK_REQUESTS)));
        }
        parts.join(", ")
    }

    /// Detaches, reads the maps and writes every output.
    pub fn finish(mut self, end: EndReason) -> Result<Outcome, AttachError> {
        let duration = self.started.elapsed();
        // Ages are as of the end of the capture, not of the (slower) report writing.
        let ended_ns = monotonic_ns();
        let usage = match (self.cpu_at_start, preflight::cpu_seconds(self.opts.pid)) {
            (Some(before), Some(after)) if end != EndReason::TargetExited => {
                preflight::rss_kb(self.opts.pid).map(|rss_kb| TargetUsage {
                    cpu_seconds: after - before,
                    cpu_percent: (after - before) / duration.as_secs_f64().max(1e-9) * 100.0,
                    rss_kb,
                })
            }
            _ => None,
        };
        // Every family stops counting at one instant before anything is detached: detached one
        // by one, a target allocating flat out had its frees (or allocations) counted alone in
        // the window, and the last snapshot was off by a whole burst.
        let mut disarm = Vec::new();
        if self.allocator.is_some() {
            disarm.push(alloc::set_armed(&mut self.ebpf, false));
        }
        if self.opts.sock.is_some() {
            disarm.push(sock::set_armed(&mut self.ebpf, false));
        }
        for result in disarm {
            if let Err(err) = result {
                log::warn!("stopping the capture: {err}");
            }
        }
        // Our programs leave kallsyms when unloaded: their names are taken first.
        let bpf_symbols = crate::symbolize::BpfSymbols::snapshot();
        probes::unload_all(&mut self.ebpf);
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        if end != EndReason::TargetExited {
            let _ = self.maps.refresh();
            if self.opts.alloc.is_some() {
                self.snapshot();
            }
        }
        if self.opts.sock.is_some() {
            // The last, partial interval.
            self.latency_snapshot();
        }
        let counters = read_stats(&self.ebpf);
        let symbolizer = Symbolizer::new().with_bpf(bpf_symbols);
        let mut notes = std::mem::take(&mut self.notes);
        if end == EndReason::TargetExited {
            notes.push(format!(
                "pid {} exited after {:.1}s; the outputs hold what was captured until then",
                self.target.pid,
                duration.as_secs_f64()
            ));
        }
        let mut writer = Writer {
            dir: self.out_dir.clone(),
            outputs: Vec::new(),
            terminal: String::new(),
        };
        let mut outcome = Outcome {
            dir: self.out_dir.clone(),
            summary: self.summary(duration, end, usage),
            terminal: String::new(),
            cpu_stacks: None,
            offcpu_stacks: None,
            locks: None,
            leaks: None,
            latency: None,
        };
        if let Some(config) = self.opts.cpu.clone() {
            let (summary, stacks) =
                self.finish_cpu(&config, duration, &counters, &symbolizer, &mut writer)?;
            outcome.summary.cpu = Some(summary);
            outcome.cpu_stacks = Some(stacks);
        }
        if let Some(config) = self.opts.offcpu.clone() {
            let (summary, stacks) =
                self.finish_offcpu(&config, duration, &counters, &symbolizer, &mut writer)?;
            outcome.summary.offcpu = Some(summary);
            outcome.offcpu_stacks = Some(stacks);
        }
        if self.opts.futex.is_some() {
            let (summary, locks) =
                self.finish_futex(duration, &counters, &symbolizer, &mut writer)?;
            outcome.summary.futex = Some(summary);
            outcome.locks = Some(locks);
        }
        if let (Some(config), Some(allocator)) = (self.opts.alloc.clone(), self.allocator.clone()) {
            let summary = self.finish_alloc(
                &config,
                allocator,
                duration,
                ended_ns,
                &counters,
                &symbolizer,
                &mut writer,
            )?;
            notes.extend(summary.leaks.plausibility.clone());
            outcome.leaks = Some(summary.leaks.clone());
            outcome.summary.alloc = Some(summary);
        }
        if self.opts.sock.is_some() {
            let (report, data) = self.finish_sock(duration, &mut writer)?;
            outcome.summary.sock = Some(report);
            outcome.latency = Some(data);
        }

        let losses: Vec<String> = counters
            .iter()
            .filter(|(name, count)| **count > 0 && !is_event_counter(name))
            .map(|(name, count)| format!("{name}={count}"))
            .collect();
        if !losses.is_empty() {
            notes.push(format!("kernel-side drops: {}", losses.join(", ")));
        }
        outcome.summary.notes = notes.clone();
        outcome.summary.unwind = self.unwinder.stats().clone();
        outcome.summary.dropped = counters
            .into_iter()
            .filter(|(name, _)| !is_event_counter(name))
            .collect();
        writer.outputs.push("summary.json".to_string());
        writer.outputs.push("report.html".to_string());
        outcome.summary.outputs = writer.outputs.clone();
        let json = serde_json::to_vec_pretty(&outcome.summary).map_err(io::Error::other);
        writer.write("summary.json", |out| out.write_all(&json?))?;
        let page = serde_json::to_value(&outcome.summary)
            .map(|summary| report::html::render(&self.out_dir, &summary))
            .map_err(io::Error::other);
        writer.write("report.html", |out| out.write_all(page?.as_bytes()))?;
        for note in &notes {
            writer.say(&format!("note: {note}"));
        }
        outcome.terminal = writer.terminal;
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
            kernel: kernel_release(),
            started_at: self.started_at.to_string(),
            duration_secs: duration.as_secs_f64(),
            end_reason: end.as_str().to_string(),
            notes: Vec::new(),
            cpu: None,
            offcpu: None,
            futex: None,
            alloc: None,
            sock: None,
            unwind: UnwindStats::default(),
            dropped: BTreeMap::new(),
            outputs: Vec::new(),
        }
    }

    fn title(&self, what: &str, duration: Duration) -> String {
        format!(
            "{what}: {} (pid {}), {:.1}s",
            self.target.comm,
            self.target.pid,
            duration.as_secs_f64()
        )
    }

    fn finish_cpu(
        &self,
        config: &cpu::Config,
        duration: Duration,
        counters: &BTreeMap<String, u64>,
        symbolizer: &Symbolizer,
        writer: &mut Writer,
    ) -> Result<(CpuSummary, Vec<WeightedStack>), AttachError> {
        let counts = cpu::read(&self.ebpf)?;
        let resolved = stacks::resolve(&self.ebpf, &counts, &self.maps, symbolizer)?;
        let title = self.title("cpu", duration);
        let subtitle = format!("{} Hz on-CPU samples", config.frequency);
        writer.flamegraph(
            "cpu",
            &resolved.stacks,
            &Labels {
                title: &title,
                subtitle: Some(&subtitle),
                count_name: "samples",
            },
        )?;
        let profile = report::pprof::cpu_profile(
            &resolved.stacks,
            config.frequency,
            self.started_at.as_nanosecond() as i64,
            duration.as_nanos() as i64,
        );
        writer.write("profile.pb.gz", |out| report::pprof::write(&profile, out))?;
        let totals = function_totals(&resolved.stacks, TOP_FUNCTIONS);
        let samples = counter(counters, stats::CPU_SAMPLES);
        writer.say(&format!(
            "cpu: {samples} samples at {} Hz over {:.1}s\n",
            config.frequency,
            duration.as_secs_f64()
        ));
        writer.say(&table::top_functions(
            "Top functions by self time",
            "samples",
            &totals.top_self,
        ));
        writer.say(&table::top_functions(
            "Top functions by total time",
            "samples",
            &totals.top_total,
        ));
        let summary = CpuSummary {
            frequency_hz: config.frequency,
            samples,
            stacks: counts.len() as u64,
            threads: thread_weights(&resolved.stacks),
            top_self: totals.top_self,
            top_total: totals.top_total,
            unwinders: resolved.unwinders,
            unwind_stops: resolved.stops,
        };
        Ok((summary, resolved.stacks))
    }

    fn finish_offcpu(
        &self,
        config: &offcpu::Config,
        duration: Duration,
        counters: &BTreeMap<String, u64>,
        symbolizer: &Symbolizer,
        writer: &mut Writer,
    ) -> Result<(OffcpuSummary, Vec<WeightedStack>), AttachError> {
        let times = offcpu::read(&self.ebpf)?;
        let mut resolved = stacks::resolve(&self.ebpf, &times, &self.maps, symbolizer)?;
        // Flamegraphs weigh by whole microseconds.
        for stack in &mut resolved.stacks {
            stack.weight /= 1000;
        }
        resolved.stacks.retain(|s| s.weight > 0);
        let title = self.title("off-CPU time", duration);
        let subtitle = format!(
            "weighted by microseconds off-CPU; blocks under {} not counted",
            humantime::format_duration(config.min_block)
        );
        writer.flamegraph(
            "offcpu",
            &resolved.stacks,
            &Labels {
                title: &title,
                subtitle: Some(&subtitle),
                count_name: "us",
            },
        )?;
        let total_us: u64 = resolved.stacks.iter().map(|s| s.weight).sum();
        let mut top = resolved.stacks.clone();
        top.sort_by_key(|s| std::cmp::Reverse(s.weight));
        top.truncate(TOP_FUNCTIONS);
        let mut text = format!(
            "off-CPU: {:.1} ms in {} switches over {:.1}s; top blocking stacks:\n",
            total_us as f64 / 1000.0,
            counter(counters, stats::OFFCPU_SWITCHES),
            duration.as_secs_f64()
        );
        for stack in &top {
            text.push_str(&format!(
                "  {:>10.1} ms  {}: {}\n",
                stack.weight as f64 / 1000.0,
                stack.thread,
                report::locks::leaf_frames(&stack.frames, 6)
            ));
        }
        writer.say(&text);
        let summary = OffcpuSummary {
            min_block_us: config.min_block.as_secs_f64() * 1e6,
            total_us,
            switches: counter(counters, stats::OFFCPU_SWITCHES),
            threads: thread_weights(&resolved.stacks),
            top_stacks: top
                .iter()
                .map(|s| StackWeight {
                    thread: s.thread.clone(),
                    frames: s.frames.clone(),
                    weight: s.weight,
                })
                .collect(),
            unwinders: resolved.unwinders,
            unwind_stops: resolved.stops,
        };
        Ok((summary, resolved.stacks))
    }

    fn finish_futex(
        &self,
        duration: Duration,
        counters: &BTreeMap<String, u64>,
        symbolizer: &Symbolizer,
        writer: &mut Writer,
    ) -> Result<(FutexSummary, Vec<LockReport>), AttachError> {
        let data = futex::read(&self.ebpf)?;
        let table = StackTable::load(
            &self.ebpf,
            data.waits
                .iter()
                .map(|(k, _)| k.user_stack)
                .chain(data.wakes.iter().map(|(k, _)| k.user_stack)),
            std::iter::empty(),
            &self.maps,
            symbolizer,
        )?;
        let mut namer = LockNamer::new(&self.maps);
        let locks = report::locks::build(&data, &table, &mut namer);
        let text = report::locks::render(&locks, LOCKS_LISTED);
        writer.write("locks.txt", |out| out.write_all(text.as_bytes()))?;
        let title = self.title("lock waits", duration);
        writer.flamegraph(
            "locks",
            &report::locks::weighted_stacks(&data, &table, &locks),
            &Labels {
                title: &title,
                subtitle: Some("futex waits by lock and waiter stack, weighted by microseconds"),
                count_name: "us",
            },
        )?;
        writer.say(&format!(
            "locks: {} futex waits, {} wakes; top locks by total wait:\n{}",
            counter(counters, stats::FUTEX_WAITS),
            counter(counters, stats::FUTEX_WAKES),
            report::locks::render(&locks, TERMINAL_LOCKS)
        ));
        let summary = FutexSummary {
            waits: counter(counters, stats::FUTEX_WAITS),
            wakes: counter(counters, stats::FUTEX_WAKES),
            locks: locks.iter().take(LOCKS_LISTED).cloned().collect(),
        };
        Ok((summary, locks))
    }
}

impl Session {
    fn finish_sock(
        &self,
        duration: Duration,
        writer: &mut Writer,
    ) -> Result<(LatencyReport, Vec<sock::PortData>), AttachError> {
        let data = sock::read(&self.ebpf, &self.ports)?;
        let report = LatencyReport::new(
            &data,
            duration.as_secs_f64(),
            self.ports.untracked.iter().copied().collect(),
        );
        let text = latency::text(&report);
        writer.write("latency.txt", |out| out.write_all(text.as_bytes()))?;
        let json = serde_json::to_vec_pretty(&report).map_err(io::Error::other);
        writer.write("latency.json", |out| out.write_all(&json?))?;
        // The distribution of every tracked port together; with one port, that port's.
        let mut all = report::hist::Merged::default();
        for port in &data {
            all.add_merged(&port.socket_to_reply);
        }
        writer.write("latency.hgrm", |out| latency::hgrm(&all, out))?;
        let svg = latency::spectrum_svg(&data, &self.title("socket-to-reply latency", duration));
        writer.write("latency.svg", |out| out.write_all(svg.as_bytes()))?;
        writer.write("latency_timeseries.csv", |out| {
            self.latency_series.write(out)
        })?;
        writer.say(&format!(
            "latency (µs, per listening port):\n{}",
            text.trim_end()
        ));
        Ok((report, data))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_alloc(
        &self,
        config: &alloc::Config,
        allocator: alloc::Allocator,
        duration: Duration,
        ended_ns: u64,
        counters: &BTreeMap<String, u64>,
        symbolizer: &Symbolizer,
        writer: &mut Writer,
    ) -> Result<AllocSummary, AttachError> {
        let stacks = alloc::read(&self.ebpf)?;
        let table = StackTable::load(
            &self.ebpf,
            stacks.iter().map(|(k, _)| k.user_stack),
            std::iter::empty(),
            &self.maps,
            symbolizer,
        )?;
        let analysis = leaks::Analysis {
            snapshots: &self.snapshots,
            stacks: &stacks,
            table: &table,
            now_ns: ended_ns,
            min_age_secs: config.min_age.as_secs_f64(),
            interval_secs: self.interval().as_secs_f64(),
            sample_every: config.sample_every,
            memory: &self.memory,
        };
        let report = analysis.report();
        let text = leaks::render(&report, LEAKS_LISTED);
        writer.write("leaks.txt", |out| out.write_all(text.as_bytes()))?;
        let json = serde_json::to_vec_pretty(&report).map_err(io::Error::other);
        writer.write("leaks.json", |out| out.write_all(&json?))?;
        let csv = leaks::memory_csv(&self.memory);
        writer.write("memory_samples.csv", |out| out.write_all(csv.as_bytes()))?;
        let title = self.title("live allocations", duration);
        writer.flamegraph(
            "alloc",
            &analysis.weighted_stacks(&self.target.comm),
            &Labels {
                title: &title,
                subtitle: Some(if report.estimate {
                    "live bytes by allocating stack (estimated from a sample)"
                } else {
                    "live bytes by allocating stack"
                }),
                count_name: "bytes",
            },
        )?;
        let summary = AllocSummary {
            calls: counter(counters, stats::ALLOC_CALLS),
            tracked: counter(counters, stats::ALLOC_TRACKED),
            frees: counter(counters, stats::ALLOC_FREES),
            unknown_frees: counter(counters, stats::ALLOC_UNKNOWN_FREES),
            nested: counter(counters, stats::ALLOC_NESTED),
            leaks: report,
            allocator,
        };
        writer.say(&format!(
            "alloc: {} calls to {} ({}), {} tracked, {} freed ({} frees of blocks from before \
             the attach, {} calls from inside the allocator)\n{}",
            summary.calls,
            summary.allocator.name,
            summary.allocator.path.display(),
            summary.tracked,
            summary.frees,
            summary.unknown_frees,
            summary.nested,
            leaks::render(&summary.leaks, TERMINAL_LEAKS)
        ));
        Ok(summary)
    }
}

/// Suspects in `leaks.txt`; the terminal shows fewer.
const LEAKS_LISTED: usize = 20;
const TERMINAL_LEAKS: usize = 5;

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel's `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Locks in `locks.txt` and the summary; the terminal shows fewer.
const LOCKS_LISTED: usize = 20;
const TERMINAL_LOCKS: usize = 3;

fn counter(counters: &BTreeMap<String, u64>, index: u32) -> u64 {
    counters
        .get(stats::NAMES[index as usize])
        .copied()
        .unwrap_or(0)
}

fn is_event_counter(name: &str) -> bool {
    stats::EVENTS
        .iter()
        .any(|&i| stats::NAMES[i as usize] == name)
}

fn thread_weights(stacks: &[WeightedStack]) -> Vec<ThreadWeight> {
    crate::report::profile::thread_totals(stacks)
        .into_iter()
        .map(|(name, weight)| ThreadWeight { name, weight })
        .collect()
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

    fn draw(&mut self, elapsed: Duration, total: Option<Duration>, events: &str) {
        if !self.enabled {
            return;
        }
        let left = match total {
            Some(total) => format!("{:.0}s left", total.saturating_sub(elapsed).as_secs_f64()),
            None => "until Ctrl-C".to_string(),
        };
        let line = format!(
            "capturing: {:.0}s elapsed, {left}, {events}",
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
