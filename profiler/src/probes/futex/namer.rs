//! Names for lock addresses: the global or static variable that holds the lock when there is
//! one (from the mapped file's symbols), otherwise what kind of memory it lives in.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    elf::{self, DataSymbol},
    procmaps::{Backing, MapsLine, ProcessMaps, dev_number},
};

/// What a lock address is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockName {
    /// "symbol", "heap", "stack", "file" or "unknown".
    pub kind: String,
    /// `g_hot_lock`, `testbed_pool::SHARE_LOG+0x8`, `heap 0x55d0c0a01000`, ...
    pub name: String,
}

struct FileSymbols {
    symbols: Vec<DataSymbol>,
    /// Runtime minus ELF address: one for all of a file's segments.
    bias: u64,
}

/// Names addresses of one process, caching each file's symbols.
pub struct LockNamer<'a> {
    maps: &'a ProcessMaps,
    /// Stack pointers of the target's threads, to tell thread stacks from other anonymous
    /// memory.
    thread_sps: Vec<u64>,
    files: HashMap<(u64, u64), Option<Arc<FileSymbols>>>,
}

impl<'a> LockNamer<'a> {
    pub fn new(maps: &'a ProcessMaps) -> Self {
        Self {
            maps,
            thread_sps: thread_stack_pointers(maps.pid()),
            files: HashMap::new(),
        }
    }

    pub fn name(&mut self, addr: u64) -> LockName {
        let lines = self.maps.all_lines();
        let Some(index) = lines.iter().position(|l| l.start <= addr && addr < l.end) else {
            return LockName {
                kind: "unknown".into(),
                name: format!("{addr:#x}"),
            };
        };
        let line = &lines[index];
        // .bss past the file's last page is an anonymous mapping right after the file's own.
        if line.path.is_empty()
            && let Some(prev) = index.checked_sub(1).map(|i| &lines[i])
            && prev.end == line.start
            && prev.path.starts_with('/')
            && let Some(name) = self.symbol(prev, addr)
        {
            return LockName {
                kind: "symbol".into(),
                name,
            };
        }
        match line.path.as_str() {
            "[heap]" => return named("heap", addr),
            "[stack]" => return named("stack", addr),
            "" if self
                .thread_sps
                .iter()
                .any(|&sp| line.start <= sp && sp < line.end) =>
            {
                return named("stack", addr);
            }
            // Anonymous read-write memory: malloc arenas and mmap'd allocations.
            "" => return named("heap", addr),
            _ => {}
        }
        if let Some(name) = self.symbol(line, addr) {
            return LockName {
                kind: "symbol".into(),
                name,
            };
        }
        let module = line.path.rsplit('/').next().unwrap_or(&line.path);
        LockName {
            kind: "file".into(),
            name: format!("{module}+{:#x}", addr - line.start + line.offset),
        }
    }

    fn symbol(&mut self, line: &MapsLine, addr: u64) -> Option<String> {
        let id = (dev_number(&line.dev), line.inode);
        let maps = self.maps;
        let file = self
            .files
            .entry(id)
            .or_insert_with(|| load_symbols(maps, id))
            .clone()?;
        let vaddr = addr.wrapping_sub(file.bias);
        let symbol = elf::find_symbol(&file.symbols, vaddr)?;
        Some(match vaddr - symbol.address {
            0 => symbol.name.clone(),
            off => format!("{}+{off:#x}", symbol.name),
        })
    }
}

fn named(kind: &str, addr: u64) -> LockName {
    LockName {
        kind: kind.into(),
        name: format!("{kind} {addr:#x}"),
    }
}

fn load_symbols(maps: &ProcessMaps, id: (u64, u64)) -> Option<Arc<FileSymbols>> {
    let file = maps.file(id)?;
    // The executable mapping fixes the bias; data segments moved by the same amount.
    let text = maps
        .mappings()
        .iter()
        .find(|m| matches!(&m.backing, Backing::File(f) if f.id == id))?;
    // SAFETY: a read-only map of a file we hold open and the target maps executable.
    let data = unsafe { memmap2::Mmap::map(&file.file) }.ok()?;
    let elf = object::File::parse(&*data).ok()?;
    let bias = elf::text_bias(&elf::segments(&elf), text.start, text.end, text.offset)?;
    Some(Arc::new(FileSymbols {
        symbols: elf::data_symbols(&elf),
        bias,
    }))
}

/// Each thread's user stack pointer, from /proc/PID/task/TID/syscall (its last-but-one field
/// while the thread is in a system call, as a blocked waiter is).
fn thread_stack_pointers(pid: u32) -> Vec<u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("syscall")).ok())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sp = fields.get(fields.len().checked_sub(2)?)?;
            u64::from_str_radix(sp.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_LOCK: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

    #[test]
    fn names_statics_heap_and_stack() {
        let maps = ProcessMaps::snapshot(std::process::id()).unwrap();
        let mut namer = LockNamer::new(&maps);
        let lock = namer.name(&raw const TEST_LOCK as u64);
        assert_eq!(lock.kind, "symbol");
        assert!(lock.name.ends_with("tests::TEST_LOCK"), "{lock:?}");
        let inside = namer.name(&raw const TEST_LOCK as u64 + 4);
        assert!(inside.name.ends_with("TEST_LOCK+0x4"), "{inside:?}");

        let boxed = Box::new([0u64; 4096]);
        assert_eq!(namer.name(boxed.as_ptr() as u64).kind, "heap");
        assert_eq!(namer.name(0x10).kind, "unknown");
    }
}
