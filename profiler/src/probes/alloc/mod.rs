//! `alloc`: allocation tracking on the allocator the target really uses.
//!
//! The allocator is found from the target's mappings and symbols: a jemalloc, tcmalloc or
//! mimalloc library if one is mapped, else an allocator linked into the main binary (plain or
//! prefixed symbols such as `je_malloc`), else libc; `--allocator PATH` overrides. Uprobes are
//! attached through `/proc/PID/root/...`, so a target in another mount namespace works.

use std::{
    io::Write as _,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::HashMap,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use object::{Object, ObjectSection, ObjectSymbol};
use profiler_common::{
    alloc::{self, AllocConfig, AllocKey, StackAllocs, kind},
    stats,
};

use super::{Counters, Drain, Family, Finish, ProbeError, Setup, Tick, map, program_mut};
use crate::{
    ebpf::LoadConfig,
    procmaps::{Backing, ProcessMaps},
    report::{
        alloc::{
            self as report, AllocSummary, Allocator, Analysis, MemorySample, Snapshots,
            live_totals, memory_csv, sample_memory,
        },
        component::{Budget, Classifier},
        flamegraph::Labels,
    },
    stacks::StackTable,
    tracefs::Format,
};

pub mod probe_point;
pub mod window;

const PROBE: &str = "alloc";

#[derive(Debug, Clone)]
pub struct Config {
    /// Track one allocation in this many (1: all).
    pub sample_every: u32,
    /// The allocator's file as the target sees it, instead of looking for one.
    pub allocator: Option<PathBuf>,
    /// A growing stack is a leak suspect once its oldest live allocation is this old.
    pub min_age: std::time::Duration,
    /// Components named by frame patterns, with byte budgets (`--budget`).
    pub budget: Option<Budget>,
    /// `--alloc-duty`: the share of the time, in (0, 1], the allocating functions' probes are
    /// attached, in windows of `window` (see [`window`]); 1 keeps them attached throughout.
    pub duty: f64,
    pub window: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sample_every: 1,
            allocator: None,
            min_age: std::time::Duration::from_secs(10),
            budget: None,
            duty: 1.0,
            window: window::DEFAULT_WINDOW,
        }
    }
}

/// The allocator functions we probe: the program for each, the kind it records (passed as the
/// attach cookie where programs are shared), and whether it is required.
const FUNCTIONS: &[(&str, &str, u8, bool)] = &[
    ("malloc", alloc::ENTER_SIZE_PROGRAM, kind::MALLOC, true),
    ("calloc", alloc::ENTER_CALLOC_PROGRAM, kind::CALLOC, false),
    (
        "realloc",
        alloc::ENTER_REALLOC_PROGRAM,
        kind::REALLOC,
        false,
    ),
    (
        "posix_memalign",
        alloc::ENTER_POSIX_MEMALIGN_PROGRAM,
        kind::POSIX_MEMALIGN,
        false,
    ),
    (
        "aligned_alloc",
        alloc::ENTER_ALIGNED_PROGRAM,
        kind::ALIGNED_ALLOC,
        false,
    ),
    (
        "memalign",
        alloc::ENTER_ALIGNED_PROGRAM,
        kind::MEMALIGN,
        false,
    ),
    ("valloc", alloc::ENTER_SIZE_PROGRAM, kind::VALLOC, false),
    ("free", alloc::FREE_PROGRAM, 0, true),
];

/// Registers the probe point must leave untouched: the arguments the programs read, and for
/// the allocating functions `rsp`, since their return probe shares the point and takes the
/// return address from the top of the stack.
fn preserved(function: &str) -> &'static [u8] {
    use probe_point::reg::*;
    match function {
        "free" => &[RDI],
        _ => &[RDI, RSI, RDX, RCX, RSP],
    }
}

/// Bytes of a function's body scanned for branches into its first instructions, at most.
const BODY_SCANNED: u64 = 64 * 1024;

/// Each function's probe offset from its symbol, where the kernel can emulate the instruction.
fn probe_offsets(data: &[u8], symbols: &[(String, String)]) -> Vec<(String, u64)> {
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    let code_of = |symbol: &str| -> Option<Vec<u8>> {
        let sym = file
            .dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(symbol))?;
        let section = file.section_by_index(sym.section_index()?).ok()?;
        // The whole body, so branches back into the skipped instructions are seen; a symbol
        // without a size gets a window its first instructions surely fit in.
        let size = match sym.size() {
            0 => 256,
            size => size.min(BODY_SCANNED),
        };
        let available = section.address() + section.size() - sym.address();
        section
            .data_range(sym.address(), size.min(available))
            .ok()
            .flatten()
            .map(<[u8]>::to_vec)
    };
    symbols
        .iter()
        .map(|(function, symbol)| {
            let offset = code_of(symbol).map_or(0, |code| {
                probe_point::safe_offset(&code, preserved(function))
            });
            (function.clone(), offset)
        })
        .collect()
}

/// Each probe's offset in the file (what the kernel attaches at), from its symbol's address,
/// the section holding it and the probe's offset past the symbol.
fn file_offsets(
    data: &[u8],
    symbols: &[(String, String)],
    offsets: &[(String, u64)],
) -> Vec<(String, u64)> {
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    symbols
        .iter()
        .filter_map(|(function, symbol)| {
            let sym = file
                .dynamic_symbols()
                .chain(file.symbols())
                .find(|s| s.is_definition() && s.name() == Ok(symbol))?;
            let section = file.section_by_index(sym.section_index()?).ok()?;
            let (section_offset, _) = section.file_range()?;
            let past = offsets
                .iter()
                .find(|(f, _)| f == function)
                .map_or(0, |(_, o)| *o);
            Some((
                function.clone(),
                sym.address() - section.address() + section_offset + past,
            ))
        })
        .collect()
}

/// Symbol prefixes allocators export their API under (jemalloc `je_`, tikv-jemallocator
/// `_rjem_`, tcmalloc `tc_`, mimalloc `mi_`); the plain name wins where both exist.
const PREFIXES: &[&str] = &["", "je_", "_rjem_", "tc_", "mi_"];

/// Library names of the allocators we recognise.
const LIBRARIES: &[(&str, &str)] = &[
    ("libjemalloc", "jemalloc"),
    ("libtcmalloc", "tcmalloc"),
    ("libmimalloc", "mimalloc"),
];

impl Allocator {
    fn new(name: &str, path: PathBuf, data: &[u8], symbols: Vec<(String, String)>) -> Self {
        let offsets = probe_offsets(data, &symbols);
        let file_offsets = file_offsets(data, &symbols, &offsets);
        Self {
            name: name.into(),
            path,
            symbols,
            offsets,
            file_offsets,
        }
    }

    /// Where `function`'s probe sits in the file.
    fn file_offset(&self, function: &str) -> Option<u64> {
        self.file_offsets
            .iter()
            .find(|(f, _)| f == function)
            .map(|(_, o)| *o)
    }

    fn symbol(&self, function: &str) -> Option<&str> {
        self.symbols
            .iter()
            .find(|(f, _)| f == function)
            .map(|(_, s)| s.as_str())
    }

    fn offset(&self, function: &str) -> u64 {
        self.offsets
            .iter()
            .find(|(f, _)| f == function)
            .map_or(0, |(_, o)| *o)
    }
}

/// Defined function symbols of an ELF file.
fn defined_functions(data: &[u8]) -> Vec<String> {
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    file.dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.is_definition() && s.kind() == object::SymbolKind::Text)
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect()
}

/// For each allocator function, the first name under which `names` defines it.
fn resolve(names: &[String]) -> Vec<(String, String)> {
    FUNCTIONS
        .iter()
        .filter_map(|(function, _, _, _)| {
            PREFIXES.iter().find_map(|prefix| {
                let symbol = format!("{prefix}{function}");
                names
                    .contains(&symbol)
                    .then(|| (function.to_string(), symbol))
            })
        })
        .fold(Vec::new(), |mut acc, pair| {
            if !acc.iter().any(|(f, _)| *f == pair.0) {
                acc.push(pair);
            }
            acc
        })
}

fn complete(symbols: &[(String, String)]) -> bool {
    FUNCTIONS
        .iter()
        .filter(|(_, _, _, required)| *required)
        .all(|(f, _, _, _)| symbols.iter().any(|(have, _)| have == f))
}

fn read_target_file(pid: u32, path: &Path) -> Option<Vec<u8>> {
    std::fs::read(target_path(pid, path)).ok()
}

/// A path in the target's mount namespace, reachable from ours.
pub fn target_path(pid: u32, path: &Path) -> PathBuf {
    Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(path.strip_prefix("/").unwrap_or(path))
}

/// Finds the allocator `pid` uses.
pub fn discover(pid: u32, maps: &ProcessMaps, config: &Config) -> Result<Allocator, ProbeError> {
    let not_found = |what: String| ProbeError::Other {
        probe: PROBE,
        what,
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    };
    if let Some(path) = &config.allocator {
        let data = read_target_file(pid, path)
            .ok_or_else(|| not_found(format!("cannot read --allocator {}", path.display())))?;
        let symbols = resolve(&defined_functions(&data));
        if !complete(&symbols) {
            return Err(not_found(format!(
                "{} defines no malloc/free (plain or je_/tc_/mi_ prefixed)",
                path.display()
            )));
        }
        return Ok(Allocator::new("custom", path.clone(), &data, symbols));
    }
    let files: Vec<PathBuf> = maps
        .mappings()
        .iter()
        .filter_map(|m| match &m.backing {
            Backing::File(f) => Some(f.path.clone()),
            _ => None,
        })
        .fold(Vec::new(), |mut acc, p| {
            if !acc.contains(&p) {
                acc.push(p);
            }
            acc
        });
    let file_name = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string()
    };
    // A dedicated allocator library wins: it interposes on libc's.
    for (prefix, name) in LIBRARIES {
        if let Some(path) = files.iter().find(|p| file_name(p).starts_with(prefix))
            && let Some(data) = read_target_file(pid, path)
        {
            let symbols = resolve(&defined_functions(&data));
            if complete(&symbols) {
                return Ok(Allocator::new(name, path.clone(), &data, symbols));
            }
        }
    }
    // An allocator linked into the executable.
    if let Some(exe) = maps.main_binary()
        && let Some(data) = read_target_file(pid, &exe.path)
    {
        let symbols = resolve(&defined_functions(&data));
        if complete(&symbols) {
            return Ok(Allocator::new("static", exe.path.clone(), &data, symbols));
        }
    }
    let libc = files
        .iter()
        .find(|p| file_name(p).starts_with("libc.so"))
        .ok_or_else(|| {
            not_found(format!(
                "pid {pid} maps no libc and no known allocator: name one with --allocator"
            ))
        })?;
    let data = read_target_file(pid, libc)
        .ok_or_else(|| not_found(format!("cannot read {}", libc.display())))?;
    let symbols = resolve(&defined_functions(&data));
    Ok(Allocator::new("glibc", libc.clone(), &data, symbols))
}

pub fn kernel_config(config: &Config) -> Result<AllocConfig, ProbeError> {
    let err = |e: crate::tracefs::FormatError| super::tracefs_error(PROBE, &e);
    let enter = Format::load("syscalls", "sys_enter_mmap").map_err(err)?;
    let exit = Format::load("syscalls", "sys_exit_mmap").map_err(err)?;
    let munmap = Format::load("syscalls", "sys_enter_munmap").map_err(err)?;
    Ok(AllocConfig {
        sample_every: config.sample_every.max(1),
        mmap_len_offset: enter
            .offset("syscalls", "sys_enter_mmap", "len", 8)
            .map_err(err)?,
        mmap_fd_offset: enter
            .offset("syscalls", "sys_enter_mmap", "fd", 8)
            .map_err(err)?,
        mmap_ret_offset: exit
            .offset("syscalls", "sys_exit_mmap", "ret", 8)
            .map_err(err)?,
        munmap_addr_offset: munmap
            .offset("syscalls", "sys_enter_munmap", "addr", 8)
            .map_err(err)?,
        windowed: u32::from(config.duty < 1.0),
    })
}

pub(super) fn load_program<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut UProbe, ProbeError> {
    let prog: &mut UProbe = program_mut(ebpf, PROBE, program)?;
    super::load_once(prog, PROBE, program)?;
    Ok(prog)
}

/// One uprobe [`attach`] places on an allocator function.
struct Point<'a> {
    function: &'static str,
    symbol: &'a str,
    program: &'static str,
    cookie: Option<u64>,
    ret: bool,
}

/// Every uprobe on `allocator`'s functions, in attach order: a function's return probe before
/// its entry, at the same point so both share one breakpoint, and first so no call that the
/// entry probe sees can return unseen. `free` returns nothing to track.
fn points(allocator: &Allocator) -> impl Iterator<Item = Point<'_>> {
    FUNCTIONS
        .iter()
        .flat_map(move |&(function, program, kind, _)| {
            let symbol = allocator.symbol(function);
            let ret = symbol.filter(|_| function != "free").map(|symbol| Point {
                function,
                symbol,
                program: alloc::RETURN_PROGRAM,
                cookie: None,
                ret: true,
            });
            let entry = symbol.map(|symbol| Point {
                function,
                symbol,
                program,
                cookie: Some(u64::from(kind)),
                ret: false,
            });
            ret.into_iter().chain(entry)
        })
}

/// The mmap tracepoints' programs and events, the exit before the entry as with the return
/// probes.
const MMAP_TRACEPOINTS: [(&str, &str); 3] = [
    (alloc::MMAP_EXIT_PROGRAM, "sys_exit_mmap"),
    (alloc::MMAP_ENTER_PROGRAM, "sys_enter_mmap"),
    (alloc::MUNMAP_PROGRAM, "sys_enter_munmap"),
];

/// The programs [`attach`] loads for `allocator`'s functions, and the mmap tracepoints'.
fn programs(allocator: &Allocator) -> Vec<&'static str> {
    let mut programs: Vec<&'static str> = points(allocator)
        .map(|p| p.program)
        .chain(MMAP_TRACEPOINTS.iter().map(|(program, _)| *program))
        .collect();
    programs.sort_unstable();
    programs.dedup();
    programs
}

/// Whether a probe comes and goes with the allocation windows (`--alloc-duty`): the hot
/// allocating functions'. Detaching a uprobe waits for an RCU-tasks grace period (about 100 ms
/// each, one at a time), so the rarely called ones stay attached, their programs opening calls
/// only in a window; `free` and `realloc`'s entry stay because they retire tracked blocks, and
/// `realloc`'s return because it shares that breakpoint anyway.
fn windowed_probe(function: &str) -> bool {
    matches!(function, "malloc" | "calloc")
}

/// Attaches the allocator's probes; with `windows`, those that come and go with the windows
/// are attached at their file offsets and listed there, attached (the first window).
pub fn attach(
    ebpf: &mut Ebpf,
    pid: u32,
    allocator: &Allocator,
    windows: Option<&mut window::Windows>,
) -> Result<(), ProbeError> {
    let path = target_path(pid, &allocator.path);
    let pid = NonZeroU32::new(pid).ok_or(ProbeError::Other {
        probe: PROBE,
        what: "pid 0".into(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let scope = UProbeScope::OneProcess(pid);
    let attach_err = |program: &'static str, symbol: &str| {
        let target = format!("{symbol} in {}", path.display());
        move |source| ProbeError::Attach {
            probe: PROBE,
            program,
            target,
            source: Box::new(source),
        }
    };
    let mut windowed = Vec::new();
    for Point {
        function,
        symbol,
        program,
        cookie,
        ret,
    } in points(allocator)
    {
        if windows.is_some() && windowed_probe(function) {
            let file_offset = allocator
                .file_offset(function)
                .ok_or_else(|| ProbeError::Other {
                    probe: PROBE,
                    what: format!("no file offset for {symbol} in {}", path.display()),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?;
            windowed.push(window::Probe {
                program,
                file_offset,
                cookie,
                ret,
            });
            continue;
        }
        let prog = load_program(ebpf, program)?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::SymbolOffset(symbol, allocator.offset(function)),
            cookie,
        };
        prog.attach(point, &path, scope)
            .map_err(attach_err(program, symbol))?;
    }
    if let Some(windows) = windows {
        for probe in &windowed {
            load_program(ebpf, probe.program)?;
        }
        windows.set_probes(path.clone(), pid, windowed);
        windows.open(ebpf)?;
    }
    for (program, event) in MMAP_TRACEPOINTS {
        super::attach_tracepoint(ebpf, PROBE, program, "syscalls", event)?;
    }
    Ok(())
}

/// Per-stack allocation totals as they stand now.
pub fn read(ebpf: &Ebpf) -> Result<Vec<(AllocKey, StackAllocs)>, ProbeError> {
    let stacks: HashMap<_, AllocKey, StackAllocs> = map(ebpf, PROBE, alloc::STACKS_MAP)?;
    stacks
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: alloc::STACKS_MAP,
            source: Box::new(source),
        })
}

/// Suspects in `leaks.txt`; the terminal shows fewer.
const LEAKS_LISTED: usize = 20;
const TERMINAL_LEAKS: usize = 5;

/// The `alloc` family: allocations by stack, live bytes over time and leak suspects.
pub struct Alloc {
    config: Config,
    /// Found in `configure`.
    allocator: Option<Allocator>,
    /// Per-stack live bytes over time.
    snapshots: Snapshots,
    /// The target's memory, and the live bytes, over time.
    memory: Vec<MemorySample>,
    /// The agent's running live set (`drain`).
    live: super::LiveTable<AllocKey>,
    /// `--alloc-duty`: the allocation windows.
    windows: Option<window::Windows>,
}

impl Alloc {
    pub fn new(config: Config) -> Self {
        let windows = (config.duty < 1.0)
            .then(|| window::Windows::new(config.duty.max(0.001), config.window));
        Self {
            config,
            allocator: None,
            snapshots: Snapshots::default(),
            memory: Vec::new(),
            live: super::LiveTable::default(),
            windows,
        }
    }

    /// The share of the time the allocation probes were attached (1 without windows).
    fn duty(&self) -> f64 {
        self.windows
            .as_ref()
            .map_or(1.0, window::Windows::measured_duty)
    }

    /// Per-stack live bytes, and the target's memory beside their totals.
    fn snapshot(&mut self, tick: &Tick<'_>) {
        let at = tick.elapsed.as_secs_f64();
        let scale = f64::from(self.config.sample_every.max(1)) / self.duty();
        let live = match read(tick.ebpf) {
            Ok(stacks) => {
                self.snapshots.record(at, &stacks);
                Some(live_totals(&stacks, scale))
            }
            Err(err) => {
                log::warn!("alloc snapshot: {err}");
                None
            }
        };
        if let Some(mut sample) = sample_memory(tick.pid, at) {
            if let Some((bytes, count)) = live {
                sample.live_bytes = bytes;
                sample.live_count = count;
            }
            self.memory.push(sample);
        }
    }
}

impl Family for Alloc {
    fn name(&self) -> &'static str {
        PROBE
    }

    fn programs(&self) -> Vec<&'static str> {
        self.allocator.as_ref().map_or_else(Vec::new, programs)
    }

    fn configure(&mut self, setup: &Setup<'_>, load: &mut LoadConfig) -> Result<(), ProbeError> {
        self.allocator = Some(discover(setup.pid, setup.maps, &self.config)?);
        load.global(alloc::CONFIG_GLOBAL, &kernel_config(&self.config)?);
        load.map_size(alloc::LIVE_MAP, alloc::DEFAULT_MAX_LIVE);
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, setup: &Setup<'_>) -> Result<(), ProbeError> {
        let allocator = self.allocator.as_ref().ok_or(ProbeError::Other {
            probe: PROBE,
            what: "attached before the allocator was found".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        attach(ebpf, setup.pid, allocator, self.windows.as_mut())
    }

    fn arm(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
        match &mut self.windows {
            Some(windows) if on => windows.armed(),
            Some(windows) => windows.disarmed(),
            // One window, the whole capture: opened before arming and closed after, so no
            // return in between is taken for one cut by a window's close.
            None if on => window::set_window(ebpf, 1)?,
            None => {}
        }
        super::set_armed(ebpf, PROBE, alloc::ARMED_MAP, on)?;
        if !on && self.windows.is_none() {
            window::set_window(ebpf, 0)?;
        }
        Ok(())
    }

    fn begin(&mut self, tick: &mut Tick<'_>) {
        self.snapshot(tick);
    }

    fn tick(&mut self, tick: &mut Tick<'_>) {
        if let Some(windows) = &mut self.windows {
            windows.step(tick.ebpf);
        }
        if tick.interval_due {
            self.snapshot(tick);
        }
    }

    fn end(&mut self, tick: &mut Tick<'_>) {
        if tick.target_alive {
            self.snapshot(tick);
        }
    }

    fn progress(&self, counters: &Counters) -> String {
        format!("{} allocations", counters.get(stats::ALLOC_TRACKED))
    }

    fn drain(&mut self, d: &mut Drain<'_>) -> Result<bool, ProbeError> {
        // Every stack's change since the last drain; the live set is their running sum.
        let deltas: Vec<(AllocKey, StackAllocs)> =
            super::take_all(d.ebpf, PROBE, alloc::STACKS_MAP)?;
        let scale = i64::from(self.config.sample_every.max(1));
        for (_, v) in &deltas {
            d.into.allocations += v.total_allocs * scale as u64;
            d.into.allocated_bytes += v.total_bytes * scale as u64;
        }
        let live = self.live.add(
            d,
            deltas
                .iter()
                .map(|(k, v)| (*k, k.user_stack, v.live_bytes * scale, v.live_count * scale)),
        )?;
        d.into.live = Some(live);
        Ok(true)
    }

    fn finish(&mut self, f: &mut Finish<'_>) -> Result<(), ProbeError> {
        let stacks = read(f.ebpf)?;
        let table = StackTable::load(
            f.ebpf,
            stacks.iter().map(|(k, _)| k.user_stack),
            std::iter::empty(),
            f.maps,
            f.symbolizer,
        )?;
        let classifier = Classifier::new(
            &f.maps
                .main_binary()
                .map(|m| m.module().to_string())
                .unwrap_or_default(),
            self.allocator
                .as_ref()
                .and_then(|a| a.path.file_name())
                .and_then(|n| n.to_str()),
            self.config.budget.clone(),
        );
        let components: std::collections::HashMap<u64, String> = stacks
            .iter()
            .map(|(k, _)| k.user_stack)
            .map(|hash| (hash, classifier.classify(&table.user_located(hash))))
            .collect();
        let analysis = Analysis {
            snapshots: &self.snapshots,
            stacks: &stacks,
            frames: &|hash| table.user_frames(hash),
            component: &|hash| components.get(&hash).cloned().unwrap_or_default(),
            budget: self.config.budget.as_ref(),
            now_ns: f.ended_ns,
            min_age_secs: self.config.min_age.as_secs_f64(),
            interval_secs: f.interval.as_secs_f64(),
            sample_every: self.config.sample_every,
            duty: self.duty(),
            windows: self.windows.as_ref().map_or(0, |w| u64::from(w.count())),
            memory: &self.memory,
        };
        let leaks = analysis.report();
        let text = report::render(&leaks, LEAKS_LISTED);
        f.writer
            .write("leaks.txt", |out| out.write_all(text.as_bytes()))?;
        f.writer.json("leaks.json", &leaks)?;
        let csv = memory_csv(&self.memory);
        f.writer
            .write(report::MEMORY_CSV, |out| out.write_all(csv.as_bytes()))?;
        let title = f.title("live allocations");
        f.writer.flamegraph(
            "alloc",
            &analysis.weighted_stacks(&f.target.comm),
            &Labels {
                title: &title,
                subtitle: Some(if leaks.estimate {
                    "live bytes by allocating stack (estimated from a sample)"
                } else {
                    "live bytes by allocating stack"
                }),
                count_name: "bytes",
            },
        )?;
        let c = f.counters;
        let summary = AllocSummary {
            calls: c.get(stats::ALLOC_CALLS),
            tracked: c.get(stats::ALLOC_TRACKED),
            frees: c.get(stats::ALLOC_FREES),
            unknown_frees: c.get(stats::ALLOC_UNKNOWN_FREES),
            unsampled_frees: c.get(stats::ALLOC_UNSAMPLED_FREES),
            window_cut: c.get(stats::ALLOC_WINDOW_CUT),
            nested: c.get(stats::ALLOC_NESTED),
            leaks,
            allocator: self.allocator.clone().unwrap_or_default(),
        };
        let untracked_frees = if self.windows.is_some() {
            format!(
                "{} frees of blocks allocated between windows or before the attach, ignored; \
                 {} calls cut by a window's close",
                summary.unsampled_frees, summary.window_cut
            )
        } else {
            format!(
                "{} frees of blocks from before the attach",
                summary.unknown_frees
            )
        };
        f.writer.say(&format!(
            "alloc: {} calls to {} ({}), {} tracked, {} freed ({untracked_frees}, {} calls \
             from inside the allocator)\n{}",
            summary.calls,
            summary.allocator.name,
            summary.allocator.path.display(),
            summary.tracked,
            summary.frees,
            summary.nested,
            report::render(&summary.leaks, TERMINAL_LEAKS)
        ));
        f.notes.extend(summary.leaks.plausibility.clone());
        if let Some(failed) = self.windows.as_ref().and_then(|w| w.failed.clone()) {
            f.notes.push(format!("alloc: {failed}"));
        }
        f.outcome
            .findings
            .extend(report::findings(&summary.leaks, report::MEMORY_CSV));
        f.outcome.leaks = Some(summary.leaks.clone());
        f.summary().alloc = Some(summary);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resolves_plain_and_prefixed_symbols() {
        let glibc = resolve(&names(&["malloc", "free", "calloc", "realloc", "valloc"]));
        assert!(complete(&glibc));
        assert!(glibc.contains(&("malloc".into(), "malloc".into())));
        let prefixed = resolve(&names(&["je_malloc", "je_free", "je_calloc", "strlen"]));
        assert!(complete(&prefixed));
        assert!(prefixed.contains(&("free".into(), "je_free".into())));
        // Plain names win over prefixed ones.
        let both = resolve(&names(&["malloc", "je_malloc", "free"]));
        assert!(both.contains(&("malloc".into(), "malloc".into())));
        assert!(!complete(&resolve(&names(&["malloc"]))));
    }

    #[test]
    fn finds_glibc_for_a_plain_process() {
        let maps = ProcessMaps::snapshot(std::process::id()).unwrap();
        let found = discover(std::process::id(), &maps, &Config::default()).unwrap();
        assert_eq!(found.name, "glibc");
        assert!(found.path.to_string_lossy().contains("libc.so"));
        assert!(found.symbol("posix_memalign").is_some());
        // glibc's free opens with `test %rdi,%rdi`, which would be single-stepped.
        assert!(found.offset("free") > 0, "{:?}", found.offsets);
        // memalign opens with `cmpb $0,...(%rip)`.
        assert!(found.offset("memalign") > 0, "{:?}", found.offsets);
    }

    /// Debian's jemalloc: `free` starts with nine straight-line instructions, probed past them.
    #[test]
    fn jemalloc_free_is_probed_at_its_first_branch() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2");
        let Ok(data) = std::fs::read(path) else {
            eprintln!("skipped: no {}", path.display());
            return;
        };
        let symbols = resolve(&defined_functions(&data));
        let allocator = Allocator::new("jemalloc", path.into(), &data, symbols);
        assert!(allocator.offset("free") >= 16, "{:?}", allocator.offsets);
        assert!(allocator.offset("malloc") > 0, "{:?}", allocator.offsets);
    }
}
