//! User-stack unwinding without frame pointers: the userspace half.
//!
//! For every binary the target maps, the CFI is compiled once ([`table`]) and written into the
//! `UNWIND_ROWS` array, one contiguous run per binary, shared by every mapping of it (keyed by
//! build id). The target's executable mappings, with each one's load bias and run of rows, go
//! into `UNWIND_MAPPINGS`. The kernel walk (`profiler-ebpf/src/unwind.rs`) reads both.
//! [`Unwinder::sync`] picks up libraries mapped later (dlopen).

pub mod table;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::FileExt,
    },
    time::Instant,
};

use aya::{Ebpf, maps::Array};
use object::Object;
use profiler_common::unwind::{
    self as common, MAX_MAPPINGS, MappingEntry, ProcessMappings, UnwindRow,
};
use serde::Serialize;

pub use crate::report::summary::UnwindStats;
use crate::{
    elf::{Segment, segments, text_bias},
    procmaps::{Backing, MappedFile, ProcessMaps, parse_maps},
};
use table::Table;

/// How user stacks are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnwindMode {
    /// `.eh_frame` tables where a binary has them, frame pointers elsewhere.
    #[default]
    Auto,
    /// Frame pointers only (the kernel's own walk).
    FramePointer,
    /// Tables only; a walk stops where there are none.
    Dwarf,
}

impl UnwindMode {
    pub fn kernel_mode(self) -> u32 {
        match self {
            Self::Auto => common::mode::AUTO,
            Self::FramePointer => common::mode::FRAME_POINTER,
            Self::Dwarf => common::mode::DWARF,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::FramePointer => "fp",
            Self::Dwarf => "dwarf",
        }
    }

    fn uses_tables(self) -> bool {
        self != Self::FramePointer
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("map {map} is missing or of the wrong type")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("cannot map {} into memory", common::ROWS_MAP)]
    Mmap(#[source] std::io::Error),
}

/// A compiled table and where it went in `UNWIND_ROWS`.
struct Placed {
    table: Table,
    segments: Vec<Segment>,
    /// First row in the map, once written.
    start: Option<u32>,
}

/// The table key of a binary: its build id, or what identifies the file without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TableKey {
    BuildId(Vec<u8>),
    File(u64, u64),
    Vdso,
}

pub struct Unwinder {
    mode: UnwindMode,
    tables: HashMap<TableKey, Placed>,
    /// File identity → table key; None: the file has no CFI (or cannot be read).
    files: HashMap<(u64, u64), Option<TableKey>>,
    rows: Option<memmap2::MmapMut>,
    capacity: u32,
    used: u32,
    stats: UnwindStats,
    warned_full: HashSet<TableKey>,
    /// The `UNWIND_MAPPINGS` slot the kernel reads.
    active_slot: u32,
}

/// Room for libraries loaded after attach.
const DLOPEN_HEADROOM: u32 = 1 << 18;

impl Unwinder {
    /// Compiles the tables of everything `maps` holds, before the maps are created, so they can
    /// be sized to fit.
    pub fn prepare(mode: UnwindMode, maps: &ProcessMaps) -> Self {
        let mut unwinder = Self::empty(mode);
        if mode.uses_tables() {
            unwinder.compile_new(maps);
            let needed: u64 = unwinder
                .tables
                .values()
                .map(|p| p.table.rows.len() as u64)
                .sum();
            let capacity = needed + needed / 4 + u64::from(DLOPEN_HEADROOM);
            unwinder.capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
        }
        unwinder
    }

    /// For a capture that walks no stacks: no tables compiled or installed, mode "none".
    pub fn unused() -> Self {
        let mut unwinder = Self::empty(UnwindMode::FramePointer);
        unwinder.stats.mode = "none".to_string();
        unwinder
    }

    fn empty(mode: UnwindMode) -> Self {
        Self {
            mode,
            tables: HashMap::new(),
            files: HashMap::new(),
            rows: None,
            capacity: 1,
            used: 0,
            stats: UnwindStats {
                mode: mode.as_str().to_string(),
                ..UnwindStats::default()
            },
            warned_full: HashSet::new(),
            active_slot: 0,
        }
    }

    pub fn mode(&self) -> UnwindMode {
        self.mode
    }

    /// Entries `UNWIND_ROWS` must have.
    pub fn rows_capacity(&self) -> u32 {
        self.capacity
    }

    pub fn stats(&self) -> &UnwindStats {
        &self.stats
    }

    /// Whether the file with this (device, inode) has a compiled table.
    pub fn has_table(&self, file: (u64, u64)) -> bool {
        matches!(self.files.get(&file), Some(Some(_)))
    }

    /// Writes the tables and the target's mappings into the loaded maps.
    pub fn install(&mut self, ebpf: &mut Ebpf, maps: &ProcessMaps) -> Result<(), UnwindError> {
        if !self.mode.uses_tables() {
            return Ok(());
        }
        let fd = match ebpf.map(common::ROWS_MAP) {
            Some(aya::maps::Map::Array(data)) => data.fd().as_fd().as_raw_fd(),
            _ => {
                return Err(UnwindError::Map {
                    map: common::ROWS_MAP,
                    source: Box::new(aya::maps::MapError::InvalidName {
                        name: common::ROWS_MAP.into(),
                    }),
                });
            }
        };
        let len = self.capacity as usize * size_of::<UnwindRow>();
        // SAFETY: the map is a BPF_F_MMAPABLE array of `capacity` rows that outlives this
        // mapping (we drop it before the Ebpf); the kernel only reads it.
        let mmap = unsafe { memmap2::MmapOptions::new().len(len).map_mut(fd) }
            .map_err(UnwindError::Mmap)?;
        self.rows = Some(mmap);
        self.stats.map_bytes =
            len as u64 + (size_of::<ProcessMappings>() + size_of::<u32>()) as u64;
        self.stats.rows_capacity = u64::from(self.capacity);
        self.write_pending();
        self.write_mappings(ebpf, maps)
    }

    /// Brings tables and mappings up to date after the target's mappings changed.
    pub fn sync(&mut self, ebpf: &mut Ebpf, maps: &ProcessMaps) -> Result<(), UnwindError> {
        if !self.mode.uses_tables() || self.rows.is_none() {
            return Ok(());
        }
        self.stats.mapping_updates += 1;
        self.compile_new(maps);
        self.write_pending();
        self.write_mappings(ebpf, maps)
    }

    /// Compiles tables for files not seen before.
    fn compile_new(&mut self, maps: &ProcessMaps) {
        let started = Instant::now();
        for mapping in maps.mappings() {
            match &mapping.backing {
                Backing::File(file) if !self.files.contains_key(&file.id) => {
                    let key = self.compile_file(file);
                    self.files.insert(file.id, key);
                }
                Backing::Vdso if !self.tables.contains_key(&TableKey::Vdso) => {
                    if let Some(image) = own_vdso() {
                        self.add_table(TableKey::Vdso, &image);
                    }
                }
                _ => {}
            }
        }
        self.stats.build_ms += started.elapsed().as_secs_f64() * 1000.0;
    }

    fn compile_file(&mut self, file: &MappedFile) -> Option<TableKey> {
        // SAFETY: a read-only map of a file we hold open; it is mapped executable by the
        // target, so the kernel refuses writers (ETXTBSY) while it runs.
        let data = unsafe { memmap2::Mmap::map(&file.file) }.ok()?;
        let key = object::File::parse(&*data)
            .ok()
            .and_then(|elf| elf.build_id().ok().flatten().map(<[u8]>::to_vec))
            .map_or(TableKey::File(file.id.0, file.id.1), TableKey::BuildId);
        if self.tables.contains_key(&key) {
            return Some(key);
        }
        self.add_table(key.clone(), &data).then_some(key)
    }

    /// Compiles `image` under `key`; false when it has no usable CFI.
    fn add_table(&mut self, key: TableKey, image: &[u8]) -> bool {
        let table = match table::compile(image) {
            Ok(table) if !table.rows.is_empty() => table,
            Ok(_) => {
                self.stats.binaries_without_cfi += 1;
                return false;
            }
            Err(err) => {
                log::debug!("no unwind table for {key:?}: {err}");
                self.stats.binaries_without_cfi += 1;
                return false;
            }
        };
        let segments = object::File::parse(image)
            .map(|elf| segments(&elf))
            .unwrap_or_default();
        self.stats.binaries += 1;
        self.stats.unsupported_rows += table.unsupported as u64;
        self.tables.insert(
            key,
            Placed {
                table,
                segments,
                start: None,
            },
        );
        true
    }

    /// Copies tables not yet in the map into it, while room lasts.
    fn write_pending(&mut self) {
        let Some(mmap) = self.rows.as_mut() else {
            return;
        };
        // SAFETY: the mapping is `capacity` rows of a repr(C) Pod type, page-aligned.
        let rows: &mut [UnwindRow] = unsafe {
            std::slice::from_raw_parts_mut(mmap.as_mut_ptr().cast(), self.capacity as usize)
        };
        for (key, placed) in &mut self.tables {
            if placed.start.is_some() {
                continue;
            }
            let len = placed.table.rows.len() as u32;
            if self.capacity - self.used < len {
                if self.warned_full.insert(key.clone()) {
                    log::warn!(
                        "unwind table space full: {} rows of {key:?} not loaded, its frames fall back to frame pointers",
                        len
                    );
                }
                continue;
            }
            let start = self.used as usize;
            rows[start..start + len as usize].copy_from_slice(&placed.table.rows);
            placed.start = Some(self.used);
            self.used += len;
            self.stats.rows += u64::from(len);
        }
    }

    fn write_mappings(&mut self, ebpf: &mut Ebpf, maps: &ProcessMaps) -> Result<(), UnwindError> {
        let mut value = ProcessMappings {
            count: 0,
            _pad: 0,
            entries: [MappingEntry::default(); MAX_MAPPINGS],
        };
        let mut dropped = 0;
        for mapping in maps.mappings() {
            let key = match &mapping.backing {
                Backing::File(file) => self.files.get(&file.id).cloned().flatten(),
                Backing::Vdso => Some(TableKey::Vdso),
                Backing::Other(_) => None,
            };
            let placed = key.as_ref().and_then(|k| self.tables.get(k));
            let mut entry = MappingEntry {
                start: mapping.start,
                end: mapping.end,
                ..MappingEntry::default()
            };
            if let Some(placed) = placed
                && let (Some(start), Some(bias)) = (
                    placed.start,
                    text_bias(&placed.segments, mapping.start, mapping.end, mapping.offset),
                )
            {
                entry.bias = bias;
                entry.rows_start = start;
                entry.rows_len = placed.table.rows.len() as u32;
            }
            if (value.count as usize) < MAX_MAPPINGS {
                value.entries[value.count as usize] = entry;
                value.count += 1;
            } else {
                dropped += 1;
            }
        }
        self.stats.mappings_dropped = dropped;
        // Fill the slot not in use, then switch to it: walks in flight keep reading the old one.
        let next = 1 - self.active_slot;
        array::<ProcessMappings>(ebpf, common::MAPPINGS_MAP)?
            .set(next, value, 0)
            .map_err(|source| map_error(common::MAPPINGS_MAP, source))?;
        array::<u32>(ebpf, common::ACTIVE_MAP)?
            .set(0, next, 0)
            .map_err(|source| map_error(common::ACTIVE_MAP, source))?;
        self.active_slot = next;
        Ok(())
    }
}

fn map_error(map: &'static str, source: aya::maps::MapError) -> UnwindError {
    UnwindError::Map {
        map,
        source: Box::new(source),
    }
}

fn array<'a, T: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut aya::maps::MapData, T>, UnwindError> {
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| map_error(name, aya::maps::MapError::InvalidName { name: name.into() }))?;
    Array::try_from(map).map_err(|source| map_error(name, source))
}

/// What compiling one file's table took and gave, for `profiler unwind-tables`.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub path: String,
    pub file_bytes: u64,
    pub functions: usize,
    pub rows: usize,
    pub unsupported_rows: usize,
    /// Kernel memory the rows take.
    pub table_bytes: u64,
    /// Reading and compiling, wall time.
    pub build_ms: f64,
}

/// Compiles the table of the ELF file at `path`, timing it.
pub fn inspect(path: &std::path::Path) -> std::io::Result<TableReport> {
    let started = Instant::now();
    let data = std::fs::read(path)?;
    let table = table::compile(&data).map_err(std::io::Error::other)?;
    Ok(TableReport {
        path: path.display().to_string(),
        file_bytes: data.len() as u64,
        functions: table.functions,
        rows: table.rows.len(),
        unsupported_rows: table.unsupported,
        table_bytes: (table.rows.len() * size_of::<UnwindRow>()) as u64,
        build_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The vdso image, read from our own process: every process of one kernel maps the same one.
fn own_vdso() -> Option<Vec<u8>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let vdso = parse_maps(&maps).into_iter().find(|l| l.path == "[vdso]")?;
    let mem = File::open("/proc/self/mem").ok()?;
    let mut image = vec![0; (vdso.end - vdso.start) as usize];
    mem.read_exact_at(&mut image, vdso.start).ok()?;
    Some(image)
}

/// Says so when the main binary lacks frame pointers and nothing else will walk it.
pub fn check_main_binary(
    maps: &ProcessMaps,
    unwinder: &Unwinder,
    notes: &mut Vec<String>,
) -> Option<crate::framepointers::FramePointerCheck> {
    let binary = maps.main_binary()?;
    // SAFETY: read-only map of a file we hold open; a concurrent truncation could fault, which
    // for an executable that is running cannot happen (ETXTBSY).
    let data = unsafe { memmap2::Mmap::map(&binary.file) }.ok()?;
    let check = crate::framepointers::check(&data).ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_own_binaries_once_per_build_id() {
        let maps = ProcessMaps::snapshot(std::process::id()).unwrap();
        let unwinder = Unwinder::prepare(UnwindMode::Auto, &maps);
        // This test binary and libc at least, and the vdso.
        assert!(unwinder.stats.binaries >= 2, "{:?}", unwinder.stats);
        assert!(unwinder.tables.contains_key(&TableKey::Vdso));
        assert!(
            unwinder.rows_capacity() as u64
                > unwinder
                    .tables
                    .values()
                    .map(|p| p.table.rows.len() as u64)
                    .sum::<u64>()
        );
        // Every file mapping resolved to a table key or to "no CFI", once.
        let files: HashSet<(u64, u64)> = maps
            .mappings()
            .iter()
            .filter_map(|m| match &m.backing {
                Backing::File(f) => Some(f.id),
                _ => None,
            })
            .collect();
        assert_eq!(files.len(), unwinder.files.len());
        let fp = Unwinder::prepare(UnwindMode::FramePointer, &maps);
        assert_eq!(fp.stats.binaries, 0);
        assert_eq!(fp.rows_capacity(), 1);
    }
}
