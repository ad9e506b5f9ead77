//! Running commands, and finding the workspace.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context, bail};

pub fn workspace_root() -> PathBuf {
    testbed::fixture::workspace_root()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Makes cargo run the test binaries it builds through `sudo -E` unless we are root already.
pub fn as_root(cmd: &mut Command) {
    if !is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
}

/// Prefixes `sudo` to a command line when we are not root.
pub fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

/// Runs a command with inherited stdio; fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its output, failing if it fails.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Builds the profiler in release mode and returns the binary's path.
pub fn build_profiler() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "--quiet", "--package", "profiler"]))?;
    Ok(workspace_root().join("target/release/profiler"))
}
