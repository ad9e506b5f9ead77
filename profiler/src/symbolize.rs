//! Turns addresses into frame names with blazesym: user frames from the target's ELF files
//! (symbols, and DWARF where present, with inlined functions as frames of their own and Rust and
//! C++ names demangled), kernel frames from kallsyms. A frame that cannot be named becomes
//! `module+0xoffset`; none is dropped.

use std::{collections::HashMap, sync::Arc};

use blazesym::{
    MaybeDefault, Pid,
    symbolize::{
        Input, Symbolized, Symbolizer as Blaze,
        source::{Elf, Kernel, Process, Source},
    },
};

use crate::procmaps::{Backing, MappedFile, ProcessMaps, parse_maps};

/// Suffix marking kernel frames, as `stackcollapse-perf --kernel` does.
pub const KERNEL_SUFFIX: &str = "_[k]";

/// The names of one address: the function, then any functions inlined into it at that address
/// (outermost first), so a stack reads root to leaf.
pub type Names = Vec<String>;

type FileBatch = (Arc<MappedFile>, Vec<u64>, Vec<u64>);

pub struct Symbolizer {
    blaze: Blaze,
    /// Start of our own `[vdso]`: every process of one kernel maps the same vdso image.
    own_vdso: Option<u64>,
    /// JIT-compiled BPF programs (ours among them), as kallsyms listed them while loaded.
    bpf: BpfSymbols,
}

/// The `[bpf]` entries of `/proc/kallsyms` (`bpf_prog_<tag>_<name>`, trampolines, dispatchers):
/// kallsyms lists a program only while it is loaded, and blazesym's kernel source names
/// addresses past every vmlinux symbol after the last one (`__stop_runtime_ptr_…`). Taken
/// while our programs are loaded, so samples inside them are named as ours.
#[derive(Debug, Clone, Default)]
pub struct BpfSymbols {
    /// (start, name), sorted by start.
    symbols: Vec<(u64, String)>,
}

/// Longest a JIT image is taken to be past its symbol when no other symbol bounds it.
const MAX_BPF_IMAGE: u64 = 256 * 1024;

impl BpfSymbols {
    /// Reads them from the live kernel; empty when kallsyms hides addresses (not root, or
    /// `net.core.bpf_jit_kallsyms` off).
    pub fn snapshot() -> Self {
        std::fs::read_to_string("/proc/kallsyms")
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    fn parse(kallsyms: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = kallsyms
            .lines()
            .filter(|line| line.ends_with("[bpf]"))
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
                let name = fields.nth(1)?;
                (addr != 0).then(|| (addr, name.to_string()))
            })
            .collect();
        symbols.sort();
        Self { symbols }
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The program `addr` lies in: the nearest symbol at or below it, bounded by the next one.
    pub fn find(&self, addr: u64) -> Option<&str> {
        let at = self.symbols.partition_point(|(start, _)| *start <= addr);
        let (start, name) = self.symbols.get(at.checked_sub(1)?)?;
        let end = self
            .symbols
            .get(at)
            .map_or(start + MAX_BPF_IMAGE, |(next, _)| *next);
        (addr < end.min(start + MAX_BPF_IMAGE)).then_some(name.as_str())
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        let blaze = Blaze::builder()
            .enable_inlined_fns(true)
            .enable_code_info(false)
            .enable_demangling(true)
            .build();
        let own_vdso = std::fs::read_to_string("/proc/self/maps")
            .ok()
            .and_then(|text| {
                parse_maps(&text)
                    .into_iter()
                    .find(|line| line.path == "[vdso]")
                    .map(|line| line.start)
            });
        Self {
            blaze,
            own_vdso,
            bpf: BpfSymbols::default(),
        }
    }

    /// Names kernel addresses inside BPF programs from `bpf` first.
    pub fn with_bpf(mut self, bpf: BpfSymbols) -> Self {
        self.bpf = bpf;
        self
    }

    /// Names user-space addresses of the process whose mappings are `maps`.
    pub fn user(&self, maps: &ProcessMaps, addrs: &[u64]) -> HashMap<u64, Names> {
        // Per file: the file, the addresses, and their file offsets.
        let mut by_file: HashMap<*const MappedFile, FileBatch> = HashMap::new();
        let mut vdso = Vec::new();
        let mut names = HashMap::with_capacity(addrs.len());
        for &addr in addrs {
            match maps.find(addr) {
                Some(mapping) => match &mapping.backing {
                    Backing::File(file) => {
                        let entry = by_file
                            .entry(Arc::as_ptr(file))
                            .or_insert_with(|| (file.clone(), Vec::new(), Vec::new()));
                        entry.1.push(addr);
                        entry.2.push(mapping.file_offset(addr));
                    }
                    Backing::Vdso => vdso.push((addr, addr - mapping.start)),
                    Backing::Other(what) => {
                        names.insert(addr, vec![format!("{what}+{:#x}", addr - mapping.start)]);
                    }
                },
                None => {
                    names.insert(addr, vec![format!("[unknown]+{addr:#x}")]);
                }
            }
        }
        for (file, addrs, offsets) in by_file.into_values() {
            let src = Source::Elf(Elf::new(file.fd_path()));
            let resolved = self.blaze.symbolize(&src, Input::FileOffset(&offsets));
            for (i, addr) in addrs.into_iter().enumerate() {
                let named = resolved
                    .as_ref()
                    .ok()
                    .and_then(|syms| syms.get(i))
                    .and_then(names_of);
                let fallback = || vec![format!("{}+{:#x}", file.module(), offsets[i])];
                names.insert(addr, named.unwrap_or_else(fallback));
            }
        }
        self.vdso(&vdso, &mut names);
        names
    }

    fn vdso(&self, addrs: &[(u64, u64)], names: &mut HashMap<u64, Names>) {
        if addrs.is_empty() {
            return;
        }
        let resolved = self.own_vdso.and_then(|base| {
            let ours: Vec<u64> = addrs.iter().map(|(_, offset)| base + offset).collect();
            let mut src = Process::new(Pid::Slf);
            src.debug_syms = false;
            src.perf_map = false;
            self.blaze
                .symbolize(&Source::Process(src), Input::AbsAddr(&ours))
                .ok()
        });
        for (i, (addr, offset)) in addrs.iter().enumerate() {
            let named = resolved.as_ref().and_then(|s| s.get(i)).and_then(names_of);
            names.insert(
                *addr,
                named.unwrap_or_else(|| vec![format!("[vdso]+{offset:#x}")]),
            );
        }
    }

    /// Names kernel addresses, each marked with [`KERNEL_SUFFIX`].
    pub fn kernel(&self, addrs: &[u64]) -> HashMap<u64, Names> {
        let src = Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            kallsyms: MaybeDefault::Default,
            debug_syms: false,
            ..Default::default()
        });
        let resolved = self.blaze.symbolize(&src, Input::AbsAddr(addrs)).ok();
        addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let names = match self.bpf.find(addr) {
                    Some(program) => vec![program.to_string()],
                    None => resolved
                        .as_ref()
                        .and_then(|s| s.get(i))
                        .and_then(names_of)
                        .unwrap_or_else(|| vec![format!("[kernel]+{addr:#x}")]),
                };
                (
                    addr,
                    names
                        .into_iter()
                        .map(|name| format!("{name}{KERNEL_SUFFIX}"))
                        .collect(),
                )
            })
            .collect()
    }
}

fn names_of(sym: &Symbolized<'_>) -> Option<Names> {
    let sym = sym.as_sym()?;
    let mut names = Vec::with_capacity(1 + sym.inlined.len());
    names.push(sym.name.to_string());
    names.extend(sym.inlined.iter().map(|f| f.name.to_string()));
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    #[unsafe(no_mangle)]
    extern "C" fn profiler_symbolize_test_marker() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn names_own_function_and_unknown_addresses() {
        let maps = ProcessMaps::snapshot(std::process::id()).expect("own maps");
        let marker = profiler_symbolize_test_marker as *const () as u64;
        let names = Symbolizer::new().user(&maps, &[marker + 1, 0x10]);
        assert_eq!(names[&(marker + 1)], vec!["profiler_symbolize_test_marker"]);
        assert_eq!(names[&0x10], vec!["[unknown]+0x10"]);
    }

    #[test]
    fn unnamed_file_addresses_keep_module_and_offset() {
        let maps = ProcessMaps::snapshot(std::process::id()).expect("own maps");
        // The last byte of the executable mapping is padding past every symbol, or at worst
        // inside one; either way the frame must carry a name, never vanish.
        let exe = maps
            .mappings()
            .iter()
            .find(|m| matches!(&m.backing, Backing::File(f) if f.path == std::env::current_exe().unwrap()))
            .expect("exe mapped");
        let names = Symbolizer::new().user(&maps, &[exe.end - 1]);
        assert_eq!(names[&(exe.end - 1)].len(), 1);
        assert!(!names[&(exe.end - 1)][0].is_empty());
    }

    #[test]
    fn bpf_programs_are_named_from_kallsyms() {
        let kallsyms = "\
ffffffff81000000 T _stext
ffffffffa0001000 t bpf_prog_6deef7357e7b4530_cpu_sample\t[bpf]
ffffffffa0001800 t bpf_prog_0123456789abcdef_offcpu_switch\t[bpf]
ffffffffc0000000 t some_module_fn\t[ext4]
";
        let bpf = BpfSymbols::parse(kallsyms);
        assert_eq!(bpf.len(), 2);
        assert_eq!(
            bpf.find(0xffff_ffff_a000_1010),
            Some("bpf_prog_6deef7357e7b4530_cpu_sample")
        );
        assert_eq!(
            bpf.find(0xffff_ffff_a000_1900),
            Some("bpf_prog_0123456789abcdef_offcpu_switch")
        );
        assert_eq!(bpf.find(0xffff_ffff_a000_0fff), None);
        assert_eq!(bpf.find(0xffff_ffff_a000_1800 + MAX_BPF_IMAGE), None);
        let names = Symbolizer::new()
            .with_bpf(bpf)
            .kernel(&[0xffff_ffff_a000_1010]);
        assert_eq!(
            names[&0xffff_ffff_a000_1010],
            vec![format!(
                "bpf_prog_6deef7357e7b4530_cpu_sample{KERNEL_SUFFIX}"
            )]
        );
    }

    #[test]
    fn kernel_frames_are_marked() {
        let names = Symbolizer::new().kernel(&[0xffff_ffff_0000_0000]);
        assert!(names[&0xffff_ffff_0000_0000][0].ends_with(KERNEL_SUFFIX));
    }
}
