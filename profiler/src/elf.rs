//! What several modules need from ELF files: how file offsets map to ELF addresses (to relocate
//! runtime addresses back into a file), and the file's data symbols.

use object::{Object, ObjectSegment, ObjectSymbol, SegmentFlags, SymbolKind};

/// A PT_LOAD segment: file range and ELF address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub executable: bool,
}

pub fn segments(file: &object::File<'_>) -> Vec<Segment> {
    const PF_X: u32 = 1;
    file.segments()
        .map(|s| {
            let (offset, filesz) = s.file_range();
            let executable =
                matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0);
            Segment {
                offset,
                vaddr: s.address(),
                filesz,
                executable,
            }
        })
        .collect()
}

/// Runtime address minus ELF address for a mapping of `segment` that starts at file offset
/// `offset`: `start` holds file offset `offset`, at ELF address vaddr + (offset - s.offset).
fn bias(segment: &Segment, start: u64, offset: u64) -> u64 {
    start
        .wrapping_sub(segment.vaddr)
        .wrapping_sub(offset)
        .wrapping_add(segment.offset)
}

/// The load bias of an executable mapping `[start, end)` at file offset `offset`. A file page
/// can hold the end of one segment and the start of the next, so the segment is the executable
/// one whose file range meets the mapping's.
pub fn text_bias(segments: &[Segment], start: u64, end: u64, offset: u64) -> Option<u64> {
    let file_end = offset + (end - start);
    segments
        .iter()
        .find(|s| {
            s.executable && s.filesz > 0 && s.offset < file_end && offset < s.offset + s.filesz
        })
        .map(|s| bias(s, start, offset))
}

/// A sized data symbol (a global or static variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSymbol {
    pub address: u64,
    pub size: u64,
    pub name: String,
}

/// The file's data symbols sorted by address, names demangled (Rust; C names as they are).
pub fn data_symbols(file: &object::File<'_>) -> Vec<DataSymbol> {
    let mut symbols: Vec<DataSymbol> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Data && s.size() > 0)
        .filter_map(|s| {
            let raw = s.name().ok()?;
            let name = rustc_demangle::try_demangle(raw)
                .map(|d| format!("{d:#}"))
                .unwrap_or_else(|_| raw.to_string());
            Some(DataSymbol {
                address: s.address(),
                size: s.size(),
                name,
            })
        })
        .collect();
    symbols.sort_by_key(|s| s.address);
    symbols
}

/// The symbol whose extent holds `address`.
pub fn find_symbol(symbols: &[DataSymbol], address: u64) -> Option<&DataSymbol> {
    let after = symbols.partition_point(|s| s.address <= address);
    symbols[..after]
        .iter()
        .rev()
        .take(16)
        .find(|s| address < s.address + s.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, vaddr: u64, filesz: u64, executable: bool) -> Segment {
        Segment {
            offset,
            vaddr,
            filesz,
            executable,
        }
    }

    #[test]
    fn text_bias_of_pie_fixed_and_unaligned_binaries() {
        // gcc's PIE: segments page aligned, text at file offset 0x1000 = ELF address 0x1000.
        let pie = [seg(0, 0, 0x600, false), seg(0x1000, 0x1000, 0x2345, true)];
        assert_eq!(
            text_bias(&pie, 0x5555_0000_1000, 0x5555_0000_4000, 0x1000),
            Some(0x5555_0000_0000)
        );
        // A fixed-address executable is not relocated.
        let fixed = [seg(0x1000, 0x401000, 0x5000, true)];
        assert_eq!(text_bias(&fixed, 0x401000, 0x406000, 0x1000), Some(0));
        // rustc/lld: text begins mid-page, in the page where the read-only segment ends, and
        // that page is mapped executable from offset 0x2e0000.
        let rust = [
            seg(0, 0, 0x2e0184, false),
            seg(0x2e0190, 0x2e1190, 0x5e93a0, true),
        ];
        let start = 0x5600_002e_1000;
        let bias = text_bias(&rust, start, start + 0x5ea000, 0x2e0000).unwrap();
        // The first instruction, at ELF address 0x2e1190, must map to file offset 0x2e0190.
        assert_eq!(0x2e1190 + bias - start + 0x2e0000, 0x2e0190);
        assert_eq!(text_bias(&pie, 0x1000, 0x2000, 0x9000), None);
    }

    #[test]
    fn finds_symbols_by_extent() {
        let symbols = vec![
            DataSymbol {
                address: 0x100,
                size: 40,
                name: "g_hot_lock".into(),
            },
            DataSymbol {
                address: 0x200,
                size: 8,
                name: "counter".into(),
            },
        ];
        assert_eq!(find_symbol(&symbols, 0x100).unwrap().name, "g_hot_lock");
        assert_eq!(find_symbol(&symbols, 0x127).unwrap().name, "g_hot_lock");
        assert!(find_symbol(&symbols, 0x128).is_none());
        assert!(find_symbol(&symbols, 0xff).is_none());
        assert_eq!(find_symbol(&symbols, 0x207).unwrap().name, "counter");
    }

    #[inline(never)]
    fn data_address() -> u64 {
        static MARKER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(7);
        &raw const MARKER as u64
    }

    #[test]
    fn names_own_static_through_bias() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let symbols = data_symbols(&file);
        let segments = segments(&file);
        let addr = data_address();
        // Every segment moves by the one bias the executable mapping shows.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let text = crate::procmaps::parse_maps(&maps)
            .into_iter()
            .find(|l| l.perms.contains('x') && std::path::Path::new(&l.path) == exe)
            .unwrap();
        let bias = text_bias(&segments, text.start, text.end, text.offset).unwrap();
        let sym = find_symbol(&symbols, addr - bias).expect("static found");
        assert!(sym.name.ends_with("data_address::MARKER"), "{}", sym.name);
    }
}
