//! An HTTP/1.1 client on one keep-alive connection: requests go out on an open-loop schedule,
//! one at a time (no pipelining), and each is timed from its scheduled send time to the end of
//! its response body, so waiting behind a slow response counts.

use std::{sync::Arc, time::Instant};

use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http1, header};
use hyper_util::rt::TokioIo;
use rand::{SeedableRng, rngs::SmallRng};
use tokio::net::TcpStream;

use super::{
    client::{
        Away, Plan, RECONNECT_BACKOFF, STOP_DRAIN, Slots, StopSignal, TIMER_SLACK, early,
        sleep_or_stop, timed_from,
    },
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
    /// We dropped the connection, its error already counted (timeout, unreadable response).
    Broken,
    /// The server closed it: between requests (idle keep-alive, or after `Connection: close`),
    /// which HTTP allows and we reconnect from at once (`expected`); or with a request in
    /// flight, which cuts that request, or before answering any, which is no keep-alive at all
    /// (then we back off). `last` is the last response it sent.
    Closed {
        expected: bool,
        last: Option<String>,
    },
}

/// One keep-alive connection's client: connects at its ramp-up slot, sends until the plan ends,
/// reconnects when the connection breaks or the server closes it.
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
    let mut slots = Slots::default();
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
            let now = Instant::now();
            slots.ensure(began + plan.phase(&mut rng), &plan);
            slots.away(now, Away::Driver, &recorder);
            let retry = (now + RECONNECT_BACKOFF).min(plan.end);
            if !sleep_or_stop(retry, &mut stop).await {
                break;
            }
            continue;
        };
        recorder.connected(began.elapsed(), !ever_connected);
        ever_connected = true;
        // hyper's connection future does the socket I/O; it ends when the sender is dropped.
        let io = tokio::spawn(conn);
        let ready = Instant::now();
        slots.ensure(ready + plan.phase(&mut rng), &plan);
        slots.pass(ready, &recorder);
        let ended = exchange_all(&plan, &spec, &mut sender, &mut slots, &mut stop).await;
        drop(sender);
        io.abort();
        recorder.disconnected();
        let now = Instant::now();
        match ended {
            Ended::Done => break,
            Ended::Broken => {
                slots.left(now, Away::Driver, &recorder);
                let retry = (now + RECONNECT_BACKOFF).min(plan.end);
                if !sleep_or_stop(retry, &mut stop).await {
                    break;
                }
            }
            Ended::Closed { expected, last } => {
                recorder.closed_by_server(expected, last.as_deref());
                slots.left(now, Away::ServerClosed { expected }, &recorder);
                // After a keep-alive close the next request goes out on a new connection at
                // once; a server that closes unasked is given a pause.
                if !expected {
                    let retry = (now + RECONNECT_BACKOFF).min(plan.end);
                    if !sleep_or_stop(retry, &mut stop).await {
                        break;
                    }
                }
            }
        }
    }
    slots.finish(stop.is_stopped(), &recorder);
}

/// What a response says for the report of a close that follows it.
fn describe(status: StatusCode, closing: bool) -> String {
    let mut said = format!("HTTP {}", status.as_u16());
    if closing {
        said.push_str(", Connection: close");
    }
    said
}

async fn exchange_all(
    plan: &Plan,
    spec: &RequestSpec,
    sender: &mut http1::SendRequest<Full<Bytes>>,
    slots: &mut Slots,
    stop: &mut StopSignal,
) -> Ended {
    let recorder = &plan.recorder;
    let live = &recorder.live;
    let mut last = None;
    loop {
        let Some(next) = slots.get().and_then(|schedule| schedule.peek()) else {
            return Ended::Done;
        };
        if !sleep_or_stop(early(next), stop).await {
            slots.stop(Instant::now());
            return Ended::Done;
        }
        loop {
            if stop.is_stopped() {
                slots.stop(Instant::now());
                return Ended::Done;
            }
            // Before taking a send time: a keep-alive connection the server closed while idle
            // is no failure, and the request goes out on a new one.
            if sender.ready().await.is_err() {
                return Ended::Closed {
                    expected: last.is_some(),
                    last,
                };
            }
            // Every send time already due goes now, one after another, each timed from its own.
            let Some(scheduled) = slots
                .get()
                .and_then(|schedule| schedule.due(Instant::now() + TIMER_SLACK))
            else {
                break;
            };
            let request = match spec.build() {
                Ok(request) => request,
                Err(_) => {
                    // The path or host cannot form a request: nothing to retry.
                    recorder.error(ErrorClass::Protocol);
                    Live::add(&live.unsent, 1);
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
                let closing = response
                    .headers()
                    .get(header::CONNECTION)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
                response.into_body().collect().await?;
                Ok::<_, hyper::Error>((status, closing))
            };
            tokio::pin!(exchange);
            let result = tokio::select! {
                result = tokio::time::timeout_at(deadline.into(), &mut exchange) => result,
                () = stop.stopped() => {
                    // Nothing after the stop is scheduled; this reply gets the drain's grace.
                    let now = Instant::now();
                    slots.stop(now);
                    let drain = now + STOP_DRAIN;
                    match tokio::time::timeout_at(deadline.min(drain).into(), &mut exchange).await {
                        Err(_) if drain < deadline => {
                            Live::add(&live.unanswered, 1);
                            return Ended::Done;
                        }
                        result => result,
                    }
                }
            };
            match result {
                Ok(Ok((status, closing))) => {
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
                    last = Some(describe(status, closing));
                    if closing {
                        return Ended::Closed {
                            expected: true,
                            last,
                        };
                    }
                }
                Ok(Err(err)) if err.is_parse() || err.is_parse_status() => {
                    Live::add(&live.unanswered, 1);
                    recorder.error(ErrorClass::Protocol);
                    return Ended::Broken;
                }
                Ok(Err(_)) => {
                    // Closed or reset with our request in flight.
                    recorder.cut_by_close(1, false);
                    return Ended::Closed {
                        expected: false,
                        last,
                    };
                }
                Err(_) => {
                    // The response may still come, but HTTP/1.1 cannot skip it: start afresh.
                    recorder.timed_out();
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
