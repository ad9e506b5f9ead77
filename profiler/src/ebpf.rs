//! The eBPF object, built by `build.rs` and embedded here so one binary is all a user copies.

use aya::{
    Ebpf, EbpfLoader,
    programs::{PerfEvent, Program, ProgramError, TracePoint, UProbe},
};
use profiler_common::{globals, unwind};

/// The object file `profiler-ebpf` compiles to.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// Global that gates aya-log statements in the kernel (0 silences them all).
const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";
/// aya-log's `Level::Debug`.
const LOG_LEVEL_DEBUG: u8 = 4;

/// What is fixed at load time: globals the verifier sees as constants, and map sizes. The
/// object's own values stand for what no family sets (families off keep their maps small).
#[derive(Debug, Clone, Default)]
pub struct LoadConfig {
    pub target_tgid: u32,
    /// Kernel-side diagnostics on; when off they cost nothing.
    pub verbose: bool,
    /// One of `profiler_common::unwind::mode`.
    pub unwind_mode: u32,
    /// Entries of `UNWIND_ROWS`.
    pub unwind_rows: u32,
    /// A family's configuration globals, by name, as the bytes of their `#[repr(C)]` type.
    globals: Vec<(&'static str, Vec<u8>)>,
    /// Map sizes a family sets, by map name.
    map_sizes: Vec<(&'static str, u32)>,
}

impl LoadConfig {
    pub fn new(target_tgid: u32, verbose: bool) -> Self {
        Self {
            target_tgid,
            verbose,
            ..Self::default()
        }
    }

    /// Sets the global `name` (a `profiler_common` config type) before load.
    pub fn global<T: aya::Pod>(&mut self, name: &'static str, value: &T) {
        // SAFETY: `Pod` types are `#[repr(C)]` plain data with explicit padding: every byte
        // of one is initialised and may be read as a byte.
        let bytes =
            unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        self.globals.push((name, bytes.to_vec()));
    }

    /// Sets the number of entries of map `name`.
    pub fn map_size(&mut self, name: &'static str, entries: u32) {
        self.map_sizes.push((name, entries.max(1)));
    }
}

pub fn load(config: &LoadConfig) -> Result<Ebpf, aya::EbpfError> {
    raise_memlock_limit();
    let level: u8 = if config.verbose { LOG_LEVEL_DEBUG } else { 0 };
    let mut loader = EbpfLoader::new();
    loader
        .override_global(globals::TARGET_TGID, &config.target_tgid, true)
        .override_global(unwind::MODE_GLOBAL, &config.unwind_mode, true)
        .override_global(AYA_LOG_LEVEL, &level, false)
        .map_max_entries(unwind::ROWS_MAP, config.unwind_rows.max(1));
    for (name, bytes) in &config.globals {
        loader.override_global(name, bytes.as_slice(), true);
    }
    for (name, entries) in &config.map_sizes {
        loader.map_max_entries(name, *entries);
    }
    loader.load(OBJECT)
}

/// A program type whose `load` takes nothing: all the families use.
pub trait Load {
    /// Loads (verifies) the program unless it is loaded already.
    fn load_once(&mut self) -> Result<(), ProgramError>;
}

macro_rules! impl_load {
    ($($t:ty),*) => {$(
        impl Load for $t {
            fn load_once(&mut self) -> Result<(), ProgramError> {
                if self.fd().is_ok() {
                    return Ok(());
                }
                self.load()
            }
        }
    )*};
}
impl_load!(TracePoint, UProbe, PerfEvent);

/// Verifies `names` side by side, one thread per CPU, before the families attach them (each
/// then finds its programs loaded). The verifier takes 50-450 ms a program here and runs
/// privileged loads in parallel, so an attach of every family, most of which is
/// verification, takes about 1/CPUs of the time. A failure is left for the family's own
/// load to report with its context.
pub fn preload(ebpf: &mut Ebpf, names: &[&'static str]) {
    let queue: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| names.contains(name))
        .collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(queue.len());
    if workers < 2 {
        return; // the families' own loads do it in turn
    }
    let queue = std::sync::Mutex::new(queue);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    // The guard drops at the end of the statement: loads run unlocked.
                    let next = queue.lock().map(|mut q| q.pop()).ok().flatten();
                    let Some((name, program)) = next else {
                        break;
                    };
                    let loaded = match program {
                        Program::TracePoint(p) => p.load_once(),
                        Program::UProbe(p) => p.load_once(),
                        Program::PerfEvent(p) => p.load_once(),
                        _ => Ok(()),
                    };
                    if let Err(err) = loaded {
                        log::debug!("preload of {name} failed (its family reports it): {err}");
                    }
                }
            });
        }
    });
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large maps load there too.
fn raise_memlock_limit() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    // Failure only matters on old kernels.
    if let Err(err) = setrlimit(Resource::Memlock, unlimited) {
        log::debug!("could not lift RLIMIT_MEMLOCK: {err}");
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::{alloc, cpu, futex, memory, offcpu, sock, stack, stats, unwind, why};

    use super::*;

    /// Every name userspace looks up must exist in the object, so a rename on one side fails here
    /// rather than at attach time.
    #[test]
    fn object_has_every_named_program_and_map() {
        let object = aya_obj::Object::parse(OBJECT).expect("embedded object parses");
        let programs = [
            cpu::PROGRAM,
            offcpu::PROGRAM,
            futex::SWITCH_PROGRAM,
            futex::WAKING_PROGRAM,
            alloc::ENTER_SIZE_PROGRAM,
            alloc::ENTER_CALLOC_PROGRAM,
            alloc::ENTER_ALIGNED_PROGRAM,
            alloc::ENTER_REALLOC_PROGRAM,
            alloc::ENTER_POSIX_MEMALIGN_PROGRAM,
            alloc::RETURN_PROGRAM,
            alloc::FREE_PROGRAM,
            alloc::MMAP_ENTER_PROGRAM,
            alloc::MMAP_EXIT_PROGRAM,
            alloc::MUNMAP_PROGRAM,
            sock::DATA_READY_PROGRAM,
            sock::RECV_PROGRAM,
            sock::SEND_PROGRAM,
            sock::STATE_PROGRAM,
            sock::SEND_ENTER_PROGRAM,
            why::SWITCH_PROGRAM,
            why::WAKING_PROGRAM,
            why::IDLE_PROGRAM,
            memory::FAULT_USER_PROGRAM,
            memory::FAULT_KERNEL_PROGRAM,
            memory::BRK_PROGRAM,
            memory::MMAP_PROGRAM,
            memory::MUNMAP_PROGRAM,
            memory::MADVISE_PROGRAM,
            memory::MREMAP_ENTER_PROGRAM,
            memory::MREMAP_EXIT_PROGRAM,
            memory::RELEASE_PROGRAM,
        ];
        for program in programs {
            assert!(
                object.programs.contains_key(program),
                "program {program} missing; have {:?}",
                object.programs.keys().collect::<Vec<_>>()
            );
        }
        for map in [
            stats::MAP,
            stack::USER_STACKS_MAP,
            stack::KERNEL_STACKS_MAP,
            stack::STACKS_EPOCH_MAP,
            stack::SCRATCH_STACK_MAP,
            cpu::COUNTS_MAP,
            cpu::ARMED_MAP,
            offcpu::ARMED_MAP,
            futex::ARMED_MAP,
            unwind::ROWS_MAP,
            unwind::MAPPINGS_MAP,
            unwind::ACTIVE_MAP,
            stack::STACK_CACHE_MAP,
            offcpu::TIMES_MAP,
            offcpu::START_MAP,
            futex::WAITS_MAP,
            futex::WAKES_MAP,
            futex::LOCKS_MAP,
            futex::WAITERS_MAP,
            futex::START_MAP,
            futex::ZERO_MAP,
            alloc::LIVE_MAP,
            alloc::STACKS_MAP,
            alloc::INFLIGHT_MAP,
            sock::SOCKETS_MAP,
            sock::NEW_MAP,
            sock::PORTS_MAP,
            sock::HISTS_MAP,
            sock::COUNTS_MAP,
            sock::ARMED_MAP,
            sock::SEND_ENTRY_MAP,
            why::THREADS_MAP,
            why::REQUESTS_MAP,
            why::RECORDS_MAP,
            why::ARMED_MAP,
            why::ORPHANS_MAP,
            alloc::ARMED_MAP,
            memory::ZERO_MAP,
            memory::CHUNKS_MAP,
            memory::GROWTH_MAP,
            memory::CHANGES_MAP,
            memory::BRK_MAP,
            memory::REMAPS_MAP,
            memory::ARMED_MAP,
            memory::TAIL_MAP,
            memory::PENDING_MAP,
        ] {
            assert!(
                object.maps.contains_key(map),
                "map {map} missing; have {:?}",
                object.maps.keys().collect::<Vec<_>>()
            );
        }
    }
}
