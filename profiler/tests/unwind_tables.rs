//! The table compiler against `readelf --debug-dump=frames-interp`: every row readelf prints
//! for a binary must resolve, through our compiled table, to the same CFA and rbp rules.
//! Pure userspace: no root needed.

use std::process::Command;

use profiler::unwind::table::{Table, compile};
use profiler_common::unwind::{cfa, rbp};
use testbed::fixture::{CBuild, NO_FRAME_POINTERS, build_c};

/// One row as readelf prints it.
#[derive(Debug)]
struct ReadelfRow {
    loc: u64,
    cfa: String,
    rbp: Option<String>,
    ra: String,
}

fn readelf_rows(path: &str) -> Vec<ReadelfRow> {
    let out = Command::new("readelf")
        .args(["--wide", "--debug-dump=frames-interp", path])
        .output()
        .expect("readelf runs (binutils)");
    // readelf exits 1 over unrelated warnings (e.g. a missing separate debug file); the dump
    // itself is on stdout.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    // Rows after a CIE header are the CIE's initial rules, at no real address.
    let mut in_fde = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.contains(" FDE ") || line.contains(" CIE") {
            in_fde = line.contains(" FDE ");
            columns.clear();
            continue;
        }
        if !in_fde {
            continue;
        }
        if fields.first() == Some(&"LOC") {
            columns = fields.iter().map(|f| f.to_string()).collect();
            continue;
        }
        if columns.is_empty() || fields.len() != columns.len() {
            continue;
        }
        let Ok(loc) = u64::from_str_radix(fields[0], 16) else {
            continue;
        };
        let column = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .map(|i| fields[i].to_string())
        };
        rows.push(ReadelfRow {
            loc,
            cfa: fields[1].to_string(),
            rbp: column("rbp"),
            ra: column("ra").expect("ra column"),
        });
    }
    rows
}

fn check(path: &str, table: &Table) -> usize {
    let rows = readelf_rows(path);
    assert!(
        rows.len() > 10,
        "readelf printed only {} rows for {path}",
        rows.len()
    );
    for row in &rows {
        let ours = table
            .lookup(row.loc)
            .unwrap_or_else(|| panic!("{path}: no row at {:#x}", row.loc));
        let at = format!("{path} at {:#x}: readelf {row:?}, ours {ours:?}", row.loc);
        if row.ra == "u" {
            assert_eq!(ours.cfa_type, cfa::END, "{at}");
            continue;
        }
        if row.ra != "c-8" {
            assert_eq!(ours.cfa_type, cfa::UNSUPPORTED, "{at}");
            continue;
        }
        if let Some(offset) = row.cfa.strip_prefix("rsp+") {
            assert_eq!(
                (ours.cfa_type, ours.cfa_offset),
                (cfa::RSP, offset.parse().unwrap()),
                "{at}"
            );
        } else if let Some(offset) = row.cfa.strip_prefix("rbp+") {
            assert_eq!(
                (ours.cfa_type, ours.cfa_offset),
                (cfa::RBP, offset.parse().unwrap()),
                "{at}"
            );
        } else if row.cfa == "exp" {
            assert!(matches!(ours.cfa_type, cfa::PLT | cfa::UNSUPPORTED), "{at}");
            continue;
        } else {
            assert_eq!(ours.cfa_type, cfa::UNSUPPORTED, "{at}");
            continue;
        }
        match row.rbp.as_deref() {
            None | Some("u") => assert_eq!(ours.rbp_type, rbp::SAME, "{at}"),
            Some(saved) => match saved.strip_prefix("c-") {
                Some(n) => assert_eq!(
                    (ours.rbp_type, ours.rbp_offset),
                    (rbp::OFFSET, -n.parse::<i16>().unwrap()),
                    "{at}"
                ),
                None => assert_eq!(ours.rbp_type, rbp::UNKNOWN, "{at}"),
            },
        }
    }
    rows.len()
}

fn compile_file(path: &str) -> Table {
    compile(&std::fs::read(path).unwrap()).expect("compiles")
}

#[test]
fn libc_rows_match_readelf() {
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let table = compile_file(libc);
    assert!(table.functions > 1000, "{} functions", table.functions);
    let checked = check(libc, &table);
    assert!(checked > 10_000, "checked {checked} rows");
    // glibc's .plt has the PLT expression, and it must be recognised, not left unsupported.
    let plt = table.rows.iter().filter(|r| r.cfa_type == cfa::PLT).count();
    assert!(plt > 0, "no PLT rows in libc");
}

#[test]
fn frame_pointer_less_fixture_rows_match_readelf() {
    let path = build_c(&CBuild {
        source: "cpu_burn",
        output: "cpu_burn-nofp",
        cflags: NO_FRAME_POINTERS,
        libs: &[],
    })
    .unwrap();
    let path = path.to_str().unwrap();
    let table = compile_file(path);
    check(path, &table);
    // Addresses between functions that no FDE covers fall to a NONE row.
    let last = table.rows.last().unwrap();
    assert_eq!(last.cfa_type, cfa::NONE);
    assert_eq!(table.lookup(last.pc + 1).unwrap().cfa_type, cfa::NONE);
}

#[test]
fn binary_without_cfi_has_empty_table() {
    // A relocatable object with -fno-asynchronous-unwind-tables has no .eh_frame at all.
    let dir = std::env::temp_dir().join(format!("profiler-nocfi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("f.c");
    std::fs::write(&src, "int f(int x) { return x * 3; }\n").unwrap();
    let obj = dir.join("f.o");
    let status = Command::new("gcc")
        .args([
            "-O2",
            "-c",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-o",
        ])
        .arg(&obj)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success());
    let table = compile(&std::fs::read(&obj).unwrap()).unwrap();
    assert!(table.rows.is_empty());
    assert_eq!(table.functions, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
