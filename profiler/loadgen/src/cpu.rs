//! The driver's own CPU time, from getrusage(2).

use std::time::Duration;

/// User plus system CPU time this process has used so far (every thread).
pub fn process_cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer cannot fail.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
        )
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Cores the machine offers this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until this thread itself has run 50 ms (by its own CPU clock, so a busy machine
    /// that preempts it only makes the test longer), then the process must show at least that.
    #[test]
    fn counts_cpu_spent_spinning() {
        let thread_cpu = || {
            let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        };
        let before = process_cpu_time();
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spent = process_cpu_time() - before;
        // Other tests run in parallel threads, so only a lower bound holds. The process clock
        // is read in ticks of its own, so allow one 10 ms tick.
        assert!(spent >= Duration::from_millis(40), "{spent:?}");
    }
}
