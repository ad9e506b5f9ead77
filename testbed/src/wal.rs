//! The ledger's write-ahead file: a header line, then one line per entry, appended and fsynced by
//! one committer:
//!
//! ```text
//! testbed-ledger wal v2 crc32c
//! 5c1f03a2 {"seq":7,"batch":3,"index":1,"of":2,"entry":{...}}
//! ```
//!
//! Each record carries the CRC32C of its JSON in hex, so an edited line, or one written by hand
//! without the checksum, is detected; so is a valid record moved or copied elsewhere (its
//! `seq`, `batch` and `index` must follow on). A checksum is no signature: someone who
//! recomputes it can still forge a record.
//!
//! Every batch extends a hash chain: `root = sha256(previous root || merkle root of the batch's
//! entry hashes)`. Opening a file replays it to recover the chain. What a crash can leave, a last
//! line without its newline or a last batch missing lines, was never acknowledged to a client:
//! it is cut off and reported ([`Recovery::torn`]). Anything else, a whole line that does not
//! verify, is damage: opening refuses, naming the record, unless told to keep the verified
//! prefix ([`OnDamage::KeepVerifiedPrefix`]).
//!
//! Files from before checksums (format 1: the same JSON lines, no header) are replayed and
//! rewritten in format 2 on open.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first line of a format-2 file.
pub const HEADER: &[u8] = b"testbed-ledger wal v2 crc32c\n";
/// CRC-32C (Castagnoli, as in iSCSI and ext4): better at burst errors than CRC-32 (IEEE).
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// One ledger entry as clients send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub account: String,
    pub amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    seq: u64,
    batch: u64,
    index: u32,
    of: u32,
    entry: Entry,
}

/// Where the chain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roots {
    pub root: [u8; 32],
    pub batches: u64,
    pub entries: u64,
}

/// What one appended batch became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub batch: u64,
    pub first_seq: u64,
    pub entries: usize,
    /// The chain's root right after this batch.
    pub root: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead file {path}: I/O error (check the path and free space)")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "write-ahead file {path} is damaged at {bad}; {} in {} from byte offset {} on, of which {verified_after} after it verify. A crash leaves only a torn last line or batch, so this is not one. Copy the file aside, then start with --wal-keep-verified-prefix to keep the {} before it and cut the rest",
        counted(cut.bytes, "byte"), counted(cut.records, "record"), cut.offset, counted(*batches, "verified batch")
    )]
    Corrupt {
        path: PathBuf,
        bad: BadRecord,
        /// What --wal-keep-verified-prefix would cut.
        cut: Cut,
        /// Records after the bad one whose checksums verify.
        verified_after: u64,
        /// Complete batches before it.
        batches: u64,
    },
    #[error(
        "{path} is not a testbed-ledger write-ahead file (it starts {start:?}, not {HEADER:?}): pass another --wal path",
        HEADER = String::from_utf8_lossy(HEADER).trim_end()
    )]
    Format { path: PathBuf, start: String },
    #[error("a batch must have 1 to {max} entries, got {got}", max = u32::MAX)]
    BatchSize { got: usize },
}

/// A record that does not verify: where it is and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Byte offset of its first byte in the file.
    pub offset: u64,
    /// Its number among the records, from 1.
    pub record: u64,
    /// Its line in the file, from 1 (the header is line 1 in format 2).
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} (line {}, byte offset {}): {}",
            self.record, self.line, self.offset, self.reason
        )
    }
}

/// Bytes cut from the end of a file on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Where the file now ends.
    pub offset: u64,
    pub bytes: u64,
    /// Lines cut, the last one counted even when partial.
    pub records: u64,
}

/// What [`Wal::open`] found and did beyond replaying whole batches; the ledger's startup line
/// reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// A torn tail (a crash during a write) that was cut off.
    pub torn: Option<Cut>,
    /// With [`OnDamage::KeepVerifiedPrefix`]: the first record that did not verify, and what
    /// was cut from the end of the last whole batch before it.
    pub dropped: Option<(BadRecord, Cut)>,
    /// The file was in format 1 (no checksums) and has been rewritten in format 2.
    pub upgraded: bool,
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.upgraded {
            parts.push("upgraded from format 1 (no checksums) to format 2".to_string());
        }
        if let Some(cut) = self.torn {
            parts.push(format!(
                "cut a torn tail of {} in {} at byte offset {}",
                counted(cut.bytes, "byte"),
                counted(cut.records, "record"),
                cut.offset
            ));
        }
        if let Some((bad, cut)) = &self.dropped {
            parts.push(format!(
                "kept the verified prefix: dropped {} in {} from byte offset {}, from the first bad {bad}",
                counted(cut.bytes, "byte"),
                counted(cut.records, "record"),
                cut.offset
            ));
        }
        if parts.is_empty() {
            f.write_str("nothing cut")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// `1 record`, `2 records`, `1 verified batch`, `3 verified batches`.
fn counted(n: u64, noun: &str) -> String {
    match (n, noun.ends_with("ch")) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

/// What [`Wal::open`] does with a record that does not verify and is not a torn tail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDamage {
    /// Refuse to open, naming the record ([`WalError::Corrupt`]).
    #[default]
    Refuse,
    /// Keep the whole batches before it and cut the rest, reporting what was cut.
    KeepVerifiedPrefix,
}

/// An open write-ahead file.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    len: u64,
    next_seq: u64,
    roots: Roots,
    recovery: Recovery,
}

/// The two record formats a file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Before checksums: JSON lines, no header.
    V1,
    /// [`HEADER`], then `crc32c-hex SP json` lines.
    V2,
}

impl Wal {
    /// Opens (creating if needed) and replays `path`. A torn tail is cut; damage is handled as
    /// `on_damage` says.
    pub fn open(path: &Path, on_damage: OnDamage) -> Result<Self, WalError> {
        let io_err = |source| WalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err)?;
        let len = file.seek(SeekFrom::End(0)).map_err(io_err)?;
        let mut recovery = Recovery::default();
        let mut start = Vec::with_capacity(HEADER.len());
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        (&mut file)
            .take(HEADER.len() as u64)
            .read_to_end(&mut start)
            .map_err(io_err)?;
        let format = if start == HEADER {
            Format::V2
        } else if start.first() == Some(&b'{') {
            Format::V1
        } else if HEADER.starts_with(&start) {
            // New, or a crash while its header was written: start it afresh.
            if len > 0 {
                recovery.torn = Some(Cut {
                    offset: 0,
                    bytes: len,
                    records: 0,
                });
            }
            file.set_len(0).map_err(io_err)?;
            file.write_all(HEADER).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            Format::V2
        } else {
            return Err(WalError::Format {
                path: path.to_path_buf(),
                start: String::from_utf8_lossy(&start).into_owned(),
            });
        };
        let header_len = match format {
            Format::V1 => 0,
            Format::V2 => HEADER.len() as u64,
        };
        file.seek(SeekFrom::Start(header_len)).map_err(io_err)?;
        let scan = scan(BufReader::new(&mut file), format, header_len).map_err(io_err)?;
        match scan.end {
            End::Clean => {}
            End::Torn(cut) => recovery.torn = Some(cut),
            End::Damaged {
                bad,
                cut,
                verified_after,
            } => match on_damage {
                OnDamage::Refuse => {
                    return Err(WalError::Corrupt {
                        path: path.to_path_buf(),
                        bad,
                        cut,
                        verified_after,
                        batches: scan.roots.batches,
                    });
                }
                OnDamage::KeepVerifiedPrefix => recovery.dropped = Some((bad, cut)),
            },
        }
        if recovery.torn.is_some() || recovery.dropped.is_some() {
            file.set_len(scan.good_len).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        let (file, len) = if format == Format::V1 {
            recovery.upgraded = true;
            drop(file);
            upgrade(path)?
        } else {
            (file, scan.good_len)
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
            next_seq: scan.roots.entries + 1,
            roots: scan.roots,
            recovery,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn roots(&self) -> Roots {
        self.roots
    }

    /// What opening it found and did beyond replaying whole batches.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Appends whole batches with one write and one fsync (group commit). On failure the file
    /// is cut back to where it was, so a failed batch leaves no trace.
    pub fn append(&mut self, batches: &[&[Entry]]) -> Result<Vec<Commit>, WalError> {
        let mut bytes = Vec::new();
        let mut commits = Vec::with_capacity(batches.len());
        let mut roots = self.roots;
        let mut seq = self.next_seq;
        for entries in batches {
            let of = u32::try_from(entries.len())
                .ok()
                .filter(|&n| n > 0)
                .ok_or(WalError::BatchSize { got: entries.len() })?;
            let batch = roots.batches + 1;
            let first_seq = seq;
            for (index, entry) in entries.iter().enumerate() {
                let record = Record {
                    seq,
                    batch,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    of,
                    entry: entry.clone(),
                };
                encode(&record, &mut bytes).map_err(|source| WalError::Io {
                    path: self.path.clone(),
                    source,
                })?;
                seq += 1;
            }
            roots = Roots {
                root: chain(&roots.root, &batch_root(entries)),
                batches: batch,
                entries: roots.entries + entries.len() as u64,
            };
            commits.push(Commit {
                batch,
                first_seq,
                entries: entries.len(),
                root: roots.root,
            });
        }
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_all());
        if let Err(source) = written {
            // Best effort: the original error is the one worth reporting.
            let _ = self.file.set_len(self.len);
            return Err(WalError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += bytes.len() as u64;
        self.next_seq = seq;
        self.roots = roots;
        Ok(commits)
    }
}

/// An entry's leaf hash, over length-prefixed fields so that no two entries share an encoding.
pub fn entry_hash(entry: &Entry) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((entry.account.len() as u64).to_le_bytes());
    hasher.update(entry.account.as_bytes());
    hasher.update(entry.amount.to_le_bytes());
    match &entry.memo {
        Some(memo) => {
            hasher.update([1]);
            hasher.update((memo.len() as u64).to_le_bytes());
            hasher.update(memo.as_bytes());
        }
        None => hasher.update([0]),
    }
    hasher.finalize().into()
}

/// The merkle root of a batch over [`entry_hash`] leaves; an odd node pairs with itself, as in
/// Bitcoin.
pub fn batch_root(entries: &[Entry]) -> [u8; 32] {
    let mut level: Vec<[u8; 32]> = entries.iter().map(entry_hash).collect();
    if level.is_empty() {
        return [0; 32];
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| {
                let mut hasher = Sha256::new();
                hasher.update(pair[0]);
                hasher.update(pair.get(1).unwrap_or(&pair[0]));
                hasher.finalize().into()
            })
            .collect();
    }
    level[0]
}

fn chain(previous: &[u8; 32], batch_root: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(batch_root);
    hasher.finalize().into()
}

/// Appends `record` as one format-2 line.
fn encode(record: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let json = serde_json::to_vec(record)?;
    write!(out, "{:08x} ", CRC32C.checksum(&json))?;
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(())
}

/// One complete line, without its newline, as a record whose checksum (format 2) verifies.
fn decode(format: Format, line: &[u8]) -> Result<Record, String> {
    let json = match format {
        Format::V1 => line,
        Format::V2 => {
            if line.len() < 9 || line[8] != b' ' {
                return Err("no checksum: a record starts with 8 hex digits and a space".into());
            }
            let (hex, json) = (&line[..8], &line[9..]);
            let stored = std::str::from_utf8(hex)
                .ok()
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "checksum {:?} is not 8 hex digits",
                        String::from_utf8_lossy(hex)
                    )
                })?;
            let computed = CRC32C.checksum(json);
            if stored != computed {
                return Err(format!(
                    "checksum mismatch: the record says {stored:08x}, its bytes give {computed:08x}"
                ));
            }
            json
        }
    };
    serde_json::from_slice(json).map_err(|err| format!("not a record: {err}"))
}

/// How a scan of the records ended.
#[derive(Debug)]
enum End {
    /// At the end of a whole batch.
    Clean,
    /// Inside a batch, every whole line verified: a write cut short. Cut is what follows the
    /// last whole batch.
    Torn(Cut),
    /// At a whole line that does not verify (or does not follow on).
    Damaged {
        bad: BadRecord,
        /// From the end of the last whole batch before it to the end of the file.
        cut: Cut,
        verified_after: u64,
    },
}

struct Scan {
    roots: Roots,
    /// Bytes up to the end of the last whole batch.
    good_len: u64,
    end: End,
}

/// Replays the records that follow the header (`offset` bytes) up to the end of the file or
/// the first record that does not verify.
fn scan(mut reader: impl BufRead, format: Format, offset: u64) -> io::Result<Scan> {
    let header_lines = u64::from(format == Format::V2);
    let mut roots = Roots::default();
    let mut offset = offset;
    let mut good_len = offset;
    let mut records = 0u64;
    let mut good_records = 0u64;
    let mut pending: Vec<Entry> = Vec::new();
    let mut pending_of = 0u32;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let start = offset;
        offset += n as u64;
        records += 1;
        let Some(body) = line.strip_suffix(b"\n") else {
            // A last line without its newline: a write cut short.
            break;
        };
        let record = decode(format, body).and_then(|record| {
            let expected_batch = roots.batches + 1;
            let expected_seq = roots.entries + pending.len() as u64 + 1;
            if record.batch != expected_batch
                || record.seq != expected_seq
                || record.index as usize != pending.len()
                || (!pending.is_empty() && record.of != pending_of)
                || record.of == 0
            {
                return Err(format!(
                    "out of sequence: expected batch {expected_batch} seq {expected_seq} index {}, found batch {} seq {} index {} of {}",
                    pending.len(),
                    record.batch,
                    record.seq,
                    record.index,
                    record.of
                ));
            }
            Ok(record)
        });
        let record = match record {
            Ok(record) => record,
            Err(reason) => {
                let bad = BadRecord {
                    offset: start,
                    record: records,
                    line: records + header_lines,
                    reason,
                };
                let (more, more_bytes, verified_after) = count_rest(reader, format)?;
                let cut = Cut {
                    offset: good_len,
                    bytes: offset + more_bytes - good_len,
                    records: records - good_records + more,
                };
                return Ok(Scan {
                    roots,
                    good_len,
                    end: End::Damaged {
                        bad,
                        cut,
                        verified_after,
                    },
                });
            }
        };
        pending_of = record.of;
        pending.push(record.entry);
        if pending.len() == pending_of as usize {
            roots = Roots {
                root: chain(&roots.root, &batch_root(&pending)),
                batches: roots.batches + 1,
                entries: roots.entries + pending.len() as u64,
            };
            pending.clear();
            good_len = offset;
            good_records = records;
        }
    }
    let end = if offset == good_len {
        End::Clean
    } else {
        End::Torn(Cut {
            offset: good_len,
            bytes: offset - good_len,
            records: records - good_records,
        })
    };
    Ok(Scan {
        roots,
        good_len,
        end,
    })
}

/// The lines left (a partial last one included), their bytes, and how many verify.
fn count_rest(mut reader: impl BufRead, format: Format) -> io::Result<(u64, u64, u64)> {
    let (mut lines, mut bytes, mut verified) = (0, 0, 0);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok((lines, bytes, verified));
        }
        lines += 1;
        bytes += n as u64;
        if let Some(body) = line.strip_suffix(b"\n")
            && decode(format, body).is_ok()
        {
            verified += 1;
        }
    }
}

/// Rewrites a format-1 file (already cut to whole batches) in format 2, through a temporary
/// file renamed over it, so a crash leaves one or the other whole. Returns the new file, open
/// for appending, and its length.
fn upgrade(path: &Path) -> Result<(File, u64), WalError> {
    let io_err = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = HEADER.to_vec();
    for line in BufReader::new(File::open(path).map_err(io_err)?).split(b'\n') {
        let line = line.map_err(io_err)?;
        // Every line here was decoded by the scan that came before.
        let record = decode(Format::V1, &line)
            .map_err(|reason| io_err(io::Error::new(io::ErrorKind::InvalidData, reason)))?;
        encode(&record, &mut bytes).map_err(io_err)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".upgrading");
    let temporary = PathBuf::from(temporary);
    let written = File::create(&temporary)
        .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io_err(source));
    }
    // The rename is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err)?;
    Ok((file, bytes.len() as u64))
}

/// Entries in a write-ahead file's whole lines that verify: what a crash would keep.
pub fn count_entries(path: &Path) -> io::Result<u64> {
    let mut count = 0;
    let mut format = Format::V1;
    for (number, line) in BufReader::new(File::open(path)?).split(b'\n').enumerate() {
        let line = line?;
        if number == 0 && HEADER.strip_suffix(b"\n") == Some(&line[..]) {
            format = Format::V2;
        } else if decode(format, &line).is_ok() {
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(account: &str, amount: i64) -> Entry {
        Entry {
            account: account.to_string(),
            amount,
            memo: None,
        }
    }

    fn open(path: &Path) -> Result<Wal, WalError> {
        Wal::open(path, OnDamage::Refuse)
    }

    /// Three batches of 1, 2 and 1 entries; returns the roots after each.
    fn three_batches(path: &Path) -> Vec<Roots> {
        let mut wal = open(path).unwrap();
        let mut roots = Vec::new();
        for batch in [
            &[entry("alice", 5)][..],
            &[entry("bob", 5), entry("carol", -5)],
            &[entry("dave", 1)],
        ] {
            wal.append(&[batch]).unwrap();
            roots.push(wal.roots());
        }
        roots
    }

    /// Byte offset of each line's first byte.
    fn line_offsets(path: &Path) -> Vec<u64> {
        let bytes = std::fs::read(path).unwrap();
        let mut offsets = vec![0];
        offsets.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|&(i, &b)| b == b'\n' && i + 1 < bytes.len())
                .map(|(i, _)| i as u64 + 1),
        );
        offsets
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    fn corrupt(err: WalError) -> (BadRecord, Cut, u64, u64) {
        match err {
            WalError::Corrupt {
                bad,
                cut,
                verified_after,
                batches,
                ..
            } => (bad, cut, verified_after, batches),
            other => panic!("expected Corrupt, got {other}"),
        }
    }

    #[test]
    fn appends_replay_to_the_same_roots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        let a = [entry("alice", 5), entry("bob", -5)];
        let b = [entry("carol", 7)];
        let roots = {
            let mut wal = open(&path).unwrap();
            let commits = wal.append(&[&a, &b]).unwrap();
            assert_eq!(commits[0].first_seq, 1);
            assert_eq!(commits[1].first_seq, 3);
            assert_eq!(commits[1].batch, 2);
            assert_eq!(commits[1].root, wal.roots().root);
            wal.roots()
        };
        assert_eq!(roots.entries, 3);
        assert_eq!(roots.batches, 2);
        assert_eq!(count_entries(&path).unwrap(), 3);
        assert!(std::fs::read(&path).unwrap().starts_with(HEADER));

        let mut reopened = open(&path).unwrap();
        assert_eq!(reopened.roots(), roots);
        assert_eq!(reopened.recovery(), &Recovery::default());
        assert_eq!(reopened.recovery().to_string(), "nothing cut");
        let next = reopened.append(&[&b]).unwrap();
        assert_eq!(next[0].first_seq, 4);
        assert_eq!(next[0].batch, 3);
    }

    #[test]
    fn records_carry_the_crc32c_of_their_json() {
        let mut line = Vec::new();
        let record = Record {
            seq: 1,
            batch: 1,
            index: 0,
            of: 1,
            entry: entry("a", 1),
        };
        encode(&record, &mut line).unwrap();
        let json = br#"{"seq":1,"batch":1,"index":0,"of":1,"entry":{"account":"a","amount":1}}"#;
        // CRC-32C's check value: the checksum of "123456789" is e3069283.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        let expected = format!("{:08x} ", CRC32C.checksum(json));
        assert_eq!(line, [expected.as_bytes(), json, b"\n"].concat());
        assert!(decode(Format::V2, &line[..line.len() - 1]).is_ok());
    }

    #[test]
    fn roots_depend_on_content_and_order() {
        let one = batch_root(&[entry("a", 1), entry("b", 2)]);
        assert_eq!(one, batch_root(&[entry("a", 1), entry("b", 2)]));
        assert_ne!(one, batch_root(&[entry("b", 2), entry("a", 1)]));
        assert_ne!(one, batch_root(&[entry("a", 1), entry("b", 3)]));
        // Three leaves: the third pairs with itself.
        let leaves: Vec<[u8; 32]> = ["x", "y", "z"]
            .iter()
            .map(|a| entry_hash(&entry(a, 0)))
            .collect();
        assert_ne!(entry_hash(&entry("ab", 1)), entry_hash(&entry("a", 1)));
        let left: [u8; 32] = Sha256::digest([leaves[0], leaves[1]].concat()).into();
        let right: [u8; 32] = Sha256::digest([leaves[2], leaves[2]].concat()).into();
        let expected: [u8; 32] = Sha256::digest([left, right].concat()).into();
        assert_eq!(
            batch_root(&[entry("x", 0), entry("y", 0), entry("z", 0)]),
            expected
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        let whole = {
            let mut wal = open(&path).unwrap();
            wal.append(&[&[entry("a", 1)]]).unwrap();
            wal.roots()
        };
        let good_len = len(&path);
        // A batch of two whose second line was cut short by the crash.
        let mut torn = Vec::new();
        for index in 0..2 {
            let record = Record {
                seq: 2 + u64::from(index),
                batch: 2,
                index,
                of: 2,
                entry: entry("b", 2),
            };
            encode(&record, &mut torn).unwrap();
        }
        let keep = torn.len() - 20;
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..keep]).unwrap();
        drop(file);

        let wal = open(&path).unwrap();
        assert_eq!(wal.roots(), whole);
        let cut = Cut {
            offset: good_len,
            bytes: keep as u64,
            records: 2,
        };
        assert_eq!(wal.recovery().torn, Some(cut));
        assert_eq!(
            wal.recovery().to_string(),
            format!("cut a torn tail of {keep} bytes in 2 records at byte offset {good_len}")
        );
        assert_eq!(len(&path), good_len);
        assert_eq!(count_entries(&path).unwrap(), 1);
        drop(wal);

        // Cut at a line boundary: whole lines that verify, but a batch missing its last.
        let first_line = torn.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..first_line]).unwrap();
        drop(file);
        let wal = open(&path).unwrap();
        assert_eq!(wal.roots(), whole);
        assert_eq!(
            wal.recovery().torn,
            Some(Cut {
                offset: good_len,
                bytes: first_line as u64,
                records: 1,
            })
        );
        assert_eq!(len(&path), good_len);
    }

    #[test]
    fn an_edited_record_refuses_to_open_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        three_batches(&path);
        let offsets = line_offsets(&path);
        let before = len(&path);
        // bob's 5 becomes 7: same length, still valid JSON, in record 2 (line 3).
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace(r#""bob","amount":5"#, r#""bob","amount":7"#),
        )
        .unwrap();

        let err = open(&path).unwrap_err();
        let message = err.to_string();
        let (bad, cut, verified_after, batches) = corrupt(err);
        assert_eq!((bad.record, bad.line, bad.offset), (2, 3, offsets[2]));
        assert!(bad.reason.contains("checksum mismatch"), "{}", bad.reason);
        assert_eq!(verified_after, 2, "carol and dave still verify");
        assert_eq!(batches, 1);
        assert_eq!(
            cut,
            Cut {
                offset: offsets[2],
                bytes: before - offsets[2],
                records: 3,
            }
        );
        for needle in [
            format!("record 2 (line 3, byte offset {})", offsets[2]),
            "--wal-keep-verified-prefix".to_string(),
            "keep the 1 verified batch before it".to_string(),
        ] {
            assert!(message.contains(&needle), "{needle:?} not in {message}");
        }
        assert_eq!(len(&path), before, "a refused file is left as it was");
    }

    #[test]
    fn forged_records_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        three_batches(&path);
        let original = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = original.lines().collect();

        // A record written by hand, with a made-up checksum.
        let forged = r#"00000000 {"seq":5,"batch":4,"index":0,"of":1,"entry":{"account":"eve","amount":1000}}"#;
        let with_forged = [&lines[..2], &[forged], &lines[2..]].concat().join("\n") + "\n";
        std::fs::write(&path, with_forged).unwrap();
        let (bad, ..) = corrupt(open(&path).unwrap_err());
        assert_eq!(bad.record, 2);
        assert!(bad.reason.contains("checksum mismatch"), "{}", bad.reason);

        // A genuine record, checksum and all, copied to where it does not belong.
        let with_copy = [&lines[..4], &[lines[1]], &lines[4..]].concat().join("\n") + "\n";
        std::fs::write(&path, with_copy).unwrap();
        let (bad, _, verified_after, _) = corrupt(open(&path).unwrap_err());
        assert_eq!(bad.record, 4);
        assert!(bad.reason.contains("out of sequence"), "{}", bad.reason);
        assert_eq!(verified_after, 1);

        // A record without any checksum, as format 1 wrote them.
        let bare = lines[2].split_once(' ').unwrap().1;
        let with_bare = [&lines[..2], &[bare], &lines[3..]].concat().join("\n") + "\n";
        std::fs::write(&path, with_bare).unwrap();
        let (bad, ..) = corrupt(open(&path).unwrap_err());
        assert!(bad.reason.contains("no checksum"), "{}", bad.reason);
    }

    #[test]
    fn a_flipped_byte_in_the_last_record_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        three_batches(&path);
        let offsets = line_offsets(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        // Inside the last record's JSON: the line keeps its newline, so no write was cut short.
        let at = bytes.len() - 10;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let (bad, cut, verified_after, _) = corrupt(open(&path).unwrap_err());
        assert_eq!((bad.record, bad.offset), (4, offsets[4]));
        assert_eq!(verified_after, 0);
        assert_eq!(cut.records, 1);
    }

    #[test]
    fn keep_verified_prefix_keeps_whole_batches_before_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        let roots = three_batches(&path);
        let offsets = line_offsets(&path);
        let before = len(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        // A flipped byte in carol, the second record of batch 2: the whole batch goes.
        let at = usize::try_from(offsets[3]).unwrap() + 20;
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();

        let mut wal = Wal::open(&path, OnDamage::KeepVerifiedPrefix).unwrap();
        assert_eq!(wal.roots(), roots[0]);
        let (bad, cut) = wal.recovery().dropped.clone().unwrap();
        assert_eq!((bad.record, bad.offset), (3, offsets[3]));
        assert_eq!(
            cut,
            Cut {
                offset: offsets[2],
                bytes: before - offsets[2],
                records: 3,
            }
        );
        let report = wal.recovery().to_string();
        assert!(
            report.starts_with(&format!(
                "kept the verified prefix: dropped {} bytes in 3 records from byte offset {}, from the first bad record 3 (line 4, byte offset {}): checksum mismatch",
                before - offsets[2],
                offsets[2],
                offsets[3]
            )),
            "{report}"
        );
        assert_eq!(len(&path), offsets[2]);
        // It goes on from there, and opens cleanly after.
        let next = wal.append(&[&[entry("erin", 3)]]).unwrap();
        assert_eq!((next[0].batch, next[0].first_seq), (2, 2));
        drop(wal);
        let reopened = open(&path).unwrap();
        assert_eq!(reopened.recovery(), &Recovery::default());
        assert_eq!(reopened.roots().entries, 2);
    }

    #[test]
    fn format_1_files_are_replayed_and_rewritten_with_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("v2.wal");
        let roots = three_batches(&v2);
        // The same records as format 1 wrote them: no header, no checksums, and a torn tail.
        let text = std::fs::read_to_string(&v2).unwrap();
        let mut v1: String = text
            .lines()
            .skip(1)
            .map(|line| format!("{}\n", line.split_once(' ').unwrap().1))
            .collect();
        let whole = v1.len() as u64;
        v1.push_str(r#"{"seq":5,"batch":4,"ind"#);
        let path = dir.path().join("v1.wal");
        std::fs::write(&path, &v1).unwrap();

        let wal = open(&path).unwrap();
        assert_eq!(wal.roots(), roots[2]);
        assert!(wal.recovery().upgraded);
        assert_eq!(
            wal.recovery().torn,
            Some(Cut {
                offset: whole,
                bytes: 23,
                records: 1,
            })
        );
        assert!(
            wal.recovery()
                .to_string()
                .starts_with("upgraded from format 1 (no checksums) to format 2; cut a torn tail")
        );
        drop(wal);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(count_entries(&path).unwrap(), 4);
        assert!(!dir.path().join("v1.wal.upgrading").exists());
        assert_eq!(open(&path).unwrap().recovery(), &Recovery::default());
    }

    #[test]
    fn other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "hello\n").unwrap();
        let err = open(&path).unwrap_err();
        assert!(matches!(err, WalError::Format { .. }), "{err}");
        assert!(err.to_string().contains("pass another --wal path"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    }

    #[test]
    fn a_header_cut_short_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        std::fs::write(&path, &HEADER[..10]).unwrap();
        let wal = open(&path).unwrap();
        assert_eq!(wal.roots(), Roots::default());
        assert_eq!(wal.recovery().torn.map(|cut| cut.bytes), Some(10));
        assert_eq!(std::fs::read(&path).unwrap(), HEADER);
    }

    #[test]
    fn empty_batches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(&dir.path().join("w")).unwrap();
        assert!(matches!(
            wal.append(&[&[]]),
            Err(WalError::BatchSize { got: 0 })
        ));
        assert_eq!(wal.roots(), Roots::default());
    }
}
