//! `cargo xtask bench memory`: what `--memory` costs.
//!
//! **Warm servers at saturating load.** Each server is started, warmed by one untimed load
//! run, then measured twice on the same warm process: alone and with `profiler attach
//! --memory`, the order alternating round by round. Throughput is the load tool's own figure
//! (replies, transactions or requests per second), and the server's CPU time per operation is
//! read from schedstat beside it; each is a ratio traced / bare per round, the median over
//! rounds. Servers: `testbed-pool` driven by `profiler load` at 200,000 shares/s, about what
//! it answers on two cores beside the driver when the machine is otherwise idle (an open loop
//! offered more only queues: at 600,000/s with a 1 s timeout it answered 95,000/s in time), so
//! its CPU per reply is the figure to read; and two servers from Debian's archive we did not write:
//! memcached (glibc's malloc, or jemalloc through `LD_PRELOAD`) under `memcaslap`, and redis
//! (linked against Debian's jemalloc) under `redis-benchmark` with pipelining, SET/GET of
//! random keys and LPUSH/LPOP: an allocation on nearly every command. Both tools are closed
//! loops: as many operations as the server answers.
//!
//! **Growth.** What a page costs when the target does grow: the `memory_growth` fixture maps
//! and writes 2 MiB every 10 ms and unmaps it (51,200 new pages a second), and its CPU time
//! per page is compared alone and traced.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use testbed::{
    fixture::{CBuild, NO_FRAME_POINTERS, build_c, testbed_bin},
    process::ChildGuard,
};

use super::{Attached, BenchArgs, cpu_time, median, write_result};
use crate::util;

const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// Seconds of load per measured window (and for the warm-up).
pub(super) const WINDOW_SECS: u64 = 6;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Pool,
    Memcached,
    Redis,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Target {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    /// Run with jemalloc preloaded (redis links it already).
    preload_jemalloc: bool,
    allocator: &'static str,
}

const TARGETS: [Target; 5] = [
    Target {
        name: "testbed-pool",
        kind: Kind::Pool,
        preload_jemalloc: false,
        allocator: "glibc",
    },
    Target {
        name: "testbed-pool",
        kind: Kind::Pool,
        preload_jemalloc: true,
        allocator: "jemalloc (LD_PRELOAD)",
    },
    Target {
        name: "memcached",
        kind: Kind::Memcached,
        preload_jemalloc: false,
        allocator: "glibc",
    },
    Target {
        name: "memcached",
        kind: Kind::Memcached,
        preload_jemalloc: true,
        allocator: "jemalloc (LD_PRELOAD)",
    },
    REDIS,
];

/// Debian's redis, linked against Debian's jemalloc (also `bench alloc-server`'s target).
pub(super) const REDIS: Target = Target {
    name: "redis-server",
    kind: Kind::Redis,
    preload_jemalloc: false,
    allocator: "jemalloc (linked)",
};

#[derive(Debug, Clone, Serialize)]
struct Window {
    throughput_per_s: f64,
    /// The server's CPU time per operation (reply, transaction, command).
    server_cpu_us_per_op: f64,
    /// What the profiler saw in a traced window: write faults, pages grown, pages released.
    faults: Option<u64>,
    grown_pages: Option<u64>,
    released_pages: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Setting {
    server: &'static str,
    allocator: &'static str,
    bare: Vec<Window>,
    traced: Vec<Window>,
    /// Median over rounds of traced / bare throughput.
    throughput_ratio: f64,
    /// Median over rounds of bare / traced server CPU per operation: the throughput a server
    /// bound by its own CPU keeps.
    cpu_capacity_ratio: f64,
    /// Spread of the bare windows (max / min - 1): the noise the ratio is read against.
    bare_spread_percent: f64,
}

#[derive(Debug, Serialize)]
struct Growth {
    pages_per_s: f64,
    bare_cpu_ns_per_page: Vec<f64>,
    traced_cpu_ns_per_page: Vec<f64>,
    /// Median over rounds of (traced - bare) CPU per page.
    added_ns_per_page: f64,
}

#[derive(Debug, Serialize)]
struct Result {
    bench: &'static str,
    timestamp: String,
    rounds: usize,
    window_secs: u64,
    settings: Vec<Setting>,
    growth: Growth,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    for tool in ["memcached", "memcaslap", "redis-server", "redis-benchmark"] {
        which(tool).with_context(|| {
            format!("{tool} is not installed: run `cargo xtask setup` (it installs memcached, libmemcached-tools, redis-server and redis-tools)")
        })?;
    }
    let rounds = args.rounds().max(3);
    let scratch =
        std::env::temp_dir().join(format!("profiler-bench-memory-{}", std::process::id()));
    let mut settings = Vec::new();
    for target in TARGETS {
        let (mut bare, mut traced) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (b, t) = round_of(&profiler, target, round % 2 == 1, &scratch)
                .with_context(|| format!("{} ({}) round {round}", target.name, target.allocator))?;
            eprintln!(
                "{} ({}) round {}/{rounds}: bare {:>10.0}/s {:.2} us CPU/op  --memory {:>10.0}/s {:.2} us CPU/op  ({:+.1}%; {} faults, {} pages grown)",
                target.name,
                target.allocator,
                round + 1,
                b.throughput_per_s,
                b.server_cpu_us_per_op,
                t.throughput_per_s,
                t.server_cpu_us_per_op,
                (t.throughput_per_s / b.throughput_per_s - 1.0) * 100.0,
                t.faults.unwrap_or(0),
                t.grown_pages.unwrap_or(0),
            );
            bare.push(b);
            traced.push(t);
        }
        let mut ratios: Vec<f64> = traced
            .iter()
            .zip(&bare)
            .map(|(t, b)| t.throughput_per_s / b.throughput_per_s)
            .collect();
        let mut capacity: Vec<f64> = traced
            .iter()
            .zip(&bare)
            .map(|(t, b)| b.server_cpu_us_per_op / t.server_cpu_us_per_op)
            .collect();
        let (lo, hi) = bare.iter().fold((f64::MAX, 0.0f64), |(lo, hi), w| {
            (lo.min(w.throughput_per_s), hi.max(w.throughput_per_s))
        });
        settings.push(Setting {
            server: target.name,
            allocator: target.allocator,
            throughput_ratio: median(&mut ratios),
            cpu_capacity_ratio: median(&mut capacity),
            bare_spread_percent: (hi / lo.max(1.0) - 1.0) * 100.0,
            bare,
            traced,
        });
    }
    let growth = growth_cost(&profiler, rounds, &scratch)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let result = Result {
        bench: "memory",
        timestamp: jiff::Timestamp::now().to_string(),
        rounds,
        window_secs: WINDOW_SECS,
        settings,
        growth,
    };
    println!(
        "\nwarm servers at saturating load, alone vs with --memory (median of {rounds} rounds, {WINDOW_SECS} s windows)"
    );
    for s in &result.settings {
        println!(
            "  {:<13} {:<22} throughput x{:.3}  CPU capacity x{:.3}  (bare windows spread {:.0}%)",
            s.server, s.allocator, s.throughput_ratio, s.cpu_capacity_ratio, s.bare_spread_percent
        );
    }
    println!(
        "  growing at {:.0} pages/s: {:+.0} ns of CPU per page grown",
        result.growth.pages_per_s, result.growth.added_ns_per_page
    );
    let path = write_result("memory", &result)?;
    println!("written to {}", path.display());
    Ok(())
}

/// One round on a fresh server: warm it, then a bare and a traced window (traced first when
/// `traced_first`).
fn round_of(
    profiler: &Path,
    target: Target,
    traced_first: bool,
    scratch: &Path,
) -> anyhow::Result<(Window, Window)> {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch)?;
    let server = start(target)?;
    // Warm-up: connections, buffers and the data set in place before anything is measured.
    load(profiler, target.kind, server.addr, scratch)?;
    let mut bare = None;
    let mut traced = None;
    for traced_window in [traced_first, !traced_first] {
        let window = if traced_window {
            let out = scratch.join("capture");
            let _ = std::fs::remove_dir_all(&out);
            let mut cmd = Command::new(profiler);
            cmd.args(["attach", "--quiet", "--memory", "--pid"])
                .arg(server.child.pid().to_string())
                .arg("--output")
                .arg(&out);
            let attached = Attached::spawn(cmd, Some("profiling pid"))?;
            let (throughput, cpu_us_per_op) = timed_load(profiler, target.kind, &server, scratch)?;
            attached.stop()?;
            let summary: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("summary.json"))?)?;
            let memory = &summary["memory"];
            Window {
                throughput_per_s: throughput,
                server_cpu_us_per_op: cpu_us_per_op,
                faults: memory["faults"].as_u64(),
                grown_pages: memory["grown_pages"].as_u64(),
                released_pages: memory["released_pages"].as_u64(),
            }
        } else {
            let (throughput, cpu_us_per_op) = timed_load(profiler, target.kind, &server, scratch)?;
            Window {
                throughput_per_s: throughput,
                server_cpu_us_per_op: cpu_us_per_op,
                faults: None,
                grown_pages: None,
                released_pages: None,
            }
        };
        if traced_window {
            traced = Some(window);
        } else {
            bare = Some(window);
        }
    }
    drop(server);
    Ok((
        bare.context("bare window")?,
        traced.context("traced window")?,
    ))
}

/// One window of load, with the server's CPU time per operation over it.
pub(super) fn timed_load(
    profiler: &Path,
    kind: Kind,
    server: &Running,
    scratch: &Path,
) -> anyhow::Result<(f64, f64)> {
    let pid = server.child.pid();
    let before = cpu_time(pid);
    let (throughput, ops) = load(profiler, kind, server.addr, scratch)?;
    let cpu = cpu_time(pid).saturating_sub(before);
    Ok((throughput, cpu.as_secs_f64() * 1e6 / ops.max(1.0)))
}

/// A server we started, killed by pid when dropped.
pub(super) struct Running {
    pub(super) child: ChildGuard,
    pub(super) addr: SocketAddr,
}

pub(super) fn start(target: Target) -> anyhow::Result<Running> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = match target.kind {
        Kind::Pool => {
            let mut cmd = Command::new(testbed_bin("testbed-pool")?);
            cmd.args(["--stats-every", "0", "--listen", &addr.to_string()]);
            cmd
        }
        Kind::Memcached => {
            let mut cmd = Command::new("memcached");
            // Two worker threads for two cores; 512 MiB so the item store never evicts.
            cmd.args([
                "-u",
                "root",
                "-l",
                "127.0.0.1",
                "-t",
                "2",
                "-m",
                "512",
                "-p",
            ])
            .arg(port.to_string());
            cmd
        }
        Kind::Redis => {
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
                "--port",
            ])
            .arg(port.to_string());
            cmd
        }
    };
    if target.preload_jemalloc {
        cmd.env("LD_PRELOAD", JEMALLOC);
    }
    let child = ChildGuard::spawn(&mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr}", target.name);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(Running { child, addr })
}

/// One window of load; returns its throughput per second and the operations it counted.
pub(super) fn load(
    profiler: &Path,
    kind: Kind,
    addr: SocketAddr,
    scratch: &Path,
) -> anyhow::Result<(f64, f64)> {
    let secs = WINDOW_SECS.to_string();
    match kind {
        Kind::Pool => {
            let dir = scratch.join("load");
            let _ = std::fs::remove_dir_all(&dir);
            // 200,000 shares/s: about what the pool answers on two cores beside the driver.
            util::output(
                Command::new(profiler)
                    .args(["load", "--quiet", "--output-dir"])
                    .arg(&dir)
                    .arg(format!("stratum://{addr}"))
                    .args([
                        "--miners",
                        "100",
                        "--share-rate",
                        "120000",
                        "--ramp-up",
                        "1s",
                        "--max-error-rate",
                        "1",
                        "--duration",
                    ])
                    .arg(format!("{secs}s")),
            )?;
            let report = load_report(&dir)?;
            let rate = report["achieved_rate_per_s"]
                .as_f64()
                .context("no achieved_rate_per_s in the load report")?;
            let replies = report["requests"]["replies"]
                .as_f64()
                .context("no requests.replies in the load report")?;
            Ok((rate, replies))
        }
        Kind::Memcached => {
            let out = util::output(
                Command::new("memcaslap")
                    .arg("-s")
                    .arg(addr.to_string())
                    .args(["-T", "2", "-c", "64", "-t"])
                    .arg(format!("{secs}s")),
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |name: &str| -> anyhow::Result<f64> {
                text.lines()
                    .find_map(|l| l.split(name).nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no {name} in memcaslap's output: {text}"))
            };
            Ok((field("TPS: ")?, field("Ops: ")?))
        }
        // About WINDOW_SECS of commands at ~300,000/s.
        Kind::Redis => redis_load(addr, WINDOW_SECS * 300_000 / 4),
    }
}

/// `redis-benchmark` with pipelining, `per_test` commands of each of SET, GET (random keys),
/// LPUSH and LPOP; returns the throughput per second and the commands run.
pub(super) fn redis_load(addr: SocketAddr, per_test: u64) -> anyhow::Result<(f64, f64)> {
    let out = util::output(
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(addr.port().to_string())
            .args([
                "-t",
                "set,get,lpush,lpop",
                "-r",
                "100000",
                "-d",
                "256",
                "-P",
                "8",
                "-c",
                "32",
                "-q",
                "-n",
            ])
            .arg(per_test.to_string()),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    // Each test runs n commands: overall throughput is 4n over the sum of their times.
    let rates: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("requests per second"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    if rates.len() != 4 {
        bail!("redis-benchmark printed {} rates: {text}", rates.len());
    }
    let commands = rates.len() as f64 * per_test as f64;
    Ok((
        rates.len() as f64 / rates.iter().map(|r| 1.0 / r).sum::<f64>(),
        commands,
    ))
}

/// CPU per page grown, alone and traced, interleaved.
fn growth_cost(profiler: &Path, rounds: usize, scratch: &Path) -> anyhow::Result<Growth> {
    const CHURN_KIB: u64 = 2048;
    const SECONDS: &str = "4";
    let fixture = build_c(&CBuild {
        source: "memory_growth",
        output: "memory_growth-bench",
        cflags: NO_FRAME_POINTERS,
        libs: &[],
    })?;
    let pages_per_step = CHURN_KIB * 1024 / 4096;
    let (mut bare, mut traced) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for traced_run in [round % 2 == 1, round % 2 == 0] {
            let mut target = ChildGuard::spawn(Command::new(&fixture).args([
                "100",
                SECONDS,
                "16",
                &CHURN_KIB.to_string(),
            ]))?;
            target.wait_for_line("ready", Duration::from_secs(10))?;
            let out = scratch.join("growth-capture");
            let _ = std::fs::remove_dir_all(&out);
            let attached = if traced_run {
                let mut cmd = Command::new(profiler);
                cmd.args(["attach", "--quiet", "--memory", "--pid"])
                    .arg(target.pid().to_string())
                    .arg("--output")
                    .arg(&out);
                Some(Attached::spawn(cmd, Some("profiling pid"))?)
            } else {
                None
            };
            target.signal(libc::SIGUSR1)?;
            let done = target.wait_for_line("done", Duration::from_secs(60))?;
            let numbers: Vec<f64> = done
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            let [_, churned, cpu_ns] = numbers[..] else {
                bail!("unexpected line from the fixture: {done}");
            };
            drop(target);
            if let Some(attached) = attached {
                attached.wait_exit(Duration::from_secs(60))?;
            }
            let per_page = cpu_ns / (churned / 4096.0);
            eprintln!(
                "growth round {}/{rounds}: {:<9} {per_page:>7.0} ns CPU per page",
                round + 1,
                if traced_run { "--memory" } else { "bare" }
            );
            if traced_run {
                traced.push(per_page);
            } else {
                bare.push(per_page);
            }
        }
    }
    let mut added: Vec<f64> = traced.iter().zip(&bare).map(|(t, b)| t - b).collect();
    Ok(Growth {
        pages_per_s: pages_per_step as f64 * 100.0,
        added_ns_per_page: median(&mut added),
        bare_cpu_ns_per_page: bare,
        traced_cpu_ns_per_page: traced,
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

/// The one JSON report `profiler load` wrote into `dir`.
fn load_report(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let path: PathBuf = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .with_context(|| format!("no load report in {}", dir.display()))?;
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}
