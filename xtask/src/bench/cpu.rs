//! `cargo xtask bench cpu`: what sampling costs the target. A fixture does a fixed amount of
//! CPU-bound work on both CPUs, alone and with each profiler attached at 99 Hz and 999 Hz; the
//! runs are interleaved round by round and each ratio is against the bare run of its round.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use testbed::{
    fixture::{CBuild, FRAME_POINTERS, NO_FRAME_POINTERS, build_c},
    process::ChildGuard,
};

use super::{Attached, BenchArgs, Unwind, cpu_time, median, write_result};
use crate::util;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tool {
    Bare,
    Profiler(u64),
    Perf(u64),
}

impl Tool {
    fn name(self, unwind: Unwind) -> String {
        match (self, unwind) {
            (Self::Bare, _) => "bare".into(),
            (Self::Profiler(hz), _) => format!("profiler-{}@{hz}Hz", unwind.as_str()),
            (Self::Perf(hz), Unwind::Dwarf) => format!("perf-record-dwarf@{hz}Hz"),
            (Self::Perf(hz), _) => format!("perf-record-g@{hz}Hz"),
        }
    }
}

#[derive(Debug, Serialize)]
struct Config {
    name: String,
    /// Median over rounds of (this run's time / the bare run's time in the same round).
    median_ratio: f64,
    overhead_percent: f64,
    elapsed_ns: Vec<u64>,
}

#[derive(Debug, Default, Serialize)]
struct ProfilerCost {
    /// Peak resident set of the profiler process, over attach, capture and report.
    peak_rss_mb: f64,
    /// CPU time of the profiler process while capturing, as a share of one core.
    capture_cpu_percent_of_core: f64,
}

#[derive(Debug, Serialize)]
struct Result {
    bench: &'static str,
    unwind: &'static str,
    fixture: &'static str,
    timestamp: String,
    kernel: String,
    cpus: usize,
    iterations: u64,
    rounds: usize,
    configs: Vec<Config>,
    /// Median over rounds, by frequency.
    profiler_cost: BTreeMap<String, ProfilerCost>,
    /// `profiler unwind-tables` on libc and a large library: what attaching costs up front.
    table_builds: serde_json::Value,
}

struct Run {
    elapsed_ns: u64,
    cost: Option<(f64, f64)>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    let (output, cflags) = match args.unwind {
        Unwind::Dwarf => ("cpu_work-nofp", NO_FRAME_POINTERS),
        _ => ("cpu_work-fp", FRAME_POINTERS),
    };
    let fixture = build_c(&CBuild {
        source: "cpu_work",
        output,
        cflags,
        libs: &[],
    })?;
    let tools = [
        Tool::Bare,
        Tool::Profiler(99),
        Tool::Profiler(999),
        Tool::Perf(99),
        Tool::Perf(999),
    ];
    let mut runs: Vec<Vec<Run>> = tools.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds() {
        // Rotate the order each round so no tool always runs first or after the same neighbour.
        for k in 0..tools.len() {
            let i = (k + round) % tools.len();
            let name = tools[i].name(args.unwind);
            let run = measure(tools[i], args.unwind, &fixture, &profiler, args.iterations)
                .with_context(|| format!("round {round}, {name}"))?;
            eprintln!(
                "round {}/{}: {name:<26} {:>8.3} s",
                round + 1,
                args.rounds(),
                run.elapsed_ns as f64 / 1e9
            );
            runs[i].push(run);
        }
    }

    let bare: Vec<u64> = runs[0].iter().map(|r| r.elapsed_ns).collect();
    let mut configs = Vec::new();
    let mut profiler_cost = BTreeMap::new();
    for (tool, tool_runs) in tools.iter().zip(&runs) {
        let mut ratios: Vec<f64> = tool_runs
            .iter()
            .zip(&bare)
            .map(|(r, b)| r.elapsed_ns as f64 / *b as f64)
            .collect();
        let ratio = median(&mut ratios);
        configs.push(Config {
            name: tool.name(args.unwind),
            median_ratio: ratio,
            overhead_percent: (ratio - 1.0) * 100.0,
            elapsed_ns: tool_runs.iter().map(|r| r.elapsed_ns).collect(),
        });
        if let Tool::Profiler(hz) = tool {
            let mut rss: Vec<f64> = tool_runs
                .iter()
                .filter_map(|r| r.cost.map(|c| c.0))
                .collect();
            let mut cpu: Vec<f64> = tool_runs
                .iter()
                .filter_map(|r| r.cost.map(|c| c.1))
                .collect();
            profiler_cost.insert(
                format!("{hz}Hz"),
                ProfilerCost {
                    peak_rss_mb: median(&mut rss),
                    capture_cpu_percent_of_core: median(&mut cpu),
                },
            );
        }
    }
    let table_builds = table_builds(&profiler)?;
    let result = Result {
        bench: "cpu",
        unwind: args.unwind.as_str(),
        fixture: output,
        timestamp: jiff::Timestamp::now().to_string(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        iterations: args.iterations,
        rounds: args.rounds(),
        configs,
        profiler_cost,
        table_builds,
    };
    println!(
        "\ncpu sampling overhead on {output} (median of {} interleaved rounds)",
        args.rounds()
    );
    for config in &result.configs {
        println!("  {:<26} {:+6.2}%", config.name, config.overhead_percent);
    }
    if let Some(files) = result.table_builds.as_array() {
        let total: f64 = files.iter().filter_map(|f| f["build_ms"].as_f64()).sum();
        for file in files {
            println!(
                "  unwind table: {} rows in {:.0} ms for {}",
                file["rows"],
                file["build_ms"].as_f64().unwrap_or(f64::NAN),
                file["path"]
            );
        }
        println!("  unwind tables, all of the above: {total:.0} ms");
    }
    for (hz, cost) in &result.profiler_cost {
        println!(
            "  profiler at {hz}: peak RSS {:.1} MB, {:.2}% of a core while capturing",
            cost.peak_rss_mb, cost.capture_cpu_percent_of_core
        );
    }
    let path = write_result("cpu", &result)?;
    println!("written to {}", path.display());
    Ok(())
}

/// Libraries whose tables the bench times: libc, and the largest library setup installs
/// (bpftrace's libLLVM, over 100 MB), falling back to bpf-linker.
const TABLE_FILES: &[&str] = &["/usr/lib/x86_64-linux-gnu/libc.so.6"];
const LARGE_FILES: &[&str] = &["/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1"];

fn table_builds(profiler: &Path) -> anyhow::Result<serde_json::Value> {
    let large = LARGE_FILES
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cargo/bin/bpf-linker"))
        })
        .context("no large binary to time")?;
    let out = util::output(
        Command::new(profiler)
            .args(["unwind-tables", "--json"])
            .args(TABLE_FILES)
            .arg(large),
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn measure(
    tool: Tool,
    unwind: Unwind,
    fixture: &Path,
    profiler: &Path,
    iterations: u64,
) -> anyhow::Result<Run> {
    let mut target = ChildGuard::spawn(Command::new(fixture).arg(iterations.to_string()).arg("2"))?;
    target.wait_for_line("ready", Duration::from_secs(10))?;
    let pid = target.pid().to_string();
    let scratch = std::env::temp_dir().join(format!("profiler-bench-{}", std::process::id()));
    let mut attached = match tool {
        Tool::Bare => None,
        Tool::Profiler(hz) => {
            let mut cmd = Command::new(profiler);
            cmd.args(["attach", "--quiet", "--pid", &pid, "-F", &hz.to_string()])
                .args(["--unwind", unwind.as_str(), "--output"])
                .arg(scratch.join("out"));
            Some(Attached::spawn(cmd, Some("profiling pid"))?)
        }
        Tool::Perf(hz) => {
            std::fs::create_dir_all(&scratch)?;
            let mut cmd = Command::new("perf");
            let call_graph = if unwind == Unwind::Dwarf {
                "dwarf"
            } else {
                "fp"
            };
            cmd.args([
                "record",
                "-q",
                "--call-graph",
                call_graph,
                "-F",
                &hz.to_string(),
            ])
            .args(["-p", &pid, "-o"])
            .arg(scratch.join("perf.data"));
            // perf says nothing once attached; give it a moment to open its events.
            let attached = Attached::spawn(cmd, None)?;
            thread::sleep(Duration::from_millis(800));
            Some(attached)
        }
    };
    let cpu_before = attached
        .as_ref()
        .map(|t| (cpu_time(t.pid()), Instant::now()));
    target.signal(libc::SIGUSR1)?;
    let line = target.wait_for_line("elapsed_ns", Duration::from_secs(600))?;
    let elapsed_ns: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("fixture printed no elapsed time")?;
    let mut cost = None;
    if let Some(attached) = attached.take() {
        let cpu_share = cpu_before.map(|(before, at)| {
            (cpu_time(attached.pid()) - before).as_secs_f64() / at.elapsed().as_secs_f64() * 100.0
        });
        let peak_rss_mb = attached.stop()?;
        if let Tool::Profiler(_) = tool {
            cost = Some((peak_rss_mb, cpu_share.unwrap_or(f64::NAN)));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(Run { elapsed_ns, cost })
}
