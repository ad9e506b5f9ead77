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
    #[error("output directory {} is not writable: choose another with --output", dir.display())]
    OutputNotWritable {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
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

/// Creates `dir` if needed and proves we can write into it.
pub fn prepare_output(dir: &Path) -> Result<(), PreflightError> {
    let fail = |source| PreflightError::OutputNotWritable {
        dir: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".profiler-write-test");
    fs::write(&probe, b"").map_err(fail)?;
    fs::remove_file(&probe).map_err(fail)?;
    Ok(())
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

/// CPU time (user + system) of every thread of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm: utime and stime are the 14th and 15th overall.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
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
    fn output_dir_must_be_writable() {
        let dir = std::env::temp_dir().join(format!("profiler-preflight-{}", std::process::id()));
        prepare_output(&dir.join("nested")).expect("creatable");
        let file = dir.join("a-file");
        fs::write(&file, b"x").unwrap();
        // A path under a regular file can never be created.
        let err = prepare_output(&file.join("sub")).unwrap_err();
        assert!(err.to_string().contains("not writable"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
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
