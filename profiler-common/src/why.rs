//! `why`: where each request's time went, for tail-latency attribution.
//!
//! A request starts when a target thread reads it (`sock`'s read step) and ends at its reply
//! (`sock`'s reply step). The threads working on it *carry* it: the reader, and every thread a
//! carrier wakes that carries nothing (a handoff to a worker). At every scheduler event of a
//! carrier the request's time since the last event goes to one category, from the state of its
//! most active carrier (a thread woken by a carrier carries the request too when it carries
//! none and serves requests itself, i.e. has replied to one before): on a CPU, else waiting in a run queue, else blocked on a lock (a futex
//! wait), else blocked otherwise; with no carrier left (the thread moved on to another request)
//! it is `other`. Time from the request's arrival to its read is `queued`, except the part the
//! reading thread spent woken and waiting for a CPU (`runqueue`). A request its last carrier
//! left without waking anyone (handed to a busy worker through a queue), or left to wait for
//! new work (poll, epoll, select: it is not working on this request any more), waits as an orphan
//! until a thread of its port finishes a reply and takes up the oldest orphan. At the reply,
//! one [`ReqRecord`] goes to userspace through a ring buffer.

use crate::impl_pod;

/// `sched:sched_switch`.
pub const SWITCH_PROGRAM: &str = "why_switch";
/// `sched:sched_waking`: runs as the waker.
pub const WAKING_PROGRAM: &str = "why_waking";
/// `syscalls:sys_enter_<poll family>`: a carrier goes back to waiting for new work.
pub const IDLE_PROGRAM: &str = "why_idle";
/// The syscalls a thread waits for new work in (those the kernel has are traced).
pub const IDLE_SYSCALLS: [&str; 7] = [
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
];

/// `WHY_THREADS`: tid → [`ThreadReq`], every target thread seen switching (LRU).
pub const THREADS_MAP: &str = "WHY_THREADS";
/// `WHY_REQUESTS`: request id → [`ReqState`], requests in progress.
pub const REQUESTS_MAP: &str = "WHY_REQUESTS";
/// `WHY_RECORDS`: ring buffer of [`ReqRecord`].
pub const RECORDS_MAP: &str = "WHY_RECORDS";
/// `WHY_ORPHANS`: FIFO of requests no thread carries any more (their reader moved on without
/// waking anyone: a queue a busy worker will come back to). A thread that replies to one
/// request takes up the oldest orphan of its port.
pub const ORPHANS_MAP: &str = "WHY_ORPHANS";
/// `WHY_ARMED`: one `u32`, 1 while requests are followed.
pub const ARMED_MAP: &str = "WHY_ARMED";
/// [`WhyConfig`] global.
pub const CONFIG_GLOBAL: &str = "WHY_CONFIG";

/// Bytes of the records' ring buffer: at 200 bytes a record, ~40,000 requests between two
/// reads (userspace drains it every 100 ms).
pub const RECORDS_BYTES: u32 = 8 << 20;

/// Where a request's time can go.
pub mod category {
    /// Arrived on the socket, not read yet.
    pub const QUEUED: usize = 0;
    /// A carrier on a CPU.
    pub const CPU: usize = 1;
    /// A carrier runnable, waiting for a CPU (woken, or preempted).
    pub const RUNQUEUE: usize = 2;
    /// Every carrier blocked, one in a futex wait.
    pub const LOCK: usize = 3;
    /// Every carrier blocked, none on a lock (I/O, sleep, poll).
    pub const BLOCKED: usize = 4;
    /// No thread carried it (an event loop moved on to another socket).
    pub const OTHER: usize = 5;
    pub const COUNT: usize = 6;

    pub const NAMES: [&str; COUNT] = ["queued", "cpu", "runqueue", "lock", "blocked", "other"];
}

/// What a carrier is doing; indexes [`ReqState::carriers`].
pub mod state {
    pub const CPU: u32 = 0;
    pub const RUNQUEUE: u32 = 1;
    pub const LOCK: u32 = 2;
    pub const BLOCKED: u32 = 3;
    pub const COUNT: usize = 4;
}

/// CPU samples kept per request.
pub const SAMPLES: usize = 4;

/// Fixed at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WhyConfig {
    /// sched_switch: `prev_state` (8 bytes), `next_pid` (4).
    pub prev_state_offset: u32,
    pub next_pid_offset: u32,
    /// sched_waking: `pid`.
    pub waking_pid_offset: u32,
}
const _: () = assert!(core::mem::size_of::<WhyConfig>() == 12);

/// A stack: a user stack hash and a kernel stack id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stack {
    pub user: u64,
    pub kernel: i32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Stack>() == 16);

/// A target thread, and the request it carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadReq {
    /// The request carried (0: none). May have ended; checked against `WHY_REQUESTS`.
    pub req: u64,
    /// One of [`state`], while it carries `req`.
    pub state: u32,
    pub _pad: u32,
    /// The futex it blocked on last (0: none), read from its syscall registers as it blocked.
    pub futex: u64,
    /// When it blocked, and where.
    pub blocked_ns: u64,
    pub blocked_at: Stack,
    /// The stack that woke it from a futex wait: the lock's holder, releasing it.
    pub waker: Stack,
    /// When it was last woken, and last switched in: a request it reads after waiting for a
    /// CPU spent that wait in the run queue, not queued behind other work.
    pub woken_ns: u64,
    pub on_cpu_ns: u64,
    /// The last request it replied to, and when: one that arrived before then and that it
    /// reads next waited behind it.
    pub done: Done,
    pub done_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ThreadReq>() == 168);

/// What delayed a finished request: nanoseconds of [`category::CPU`], `RUNQUEUE`, `LOCK` and
/// `BLOCKED`, and its lock. A request that waited behind it (queued in the socket, or in the
/// server's own queue) waited for the same reasons, in the same proportions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Done {
    pub work: [u64; 4],
    pub lock: LockWait,
}
const _: () = assert!(core::mem::size_of::<Done>() == 80);

impl Done {
    pub fn of(req: &ReqState) -> Self {
        Self {
            work: [
                req.ns[category::CPU],
                req.ns[category::RUNQUEUE],
                req.ns[category::LOCK],
                req.ns[category::BLOCKED],
            ],
            lock: req.lock,
        }
    }
}

/// The categories [`Done::work`] holds, in order.
pub const WORK: [usize; 4] = [
    category::CPU,
    category::RUNQUEUE,
    category::LOCK,
    category::BLOCKED,
];

/// The longest lock wait of a request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockWait {
    pub ns: u64,
    pub futex: u64,
    pub waiter: Stack,
    pub holder: Stack,
}
const _: () = assert!(core::mem::size_of::<LockWait>() == 48);

/// The longest other block of a request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockWait {
    pub ns: u64,
    pub at: Stack,
}
const _: () = assert!(core::mem::size_of::<BlockWait>() == 24);

/// A request in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReqState {
    pub arrived_ns: u64,
    /// The last scheduler event of a carrier: time since goes to the current category.
    pub last_ns: u64,
    /// Nanoseconds per [`category`].
    pub ns: [u64; category::COUNT],
    /// Carriers in each [`state`].
    pub carriers: [u16; state::COUNT],
    pub port_index: u32,
    /// CPU samples taken while a carrier ran (`cpu` on), kept up to [`SAMPLES`].
    pub samples: u32,
    pub sample: [Stack; SAMPLES],
    pub lock: LockWait,
    pub blocked: BlockWait,
}
const _: () = assert!(core::mem::size_of::<ReqState>() == 216);

/// One finished request, for userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReqRecord {
    /// Socket-to-reply: arrival to the start of the reply's send.
    pub latency_ns: u64,
    pub ns: [u64; category::COUNT],
    pub port_index: u32,
    pub samples: u32,
    pub sample: [Stack; SAMPLES],
    pub lock: LockWait,
    pub blocked: BlockWait,
}
const _: () = assert!(core::mem::size_of::<ReqRecord>() == 200);

impl ReqRecord {
    pub fn from_state(req: &ReqState, latency_ns: u64) -> Self {
        Self {
            latency_ns,
            ns: req.ns,
            port_index: req.port_index,
            samples: req.samples,
            sample: req.sample,
            lock: req.lock,
            blocked: req.blocked,
        }
    }
}

/// The category of a request's time now, from its carriers: the most active one decides.
#[inline(always)]
pub const fn current_category(carriers: &[u16; state::COUNT]) -> usize {
    if carriers[state::CPU as usize] > 0 {
        category::CPU
    } else if carriers[state::RUNQUEUE as usize] > 0 {
        category::RUNQUEUE
    } else if carriers[state::LOCK as usize] > 0 {
        category::LOCK
    } else if carriers[state::BLOCKED as usize] > 0 {
        category::BLOCKED
    } else {
        category::OTHER
    }
}

impl_pod!(
    WhyConfig, Stack, ThreadReq, Done, LockWait, BlockWait, ReqState, ReqRecord
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_active_carrier_decides() {
        assert_eq!(current_category(&[1, 1, 1, 1]), category::CPU);
        assert_eq!(current_category(&[0, 2, 1, 0]), category::RUNQUEUE);
        assert_eq!(current_category(&[0, 0, 1, 3]), category::LOCK);
        assert_eq!(current_category(&[0, 0, 0, 1]), category::BLOCKED);
        assert_eq!(current_category(&[0, 0, 0, 0]), category::OTHER);
    }
}
