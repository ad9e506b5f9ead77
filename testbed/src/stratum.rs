//! Stratum v1 share validation, free of sockets: jobs, coinbase and header assembly, double
//! SHA-256, difficulty targets, and the parsing of `mining.submit` parameters.
//!
//! Byte orders follow what real pools and miners (ckpool, cpuminer) agree on:
//! - `version`, `nbits`, `ntime` and the submitted `nonce` travel as big-endian hex of a `u32` and
//!   sit little-endian in the header;
//! - `prevhash` travels as the header's bytes with every 4-byte word reversed;
//! - merkle branch hashes travel in the header's (internal) byte order;
//! - a share meets its target when the header hash, read as a little-endian 256-bit number, is at
//!   most the target.

use loadgen::wire::code;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Bytes in a header; the nonce is its last four.
pub const HEADER_LEN: usize = 80;
/// Size of the per-connection extranonce1 the pool hands out.
pub const EXTRANONCE1_LEN: usize = 4;
/// Size of the extranonce2 each miner rolls.
pub const EXTRANONCE2_LEN: usize = 4;
/// How far past the job's time a submitted `ntime` may roll (two hours, as bitcoind allows).
pub const NTIME_WINDOW: u32 = 7200;

/// Pool difficulty 1 is the target `0xffff << 208`.
const DIFF1: f64 = 65535.0 * f64::from_bits((1023 + 208) << 52); // 0xffff * 2^208

/// The difficulty whose target is exactly 2^255, so that half of all hashes meet it: the
/// testbed's default, which makes both the accept and the reject path run under random nonces.
pub const HALF_OF_NONCES_DIFFICULTY: f64 = 65535.0 / 140_737_488_355_328.0; // 0xffff / 2^47

pub fn sha256d(data: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(data)).into()
}

/// Folds the coinbase hash up the merkle branch; the result goes into the header unchanged.
pub fn merkle_root(coinbase_hash: [u8; 32], branch: &[[u8; 32]]) -> [u8; 32] {
    let mut root = coinbase_hash;
    let mut pair = [0u8; 64];
    for sibling in branch {
        pair[..32].copy_from_slice(&root);
        pair[32..].copy_from_slice(sibling);
        root = sha256d(&pair);
    }
    root
}

/// Reverses the bytes of every 4-byte word: converts between header and stratum `prevhash`.
pub fn swap_words(bytes: [u8; 32]) -> [u8; 32] {
    let mut out = bytes;
    for word in out.chunks_exact_mut(4) {
        word.reverse();
    }
    out
}

/// A hash as people print it (block explorers): the internal bytes reversed, in hex.
pub fn display_hash(hash: &[u8; 32]) -> String {
    let mut reversed = *hash;
    reversed.reverse();
    hex::encode(reversed)
}

/// A 256-bit share target, big-endian so that byte-wise comparison is numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target(pub [u8; 32]);

impl Target {
    /// `diff1 / difficulty`, saturating at 2^256 - 1 for tiny difficulties.
    pub fn from_difficulty(difficulty: f64) -> Self {
        if difficulty.is_nan() || difficulty <= 0.0 {
            return Self([0xff; 32]);
        }
        if difficulty.is_infinite() {
            return Self([0; 32]);
        }
        let target = DIFF1 / difficulty;
        if target >= 2f64.powi(256) {
            return Self([0xff; 32]);
        }
        let mut bytes = [0u8; 32];
        for (k, byte) in bytes.iter_mut().rev().enumerate() {
            // Scaling by a power of two, floor and fmod are all exact on an f64.
            let scaled = (target / 2f64.powi(8 * k as i32)).floor();
            *byte = (scaled % 256.0) as u8;
        }
        Self(bytes)
    }

    /// Whether a header hash (internal, little-endian byte order) is at most this target.
    pub fn is_met_by(&self, hash: &[u8; 32]) -> bool {
        let mut be = *hash;
        be.reverse();
        be <= self.0
    }
}

/// The difficulty a hash achieves (`diff1 / hash`), as pools log their best shares.
pub fn hash_difficulty(hash: &[u8; 32]) -> f64 {
    let value = hash
        .iter()
        .rev()
        .fold(0.0f64, |acc, &byte| acc * 256.0 + f64::from(byte));
    if value == 0.0 {
        f64::INFINITY
    } else {
        DIFF1 / value
    }
}

/// A unit of work as `mining.notify` announces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    /// Previous block hash in header byte order.
    pub prevhash: [u8; 32],
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
    pub merkle_branch: Vec<[u8; 32]>,
    pub version: u32,
    pub nbits: u32,
    pub ntime: u32,
    /// Miners must drop older jobs: submits against them are stale.
    pub clean: bool,
}

impl Job {
    /// The coinbase transaction with this miner's extranonces spliced in.
    pub fn coinbase(&self, extranonce1: &[u8], extranonce2: &[u8]) -> Vec<u8> {
        let mut tx = Vec::with_capacity(
            self.coinb1.len() + extranonce1.len() + extranonce2.len() + self.coinb2.len(),
        );
        tx.extend_from_slice(&self.coinb1);
        tx.extend_from_slice(extranonce1);
        tx.extend_from_slice(extranonce2);
        tx.extend_from_slice(&self.coinb2);
        tx
    }

    /// The 80-byte block header a share commits to.
    pub fn header(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
    ) -> [u8; HEADER_LEN] {
        let coinbase = self.coinbase(extranonce1, extranonce2);
        let root = merkle_root(sha256d(&coinbase), &self.merkle_branch);
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&self.version.to_le_bytes());
        header[4..36].copy_from_slice(&self.prevhash);
        header[36..68].copy_from_slice(&root);
        header[68..72].copy_from_slice(&ntime.to_le_bytes());
        header[72..76].copy_from_slice(&self.nbits.to_le_bytes());
        header[76..80].copy_from_slice(&nonce.to_le_bytes());
        header
    }

    /// The `params` array of the `mining.notify` that announces this job.
    pub fn notify_params(&self) -> Value {
        let branch: Vec<String> = self.merkle_branch.iter().map(hex::encode).collect();
        json!([
            self.id,
            hex::encode(swap_words(self.prevhash)),
            hex::encode(&self.coinb1),
            hex::encode(&self.coinb2),
            branch,
            format!("{:08x}", self.version),
            format!("{:08x}", self.nbits),
            format!("{:08x}", self.ntime),
            self.clean,
        ])
    }
}

/// Makes a fresh job per simulated block: a random previous hash, a BIP34 coinbase carrying the
/// height and the pool's tag, and a merkle branch standing in for the block's other transactions.
#[derive(Debug)]
pub struct JobMaker {
    height: u32,
    next_id: u64,
    branch_len: usize,
}

impl JobMaker {
    /// `branch_len` siblings make a block of about `2^branch_len` transactions.
    pub fn new(start_height: u32, branch_len: usize) -> Self {
        Self {
            height: start_height,
            next_id: 1,
            branch_len,
        }
    }

    pub fn next_job(&mut self, ntime: u32) -> Job {
        let mut rng = rand::rng();
        let mut prevhash = [0u8; 32];
        rng.fill_bytes(&mut prevhash);
        // Like a real block hash, the top (last internal) bytes are zero.
        prevhash[28..].fill(0);
        let merkle_branch = (0..self.branch_len)
            .map(|_| {
                let mut hash = [0u8; 32];
                rng.fill_bytes(&mut hash);
                hash
            })
            .collect();
        let height = self.height;
        self.height += 1;
        let id = format!("{:x}", self.next_id);
        self.next_id += 1;
        let (coinb1, coinb2) = coinbase_parts(height, b"/testbed-pool/");
        Job {
            id,
            prevhash,
            coinb1,
            coinb2,
            merkle_branch,
            version: 0x2000_0000,
            nbits: 0x1703_4219,
            ntime,
            clean: true,
        }
    }
}

/// Splits a one-output coinbase around the extranonces, which sit inside its scriptSig.
fn coinbase_parts(height: u32, tag: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let height_push = [&[3u8][..], &height.to_le_bytes()[..3]].concat();
    let tag_len = u8::try_from(tag.len()).unwrap_or(u8::MAX);
    let script_len = height_push.len() + EXTRANONCE1_LEN + EXTRANONCE2_LEN + 1 + tag.len();
    let mut coinb1 = Vec::new();
    coinb1.extend_from_slice(&1u32.to_le_bytes()); // tx version
    coinb1.push(1); // one input
    coinb1.extend_from_slice(&[0u8; 32]); // null prevout hash
    coinb1.extend_from_slice(&u32::MAX.to_le_bytes()); // null prevout index
    coinb1.push(u8::try_from(script_len).unwrap_or(u8::MAX));
    coinb1.extend_from_slice(&height_push);
    let mut coinb2 = Vec::new();
    coinb2.push(tag_len);
    coinb2.extend_from_slice(&tag[..usize::from(tag_len)]);
    coinb2.extend_from_slice(&u32::MAX.to_le_bytes()); // sequence
    coinb2.push(1); // one output
    coinb2.extend_from_slice(&312_500_000u64.to_le_bytes()); // 3.125 BTC
    coinb2.push(22); // P2WPKH script: OP_0 PUSH20 <hash>
    coinb2.extend_from_slice(&[0x00, 0x14]);
    coinb2.extend_from_slice(&sha256d(tag)[..20]);
    coinb2.extend_from_slice(&0u32.to_le_bytes()); // lock time
    (coinb1, coinb2)
}

/// Why a share or request was refused; the codes are the ones stratum pools use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("Other/Unknown: {0}")]
    Other(String),
    #[error("Job not found (stale)")]
    Stale,
    #[error("Duplicate share")]
    Duplicate,
    #[error("Low difficulty share")]
    LowDifficulty,
    #[error("Unauthorized worker")]
    Unauthorized,
    #[error("Not subscribed")]
    NotSubscribed,
    #[error("Parse error: {0}")]
    Parse(String),
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    #[error("Method not found: {0}")]
    UnknownMethod(String),
    #[error("Invalid params: {0}")]
    InvalidParams(String),
}

impl Reject {
    pub fn code(&self) -> i64 {
        match self {
            Self::Other(_) => code::OTHER,
            Self::Stale => code::STALE,
            Self::Duplicate => code::DUPLICATE,
            Self::LowDifficulty => code::LOW_DIFFICULTY,
            Self::Unauthorized => code::UNAUTHORIZED,
            Self::NotSubscribed => code::NOT_SUBSCRIBED,
            Self::Parse(_) => code::PARSE,
            Self::InvalidRequest(_) => code::INVALID_REQUEST,
            Self::UnknownMethod(_) => code::METHOD_NOT_FOUND,
            Self::InvalidParams(_) => code::INVALID_PARAMS,
        }
    }

    /// A short stable name, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Other(_) => "other",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
            Self::LowDifficulty => "low-difficulty",
            Self::Unauthorized => "unauthorized",
            Self::NotSubscribed => "not-subscribed",
            Self::Parse(_) => "parse",
            Self::InvalidRequest(_) => "invalid-request",
            Self::UnknownMethod(_) => "unknown-method",
            Self::InvalidParams(_) => "invalid-params",
        }
    }

    /// The `error` member of a stratum reply: `[code, message, traceback]`.
    pub fn to_json(&self) -> Value {
        json!([self.code(), self.to_string(), null])
    }
}

/// The parameters of a `mining.submit`, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Submit {
    pub worker: String,
    pub job_id: String,
    pub extranonce2: Vec<u8>,
    pub ntime: u32,
    pub nonce: u32,
}

impl Submit {
    /// Decodes `[worker, job_id, extranonce2, ntime, nonce]`.
    pub fn parse(params: &Value, extranonce2_len: usize) -> Result<Self, Reject> {
        let invalid = |why: &str| Reject::InvalidParams(why.to_string());
        let params = params
            .as_array()
            .ok_or_else(|| invalid("expected an array"))?;
        let [worker, job_id, extranonce2, ntime, nonce] = params.as_slice() else {
            return Err(invalid(
                "expected [worker, job_id, extranonce2, ntime, nonce]",
            ));
        };
        let text = |value: &Value, what: &str| {
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(&format!("{what} must be a string")))
        };
        let extranonce2 = hex::decode(text(extranonce2, "extranonce2")?)
            .map_err(|_| invalid("extranonce2 is not hex"))?;
        if extranonce2.len() != extranonce2_len {
            return Err(invalid(&format!(
                "extranonce2 must be {extranonce2_len} bytes"
            )));
        }
        Ok(Self {
            worker: text(worker, "worker")?,
            job_id: text(job_id, "job_id")?,
            extranonce2,
            ntime: parse_u32_hex(&text(ntime, "ntime")?).ok_or_else(|| invalid("ntime"))?,
            nonce: parse_u32_hex(&text(nonce, "nonce")?).ok_or_else(|| invalid("nonce"))?,
        })
    }
}

/// Eight hex digits, big-endian, as stratum sends `ntime` and `nonce`.
fn parse_u32_hex(text: &str) -> Option<u32> {
    if text.len() != 8 {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// The outcome of checking one well-formed share against its job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checked {
    pub hash: [u8; 32],
    pub accepted: bool,
}

/// Rebuilds the header the share commits to, hashes it and compares with `target`.
pub fn check_share(
    job: &Job,
    extranonce1: &[u8],
    submit: &Submit,
    target: &Target,
) -> Result<Checked, Reject> {
    if submit.ntime < job.ntime || submit.ntime - job.ntime > NTIME_WINDOW {
        return Err(Reject::Other("ntime out of range".to_string()));
    }
    let header = job.header(extranonce1, &submit.extranonce2, submit.ntime, submit.nonce);
    let hash = sha256d(&header);
    Ok(Checked {
        hash,
        accepted: target.is_met_by(&hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bitcoin's genesis coinbase, split so that two 4-byte windows of its scriptSig (the text of
    /// The Times headline) play the extranonces.
    const GENESIS_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000";
    const GENESIS_HASH: &str = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";
    const GENESIS_MERKLE_ROOT: &str =
        "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
    const GENESIS_HEADER: &str = "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c";

    const BLOCK1_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0704ffff001d0104ffffffff0100f2052a0100000043410496b538e853519c726a2c91e61ec11600ae1390813a627c66fb8be7947be63c52da7589379515d4e0a604f8141781e62294721166bf621e73a82cbf2342c858eeac00000000";
    const BLOCK1_HASH: &str = "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048";

    /// A job whose coinbase is `coinbase` with bytes `at..at+8` taken out as the extranonces.
    fn job_from(
        coinbase: &[u8],
        at: usize,
        prevhash: [u8; 32],
        ntime: u32,
    ) -> (Job, Submit, Vec<u8>) {
        let job = Job {
            id: "b1".to_string(),
            prevhash,
            coinb1: coinbase[..at].to_vec(),
            coinb2: coinbase[at + 8..].to_vec(),
            merkle_branch: Vec::new(),
            version: 1,
            nbits: 0x1d00_ffff,
            ntime,
            clean: true,
        };
        let submit = Submit {
            worker: "w".to_string(),
            job_id: job.id.clone(),
            extranonce2: coinbase[at + 4..at + 8].to_vec(),
            ntime,
            nonce: 0,
        };
        (job, submit, coinbase[at..at + 4].to_vec())
    }

    fn internal(display: &str) -> [u8; 32] {
        let mut bytes: [u8; 32] = hex::decode(display).unwrap().try_into().unwrap();
        bytes.reverse();
        bytes
    }

    #[test]
    fn genesis_coinbase_hashes_to_its_merkle_root() {
        let coinbase = hex::decode(GENESIS_COINBASE).unwrap();
        assert_eq!(display_hash(&sha256d(&coinbase)), GENESIS_MERKLE_ROOT);
        assert_eq!(
            merkle_root(sha256d(&coinbase), &[]),
            internal(GENESIS_MERKLE_ROOT)
        );
    }

    #[test]
    fn genesis_share_rebuilds_the_genesis_header_and_hash() {
        let coinbase = hex::decode(GENESIS_COINBASE).unwrap();
        let (job, mut submit, extranonce1) = job_from(&coinbase, 50, [0; 32], 1_231_006_505);
        submit.nonce = 2_083_236_893;
        let header = job.header(
            &extranonce1,
            &submit.extranonce2,
            submit.ntime,
            submit.nonce,
        );
        assert_eq!(hex::encode(header), GENESIS_HEADER);
        let checked =
            check_share(&job, &extranonce1, &submit, &Target::from_difficulty(1.0)).unwrap();
        assert_eq!(display_hash(&checked.hash), GENESIS_HASH);
        assert!(checked.accepted, "the genesis block meets difficulty 1");
        // The genesis hash has 43 leading zero bits: difficulty ~2536, not 2537.
        let achieved = hash_difficulty(&checked.hash);
        assert!((2536.0..2537.0).contains(&achieved), "{achieved}");
        assert!(
            check_share(
                &job,
                &extranonce1,
                &submit,
                &Target::from_difficulty(2536.0)
            )
            .unwrap()
            .accepted
        );
        assert!(
            !check_share(
                &job,
                &extranonce1,
                &submit,
                &Target::from_difficulty(2537.0)
            )
            .unwrap()
            .accepted
        );
    }

    #[test]
    fn block_one_through_the_stratum_encoding() {
        // Block 1 has a non-zero prevhash, so this pins the word-swapped `prevhash` encoding and
        // the hex forms of version, nbits, ntime and nonce as a miner would send them.
        let coinbase = hex::decode(BLOCK1_COINBASE).unwrap();
        let (job, _, extranonce1) = job_from(&coinbase, 42, internal(GENESIS_HASH), 0x4966_bc61);
        let params = job.notify_params();
        assert_eq!(
            params[1],
            "0a8ce26f72b3f1b646a2a6c14ff763ae65831e939c085ae10019d66800000000"
        );
        assert_eq!(params[5], "00000001");
        assert_eq!(params[6], "1d00ffff");
        let extranonce2 = hex::encode(&coinbase[46..50]);
        let submit = Submit::parse(
            &json!(["w", "b1", extranonce2, params[7], "9962e301"]),
            EXTRANONCE2_LEN,
        )
        .unwrap();
        let checked =
            check_share(&job, &extranonce1, &submit, &Target::from_difficulty(1.0)).unwrap();
        assert_eq!(display_hash(&checked.hash), BLOCK1_HASH);
        assert!(checked.accepted);
    }

    #[test]
    fn a_wrong_nonce_is_a_low_difficulty_share() {
        let coinbase = hex::decode(GENESIS_COINBASE).unwrap();
        let (job, mut submit, extranonce1) = job_from(&coinbase, 50, [0; 32], 1_231_006_505);
        submit.nonce = 2_083_236_894;
        let checked =
            check_share(&job, &extranonce1, &submit, &Target::from_difficulty(1.0)).unwrap();
        assert_ne!(display_hash(&checked.hash), GENESIS_HASH);
        assert!(!checked.accepted);
        // A different extranonce1 (another connection's) changes the coinbase, so the real
        // nonce no longer works either.
        submit.nonce = 2_083_236_893;
        let other =
            check_share(&job, &[0, 0, 0, 1], &submit, &Target::from_difficulty(1.0)).unwrap();
        assert!(!other.accepted);
    }

    #[test]
    fn ntime_outside_the_window_is_refused() {
        let coinbase = hex::decode(GENESIS_COINBASE).unwrap();
        let (job, mut submit, extranonce1) = job_from(&coinbase, 50, [0; 32], 1_231_006_505);
        let target = Target::from_difficulty(1.0);
        submit.ntime = job.ntime - 1;
        assert_eq!(
            check_share(&job, &extranonce1, &submit, &target)
                .unwrap_err()
                .code(),
            20
        );
        submit.ntime = job.ntime + NTIME_WINDOW + 1;
        assert_eq!(
            check_share(&job, &extranonce1, &submit, &target)
                .unwrap_err()
                .code(),
            20
        );
        submit.ntime = job.ntime + NTIME_WINDOW;
        assert!(check_share(&job, &extranonce1, &submit, &target).is_ok());
    }

    #[test]
    fn malformed_submit_params_are_invalid_params() {
        let good = json!(["w", "1", "00000000", "495fab29", "7c2bac1d"]);
        assert!(Submit::parse(&good, 4).is_ok());
        for bad in [
            json!({"worker": "w"}),
            json!(["w", "1", "00000000", "495fab29"]),
            json!(["w", "1", "00000000", "495fab29", "7c2bac1d", "extra"]),
            json!(["w", 1, "00000000", "495fab29", "7c2bac1d"]),
            json!(["w", "1", "000000", "495fab29", "7c2bac1d"]),
            json!(["w", "1", "zz000000", "495fab29", "7c2bac1d"]),
            json!(["w", "1", "00000000", "495fab2", "7c2bac1d"]),
            json!(["w", "1", "00000000", "495fab29", "7c2bac1g"]),
            json!(["w", "1", "00000000", "495fab29", 7]),
        ] {
            let err = Submit::parse(&bad, 4).unwrap_err();
            assert_eq!(err.code(), -32602, "{bad}");
        }
    }

    #[test]
    fn targets_follow_difficulty() {
        assert_eq!(
            hex::encode(Target::from_difficulty(1.0).0),
            "00000000ffff0000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(
            hex::encode(Target::from_difficulty(2.0).0),
            "000000007fff8000000000000000000000000000000000000000000000000000"
        );
        let half = Target::from_difficulty(HALF_OF_NONCES_DIFFICULTY);
        assert_eq!(
            hex::encode(half.0),
            "8000000000000000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(Target::from_difficulty(1e-30).0, [0xff; 32]);
        // Monotonic: a higher difficulty never gives a higher target.
        let mut previous = Target::from_difficulty(1e-9);
        for exponent in -8..12 {
            let next = Target::from_difficulty(10f64.powi(exponent));
            assert!(next < previous, "difficulty 1e{exponent}");
            previous = next;
        }
    }

    #[test]
    fn half_of_random_headers_meet_the_default_target() {
        let target = Target::from_difficulty(HALF_OF_NONCES_DIFFICULTY);
        let mut maker = JobMaker::new(840_000, 6);
        let job = maker.next_job(1_700_000_000);
        let trials = 4000u32;
        let met = (0..trials)
            .filter(|&nonce| {
                let header = job.header(&[1, 2, 3, 4], &[0, 0, 0, 0], job.ntime, nonce);
                target.is_met_by(&sha256d(&header))
            })
            .count();
        // Binomial(4000, 1/2): the standard deviation is ~32, so 5 of them is +-160.
        assert!((1840..=2160).contains(&met), "{met} of {trials}");
    }

    #[test]
    fn made_jobs_are_well_formed() {
        let mut maker = JobMaker::new(840_000, 6);
        let first = maker.next_job(1_700_000_000);
        let second = maker.next_job(1_700_000_030);
        assert_ne!(first.id, second.id);
        assert_ne!(first.prevhash, second.prevhash);
        assert_eq!(first.merkle_branch.len(), 6);
        let coinbase = first.coinbase(&[0xaa; 4], &[0xbb; 4]);
        // version, one input, null prevout, scriptSig length, then the BIP34 height push.
        let script_len = usize::from(coinbase[41]);
        assert_eq!(&coinbase[42..46], &[3, 0x40, 0xd1, 0x0c]); // 840000 little-endian
        assert_eq!(&coinbase[46..50], &[0xaa; 4]);
        assert_eq!(&coinbase[50..54], &[0xbb; 4]);
        let script_end = 42 + script_len;
        assert_eq!(&coinbase[script_end - 14..script_end], b"/testbed-pool/");
        assert_eq!(&coinbase[script_end..script_end + 4], &[0xff; 4]);
        assert_eq!(coinbase.len(), script_end + 4 + 1 + 8 + 1 + 22 + 4);
        let params = first.notify_params();
        assert_eq!(params.as_array().unwrap().len(), 9);
        assert_eq!(params[8], true);
    }
}
