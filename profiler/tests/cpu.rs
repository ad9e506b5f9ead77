//! `cpu` against the real kernel, as root: a fixture burns CPU in known functions on known
//! threads, and the profile must say so.

mod common;

use std::{
    collections::HashSet,
    process::Command,
    time::{Duration, Instant},
};

use common::*;

const FIXTURE: CBuild<'static> = CBuild {
    source: "cpu_burn",
    output: "cpu_burn-fp",
    cflags: FRAME_POINTERS,
    libs: &[],
};

#[test]
fn samples_every_thread_with_whole_call_chains() {
    require_root!();
    let mut fixture = start_fixture(&FIXTURE, &[]);
    let pid = fixture.pid();
    let opts = options(pid, Duration::from_secs(3), output_dir("cpu-chains"));
    let (_, outcome) = capture(opts, || {
        // The third thread starts only now, after attach.
        fixture.signal(libc::SIGUSR1).unwrap();
        fixture
            .wait_for_line("late started", Duration::from_secs(5))
            .unwrap();
    });

    let stacks = folded(&outcome, "cpu.folded");
    let total: u64 = stacks.iter().map(|(_, w)| w).sum();
    assert!(total >= 150, "only {total} samples of the fixture");
    let in_leaves: u64 = stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f == "hot_leaf" || f == "late_leaf"))
        .map(|(_, w)| w)
        .sum();
    assert!(
        in_leaves * 10 >= total * 9,
        "{in_leaves} of {total} samples in hot_leaf/late_leaf"
    );
    let chain = ["outer", "middle", "hot_leaf"];
    assert!(
        stacks
            .iter()
            .any(|(frames, _)| frames.windows(3).any(|w| w == chain)),
        "no outer;middle;hot_leaf in {stacks:?}"
    );

    // Every stack is one of the fixture's threads, and all three burners appear.
    let tasks = threads_of(pid);
    let names: HashSet<&str> = tasks.iter().map(|(_, n)| n.as_str()).collect();
    let roots: HashSet<&str> = stacks.iter().map(|(f, _)| f[0].as_str()).collect();
    for thread in ["burner-1", "burner-2", "late"] {
        assert!(roots.contains(thread), "{thread} missing from {roots:?}");
    }
    assert!(
        roots.is_subset(&names),
        "{roots:?} not all threads of {names:?}"
    );
    let tids: HashSet<u32> = tasks.iter().map(|(t, _)| *t).collect();
    for stack in outcome.cpu_stacks.as_ref().unwrap() {
        assert!(
            tids.contains(&stack.tid),
            "tid {} is not the fixture's",
            stack.tid
        );
    }

    // The summary agrees with the folded file.
    let cpu = outcome.summary.cpu.as_ref().unwrap();
    assert!(cpu.samples >= total, "{} < {total}", cpu.samples);
    assert_eq!(cpu.top_self[0].function, "hot_leaf");
    assert!(outcome.dir.join("cpu.svg").is_file());
    let svg = std::fs::read_to_string(outcome.dir.join("cpu.svg")).unwrap();
    assert!(svg.contains(&format!("(pid {pid})")));
    assert_eq!(
        outcome
            .summary
            .target
            .frame_pointers
            .as_ref()
            .unwrap()
            .has_frame_pointers,
        Some(true)
    );
}

#[test]
fn target_exit_ends_capture_and_keeps_symbols() {
    require_root!();
    // The fixture exits by itself after 2 s; we ask for 20.
    let fixture = start_fixture(&FIXTURE, &["2"]);
    let opts = options(
        fixture.pid(),
        Duration::from_secs(20),
        output_dir("cpu-exit"),
    );
    let started = Instant::now();
    let (end, outcome) = capture(opts, || {});
    assert_eq!(end, profiler::session::EndReason::TargetExited);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(outcome.summary.notes.iter().any(|n| n.contains("exited")));
    // Symbols come from the files we held open, so they survive the exit.
    let stacks = folded(&outcome, "cpu.folded");
    assert!(
        stacks
            .iter()
            .any(|(f, _)| f.iter().any(|n| n == "hot_leaf")),
        "{stacks:?}"
    );
}

fn profiler_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_profiler"))
}

#[test]
fn missing_pid_fails_with_one_line_and_attaches_nothing() {
    require_root!();
    // Pids never reach this value (pid_max is at most 2^22).
    let out = profiler_bin()
        .args(["attach", "--pid", "99999999", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "error: pid 99999999 not found");
}

#[test]
fn unwritable_output_fails_before_attaching() {
    require_root!();
    let fixture = start_fixture(&FIXTURE, &[]);
    // Root can write anywhere a directory can exist; under a regular file none can.
    let file = output_dir("cpu-unwritable");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"").unwrap();
    let out = profiler_bin()
        .args([
            "attach",
            "--pid",
            &fixture.pid().to_string(),
            "--duration",
            "1s",
            "--output",
        ])
        .arg(file.join("sub"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write into output directory"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn sigterm_stops_capture_and_writes_outputs_within_2s() {
    require_root!();
    let fixture = start_fixture(&FIXTURE, &[]);
    let dir = output_dir("cpu-sigterm");
    let profiler = ChildGuard::spawn(
        profiler_bin()
            .args([
                "attach",
                "--quiet",
                "--pid",
                &fixture.pid().to_string(),
                "--output",
            ])
            .arg(&dir),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    profiler.signal(libc::SIGTERM).unwrap();
    let signalled = Instant::now();
    let (status, stdout) = profiler.wait(Duration::from_secs(10)).unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "outputs took {took:?}");
    for file in ["cpu.folded", "cpu.svg", "summary.json"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["end_reason"], "interrupted");
    // --quiet prints the digest alone, and it names the hot function.
    assert!(stdout.iter().any(|l| l.contains("hot_leaf")), "{stdout:?}");
    assert!(
        !stdout
            .iter()
            .any(|l| l.contains("Top functions by self time")),
        "{stdout:?}"
    );
}
