//! Project tasks: `cargo xtask setup | test | demo | bench | lint`. (The release checklist is
//! `profiler checklist`, part of the shipped binary; `scripts/release-checklist.sh` wraps it.)
//!
//! `test` and `demo` run `setup` first, so on a fresh machine the README's two commands are all
//! a user types.

mod bench;
mod demo;
mod setup;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: nightly rust-src, bpf-linker, apt packages.
    Setup,
    /// Run every test (as root: the kernel tests load eBPF programs).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main job: profile the bundled pool, with problems planted in it, under load; print
    /// the findings and check they name every planted problem.
    Demo {
        /// Plant nothing: the pool as it is.
        #[arg(long)]
        clean: bool,
    },
    /// Measure overhead and speed; results go to results/bench/.
    Bench(bench::BenchArgs),
    /// cargo fmt --check and clippy -D warnings over the workspace.
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Task::Setup => done(setup::run()),
        Task::Test { args } => done(setup::run().and_then(|()| test(&args))),
        Task::Demo { clean } => done(setup::run().and_then(|()| demo::run(clean))),
        Task::Bench(args) => done(setup::run().and_then(|()| bench::run(args))),
        Task::Lint => done(setup::run().and_then(|()| lint())),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let mut cmd = util::cargo();
    // profiler-ebpf only builds for the BPF target; profiler/build.rs builds it.
    // Every test binary runs even after one fails, so one run shows all that is wrong.
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "profiler-ebpf",
        "--no-fail-fast",
    ])
    .args(args);
    // Kernel tests check that nothing of theirs stays loaded, and time-sensitive ones need the
    // CPUs to themselves: one test at a time.
    if !args.iter().any(|a| a == "--") {
        cmd.arg("--");
    }
    cmd.arg("--test-threads=1");
    // The kernel tests load eBPF programs: here they must run, never skip.
    cmd.env("PROFILER_TESTS_REQUIRE_ROOT", "1");
    if !util::is_root() {
        eprintln!(
            "cargo xtask test loads eBPF programs, which needs root: running the tests with sudo"
        );
    }
    util::as_root(&mut cmd);
    util::run(&mut cmd)
}

fn lint() -> anyhow::Result<()> {
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "profiler-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate, as it is really built: nightly, BPF target, core only.
    util::run(
        std::process::Command::new("rustup")
            .current_dir(util::workspace_root())
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "profiler-ebpf",
            ])
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(["--target-dir", "target/ebpf-lint", "--", "-D", "warnings"]),
    )
}
