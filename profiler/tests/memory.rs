//! `memory` against the real kernel, as root: targets grow in known ways, and growth by stack
//! must name what grows, by how much, and leave steady and released memory out of the
//! suspects. No allocator is probed: this is what page faults and mapping calls alone show.

mod common;

use std::time::Duration;

use common::*;
use profiler::{
    compare::{Gates, compare},
    load::{LoadOptions, Profile, run_options},
    report::{
        component::{Budget, ComponentBytes, Components},
        memory::{GrowthReport, GrowthStack},
    },
};
use testbed::server::Server;

/// The leak's per-second rate and how long the fixture works: 50,000 × 96 B a second is
/// about 4.6 MiB/s, hundreds of pages every interval.
const RATE: &str = "50000";
const SECONDS: &str = "6";
const CHURN_KIB: u64 = 256;

/// Whether any frame of `stack` is `function`.
fn through(stack: &GrowthStack, function: &str) -> bool {
    stack.frames.iter().any(|f| f == function)
}

/// Bytes held by the suspects that pass through `function`.
fn suspect_bytes(report: &GrowthReport, function: &str) -> u64 {
    report
        .suspects
        .iter()
        .filter(|s| through(s, function))
        .map(|s| s.bytes)
        .sum()
}

/// Runs the growth fixture (built against `libs`) under `--memory` until it exits; returns
/// the growth report with the bytes the fixture leaked and churned.
fn run_fixture(
    output: &str,
    libs: &'static [&'static str],
    name: &str,
) -> (GrowthReport, u64, u64) {
    let mut fixture = start_fixture(
        &CBuild {
            source: "memory_growth",
            output,
            // As distributions build: stacks come from the .eh_frame tables.
            cflags: NO_FRAME_POINTERS,
            libs,
        },
        &[RATE, SECONDS, "4096", &CHURN_KIB.to_string()],
    );
    let mut opts = options(fixture.pid(), Duration::from_secs(60), output_dir(name));
    opts.cpu = None;
    opts.memory = Some(profiler::probes::memory::Config::default());
    opts.interval = Some(Duration::from_millis(500));
    let (end, outcome) = capture(opts, || fixture.signal(libc::SIGUSR1).unwrap());
    assert_eq!(end, profiler::session::EndReason::TargetExited);
    let done = fixture
        .wait_for_line("done", Duration::from_secs(5))
        .unwrap();
    let numbers: Vec<u64> = done
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    for file in [
        "growth.txt",
        "growth.json",
        "memory.folded",
        "memory.svg",
        "memory_samples.csv",
        "leaks.txt",
        "report.html",
    ] {
        assert!(outcome.dir.join(file).is_file(), "{file} missing");
    }
    let leaks = std::fs::read_to_string(outcome.dir.join("leaks.txt")).unwrap();
    assert!(
        leaks.starts_with("leak suspects from memory growth"),
        "without --alloc, leaks.txt says where it comes from: {leaks}"
    );
    let page = std::fs::read_to_string(outcome.dir.join("report.html")).unwrap();
    assert!(page.contains("leak_96"), "report.html names the leak");
    let summary = outcome.summary.memory.as_ref().expect("memory section");
    for counter in [
        "memory_pages_full",
        "memory_stacks_full",
        "memory_release_cut",
    ] {
        assert_eq!(outcome.summary.dropped[counter], 0, "{counter}");
    }
    assert!(
        summary.growth.snapshots >= 8,
        "{}",
        summary.growth.snapshots
    );
    // growth.json reads back as what the capture returned (floats to JSON's precision).
    let run = profiler::rundir::RunDir::open(&outcome.dir).unwrap();
    let back = run.growth().unwrap().expect("growth.json");
    let growth = outcome.growth.as_ref().unwrap();
    let shape = |r: &GrowthReport| -> Vec<(Vec<String>, u64)> {
        r.suspects
            .iter()
            .map(|s| (s.frames.clone(), s.bytes))
            .collect()
    };
    assert_eq!(shape(&back), shape(growth));
    assert_eq!(back.held_bytes, growth.held_bytes);
    (outcome.growth.unwrap(), numbers[0], numbers[1])
}

/// The leak's stacks are the suspects, with ≥ 90% of the growth held, and by the bytes the
/// fixture leaked (the allocator's per-block overhead on top); the ring, steady since before
/// the attach, is no suspect; the mapping churned and unmapped every step is growth released
/// by munmap, never held.
fn check(report: &GrowthReport, leaked: u64, churned: u64) {
    let leak = suspect_bytes(report, "leak_96");
    let share = leak as f64 / report.held_bytes as f64;
    assert!(
        share >= 0.9,
        "leak_96 holds {:.1}% of {} held: {report:#?}",
        share * 100.0,
        report.held_bytes
    );
    assert!(
        through(&report.suspects[0], "leak_96"),
        "the fastest suspect is the leak: {:#?}",
        report.suspects
    );
    // jemalloc stores 96 bytes in 96; glibc in a 112-byte chunk. Pages partly filled at the
    // end count whole.
    assert!(
        leak as f64 >= leaked as f64 * 0.95 && leak as f64 <= leaked as f64 * 1.3,
        "leak_96 holds {leak}, leaked {leaked}"
    );
    for steady in ["ring_turn", "churn_map"] {
        assert!(
            !report.suspects.iter().any(|s| through(s, steady)),
            "{steady} is a suspect: {:#?}",
            report.suspects
        );
    }
    let churn: Vec<&GrowthStack> = report
        .growers
        .iter()
        .filter(|s| through(s, "churn_map"))
        .collect();
    let grown: u64 = churn.iter().map(|s| s.grown_bytes).sum();
    let held: u64 = churn.iter().map(|s| s.bytes).sum();
    assert!(
        grown as f64 >= churned as f64 * 0.95 && grown <= churned + (CHURN_KIB << 10),
        "churn_map grew {grown}, churned {churned}"
    );
    assert!(held <= CHURN_KIB << 10, "churn_map still holds {held}");
    // The fixture's only munmap (called from churn_map, whose tail call leaves main as its
    // caller on the stack).
    let unmapped: u64 = report
        .changes
        .iter()
        .filter(|c| c.call == "munmap")
        .map(|c| c.released_bytes)
        .sum();
    assert!(
        unmapped as f64 >= churned as f64 * 0.95,
        "munmap from churn_map released {unmapped}, churned {churned}: {:#?}",
        report.changes
    );
    assert!(report.anon_growing);
}

#[test]
fn names_the_leak_on_glibc() {
    require_root!();
    let (report, leaked, churned) = run_fixture("memory_growth", &[], "memory-glibc");
    check(&report, leaked, churned);
}

#[test]
fn names_the_leak_on_jemalloc() {
    require_root!();
    let (report, leaked, churned) =
        run_fixture("memory_growth-jemalloc", &["-ljemalloc"], "memory-jemalloc");
    check(&report, leaked, churned);
}

/// The growth fixture's ring slots.
const SLOTS: u64 = 4096;

/// Runs the growth fixture with a budget file naming two components, the leak (`leak_96`,
/// 64 KiB) and the ring (`ring_turn`, 64 MiB), under `--alloc` or `--memory`; returns the
/// outcome, that family's components and the bytes the fixture leaked.
fn budget_capture(name: &str, alloc: bool) -> (profiler::session::Outcome, Components, u64) {
    let dir = output_dir(name);
    let budget_file = dir.with_extension("toml");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    std::fs::write(
        &budget_file,
        "[[component]]\nname = \"leak\"\nframes = [\"leak_96\"]\nbudget = \"64 KiB\"\n\n\
         [[component]]\nname = \"ring\"\nframes = [\"ring_turn\"]\nbudget = \"64 MiB\"\n",
    )
    .unwrap();
    let budget = Budget::load(&budget_file).unwrap();
    let mut fixture = start_fixture(
        &CBuild {
            source: "memory_growth",
            output: "memory_growth",
            cflags: NO_FRAME_POINTERS,
            libs: &[],
        },
        &["20000", "4", &SLOTS.to_string(), "64"],
    );
    let mut opts = options(fixture.pid(), Duration::from_secs(60), dir);
    opts.cpu = None;
    // One family a run: with --alloc's return probes pending, a page fault inside malloc has
    // the uretprobe trampoline for a return address and its walk stops there.
    if alloc {
        opts.alloc = Some(profiler::probes::alloc::Config {
            budget: Some(budget),
            ..Default::default()
        });
    } else {
        opts.memory = Some(profiler::probes::memory::Config {
            budget: Some(budget),
            ..Default::default()
        });
    }
    opts.interval = Some(Duration::from_millis(500));
    let (end, outcome) = capture(opts, || fixture.signal(libc::SIGUSR1).unwrap());
    assert_eq!(end, profiler::session::EndReason::TargetExited);
    let done = fixture
        .wait_for_line("done", Duration::from_secs(5))
        .unwrap();
    let leaked: u64 = done.split_whitespace().nth(2).unwrap().parse().unwrap();
    let components = if alloc {
        outcome
            .summary
            .alloc
            .as_ref()
            .unwrap()
            .leaks
            .components
            .clone()
    } else {
        outcome
            .summary
            .memory
            .as_ref()
            .unwrap()
            .growth
            .components
            .clone()
    };
    // Loudly: first in the digest, at the top of the family's report, in the terminal, on
    // the page; the ring, within its budget, nowhere.
    let findings = &outcome.summary.findings;
    assert!(
        findings[0].what.starts_with("OVER BUDGET: component leak"),
        "{findings:#?}"
    );
    assert!(
        !findings.iter().any(|f| f.what.contains("component ring")),
        "{findings:#?}"
    );
    let file = if alloc { "leaks.txt" } else { "growth.txt" };
    let text = std::fs::read_to_string(outcome.dir.join(file)).unwrap();
    assert!(
        text.starts_with("OVER BUDGET: component leak"),
        "{file}: {text}"
    );
    assert!(outcome.terminal.contains("OVER BUDGET: component leak"));
    let page = std::fs::read_to_string(outcome.dir.join("report.html")).unwrap();
    assert!(page.contains("OVER BUDGET: leak holds"));
    // summary.json reads back with the components (floats to JSON's precision).
    let run = profiler::rundir::RunDir::open(&outcome.dir).unwrap();
    let back = if alloc {
        &run.summary.alloc.as_ref().unwrap().leaks.components
    } else {
        &run.summary.memory.as_ref().unwrap().growth.components
    };
    let shape = |c: &Components| -> Vec<(String, u64, Option<u64>, bool)> {
        c.components
            .iter()
            .map(|k| (k.name.clone(), k.bytes, k.budget_bytes, k.over_budget))
            .collect()
    };
    assert_eq!(shape(back), shape(&components));
    // The run against itself: nothing grew, but the leak's budget gate fails.
    let c = compare(
        &outcome.dir,
        &outcome.dir,
        &outcome.dir.join("compare"),
        &Gates::default(),
    )
    .unwrap();
    let result = |name: &str| {
        c.gates
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.result.clone())
            .unwrap_or_else(|| panic!("no gate {name}: {:#?}", c.gates))
    };
    assert_eq!(result("budget leak"), "fail");
    assert_eq!(result("budget ring"), "pass");
    assert_eq!(result("component leak"), "pass");
    assert_eq!(c.verdict, "regression");
    (outcome, components, leaked)
}

fn component(c: &Components, name: &str) -> ComponentBytes {
    c.components
        .iter()
        .find(|k| k.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no component {name}: {c:#?}"))
}

/// Allocations split between the two components exactly as the fixture made them: every
/// block it leaked on the leak, over budget; the ring's blocks (all re-made during the
/// capture) on the ring, within budget.
#[test]
fn budgets_split_live_bytes_by_component() {
    require_root!();
    let (_, components, leaked) = budget_capture("budget-alloc", true);
    // The ring's slots are 128 + (i % 16) × 120 bytes (memory_growth.c).
    let ring: u64 = (0..SLOTS).map(|i| 128 + (i % 16) * 120).sum();
    let (leak, ring_live) = (
        component(&components, "leak"),
        component(&components, "ring"),
    );
    assert!(
        leak.bytes as f64 >= leaked as f64 * 0.99 && leak.bytes <= leaked,
        "leak component {} live, the fixture leaked {leaked}",
        leak.bytes
    );
    assert!(leak.over_budget && leak.budget_bytes == Some(64 << 10));
    assert!(
        ring_live.bytes as f64 >= ring as f64 * 0.99 && ring_live.bytes <= ring,
        "ring component {} live, the ring holds {ring}",
        ring_live.bytes
    );
    assert!(!ring_live.over_budget);
}

/// Growth split between the components: the leak's pages on the leak, over budget; none on
/// the ring, which reuses its blocks; the churned mapping, released, on the fixture's
/// default component (its executable) and held by nobody.
#[test]
fn budgets_split_growth_by_component() {
    require_root!();
    let (_, components, leaked) = budget_capture("budget-memory", false);
    let (leak, ring) = (
        component(&components, "leak"),
        component(&components, "ring"),
    );
    // glibc keeps 96 bytes in a 112-byte chunk; pages partly filled at the end count whole.
    assert!(
        leak.bytes as f64 >= leaked as f64 * 0.95 && leak.bytes as f64 <= leaked as f64 * 1.3,
        "leak component holds {} grown, the fixture leaked {leaked}",
        leak.bytes
    );
    assert!(leak.over_budget);
    assert!(
        ring.bytes <= 64 << 10,
        "the ring reuses its blocks, yet holds {} grown",
        ring.bytes
    );
    let fixture = component(&components, "memory_growth");
    assert!(
        fixture.bytes <= 256 << 10,
        "the churned mapping is released, yet its component holds {}",
        fixture.bytes
    );
}

/// The testbed pool under the load driver with `--leak-bytes`: growth alone (no allocator
/// probe) finds `leak_bytes`, holding what the pool says it leaked.
#[test]
fn finds_the_pools_leak_under_load() {
    require_root!();
    const LEAK: u64 = 16 * 1024;
    let pool = Server::start("testbed-pool", &["--leak-bytes", &LEAK.to_string()]).unwrap();
    let mut load = LoadOptions::new(
        format!("stratum://{}", pool.addr).parse().unwrap(),
        Profile::Smoke,
    );
    load.miners = 20;
    load.duration = Duration::from_secs(9);
    load.ramp_up = Duration::from_secs(1);
    load.share_rate = 300.0;
    let mut opts = options(
        pool.pid(),
        Duration::from_secs(10),
        output_dir("memory-pool"),
    );
    opts.cpu = None;
    opts.memory = Some(profiler::probes::memory::Config::default());
    opts.interval = Some(Duration::from_secs(1));
    // Started once attached: every block leaked is leaked during the capture.
    let mut driver = None;
    let (_, outcome) = capture(opts, || {
        driver = Some(std::thread::spawn(move || run_options(load)));
    });
    let report = driver.unwrap().join().unwrap().unwrap();
    let stopped = pool.stop().unwrap();
    assert!(report.requests.accepted > 100, "{:?}", report.requests);
    let leaked = stopped.count("leaked_bytes").unwrap();
    let growth = outcome.growth.unwrap();
    let top = growth.suspects.first().expect("a suspect");
    assert!(
        through(top, "leak_bytes"),
        "the fastest suspect is the leak: {:#?}",
        growth.suspects
    );
    let leak = suspect_bytes(&growth, "leak_bytes");
    assert!(
        leak as f64 >= leaked as f64 * 0.9 && leak as f64 <= leaked as f64 * 1.2 + 65536.0,
        "leak_bytes holds {leak}, the pool leaked {leaked}: {growth:#?}"
    );
    // By default a component is the module of the pool's own code nearest the leaf: the
    // extern "C" leak_bytes has no module path, its caller `Session::submit` does. The leak
    // makes it the largest component.
    let session = &growth.components.components[0];
    assert_eq!(
        session.name, "testbed::pool::session",
        "{:#?}",
        growth.components
    );
    assert!(
        session.bytes >= leak,
        "testbed::pool::session holds {}, leak_bytes {leak}",
        session.bytes
    );
}
