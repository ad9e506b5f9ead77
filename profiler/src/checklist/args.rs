//! `profiler checklist` on the command line, and the plain options it becomes before anything
//! runs (so nothing past this file sees clap).

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use clap::{ArgGroup, Args, ValueEnum};

use super::{
    driver::{Credentials, HttpMethod, LoadOptions, Profile, Switch, Target, TargetError},
    server::Launch,
};
use crate::{
    cli::positive_duration,
    compare::{self, CompareError, Gates},
};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("server").args(["start", "pid"])))]
pub struct ChecklistArgs {
    /// The release's name, e.g. v2.3.1: its archive is RESULTS_DIR/RELEASE/.
    pub release: String,
    /// What to load: stratum://host:port or http://host:port/path. Needs --start or --pid;
    /// with none of the three the checklist runs against the testbed.
    #[arg(long, requires = "server")]
    pub url: Option<String>,
    /// The server's command line, started afresh for every step in a process group of its
    /// own and stopped when the step ends, e.g. "/usr/local/bin/pool -c pool.conf". Split into
    /// words as a shell would (quotes work), but not run through one: the program must be the
    /// server itself.
    #[arg(long, value_name = "\"CMD ARGS...\"", requires = "url")]
    pub start: Option<String>,
    /// A server that is already running and must not be restarted (production): every step
    /// runs against it, one after another.
    #[arg(long, value_name = "PID", requires = "url")]
    pub pid: Option<u32>,
    /// Without --url: the testbed server to check.
    #[arg(long, value_enum, default_value_t = Testbed::Pool, conflicts_with = "url")]
    pub testbed: Testbed,
    /// Without --url: extra arguments for the testbed server, e.g. "--slow-every 50
    /// --slow-spin" (split on spaces).
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        conflicts_with = "url"
    )]
    pub target_args: Option<String>,
    /// Where release archives live.
    #[arg(long, value_name = "DIR", default_value = "results")]
    pub results_dir: PathBuf,
    /// The release to compare with: a name under RESULTS_DIR, an archive's path, or `none`
    /// [default: the newest other archive of the same server].
    #[arg(long, value_name = "REL|PATH|none")]
    pub previous: Option<String>,
    /// Gate thresholds for the comparison, a gates.json as `profiler baseline save` writes
    /// [default: compare's gates].
    #[arg(long, value_name = "FILE")]
    pub gates: Option<PathBuf>,
    /// Length of the smoke step [default: the profile's 30 s]. Shortened steps ramp up over at
    /// most a quarter of their length.
    #[arg(long, value_name = "S", value_parser = positive_duration)]
    pub smoke_s: Option<Duration>,
    /// Length of the standard step, captured with every family [default: the profile's 60 s].
    #[arg(long, value_name = "S", value_parser = positive_duration)]
    pub standard_s: Option<Duration>,
    /// Length of the stress step [default: the profile's 120 s].
    #[arg(long, value_name = "S", value_parser = positive_duration)]
    pub stress_s: Option<Duration>,
    /// Length of the soak step, captured with --alloc: a short soak by default (the soak
    /// profile itself runs an hour).
    #[arg(long, value_name = "S", value_parser = positive_duration, default_value = "600")]
    pub soak_s: Duration,
    /// The p99 objective under the standard profile, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10.0)]
    pub p99_slo_ms: f64,
    /// How long a started server may take to answer its first request.
    #[arg(long, value_name = "D", value_parser = positive_duration, default_value = "30s")]
    pub ready_timeout: Duration,
    #[command(flatten)]
    pub load: LoadPassThrough,
}

/// The options of `profiler load` that mean the same in every step; the profile, its length
/// and the objectives are the checklist's.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Load options (as `profiler load`)")]
pub struct LoadPassThrough {
    /// HTTP method [default: POST with --body, else GET].
    #[arg(long, value_enum)]
    pub method: Option<HttpMethod>,
    /// HTTP: file whose contents every POST sends.
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// Stratum worker name prefix [default: loadtest].
    #[arg(long)]
    pub user: Option<String>,
    /// Stratum password [default: x].
    #[arg(long)]
    pub password: Option<String>,
    /// A request without a reply for this long counts as a timeout [default: 10s].
    #[arg(long, value_name = "D", value_parser = positive_duration)]
    pub timeout: Option<Duration>,
    /// Failures allowed before a load run fails, as a fraction of its scheduled requests
    /// [default: 0].
    #[arg(long, value_name = "R")]
    pub max_error_rate: Option<f64>,
    /// Stratum: note a run in which no share was accepted (off against a pool at real
    /// difficulty).
    #[arg(long, value_enum, value_name = "on|off")]
    pub accept_check: Option<Switch>,
    /// Load driver threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// The testbed servers the checklist knows how to start by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Testbed {
    /// The stratum pool.
    #[value(name = "testbed-pool")]
    Pool,
    /// The ledger-style HTTP service.
    #[value(name = "testbed-ledger")]
    Ledger,
}

impl Testbed {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pool => "testbed-pool",
            Self::Ledger => "testbed-ledger",
        }
    }
}

/// What the checklist is asked to do, free of the command line.
#[derive(Debug, Clone)]
pub struct ChecklistOptions {
    pub release: String,
    pub server: ServerChoice,
    pub load: LoadSettings,
    pub results_dir: PathBuf,
    pub previous: Previous,
    pub gates: Gates,
    pub lengths: StepLengths,
    pub p99_slo_ms: f64,
    pub ready_timeout: Duration,
    /// Between SIGTERM to a started server's process group and SIGKILL.
    pub stop_grace: Duration,
    /// Kernel-side diagnostics in the captures.
    pub verbose: bool,
}

/// The server the steps load and profile.
#[derive(Debug, Clone)]
pub enum ServerChoice {
    /// A testbed binary, started on a free loopback port for every step.
    Testbed {
        testbed: Testbed,
        program: PathBuf,
        args: Vec<String>,
    },
    /// The operator's command, started for every step.
    Start { launch: Launch, url: Target },
    /// A running server, never restarted.
    Pid { pid: u32, url: Target },
}

impl ServerChoice {
    /// What archives of the same server have in common, so a release is compared with an
    /// earlier release of the same server: the testbed's name (as archives always said), the
    /// started program's path, or the running process's executable.
    pub fn identity(&self) -> String {
        match self {
            Self::Testbed { testbed, .. } => testbed.name().to_string(),
            Self::Start { launch, .. } => launch.program.display().to_string(),
            Self::Pid { pid, .. } => fs::read_link(format!("/proc/{pid}/exe"))
                .map_or_else(|_| format!("pid {pid}"), |p| p.display().to_string()),
        }
    }
}

/// Which archive the standard capture is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// The newest other archive of the same server.
    Newest,
    /// None: the comparison is skipped.
    Skip,
    /// A release name under the results directory, or an archive's path.
    Named(String),
}

/// How long each step runs; `None` keeps the profile's own length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLengths {
    pub smoke: Option<Duration>,
    pub standard: Option<Duration>,
    pub stress: Option<Duration>,
    pub soak: Duration,
}

/// The load options every step shares; `None` keeps the driver's default.
#[derive(Debug, Clone, Default)]
pub struct LoadSettings {
    pub method: Option<HttpMethod>,
    pub body: Option<Bytes>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub timeout: Option<Duration>,
    pub max_error_rate: Option<f64>,
    pub accept_check: Option<bool>,
    pub threads: Option<usize>,
}

impl LoadSettings {
    /// A step's load: the profile, shortened to `length` if given (its ramp-up then at most a
    /// quarter of it, so a short run still has a steady part), with these settings.
    pub fn options(
        &self,
        target: Target,
        profile: Profile,
        length: Option<Duration>,
    ) -> LoadOptions {
        let mut options = LoadOptions::new(target, profile);
        if let Some(length) = length {
            options.duration = length;
            options.ramp_up = options.ramp_up.min(length / 4);
        }
        if let Some(body) = &self.body {
            options.body = body.clone();
        }
        // As `profiler load` does: POST when there is a body to send.
        options.method = self.method.unwrap_or(if self.body.is_some() {
            HttpMethod::Post
        } else {
            HttpMethod::Get
        });
        let defaults = options.credentials.clone();
        options.credentials = Credentials {
            user: self.user.clone().unwrap_or(defaults.user),
            password: self.password.clone().unwrap_or(defaults.password),
        };
        if let Some(timeout) = self.timeout {
            options.timeout = timeout;
        }
        if let Some(rate) = self.max_error_rate {
            options.max_error_rate = rate;
        }
        if let Some(check) = self.accept_check {
            options.accept_check = check;
        }
        options.threads = self.threads;
        options
    }
}

/// What the ledger is sent when no --body is given: a balanced two-entry batch.
pub const LEDGER_BODY: &str =
    r#"{"entries":[{"account":"alice","amount":5},{"account":"bob","amount":-5}]}"#;

#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("release name {0:?} must be one directory name, e.g. v2.3.1")]
    Release(String),
    #[error(transparent)]
    Url(#[from] TargetError),
    #[error("--start {0:?} has no program, or an unclosed quote")]
    StartWords(String),
    #[error(
        "--start: {program} is not {what}: give the server's full path, e.g. \
         --start \"/usr/local/bin/pool -c pool.conf\""
    )]
    Program { program: String, what: &'static str },
    #[error(
        "{name} is not next to the profiler ({}) nor on PATH: build it with `cargo build \
         --release -p testbed`, or check your own server with --url and --start or --pid",
        dir.display()
    )]
    NoTestbed { name: &'static str, dir: PathBuf },
    #[error("cannot read the request body {}: check --body", path.display())]
    Body {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--max-error-rate {0} is not a fraction from 0 to 1 (e.g. 0.01 for 1 %)")]
    ErrorRate(f64),
    #[error("--p99-slo-ms {0} must be a positive number of milliseconds")]
    Slo(f64),
    #[error("cannot read the gates in --gates")]
    Gates(#[source] CompareError),
}

impl ChecklistArgs {
    pub fn into_options(self, verbose: bool) -> Result<ChecklistOptions, ArgsError> {
        let release = self.release;
        if release.is_empty() || release.starts_with('.') || release.contains('/') {
            return Err(ArgsError::Release(release));
        }
        if let Some(rate) = self.load.max_error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(ArgsError::ErrorRate(rate));
        }
        if !(self.p99_slo_ms.is_finite() && self.p99_slo_ms > 0.0) {
            return Err(ArgsError::Slo(self.p99_slo_ms));
        }
        let url = self.url.as_deref().map(str::parse::<Target>).transpose()?;
        let server = match (url, self.start, self.pid) {
            (Some(url), Some(start), _) => ServerChoice::Start {
                launch: launch(&start)?,
                url,
            },
            (Some(url), None, Some(pid)) => ServerChoice::Pid { pid, url },
            // clap requires --start or --pid with --url, and --url with either.
            _ => ServerChoice::Testbed {
                testbed: self.testbed,
                program: testbed_program(self.testbed)?,
                args: self
                    .target_args
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
            },
        };
        let p = self.load;
        let mut body = p
            .body
            .as_ref()
            .map(|path| {
                fs::read(path)
                    .map(Bytes::from)
                    .map_err(|source| ArgsError::Body {
                        path: path.clone(),
                        source,
                    })
            })
            .transpose()?;
        if body.is_none()
            && let ServerChoice::Testbed {
                testbed: Testbed::Ledger,
                ..
            } = server
        {
            body = Some(Bytes::from_static(LEDGER_BODY.as_bytes()));
        }
        let gates = match &self.gates {
            Some(path) => compare::read_gates(path).map_err(ArgsError::Gates)?,
            None => Gates::default(),
        };
        Ok(ChecklistOptions {
            release,
            server,
            load: LoadSettings {
                method: p.method,
                body,
                user: p.user,
                password: p.password,
                timeout: p.timeout,
                max_error_rate: p.max_error_rate,
                accept_check: p.accept_check.map(|s| s == Switch::On),
                threads: p.threads,
            },
            results_dir: self.results_dir,
            previous: match self.previous.as_deref() {
                None => Previous::Newest,
                Some("" | "none") => Previous::Skip,
                Some(name) => Previous::Named(name.to_string()),
            },
            gates,
            lengths: StepLengths {
                smoke: self.smoke_s,
                standard: self.standard_s,
                stress: self.stress_s,
                soak: self.soak_s,
            },
            p99_slo_ms: self.p99_slo_ms,
            ready_timeout: self.ready_timeout,
            stop_grace: Duration::from_secs(5),
            verbose,
        })
    }
}

/// `--start`'s words, its program found the way a shell would find it.
fn launch(start: &str) -> Result<Launch, ArgsError> {
    let words = shlex::split(start).filter(|w| !w.is_empty());
    let Some((program, args)) = words.as_deref().and_then(<[String]>::split_first) else {
        return Err(ArgsError::StartWords(start.to_string()));
    };
    let found = if program.contains('/') {
        Some(PathBuf::from(program)).filter(|p| is_executable(p))
    } else {
        on_path(program)
    };
    let Some(found) = found else {
        let what = if program.contains('/') {
            "an executable file"
        } else {
            "on PATH"
        };
        return Err(ArgsError::Program {
            program: program.clone(),
            what,
        });
    };
    Ok(Launch {
        // Symlinks followed, so `pool` and `/usr/local/bin/pool` name one server.
        program: fs::canonicalize(&found).unwrap_or(found),
        args: args.to_vec(),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// The testbed binary next to this one (as cargo builds them, and as they would be installed
/// together), else on PATH.
fn testbed_program(testbed: Testbed) -> Result<PathBuf, ArgsError> {
    let dir = env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let beside = dir.join(testbed.name());
    if is_executable(&beside) {
        return Ok(beside);
    }
    on_path(testbed.name()).ok_or(ArgsError::NoTestbed {
        name: testbed.name(),
        dir,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ChecklistArgs,
    }

    fn parse(args: &[&str]) -> Result<ChecklistArgs, clap::Error> {
        let mut argv = vec!["checklist"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn url_and_server_go_together() {
        assert!(parse(&["v1", "--url", "stratum://127.0.0.1:3333"]).is_err());
        assert!(parse(&["v1", "--start", "pool"]).is_err());
        assert!(parse(&["v1", "--pid", "42"]).is_err());
        assert!(
            parse(&["v1", "--url", "stratum://h:1", "--start", "x", "--pid", "1"]).is_err(),
            "--start and --pid are one or the other"
        );
        assert!(
            parse(&[
                "v1",
                "--url",
                "stratum://h:1",
                "--pid",
                "1",
                "--testbed",
                "testbed-ledger"
            ])
            .is_err()
        );
        let args = parse(&["v1", "--url", "http://h:8080/ingest", "--pid", "42"]).unwrap();
        let ServerChoice::Pid { pid, url } = args.into_options(false).unwrap().server else {
            panic!("--pid")
        };
        assert_eq!((pid, url.port()), (42, 8080));
    }

    #[test]
    fn start_is_split_like_a_shell_and_found_on_path() {
        let sh = launch("sh -c 'echo \"a b\"' x").unwrap();
        assert!(sh.program.is_absolute(), "{sh:?}");
        assert_eq!(sh.args, ["-c", "echo \"a b\"", "x"]);
        assert!(matches!(launch("'unclosed"), Err(ArgsError::StartWords(_))));
        assert!(matches!(launch("  "), Err(ArgsError::StartWords(_))));
        let err = launch("no-such-server-anywhere -c x").unwrap_err();
        assert!(err.to_string().contains("not on PATH"), "{err}");
        let err = launch("/nonexistent/pool").unwrap_err();
        assert!(err.to_string().contains("full path"), "{err}");
    }

    #[test]
    fn durations_take_seconds_or_units_and_load_options_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body.json");
        fs::write(&body, "{}").unwrap();
        let args = parse(&[
            "v1",
            "--url",
            "http://127.0.0.1:8080/ingest",
            "--start",
            "sh -c x",
            "--smoke-s",
            "4",
            "--standard-s",
            "1m",
            "--ready-timeout",
            "500ms",
            "--body",
            body.to_str().unwrap(),
            "--max-error-rate",
            "0.01",
            "--accept-check",
            "off",
        ])
        .unwrap();
        let opts = args.into_options(false).unwrap();
        assert_eq!(opts.lengths.smoke, Some(Duration::from_secs(4)));
        assert_eq!(opts.lengths.standard, Some(Duration::from_secs(60)));
        assert_eq!(opts.lengths.soak, Duration::from_secs(600));
        assert_eq!(opts.ready_timeout, Duration::from_millis(500));
        assert_eq!(opts.previous, Previous::Newest);
        let target: Target = "http://127.0.0.1:8080/ingest".parse().unwrap();
        let load = opts
            .load
            .options(target, Profile::Standard, opts.lengths.smoke);
        assert_eq!(load.method, HttpMethod::Post, "a body makes a POST");
        assert_eq!(&load.body[..], b"{}");
        assert_eq!(load.duration, Duration::from_secs(4));
        assert_eq!(
            load.ramp_up,
            Duration::from_secs(1),
            "a quarter of a short step"
        );
        assert_eq!(load.miners, 100, "the profile's own");
        assert_eq!(load.max_error_rate, 0.01);
        assert!(!load.accept_check);
        assert_eq!(load.credentials.user, "loadtest", "the driver's default");

        assert!(parse(&["v1", "--smoke-s", "0"]).is_err());
        let bad = parse(&["v1", "--max-error-rate", "2"]).unwrap();
        assert!(matches!(
            bad.into_options(false),
            Err(ArgsError::ErrorRate(_))
        ));
        let bad = parse(&["../v1"]).unwrap().into_options(false);
        assert!(matches!(bad, Err(ArgsError::Release(_))));
    }

    #[test]
    fn the_profile_length_stays_unless_shortened() {
        let target: Target = "stratum://127.0.0.1:3333".parse().unwrap();
        let soak = LoadSettings::default().options(target, Profile::Soak, None);
        assert_eq!(soak.duration, Duration::from_secs(3600));
        assert_eq!(soak.ramp_up, Duration::from_secs(10));
        assert_eq!(soak.method, HttpMethod::Get);
    }
}
