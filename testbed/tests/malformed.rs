//! Malformed input to both servers: garbage, truncated JSON, a 1 MiB line, an unknown method,
//! transfer codings the ledger does not decode, request heads at and just over its limit.
//! Each gets an error or a disconnect, the server keeps serving a well-behaved client on its own
//! connection throughout, and the ledger loses no acknowledged entry.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::{Value, json};
use testbed::{ledger, server::Server, wal};

mod common;
use common::read_response;

const TIMEOUT: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;

fn connect(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

/// Writes `bytes` from another thread, so a server that closes mid-write cannot block us, and
/// reports whether every byte went out.
fn write_in_background(mut stream: TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || stream.write_all(&bytes).is_ok())
}

/// The next JSON line, or `None` when the server closed (or reset) the connection.
fn next_json(reader: &mut BufReader<TcpStream>) -> Option<Value> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(serde_json::from_str(&line).expect("the pool replies in JSON")),
    }
}

/// A miner that completed the handshake, with the job it was given.
struct Miner {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    job: Value,
}

impl Miner {
    fn new(addr: SocketAddr) -> Self {
        let (mut reader, mut writer) = connect(addr);
        writeln!(
            writer,
            r#"{{"id":1,"method":"mining.subscribe","params":["test"]}}"#
        )
        .unwrap();
        writeln!(
            writer,
            r#"{{"id":2,"method":"mining.authorize","params":["good","x"]}}"#
        )
        .unwrap();
        let (mut subscribed, mut authorized, mut job) = (false, false, None);
        while !(subscribed && authorized && job.is_some()) {
            let message = next_json(&mut reader).expect("handshake");
            match message["id"].as_u64() {
                Some(1) => subscribed = message["error"].is_null(),
                Some(2) => authorized = message["result"] == true,
                _ if message["method"] == "mining.notify" => job = Some(message["params"].clone()),
                _ => {}
            }
        }
        Self {
            reader,
            writer,
            job: job.unwrap(),
        }
    }

    /// Submits a share and returns its reply, skipping pushes.
    fn submit(&mut self, id: u64) -> Value {
        let request = json!({"id": id, "method": "mining.submit",
            "params": ["good", self.job[0], format!("{id:08x}"), self.job[7], "00000000"]});
        writeln!(self.writer, "{request}").unwrap();
        loop {
            let message = next_json(&mut self.reader).expect("the pool still answers");
            if message["id"] == id {
                return message;
            }
        }
    }
}

/// The next line that is not a push (`mining.notify`, `mining.set_difficulty`).
fn next_reply(reader: &mut BufReader<TcpStream>) -> Option<Value> {
    loop {
        let message = next_json(reader)?;
        if message.get("method").is_none() {
            return Some(message);
        }
    }
}

fn error_code(reply: &Value) -> i64 {
    reply["error"][0]
        .as_i64()
        .unwrap_or_else(|| panic!("no error code in {reply}"))
}

#[test]
fn the_pool_answers_malformed_input_and_keeps_serving() {
    let pool = Server::start("testbed-pool", &[]).unwrap();
    let addr = pool.addr;
    let mut good = Miner::new(addr);
    let mut id = 100;
    let mut check_good = |good: &mut Miner| {
        id += 1;
        let reply = good.submit(id);
        // Accepted, or a low-difficulty share: either way a real verdict.
        assert!(
            reply["result"] == true || error_code(&reply) == 23,
            "{reply}"
        );
    };
    check_good(&mut good);

    // Garbage, including bytes that are not UTF-8: a parse error, and the connection stays.
    let (mut reader, mut writer) = connect(addr);
    writer.write_all(b"\x00\xff\xfe garbage \x80\n").unwrap();
    let reply = next_reply(&mut reader).unwrap();
    assert_eq!(error_code(&reply), -32700, "{reply}");
    assert_eq!(reply["id"], Value::Null);
    writeln!(
        writer,
        r#"{{"id":7,"method":"mining.subscribe","params":[]}}"#
    )
    .unwrap();
    assert_eq!(
        next_reply(&mut reader).unwrap()["id"],
        7,
        "still served after garbage"
    );
    check_good(&mut good);

    // Truncated JSON on a line of its own.
    writeln!(writer, r#"{{"id":8,"method":"mining.submit","params":["#).unwrap();
    let reply = next_reply(&mut reader).unwrap();
    assert_eq!(error_code(&reply), -32700, "{reply}");

    // Truncated JSON with no newline, then the client half-closes: an error, then a close.
    let (mut reader, mut writer) = connect(addr);
    writer
        .write_all(br#"{"id":9,"method":"mining.subscr"#)
        .unwrap();
    writer.shutdown(Shutdown::Write).unwrap();
    let reply = next_reply(&mut reader).unwrap();
    assert_eq!(error_code(&reply), -32700, "{reply}");
    assert!(
        next_json(&mut reader).is_none(),
        "closed after the last line"
    );
    check_good(&mut good);

    // A 1 MiB line: an error reply or a disconnect, never a 1 MiB buffer.
    let (mut reader, writer) = connect(addr);
    let mut huge = vec![b'a'; MIB];
    huge.push(b'\n');
    let writing = write_in_background(writer, huge);
    if let Some(reply) = next_reply(&mut reader) {
        assert_eq!(error_code(&reply), -32600, "{reply}");
        assert!(reply["error"][1].as_str().unwrap().contains("16384"));
        assert!(
            next_json(&mut reader).is_none(),
            "disconnected after the error"
        );
    }
    let _ = writing.join();
    check_good(&mut good);

    // An unknown method, and a submit with nonsense parameters: errors that keep the id.
    let (mut reader, mut writer) = connect(addr);
    writeln!(
        writer,
        r#"{{"id":11,"method":"mining.frobnicate","params":[]}}"#
    )
    .unwrap();
    let reply = next_reply(&mut reader).unwrap();
    assert_eq!(
        (reply["id"].as_u64(), error_code(&reply)),
        (Some(11), -32601)
    );
    writeln!(
        writer,
        r#"{{"id":12,"method":"mining.subscribe","params":[]}}"#
    )
    .unwrap();
    writeln!(
        writer,
        r#"{{"id":13,"method":"mining.submit","params":["good","1",5,null]}}"#
    )
    .unwrap();
    let reply = loop {
        let message = next_reply(&mut reader).unwrap();
        if message["id"] == 13 {
            break message;
        }
    };
    assert_eq!(error_code(&reply), -32602, "{reply}");
    check_good(&mut good);

    // The well-behaved miner's connection outlived all of it, and the pool exits cleanly.
    let stopped = pool.stop().unwrap();
    assert!(stopped.status.success());
    assert_eq!(
        stopped.count("workers").unwrap(),
        1,
        "only the good worker submitted shares"
    );
}

fn post(writer: &mut TcpStream, path: &str, body: &[u8]) -> io::Result<()> {
    write!(
        writer,
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    writer.write_all(body)
}

/// A keep-alive client that posts three-entry batches and counts the acknowledged entries.
struct Ingester {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    acknowledged: u64,
}

impl Ingester {
    fn ingest(&mut self) {
        let batch = br#"{"entries":[{"account":"a","amount":1},{"account":"b","amount":2},{"account":"c","amount":-3}]}"#;
        post(&mut self.writer, "/ingest", batch).unwrap();
        let (status, body) = read_response(&mut self.reader).expect("the ledger still answers");
        assert_eq!(status, 200, "{body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["accepted"], 3);
        self.acknowledged += 3;
    }
}

#[test]
fn the_ledger_answers_malformed_input_and_loses_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let wal_path = dir.path().join("ledger.wal");
    let ledger = Server::start("testbed-ledger", &["--wal", wal_path.to_str().unwrap()]).unwrap();
    let addr = ledger.addr;
    let (reader, writer) = connect(addr);
    let mut good = Ingester {
        reader,
        writer,
        acknowledged: 0,
    };
    good.ingest();

    // Garbage instead of a request: 400, or a disconnect.
    let (mut reader, mut writer) = connect(addr);
    writer.write_all(b"\x00\xff\xfe garbage\r\n\r\n").unwrap();
    if let Some((status, _)) = read_response(&mut reader) {
        assert_eq!(status, 400);
    }
    good.ingest();

    // Truncated JSON in a complete request: 400 with a reason, and the connection stays.
    let (mut reader, mut writer) = connect(addr);
    post(
        &mut writer,
        "/ingest",
        br#"{"entries":[{"account":"x","amou"#,
    )
    .unwrap();
    let (status, body) = read_response(&mut reader).unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("entries"), "{body}");
    post(&mut writer, "/ingest", br#"{"entries":[]}"#).unwrap();
    assert_eq!(
        read_response(&mut reader).unwrap().0,
        400,
        "an empty batch is refused too"
    );
    good.ingest();

    // A body cut short by a disconnect: nothing to answer, and nothing committed.
    let (_, mut writer) = connect(addr);
    write!(
        writer,
        "POST /ingest HTTP/1.1\r\nHost: test\r\nContent-Length: 500\r\n\r\n{{\"entries\":[{{\"account\":\"lost\",\"amount\":1}}]}}"
    )
    .unwrap();
    drop(writer);
    good.ingest();

    // A 1 MiB request line: 431 (or 400), or a disconnect.
    let (mut reader, writer) = connect(addr);
    let mut huge = b"GET /".to_vec();
    huge.extend(vec![b'a'; MIB]);
    huge.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\n\r\n");
    let writing = write_in_background(writer, huge);
    if let Some((status, _)) = read_response(&mut reader) {
        assert!(status == 431 || status == 400, "{status}");
    }
    let _ = writing.join();
    good.ingest();

    // A 1 MiB JSON line as a body: 413, or a disconnect.
    let (mut reader, mut writer) = connect(addr);
    let mut body = br#"{"entries":[{"account":"big","amount":1,"memo":""#.to_vec();
    body.extend(vec![b'm'; MIB]);
    body.extend_from_slice(b"\"}]}\n");
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    writer.write_all(head.as_bytes()).unwrap();
    let writing = write_in_background(writer, body);
    if let Some((status, _)) = read_response(&mut reader) {
        assert_eq!(status, 413);
    }
    let _ = writing.join();
    good.ingest();

    // An unknown method and an unknown path.
    let (mut reader, mut writer) = connect(addr);
    write!(writer, "BREW /ingest HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader).unwrap().0, 405);
    write!(writer, "GET /nope HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader).unwrap().0, 404);
    good.ingest();

    // Every acknowledged entry, and only those, is in the write-ahead file and the root.
    write!(good.writer, "GET /roots HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut good.reader).unwrap();
    assert_eq!(status, 200);
    let roots: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(roots["entries"], good.acknowledged);
    assert_eq!(roots["batches"], good.acknowledged / 3);
    let stopped = ledger.stop().unwrap();
    assert!(stopped.status.success());
    assert_eq!(stopped.count("entries").unwrap(), good.acknowledged);
    assert_eq!(wal::count_entries(&wal_path).unwrap(), good.acknowledged);
}

const BATCH: &[u8] = br#"{"entries":[{"account":"a","amount":1},{"account":"b","amount":2},{"account":"c","amount":-3}]}"#;

/// `GET /roots` on a fresh connection: the number of entries committed so far.
fn committed_entries(addr: SocketAddr) -> u64 {
    let (mut reader, mut writer) = connect(addr);
    write!(writer, "GET /roots HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut reader).unwrap();
    assert_eq!(status, 200, "{body}");
    let roots: Value = serde_json::from_str(&body).unwrap();
    roots["entries"].as_u64().unwrap()
}

#[test]
fn the_ledger_refuses_transfer_codings_it_does_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let wal_path = dir.path().join("ledger.wal");
    let ledger = Server::start("testbed-ledger", &["--wal", wal_path.to_str().unwrap()]).unwrap();
    // A valid batch in chunked framing: only the codings named around it differ.
    let chunked = [
        format!("{:x}\r\n", BATCH.len()).into_bytes(),
        BATCH.to_vec(),
        b"\r\n0\r\n\r\n".to_vec(),
    ]
    .concat();
    let post = |codings: &str| -> (BufReader<TcpStream>, Option<(u16, String)>) {
        let (mut reader, mut writer) = connect(ledger.addr);
        write!(
            writer,
            "POST /ingest HTTP/1.1\r\nHost: test\r\n{codings}\r\n"
        )
        .unwrap();
        writer.write_all(&chunked).unwrap();
        let response = read_response(&mut reader);
        (reader, response)
    };

    // hyper strips the chunked framing and would hand on the gzip-coded bytes as the body.
    for codings in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let (mut reader, response) = post(codings);
        let (status, body) = response.expect("an answer");
        assert_eq!(status, 501, "{codings:?}: {body}");
        assert!(body.contains("chunked alone"), "{body}");
        assert!(
            read_response(&mut reader).is_none(),
            "closed after the 501: the body's framing is not one the server reads"
        );
    }
    // chunked not last: hyper refuses the request itself.
    let (_, response) = post("Transfer-Encoding: chunked, gzip\r\n");
    assert!(matches!(response, None | Some((400, _))), "{response:?}");
    assert_eq!(
        committed_entries(ledger.addr),
        0,
        "nothing refused was committed"
    );

    // chunked alone is served.
    let (_, response) = post("Transfer-Encoding: chunked\r\n");
    assert_eq!(response.map(|(status, _)| status), Some(200));
    assert_eq!(committed_entries(ledger.addr), 3);

    let stopped = ledger.stop().unwrap();
    assert_eq!(stopped.count("unsupported_codings").unwrap(), 2);
    assert_eq!(stopped.count("server_errors").unwrap(), 0);
}

/// A request head of exactly `size` bytes, from the request line's first byte through the blank
/// line that ends it, padded with one header.
fn head_of(size: usize, start: &str) -> Vec<u8> {
    let start = format!("{start}X-Pad: ");
    let end = "\r\n\r\n";
    let pad = size - start.len() - end.len();
    let head = [start.as_bytes(), &vec![b'p'; pad], end.as_bytes()].concat();
    assert_eq!(head.len(), size);
    head
}

#[test]
fn the_ledger_head_limit_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let wal_path = dir.path().join("ledger.wal");
    let ledger = Server::start("testbed-ledger", &["--wal", wal_path.to_str().unwrap()]).unwrap();
    let send = |bytes: Vec<u8>| {
        let (mut reader, writer) = connect(ledger.addr);
        let writing = write_in_background(writer, bytes);
        let response = read_response(&mut reader);
        let _ = writing.join();
        response.map(|(status, _)| status)
    };
    let post = format!(
        "POST /ingest HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
        BATCH.len()
    );
    for (size, expected) in [(ledger::MAX_HEAD, 200), (ledger::MAX_HEAD + 1, 431)] {
        // A head alone.
        let status = send(head_of(size, "GET /roots HTTP/1.1\r\nHost: test\r\n"));
        assert_eq!(status, Some(expected), "GET with a {size}-byte head");
        // A head with its body in the same write, so one read can carry both.
        let status = send([head_of(size, &post), BATCH.to_vec()].concat());
        assert_eq!(status, Some(expected), "POST with a {size}-byte head");
    }
    assert_eq!(
        committed_entries(ledger.addr),
        3,
        "only the POST at the limit"
    );
    let stopped = ledger.stop().unwrap();
    assert_eq!(stopped.count("closed_head_too_large").unwrap(), 2);
}
