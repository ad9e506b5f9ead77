//! Unwinding without frame pointers, against the real kernel, as root: fixtures built without
//! them (and Debian's glibc, built without them) must still show every caller.

mod common;

use std::{collections::HashMap, process::Command, time::Duration};

use common::*;
use profiler::unwind::UnwindMode;

const CPU_BURN_NOFP: CBuild<'static> = CBuild {
    source: "cpu_burn",
    output: "cpu_burn-nofp",
    cflags: NO_FRAME_POINTERS,
    libs: &[],
};

/// Share of `stacks` (by weight) that satisfy `pred`, among those that satisfy `of`.
fn share(
    stacks: &[(Vec<String>, u64)],
    of: impl Fn(&[String]) -> bool,
    pred: impl Fn(&[String]) -> bool,
) -> (u64, u64) {
    let mut hit = 0;
    let mut total = 0;
    for (frames, weight) in stacks {
        if of(frames) {
            total += weight;
            if pred(frames) {
                hit += weight;
            }
        }
    }
    (hit, total)
}

fn has_sequence(frames: &[String], seq: &[&str]) -> bool {
    frames
        .windows(seq.len())
        .any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
}

fn capture_cpu_burn(mode: UnwindMode, name: &str) -> Vec<(Vec<String>, u64)> {
    let fixture = start_fixture(&CPU_BURN_NOFP, &[]);
    let mut opts = options(fixture.pid(), Duration::from_secs(3), output_dir(name));
    opts.unwind = mode;
    let (_, outcome) = capture(opts, || {});
    let cpu = outcome.summary.cpu.as_ref().unwrap();
    assert!(cpu.samples >= 150, "only {} samples", cpu.samples);
    folded(&outcome, "cpu.folded")
}

#[test]
fn whole_chains_through_a_binary_without_frame_pointers() {
    require_root!();
    for (mode, name) in [
        (UnwindMode::Dwarf, "unwind-dwarf"),
        (UnwindMode::Auto, "unwind-auto"),
    ] {
        let stacks = capture_cpu_burn(mode, name);
        let (whole, total) = share(
            &stacks,
            |_| true,
            |f| {
                has_sequence(
                    f,
                    &["start_thread", "burner", "outer", "middle", "hot_leaf"],
                )
            },
        );
        assert!(
            whole * 10 >= total * 9,
            "{mode:?}: {whole} of {total} samples show the whole chain: {stacks:?}"
        );
    }
}

#[test]
fn frame_pointers_alone_lose_the_chain() {
    require_root!();
    // The control: the same fixture walked with frame pointers must come out broken, or the
    // test above would prove nothing.
    let stacks = capture_cpu_burn(UnwindMode::FramePointer, "unwind-fp-control");
    let (whole, total) = share(
        &stacks,
        |_| true,
        |f| has_sequence(f, &["burner", "outer", "middle", "hot_leaf"]),
    );
    assert!(
        whole * 10 < total,
        "{whole} of {total} whole with frame pointers alone"
    );
}

const DIRECT_CALLER: CBuild<'static> = CBuild {
    source: "direct_caller",
    output: "direct_caller-fp",
    cflags: &[
        "-O2",
        "-g",
        "-fno-omit-frame-pointer",
        "-mno-omit-leaf-frame-pointer",
        "-fno-inline",
        "-fno-builtin",
    ],
    libs: &[],
};

/// Samples inside libc's memset, and how many have direct_caller right under the libc frames.
fn memset_callers(mode: UnwindMode, name: &str) -> (u64, u64) {
    let fixture = start_fixture(&DIRECT_CALLER, &["cpu"]);
    let mut opts = options(fixture.pid(), Duration::from_secs(3), output_dir(name));
    opts.unwind = mode;
    let (_, outcome) = capture(opts, || {});
    let stacks = folded(&outcome, "cpu.folded");
    let in_memset = |f: &[String]| f.last().is_some_and(|leaf| leaf.contains("memset"));
    share(&stacks, in_memset, |f| {
        let first_libc = f.iter().position(|name| name.contains("memset")).unwrap();
        first_libc > 0 && f[first_libc - 1] == "direct_caller"
    })
}

#[test]
fn caller_of_a_libc_function_survives() {
    require_root!();
    let (kept, total) = memset_callers(UnwindMode::Auto, "unwind-libc-auto");
    assert!(total >= 100, "only {total} samples in memset");
    assert!(
        kept * 10 >= total * 9,
        "direct_caller under memset in {kept} of {total}"
    );
    let (kept, total) = memset_callers(UnwindMode::FramePointer, "unwind-libc-fp");
    assert!(total >= 100, "only {total} samples in memset");
    assert!(
        kept * 10 < total,
        "frame pointers kept direct_caller in {kept} of {total}"
    );
}

/// Folds `perf record --call-graph dwarf` of the same fixture, user frames only.
fn perf_dwarf_stacks(pid: u32, dir: &std::path::Path) -> Vec<(Vec<String>, u64)> {
    use inferno::collapse::{Collapse, perf::Folder, perf::Options};
    let data = dir.join("perf.data");
    let status = Command::new("perf")
        .args([
            "record",
            "-q",
            "--call-graph",
            "dwarf",
            "-F",
            "99",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", "3"])
        .status()
        .expect("perf runs (cargo xtask setup installs linux-perf)");
    assert!(status.success());
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    let mut options = Options::default();
    options.annotate_kernel = true;
    let mut folded = Vec::new();
    Folder::from(options)
        .collapse(script.stdout.as_slice(), &mut folded)
        .unwrap();
    user_frames(profiler::report::folded::parse(folded.as_slice()).unwrap())
}

/// Drops the thread root and kernel frames, merging what becomes equal.
fn user_frames(stacks: Vec<(Vec<String>, u64)>) -> Vec<(Vec<String>, u64)> {
    let mut merged: HashMap<Vec<String>, u64> = HashMap::new();
    for (frames, weight) in stacks {
        let user: Vec<String> = frames
            .into_iter()
            .skip(1)
            .filter(|f| !f.ends_with("_[k]"))
            .collect();
        *merged.entry(user).or_default() += weight;
    }
    let mut stacks: Vec<_> = merged.into_iter().collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.1));
    stacks
}

#[test]
fn top_stacks_agree_with_perf_dwarf() {
    require_root!();
    let fixture = start_fixture(&CPU_BURN_NOFP, &[]);
    let dir = output_dir("unwind-perf");
    std::fs::create_dir_all(&dir).unwrap();
    let perf = perf_dwarf_stacks(fixture.pid(), &dir);
    let opts = options(fixture.pid(), Duration::from_secs(3), dir.join("ours"));
    let (_, outcome) = capture(opts, || {});
    let ours = user_frames(folded(&outcome, "cpu.folded"));
    let perf_total: u64 = perf.iter().map(|s| s.1).sum();
    let ours_total: u64 = ours.iter().map(|s| s.1).sum();
    // perf's five heaviest stacks: each that holds at least 2% of perf's samples must be among
    // ours, frame for frame, with a share within 10 points of perf's.
    for (frames, weight) in perf.iter().take(5) {
        let perf_share = *weight as f64 / perf_total as f64;
        if perf_share < 0.02 {
            continue;
        }
        let our_weight = ours.iter().find(|(f, _)| f == frames).map_or(0, |s| s.1);
        let our_share = our_weight as f64 / ours_total as f64;
        assert!(
            (perf_share - our_share).abs() < 0.10,
            "{frames:?}: perf {perf_share:.2}, ours {our_share:.2}\nperf: {perf:?}\nours: {ours:?}"
        );
    }
}

#[test]
fn library_loaded_after_attach_is_unwound_within_a_second() {
    require_root!();
    let plugin = build_c(&CBuild {
        source: "plugin",
        output: "libplugin-nofp.so",
        cflags: &[
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-fno-inline",
            "-shared",
            "-fPIC",
        ],
        libs: &[],
    })
    .unwrap();
    let mut fixture = start_fixture(
        &CBuild {
            source: "dlopen_burn",
            output: "dlopen_burn-nofp",
            cflags: NO_FRAME_POINTERS,
            libs: &[],
        },
        &[plugin.to_str().unwrap()],
    );
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(4),
        output_dir("unwind-dlopen"),
    );
    // Tables only: without the plugin's table a walk stops at its first frame.
    opts.unwind = UnwindMode::Dwarf;
    let (_, outcome) = capture(opts, || {
        fixture.signal(libc::SIGUSR1).unwrap();
        fixture
            .wait_for_line("loaded", Duration::from_secs(5))
            .unwrap();
    });
    let stacks = folded(&outcome, "cpu.folded");
    let (whole, total) = share(
        &stacks,
        |f| f.last().is_some_and(|leaf| leaf == "plugin_leaf"),
        |f| {
            has_sequence(
                f,
                &[
                    "main",
                    "call_plugin",
                    "plugin_entry",
                    "plugin_middle",
                    "plugin_leaf",
                ],
            )
        },
    );
    // About 4 s of one burning thread at 99 Hz; only samples from before the plugin's table
    // was loaded may be incomplete, and that must happen within a second (99 samples).
    assert!(total >= 250, "only {total} samples in the plugin");
    assert!(
        total - whole < 99,
        "{} of {total} plugin samples incomplete",
        total - whole
    );
    assert!(outcome.summary.unwind.mapping_updates >= 1);
}

/// Off-CPU stacks of the direct_caller fixture blocked in `mode`, and how many of them have
/// direct_caller right under the first libc frame (`libc_frame` names it).
fn offcpu_callers(
    mode: UnwindMode,
    fixture_mode: &str,
    libc_frame: &str,
    name: &str,
) -> (u64, u64) {
    let fixture = start_fixture(&DIRECT_CALLER, &[fixture_mode]);
    let mut opts = options(fixture.pid(), Duration::from_secs(2), output_dir(name));
    opts.cpu = None;
    opts.unwind = mode;
    opts.offcpu = Some(profiler::probes::offcpu::Config {
        min_block: Duration::from_micros(1),
    });
    let (_, outcome) = capture(opts, || {});
    let stacks = folded(&outcome, "offcpu.folded");
    share(
        &stacks,
        |f| f.iter().any(|n| n.contains(libc_frame)) && f.iter().any(|n| n == "driver"),
        |f| {
            let first = f.iter().position(|n| n.contains(libc_frame)).unwrap();
            first > 0 && f[first - 1] == "direct_caller"
        },
    )
}

#[test]
fn offcpu_callers_of_nanosleep_and_mutex_lock_survive() {
    require_root!();
    for (fixture_mode, libc_frame) in [("sleep", "nanosleep"), ("lock", "pthread_mutex_lock")] {
        let (kept, total) = offcpu_callers(
            UnwindMode::Auto,
            fixture_mode,
            libc_frame,
            "unwind-offcpu-auto",
        );
        assert!(
            total > 0,
            "{fixture_mode}: no off-CPU time under {libc_frame}"
        );
        assert!(
            kept * 10 >= total * 9,
            "{fixture_mode}: direct_caller under {libc_frame} for {kept} of {total} us"
        );
        let (kept, total) = offcpu_callers(
            UnwindMode::FramePointer,
            fixture_mode,
            libc_frame,
            "unwind-offcpu-fp",
        );
        assert!(
            kept * 10 < total.max(1),
            "{fixture_mode}: frame pointers kept direct_caller for {kept} of {total} us"
        );
    }
}
