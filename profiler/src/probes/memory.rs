//! `memory`: the target's memory growth by stack, cheap enough to leave on. No allocator
//! call is probed: page faults say where memory is first touched, mapping syscalls where it
//! is given back (the rule is in `profiler_common::memory`), so the cost follows how fast the
//! target grows, not how fast it allocates. Every `--interval` the per-stack figures are
//! read beside the target's RSS and anonymous memory.

use std::{collections::HashMap, io::Write as _};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap},
};
use profiler_common::{
    memory::{self, Change, ChangeKey, Growth, GrowthKey, MemoryConfig},
    stats,
};

use super::{
    Counters, Drain, Family, Finish, ProbeError, Setup, Tick, attach_tracepoint, map, map_mut,
};
use crate::{
    ebpf::LoadConfig,
    report::{
        alloc::{self as alloc_report, MemorySample, memory_csv, sample_memory},
        component::{self, Budget, Classifier},
        flamegraph::Labels,
        memory::{self as report, Analysis, GrowthSnapshots, MemorySummary},
    },
    stacks::StackTable,
    tracefs::Format,
};

const PROBE: &str = "memory";

/// Suspects and growers in `growth.txt`; the terminal shows fewer.
const LISTED: usize = 20;
const TERMINAL_LISTED: usize = 5;

#[derive(Debug, Clone)]
pub struct Config {
    /// Chunks of 512 pages with growth in them, at most (growth beyond is counted as dropped).
    pub max_chunks: u32,
    /// Components named by frame patterns, with byte budgets (`--budget`).
    pub budget: Option<Budget>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_chunks: memory::DEFAULT_MAX_CHUNKS,
            budget: None,
        }
    }
}

/// The offset of `field` (of `size` bytes) in `category:event`.
fn offset(category: &str, event: &str, field: &str, size: u32) -> Result<u32, ProbeError> {
    let format = Format::load(category, event).map_err(|e| super::tracefs_error(PROBE, &e))?;
    format
        .offset(category, event, field, size)
        .map_err(|e| super::tracefs_error(PROBE, &e))
}

pub fn kernel_config() -> Result<MemoryConfig, ProbeError> {
    let fault_address_offset = offset("exceptions", "page_fault_user", "address", 8)?;
    let fault_error_offset = offset("exceptions", "page_fault_user", "error_code", 8)?;
    // One program reads both fault events: they must lay the fields out alike.
    if offset("exceptions", "page_fault_kernel", "address", 8)? != fault_address_offset
        || offset("exceptions", "page_fault_kernel", "error_code", 8)? != fault_error_offset
    {
        return Err(ProbeError::Other {
            probe: PROBE,
            what: "exceptions:page_fault_user and page_fault_kernel differ in layout".into(),
            source: std::io::Error::from(std::io::ErrorKind::Unsupported),
        });
    }
    let page_size = rustix::param::page_size() as u64;
    Ok(MemoryConfig {
        fault_address_offset,
        fault_error_offset,
        brk_ret_offset: offset("syscalls", "sys_exit_brk", "ret", 8)?,
        mmap_addr_offset: offset("syscalls", "sys_enter_mmap", "addr", 8)?,
        mmap_len_offset: offset("syscalls", "sys_enter_mmap", "len", 8)?,
        mmap_flags_offset: offset("syscalls", "sys_enter_mmap", "flags", 8)?,
        mmap_fd_offset: offset("syscalls", "sys_enter_mmap", "fd", 8)?,
        munmap_addr_offset: offset("syscalls", "sys_enter_munmap", "addr", 8)?,
        munmap_len_offset: offset("syscalls", "sys_enter_munmap", "len", 8)?,
        madvise_start_offset: offset("syscalls", "sys_enter_madvise", "start", 8)?,
        madvise_len_offset: offset("syscalls", "sys_enter_madvise", "len_in", 8)?,
        madvise_behavior_offset: offset("syscalls", "sys_enter_madvise", "behavior", 8)?,
        mremap_addr_offset: offset("syscalls", "sys_enter_mremap", "addr", 8)?,
        mremap_old_len_offset: offset("syscalls", "sys_enter_mremap", "old_len", 8)?,
        mremap_new_len_offset: offset("syscalls", "sys_enter_mremap", "new_len", 8)?,
        mremap_ret_offset: offset("syscalls", "sys_exit_mremap", "ret", 8)?,
        page_shift: page_size.trailing_zeros(),
        _pad: 0,
    })
}

/// The target's program break now: the end of its `[heap]` mapping, or where the heap would
/// start when it has none yet (`start_brk` in `/proc/PID/stat`).
pub fn current_brk(pid: u32) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if let Some(heap) = maps.lines().find(|l| l.ends_with("[heap]")) {
        let range = heap.split_whitespace().next()?;
        return u64::from_str_radix(range.split_once('-')?.1, 16).ok();
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis start at field 3; start_brk is 47.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(47 - 3)?.parse().ok()
}

/// Every stack's growth as it stands now.
pub fn read_growth(ebpf: &Ebpf) -> Result<Vec<(GrowthKey, Growth)>, ProbeError> {
    let stacks: BpfHashMap<_, GrowthKey, Growth> = map(ebpf, PROBE, memory::GROWTH_MAP)?;
    stacks
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: memory::GROWTH_MAP,
            source: Box::new(source),
        })
}

fn read_changes(ebpf: &Ebpf) -> Result<Vec<(ChangeKey, Change)>, ProbeError> {
    let stacks: BpfHashMap<_, ChangeKey, Change> = map(ebpf, PROBE, memory::CHANGES_MAP)?;
    stacks
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: memory::CHANGES_MAP,
            source: Box::new(source),
        })
}

/// The `memory` family.
pub struct Memory {
    config: Config,
    snapshots: GrowthSnapshots,
    samples: Vec<MemorySample>,
    page_size: u64,
    /// The target, known from `configure` on.
    pid: u32,
    /// The agent's running held pages by stack (`drain`).
    held: super::LiveTable<GrowthKey>,
}

impl Memory {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            snapshots: GrowthSnapshots::default(),
            samples: Vec::new(),
            page_size: rustix::param::page_size() as u64,
            pid: 0,
            held: super::LiveTable::default(),
        }
    }

    fn snapshot(&mut self, tick: &Tick<'_>) {
        let at = tick.elapsed.as_secs_f64();
        match read_growth(tick.ebpf) {
            Ok(stacks) => self.snapshots.record(at, &stacks),
            Err(err) => log::warn!("memory snapshot: {err}"),
        }
        if let Some(sample) = sample_memory(tick.pid, at) {
            self.samples.push(sample);
        }
    }
}

/// The programs attached to tracepoints, in attach order: an mremap's exit before its entry,
/// so no entry waits for an exit not attached yet.
const TRACEPOINTS: [(&str, &str, &str); 8] = [
    (memory::FAULT_USER_PROGRAM, "exceptions", "page_fault_user"),
    (
        memory::FAULT_KERNEL_PROGRAM,
        "exceptions",
        "page_fault_kernel",
    ),
    (memory::BRK_PROGRAM, "syscalls", "sys_exit_brk"),
    (memory::MMAP_PROGRAM, "syscalls", "sys_enter_mmap"),
    (memory::MUNMAP_PROGRAM, "syscalls", "sys_enter_munmap"),
    (memory::MADVISE_PROGRAM, "syscalls", "sys_enter_madvise"),
    (memory::MREMAP_EXIT_PROGRAM, "syscalls", "sys_exit_mremap"),
    (memory::MREMAP_ENTER_PROGRAM, "syscalls", "sys_enter_mremap"),
];

impl Family for Memory {
    fn name(&self) -> &'static str {
        PROBE
    }

    fn programs(&self) -> Vec<&'static str> {
        std::iter::once(memory::RELEASE_PROGRAM)
            .chain(TRACEPOINTS.iter().map(|(program, ..)| *program))
            .collect()
    }

    fn configure(&mut self, setup: &Setup<'_>, load: &mut LoadConfig) -> Result<(), ProbeError> {
        self.pid = setup.pid;
        load.global(memory::CONFIG_GLOBAL, &kernel_config()?);
        load.map_size(memory::CHUNKS_MAP, self.config.max_chunks);
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, _: &Setup<'_>) -> Result<(), ProbeError> {
        // The release the mapping calls tail-call, in place before any of them is attached.
        let release: &mut aya::programs::TracePoint =
            super::program_mut(ebpf, PROBE, memory::RELEASE_PROGRAM)?;
        super::load_once(release, PROBE, memory::RELEASE_PROGRAM)?;
        let fd = release
            .fd()
            .map_err(|source| ProbeError::Load {
                probe: PROBE,
                program: memory::RELEASE_PROGRAM,
                source: Box::new(source),
            })?
            .try_clone()
            .map_err(|source| ProbeError::Other {
                probe: PROBE,
                what: format!("duplicating {}'s fd", memory::RELEASE_PROGRAM),
                source,
            })?;
        let mut tail: aya::maps::ProgramArray<_> = map_mut(ebpf, PROBE, memory::TAIL_MAP)?;
        tail.set(0, &fd, 0).map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: memory::TAIL_MAP,
            source: Box::new(source),
        })?;
        for (program, category, event) in TRACEPOINTS {
            attach_tracepoint(ebpf, PROBE, program, category, event)?;
        }
        Ok(())
    }

    fn arm(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
        if on {
            // The break as it stands when counting starts: the first brk is measured from it.
            if let Some(brk) = current_brk(self.pid) {
                let mut slot: Array<_, u64> = map_mut(ebpf, PROBE, memory::BRK_MAP)?;
                slot.set(0, brk, 0).map_err(|source| ProbeError::Map {
                    probe: PROBE,
                    map: memory::BRK_MAP,
                    source: Box::new(source),
                })?;
            }
        }
        super::set_armed(ebpf, PROBE, memory::ARMED_MAP, on)
    }

    fn begin(&mut self, tick: &mut Tick<'_>) {
        self.snapshot(tick);
    }

    fn tick(&mut self, tick: &mut Tick<'_>) {
        if tick.interval_due {
            self.snapshot(tick);
        }
    }

    fn end(&mut self, tick: &mut Tick<'_>) {
        if tick.target_alive {
            self.snapshot(tick);
        }
    }

    fn drain(&mut self, d: &mut Drain<'_>) -> Result<bool, ProbeError> {
        let deltas: Vec<(GrowthKey, Growth)> = super::take_all(d.ebpf, PROBE, memory::GROWTH_MAP)?;
        // Mapping calls by stack: the agent serves none of it, but the map must not fill.
        let changes: Vec<(ChangeKey, Change)> =
            super::take_all(d.ebpf, PROBE, memory::CHANGES_MAP)?;
        d.into
            .user_stacks
            .extend(changes.iter().map(|(k, _)| k.user_stack));
        let page = self.page_size as i64;
        d.into.grown_bytes += deltas.iter().map(|(_, g)| g.pages).sum::<u64>() * self.page_size;
        let held = self.held.add(
            d,
            deltas
                .iter()
                .map(|(k, g)| (*k, k.user_stack, g.held_pages * page, g.held_pages)),
        )?;
        d.into.held = Some(held);
        Ok(true)
    }

    fn progress(&self, counters: &Counters) -> String {
        format!(
            "{} grown",
            report::bytes(counters.get(stats::MEMORY_GROWN) * self.page_size)
        )
    }

    fn finish(&mut self, f: &mut Finish<'_>) -> Result<(), ProbeError> {
        let growth = read_growth(f.ebpf)?;
        let changes = read_changes(f.ebpf)?;
        let hashes: Vec<u64> = growth
            .iter()
            .map(|(k, _)| k.user_stack)
            .chain(changes.iter().map(|(k, _)| k.user_stack))
            .collect();
        let table = StackTable::load(
            f.ebpf,
            hashes.iter().copied(),
            std::iter::empty(),
            f.maps,
            f.symbolizer,
        )?;
        let names: HashMap<u64, Vec<String>> =
            hashes.iter().map(|&h| (h, table.user_frames(h))).collect();
        // The allocator is found by `alloc`; without it the known allocator libraries are
        // passed over anyway.
        let classifier = Classifier::new(
            &f.maps
                .main_binary()
                .map(|m| m.module().to_string())
                .unwrap_or_default(),
            None,
            self.config.budget.clone(),
        );
        let components: HashMap<u64, String> = growth
            .iter()
            .map(|(k, _)| {
                (
                    k.user_stack,
                    classifier.classify(&table.user_located(k.user_stack)),
                )
            })
            .collect();
        let analysis = Analysis {
            snapshots: &self.snapshots,
            growth: &growth,
            changes: &changes,
            names: &names,
            page_size: self.page_size,
            interval_secs: f.interval.as_secs_f64(),
            memory: &self.samples,
            components: &components,
            budget: self.config.budget.as_ref(),
        };
        let growth_report = analysis.report();
        let text = report::render(&growth_report, LISTED);
        f.writer
            .write(report::TEXT, |out| out.write_all(text.as_bytes()))?;
        f.writer.json(report::JSON, &growth_report)?;
        let title = f.title("memory growth");
        f.writer.flamegraph(
            "memory",
            &analysis.weighted_stacks(&f.target.comm),
            &Labels {
                title: &title,
                subtitle: Some("bytes faulted in and still held, by the stack that touched them"),
                count_name: "bytes",
            },
        )?;
        // `alloc`, when it ran, wrote its own series and leak report (it runs first).
        let written = |writer: &crate::rundir::RunWriter, name: &str| {
            writer.outputs().iter().any(|o| o == name)
        };
        if !written(f.writer, alloc_report::MEMORY_CSV) {
            let csv = memory_csv(&self.samples);
            f.writer.write(alloc_report::MEMORY_CSV, |out| {
                out.write_all(csv.as_bytes())
            })?;
        }
        if !written(f.writer, LEAKS_TXT) {
            let leaks = report::render_leaks(&growth_report, LISTED);
            f.writer
                .write(LEAKS_TXT, |out| out.write_all(leaks.as_bytes()))?;
        }
        let c = f.counters;
        f.writer.say(&format!(
            "memory: {} write faults, {} pages grown, {} released\n{}",
            c.get(stats::MEMORY_FAULTS),
            c.get(stats::MEMORY_GROWN),
            c.get(stats::MEMORY_RELEASED),
            report::render(&growth_report, TERMINAL_LISTED)
        ));
        f.notes.extend(growth_report.note.clone());
        f.outcome.findings.extend(component::findings(
            &growth_report.components,
            PROBE,
            report::TEXT,
        ));
        f.outcome.growth = Some(growth_report.clone());
        f.summary().memory = Some(MemorySummary {
            faults: c.get(stats::MEMORY_FAULTS),
            grown_pages: c.get(stats::MEMORY_GROWN),
            released_pages: c.get(stats::MEMORY_RELEASED),
            growth: growth_report,
        });
        Ok(())
    }
}

/// `leaks.txt`, which `alloc` writes when it runs.
const LEAKS_TXT: &str = "leaks.txt";
