//! What the clients record while they run: live counters (atomics, read by the progress line)
//! and latency histograms (hdrhistogram, behind mutexes held for one `record`).

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;

use super::report::Percentiles;

/// Longest latency a histogram holds (an hour, in microseconds); longer values are clamped.
const MAX_US: u64 = 3_600_000_000;

/// How one reply to a timed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Share accepted, or HTTP 2xx.
    Accepted,
    /// Share refused by the server, or HTTP non-2xx; with the reason (`stale`, `status 400`).
    Rejected(&'a str),
    /// A reply we cannot read, or one saying our request was malformed.
    Protocol,
}

/// Error classes of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connecting failed, or the server dropped an established connection.
    Connect,
    /// No reply within the timeout.
    Timeout,
    /// The server's bytes made no sense, or it said ours made none.
    Protocol,
}

/// Counters shared by every client task.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub replies: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Send times that passed while the client had no connection.
    pub missed: AtomicU64,
    /// Requests still waiting when their connection dropped or the run was cut short.
    pub unanswered: AtomicU64,
    /// Replies that came after their request had already timed out.
    pub late_replies: AtomicU64,
    /// Replies timed without the kernel's receive stamp: to our read of them instead.
    pub unstamped: AtomicU64,
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub connections: AtomicU64,
    pub peak_connections: AtomicU64,
    /// Connections established, reconnections included.
    pub established: AtomicU64,
    /// Clients (miners) that connected at least once.
    pub clients_connected: AtomicU64,
}

impl Live {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Everything the clients record into, shared through an `Arc`.
#[derive(Debug)]
pub struct Recorder {
    pub live: Live,
    latency: Mutex<Histogram<u64>>,
    /// The same replies timed from the actual write, without the sender's own lateness.
    sent_latency: Mutex<Histogram<u64>>,
    connect: Mutex<Histogram<u64>>,
    handshake: Mutex<Histogram<u64>>,
    reasons: Mutex<BTreeMap<String, u64>>,
}

fn histogram() -> Histogram<u64> {
    // Three significant digits from 1 µs to an hour: bounds that are valid by construction.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_US)
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            live: Live::default(),
            latency: Mutex::new(histogram()),
            sent_latency: Mutex::new(histogram()),
            connect: Mutex::new(histogram()),
            handshake: Mutex::new(histogram()),
            reasons: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Recorder {
    /// One reply to a timed request, `latency` after its scheduled send time and `sent_latency`
    /// after it was actually written.
    pub fn reply(&self, latency: Duration, sent_latency: Duration, outcome: Outcome<'_>) {
        let live = &self.live;
        Live::add(&live.replies, 1);
        record(&self.latency, latency);
        record(&self.sent_latency, sent_latency);
        match outcome {
            Outcome::Accepted => Live::add(&live.accepted, 1),
            Outcome::Rejected(reason) => {
                Live::add(&live.rejected, 1);
                let mut reasons = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
                match reasons.get_mut(reason) {
                    Some(n) => *n += 1,
                    None => {
                        reasons.insert(reason.to_string(), 1);
                    }
                }
            }
            Outcome::Protocol => self.error(ErrorClass::Protocol),
        }
    }

    pub fn error(&self, class: ErrorClass) {
        let live = &self.live;
        Live::add(
            match class {
                ErrorClass::Connect => &live.connect_errors,
                ErrorClass::Timeout => &live.timeouts,
                ErrorClass::Protocol => &live.protocol_errors,
            },
            1,
        );
    }

    /// A new connection, `took` from the start of `connect` to established.
    pub fn connected(&self, took: Duration, first_for_client: bool) {
        record(&self.connect, took);
        let live = &self.live;
        Live::add(&live.established, 1);
        if first_for_client {
            Live::add(&live.clients_connected, 1);
        }
        let now = live.connections.fetch_add(1, Ordering::Relaxed) + 1;
        live.peak_connections.fetch_max(now, Ordering::Relaxed);
    }

    pub fn disconnected(&self) {
        self.live.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connect to ready-for-work (stratum: subscribed, authorized, first job in hand).
    pub fn handshake(&self, took: Duration) {
        record(&self.handshake, took);
    }

    pub fn latency(&self) -> Option<Percentiles> {
        summarize(&self.latency)
    }

    pub fn sent_latency(&self) -> Option<Percentiles> {
        summarize(&self.sent_latency)
    }

    pub fn connect_time(&self) -> Option<Percentiles> {
        summarize(&self.connect)
    }

    pub fn handshake_time(&self) -> Option<Percentiles> {
        summarize(&self.handshake)
    }

    pub fn reasons(&self) -> BTreeMap<String, u64> {
        self.reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn record(histogram: &Mutex<Histogram<u64>>, d: Duration) {
    histogram
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .saturating_record(micros(d));
}

fn summarize(histogram: &Mutex<Histogram<u64>>) -> Option<Percentiles> {
    Percentiles::from_histogram(&histogram.lock().unwrap_or_else(PoisonError::into_inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replies_by_outcome() {
        let recorder = Recorder::default();
        for ms in 1..=100 {
            recorder.reply(
                Duration::from_millis(ms),
                Duration::from_millis(ms / 2),
                Outcome::Accepted,
            );
        }
        let five = Duration::from_millis(5);
        recorder.reply(five, five, Outcome::Rejected("stale"));
        recorder.reply(five, five, Outcome::Rejected("stale"));
        recorder.reply(five, five, Outcome::Protocol);
        let live = &recorder.live;
        assert_eq!(Live::get(&live.replies), 103);
        assert_eq!(Live::get(&live.accepted), 100);
        assert_eq!(Live::get(&live.rejected), 2);
        assert_eq!(Live::get(&live.protocol_errors), 1);
        assert_eq!(recorder.reasons().get("stale"), Some(&2));
        let latency = recorder.latency().unwrap();
        assert_eq!(latency.count, 103);
        // 3 significant digits: within 0.1 % of the exact values.
        assert!((48_900..=49_100).contains(&latency.p50), "{latency:?}");
        assert!((98_900..=99_100).contains(&latency.p99), "{latency:?}");
        assert!((99_900..=100_100).contains(&latency.max), "{latency:?}");
    }

    #[test]
    fn tracks_peak_connections() {
        let recorder = Recorder::default();
        recorder.connected(Duration::from_micros(50), true);
        recorder.connected(Duration::from_micros(70), true);
        recorder.disconnected();
        recorder.connected(Duration::from_micros(60), false);
        let live = &recorder.live;
        assert_eq!(Live::get(&live.connections), 2);
        assert_eq!(Live::get(&live.peak_connections), 2);
        assert_eq!(Live::get(&live.established), 3);
        assert_eq!(Live::get(&live.clients_connected), 2);
        assert_eq!(recorder.connect_time().unwrap().count, 3);
        assert!(recorder.handshake_time().is_none());
    }
}
