//! Open-loop schedules. Every request has a send time fixed in advance, and its latency counts
//! from that time, not from when it was actually written: a server that stalls makes the queued
//! requests late, and their wait shows in the latency instead of being left out (no coordinated
//! omission). Clients wake a timer tick early and time a request sent early from its actual
//! send (see `client::TIMER_SLACK`), so the timer's granularity does not inflate latencies.

use std::time::{Duration, Instant};

/// The send times `first + k * interval` that fall before `end`.
#[derive(Debug, Clone)]
pub struct Schedule {
    first: Instant,
    interval: Duration,
    end: Instant,
    next: u64,
}

impl Schedule {
    pub fn new(first: Instant, interval: Duration, end: Instant) -> Self {
        Self {
            first,
            interval: interval.max(Duration::from_micros(1)),
            end,
            next: 0,
        }
    }

    /// Computed from `first` each time, so rounding never accumulates into drift.
    fn slot(&self, k: u64) -> Option<Instant> {
        let offset = self.interval.checked_mul(u32::try_from(k).ok()?)?;
        self.first.checked_add(offset).filter(|&at| at < self.end)
    }

    /// The next send time, or `None` once the schedule has run out.
    pub fn peek(&self) -> Option<Instant> {
        self.slot(self.next)
    }

    /// Takes the next send time if it is due at `now`.
    pub fn due(&mut self, now: Instant) -> Option<Instant> {
        let at = self.peek().filter(|&at| at <= now)?;
        self.next += 1;
        Some(at)
    }

    /// Drops every slot before `now` (the miner had no connection then); returns how many.
    pub fn skip_until(&mut self, now: Instant) -> u64 {
        let mut skipped = 0;
        while self.due(now).is_some() {
            skipped += 1;
        }
        skipped
    }

    /// Send times taken so far (sent or skipped).
    pub fn taken(&self) -> u64 {
        self.next
    }

    /// No send time is at or after this.
    pub fn end(&self) -> Instant {
        self.end
    }

    /// Ends the schedule early (Ctrl-C).
    pub fn stop(&mut self, now: Instant) {
        self.end = self.end.min(now);
    }
}

/// When client `index` of `count` starts: evenly spread over the ramp-up.
pub fn ramp_offset(index: usize, count: usize, ramp_up: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    ramp_up.mul_f64(index as f64 / count as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_fixed_in_advance() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(
            t0,
            Duration::from_millis(100),
            t0 + Duration::from_millis(350),
        );
        assert_eq!(schedule.peek(), Some(t0));
        assert_eq!(schedule.due(t0), Some(t0));
        // Not due yet.
        assert_eq!(schedule.due(t0 + Duration::from_millis(50)), None);
        // Woken late (a stall): the missed slot keeps its own time, and the next is still due.
        let late = t0 + Duration::from_millis(250);
        assert_eq!(schedule.due(late), Some(t0 + Duration::from_millis(100)));
        assert_eq!(schedule.due(late), Some(t0 + Duration::from_millis(200)));
        assert_eq!(schedule.due(late), None);
        assert_eq!(schedule.peek(), Some(t0 + Duration::from_millis(300)));
        schedule.due(t0 + Duration::from_secs(1));
        assert_eq!(schedule.peek(), None, "350 ms end: slots 0..=300 only");
    }

    #[test]
    fn skipping_and_stopping() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, Duration::from_secs(1), t0 + Duration::from_secs(60));
        assert_eq!(schedule.skip_until(t0 + Duration::from_millis(4500)), 5);
        assert_eq!(schedule.peek(), Some(t0 + Duration::from_secs(5)));
        schedule.stop(t0 + Duration::from_millis(5500));
        assert_eq!(
            schedule.due(t0 + Duration::from_secs(10)),
            Some(t0 + Duration::from_secs(5))
        );
        assert_eq!(schedule.peek(), None);
        assert_eq!(schedule.taken(), 6);
        assert_eq!(schedule.end(), t0 + Duration::from_millis(5500));
    }

    #[test]
    fn ramp_spreads_starts_evenly() {
        let ramp = Duration::from_secs(10);
        assert_eq!(ramp_offset(0, 10, ramp), Duration::ZERO);
        assert_eq!(ramp_offset(5, 10, ramp), Duration::from_secs(5));
        assert!(ramp_offset(9, 10, ramp) < ramp);
        assert_eq!(ramp_offset(0, 0, ramp), Duration::ZERO);
    }
}
