//! Per-miner variable difficulty: an exponentially decaying estimate of the accepted-share rate,
//! and a retarget that moves the difficulty toward a configured rate.

use std::time::{Duration, Instant};

/// How a pool sets each miner's difficulty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VardiffConfig {
    /// Accepted shares per second the pool aims for, per miner.
    pub target_rate: f64,
    /// Time constant of the rate estimate: shares older than a few of these barely count.
    pub tau: Duration,
    /// Retarget at most this often.
    pub retarget_every: Duration,
    /// Leave the difficulty alone while the rate is within this factor of the target.
    pub tolerance: f64,
    /// Never go below this (the pool's configured difficulty) or above `max_difficulty`.
    pub min_difficulty: f64,
    pub max_difficulty: f64,
    /// One retarget changes the difficulty by at most this factor.
    pub max_step: f64,
}

impl VardiffConfig {
    /// A target of `shares_per_minute` with the usual pool settings: a one-minute estimate,
    /// retargeting at most every 30 s, by at most 4x, when off by more than 1.5x.
    pub fn new(shares_per_minute: f64, min_difficulty: f64) -> Self {
        Self {
            target_rate: shares_per_minute / 60.0,
            tau: Duration::from_secs(60),
            retarget_every: Duration::from_secs(30),
            tolerance: 1.5,
            min_difficulty,
            max_difficulty: 1e12,
            max_step: 4.0,
        }
    }
}

/// One miner's rate estimate and current difficulty.
#[derive(Debug, Clone)]
pub struct Vardiff {
    config: VardiffConfig,
    difficulty: f64,
    /// Estimated shares per second as of `updated`.
    rate: f64,
    updated: Instant,
    last_retarget: Instant,
}

impl Vardiff {
    /// Starts at `difficulty`, assuming the miner runs at the target rate: no retarget until
    /// evidence says otherwise.
    pub fn new(config: VardiffConfig, difficulty: f64, now: Instant) -> Self {
        Self {
            difficulty: difficulty.clamp(config.min_difficulty, config.max_difficulty),
            rate: config.target_rate,
            updated: now,
            last_retarget: now,
            config,
        }
    }

    pub fn difficulty(&self) -> f64 {
        self.difficulty
    }

    /// The rate estimate decayed to `now`, in shares per second.
    pub fn rate(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.rate * (-dt / self.config.tau.as_secs_f64()).exp()
    }

    /// Counts one accepted share: each adds `1/tau` to a rate that decays with `tau`, so a
    /// steady stream of `r` shares per second settles at `r`.
    pub fn record_share(&mut self, now: Instant) {
        self.rate = self.rate(now) + 1.0 / self.config.tau.as_secs_f64();
        self.updated = now;
    }

    /// A new difficulty when the rate has strayed from the target, at most once per
    /// `retarget_every`.
    pub fn retarget(&mut self, now: Instant) -> Option<f64> {
        if now.saturating_duration_since(self.last_retarget) < self.config.retarget_every {
            return None;
        }
        let rate = self.rate(now);
        let ratio = rate / self.config.target_rate;
        let tolerance = self.config.tolerance;
        if (1.0 / tolerance..=tolerance).contains(&ratio) {
            return None;
        }
        let step = ratio.clamp(1.0 / self.config.max_step, self.config.max_step);
        let next =
            (self.difficulty * step).clamp(self.config.min_difficulty, self.config.max_difficulty);
        self.last_retarget = now;
        if next == self.difficulty {
            return None;
        }
        // A real miner's share rate scales inversely with difficulty; expect that, rather than
        // let the stale estimate trigger a second step in the same direction.
        let applied = next / self.difficulty;
        self.rate = rate / applied;
        self.updated = now;
        self.difficulty = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds shares whose spacing `per_share(difficulty)` may depend on the current difficulty,
    /// as a miner of fixed hash rate behaves, for `seconds`; returns every retarget.
    fn run(
        vardiff: &mut Vardiff,
        start: Instant,
        seconds: u64,
        per_share: impl Fn(f64) -> Duration,
    ) -> Vec<f64> {
        let mut changes = Vec::new();
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(seconds) {
            t += per_share(vardiff.difficulty());
            vardiff.record_share(start + t);
            changes.extend(vardiff.retarget(start + t));
        }
        changes
    }

    #[test]
    fn steady_rate_settles_at_that_rate() {
        let start = Instant::now();
        let config = VardiffConfig::new(6.0, 1.0);
        let mut vardiff = Vardiff::new(config, 1.0, start);
        // 6/min is the target: never retargets, and the estimate converges to 0.1/s.
        let changes = run(&mut vardiff, start, 600, |_| Duration::from_secs(10));
        assert!(changes.is_empty(), "{changes:?}");
        let rate = vardiff.rate(start + Duration::from_secs(600));
        assert!((0.08..0.12).contains(&rate), "{rate}");
    }

    #[test]
    fn a_fast_miner_settles_where_it_sends_the_target_rate() {
        let start = Instant::now();
        let config = VardiffConfig::new(6.0, 1.0);
        let mut vardiff = Vardiff::new(config, 1.0, start);
        // A miner that finds 24 shares/min at difficulty 1 finds 24/d per minute at d, so the
        // pool should settle near d = 4, within its 1.5x tolerance.
        let changes = run(&mut vardiff, start, 1200, |d| {
            Duration::from_secs_f64(2.5 * d)
        });
        assert!(!changes.is_empty());
        assert!(
            changes[0] > 1.0 && changes[0] <= 4.0,
            "first step {changes:?}"
        );
        let settled = vardiff.difficulty();
        assert!(
            (4.0 / 1.5..=4.0 * 1.5).contains(&settled),
            "{settled} after {changes:?}"
        );
    }

    #[test]
    fn silence_lowers_difficulty_but_never_below_the_floor() {
        let start = Instant::now();
        let config = VardiffConfig::new(6.0, 2.0);
        let mut vardiff = Vardiff::new(config, 64.0, start);
        let later = start + Duration::from_secs(120);
        let next = vardiff
            .retarget(later)
            .expect("a silent miner is retargeted");
        assert_eq!(next, 16.0, "one step is at most 4x");
        let mut t = later;
        for _ in 0..20 {
            t += Duration::from_secs(120);
            vardiff.retarget(t);
        }
        assert_eq!(vardiff.difficulty(), 2.0);
    }

    #[test]
    fn retargets_are_rate_limited() {
        let start = Instant::now();
        let config = VardiffConfig::new(6.0, 1.0);
        let mut vardiff = Vardiff::new(config, 8.0, start);
        assert_eq!(vardiff.retarget(start + Duration::from_secs(29)), None);
        assert!(vardiff.retarget(start + Duration::from_secs(300)).is_some());
        assert_eq!(vardiff.retarget(start + Duration::from_secs(310)), None);
    }
}
