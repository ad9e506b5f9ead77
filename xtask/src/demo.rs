//! The main job on the bundled default: start a target, profile it, say where the reports are,
//! and stop everything that was started.

use std::{process::Command, time::Duration};

use anyhow::Context;
use testbed::{
    fixture::{CBuild, FRAME_POINTERS, build_c},
    process::ChildGuard,
};

use crate::util;

pub fn run() -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    let fixture = build_c(&CBuild {
        source: "cpu_burn",
        output: "cpu_burn-fp",
        cflags: FRAME_POINTERS,
        libs: &[],
    })?;
    let mut target = ChildGuard::spawn(&mut Command::new(&fixture))?;
    target.wait_for_line("ready", Duration::from_secs(10))?;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let out = util::workspace_root()
        .join("results")
        .join(format!("demo-{stamp}"));
    eprintln!(
        "demo: profiling the CPU-burning fixture (pid {}) for 10 s",
        target.pid()
    );
    let mut cmd = util::privileged(profiler.to_str().context("utf-8 path")?);
    cmd.args([
        "attach",
        "--pid",
        &target.pid().to_string(),
        "--duration",
        "10s",
    ])
    .arg("--output")
    .arg(&out);
    util::run(&mut cmd)?;
    drop(target);
    println!("\ndemo: reports in {}", out.display());
    for file in ["cpu.svg", "cpu.folded", "summary.json"] {
        println!("  {}", out.join(file).display());
    }
    Ok(())
}
