//! What the scheduler's tracepoints say, as more than one family reads it.

/// `sched_switch` `prev_state` of a task sleeping interruptibly (`S`), as a futex wait does.
pub const INTERRUPTIBLE: u64 = 0x1;

/// Whether a `sched_switch` `prev_state` means the task stays runnable (preempted or
/// yielding): no sleeping state bit (`S`, `D`, … are 0x01–0x40; 0x80 marks a preemption).
#[inline(always)]
pub const fn stays_runnable(prev_state: u64) -> bool {
    prev_state & 0x7f == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preempted_and_running_stay_runnable() {
        assert!(stays_runnable(0));
        assert!(stays_runnable(0x80), "R+: preempted");
        assert!(!stays_runnable(0x1), "S");
        assert!(!stays_runnable(0x2), "D");
        assert!(!stays_runnable(0x81));
    }
}
