//! Idle, slow and surplus clients against both servers: each is closed, and tallied by reason,
//! when its limit says so, and never before; well-behaved clients on other connections are not
//! touched.
//!
//! Timing: every "not closed before the timeout" bound is measured from a client instant the
//! server's clock cannot precede (before connecting, before sending the last request), so it
//! holds exactly. Only "closed by now" bounds need slack: the timeout plus 10 s, for a busy
//! 2-core machine. Active clients pause at most an eighth of a timeout they must not trip, or
//! stay 5 s clear of it.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use testbed::server::Server;

mod common;

/// Slack on every "closed by now" bound.
const SLACK: Duration = Duration::from_secs(10);

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SLACK)).unwrap();
    stream
}

/// Watches, from another thread, for the server to close `stream` (EOF or reset), discarding
/// what it sends; yields when that was, or `None` if it stayed open until `give_up`.
fn watch(stream: &TcpStream, give_up: Instant) -> thread::JoinHandle<Option<Instant>> {
    let stream = stream.try_clone().unwrap();
    thread::spawn(move || closed_at(stream, give_up))
}

fn closed_at(mut stream: TcpStream, give_up: Instant) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            Ok(_) => continue,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(Instant::now()),
        }
    }
}

/// Sends `chunks` one every `every` from another thread, stopping at the first failed write
/// (the server closed).
fn trickle(mut stream: TcpStream, chunks: Vec<Vec<u8>>, every: Duration) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for chunk in chunks {
            if stream.write_all(&chunk).is_err() {
                return;
            }
            thread::sleep(every);
        }
    })
}

fn subscribe_line(id: u64) -> String {
    format!("{{\"id\":{id},\"method\":\"mining.subscribe\",\"params\":[]}}\n")
}

/// The reply to request `id`, skipping pushes; `None` if the connection closed first.
fn stratum_reply(reader: &mut BufReader<TcpStream>, id: u64) -> Option<serde_json::Value> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let message: serde_json::Value = serde_json::from_str(&line).unwrap();
        if message["id"] == id {
            return Some(message);
        }
    }
}

#[test]
fn the_pool_drops_connections_that_send_no_complete_line() {
    let timeout = Duration::from_secs(2);
    let pool = Server::start("testbed-pool", &["--idle-timeout", "2s"]).unwrap();
    assert!(pool.banner.contains("idle timeout 2s"), "{}", pool.banner);
    let started = Instant::now();
    let give_up = started + timeout + SLACK;
    let silent = connect(pool.addr);
    let silent_closed = watch(&silent, give_up);
    // A byte every 250 ms, never a newline: bytes alone keep nothing alive.
    let trickler = connect(pool.addr);
    let trickler_closed = watch(&trickler, give_up);
    let trickling = trickle(
        trickler.try_clone().unwrap(),
        vec![b"{".to_vec(); 60],
        Duration::from_millis(250),
    );
    // A complete line every 250 ms for twice the timeout: each one restarts it.
    let active = connect(pool.addr);
    let mut reader = BufReader::new(active.try_clone().unwrap());
    let mut writer = active;
    let active_until = Instant::now() + 2 * timeout;
    let mut id = 0;
    while Instant::now() < active_until {
        id += 1;
        writer.write_all(subscribe_line(id).as_bytes()).unwrap();
        assert!(
            stratum_reply(&mut reader, id).is_some(),
            "an active miner was dropped after {:?}",
            started.elapsed()
        );
        thread::sleep(Duration::from_millis(250));
    }
    drop((reader, writer));

    for (name, closed) in [("silent", silent_closed), ("trickling", trickler_closed)] {
        let closed = closed
            .join()
            .unwrap()
            .unwrap_or_else(|| panic!("the {name} connection was still open after {SLACK:?}"));
        let after = closed.duration_since(started);
        assert!(
            after >= timeout,
            "the {name} connection was closed after {after:?}, before its idle timeout"
        );
    }
    trickling.join().unwrap();
    let stopped = pool.stop().unwrap();
    assert!(stopped.status.success());
    assert_eq!(
        stopped.count("closed_idle").unwrap(),
        2,
        "{:?}",
        stopped.tallies
    );
}

/// `GET /roots` on a keep-alive connection: its status, or `None` when refused or closed.
fn get_roots(reader: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut writer = reader.get_ref().try_clone().unwrap();
    // A refused connection may be reset before or while this is written.
    writer
        .write_all(b"GET /roots HTTP/1.1\r\nHost: test\r\n\r\n")
        .ok()?;
    common::read_response(reader).map(|(status, _)| status)
}

fn ledger(dir: &tempfile::TempDir, args: &[&str]) -> Server {
    let wal = dir.path().join("ledger.wal");
    let mut all = vec!["--wal", wal.to_str().unwrap()];
    all.extend_from_slice(args);
    Server::start("testbed-ledger", &all).unwrap()
}

#[test]
fn the_ledger_closes_slow_heads_and_idle_connections_but_not_pauses() {
    let header = Duration::from_secs(2);
    let idle = Duration::from_secs(8);
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&dir, &["--header-timeout", "2s", "--idle-timeout", "8s"]);
    assert!(
        ledger.banner.contains("idle timeout 8s, header timeout 2s"),
        "{}",
        ledger.banner
    );

    // Slowloris: the request line, then a header line every 500 ms, never the blank line.
    let started = Instant::now();
    let slow = connect(ledger.addr);
    let slow_closed = watch(&slow, started + header + SLACK);
    let mut lines = vec![b"GET /roots HTTP/1.1\r\nHost: test\r\n".to_vec()];
    lines.extend((0..60).map(|i| format!("X-Slow-{i}: 1\r\n").into_bytes()));
    let trickling = trickle(slow.try_clone().unwrap(), lines, Duration::from_millis(500));

    // A client that waits longer than the header timeout before its first request and between
    // requests, as the load driver's clients do at low rates: idle time, not a slow head.
    let pause = header + Duration::from_secs(1);
    let patient = connect(ledger.addr);
    let mut reader = BufReader::new(patient.try_clone().unwrap());
    thread::sleep(pause);
    assert_eq!(
        get_roots(&mut reader),
        Some(200),
        "first request after a pause"
    );
    thread::sleep(pause);
    // The server's idle clock starts when it has the response, so after this instant.
    let last_request = Instant::now();
    assert_eq!(
        get_roots(&mut reader),
        Some(200),
        "second request after a pause"
    );
    // Then silence: closed by the idle timeout, counted from its last response.
    let patient_closed = closed_at(patient, last_request + idle + SLACK)
        .expect("an idle keep-alive connection is closed");
    let after = patient_closed.duration_since(last_request);
    assert!(after >= idle, "closed {after:?} after its last request");

    let slow_closed = slow_closed
        .join()
        .unwrap()
        .expect("a head that never ends is closed");
    let after = slow_closed.duration_since(started);
    assert!(after >= header, "slow head closed after {after:?}");
    assert!(
        after < idle,
        "slow head closed after {after:?}: by the idle timeout, not the header timeout"
    );
    trickling.join().unwrap();

    let stopped = ledger.stop().unwrap();
    assert!(stopped.status.success());
    assert_eq!(stopped.count("closed_header_timeout").unwrap(), 1);
    assert_eq!(stopped.count("closed_idle").unwrap(), 1);
    assert_eq!(
        stopped.count("requests").unwrap(),
        2,
        "the slow head never became a request"
    );
}

/// Opens connections until one is admitted (a slot frees only once the server has seen a
/// close), counting the refusals on the way.
fn admitted_after_refusals(try_once: impl Fn() -> bool) -> u64 {
    let give_up = Instant::now() + SLACK;
    let mut refused = 0;
    while !try_once() {
        refused += 1;
        assert!(Instant::now() < give_up, "no slot freed within {SLACK:?}");
        thread::sleep(Duration::from_millis(50));
    }
    refused
}

fn assert_refusals_logged(stopped: &testbed::server::Stopped, server: &str, refused: u64) {
    assert!(stopped.status.success());
    assert_eq!(stopped.count("refused_over_cap").unwrap(), refused);
    assert_eq!(stopped.count("peak_connections").unwrap(), 3);
    let logged = stopped
        .lines
        .iter()
        .find(|line| line.starts_with(&format!("{server}: refused a connection from 127.0.0.1:")))
        .unwrap_or_else(|| panic!("no refusal line in {:?}", stopped.lines));
    assert!(
        logged.contains("3 connections are open, the --max-connections cap"),
        "{logged}"
    );
}

#[test]
fn the_pool_refuses_connections_over_the_cap() {
    let pool = Server::start("testbed-pool", &["--max-connections", "3"]).unwrap();
    assert!(pool.banner.contains("max 3 connections"), "{}", pool.banner);
    let miner = |id: u64| {
        let stream = connect(pool.addr);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let sent = (&stream).write_all(subscribe_line(id).as_bytes()).is_ok();
        let served = sent && stratum_reply(&mut reader, id).is_some();
        (served, reader)
    };
    let mut kept: Vec<_> = (1..=3)
        .map(|id| {
            let (served, reader) = miner(id);
            assert!(served, "miner {id} is within the cap");
            reader
        })
        .collect();
    let (served, _fourth) = miner(4);
    assert!(!served, "the fourth connection is refused");
    // A slot frees when a miner leaves.
    kept.pop();
    let refused = 1 + admitted_after_refusals(|| miner(5).0);
    drop(kept);
    assert_refusals_logged(&pool.stop().unwrap(), "testbed-pool", refused);
}

#[test]
fn the_ledger_refuses_connections_over_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&dir, &["--max-connections", "3"]);
    assert!(
        ledger.banner.contains("max 3 connections"),
        "{}",
        ledger.banner
    );
    let client = || BufReader::new(connect(ledger.addr));
    let mut kept: Vec<_> = (0..3)
        .map(|_| {
            let mut reader = client();
            assert_eq!(get_roots(&mut reader), Some(200), "within the cap");
            reader
        })
        .collect();
    // Refused: a 503 if the reply fit in the socket at once, else just the close.
    let status = get_roots(&mut client());
    assert!(
        matches!(status, None | Some(503)),
        "the fourth got {status:?}"
    );
    kept.pop();
    let refused = 1 + admitted_after_refusals(|| get_roots(&mut client()) == Some(200));
    drop(kept);
    assert_refusals_logged(&ledger.stop().unwrap(), "testbed-ledger", refused);
}
