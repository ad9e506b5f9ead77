//! `cargo xtask bench agent`: the always-on agent over a long run. `testbed-pool` under a
//! steady open-loop load (100 miners, one share a second each) for `--minutes` (10 by
//! default), `profiler agent --all` attached and scraped every 10 s as Prometheus would; the
//! agent's RSS and CPU are sampled every 10 s. The figure: its RSS at the end and at its
//! highest against minute 1 (the bound: within 10%), and its CPU as a share of a core.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use testbed::server::Server;

use super::{BenchArgs, write_result};
use crate::util;

#[derive(Debug, Serialize)]
struct Sample {
    elapsed_s: f64,
    rss_kb: u64,
    cpu_s: f64,
}

#[derive(Debug, Serialize)]
struct Soak {
    minutes: u64,
    samples: Vec<Sample>,
    rss_minute_1_kb: u64,
    rss_end_kb: u64,
    rss_max_after_minute_1_kb: u64,
    /// (max after minute 1) / (minute 1) - 1, in percent.
    rss_growth_percent: f64,
    /// Agent CPU over the run, as a share of one core.
    cpu_percent_of_core: f64,
    replies: u64,
}

fn proc_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

fn scrape(addr: SocketAddr) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect(addr)?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body.len())
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let minutes = args.minutes.max(2);
    let profiler = util::build_profiler()?;
    let pool = Server::start("testbed-pool", &["--job-interval", "30"])?;
    let mut agent = Command::new(&profiler);
    agent
        .args(["agent", "--all", "--listen", "127.0.0.1:0", "--pid"])
        .arg(pool.pid().to_string())
        .stdout(Stdio::piped());
    util::as_root(&mut agent);
    let mut agent = agent.spawn().context("starting the agent")?;
    let agent_pid = agent.id();
    let mut line = String::new();
    BufReader::new(agent.stdout.take().context("agent stdout")?).read_line(&mut line)?;
    let Some(addr) = line
        .trim()
        .strip_prefix("agent listening on http://")
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        let _ = agent.kill();
        let _ = agent.wait();
        bail!("the agent printed {line:?}");
    };
    let mut load = Command::new(&profiler);
    load.arg("load")
        .arg(format!("stratum://{}", pool.addr))
        .args(["--profile", "soak", "--share-rate", "60", "--duration"])
        .arg(format!("{minutes}m"))
        .arg("--output-dir")
        .arg(util::workspace_root().join("results/bench"))
        .stdout(Stdio::null());
    let mut load = load.spawn().context("starting the load")?;
    let started = Instant::now();
    let cpu_at_start = proc_cpu_s(agent_pid).unwrap_or(0.0);
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        std::thread::sleep(Duration::from_secs(10));
        scrape(addr).context("scraping the agent")?;
        let (Some(rss_kb), Some(cpu)) = (proc_rss_kb(agent_pid), proc_cpu_s(agent_pid)) else {
            bail!("the agent (pid {agent_pid}) exited");
        };
        let sample = Sample {
            elapsed_s: started.elapsed().as_secs_f64(),
            rss_kb,
            cpu_s: cpu - cpu_at_start,
        };
        eprintln!(
            "{:>6.0} s  agent RSS {} KiB  CPU {:.1} s",
            sample.elapsed_s, sample.rss_kb, sample.cpu_s
        );
        samples.push(sample);
    }
    let load_status = load.wait()?;
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(agent_pid as libc::pid_t, libc::SIGTERM) };
    let agent_status = agent.wait()?;
    let stopped = pool.stop()?;
    if !agent_status.success() {
        bail!("the agent ended badly: {agent_status}");
    }
    let minute_1 = samples
        .iter()
        .find(|s| s.elapsed_s >= 60.0)
        .context("no sample at minute 1")?;
    let rss_minute_1_kb = minute_1.rss_kb;
    let after = samples.iter().filter(|s| s.elapsed_s >= 60.0);
    let rss_max_after_minute_1_kb = after.map(|s| s.rss_kb).max().unwrap_or(rss_minute_1_kb);
    let last = samples.last().context("no samples")?;
    let soak = Soak {
        minutes,
        rss_minute_1_kb,
        rss_end_kb: last.rss_kb,
        rss_max_after_minute_1_kb,
        rss_growth_percent: (rss_max_after_minute_1_kb as f64 / rss_minute_1_kb as f64 - 1.0)
            * 100.0,
        cpu_percent_of_core: last.cpu_s / last.elapsed_s * 100.0,
        replies: stopped.count("accepted").unwrap_or(0) + stopped.count("rejected").unwrap_or(0),
        samples,
    };
    let path = write_result("agent", &soak)?;
    println!(
        "agent over {minutes} min under load ({} shares, load {load_status}): RSS {} KiB at \
         minute 1, {} KiB at the end, at most {} KiB after minute 1 ({:+.1}%); CPU {:.2}% of \
         one core\nwritten to {}",
        soak.replies,
        soak.rss_minute_1_kb,
        soak.rss_end_kb,
        soak.rss_max_after_minute_1_kb,
        soak.rss_growth_percent,
        soak.cpu_percent_of_core,
        path.display()
    );
    if soak.rss_growth_percent > 10.0 {
        bail!("the agent's RSS grew more than 10% after minute 1");
    }
    Ok(())
}
