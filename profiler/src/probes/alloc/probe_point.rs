//! Where to put a uprobe so the kernel can emulate the probed instruction instead of
//! single-stepping it out of line: on x86-64 it emulates `push reg`, `call`, `jmp` and `jcc`,
//! and a single-step costs several microseconds more per hit (glibc's `free` begins with
//! `test %rdi,%rdi`: 4.6 µs a call probed at its entry, about 1 µs probed at the `je` after it).
//!
//! We skip at most a few leading instructions, and only ones we decode fully that neither
//! branch nor write a register the probe needs (the arguments it reads, and `rsp` when a return
//! probe shares the point and must find the return address on top of the stack). Anything we
//! do not recognise keeps the probe at the entry.

/// x86-64 register numbers as ModRM encodes them (with REX extensions, 8 to 15).
pub mod reg {
    pub const RCX: u8 = 1;
    pub const RDX: u8 = 2;
    pub const RSP: u8 = 4;
    pub const RSI: u8 = 6;
    pub const RDI: u8 = 7;
}

/// Instructions and bytes looked at, at most.
const MAX_SKIPPED: usize = 4;

/// The offset into `code` (a function's first bytes) at which to probe it.
pub fn fast_offset(code: &[u8], preserve: &[u8]) -> u64 {
    let mut offset = 0;
    for _ in 0..=MAX_SKIPPED {
        let Some(rest) = code.get(offset..) else {
            return 0;
        };
        if emulated(rest) {
            return offset as u64;
        }
        match skippable(rest) {
            Some((len, writes)) if !writes.iter().flatten().any(|r| preserve.contains(r)) => {
                offset += len;
            }
            _ => return 0,
        }
    }
    0
}

/// Instructions the kernel's x86 uprobes emulate.
fn emulated(code: &[u8]) -> bool {
    match code {
        [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..] => true, // push reg
        [0x70..=0x7f, _, ..] => true,                        // jcc rel8
        [0x0f, 0x80..=0x8f, _, _, _, _, ..] => true,         // jcc rel32
        [0xe8 | 0xe9, _, _, _, _, ..] => true,               // call/jmp rel32
        [0xeb, _, ..] => true,                               // jmp rel8
        _ => false,
    }
}

/// The length of a simple, non-branching instruction at the start of `code`, and the registers
/// it may write (None where it writes only flags or memory).
fn skippable(code: &[u8]) -> Option<(usize, [Option<u8>; 1])> {
    if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        return Some((4, [None])); // endbr64
    }
    let (rex, rest) = match code.first()? {
        0x40..=0x4f => (code[0], &code[1..]),
        _ => (0, code),
    };
    let rex_len = usize::from(rex != 0);
    let r_ext = (rex >> 2) & 1;
    let b_ext = rex & 1;
    let (&opcode, rest) = rest.split_first()?;
    let (modrm_len, mod_, reg_field, rm) = modrm(rest)?;
    let reg_num = reg_field | (r_ext << 3);
    let rm_reg = (mod_ == 3).then_some(rm | (b_ext << 3));
    let (imm, writes) = match opcode {
        // test r/m, r; cmp r/m, r; cmp r, r/m: flags only.
        0x85 | 0x39 | 0x3b => (0, None),
        // mov r/m, r: writes the r/m register (or memory).
        0x89 => (0, rm_reg),
        // mov r, r/m; lea r, m: write the reg field.
        0x8b | 0x8d => (0, Some(reg_num)),
        // group 1 with imm8 / imm32: /7 is cmp (flags), the others write r/m.
        0x83 | 0x81 => {
            let imm = if opcode == 0x83 { 1 } else { 4 };
            (imm, if reg_field == 7 { None } else { rm_reg })
        }
        _ => return None,
    };
    // A memory operand we cannot see through (rsp-relative stores are fine) writes no register.
    Some((rex_len + 1 + modrm_len + imm, [writes]))
}

/// Decodes a ModRM (and any SIB and displacement): (bytes, mod, reg, rm).
fn modrm(code: &[u8]) -> Option<(usize, u8, u8, u8)> {
    let &byte = code.first()?;
    let mod_ = byte >> 6;
    let reg = (byte >> 3) & 7;
    let rm = byte & 7;
    let mut len = 1;
    if mod_ != 3 && rm == 4 {
        let sib = *code.get(1)?;
        len += 1;
        if mod_ == 0 && sib & 7 == 5 {
            len += 4;
        }
    }
    len += match (mod_, rm) {
        (0, 5) => 4, // rip-relative
        (1, _) => 1,
        (2, _) => 4,
        _ => 0,
    };
    (code.len() >= len).then_some((len, mod_, reg, rm))
}

#[cfg(test)]
mod tests {
    use super::{reg::*, *};

    #[test]
    fn glibc_free_probes_at_its_je() {
        // test %rdi,%rdi; je rel32; push %rbp
        let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
        assert_eq!(fast_offset(&free, &[RDI]), 3);
    }

    #[test]
    fn push_at_entry_stays_at_entry() {
        let malloc = [0x41, 0x54, 0x55, 0x53];
        assert_eq!(fast_offset(&malloc, &[RDI, RSP]), 0);
    }

    #[test]
    fn jemalloc_malloc_skips_its_cmp() {
        // cmp $0x1000,%rdi; ja rel32
        let code = [0x48, 0x81, 0xff, 0, 0x10, 0, 0, 0x0f, 0x87, 0x93, 0, 0, 0];
        assert_eq!(fast_offset(&code, &[RDI, RSP]), 7);
    }

    #[test]
    fn never_skips_a_write_to_what_the_probe_reads() {
        // mov %rdi,%rax (fine); mov 0x...(%rip),%rdx (writes rdx); mov %rdi,%rcx; je
        let free = [
            0x48, 0x89, 0xf8, 0x48, 0x8b, 0x15, 1, 2, 3, 4, 0x48, 0x89, 0xf9, 0x74, 0x05,
        ];
        assert_eq!(fast_offset(&free, &[RDI]), 13);
        assert_eq!(fast_offset(&free, &[RDI, RDX]), 0);
        // sub $0x18,%rsp moves the return address away from the top of the stack.
        let sub_rsp = [0x48, 0x83, 0xec, 0x18, 0x55];
        assert_eq!(fast_offset(&sub_rsp, &[RDI, RSP]), 0);
        assert_eq!(fast_offset(&sub_rsp, &[RDI]), 4);
        // Unknown instructions stop the search.
        assert_eq!(fast_offset(&[0x0f, 0x05, 0x55], &[RDI]), 0);
        assert_eq!(fast_offset(&[], &[RDI]), 0);
    }

    #[test]
    fn endbr64_is_skipped() {
        assert_eq!(fast_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], &[RDI, RSP]), 4);
    }
}
