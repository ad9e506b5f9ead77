//! The command line. These clap structs become plain option structs (`into_options`) before
//! they reach the library, so nothing past this module sees clap.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{probes::cpu, session::AttachOptions, unwind::UnwindMode};

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
    /// Drive load against a stratum or HTTP target and report client-side latency.
    Load(crate::load::LoadArgs),
    /// Compile the .eh_frame unwinding tables of ELF files and report their size and build
    /// time (what `attach` does for every binary the target maps).
    UnwindTables(UnwindTablesArgs),
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
    /// How long to capture, e.g. 30s or 2m [default: until Ctrl-C or the target exits].
    #[arg(short, long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// CPU samples per second.
    #[arg(short = 'F', long, default_value_t = 99,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,
    /// Where to write reports [default: results/<comm>-<pid>-<UTC timestamp>/].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// How to walk user stacks: .eh_frame tables where binaries have them (auto), frame
    /// pointers only (fp), or tables only (dwarf).
    #[arg(long, value_enum, default_value_t = Unwind::Auto)]
    pub unwind: Unwind,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
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
        AttachOptions {
            pid: self.pid,
            duration: self.duration,
            output: self.output,
            cpu: Some(cpu::Config {
                frequency: self.frequency,
            }),
            unwind: self.unwind.into(),
            verbose,
            progress: !self.quiet,
        }
    }
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

    #[test]
    fn rejects_bad_values() {
        assert!(Cli::try_parse_from(["profiler", "attach", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["profiler", "attach", "--pid", "1", "-d", "soon"]).is_err());
        assert!(Cli::try_parse_from(["profiler", "attach", "--pid", "1", "-F", "0"]).is_err());
    }
}
