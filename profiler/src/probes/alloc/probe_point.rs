//! Where to put a uprobe so the kernel can emulate the probed instruction instead of
//! single-stepping it out of line: on x86-64 it emulates `push reg`, `call`, `jmp` and `jcc`,
//! and a single-step costs several microseconds more per hit (glibc's `free` begins with
//! `test %rdi,%rdi`: 4.6 µs a call probed at its entry, about 1 µs probed at the `je` after it).
//!
//! We skip at most a dozen leading instructions, and only ones we decode fully that neither
//! branch nor write a register the probe needs (the arguments it reads, and `rsp` when a return
//! probe shares the point and must find the return address on top of the stack), and only when
//! no branch in the function lands among them. Anything we do not recognise keeps the probe at
//! the entry.

/// x86-64 register numbers as ModRM encodes them (with REX extensions, 8 to 15).
pub mod reg {
    pub const RAX: u8 = 0;
    pub const RCX: u8 = 1;
    pub const RDX: u8 = 2;
    pub const RSP: u8 = 4;
    pub const RSI: u8 = 6;
    pub const RDI: u8 = 7;
}

/// Instructions skipped at most. jemalloc's `free` computes its thread cache and the rtree
/// slot in 9 straight-line instructions (48 bytes) before its first branch; at its entry it
/// was single-stepped on every call.
const MAX_SKIPPED: usize = 12;

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

/// The probe offset for a whole function (`body`: its bytes from the symbol on): the
/// [`fast_offset`], unless some branch in the body lands inside the skipped instructions,
/// where a path that never passed the entry would reach the probe. The scan looks at every
/// byte as a possible branch: a false match only keeps the probe at the entry.
pub fn safe_offset(body: &[u8], preserve: &[u8]) -> u64 {
    let offset = fast_offset(body, preserve);
    if offset == 0 {
        return 0;
    }
    let inside = |target: i64| target > 0 && target <= offset as i64;
    for at in 0..body.len() {
        let rel8 = |len: i64| {
            body.get(at + 1)
                .map(|&b| at as i64 + len + i64::from(b as i8))
        };
        let rel32 = |from: usize, len: i64| {
            let bytes: [u8; 4] = body.get(from..from + 4)?.try_into().ok()?;
            Some(at as i64 + len + i64::from(i32::from_le_bytes(bytes)))
        };
        let target = match body[at..] {
            [0x70..=0x7f | 0xeb, ..] => rel8(2),
            [0xe9, ..] => rel32(at + 1, 5),
            [0x0f, 0x80..=0x8f, ..] => rel32(at + 2, 6),
            _ => None,
        };
        if target.is_some_and(inside) {
            return 0;
        }
    }
    offset
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
    // A segment override (`%fs:` for thread-local data) changes where memory is, not what
    // is written.
    let (segment_len, code) = match code.first()? {
        0x64 | 0x65 => (1, &code[1..]),
        _ => (0, code),
    };
    let (rex, rest) = match code.first()? {
        0x40..=0x4f => (code[0], &code[1..]),
        _ => (0, code),
    };
    let prefix_len = segment_len + usize::from(rex != 0);
    let r_ext = (rex >> 2) & 1;
    let b_ext = rex & 1;
    let wide = rex & 8 != 0;
    let (&opcode, rest) = rest.split_first()?;
    // Forms without a ModRM byte.
    match opcode {
        // add/or/and/sub/xor %eax, imm32: write rax.
        0x05 | 0x0d | 0x25 | 0x2d | 0x35 => return Some((prefix_len + 5, [Some(reg::RAX)])),
        // cmp/test %eax, imm32: flags.
        0x3d | 0xa9 => return Some((prefix_len + 5, [None])),
        // mov $imm, %reg (imm64 with REX.W).
        0xb8..=0xbf => {
            let imm = if wide { 8 } else { 4 };
            return Some((prefix_len + 1 + imm, [Some((opcode & 7) | (b_ext << 3))]));
        }
        0x90 => return Some((prefix_len + 1, [None])), // nop
        _ => {}
    }
    // Two-byte movzx/movsx r, r/m.
    if opcode == 0x0f {
        let (&second, rest) = rest.split_first()?;
        if !matches!(second, 0xb6 | 0xb7 | 0xbe | 0xbf) {
            return None;
        }
        let (modrm_len, _, reg_field, _) = modrm(rest)?;
        return Some((prefix_len + 2 + modrm_len, [Some(reg_field | (r_ext << 3))]));
    }
    let (modrm_len, mod_, reg_field, rm) = modrm(rest)?;
    let reg_num = reg_field | (r_ext << 3);
    let rm_reg = (mod_ == 3).then_some(rm | (b_ext << 3));
    let (imm, writes) = match opcode {
        // test r/m, r; cmp r/m, r; cmp r, r/m (and their byte forms): flags only.
        0x84 | 0x85 | 0x38 | 0x39 | 0x3a | 0x3b => (0, None),
        // mov r/m, r; add/or/and/sub/xor r/m, r: write the r/m register (or memory).
        0x89 | 0x01 | 0x09 | 0x21 | 0x29 | 0x31 => (0, rm_reg),
        // mov r, r/m; lea r, m; movsxd; add/or/and/sub/xor r, r/m: write the reg field.
        0x8b | 0x8d | 0x63 | 0x03 | 0x0b | 0x23 | 0x2b | 0x33 => (0, Some(reg_num)),
        // group 1 with imm8 / imm32 (and its byte form): /7 is cmp (flags), the others
        // write r/m.
        0x80 | 0x83 | 0x81 => {
            let imm = if opcode == 0x81 { 4 } else { 1 };
            (imm, if reg_field == 7 { None } else { rm_reg })
        }
        // shifts and rotates by imm8 or by 1: write r/m.
        0xc1 => (1, rm_reg),
        0xd1 => (0, rm_reg),
        // test r/m, imm (/0 only; the rest of the group writes or divides).
        0xf6 | 0xf7 if reg_field == 0 => (if opcode == 0xf6 { 1 } else { 4 }, None),
        // mov r/m, imm (/0).
        0xc6 | 0xc7 if reg_field == 0 => (if opcode == 0xc6 { 1 } else { 4 }, rm_reg),
        _ => return None,
    };
    // A memory operand we cannot see through (rsp-relative stores are fine) writes no register.
    Some((prefix_len + 1 + modrm_len + imm, [writes]))
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

    /// jemalloc 5.3's `free`: nine instructions (shifts, masks, a `%fs:` add) before its first
    /// branch.
    const JEMALLOC_FREE: [u8; 54] = [
        0x48, 0x89, 0xf8, // mov %rdi,%rax
        0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, // mov 0xa530e(%rip),%rdx
        0x48, 0x89, 0xf9, // mov %rdi,%rcx
        0x48, 0xc1, 0xe8, 0x1a, // shr $0x1a,%rax
        0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, // and $0xffffffffc0000000,%rcx
        0x25, 0xf0, 0x00, 0x00, 0x00, // and $0xf0,%eax
        0x64, 0x48, 0x03, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, // add %fs:0x0,%rax
        0x48, 0x01, 0xd0, // add %rdx,%rax
        0x48, 0x3b, 0x88, 0xb0, 0x01, 0x00, 0x00, // cmp 0x1b0(%rax),%rcx
        0x0f, 0x85, 0x8a, 0x00, 0x00, 0x00, // jne
    ];

    #[test]
    fn jemalloc_free_probes_at_its_first_branch() {
        assert_eq!(fast_offset(&JEMALLOC_FREE, &[RDI]), 0x30);
        // A probe reading rdx could not skip the load into it.
        assert_eq!(fast_offset(&JEMALLOC_FREE, &[RDI, RDX]), 0);
    }

    #[test]
    fn glibc_aligned_entry_points_skip_their_cmpb() {
        // cmpb $0x0,0x140e71(%rip); je
        let memalign = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        assert_eq!(fast_offset(&memalign, &[RDI, RSI, RSP]), 7);
    }

    #[test]
    fn a_branch_into_the_skipped_instructions_keeps_the_entry() {
        let mut body = JEMALLOC_FREE.to_vec();
        body.extend([0xc3; 16]);
        assert_eq!(safe_offset(&body, &[RDI]), 0x30);
        // Further on, a jmp back to the `shr` (offset 13): a path that skips the entry.
        let at = body.len() as i64;
        body.push(0xeb);
        body.push((13 - (at + 2)) as i8 as u8);
        assert_eq!(safe_offset(&body, &[RDI]), 0);
        // A branch to the entry itself passes the probe like any call.
        let last = body.len() - 1;
        body[last] = (-(at + 2)) as i8 as u8;
        assert_eq!(safe_offset(&body, &[RDI]), 0x30);
    }

    #[test]
    fn endbr64_is_skipped() {
        assert_eq!(fast_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], &[RDI, RSP]), 4);
    }
}
