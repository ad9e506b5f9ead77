//! `profiler agent`: runs until stopped, attached to every target it is told to follow (pids,
//! every process of a name, every process of a cgroup), and serves what the kernel aggregates
//! to the engines fleets already run: Prometheus scrapes `/metrics`, Parca and Pyroscope pull
//! pprof from `/debug/pprof/*` (see `http.rs`).
//!
//! Each target gets its own eBPF object (the kernel side filters on one tgid), loaded by the
//! same `session::load` a capture uses, with the same families (`options.rs`). Every
//! [`DRAIN_EVERY`] each family's `drain` moves the kernel's aggregates out of the maps, so the
//! maps, and the windows kept here ([`RETAIN`]), stay bounded however long the agent runs.

pub mod http;
pub mod metrics;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use self::metrics::{Bucketer, State, TargetMetrics};
use crate::{
    options::AttachOptions,
    preflight,
    probes::{self, Counters, Drain, Drained, LiveStack},
    report::{pprof, profile::WeightedStack},
    session::{self, AttachError, Loaded},
    stacks,
    symbolize::{BpfSymbols, Symbolizer},
};

/// How often every family is drained: the resolution of the pprof endpoints' windows.
pub const DRAIN_EVERY: Duration = Duration::from_secs(1);
/// How often `--comm` and `--cgroup` look for new processes: a restarted target is attached
/// within this plus the attach itself. Reading every /proc/PID/comm of a few hundred
/// processes takes about a millisecond.
const SCAN_EVERY: Duration = Duration::from_millis(250);
/// How long drained stacks are kept for the pprof endpoints: the longest `seconds=` served.
pub const RETAIN: Duration = Duration::from_secs(60);
/// How often the mappings of a target are re-read, for libraries loaded later.
const MAPS_REFRESH: Duration = Duration::from_secs(2);

/// What the agent follows.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub pids: Vec<u32>,
    /// Every process whose main thread has this name, restarted ones included.
    pub comms: Vec<String>,
    /// Every process in this cgroup (v2; `/sys/fs/cgroup/...` or the path under it) or below.
    pub cgroups: Vec<PathBuf>,
}

/// Everything `profiler agent` can be asked to do.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub targets: Targets,
    /// The families and their settings; `pid`, `duration` and `output` are unused.
    pub attach: AttachOptions,
    pub listen: SocketAddr,
    /// Where a pprof snapshot per family is written every `interval`, if anywhere.
    pub output: Option<PathBuf>,
    /// The snapshots' total size past which the oldest are removed.
    pub output_max_bytes: u64,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error("could not listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not attach to {}: the agent follows nothing else (see the warnings above)",
        pids.iter().map(|p| format!("pid {p}")).collect::<Vec<_>>().join(", ")
    )]
    NothingAttached { pids: Vec<u32> },
    #[error("could not create {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which profile an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileKind {
    Cpu,
    Offcpu,
    Locks,
}

impl ProfileKind {
    pub const ALL: [Self; 3] = [Self::Cpu, Self::Offcpu, Self::Locks];

    /// The family that feeds it, as named everywhere.
    pub fn family(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Offcpu => "offcpu",
            Self::Locks => "futex",
        }
    }

    /// The file name stem of its snapshots.
    pub fn stem(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Offcpu => "offcpu",
            Self::Locks => "locks",
        }
    }
}

/// One target's stack in one drain window.
#[derive(Debug, Clone)]
pub struct TargetStack {
    pub pid: u32,
    pub comm: String,
    pub stack: WeightedStack,
}

/// What one drain of every target produced, for the pprof endpoints and the snapshots.
#[derive(Debug, Default)]
pub struct Window {
    /// The drain before this one (or the agent's start): the window covers `from` to `at`.
    pub from: Option<Instant>,
    pub at: Option<Instant>,
    pub stacks: HashMap<ProfileKind, Vec<TargetStack>>,
}

/// Consecutive windows' stacks and the time they cover.
#[derive(Debug, Default)]
pub struct Span {
    pub stacks: Vec<TargetStack>,
    pub from: Option<Instant>,
    pub to: Option<Instant>,
}

impl Span {
    pub fn duration(&self) -> Duration {
        match (self.from, self.to) {
            (Some(from), Some(to)) => to.saturating_duration_since(from),
            _ => Duration::ZERO,
        }
    }
}

/// What the HTTP side reads: the metrics state and the recent windows.
pub struct Shared {
    pub state: Arc<Mutex<State>>,
    pub windows: Mutex<VecDeque<Window>>,
    /// Notified after every drain, so a profile request waits for the window that ends it.
    pub drained: Condvar,
    pub frequency: u64,
    pub host: String,
    /// Families the agent runs.
    pub families: BTreeSet<&'static str>,
    /// Per target, what is live now: replaced at every drain, dropped when the target exits.
    pub live: Mutex<BTreeMap<u32, TargetLive>>,
}

/// One target's live figures by stack, as of the last drain.
#[derive(Debug, Default)]
pub struct TargetLive {
    pub comm: String,
    /// `alloc`: live blocks.
    pub allocs: Option<Vec<LiveStack>>,
    /// `memory`: held pages.
    pub held: Option<Vec<LiveStack>>,
}

/// Which live profile an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    /// `/debug/pprof/allocs` (and `heap`): Go's heap profile's in-use values.
    Allocs,
    /// `/debug/pprof/memory`: pages held by the stack that first touched them.
    Held,
}

impl LiveKind {
    pub fn family(self) -> &'static str {
        match self {
            Self::Allocs => "alloc",
            Self::Held => "memory",
        }
    }
}

impl Shared {
    /// The stacks of `kind` from the windows that began at or after `since`, with the time
    /// those windows cover: a window that began earlier holds samples from before `since`, and
    /// taking it would count its time twice across back-to-back profiles.
    pub fn stacks_since(&self, kind: ProfileKind, since: Instant) -> Span {
        let mut span = Span::default();
        let Ok(windows) = self.windows.lock() else {
            return span;
        };
        for w in windows.iter() {
            let (Some(from), Some(at)) = (w.from, w.at) else {
                continue;
            };
            if from < since {
                continue;
            }
            span.from.get_or_insert(from);
            span.to = Some(at);
            span.stacks
                .extend(w.stacks.get(&kind).into_iter().flatten().cloned());
        }
        span
    }

    /// Blocks until a drain has happened after `instant` (or a few drains' time passed).
    pub fn wait_drain_after(&self, instant: Instant) {
        let deadline = Instant::now() + 3 * DRAIN_EVERY;
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        while windows
            .back()
            .and_then(|w| w.at)
            .is_none_or(|at| at <= instant)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.drained.wait_timeout(windows, left) {
                Ok((guard, _)) => windows = guard,
                Err(_) => return,
            }
        }
    }

    /// A pprof profile of `stacks`, each sample labelled with pid, comm and host.
    pub fn profile(
        &self,
        kind: ProfileKind,
        stacks: &[TargetStack],
        start: jiff::Timestamp,
        duration: Duration,
    ) -> pprof::Profile {
        let weighted: Vec<WeightedStack> = stacks.iter().map(|s| s.stack.clone()).collect();
        let labels: Vec<[(String, String); 3]> = stacks
            .iter()
            .map(|s| {
                [
                    ("pid".to_string(), s.pid.to_string()),
                    ("comm".to_string(), s.comm.clone()),
                    ("host".to_string(), self.host.clone()),
                ]
            })
            .collect();
        let cpu = pprof::cpu_kind(self.frequency);
        let kind = match kind {
            ProfileKind::Cpu => &cpu,
            ProfileKind::Offcpu => &pprof::OFFCPU,
            ProfileKind::Locks => &pprof::LOCKS,
        };
        pprof::build(
            &weighted,
            kind,
            |i| labels[i].as_slice(),
            start.as_nanosecond() as i64,
            duration.as_nanos() as i64,
        )
    }
}

impl Shared {
    /// The live profile of `kind` over every target, as of the last drain: a snapshot, as Go's
    /// `heap` is, each sample labelled with pid, comm and host.
    pub fn live_profile(&self, kind: LiveKind) -> pprof::Profile {
        let mut stacks = Vec::new();
        if let Ok(live) = self.live.lock() {
            for (&pid, target) in live.iter() {
                let of = match kind {
                    LiveKind::Allocs => &target.allocs,
                    LiveKind::Held => &target.held,
                };
                for s in of.iter().flatten() {
                    stacks.push((pid, target.comm.clone(), s.clone()));
                }
            }
        }
        let labels: Vec<[(String, String); 3]> = stacks
            .iter()
            .map(|(pid, comm, _)| {
                [
                    ("pid".to_string(), pid.to_string()),
                    ("comm".to_string(), comm.clone()),
                    ("host".to_string(), self.host.clone()),
                ]
            })
            .collect();
        let live: Vec<LiveStack> = stacks.into_iter().map(|(_, _, s)| s).collect();
        let kind = match kind {
            LiveKind::Allocs => &pprof::INUSE,
            LiveKind::Held => &pprof::HELD,
        };
        pprof::live(
            &live,
            kind,
            |i| labels[i].as_slice(),
            jiff::Timestamp::now().as_nanosecond() as i64,
        )
    }
}

/// One attached target.
struct Attached {
    pid: u32,
    comm: String,
    loaded: Loaded,
    pidfd: OwnedFd,
    symbolizer: Symbolizer,
    last_maps: Instant,
}

impl Attached {
    fn start(pid: u32, opts: &AttachOptions) -> Result<Self, AttachError> {
        let target = preflight::check_target(pid)?;
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid as i32)
                .ok_or(preflight::PreflightError::PidNotFound { pid })?,
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|_| preflight::PreflightError::PidNotFound { pid })?;
        let mut per_target = opts.clone();
        per_target.pid = pid;
        let loaded = session::load(pid, per_target.families(), opts.unwind, opts.verbose)?;
        // Our programs' names, for samples inside them: taken while they are loaded.
        let symbolizer = Symbolizer::new().with_bpf(BpfSymbols::snapshot());
        Ok(Self {
            pid,
            comm: target.comm,
            loaded,
            pidfd,
            symbolizer,
            last_maps: Instant::now(),
        })
    }

    fn exited(&self) -> bool {
        preflight::exited(&self.pidfd, Duration::ZERO)
    }

    /// Drains every family; the stacks they named are then forgotten by the kernel maps.
    fn drain(&mut self) -> Drained {
        let loaded = &mut self.loaded;
        if self.last_maps.elapsed() >= MAPS_REFRESH {
            self.last_maps = Instant::now();
            if let Ok(true) = loaded.maps.refresh()
                && let Err(err) = loaded.unwinder.sync(&mut loaded.ebpf, &loaded.maps)
            {
                log::warn!("pid {}: updating unwind tables: {err:#}", self.pid);
            }
        }
        if let Some(logger) = &mut loaded.logger {
            logger.flush();
        }
        let mut drained = Drained::default();
        for family in &mut loaded.families {
            let mut drain = Drain {
                ebpf: &mut loaded.ebpf,
                pid: self.pid,
                maps: &loaded.maps,
                symbolizer: &self.symbolizer,
                into: &mut drained,
            };
            if let Err(err) = family.drain(&mut drain) {
                log::warn!(
                    "pid {}: draining {}: {}",
                    self.pid,
                    family.name(),
                    chain(&err)
                );
            }
        }
        if let Err(err) = stacks::forget(
            &mut loaded.ebpf,
            &drained.user_stacks,
            &drained.kernel_stacks,
        ) {
            log::warn!(
                "pid {}: forgetting drained stacks: {}",
                self.pid,
                chain(&err)
            );
        }
        drained
    }

    fn detach(mut self) {
        for family in &mut self.loaded.families {
            if let Err(err) = family.arm(&mut self.loaded.ebpf, false) {
                log::debug!("pid {}: stopping {}: {err}", self.pid, family.name());
            }
        }
        probes::unload_all(&mut self.loaded.ebpf);
    }
}

/// An error and its sources, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// Processes whose main thread is named `comm`.
fn pids_named(comm: &str) -> Vec<u32> {
    all_pids()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect()
}

/// Processes in the cgroup `path` or below it.
fn pids_in_cgroup(path: &Path) -> Vec<u32> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let wanted = Cgroup::resolve(path, &mounts);
    all_pids()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|text| wanted.contains(&text))
        })
        .collect()
}

/// A cgroup as `/proc/PID/cgroup` names it: the hierarchy and the path under its mount.
#[derive(Debug, PartialEq, Eq)]
struct Cgroup {
    /// The mount options of a v1 hierarchy (its controllers among them); empty for v2.
    v1_options: Vec<String>,
    path: String,
}

impl Cgroup {
    /// `path` under the cgroup mount it lies in (v2, or a v1 controller's hierarchy, from
    /// `mounts`, as /proc/mounts has them); a path under none is taken as v2 and relative.
    fn resolve(path: &Path, mounts: &str) -> Self {
        let text = path.to_string_lossy();
        let mount = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (point, kind, options) = (*f.get(1)?, *f.get(2)?, *f.get(3)?);
                let under = text == point || text.starts_with(&format!("{point}/"));
                (under && (kind == "cgroup" || kind == "cgroup2")).then_some((point, kind, options))
            })
            .max_by_key(|(point, _, _)| point.len());
        let (rel, v1_options) = match mount {
            Some((point, kind, options)) => (
                &text[point.len()..],
                if kind == "cgroup" {
                    options.split(',').map(str::to_string).collect()
                } else {
                    Vec::new()
                },
            ),
            None => (
                text.strip_prefix("/sys/fs/cgroup").unwrap_or(&text),
                Vec::new(),
            ),
        };
        Self {
            v1_options,
            path: format!("/{}", rel.trim_matches('/')),
        }
    }

    /// Whether a `/proc/PID/cgroup` text puts the process in this cgroup or below it.
    fn contains(&self, text: &str) -> bool {
        text.lines().any(|line| {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            let hierarchy = if self.v1_options.is_empty() {
                id == "0" && controllers.is_empty()
            } else {
                controllers
                    .split(',')
                    .any(|c| self.v1_options.iter().any(|o| o == c))
            };
            hierarchy
                && (path == self.path
                    || self.path == "/"
                    || path
                        .strip_prefix(&self.path)
                        .is_some_and(|rest| rest.starts_with('/')))
        })
    }
}

fn all_pids() -> impl Iterator<Item = u32> {
    let own = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |&pid| pid != own)
}

/// Writes a snapshot per family every interval under `dir`, and removes the oldest once all
/// of them together pass `max_bytes`.
///
/// Each drain's stacks are merged here as they come (same target, thread and frames: one
/// entry), so what is held until the next snapshot is bounded by the distinct stacks, not by
/// `--interval`: keeping the drain windows for a whole interval grew with it (an hour's
/// interval held 3600 windows of every stack seen in each).
struct Rotation {
    dir: PathBuf,
    max_bytes: u64,
    last: Instant,
    /// Since the last snapshot, per profile: weight by (pid, comm, thread, frames).
    pending: HashMap<ProfileKind, HashMap<StackId, u64>>,
    /// When the pending stacks begin.
    from: Instant,
    started: jiff::Timestamp,
}

/// A stack's identity across drains: its target, thread and frames.
type StackId = (u32, String, String, Vec<String>);

/// Snapshot files are named `<family>-<UTC time>.pb.gz`, which sort oldest first.
const SNAPSHOT_SUFFIX: &str = ".pb.gz";

impl Rotation {
    fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            last: Instant::now(),
            pending: HashMap::new(),
            from: Instant::now(),
            started: jiff::Timestamp::now(),
        }
    }

    /// Merges one drain's stacks into the next snapshot.
    fn add(&mut self, window: &Window) {
        for (kind, stacks) in &window.stacks {
            let pending = self.pending.entry(*kind).or_default();
            for s in stacks {
                let id = (
                    s.pid,
                    s.comm.clone(),
                    s.stack.thread.clone(),
                    s.stack.frames.clone(),
                );
                *pending.entry(id).or_default() += s.stack.weight;
            }
        }
    }

    fn write(&mut self, shared: &Shared) {
        let now = Instant::now();
        let duration = now.saturating_duration_since(self.from);
        self.from = now;
        self.last = now;
        let mut pending = std::mem::take(&mut self.pending);
        let wall = jiff::Timestamp::now();
        let stamp = wall.strftime("%Y%m%dT%H%M%SZ").to_string();
        for kind in ProfileKind::ALL {
            if !shared.families.contains(kind.family()) {
                continue;
            }
            let stacks: Vec<TargetStack> = pending
                .remove(&kind)
                .unwrap_or_default()
                .into_iter()
                .map(|((pid, comm, thread, frames), weight)| TargetStack {
                    pid,
                    comm,
                    stack: WeightedStack {
                        thread,
                        tid: 0,
                        frames,
                        weight,
                    },
                })
                .collect();
            let profile =
                shared.profile(kind, &stacks, self.started.max(wall - duration), duration);
            let path = self
                .dir
                .join(format!("{}-{stamp}{SNAPSHOT_SUFFIX}", kind.stem()));
            let written = std::fs::File::create(&path)
                .and_then(|file| pprof::write(&profile, std::io::BufWriter::new(file)));
            if let Err(err) = written {
                log::warn!("writing {}: {err}", path.display());
            }
        }
        if let Err(err) = prune(&self.dir, self.max_bytes) {
            log::warn!("pruning {}: {err}", self.dir.display());
        }
    }
}

/// Removes the oldest snapshots until those left fit in `max_bytes`.
pub fn prune(dir: &Path, max_bytes: u64) -> std::io::Result<()> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = e.metadata().ok()?.len();
            name.ends_with(SNAPSHOT_SUFFIX).then_some((name, size))
        })
        .collect();
    // By time, then family: the stamp follows the family's name.
    files.sort_by(|a, b| {
        let stamp = |n: &str| n.rsplit_once('-').map(|(_, s)| s.to_string());
        stamp(&a.0).cmp(&stamp(&b.0)).then(a.0.cmp(&b.0))
    });
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    for (name, size) in files {
        if total <= max_bytes {
            break;
        }
        std::fs::remove_file(dir.join(&name))?;
        total -= size;
    }
    Ok(())
}

/// The running agent: its HTTP server and its collection loop.
pub struct Agent {
    opts: AgentOptions,
    shared: Arc<Shared>,
    server: http::Server,
    attached: BTreeMap<u32, Attached>,
    /// Pids that failed to attach, not retried (a `--comm` match that is not attachable).
    refused: BTreeSet<u32>,
    bucketer: Bucketer,
    rotation: Option<Rotation>,
    /// Where the next drain's window begins.
    window_start: Instant,
}

impl Agent {
    /// Checks privileges, binds the endpoint and prepares the output directory; attaches
    /// nothing yet.
    pub fn start(opts: AgentOptions) -> Result<Self, AgentError> {
        preflight::check_privileges()?;
        let families: BTreeSet<&'static str> =
            opts.attach.families().iter().map(|f| f.name()).collect();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::new(Shared {
            state: state.clone(),
            windows: Mutex::new(VecDeque::new()),
            drained: Condvar::new(),
            frequency: opts.attach.cpu.as_ref().map_or(99, |c| c.frequency),
            host,
            families,
            live: Mutex::new(BTreeMap::new()),
        });
        let server = http::Server::start(opts.listen, shared.clone()).map_err(|source| {
            AgentError::Listen {
                addr: opts.listen,
                source,
            }
        })?;
        let rotation = match &opts.output {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| AgentError::Output {
                    path: dir.clone(),
                    source,
                })?;
                Some(Rotation::new(dir.clone(), opts.output_max_bytes))
            }
            None => None,
        };
        Ok(Self {
            opts,
            shared,
            server,
            attached: BTreeMap::new(),
            refused: BTreeSet::new(),
            bucketer: Bucketer::default(),
            rotation,
            window_start: Instant::now(),
        })
    }

    /// The address the endpoint is bound to (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The pids to follow now.
    fn wanted(&self) -> BTreeSet<u32> {
        let t = &self.opts.targets;
        let mut pids: BTreeSet<u32> = t.pids.iter().copied().collect();
        for comm in &t.comms {
            pids.extend(pids_named(comm));
        }
        for cgroup in &t.cgroups {
            pids.extend(pids_in_cgroup(cgroup));
        }
        pids
    }

    /// Attaches to every wanted pid not attached yet; true if any was.
    fn attach_new(&mut self) -> bool {
        let mut any = false;
        let wanted = self.wanted();
        self.refused.retain(|pid| wanted.contains(pid));
        for pid in wanted {
            if self.attached.contains_key(&pid) || self.refused.contains(&pid) {
                continue;
            }
            let began = Instant::now();
            match Attached::start(pid, &self.opts.attach) {
                Ok(attached) => {
                    log::info!(
                        "attached to pid {pid} ({}) in {:?}",
                        attached.comm,
                        began.elapsed()
                    );
                    if let Ok(mut state) = self.shared.state.lock() {
                        state.attaches += 1;
                        state
                            .targets
                            .insert(pid, TargetMetrics::new(pid, &attached.comm));
                    }
                    self.attached.insert(pid, attached);
                    any = true;
                }
                Err(err) => {
                    // A pid the user named is always theirs to hear about; a matched process
                    // that went away between the scan and the attach is not.
                    if self.opts.targets.pids.contains(&pid)
                        || std::fs::metadata(format!("/proc/{pid}")).is_ok()
                    {
                        log::warn!("cannot attach to pid {pid}: {err}");
                    }
                    if let Ok(mut state) = self.shared.state.lock() {
                        state.attach_failures += 1;
                    }
                    self.refused.insert(pid);
                }
            }
        }
        any
    }

    /// Drains every target into one window and the metrics; detaches targets that exited.
    fn drain_all(&mut self) {
        let mut window = Window::default();
        let mut gone = Vec::new();
        let mut updates = Vec::new();
        let mut lives = Vec::new();
        for (&pid, attached) in &mut self.attached {
            let exited = attached.exited();
            let drained = attached.drain();
            let counters = Counters::read(&attached.loaded.ebpf);
            for (kind, stacks) in [
                (ProfileKind::Cpu, &drained.cpu),
                (ProfileKind::Offcpu, &drained.offcpu),
                (ProfileKind::Locks, &drained.locks),
            ] {
                window
                    .stacks
                    .entry(kind)
                    .or_default()
                    .extend(stacks.iter().map(|s| TargetStack {
                        pid,
                        comm: attached.comm.clone(),
                        stack: s.clone(),
                    }));
            }
            updates.push((pid, drained, counters));
            if exited {
                gone.push(pid);
            }
        }
        if let Ok(mut state) = self.shared.state.lock() {
            for (pid, drained, counters) in updates {
                let Some(t) = state.targets.get_mut(&pid) else {
                    continue;
                };
                // The probes' own samples are ours, not the target's.
                t.cpu_samples += drained
                    .cpu
                    .iter()
                    .filter(|s| s.thread != crate::report::cpu::OVERHEAD)
                    .map(|s| s.weight)
                    .sum::<u64>();
                t.offcpu_seconds +=
                    drained.offcpu.iter().map(|s| s.weight).sum::<u64>() as f64 / 1e9;
                t.add_lock_waits(&drained.lock_waits);
                for port in &drained.ports {
                    t.ports.insert(port.port, self.bucketer.port(port));
                }
                t.dropped = counters.drops();
                t.rss_bytes = preflight::rss_kb(pid).map(|kb| kb * 1024);
                if let Some(live) = &drained.live {
                    t.live_bytes = Some(live.iter().map(|s| s.bytes).sum());
                    t.live_allocations = Some(live.iter().map(|s| s.count).sum());
                    *t.allocations.get_or_insert(0) += drained.allocations;
                    *t.allocated_bytes.get_or_insert(0) += drained.allocated_bytes;
                }
                if let Some(held) = &drained.held {
                    t.held_bytes = Some(held.iter().map(|s| s.bytes).sum());
                    *t.grown_bytes.get_or_insert(0) += drained.grown_bytes;
                }
                for port in &drained.why {
                    t.why.entry(port.port).or_default().add(port);
                }
                if drained.live.is_some() || drained.held.is_some() {
                    lives.push((pid, t.comm.clone(), drained.live, drained.held));
                }
            }
            for pid in &gone {
                state.targets.remove(pid);
            }
        }
        if let Ok(mut live) = self.shared.live.lock() {
            for (pid, comm, allocs, held) in lives {
                live.insert(pid, TargetLive { comm, allocs, held });
            }
            for pid in &gone {
                live.remove(pid);
            }
        }
        for pid in gone {
            if let Some(attached) = self.attached.remove(&pid) {
                log::info!("pid {pid} ({}) exited; detached", attached.comm);
                attached.detach();
            }
        }
        let now = Instant::now();
        window.from = Some(self.window_start);
        window.at = Some(now);
        self.window_start = now;
        if let Some(rotation) = &mut self.rotation {
            rotation.add(&window);
        }
        if let Ok(mut windows) = self.shared.windows.lock() {
            windows.push_back(window);
            // The endpoints' longest span, whatever --interval is (the snapshots merge their
            // own, above).
            let retain = RETAIN + DRAIN_EVERY;
            while windows
                .front()
                .and_then(|w| w.at)
                .is_some_and(|at| at.elapsed() > retain)
            {
                windows.pop_front();
            }
        }
        self.shared.drained.notify_all();
    }

    /// Runs until `stop` is set, then detaches from everything.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), AgentError> {
        let mut last_scan = Instant::now() - SCAN_EVERY;
        let mut last_drain = Instant::now();
        let mut first_scan = true;
        while !stop.load(Ordering::Relaxed) {
            // A new target is drained at once, so its series (ports) show without waiting for
            // the next period.
            let mut drain_now = false;
            if last_scan.elapsed() >= SCAN_EVERY {
                last_scan = Instant::now();
                drain_now = self.attach_new();
                // Only pids were named and none could be attached: running on would serve
                // empty metrics for ever.
                let t = &self.opts.targets;
                if first_scan
                    && self.attached.is_empty()
                    && t.comms.is_empty()
                    && t.cgroups.is_empty()
                {
                    self.server.stop();
                    return Err(AgentError::NothingAttached {
                        pids: t.pids.clone(),
                    });
                }
                first_scan = false;
            }
            if drain_now || last_drain.elapsed() >= DRAIN_EVERY {
                last_drain = Instant::now();
                self.drain_all();
            }
            if let Some(rotation) = &mut self.rotation
                && rotation.last.elapsed() >= self.opts.interval
            {
                rotation.write(&self.shared);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for (_, attached) in std::mem::take(&mut self.attached) {
            attached.detach();
        }
        self.server.stop();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_membership_is_by_hierarchy_and_path_prefix() {
        // A hybrid machine: v1 controllers under /sys/fs/cgroup, v2 at .../unified.
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                      cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        let proc = "4:memory:/kubepods/pod1/abc\n1:cpu,cpuacct:/\n0::/svc/pool\n";
        let v2 = Cgroup::resolve(Path::new("/sys/fs/cgroup/unified/svc/"), mounts);
        assert_eq!(v2.path, "/svc");
        assert!(v2.contains(proc));
        assert!(!Cgroup::resolve(Path::new("/sys/fs/cgroup/unified/sv"), mounts).contains(proc));
        let v1 = Cgroup::resolve(Path::new("/sys/fs/cgroup/memory/kubepods/pod1"), mounts);
        assert!(v1.contains(proc));
        // The same path in another hierarchy is another cgroup.
        assert!(
            !Cgroup::resolve(Path::new("/sys/fs/cgroup/cpu,cpuacct/kubepods"), mounts)
                .contains(proc)
        );
        // Relative, or on a v2-only machine: the unified hierarchy.
        assert!(Cgroup::resolve(Path::new("svc/pool"), "").contains(proc));
        assert!(Cgroup::resolve(Path::new("/sys/fs/cgroup/svc"), "").contains(proc));
        assert!(!Cgroup::resolve(Path::new("/kubepods"), "").contains(proc));
    }

    #[test]
    fn snapshots_merge_drains_by_stack() {
        let stack = |pid: u32, frames: &[&str], weight: u64| TargetStack {
            pid,
            comm: "pool".into(),
            stack: WeightedStack {
                thread: "worker".into(),
                tid: 7,
                frames: frames.iter().map(|f| f.to_string()).collect(),
                weight,
            },
        };
        let mut rotation = Rotation::new(PathBuf::from("/nonexistent"), 0);
        for _ in 0..100 {
            let mut window = Window::default();
            window.stacks.insert(
                ProfileKind::Cpu,
                vec![
                    stack(1, &["main", "hot"], 3),
                    stack(1, &["main", "cold"], 1),
                    stack(2, &["main", "hot"], 2),
                ],
            );
            rotation.add(&window);
        }
        // A hundred drains hold what one does: one entry per target and stack.
        let cpu = &rotation.pending[&ProfileKind::Cpu];
        assert_eq!(cpu.len(), 3);
        let hot = (
            1,
            "pool".into(),
            "worker".into(),
            vec!["main".into(), "hot".into()],
        );
        assert_eq!(cpu[&hot], 300);
    }

    #[test]
    fn prune_removes_the_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in [
            ("cpu-20260101T000000Z.pb.gz", 10),
            ("locks-20260101T000001Z.pb.gz", 10),
            ("cpu-20260101T000002Z.pb.gz", 10),
            ("other.txt", 100),
        ] {
            std::fs::write(dir.path().join(name), vec![0u8; size]).unwrap();
        }
        prune(dir.path(), 25).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "cpu-20260101T000002Z.pb.gz",
                "locks-20260101T000001Z.pb.gz",
                "other.txt"
            ]
        );
    }
}
