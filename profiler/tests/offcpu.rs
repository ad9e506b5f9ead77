//! `offcpu` against the real kernel, as root: a thread sleeps a known time in a known function.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn sleep_time_is_accounted_to_the_sleeping_function() {
    require_root!();
    let mut fixture = start_fixture(
        &CBuild {
            source: "sleepy",
            output: "sleepy-fp",
            cflags: FRAME_POINTERS,
            libs: &[],
        },
        &["40"],
    );
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(30),
        output_dir("offcpu-sleepy"),
    );
    opts.cpu = None;
    opts.offcpu = Some(profiler::probes::offcpu::Config {
        min_block: Duration::from_micros(1),
    });
    let mut line = String::new();
    let (_, outcome) = capture(opts, || {
        fixture.signal(libc::SIGUSR1).unwrap();
        line = fixture
            .wait_for_line("slept_ns", Duration::from_secs(30))
            .unwrap();
    });
    let slept_us = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1000;
    let stacks = folded(&outcome, "offcpu.folded");
    let in_sleepy: u64 = stacks
        .iter()
        .filter(|(frames, _)| frames[0] == "sleepy" && frames.iter().any(|f| f == "sleepy_fn"))
        .map(|(_, w)| w)
        .sum();
    let ratio = in_sleepy as f64 / slept_us as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "offcpu {in_sleepy} us vs slept {slept_us} us ({ratio:.3})"
    );
    let svg = std::fs::read_to_string(outcome.dir.join("offcpu.svg")).unwrap();
    assert!(
        svg.contains("microseconds"),
        "the flamegraph says what it weighs"
    );
    // The main thread blocks in pthread_join all along; the sleeper's own top stack is its
    // sleep.
    let summary = outcome.summary.offcpu.unwrap();
    let sleepy_top = summary
        .top_stacks
        .iter()
        .find(|s| s.thread == "sleepy")
        .expect("the sleepy thread among the top stacks");
    assert!(
        sleepy_top.frames.iter().any(|f| f == "sleepy_fn"),
        "{:?}",
        sleepy_top.frames
    );
}
