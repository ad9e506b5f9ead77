//! `profiler attach` as an operator runs it, as root: what it refuses, what it leaves behind,
//! and what a second Ctrl-C does.

mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::*;

fn attach(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_profiler"))
        .arg("attach")
        .args(args)
        .output()
        .expect("profiler runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A process to attach to, killed by pid when the test ends.
fn sleeper() -> ChildGuard {
    ChildGuard::spawn(Command::new("sleep").arg("60")).expect("sleep starts")
}

#[test]
fn refuses_what_cannot_be_profiled_and_leaves_nothing_behind() {
    require_root!();
    let target = sleeper();
    let pid = target.pid().to_string();
    let root = tempfile::tempdir().unwrap();
    let out_dir = root.path().join("results/run");
    let out = out_dir.to_str().unwrap();

    let zero = attach(&["--pid", &pid, "--duration", "0", "-o", out]);
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
    assert!(
        stderr(&zero).contains("more than zero"),
        "{}",
        stderr(&zero)
    );

    // pid 2 is kthreadd on every Linux.
    let kthread = attach(&["--pid", "2", "--duration", "1s", "-o", out]);
    assert_eq!(kthread.status.code(), Some(1));
    assert!(
        stderr(&kthread).contains("kernel thread: it has no user space to profile"),
        "{}",
        stderr(&kthread)
    );
    // A failed attach leaves no directory it made, not even the parents.
    assert!(!root.path().join("results").exists());

    let proc = attach(&["--pid", &pid, "--duration", "1s", "-o", "/proc/sys"]);
    assert_eq!(proc.status.code(), Some(1));
    assert!(
        stderr(&proc).contains("/proc/sys is on procfs, a kernel interface, not storage"),
        "{}",
        stderr(&proc)
    );
}

/// An earlier `--all` run's reports never sit beside a new CPU-only run's.
#[test]
fn an_earlier_run_is_refused_unless_overwritten() {
    require_root!();
    let target = sleeper();
    let pid = target.pid().to_string();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().to_str().unwrap();
    let first = attach(&["--pid", &pid, "--all", "-d", "1s", "-o", out, "--quiet"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(root.path().join("offcpu.svg").is_file());
    let again = attach(&["--pid", &pid, "-d", "1s", "-o", out, "--quiet"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--overwrite"), "{}", stderr(&again));
    let replaced = attach(&[
        "--pid",
        &pid,
        "-d",
        "1s",
        "-o",
        out,
        "--quiet",
        "--overwrite",
    ]);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    assert!(root.path().join("cpu.svg").is_file());
    for stale in ["offcpu.svg", "locks.txt", "latency.json"] {
        assert!(
            !root.path().join(stale).exists(),
            "{stale} left from the --all run"
        );
    }
}

/// The first Ctrl-C writes the outputs; a second one exits at once without them, and says so.
#[test]
fn a_second_interrupt_exits_without_outputs_and_says_so() {
    require_root!();
    let target = sleeper();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("run");
    let mut cli = Command::new(env!("CARGO_BIN_EXE_profiler"));
    cli.args([
        "attach",
        "--pid",
        &target.pid().to_string(),
        "--all",
        "--quiet",
        "-o",
    ])
    .arg(&out)
    .stderr(Stdio::piped());
    let child = cli.spawn().expect("profiler runs");
    let pid = child.id() as i32;
    // Attached once the directory exists and the programs are loaded.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !loaded(&out) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, libc::SIGINT);
        std::thread::sleep(Duration::from_millis(20));
        libc::kill(pid, libc::SIGINT);
    }
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{text}");
    assert!(
        text.contains("second interrupt: exiting now, without writing the outputs"),
        "{text}"
    );
    assert!(!out.join("summary.json").exists());
}

/// Whether a capture into `out` has started: its directory exists and a program of ours is
/// loaded.
fn loaded(out: &Path) -> bool {
    out.is_dir()
        && aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .any(|p| p.name_as_str() == Some(profiler_common::cpu::PROGRAM))
}
