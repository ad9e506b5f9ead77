//! Every C fixture builds and prints exactly the lines the profiler's tests and benchmarks wait
//! for ("ready", "done ...", "elapsed_ns N", ...), in order, without root: the profiler's own
//! tests of them need root, so this is what catches a fixture that changed its output.
//!
//! Outputs are named `check-*` so these builds never race the profiler's tests for a file.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use testbed::{
    fixture::{CBuild, FRAME_POINTERS, build_c},
    process::ChildGuard,
};

const WAIT: Duration = Duration::from_secs(20);

fn start(source: &'static str, output: &'static str, args: &[&str]) -> ChildGuard {
    start_with(
        &CBuild {
            source,
            output,
            cflags: FRAME_POINTERS,
            libs: &[],
        },
        args,
    )
}

fn start_with(build: &CBuild<'_>, args: &[&str]) -> ChildGuard {
    let path = build_c(build).unwrap();
    ChildGuard::spawn(Command::new(path).args(args)).unwrap()
}

/// The line with numbers as `N`, for lines that carry measurements.
fn shape(line: &str) -> String {
    let mut out = String::new();
    for c in line.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('N') {
            out.push('N');
        }
    }
    out
}

/// Waits for the fixture's first line, which must be exactly `ready`.
fn ready(child: &mut ChildGuard) {
    let first = child.lines_until("", WAIT).unwrap();
    assert_eq!(first, ["ready"]);
}

/// Starts the work, and returns the lines printed until the fixture exits successfully.
fn run_to_exit(child: ChildGuard) -> Vec<String> {
    child.signal(libc::SIGUSR1).unwrap();
    let (status, lines) = child.wait(WAIT).unwrap();
    assert!(status.success(), "{status}: {lines:?}");
    lines
}

#[test]
fn alloc_patterns() {
    let mut child = start("alloc_patterns", "check-alloc_patterns", &["100", "0.01"]);
    ready(&mut child);
    // The chain starts at 32 bytes and grows by one per iteration.
    assert_eq!(run_to_exit(child), ["done iterations 100 chain_size 132"]);
}

#[test]
fn memory_growth() {
    let mut child = start(
        "memory_growth",
        "check-memory_growth",
        &["1000", "0.05", "16", "8"],
    );
    ready(&mut child);
    let lines = run_to_exit(child);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(shape(&lines[0]), "done leaked N churned N cpu_ns N");
}

#[test]
fn alloc_ring() {
    let mut child = start("alloc_ring", "check-alloc_ring", &["10", "5", "1", "64"]);
    let first = child.lines_until("", WAIT).unwrap();
    assert_eq!(first, ["ready blocks 10 size 64"]);
    std::thread::sleep(Duration::from_millis(50));
    assert!(child.try_wait().unwrap().is_none(), "runs until killed");
}

#[test]
fn cpu_burn() {
    let mut child = start("cpu_burn", "check-cpu_burn", &["1"]);
    ready(&mut child);
    child.signal(libc::SIGUSR1).unwrap();
    // The lifetime ends it.
    let (status, lines) = child.wait(WAIT).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(lines, ["late started"]);
}

#[test]
fn cpu_work() {
    let mut child = start("cpu_work", "check-cpu_work", &["10", "2"]);
    ready(&mut child);
    let lines = run_to_exit(child);
    assert_eq!(
        lines.iter().map(|l| shape(l)).collect::<Vec<_>>(),
        ["elapsed_ns N"]
    );
}

#[test]
fn direct_caller() {
    for mode in ["cpu", "sleep", "lock"] {
        let mut child = start("direct_caller", "check-direct_caller", &[mode]);
        ready(&mut child);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{mode} runs until killed"
        );
    }
}

#[test]
fn dlopen_burn() {
    let plugin = build_c(&CBuild {
        source: "plugin",
        output: "check-libplugin.so",
        cflags: &["-O2", "-g", "-fno-inline", "-shared", "-fPIC"],
        libs: &[],
    })
    .unwrap();
    let build = CBuild {
        source: "dlopen_burn",
        output: "check-dlopen_burn",
        cflags: FRAME_POINTERS,
        libs: &[],
    };
    let (status, lines) = start_with(&build, &[]).wait(WAIT).unwrap();
    assert_eq!(status.code(), Some(2), "no library: usage");
    assert!(lines.is_empty(), "{lines:?}");

    let mut child = start_with(&build, &[plugin.to_str().unwrap()]);
    ready(&mut child);
    child.signal(libc::SIGUSR1).unwrap();
    assert_eq!(child.lines_until("", WAIT).unwrap(), ["loaded"]);
}

#[test]
fn echo_server() {
    let mut child = start("echo_server", "check-echo_server", &["100"]);
    let first = child.lines_until("", WAIT).unwrap();
    assert_eq!(
        first.iter().map(|l| shape(l)).collect::<Vec<_>>(),
        ["ready port N"]
    );
    let port: u16 = first[0]["ready port ".len()..].parse().unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
}

#[test]
fn lock_contend() {
    let mut child = start("lock_contend", "check-lock_contend", &["0.2", "100"]);
    ready(&mut child);
    let lines = run_to_exit(child);
    assert_eq!(
        lines.iter().map(|l| shape(l)).collect::<Vec<_>>(),
        ["iterations N", "waiting_threads N", "total_wait_ns N"]
    );
}

#[test]
fn malloc_bench() {
    let mut child = start("malloc_bench", "check-malloc_bench", &["pairs", "1000"]);
    ready(&mut child);
    let lines = run_to_exit(child);
    assert_eq!(
        lines.iter().map(|l| shape(l)).collect::<Vec<_>>(),
        ["elapsed_ns N"]
    );

    let mut child = start("malloc_bench", "check-malloc_bench", &["hold", "100"]);
    ready(&mut child);
    child.signal(libc::SIGUSR1).unwrap();
    assert_eq!(child.lines_until("", WAIT).unwrap(), ["holding 100"]);
    std::thread::sleep(Duration::from_millis(50));
    assert!(child.try_wait().unwrap().is_none(), "holds until killed");
}

#[test]
fn sleepy() {
    let mut child = start("sleepy", "check-sleepy", &["2"]);
    ready(&mut child);
    let lines = run_to_exit(child);
    assert_eq!(
        lines.iter().map(|l| shape(l)).collect::<Vec<_>>(),
        ["slept_ns N"]
    );
    let slept: u64 = lines[0]["slept_ns ".len()..].parse().unwrap();
    assert!(slept >= 100_000_000, "two 50 ms sleeps, {slept} ns");
}
