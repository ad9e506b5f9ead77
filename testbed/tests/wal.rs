//! The ledger's write-ahead file after damage, end to end: the ledger writes it through HTTP, a
//! test damages it the way a crash or a bad disk would, and a restarted ledger says what it
//! found. A torn tail is cut and reported; a damaged record refuses the start, naming where it
//! is, unless `--wal-keep-verified-prefix` keeps the batches before it.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use testbed::{fixture::testbed_bin, process::ChildGuard, server::Server, wal};

/// One request on its own connection: status and body.
fn request(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{head} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn entries(addr: SocketAddr) -> u64 {
    let (status, body) = request(addr, "GET /roots", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["entries"]
        .as_u64()
        .unwrap()
}

/// Starts a ledger on `wal`, ingests three batches of two entries, stops it.
fn three_batches(wal: &Path) {
    let ledger = Server::start("testbed-ledger", &["--wal", wal.to_str().unwrap()]).unwrap();
    for batch in 1..=3 {
        let body = format!(
            r#"{{"entries":[{{"account":"a{batch}","amount":5}},{{"account":"b","amount":-5}}]}}"#
        );
        let (status, reply) = request(ledger.addr, "POST /ingest", &body);
        assert_eq!(status, 200, "{reply}");
    }
    assert!(ledger.stop().unwrap().status.success());
    assert_eq!(wal::count_entries(wal).unwrap(), 6);
}

/// Byte offset of each line's first byte.
fn line_offsets(path: &Path) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    let mut offsets = vec![0];
    offsets.extend(
        (0..bytes.len().saturating_sub(1))
            .filter(|&i| bytes[i] == b'\n')
            .map(|i| i + 1),
    );
    offsets
}

/// Where in the record starting at `line_start` its amount's last digit is.
fn amount_digit(bytes: &[u8], line_start: usize) -> usize {
    let line = &bytes[line_start..];
    let end = line.iter().position(|&b| b == b'\n').unwrap();
    let at = line[..end]
        .windows(9)
        .position(|w| w == b"\"amount\":")
        .unwrap();
    line_start + at + line[at..end].iter().position(|&b| b == b'}').unwrap() - 1
}

/// Runs the ledger on `wal` expecting it to refuse to start: its exit status and stderr.
fn refused_start(wal: &Path) -> (std::process::ExitStatus, String) {
    let stderr_path = wal.with_extension("stderr");
    let mut cmd = Command::new(testbed_bin("testbed-ledger").unwrap());
    cmd.args(["--listen", "127.0.0.1:0", "--wal", wal.to_str().unwrap()])
        .stderr(Stdio::from(File::create(&stderr_path).unwrap()));
    // Killed by pid when dropped, should it start after all.
    let child = ChildGuard::spawn(&mut cmd).unwrap();
    let (status, stdout) = child
        .wait(Duration::from_secs(30))
        .expect("the ledger exits instead of serving a damaged file");
    assert!(
        !stdout.iter().any(|line| line.contains("listening on")),
        "{stdout:?}"
    );
    (status, std::fs::read_to_string(stderr_path).unwrap())
}

#[test]
fn a_flipped_byte_refuses_the_start_and_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.wal");
    three_batches(&path);
    let offsets = line_offsets(&path);
    let before = std::fs::read(&path).unwrap();
    // One bit in record 3 (line 4, the first of batch 2): its amount 5 becomes 4, still a
    // well-formed record, which only the checksum tells from the real one.
    let mut bytes = before.clone();
    let digit = amount_digit(&bytes, offsets[3]);
    assert_eq!(bytes[digit], b'5');
    bytes[digit] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let (status, stderr) = refused_start(&path);
    assert!(!status.success());
    let at = format!("record 3 (line 4, byte offset {})", offsets[3]);
    for needle in [
        at.as_str(),
        "checksum mismatch",
        "of which 3 after it verify",
        "--wal-keep-verified-prefix",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "a refused file is left as it was"
    );
}

#[test]
fn a_torn_last_record_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.wal");
    three_batches(&path);
    let offsets = line_offsets(&path);
    let len = std::fs::read(&path).unwrap().len();
    // The last record loses its last 10 bytes, as if the crash came mid-write: batch 3 is
    // incomplete, so both of its records go.
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len as u64 - 10)
        .unwrap();
    let cut = len - 10 - offsets[5];

    let ledger = Server::start("testbed-ledger", &["--wal", path.to_str().unwrap()]).unwrap();
    let report = format!(
        "4 entries in 2 batches recovered, cut a torn tail of {cut} bytes in 2 records at byte offset {}",
        offsets[5]
    );
    assert!(ledger.banner.contains(&report), "{}", ledger.banner);
    assert_eq!(entries(ledger.addr), 4);
    assert!(ledger.stop().unwrap().status.success());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), offsets[5] as u64);
}

#[test]
fn keep_verified_prefix_starts_with_the_batches_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.wal");
    three_batches(&path);
    let offsets = line_offsets(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    // Record 4, the second of batch 2, -5 becomes -4: batch 1 is all that verifies before it.
    let digit = amount_digit(&bytes, offsets[4]);
    assert_eq!(bytes[digit], b'5');
    bytes[digit] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    assert!(!refused_start(&path).0.success());

    let ledger = Server::start(
        "testbed-ledger",
        &[
            "--wal",
            path.to_str().unwrap(),
            "--wal-keep-verified-prefix",
        ],
    )
    .unwrap();
    let report = format!(
        "2 entries in 1 batches recovered, kept the verified prefix: dropped {} bytes in 4 records from byte offset {}, from the first bad record 4 (line 5, byte offset {}): checksum mismatch",
        len - offsets[3],
        offsets[3],
        offsets[4]
    );
    assert!(ledger.banner.contains(&report), "{}", ledger.banner);
    assert_eq!(entries(ledger.addr), 2);
    // It takes new batches from there, and the file opens cleanly after.
    let (status, _) = request(
        ledger.addr,
        "POST /ingest",
        r#"{"entries":[{"account":"z","amount":1}]}"#,
    );
    assert_eq!(status, 200);
    assert!(ledger.stop().unwrap().status.success());
    let ledger = Server::start("testbed-ledger", &["--wal", path.to_str().unwrap()]).unwrap();
    assert!(
        ledger
            .banner
            .contains("3 entries in 2 batches recovered, nothing cut"),
        "{}",
        ledger.banner
    );
    ledger.stop().unwrap();
}
