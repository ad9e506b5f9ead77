//! Compiles a binary's call frame information (`.eh_frame`, and `.debug_frame` where present)
//! into the flat, sorted [`UnwindRow`] table the kernel walk binary-searches.
//!
//! Only what the walk needs survives: how to find the CFA (rsp or rbp plus an offset, or the
//! PLT expression), and where the caller's rbp was saved. The return address is always at
//! CFA-8 on x86-64; a row that says otherwise is marked unsupported.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{Object, ObjectSection};
use profiler_common::unwind::{UnwindRow, cfa, rbp};

type Reader<'a> = EndianSlice<'a, LittleEndian>;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("not an ELF file we can read")]
    Elf(#[source] object::Error),
    #[error("malformed call frame information")]
    Cfi(#[source] gimli::Error),
}

/// A compiled table and what went into it.
#[derive(Debug, Default, Clone)]
pub struct Table {
    /// Sorted by `pc`; each row applies up to the next row's `pc`.
    pub rows: Vec<UnwindRow>,
    /// FDEs (functions) described.
    pub functions: usize,
    /// Rows whose rule the kernel walk cannot evaluate.
    pub unsupported: usize,
}

impl Table {
    /// The row that applies at `pc` (an ELF address), as the kernel's binary search finds it.
    pub fn lookup(&self, pc: u64) -> Option<&UnwindRow> {
        let after = self.rows.partition_point(|row| row.pc <= pc);
        after.checked_sub(1).map(|i| &self.rows[i])
    }
}

/// The rule of one address range, before rows are merged.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    end: u64,
    row: UnwindRow,
}

/// Compiles the CFI of the ELF image `data`. A binary without CFI gets an empty table.
pub fn compile(data: &[u8]) -> Result<Table, TableError> {
    let file = object::File::parse(data).map_err(TableError::Elf)?;
    let mut bases = BaseAddresses::default();
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let mut spans = Vec::new();
    let mut functions = 0;
    let mut ctx = Box::new(UnwindContext::new());
    if let Some(section) = file.section_by_name(".eh_frame")
        && let Ok(bytes) = section.data()
    {
        let eh = EhFrame::new(bytes, LittleEndian);
        let bases = bases.clone().set_eh_frame(section.address());
        functions += collect(&eh, &bases, &mut ctx, &mut spans)?;
    }
    if let Some(section) = file.section_by_name(".debug_frame")
        && let Ok(bytes) = section.data()
    {
        let mut debug = DebugFrame::new(bytes, LittleEndian);
        debug.set_address_size(8);
        // .eh_frame wins where both describe a function: it is what the runtime itself uses.
        let mut extra = Vec::new();
        functions += collect(&debug, &bases, &mut ctx, &mut extra)?;
        let covered = coverage(&spans);
        spans.extend(
            extra
                .into_iter()
                .filter(|s| !overlaps(&covered, s.start, s.end)),
        );
    }
    Ok(merge(spans, functions))
}

/// Appends the spans of every FDE in `section`; returns how many FDEs there were.
fn collect<'a, S>(
    section: &S,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    spans: &mut Vec<Span>,
) -> Result<usize, TableError>
where
    S: UnwindSection<Reader<'a>>,
{
    let mut fdes = 0;
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().map_err(TableError::Cfi)? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        // One bad FDE (a CIE we cannot parse) should not cost the whole binary its table.
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        fdes += 1;
        let Ok(mut rows) = fde.rows(section, bases, ctx) else {
            continue;
        };
        while let Ok(Some(row)) = rows.next_row() {
            if row.start_address() >= row.end_address() {
                continue;
            }
            spans.push(Span {
                start: row.start_address(),
                end: row.end_address(),
                row: convert(section, row),
            });
        }
    }
    Ok(fdes)
}

fn convert<'a, S>(section: &S, row: &gimli::UnwindTableRow<usize>) -> UnwindRow
where
    S: UnwindSection<Reader<'a>>,
{
    let mut out = UnwindRow::default();
    match row.register(X86_64::RA) {
        RegisterRule::Undefined => {
            out.cfa_type = cfa::END;
            return out;
        }
        RegisterRule::Offset(-8) => {}
        _ => {
            out.cfa_type = cfa::UNSUPPORTED;
            return out;
        }
    }
    match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i32::try_from(*offset) else {
                out.cfa_type = cfa::UNSUPPORTED;
                return out;
            };
            out.cfa_offset = offset;
            out.cfa_type = match *register {
                X86_64::RSP => cfa::RSP,
                X86_64::RBP => cfa::RBP,
                _ => cfa::UNSUPPORTED,
            };
        }
        CfaRule::Expression(expr) => {
            match expr.get(section).ok().and_then(|e| plt_rule(e.0.slice())) {
                Some((offset, threshold)) => {
                    out.cfa_type = cfa::PLT;
                    out.cfa_offset = offset;
                    out.rbp_offset = threshold;
                }
                None => out.cfa_type = cfa::UNSUPPORTED,
            }
        }
    }
    if out.cfa_type == cfa::PLT {
        return out;
    }
    match row.register(X86_64::RBP) {
        // An unmentioned callee-saved register keeps its value.
        RegisterRule::Undefined | RegisterRule::SameValue => out.rbp_type = rbp::SAME,
        RegisterRule::Offset(offset) => match i16::try_from(offset) {
            Ok(offset) => {
                out.rbp_type = rbp::OFFSET;
                out.rbp_offset = offset;
            }
            Err(_) => out.rbp_type = rbp::UNKNOWN,
        },
        _ => out.rbp_type = rbp::UNKNOWN,
    }
    out
}

/// Recognises the CFA expression binutils emits for PLT entries:
/// `rsp + N + ((rip & 15) >= K) << 3`, i.e. `DW_OP_breg7 N; DW_OP_breg16 0; DW_OP_lit15;
/// DW_OP_and; DW_OP_litK; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`.
fn plt_rule(expr: &[u8]) -> Option<(i32, i16)> {
    const DW_OP_BREG7: u8 = 0x77;
    const DW_OP_BREG16: u8 = 0x80;
    const DW_OP_LIT0: u8 = 0x30;
    const TAIL: [u8; 4] = [0x2a, 0x33, 0x24, 0x22]; // ge, lit3, shl, plus
    match expr {
        [DW_OP_BREG7, n, DW_OP_BREG16, 0, 0x3f, 0x1a, lit, tail @ ..]
            if *n < 0x40 && (DW_OP_LIT0..DW_OP_LIT0 + 32).contains(lit) && tail == TAIL =>
        {
            Some((i32::from(*n), i16::from(lit - DW_OP_LIT0)))
        }
        _ => None,
    }
}

/// Sorted, merged ranges the spans cover.
fn coverage(spans: &[Span]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = spans.iter().map(|s| (s.start, s.end)).collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn overlaps(covered: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = covered.partition_point(|&(_, e)| e <= start);
    covered.get(i).is_some_and(|&(s, _)| s < end)
}

/// Sorts spans into rows: a `NONE` row closes every gap between functions, and consecutive
/// rows with the same rule collapse into one.
fn merge(mut spans: Vec<Span>, functions: usize) -> Table {
    spans.sort_by_key(|s| s.start);
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(spans.len() + spans.len() / 4);
    let mut end = 0;
    let same_rule = |a: &UnwindRow, b: &UnwindRow| {
        a.cfa_type == b.cfa_type
            && a.cfa_offset == b.cfa_offset
            && a.rbp_type == b.rbp_type
            && a.rbp_offset == b.rbp_offset
    };
    let push = |rows: &mut Vec<UnwindRow>, row: UnwindRow| match rows.last_mut() {
        Some(last) if last.pc == row.pc => *last = row,
        Some(last) if same_rule(last, &row) => {}
        _ => rows.push(row),
    };
    let mut unsupported = 0;
    for span in &spans {
        if !rows.is_empty() && span.start > end {
            push(
                &mut rows,
                UnwindRow {
                    pc: end,
                    ..UnwindRow::default()
                },
            );
        }
        if span.row.cfa_type == cfa::UNSUPPORTED {
            unsupported += 1;
        }
        push(
            &mut rows,
            UnwindRow {
                pc: span.start,
                ..span.row
            },
        );
        end = end.max(span.end);
    }
    if !rows.is_empty() {
        push(
            &mut rows,
            UnwindRow {
                pc: end,
                ..UnwindRow::default()
            },
        );
    }
    Table {
        rows,
        functions,
        unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u64, end: u64, cfa_offset: i32) -> Span {
        Span {
            start,
            end,
            row: UnwindRow {
                pc: start,
                cfa_offset,
                cfa_type: cfa::RSP,
                ..UnwindRow::default()
            },
        }
    }

    #[test]
    fn gaps_are_closed_and_equal_rules_merge() {
        let table = merge(
            vec![
                span(0x20, 0x30, 8),
                span(0x10, 0x18, 8),
                span(0x18, 0x20, 8),
                span(0x14, 0x18, 16),
            ],
            3,
        );
        let pcs: Vec<(u64, u8, i32)> = table
            .rows
            .iter()
            .map(|r| (r.pc, r.cfa_type, r.cfa_offset))
            .collect();
        assert_eq!(
            pcs,
            vec![
                (0x10, cfa::RSP, 8),
                (0x14, cfa::RSP, 16),
                (0x18, cfa::RSP, 8),
                (0x30, cfa::NONE, 0),
            ]
        );
        assert_eq!(table.lookup(0x1f).unwrap().cfa_offset, 8);
        assert_eq!(table.lookup(0x15).unwrap().cfa_offset, 16);
        assert_eq!(table.lookup(0x40).unwrap().cfa_type, cfa::NONE);
        assert!(table.lookup(0x0f).is_none());
    }

    #[test]
    fn recognises_plt_expressions() {
        let plt = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(plt_rule(&plt), Some((8, 11)));
        let mut other = plt;
        other[8] = 0x34; // lit4 instead of lit3
        assert_eq!(plt_rule(&other), None);
        assert_eq!(plt_rule(&[0x77, 0x08]), None);
    }

    #[test]
    fn debug_frame_fills_only_uncovered_ranges() {
        let covered = coverage(&[
            span(0x10, 0x20, 8),
            span(0x20, 0x28, 8),
            span(0x40, 0x50, 8),
        ]);
        assert_eq!(covered, vec![(0x10, 0x28), (0x40, 0x50)]);
        assert!(overlaps(&covered, 0x00, 0x11));
        assert!(overlaps(&covered, 0x27, 0x30));
        assert!(!overlaps(&covered, 0x28, 0x40));
        assert!(!overlaps(&covered, 0x50, 0x60));
    }
}
