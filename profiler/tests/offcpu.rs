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

/// Weight of `stacks` in class `class` (`[idle]`, `[blocked]`) with a frame containing each of
/// `needles`.
fn weight_in(stacks: &[(Vec<String>, u64)], class: &str, needles: &[&str]) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| {
            frames.get(1).is_some_and(|c| c == class)
                && needles.iter().all(|n| frames.iter().any(|f| f.contains(n)))
        })
        .map(|(_, w)| w)
        .sum()
}

/// A C thread pool: the worker waiting on its queue's condition variable and the reader in
/// poll are idle (waiting for work); the worker waiting for work_lock, which a stall holds, is
/// blocked inside work. Neither is counted as the other, and idle never tops the blocking
/// stacks.
#[test]
fn a_thread_pools_waits_for_work_are_idle_and_its_lock_waits_are_not() {
    require_root!();
    let path = build_c(&CBuild {
        source: "pipeline_server",
        output: "pipeline_server",
        cflags: FRAME_POINTERS,
        libs: &[],
    })
    .expect("fixture builds");
    let mut fixture =
        ChildGuard::spawn(std::process::Command::new(path).args(["200", "100", "15"])).unwrap();
    let ready = fixture
        .wait_for_line("ready port ", Duration::from_secs(10))
        .unwrap();
    let port: u16 = ready["ready port ".len()..].trim().parse().unwrap();
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(6),
        output_dir("offcpu-pool"),
    );
    opts.cpu = None;
    opts.offcpu = Some(profiler::probes::offcpu::Config::default());
    let (_, outcome) = capture(opts, || {
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut reply = [0u8; 16];
            let end = std::time::Instant::now() + Duration::from_secs(7);
            while std::time::Instant::now() < end {
                stream.write_all(&[7u8; 16]).unwrap();
                stream.read_exact(&mut reply).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    });
    let stacks = folded(&outcome, "offcpu.folded");
    let cond = ["serve_queue", "pthread_cond_wait"];
    let poll = ["read_requests", "poll"];
    let lock = ["serve_queue", "pthread_mutex_lock"];
    assert!(
        weight_in(&stacks, "[idle]", &cond) > 0,
        "worker's wait for work"
    );
    assert!(
        weight_in(&stacks, "[idle]", &poll) > 0,
        "reader's wait for requests"
    );
    assert!(
        weight_in(&stacks, "[blocked]", &lock) > 0,
        "worker's wait for work_lock"
    );
    assert_eq!(weight_in(&stacks, "[blocked]", &cond), 0);
    assert_eq!(weight_in(&stacks, "[blocked]", &poll), 0);
    assert_eq!(weight_in(&stacks, "[idle]", &lock), 0);
    let summary = outcome.summary.offcpu.unwrap();
    assert!(summary.idle_us > 0 && summary.blocked_us > 0, "{summary:?}");
    for stack in &summary.top_stacks {
        assert!(
            !stack
                .frames
                .iter()
                .any(|f| f.contains("pthread_cond_wait") || f == "poll"),
            "an idle stack among the blocking ones: {:?}",
            stack.frames
        );
    }
    drop(fixture);
}

/// The tokio pool: its parked workers and event loop are idle; a request's sleep in
/// `slow_path` is blocked.
#[test]
fn a_tokio_servers_parks_are_idle_and_its_slow_path_is_blocked() {
    require_root!();
    let pool =
        testbed::server::Server::start("testbed-pool", &["--slow-every", "5", "--slow-ms", "20"])
            .unwrap();
    let addr = pool.addr;
    let mut opts = options(
        pool.pid(),
        Duration::from_secs(6),
        output_dir("offcpu-tokio"),
    );
    opts.cpu = None;
    opts.offcpu = Some(profiler::probes::offcpu::Config::default());
    let (_, outcome) = capture(opts, || {
        std::thread::spawn(move || {
            let target = profiler::load::Target::Stratum {
                host: addr.ip().to_string(),
                port: addr.port(),
            };
            let mut load = profiler::load::LoadOptions::new(target, profiler::load::Profile::Smoke);
            load.duration = Duration::from_secs(7);
            load.ramp_up = Duration::from_secs(1);
            load.share_rate = 120.0;
            load.max_error_rate = 1.0;
            profiler::load::run_options(load).expect("load runs");
        });
    });
    drop(pool);
    let stacks = folded(&outcome, "offcpu.folded");
    assert!(weight_in(&stacks, "[blocked]", &["slow_path"]) > 0);
    assert_eq!(weight_in(&stacks, "[idle]", &["slow_path"]), 0);
    let parked =
        weight_in(&stacks, "[idle]", &["park"]) + weight_in(&stacks, "[idle]", &["epoll_wait"]);
    assert!(parked > 0, "the runtime's parks are idle");
    assert_eq!(weight_in(&stacks, "[blocked]", &["park"]), 0);
}
