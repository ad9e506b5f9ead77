//! `cargo xtask release-checklist RELEASE [TARGET]`, what `scripts/release-checklist.sh` runs.
//!
//! Against a fresh target for each step (so one step's load cannot colour the next): the smoke,
//! standard and stress load profiles, every family captured under the standard profile, a soak
//! with allocation tracking. Everything goes under `RESULTS_DIR/RELEASE/` with timestamped
//! names; the standard capture is compared with the previous archived release's; the checklist
//! prints one PASS/FAIL line per check, and any failed line makes the exit status 1.
//!
//! Figures are read from the profiler's own JSON (load reports, `summary.json`, `compare.json`)
//! as values, as `profiler compare` does, so an archive written by an older release still reads.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use testbed::{process::ChildGuard, server::Server};

use crate::util;

#[derive(Debug, clap::Args)]
pub struct ChecklistArgs {
    /// The release's name, e.g. v0.1.1: its archive is RESULTS_DIR/RELEASE/
    release: String,
    /// The server to load and profile: testbed-pool (stratum) or testbed-ledger (HTTP), started
    /// afresh on a free port for each step
    #[arg(default_value = "testbed-pool")]
    target: String,
    /// Extra arguments for the target, split on spaces, e.g. "--slow-every 50 --slow-spin"
    #[arg(
        long,
        env = "TARGET_ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    target_args: String,
    /// Where release archives live [default: results/ in the workspace]
    #[arg(long, env = "RESULTS_DIR")]
    results_dir: Option<PathBuf>,
    /// The release to compare with: a name under RESULTS_DIR, an archive's path, or `none`
    /// [default: the newest other archive of the same target]
    #[arg(long, env = "PREVIOUS")]
    previous: Option<String>,
    /// Seconds of smoke load [default: the profile's 30]
    #[arg(long, env = "CHECKLIST_SMOKE_S")]
    smoke_s: Option<f64>,
    /// Seconds of standard load, captured with every family [default: the profile's 60]
    #[arg(long, env = "CHECKLIST_STANDARD_S")]
    standard_s: Option<f64>,
    /// Seconds of stress load [default: the profile's 120]
    #[arg(long, env = "CHECKLIST_STRESS_S")]
    stress_s: Option<f64>,
    /// Seconds of soak load, captured with --alloc: a short soak by default (the soak profile
    /// itself runs an hour: 3600)
    #[arg(long, env = "CHECKLIST_SOAK_S", default_value_t = 600.0)]
    soak_s: f64,
    /// The p99 objective under the standard profile, in milliseconds
    #[arg(long, env = "P99_SLO_MS", default_value_t = 10.0)]
    p99_slo_ms: f64,
    /// Gate thresholds for the comparison, a gates.json as `profiler baseline save` writes
    /// [default: compare's built-in gates]
    #[arg(long, env = "GATES")]
    gates: Option<PathBuf>,
}

/// The archive's marker, `release.json`: what later releases find and compare with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Archive {
    schema_version: u32,
    release: String,
    target: String,
    target_args: String,
    /// The run's timestamp, in every file name it wrote.
    stamp: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`: the newest archive is the previous release.
    finished_at: String,
    passed: bool,
    /// Names inside the archive directory.
    smoke: Option<String>,
    standard: Option<String>,
    stress: Option<String>,
    soak: Option<String>,
    compare: Option<String>,
    /// The release compared with, and where its archive was.
    previous: Option<String>,
    previous_dir: Option<PathBuf>,
    /// The targets started (one per step), all stopped before the checklist printed.
    target_pids: Vec<u32>,
}

/// The load profiles' length and ramp-up in seconds, as `profiler load` defines them
/// (profiler/src/load/profile.rs).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Profile {
    name: &'static str,
    duration_s: f64,
    ramp_s: f64,
}

const SMOKE: Profile = Profile {
    name: "smoke",
    duration_s: 30.0,
    ramp_s: 2.0,
};
const STANDARD: Profile = Profile {
    name: "standard",
    duration_s: 60.0,
    ramp_s: 10.0,
};
const STRESS: Profile = Profile {
    name: "stress",
    duration_s: 120.0,
    ramp_s: 30.0,
};
const SOAK: Profile = Profile {
    name: "soak",
    duration_s: 3600.0,
    ramp_s: 10.0,
};

/// A profile as this run drives it: its own length unless overridden, and then a ramp-up of at
/// most a quarter of the run, so a shortened run still has a steady part.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    profile: Profile,
    duration_s: f64,
    ramp_s: f64,
    overridden: bool,
}

impl Plan {
    fn new(profile: Profile, duration_s: Option<f64>) -> Self {
        let duration_s = duration_s.unwrap_or(profile.duration_s);
        Self {
            profile,
            duration_s,
            ramp_s: profile.ramp_s.min(duration_s / 4.0),
            overridden: duration_s != profile.duration_s,
        }
    }

    /// `profiler load` options for the profile and the overrides.
    fn load_args(&self) -> Vec<String> {
        let mut args = vec!["--profile".to_string(), self.profile.name.to_string()];
        if self.overridden {
            args.extend([
                "--duration".to_string(),
                millis(self.duration_s),
                "--ramp-up".to_string(),
                millis(self.ramp_s),
            ]);
        }
        args
    }

    /// When to attach (seconds after the load starts) and for how long: once ramped up and a
    /// tenth of the rest has passed (at most 30 s), until a fifth of the rest (at most 30 s) is
    /// left, room for the profiler to start and write. The standard profile: 15 s, then 35 s.
    fn capture(&self) -> (f64, f64) {
        let steady = self.duration_s - self.ramp_s;
        let after = self.ramp_s + (steady / 10.0).min(30.0);
        let tail = (steady / 5.0).min(30.0);
        (after, self.duration_s - after - tail)
    }

    /// How long to wait for the driver: the run, its 10 s reply timeout, and slack.
    fn load_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s + 90.0)
    }
}

/// Seconds as a duration both `profiler load` and `profiler attach` parse, e.g. `12500ms`.
fn millis(seconds: f64) -> String {
    format!("{}ms", (seconds * 1000.0).round() as u64)
}

/// Set by SIGINT, SIGTERM or SIGHUP: every wait returns, and the guards stop what was started.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

fn interrupted() -> anyhow::Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn sleep(seconds: f64) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    while Instant::now() < until {
        interrupted()?;
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits for `child` to exit, giving up (and killing it) on a signal or after `timeout`.
fn wait(
    mut child: ChildGuard,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<(ExitStatus, Vec<String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return child.wait(Duration::from_secs(5));
        }
        interrupted()?;
        if Instant::now() > deadline {
            bail!("{what} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(args: ChecklistArgs) -> anyhow::Result<ExitCode> {
    catch_signals();
    let release = args.release.as_str();
    if release.is_empty() || release.starts_with('.') || release.contains('/') {
        bail!("release name {release:?} must be one directory name, e.g. v0.1.1");
    }
    if !matches!(args.target.as_str(), "testbed-pool" | "testbed-ledger") {
        bail!(
            "unknown target {:?}: use testbed-pool or testbed-ledger",
            args.target
        );
    }
    let profiler = util::build_profiler()?;
    let results = args
        .results_dir
        .clone()
        .unwrap_or_else(|| util::workspace_root().join("results"));
    let previous = find_previous(&results, release, &args.target, args.previous.as_deref())?;
    let archive = results.join(release);
    fs::create_dir_all(&archive).with_context(|| format!("creating {}", archive.display()))?;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    eprintln!(
        "release-checklist: {release} against {}; archive {}; previous release: {}",
        format!("{} {}", args.target, args.target_args).trim_end(),
        archive.display(),
        previous
            .as_ref()
            .map_or("none", |(p, _)| p.release.as_str())
    );
    let mut run = Run {
        args: &args,
        profiler,
        archive: archive.clone(),
        stamp: stamp.clone(),
        pids: Vec::new(),
    };

    let smoke = run.step("smoke", |r| r.load_only(SMOKE, r.args.smoke_s));
    let standard = run.step("standard", Run::standard);
    let stress = run.step("stress", |r| r.load_only(STRESS, r.args.stress_s));
    let soak = run.step("soak", Run::soak);
    interrupted()?;
    let compare = match (&previous, &standard) {
        (Some((prev, dir)), Ok(new)) => {
            let old = dir.join(prev.standard.as_deref().unwrap_or_default());
            Some(run.compare(&old, new))
        }
        (Some(_), Err(err)) => Some(Err(anyhow::anyhow!("no standard capture: {err:#}"))),
        (None, _) => None,
    };

    // What a step wrote (`file` inside its directory, or the file it returned), or why not.
    let read = |step: &anyhow::Result<PathBuf>, file: Option<&str>| -> Result<Value, String> {
        let path = step.as_ref().map_err(|e| format!("{e:#}"))?;
        let path = file.map_or_else(|| path.clone(), |f| path.join(f));
        read_json(&path).map_err(|e| format!("{e:#}"))
    };
    let smoke_report = read(&smoke, None);
    let stress_report = read(&stress, None);
    let standard_load = read(&standard, Some("load.json"));
    let standard_summary = read(&standard, Some("summary.json"));
    let soak_summary = read(&soak, Some("summary.json"));
    let svg_size = standard
        .as_ref()
        .ok()
        .and_then(|d| fs::metadata(d.join("cpu.svg")).ok())
        .map(|m| m.len());
    let soak_samples = soak
        .as_ref()
        .ok()
        .map(|d| memory_samples(&d.join("memory_samples.csv")));
    let compare_json = compare.as_ref().map(|c| match c {
        Ok(dir) => read_json(&dir.join("compare.json")).map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    });
    let previous_name = previous.as_ref().map(|(p, _)| p.release.as_str());
    let lines = vec![
        smoke_line(as_ref(&smoke_report)),
        p99_line(as_ref(&standard_load), args.p99_slo_ms),
        stress_line(as_ref(&stress_report)),
        rss_line(as_ref(&soak_summary), soak_samples.unwrap_or(0)),
        flamegraph_line(
            standard.as_ref().ok().and_then(|d| d.file_name()?.to_str()),
            svg_size,
        ),
        dropped_line(&[
            ("standard", as_ref(&standard_summary)),
            ("soak", as_ref(&soak_summary)),
        ]),
        gate_line(
            previous_name,
            compare_json
                .as_ref()
                .map(|c| c.as_ref().map_err(String::as_str)),
        ),
    ];
    let checklist = Checklist {
        schema_version: 1,
        release: release.to_string(),
        target: args.target.clone(),
        target_args: args.target_args.clone(),
        stamp: stamp.clone(),
        previous: previous_name.map(str::to_string),
        passed: lines.iter().all(|l| l.result != Outcome::Fail),
        lines,
    };
    let name = |p: &anyhow::Result<PathBuf>| {
        p.as_ref()
            .ok()
            .and_then(|p| Some(p.file_name()?.to_str()?.to_string()))
    };
    let marker = Archive {
        schema_version: 1,
        release: release.to_string(),
        target: args.target.clone(),
        target_args: args.target_args.clone(),
        stamp: stamp.clone(),
        finished_at: jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        passed: checklist.passed,
        smoke: name(&smoke),
        standard: name(&standard),
        stress: name(&stress),
        soak: name(&soak),
        compare: compare.as_ref().and_then(name),
        previous: previous_name.map(str::to_string),
        previous_dir: previous.as_ref().map(|(_, d)| d.clone()),
        target_pids: run.pids.clone(),
    };
    let text = checklist.render(&archive);
    let json = serde_json::to_string_pretty(&checklist)?;
    for (file, contents) in [
        (format!("checklist-{stamp}.txt"), &text),
        ("checklist.txt".to_string(), &text),
        (format!("checklist-{stamp}.json"), &json),
        ("checklist.json".to_string(), &json),
        (
            "release.json".to_string(),
            &serde_json::to_string_pretty(&marker)?,
        ),
    ] {
        let path = archive.join(file);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{text}");
    Ok(if checklist.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn as_ref(value: &Result<Value, String>) -> Result<&Value, &str> {
    value.as_ref().map_err(String::as_str)
}

/// Rows of a `memory_samples.csv` (0 when unreadable).
fn memory_samples(path: &Path) -> usize {
    fs::read_to_string(path)
        .map(|text| text.lines().skip(1).filter(|l| !l.is_empty()).count())
        .unwrap_or(0)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The release to compare with, and its archive directory.
/// Unless chosen, the newest other archive of the same target with a standard capture.
fn find_previous(
    results: &Path,
    release: &str,
    target: &str,
    chosen: Option<&str>,
) -> anyhow::Result<Option<(Archive, PathBuf)>> {
    let read = |dir: &Path| -> anyhow::Result<Archive> {
        let path = dir.join("release.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    match chosen {
        Some("" | "none") => return Ok(None),
        Some(name) => {
            let dir = if results.join(name).join("release.json").is_file() {
                results.join(name)
            } else {
                PathBuf::from(name)
            };
            let archive = read(&dir).with_context(|| {
                format!(
                    "PREVIOUS={name} is not a release archive (a name under {} or a path)",
                    results.display()
                )
            })?;
            return Ok(Some((archive, dir)));
        }
        None => {}
    }
    let Ok(entries) = fs::read_dir(results) else {
        return Ok(None);
    };
    let newest = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|dir| dir.file_name().and_then(|n| n.to_str()) != Some(release))
        .filter_map(|dir| Some((read(&dir).ok()?, dir)))
        // Only an archive with a standard capture of the same server can be compared with.
        .filter(|(a, dir)| {
            a.target == target
                && a.standard
                    .as_ref()
                    .is_some_and(|s| dir.join(s).join("summary.json").is_file())
        })
        .max_by(|(a, _), (b, _)| (&a.finished_at, &a.release).cmp(&(&b.finished_at, &b.release)));
    Ok(newest)
}

/// One run of the checklist: the steps, and what they started.
struct Run<'a> {
    args: &'a ChecklistArgs,
    profiler: PathBuf,
    archive: PathBuf,
    stamp: String,
    pids: Vec<u32>,
}

/// A started target, and what its load needs.
struct Target {
    server: Server,
    url: String,
    /// Extra `profiler load` options (the ledger's request body).
    load_args: Vec<String>,
    /// Files to remove once it stopped (the ledger's write-ahead log).
    scratch: Option<PathBuf>,
}

impl Run<'_> {
    /// Runs one step; a failure is reported and becomes that step's FAIL lines.
    fn step(
        &mut self,
        name: &str,
        step: impl FnOnce(&mut Self) -> anyhow::Result<PathBuf>,
    ) -> anyhow::Result<PathBuf> {
        if STOP.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        eprintln!("release-checklist: {name}");
        let result = step(self);
        if let Err(err) = &result {
            eprintln!("release-checklist: {name} failed: {err:#}");
        }
        result
    }

    fn start_target(&mut self, step: &str) -> anyhow::Result<Target> {
        let mut args: Vec<String> = self
            .args
            .target_args
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mut scratch = None;
        let mut load_args = Vec::new();
        let ledger = self.args.target == "testbed-ledger";
        if ledger {
            let dir = self.archive.join(format!(".{step}-{}", self.stamp));
            fs::create_dir_all(&dir)?;
            let body = dir.join("body.json");
            fs::write(
                &body,
                r#"{"entries":[{"account":"alice","amount":5},{"account":"bob","amount":-5}]}"#,
            )?;
            args.extend(["--wal".to_string(), path_str(&dir.join("ledger.wal"))?]);
            load_args.extend(["--body".to_string(), path_str(&body)?]);
            scratch = Some(dir);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(&self.args.target, &args)
            .with_context(|| format!("starting {}", self.args.target))?;
        self.pids.push(server.pid());
        eprintln!("  {} (pid {})", server.banner, server.pid());
        let url = if ledger {
            format!("http://{}/ingest", server.addr)
        } else {
            format!("stratum://{}", server.addr)
        };
        Ok(Target {
            server,
            url,
            load_args,
            scratch,
        })
    }

    fn stop_target(target: Target) -> anyhow::Result<()> {
        let pid = target.server.pid();
        let stopped = target
            .server
            .stop()
            .with_context(|| format!("stopping the target, pid {pid}"))?;
        let tallies: Vec<String> = stopped
            .tallies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!("  target said: {}", tallies.join(" "));
        if let Some(dir) = target.scratch {
            let _ = fs::remove_dir_all(dir);
        }
        Ok(())
    }

    fn start_load(
        &self,
        plan: &Plan,
        target: &Target,
        extra: &[String],
    ) -> anyhow::Result<ChildGuard> {
        eprintln!(
            "  {} load, {:.0} s, against {}",
            plan.profile.name, plan.duration_s, target.url
        );
        ChildGuard::spawn(
            Command::new(&self.profiler)
                .args(["load", &target.url, "--quiet", "--output-dir"])
                .arg(&self.archive)
                .args(plan.load_args())
                .args(&target.load_args)
                .args(extra)
                .stderr(Stdio::inherit()),
        )
        .context("starting the load driver")
    }

    /// Waits for the load driver and moves its report to `dest.json` and `dest.txt`.
    fn finish_load(&self, load: ChildGuard, plan: &Plan, dest: &Path) -> anyhow::Result<()> {
        let (status, lines) = wait(load, "the load driver", plan.load_timeout())?;
        let written: Vec<PathBuf> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("report written to "))
            .map(PathBuf::from)
            .collect();
        // 0, or 2 for a missed objective: the report says what happened, and so does the
        // driver's 1 after writing one (no connection succeeded).
        if written.is_empty() {
            bail!("the load driver wrote no report ({status}); it printed {lines:?}");
        }
        for from in written {
            let ext = from.extension().and_then(|e| e.to_str()).unwrap_or("txt");
            let to = dest.with_extension(ext);
            fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }

    /// `profiler attach` for `seconds`, writing into `dir` (its terminal output to attach.txt).
    fn attach(
        &self,
        target: &Target,
        dir: &Path,
        seconds: f64,
        families: &[&str],
    ) -> anyhow::Result<()> {
        eprintln!(
            "  profiling pid {} ({}) for {seconds:.0} s",
            target.server.pid(),
            families.join(" ")
        );
        let child = ChildGuard::spawn(
            util::privileged(&path_str(&self.profiler)?)
                .args(["attach", "--quiet", "--pid"])
                .arg(target.server.pid().to_string())
                .args(families)
                .args(["--duration", &millis(seconds), "--output"])
                .arg(dir)
                .stderr(Stdio::inherit()),
        )
        .context("starting profiler attach")?;
        let timeout = Duration::from_secs_f64(seconds + 120.0);
        let (status, lines) = wait(child, "profiler attach", timeout)?;
        fs::create_dir_all(dir)?;
        fs::write(dir.join("attach.txt"), lines.join("\n") + "\n")?;
        if !status.success() {
            bail!("profiler attach failed ({status}): see the messages above");
        }
        Ok(())
    }

    /// A load profile alone, its report kept as `<profile>-<stamp>.json` and `.txt`.
    fn load_only(&mut self, profile: Profile, seconds: Option<f64>) -> anyhow::Result<PathBuf> {
        let plan = Plan::new(profile, seconds);
        let dest = self
            .archive
            .join(format!("{}-{}", profile.name, self.stamp));
        let target = self.start_target(profile.name)?;
        let load = self.start_load(&plan, &target, &[])?;
        self.finish_load(load, &plan, &dest)?;
        Self::stop_target(target)?;
        Ok(dest.with_extension("json"))
    }

    /// The standard profile with every family captured over its steady part; the load report
    /// goes into the capture's directory as `load.json`, where `profiler compare` reads it.
    fn standard(&mut self) -> anyhow::Result<PathBuf> {
        let plan = Plan::new(STANDARD, self.args.standard_s);
        let dir = self.archive.join(format!("standard-{}", self.stamp));
        let target = self.start_target("standard")?;
        let slo = format!("p99={}us", (self.args.p99_slo_ms * 1000.0).round() as u64);
        let load = self.start_load(&plan, &target, &["--slo".to_string(), slo])?;
        let (after, capture) = plan.capture();
        sleep(after)?;
        self.attach(&target, &dir, capture, &["--all"])?;
        self.finish_load(load, &plan, &dir.join("load"))?;
        Self::stop_target(target)?;
        Ok(dir)
    }

    /// The soak profile (shortened) with allocation tracking and memory snapshots.
    fn soak(&mut self) -> anyhow::Result<PathBuf> {
        let plan = Plan::new(SOAK, Some(self.args.soak_s));
        let dir = self.archive.join(format!("soak-{}", self.stamp));
        let target = self.start_target("soak")?;
        let load = self.start_load(&plan, &target, &[])?;
        let (after, capture) = plan.capture();
        // Ten or more memory snapshots however short the soak, one per 5 s at most.
        let interval = millis((capture / 10.0).clamp(1.0, 5.0));
        sleep(after)?;
        self.attach(
            &target,
            &dir,
            capture,
            &["--alloc", "--interval", &interval],
        )?;
        self.finish_load(load, &plan, &dir.join("load"))?;
        Self::stop_target(target)?;
        Ok(dir)
    }

    /// `profiler compare` of the previous release's standard capture with this one's.
    fn compare(&self, old: &Path, new: &Path) -> anyhow::Result<PathBuf> {
        let out = self.archive.join(format!("compare-{}", self.stamp));
        eprintln!(
            "release-checklist: compare {} -> {}",
            old.display(),
            new.display()
        );
        let mut cmd = Command::new(&self.profiler);
        cmd.arg("compare")
            .arg(old)
            .arg(new)
            .arg("--output")
            .arg(&out);
        if let Some(gates) = &self.args.gates {
            cmd.arg("--gates").arg(gates);
        }
        let status = cmd.status().context("running profiler compare")?;
        // 0: pass, 2: a regression; compare.json says which. 1 is an error.
        if !matches!(status.code(), Some(0 | 2)) {
            bail!("profiler compare failed: {status}");
        }
        Ok(out)
    }
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Pass,
    Fail,
    /// Nothing to check against (no previous release): not a failure.
    Skipped,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    check: String,
    requirement: String,
    result: Outcome,
    measured: String,
}

impl Line {
    fn new(check: &str, requirement: &str, pass: bool, measured: String) -> Self {
        Self {
            check: check.into(),
            requirement: requirement.into(),
            result: if pass { Outcome::Pass } else { Outcome::Fail },
            measured,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checklist {
    schema_version: u32,
    release: String,
    target: String,
    target_args: String,
    stamp: String,
    previous: Option<String>,
    /// No line failed.
    passed: bool,
    lines: Vec<Line>,
}

impl Checklist {
    fn render(&self, archive: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nrelease checklist {} ({}), {}",
            self.release,
            format!("{} {}", self.target, self.target_args).trim_end(),
            self.stamp
        );
        for line in &self.lines {
            let result = match line.result {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skipped => "SKIP",
            };
            let _ = writeln!(
                out,
                "  {result}  {:<46} {}",
                format!("{}: {}", line.check, line.requirement),
                line.measured
            );
        }
        let failed = self
            .lines
            .iter()
            .filter(|l| l.result == Outcome::Fail)
            .count();
        let verdict = if failed == 0 {
            "PASS".to_string()
        } else {
            format!("FAIL ({failed} of {} lines)", self.lines.len())
        };
        let _ = writeln!(
            out,
            "{}: {verdict}; archive in {}",
            self.release,
            archive.display()
        );
        out
    }
}

fn number(value: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter().try_fold(value, |v, k| v.get(k))?.as_f64()
}

/// Smoke: no connection error, and every miner connected.
fn smoke_line(report: Result<&Value, &str>) -> Line {
    const CHECK: (&str, &str) = ("smoke", "0 connection errors");
    let report = match report {
        Ok(r) => r,
        Err(e) => return Line::new(CHECK.0, CHECK.1, false, e.to_string()),
    };
    let errors = number(report, &["errors", "connect"]);
    let connected = number(report, &["connections", "clients_connected"]);
    let miners = number(report, &["settings", "miners"]);
    match (errors, connected, miners) {
        (Some(errors), Some(connected), Some(miners)) => Line::new(
            CHECK.0,
            CHECK.1,
            errors == 0.0 && connected == miners,
            format!("{errors} connection errors, {connected}/{miners} clients connected"),
        ),
        _ => Line::new(
            CHECK.0,
            CHECK.1,
            false,
            "the load report lacks connection figures".into(),
        ),
    }
}

/// Standard: reply latency p99 within the objective.
fn p99_line(report: Result<&Value, &str>, slo_ms: f64) -> Line {
    let requirement = format!("p99 under its SLO ({slo_ms} ms)");
    let report = match report {
        Ok(r) => r,
        Err(e) => return Line::new("standard", &requirement, false, e.to_string()),
    };
    match number(report, &["latency_us", "p99"]) {
        Some(p99) => Line::new(
            "standard",
            &requirement,
            p99 <= slo_ms * 1000.0,
            format!(
                "p99 {:.2} ms over {} replies",
                p99 / 1000.0,
                number(report, &["latency_us", "count"]).unwrap_or(0.0)
            ),
        ),
        None => Line::new("standard", &requirement, false, "no replies".into()),
    }
}

/// Stress: failed connections under 1% of connection attempts (established plus failed).
fn stress_line(report: Result<&Value, &str>) -> Line {
    const CHECK: (&str, &str) = ("stress", "under 1% connection failures");
    let report = match report {
        Ok(r) => r,
        Err(e) => return Line::new(CHECK.0, CHECK.1, false, e.to_string()),
    };
    let failed = number(report, &["errors", "connect"]);
    let established = number(report, &["connections", "established"]);
    let (Some(failed), Some(established)) = (failed, established) else {
        return Line::new(
            CHECK.0,
            CHECK.1,
            false,
            "the load report lacks connection figures".into(),
        );
    };
    let attempts = failed + established;
    if attempts == 0.0 {
        return Line::new(CHECK.0, CHECK.1, false, "no connection attempted".into());
    }
    let share = failed / attempts * 100.0;
    Line::new(
        CHECK.0,
        CHECK.1,
        share < 1.0,
        format!("{share:.2}% ({failed} failed of {attempts} attempts)"),
    )
}

/// Soak: RSS growth under 10%, as the alloc family measures it (from one minute into the
/// capture when it is longer, so start-up growth does not count).
fn rss_line(summary: Result<&Value, &str>, samples: usize) -> Line {
    const CHECK: (&str, &str) = ("soak", "RSS growth under 10%");
    let summary = match summary {
        Ok(s) => s,
        Err(e) => return Line::new(CHECK.0, CHECK.1, false, e.to_string()),
    };
    let memory = ["alloc", "leaks", "memory"];
    let figure = |key| number(summary, &[memory[0], memory[1], memory[2], key]);
    match (
        figure("rss_growth_percent"),
        figure("rss_baseline_kb"),
        figure("rss_end_kb"),
    ) {
        (Some(growth), Some(base), Some(end)) if base > 0.0 && samples >= 2 => Line::new(
            CHECK.0,
            CHECK.1,
            growth < 10.0,
            format!("{growth:+.1}% ({base} -> {end} KiB over {samples} samples)"),
        ),
        _ => Line::new(
            CHECK.0,
            CHECK.1,
            false,
            format!("no RSS growth figure ({samples} memory samples)"),
        ),
    }
}

/// The standard capture's CPU flamegraph is in the archive.
fn flamegraph_line(dir: Option<&str>, svg_bytes: Option<u64>) -> Line {
    const CHECK: (&str, &str) = ("flamegraph", "archived");
    match (dir, svg_bytes) {
        (Some(dir), Some(bytes)) if bytes > 0 => Line::new(
            CHECK.0,
            CHECK.1,
            true,
            format!("{dir}/cpu.svg ({:.0} KiB)", bytes as f64 / 1024.0),
        ),
        (Some(dir), _) => Line::new(
            CHECK.0,
            CHECK.1,
            false,
            format!("{dir}/cpu.svg missing or empty"),
        ),
        (None, _) => Line::new(CHECK.0, CHECK.1, false, "no standard capture".into()),
    }
}

/// Every kernel-side drop counter of every capture is zero. (The allocator's own facts, frees
/// of blocks from before the attach and calls from inside the allocator, are not drops: the
/// summary keeps them in its `alloc` section.)
fn dropped_line(captures: &[(&str, Result<&Value, &str>)]) -> Line {
    const CHECK: (&str, &str) = ("event pipeline", "no dropped events");
    let mut dropped = Vec::new();
    let mut counters = 0;
    for (name, summary) in captures {
        let counts = summary.map(|s| s.get("dropped").and_then(Value::as_object));
        match counts {
            Ok(Some(counts)) => {
                counters += counts.len();
                for (counter, value) in counts {
                    if value.as_u64() != Some(0) {
                        dropped.push(format!("{name} {counter}={value}"));
                    }
                }
            }
            Ok(None) => dropped.push(format!("{name}: no dropped counters")),
            Err(e) => dropped.push(format!("{name}: {e}")),
        }
    }
    let names: Vec<&str> = captures.iter().map(|(n, _)| *n).collect();
    let measured = if dropped.is_empty() {
        format!("{}: all {counters} counters zero", names.join(" and "))
    } else {
        dropped.join(", ")
    };
    Line::new(CHECK.0, CHECK.1, dropped.is_empty(), measured)
}

/// The comparison with the previous release: its verdict, and the gates that failed.
fn gate_line(previous: Option<&str>, compare: Option<Result<&Value, &str>>) -> Line {
    let Some(previous) = previous else {
        return Line {
            check: "compare".into(),
            requirement: "no regression vs the previous release".into(),
            result: Outcome::Skipped,
            measured: "no earlier release archived".into(),
        };
    };
    let requirement = format!("no regression vs {previous}");
    let compare = match compare {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Line::new("compare", &requirement, false, e.to_string()),
        None => return Line::new("compare", &requirement, false, "not compared".into()),
    };
    let verdict = compare
        .get("verdict")
        .and_then(Value::as_str)
        .unwrap_or("-");
    let failed: Vec<String> = compare
        .get("gates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|g| g.get("result").and_then(Value::as_str) == Some("fail"))
        .map(|g| {
            let name = g.get("name").and_then(Value::as_str).unwrap_or("?");
            let limit = g.get("limit").and_then(Value::as_str).unwrap_or("?");
            match g.get("change_percent").and_then(Value::as_f64) {
                Some(change) => format!("{name} {change:+.0}% (limit {limit})"),
                None => format!("{name} (limit {limit})"),
            }
        })
        .collect();
    let measured = if failed.is_empty() {
        verdict.to_string()
    } else {
        format!("{verdict}: {}", failed.join(", "))
    };
    Line::new("compare", &requirement, verdict == "pass", measured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load_report(connect_errors: u64, connected: u64, established: u64, p99: u64) -> Value {
        json!({
            "settings": {"miners": 10},
            "latency_us": {"p99": p99, "count": 300},
            "connections": {"clients_connected": connected, "established": established},
            "errors": {"connect": connect_errors, "timeout": 0, "protocol": 0}
        })
    }

    #[test]
    fn plans_keep_the_profiles_and_scale_shortened_runs() {
        let standard = Plan::new(STANDARD, None);
        assert_eq!(standard.load_args(), ["--profile", "standard"]);
        assert_eq!(standard.capture(), (15.0, 35.0));
        let short = Plan::new(STANDARD, Some(20.0));
        assert_eq!(
            short.load_args(),
            [
                "--profile",
                "standard",
                "--duration",
                "20000ms",
                "--ramp-up",
                "5000ms"
            ]
        );
        let (after, capture) = short.capture();
        assert_eq!(after, 6.5);
        assert!(after + capture < 20.0 && capture > 10.0, "{capture}");
        // A short soak keeps the profile's ramp-up and captures all but a minute of it.
        let soak = Plan::new(SOAK, Some(600.0));
        assert_eq!(soak.ramp_s, 10.0);
        assert_eq!(soak.capture(), (40.0, 530.0));
    }

    #[test]
    fn smoke_needs_every_client_and_no_connection_error() {
        let line = smoke_line(Ok(&load_report(0, 10, 10, 900)));
        assert_eq!(line.result, Outcome::Pass, "{line:?}");
        assert_eq!(
            line.measured,
            "0 connection errors, 10/10 clients connected"
        );
        assert_eq!(
            smoke_line(Ok(&load_report(1, 10, 11, 900))).result,
            Outcome::Fail
        );
        assert_eq!(
            smoke_line(Ok(&load_report(0, 9, 9, 900))).result,
            Outcome::Fail
        );
        let missing = smoke_line(Err("the load driver wrote no report"));
        assert_eq!(missing.result, Outcome::Fail);
        assert_eq!(missing.measured, "the load driver wrote no report");
    }

    #[test]
    fn p99_is_held_to_the_objective() {
        assert_eq!(
            p99_line(Ok(&load_report(0, 10, 10, 10_000)), 10.0).result,
            Outcome::Pass
        );
        let over = p99_line(Ok(&load_report(0, 10, 10, 10_001)), 10.0);
        assert_eq!(over.result, Outcome::Fail);
        assert_eq!(over.measured, "p99 10.00 ms over 300 replies");
        let none = p99_line(Ok(&json!({"latency_us": null})), 10.0);
        assert_eq!(
            (none.result, none.measured.as_str()),
            (Outcome::Fail, "no replies")
        );
    }

    #[test]
    fn stress_counts_failures_against_attempts() {
        // 9 failures in 1009 attempts: 0.89%.
        let line = stress_line(Ok(&load_report(9, 1000, 1000, 0)));
        assert_eq!(line.result, Outcome::Pass, "{line:?}");
        assert_eq!(line.measured, "0.89% (9 failed of 1009 attempts)");
        assert_eq!(
            stress_line(Ok(&load_report(11, 1000, 1000, 0))).result,
            Outcome::Fail
        );
        assert_eq!(
            stress_line(Ok(&load_report(0, 0, 0, 0))).result,
            Outcome::Fail
        );
    }

    #[test]
    fn rss_growth_needs_samples() {
        let summary = |growth: f64| {
            json!({"alloc": {"leaks": {"memory": {
                "rss_baseline_kb": 5000, "rss_end_kb": 5000.0 * (1.0 + growth / 100.0),
                "rss_growth_percent": growth, "over_10_percent": growth > 10.0
            }}}})
        };
        let line = rss_line(Ok(&summary(2.0)), 12);
        assert_eq!(line.result, Outcome::Pass, "{line:?}");
        assert_eq!(line.measured, "+2.0% (5000 -> 5100 KiB over 12 samples)");
        assert_eq!(rss_line(Ok(&summary(10.0)), 12).result, Outcome::Fail);
        assert_eq!(
            rss_line(Ok(&summary(0.0)), 1).result,
            Outcome::Fail,
            "one sample shows nothing"
        );
        assert_eq!(
            rss_line(Ok(&json!({})), 12).result,
            Outcome::Fail,
            "no alloc family"
        );
    }

    #[test]
    fn flamegraph_must_be_there_and_not_empty() {
        assert_eq!(
            flamegraph_line(Some("standard-x"), Some(4096)).result,
            Outcome::Pass
        );
        assert_eq!(
            flamegraph_line(Some("standard-x"), Some(0)).result,
            Outcome::Fail
        );
        assert_eq!(
            flamegraph_line(Some("standard-x"), None).result,
            Outcome::Fail
        );
        assert_eq!(flamegraph_line(None, None).result, Outcome::Fail);
    }

    #[test]
    fn any_dropped_event_fails_and_is_named() {
        let clean = json!({"dropped": {"cpu_counts_full": 0, "user_stacks_full": 0}});
        let line = dropped_line(&[("standard", Ok(&clean)), ("soak", Ok(&clean))]);
        assert_eq!(line.result, Outcome::Pass);
        assert_eq!(line.measured, "standard and soak: all 4 counters zero");
        let lossy = json!({"dropped": {"cpu_counts_full": 0, "user_stacks_full": 3}});
        let line = dropped_line(&[("standard", Ok(&clean)), ("soak", Ok(&lossy))]);
        assert_eq!(line.result, Outcome::Fail);
        assert_eq!(line.measured, "soak user_stacks_full=3");
        // A lost allocator return is a drop like any other.
        let soak = json!({"dropped": {"alloc_live_full": 0, "alloc_missed_returns": 2}});
        let line = dropped_line(&[("standard", Ok(&clean)), ("soak", Ok(&soak))]);
        assert_eq!(
            (line.result, line.measured.as_str()),
            (Outcome::Fail, "soak alloc_missed_returns=2")
        );
        let line = dropped_line(&[("standard", Ok(&clean)), ("soak", Err("attach failed"))]);
        assert_eq!(
            (line.result, line.measured.as_str()),
            (Outcome::Fail, "soak: attach failed")
        );
    }

    #[test]
    fn the_gate_is_skipped_without_a_previous_release_and_names_what_failed() {
        assert_eq!(gate_line(None, None).result, Outcome::Skipped);
        let pass = json!({"verdict": "pass", "gates": [{"name": "p99 latency", "result": "pass"}]});
        assert_eq!(
            gate_line(Some("v0.1.0"), Some(Ok(&pass))).result,
            Outcome::Pass
        );
        let regression = json!({"verdict": "regression", "gates": [
            {"name": "p99 latency", "result": "fail", "change_percent": 85.2, "limit": "+10%"},
            {"name": "throughput", "result": "pass", "change_percent": -1.0, "limit": "-10%"},
            {"name": "CPU", "result": "fail", "change_percent": 900.0, "limit": "+15%"}
        ]});
        let line = gate_line(Some("v0.1.0"), Some(Ok(&regression)));
        assert_eq!(line.result, Outcome::Fail);
        assert_eq!(line.requirement, "no regression vs v0.1.0");
        assert_eq!(
            line.measured,
            "regression: p99 latency +85% (limit +10%), CPU +900% (limit +15%)"
        );
        let broken = gate_line(Some("v0.1.0"), Some(Err("profiler compare failed")));
        assert_eq!(broken.result, Outcome::Fail);
    }

    #[test]
    fn a_skipped_line_does_not_fail_the_checklist() {
        let checklist = Checklist {
            schema_version: 1,
            release: "v0.1.0".into(),
            target: "testbed-pool".into(),
            target_args: String::new(),
            stamp: "20261201T120000Z".into(),
            previous: None,
            passed: true,
            lines: vec![
                smoke_line(Ok(&load_report(0, 10, 10, 900))),
                gate_line(None, None),
            ],
        };
        let text = checklist.render(Path::new("results/v0.1.0"));
        assert!(
            text.contains("  PASS  smoke: 0 connection errors"),
            "{text}"
        );
        assert!(
            text.contains("  SKIP  compare: no regression vs the previous release"),
            "{text}"
        );
        assert!(
            text.ends_with("v0.1.0: PASS; archive in results/v0.1.0\n"),
            "{text}"
        );
    }

    #[test]
    fn the_previous_release_is_the_newest_other_archive_of_the_target_with_a_capture() {
        const POOL: &str = "testbed-pool";
        let root = std::env::temp_dir().join(format!("release-previous-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let archive = |release: &str, target: &str, finished: &str, capture: bool| {
            let dir = root.join(release);
            fs::create_dir_all(dir.join("standard-x")).unwrap();
            if capture {
                fs::write(dir.join("standard-x/summary.json"), "{}").unwrap();
            }
            let marker = Archive {
                release: release.into(),
                target: target.into(),
                finished_at: finished.into(),
                standard: Some("standard-x".into()),
                ..Archive::default()
            };
            fs::write(
                dir.join("release.json"),
                serde_json::to_string(&marker).unwrap(),
            )
            .unwrap();
        };
        archive("v0.1.0", POOL, "2026-12-01T10:00:00Z", true);
        archive("v0.1.1", POOL, "2026-12-01T11:00:00Z", true);
        archive("v0.1.2", POOL, "2026-12-01T12:00:00Z", false);
        archive("ledger-v1", "testbed-ledger", "2026-12-01T13:00:00Z", true);
        fs::create_dir_all(root.join("demo-20261201T090000Z")).unwrap();
        let name = |found: Option<(Archive, PathBuf)>| found.map(|(a, _)| a.release);
        assert_eq!(
            name(find_previous(&root, "v0.2.0", POOL, None).unwrap()).as_deref(),
            Some("v0.1.1")
        );
        // Re-running a release compares with the one before it, not itself.
        assert_eq!(
            name(find_previous(&root, "v0.1.1", POOL, None).unwrap()).as_deref(),
            Some("v0.1.0")
        );
        assert_eq!(
            name(find_previous(&root, "v0.2.0", POOL, Some("v0.1.0")).unwrap()).as_deref(),
            Some("v0.1.0")
        );
        assert!(
            find_previous(&root, "v0.2.0", POOL, Some("none"))
                .unwrap()
                .is_none()
        );
        assert!(find_previous(&root, "v0.2.0", POOL, Some("v9")).is_err());
        assert!(
            find_previous(&root.join("absent"), "v0.2.0", POOL, None)
                .unwrap()
                .is_none()
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
