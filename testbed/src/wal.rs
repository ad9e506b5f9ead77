//! The ledger's write-ahead file: one JSON line per entry,
//! `{"seq":7,"batch":3,"index":1,"of":2,"entry":{...}}`, appended and fsynced by one committer.
//!
//! Every batch extends a hash chain: `root = sha256(previous root || merkle root of the batch's
//! entry hashes)`. Opening a file replays it to recover the chain, and cuts off a torn tail (a
//! line without its newline, or a batch with fewer lines than its `of`), which no client was told
//! was committed.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
        "write-ahead file {path} is corrupt at line {line}: {reason} (move it aside to start afresh)"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("a batch must have 1 to {max} entries, got {got}", max = u32::MAX)]
    BatchSize { got: usize },
}

/// An open write-ahead file.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    len: u64,
    next_seq: u64,
    roots: Roots,
}

impl Wal {
    /// Opens (creating if needed) and replays `path`.
    pub fn open(path: &Path) -> Result<Self, WalError> {
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
        let replay = replay(BufReader::new(&mut file), path)?;
        let actual = file.seek(SeekFrom::End(0)).map_err(io_err)?;
        if replay.good_len < actual {
            file.set_len(replay.good_len).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len: replay.good_len,
            next_seq: replay.roots.entries + 1,
            roots: replay.roots,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn roots(&self) -> Roots {
        self.roots
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
                serde_json::to_writer(&mut bytes, &record).map_err(|err| WalError::Io {
                    path: self.path.clone(),
                    source: err.into(),
                })?;
                bytes.push(b'\n');
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

struct Replay {
    roots: Roots,
    /// Bytes up to the end of the last complete batch.
    good_len: u64,
}

fn replay(mut reader: impl BufRead, path: &Path) -> Result<Replay, WalError> {
    let corrupt = |line: usize, reason: String| WalError::Corrupt {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut roots = Roots::default();
    let mut good_len = 0u64;
    let mut offset = 0u64;
    let mut pending: Vec<Entry> = Vec::new();
    let mut pending_of = 0u32;
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| WalError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 || line.last() != Some(&b'\n') {
            // End of file, or a torn last line: stop at the last whole batch.
            break;
        }
        number += 1;
        offset += n as u64;
        let record: Record =
            serde_json::from_slice(&line).map_err(|err| corrupt(number, err.to_string()))?;
        let expected_batch = roots.batches + 1;
        let expected_seq = roots.entries + pending.len() as u64 + 1;
        if record.batch != expected_batch
            || record.seq != expected_seq
            || record.index as usize != pending.len()
            || (!pending.is_empty() && record.of != pending_of)
        {
            return Err(corrupt(
                number,
                format!(
                    "expected batch {expected_batch} seq {expected_seq} index {}, found batch {} seq {} index {}",
                    pending.len(),
                    record.batch,
                    record.seq,
                    record.index
                ),
            ));
        }
        pending_of = record.of;
        pending.push(record.entry);
        if pending.len() == pending_of as usize {
            roots = Roots {
                root: chain(&roots.root, &batch_root(&pending)),
                batches: expected_batch,
                entries: roots.entries + pending.len() as u64,
            };
            pending.clear();
            good_len = offset;
        }
    }
    Ok(Replay { roots, good_len })
}

/// Entries in a write-ahead file's complete lines: what a crash would keep.
pub fn count_entries(path: &Path) -> io::Result<u64> {
    let mut count = 0;
    for line in BufReader::new(File::open(path)?).split(b'\n') {
        let line = line?;
        if serde_json::from_slice::<Record>(&line).is_ok() {
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

    #[test]
    fn appends_replay_to_the_same_roots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        let a = [entry("alice", 5), entry("bob", -5)];
        let b = [entry("carol", 7)];
        let roots = {
            let mut wal = Wal::open(&path).unwrap();
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

        let mut reopened = Wal::open(&path).unwrap();
        assert_eq!(reopened.roots(), roots);
        let next = reopened.append(&[&b]).unwrap();
        assert_eq!(next[0].first_seq, 4);
        assert_eq!(next[0].batch, 3);
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
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        let whole = {
            let mut wal = Wal::open(&path).unwrap();
            wal.append(&[&[entry("a", 1)]]).unwrap();
            wal.roots()
        };
        let good_len = std::fs::metadata(&path).unwrap().len();
        // A batch of two whose second line never made it, then half a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(
            file,
            r#"{{"seq":2,"batch":2,"index":0,"of":2,"entry":{{"account":"b","amount":2}}}}"#
        )
        .unwrap();
        write!(file, r#"{{"seq":3,"batch":2,"ind"#).unwrap();
        drop(file);

        let wal = Wal::open(&path).unwrap();
        assert_eq!(wal.roots(), whole);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        assert_eq!(count_entries(&path).unwrap(), 1);
    }

    #[test]
    fn corruption_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.wal");
        std::fs::write(&path, "garbage\n").unwrap();
        let err = Wal::open(&path).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { line: 1, .. }), "{err}");
    }

    #[test]
    fn empty_batches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(&dir.path().join("w")).unwrap();
        assert!(matches!(
            wal.append(&[&[]]),
            Err(WalError::BatchSize { got: 0 })
        ));
        assert_eq!(wal.roots(), Roots::default());
    }
}
