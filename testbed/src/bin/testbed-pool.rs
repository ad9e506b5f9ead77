//! `testbed-pool`: a stratum v1 mining pool with ground-truth knobs. See `testbed::pool`.

use std::process::ExitCode;

use clap::Parser;
use testbed::pool::{self, PoolArgs};

fn main() -> ExitCode {
    let result = PoolArgs::parse()
        .config()
        .map_err(anyhow::Error::from)
        .and_then(|config| pool::run(config).map_err(anyhow::Error::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("testbed-pool: {err:#}");
            ExitCode::FAILURE
        }
    }
}
