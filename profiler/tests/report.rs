//! `report.html` in a real browser, as root: a capture with every family this run can have,
//! then headless Chromium loads the page. It must load with no console errors, show every
//! section, and leave a screenshot.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;
use profiler::report::html::SECTIONS;

fn chromium(page: &Path, extra: &[&str]) -> std::process::Output {
    let profile = std::env::temp_dir().join(format!("profiler-chromium-{}", std::process::id()));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs (cargo xtask setup installs it)");
    let _ = std::fs::remove_dir_all(&profile);
    out
}

#[test]
fn report_page_loads_clean_with_every_section() {
    require_root!();
    let fixture = start_fixture(
        &CBuild {
            source: "lock_contend",
            output: "lock_contend-fp",
            cflags: FRAME_POINTERS,
            libs: &[],
        },
        &["3", "200"],
    );
    let mut opts = options(
        fixture.pid(),
        Duration::from_secs(30),
        output_dir("report-html"),
    );
    opts.offcpu = Some(profiler::probes::offcpu::Config::default());
    opts.futex = Some(profiler::probes::futex::Config {});
    opts.alloc = Some(profiler::probes::alloc::Config::default());
    opts.interval = Some(Duration::from_secs(1));
    let (_, outcome) = capture(opts, || fixture.signal(libc::SIGUSR1).unwrap());
    let page = outcome.dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "self-contained"
    );

    let dom = chromium(&page, &["--dump-dom"]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    for (id, title) in SECTIONS {
        assert!(
            dom_text.contains(&format!("id=\"{id}\"")),
            "section {id} missing"
        );
        assert!(
            dom_text.contains(&format!("<h2>{title}</h2>")),
            "{title} heading missing"
        );
    }
    assert!(
        dom_text.contains("g_hot_lock"),
        "the lock table names the lock"
    );
    let console: Vec<String> = String::from_utf8_lossy(&dom.stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect();
    assert!(console.is_empty(), "console messages: {console:#?}");

    let shot = outcome.dir.join("report.png");
    let out = chromium(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,4000",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
