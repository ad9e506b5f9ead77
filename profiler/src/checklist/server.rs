//! The server under check: started for a step in a process group of its own, ready once its URL
//! answers a first request, stopped by that group (SIGTERM, then SIGKILL after a grace period),
//! its output kept in files beside the step's reports.

use std::{
    fs::{self, File},
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use serde::{Deserialize, Serialize};

use super::driver::Target;
use crate::probes::sock::listening_ports;

/// How often readiness is probed, and how long one probe may wait for its reply.
const PROBE_EVERY: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Stderr lines quoted when a server fails.
const TAIL_LINES: usize = 5;

/// A server's command line: the program (found on PATH, symlinks followed) and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Launch {
    /// For people: the words, quoted where a shell would need it.
    pub fn display(&self) -> String {
        let program = self.program.to_string_lossy();
        std::iter::once(program.as_ref())
            .chain(self.args.iter().map(String::as_str))
            .map(|w| shlex::try_quote(w).map_or_else(|_| w.to_string(), |q| q.into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where a started server's stdout and stderr go.
#[derive(Debug, Clone)]
pub struct Logs {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "something already answers at {url} before the server was started: stop it, or check \
         the running server with --pid"
    )]
    PortTaken { url: String },
    #[error("cannot create {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start {command}: check the program and its permissions")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("the server (pid {pid}) exited during start-up ({status}){}", tail_text(.stderr))]
    ExitedAtStart {
        pid: u32,
        status: String,
        stderr: Vec<String>,
    },
    #[error(
        "the server{} did not answer at {url} within {} ({last}){}: check --url, or give it \
         longer with --ready-timeout",
        .pid.map(|p| format!(" (pid {p}, killed)")).unwrap_or_default(),
        humantime::format_duration(*.timeout),
        tail_text(.stderr)
    )]
    NotReady {
        /// The process started, if we started one.
        pid: Option<u32>,
        url: String,
        timeout: Duration,
        last: String,
        stderr: Vec<String>,
    },
    #[error("the server exited during the step ({status}){}", tail_text(.stderr))]
    ExitedDuringStep { status: String, stderr: Vec<String> },
    #[error("pid {pid} is gone: the running server exited (or was restarted) during the checklist")]
    Gone { pid: u32 },
    #[error("interrupted")]
    Interrupted,
}

impl ServerError {
    /// The process started, when a start failed after it was spawned.
    pub fn started_pid(&self) -> Option<u32> {
        match self {
            Self::ExitedAtStart { pid, .. } => Some(*pid),
            Self::NotReady { pid, .. } => *pid,
            _ => None,
        }
    }
}

/// "; its last stderr lines: a | b", or nothing when it printed none.
fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        "; it printed nothing on stderr".to_string()
    } else {
        format!("; its last stderr lines: {}", lines.join(" | "))
    }
}

/// How a started server ended, for the archive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ended {
    /// The process we started, its group's id.
    pub leader: u32,
    /// The process profiled: the leader, or the member of its group listening on the URL.
    pub pid: u32,
    /// e.g. "exited after SIGTERM (exit status: 0)", "killed after a 5 s grace".
    pub how: String,
}

/// A server started for one step. Dropped without `stop`, its group is killed.
#[derive(Debug)]
pub struct Started {
    child: Child,
    /// The process to profile and load.
    pub pid: u32,
    stderr: PathBuf,
    stopped: bool,
}

/// Starts `launch` in a process group of its own, its output into `logs`, and waits until
/// `url` answers a first request: stratum, a reply to `mining.subscribe`; HTTP, any response.
pub fn start(
    launch: &Launch,
    url: &Target,
    logs: &Logs,
    ready_timeout: Duration,
    stop: &AtomicBool,
) -> Result<Started, ServerError> {
    // Else the probe below could pass on another process's answer.
    if connect(url, PROBE_TIMEOUT).is_ok() {
        return Err(ServerError::PortTaken {
            url: url.to_string(),
        });
    }
    let create = |path: &Path| {
        File::create(path).map_err(|source| ServerError::Log {
            path: path.to_path_buf(),
            source,
        })
    };
    let child = Command::new(&launch.program)
        .args(&launch.args)
        .stdin(Stdio::null())
        .stdout(create(&logs.stdout)?)
        .stderr(create(&logs.stderr)?)
        // Its own group: signals go to it and whatever it forks, and a Ctrl-C at our terminal
        // reaches us alone, so that we stop it in order.
        .process_group(0)
        .spawn()
        .map_err(|source| ServerError::Spawn {
            command: launch.display(),
            source,
        })?;
    let mut started = Started {
        pid: child.id(),
        child,
        stderr: logs.stderr.clone(),
        stopped: false,
    };
    let deadline = Instant::now() + ready_timeout;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(ServerError::Interrupted);
        }
        if let Some(status) = started.exited() {
            return Err(ServerError::ExitedAtStart {
                pid: started.leader(),
                status,
                stderr: tail(&started.stderr, TAIL_LINES),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match probe(url, PROBE_TIMEOUT.min(left.max(Duration::from_millis(100)))) {
            Ok(()) => break,
            Err(err) if left.is_zero() => {
                return Err(ServerError::NotReady {
                    pid: Some(started.leader()),
                    url: url.to_string(),
                    timeout: ready_timeout,
                    last: err.to_string(),
                    stderr: tail(&started.stderr, TAIL_LINES),
                });
            }
            Err(_) => thread::sleep(PROBE_EVERY.min(left)),
        }
    }
    started.pid = listener_in_group(started.child.id(), url.port());
    Ok(started)
}

impl Started {
    /// The group's id: the pid of the process we started.
    pub fn leader(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the server exited by itself.
    pub fn check(&mut self) -> Result<(), ServerError> {
        match self.exited() {
            Some(status) => Err(ServerError::ExitedDuringStep {
                status,
                stderr: tail(&self.stderr, TAIL_LINES),
            }),
            None => Ok(()),
        }
    }

    /// The leader's exit, if it exited, without reaping it: while it is a zombie its pid, which
    /// is the group's id, cannot be given to another process, so signalling the group stays safe.
    fn exited(&self) -> Option<String> {
        let pid = Pid::from_child(&self.child);
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        let status = rustix::process::waitid(WaitId::Pid(pid), options).ok()??;
        Some(match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) if status.exited() => format!("exit status {code}"),
            (_, Some(signal)) => format!("killed by signal {signal}"),
            _ => "exited".to_string(),
        })
    }

    fn signal_group(&self, signal: Signal) {
        let pgid = Pid::from_child(&self.child);
        // ESRCH: the group is empty already.
        let _ = rustix::process::kill_process_group(pgid, signal);
    }

    /// SIGTERM to the group; SIGKILL once `grace` has passed (or at once, for what the leader
    /// left behind when it exited); reaped.
    pub fn stop(mut self, grace: Duration) -> Result<Ended, ServerError> {
        // Exited by itself: the step failed (and Drop reaps it).
        self.check()?;
        self.signal_group(Signal::TERM);
        let deadline = Instant::now() + grace;
        let mut how = None;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                how = Some(format!("exited after SIGTERM ({status})"));
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(Signal::KILL);
        let status = self.reap();
        self.stopped = true;
        Ok(Ended {
            leader: self.leader(),
            pid: self.pid,
            how: how.unwrap_or_else(|| {
                format!(
                    "killed after a {} grace ({})",
                    humantime::format_duration(grace),
                    status.map_or_else(|| "not reaped".to_string(), |s| s.to_string())
                )
            }),
        })
    }

    fn reap(&mut self) -> Option<ExitStatus> {
        self.child.wait().ok()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if !self.stopped {
            self.signal_group(Signal::KILL);
            self.reap();
        }
    }
}

/// The process to profile: the member of `leader`'s group that listens on `port` (the leader
/// itself when it does, or when none does: a URL reached through a proxy, say).
fn listener_in_group(leader: u32, port: u16) -> u32 {
    let listens = |pid: u32| listening_ports(pid).is_ok_and(|ports| ports.contains(&port));
    if listens(leader) {
        return leader;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return leader;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process_group(pid) == Some(leader))
        .find(|&pid| listens(pid))
        .unwrap_or(leader)
}

/// The process group of `pid`, from `/proc/PID/stat` (the 5th field).
fn process_group(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat`'s 22nd field): a pid and
/// its start time name one process, even if the pid is later reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.trim_end().to_string())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("no connection: {0}")]
    Connect(#[source] io::Error),
    #[error("no reply: {0}")]
    NoReply(#[source] io::Error),
    #[error("it closed the connection without a reply")]
    Closed,
    #[error("it answered {0:?}, not {1}")]
    Unexpected(String, &'static str),
}

fn connect(url: &Target, timeout: Duration) -> Result<TcpStream, ProbeError> {
    let addr: SocketAddr = url
        .authority()
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ProbeError::Resolve(url.authority()))?;
    TcpStream::connect_timeout(&addr, timeout).map_err(ProbeError::Connect)
}

/// One first request to `url`: stratum, `mining.subscribe` and a reply with its id; HTTP, a GET
/// of the URL's path and any HTTP response (a 404 or 405 still shows a server that answers).
pub fn probe(url: &Target, timeout: Duration) -> Result<(), ProbeError> {
    let mut stream = connect(url, timeout)?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    match url {
        Target::Stratum { .. } => {
            let hello = r#"{"id":1,"method":"mining.subscribe","params":["profiler-checklist"]}"#;
            // One write: a server that answers the first segment and closes would otherwise
            // reset the connection over the unread rest, and the reply would be lost.
            stream
                .write_all(format!("{hello}\n").as_bytes())
                .map_err(ProbeError::NoReply)?;
            let mut reader = BufReader::new(stream).take(64 * 1024);
            let mut line = String::new();
            // A pool may push (difficulty, work) before it replies.
            loop {
                line.clear();
                match reader.read_line(&mut line).map_err(ProbeError::NoReply)? {
                    0 => return Err(ProbeError::Closed),
                    _ => {
                        let reply: serde_json::Value =
                            serde_json::from_str(&line).map_err(|_| {
                                ProbeError::Unexpected(shorten(&line), "a stratum (JSON-RPC) line")
                            })?;
                        if reply.get("id").and_then(serde_json::Value::as_u64) == Some(1) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Target::Http { path, .. } => {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                url.authority()
            );
            stream
                .write_all(request.as_bytes())
                .map_err(ProbeError::NoReply)?;
            let mut head = [0u8; 16];
            let mut got = 0;
            while got < 5 {
                match stream.read(&mut head[got..]).map_err(ProbeError::NoReply)? {
                    0 => return Err(ProbeError::Closed),
                    n => got += n,
                }
            }
            if head.starts_with(b"HTTP/") {
                Ok(())
            } else {
                Err(ProbeError::Unexpected(
                    shorten(&String::from_utf8_lossy(&head[..got])),
                    "an HTTP response",
                ))
            }
        }
    }
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn local(listener: &TcpListener, scheme: &str) -> Target {
        let port = listener.local_addr().unwrap().port();
        format!(
            "{scheme}://127.0.0.1:{port}{}",
            if scheme == "http" { "/x" } else { "" }
        )
        .parse()
        .unwrap()
    }

    /// Answers one connection with `reply` after reading the whole request (a line for stratum,
    /// a head for HTTP): closing over unread bytes would reset the connection, not answer it.
    fn answer_once(listener: TcpListener, reply: &'static str) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !(request.ends_with(b"\r\n\r\n") || request.ends_with(b"}\n")) {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(reply.as_bytes());
        })
    }

    #[test]
    fn stratum_is_ready_once_subscribe_is_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = local(&listener, "stratum");
        let server = answer_once(
            listener,
            "{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[1]}\n\
             {\"id\":1,\"result\":[[],\"00\",4],\"error\":null}\n",
        );
        probe(&url, Duration::from_secs(5)).unwrap();
        server.join().unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = local(&listener, "stratum");
        let server = answer_once(listener, "HTTP/1.1 400 Bad Request\r\n\r\n");
        let err = probe(&url, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ProbeError::Unexpected(..)), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn http_is_ready_on_any_response() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = local(&listener, "http");
        let server = answer_once(listener, "HTTP/1.1 405 Method Not Allowed\r\n\r\n");
        probe(&url, Duration::from_secs(5)).unwrap();
        server.join().unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = local(&listener, "http");
        let server = answer_once(listener, "");
        let err = probe(&url, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ProbeError::Closed), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_no_connection() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url: Target = format!("stratum://127.0.0.1:{port}").parse().unwrap();
        let err = probe(&url, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ProbeError::Connect(_)), "{err}");
    }

    fn logs(dir: &Path) -> Logs {
        Logs {
            stdout: dir.join("server.stdout"),
            stderr: dir.join("server.stderr"),
        }
    }

    fn sh(script: &str) -> Launch {
        Launch {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    #[test]
    fn a_server_that_exits_at_once_fails_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let url: Target = "stratum://127.0.0.1:1".parse().unwrap();
        let stop = AtomicBool::new(false);
        let launch = sh("echo starting; echo 'bind: address in use' >&2; exit 3");
        let err = start(
            &launch,
            &url,
            &logs(dir.path()),
            Duration::from_secs(10),
            &stop,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exit status 3"), "{text}");
        assert!(text.contains("bind: address in use"), "{text}");
        assert_eq!(
            fs::read_to_string(dir.path().join("server.stdout")).unwrap(),
            "starting\n"
        );
    }

    #[test]
    fn a_server_that_never_answers_is_given_up_on_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url: Target = format!("stratum://127.0.0.1:{port}").parse().unwrap();
        let stop = AtomicBool::new(false);
        // The shell's child sleeps in the same group: it must go too.
        let pid_file = dir.path().join("child.pid");
        let launch = sh(&format!(
            "sleep 600 & echo $! > {}; wait",
            pid_file.display()
        ));
        let began = Instant::now();
        let err = start(
            &launch,
            &url,
            &logs(dir.path()),
            Duration::from_millis(800),
            &stop,
        )
        .unwrap_err();
        assert!(matches!(err, ServerError::NotReady { .. }), "{err}");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        let child: u32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL is delivered before kill returns; the orphan is reaped by init soon after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while start_time(child).is_some() && Instant::now() < deadline {
            let state = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            if state.contains(") Z") {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let state = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "{state}");
    }

    #[test]
    fn stop_sends_sigterm_then_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url: Target = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let stop = AtomicBool::new(false);
        // python3 is on the machine (the checklist's own tests use it): a one-line HTTP server
        // that ignores SIGTERM.
        let launch = Launch {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "trap '' TERM; exec python3 -c 'import http.server as h, signal; \
                     signal.signal(signal.SIGTERM, signal.SIG_IGN); \
                     h.HTTPServer((\"127.0.0.1\", {port}), h.BaseHTTPRequestHandler).serve_forever()'"
                ),
            ],
        };
        let started = start(
            &launch,
            &url,
            &logs(dir.path()),
            Duration::from_secs(20),
            &stop,
        )
        .expect("the server answers");
        assert_eq!(started.pid, started.leader(), "exec keeps the pid");
        let began = Instant::now();
        let ended = started.stop(Duration::from_millis(500)).unwrap();
        assert!(ended.how.starts_with("killed after"), "{ended:?}");
        assert!(began.elapsed() >= Duration::from_millis(500));
        assert!(start_time(ended.leader).is_none(), "reaped");
    }
}
