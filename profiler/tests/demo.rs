//! The demo's check as a test, as root: `testbed-pool` with the demo's planted problems (a
//! background job holding its hot lock, a leak, a CPU-heavy path) under the standard load,
//! captured with every family, and the findings digest must name every one.

mod common;

use std::{sync::atomic::AtomicBool, time::Duration};

use common::*;
use profiler::{
    load::{LoadOptions, Profile, Target, run_options},
    session::Session,
};
use testbed::{demo, server::Server};

#[test]
fn the_digest_finds_every_planted_problem() {
    require_root!();
    let pool = Server::start("testbed-pool", demo::ARGS).unwrap();
    let addr = pool.addr;
    let load = std::thread::spawn(move || {
        let target = Target::Stratum {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        let mut load = LoadOptions::new(target, Profile::Standard);
        load.duration = Duration::from_secs(40);
        load.ramp_up = Duration::from_secs(2);
        load.max_error_rate = 1.0;
        run_options(load).expect("load runs")
    });
    std::thread::sleep(Duration::from_secs(6));
    let mut opts = options(pool.pid(), Duration::from_secs(30), output_dir("demo"));
    opts.offcpu = Some(profiler::probes::offcpu::Config::default());
    opts.futex = Some(profiler::probes::futex::Config {});
    opts.sock = Some(profiler::probes::sock::Config {});
    opts.why = Some(profiler::probes::why::Config::default());
    opts.alloc = Some(profiler::probes::alloc::Config::default());
    let stop = AtomicBool::new(false);
    let mut session = Session::start(opts).expect("attach");
    let end = session.run(&stop);
    let outcome = session.finish(end).expect("outputs written");
    assert_no_programs_loaded();
    load.join().expect("the load");
    drop(pool);
    let findings: Vec<String> = outcome
        .summary
        .findings
        .iter()
        .map(|f| f.what.clone())
        .collect();
    let (all, verdict) = demo::verdict(&findings);
    assert!(all, "{verdict}\n{}", outcome.terminal);
    // The digest is the first thing the terminal shows, and the top of the page.
    assert!(
        outcome.terminal.starts_with("findings:"),
        "{}",
        outcome.terminal
    );
    let page = std::fs::read_to_string(outcome.dir.join("report.html")).unwrap();
    let first_section = page.find("<section").unwrap();
    assert!(page[first_section..].starts_with("<section id=\"findings\">"));
    assert!(outcome.dir.join("findings.json").is_file());
}
