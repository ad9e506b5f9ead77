//! The probe families: `cpu`, `offcpu`, `futex`, `sock`, `alloc`, `memory`, `why`. Each is one module here
//! implementing [`Family`] (with its kernel half in `profiler-ebpf/src/<family>.rs`, its shared
//! types in `profiler-common/src/<family>.rs` and its report values in `report/<family>.rs`).
//! The session drives a list of families through one lifecycle:
//!
//! `configure` (before load) → `attach` → `arm(true)` (all together) → `begin` → `tick`… →
//! `arm(false)` (all together) → programs unloaded → `end` → `finish`.

pub mod alloc;
pub mod cpu;
pub mod futex;
pub mod memory;
pub mod offcpu;
pub mod sock;
pub mod why;

use std::{collections::BTreeMap, time::Duration};

use aya::{Ebpf, maps::MapError, programs::ProgramError};
use profiler_common::stats;

use crate::{
    ebpf::LoadConfig,
    preflight::Target,
    procmaps::ProcessMaps,
    report::{Outcome, summary::Summary},
    rundir::{RunWriter, WriteError},
    symbolize::Symbolizer,
};

/// One probe family's user half.
pub trait Family {
    /// Its name everywhere: module, programs, CLI flag, test file, summary section.
    fn name(&self) -> &'static str;

    /// Whether it walks user stacks, so the unwinding tables must be built and loaded.
    fn walks_stacks(&self) -> bool {
        true
    }

    /// The programs [`attach`] loads, as its configuration stands after [`configure`]. They
    /// are verified side by side before any family attaches (`ebpf::preload`): verification is
    /// most of an attach, and the agent's restarted target waits for it.
    ///
    /// [`attach`]: Family::attach
    /// [`configure`]: Family::configure
    fn programs(&self) -> Vec<&'static str>;

    /// Before load: reads what its kernel half needs (tracefs formats, BTF, the allocator)
    /// and sets its globals and map sizes in `load`.
    fn configure(&mut self, setup: &Setup<'_>, load: &mut LoadConfig) -> Result<(), ProbeError>;

    /// Attaches its programs. Programs behind an `ARMED` map count nothing until [`arm`].
    ///
    /// [`arm`]: Family::arm
    fn attach(&mut self, ebpf: &mut Ebpf, setup: &Setup<'_>) -> Result<(), ProbeError>;

    /// Starts (`true`, once every family is attached) or stops (`false`, before anything is
    /// detached) counting, so every family covers the same instants.
    fn arm(&mut self, _ebpf: &mut Ebpf, _on: bool) -> Result<(), ProbeError> {
        Ok(())
    }

    /// Once armed, before the first tick: a first snapshot.
    fn begin(&mut self, _tick: &mut Tick<'_>) {}

    /// About every 100 ms while capturing; `tick.interval_due` every `--interval`.
    fn tick(&mut self, _tick: &mut Tick<'_>) {}

    /// After the programs are gone: the last snapshot (`tick.target_alive` says whether the
    /// target can still be read).
    fn end(&mut self, _tick: &mut Tick<'_>) {}

    /// A few words for the progress line, e.g. "412 samples".
    fn progress(&self, counters: &Counters) -> String;

    /// Reads its maps, names the stacks, writes its files, its terminal text and its section
    /// of the summary.
    fn finish(&mut self, finish: &mut Finish<'_>) -> Result<(), ProbeError>;

    /// For the always-on agent: moves what the kernel aggregated since the last drain into
    /// `drain.into` and removes it from the maps, so they stay bounded however long the agent
    /// runs. Fixed-size aggregates (per-port arrays) are read whole, not reset: they cannot
    /// grow, and cumulative counts are what Prometheus wants. False: the family has nothing
    /// the agent can serve.
    fn drain(&mut self, _drain: &mut Drain<'_>) -> Result<bool, ProbeError> {
        Ok(false)
    }
}

/// A family's view of one drain (the agent's periodic read-and-reset).
pub struct Drain<'a> {
    pub ebpf: &'a mut Ebpf,
    pub pid: u32,
    pub maps: &'a ProcessMaps,
    pub symbolizer: &'a Symbolizer,
    pub into: &'a mut Drained,
}

/// What one drain of every family produced.
#[derive(Default)]
pub struct Drained {
    /// `cpu`: on-CPU samples by stack since the last drain.
    pub cpu: Vec<crate::report::profile::WeightedStack>,
    /// `offcpu`: nanoseconds off the CPU by stack (rooted at `[idle]` or `[blocked]`).
    pub offcpu: Vec<crate::report::profile::WeightedStack>,
    /// `futex`: nanoseconds waited by waiter stack, each rooted at its lock's name.
    pub locks: Vec<crate::report::profile::WeightedStack>,
    /// `futex`: nanoseconds waited per lock name since the last drain.
    pub lock_waits: Vec<(String, u64)>,
    /// `sock`: per listening port, everything since attach (cumulative).
    pub ports: Vec<crate::report::sock::PortData>,
    /// `alloc`: live blocks by stack as they stand now (a state, not a delta).
    pub live: Option<Vec<LiveStack>>,
    /// `alloc`: blocks and bytes allocated since the last drain.
    pub allocations: u64,
    pub allocated_bytes: u64,
    /// `memory`: pages still held by the stack that first touched them, as they stand now
    /// (`bytes`, and `count` in pages).
    pub held: Option<Vec<LiveStack>>,
    /// `memory`: bytes the target grew by (first touched) since the last drain.
    pub grown_bytes: u64,
    /// `why`: per listening port, requests' time by cause since the last drain.
    pub why: Vec<WhyPort>,
    /// User stacks (by hash) and kernel stacks (by id) the drained entries named: forgotten
    /// once every family has drained, so the stack maps stay bounded too.
    pub user_stacks: Vec<u64>,
    pub kernel_stacks: Vec<i32>,
}

pub use crate::report::profile::LiveStack;

/// One port's requests in one drain, by cause (`profiler_common::why::category`).
#[derive(Debug, Clone, Default)]
pub struct WhyPort {
    pub port: u16,
    pub requests: u64,
    pub ns: [u64; profiler_common::why::category::COUNT],
    /// The window's tail requests (`--tail`, per port) and their time by cause.
    pub tail_requests: u64,
    pub tail_ns: [u64; profiler_common::why::category::COUNT],
}

/// For the agent: a live quantity by stack, kept as the sum of the deltas each drain takes
/// from a kernel map (`take_all`), which the kernel side recreates with negative figures when
/// a release follows a drain. Stacks with nothing live left are dropped with their names, so
/// this is bounded by the live stacks, not by how long the agent runs.
pub(crate) struct LiveTable<K> {
    /// By key: its user stack's hash, bytes, count.
    sums: std::collections::HashMap<K, (u64, i64, i64)>,
    /// Named frames by user stack hash, kept while live: the kernel's stack map forgets them
    /// at each drain.
    names: std::collections::HashMap<u64, Vec<String>>,
}

impl<K> Default for LiveTable<K> {
    fn default() -> Self {
        Self {
            sums: std::collections::HashMap::new(),
            names: std::collections::HashMap::new(),
        }
    }
}

impl<K: Eq + std::hash::Hash> LiveTable<K> {
    /// Adds one drain's deltas `(key, user stack hash, bytes, count)` and returns the live
    /// stacks now.
    pub fn add(
        &mut self,
        d: &mut Drain<'_>,
        deltas: impl IntoIterator<Item = (K, u64, i64, i64)>,
    ) -> Result<Vec<LiveStack>, ProbeError> {
        for (key, hash, bytes, count) in deltas {
            let sum = self.sums.entry(key).or_insert((hash, 0, 0));
            sum.1 += bytes;
            sum.2 += count;
            d.into.user_stacks.push(hash);
        }
        // A count at or below zero has nothing live (below: a release whose block was
        // counted before the attach, or an add lost to the drain's race).
        self.sums.retain(|_, (_, _, count)| *count > 0);
        let live: std::collections::HashSet<u64> = self.sums.values().map(|v| v.0).collect();
        self.names.retain(|hash, _| live.contains(hash));
        let unnamed: Vec<u64> = live
            .iter()
            .copied()
            .filter(|hash| !self.names.contains_key(hash))
            .collect();
        if !unnamed.is_empty() {
            let table = crate::stacks::StackTable::load(
                d.ebpf,
                unnamed.iter().copied(),
                std::iter::empty(),
                d.maps,
                d.symbolizer,
            )?;
            for hash in unnamed {
                self.names.insert(hash, table.user_frames(hash));
            }
        }
        Ok(self
            .sums
            .values()
            .map(|&(hash, bytes, count)| LiveStack {
                frames: self.names.get(&hash).cloned().unwrap_or_default(),
                bytes,
                count,
            })
            .collect())
    }
}

/// What a family may read before and while attaching.
pub struct Setup<'a> {
    pub pid: u32,
    pub maps: &'a ProcessMaps,
}

/// Periodic work's view of the capture.
pub struct Tick<'a> {
    pub ebpf: &'a mut Ebpf,
    pub pid: u32,
    /// Since the capture started.
    pub elapsed: Duration,
    /// An `--interval` boundary passed: time for the periodic snapshots.
    pub interval_due: bool,
    /// False once the target has exited: nothing of it can be read.
    pub target_alive: bool,
    /// The interval between snapshots.
    pub interval: Duration,
    /// Things the user should know, in words.
    pub notes: &'a mut Vec<String>,
}

/// What a family's `finish` works with.
pub struct Finish<'a> {
    pub ebpf: &'a Ebpf,
    pub maps: &'a ProcessMaps,
    pub symbolizer: &'a Symbolizer,
    pub counters: &'a Counters,
    pub target: &'a Target,
    pub duration: Duration,
    /// When the capture started, for pprof.
    pub started_at: jiff::Timestamp,
    /// CLOCK_MONOTONIC at the end of the capture, the clock of the kernel's timestamps.
    pub ended_ns: u64,
    pub interval: Duration,
    pub writer: &'a mut RunWriter,
    /// The summary's sections and the values tests read.
    pub outcome: &'a mut Outcome,
    pub notes: &'a mut Vec<String>,
}

impl Finish<'_> {
    /// `what: comm (pid N), 12.3s`, the title of a flamegraph.
    pub fn title(&self, what: &str) -> String {
        format!(
            "{what}: {} (pid {}), {:.1}s",
            self.target.comm,
            self.target.pid,
            self.duration.as_secs_f64()
        )
    }

    pub fn summary(&mut self) -> &mut Summary {
        &mut self.outcome.summary
    }
}

/// Every kernel-side counter (`STATS`), summed over CPUs.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    values: Vec<u64>,
}

impl Counters {
    pub fn read(ebpf: &Ebpf) -> Self {
        let Ok(array) = map::<aya::maps::PerCpuArray<_, u64>>(ebpf, "stats", stats::MAP) else {
            return Self::default();
        };
        let values = (0..stats::COUNT)
            .map(|index| {
                array
                    .get(&index, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0)
            })
            .collect();
        Self { values }
    }

    /// One counter, by its `stats::` index.
    pub fn get(&self, index: u32) -> u64 {
        self.values.get(index as usize).copied().unwrap_or(0)
    }

    /// Counters of dropped or incomplete data (not events), by name.
    pub fn drops(&self) -> BTreeMap<String, u64> {
        (0..stats::COUNT)
            .filter(|i| !stats::EVENTS.contains(i))
            .map(|i| (stats::NAMES[i as usize].to_string(), self.get(i)))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{probe}: program {program} is not in the eBPF object")]
    MissingProgram {
        probe: &'static str,
        program: &'static str,
    },
    #[error("{probe}: could not load {program}")]
    Load {
        probe: &'static str,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("{probe}: could not attach {program} to {target}")]
    Attach {
        probe: &'static str,
        program: &'static str,
        target: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("{probe}: could not detach {program}")]
    Detach {
        probe: &'static str,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("{probe}: map {map} is missing or of the wrong type")]
    Map {
        probe: &'static str,
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{probe}: {what}")]
    Other {
        probe: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ProbeError {
    /// The verifier's log, when the kernel rejected a program: shown with `-v`.
    pub fn verifier_log(&self) -> Option<String> {
        match self {
            Self::Load { source, .. } => match source.as_ref() {
                ProgramError::LoadError { verifier_log, .. } => Some(verifier_log.to_string()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A tracefs failure, labelled with the family that needed the format.
pub(crate) fn tracefs_error(probe: &'static str, err: &crate::tracefs::FormatError) -> ProbeError {
    ProbeError::Other {
        probe,
        what: err.to_string(),
        source: std::io::Error::other(err.to_string()),
    }
}

/// Looks up a program and converts it to its concrete type.
pub(crate) fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    probe: &'static str,
    program: &'static str,
) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram { probe, program })?;
    prog.try_into().map_err(|source| ProbeError::Load {
        probe,
        program,
        source: Box::new(source),
    })
}

/// Loads (verifies) `prog` unless [`crate::ebpf::preload`] already did.
pub(crate) fn load_once<P: crate::ebpf::Load>(
    prog: &mut P,
    probe: &'static str,
    program: &'static str,
) -> Result<(), ProbeError> {
    prog.load_once().map_err(|source| ProbeError::Load {
        probe,
        program,
        source: Box::new(source),
    })
}

/// Loads `program` and attaches it to the tracepoint `category:event`.
pub(crate) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    probe: &'static str,
    program: &'static str,
    category: &str,
    event: &str,
) -> Result<(), ProbeError> {
    let prog: &mut aya::programs::TracePoint = program_mut(ebpf, probe, program)?;
    let began = std::time::Instant::now();
    load_once(prog, probe, program)?;
    let loaded = began.elapsed();
    let attached = prog.attach(category, event);
    log::debug!(
        "{program}: loaded (verified) in {:.0} ms, attached in {:.0} ms",
        loaded.as_secs_f64() * 1e3,
        (began.elapsed() - loaded).as_secs_f64() * 1e3
    );
    attached.map_err(|source| ProbeError::Attach {
        probe,
        program,
        target: format!("{category}:{event}"),
        source: Box::new(source),
    })?;
    Ok(())
}

/// Looks up a map by name and converts it to a typed view.
pub(crate) fn map<'a, T>(
    ebpf: &'a Ebpf,
    probe: &'static str,
    map: &'static str,
) -> Result<T, ProbeError>
where
    T: TryFrom<&'a aya::maps::Map, Error = MapError>,
{
    typed(ebpf.map(map), probe, map)
}

/// Looks up a map by name and converts it to a typed view that can write.
pub(crate) fn map_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    probe: &'static str,
    map: &'static str,
) -> Result<T, ProbeError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    typed(ebpf.map_mut(map), probe, map)
}

/// The typed view of a map looked up by name (`raw`), or why there is none.
fn typed<M, T>(raw: Option<M>, probe: &'static str, map: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<M, Error = MapError>,
{
    let raw = raw.ok_or_else(|| ProbeError::Map {
        probe,
        map,
        source: Box::new(MapError::InvalidName { name: map.into() }),
    })?;
    T::try_from(raw).map_err(|source| ProbeError::Map {
        probe,
        map,
        source: Box::new(source),
    })
}

/// A delete that found nothing to delete (ENOENT): the entry went meanwhile, or was never
/// stored (a stack the kernel could not insert).
pub(crate) fn already_gone(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Moves every entry of a hash map out of it: the keys are listed, then each is taken with
/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which copies the value and unlinks the entry under the
/// bucket's lock, so an update the kernel makes after the copy lands in a new entry, read at
/// the next drain. (Reading the whole map and then deleting lost every update made between
/// the two, one interval's increment of each key.) What is still lost: an add by a program
/// that found the entry just before the copy and writes just after it, a window of a few
/// instructions. Keys inserted after the listing stay for the next drain.
pub(crate) fn take_all<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    probe: &'static str,
    name: &'static str,
) -> Result<Vec<(K, V)>, ProbeError> {
    let fail = |source| ProbeError::Map {
        probe,
        map: name,
        source: Box::new(source),
    };
    let table: aya::maps::HashMap<_, K, V> = map(ebpf, probe, name)?;
    let keys = table.keys().collect::<Result<Vec<K>, _>>().map_err(fail)?;
    let Some(aya::maps::Map::HashMap(data)) = ebpf.map(name) else {
        return Err(fail(MapError::InvalidName { name: name.into() }));
    };
    let fd = std::os::fd::AsFd::as_fd(data.fd());
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        match lookup_and_delete::<K, V>(fd, &key) {
            Ok(Some(value)) => entries.push((key, value)),
            Ok(None) => {}
            Err(io_error) => {
                return Err(fail(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_and_delete_elem",
                    io_error,
                })));
            }
        }
    }
    Ok(entries)
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on one key of a hash map, which aya 0.14 exposes only for
/// queues and stacks. Hash maps have it from Linux 5.14, below the 5.17 our `bpf_loop` walks
/// already need. `None`: the key went meanwhile.
fn lookup_and_delete<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    key: &K,
) -> std::io::Result<Option<V>> {
    use std::os::fd::AsRawFd as _;
    /// `union bpf_attr`'s map-element member: map_fd, key, value, flags.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a key and a value buffer of the map's sizes (the typed view
    // checked them), both live across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret == 0 {
        // SAFETY: the kernel wrote the whole value; any bit pattern is a valid Pod.
        return Ok(Some(unsafe { value.assume_init() }));
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(err),
    }
}

/// Sets a family's one-slot `ARMED` array: its programs account only while it is 1, so they
/// start together once all are attached and stop together before the last read.
pub(crate) fn set_armed(
    ebpf: &mut Ebpf,
    probe: &'static str,
    map: &'static str,
    on: bool,
) -> Result<(), ProbeError> {
    let mut armed: aya::maps::Array<_, u32> = map_mut(ebpf, probe, map)?;
    armed
        .set(0, u32::from(on), 0)
        .map_err(|source| ProbeError::Map {
            probe,
            map,
            source: Box::new(source),
        })
}

/// Programs that close what another opened (a return, a syscall's exit): unloaded last, so no
/// call seen entering loses its return to the unload order. (With the return probe gone
/// first, a target allocating flat out lost thousands of returns in the window.)
const CLOSERS: &[&str] = &[
    profiler_common::alloc::RETURN_PROGRAM,
    profiler_common::alloc::MMAP_EXIT_PROGRAM,
    profiler_common::memory::MREMAP_EXIT_PROGRAM,
];

/// Detaches and unloads every loaded program, so nothing more is recorded while the maps are
/// read. Programs are also detached when `Ebpf` drops; this just makes it happen first.
pub fn unload_all(ebpf: &mut Ebpf) {
    use aya::programs::Program;
    let mut programs: Vec<_> = ebpf.programs_mut().collect();
    programs.sort_by_key(|(name, _)| CLOSERS.contains(name));
    for (name, program) in programs {
        let result = match program {
            Program::PerfEvent(p) => p.unload(),
            Program::TracePoint(p) => p.unload(),
            Program::UProbe(p) => p.unload(),
            Program::RawTracePoint(p) => p.unload(),
            _ => Ok(()),
        };
        if let Err(err) = result {
            // Not loaded (a family that was not selected) is the common case; nothing to undo.
            log::debug!("unloading {name}: {err}");
        }
    }
}
