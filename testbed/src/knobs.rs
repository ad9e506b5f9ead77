//! Ground-truth knobs shared by the testbed servers. Each one plants a known cost in a function
//! (or a lock) with a stable name, so tests of the profiler can check that it finds exactly that:
//! - `--contend`: every request holds the server's hot `static` mutex across real work
//!   (SHA-256 rounds) for a known time;
//! - `--leak-bytes N`: every accepted request `malloc`s N bytes from [`leak_bytes`] and never
//!   frees them;
//! - `--slow-every N`: every Nth request spends a known extra time in [`slow_path`];
//! - `--stall-every MS --stall-ms MS`: a background thread ([`stall_loop`]) takes the hot mutex
//!   every so often and works on the CPU while holding it, as a compaction or snapshot job
//!   would: requests that need the lock meanwhile wait for it.
//!
//! All are off by default and reported in the server's startup line.

use std::{
    ffi::c_void,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// Requests seen so far, across all connections: the `--slow-every` count.
static REQUESTS: AtomicU64 = AtomicU64::new(0);
/// What [`leak_bytes`] has leaked so far.
pub static LEAKED_BYTES: AtomicU64 = AtomicU64::new(0);
pub static LEAKED_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// How many requests took [`slow_path`].
pub static SLOW_PATHS: AtomicU64 = AtomicU64::new(0);
/// How many times [`stall_loop`] held the hot mutex.
pub static STALLS: AtomicU64 = AtomicU64::new(0);

/// The knobs as the servers use them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Knobs {
    /// Hold the hot lock across this much work on every request.
    pub contend: Option<Duration>,
    /// Bytes leaked per accepted request (0: off).
    pub leak_bytes: usize,
    /// Every Nth request takes the slow path (0: off).
    pub slow_every: u64,
    /// Extra time the slow path takes.
    pub slow: Duration,
    /// Spend the slow path's time on the CPU instead of asleep.
    pub slow_spin: bool,
    /// A background job holding the hot mutex: (every, for how long).
    pub stall: Option<(Duration, Duration)>,
}

impl Knobs {
    /// One line for the startup banner, e.g. `contend=off leak-bytes=0 slow-every=50 (20 ms, sleep)`.
    pub fn describe(&self) -> String {
        let contend = match self.contend {
            Some(work) => format!("on ({} us per request)", work.as_micros()),
            None => "off".to_string(),
        };
        let slow = if self.slow_every == 0 {
            "off".to_string()
        } else {
            let how = if self.slow_spin { "spin" } else { "sleep" };
            format!("{} ({} ms, {how})", self.slow_every, self.slow.as_millis())
        };
        let stall = match self.stall {
            Some((every, hold)) => format!(
                " stall={} ms every {} ms",
                hold.as_millis(),
                every.as_millis()
            ),
            None => String::new(),
        };
        format!(
            "contend={contend} leak-bytes={} slow-every={slow}{stall}",
            self.leak_bytes
        )
    }

    /// Starts the `--stall-every` job, if set: a thread that every `every` calls `hold` (which
    /// takes the server's hot mutex and calls [`stall_work`] under it).
    pub fn start_stalls(&self, hold: extern "C" fn(u64)) -> std::io::Result<()> {
        let Some((every, hold_for)) = self.stall else {
            return Ok(());
        };
        let (every_ms, hold_ms) = (
            u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            u64::try_from(hold_for.as_millis()).unwrap_or(u64::MAX),
        );
        std::thread::Builder::new()
            .name("stall".into())
            .spawn(move || stall_loop(every_ms, hold_ms, hold))?;
        Ok(())
    }

    /// Counts one request; on every `slow_every`th, the (milliseconds, spin) that the caller
    /// passes to [`slow_path`]. The request handler calls it itself, as a real server's
    /// handler would call its slow branch: the stack reads handler → `slow_path`.
    #[inline(always)]
    pub fn on_request(&self) -> Option<(u64, bool)> {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        if self.slow_every == 0 || !n.is_multiple_of(self.slow_every) {
            return None;
        }
        let millis = u64::try_from(self.slow.as_millis()).unwrap_or(u64::MAX);
        Some((millis, self.slow_spin))
    }

    /// Called once per accepted request (share or ingest): leaks `leak_bytes` if set.
    pub fn on_accepted(&self) {
        if self.leak_bytes > 0 {
            leak_bytes(self.leak_bytes);
        }
    }
}

/// The `--contend`, `--leak-bytes` and `--slow-every` flags, shared by both servers.
#[derive(Debug, Clone, clap::Args)]
pub struct KnobArgs {
    /// Hold the hot mutex (the pool's SHARE_LOG, the ledger's LEDGER_INDEX) across real work
    /// on every request
    #[arg(long)]
    pub contend: bool,
    /// Work done under the hot mutex per request with --contend, in microseconds
    #[arg(long, value_name = "US", default_value_t = 1000)]
    pub contend_us: u64,
    /// Leak N bytes (malloc, never freed, from `leak_bytes`) per accepted share or ingest
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub leak_bytes: usize,
    /// Make every Nth request take `slow_path`
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub slow_every: u64,
    /// Extra time `slow_path` takes, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub slow_ms: u64,
    /// Spend the slow path on the CPU (hashing, --slow-ms of the thread's CPU time) instead of
    /// sleeping
    #[arg(long)]
    pub slow_spin: bool,
    /// Every MS milliseconds a background job (`stall_loop`) takes the hot mutex and works on
    /// the CPU while holding it, for --stall-ms
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub stall_every: u64,
    /// How long the background job holds the hot mutex, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 15)]
    pub stall_ms: u64,
}

impl From<KnobArgs> for Knobs {
    fn from(args: KnobArgs) -> Self {
        Self {
            contend: args.contend.then(|| Duration::from_micros(args.contend_us)),
            leak_bytes: args.leak_bytes,
            slow_every: args.slow_every,
            slow: Duration::from_millis(args.slow_ms),
            slow_spin: args.slow_spin,
            stall: (args.stall_every > 0).then(|| {
                (
                    Duration::from_millis(args.stall_every),
                    Duration::from_millis(args.stall_ms),
                )
            }),
        }
    }
}

/// The `--stall-every` job: every `every_ms`, `hold(hold_ms)`. Never inlined and not mangled,
/// so the lock's holder shows by this name in stacks.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn stall_loop(every_ms: u64, hold_ms: u64, hold: extern "C" fn(u64)) {
    loop {
        std::thread::sleep(Duration::from_millis(every_ms));
        STALLS.fetch_add(1, Ordering::Relaxed);
        hold(hold_ms);
    }
}

/// What the stall job does while it holds the hot mutex: `millis` of hashing.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn stall_work(millis: u64) {
    let mut state = [7u8; 32];
    burn(&mut state, Duration::from_millis(millis));
    std::hint::black_box(state);
}

/// The slow path of `--slow-every`: `millis` of extra time, asleep (off-CPU) or hashing
/// (`millis` of the thread's CPU time, so a busy machine adds its run-queue wait to the slow
/// path rather than taking its CPU work away). Never inlined and not mangled, so stacks show it by this name.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn slow_path(millis: u64, spin: bool) {
    SLOW_PATHS.fetch_add(1, Ordering::Relaxed);
    let duration = Duration::from_millis(millis);
    if spin {
        let mut state = [0u8; 32];
        burn_cpu(&mut state, duration);
        std::hint::black_box(state);
    } else {
        std::thread::sleep(duration);
    }
}

/// The leak of `--leak-bytes`: `n` bytes from libc's `malloc`, touched so they are resident, and
/// never freed. Never inlined and not mangled, so an allocation probe sees this caller by name.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_bytes(n: usize) -> *mut c_void {
    // SAFETY: malloc has no preconditions; a null result is handled below.
    let block = unsafe { libc::malloc(n) };
    if !block.is_null() {
        // SAFETY: `block` points to `n` writable bytes that nothing else references.
        unsafe { std::ptr::write_bytes(block.cast::<u8>(), 0xa5, n) };
        LEAKED_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        LEAKED_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
    // Keeps the optimizer from proving the block unused and dropping the malloc.
    std::hint::black_box(block)
}

/// Chains SHA-256 over `state` until `duration` has passed: CPU work of a known length.
/// Returns the rounds done.
pub fn burn(state: &mut [u8; 32], duration: Duration) -> u64 {
    let start = Instant::now();
    burn_until(state, || start.elapsed() >= duration)
}

/// Chains SHA-256 over `state` until this thread has spent `duration` on the CPU: the same
/// CPU work however long a busy machine keeps the thread waiting for a core.
pub fn burn_cpu(state: &mut [u8; 32], duration: Duration) -> u64 {
    let start = thread_cpu_time();
    burn_until(state, || {
        thread_cpu_time().saturating_sub(start) >= duration
    })
}

fn burn_until(state: &mut [u8; 32], mut done: impl FnMut() -> bool) -> u64 {
    let mut rounds = 0;
    loop {
        // Check the clock every 64 rounds (a few microseconds), not every round.
        for _ in 0..64 {
            *state = Sha256::digest(*state).into();
        }
        rounds += 64;
        if done() {
            return rounds;
        }
    }
}

/// This thread's CPU time.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_takes_about_the_time_asked() {
        let mut state = [0u8; 32];
        let start = Instant::now();
        let rounds = burn(&mut state, Duration::from_millis(5));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(5));
        assert!(took < Duration::from_millis(200), "{took:?}");
        assert!(rounds >= 64);
        assert_ne!(state, [0u8; 32]);
    }

    #[test]
    fn burn_cpu_spends_the_cpu_time_asked() {
        let mut state = [0u8; 32];
        let before = thread_cpu_time();
        burn_cpu(&mut state, Duration::from_millis(5));
        let spent = thread_cpu_time() - before;
        assert!(spent >= Duration::from_millis(5), "{spent:?}");
        assert!(spent < Duration::from_millis(200), "{spent:?}");
    }

    #[test]
    fn leak_bytes_counts_what_it_leaks() {
        let before = LEAKED_BYTES.load(Ordering::Relaxed);
        let block = leak_bytes(4096);
        assert!(!block.is_null());
        // SAFETY: the block is 4096 bytes and was filled with 0xa5.
        let first = unsafe { *block.cast::<u8>() };
        assert_eq!(first, 0xa5);
        assert!(LEAKED_BYTES.load(Ordering::Relaxed) >= before + 4096);
    }

    #[test]
    fn describe_names_every_knob() {
        assert_eq!(
            Knobs::default().describe(),
            "contend=off leak-bytes=0 slow-every=off"
        );
        let knobs = Knobs {
            contend: Some(Duration::from_micros(500)),
            leak_bytes: 64,
            slow_every: 50,
            slow: Duration::from_millis(20),
            slow_spin: false,
            stall: None,
        };
        assert_eq!(
            knobs.describe(),
            "contend=on (500 us per request) leak-bytes=64 slow-every=50 (20 ms, sleep)"
        );
    }
}
