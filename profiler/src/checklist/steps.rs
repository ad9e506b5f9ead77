//! The checklist's steps: a load profile against the server, with a capture over its steady
//! part for the standard and soak steps, each step against a server started for it (or the
//! running one), and the comparison with the previous release.

use std::{
    ffi::OsString,
    fs, io,
    net::TcpListener,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{
    archive::StepServer,
    args::{ChecklistOptions, ServerChoice, Testbed},
    describe,
    driver::{
        LoadError, LoadOptions, LoadReport, Profile, Slo, SloMetric, StopHandle, Target,
        run_options,
    },
    server::{self, Launch, Logs, ServerError, Started},
};
use crate::{
    cli,
    compare::{self, CompareError, Comparison},
    rundir,
    session::{AttachError, EndReason, Session},
};

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("the load driver failed")]
    Load(#[source] LoadError),
    #[error("the load driver stopped unexpectedly (a bug: please report it)")]
    LoadPanicked,
    #[error("the load ended before the capture began; see its report")]
    LoadEnded,
    #[error("the capture failed")]
    Attach(#[source] AttachError),
    #[error("the capture's options were refused: {0}")]
    AttachOptions(String),
    #[error("the comparison failed")]
    Compare(#[source] CompareError),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot find a free port for the testbed")]
    Port(#[source] io::Error),
    #[error("interrupted")]
    Interrupted,
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), StepError> {
    fs::write(path, contents).map_err(|source| StepError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), StepError> {
    fs::create_dir_all(dir).map_err(|source| StepError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// A duration both `attach` and `load` parse exactly, e.g. `12500ms`.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// When to attach (after the load starts) and for how long: once ramped up and a tenth of the
/// rest has passed (at most 30 s), until a fifth of the rest (at most 30 s) is left, room for
/// the capture to start and write. The standard profile: 15 s, then 35 s.
pub fn capture_window(duration: Duration, ramp_up: Duration) -> (Duration, Duration) {
    let steady = duration.saturating_sub(ramp_up);
    let after = ramp_up + (steady / 10).min(Duration::from_secs(30));
    let tail = (steady / 5).min(Duration::from_secs(30));
    (after, duration.saturating_sub(after + tail))
}

/// The server a step runs against.
struct Serving {
    pid: u32,
    url: Target,
    /// Ours to stop: started for this step.
    started: Option<Started>,
    /// Files the server needed for the step only (the testbed ledger's write-ahead log).
    scratch: Option<PathBuf>,
}

/// One run of the checklist's steps, and what they started.
pub struct Runner<'a> {
    opts: &'a ChecklistOptions,
    archive: PathBuf,
    stamp: String,
    stop: &'a AtomicBool,
    /// With --pid: the running server's start time, so a restart under the same pid shows.
    running_since: Option<u64>,
    pub steps: Vec<StepServer>,
    pub pids: Vec<u32>,
}

impl<'a> Runner<'a> {
    pub fn new(
        opts: &'a ChecklistOptions,
        archive: PathBuf,
        stamp: String,
        stop: &'a AtomicBool,
    ) -> Self {
        let running_since = match opts.server {
            ServerChoice::Pid { pid, .. } => server::start_time(pid),
            _ => None,
        };
        Self {
            opts,
            archive,
            stamp,
            stop,
            running_since,
            steps: Vec::new(),
            pids: Vec::new(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Runs one step; a failure is reported and becomes that step's FAIL lines.
    pub fn step<T>(
        &mut self,
        name: &str,
        step: impl FnOnce(&mut Self) -> Result<T, StepError>,
    ) -> Result<T, StepError> {
        if self.stopped() {
            return Err(StepError::Interrupted);
        }
        eprintln!("checklist: {name}");
        let result = step(self);
        if let Err(err) = &result {
            eprintln!("checklist: {name} failed: {}", describe(err));
        }
        result
    }

    /// The server for `step`: started (its output into `logs`), or the running one checked.
    fn serve(&self, step: &str, logs: &Logs) -> Result<Serving, StepError> {
        let opts = self.opts;
        let (launch, url, scratch) = match &opts.server {
            ServerChoice::Pid { pid, url } => {
                let pid = *pid;
                if server::start_time(pid).is_none()
                    || server::start_time(pid) != self.running_since
                {
                    return Err(ServerError::Gone { pid }.into());
                }
                // It must still answer: a step against a server that does not is no measure.
                server::probe(url, Duration::from_secs(5)).map_err(|err| {
                    ServerError::NotReady {
                        pid: None,
                        url: url.to_string(),
                        timeout: Duration::from_secs(5),
                        last: err.to_string(),
                        stderr: Vec::new(),
                    }
                })?;
                return Ok(Serving {
                    pid,
                    url: url.clone(),
                    started: None,
                    scratch: None,
                });
            }
            ServerChoice::Start { launch, url } => (launch.clone(), url.clone(), None),
            ServerChoice::Testbed {
                testbed,
                program,
                args,
            } => self.testbed(step, *testbed, program, args)?,
        };
        eprintln!("  starting {}", launch.display());
        let started = server::start(&launch, &url, logs, opts.ready_timeout, self.stop)?;
        eprintln!("  ready at {url} (pid {})", started.pid);
        Ok(Serving {
            pid: started.pid,
            url,
            started: Some(started),
            scratch,
        })
    }

    /// A testbed server's command line for one step: a free loopback port of its own, and for
    /// the ledger a write-ahead log that goes when the step ends.
    fn testbed(
        &self,
        step: &str,
        testbed: Testbed,
        program: &Path,
        extra: &[String],
    ) -> Result<(Launch, Target, Option<PathBuf>), StepError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(StepError::Port)?
            .port();
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--stats-every".to_string(),
            "0".to_string(),
        ];
        let host = "127.0.0.1".to_string();
        let (url, scratch) = match testbed {
            Testbed::Pool => (Target::Stratum { host, port }, None),
            Testbed::Ledger => {
                let dir = self.archive.join(format!(".{step}-{}", self.stamp));
                create_dir(&dir)?;
                args.push("--wal".to_string());
                args.push(dir.join("ledger.wal").to_string_lossy().into_owned());
                let path = "/ingest".to_string();
                (Target::Http { host, port, path }, Some(dir))
            }
        };
        args.extend(extra.iter().cloned());
        Ok((
            Launch {
                program: program.to_path_buf(),
                args,
            },
            url,
            scratch,
        ))
    }

    /// Runs `body` against the step's server, then stops the server (or checks the running one
    /// is still the same process). A server that exited by itself fails the step.
    fn with_server<T>(
        &mut self,
        step: &str,
        logs: Logs,
        body: impl FnOnce(&Self, &Serving) -> Result<T, StepError>,
    ) -> Result<T, StepError> {
        let relative = |path: &Path| {
            path.strip_prefix(&self.archive)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        let mut record = StepServer {
            step: step.to_string(),
            ..StepServer::default()
        };
        if !matches!(self.opts.server, ServerChoice::Pid { .. }) {
            record.stdout = Some(relative(&logs.stdout));
            record.stderr = Some(relative(&logs.stderr));
        }
        let serving = match self.serve(step, &logs) {
            Ok(serving) => serving,
            Err(err) => {
                if let StepError::Server(server) = &err
                    && let Some(pid) = server.started_pid()
                {
                    record.pid = Some(pid);
                    self.pids.push(pid);
                }
                record.error = Some(describe(&err));
                self.steps.push(record);
                return Err(err);
            }
        };
        record.pid = Some(serving.pid);
        if !self.pids.contains(&serving.pid) {
            self.pids.push(serving.pid);
        }
        let result = body(self, &serving);
        let ended = match serving.started {
            Some(started) => started.stop(self.opts.stop_grace).map(|ended| {
                if ended.leader != ended.pid {
                    self.pids.push(ended.leader);
                }
                record.ended = Some(ended);
            }),
            None => match server::start_time(serving.pid) == self.running_since {
                true => Ok(()),
                false => Err(ServerError::Gone { pid: serving.pid }),
            },
        };
        if let Some(dir) = serving.scratch {
            let _ = fs::remove_dir_all(dir);
        }
        // A server that died explains the step's failure better than what the load saw of it.
        let result = match (result, ended) {
            (Err(StepError::Interrupted), _) => Err(StepError::Interrupted),
            (_, Err(err)) => Err(err.into()),
            (result, Ok(())) => result,
        };
        if let Err(err) = &result {
            record.error = Some(describe(err));
        }
        self.steps.push(record);
        result
    }

    fn load_options(
        &self,
        url: &Target,
        profile: Profile,
        length: Option<Duration>,
    ) -> LoadOptions {
        let mut options = self.opts.load.options(url.clone(), profile, length);
        options.output_dir = None;
        options.progress = false;
        options.handle_ctrl_c = false;
        options
    }

    /// Runs the load on a thread of its own while `during` runs here (it is told whether the
    /// load still runs); a failure of `during` or an interrupt ends the load early, which
    /// still reports.
    fn drive<T>(
        &self,
        mut options: LoadOptions,
        during: impl FnOnce(&dyn Fn() -> bool) -> Result<T, StepError>,
    ) -> Result<(LoadReport, T), StepError> {
        let handle = StopHandle::new();
        options.stop = Some(handle.clone());
        eprintln!(
            "  {} load for {}",
            options.profile,
            humantime::format_duration(options.duration)
        );
        thread::scope(|scope| {
            let load = thread::Builder::new()
                .name("checklist-load".into())
                .spawn_scoped(scope, move || run_options(options))
                .map_err(|_| StepError::LoadPanicked)?;
            let during = during(&|| !load.is_finished());
            if during.is_err() {
                handle.stop();
            }
            while !load.is_finished() {
                if self.stopped() {
                    handle.stop();
                }
                thread::sleep(Duration::from_millis(50));
            }
            let report = load
                .join()
                .map_err(|_| StepError::LoadPanicked)?
                .map_err(StepError::Load)?;
            if self.stopped() {
                return Err(StepError::Interrupted);
            }
            Ok((report, during?))
        })
    }

    /// Sleeps `d`, giving up on an interrupt, or when the load has ended already.
    fn wait(&self, d: Duration, load_runs: &dyn Fn() -> bool) -> Result<(), StepError> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stopped() {
                return Err(StepError::Interrupted);
            }
            if !load_runs() {
                return Err(StepError::LoadEnded);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Captures `pid` for `length` into `dir` as `profiler attach FLAGS` would, in this process
    /// (its terminal text goes to `attach.txt`).
    fn capture(
        &self,
        pid: u32,
        dir: &Path,
        length: Duration,
        flags: &[&str],
    ) -> Result<(), StepError> {
        let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
        args.extend(
            [
                "--quiet",
                "--pid",
                &pid.to_string(),
                "--duration",
                &millis(length),
                "--output",
            ]
            .map(OsString::from),
        );
        args.push(dir.as_os_str().to_owned());
        let opts = cli::attach_options(args, self.opts.verbose)
            .map_err(|e| StepError::AttachOptions(e.to_string()))?;
        eprintln!(
            "  profiling pid {pid} ({}) for {}",
            flags.join(" "),
            humantime::format_duration(length)
        );
        let mut session = Session::start(opts).map_err(StepError::Attach)?;
        let end = session.run(self.stop);
        let outcome = session.finish(end).map_err(StepError::Attach)?;
        write(&dir.join("attach.txt"), outcome.terminal + "\n")?;
        if end == EndReason::Interrupted {
            return Err(StepError::Interrupted);
        }
        Ok(())
    }

    /// A load profile alone; its report is kept as `<profile>-<stamp>.json` and `.txt`.
    pub fn load_only(
        &mut self,
        profile: Profile,
        length: Option<Duration>,
    ) -> Result<(String, LoadReport), StepError> {
        let name = format!("{profile}-{}", self.stamp);
        let logs = Logs {
            stdout: self.archive.join(format!("{name}.server.stdout")),
            stderr: self.archive.join(format!("{name}.server.stderr")),
        };
        self.with_server(profile.name(), logs, |run, serving| {
            let options = run.load_options(&serving.url, profile, length);
            let (report, ()) = run.drive(options, |_| Ok(()))?;
            run.write_report(&run.archive.join(&name), &report)?;
            Ok((format!("{name}.json"), report))
        })
    }

    /// `base.json` and `base.txt`.
    fn write_report(&self, base: &Path, report: &LoadReport) -> Result<(), StepError> {
        let json = serde_json::to_vec_pretty(report).map_err(|e| StepError::Write {
            path: base.with_extension("json"),
            source: io::Error::other(e),
        })?;
        let mut json_path = base.as_os_str().to_owned();
        json_path.push(".json");
        let mut text_path = base.as_os_str().to_owned();
        text_path.push(".txt");
        write(Path::new(&json_path), json)?;
        write(Path::new(&text_path), report.render_text())
    }

    /// A profile with a capture over its steady part into `<step>-<stamp>/`, the load report
    /// beside it as `load.json`, where `profiler compare` and [`rundir::RunDir`] read it.
    fn captured(
        &mut self,
        step: &str,
        options: impl FnOnce(&Self, &Target) -> LoadOptions,
        flags: impl FnOnce(Duration) -> Vec<String>,
    ) -> Result<String, StepError> {
        let name = format!("{step}-{}", self.stamp);
        let dir = self.archive.join(&name);
        create_dir(&dir)?;
        let logs = Logs {
            stdout: dir.join("server.stdout"),
            stderr: dir.join("server.stderr"),
        };
        self.with_server(step, logs, |run, serving| {
            let options = options(run, &serving.url);
            let (after, length) = capture_window(options.duration, options.ramp_up);
            let flags = flags(length);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let (report, ()) = run.drive(options, |load_runs| {
                run.wait(after, load_runs)?;
                run.capture(serving.pid, &dir, length, &flags)
            })?;
            run.write_report(&dir.join("load"), &report)?;
            Ok(name)
        })
    }

    /// The standard profile, captured with every family, its p99 held to the objective.
    pub fn standard(&mut self) -> Result<String, StepError> {
        let slo = Slo {
            metric: SloMetric::P99,
            bound: Duration::from_secs_f64(self.opts.p99_slo_ms / 1000.0),
        };
        let length = self.opts.lengths.standard;
        self.captured(
            "standard",
            |run, url| {
                let mut options = run.load_options(url, Profile::Standard, length);
                options.slos = vec![slo];
                options
            },
            |_| vec!["--all".to_string()],
        )
    }

    /// The soak profile (shortened), captured with allocation tracking and memory snapshots.
    pub fn soak(&mut self) -> Result<String, StepError> {
        let length = Some(self.opts.lengths.soak);
        self.captured(
            "soak",
            |run, url| run.load_options(url, Profile::Soak, length),
            // Ten or more memory snapshots however short the soak, one per 5 s at most.
            |length| {
                let interval = (length / 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
                vec![
                    "--alloc".to_string(),
                    "--interval".to_string(),
                    millis(interval),
                ]
            },
        )
    }

    /// The previous release's standard capture compared with this one's, into
    /// `compare-<stamp>/`.
    pub fn compare(&self, old: &Path, new: &Path) -> Result<(String, Comparison), StepError> {
        let name = format!("compare-{}", self.stamp);
        let out = self.archive.join(&name);
        eprintln!("checklist: compare {} -> {}", old.display(), new.display());
        let comparison =
            compare::compare(old, new, &out, &self.opts.gates).map_err(StepError::Compare)?;
        eprint!("{}", compare::render(&comparison));
        Ok((name, comparison))
    }

    pub fn run_dir(&self, name: &str) -> Result<rundir::RunDir, String> {
        rundir::RunDir::open(&self.archive.join(name)).map_err(|e| describe(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_sit_in_the_steady_part_of_the_profiles_and_of_shortened_runs() {
        let s = Duration::from_secs;
        let standard = Profile::Standard.settings();
        assert_eq!(
            capture_window(standard.duration, standard.ramp_up),
            (s(15), s(35))
        );
        // 20 s with a 5 s ramp-up: from 6.5 s, ending 3 s before the load does.
        let (after, length) = capture_window(s(20), s(5));
        assert_eq!(after, Duration::from_millis(6500));
        assert_eq!(after + length, s(17));
        // A 600 s soak captures all but a minute and ten seconds of it.
        assert_eq!(capture_window(s(600), s(10)), (s(40), s(530)));
    }
}
