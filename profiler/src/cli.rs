//! The command line. These clap structs become plain option structs (`into_options`) before
//! they reach the library, so nothing past this module sees clap.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    probes::{alloc, cpu, futex, memory, offcpu, sock, why},
    session::AttachOptions,
    unwind::UnwindMode,
};

#[derive(Debug, Parser)]
#[command(name = "profiler", version, about = "eBPF profiler and latency tracer")]
pub struct Cli {
    /// Show debug logs, including the eBPF programs' own diagnostics.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running process and profile it.
    Attach(AttachArgs),
    /// Runs until stopped, attached to every target it follows; serves /metrics to Prometheus
    /// and pprof to Parca and Pyroscope.
    Agent(AgentArgs),
    /// Drive load against a stratum or HTTP target and report client-side latency.
    Load(crate::load::LoadArgs),
    /// Compile the .eh_frame unwinding tables of ELF files and report their size and build
    /// time (what `attach` does for every binary the target maps).
    UnwindTables(UnwindTablesArgs),
    /// Compare two output directories: a differential flamegraph, what moved, and regression
    /// gates. Exits 2 on a regression.
    Compare(CompareArgs),
    /// Named baselines under results/baselines/: save a run, or check a run against one.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// The release checklist against a server: smoke, standard (captured with every family),
    /// stress and soak (captured with --alloc) steps, archived under RESULTS/RELEASE/ and
    /// compared with the previous release. Exits 1 when a line failed, 2 on a regression.
    Checklist(crate::checklist::ChecklistArgs),
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The earlier run's output directory.
    pub old: PathBuf,
    /// The later run's output directory.
    pub new: PathBuf,
    /// Where diff.svg, compare.json and compare.txt go [default: NEW/compare].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Gate thresholds (JSON, as `baseline save` writes them) [default: built-in gates].
    #[arg(long)]
    pub gates: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Keep DIR's reports as baseline NAME, with default gates in its gates.json.
    Save {
        name: String,
        dir: PathBuf,
        /// Replace an existing baseline of that name.
        #[arg(long)]
        force: bool,
        /// The results directory holding baselines/.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Compare DIR with baseline NAME under its gates. Exits 2 on a regression.
    Check {
        name: String,
        dir: PathBuf,
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct UnwindTablesArgs {
    /// ELF files (executables, shared libraries).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Process to profile (its pid as the host sees it).
    #[arg(short, long)]
    pub pid: u32,
    /// How long to capture, e.g. 30s, 2m or 90 (seconds) [default: until Ctrl-C or the target
    /// exits].
    #[arg(short, long, value_parser = positive_duration)]
    pub duration: Option<Duration>,
    /// Every family but alloc (which costs more): cpu, offcpu, futex, sock, why and memory,
    /// on one timeline into one output directory. Add --alloc for allocations too.
    #[arg(long)]
    pub all: bool,
    /// Sample on-CPU stacks (the default when no probe is named).
    #[arg(long)]
    pub cpu: bool,
    /// Off-CPU time by stack: where threads block and for how long.
    #[arg(long)]
    pub offcpu: bool,
    /// Lock contention: futex waits by lock and stack, and who wakes the waiters.
    #[arg(long)]
    pub futex: bool,
    /// Allocation tracking and leak suspects (uprobes on the target's allocator).
    #[arg(long)]
    pub alloc: bool,
    /// Memory growth by stack, cheap enough to leave on: pages the target faults in and still
    /// holds, by the stack that touched them, and the mapping calls that release them; leak
    /// suspects are stacks that keep holding more while the target's memory grows.
    #[arg(long)]
    pub memory: bool,
    /// Socket-to-reply and service latency per listening port, and new-connection wait.
    #[arg(long, visible_alias = "latency")]
    pub sock: bool,
    /// Why p99 is slow: each request followed through the threads that work on it, its time
    /// split into queueing, CPU, run queue, locks (with their holders) and blocking, and the
    /// slowest requests compared with typical ones. Implies --sock.
    #[arg(long)]
    pub why: bool,
    /// why: which requests are the tail: a percentile (p99, p99.9) or a latency (5ms).
    #[arg(long, default_value = "p99", value_name = "RULE")]
    pub tail: crate::report::why::Tail,
    /// alloc: track one allocation in N (chosen by address, so frees still match); figures
    /// are then estimates.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub alloc_sample: u32,
    /// alloc: probe the allocating functions only this percent of the time, in windows of
    /// --alloc-window, detached between them so their calls cost nothing; frees stay probed,
    /// so no block tracked in a window is a false leak. Figures are estimates scaled by the
    /// measured share, with their error.
    #[arg(long, default_value_t = 100, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub alloc_duty: u32,
    /// alloc: how long each --alloc-duty window lasts.
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    pub alloc_window: Duration,
    /// alloc: the allocator's file (as the target sees it) instead of finding it.
    #[arg(long)]
    pub allocator: Option<PathBuf>,
    /// alloc: a growing stack is a leak suspect once its oldest live allocation is this old.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub min_age: Duration,
    /// alloc, memory: components by frame pattern with byte budgets (TOML: [[component]]
    /// tables of name, frames and budget); the reports set each component's bytes against
    /// its budget.
    #[arg(long, value_name = "FILE", value_parser = parse_budget)]
    pub budget: Option<Budget>,
    /// How often to snapshot allocation live bytes, the target's memory and latency
    /// percentiles (latency_timeseries.csv) [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// CPU samples per second.
    #[arg(short = 'F', long, default_value_t = 99,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,
    /// Off-CPU blocks shorter than this are not counted.
    #[arg(long, value_parser = parse_duration, default_value = "1us")]
    pub min_block: Duration,
    /// Where to write reports [default: results/<comm>-<pid>-<UTC timestamp>/].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Replace the reports of an earlier run in --output (refused otherwise, so no stale
    /// report sits beside the new ones).
    #[arg(long)]
    pub overwrite: bool,
    /// How to walk user stacks: .eh_frame tables where binaries have them (auto), frame
    /// pointers only (fp), or tables only (dwarf).
    #[arg(long, value_enum, default_value_t = Unwind::Auto)]
    pub unwind: Unwind,
    /// No live progress line, and only the findings digest on the terminal (the tables are
    /// in the reports).
    #[arg(long)]
    pub quiet: bool,
}

/// `profiler agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// A process to follow (host pid); repeatable.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Every process of this name (its main thread's comm), restarts included; repeatable.
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Every process in this cgroup (v2) or below it, e.g. a pod's; repeatable.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,
    /// `cpu`, `offcpu`, `futex`, `sock`, `memory` and `why` together (as `attach --all`:
    /// not `alloc`, whose uprobes cost every allocation).
    #[arg(long)]
    pub all: bool,
    /// On-CPU stacks (`/debug/pprof/profile`, `profiler_cpu_samples_total`).
    #[arg(long)]
    pub cpu: bool,
    /// Off-CPU stacks (`/debug/pprof/offcpu`, `profiler_offcpu_seconds_total`).
    #[arg(long)]
    pub offcpu: bool,
    /// Lock waits (`/debug/pprof/locks`, `profiler_lock_wait_seconds_total`).
    #[arg(long)]
    pub futex: bool,
    /// Requests and socket-to-reply latency per listening port.
    #[arg(long, visible_alias = "latency")]
    pub sock: bool,
    /// Live allocations by stack (`/debug/pprof/allocs`, `profiler_live_bytes`); uprobes on
    /// the target's allocator.
    #[arg(long)]
    pub alloc: bool,
    /// alloc: track one allocation in N (chosen by address); figures are then estimates.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub alloc_sample: u32,
    /// alloc: the allocator's file (as the target sees it) instead of finding it.
    #[arg(long)]
    pub allocator: Option<PathBuf>,
    /// Tail attribution (needs `sock`, which it turns on): every request's time by cause,
    /// all and the tail's (`profiler_request_time_seconds_total`,
    /// `profiler_tail_request_time_seconds_total`).
    #[arg(long)]
    pub why: bool,
    /// why: which requests are the tail, per port and second: a quantile (`p99`) or a
    /// latency (`5ms`).
    #[arg(long, default_value = "p99")]
    pub tail: crate::report::why::Tail,
    /// Memory growth by stack (`/debug/pprof/memory`, `profiler_memory_growth_bytes_total`,
    /// `profiler_memory_held_bytes`), cheap enough to leave on.
    #[arg(long)]
    pub memory: bool,
    /// Where to serve: loopback by default; any other address also needs --allow-remote.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Serve on a non-loopback address: anyone who reaches it reads the targets' stacks,
    /// function names, lock names, ports and request rates.
    #[arg(long)]
    pub allow_remote: bool,
    /// Write a pprof snapshot per family every --interval here, oldest removed past --output-max.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The snapshots' total size cap, in MiB.
    #[arg(long, default_value_t = 100, value_name = "MIB")]
    pub output_max: u64,
    /// How often a snapshot is written under --output.
    #[arg(long, value_parser = positive_duration, default_value = "60s")]
    pub interval: Duration,
    /// CPU samples per second per CPU.
    #[arg(short = 'F', long, default_value_t = 99,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,
    /// Off-CPU blocks shorter than this are not counted.
    #[arg(long, value_parser = parse_duration, default_value = "1us")]
    pub min_block: Duration,
    #[arg(long, value_enum, default_value_t = Unwind::Auto)]
    pub unwind: Unwind,
}

impl AgentArgs {
    pub fn into_options(self, verbose: bool) -> Result<crate::agent::AgentOptions, String> {
        if self.pids.is_empty() && self.comms.is_empty() && self.cgroups.is_empty() {
            return Err("name what to follow: --pid, --comm or --cgroup".into());
        }
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "{} is not a loopback address: the endpoint shows the targets' stacks,                  function and lock names, ports and request rates to anyone who reaches it;                  add --allow-remote to serve it there",
                self.listen
            ));
        }
        let cpu = self.all
            || self.cpu
            || !(self.offcpu || self.futex || self.sock || self.alloc || self.memory || self.why);
        let why = self.all || self.why;
        let attach = AttachOptions {
            pid: 0,
            duration: None,
            output: None,
            cpu: cpu.then_some(cpu::Config {
                frequency: self.frequency,
            }),
            offcpu: (self.all || self.offcpu).then_some(offcpu::Config {
                min_block: self.min_block,
            }),
            futex: (self.all || self.futex).then_some(futex::Config {}),
            alloc: self.alloc.then(|| alloc::Config {
                sample_every: self.alloc_sample,
                allocator: self.allocator.clone(),
                ..alloc::Config::default()
            }),
            memory: (self.all || self.memory).then(memory::Config::default),
            // `why` follows the requests `sock` pairs.
            sock: (self.all || self.sock || why).then_some(sock::Config {}),
            why: why.then_some(why::Config { tail: self.tail }),
            interval: None,
            unwind: self.unwind.into(),
            verbose,
            progress: false,
            overwrite: false,
            details: false,
        };
        Ok(crate::agent::AgentOptions {
            targets: crate::agent::Targets {
                pids: self.pids,
                comms: self.comms,
                cgroups: self.cgroups,
            },
            attach,
            listen: self.listen,
            output: self.output,
            output_max_bytes: self.output_max.saturating_mul(1 << 20),
            interval: self.interval,
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Unwind {
    Auto,
    Fp,
    Dwarf,
}

impl From<Unwind> for UnwindMode {
    fn from(unwind: Unwind) -> Self {
        match unwind {
            Unwind::Auto => Self::Auto,
            Unwind::Fp => Self::FramePointer,
            Unwind::Dwarf => Self::Dwarf,
        }
    }
}

impl AttachArgs {
    pub fn into_options(self, verbose: bool) -> AttachOptions {
        // Naming no probe means cpu; naming any means exactly those; --all means all but alloc.
        let why = self.all || self.why;
        let cpu = self.all
            || self.cpu
            || !(self.offcpu || self.futex || self.alloc || self.memory || self.sock || self.why);
        let offcpu = self.all || self.offcpu;
        let futex = self.all || self.futex;
        // `why` follows the requests `sock` pairs.
        let sock = self.all || self.sock || why;
        AttachOptions {
            pid: self.pid,
            duration: self.duration,
            output: self.output,
            cpu: cpu.then_some(cpu::Config {
                frequency: self.frequency,
            }),
            offcpu: offcpu.then_some(offcpu::Config {
                min_block: self.min_block,
            }),
            futex: futex.then_some(futex::Config {}),
            alloc: self.alloc.then(|| alloc::Config {
                sample_every: self.alloc_sample,
                allocator: self.allocator.clone(),
                min_age: self.min_age,
                budget: self.budget.clone(),
                duty: f64::from(self.alloc_duty) / 100.0,
                window: self.alloc_window,
            }),
            memory: (self.all || self.memory).then(|| memory::Config {
                budget: self.budget.clone(),
                ..memory::Config::default()
            }),
            sock: sock.then_some(sock::Config {}),
            why: why.then_some(why::Config { tail: self.tail }),
            interval: self.interval,
            unwind: self.unwind.into(),
            verbose,
            progress: !self.quiet,
            overwrite: self.overwrite,
            details: !self.quiet,
        }
    }
}

/// The options `profiler attach ARGS...` runs with, for code that captures the way the command
/// does: the release checklist captures `--all` so, and gets whatever `--all` comes to mean.
pub fn attach_options<I, T>(args: I, verbose: bool) -> Result<AttachOptions, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    #[derive(Parser)]
    #[command(name = "attach")]
    struct Attach {
        #[command(flatten)]
        args: AttachArgs,
    }
    let argv =
        std::iter::once(std::ffi::OsString::from("attach")).chain(args.into_iter().map(Into::into));
    Ok(Attach::try_parse_from(argv)?.args.into_options(verbose))
}

pub use crate::load::parse_duration;
use crate::report::component::Budget;

/// `--budget FILE`: read and checked before anything attaches.
fn parse_budget(path: &str) -> Result<Budget, String> {
    Budget::load(std::path::Path::new(path))
}

/// A duration that must be more than zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_defaults_and_durations() {
        let cli = Cli::try_parse_from(["profiler", "attach", "--pid", "42"]).unwrap();
        let Command::Attach(args) = cli.command else {
            panic!("attach")
        };
        let opts = args.into_options(false);
        assert_eq!(opts.pid, 42);
        assert_eq!(opts.duration, None);
        assert_eq!(opts.cpu.unwrap().frequency, 99);
        assert_eq!(opts.unwind, UnwindMode::Auto);

        let cli = Cli::try_parse_from([
            "profiler",
            "-v",
            "attach",
            "-p",
            "7",
            "--duration",
            "1m30s",
            "-F",
            "999",
            "--unwind",
            "fp",
        ])
        .unwrap();
        assert!(cli.verbose);
        let Command::Attach(args) = cli.command else {
            panic!("attach")
        };
        let opts = args.into_options(true);
        assert_eq!(opts.duration, Some(Duration::from_secs(90)));
        assert_eq!(opts.cpu.unwrap().frequency, 999);
        assert_eq!(opts.unwind, UnwindMode::FramePointer);
    }

    /// `--budget` is read and checked while the arguments are parsed, before any attach, and
    /// reaches both families that group by component.
    #[test]
    fn budget_file_is_read_at_parse_time() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("budget.toml");
        std::fs::write(
            &good,
            "[[component]]\nname = \"log\"\nframes = [\"*::log::*\"]\nbudget = \"1 MiB\"\n",
        )
        .unwrap();
        let parse = |file: &std::path::Path| {
            let argv = [
                "profiler", "attach", "-p", "1", "--alloc", "--memory", "--budget",
            ];
            Cli::try_parse_from(argv.iter().copied().chain([file.to_str().unwrap()]))
        };
        let Command::Attach(args) = parse(&good).unwrap().command else {
            panic!("attach")
        };
        let opts = args.into_options(false);
        let alloc = opts.alloc.unwrap().budget.unwrap();
        assert_eq!(alloc.components[0].name, "log");
        assert_eq!(opts.memory.unwrap().budget, Some(alloc));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[component]]\nname = \"log\"\nbudget = \"lots\"\n").unwrap();
        let err = parse(&bad).err().unwrap().to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(parse(&dir.path().join("missing.toml")).is_err());
    }

    #[test]
    fn probe_selection() {
        let opts = |args: &[&str]| {
            let mut argv = vec!["profiler", "attach", "-p", "1"];
            argv.extend(args);
            let Command::Attach(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("attach")
            };
            args.into_options(false)
        };
        let offcpu = opts(&["--offcpu", "--min-block", "50us"]);
        assert!(offcpu.cpu.is_none() && offcpu.futex.is_none());
        assert_eq!(offcpu.offcpu.unwrap().min_block, Duration::from_micros(50));
        let both = opts(&["--futex", "--cpu"]);
        assert!(both.cpu.is_some() && both.futex.is_some() && both.offcpu.is_none());
        assert_eq!(opts(&[]).offcpu.map(|_| ()), None);
        let all = opts(&["--all"]);
        assert!(all.cpu.is_some() && all.offcpu.is_some() && all.futex.is_some());
        assert!(all.sock.is_some() && all.why.is_some());
        let why = opts(&["--why", "--tail", "p99.9"]);
        assert!(why.sock.is_some(), "--why pairs requests through sock");
        assert!(why.cpu.is_none() && why.why.is_some());
        let latency = opts(&["--latency"]);
        assert!(
            latency.sock.is_some() && latency.cpu.is_none(),
            "alias of --sock, alone"
        );
        assert!(opts(&["--sock", "--cpu"]).cpu.is_some());
        assert!(all.alloc.is_none(), "alloc stays opt-in");
        assert!(
            all.memory.is_some(),
            "memory growth is cheap enough for --all"
        );
        let memory = opts(&["--memory"]);
        assert!(memory.memory.is_some() && memory.cpu.is_none() && memory.alloc.is_none());
        assert!(opts(&["--all", "--alloc"]).alloc.is_some());
    }

    #[test]
    fn attach_options_are_those_of_the_command() {
        let all = attach_options(["--all", "--pid", "7", "--duration", "1500ms"], false).unwrap();
        let cli = opts_of(&["--all", "--pid", "7", "--duration", "1500ms"]);
        assert_eq!(format!("{all:?}"), format!("{cli:?}"));
        assert_eq!(all.duration, Some(Duration::from_millis(1500)));
        assert!(attach_options(["--pid", "x"], false).is_err());
    }

    fn opts_of(args: &[&str]) -> AttachOptions {
        let mut argv = vec!["profiler", "attach"];
        argv.extend(args);
        let Command::Attach(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("attach")
        };
        args.into_options(false)
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Cli::try_parse_from(["profiler", "attach", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["profiler", "attach", "--pid", "1", "-d", "soon"]).is_err());
        assert!(Cli::try_parse_from(["profiler", "attach", "--pid", "1", "-F", "0"]).is_err());
        for zero in ["0", "0s", "0ms"] {
            let err = Cli::try_parse_from(["profiler", "attach", "--pid", "1", "-d", zero])
                .unwrap_err()
                .to_string();
            assert!(err.contains("more than zero"), "{zero}: {err}");
        }
        let cli = Cli::try_parse_from(["profiler", "attach", "--pid", "1", "-d", "90"]).unwrap();
        let Command::Attach(args) = cli.command else {
            panic!("attach")
        };
        assert_eq!(args.duration, Some(Duration::from_secs(90)));
    }
}
