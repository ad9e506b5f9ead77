//! Lock contention reports from the futex maps: each lock with its name, who waits on it and
//! for how long, and who wakes its waiters.

use std::{fmt::Write as _, time::Duration};

use serde::{Deserialize, Serialize};

use super::{findings::Finding, profile::named_frame};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FutexSummary {
    pub waits: u64,
    pub wakes: u64,
    /// Contended locks, most total wait first.
    pub locks: Vec<LockReport>,
}

/// How the pseudo-frame of waits or holds too short to have their stacks walked begins.
pub const UNWALKED: &str = "[unwalked: ";

/// Stacks listed per lock, waiters and wakers each.
pub const STACKS_PER_LOCK: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockStack {
    /// Root first.
    pub frames: Vec<String>,
    /// Waits (waiter stacks) or wakes (waker stacks).
    pub count: u64,
    /// Time waited from this stack; 0 for wakers.
    pub wait_us: f64,
    /// Wakers: time the lock was held while others waited, summed over the wakes from this
    /// stack (each from the later of the woken waiter's wait and the lock's previous release to
    /// a waiter, to this wake); 0 for waiters.
    #[serde(default)]
    pub held_us: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LockReport {
    pub address: String,
    pub name: String,
    /// "symbol", "heap", "stack", "file", "unknown".
    pub kind: String,
    /// "lock" when its waiters block acquiring a mutex or rwlock, "wait" when they wait on a
    /// condition variable or park (idle, not contention), "unknown" when no frame says.
    #[serde(default = "unknown_class")]
    pub class: String,
    /// Distinct threads that waited.
    pub waiters: u64,
    pub waits: u64,
    pub total_wait_us: f64,
    pub mean_wait_us: f64,
    pub max_wait_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub top_waiters: Vec<LockStack>,
    /// The lock's holders as the stacks that released it to a waiter, longest held while
    /// others waited first.
    pub top_wakers: Vec<LockStack>,
}

fn unknown_class() -> String {
    "unknown".into()
}

/// Frames that mean acquiring a lock another thread holds.
const LOCK_FRAMES: &[&str] = &[
    "pthread_mutex_",
    "__lll_lock_wait",
    "pthread_rwlock_",
    "lock_contended",
    "Mutex",
    "RwLock",
    "mutex",
    "rwlock",
];

/// Classifies a lock by its heaviest waiter stack: the frame nearest the leaf that names a
/// wait or a lock decides.
pub fn classify(frames: &[String]) -> &'static str {
    for frame in frames.iter().rev() {
        if super::idle::WAIT_FRAMES.iter().any(|p| frame.contains(p)) {
            return "wait";
        }
        if LOCK_FRAMES.iter().any(|p| frame.contains(p)) {
            return "lock";
        }
    }
    "unknown"
}

/// Locks first (contention is what the table is for), then unknowns, then waits; each by
/// total wait.
pub fn rank(class: &str) -> u8 {
    match class {
        "lock" => 0,
        "unknown" => 1,
        _ => 2,
    }
}

pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The lock table for the terminal and `locks.txt`: the first `n` locks with their stacks.
pub fn render(reports: &[LockReport], n: usize) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        let _ = writeln!(out, "no futex waits recorded");
        return out;
    }
    for (i, lock) in reports.iter().take(n).enumerate() {
        let _ = writeln!(
            out,
            "#{} {} ({}, {}, {})\n   {} waiters, {} waits, total {:.1} ms, mean {:.1} us, max {:.1} us\n   p50 {:.1} us  p90 {:.1} us  p99 {:.1} us",
            i + 1,
            lock.name,
            lock.class,
            lock.kind,
            lock.address,
            lock.waiters,
            lock.waits,
            lock.total_wait_us / 1000.0,
            lock.mean_wait_us,
            lock.max_wait_us,
            lock.p50_us,
            lock.p90_us,
            lock.p99_us
        );
        let _ = writeln!(out, "   waiters (who waits):");
        for stack in &lock.top_waiters {
            let _ = writeln!(
                out,
                "     {:>10.1} ms {:>8} waits  {}",
                stack.wait_us / 1000.0,
                stack.count,
                leaf_frames(&stack.frames, 6)
            );
        }
        // A condition variable or a park has no holder: its wakers signal work, and the time
        // before a wake is the waiter's idleness.
        let (header, line) = if lock.class == "wait" {
            (
                "wakers (who wakes its waiters; waited: from the later of the wait and the \
                 previous wake)",
                "waited",
            )
        } else {
            (
                "holders (who releases it to a waiter)",
                "held while others waited",
            )
        };
        let _ = writeln!(out, "   {header}:");
        if lock.top_wakers.is_empty() {
            let _ = writeln!(out, "     (none seen)");
        }
        for stack in &lock.top_wakers {
            let _ = writeln!(
                out,
                "     {:>10.1} ms {line}, {:>8} wakes  {}",
                stack.held_us / 1000.0,
                stack.count,
                leaf_frames(&stack.frames, 6)
            );
        }
        out.push('\n');
    }
    out
}

/// The digest's line for the most waited-for lock, when it matters; condition variables and
/// parks are idleness, not locks. It names the lock's top holder: the stack that kept its
/// waiters waiting longest.
pub fn finding(locks: &[LockReport], duration: Duration) -> Option<Finding> {
    let lock = locks.iter().find(|l| l.class == "lock")?;
    let covered_us = duration.as_secs_f64() * 1e6 * lock.waiters.max(1) as f64;
    let share = lock.total_wait_us / covered_us.max(1.0);
    // A lock that makes its slowest waits take milliseconds matters to a latency-sensitive
    // server however small its share of the threads' time.
    let impact = (share.min(1.0) * 0.9).max(if lock.p99_us >= 1000.0 { 0.3 } else { 0.0 });
    if impact < 0.01 {
        return None;
    }
    let holder = lock
        .top_wakers
        .iter()
        .find(|w| !w.frames.iter().any(|f| f.starts_with(UNWALKED)))
        .map(|w| {
            if w.held_us > 0.0 {
                format!(
                    ", held longest by {} ({:.0} ms while others waited)",
                    named_frame(&w.frames),
                    w.held_us / 1000.0
                )
            } else {
                format!(", released most by {}", named_frame(&w.frames))
            }
        })
        .unwrap_or_default();
    Some(Finding {
        family: "futex".into(),
        subject: format!("lock {}", lock.name),
        impact,
        what: format!(
            "lock {}: {:.0} ms waited by {} threads over {:.0}s (p99 wait {:.1} ms){holder}",
            lock.name,
            lock.total_wait_us / 1000.0,
            lock.waiters,
            duration.as_secs_f64(),
            lock.p99_us / 1000.0
        ),
        file: "locks.txt".into(),
    })
}

/// The last `n` frames, leaf last, for a one-line stack.
pub fn leaf_frames(frames: &[String], n: usize) -> String {
    let start = frames.len().saturating_sub(n);
    let mut line = if start > 0 {
        "…;".to_string()
    } else {
        String::new()
    };
    line.push_str(&frames[start..].join(";"));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, total_us: f64) -> LockReport {
        LockReport {
            address: "0x10".into(),
            name: name.into(),
            kind: "symbol".into(),
            class: "lock".into(),
            waiters: 4,
            waits: 100,
            total_wait_us: total_us,
            mean_wait_us: total_us / 100.0,
            max_wait_us: 1500.0,
            p50_us: 900.0,
            p90_us: 1100.0,
            p99_us: 1400.0,
            top_waiters: vec![LockStack {
                frames: vec![
                    "main".into(),
                    "worker_loop".into(),
                    "pthread_mutex_lock".into(),
                ],
                count: 100,
                wait_us: total_us,
                held_us: 0.0,
            }],
            top_wakers: vec![],
        }
    }

    #[test]
    fn renders_locks_with_stacks() {
        let text = render(&[report("g_hot_lock", 95_000.0), report("other", 10.0)], 1);
        assert!(
            text.starts_with("#1 g_hot_lock (lock, symbol, 0x10)"),
            "{text}"
        );
        assert!(text.contains("4 waiters, 100 waits, total 95.0 ms"));
        assert!(text.contains("main;worker_loop;pthread_mutex_lock"));
        assert!(text.contains("(none seen)"));
        assert!(!text.contains("other"), "only the first lock: {text}");
        assert_eq!(render(&[], 5), "no futex waits recorded\n");
    }

    #[test]
    fn classifies_by_the_frame_nearest_the_leaf() {
        let f = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            classify(&f(&[
                "main",
                "worker_loop",
                "pthread_mutex_lock",
                "__lll_lock_wait"
            ])),
            "lock"
        );
        assert_eq!(
            classify(&f(&[
                "main",
                "handle_share",
                "std::sync::poison::mutex::Mutex<T>::lock",
                "std::sys::sync::mutex::futex::Mutex::lock_contended",
            ])),
            "lock"
        );
        // A condvar takes its mutex internally; the wait is what the thread is doing.
        assert_eq!(
            classify(&f(&[
                "tokio::runtime::park::Inner::park",
                "std::sync::poison::condvar::Condvar::wait",
                "pthread_mutex_lock",
            ])),
            "lock",
            "the leafmost frame decides"
        );
        assert_eq!(
            classify(&f(&[
                "worker",
                "tokio::runtime::park::Inner::park",
                "std::sync::poison::condvar::Condvar::wait"
            ])),
            "wait"
        );
        assert_eq!(classify(&f(&["main", "pthread_cond_wait"])), "wait");
        assert_eq!(classify(&f(&["main", "0x1234"])), "unknown");
    }

    #[test]
    fn the_finding_names_the_longest_holder() {
        let holder = |frames: &[&str], count, held_us| LockStack {
            frames: frames.iter().map(|f| f.to_string()).collect(),
            count,
            wait_us: 0.0,
            held_us,
        };
        let mut lock = report("SHARE_LOG", 900_000.0);
        lock.top_wakers = vec![
            holder(
                &["stall_thread", "stall_loop", "pthread_mutex_unlock"],
                90,
                1_350_000.0,
            ),
            holder(
                &["worker", "Session::submit", "pthread_mutex_unlock"],
                5000,
                40_000.0,
            ),
        ];
        let f = finding(&[lock.clone()], Duration::from_secs(30)).unwrap();
        assert!(
            f.what
                .ends_with(", held longest by stall_loop (1350 ms while others waited)"),
            "{}",
            f.what
        );
        assert_eq!(f.subject, "lock SHARE_LOG");
        let text = render(&[lock.clone()], 1);
        assert!(
            text.contains("holders (who releases it to a waiter):\n         1350.0 ms held while others waited,       90 wakes  stall_thread;stall_loop;pthread_mutex_unlock"),
            "{text}"
        );
        // Waits that all began before the attach leave no held time: the releaser stands in.
        lock.top_wakers.iter_mut().for_each(|w| w.held_us = 0.0);
        let f = finding(&[lock], Duration::from_secs(30)).unwrap();
        assert!(
            f.what.ends_with(", released most by stall_loop"),
            "{}",
            f.what
        );
        // Idle waits are no finding, and have wakers, not holders.
        let mut park = report("park", 900_000.0);
        park.class = "wait".into();
        park.top_wakers = vec![holder(&["worker", "unpark"], 3, 12_000_000.0)];
        let text = render(&[park.clone()], 1);
        assert!(
            text.contains(
                "previous wake):\n        12000.0 ms waited,        3 wakes  worker;unpark"
            ),
            "{text}"
        );
        assert_eq!(finding(&[park], Duration::from_secs(30)), None);
    }

    #[test]
    fn leaf_frames_elide_the_root() {
        let frames: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(leaf_frames(&frames, 2), "…;b;c");
        assert_eq!(leaf_frames(&frames, 5), "a;b;c");
    }
}
