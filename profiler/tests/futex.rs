//! `futex` against the real kernel, as root: fixtures contend a known lock, measure their own
//! waits, and the report must name the lock, match the waits and show the callers.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use profiler::report::locks::LockReport;

const LOCK_CONTEND: CBuild<'static> = CBuild {
    source: "lock_contend",
    output: "lock_contend-fp",
    cflags: FRAME_POINTERS,
    libs: &[],
};

/// Attaches with `futex` only, starts the fixture's contention, and captures until it exits.
/// Returns the locks and the fixture's own total wait.
fn contend(mut fixture: ChildGuard, name: &str) -> (Vec<LockReport>, u64) {
    let mut opts = options(fixture.pid(), Duration::from_secs(30), output_dir(name));
    opts.cpu = None;
    opts.futex = Some(profiler::probes::futex::Config {});
    let mut line = String::new();
    let (end, outcome) = capture(opts, || {
        fixture.signal(libc::SIGUSR1).unwrap();
        line = fixture
            .wait_for_line("total_wait_ns", Duration::from_secs(30))
            .unwrap();
    });
    assert_eq!(end, profiler::session::EndReason::TargetExited);
    let own: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    for file in ["locks.txt", "locks.folded", "locks.svg", "summary.json"] {
        assert!(outcome.dir.join(file).is_file(), "{file} missing");
    }
    (outcome.locks.unwrap(), own)
}

#[test]
fn names_the_hot_glibc_lock_and_matches_its_waits() {
    require_root();
    let fixture = start_fixture(&LOCK_CONTEND, &["2"]);
    let (locks, own_ns) = contend(fixture, "futex-glibc");
    let top = &locks[0];
    assert_eq!(top.name, "g_hot_lock", "{locks:#?}");
    assert_eq!(top.kind, "symbol");
    assert_eq!(top.waiters, 4, "{top:#?}");
    let ours = top.total_wait_us * 1000.0;
    let own = own_ns as f64;
    assert!(
        (ours - own).abs() <= own * 0.20,
        "profiler {:.1} ms vs fixture {:.1} ms",
        ours / 1e6,
        own / 1e6
    );
    // Debian's glibc has no frame pointers: worker_loop sits right under the libc frames only
    // because the unwinder reads libc's .eh_frame.
    let waiter = &top.top_waiters[0];
    let first_libc = waiter
        .frames
        .iter()
        .position(|f| f.contains("pthread_mutex_lock") || f.contains("lll_lock"))
        .unwrap_or_else(|| panic!("no libc lock frame in {:?}", waiter.frames));
    assert_eq!(
        waiter.frames[first_libc - 1],
        "worker_loop",
        "{:?}",
        waiter.frames
    );
    // The holder releases the lock from the same loop: wakes come from pthread_mutex_unlock.
    assert!(
        top.top_wakers
            .iter()
            .any(|w| w.frames.iter().any(|f| f == "worker_loop")),
        "{:#?}",
        top.top_wakers
    );
    assert!(top.p50_us > 0.0 && top.p50_us <= top.p99_us && top.p99_us <= top.max_wait_us * 1.01);
}

#[test]
fn catches_rust_std_mutex_wait_bitset() {
    require_root();
    let bin = testbed::fixture::testbed_bin("fixture-rust-mutex").unwrap();
    let mut fixture = ChildGuard::spawn(Command::new(&bin).arg("2")).unwrap();
    fixture
        .wait_for_line("ready", Duration::from_secs(10))
        .unwrap();
    let (locks, own_ns) = contend(fixture, "futex-rust");
    let top = &locks[0];
    assert!(top.name.ends_with("CONTENDED"), "{locks:#?}");
    let ours = top.total_wait_us * 1000.0;
    let own = own_ns as f64;
    assert!(
        (ours - own).abs() <= own * 0.20,
        "profiler {:.1} ms vs fixture {:.1} ms",
        ours / 1e6,
        own / 1e6
    );
    assert!(
        top.top_waiters[0]
            .frames
            .iter()
            .any(|f| f.ends_with("contend_std_mutex")),
        "{:?}",
        top.top_waiters[0].frames
    );
}
