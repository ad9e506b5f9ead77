//! The bundled load driver (`profiler load`).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// stratum://host:port or http://host:port/path
    pub target: String,
}

pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("load driver not built yet (target {})", args.target)
}
