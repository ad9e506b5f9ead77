//! What both servers do per connection to hold up against idle, slow and too many clients, as
//! production servers must:
//! - [`ConnectionCap`]: at most `--max-connections` open; one more is accepted only to be closed
//!   at once and logged, so its client hears a close instead of waiting in the listen backlog;
//! - [`fit_descriptor_limit`]: the cap always fits under the process's descriptor limit, since a
//!   server out of descriptors cannot even accept a connection to refuse it;
//! - [`RequestClock`] and [`TimedIo`]: the ledger's idle keep-alive and request-head deadlines;
//!   the pool keeps its idle deadline in its connection loop;
//! - [`Closes`]: every connection a server closed on its own, by reason, for its exit line.

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    str::FromStr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant as TokioInstant, Sleep},
};

/// Why a server closed, or refused, a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Nothing arrived for the idle timeout (pool: no complete line; ledger: no request).
    Idle,
    /// A request head was not finished within the header timeout.
    HeaderTimeout,
    /// A request head over the size limit, answered with 431.
    HeadTooLarge,
    /// A stratum line over the length limit, answered with -32600.
    LineTooLong,
    /// The client stopped reading its replies.
    WriteTimeout,
    /// Refused at accept: `--max-connections` were already open.
    OverCap,
}

impl Close {
    const COUNT: usize = 6;

    /// Its tally's key in a server's statistics and exit lines.
    pub fn key(self) -> &'static str {
        match self {
            Self::Idle => "closed_idle",
            Self::HeaderTimeout => "closed_header_timeout",
            Self::HeadTooLarge => "closed_head_too_large",
            Self::LineTooLong => "closed_line_too_long",
            Self::WriteTimeout => "closed_write_timeout",
            Self::OverCap => "refused_over_cap",
        }
    }
}

/// How many connections a server closed on its own, by [`Close`] reason.
#[derive(Debug, Default)]
pub struct Closes {
    counts: [AtomicU64; Close::COUNT],
}

impl Closes {
    pub fn count(&self, why: Close) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, why: Close) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }

    /// `closed_idle=0 refused_over_cap=2`, for the reasons a server can have.
    pub fn tallies(&self, reasons: &[Close]) -> String {
        reasons
            .iter()
            .map(|&why| format!("{}={}", why.key(), self.get(why)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// At most `max` open connections; refusals are logged at most once a second, so a flood of
/// them cannot flood the log too (the [`Close::OverCap`] tally counts every one).
#[derive(Debug)]
pub struct ConnectionCap {
    max: usize,
    permits: Arc<Semaphore>,
    log: Mutex<RefusalLog>,
}

#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            log: Mutex::default(),
        }
    }

    /// A slot for one connection, held until the connection ends; `None` at the cap.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// The line to log for a refusal of `peer`, or `None` while a line went out less than a
    /// second ago.
    pub fn refusal_line(&self, server: &str, peer: SocketAddr, now: Instant) -> Option<String> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            log.unlogged += 1;
            return None;
        }
        let more = match std::mem::take(&mut log.unlogged) {
            0 => String::new(),
            n => format!(" ({n} more refused since the last such line)"),
        };
        log.last = Some(now);
        Some(format!(
            "{server}: refused a connection from {peer}: {} connections are open, the --max-connections cap; raise it if this many clients are expected{more}",
            self.max
        ))
    }
}

/// Descriptors a server holds besides its connections (stdio, the listener, the runtime's epoll
/// and wakers, the signal pipe, the write-ahead file: 13 for the ledger as measured), plus one
/// for a connection it accepts only to refuse, with room to spare.
pub const SPARE_DESCRIPTORS: u64 = 24;

/// The connection cap that fits under the open-file limit: raises the soft limit toward the
/// hard one to make room for `max` connections, and returns `max`, or less when even the hard
/// limit is too low.
pub fn fit_descriptor_limit(max: usize) -> io::Result<usize> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let (current, maximum) = (
        limit.current.unwrap_or(u64::MAX),
        limit.maximum.unwrap_or(u64::MAX),
    );
    let wanted = (max as u64).saturating_add(SPARE_DESCRIPTORS);
    let mut soft = current;
    if current < wanted && current < maximum {
        soft = wanted.min(maximum);
        // Raising the soft limit up to the hard one needs no privilege.
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(soft),
                maximum: limit.maximum,
            },
        )?;
    }
    let room = soft.saturating_sub(SPARE_DESCRIPTORS);
    Ok(usize::try_from(room)
        .map_or(max, |room| room.min(max))
        .max(1))
}

/// The cap for a startup line: `max 10000 connections`, and why it is lower when the open-file
/// limit would not hold it.
pub fn describe_cap(asked: usize, fits: usize) -> String {
    if fits < asked {
        format!(
            "max {fits} connections (not {asked}: the open-file limit allows no more; raise it with ulimit -n)"
        )
    } else {
        format!("max {fits} connections")
    }
}

/// Where a keep-alive HTTP connection is, as far as its deadlines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request since then (the accept, or the last response): the idle timeout.
    Idle(TokioInstant),
    /// The first byte of a request head arrived then: the header timeout.
    Head(TokioInstant),
    /// The handler has the request (and reads its body): no deadline here.
    Busy,
}

/// The deadlines of one HTTP connection, shared by its reads ([`TimedIo`]) and its request
/// handler, which says when a request starts ([`RequestClock::request_started`]: its head is
/// complete) and ends.
///
/// hyper's own `header_read_timeout` is not enough: it starts when hyper begins waiting for a
/// head, so on a keep-alive connection it also bounds the idle time between requests, and a
/// tight header timeout would cut clients that pause between requests.
#[derive(Debug)]
pub struct RequestClock {
    idle: Option<Duration>,
    header: Option<Duration>,
    state: Mutex<(Phase, Option<Close>)>,
}

impl RequestClock {
    /// A clock for a connection accepted now; `None` turns that deadline off.
    pub fn new(idle: Option<Duration>, header: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            idle,
            header,
            state: Mutex::new((Phase::Idle(TokioInstant::now()), None)),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (Phase, Option<Close>)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The head of a request is complete and its handler runs.
    pub fn request_started(&self) {
        self.state().0 = Phase::Busy;
    }

    /// The handler has its response: the connection is idle again from now.
    pub fn request_done(&self) {
        self.state().0 = Phase::Idle(TokioInstant::now());
    }

    /// Why the connection was closed by a deadline, if it was.
    pub fn expired(&self) -> Option<Close> {
        self.state().1
    }

    fn on_bytes(&self, now: TokioInstant) {
        let mut state = self.state();
        if let Phase::Idle(_) = state.0 {
            state.0 = Phase::Head(now);
        }
    }

    fn deadline(&self) -> Option<(TokioInstant, Close)> {
        match self.state().0 {
            Phase::Idle(since) => self.idle.map(|d| (since + d, Close::Idle)),
            Phase::Head(since) => self.header.map(|d| (since + d, Close::HeaderTimeout)),
            Phase::Busy => None,
        }
    }

    fn expire(&self, why: Close) {
        self.state().1 = Some(why);
    }
}

/// A stream whose reads fail with `TimedOut` once its [`RequestClock`]'s deadline passes, which
/// makes hyper close the connection. Reads are where a server waits for a client, so the
/// deadline is checked whenever a read would block.
#[derive(Debug)]
pub struct TimedIo<S> {
    inner: S,
    clock: Arc<RequestClock>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<TokioInstant>,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, clock: Arc<RequestClock>) -> Self {
        Self {
            inner,
            clock,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.on_bytes(TokioInstant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let Some((deadline, why)) = this.clock.deadline() else {
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.sleep.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.clock.expire(why);
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why.key())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A timeout flag's value: `300s`, `5m`, `1m 30s`; `0s` or `off` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Option<Duration>);

impl FromStr for Timeout {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "off" {
            return Ok(Self(None));
        }
        let duration = humantime::parse_duration(text)
            .map_err(|err| format!("{err} (e.g. 10s, 5m; 0s or off turns it off)"))?;
        Ok(Self((!duration.is_zero()).then_some(duration)))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(duration) => humantime::format_duration(duration).fmt(f),
            None => f.write_str("off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn closes_tally_by_reason() {
        let closes = Closes::default();
        closes.count(Close::Idle);
        closes.count(Close::Idle);
        closes.count(Close::OverCap);
        assert_eq!(
            closes.tallies(&[Close::Idle, Close::HeaderTimeout, Close::OverCap]),
            "closed_idle=2 closed_header_timeout=0 refused_over_cap=1"
        );
    }

    #[test]
    fn the_cap_admits_up_to_max_and_frees_slots() {
        let cap = ConnectionCap::new(2);
        let a = cap.admit().unwrap();
        let _b = cap.admit().unwrap();
        assert!(cap.admit().is_none());
        drop(a);
        assert!(cap.admit().is_some());
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let cap = ConnectionCap::new(3);
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let t0 = Instant::now();
        let first = cap.refusal_line("testbed-pool", peer, t0).unwrap();
        assert!(first.contains("refused a connection from 127.0.0.1:4000"));
        assert!(first.contains("3 connections are open, the --max-connections cap"));
        assert!(!first.contains("more refused"));
        assert!(
            cap.refusal_line("p", peer, t0 + Duration::from_millis(500))
                .is_none()
        );
        assert!(
            cap.refusal_line("p", peer, t0 + Duration::from_millis(900))
                .is_none()
        );
        let next = cap
            .refusal_line("p", peer, t0 + Duration::from_millis(1000))
            .unwrap();
        assert!(
            next.ends_with("(2 more refused since the last such line)"),
            "{next}"
        );
    }

    #[test]
    fn the_descriptor_limit_makes_room_for_the_cap() {
        let fits = fit_descriptor_limit(100).unwrap();
        assert_eq!(fits, 100, "any test machine allows 124 open files");
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let hard = limit.maximum.unwrap_or(u64::MAX);
        let huge = fit_descriptor_limit(usize::MAX).unwrap();
        assert!(
            (huge as u64) + SPARE_DESCRIPTORS <= hard,
            "{huge} connections cannot fit under {limit:?}"
        );
    }

    #[test]
    fn timeouts_parse_with_units_and_zero_is_off() {
        let parse = |text: &str| text.parse::<Timeout>();
        assert_eq!(parse("300s"), Ok(Timeout(Some(Duration::from_secs(300)))));
        assert_eq!(parse("5m"), Ok(Timeout(Some(Duration::from_secs(300)))));
        assert_eq!(parse("0s"), Ok(Timeout(None)));
        assert_eq!(parse("off"), Ok(Timeout(None)));
        assert!(parse("300").unwrap_err().contains("e.g. 10s"));
        assert_eq!(Timeout(Some(Duration::from_secs(600))).to_string(), "10m");
        assert_eq!(Timeout(None).to_string(), "off");
    }

    /// The clock's phases drive which deadline a blocked read waits for: idle before a request
    /// (and between requests), the header timeout once a head has begun, none while busy.
    #[tokio::test(start_paused = true)]
    async fn reads_time_out_by_phase() {
        let idle = Duration::from_secs(60);
        let header = Duration::from_secs(5);

        // A connection that never sends: closed by the idle deadline, not the header one.
        let (client, server) = tokio::io::duplex(64);
        let clock = RequestClock::new(Some(idle), Some(header));
        let mut io = TimedIo::new(server, clock.clone());
        let start = tokio::time::Instant::now();
        let mut buf = [0u8; 16];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(clock.expired(), Some(Close::Idle));
        assert!(start.elapsed() >= idle, "{:?}", start.elapsed());
        drop(client);

        // A head that starts and never ends: closed by the header deadline.
        let (mut client, server) = tokio::io::duplex(64);
        let clock = RequestClock::new(Some(idle), Some(header));
        let mut io = TimedIo::new(server, clock.clone());
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let head_began = tokio::time::Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(clock.expired(), Some(Close::HeaderTimeout));
        assert!(head_began.elapsed() >= header);
        assert!(head_began.elapsed() < idle);

        // While a request is handled, reads wait without a deadline; once it is done the idle
        // deadline counts from then.
        let (_client, server) = tokio::io::duplex(64);
        let clock = RequestClock::new(Some(idle), Some(header));
        let mut io = TimedIo::new(server, clock.clone());
        clock.request_started();
        let busy = tokio::time::timeout(idle * 3, io.read(&mut buf)).await;
        assert!(busy.is_err(), "no deadline while busy");
        clock.request_done();
        let done = tokio::time::Instant::now();
        assert!(io.read(&mut buf).await.is_err());
        assert_eq!(clock.expired(), Some(Close::Idle));
        assert!(done.elapsed() >= idle);
    }
}
