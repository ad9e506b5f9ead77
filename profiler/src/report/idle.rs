//! Idle told apart from blocked. A thread off the CPU is *idle* when it waits for work to come
//! to it: an event loop in `epoll_wait`/`poll`/`select` (the kernel's `ep_poll`, `do_sys_poll`,
//! `do_select`), a runtime worker parked (tokio's and std's `park`), a pool thread on a
//! condition variable, semaphore or barrier, a thread joining another. Everything else it waits
//! for inside work is *blocked*: a lock another thread holds, I/O, a page fault, a sleep. Idle
//! time is shown apart from blocked time and never ranked above it. A thread the scheduler
//! took off the CPU while it could have run on is neither: it is *preempted*, waiting for a
//! CPU, whatever call it was in (a poll loop preempted on its way out of `poll` is not idle).

/// Kernel frames of waiting for any of a set of fds to have work.
const POLL_FRAMES: &[&str] = &[
    "ep_poll_[k]",
    "do_epoll_wait_[k]",
    "do_sys_poll_[k]",
    "do_select_[k]",
    "core_sys_select_[k]",
];

/// User frames of waiting to be handed work (checked before a lock's, so a condition
/// variable's internal mutex does not make it a lock).
pub const WAIT_FRAMES: &[&str] = &[
    "pthread_cond_",
    "Condvar",
    "condvar",
    "::park",
    "park_timeout",
    "Parker",
    "sem_wait",
    "sem_timedwait",
    "pthread_join",
    "pthread_barrier_wait",
    "Notify",
];

/// Kernel frames that call the scheduler for a thread that is still runnable: the return to
/// user mode with a reschedule pending (the loop, or the interrupt's or syscall's exit when
/// the compiler inlined the loop into it), and voluntary preemption points.
const PREEMPT_CALLERS: &[&str] = &[
    "exit_to_user_mode_loop_[k]",
    "irqentry_exit_to_user_mode_[k]",
    "syscall_exit_to_user_mode_[k]",
    "__cond_resched_[k]",
];

/// The class of waits inside our probes: `[probe overhead]`, as in the CPU flamegraph.
pub const PROBE_OVERHEAD: &str = "probe overhead";
const _: () = assert!(super::cpu::OVERHEAD.len() == PROBE_OVERHEAD.len() + 2);

/// Whether a thread went to sleep inside a uprobe's trap handler: the kernel's own frames, not
/// a user frame that merely passed a probe's return trampoline.
fn asleep_in_probe(frames: &[String]) -> bool {
    frames
        .iter()
        .any(|f| f == "uprobe_notify_resume_[k]" || f == "handle_swbp_[k]")
}

/// Whether an off-CPU stack (root first) is a preemption rather than a wait.
pub fn is_preempted(frames: &[String]) -> bool {
    frames.iter().any(|f| f.starts_with("preempt_schedule"))
        || frames.windows(2).any(|pair| {
            PREEMPT_CALLERS.contains(&pair[0].as_str())
                && matches!(pair[1].as_str(), "schedule_[k]" | "__schedule_[k]")
        })
}

/// Whether an off-CPU or futex stack (root first) is a wait for new work.
pub fn is_idle(frames: &[String]) -> bool {
    frames
        .iter()
        .any(|f| POLL_FRAMES.contains(&f.as_str()) || WAIT_FRAMES.iter().any(|w| f.contains(w)))
}

/// The word for a class, as reports print it. A wait inside our probes (a uprobe's trap) is
/// the profiler's cost, not the target's blocking.
pub fn class(frames: &[String]) -> &'static str {
    if is_preempted(frames) {
        "preempted"
    } else if asleep_in_probe(frames) {
        PROBE_OVERHEAD
    } else if is_idle(frames) {
        "idle"
    } else {
        "blocked"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn waits_for_work_are_idle_and_waits_inside_work_are_not() {
        for idle in [
            &[
                "main",
                "event_loop",
                "epoll_wait",
                "do_epoll_wait_[k]",
                "ep_poll_[k]",
            ][..],
            &["tokio::runtime::park::Inner::park", "syscall"],
            &["worker", "pthread_cond_wait", "futex_wait_[k]"],
            &["main", "read_requests", "poll", "do_sys_poll_[k]"],
        ] {
            assert!(is_idle(&frames(idle)), "{idle:?}");
        }
        for blocked in [
            &["handle", "pthread_mutex_lock", "futex_wait_[k]"][..],
            &["handle", "read", "ext4_file_read_iter_[k]"],
            &["slow_path", "nanosleep", "hrtimer_nanosleep_[k]"],
        ] {
            assert!(!is_idle(&frames(blocked)), "{blocked:?}");
            assert_eq!(class(&frames(blocked)), "blocked");
        }
    }

    #[test]
    fn a_runnable_thread_taken_off_the_cpu_is_preempted_whatever_it_was_in() {
        let poll = [
            "read_requests",
            "poll",
            "do_syscall_64_[k]",
            "exit_to_user_mode_loop_[k]",
            "schedule_[k]",
            "__schedule_[k]",
        ];
        assert_eq!(class(&frames(&poll)), "preempted");
        let irq = [
            "spin",
            "asm_sysvec_apic_timer_interrupt_[k]",
            "preempt_schedule_irq_[k]",
        ];
        assert_eq!(class(&frames(&irq)), "preempted");
        // The timer's return to user mode, with the loop inlined (6.18): the demo's spinner.
        let tick = [
            "stall_work",
            "asm_sysvec_apic_timer_interrupt_[k]",
            "irqentry_exit_to_user_mode_[k]",
            "schedule_[k]",
            "__schedule_[k]",
        ];
        assert_eq!(class(&frames(&tick)), "preempted");
        // Asleep in a uprobe's trap, for the mmap lock a probe's registration holds: ours.
        let trap = [
            "leak_bytes",
            "__GI___libc_malloc",
            "asm_exc_int3_[k]",
            "irqentry_exit_to_user_mode_[k]",
            "uprobe_notify_resume_[k]",
            "find_active_uprobe_rcu_[k]",
            "down_read_[k]",
            "rwsem_down_read_slowpath_[k]",
            "schedule_preempt_disabled_[k]",
            "schedule_[k]",
        ];
        assert_eq!(class(&frames(&trap)), PROBE_OVERHEAD);
        assert_eq!(
            format!("[{}]", class(&frames(&trap))),
            crate::report::cpu::OVERHEAD
        );
        // A wait that merely passes the return path on its way is not.
        let waiting = ["main", "poll", "do_sys_poll_[k]", "schedule_[k]"];
        assert_eq!(class(&frames(&waiting)), "idle");
    }
}
