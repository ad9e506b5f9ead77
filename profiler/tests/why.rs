//! `why` against the real kernel, as root: servers with a planted cause of slow requests (a
//! background job holding the hot lock, a slow CPU path, CPU hogs beside the server, a pipeline
//! where another thread replies), and the tail report must name that cause, with the lock's
//! holder, and not invent causes for typical requests.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use profiler::{
    load::{LoadOptions, Profile, Target, run_options},
    report::why::{Cause, Group, PortWhy},
    session::{AttachOptions, Outcome, Session},
};
use testbed::server::Server;

/// How long each capture lasts; the load runs a few seconds longer on both sides.
const CAPTURE: Duration = Duration::from_secs(12);

fn why_options(pid: u32, name: &str) -> AttachOptions {
    let mut opts = options(pid, CAPTURE, output_dir(name));
    opts.sock = Some(profiler::probes::sock::Config {});
    opts.why = Some(profiler::probes::why::Config::default());
    opts.interval = Some(Duration::from_secs(1));
    opts
}

/// Captures `pid` while `load` runs on another thread (started first, so the capture sees
/// steady load), until the capture's duration ends.
fn capture_under(opts: AttachOptions, load: impl FnOnce() + Send + 'static) -> Outcome {
    let worker = std::thread::spawn(load);
    std::thread::sleep(Duration::from_secs(2));
    let stop = AtomicBool::new(false);
    let mut session = Session::start(opts).expect("attach");
    let end = session.run(&stop);
    let outcome = session.finish(end).expect("outputs written");
    assert_no_programs_loaded();
    worker.join().expect("the load");
    outcome
}

/// 100 miners, 2 shares a second each, for the capture and a few seconds either side.
fn pool_load(pool: &Server) -> impl FnOnce() + Send + 'static {
    let addr = pool.addr;
    move || {
        let target = Target::Stratum {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        let mut load = LoadOptions::new(target, Profile::Standard);
        load.duration = CAPTURE + Duration::from_secs(5);
        load.ramp_up = Duration::from_secs(1);
        load.share_rate = 120.0;
        // What the load driver thinks of the run is not this test's business: the server is
        // meant to be slow.
        load.max_error_rate = 1.0;
        run_options(load).expect("load runs");
    }
}

fn only_port(outcome: &Outcome) -> PortWhy {
    let why = outcome.summary.why.clone().expect("why section");
    assert_eq!(why.ports.len(), 1, "{why:#?}");
    why.ports[0].clone()
}

/// The top cause the server's own code or locks explain, with its share of the time they
/// explain: the run queue is left out, since how long the tail waited for a CPU depends on
/// what else a busy CI machine runs, which the test does not control (the hog test checks the
/// run queue on its own).
fn top_of_server(g: &Group) -> (&Cause, f64) {
    let server = |c: &&Cause| c.kind != "runqueue";
    let cause = g.causes.iter().find(server).expect("a cause");
    let explained: f64 = g.causes.iter().filter(server).map(|c| c.share).sum();
    (cause, cause.share / explained.max(f64::EPSILON))
}

fn tail_text(outcome: &Outcome) -> String {
    std::fs::read_to_string(outcome.dir.join("tail.txt")).unwrap()
}

fn shares_sum_to_one(g: &Group) {
    let sum: f64 = g.causes.iter().map(|c| c.share).sum();
    assert!((sum - 1.0).abs() < 0.01, "shares sum to {sum}: {g:#?}");
}

/// A background job takes the pool's SHARE_LOG for 15 ms every 100 ms: the slowest requests
/// waited for that lock, and the report names it and the job holding it.
#[test]
fn a_stall_on_the_hot_lock_is_the_tails_top_cause() {
    require_root!();
    let pool = Server::start(
        "testbed-pool",
        &["--stall-every", "100", "--stall-ms", "15"],
    )
    .unwrap();
    let outcome = capture_under(why_options(pool.pid(), "why-stall"), pool_load(&pool));
    let stalls = pool.stop().unwrap().count("stalls").unwrap();
    assert!(stalls > 50, "{stalls} stalls");
    let p = only_port(&outcome);
    let text = tail_text(&outcome);
    let (cause, share) = top_of_server(&p.tail);
    assert_eq!(cause.kind, "lock", "{text}");
    assert!(cause.name.ends_with("SHARE_LOG"), "{text}");
    assert!(share >= 0.6, "{text}");
    assert!(
        cause.holder_stack.iter().any(|f| f == "stall_loop"),
        "{cause:#?}"
    );
    assert!(
        !p.typical
            .causes
            .iter()
            .any(|c| c.kind == "lock" && c.share > 0.05),
        "{text}"
    );
    shares_sum_to_one(&p.tail);
    shares_sum_to_one(&p.typical);
    for file in ["tail.txt", "tail.json", "tail.svg", "tail-vs-typical.svg"] {
        assert!(outcome.dir.join(file).is_file(), "{file} missing");
    }
    let svg = std::fs::read_to_string(outcome.dir.join("tail.svg")).unwrap();
    assert!(svg.contains("stall_loop"), "the holder under its lock");
}

/// Every 40th request spins 20 ms in `slow_path`: the tail is CPU, named by that function.
#[test]
fn a_slow_cpu_path_is_the_tails_top_cause() {
    require_root!();
    let pool = Server::start(
        "testbed-pool",
        &["--slow-every", "40", "--slow-ms", "20", "--slow-spin"],
    )
    .unwrap();
    let outcome = capture_under(why_options(pool.pid(), "why-slow"), pool_load(&pool));
    drop(pool);
    let p = only_port(&outcome);
    let text = tail_text(&outcome);
    let (cause, share) = top_of_server(&p.tail);
    // Named slow_path, or (when the typical requests were too short to be sampled, so nothing
    // sets slow_path apart from its callers) the deepest frame the tail's samples share below
    // it; never the handler or the thread's start above it.
    let under_slow_path = cause
        .stack
        .iter()
        .skip_while(|f| *f != "slow_path")
        .any(|f| *f == cause.name);
    assert!(cause.kind == "cpu" && under_slow_path, "{text}");
    eprintln!("{}: {share:.3} of the tail the server explains", cause.name);
    assert!(share >= 0.6, "{text}");
    shares_sum_to_one(&p.tail);
}

/// A busy loop on every core beside the pool: the slowest requests waited for a CPU.
#[test]
fn cpu_hogs_put_the_run_queue_in_the_tail() {
    require_root!();
    let pool = Server::start("testbed-pool", &[]).unwrap();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _hogs: Vec<ChildGuard> = (0..cores)
        .map(|_| {
            ChildGuard::spawn(Command::new("sh").args(["-c", "while :; do :; done"]))
                .expect("a hog starts")
        })
        .collect();
    let outcome = capture_under(why_options(pool.pid(), "why-runqueue"), pool_load(&pool));
    drop(pool);
    let p = only_port(&outcome);
    let text = tail_text(&outcome);
    let runqueue: f64 = p
        .tail
        .causes
        .iter()
        .filter(|c| c.kind == "runqueue")
        .map(|c| c.share)
        .sum();
    assert!(
        runqueue >= 0.4,
        "run queue {runqueue:.2} of the tail: {text}"
    );
}

/// One thread reads each request and hands it to a worker that replies; a stall holds the
/// worker's lock. The reader never takes that lock, so only following the request from the
/// reader to the worker finds it in the tail.
#[test]
fn a_handoff_to_a_worker_is_followed() {
    require_root!();
    let path = build_c(&CBuild {
        source: "pipeline_server",
        output: "pipeline_server",
        cflags: FRAME_POINTERS,
        libs: &[],
    })
    .expect("fixture builds");
    // 200 µs of work per request; the stall holds work_lock 15 ms every 100 ms.
    let mut fixture =
        ChildGuard::spawn(Command::new(path).args(["200", "100", "15"])).expect("starts");
    let ready = fixture
        .wait_for_line("ready port ", Duration::from_secs(10))
        .unwrap();
    let port: u16 = ready["ready port ".len()..].trim().parse().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let load = move || {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    let mut reply = [0u8; 32];
                    let end = Instant::now() + CAPTURE + Duration::from_secs(4);
                    let mut i = 0u8;
                    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                        let request = [c as u8 ^ i; 32];
                        i = i.wrapping_add(1);
                        stream.write_all(&request).unwrap();
                        stream.read_exact(&mut reply).unwrap();
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
    };
    let outcome = capture_under(why_options(fixture.pid(), "why-pipeline"), load);
    done.store(true, Ordering::Relaxed);
    fixture.signal(libc::SIGTERM).unwrap();
    let _ = fixture.wait_for_line("stalls", Duration::from_secs(5));
    let p = only_port(&outcome);
    let text = tail_text(&outcome);
    let lock = p
        .tail
        .causes
        .iter()
        .find(|c| c.kind == "lock" && c.name == "work_lock")
        .unwrap_or_else(|| panic!("no work_lock in the tail: {text}"));
    assert!(lock.share >= 0.2, "{text}");
    // Where the request waited: in the worker, not the reader.
    assert!(lock.stack.iter().any(|f| f == "serve_queue"), "{lock:#?}");
    assert!(
        !lock.stack.iter().any(|f| f == "read_requests"),
        "{lock:#?}"
    );
    assert!(
        lock.holder_stack.iter().any(|f| f == "stall_holder"),
        "{lock:#?}"
    );
}

/// With no knob the tail still comes out, every share from something measured.
#[test]
fn a_plain_pool_gets_a_tail_that_adds_up() {
    require_root!();
    let pool = Server::start("testbed-pool", &[]).unwrap();
    let outcome = capture_under(why_options(pool.pid(), "why-plain"), pool_load(&pool));
    drop(pool);
    let p = only_port(&outcome);
    assert!(p.requests > 1000, "{} requests", p.requests);
    assert!(p.tail.requests >= p.requests / 100, "{p:#?}");
    shares_sum_to_one(&p.tail);
    shares_sum_to_one(&p.typical);
    assert!(p.cpu_us_per_request > 0.0);
    assert_eq!(outcome.summary.dropped["why_records_lost"], 0);
    let page = std::fs::read_to_string(outcome.dir.join("report.html")).unwrap();
    assert!(
        page.contains("<section id=\"tail\">"),
        "report.html has the tail"
    );
}
