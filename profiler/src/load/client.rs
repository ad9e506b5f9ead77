//! What every client task (a miner or an HTTP connection) shares: the plan of the run, the
//! recorder, the stop signal, and a few timing helpers.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng;
use tokio::sync::watch;

use super::{schedule::ramp_offset, stats::Recorder};

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
