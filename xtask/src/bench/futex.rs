//! `cargo xtask bench futex`: what lock tracing costs lock-heavy code. The fixture's four
//! threads take one hot pthread mutex with sub-microsecond critical sections on every core
//! (about a million critical sections a second, tens of thousands of futex waits and wakes);
//! throughput is critical sections completed in a fixed time, as a share of bare, with each
//! tool attached before the work starts, all tools interleaved round by round.
//!
//! The two anchors are bpftrace: counting `sys_enter/exit_futex` and nothing else (the cost of
//! the hooks alone), and timing each futex wait keyed by `ustack, kstack` (frame pointers: its
//! stacks stop at Debian's glibc, ours go through it), the simplest tool that takes stacks.
//! Targets (issue 19): `--futex` ≥ 0.75 of bare and at or above bpftrace with stacks,
//! `--offcpu` ≥ 0.95, `--all` ≥ 0.7.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use testbed::{
    fixture::{CBuild, FRAME_POINTERS, build_c},
    process::ChildGuard,
};

use super::{Attached, BenchArgs, cpu_time, median, write_result};
use crate::util;

const RUN_SECONDS: &str = "3";
/// Microseconds each critical section holds the lock.
const HOLD_US: &str = "0.2";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tool {
    Bare,
    /// bpftrace counting sys_enter/exit_futex: the cost of the hooks alone.
    BpftraceCount,
    /// bpftrace timing each futex wait by `ustack, kstack`.
    BpftraceStacks,
    Futex,
    Offcpu,
    All,
}

const TOOLS: [Tool; 6] = [
    Tool::Bare,
    Tool::BpftraceCount,
    Tool::BpftraceStacks,
    Tool::Futex,
    Tool::Offcpu,
    Tool::All,
];

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Bare => "bare",
            Tool::BpftraceCount => "bpftrace count-only",
            Tool::BpftraceStacks => "bpftrace wait by ustack,kstack",
            Tool::Futex => "profiler --futex",
            Tool::Offcpu => "profiler --offcpu",
            Tool::All => "profiler --all",
        }
    }

    fn profiler_flag(self) -> Option<&'static str> {
        match self {
            Tool::Futex => Some("--futex"),
            Tool::Offcpu => Some("--offcpu"),
            Tool::All => Some("--all"),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
struct Row {
    tool: &'static str,
    iterations: Vec<u64>,
    /// Median over rounds of this tool's / bare throughput in the same round.
    share_of_bare: f64,
    /// Lowest and highest per-round share: how noisy the figure is.
    share_min: f64,
    share_max: f64,
    /// The profiler's: futex waits, wakes and switches traced per second, its CPU.
    futex_waits_per_second: Option<f64>,
    futex_wakes_per_second: Option<f64>,
    offcpu_switches_per_second: Option<f64>,
    tool_cpu_percent_of_core: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Result {
    bench: &'static str,
    timestamp: String,
    rounds: usize,
    run_seconds: &'static str,
    hold_us: &'static str,
    rows: Vec<Row>,
}

#[derive(Default)]
struct Run {
    iterations: u64,
    rates: Option<(f64, f64, f64)>,
    cpu_percent: Option<f64>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // BENCH_PROFILER: an earlier build to measure instead (before/after figures in one tree).
    let profiler: PathBuf = match std::env::var_os("BENCH_PROFILER") {
        Some(path) => path.into(),
        None => util::build_profiler()?,
    };
    let fixture = build_c(&CBuild {
        source: "lock_contend",
        output: "lock_contend-fp",
        cflags: FRAME_POINTERS,
        libs: &[],
    })?;
    let rounds = args.rounds().max(3);
    let mut runs: Vec<Vec<Run>> = TOOLS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..TOOLS.len() {
            let i = (k + round) % TOOLS.len();
            let run = measure(&fixture, TOOLS[i], &profiler)
                .with_context(|| format!("round {round} {}", TOOLS[i].label()))?;
            eprintln!(
                "round {}/{rounds}: {:<30} {:>9} critical sections",
                round + 1,
                TOOLS[i].label(),
                run.iterations
            );
            runs[i].push(run);
        }
    }
    let rows: Vec<Row> = TOOLS
        .iter()
        .zip(&runs)
        .map(|(tool, runs_of)| {
            let mut shares: Vec<f64> = runs_of
                .iter()
                .zip(&runs[0])
                .map(|(t, b)| t.iterations as f64 / b.iterations.max(1) as f64)
                .collect();
            let share_min = shares.iter().copied().fold(f64::INFINITY, f64::min);
            let share_max = shares.iter().copied().fold(0.0, f64::max);
            let rate = |f: fn(&(f64, f64, f64)) -> f64| {
                let mut v: Vec<f64> = runs_of
                    .iter()
                    .filter_map(|r| r.rates.as_ref().map(f))
                    .collect();
                (!v.is_empty()).then(|| median(&mut v))
            };
            let mut cpu: Vec<f64> = runs_of.iter().filter_map(|r| r.cpu_percent).collect();
            Row {
                tool: tool.label(),
                iterations: runs_of.iter().map(|r| r.iterations).collect(),
                share_of_bare: median(&mut shares),
                share_min,
                share_max,
                futex_waits_per_second: rate(|r| r.0),
                futex_wakes_per_second: rate(|r| r.1),
                offcpu_switches_per_second: rate(|r| r.2),
                tool_cpu_percent_of_core: (!cpu.is_empty()).then(|| median(&mut cpu)),
            }
        })
        .collect();
    let result = Result {
        bench: "futex",
        timestamp: jiff::Timestamp::now().to_string(),
        rounds,
        run_seconds: RUN_SECONDS,
        hold_us: HOLD_US,
        rows,
    };
    let bare = result.rows[0].iterations.clone();
    let mut bare_rate: Vec<f64> = bare
        .iter()
        .map(|n| *n as f64 / RUN_SECONDS.parse::<f64>().unwrap_or(1.0))
        .collect();
    println!(
        "\nhot mutex, 4 threads, {HOLD_US} us critical sections, bare {:.0} per second: \
         throughput as a share of bare (median of {rounds} interleaved rounds, [min, max])",
        median(&mut bare_rate)
    );
    for row in &result.rows[1..] {
        let traced = match (row.futex_waits_per_second, row.offcpu_switches_per_second) {
            (Some(w), Some(s)) => format!(
                "; {w:.0} waits/s, {:.0} wakes/s, {s:.0} switches/s traced",
                row.futex_wakes_per_second.unwrap_or(0.0)
            ),
            (Some(w), None) => format!(
                "; {w:.0} waits/s, {:.0} wakes/s traced",
                row.futex_wakes_per_second.unwrap_or(0.0)
            ),
            (None, Some(s)) => format!("; {s:.0} switches/s traced"),
            (None, None) => String::new(),
        };
        println!(
            "  {:<30} {:.3} [{:.3}, {:.3}]{traced}{}",
            row.tool,
            row.share_of_bare,
            row.share_min,
            row.share_max,
            row.tool_cpu_percent_of_core
                .map(|c| format!("; tool {c:.1}% of a core"))
                .unwrap_or_default()
        );
    }
    let path = write_result("futex", &result)?;
    println!("written to {}", path.display());
    Ok(())
}

fn bpftrace_script(tool: Tool, pid: &str) -> String {
    if tool == Tool::BpftraceCount {
        return format!(
            "tracepoint:syscalls:sys_enter_futex /pid == {pid}/ {{ @e = count(); }} \
             tracepoint:syscalls:sys_exit_futex /pid == {pid}/ {{ @x = count(); }}"
        );
    }
    // FUTEX_WAIT and FUTEX_WAIT_BITSET, private or not: what glibc's mutex and std's use.
    format!(
        "tracepoint:syscalls:sys_enter_futex /pid == {pid} && ((args->op & 127) == 0 || (args->op & 127) == 9)/ \
         {{ @start[tid] = nsecs; }} \
         tracepoint:syscalls:sys_exit_futex /pid == {pid} && @start[tid]/ \
         {{ @wait[ustack, kstack] = sum(nsecs - @start[tid]); delete(@start[tid]); }}"
    )
}

/// Waits until process `pid` holds `n` perf events (one per attached tracepoint), then a
/// little longer for its event loop to start.
fn wait_for_perf_events(pid: u32, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(std::result::Result::ok)
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .filter(|target| target.to_string_lossy().contains("perf_event"))
                    .count()
            })
            .unwrap_or(0);
        if held >= n {
            thread::sleep(Duration::from_millis(500));
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "bpftrace pid {pid} did not attach"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn measure(fixture: &Path, tool: Tool, profiler: &Path) -> anyhow::Result<Run> {
    let mut target = ChildGuard::spawn(Command::new(fixture).args([RUN_SECONDS, HOLD_US]))?;
    target.wait_for_line("ready", Duration::from_secs(10))?;
    let pid = target.pid().to_string();
    let scratch = std::env::temp_dir().join(format!("profiler-bench-futex-{}", std::process::id()));
    let attached = match tool {
        Tool::Bare => None,
        Tool::Futex | Tool::Offcpu | Tool::All => {
            let mut cmd = Command::new(profiler);
            cmd.args([
                "attach",
                "--quiet",
                "--pid",
                &pid,
                "--overwrite",
                "--output",
            ])
            .arg(&scratch)
            .args(tool.profiler_flag());
            Some(Attached::spawn(cmd, Some("profiling pid"))?)
        }
        Tool::BpftraceCount | Tool::BpftraceStacks => {
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", &bpftrace_script(tool, &pid)]);
            let attached = Attached::spawn(cmd, None)?;
            // Both probes attached: a SIGINT before bpftrace's loop starts is lost, and the
            // stop waits for ever (seen on a loaded machine, where it compiles slowly).
            wait_for_perf_events(attached.pid(), 2)?;
            Some(attached)
        }
    };
    let before = attached
        .as_ref()
        .map(|a| (cpu_time(a.pid()), Instant::now()));
    target.signal(libc::SIGUSR1)?;
    let line = target.wait_for_line("iterations", Duration::from_secs(60))?;
    let iterations: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("fixture printed no iteration count")?;
    let mut run = Run {
        iterations,
        ..Run::default()
    };
    if let (Some(attached), Some((cpu_before, at))) = (&attached, before) {
        run.cpu_percent = Some(
            (cpu_time(attached.pid()) - cpu_before).as_secs_f64() / at.elapsed().as_secs_f64()
                * 100.0,
        );
    }
    match (tool.profiler_flag(), attached) {
        (Some(_), Some(attached)) => {
            // The fixture exits; the profiler follows and writes its summary.
            drop(target);
            attached.wait_exit(Duration::from_secs(60))?;
            let summary: serde_json::Value =
                serde_json::from_slice(&std::fs::read(scratch.join("summary.json"))?)?;
            let secs = summary["duration_secs"].as_f64().unwrap_or(1.0);
            let per_s = |v: &serde_json::Value| v.as_u64().map(|n| n as f64 / secs);
            let futex = &summary["futex"];
            run.rates = Some((
                per_s(&futex["waits"]).unwrap_or(0.0),
                per_s(&futex["wakes"]).unwrap_or(0.0),
                per_s(&summary["offcpu"]["switches"]).unwrap_or(0.0),
            ));
        }
        (_, Some(attached)) => {
            attached.stop()?;
        }
        _ => {}
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(run)
}
