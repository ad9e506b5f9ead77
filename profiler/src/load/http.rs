//! An HTTP/1.1 client on one keep-alive connection: requests go out on an open-loop schedule,
//! one at a time (no pipelining), and each is timed from its scheduled send time to the end of
//! its response body, so waiting behind a slow response counts.

use std::{sync::Arc, time::Instant};

use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Bytes, client::conn::http1, header};
use hyper_util::rt::TokioIo;
use rand::{SeedableRng, rngs::SmallRng};
use tokio::net::TcpStream;

use super::{
    client::{
        Plan, RECONNECT_BACKOFF, STOP_DRAIN, StopSignal, TIMER_SLACK, early, sleep_or_stop,
        timed_from,
    },
    schedule::Schedule,
    stats::{ErrorClass, Live, Outcome},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpMethod {
    Get,
    Post,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

/// The one request every connection repeats.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: HttpMethod,
    /// Path and query.
    pub path: String,
    /// `Host` header value.
    pub host: String,
    /// Sent with POST; empty for GET.
    pub body: Bytes,
}

impl RequestSpec {
    fn build(&self) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let builder = Request::builder()
            .method(self.method.as_str())
            .uri(&self.path)
            .header(header::HOST, &self.host)
            .header(header::USER_AGENT, "profiler-load/1.0");
        match self.method {
            HttpMethod::Get => builder.body(Full::new(Bytes::new())),
            HttpMethod::Post => {
                let json = matches!(self.body.trim_ascii_start().first(), Some(b'{' | b'['));
                builder
                    .header(
                        header::CONTENT_TYPE,
                        if json {
                            "application/json"
                        } else {
                            "application/octet-stream"
                        },
                    )
                    .body(Full::new(self.body.clone()))
            }
        }
    }
}

/// How a connection ended.
enum Ended {
    /// The schedule ran out, or a stop came.
    Done,
    /// The connection broke, its error already counted; reconnect.
    Broken,
}

/// One keep-alive connection's client: connects at its ramp-up slot, sends until the plan ends,
/// reconnects when the connection breaks.
pub async fn connection(
    plan: Arc<Plan>,
    index: usize,
    spec: Arc<RequestSpec>,
    mut stop: StopSignal,
) {
    if !sleep_or_stop(plan.start_of(index), &mut stop).await {
        return;
    }
    let recorder = plan.recorder.clone();
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut schedule = None;
    let mut ever_connected = false;
    while Instant::now() < plan.end && !stop.is_stopped() {
        let began = Instant::now();
        let connected = tokio::time::timeout(plan.timeout, async {
            let stream = TcpStream::connect(plan.addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        })
        .await;
        let handshake = match connected {
            Ok(Ok(stream)) => http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .ok(),
            Ok(Err(_)) | Err(_) => None,
        };
        let Some((mut sender, conn)) = handshake else {
            recorder.error(ErrorClass::Connect);
            let retry = (Instant::now() + RECONNECT_BACKOFF).min(plan.end);
            if !sleep_or_stop(retry, &mut stop).await {
                return;
            }
            continue;
        };
        recorder.connected(began.elapsed(), !ever_connected);
        ever_connected = true;
        // hyper's connection future does the socket I/O; it ends when the sender is dropped.
        let io = tokio::spawn(conn);
        let ready = Instant::now();
        let schedule = schedule.get_or_insert_with(|| {
            Schedule::new(ready + plan.phase(&mut rng), plan.interval, plan.end)
        });
        Live::add(&recorder.live.missed, schedule.skip_until(ready));
        let ended = exchange_all(&plan, &spec, &mut sender, schedule, &mut stop).await;
        drop(sender);
        io.abort();
        recorder.disconnected();
        match ended {
            Ended::Done => return,
            Ended::Broken => {
                let retry = (Instant::now() + RECONNECT_BACKOFF).min(plan.end);
                if !sleep_or_stop(retry, &mut stop).await {
                    return;
                }
            }
        }
    }
}

async fn exchange_all(
    plan: &Plan,
    spec: &RequestSpec,
    sender: &mut http1::SendRequest<Full<Bytes>>,
    schedule: &mut Schedule,
    stop: &mut StopSignal,
) -> Ended {
    let recorder = &plan.recorder;
    let live = &recorder.live;
    loop {
        let Some(next) = schedule.peek() else {
            return Ended::Done;
        };
        if !sleep_or_stop(early(next), stop).await {
            return Ended::Done;
        }
        // Every send time already due goes now, one after another, each timed from its own.
        while let Some(scheduled) = schedule.due(Instant::now() + TIMER_SLACK) {
            if stop.is_stopped() {
                return Ended::Done;
            }
            if sender.ready().await.is_err() {
                // The server closed the connection between requests.
                Live::add(&live.missed, 1);
                recorder.error(ErrorClass::Connect);
                return Ended::Broken;
            }
            let request = match spec.build() {
                Ok(request) => request,
                Err(_) => {
                    // The path or host cannot form a request: nothing to retry.
                    recorder.error(ErrorClass::Protocol);
                    return Ended::Done;
                }
            };
            Live::add(&live.sent, 1);
            let sending = Instant::now();
            let from = timed_from(scheduled, sending);
            let deadline = sending + plan.timeout;
            let exchange = async {
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            };
            let result = tokio::select! {
                result = tokio::time::timeout_at(deadline.into(), exchange) => result,
                () = async {
                    stop.stopped().await;
                    tokio::time::sleep(STOP_DRAIN).await;
                } => {
                    Live::add(&live.unanswered, 1);
                    return Ended::Done;
                }
            };
            match result {
                Ok(Ok(status)) => {
                    let received = Instant::now();
                    let latency = received.saturating_duration_since(from);
                    // Timed to our read: hyper does not hand us the kernel's receive stamp.
                    let sent_latency = received.saturating_duration_since(sending);
                    Live::add(&live.unstamped, 1);
                    if status.is_success() {
                        recorder.reply(latency, sent_latency, Outcome::Accepted);
                    } else {
                        recorder.reply(
                            latency,
                            sent_latency,
                            Outcome::Rejected(&format!("status {}", status.as_u16())),
                        );
                    }
                }
                Ok(Err(err)) => {
                    Live::add(&live.unanswered, 1);
                    recorder.error(if err.is_parse() || err.is_parse_status() {
                        ErrorClass::Protocol
                    } else {
                        ErrorClass::Connect
                    });
                    return Ended::Broken;
                }
                Err(_) => {
                    // The response may still come, but HTTP/1.1 cannot skip it: start afresh.
                    recorder.error(ErrorClass::Timeout);
                    return Ended::Broken;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_host_and_a_typed_body() {
        let spec = RequestSpec {
            method: HttpMethod::Post,
            path: "/ingest?x=1".into(),
            host: "127.0.0.1:8080".into(),
            body: Bytes::from_static(b" {\"entries\":[]}"),
        };
        let request = spec.build().unwrap();
        assert_eq!(request.method(), "POST");
        assert_eq!(request.uri(), "/ingest?x=1");
        assert_eq!(request.headers()[header::HOST], "127.0.0.1:8080");
        assert_eq!(request.headers()[header::CONTENT_TYPE], "application/json");
        let get = RequestSpec {
            method: HttpMethod::Get,
            ..spec
        };
        let request = get.build().unwrap();
        assert!(request.headers().get(header::CONTENT_TYPE).is_none());
    }
}
