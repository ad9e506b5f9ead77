//! A stratum v1 miner that does not mine: it subscribes, authorizes, waits for work, then submits
//! shares with random nonces on an open-loop schedule, and times every `mining.submit` from its
//! scheduled send time to its reply line.

use std::{
    collections::{BTreeMap, HashSet},
    io,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::{
    client::{
        Plan, RECONNECT_BACKOFF, STOP_DRAIN, StopSignal, TIMER_SLACK, early, sleep_or_stop,
        sleep_until_opt, timed_from,
    },
    schedule::Schedule,
    stamped::Stamped,
    stats::{ErrorClass, Live, Outcome},
};

/// Longest reply line read; a pool sending more is broken.
const MAX_LINE: usize = 64 * 1024;
const SUBSCRIBE_ID: u64 = 1;
const AUTHORIZE_ID: u64 = 2;

/// Who the miners say they are.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Worker names are `user.0`, `user.1`, ...
    pub user: String,
    pub password: String,
}

/// The job a miner works on.
#[derive(Debug, Clone, PartialEq)]
struct Work {
    job_id: String,
    ntime: String,
}

impl Work {
    fn from_notify(params: &Value) -> Option<Self> {
        Some(Self {
            job_id: params.get(0)?.as_str()?.to_string(),
            ntime: params.get(7)?.as_str()?.to_string(),
        })
    }
}

/// How a connection ended.
enum Ended {
    /// The schedule ran out (or a stop came) and every reply is in or accounted for.
    Done,
    /// The connection broke; count a connect error and reconnect.
    Dropped,
    /// The connection is no use, its error already counted; reconnect.
    Broken,
    /// The pool refused us for good (subscribe or authorize failed).
    Refused,
}

/// One miner: connects at its ramp-up slot, submits until the plan ends, reconnects when the
/// pool drops it.
pub async fn miner(
    plan: Arc<Plan>,
    index: usize,
    credentials: Arc<Credentials>,
    mut stop: StopSignal,
) {
    let mut miner = Miner {
        worker: format!("{}.{index}", credentials.user),
        credentials,
        rng: SmallRng::from_rng(&mut rand::rng()),
        extranonce2: 0,
        schedule: None,
        plan,
    };
    if !sleep_or_stop(miner.plan.start_of(index), &mut stop).await {
        return;
    }
    let recorder = miner.plan.recorder.clone();
    let mut ever_connected = false;
    while Instant::now() < miner.plan.end && !stop.is_stopped() {
        let began = Instant::now();
        let connected =
            tokio::time::timeout(miner.plan.timeout, TcpStream::connect(miner.plan.addr)).await;
        let ended = match connected {
            Ok(Ok(stream)) => {
                recorder.connected(began.elapsed(), !ever_connected);
                ever_connected = true;
                let ended = miner.session(stream, began, &mut stop).await;
                recorder.disconnected();
                ended
            }
            Ok(Err(_)) | Err(_) => Ended::Dropped,
        };
        match ended {
            Ended::Done | Ended::Refused => return,
            Ended::Dropped | Ended::Broken => {
                if matches!(ended, Ended::Dropped) {
                    recorder.error(ErrorClass::Connect);
                }
                let retry = (Instant::now() + RECONNECT_BACKOFF).min(miner.plan.end);
                if !sleep_or_stop(retry, &mut stop).await {
                    return;
                }
            }
        }
    }
}

struct Miner {
    plan: Arc<Plan>,
    credentials: Arc<Credentials>,
    worker: String,
    rng: SmallRng,
    /// Rolled for every share (across reconnections too), so no two shares repeat.
    extranonce2: u64,
    /// Made at the first connection; send times missed while disconnected are skipped.
    schedule: Option<Schedule>,
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    scheduled: Instant,
    /// When its write began, on both clocks (the wall clock is what receive timestamps use),
    /// and when the write returned.
    sent: Instant,
    sent_wall: SystemTime,
    written_wall: SystemTime,
    deadline: Instant,
}

impl InFlight {
    /// From the write to the reply's arrival (`at`, the kernel's receive stamp). On loopback the
    /// server's socket has the bytes before our write returns, unless softirq work was deferred,
    /// so the write's return is the better start: the write's own way through the stack is not
    /// the server's time. But a reply stamped before that return means we were preempted on the
    /// way out (the woken server ran on our CPU and answered): then the write's start.
    fn sent_latency(&self, at: SystemTime) -> Duration {
        at.duration_since(self.written_wall)
            .or_else(|_| at.duration_since(self.sent_wall))
            .unwrap_or_default()
    }
}

/// Requests in flight by id.
type Outstanding = BTreeMap<u64, InFlight>;

impl Miner {
    async fn session(&mut self, stream: TcpStream, began: Instant, stop: &mut StopSignal) -> Ended {
        let recorder = self.plan.recorder.clone();
        if stream.set_nodelay(true).is_err() {
            return Ended::Dropped;
        }
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(Stamped::new(read));
        let mut line = Vec::with_capacity(1024);

        // Handshake: subscribe and authorize together, then wait for both replies and a job.
        let hello = format!(
            "{}\n{}\n",
            json!({"id": SUBSCRIBE_ID, "method": "mining.subscribe", "params": ["profiler-load/1.0"]}),
            json!({"id": AUTHORIZE_ID, "method": "mining.authorize",
                   "params": [self.worker, self.credentials.password]}),
        );
        if write.write_all(hello.as_bytes()).await.is_err() {
            return Ended::Dropped;
        }
        let deadline = Instant::now() + self.plan.timeout;
        let mut extranonce2_len = None;
        let mut authorized = false;
        let mut work = None;
        while extranonce2_len.is_none() || !authorized || work.is_none() {
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline.into(), read_line(&mut reader, &mut line)) => read,
                () = stop.stopped() => return Ended::Done,
            };
            let message = match read {
                Err(_) => {
                    recorder.error(ErrorClass::Timeout);
                    return Ended::Broken;
                }
                Ok(Err(_)) | Ok(Ok(false)) => return Ended::Dropped,
                Ok(Ok(true)) => serde_json::from_slice::<Value>(&line),
            };
            line.clear();
            let Ok(message) = message else {
                recorder.error(ErrorClass::Protocol);
                continue;
            };
            match message.get("id").and_then(Value::as_u64) {
                Some(SUBSCRIBE_ID) => {
                    match message["result"]
                        .get(2)
                        .and_then(Value::as_u64)
                        .filter(|&n| (1..=32).contains(&n))
                    {
                        Some(n) => extranonce2_len = Some(n as usize),
                        None => {
                            recorder.error(ErrorClass::Protocol);
                            return Ended::Refused;
                        }
                    }
                }
                Some(AUTHORIZE_ID) => {
                    if message["result"] != Value::Bool(true) {
                        recorder.error(ErrorClass::Protocol);
                        return Ended::Refused;
                    }
                    authorized = true;
                }
                _ => {
                    if message["method"] == "mining.notify" {
                        work = Work::from_notify(&message["params"]).or(work);
                    }
                }
            }
        }
        let (Some(extranonce2_len), Some(mut work)) = (extranonce2_len, work) else {
            return Ended::Dropped;
        };
        let ready = Instant::now();
        recorder.handshake(ready - began);

        let phase = self.plan.phase(&mut self.rng);
        let plan = &self.plan;
        let schedule = self
            .schedule
            .get_or_insert_with(|| Schedule::new(ready + phase, plan.interval, plan.end));
        Live::add(&recorder.live.missed, schedule.skip_until(ready));

        let mut outstanding = Outstanding::new();
        let mut timed_out: HashSet<u64> = HashSet::new();
        let mut next_id = AUTHORIZE_ID + 1;
        let mut drain_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if drain_until.is_some_and(|until| now >= until) {
                Live::add(&recorder.live.unanswered, outstanding.len() as u64);
                return Ended::Done;
            }
            let next_send = self.schedule.as_ref().and_then(Schedule::peek);
            if next_send.is_none() && outstanding.is_empty() {
                return Ended::Done;
            }
            // Ids rise with send time and every deadline is send time + timeout: the first
            // entry expires first.
            let next_deadline = outstanding
                .first_key_value()
                .map(|(_, request)| request.deadline);
            tokio::select! {
                biased;
                () = stop.stopped(), if drain_until.is_none() => {
                    if let Some(schedule) = self.schedule.as_mut() {
                        schedule.stop(now);
                    }
                    drain_until = Some(now + STOP_DRAIN);
                }
                read = read_line(&mut reader, &mut line) => {
                    let received = Instant::now();
                    match read {
                        Ok(true) => {}
                        Ok(false) | Err(_) => {
                            Live::add(&recorder.live.unanswered, outstanding.len() as u64);
                            return Ended::Dropped;
                        }
                    }
                    let arrived = reader.get_ref().last_arrival();
                    self.on_line(&line, (received, arrived), &mut outstanding, &mut timed_out, &mut work);
                    line.clear();
                }
                () = sleep_until_opt(next_send.map(early)) => {
                    let mut batch = String::new();
                    let mut ids = Vec::new();
                    let schedule = self.schedule.as_mut();
                    let Some(schedule) = schedule else { continue };
                    // Every send time already due goes now, each keeping its own scheduled time.
                    let sending = Instant::now();
                    while let Some(at) = schedule.due(sending + TIMER_SLACK) {
                        let id = next_id;
                        next_id += 1;
                        self.extranonce2 += 1;
                        batch.push_str(&submit_line(id, &self.worker, &work, self.extranonce2, extranonce2_len, self.rng.random()));
                        ids.push((id, timed_from(at, sending)));
                    }
                    let sent_wall = SystemTime::now();
                    if write.write_all(batch.as_bytes()).await.is_err() {
                        Live::add(&recorder.live.unanswered, (outstanding.len() + ids.len()) as u64);
                        return Ended::Dropped;
                    }
                    let written_wall = SystemTime::now();
                    let deadline = Instant::now() + self.plan.timeout;
                    Live::add(&recorder.live.sent, ids.len() as u64);
                    outstanding.extend(ids.into_iter().map(|(id, scheduled)| {
                        (id, InFlight { scheduled, sent: sending, sent_wall, written_wall, deadline })
                    }));
                }
                () = sleep_until_opt(next_deadline) => {
                    let now = Instant::now();
                    while let Some(entry) = outstanding.first_entry() {
                        if entry.get().deadline > now {
                            break;
                        }
                        timed_out.insert(*entry.key());
                        entry.remove();
                        recorder.error(ErrorClass::Timeout);
                    }
                }
            }
        }
    }

    /// A reply to a submit, or a push from the pool.
    fn on_line(
        &mut self,
        line: &[u8],
        // When we read the line, and when its bytes arrived if the kernel said.
        received: (Instant, Option<SystemTime>),
        outstanding: &mut Outstanding,
        timed_out: &mut HashSet<u64>,
        work: &mut Work,
    ) {
        let recorder = &self.plan.recorder;
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            recorder.error(ErrorClass::Protocol);
            return;
        };
        if let Some(method) = message.get("method").and_then(Value::as_str) {
            if method == "mining.notify" {
                match Work::from_notify(&message["params"]) {
                    Some(next) => *work = next,
                    None => recorder.error(ErrorClass::Protocol),
                }
            }
            // set_difficulty and other pushes change nothing for random nonces.
            return;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            recorder.error(ErrorClass::Protocol);
            return;
        };
        match outstanding.remove(&id) {
            Some(request) => {
                let reason;
                let outcome = if message["result"] == Value::Bool(true) {
                    Outcome::Accepted
                } else {
                    match rejection(&message["error"]) {
                        Some(why) => {
                            reason = why;
                            Outcome::Rejected(&reason)
                        }
                        None => Outcome::Protocol,
                    }
                };
                let (read_at, arrived) = received;
                let sent_latency = match arrived {
                    Some(at) => request.sent_latency(at),
                    None => {
                        // No kernel stamp: up to our read, which adds our own wake-up delay.
                        Live::add(&recorder.live.unstamped, 1);
                        read_at.saturating_duration_since(request.sent)
                    }
                };
                recorder.reply(
                    read_at.saturating_duration_since(request.scheduled),
                    sent_latency,
                    outcome,
                );
            }
            None if timed_out.remove(&id) => Live::add(&recorder.live.late_replies, 1),
            // A second reply to one request, or one to nothing we sent.
            None => recorder.error(ErrorClass::Protocol),
        }
    }
}

/// Why the pool refused a share, by the stratum error codes; `None` when the error says our
/// request itself was malformed (a JSON-RPC error), which is a protocol error.
fn rejection(error: &Value) -> Option<String> {
    let code = error
        .get(0)
        .or_else(|| error.get("code"))
        .and_then(Value::as_i64);
    Some(match code {
        Some(20) => "other".to_string(),
        Some(21) => "stale".to_string(),
        Some(22) => "duplicate".to_string(),
        Some(23) => "low-difficulty".to_string(),
        Some(24) => "unauthorized".to_string(),
        Some(25) => "not-subscribed".to_string(),
        Some(code) if code < 0 => return None,
        Some(code) => format!("code {code}"),
        None if error.is_null() => "refused".to_string(),
        None => return None,
    })
}

fn submit_line(
    id: u64,
    worker: &str,
    work: &Work,
    extranonce2: u64,
    len: usize,
    nonce: u32,
) -> String {
    let bytes = extranonce2.to_be_bytes();
    let mut hex = String::with_capacity(len * 2);
    for i in 0..len {
        // Right-aligned: the counter's low bytes, zero-padded on the left.
        let byte = (i + 8)
            .checked_sub(len)
            .and_then(|at| bytes.get(at))
            .copied()
            .unwrap_or(0);
        hex.push_str(&format!("{byte:02x}"));
    }
    let mut line = json!({
        "id": id,
        "method": "mining.submit",
        "params": [worker, work.job_id, hex, work.ntime, format!("{nonce:08x}")],
    })
    .to_string();
    line.push('\n');
    line
}

/// Reads one line into `buf` (newline included). `Ok(false)` at end of stream. Cancel-safe:
/// a partial line stays in `buf` for the next call.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    let limit = (MAX_LINE + 1).saturating_sub(buf.len()) as u64;
    reader.take(limit).read_until(b'\n', buf).await?;
    if buf.last() == Some(&b'\n') {
        Ok(true)
    } else if buf.len() > MAX_LINE {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "reply line too long",
        ))
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply stamped after our write returned is timed from the return; one stamped before
    /// it (we were preempted while the server answered) from the write's start.
    #[test]
    fn sent_latency_starts_at_the_write_unless_the_reply_beat_its_return() {
        let now = Instant::now();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let request = InFlight {
            scheduled: now,
            sent: now,
            sent_wall: start,
            written_wall: start + Duration::from_micros(200),
            deadline: now,
        };
        let at = |us| start + Duration::from_micros(us);
        assert_eq!(request.sent_latency(at(350)), Duration::from_micros(150));
        assert_eq!(request.sent_latency(at(150)), Duration::from_micros(150));
        // A clock step back leaves a zero, not a panic or a wrap.
        assert_eq!(
            request.sent_latency(at(0) - Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn submits_carry_the_job_and_a_rolled_extranonce2() {
        let work = Work {
            job_id: "1f".into(),
            ntime: "6560a1b2".into(),
        };
        let line = submit_line(7, "load.3", &work, 0x0102_0304_0506, 4, 0xdead_beef);
        assert!(line.ends_with('\n'));
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({"id": 7, "method": "mining.submit",
                   "params": ["load.3", "1f", "03040506", "6560a1b2", "deadbeef"]})
        );
        let wide: Value = serde_json::from_str(&submit_line(1, "w", &work, 5, 10, 0)).unwrap();
        assert_eq!(wide["params"][2], "00000000000000000005");
    }

    #[test]
    fn rejections_by_code() {
        assert_eq!(
            rejection(&json!([21, "Job not found", null])).as_deref(),
            Some("stale")
        );
        assert_eq!(
            rejection(&json!([23, "Low difficulty share", null])).as_deref(),
            Some("low-difficulty")
        );
        assert_eq!(
            rejection(&json!({"code": 22, "message": "dup"})).as_deref(),
            Some("duplicate")
        );
        assert_eq!(
            rejection(&json!([29, "?", null])).as_deref(),
            Some("code 29")
        );
        assert_eq!(rejection(&Value::Null).as_deref(), Some("refused"));
        assert_eq!(rejection(&json!([-32602, "Invalid params", null])), None);
        assert_eq!(rejection(&json!("weird")), None);
    }

    #[test]
    fn work_comes_from_notify_params() {
        let params = json!([
            "a1",
            "00",
            "01",
            "02",
            [],
            "20000000",
            "17034219",
            "6560a1b2",
            true
        ]);
        assert_eq!(
            Work::from_notify(&params),
            Some(Work {
                job_id: "a1".into(),
                ntime: "6560a1b2".into()
            })
        );
        assert_eq!(Work::from_notify(&json!(["a1"])), None);
    }
}
