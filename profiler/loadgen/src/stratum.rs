//! A stratum v1 miner that does not mine: it subscribes, authorizes, waits for work, then submits
//! shares with random nonces on an open-loop schedule, and times every `mining.submit` from its
//! scheduled send time to its reply line.

use std::{
    collections::{BTreeMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufRead, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::{
    client::{
        Away, Plan, RECONNECT_BACKOFF, STOP_DRAIN, Slots, StopSignal, TIMER_SLACK, early,
        sleep_or_stop, sleep_until_opt, timed_from,
    },
    stamped::Stamped,
    stats::{ErrorClass, Live, Outcome},
    wire::{self, LineRead},
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
    /// The TCP connect failed.
    ConnectFailed,
    /// The pool closed the connection, or asked us to leave with `client.reconnect` (then
    /// `reconnect` says where to and when); `last` is the last line it sent before.
    Closed {
        reconnect: Option<Reconnect>,
        last: Option<String>,
    },
    /// We dropped the connection ourselves, its error already counted (handshake timeout,
    /// unreadable stream); reconnect.
    Broken,
    /// The pool refused us for good (subscribe or authorize failed).
    Refused,
}

/// Where `client.reconnect` sends a miner, and after how long.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reconnect {
    /// `None`: the run's target.
    to: Option<SocketAddr>,
    wait: Duration,
    /// A host off loopback that the pool named: not followed, since the driver must not be
    /// steered at machines the operator did not name.
    not_followed: Option<String>,
}

/// Longest `client.reconnect` wait obeyed.
const MAX_RECONNECT_WAIT_S: f64 = 3600.0;

impl Reconnect {
    /// From `client.reconnect`'s params `[host, port, wait_seconds]`, each optional (numbers
    /// may come as strings); `current` is where the miner is connected. No host means the same
    /// host; no port, the same port; no wait, at once.
    fn from_params(params: &Value, current: SocketAddr) -> Self {
        let number = |value: Option<&Value>| {
            value.and_then(|v| v.as_f64().or_else(|| v.as_str()?.trim().parse().ok()))
        };
        let host = params
            .get(0)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|host| !host.is_empty());
        let port = number(params.get(1))
            .filter(|p| p.fract() == 0.0 && (1.0..=65535.0).contains(p))
            .map_or(current.port(), |p| p as u16);
        let wait = number(params.get(2))
            .filter(|w| w.is_finite() && *w > 0.0)
            .map_or(Duration::ZERO, |w| {
                Duration::from_secs_f64(w.min(MAX_RECONNECT_WAIT_S))
            });
        let ip = match host {
            None => Some(current.ip()),
            Some("localhost") => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(host) => host.trim_matches(['[', ']']).parse::<IpAddr>().ok(),
        };
        match ip {
            Some(ip) if host.is_none() || ip.is_loopback() => Self {
                to: Some(SocketAddr::new(ip, port)),
                wait,
                not_followed: None,
            },
            _ => Self {
                to: None,
                wait,
                not_followed: Some(format!("{}:{port}", host.unwrap_or_default())),
            },
        }
    }
}

/// One miner: connects at its ramp-up slot, submits until the plan ends, reconnects when the
/// pool drops it (to where `client.reconnect` said, after its wait, if it said).
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
        slots: Slots::default(),
        plan,
    };
    if !sleep_or_stop(miner.plan.start_of(index), &mut stop).await {
        return;
    }
    let plan = miner.plan.clone();
    let recorder = &plan.recorder;
    let mut ever_connected = false;
    let mut addr = plan.addr;
    while Instant::now() < plan.end && !stop.is_stopped() {
        let began = Instant::now();
        let connected = tokio::time::timeout(plan.timeout, TcpStream::connect(addr)).await;
        let ended = match connected {
            Ok(Ok(stream)) if stream.set_nodelay(true).is_ok() => {
                recorder.connected(began.elapsed(), !ever_connected);
                ever_connected = true;
                let ended = miner.session(stream, addr, began, &mut stop).await;
                recorder.disconnected();
                ended
            }
            _ => Ended::ConnectFailed,
        };
        let now = Instant::now();
        let phase = plan.phase(&mut miner.rng);
        miner.slots.ensure(began + phase, &plan);
        let retry = match ended {
            Ended::Done => break,
            Ended::Refused => {
                miner.slots.left(now, Away::Driver, recorder);
                break;
            }
            Ended::ConnectFailed => {
                recorder.error(ErrorClass::Connect);
                miner.slots.away(now, Away::Driver, recorder);
                // A place `client.reconnect` named may be gone: back to the run's target.
                addr = plan.addr;
                now + RECONNECT_BACKOFF
            }
            Ended::Broken => {
                miner.slots.left(now, Away::Driver, recorder);
                now + RECONNECT_BACKOFF
            }
            Ended::Closed { reconnect, last } => {
                let expected = reconnect.is_some();
                recorder.closed_by_server(expected, last.as_deref());
                miner
                    .slots
                    .left(now, Away::ServerClosed { expected }, recorder);
                match reconnect {
                    Some(reconnect) => {
                        addr = reconnect.to.unwrap_or(plan.addr);
                        now + reconnect.wait
                    }
                    None => now + RECONNECT_BACKOFF,
                }
            }
        };
        if !sleep_or_stop(retry.min(plan.end), &mut stop).await {
            break;
        }
    }
    miner.slots.finish(stop.is_stopped(), recorder);
}

struct Miner {
    plan: Arc<Plan>,
    credentials: Arc<Credentials>,
    worker: String,
    rng: SmallRng,
    /// Rolled for every share (across reconnections too), so no two shares repeat.
    extranonce2: u64,
    /// Made at the first connection (or first failed attempt); send times that pass while
    /// disconnected are skipped and counted by why.
    slots: Slots,
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    scheduled: Instant,
    /// When its write began, on both clocks (the wall clock is what kernel stamps use), and
    /// when the write returned.
    sent: Instant,
    sent_wall: SystemTime,
    written_wall: SystemTime,
    /// The offset in the stream of the write's last byte (mod 2³²): the key the kernel's
    /// send stamp of it carries, when send stamps are on.
    last_byte: Option<u32>,
    /// That stamp: when the write's last byte went to the device.
    left: Option<SystemTime>,
    deadline: Instant,
}

impl InFlight {
    /// From when the request left to the reply's arrival (`at`, the kernel's receive stamp),
    /// and whether the kernel stamped the leaving. With the send stamp, both ends are the
    /// kernel's, on loopback one before the server's socket has the request and one after the
    /// server began sending the reply, so a server-side view lies inside this interval.
    /// Without it (`false`), from our write call: its return, when the server's socket has
    /// the bytes unless softirq work was deferred (the write's own way through the stack is
    /// not the server's time); or its start when the reply was stamped before that return,
    /// which means we were preempted on the way out while the woken server answered.
    fn sent_latency(&self, at: SystemTime) -> (Duration, bool) {
        if let Some(left) = self.left
            && let Ok(latency) = at.duration_since(left)
        {
            return (latency, true);
        }
        let latency = at
            .duration_since(self.written_wall)
            .or_else(|_| at.duration_since(self.sent_wall))
            .unwrap_or_default();
        (latency, false)
    }
}

/// Requests in flight by id.
type Outstanding = BTreeMap<u64, InFlight>;

/// What a read that returned no line means.
fn read_failed(err: Option<&io::Error>) -> ReadFailure {
    match err {
        // A line over MAX_LINE: the pool is broken, not gone.
        Some(err) if err.kind() == io::ErrorKind::InvalidData => ReadFailure::Unreadable,
        _ => ReadFailure::Closed,
    }
}

enum ReadFailure {
    /// End of stream, or a reset: the pool closed the connection.
    Closed,
    /// The bytes made no sense; we drop the connection.
    Unreadable,
}

impl Miner {
    async fn session(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        began: Instant,
        stop: &mut StopSignal,
    ) -> Ended {
        let recorder = self.plan.recorder.clone();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(Stamped::new(read));
        let mut line = Vec::with_capacity(1024);
        let mut last: Option<String> = None;

        // Handshake: subscribe and authorize together, then wait for both replies and a job.
        let hello = format!(
            "{}\n{}\n",
            json!({"id": SUBSCRIBE_ID, "method": wire::method::SUBSCRIBE, "params": ["profiler-load/1.0"]}),
            json!({"id": AUTHORIZE_ID, "method": wire::method::AUTHORIZE,
                   "params": [self.worker, self.credentials.password]}),
        );
        if write.write_all(hello.as_bytes()).await.is_err() {
            return Ended::Closed {
                reconnect: None,
                last,
            };
        }
        // Bytes written on this connection: the offsets the kernel's send stamps are keyed by.
        let mut written = hello.len() as u64;
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
                Ok(Ok(true)) => serde_json::from_slice::<Value>(&line),
                Ok(result) => match read_failed(result.as_ref().err()) {
                    ReadFailure::Closed => {
                        return Ended::Closed {
                            reconnect: None,
                            last,
                        };
                    }
                    ReadFailure::Unreadable => {
                        recorder.error(ErrorClass::Protocol);
                        return Ended::Broken;
                    }
                },
            };
            last = Some(String::from_utf8_lossy(&line).into_owned());
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
                    if message["method"] == wire::method::NOTIFY {
                        work = Work::from_notify(&message["params"]).or(work);
                    } else if let Some(reconnect) = self.push(&message, addr) {
                        return Ended::Closed {
                            reconnect: Some(reconnect),
                            last,
                        };
                    }
                }
            }
        }
        let (Some(extranonce2_len), Some(mut work)) = (extranonce2_len, work) else {
            return Ended::Broken;
        };
        let ready = Instant::now();
        recorder.handshake(ready - began);

        let phase = self.plan.phase(&mut self.rng);
        self.slots.ensure(ready + phase, &self.plan);
        self.slots.pass(ready, &recorder);

        let mut outstanding = Outstanding::new();
        let mut timed_out: HashSet<u64> = HashSet::new();
        let mut next_id = AUTHORIZE_ID + 1;
        // Replies in flight get until then, after a stop or a `client.reconnect`.
        let mut drain_until: Option<Instant> = None;
        let mut reconnect: Option<Reconnect> = None;
        loop {
            let now = Instant::now();
            let drained = drain_until.is_some_and(|until| now >= until);
            if reconnect.is_some() && (drained || outstanding.is_empty()) {
                // Leaving as the pool asked: what is still in flight is cut by its close.
                recorder.cut_by_close(outstanding.len() as u64, true);
                return Ended::Closed { reconnect, last };
            }
            if drained {
                Live::add(&recorder.live.unanswered, outstanding.len() as u64);
                return Ended::Done;
            }
            // Asked to reconnect, a miner sends nothing more here.
            let next_send = match reconnect {
                Some(_) => None,
                None => self.slots.get().and_then(|schedule| schedule.peek()),
            };
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
                    self.slots.stop(now);
                    drain_until = Some(now + STOP_DRAIN);
                }
                read = read_line(&mut reader, &mut line) => {
                    let received = Instant::now();
                    match read {
                        Ok(true) => {}
                        Ok(false) => {
                            recorder.cut_by_close(outstanding.len() as u64, reconnect.is_some());
                            return Ended::Closed { reconnect, last };
                        }
                        Err(err) => match read_failed(Some(&err)) {
                            ReadFailure::Closed => {
                                recorder.cut_by_close(outstanding.len() as u64, reconnect.is_some());
                                return Ended::Closed { reconnect, last };
                            }
                            ReadFailure::Unreadable => {
                                recorder.error(ErrorClass::Protocol);
                                Live::add(&recorder.live.unanswered, outstanding.len() as u64);
                                return Ended::Broken;
                            }
                        },
                    }
                    let arrived = reader.get_ref().last_arrival();
                    // The send stamps of requests this line may answer are queued by now.
                    reader.get_ref().sent_stamps(|offset, at| {
                        for request in outstanding.values_mut() {
                            if request.last_byte == Some(offset) && request.left.is_none() {
                                request.left = Some(at);
                            }
                        }
                    });
                    let asked = self.on_line(&line, addr, (received, arrived), &mut outstanding, &mut timed_out, &mut work);
                    last = Some(String::from_utf8_lossy(&line).into_owned());
                    line.clear();
                    if asked.is_some() && reconnect.is_none() {
                        reconnect = asked;
                        let until = received + STOP_DRAIN;
                        drain_until = Some(drain_until.map_or(until, |at| at.min(until)));
                    }
                }
                () = sleep_until_opt(next_send.map(early)) => {
                    let mut batch = String::new();
                    let mut ids = Vec::new();
                    let Some(schedule) = self.slots.get() else { continue };
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
                        // The pool closed the connection under us.
                        recorder.cut_by_close(outstanding.len() as u64, false);
                        recorder.unsent_while_closed(ids.len() as u64, false);
                        return Ended::Closed { reconnect: None, last };
                    }
                    let written_wall = SystemTime::now();
                    let last_byte = (reader.get_ref().stamps_sends() && !batch.is_empty())
                        .then(|| (written + batch.len() as u64 - 1) as u32);
                    written += batch.len() as u64;
                    let deadline = Instant::now() + self.plan.timeout;
                    Live::add(&recorder.live.sent, ids.len() as u64);
                    outstanding.extend(ids.into_iter().map(|(id, scheduled)| {
                        (id, InFlight { scheduled, sent: sending, sent_wall, written_wall, last_byte, left: None, deadline })
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
                        recorder.timed_out();
                    }
                }
            }
        }
    }

    /// A push from the pool other than `mining.notify`: notes the difficulty, and returns where
    /// to go for `client.reconnect`.
    fn push(&self, message: &Value, current: SocketAddr) -> Option<Reconnect> {
        let recorder = &self.plan.recorder;
        match message.get("method").and_then(Value::as_str)? {
            wire::method::SET_DIFFICULTY => {
                if let Some(difficulty) = message["params"].get(0).and_then(Value::as_f64) {
                    recorder.set_difficulty(difficulty);
                }
                None
            }
            wire::method::RECONNECT => {
                let reconnect = Reconnect::from_params(&message["params"], current);
                Live::add(&recorder.live.reconnect_requests, 1);
                if reconnect.not_followed.is_some() {
                    Live::add(&recorder.live.reconnects_not_followed, 1);
                }
                Some(reconnect)
            }
            // Other pushes change nothing for random nonces.
            _ => None,
        }
    }

    /// A reply to a submit, or a push from the pool; `Some` when the pool asks us to reconnect.
    fn on_line(
        &mut self,
        line: &[u8],
        current: SocketAddr,
        // When we read the line, and when its bytes arrived if the kernel said.
        received: (Instant, Option<SystemTime>),
        outstanding: &mut Outstanding,
        timed_out: &mut HashSet<u64>,
        work: &mut Work,
    ) -> Option<Reconnect> {
        let recorder = &self.plan.recorder;
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            recorder.error(ErrorClass::Protocol);
            return None;
        };
        if message.get("method").is_some() {
            if message["method"] == wire::method::NOTIFY {
                match Work::from_notify(&message["params"]) {
                    Some(next) => *work = next,
                    None => recorder.error(ErrorClass::Protocol),
                }
                return None;
            }
            return self.push(&message, current);
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            recorder.error(ErrorClass::Protocol);
            return None;
        };
        match outstanding.remove(&id) {
            Some(request) => {
                let reason;
                let outcome = if message["result"] == Value::Bool(true) {
                    Outcome::Accepted
                } else {
                    match rejection(&message) {
                        Some(why) => {
                            reason = why;
                            Outcome::Rejected(&reason)
                        }
                        None => Outcome::Protocol,
                    }
                };
                let (read_at, arrived) = received;
                let sent_latency = match arrived {
                    Some(at) => {
                        let (latency, left_stamped) = request.sent_latency(at);
                        if !left_stamped {
                            Live::add(&recorder.live.send_unstamped, 1);
                        }
                        latency
                    }
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
        None
    }
}

/// Why the pool refused a share (`reply` has no `result: true`), by the stratum error codes,
/// or by ckpool's `reject-reason` beside a null error; `None` when the error says our request
/// itself was malformed (a JSON-RPC error), which is a protocol error.
fn rejection(reply: &Value) -> Option<String> {
    let error = &reply["error"];
    let code = error
        .get(0)
        .or_else(|| error.get("code"))
        .and_then(Value::as_i64);
    Some(match code {
        Some(code) => match wire::code::rejection(code) {
            Some(name) => name.to_string(),
            // A JSON-RPC error: our request was malformed, which is no rejection.
            None if code < 0 => return None,
            None => format!("code {code}"),
        },
        None if error.is_null() => match reply.get("reject-reason").and_then(Value::as_str) {
            Some(why) if !why.trim().is_empty() => format!("refused ({})", why.trim()),
            _ => "refused".to_string(),
        },
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
        "method": wire::method::SUBMIT,
        "params": [worker, work.job_id, hex, work.ntime, format!("{nonce:08x}")],
    })
    .to_string();
    line.push('\n');
    line
}

/// Reads one reply line into `buf` (newline included). `Ok(false)` at end of stream. Cancel-safe:
/// a partial line stays in `buf` for the next call.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    match wire::read_line(reader, buf, MAX_LINE).await? {
        LineRead::Line => Ok(true),
        LineRead::Eof => Ok(false),
        LineRead::TooLong => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "reply line too long",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a send stamp, a reply is timed from it; without one, from our write's return, or
    /// from its start when the reply was stamped before that return (we were preempted while
    /// the server answered).
    #[test]
    fn sent_latency_starts_at_the_send_stamp_else_at_the_write() {
        let now = Instant::now();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |us| start + Duration::from_micros(us);
        let unstamped = InFlight {
            scheduled: now,
            sent: now,
            sent_wall: start,
            written_wall: at(200),
            last_byte: Some(99),
            left: None,
            deadline: now,
        };
        assert_eq!(
            unstamped.sent_latency(at(350)),
            (Duration::from_micros(150), false)
        );
        assert_eq!(
            unstamped.sent_latency(at(150)),
            (Duration::from_micros(150), false)
        );
        // A clock step back leaves a zero, not a panic or a wrap.
        assert_eq!(
            unstamped.sent_latency(at(0) - Duration::from_secs(1)),
            (Duration::ZERO, false)
        );
        let stamped = InFlight {
            left: Some(at(20)),
            ..unstamped
        };
        assert_eq!(
            stamped.sent_latency(at(350)),
            (Duration::from_micros(330), true)
        );
        // A reply stamped before its request left can only be a clock step: the write's times.
        assert_eq!(
            stamped.sent_latency(at(10)),
            (Duration::from_micros(10), false)
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
        let refused = |error: Value| rejection(&json!({"id": 3, "result": false, "error": error}));
        assert_eq!(
            refused(json!([21, "Job not found", null])).as_deref(),
            Some("stale")
        );
        assert_eq!(
            refused(json!([23, "Low difficulty share", null])).as_deref(),
            Some("low-difficulty")
        );
        assert_eq!(
            refused(json!({"code": 22, "message": "dup"})).as_deref(),
            Some("duplicate")
        );
        assert_eq!(refused(json!([29, "?", null])).as_deref(), Some("code 29"));
        assert_eq!(refused(Value::Null).as_deref(), Some("refused"));
        assert_eq!(refused(json!([-32602, "Invalid params", null])), None);
        assert_eq!(refused(json!("weird")), None);
        // ckpool: a null error, the reason beside it.
        let ckpool =
            json!({"reject-reason": "Above target", "result": false, "error": null, "id": 9});
        assert_eq!(
            rejection(&ckpool).as_deref(),
            Some("refused (Above target)")
        );
    }

    #[test]
    fn client_reconnect_is_followed_on_loopback_only() {
        let current: SocketAddr = "127.0.0.1:3333".parse().unwrap();
        let at = |to: &str| Some(to.parse::<SocketAddr>().unwrap());
        let follow = Reconnect::from_params(&json!(["127.0.0.1", 4444, 2]), current);
        assert_eq!(follow.to, at("127.0.0.1:4444"));
        assert_eq!(follow.wait, Duration::from_secs(2));
        assert_eq!(follow.not_followed, None);
        // Every parameter is optional, and numbers may come as strings.
        let same = Reconnect::from_params(&json!([]), current);
        assert_eq!((same.to, same.wait), (at("127.0.0.1:3333"), Duration::ZERO));
        let null = Reconnect::from_params(&Value::Null, current);
        assert_eq!(null.to, at("127.0.0.1:3333"));
        let strings = Reconnect::from_params(&json!(["localhost", "4445", "0.5"]), current);
        assert_eq!(strings.to, at("127.0.0.1:4445"));
        assert_eq!(strings.wait, Duration::from_millis(500));
        let v6 = Reconnect::from_params(&json!(["[::1]", 4446]), current);
        assert_eq!(v6.to, at("[::1]:4446"));
        // A host off loopback, or a name we would have to resolve: back to the target, said.
        for host in ["203.0.113.7", "pool.example.com"] {
            let away = Reconnect::from_params(&json!([host, 3333, 1]), current);
            assert_eq!(away.to, None, "{host}");
            assert_eq!(away.not_followed.as_deref(), Some(&*format!("{host}:3333")));
            assert_eq!(away.wait, Duration::from_secs(1));
        }
        // Nonsense in a field is ignored, not obeyed.
        let odd = Reconnect::from_params(&json!(["", 70000, -5]), current);
        assert_eq!((odd.to, odd.wait), (at("127.0.0.1:3333"), Duration::ZERO));
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
