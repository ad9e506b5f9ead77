//! An HTTP/1.1 client on one keep-alive connection: requests go out on an open-loop schedule,
//! one at a time (no pipelining), and each is timed from its scheduled send time to the end of
//! its response body, so waiting behind a slow response counts; and again from when the request
//! left to when its response arrived, by the kernel's stamps.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
    time::{Instant, SystemTime},
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http1, header};
use hyper_util::rt::TokioIo;
use rand::{SeedableRng, rngs::SmallRng};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    client::{
        Away, Plan, RECONNECT_BACKOFF, STOP_DRAIN, Slots, StopSignal, TIMER_SLACK, early,
        sleep_or_stop, timed_from,
    },
    stamped::Stamped,
    stats::{ErrorClass, Live, Outcome},
};

/// What the socket under hyper saw since the exchange in flight began. hyper owns the socket
/// and does its reads and writes in the connection's task, so [`Io`] notes here what timing
/// the exchange needs; with one request at a time, everything noted belongs to it.
#[derive(Debug, Default)]
struct Marks {
    /// Bytes written on the connection: send stamps are keyed by offsets into them.
    written: u64,
    /// Whether a read returned bytes since the exchange began.
    read: bool,
    /// The receive stamp of that first read: the response's first bytes.
    arrival: Option<SystemTime>,
    /// Send stamps taken off the socket's error queue since the exchange began, by offset.
    left: Vec<(u32, SystemTime)>,
}

impl Marks {
    /// Starts an exchange; returns where its bytes start in the stream.
    fn begin(&mut self) -> u64 {
        self.read = false;
        self.arrival = None;
        self.left.clear();
        self.written
    }

    /// When the exchange that began at offset `start` left (the send stamp of the last byte
    /// written since) and when its response arrived, each if the kernel said.
    fn stamps(&self, start: u64) -> (Option<SystemTime>, Option<SystemTime>) {
        let last_byte = (self.written > start).then(|| (self.written - 1) as u32);
        let left = last_byte.and_then(|key| {
            self.left
                .iter()
                .find(|&&(offset, _)| offset == key)
                .map(|&(_, at)| at)
        });
        (left, self.arrival)
    }
}

fn lock(marks: &Mutex<Marks>) -> std::sync::MutexGuard<'_, Marks> {
    marks.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The socket hyper reads and writes, with kernel stamps noted in [`Marks`].
struct Io {
    stamped: Stamped<TcpStream>,
    marks: Arc<Mutex<Marks>>,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stamped).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            let mut marks = lock(&this.marks);
            if !marks.read {
                marks.read = true;
                marks.arrival = this.stamped.last_arrival();
            }
            // The request's send stamp was queued before its response could arrive.
            this.stamped
                .sent_stamps(|offset, at| marks.left.push((offset, at)));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(this.stamped.get_mut()).poll_write(cx, data))?;
        lock(&this.marks).written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(this.stamped.get_mut()).poll_write_vectored(cx, bufs))?;
        lock(&this.marks).written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stamped.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stamped.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stamped.get_mut()).poll_shutdown(cx)
    }
}

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
        let marks = Arc::new(Mutex::new(Marks::default()));
        let handshake = match connected {
            Ok(Ok(stream)) => {
                // Stamps on before hyper writes anything: send stamps count from here.
                let io = Io {
                    stamped: Stamped::new(stream),
                    marks: marks.clone(),
                };
                http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
                    .await
                    .ok()
            }
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
        let ended = exchange_all(&plan, &spec, &mut sender, &marks, &mut slots, &mut stop).await;
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
    marks: &Mutex<Marks>,
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
            let start = lock(marks).begin();
            let sending = Instant::now();
            let sending_wall = SystemTime::now();
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
                    let (left, arrived) = lock(marks).stamps(start);
                    let sent_latency = match arrived {
                        Some(at) => match left.and_then(|left| at.duration_since(left).ok()) {
                            Some(latency) => latency,
                            None => {
                                // No send stamp: from when we handed hyper the request.
                                Live::add(&live.send_unstamped, 1);
                                at.duration_since(sending_wall).unwrap_or_default()
                            }
                        },
                        None => {
                            // No receive stamp: to our read, which adds our own wake-up delay.
                            Live::add(&live.unstamped, 1);
                            received.saturating_duration_since(sending)
                        }
                    };
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
    use std::time::Duration;

    use super::*;

    /// An exchange is timed from the send stamp of the last byte written since it began, and
    /// to the first read since; stamps of earlier exchanges, or of a write cut short, are not
    /// its own.
    #[test]
    fn an_exchange_takes_the_stamp_of_its_last_byte() {
        let at = |us| SystemTime::UNIX_EPOCH + Duration::from_micros(us);
        let mut marks = Marks {
            written: 300,
            ..Marks::default()
        };
        let start = marks.begin();
        assert_eq!(marks.stamps(start), (None, None), "nothing written yet");
        marks.written += 120;
        marks.left = vec![(299, at(1)), (359, at(2)), (419, at(3))];
        marks.read = true;
        marks.arrival = Some(at(9));
        assert_eq!(marks.stamps(start), (Some(at(3)), Some(at(9))));
        let start = marks.begin();
        assert_eq!(
            marks.stamps(start),
            (None, None),
            "the last exchange's stamps are gone"
        );
        marks.written += 10;
        marks.left = vec![(425, at(4))];
        assert_eq!(
            marks.stamps(start),
            (None, None),
            "only part of it was stamped"
        );
        // Offsets wrap at 2³².
        let mut marks = Marks {
            written: u64::from(u32::MAX) + 5,
            ..Marks::default()
        };
        let start = marks.begin() - 10;
        marks.left = vec![(3, at(5))];
        assert_eq!(marks.stamps(start).0, Some(at(5)));
    }

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
