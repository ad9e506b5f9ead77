//! `cargo xtask bench sock`: what socket latency tracing costs a server under a fixed load.
//! `testbed-pool` (stratum) and `testbed-ledger` (HTTP) each get the same open-loop load from
//! `profiler load`, alone and with `profiler attach --sock`, interleaved round by round. Under an
//! open loop the achieved rate only drops when the server falls behind, so the server's own CPU
//! time per reply is reported too: the cost the tracepoints add to every request.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;
use serde::Serialize;
use testbed::server::Server;

use super::{Attached, BenchArgs, cpu_time, median, write_result};
use crate::util;

#[derive(Debug, Clone, Copy)]
struct Target {
    name: &'static str,
    server: &'static str,
    /// `profiler load` arguments after the target URL.
    load: &'static [&'static str],
}

const TARGETS: [Target; 2] = [
    Target {
        name: "pool",
        server: "testbed-pool",
        // 100 miners x 240 shares/min: 400 submits/s.
        load: &[
            "--miners",
            "100",
            "--share-rate",
            "240",
            "--duration",
            "8s",
            "--ramp-up",
            "1s",
        ],
    },
    Target {
        name: "ledger",
        server: "testbed-ledger",
        load: &[
            "--connections",
            "20",
            "--rate",
            "400",
            "--duration",
            "8s",
            "--ramp-up",
            "1s",
        ],
    },
];

#[derive(Debug, Default, Clone, Serialize)]
struct Run {
    replies: u64,
    achieved_rate_per_s: f64,
    p99_us: u64,
    server_cpu_us_per_reply: f64,
    /// What the profiler counted (traced runs).
    profiler_requests: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Setting {
    name: &'static str,
    bare: Vec<Run>,
    traced: Vec<Run>,
    /// Medians over rounds of traced / bare, as a change in percent.
    throughput_change_percent: f64,
    p99_change_percent: f64,
    server_cpu_per_reply_change_percent: f64,
    bare_p99_us: f64,
    traced_p99_us: f64,
    /// Spread of the bare runs' p99 (max / min - 1): the noise the p99 change is read against.
    bare_p99_spread_percent: f64,
}

#[derive(Debug, Serialize)]
struct Result {
    bench: &'static str,
    timestamp: String,
    rounds: usize,
    settings: Vec<Setting>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    let rounds = args.rounds().max(3);
    let scratch = std::env::temp_dir().join(format!("profiler-bench-sock-{}", std::process::id()));
    let mut settings = Vec::new();
    for target in TARGETS {
        let (mut bare, mut traced) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so drift does not favour either.
            for traced_run in [round % 2 == 1, round % 2 == 0] {
                let run = measure(&profiler, target, traced_run, &scratch)
                    .with_context(|| format!("{} round {round}", target.name))?;
                eprintln!(
                    "{} round {}/{rounds}: {:<6} {:>7.1} replies/s  p99 {:>6} us  server {:>6.1} us CPU/reply{}",
                    target.name,
                    round + 1,
                    if traced_run { "--sock" } else { "bare" },
                    run.achieved_rate_per_s,
                    run.p99_us,
                    run.server_cpu_us_per_reply,
                    run.profiler_requests
                        .map(|n| format!("  ({n} requests traced)"))
                        .unwrap_or_default()
                );
                if traced_run {
                    traced.push(run);
                } else {
                    bare.push(run);
                }
            }
        }
        let change = |f: fn(&Run) -> f64| {
            let mut ratios: Vec<f64> = traced.iter().zip(&bare).map(|(t, b)| f(t) / f(b)).collect();
            (median(&mut ratios) - 1.0) * 100.0
        };
        let p99s = |runs: &[Run]| {
            let mut v: Vec<f64> = runs.iter().map(|r| r.p99_us as f64).collect();
            median(&mut v)
        };
        let (lo, hi) = bare.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| {
            (lo.min(r.p99_us as f64), hi.max(r.p99_us as f64))
        });
        settings.push(Setting {
            name: target.name,
            throughput_change_percent: change(|r| r.achieved_rate_per_s),
            p99_change_percent: change(|r| r.p99_us as f64),
            server_cpu_per_reply_change_percent: change(|r| r.server_cpu_us_per_reply),
            bare_p99_us: p99s(&bare),
            traced_p99_us: p99s(&traced),
            bare_p99_spread_percent: (hi / lo.max(1.0) - 1.0) * 100.0,
            bare,
            traced,
        });
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let result = Result {
        bench: "sock",
        timestamp: jiff::Timestamp::now().to_string(),
        rounds,
        settings,
    };
    println!(
        "\nservers under a fixed load, alone vs with --sock (median of {rounds} interleaved rounds)"
    );
    for s in &result.settings {
        println!(
            "  {:<7} throughput {:+.2}%, p99 {:.0} -> {:.0} us ({:+.1}%; bare runs spread {:.0}%), server CPU per reply {:+.1}%",
            s.name,
            s.throughput_change_percent,
            s.bare_p99_us,
            s.traced_p99_us,
            s.p99_change_percent,
            s.bare_p99_spread_percent,
            s.server_cpu_per_reply_change_percent
        );
    }
    let path = write_result("sock", &result)?;
    println!("written to {}", path.display());
    Ok(())
}

fn measure(profiler: &Path, target: Target, traced: bool, scratch: &Path) -> anyhow::Result<Run> {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch)?;
    let wal = scratch.join("ledger.wal");
    let args: Vec<&str> = match target.server {
        "testbed-ledger" => vec!["--wal", wal.to_str().context("utf-8 temp dir")?],
        _ => vec![],
    };
    let server = Server::start(target.server, &args)?;
    let url = match target.server {
        "testbed-ledger" => format!("http://{}/ingest", server.addr),
        _ => format!("stratum://{}", server.addr),
    };
    let profile_dir = scratch.join("profile");
    let attached = if traced {
        let mut cmd = Command::new(profiler);
        cmd.args(["attach", "--quiet", "--sock", "--pid"])
            .arg(server.pid().to_string())
            .arg("--output")
            .arg(&profile_dir);
        Some(Attached::spawn(cmd, Some("profiling pid"))?)
    } else {
        None
    };
    let cpu_before = cpu_time(server.pid());
    let load_dir = scratch.join("load");
    util::output(
        Command::new(profiler)
            .args(["load", "--quiet", "--output-dir"])
            .arg(&load_dir)
            .arg(&url)
            .args(target.load),
    )?;
    let cpu = cpu_time(server.pid()) - cpu_before;
    let profiler_requests = match attached {
        Some(attached) => {
            attached.stop()?;
            let summary: serde_json::Value =
                serde_json::from_slice(&std::fs::read(profile_dir.join("summary.json"))?)?;
            Some(
                summary["sock"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["requests"].as_u64())
                    .sum(),
            )
        }
        None => None,
    };
    server.stop()?;
    let report = load_report(&load_dir)?;
    let replies = report["requests"]["replies"].as_u64().unwrap_or(0);
    Ok(Run {
        replies,
        achieved_rate_per_s: report["achieved_rate_per_s"].as_f64().unwrap_or(0.0),
        p99_us: report["latency_us"]["p99"].as_u64().unwrap_or(0),
        server_cpu_us_per_reply: cpu.as_secs_f64() * 1e6 / replies.max(1) as f64,
        profiler_requests,
    })
}

/// The one JSON report `profiler load` wrote into `dir`.
fn load_report(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let path: PathBuf = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .with_context(|| format!("no load report in {}", dir.display()))?;
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}
