//! Processes started by tests and benchmarks: killed by pid when dropped, even when a test panics.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A child process that is killed (SIGKILL, by pid) and reaped when dropped.
pub struct ChildGuard {
    child: Child,
    lines: Option<mpsc::Receiver<String>>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout piped, so the caller can wait for a readiness line.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take();
        Ok(Self {
            child,
            lines: stdout.map(forward_lines),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the child prints a line containing `needle`, and returns that line.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let lines = self.lines.as_ref().context("stdout is not captured")?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "pid {} printed no line with {needle:?} within {timeout:?}",
                        self.pid()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "pid {} closed stdout before printing {needle:?}",
                        self.pid()
                    )
                }
            }
        }
    }

    /// Every line up to and including the first that contains `needle`.
    pub fn lines_until(&mut self, needle: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let lines = self.lines.as_ref().context("stdout is not captured")?;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(_) => bail!(
                    "pid {} printed no line with {needle:?} within {timeout:?}; got {seen:?}",
                    self.pid()
                ),
            }
        }
    }

    /// Every line printed so far that has not been consumed by `wait_for_line`.
    pub fn drain_lines(&mut self) -> Vec<String> {
        self.lines
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }

    /// Sends `signal` to the child by pid.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("pid out of range")?;
        let signal = rustix::process::Signal::from_named_raw(signal)
            .with_context(|| format!("no signal {signal}"))?;
        // A pid we own and have not reaped, so it cannot name another process.
        rustix::process::kill_process(pid, signal).with_context(|| format!("kill {pid:?}"))?;
        Ok(())
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking on pid {}", self.pid()))
    }

    /// Waits for the child to exit by itself, and returns its stdout lines not yet consumed.
    pub fn wait(mut self, timeout: Duration) -> Result<(std::process::ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // The reader thread ends at EOF; give it a moment to forward the last lines.
                let mut lines = Vec::new();
                if let Some(rx) = self.lines.take() {
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                        lines.push(line);
                    }
                }
                return Ok((status, lines));
            }
            if Instant::now() > deadline {
                bail!("pid {} did not exit within {timeout:?}", self.pid());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill signals this child's pid only, never a name.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
