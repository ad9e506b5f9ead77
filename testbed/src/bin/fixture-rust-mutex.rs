//! Ground truth for futex contention through Rust's std::sync::Mutex (FUTEX_WAIT_BITSET):
//! after SIGUSR1 four threads run `contend_std_mutex`, which locks the static `CONTENDED` and
//! holds it for 1 ms of busy work. Prints "ready", then "total_wait_ns N" before exiting.
//! Argument: seconds to run (default 2).

use std::{
    hint::black_box,
    sync::Mutex,
    time::{Duration, Instant},
};

static CONTENDED: Mutex<u64> = Mutex::new(0);

#[inline(never)]
fn contend_std_mutex(run_for: Duration) -> Duration {
    let end = Instant::now() + run_for;
    let mut waited = Duration::ZERO;
    while Instant::now() < end {
        let before = Instant::now();
        let mut guard = CONTENDED.lock().unwrap_or_else(|e| e.into_inner());
        waited += before.elapsed();
        let hold = Instant::now() + Duration::from_millis(1);
        while Instant::now() < hold {
            *guard = black_box(*guard + 1);
        }
    }
    waited
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain signal-mask calls on a local set.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    println!("ready");
    let mut sig = 0;
    // SAFETY: waits for the signal blocked above.
    unsafe { libc::sigwait(&set, &mut sig) };
    let run_for = Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("contender-{i}"))
                .spawn(move || contend_std_mutex(run_for))
                .expect("spawn")
        })
        .collect();
    let total: Duration = threads.into_iter().map(|t| t.join().expect("join")).sum();
    println!("total_wait_ns {}", total.as_nanos());
}
