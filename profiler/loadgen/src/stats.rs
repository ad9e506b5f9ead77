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

use super::report::{CloseExample, Percentiles};

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
    /// Connecting failed (a server closing an established connection is counted apart).
    Connect,
    /// No reply within the timeout.
    Timeout,
    /// The server's bytes made no sense, or it said ours made none.
    Protocol,
}

/// Counters shared by every client task. Every scheduled send time ends in exactly one of
/// `replies`, `timed_out`, `unanswered`, `cut_by_close`, `unsent` and `unsent_while_closed`.
#[derive(Debug, Default)]
pub struct Live {
    /// Send times before the end of the run (or the stop), counted as each client finishes.
    pub scheduled: AtomicU64,
    pub sent: AtomicU64,
    pub replies: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Requests that got no reply within the timeout.
    pub timed_out: AtomicU64,
    /// Send times that passed while the client had no connection for a reason of its own side:
    /// a failed connect, a connection it dropped (timeout, protocol error), a refused login.
    pub unsent: AtomicU64,
    /// Send times that passed while the client was away because the server had closed its
    /// connection (or asked it to reconnect elsewhere).
    pub unsent_while_closed: AtomicU64,
    /// Requests in flight when the server closed their connection.
    pub cut_by_close: AtomicU64,
    /// Of `cut_by_close` and `unsent_while_closed`, those lost to a close the protocol did not
    /// announce: these count as failures.
    pub lost_to_closes: AtomicU64,
    /// Requests still waiting when the run was cut short, or whose reply we could not read.
    pub unanswered: AtomicU64,
    /// Replies that came after their request had already timed out.
    pub late_replies: AtomicU64,
    /// Replies timed without the kernel's receive stamp: to our read of them instead.
    pub unstamped: AtomicU64,
    /// Of the replies with a receive stamp, those whose request the kernel gave no send stamp
    /// for: timed from our write call instead.
    pub send_unstamped: AtomicU64,
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub connections: AtomicU64,
    pub peak_connections: AtomicU64,
    /// Connections established, reconnections included.
    pub established: AtomicU64,
    /// Clients (miners) that connected at least once.
    pub clients_connected: AtomicU64,
    /// Established connections the server ended (closed, or asked us to leave).
    pub closed_by_server: AtomicU64,
    /// Of those, the ones the protocol did not announce: stratum with no `client.reconnect`
    /// first, HTTP with a request in flight.
    pub closed_unexpectedly: AtomicU64,
    /// `client.reconnect` messages received.
    pub reconnect_requests: AtomicU64,
    /// Of those, the ones naming a place off loopback, which we do not follow.
    pub reconnects_not_followed: AtomicU64,
}

impl Live {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Distinct things a server said last before closing, kept for the report with their counts.
pub const CLOSE_EXAMPLES: usize = 5;
/// Longest example kept, in characters.
const CLOSE_EXAMPLE_CHARS: usize = 200;

/// Everything the clients record into, shared through an `Arc`.
#[derive(Debug)]
pub struct Recorder {
    pub live: Live,
    close_examples: Mutex<Vec<CloseExample>>,
    /// The last `mining.set_difficulty` seen, for the note on a run with no accepted share.
    difficulty: Mutex<Option<f64>>,
    latency: Mutex<Histogram<u64>>,
    /// The same replies timed from when the request left, without the sender's own lateness.
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
            close_examples: Mutex::new(Vec::new()),
            difficulty: Mutex::new(None),
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

    /// A request that got no reply within the timeout.
    pub fn timed_out(&self) {
        Live::add(&self.live.timed_out, 1);
        self.error(ErrorClass::Timeout);
    }

    /// The server ended an established connection; `last` is the last thing it said before.
    pub fn closed_by_server(&self, expected: bool, last: Option<&str>) {
        Live::add(&self.live.closed_by_server, 1);
        if !expected {
            Live::add(&self.live.closed_unexpectedly, 1);
        }
        let said = match last {
            Some(line) => {
                let line = line.trim();
                let mut short: String = line.chars().take(CLOSE_EXAMPLE_CHARS).collect();
                if short.len() < line.len() {
                    short.push('…');
                }
                short
            }
            None => "(nothing received before the close)".to_string(),
        };
        let mut examples = self
            .close_examples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(example) = examples.iter_mut().find(|e| e.last == said) {
            example.closes += 1;
        } else if examples.len() < CLOSE_EXAMPLES {
            examples.push(CloseExample {
                last: said,
                closes: 1,
            });
        }
    }

    /// `n` requests in flight when the server closed their connection.
    pub fn cut_by_close(&self, n: u64, expected: bool) {
        Live::add(&self.live.cut_by_close, n);
        if !expected {
            Live::add(&self.live.lost_to_closes, n);
        }
    }

    /// `n` send times passed while away after a server close.
    pub fn unsent_while_closed(&self, n: u64, expected: bool) {
        Live::add(&self.live.unsent_while_closed, n);
        if !expected {
            Live::add(&self.live.lost_to_closes, n);
        }
    }

    pub fn close_examples(&self) -> Vec<CloseExample> {
        self.close_examples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_difficulty(&self, difficulty: f64) {
        *self
            .difficulty
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(difficulty);
    }

    pub fn difficulty(&self) -> Option<f64> {
        *self
            .difficulty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

    #[test]
    fn closes_keep_a_few_short_examples_and_split_the_lost_requests() {
        let recorder = Recorder::default();
        recorder.closed_by_server(true, Some("{\"method\":\"client.reconnect\"}\n"));
        recorder.closed_by_server(false, None);
        let long = "x".repeat(1000);
        for _ in 0..10 {
            recorder.closed_by_server(false, Some(&long));
        }
        recorder.cut_by_close(3, true);
        recorder.cut_by_close(2, false);
        recorder.unsent_while_closed(4, false);
        let live = &recorder.live;
        assert_eq!(Live::get(&live.closed_by_server), 12);
        assert_eq!(Live::get(&live.closed_unexpectedly), 11);
        assert_eq!(Live::get(&live.cut_by_close), 5);
        assert_eq!(Live::get(&live.unsent_while_closed), 4);
        assert_eq!(Live::get(&live.lost_to_closes), 6);
        for n in 0..10 {
            recorder.closed_by_server(false, Some(&format!("HTTP 50{n}")));
        }
        let examples = recorder.close_examples();
        assert_eq!(examples.len(), CLOSE_EXAMPLES, "bounded");
        assert_eq!(examples[0].last, "{\"method\":\"client.reconnect\"}");
        assert_eq!(examples[1].last, "(nothing received before the close)");
        assert_eq!(examples[2].last.chars().count(), CLOSE_EXAMPLE_CHARS + 1);
        assert_eq!(
            examples[2].closes, 10,
            "the same message is counted, not repeated"
        );
        assert_eq!(examples[3].last, "HTTP 500");
    }
}
