//! The agent's endpoint: `/metrics` (OpenMetrics text), `/debug/pprof/profile?seconds=N`
//! (on-CPU), `/debug/pprof/offcpu`, `/debug/pprof/locks` (the same shape: the paths Parca and
//! Pyroscope pull), and `/healthz`. HTTP/1 on its own thread and runtime, so a slow scraper
//! never delays a drain.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};

use super::{LiveKind, ProfileKind, RETAIN, Shared, metrics::Metrics};
use crate::report::pprof;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Go's `net/http/pprof` default when `seconds` is not given.
const DEFAULT_SECONDS: u64 = 30;
/// Profiles built at once; more answer 429. Each copies up to [`RETAIN`] of stacks, and a
/// fleet's collector asks one at a time per target.
const PROFILES_AT_ONCE: usize = 4;
/// Open connections; more are closed at once, so idle clients cannot take every descriptor
/// the agent needs to attach.
const CONNECTIONS: usize = 64;
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` now (so a taken port fails the start) and serves on a thread of its own.
    pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(Metrics::registry(shared.state.clone(), shared.host.clone()));
        let (stop, mut stopped) = watch::channel(false);
        let profiles = Arc::new(Semaphore::new(PROFILES_AT_ONCE));
        let connections = Arc::new(Semaphore::new(CONNECTIONS));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered with the runtime here, so a failure fails the agent's start.
        let listener = {
            let _in = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let thread = std::thread::Builder::new()
            .name("agent-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        let (stream, _) = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok(a) => a,
                                Err(err) => {
                                    log::debug!("accept: {err}");
                                    continue;
                                }
                            },
                            _ = stopped.changed() => return,
                        };
                        let Ok(open) = connections.clone().try_acquire_owned() else {
                            log::debug!(
                                "agent endpoint: {CONNECTIONS} connections open, closing one more"
                            );
                            continue;
                        };
                        let (shared, registry, profiles) =
                            (shared.clone(), registry.clone(), profiles.clone());
                        tokio::spawn(async move {
                            let _open = open;
                            let service = service_fn(move |req| {
                                handle(req, shared.clone(), registry.clone(), profiles.clone())
                            });
                            if let Err(err) = hyper::server::conn::http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(HEADER_TIMEOUT)
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                            {
                                log::debug!("agent endpoint connection: {err}");
                            }
                        });
                    }
                });
            })?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn reply(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(kind) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

/// `seconds=N` from a query string: 1 to [`RETAIN`], the default when absent.
pub fn seconds(query: Option<&str>) -> Result<u64, String> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("seconds="))
    else {
        return Ok(DEFAULT_SECONDS);
    };
    let n: u64 = value
        .parse()
        .map_err(|_| format!("seconds={value}: not a whole number"))?;
    if n == 0 || n > RETAIN.as_secs() {
        return Err(format!(
            "seconds={n}: between 1 and {} (what the agent keeps)",
            RETAIN.as_secs()
        ));
    }
    Ok(n)
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    registry: Arc<prometheus_client::registry::Registry>,
    profiles: Arc<Semaphore>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let kind = match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            return Ok(
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => reply(StatusCode::OK, OPENMETRICS, body),
                    Err(_) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding failed\n".into(),
                    ),
                },
            );
        }
        "/healthz" => {
            let targets = shared.state.lock().map(|s| s.targets.len()).unwrap_or(0);
            return Ok(text(
                StatusCode::OK,
                format!("ok: {targets} targets attached\n"),
            ));
        }
        "/debug/pprof/allocs" | "/debug/pprof/heap" => {
            return Ok(live(&shared, LiveKind::Allocs));
        }
        "/debug/pprof/memory" => return Ok(live(&shared, LiveKind::Held)),
        "/debug/pprof/profile" => ProfileKind::Cpu,
        "/debug/pprof/offcpu" => ProfileKind::Offcpu,
        "/debug/pprof/locks" => ProfileKind::Locks,
        path => {
            return Ok(text(
                StatusCode::NOT_FOUND,
                format!(
                    "{path}: not served; try /metrics, /healthz, /debug/pprof/profile, \
                     /debug/pprof/offcpu, /debug/pprof/locks, /debug/pprof/allocs, \
                     /debug/pprof/memory\n"
                ),
            ));
        }
    };
    if !shared.families.contains(kind.family()) {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("the agent runs without --{}\n", kind.family()),
        ));
    }
    let seconds = match seconds(req.uri().query()) {
        Ok(s) => s,
        Err(err) => return Ok(text(StatusCode::BAD_REQUEST, format!("{err}\n"))),
    };
    let Ok(_building) = profiles.try_acquire_owned() else {
        return Ok(text(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {PROFILES_AT_ONCE} profiles are taken at once; try again\n"),
        ));
    };
    let (since, start) = (Instant::now(), jiff::Timestamp::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // The drain that closes the window: its stacks are from before the deadline.
    let body = tokio::task::spawn_blocking(move || {
        shared.wait_drain_after(Instant::now());
        let span = shared.stacks_since(kind, since);
        let profile = shared.profile(kind, &span.stacks, start, span.duration());
        let mut bytes = Vec::new();
        pprof::write(&profile, &mut bytes).map(|()| bytes)
    })
    .await;
    Ok(match body {
        Ok(Ok(bytes)) => {
            let mut response = reply(StatusCode::OK, "application/octet-stream", bytes);
            response.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                header::HeaderValue::from_static("attachment; filename=\"profile.pb.gz\""),
            );
            response
        }
        _ => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the profile failed\n".into(),
        ),
    })
}

/// A live profile as of the last drain, at once: live figures are a state, not a rate, so
/// `seconds` does not apply (Go's `heap` without `seconds` answers the same way).
fn live(shared: &Shared, kind: LiveKind) -> Response<Full<Bytes>> {
    if !shared.families.contains(kind.family()) {
        return text(
            StatusCode::NOT_FOUND,
            format!("the agent runs without --{}\n", kind.family()),
        );
    }
    let mut bytes = Vec::new();
    match pprof::write(&shared.live_profile(kind), &mut bytes) {
        Ok(()) => {
            let mut response = reply(StatusCode::OK, "application/octet-stream", bytes);
            response.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                header::HeaderValue::from_static("attachment; filename=\"profile.pb.gz\""),
            );
            response
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the profile failed\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parameter() {
        assert_eq!(seconds(None), Ok(DEFAULT_SECONDS));
        assert_eq!(seconds(Some("seconds=2")), Ok(2));
        assert_eq!(seconds(Some("debug=0&seconds=15")), Ok(15));
        assert!(seconds(Some("seconds=0")).is_err());
        assert!(seconds(Some("seconds=61")).is_err());
        assert!(seconds(Some("seconds=x")).is_err());
    }
}
