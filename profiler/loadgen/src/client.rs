//! What every client task (a miner or an HTTP connection) shares: the plan of the run, the
//! recorder, the stop signal, and a few timing helpers.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng;
use tokio::sync::watch;

use super::{
    schedule::{Schedule, ramp_offset},
    stats::{Live, Recorder},
};

/// After Ctrl-C, replies still in flight get this long before they count as unanswered.
pub const STOP_DRAIN: Duration = Duration::from_secs(1);
/// Timers fire on a 1 ms wheel, so a sleep until a send time wakes up to 1 ms late. Clients
/// wake this much early instead, send what falls due within it, and time such a request from
/// its actual send; a request sent late is still timed from its scheduled time.
pub const TIMER_SLACK: Duration = Duration::from_millis(1);
/// Wait between reconnection attempts.
pub const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// The plan every client follows.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub clients: usize,
    pub start: Instant,
    /// No request is scheduled at or after this.
    pub end: Instant,
    pub ramp_up: Duration,
    /// Between one client's requests.
    pub interval: Duration,
    pub timeout: Duration,
    pub recorder: Arc<Recorder>,
}

impl Plan {
    /// When client `index` connects.
    pub fn start_of(&self, index: usize) -> Instant {
        self.start + ramp_offset(index, self.clients, self.ramp_up)
    }

    /// A random phase within one interval, so clients that connect together do not send
    /// together.
    pub fn phase(&self, rng: &mut impl Rng) -> Duration {
        self.interval.mul_f64(rng.random::<f64>())
    }
}

/// Why a client is without a connection, which decides what the send times passing meanwhile
/// count as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Away {
    /// Not connected yet, a failed connect, or a connection the client dropped itself
    /// (timeout, protocol error, refused login): `unsent`, a failure.
    Driver,
    /// The server closed the connection: `unsent_while_closed`, a failure unless the protocol
    /// announced the close (`expected`).
    ServerClosed { expected: bool },
}

/// One client's schedule, and what became of the send times it could not send.
#[derive(Debug)]
pub struct Slots {
    schedule: Option<Schedule>,
    away: Away,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            schedule: None,
            away: Away::Driver,
        }
    }
}

impl Slots {
    /// The schedule, made on first use to start at `first`: the client's first readiness plus
    /// a random phase, or its first failed attempt, so a client that never gets a connection
    /// still has its send times counted.
    pub fn ensure(&mut self, first: Instant, plan: &Plan) -> &mut Schedule {
        self.schedule
            .get_or_insert_with(|| Schedule::new(first, plan.interval, plan.end))
    }

    pub fn get(&mut self) -> Option<&mut Schedule> {
        self.schedule.as_mut()
    }

    /// Counts the send times before `now` as not sent, for the reason the client is away.
    pub fn pass(&mut self, now: Instant, recorder: &Recorder) {
        let Some(schedule) = self.schedule.as_mut() else {
            return;
        };
        let passed = schedule.skip_until(now);
        match self.away {
            Away::Driver => Live::add(&recorder.live.unsent, passed),
            Away::ServerClosed { expected } => recorder.unsent_while_closed(passed, expected),
        }
    }

    /// A connection attempt failed at `now`: the send times before it count for the reason the
    /// client was already away, the ones after for `why`.
    pub fn away(&mut self, now: Instant, why: Away, recorder: &Recorder) {
        self.pass(now, recorder);
        self.away = why;
    }

    /// A connection ended at `now` for `why`, which also takes the send times that came due
    /// while it was ending and were not sent (a `client.reconnect` drain, a reply timing out).
    pub fn left(&mut self, now: Instant, why: Away, recorder: &Recorder) {
        self.away = why;
        self.pass(now, recorder);
    }

    /// Ends the schedule at a stop (no send time after it is scheduled).
    pub fn stop(&mut self, now: Instant) {
        if let Some(schedule) = self.schedule.as_mut() {
            schedule.stop(now);
        }
    }

    /// The client is done: what is left of its schedule (to the end of the run, or to now if
    /// the run was stopped) was not sent, and all its send times join `scheduled`.
    pub fn finish(mut self, stopped: bool, recorder: &Recorder) {
        let now = Instant::now();
        if stopped {
            self.stop(now);
        }
        if let Some(schedule) = self.schedule.as_mut() {
            let end = schedule.end();
            self.pass(end, recorder);
        }
        if let Some(schedule) = &self.schedule {
            Live::add(&recorder.live.scheduled, schedule.taken());
        }
    }
}

/// Tells client tasks to wind down (Ctrl-C or the caller).
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Self(rx)
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is requested (at once if it already was); never if the sender is
    /// dropped without one.
    pub async fn stopped(&mut self) {
        if self.0.wait_for(|&stop| stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// When a request counts from: its scheduled time, or its actual send if that was earlier.
pub fn timed_from(scheduled: Instant, sending: Instant) -> Instant {
    scheduled.min(sending)
}

/// Wakes [`TIMER_SLACK`] before `at`.
pub fn early(at: Instant) -> Instant {
    at.checked_sub(TIMER_SLACK).unwrap_or(at)
}

/// Sleeps until `at`, or forever for `None`.
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at` unless a stop comes first; returns whether the sleep completed.
pub async fn sleep_or_stop(at: Instant, stop: &mut StopSignal) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(at.into()) => true,
        () = stop.stopped() => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    fn plan(interval_ms: u64, seconds: u64) -> Plan {
        let start = Instant::now();
        Plan {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            clients: 1,
            start,
            end: start + Duration::from_secs(seconds),
            ramp_up: Duration::ZERO,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_secs(1),
            recorder: Arc::new(Recorder::default()),
        }
    }

    /// Send times passed while away count by why the client was away, and the rest of the
    /// schedule at the end by the last reason: every one is counted once.
    #[test]
    fn passed_send_times_count_by_why_the_client_was_away() {
        let plan = plan(100, 10);
        let recorder = &plan.recorder;
        let live = &recorder.live;
        let t0 = plan.start;
        let ms = |n| t0 + Duration::from_millis(n);
        let mut slots = Slots::default();
        slots.pass(ms(500), recorder);
        assert_eq!(
            Live::get(&live.unsent),
            0,
            "no schedule yet, nothing passed"
        );
        slots.ensure(t0, &plan);
        // Sent 0..=4 (taken by due), then the server closed at 450 ms, unannounced.
        for _ in 0..5 {
            slots.get().unwrap().due(ms(450)).unwrap();
        }
        slots.left(ms(450), Away::ServerClosed { expected: false }, recorder);
        // The reconnect failed at 950 ms: 500..=900 are the close's, then ours.
        slots.away(ms(950), Away::Driver, recorder);
        assert_eq!(Live::get(&live.unsent_while_closed), 5);
        assert_eq!(Live::get(&live.lost_to_closes), 5);
        slots.pass(ms(1950), recorder);
        assert_eq!(Live::get(&live.unsent), 10);
        // A connection from 1950 ms, closed as announced at 2250: the send times it did not
        // take (2000..=2200, while draining) and the rest of the run are not lost.
        slots.pass(ms(1950), recorder);
        slots.left(ms(2250), Away::ServerClosed { expected: true }, recorder);
        slots.finish(false, recorder);
        assert_eq!(Live::get(&live.unsent_while_closed), 5 + 80);
        assert_eq!(Live::get(&live.lost_to_closes), 5);
        assert_eq!(Live::get(&live.scheduled), 100);
    }

    #[test]
    fn a_stop_ends_the_schedule() {
        let plan = plan(100, 10);
        let recorder = &plan.recorder;
        let mut slots = Slots::default();
        slots.ensure(plan.start, &plan);
        slots.stop(plan.start + Duration::from_millis(250));
        slots.finish(false, recorder);
        assert_eq!(Live::get(&recorder.live.scheduled), 3);
        assert_eq!(Live::get(&recorder.live.unsent), 3);
    }
}
