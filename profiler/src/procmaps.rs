//! The target's executable mappings, snapshotted from `/proc/PID/maps` and refreshed while
//! capturing (libraries mapped later, by dlopen, appear within a refresh).
//!
//! Each mapped file is opened once through `/proc/PID/map_files/` (which works across mount
//! namespaces, for containerised targets) and held open, so symbolization still works after the
//! target has exited or unmapped the file.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

/// A file mapped by the target, held open.
#[derive(Debug)]
pub struct MappedFile {
    /// The path as the target sees it (inside its mount namespace).
    pub path: PathBuf,
    pub file: File,
    /// (device, inode) from the maps line: the file's identity.
    pub id: (u64, u64),
}

impl MappedFile {
    /// A path to the open file that works from our namespace, as long as we hold it.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The file's base name, for `module+0xoffset` frames.
    pub fn module(&self) -> &str {
        self.path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("[unknown]")
    }
}

/// What backs an executable mapping.
#[derive(Debug, Clone)]
pub enum Backing {
    File(Arc<MappedFile>),
    /// `[vdso]`, identical in every process of one kernel.
    Vdso,
    /// Anonymous or otherwise unreadable executable memory (JIT code, a deleted file).
    Other(String),
}

/// One executable mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub backing: Backing,
}

impl Mapping {
    /// The file offset of `addr`, which must lie in the mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    pub path: String,
}

/// Parses `/proc/PID/maps` text; lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<MapsLine> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.to_string();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let dev = fields.next()?.to_string();
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

/// The target's executable mappings, plus every file it has mapped since we started watching.
#[derive(Debug)]
pub struct ProcessMaps {
    pid: u32,
    /// Sorted by start address.
    mappings: Vec<Mapping>,
    /// Mappings seen earlier but gone now, kept so that their samples still resolve.
    retired: Vec<Mapping>,
    /// By (device, inode): one open file per distinct binary.
    files: HashMap<(u64, u64), Arc<MappedFile>>,
    /// Every mapping, executable or not, as of the last refresh (to place data addresses).
    all: Vec<MapsLine>,
}

impl ProcessMaps {
    /// Reads the target's maps now.
    pub fn snapshot(pid: u32) -> io::Result<Self> {
        let mut maps = Self {
            pid,
            mappings: Vec::new(),
            retired: Vec::new(),
            files: HashMap::new(),
            all: Vec::new(),
        };
        maps.refresh()?;
        Ok(maps)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Re-reads the maps. Returns true if the set of executable mappings changed.
    pub fn refresh(&mut self) -> io::Result<bool> {
        let text = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))?;
        let mut mappings = Vec::new();
        self.all = parse_maps(&text);
        for line in self.all.clone() {
            if !line.perms.contains('x') {
                continue;
            }
            let backing = self.backing(&line);
            mappings.push(Mapping {
                start: line.start,
                end: line.end,
                offset: line.offset,
                backing,
            });
        }
        mappings.sort_by_key(|m| m.start);
        let changed = mappings.len() != self.mappings.len()
            || mappings
                .iter()
                .zip(&self.mappings)
                .any(|(a, b)| a.start != b.start || a.end != b.end || a.offset != b.offset);
        if changed {
            let old = std::mem::replace(&mut self.mappings, mappings);
            for gone in old {
                if !self
                    .mappings
                    .iter()
                    .any(|m| m.start == gone.start && m.end == gone.end)
                {
                    self.retired.push(gone);
                }
            }
        }
        Ok(changed)
    }

    fn backing(&mut self, line: &MapsLine) -> Backing {
        match line.path.as_str() {
            "[vdso]" => return Backing::Vdso,
            "" => return Backing::Other("[anon]".into()),
            path if path.starts_with('[') => return Backing::Other(path.into()),
            _ => {}
        }
        // (dev, inode) from the maps line identifies the file even across namespaces.
        let key = (dev_number(&line.dev), line.inode);
        if let Some(file) = self.files.get(&key) {
            return Backing::File(file.clone());
        }
        let map_file = format!(
            "/proc/{}/map_files/{:x}-{:x}",
            self.pid, line.start, line.end
        );
        let opened = File::open(&map_file).or_else(|_| {
            let rooted = Path::new("/proc")
                .join(self.pid.to_string())
                .join("root")
                .join(line.path.trim_start_matches('/'));
            File::open(rooted)
        });
        match opened {
            Ok(file) if file.metadata().is_ok_and(|m| m.ino() == line.inode) => {
                let file = Arc::new(MappedFile {
                    path: PathBuf::from(&line.path),
                    file,
                    id: key,
                });
                self.files.insert(key, file.clone());
                Backing::File(file)
            }
            _ => Backing::Other(line.path.clone()),
        }
    }

    /// The mapping that holds `addr`, current ones first, then ones since unmapped.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let current = self.mappings.partition_point(|m| m.start <= addr);
        current
            .checked_sub(1)
            .map(|i| &self.mappings[i])
            .filter(|m| addr < m.end)
            .or_else(|| {
                self.retired
                    .iter()
                    .rev()
                    .find(|m| m.start <= addr && addr < m.end)
            })
    }

    /// Current executable mappings, sorted by start address.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Every mapping as of the last refresh.
    pub fn all_lines(&self) -> &[MapsLine] {
        &self.all
    }

    /// The open file with this (device, inode), if the target maps it executable.
    pub fn file(&self, id: (u64, u64)) -> Option<&Arc<MappedFile>> {
        self.files.get(&id)
    }

    /// The target's main executable, if it is mapped.
    pub fn main_binary(&self) -> Option<Arc<MappedFile>> {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok()?;
        self.files.values().find(|f| f.path == exe).cloned()
    }
}

/// "fd:01" → the kernel's dev_t encoding, good enough as a map key.
pub fn dev_number(dev: &str) -> u64 {
    let (major, minor) = dev.split_once(':').unwrap_or((dev, "0"));
    let major = u64::from_str_radix(major, 16).unwrap_or(0);
    let minor = u64::from_str_radix(minor, 16).unwrap_or(0);
    (major << 20) | minor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let text = "\
55d0c0a00000-55d0c0a01000 r-xp 00001000 fd:01 1234                       /usr/bin/fixture
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0 
7fff5c1fe000-7fff5c200000 r-xp 00000000 00:00 0                          [vdso]
7f1c2b000000-7f1c2b100000 r-xp 00028000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)
garbage line
";
        let lines = parse_maps(text);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].start, 0x55d0c0a00000);
        assert_eq!(lines[0].offset, 0x1000);
        assert_eq!(lines[0].path, "/usr/bin/fixture");
        assert_eq!(lines[1].path, "");
        assert_eq!(lines[2].path, "[vdso]");
        assert_eq!(lines[3].inode, 99);
        assert_eq!(
            lines[3].path,
            "/usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)"
        );
    }

    #[test]
    fn finds_own_mappings_and_file_offsets() {
        let maps = ProcessMaps::snapshot(std::process::id()).expect("own maps");
        let here = finds_own_mappings_and_file_offsets as *const () as u64;
        let mapping = maps.find(here).expect("this function is mapped");
        let Backing::File(file) = &mapping.backing else {
            panic!("test binary is file-backed: {:?}", mapping.backing);
        };
        assert_eq!(file.path, std::env::current_exe().unwrap());
        assert!(mapping.file_offset(here) >= mapping.offset);
        assert!(maps.find(0x10).is_none());
    }
}
