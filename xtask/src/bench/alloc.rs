//! `cargo xtask bench alloc`: what allocation tracking costs per malloc+free pair. A fixture
//! runs a fixed number of malloc(64)+free pairs alone, with `--alloc`, with
//! `--alloc --alloc-sample 64`, with `--alloc --alloc-duty 10` (malloc probed in windows a
//! tenth of the time, free always; its run is ten times longer, so it spans many windows
//! rather than the first), and with bpftrace's bare probes on the same functions
//! (uprobe+uretprobe on malloc, uprobe on free, counting only): the floor any uprobe-based
//! tracker pays. Interleaved round by round; the added cost per pair is (traced - bare) / pairs,
//! per pair of each run's own length.
//! All of it on glibc's malloc and on jemalloc's (the fixture linked with `-ljemalloc`): the
//! floor probes each function at its entry, where the kernel single-steps an instruction it
//! cannot emulate (jemalloc's `free` begins with nine), while the profiler probes past them.
//! Then the profiler's own memory with a million live allocations tracked.

use std::{path::Path, process::Command, thread, time::Duration};

use anyhow::Context;
use serde::Serialize;
use testbed::{
    fixture::{CBuild, build_c},
    process::ChildGuard,
};

use super::{Attached, BenchArgs, median, write_result};
use crate::util;

const PAIRS: u64 = 300_000;
const LIVE: u64 = 1_000_000;
const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// The allocators measured: name, the library the floor probes, the fixture's link flags.
const ALLOCATORS: [(&str, &str, &[&str]); 2] = [
    ("glibc", LIBC, &[]),
    ("jemalloc", JEMALLOC, &["-ljemalloc"]),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tool {
    Bare,
    Full,
    Sampled,
    Windowed,
    Floor,
}

impl Tool {
    /// malloc+free pairs a run makes: a windowed run must span many 2 s window periods.
    fn pairs(self) -> u64 {
        match self {
            Self::Windowed => PAIRS * 10,
            _ => PAIRS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Full => "profiler --alloc",
            Self::Sampled => "profiler --alloc --alloc-sample 64",
            Self::Windowed => "profiler --alloc --alloc-duty 10",
            Self::Floor => "bpftrace uprobes (floor)",
        }
    }
}

#[derive(Debug, Serialize)]
struct Config {
    name: &'static str,
    elapsed_ns: Vec<u64>,
    /// Median over rounds of this run's time over the bare run's.
    median_ratio: f64,
    /// Median over rounds of (this run - bare run) / pairs.
    added_ns_per_pair: f64,
}

#[derive(Debug, Serialize)]
struct Result {
    bench: &'static str,
    timestamp: String,
    rounds: usize,
    pairs: u64,
    allocators: Vec<AllocatorResult>,
    live_allocations: u64,
    profiler_peak_rss_mb_with_live: f64,
}

#[derive(Debug, Serialize)]
struct AllocatorResult {
    allocator: &'static str,
    configs: Vec<Config>,
    /// `--alloc --alloc-sample 64` over the floor, per pair.
    sampled_over_floor: f64,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    let rounds = args.rounds().max(5);
    let mut allocators = Vec::new();
    let mut glibc_fixture = None;
    for (allocator, library, libs) in ALLOCATORS {
        let fixture = build_c(&CBuild {
            source: "malloc_bench",
            output: &format!("malloc_bench-{allocator}"),
            cflags: &[
                "-O2",
                "-g",
                "-fno-omit-frame-pointer",
                "-fno-builtin-malloc",
                "-fno-builtin-free",
            ],
            libs,
        })?;
        allocators.push(
            measure_allocator(allocator, library, &fixture, &profiler, rounds)
                .with_context(|| allocator.to_string())?,
        );
        glibc_fixture.get_or_insert(fixture);
    }
    let fixture = glibc_fixture.context("the glibc fixture")?;
    let rss = live_rss(&fixture, &profiler)?;
    let result = Result {
        bench: "alloc",
        timestamp: jiff::Timestamp::now().to_string(),
        rounds,
        pairs: PAIRS,
        allocators,
        live_allocations: LIVE,
        profiler_peak_rss_mb_with_live: rss,
    };
    for a in &result.allocators {
        println!(
            "
{}: malloc(64)+free pairs (median of {rounds} interleaved rounds)",
            a.allocator
        );
        for c in &a.configs {
            println!(
                "  {:<36} {:>9.1} ns/pair added   x{:.1}",
                c.name, c.added_ns_per_pair, c.median_ratio
            );
        }
        println!(
            "  sampled tracking costs {:.2}x the bare-probe floor",
            a.sampled_over_floor
        );
    }
    println!(
        "  profiler peak RSS with {} live allocations tracked: {:.1} MB",
        LIVE, result.profiler_peak_rss_mb_with_live
    );
    let path = write_result("alloc", &result)?;
    println!("written to {}", path.display());
    Ok(())
}

fn measure_allocator(
    allocator: &'static str,
    library: &str,
    fixture: &Path,
    profiler: &Path,
    rounds: usize,
) -> anyhow::Result<AllocatorResult> {
    let tools = [
        Tool::Bare,
        Tool::Full,
        Tool::Sampled,
        Tool::Windowed,
        Tool::Floor,
    ];
    let mut runs: Vec<Vec<u64>> = tools.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..tools.len() {
            let i = (k + round) % tools.len();
            let ns = measure(tools[i], fixture, profiler, library)
                .with_context(|| format!("round {round}, {}", tools[i].name()))?;
            eprintln!(
                "{allocator} round {}/{rounds}: {:<36} {:>8.1} ns/pair",
                round + 1,
                tools[i].name(),
                ns as f64 / tools[i].pairs() as f64
            );
            runs[i].push(ns);
        }
    }
    let configs: Vec<Config> = tools
        .iter()
        .zip(&runs)
        .map(|(tool, times)| {
            let per_pair = |t: u64| t as f64 / tool.pairs() as f64;
            let bare = |b: u64| b as f64 / PAIRS as f64;
            let mut ratios: Vec<f64> = times
                .iter()
                .zip(&runs[0])
                .map(|(t, b)| per_pair(*t) / bare(*b))
                .collect();
            let mut added: Vec<f64> = times
                .iter()
                .zip(&runs[0])
                .map(|(t, b)| per_pair(*t) - bare(*b))
                .collect();
            Config {
                name: tool.name(),
                elapsed_ns: times.clone(),
                median_ratio: median(&mut ratios),
                added_ns_per_pair: median(&mut added),
            }
        })
        .collect();
    let sampled_over_floor = configs[2].added_ns_per_pair / configs[4].added_ns_per_pair;
    Ok(AllocatorResult {
        allocator,
        configs,
        sampled_over_floor,
    })
}

fn attach(
    tool: Tool,
    profiler: &Path,
    pid: &str,
    out: &Path,
    library: &str,
) -> anyhow::Result<Option<Attached>> {
    let profiler_cmd = |sample: &str| {
        let mut cmd = Command::new(profiler);
        cmd.args([
            "attach",
            "--quiet",
            "--alloc",
            "--alloc-sample",
            sample,
            "--pid",
            pid,
        ])
        .arg("--output")
        .arg(out);
        cmd
    };
    Ok(match tool {
        Tool::Bare => None,
        Tool::Full => Some(Attached::spawn(profiler_cmd("1"), Some("profiling pid"))?),
        Tool::Sampled => Some(Attached::spawn(profiler_cmd("64"), Some("profiling pid"))?),
        Tool::Windowed => {
            let mut cmd = profiler_cmd("1");
            cmd.args(["--alloc-duty", "10"]);
            Some(Attached::spawn(cmd, Some("profiling pid"))?)
        }
        Tool::Floor => {
            let script = format!(
                "uprobe:{library}:malloc /pid == {pid}/ {{ @m = count(); }} \
                 uretprobe:{library}:malloc /pid == {pid}/ {{ @r = count(); }} \
                 uprobe:{library}:free /pid == {pid}/ {{ @f = count(); }}"
            );
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", &script]);
            let attached = Attached::spawn(cmd, None)?;
            thread::sleep(Duration::from_secs(2));
            Some(attached)
        }
    })
}

fn measure(tool: Tool, fixture: &Path, profiler: &Path, library: &str) -> anyhow::Result<u64> {
    let mut target =
        ChildGuard::spawn(Command::new(fixture).args(["pairs", &tool.pairs().to_string()]))?;
    target.wait_for_line("ready", Duration::from_secs(10))?;
    let pid = target.pid().to_string();
    let out = std::env::temp_dir().join(format!("profiler-bench-alloc-{}", std::process::id()));
    let attached = attach(tool, profiler, &pid, &out, library)?;
    target.signal(libc::SIGUSR1)?;
    let line = target.wait_for_line("elapsed_ns", Duration::from_secs(300))?;
    let ns = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("fixture printed no time")?;
    drop(target);
    if let Some(attached) = attached {
        match tool {
            Tool::Floor => {
                attached.stop()?;
            }
            _ => {
                attached.wait_exit(Duration::from_secs(60))?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(ns)
}

/// The profiler's peak RSS while a target holds a million tracked allocations and the capture
/// ends (reports written).
fn live_rss(fixture: &Path, profiler: &Path) -> anyhow::Result<f64> {
    let mut target = ChildGuard::spawn(Command::new(fixture).args(["hold", &LIVE.to_string()]))?;
    target.wait_for_line("ready", Duration::from_secs(10))?;
    let pid = target.pid().to_string();
    let out =
        std::env::temp_dir().join(format!("profiler-bench-alloc-live-{}", std::process::id()));
    let attached = attach(Tool::Full, profiler, &pid, &out, LIBC)?.context("profiler attached")?;
    target.signal(libc::SIGUSR1)?;
    target.wait_for_line("holding", Duration::from_secs(300))?;
    let rss = attached.stop()?;
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json"))?)?;
    let tracked = summary["alloc"]["tracked"].as_u64().unwrap_or(0);
    anyhow::ensure!(tracked >= LIVE, "only {tracked} allocations tracked");
    let _ = std::fs::remove_dir_all(&out);
    Ok(rss)
}
