//! The share log: every share outcome of every connection, behind one `static` mutex. Under
//! `--contend` a session holds it across a whole request ([`super::Session::handle_line`]) and
//! does [`ShareLog::work_until`] before letting go.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use sha2::{Digest, Sha256};

use crate::{knobs, stratum::Reject};

/// Share-log lines kept in memory.
const RECENT_SHARES: usize = 4096;

/// The pool's share log, behind the one mutex every connection takes. A `static` on purpose:
/// under `--contend` this is the hot lock, and a profiler names it by this symbol.
pub static SHARE_LOG: Mutex<ShareLog> = Mutex::new(ShareLog::new());

/// `--stall-every`'s job: holds [`SHARE_LOG`] across `millis` of work.
pub extern "C" fn stall_share_log(millis: u64) {
    let guard = share_log();
    knobs::stall_work(millis);
    drop(guard);
}

/// Locks [`SHARE_LOG`]; the log stays usable after a panic elsewhere (it holds only tallies).
pub fn share_log() -> MutexGuard<'static, ShareLog> {
    SHARE_LOG.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tallies of every share outcome, the latest lines, and a digest chaining all lines so far.
#[derive(Debug)]
pub struct ShareLog {
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
    workers: BTreeMap<String, WorkerTally>,
    recent: VecDeque<String>,
    digest: [u8; 32],
    best_difficulty: f64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct WorkerTally {
    pub accepted: u64,
    pub rejected: u64,
}

impl ShareLog {
    pub const fn new() -> Self {
        Self {
            accepted: 0,
            rejected: BTreeMap::new(),
            workers: BTreeMap::new(),
            recent: VecDeque::new(),
            digest: [0; 32],
            best_difficulty: 0.0,
        }
    }

    /// Appends one share outcome: `Ok(achieved difficulty)` or the reason it was refused.
    pub fn record(&mut self, worker: &str, job_id: &str, outcome: Result<f64, &Reject>) {
        let tally = match self.workers.get_mut(worker) {
            Some(tally) => tally,
            None => self.workers.entry(worker.to_string()).or_default(),
        };
        let line = match outcome {
            Ok(achieved) => {
                self.accepted += 1;
                tally.accepted += 1;
                self.best_difficulty = self.best_difficulty.max(achieved);
                format!("{worker} job {job_id} accepted difficulty {achieved:.6e}")
            }
            Err(reject) => {
                *self.rejected.entry(reject.kind()).or_default() += 1;
                tally.rejected += 1;
                format!("{worker} job {job_id} rejected {}", reject.kind())
            }
        };
        let mut hasher = Sha256::new();
        hasher.update(self.digest);
        hasher.update(line.as_bytes());
        self.digest = hasher.finalize().into();
        if self.recent.len() == RECENT_SHARES {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Rejections by reason (`stale`, `duplicate`, `low-difficulty`, ...).
    pub fn rejected_by_reason(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected
    }

    pub fn worker(&self, name: &str) -> Option<WorkerTally> {
        self.workers.get(name).copied()
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn best_difficulty(&self) -> f64 {
        self.best_difficulty
    }

    /// The most recent lines, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(String::as_str)
    }

    /// `--contend`'s work: keeps hashing the log's digest until `deadline`.
    pub(super) fn work_until(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            knobs::burn(&mut self.digest, left);
        }
    }
}

impl Default for ShareLog {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_log_tallies_by_worker_and_reason() {
        let mut log = ShareLog::new();
        log.record("a", "1", Ok(3.0));
        log.record("a", "1", Err(&Reject::LowDifficulty));
        log.record("b", "1", Err(&Reject::Stale));
        log.record("b", "2", Ok(9.0));
        assert_eq!(log.accepted(), 2);
        assert_eq!(log.rejected(), 2);
        assert_eq!(
            log.worker("a"),
            Some(WorkerTally {
                accepted: 1,
                rejected: 1
            })
        );
        assert_eq!(log.rejected_by_reason().get("stale"), Some(&1));
        assert_eq!(log.best_difficulty(), 9.0);
        assert_eq!(log.recent().count(), 4);
        assert!(log.recent().last().unwrap().contains("b job 2 accepted"));
    }
}
