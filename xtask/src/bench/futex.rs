//! `cargo xtask bench futex`: what lock tracing costs a lock-heavy program. The fixture's four
//! threads contend one mutex for a fixed time; throughput is critical sections completed, with
//! and without `--futex --offcpu`, compared round by round.
//!
//! Two settings: `heavy` (100 µs critical sections, thousands of futex waits and wakes a
//! second: the target figure) and `extreme` (5 µs, tens of thousands), where the cost of the
//! syscall tracepoints themselves dominates; for it the floor is measured too, with bpftrace
//! counting the same tracepoints and doing nothing else.

use std::{
    path::Path,
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tool {
    Bare,
    Profiler,
    /// bpftrace counting sys_enter/exit_futex and sched_switch: the cost of the hooks alone.
    Floor,
}

#[derive(Debug, Serialize)]
struct Setting {
    name: &'static str,
    hold_us: &'static str,
    bare_iterations: Vec<u64>,
    profiler_iterations: Vec<u64>,
    /// Median over rounds of traced / bare throughput.
    profiler_throughput_loss_percent: f64,
    /// The same for bpftrace's count-only floor, when measured.
    floor_throughput_loss_percent: Option<f64>,
    futex_waits_per_second: f64,
    futex_wakes_per_second: f64,
    offcpu_switches_per_second: f64,
    profiler_cpu_percent_of_core: f64,
    profiler_peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
struct Result {
    bench: &'static str,
    timestamp: String,
    rounds: usize,
    run_seconds: &'static str,
    settings: Vec<Setting>,
}

#[derive(Default)]
struct Run {
    iterations: u64,
    rates: Option<(f64, f64, f64)>,
    cpu_percent: Option<f64>,
    rss_mb: Option<f64>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    let fixture = build_c(&CBuild {
        source: "lock_contend",
        output: "lock_contend-fp",
        cflags: FRAME_POINTERS,
        libs: &[],
    })?;
    let rounds = args.rounds.max(5);
    let mut settings = Vec::new();
    for (name, hold_us, tools) in [
        ("heavy", "100", &[Tool::Bare, Tool::Profiler][..]),
        (
            "extreme",
            "5",
            &[Tool::Bare, Tool::Profiler, Tool::Floor][..],
        ),
    ] {
        let mut runs: Vec<Vec<Run>> = tools.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for k in 0..tools.len() {
                let i = (k + round) % tools.len();
                let run = measure(&fixture, hold_us, tools[i], &profiler)
                    .with_context(|| format!("{name} round {round} {:?}", tools[i]))?;
                eprintln!(
                    "{name} round {}/{rounds}: {:<9} {:>8} critical sections",
                    round + 1,
                    format!("{:?}", tools[i]),
                    run.iterations
                );
                runs[i].push(run);
            }
        }
        let loss = |tool: Tool| {
            let i = tools.iter().position(|t| *t == tool)?;
            let mut ratios: Vec<f64> = runs[i]
                .iter()
                .zip(&runs[0])
                .map(|(t, b)| t.iterations as f64 / b.iterations as f64)
                .collect();
            Some((1.0 - median(&mut ratios)) * 100.0)
        };
        let traced = &runs[1];
        let rate = |f: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = traced
                .iter()
                .filter_map(|r| r.rates.as_ref().map(f))
                .collect();
            median(&mut v)
        };
        let mut cpu: Vec<f64> = traced.iter().filter_map(|r| r.cpu_percent).collect();
        let mut rss: Vec<f64> = traced.iter().filter_map(|r| r.rss_mb).collect();
        settings.push(Setting {
            name,
            hold_us,
            bare_iterations: runs[0].iter().map(|r| r.iterations).collect(),
            profiler_iterations: traced.iter().map(|r| r.iterations).collect(),
            profiler_throughput_loss_percent: loss(Tool::Profiler).unwrap_or(f64::NAN),
            floor_throughput_loss_percent: loss(Tool::Floor),
            futex_waits_per_second: rate(|r| r.0),
            futex_wakes_per_second: rate(|r| r.1),
            offcpu_switches_per_second: rate(|r| r.2),
            profiler_cpu_percent_of_core: median(&mut cpu),
            profiler_peak_rss_mb: median(&mut rss),
        });
    }
    let result = Result {
        bench: "futex",
        timestamp: jiff::Timestamp::now().to_string(),
        rounds,
        run_seconds: RUN_SECONDS,
        settings,
    };
    println!("\nlock-heavy fixture with --futex --offcpu (median of {rounds} interleaved rounds)");
    for s in &result.settings {
        println!(
            "  {:<8} ({} us holds): throughput loss {:+.2}%{}; {:.0} waits/s, {:.0} wakes/s, {:.0} switches/s traced; profiler {:.2}% of a core, peak RSS {:.1} MB",
            s.name,
            s.hold_us,
            s.profiler_throughput_loss_percent,
            s.floor_throughput_loss_percent
                .map(|f| format!(" (bpftrace count-only floor {f:+.2}%)"))
                .unwrap_or_default(),
            s.futex_waits_per_second,
            s.futex_wakes_per_second,
            s.offcpu_switches_per_second,
            s.profiler_cpu_percent_of_core,
            s.profiler_peak_rss_mb
        );
    }
    let path = write_result("futex", &result)?;
    println!("written to {}", path.display());
    Ok(())
}

fn measure(fixture: &Path, hold_us: &str, tool: Tool, profiler: &Path) -> anyhow::Result<Run> {
    let mut target = ChildGuard::spawn(Command::new(fixture).args([RUN_SECONDS, hold_us]))?;
    target.wait_for_line("ready", Duration::from_secs(10))?;
    let pid = target.pid().to_string();
    let scratch = std::env::temp_dir().join(format!("profiler-bench-futex-{}", std::process::id()));
    let attached = match tool {
        Tool::Bare => None,
        Tool::Profiler => {
            let mut cmd = Command::new(profiler);
            cmd.args([
                "attach", "--quiet", "--futex", "--offcpu", "--pid", &pid, "--output",
            ])
            .arg(&scratch);
            Some(Attached::spawn(cmd, Some("profiling pid"))?)
        }
        Tool::Floor => {
            let script = format!(
                "tracepoint:syscalls:sys_enter_futex /pid == {pid}/ {{ @e = count(); }} \
                 tracepoint:syscalls:sys_exit_futex /pid == {pid}/ {{ @x = count(); }} \
                 tracepoint:sched:sched_switch /pid == {pid}/ {{ @s = count(); }}"
            );
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", &script]);
            let attached = Attached::spawn(cmd, None)?;
            // bpftrace prints "Attaching N probes..." on stdout; give it time to attach.
            thread::sleep(Duration::from_secs(2));
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
    match (tool, attached) {
        (Tool::Profiler, Some(attached)) => {
            if let Some((cpu_before, at)) = before {
                run.cpu_percent = Some(
                    (cpu_time(attached.pid()) - cpu_before).as_secs_f64()
                        / at.elapsed().as_secs_f64()
                        * 100.0,
                );
            }
            // The fixture exits; the profiler follows and writes its summary.
            drop(target);
            run.rss_mb = Some(attached.wait_exit(Duration::from_secs(30))?);
            let summary: serde_json::Value =
                serde_json::from_slice(&std::fs::read(scratch.join("summary.json"))?)?;
            let secs = summary["duration_secs"].as_f64().unwrap_or(1.0);
            let per_s = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / secs;
            run.rates = Some((
                per_s(&summary["futex"]["waits"]),
                per_s(&summary["futex"]["wakes"]),
                per_s(&summary["offcpu"]["switches"]),
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
