//! Checks made before anything is attached, each failing with one line that says what to do.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

/// Capability bits from `linux/capability.h`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("needs root or CAP_BPF+CAP_PERFMON: run with sudo")]
    Privileges,
    #[error("pid {pid} not found")]
    PidNotFound { pid: u32 },
    #[error("pid {pid} ({comm}) is a kernel thread: it has no user space to profile")]
    KernelThread { pid: u32, comm: String },
    #[error("cannot write into output directory {}: choose another with --output", dir.display())]
    OutputNotWritable {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is on {fs}, a kernel interface, not storage: choose a directory on a disk with --output",
        dir.display()
    )]
    OutputNotStorage { dir: PathBuf, fs: &'static str },
    #[error(
        "{} holds an earlier run ({file}): choose another --output, or pass --overwrite to replace its reports",
        dir.display()
    )]
    OutputHoldsRun { dir: PathBuf, file: String },
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed: run `sudo mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    Tracefs {
        #[source]
        source: io::Error,
    },
}

/// Fails unless we may load BPF programs and open perf events.
pub fn check_privileges() -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = effective_caps(&status).unwrap_or(0);
    if has_bpf_caps(caps) {
        Ok(())
    } else {
        Err(PreflightError::Privileges)
    }
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has_bpf_caps(caps: u64) -> bool {
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// What we know of the target before attaching.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    /// Name of the main thread.
    pub comm: String,
    pub exe: Option<PathBuf>,
    pub cmdline: String,
}

pub fn check_target(pid: u32) -> Result<Target, PreflightError> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    // A thread id also has a /proc entry; the target must be a process (its own tgid).
    let status =
        fs::read_to_string(proc.join("status")).map_err(|_| PreflightError::PidNotFound { pid })?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    if pid == 0 || tgid != Some(pid) {
        return Err(PreflightError::PidNotFound { pid });
    }
    let comm = fs::read_to_string(proc.join("comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    if fs::read_to_string(proc.join("stat")).is_ok_and(|stat| is_kernel_thread(&stat)) {
        return Err(PreflightError::KernelThread { pid, comm });
    }
    let cmdline = fs::read(proc.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Ok(Target {
        pid,
        comm,
        exe: fs::read_link(proc.join("exe")).ok(),
        cmdline,
    })
}

/// `PF_KTHREAD` in the flags of `/proc/PID/stat` (the 9th field).
const PF_KTHREAD: u64 = 0x0020_0000;

fn is_kernel_thread(stat: &str) -> bool {
    // Fields after the parenthesised comm start at the 3rd (state).
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Kernel interfaces that look like directories but hold no files of ours.
fn pseudo_filesystem(dir: &Path) -> Option<&'static str> {
    // The nearest existing ancestor decides: a directory not made yet lands on its filesystem.
    let existing = dir.ancestors().find(|p| p.exists())?;
    let magic = rustix::fs::statfs(existing).ok()?.f_type as u64;
    Some(match magic {
        0x9fa0 => "procfs",
        0x6265_6572 => "sysfs",
        0x2702_1997 => "cgroup2",
        0x0027_e0eb => "cgroup",
        0x7472_6163 => "tracefs",
        0x6462_6720 => "debugfs",
        0xcafe_4a11 => "bpffs",
        0x1cd1 => "devpts",
        0x7363_6673 => "securityfs",
        _ => return None,
    })
}

/// The output directory a capture writes to, prepared: created if it did not exist (and
/// removed again if the capture fails before writing anything), refused if it holds another
/// run's reports unless those may be replaced.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    /// We made it (and every missing parent from `made_from` down): undo that on failure.
    made_from: Option<PathBuf>,
    kept: bool,
}

impl OutputDir {
    /// Creates `dir` if needed and proves we can write into it. `reports` are the file names a
    /// run writes; a directory holding any of them is refused, unless `overwrite`, which
    /// removes them so no stale report sits beside the new run's.
    pub fn prepare(dir: &Path, reports: &[&str], overwrite: bool) -> Result<Self, PreflightError> {
        if let Some(fs) = pseudo_filesystem(dir) {
            return Err(PreflightError::OutputNotStorage {
                dir: dir.to_path_buf(),
                fs,
            });
        }
        let fail = |source| PreflightError::OutputNotWritable {
            dir: dir.to_path_buf(),
            source,
        };
        for name in reports {
            let file = dir.join(name);
            if !file.exists() {
                continue;
            }
            if !overwrite {
                return Err(PreflightError::OutputHoldsRun {
                    dir: dir.to_path_buf(),
                    file: (*name).to_string(),
                });
            }
            fs::remove_file(&file).map_err(fail)?;
        }
        let made_from = dir
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .last()
            .map(Path::to_path_buf);
        fs::create_dir_all(dir).map_err(fail)?;
        let output = Self {
            path: dir.to_path_buf(),
            made_from,
            kept: false,
        };
        let probe = dir.join(".profiler-write-test");
        fs::write(&probe, b"").map_err(fail)?;
        fs::remove_file(&probe).map_err(fail)?;
        Ok(output)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The capture is under way: the directory stays whatever happens next.
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Some(top) = &self.made_from {
            // Only what we made, and only while it holds nothing.
            let mut dir = self.path.as_path();
            loop {
                if fs::remove_dir(dir).is_err() || dir == top {
                    break;
                }
                match dir.parent() {
                    Some(parent) => dir = parent,
                    None => break,
                }
            }
        }
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted, mounting it ourselves if it is not; returns its path.
pub fn ensure_tracefs() -> Result<PathBuf, PreflightError> {
    ensure_tracefs_at(Path::new(TRACEFS))
}

fn ensure_tracefs_at(path: &Path) -> Result<PathBuf, PreflightError> {
    if path.join("events").is_dir() {
        return Ok(path.to_path_buf());
    }
    let output = Command::new("mount")
        .args(["-t", "tracefs", "tracefs"])
        .arg(path)
        .output()
        .map_err(|source| PreflightError::Tracefs { source })?;
    if output.status.success() && path.join("events").is_dir() {
        log::info!("mounted tracefs at {}", path.display());
        return Ok(path.to_path_buf());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(PreflightError::Tracefs {
        source: io::Error::other(stderr),
    })
}

/// Sleeps up to `timeout` on a pidfd; true if its process has exited. A signal ends the wait
/// early (EINTR), so Ctrl-C is handled within one tick.
pub fn exited(pidfd: &std::os::fd::OwnedFd, timeout: std::time::Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
        && fds[0].revents().contains(PollFlags::IN)
}

/// CPU time (user + system) of every thread of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm: utime and stime are the 14th and 15th overall.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    Some(ticks as f64 / hz)
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn default_output_dir(target: &Target, at: jiff::Timestamp) -> PathBuf {
    let comm: String = target
        .comm
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from("results").join(format!(
        "{comm}-{}-{}",
        target.pid,
        at.strftime("%Y%m%dT%H%M%SZ")
    ))
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert!(has_bpf_caps(effective_caps(root).unwrap()));
        let none = "CapEff:\t0000000000000000\n";
        assert!(!has_bpf_caps(effective_caps(none).unwrap()));
        let bpf_only = 1u64 << CAP_BPF;
        assert!(!has_bpf_caps(bpf_only));
        assert!(has_bpf_caps(bpf_only | 1 << CAP_PERFMON));
    }

    #[test]
    fn missing_pid_and_threads_are_not_targets() {
        assert!(matches!(
            check_target(u32::MAX - 1),
            Err(PreflightError::PidNotFound { .. })
        ));
        let me = check_target(std::process::id()).expect("own pid");
        assert!(!me.comm.is_empty());
        assert_eq!(me.exe, std::env::current_exe().ok());
        // A live thread of ours has a /proc entry but is not a process.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            done_rx.recv().ok();
        });
        let tid = rx.recv().unwrap();
        assert!(Path::new(&format!("/proc/{tid}")).exists());
        assert!(matches!(
            check_target(tid),
            Err(PreflightError::PidNotFound { .. })
        ));
        done_tx.send(()).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn output_dir_must_be_writable_storage() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        let mut out = OutputDir::prepare(&dir, &["summary.json"], false).expect("creatable");
        out.keep();
        drop(out);
        assert!(dir.is_dir());
        let file = root.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        // A path under a regular file can never be created.
        let err = OutputDir::prepare(&file.join("sub"), &[], false).unwrap_err();
        assert!(err.to_string().contains("cannot write into"), "{err}");
        for proc in ["/proc/sys", "/proc/sys/new-dir", "/sys/kernel"] {
            let err = OutputDir::prepare(Path::new(proc), &[], false).unwrap_err();
            assert!(
                matches!(err, PreflightError::OutputNotStorage { .. }),
                "{proc}: {err}"
            );
        }
    }

    /// A capture that fails before writing leaves no directory it made behind; one it did
    /// not make stays.
    #[test]
    fn a_failed_capture_leaves_no_directory_it_made() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("results/run-1");
        drop(OutputDir::prepare(&dir, &[], false).unwrap());
        assert!(!root.path().join("results").exists());
        fs::create_dir_all(&dir).unwrap();
        drop(OutputDir::prepare(&dir, &[], false).unwrap());
        assert!(dir.is_dir(), "it was there before");
    }

    /// An earlier run's reports are refused, or removed with --overwrite; other files stay.
    #[test]
    fn an_earlier_run_is_not_mixed_with_a_new_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        fs::write(dir.join("summary.json"), "{}").unwrap();
        fs::write(dir.join("offcpu.svg"), "<svg/>").unwrap();
        fs::write(dir.join("load.json"), "{}").unwrap();
        let reports = ["summary.json", "offcpu.svg", "cpu.svg"];
        let err = OutputDir::prepare(dir, &reports, false).unwrap_err();
        assert!(
            matches!(err, PreflightError::OutputHoldsRun { .. })
                && err.to_string().contains("--overwrite"),
            "{err}"
        );
        OutputDir::prepare(dir, &reports, true).unwrap().keep();
        assert!(!dir.join("summary.json").exists() && !dir.join("offcpu.svg").exists());
        assert!(dir.join("load.json").exists(), "not a report of ours");
    }

    #[test]
    fn kernel_threads_have_no_user_space() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0";
        assert!(is_kernel_thread(kthreadd));
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(!is_kernel_thread(&own));
        if Path::new("/proc/2/stat").exists() {
            assert!(matches!(
                check_target(2),
                Err(PreflightError::KernelThread { .. })
            ));
        }
    }

    #[test]
    fn own_usage() {
        let before = cpu_seconds(std::process::id()).unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_seconds(std::process::id()).unwrap() >= before);
        assert!(rss_kb(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn tracefs_error_says_what_to_do() {
        let err = PreflightError::Tracefs {
            source: io::Error::other("permission denied"),
        };
        assert!(
            err.to_string()
                .contains("mount -t tracefs tracefs /sys/kernel/tracing")
        );
    }
}
