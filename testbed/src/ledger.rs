//! `testbed-ledger`: an HTTP/1.1 service over keep-alive connections.
//! - `POST /ingest` takes `{"entries":[{"account":"alice","amount":5}, ...]}` and replies once
//!   the single committer thread has appended the batch to the write-ahead file and fsynced it;
//! - `GET /roots` returns the latest hash root of the chain of batches.
//!
//! Request handling runs on a multi-threaded tokio runtime; balances live in [`LEDGER_INDEX`],
//! one `static` mutex (the hot lock under `--contend`).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::{
    net::TcpStream,
    sync::{oneshot, watch},
};

use crate::{
    conn::{Close, RequestClock, TimedIo, Timeout},
    knobs::{self, Knobs},
    skeleton::{Gauges, ServeError, Service, Spec},
    wal::{Commit, Entry, OnDamage, Roots, Wal, WalError},
};

/// Largest request head accepted: every byte from the request line's first through the blank
/// line that ends the head (its final CRLF CRLF included). A head of exactly this size is
/// served, one byte more gets 431 and a close. hyper's `max_header_size` counts exactly this;
/// its `max_buf_size` alone does not: a read may fill the buffer past it (with it alone, a head
/// of this size plus one byte was served).
pub const MAX_HEAD: usize = 64 * 1024;
/// A keep-alive connection with no request for this long is closed. Far above the pause
/// between requests of any load-driver profile (one a minute at the slowest), so only clients
/// that have gone away are cut.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A request head must be complete this long after its first byte. Clients send a head in one
/// write; ten seconds only cuts slow-header (slowloris) clients and broken links.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Ten times the load driver's largest profile (stress: 1000 connections).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The closes the ledger can make, in its statistics and exit lines.
const CLOSES: [Close; 4] = [
    Close::Idle,
    Close::HeaderTimeout,
    Close::HeadTooLarge,
    Close::OverCap,
];
/// Most entries in one batch.
pub const MAX_ENTRIES: usize = 10_000;
/// Longest account name.
pub const MAX_ACCOUNT: usize = 64;
/// Batches the committer writes with one fsync, at most.
const GROUP_COMMIT: usize = 256;

/// Everything `testbed-ledger` is started with.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    pub listen: SocketAddr,
    pub wal: PathBuf,
    /// What to do when the write-ahead file has a damaged record (not a torn tail).
    pub wal_on_damage: OnDamage,
    /// Runtime worker threads.
    pub workers: usize,
    /// Largest `POST /ingest` body, in bytes.
    pub max_body: usize,
    /// Print a statistics line this often (`None`: only at exit).
    pub stats_every: Option<Duration>,
    /// Close a connection with no request in progress for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose request head is not complete this long after it began
    /// (`None`: never).
    pub header_timeout: Option<Duration>,
    /// Refuse connections beyond this many open ones.
    pub max_connections: usize,
    pub knobs: Knobs,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            wal: PathBuf::from("ledger.wal"),
            wal_on_damage: OnDamage::Refuse,
            workers: 4,
            max_body: 256 * 1024,
            stats_every: Some(Duration::from_secs(10)),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            knobs: Knobs::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot start the committer thread")]
    Committer(#[source] io::Error),
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Account balances, behind the one mutex every ingest takes. A `static` on purpose: under
/// `--contend` this is the hot lock, and a profiler names it by this symbol.
pub static LEDGER_INDEX: Mutex<LedgerIndex> = Mutex::new(LedgerIndex::new());

/// `--stall-every`'s job: holds [`LEDGER_INDEX`] across `millis` of work.
extern "C" fn stall_ledger_index(millis: u64) {
    let guard = ledger_index();
    knobs::stall_work(millis);
    drop(guard);
}

fn ledger_index() -> MutexGuard<'static, LedgerIndex> {
    LEDGER_INDEX.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
pub struct LedgerIndex {
    balances: BTreeMap<String, i64>,
    /// `--contend`'s work product: a digest of request bodies.
    digest: [u8; 32],
}

impl LedgerIndex {
    pub const fn new() -> Self {
        Self {
            balances: BTreeMap::new(),
            digest: [0; 32],
        }
    }

    pub fn apply(&mut self, entries: &[Entry]) {
        for entry in entries {
            let balance = self.balances.entry(entry.account.clone()).or_default();
            *balance = balance.saturating_add(entry.amount);
        }
    }

    pub fn balance(&self, account: &str) -> Option<i64> {
        self.balances.get(account).copied()
    }

    pub fn accounts(&self) -> usize {
        self.balances.len()
    }

    /// `--contend`'s work: hashes `payload` into the digest, then keeps hashing until `deadline`.
    fn work_until(&mut self, payload: &[u8], deadline: Instant) {
        let mut hasher = Sha256::new();
        hasher.update(self.digest);
        hasher.update(payload);
        self.digest = hasher.finalize().into();
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            knobs::burn(&mut self.digest, left);
        }
    }
}

impl Default for LedgerIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// `POST /ingest` bodies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub entries: Vec<Entry>,
}

impl Batch {
    /// Parses and checks a body; the error says what a client must fix.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let batch: Self = serde_json::from_slice(body).map_err(|err| {
            format!(r#"body must be {{"entries":[{{"account":"...","amount":N}}, ...]}}: {err}"#)
        })?;
        if batch.entries.is_empty() || batch.entries.len() > MAX_ENTRIES {
            return Err(format!(
                "a batch has 1 to {MAX_ENTRIES} entries, this one has {}",
                batch.entries.len()
            ));
        }
        if let Some(bad) = batch
            .entries
            .iter()
            .find(|e| e.account.is_empty() || e.account.len() > MAX_ACCOUNT)
        {
            return Err(format!(
                "account names are 1 to {MAX_ACCOUNT} bytes, got {:?}",
                bad.account
            ));
        }
        Ok(batch)
    }
}

struct CommitRequest {
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Commit, String>>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    ingests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    /// Requests refused with 501 for a transfer coding other than `chunked` alone.
    unsupported_codings: AtomicU64,
}

struct Shared {
    commits: mpsc::Sender<CommitRequest>,
    roots: watch::Receiver<Roots>,
    knobs: Knobs,
    max_body: usize,
    idle_timeout: Option<Duration>,
    header_timeout: Option<Duration>,
    counters: Counters,
}

impl Service for Shared {
    fn connection(
        self: &Arc<Self>,
        stream: TcpStream,
    ) -> impl Future<Output = Option<Close>> + Send + 'static {
        let shared = self.clone();
        async move { serve_connection(stream, &shared).await }
    }

    fn refuse(&self, stream: TcpStream, max: usize) {
        refuse(stream, max);
    }

    fn summary(&self, gauges: &Gauges) -> String {
        summary(self, gauges)
    }
}

/// Runs the ledger until SIGINT or SIGTERM, then prints a summary line and returns.
pub fn run(config: LedgerConfig) -> Result<(), LedgerError> {
    let wal = Wal::open(&config.wal, config.wal_on_damage)?;
    let spec = Spec {
        name: "testbed-ledger",
        thread_name: "ledger-worker",
        listen: config.listen,
        workers: config.workers,
        stats_every: config.stats_every,
        max_connections: config.max_connections,
    };
    spec.runtime()?.block_on(serve(spec, config, wal))
}

async fn serve(spec: Spec, config: LedgerConfig, wal: Wal) -> Result<(), LedgerError> {
    let listening = spec.bind().await?;
    let recovered = wal.roots();
    let recovery = wal.recovery().to_string();
    let (roots_tx, roots_rx) = watch::channel(recovered);
    let (commit_tx, commit_rx) = mpsc::channel();
    thread::Builder::new()
        .name("committer".to_string())
        .spawn(move || committer(wal, commit_rx, roots_tx))
        .map_err(LedgerError::Committer)?;
    let shared = Arc::new(Shared {
        commits: commit_tx,
        roots: roots_rx,
        knobs: config.knobs.clone(),
        max_body: config.max_body,
        idle_timeout: config.idle_timeout,
        header_timeout: config.header_timeout,
        counters: Counters::default(),
    });
    println!(
        "testbed-ledger listening on {} (wal {}, {} entries in {} batches recovered, {recovery}, {} workers, idle timeout {}, header timeout {}, {}, knobs: {})",
        listening.local_addr(),
        config.wal.display(),
        recovered.entries,
        recovered.batches,
        config.workers.max(1),
        Timeout(config.idle_timeout),
        Timeout(config.header_timeout),
        listening.describe_cap(),
        config.knobs.describe()
    );
    config
        .knobs
        .start_stalls(stall_ledger_index)
        .map_err(|e| LedgerError::Serve(ServeError::Stalls(e)))?;
    listening.serve(shared).await;
    Ok(())
}

/// Serves one connection; why the ledger closed it, if it did.
async fn serve_connection(stream: TcpStream, shared: &Arc<Shared>) -> Option<Close> {
    let _ = stream.set_nodelay(true);
    let clock = RequestClock::new(shared.idle_timeout, shared.header_timeout);
    let service = {
        let shared = shared.clone();
        let clock = clock.clone();
        service_fn(move |request| {
            let shared = shared.clone();
            let clock = clock.clone();
            async move {
                clock.request_started();
                let response = handle(request, shared).await;
                clock.request_done();
                response
            }
        })
    };
    // A broken or malformed connection is that client's problem: hyper has already answered
    // what it could (400, 431); keep serving the others.
    let served = http1::Builder::new()
        .keep_alive(true)
        // Off: hyper's header timer also runs between keep-alive requests; RequestClock keeps
        // the idle and header deadlines apart.
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(TimedIo::new(stream, clock.clone())), service)
        .await;
    clock.expired().or_else(|| {
        served
            .is_err_and(|err| err.is_parse_too_large())
            .then_some(Close::HeadTooLarge)
    })
}

/// Tells a client over the connection cap why it is closed, if its socket takes the reply at
/// once; the accept loop never waits for a refused client.
fn refuse(stream: TcpStream, max_connections: usize) {
    let body = json!({
        "error": format!("{max_connections} connections are open, the server's cap: retry later")
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// The single writer: takes every batch waiting (up to [`GROUP_COMMIT`]), appends them with one
/// fsync, then answers each. Ends when every sender is gone.
fn committer(mut wal: Wal, requests: mpsc::Receiver<CommitRequest>, roots: watch::Sender<Roots>) {
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_COMMIT {
            match requests.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let batches: Vec<&[Entry]> = group.iter().map(|r| r.entries.as_slice()).collect();
        match wal.append(&batches) {
            Ok(commits) => {
                roots.send_replace(wal.roots());
                for (request, commit) in group.into_iter().zip(commits) {
                    // The client may have gone; its batch is committed all the same.
                    let _ = request.reply.send(Ok(commit));
                }
            }
            Err(err) => {
                eprintln!("testbed-ledger: commit failed: {err}");
                for request in group {
                    let _ = request.reply.send(Err(err.to_string()));
                }
            }
        }
    }
}

/// One line of `key=value` tallies; tests parse it.
fn summary(shared: &Shared, gauges: &Gauges) -> String {
    let counters = &shared.counters;
    let roots = *shared.roots.borrow();
    format!(
        "connections={} peak_connections={} {} requests={} ingests={} entries={} batches={} client_errors={} server_errors={} unsupported_codings={} root={} leaked_bytes={} leaked_allocations={} slow_paths={} stalls={}",
        gauges.connections(),
        gauges.peak_connections(),
        gauges.closes.tallies(&CLOSES),
        counters.requests.load(Ordering::Relaxed),
        counters.ingests.load(Ordering::Relaxed),
        roots.entries,
        roots.batches,
        counters.client_errors.load(Ordering::Relaxed),
        counters.server_errors.load(Ordering::Relaxed),
        counters.unsupported_codings.load(Ordering::Relaxed),
        hex::encode(roots.root),
        knobs::LEAKED_BYTES.load(Ordering::Relaxed),
        knobs::LEAKED_ALLOCATIONS.load(Ordering::Relaxed),
        knobs::SLOW_PATHS.load(Ordering::Relaxed),
        knobs::STALLS.load(Ordering::Relaxed),
    )
}

type HttpResponse = Response<Full<Bytes>>;

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<HttpResponse, Infallible> {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    if let Some((millis, spin)) = shared.knobs.on_request() {
        knobs::slow_path(millis, spin);
    }
    if let Some(codings) = unsupported_transfer_coding(request.headers()) {
        shared
            .counters
            .unsupported_codings
            .fetch_add(1, Ordering::Relaxed);
        let mut response = reply(
            StatusCode::NOT_IMPLEMENTED,
            &json!({"error": format!(
                "transfer coding {codings:?} is not supported: send the body with Content-Length, or with Transfer-Encoding: chunked alone"
            )}),
        );
        // The body's framing is not one we read, so the connection cannot carry another request.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return Ok(response);
    }
    let response = match (request.method(), request.uri().path()) {
        (&Method::POST, "/ingest") => ingest(request, &shared).await,
        (&Method::GET, "/roots") => roots(&shared),
        (_, "/ingest") => method_not_allowed("POST"),
        (_, "/roots") => method_not_allowed("GET"),
        (_, path) => reply(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no such path {path:?}: use POST /ingest or GET /roots")}),
        ),
    };
    let counter = if response.status().is_server_error() {
        &shared.counters.server_errors
    } else if response.status().is_client_error() {
        &shared.counters.client_errors
    } else {
        return Ok(response);
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Ok(response)
}

/// The request's transfer codings when they are anything but `chunked` alone, which is all this
/// server decodes (RFC 9112 section 6.1: answer 501 to a coding not understood). hyper refuses
/// codings without a final `chunked` itself (400), but hands on `gzip, chunked` with only the
/// chunked framing removed, so the handler would see compressed bytes as the body.
fn unsupported_transfer_coding(headers: &HeaderMap) -> Option<String> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        codings.extend(
            text.split(',')
                .map(|coding| coding.trim().to_ascii_lowercase())
                .filter(|coding| !coding.is_empty()),
        );
    }
    match codings.as_slice() {
        [] => None,
        [only] if only == "chunked" => None,
        _ => Some(codings.join(", ")),
    }
}

async fn ingest(request: Request<Incoming>, shared: &Shared) -> HttpResponse {
    let body = match Limited::new(request.into_body(), shared.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": format!("body over {} bytes: send smaller batches", shared.max_body)}),
            );
        }
        Err(err) => {
            return reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("reading the body: {err}")}),
            );
        }
    };
    let batch = match Batch::parse(&body) {
        Ok(batch) => batch,
        Err(why) => return reply(StatusCode::BAD_REQUEST, &json!({ "error": why })),
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let sent = shared.commits.send(CommitRequest {
        entries: batch.entries.clone(),
        reply: reply_tx,
    });
    let unavailable = || {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "the committer has stopped: restart the ledger"}),
        )
    };
    if sent.is_err() {
        return unavailable();
    }
    let commit = match reply_rx.await {
        Ok(Ok(commit)) => commit,
        Ok(Err(why)) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": format!("commit failed: {why}") }),
            );
        }
        Err(_) => return unavailable(),
    };
    // Committed: only now do the entries count as accepted.
    {
        let mut index = ledger_index();
        index.apply(&batch.entries);
        if let Some(work) = shared.knobs.contend {
            index.work_until(&body, Instant::now() + work);
        }
    }
    shared.knobs.on_accepted();
    shared.counters.ingests.fetch_add(1, Ordering::Relaxed);
    reply(
        StatusCode::OK,
        &json!({
            "accepted": commit.entries,
            "batch": commit.batch,
            "first_seq": commit.first_seq,
            "root": hex::encode(commit.root),
        }),
    )
}

fn roots(shared: &Shared) -> HttpResponse {
    let roots = *shared.roots.borrow();
    let body = json!({
        "root": hex::encode(roots.root),
        "batches": roots.batches,
        "entries": roots.entries,
    });
    if let Some(work) = shared.knobs.contend {
        ledger_index().work_until(body.to_string().as_bytes(), Instant::now() + work);
    }
    reply(StatusCode::OK, &body)
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = reply(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": format!("use {allow} here")}),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

fn reply(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_checked() {
        let ok = Batch::parse(br#"{"entries":[{"account":"a","amount":1,"memo":"m"}]}"#).unwrap();
        assert_eq!(ok.entries.len(), 1);
        for bad in [
            &b"{"[..],
            br#"{"entries":[]}"#,
            br#"{"entries":[{"account":"","amount":1}]}"#,
            br#"{"entries":[{"account":"a"}]}"#,
            br#"{"entries":[{"account":"a","amount":1.5}]}"#,
            br#"{"entries":[{"account":"a","amount":1,"extra":0}]}"#,
            br#"[{"account":"a","amount":1}]"#,
        ] {
            assert!(
                Batch::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"entries":[{{"account":"{}","amount":1}}]}}"#,
            "x".repeat(65)
        );
        assert!(
            Batch::parse(long.as_bytes())
                .unwrap_err()
                .contains("1 to 64 bytes")
        );
    }

    #[test]
    fn only_chunked_alone_is_a_supported_transfer_coding() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for value in values {
                map.append(
                    header::TRANSFER_ENCODING,
                    header::HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        assert_eq!(unsupported_transfer_coding(&headers(&[])), None);
        assert_eq!(unsupported_transfer_coding(&headers(&["chunked"])), None);
        assert_eq!(unsupported_transfer_coding(&headers(&[" Chunked ,"])), None);
        assert_eq!(
            unsupported_transfer_coding(&headers(&["gzip, chunked"])).as_deref(),
            Some("gzip, chunked")
        );
        assert_eq!(
            unsupported_transfer_coding(&headers(&["gzip", "chunked"])).as_deref(),
            Some("gzip, chunked"),
            "codings over several header lines add up"
        );
        assert!(unsupported_transfer_coding(&headers(&["chunked, chunked"])).is_some());
        assert!(unsupported_transfer_coding(&headers(&["identity"])).is_some());
    }

    #[test]
    fn index_applies_entries() {
        let mut index = LedgerIndex::new();
        let entry = |account: &str, amount| Entry {
            account: account.to_string(),
            amount,
            memo: None,
        };
        index.apply(&[entry("a", 5), entry("b", 3), entry("a", -2)]);
        assert_eq!(index.balance("a"), Some(3));
        assert_eq!(index.balance("b"), Some(3));
        assert_eq!(index.accounts(), 2);
    }
}
