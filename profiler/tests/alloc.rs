//! `alloc` against the real kernel, as root: a fixture allocates in known patterns, and the
//! leak report must find the leak, byte for byte, and nothing else.

mod common;

use std::time::Duration;

use common::*;
use profiler::report::alloc::{AllocStack, LeakReport};

const ITERATIONS: u64 = 20_000;

/// Runs the fixture's patterns under `--alloc` until it exits; returns the report, the
/// allocator name, the fixture's final realloc chain size and the nested allocator calls.
fn run(output: &str, libs: &'static [&'static str], name: &str) -> (LeakReport, String, u64, u64) {
    let mut fixture = start_fixture(
        &CBuild {
            source: "alloc_patterns",
            output,
            cflags: ALLOC_FLAGS,
            libs,
        },
        &[&ITERATIONS.to_string(), "6"],
    );
    let mut opts = options(fixture.pid(), Duration::from_secs(60), output_dir(name));
    opts.cpu = None;
    opts.alloc = Some(profiler::probes::alloc::Config {
        min_age: Duration::from_secs(2),
        ..Default::default()
    });
    opts.interval = Some(Duration::from_secs(1));
    // The capture runs while the fixture works (snapshots need the capture loop), and ends
    // when it exits.
    let (end, outcome) = capture(opts, || fixture.signal(libc::SIGUSR1).unwrap());
    assert_eq!(end, profiler::session::EndReason::TargetExited);
    let done = fixture
        .wait_for_line("done", Duration::from_secs(5))
        .unwrap();
    for file in [
        "leaks.txt",
        "leaks.json",
        "alloc.folded",
        "alloc.svg",
        "memory_samples.csv",
    ] {
        assert!(outcome.dir.join(file).is_file(), "{file} missing");
    }
    let chain: u64 = done.split_whitespace().last().unwrap().parse().unwrap();
    let summary = outcome.summary.alloc.unwrap();
    assert!(
        summary.leaks.snapshots >= 5,
        "{} snapshots",
        summary.leaks.snapshots
    );
    let csv = std::fs::read_to_string(outcome.dir.join("memory_samples.csv")).unwrap();
    assert!(csv.lines().count() >= 6, "{csv}");
    let dropped = &outcome.summary.dropped;
    // No return lost: calls made from inside the allocator are told apart from losses.
    for counter in [
        "alloc_live_full",
        "alloc_stacks_full",
        "alloc_missed_returns",
    ] {
        assert_eq!(dropped[counter], 0, "{counter}");
    }
    let leaks = outcome.leaks.unwrap();
    // Every block of the allocator's nested calls was retired like any other.
    assert!(
        !live_through(&leaks, "aligned_path"),
        "aligned_path's blocks were all freed"
    );
    (leaks, summary.allocator.name, chain, summary.nested)
}

/// Whether any live stack, suspect or not, passes through `function`.
fn live_through(report: &LeakReport, function: &str) -> bool {
    report
        .suspects
        .iter()
        .chain(&report.largest_not_growing)
        .any(|s| s.frames.iter().any(|f| f == function))
}

/// The frame right before the allocating call.
fn caller(stack: &AllocStack) -> &str {
    let n = stack.frames.len();
    &stack.frames[n - 2]
}

fn check(report: &LeakReport, chain_size: u64) {
    let top = &report.suspects[0];
    assert_eq!(caller(top), "leaky_path", "{:#?}", report.suspects);
    assert_eq!(top.kind, "malloc");
    let expected = (ITERATIONS * 64) as f64;
    assert!(
        (top.live_bytes as f64 - expected).abs() <= expected * 0.05,
        "leaky_path live {} vs {expected}",
        top.live_bytes
    );
    assert!(top.growth_bytes_per_min > 0.0);
    let all: Vec<&AllocStack> = report
        .suspects
        .iter()
        .chain(&report.largest_not_growing)
        .collect();
    assert!(
        !report
            .suspects
            .iter()
            .any(|s| s.frames.iter().any(|f| f == "balanced_path")),
        "balanced_path is no suspect"
    );
    // Blocks freed by another thread leave nothing live.
    assert!(
        !live_through(report, "produce_block"),
        "produce_block's blocks were all freed: {all:#?}"
    );
    let chain = all
        .iter()
        .find(|s| caller(s) == "realloc_chain")
        .expect("the realloc chain is live");
    assert_eq!(chain.live_count, 1, "{chain:#?}");
    assert_eq!(chain.live_bytes as u64, chain_size);
}

#[test]
fn finds_the_leak_in_glibc_malloc() {
    require_root!();
    let (report, allocator, chain, nested) = run("alloc_patterns-fp", &[], "alloc-glibc");
    assert_eq!(allocator, "glibc");
    // Each aligned_path's memalign calls malloc.
    assert!(nested >= ITERATIONS, "{nested} nested calls");
    check(&report, chain);
}

#[test]
fn tracks_jemalloc_through_its_symbols() {
    require_root!();
    let (report, allocator, chain, _) =
        run("alloc_patterns-jemalloc", &["-ljemalloc"], "alloc-jemalloc");
    assert_eq!(allocator, "jemalloc");
    check(&report, chain);
}

/// A capture that ends while the target allocates at full tilt loses no returns: the entry
/// probes go before the return probe, so no call seen entering is left open by the detach.
#[test]
fn ending_mid_run_loses_no_returns() {
    require_root!();
    // Far more work than the capture lasts: the fixture is still allocating when it ends.
    let fixture = start_fixture(
        &CBuild {
            source: "alloc_patterns",
            output: "alloc_patterns-fp",
            cflags: ALLOC_FLAGS,
            libs: &[],
        },
        &["2000000", "60"],
    );
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(3),
        output_dir("alloc-mid-run"),
    );
    opts.cpu = None;
    opts.alloc = Some(profiler::probes::alloc::Config::default());
    let (end, outcome) = capture(opts, || fixture.signal(libc::SIGUSR1).unwrap());
    assert_eq!(end, profiler::session::EndReason::Duration);
    let summary = outcome.summary.alloc.expect("alloc section");
    assert!(summary.calls > 10_000, "{} calls", summary.calls);
    assert!(summary.nested > 1_000, "{} nested", summary.nested);
    assert_eq!(outcome.summary.dropped["alloc_missed_returns"], 0);
}

/// The ring fixtures' shape: blocks kept live, and their size.
const RING_BLOCKS: u64 = 1000;
const RING_SIZE: u64 = 4096;

/// Captures a ring fixture under `--alloc` for `seconds`, snapshots every 500 ms, and checks
/// the accounting against the ring's truth at every snapshot taken after the ring has turned
/// once (blocks allocated before the attach are not tracked, so until then less is live),
/// and at the end.
fn check_ring(fixture: ChildGuard, name: &str, seconds: u64) {
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(seconds),
        output_dir(name),
    );
    opts.cpu = None;
    opts.alloc = Some(profiler::probes::alloc::Config::default());
    opts.interval = Some(Duration::from_millis(500));
    let (end, outcome) = capture(opts, || {});
    assert_eq!(end, profiler::session::EndReason::Duration);
    let truth = (RING_BLOCKS * RING_SIZE) as f64;
    let within = |what: &str, at: f64, bytes: i64, count: i64| {
        assert!(
            (bytes as f64 - truth).abs() <= truth * 0.02
                && (count as f64 - RING_BLOCKS as f64).abs() <= RING_BLOCKS as f64 * 0.02,
            "{name}: {what} at {at:.1}s: {bytes} B in {count} blocks, truth {truth} B in \
             {RING_BLOCKS}"
        );
    };
    let summary = outcome.summary.alloc.as_ref().expect("alloc section");
    let samples: Vec<_> = summary_samples(&outcome);
    let checked = samples.iter().filter(|s| s.0 >= 1.5).count();
    assert!(checked >= (seconds as usize - 1) * 2 - 1, "{samples:?}");
    for &(at, bytes, count) in samples.iter().filter(|s| s.0 >= 1.5) {
        within("snapshot", at, bytes, count);
    }
    within(
        "end",
        outcome.summary.duration_secs,
        summary.leaks.live_bytes,
        summary.leaks.live_count,
    );
    // Only the blocks live at the attach can be freed unseen.
    assert!(
        summary.unknown_frees <= RING_BLOCKS,
        "{name}: {} frees of blocks from before the attach, {RING_BLOCKS} existed",
        summary.unknown_frees
    );
    assert!(summary.tracked > 20_000, "{} tracked", summary.tracked);
    let dropped = &outcome.summary.dropped;
    for counter in [
        "alloc_missed_frees",
        "alloc_missed_returns",
        "alloc_live_full",
    ] {
        assert_eq!(dropped[counter], 0, "{name}: {counter}");
    }
    assert_eq!(summary.leaks.plausibility, None);
}

/// (seconds, live bytes, live count) per row of `memory_samples.csv`.
fn summary_samples(outcome: &profiler::session::Outcome) -> Vec<(f64, i64, i64)> {
    let csv = std::fs::read_to_string(outcome.dir.join("memory_samples.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (t, bytes, count) = (
        column("elapsed_s"),
        column("live_bytes"),
        column("live_count"),
    );
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (
                fields[t].parse().unwrap(),
                fields[bytes].parse().unwrap(),
                fields[count].parse().unwrap(),
            )
        })
        .collect()
}

fn ring_fixture(output: &str, libs: &'static [&'static str], period_ms: &str) -> ChildGuard {
    start_fixture(
        &CBuild {
            source: "alloc_ring",
            output,
            cflags: ALLOC_FLAGS,
            libs,
        },
        &[
            &RING_BLOCKS.to_string(),
            "20000",
            period_ms,
            &RING_SIZE.to_string(),
        ],
    )
}

/// glibc hands a freed 4 KiB block straight back: each free must retire it before the
/// malloc that reuses it is tracked, in every snapshot.
#[test]
fn ring_of_reused_addresses_on_glibc() {
    require_root!();
    check_ring(
        ring_fixture("alloc_ring", &[], "100"),
        "alloc-ring-glibc",
        4,
    );
}

#[test]
fn ring_of_reused_addresses_on_jemalloc() {
    require_root!();
    check_ring(
        ring_fixture("alloc_ring-jemalloc", &["-ljemalloc"], "100"),
        "alloc-ring-jemalloc",
        4,
    );
}

/// Rust's global allocator (calloc for zeroed boxes, free on drop).
#[test]
fn ring_of_reused_addresses_in_rust() {
    require_root!();
    let path = testbed::fixture::testbed_bin("fixture-alloc-ring").expect("fixture builds");
    let mut fixture = ChildGuard::spawn(std::process::Command::new(path).args([
        &RING_BLOCKS.to_string(),
        "20000",
        "100",
        &RING_SIZE.to_string(),
    ]))
    .expect("fixture starts");
    fixture
        .wait_for_line("ready", Duration::from_secs(10))
        .expect("fixture gets ready");
    check_ring(fixture, "alloc-ring-rust", 4);
}

/// Attached while the ring turns flat out, and ended mid-burst: the programs start and stop
/// accounting at one instant, so neither window leaves frees or allocations counted alone.
#[test]
fn ring_attached_and_ended_while_allocating_flat_out() {
    require_root!();
    check_ring(
        ring_fixture("alloc_ring", &[], "0"),
        "alloc-ring-flat-out",
        3,
    );
}

/// Samples taken while the target runs our uprobe programs (a cpu-clock sample can interrupt
/// them) carry our programs' names from kallsyms, `bpf_prog_<tag>_<name>`, so the probes' own
/// cost shows as ours; once unloaded, kallsyms had named them after the last vmlinux symbol.
#[test]
fn samples_inside_our_programs_are_named_as_ours() {
    require_root!();
    let fixture = ring_fixture("alloc_ring", &[], "0");
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(3),
        output_dir("alloc-own-frames"),
    );
    opts.cpu = Some(profiler::probes::cpu::Config { frequency: 999 });
    opts.alloc = Some(profiler::probes::alloc::Config::default());
    let (_, outcome) = capture(opts, || {});
    let stacks = folded(&outcome, "cpu.folded");
    let ours: u64 = stacks
        .iter()
        .filter(|(frames, _)| {
            frames.iter().any(|f| {
                f.starts_with("bpf_prog_")
                    && f.ends_with("_[k]")
                    && (f.contains("_alloc_") || f.contains("_step"))
            })
        })
        .map(|(_, n)| n)
        .sum();
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    assert!(
        ours >= 3,
        "{ours} of {total} samples inside our programs; stacks: {:#?}",
        &stacks[..stacks.len().min(20)]
    );
    assert!(
        !stacks
            .iter()
            .any(|(frames, _)| frames.iter().any(|f| f.contains("__stop_runtime"))),
        "a BPF frame named after the last vmlinux symbol"
    );
}

/// `--alloc-duty 20`: the allocation probes come and go in 200 ms windows while `free` stays
/// probed. Beside a ring turning every half second (so blocks tracked in a window are freed
/// between windows), the leaking function is the suspect, no ring block is, and its live bytes
/// scaled by the measured duty come within 30% of what it leaked: the leak spans about 8
/// windows, so one window more or less inside it is 12%, and a busy machine runs the fixture
/// unevenly across the rest.
#[test]
fn time_sampled_windows_find_the_leak_and_no_ring_block() {
    require_root!();
    let mut fixture = start_fixture(
        &CBuild {
            source: "alloc_leak_ring",
            output: "alloc_leak_ring",
            cflags: ALLOC_FLAGS,
            libs: &[],
        },
        &["1000", "4096", "96", "2", "10", "8"],
    );
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(11),
        output_dir("alloc-duty"),
    );
    opts.cpu = None;
    opts.alloc = Some(profiler::probes::alloc::Config {
        min_age: Duration::from_secs(2),
        duty: 0.2,
        ..Default::default()
    });
    opts.interval = Some(Duration::from_secs(1));
    let (end, outcome) = capture(opts, || fixture.signal(libc::SIGUSR1).unwrap());
    assert_eq!(end, profiler::session::EndReason::Duration);
    let done = fixture
        .wait_for_line("done leaked", Duration::from_secs(5))
        .unwrap();
    let leaked: f64 = done.split_whitespace().nth(2).unwrap().parse().unwrap();
    let summary = outcome.summary.alloc.as_ref().expect("alloc section");
    let leaks = outcome.leaks.as_ref().expect("leak report");
    assert!(leaks.estimate);
    assert!(
        (0.12..=0.3).contains(&leaks.duty),
        "measured duty {}",
        leaks.duty
    );
    assert!(leaks.windows >= 8, "{} windows", leaks.windows);
    let top = leaks.suspects.first().expect("a suspect");
    assert_eq!(caller(top), "leaky_path", "{:#?}", leaks.suspects);
    assert!(
        (top.live_bytes as f64 - leaked).abs() <= leaked * 0.3,
        "leaky_path estimated {} B live, leaked {leaked} B (duty {:.3}, {} sampled blocks)",
        top.live_bytes,
        leaks.duty,
        leaks.sampled_live_count
    );
    assert!(
        !leaks
            .suspects
            .iter()
            .any(|s| s.frames.iter().any(|f| f == "ring_block")),
        "a ring block taken for a leak: {:#?}",
        leaks.suspects
    );
    // Frees of blocks made between windows are ignored, not taken for blocks from before the
    // attach; the ring's tracked blocks were all freed through the probe that stayed.
    assert_eq!(summary.unknown_frees, 0);
    assert!(summary.unsampled_frees > 1000, "{summary:#?}");
    assert!(summary.frees > 500, "{} frees", summary.frees);
    let dropped = &outcome.summary.dropped;
    for counter in [
        "alloc_missed_frees",
        "alloc_missed_returns",
        "alloc_live_full",
    ] {
        assert_eq!(dropped[counter], 0, "{counter}");
    }
    let text = std::fs::read_to_string(outcome.dir.join("leaks.txt")).unwrap();
    assert!(text.contains("of the time in"), "{text}");
}

/// `--alloc` beside `--memory`: a page fault inside malloc, whose return address the return
/// probe swapped for the `[uprobes]` trampoline, still unwinds to malloc's caller (the entry
/// probe kept the address; the walk puts it back). Before, such stacks ended at the
/// trampoline.
#[test]
fn faults_inside_malloc_unwind_past_the_return_probe() {
    require_root!();
    let mut fixture = start_fixture(
        &CBuild {
            source: "alloc_fault_in_malloc",
            output: "alloc_fault_in_malloc",
            cflags: ALLOC_FLAGS,
            libs: &[],
        },
        &["65536", "4", "4"],
    );
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(6),
        output_dir("alloc-fault-in-malloc"),
    );
    opts.cpu = None;
    opts.alloc = Some(profiler::probes::alloc::Config::default());
    opts.memory = Some(profiler::probes::memory::Config::default());
    let (_, outcome) = capture(opts, || fixture.signal(libc::SIGUSR1).unwrap());
    fixture
        .wait_for_line("done grew", Duration::from_secs(5))
        .unwrap();
    let stacks = folded(&outcome, "memory.folded");
    // Growth faulted inside the allocator: a frame of malloc's below the leaf.
    let in_malloc: Vec<&(Vec<String>, u64)> = stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f.contains("malloc")))
        .collect();
    let total: u64 = in_malloc.iter().map(|(_, n)| n).sum();
    let through_caller: u64 = in_malloc
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f == "grow_heap"))
        .map(|(_, n)| n)
        .sum();
    assert!(total > 0, "no growth inside malloc: {stacks:#?}");
    assert!(
        through_caller as f64 >= total as f64 * 0.9,
        "{through_caller} of {total} bytes grown inside malloc reach grow_heap: {in_malloc:#?}"
    );
    // The trampoline's page is named by no file: `[uprobes]` or `[unknown]`.
    assert!(
        !in_malloc
            .iter()
            .any(|(frames, _)| frames.iter().any(|f| f.starts_with('['))),
        "a stack passes through the return probe's trampoline: {in_malloc:#?}"
    );
}
