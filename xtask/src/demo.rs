//! The main job on the bundled default: start `testbed-pool`, drive the standard load profile
//! against it, attach the profiler with every family for the middle of the run, say where the
//! reports are, and stop everything that was started.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use testbed::{process::ChildGuard, server::Server};

use crate::util;

/// The standard profile ramps up for 10 s and runs 60 s; the capture covers the steady middle.
const ATTACH_AFTER: Duration = Duration::from_secs(15);
const CAPTURE: &str = "30s";
/// What is left of the load run once the capture ends, with room for a slow machine.
const LOAD_LEFT: Duration = Duration::from_secs(120);

pub fn run() -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let out = util::workspace_root()
        .join("results")
        .join(format!("demo-{stamp}"));
    std::fs::create_dir_all(&out)?;

    eprintln!("demo: starting testbed-pool");
    let pool = Server::start("testbed-pool", &[]).context("starting testbed-pool")?;
    eprintln!("demo: {}", pool.banner);
    let target = format!("stratum://{}", pool.addr);
    eprintln!("demo: standard load profile against {target} (70 s)");
    // Quiet: its live line would interleave with the profiler's; errors still show, and its
    // report (stdout) is printed once it ends.
    let load = ChildGuard::spawn(
        Command::new(&profiler)
            .args([
                "load",
                &target,
                "--profile",
                "standard",
                "--quiet",
                "--output-dir",
            ])
            .arg(&out)
            .stderr(Stdio::inherit()),
    )
    .context("starting the load driver")?;
    thread::sleep(ATTACH_AFTER);
    let profile = out.join("profile");
    eprintln!(
        "demo: profiling pool pid {} with every family for {CAPTURE}",
        pool.pid()
    );
    let status = util::privileged(profiler.to_str().context("utf-8 path")?)
        .args([
            "attach",
            "--all",
            "--alloc",
            "--quiet",
            "--pid",
            &pool.pid().to_string(),
        ])
        .args(["--duration", CAPTURE, "--output"])
        .arg(&profile)
        .status()
        .context("running profiler attach")?;
    if !status.success() {
        bail!("profiler attach failed: {status}");
    }
    let (load_status, report) = load.wait(LOAD_LEFT)?;
    for line in report {
        println!("{line}");
    }
    let tallies = pool.stop()?;
    if !load_status.success() {
        bail!("the load driver failed: {load_status}");
    }
    println!(
        "\ndemo: pool said: {}",
        tallies
            .tallies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    print_outputs(&out, &profile);
    Ok(())
}

fn print_outputs(out: &Path, profile: &Path) {
    println!("demo: load report and profile in {}", out.display());
    if let Ok(entries) = std::fs::read_dir(out) {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_file() {
                println!("  {}", path.display());
            }
        }
    }
    println!("  {}  <- open this", profile.join("report.html").display());
    for file in [
        "cpu.svg",
        "offcpu.svg",
        "locks.txt",
        "leaks.txt",
        "summary.json",
    ] {
        println!("  {}", profile.join(file).display());
    }
}
