//! Guesses whether a binary was built with frame pointers, by looking at its functions'
//! prologues: with them, nearly every function starts `push %rbp; mov %rsp,%rbp`.
//! Without them, frame-pointer stacks through that binary come out short, and we say so.

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use serde::{Deserialize, Serialize};

/// Functions smaller than this are often thunks that never set up a frame.
const MIN_FUNCTION_SIZE: u64 = 32;
/// How far into a function the prologue is looked for.
const PROLOGUE_BYTES: u64 = 24;
/// Enough functions for a verdict, few enough to stay fast on large binaries.
const MAX_FUNCTIONS: usize = 4000;
/// Below this many sized functions we do not guess.
const MIN_FUNCTIONS: usize = 4;
/// Share of functions with the prologue above which we say the binary has frame pointers.
const THRESHOLD: f64 = 0.5;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FramePointerCheck {
    /// None when the binary has too few sized function symbols to tell.
    pub has_frame_pointers: Option<bool>,
    pub functions_checked: usize,
    pub with_frame_pointer: usize,
}

/// Checks the ELF image in `data`.
pub fn check(data: &[u8]) -> Result<FramePointerCheck, object::Error> {
    let file = object::File::parse(data)?;
    let mut checked = 0;
    let mut with_fp = 0;
    let symbols: Vec<_> = if file.symbols().next().is_some() {
        file.symbols().collect()
    } else {
        file.dynamic_symbols().collect()
    };
    for symbol in symbols {
        if checked >= MAX_FUNCTIONS {
            break;
        }
        if symbol.kind() != SymbolKind::Text || symbol.size() < MIN_FUNCTION_SIZE {
            continue;
        }
        let Some(index) = symbol.section_index() else {
            continue;
        };
        let Ok(section) = file.section_by_index(index) else {
            continue;
        };
        let Ok(Some(bytes)) = section.data_range(symbol.address(), PROLOGUE_BYTES) else {
            continue;
        };
        checked += 1;
        if sets_up_frame(bytes) {
            with_fp += 1;
        }
    }
    let has_frame_pointers =
        (checked >= MIN_FUNCTIONS).then(|| with_fp as f64 / checked as f64 >= THRESHOLD);
    Ok(FramePointerCheck {
        has_frame_pointers,
        functions_checked: checked,
        with_frame_pointer: with_fp,
    })
}

/// `push %rbp` and then `mov %rsp,%rbp` near the start of `code`. Compilers schedule other
/// instructions into the prologue, so both are looked for in the first bytes, not at offset 0.
fn sets_up_frame(code: &[u8]) -> bool {
    const PUSH_RBP: u8 = 0x55;
    const MOV_RSP_RBP: &[u8] = &[0x48, 0x89, 0xe5];
    let Some(push) = code.iter().position(|&b| b == PUSH_RBP) else {
        return false;
    };
    code[push + 1..]
        .windows(MOV_RSP_RBP.len())
        .any(|w| w == MOV_RSP_RBP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_prologues() {
        assert!(sets_up_frame(&[0x55, 0x48, 0x89, 0xe5, 0x90]));
        assert!(sets_up_frame(&[
            0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5
        ]));
        // movabs; push %rbp; mov $4,%edx; mov %rsp,%rbp: as GCC schedules it.
        let scheduled = [
            0x48, 0xbe, 1, 2, 3, 4, 5, 6, 7, 8, 0x55, 0xba, 4, 0, 0, 0, 0x48, 0x89, 0xe5,
        ];
        assert!(sets_up_frame(&scheduled));
        assert!(!sets_up_frame(&[0x48, 0x83, 0xec, 0x18]));
        assert!(!sets_up_frame(&[0x55]));
    }

    fn verdict(name: &str, cflags: &[&str]) -> FramePointerCheck {
        let build = testbed::fixture::CBuild {
            source: "cpu_burn",
            output: name,
            cflags,
            libs: &[],
        };
        let path = testbed::fixture::build_c(&build).expect("gcc builds the fixture");
        check(&std::fs::read(path).unwrap()).unwrap()
    }

    /// One source built both ways gets both verdicts.
    #[test]
    fn tells_builds_apart() {
        let with = verdict("cpu_burn-fp-check", testbed::fixture::FRAME_POINTERS);
        assert_eq!(with.has_frame_pointers, Some(true), "{with:?}");
        let without = verdict("cpu_burn-nofp-check", testbed::fixture::NO_FRAME_POINTERS);
        assert_eq!(without.has_frame_pointers, Some(false), "{without:?}");
    }
}
