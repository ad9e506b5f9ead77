//! `profiler checklist RELEASE`: the release checklist, against any stratum or HTTP server.
//!
//! The steps: the smoke, standard and stress load profiles; every family captured (as
//! `attach --all` does) over the standard profile's steady part; a soak captured with `--alloc`.
//! A server given by `--start` (and the testbed, the default) is started afresh for each step,
//! so one step's load cannot colour the next; one given by `--pid` is already running and is
//! never restarted, and the steps run one after another against it. Everything is archived
//! under `RESULTS/RELEASE/` with the run's timestamp in each name; the standard capture is
//! compared with the previous archived release of the same server; the checklist prints one
//! PASS/FAIL line per check.
//!
//! Layout: `args` (the command line and the plain options it becomes), `server` (start, ready,
//! stop), `steps` (load, capture, compare), `checks` (the lines), `archive` (`release.json`
//! and finding the previous release). Runs are read back through [`crate::rundir::RunDir`].

pub mod archive;
pub mod args;
pub mod checks;
pub mod server;
pub mod steps;

use std::{
    error::Error,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

pub use args::{ChecklistArgs, ChecklistOptions, ServerChoice};

use self::{
    archive::{Archive, ArchiveError, ServerInfo},
    checks::{Checklist, LoadFigures, Outcome},
    driver::Profile,
    steps::{Runner, StepError},
};
use crate::{
    preflight::{self, PreflightError},
    rundir::RunDir,
};

/// The load driver, named in this one place: it is moving into a crate of its own.
mod driver {
    pub use crate::load::{
        Credentials, HttpMethod, LoadError, LoadOptions, LoadReport, Profile, Slo, SloMetric,
        StopHandle, Switch, Target, TargetError, run_options,
    };
}

/// Exit status when a line failed.
pub const FAILED: u8 = 1;
/// Exit status when the comparison with the previous release found a regression, whatever
/// else failed: the one verdict a release pipeline must tell apart.
pub const REGRESSION: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ChecklistError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("cannot create the archive {}: check --results-dir", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "interrupted: what ran is in {}, which is not marked as a release (no release.json)",
        dir.display()
    )]
    Interrupted { dir: PathBuf },
}

/// How the checklist came out.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The checklist as printed.
    pub text: String,
    pub archive: PathBuf,
    pub failed_lines: usize,
    pub regression: bool,
}

impl Verdict {
    /// 0: every line passed (or was skipped); 2: a regression against the previous release;
    /// 1: another line failed.
    pub fn exit_code(&self) -> u8 {
        if self.regression {
            REGRESSION
        } else if self.failed_lines > 0 {
            FAILED
        } else {
            0
        }
    }
}

/// An error and its sources on one line.
pub(crate) fn describe(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}

/// What is checked, for people, and for the archive.
fn server_info(server: &ServerChoice) -> (String, ServerInfo) {
    match server {
        ServerChoice::Testbed { testbed, args, .. } => {
            let named = format!("{} {}", testbed.name(), args.join(" "));
            let named = named.trim_end().to_string();
            let info = ServerInfo {
                mode: "testbed".into(),
                command: Some(named.clone()),
                note: "started afresh on a free loopback port for every step".into(),
                ..ServerInfo::default()
            };
            (named, info)
        }
        ServerChoice::Start { launch, .. } => {
            let command = launch.display();
            let info = ServerInfo {
                mode: "start".into(),
                command: Some(command.clone()),
                exe: Some(launch.program.display().to_string()),
                note: "started afresh for every step, stopped when it ended".into(),
                ..ServerInfo::default()
            };
            (format!("{command}, started for each step"), info)
        }
        ServerChoice::Pid { pid, .. } => {
            let exe = server.identity();
            let info = ServerInfo {
                mode: "pid".into(),
                pid: Some(*pid),
                exe: Some(exe.clone()),
                note: format!(
                    "already running and never restarted: the steps ran one after another \
                     against pid {pid}"
                ),
                ..ServerInfo::default()
            };
            (format!("pid {pid} {exe}, running, not restarted"), info)
        }
    }
}

/// Runs the checklist; `stop` (set on Ctrl-C or SIGTERM) ends it early, stopping what it
/// started.
pub fn run(opts: &ChecklistOptions, stop: &AtomicBool) -> Result<Verdict, ChecklistError> {
    // Minutes of load would be wasted on a capture that cannot start.
    preflight::check_privileges()?;
    if let ServerChoice::Pid { pid, .. } = opts.server {
        preflight::check_target(pid)?;
    }
    let identity = opts.server.identity();
    let previous =
        archive::find_previous(&opts.results_dir, &opts.release, &identity, &opts.previous)?;
    let dir = opts.results_dir.join(&opts.release);
    fs::create_dir_all(&dir).map_err(|source| ChecklistError::Create {
        path: dir.clone(),
        source,
    })?;
    let stamp = archive::stamp(jiff::Timestamp::now());
    let (server, server_info) = server_info(&opts.server);
    let url = match &opts.server {
        ServerChoice::Start { url, .. } | ServerChoice::Pid { url, .. } => Some(url.to_string()),
        ServerChoice::Testbed { .. } => None,
    };
    eprintln!(
        "checklist: {} of {server}; archive {}; previous release: {}",
        opts.release,
        dir.display(),
        previous
            .as_ref()
            .map_or("none", |(p, _)| p.release.as_str())
    );

    let mut runner = Runner::new(opts, dir.clone(), stamp.clone(), stop);
    let smoke = runner.step("smoke", |r| r.load_only(Profile::Smoke, opts.lengths.smoke));
    let standard = runner.step("standard", Runner::standard);
    let stress = runner.step("stress", |r| {
        r.load_only(Profile::Stress, opts.lengths.stress)
    });
    let soak = runner.step("soak", Runner::soak);
    if stop.load(Ordering::Relaxed) {
        return Err(ChecklistError::Interrupted { dir });
    }
    let compare = match (&previous, &standard) {
        (Some((prev, prev_dir)), Ok(new)) => Some(match &prev.standard {
            Some(old) => runner
                .compare(&prev_dir.join(old), &dir.join(new))
                .map_err(|e| describe(&e)),
            None => Err(format!("{} has no standard capture", prev.release)),
        }),
        (Some(_), Err(e)) => Some(Err(format!("no standard capture: {}", describe(e)))),
        (None, _) => None,
    };

    let failed = |e: &StepError| describe(e);
    let smoke_load = smoke
        .as_ref()
        .map(|(_, report)| LoadFigures::from(report))
        .map_err(failed);
    let stress_load = stress
        .as_ref()
        .map(|(_, report)| LoadFigures::from(report))
        .map_err(failed);
    let standard_run = standard
        .as_ref()
        .map_err(failed)
        .and_then(|name| runner.run_dir(name));
    let standard_load = standard_run.as_ref().map_err(Clone::clone).and_then(|run| {
        run.load
            .as_ref()
            .map(LoadFigures::from)
            .ok_or_else(|| "the standard capture has no load report".to_string())
    });
    let soak_run = soak
        .as_ref()
        .map_err(failed)
        .and_then(|name| runner.run_dir(name));
    let soak_samples = soak_run
        .as_ref()
        .ok()
        .and_then(|run| run.memory_samples().ok())
        .map_or(0, |samples| samples.len());
    let svg_bytes = standard
        .as_ref()
        .ok()
        .and_then(|name| fs::metadata(dir.join(name).join("cpu.svg")).ok())
        .map(|m| m.len());
    let regression = matches!(&compare, Some(Ok((_, c))) if c.verdict == "regression");
    let previous_name = previous.as_ref().map(|(p, _)| p.release.as_str());
    let lines = vec![
        checks::smoke_line(smoke_load.as_ref().map_err(String::as_str)),
        checks::p99_line(
            standard_load.as_ref().map_err(String::as_str),
            opts.p99_slo_ms,
        ),
        checks::stress_line(stress_load.as_ref().map_err(String::as_str)),
        checks::rss_line(
            soak_run
                .as_ref()
                .map(|run| run.summary.alloc.as_ref().map(|a| &a.leaks.memory))
                .map_err(String::as_str),
            soak_samples,
        ),
        checks::flamegraph_line(
            standard
                .as_ref()
                .map(String::as_str)
                .map_err(|_| "it failed"),
            svg_bytes,
        ),
        checks::dropped_line(&[
            ("standard", drops(&standard, &standard_run)),
            ("soak", drops(&soak, &soak_run)),
        ]),
        checks::gate_line(
            previous_name,
            compare
                .as_ref()
                .map(|c| c.as_ref().map(|(_, c)| c).map_err(String::as_str)),
        ),
    ];
    let failed_lines = lines.iter().filter(|l| l.result == Outcome::Fail).count();
    let checklist = Checklist {
        schema_version: checks::SCHEMA_VERSION,
        release: opts.release.clone(),
        server,
        url: url.clone(),
        stamp: stamp.clone(),
        previous: previous_name.map(str::to_string),
        passed: failed_lines == 0,
        regression,
        lines,
    };
    let target_args = match &opts.server {
        ServerChoice::Testbed { args, .. } => args.join(" "),
        _ => String::new(),
    };
    let marker = Archive {
        schema_version: archive::SCHEMA_VERSION,
        release: opts.release.clone(),
        target: identity,
        target_args,
        url,
        server: Some(server_info),
        stamp: stamp.clone(),
        finished_at: jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        passed: checklist.passed,
        regression,
        smoke: smoke.as_ref().ok().map(|(name, _)| name.clone()),
        standard: standard.as_ref().ok().cloned(),
        stress: stress.as_ref().ok().map(|(name, _)| name.clone()),
        soak: soak.as_ref().ok().cloned(),
        compare: compare
            .as_ref()
            .and_then(|c| c.as_ref().ok())
            .map(|(name, _)| name.clone()),
        previous: previous_name.map(str::to_string),
        previous_dir: previous.as_ref().map(|(_, d)| d.clone()),
        target_pids: runner.pids.clone(),
        steps: runner.steps.clone(),
    };
    let text = checklist.render(&dir);
    write_archive(&dir, &stamp, &text, &checklist, &marker)?;
    Ok(Verdict {
        text,
        archive: dir,
        failed_lines,
        regression,
    })
}

/// A capture's drop counters; a failed step's own line says why there are none.
fn drops<'a>(
    step: &Result<String, StepError>,
    run: &'a Result<RunDir, String>,
) -> checks::Drops<'a> {
    match (step, run) {
        (Err(_), _) => Err("no capture (the step failed)"),
        (Ok(_), Err(e)) => Err(e.as_str()),
        (Ok(_), Ok(run)) => Ok(&run.summary.dropped),
    }
}

/// The checklist (latest, and kept by timestamp) and the marker, written last: an archive
/// with a marker is complete.
fn write_archive(
    dir: &Path,
    stamp: &str,
    text: &str,
    checklist: &Checklist,
    marker: &Archive,
) -> Result<(), ArchiveError> {
    let checklist_json = pretty(checklist, &dir.join("checklist.json"))?;
    let marker_json = pretty(marker, &dir.join(archive::MARKER))?;
    for (name, contents) in [
        (format!("checklist-{stamp}.txt"), text.as_bytes()),
        ("checklist.txt".to_string(), text.as_bytes()),
        (format!("checklist-{stamp}.json"), &checklist_json[..]),
        ("checklist.json".to_string(), &checklist_json[..]),
        (archive::MARKER.to_string(), &marker_json[..]),
    ] {
        archive::write(&dir.join(name), contents)?;
    }
    Ok(())
}

fn pretty(value: &impl serde::Serialize, path: &Path) -> Result<Vec<u8>, ArchiveError> {
    serde_json::to_vec_pretty(value).map_err(|e| ArchiveError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })
}
