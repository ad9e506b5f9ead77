//! One miner connection's protocol state, free of sockets: it takes request lines and jobs and
//! says what to write back, so it is tested from strings.

use loadgen::wire::method;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use serde_json::{Value, json};

use super::{
    replies::{error_reply, push, result_reply},
    share_log::{ShareLog, share_log},
};
use crate::{
    knobs::Knobs,
    stratum::{self, EXTRANONCE1_LEN, EXTRANONCE2_LEN, Job, Reject, Submit, Target},
    vardiff::{Vardiff, VardiffConfig},
};

/// What every session of one pool shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub difficulty: f64,
    pub vardiff: VardiffConfig,
    pub knobs: Knobs,
}

/// What a session wants written after handling input.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    /// JSON lines, each to be sent with a trailing newline, in order.
    pub lines: Vec<String>,
    /// Close the connection after writing them.
    pub close: bool,
}

/// One miner connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    extranonce1: [u8; EXTRANONCE1_LEN],
    subscribed: bool,
    authorized: HashSet<String>,
    vardiff: Vardiff,
    target: Target,
    /// The jobs a submit may name: those since the last clean job.
    jobs: HashMap<String, Arc<Job>>,
    current: Option<Arc<Job>>,
    /// Shares already submitted against `jobs`, to refuse duplicates.
    seen: HashSet<(String, Vec<u8>, u32, u32)>,
}

impl Session {
    pub fn new(
        config: Arc<SessionConfig>,
        extranonce1: [u8; EXTRANONCE1_LEN],
        job: Option<Arc<Job>>,
        now: Instant,
    ) -> Self {
        let vardiff = Vardiff::new(config.vardiff, config.difficulty, now);
        let mut session = Self {
            extranonce1,
            subscribed: false,
            authorized: HashSet::new(),
            target: Target::from_difficulty(vardiff.difficulty()),
            vardiff,
            jobs: HashMap::new(),
            current: None,
            seen: HashSet::new(),
            config,
        };
        if let Some(job) = job {
            session.remember(job);
        }
        session
    }

    pub fn difficulty(&self) -> f64 {
        self.vardiff.difficulty()
    }

    /// Handles one request line (without its newline).
    pub fn handle_line(&mut self, line: &[u8], now: Instant) -> Output {
        if line.trim_ascii().is_empty() {
            return Output::default();
        }
        let knobs = &self.config.knobs;
        if let Some((millis, spin)) = knobs.on_request() {
            crate::knobs::slow_path(millis, spin);
        }
        // Under --contend the hot lock is held across the whole request.
        let held = knobs
            .contend
            .map(|work| (share_log(), Instant::now() + work));
        let mut output = Output::default();
        match held {
            Some((mut log, deadline)) => {
                self.dispatch(line, now, &mut output, Some(&mut log));
                log.work_until(deadline);
            }
            None => self.dispatch(line, now, &mut output, None),
        }
        output
    }

    fn dispatch(
        &mut self,
        line: &[u8],
        now: Instant,
        output: &mut Output,
        log: Option<&mut ShareLog>,
    ) {
        let request: Value = match serde_json::from_slice(line) {
            Ok(value) => value,
            Err(err) => {
                output
                    .lines
                    .push(error_reply(&Value::Null, &Reject::Parse(err.to_string())));
                return;
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = request.get("method").and_then(Value::as_str) else {
            let reject = Reject::InvalidRequest("expected an object with a method".into());
            output.lines.push(error_reply(&id, &reject));
            return;
        };
        let params = request.get("params").unwrap_or(&Value::Null);
        match method {
            method::SUBSCRIBE => self.subscribe(&id, output),
            method::AUTHORIZE => output.lines.push(match self.authorize(params) {
                Ok(()) => result_reply(&id, &json!(true)),
                Err(reject) => error_reply(&id, &reject),
            }),
            method::EXTRANONCE_SUBSCRIBE => output.lines.push(result_reply(&id, &json!(true))),
            method::SUBMIT => self.submit(&id, params, now, output, log),
            other => output
                .lines
                .push(error_reply(&id, &Reject::UnknownMethod(other.to_string()))),
        }
    }

    fn subscribe(&mut self, id: &Value, output: &mut Output) {
        self.subscribed = true;
        let subscription = hex::encode(self.extranonce1);
        output.lines.push(result_reply(
            id,
            &json!([
                [
                    [method::SET_DIFFICULTY, subscription],
                    [method::NOTIFY, subscription]
                ],
                hex::encode(self.extranonce1),
                EXTRANONCE2_LEN
            ]),
        ));
        output
            .lines
            .push(push(method::SET_DIFFICULTY, &json!([self.difficulty()])));
        if let Some(job) = &self.current {
            // The miner knows no job yet, so this one starts clean whatever the pool said.
            let mut params = job.notify_params();
            params[8] = json!(true);
            output.lines.push(push(method::NOTIFY, &params));
        }
    }

    fn authorize(&mut self, params: &Value) -> Result<(), Reject> {
        let worker = params
            .get(0)
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty() && name.len() <= 128)
            .ok_or_else(|| {
                Reject::InvalidParams("expected [worker, password], worker 1-128 bytes".into())
            })?;
        self.authorized.insert(worker.to_string());
        Ok(())
    }

    fn submit(
        &mut self,
        id: &Value,
        params: &Value,
        now: Instant,
        output: &mut Output,
        log: Option<&mut ShareLog>,
    ) {
        let worker = params
            .get(0)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let job_id = params
            .get(1)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let outcome = self.check_submit(params);
        match log {
            Some(log) => log.record(&worker, &job_id, outcome.as_ref().copied()),
            None => share_log().record(&worker, &job_id, outcome.as_ref().copied()),
        }
        match outcome {
            Ok(_) => {
                output.lines.push(result_reply(id, &json!(true)));
                self.config.knobs.on_accepted();
                self.vardiff.record_share(now);
                output.lines.extend(self.retarget(now));
            }
            Err(reject) => output.lines.push(error_reply(id, &reject)),
        }
    }

    /// Validates a submit for real; `Ok` carries the difficulty the share achieved.
    fn check_submit(&mut self, params: &Value) -> Result<f64, Reject> {
        if !self.subscribed {
            return Err(Reject::NotSubscribed);
        }
        let submit = Submit::parse(params, EXTRANONCE2_LEN)?;
        if !self.authorized.contains(&submit.worker) {
            return Err(Reject::Unauthorized);
        }
        let job = self.jobs.get(&submit.job_id).ok_or(Reject::Stale)?;
        let key = (
            submit.job_id.clone(),
            submit.extranonce2.clone(),
            submit.ntime,
            submit.nonce,
        );
        // A repeat is refused before it costs a hash; only well-formed shares are remembered.
        if self.seen.contains(&key) {
            return Err(Reject::Duplicate);
        }
        let checked = stratum::check_share(job, &self.extranonce1, &submit, &self.target)?;
        self.seen.insert(key);
        if checked.accepted {
            Ok(stratum::hash_difficulty(&checked.hash))
        } else {
            Err(Reject::LowDifficulty)
        }
    }

    /// A new job from the pool: the `mining.notify` to send, if this miner has subscribed.
    pub fn on_job(&mut self, job: Arc<Job>, now: Instant) -> Output {
        self.remember(job.clone());
        let mut output = Output::default();
        if self.subscribed {
            output.lines.extend(self.retarget(now));
            output
                .lines
                .push(push(method::NOTIFY, &job.notify_params()));
        }
        output
    }

    fn remember(&mut self, job: Arc<Job>) {
        if job.clean {
            self.jobs.clear();
            self.seen.clear();
        }
        self.jobs.insert(job.id.clone(), job.clone());
        self.current = Some(job);
    }

    fn retarget(&mut self, now: Instant) -> Option<String> {
        let next = self.vardiff.retarget(now)?;
        self.target = Target::from_difficulty(next);
        Some(push(method::SET_DIFFICULTY, &json!([next])))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::stratum::JobMaker;

    fn session(knobs: Knobs) -> (Session, Arc<Job>) {
        let config = Arc::new(SessionConfig {
            difficulty: stratum::HALF_OF_NONCES_DIFFICULTY,
            vardiff: VardiffConfig::new(30.0, stratum::HALF_OF_NONCES_DIFFICULTY),
            knobs,
        });
        let job = Arc::new(JobMaker::new(1, 4).next_job(1_700_000_000));
        let session = Session::new(config, [0, 0, 0, 7], Some(job.clone()), Instant::now());
        (session, job)
    }

    fn lines(session: &mut Session, line: &str) -> Vec<Value> {
        session
            .handle_line(line.as_bytes(), Instant::now())
            .lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn handshake(session: &mut Session) {
        let subscribed = lines(
            session,
            r#"{"id":1,"method":"mining.subscribe","params":["t/1"]}"#,
        );
        assert_eq!(
            subscribed.len(),
            3,
            "reply, set_difficulty, notify: {subscribed:?}"
        );
        let authorized = lines(
            session,
            r#"{"id":2,"method":"mining.authorize","params":["w1","x"]}"#,
        );
        assert_eq!(authorized[0]["result"], true);
    }

    fn submit_line(id: u64, job: &Job, extranonce2: &str, nonce: u32) -> String {
        json!({"id": id, "method": "mining.submit",
               "params": ["w1", job.id, extranonce2, format!("{:08x}", job.ntime), format!("{nonce:08x}")]})
        .to_string()
    }

    /// Finds a nonce whose share meets (or misses) this session's target, by hashing here.
    fn nonce_with(job: &Job, extranonce2: [u8; 4], meets: bool) -> u32 {
        let target = Target::from_difficulty(stratum::HALF_OF_NONCES_DIFFICULTY);
        (0..)
            .find(|&nonce| {
                let hash =
                    stratum::sha256d(&job.header(&[0, 0, 0, 7], &extranonce2, job.ntime, nonce));
                target.is_met_by(&hash) == meets
            })
            .unwrap()
    }

    #[test]
    fn subscribe_hands_out_extranonces_and_work() {
        let (mut session, job) = session(Knobs::default());
        let replies = lines(
            &mut session,
            r#"{"id":1,"method":"mining.subscribe","params":[]}"#,
        );
        assert_eq!(replies[0]["id"], 1);
        assert_eq!(replies[0]["result"][1], "00000007");
        assert_eq!(replies[0]["result"][2], EXTRANONCE2_LEN);
        assert_eq!(replies[1]["method"], "mining.set_difficulty");
        assert_eq!(replies[1]["id"], Value::Null);
        assert_eq!(replies[2]["method"], "mining.notify");
        assert_eq!(replies[2]["params"][0], job.id.as_str());
        assert_eq!(replies[2]["params"][8], true);
    }

    #[test]
    fn submits_are_validated_for_real() {
        let (mut session, job) = session(Knobs::default());
        handshake(&mut session);
        let good = nonce_with(&job, [0, 0, 0, 1], true);
        let bad = nonce_with(&job, [0, 0, 0, 1], false);
        let accepted = lines(&mut session, &submit_line(3, &job, "00000001", good));
        assert_eq!(accepted[0], json!({"id": 3, "result": true, "error": null}));
        let low = lines(&mut session, &submit_line(4, &job, "00000001", bad));
        assert_eq!(low[0]["id"], 4);
        assert_eq!(low[0]["error"][0], 23);
        let duplicate = lines(&mut session, &submit_line(5, &job, "00000001", good));
        assert_eq!(duplicate[0]["error"][0], 22);
    }

    #[test]
    fn shares_for_replaced_jobs_are_stale() {
        let (mut session, old) = session(Knobs::default());
        handshake(&mut session);
        let mut new = JobMaker::new(2, 4).next_job(1_700_000_030);
        new.id = "ff".to_string();
        let new = Arc::new(new);
        let pushed = session.on_job(new.clone(), Instant::now());
        assert_eq!(pushed.lines.len(), 1);
        let stale = lines(&mut session, &submit_line(6, &old, "00000001", 1));
        assert_eq!(stale[0]["error"][0], 21);
        let nonce = nonce_with(&new, [0, 0, 0, 1], true);
        let fresh = lines(&mut session, &submit_line(7, &new, "00000001", nonce));
        assert_eq!(fresh[0]["result"], true);
    }

    #[test]
    fn order_of_the_handshake_is_enforced() {
        let (mut session, job) = session(Knobs::default());
        let early = lines(&mut session, &submit_line(1, &job, "00000001", 1));
        assert_eq!(early[0]["error"][0], 25, "submit before subscribe");
        lines(
            &mut session,
            r#"{"id":2,"method":"mining.subscribe","params":[]}"#,
        );
        let unauthorized = lines(&mut session, &submit_line(3, &job, "00000001", 1));
        assert_eq!(unauthorized[0]["error"][0], 24, "submit before authorize");
    }

    #[test]
    fn malformed_requests_get_json_rpc_errors() {
        let (mut session, job) = session(Knobs::default());
        handshake(&mut session);
        for (line, code) in [
            ("not json at all", -32700),
            (r#"{"id":9,"method":"mining.subscribe","params":["#, -32700),
            (r#"[1,2,3]"#, -32600),
            (r#"{"id":9,"params":[]}"#, -32600),
            (
                r#"{"id":9,"method":"mining.frobnicate","params":[]}"#,
                -32601,
            ),
            (
                r#"{"id":9,"method":"mining.authorize","params":[]}"#,
                -32602,
            ),
            (
                r#"{"id":9,"method":"mining.submit","params":["w1"]}"#,
                -32602,
            ),
            (
                r#"{"id":9,"method":"mining.submit","params":"nope"}"#,
                -32602,
            ),
        ] {
            let replies = lines(&mut session, line);
            assert_eq!(replies.len(), 1, "{line}");
            assert_eq!(replies[0]["error"][0], code, "{line}");
            assert_eq!(replies[0]["result"], Value::Null, "{line}");
        }
        // And the session still works.
        let nonce = nonce_with(&job, [0, 0, 0, 2], true);
        assert_eq!(
            lines(&mut session, &submit_line(10, &job, "00000002", nonce))[0]["result"],
            true
        );
    }

    #[test]
    fn contend_holds_the_share_log_across_the_request() {
        let work = Duration::from_millis(3);
        let (mut session, job) = session(Knobs {
            contend: Some(work),
            ..Knobs::default()
        });
        handshake(&mut session);
        let start = Instant::now();
        lines(&mut session, &submit_line(3, &job, "00000003", 1));
        assert!(start.elapsed() >= work);
    }
}
