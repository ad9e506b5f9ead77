//! Overhead and speed measurements. Every figure is a ratio measured side by side in one run
//! (interleaved with the bare baseline), the median over several rounds.

mod agent;
mod alloc;
mod alloc_server;
mod cpu;
mod futex;
mod memory;
mod sock;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::util;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    pub which: Which,
    /// Interleaved rounds (each runs every configuration once): 9 unless given, 3 for
    /// alloc-server (its slowest window, `--alloc` on redis, takes about a minute).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Work per run, in fixture iterations (about 5 µs each on this machine).
    #[arg(long, default_value_t = 500_000)]
    pub iterations: u64,
    /// cpu: how the profiler walks stacks. `dwarf` also builds the fixture without frame
    /// pointers and compares with `perf record --call-graph dwarf`.
    #[arg(long, value_enum, default_value_t = Unwind::Auto)]
    pub unwind: Unwind,
    /// agent: how long the soak runs, in minutes.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
}

impl BenchArgs {
    /// `--rounds`, or this bench's default.
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(match self.which {
            Which::AllocServer => 3,
            _ => 9,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Unwind {
    Auto,
    Fp,
    Dwarf,
}

impl Unwind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fp => "fp",
            Self::Dwarf => "dwarf",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Cpu,
    Futex,
    Alloc,
    /// What `--alloc` costs redis (jemalloc) under load, beside empty probes on the same
    /// functions: the floor no work of ours sets.
    AllocServer,
    Sock,
    Memory,
    /// The agent's memory and CPU over a long run under load.
    Agent,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Which::Cpu => cpu::run(&args),
        Which::Futex => futex::run(&args),
        Which::Alloc => alloc::run(&args),
        Which::AllocServer => alloc_server::run(&args),
        Which::Sock => sock::run(&args),
        Which::Memory => memory::run(&args),
        Which::Agent => agent::run(&args),
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Writes a bench result as `results/bench/<name>-<timestamp>.json` and returns the path.
pub fn write_result(name: &str, value: &impl Serialize) -> anyhow::Result<PathBuf> {
    let dir = util::workspace_root().join("results/bench");
    std::fs::create_dir_all(&dir)?;
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let path = dir.join(format!("{name}-{stamp}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A measuring tool we started; stopped with SIGINT and reaped with its resource usage.
pub struct Attached {
    child: Child,
    reaped: bool,
}

impl Attached {
    /// Spawns, and when `ready` is given waits for a stderr line containing it.
    pub fn spawn(mut cmd: Command, ready: Option<&str>) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stderr = child.stderr.take().context("stderr piped")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tool = Self {
            child,
            reaped: false,
        };
        if let Some(needle) = ready {
            loop {
                match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) if line.contains(needle) => break,
                    Ok(_) => {}
                    Err(_) => {
                        tool.kill();
                        bail!("{cmd:?} did not attach");
                    }
                }
            }
        }
        Ok(tool)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, wait, and return the peak RSS in MB.
    pub fn stop(mut self) -> anyhow::Result<f64> {
        let pid = self.child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // bpftrace loses a SIGINT now and then (seen on a loaded machine): say it again every
        // two seconds until it ends.
        let mut reaped = 0;
        for _ in 0..30 {
            // SAFETY: signalling our own unreaped child by pid.
            unsafe { libc::kill(pid, libc::SIGINT) };
            for _ in 0..100 {
                // SAFETY: polls our own child by pid; wait4 fills status and usage.
                reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
                if reaped != 0 {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            if reaped != 0 {
                break;
            }
        }
        self.reaped = reaped == pid;
        // perf re-raises SIGINT after writing its data, so dying of it is a clean stop too.
        let clean = (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
            || (libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGINT);
        if reaped != pid || !clean {
            bail!("tool pid {pid} ended badly (status {status:#x})");
        }
        Ok(usage.ru_maxrss as f64 / 1024.0)
    }

    /// Waits for the tool to exit by itself (its target ended); returns its peak RSS in MB.
    pub fn wait_exit(mut self, timeout: Duration) -> anyhow::Result<f64> {
        let pid = self.child.id() as libc::pid_t;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: polls our own child by pid.
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                self.reaped = true;
                if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                    bail!("tool pid {pid} ended badly (status {status:#x})");
                }
                return Ok(usage.ru_maxrss as f64 / 1024.0);
            }
            if std::time::Instant::now() > deadline {
                bail!("tool pid {pid} did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU time of every thread of a live process, from schedstat (nanoseconds, unlike the
/// clock-tick granularity of /proc/PID/stat).
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(std::result::Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
