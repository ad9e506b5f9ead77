//! The main job on the bundled default: start `testbed-pool` with problems planted in it (a
//! background job holding its hot lock, a leak, a CPU-heavy path: `testbed::demo`), drive the
//! standard load profile against it, attach the profiler with every family for the middle of
//! the run, print its findings digest, check that it names every planted problem, say where
//! the reports are, and stop everything that was started. `--clean` runs the pool with
//! nothing planted.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use testbed::{demo, process::ChildGuard, server::Server};

use crate::util;

/// The standard profile ramps up for 10 s and runs 60 s; the capture covers the steady middle.
const ATTACH_AFTER: Duration = Duration::from_secs(15);
const CAPTURE: &str = "30s";
/// What is left of the load run once the capture ends, with room for a slow machine.
const LOAD_LEFT: Duration = Duration::from_secs(120);

pub fn run(clean: bool) -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let out = util::workspace_root()
        .join("results")
        .join(format!("demo-{stamp}"));
    std::fs::create_dir_all(&out)?;

    let args: &[&str] = if clean { &[] } else { demo::ARGS };
    if clean {
        eprintln!("demo: starting testbed-pool with nothing planted");
    } else {
        eprintln!("demo: starting testbed-pool with problems planted (find them):");
        for plant in demo::PLANTS {
            eprintln!("  - {}", plant.name);
        }
    }
    let pool = Server::start("testbed-pool", args).context("starting testbed-pool")?;
    eprintln!("demo: {}", pool.banner);
    let target = format!("stratum://{}", pool.addr);
    eprintln!("demo: standard load profile against {target} (70 s)");
    // Quiet: its live line would interleave with the profiler's; errors still show, and its
    // report (stdout) goes to its files.
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
    // --quiet: the digest alone on the terminal, the tables in the reports.
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
    let (load_status, _) = load.wait(LOAD_LEFT)?;
    let tallies = pool.stop()?;
    if !load_status.success() {
        bail!(
            "the load driver failed ({load_status}): its report is in {}",
            out.display()
        );
    }
    println!(
        "\ndemo: the pool counted: {}",
        tallies
            .tallies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    print_outputs(&out, &profile);
    if clean {
        return Ok(());
    }
    let findings = read_findings(&profile)?;
    let (all, verdict) = demo::verdict(&findings);
    println!("\ndemo: {verdict}");
    if !all {
        bail!(
            "the digest missed a planted problem: see {}",
            profile.display()
        );
    }
    Ok(())
}

/// The one-line findings of a capture's `findings.json`.
fn read_findings(profile: &Path) -> anyhow::Result<Vec<String>> {
    let path = profile.join("findings.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(json["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["what"].as_str().map(str::to_string))
        .collect())
}

fn print_outputs(out: &Path, profile: &Path) {
    println!("demo: load report and profile in {}", out.display());
    println!("  {}  <- open this", profile.join("report.html").display());
    for file in [
        "findings.json",
        "tail.txt",
        "cpu.svg",
        "locks.txt",
        "leaks.txt",
    ] {
        println!("  {}", profile.join(file).display());
    }
}
