//! What the root-only tests share: fixtures, captures through the library, and checks that
//! nothing is left behind.
#![allow(dead_code, unused_imports)]

use std::{
    io::Write as _, path::PathBuf, process::Command, sync::atomic::AtomicBool, time::Duration,
};

use profiler::session::{AttachOptions, EndReason, Outcome, Session};
pub use testbed::{
    fixture::{CBuild, FRAME_POINTERS, NO_FRAME_POINTERS, build_c},
    process::ChildGuard,
};

/// Set by `cargo xtask test`: there, a kernel test must run, never skip.
pub const REQUIRE_ROOT_ENV: &str = "PROFILER_TESTS_REQUIRE_ROOT";

/// Whether this test can load eBPF programs (root). Under a plain non-root `cargo test` a
/// kernel test is skipped with one line saying why; under `cargo xtask test` it fails instead.
pub fn can_load_ebpf() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ROOT_ENV).is_none(),
        "eBPF tests need root: run `cargo xtask test` as root or with sudo"
    );
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    // Past the harness's capture, which hides a passing test's output: the skip is seen.
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipped {test}: needs root to load eBPF programs (run `cargo xtask test`)"
    );
    false
}

/// Returns from a kernel test early, saying why, when it cannot load eBPF programs.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::can_load_ebpf() {
            return;
        }
    };
}

/// Builds and starts a C fixture, waiting for its "ready" line.
pub fn start_fixture(build: &CBuild<'_>, args: &[&str]) -> ChildGuard {
    let path = build_c(build).expect("fixture builds");
    let mut child = ChildGuard::spawn(Command::new(&path).args(args)).expect("fixture starts");
    child
        .wait_for_line("ready", Duration::from_secs(10))
        .expect("fixture gets ready");
    child
}

/// A fresh output directory under the target dir, unique per test.
pub fn output_dir(test: &str) -> PathBuf {
    let dir = testbed::fixture::workspace_root()
        .join("target/test-results")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn options(pid: u32, duration: Duration, output: PathBuf) -> AttachOptions {
    AttachOptions {
        pid,
        duration: Some(duration),
        output: Some(output),
        cpu: Some(profiler::probes::cpu::Config { frequency: 99 }),
        offcpu: None,
        futex: None,
        alloc: None,
        memory: None,
        sock: None,
        why: None,
        interval: None,
        unwind: profiler::unwind::UnwindMode::Auto,
        verbose: false,
        progress: false,
        overwrite: false,
        details: true,
    }
}

/// Attaches, calls `during` once attached, captures until the options say stop, and writes
/// the outputs. Asserts that no program of ours is loaded afterwards.
pub fn capture(opts: AttachOptions, during: impl FnOnce()) -> (EndReason, Outcome) {
    let stop = AtomicBool::new(false);
    let mut session = Session::start(opts).expect("attach");
    during();
    let end = session.run(&stop);
    let outcome = session.finish(end).expect("outputs written");
    assert_no_programs_loaded();
    (end, outcome)
}

/// Asserts this process holds no eBPF program, link, map or perf event any more: a capture
/// that finished closed them all, so the kernel detached and freed its programs. Looked up in
/// our own fds, not the kernel's list of programs by name, which also holds those of any other
/// profiler running on the machine.
pub fn assert_no_programs_loaded() {
    let held: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("own fds")
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| {
            ["bpf-prog", "bpf_link", "bpf-map", "[perf_event]"]
                .iter()
                .any(|kind| target.contains(kind))
        })
        .collect();
    assert!(held.is_empty(), "still held: {held:?}");
}

/// Thread ids and names of a live process.
pub fn threads_of(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("process alive")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let tid = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            Some((tid, comm.trim_end().to_string()))
        })
        .collect()
}

/// `cpu.folded` of an outcome, parsed.
pub fn folded(outcome: &Outcome, name: &str) -> Vec<(Vec<String>, u64)> {
    let file = std::fs::File::open(outcome.dir.join(name)).expect("folded file written");
    profiler::report::folded::parse(std::io::BufReader::new(file)).expect("folded parses")
}

/// The allocation fixtures' flags: frame pointers, and no allocator call folded away.
pub const ALLOC_FLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fno-inline",
    "-fno-builtin-malloc",
    "-fno-builtin-free",
    "-fno-builtin-realloc",
];
