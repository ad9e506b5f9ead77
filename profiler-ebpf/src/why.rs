//! `why`: follows each request the `sock` family pairs through the threads that carry it, and
//! splits its time into categories at every scheduler event of a carrier (see
//! `profiler_common::why`). `sock` calls [`request_read`] and [`request_replied`]; `cpu` calls
//! [`sample`]. Races between two carriers of one request on two CPUs at the same instant can
//! lose an interval's update; requests with one carrier at a time (the usual) are exact.

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
    programs::TracePointContext,
};
use profiler_common::{
    sched::stays_runnable,
    stats,
    why::{
        BlockWait, Done, LockWait, RECORDS_BYTES, ReqRecord, ReqState, SAMPLES, Stack, ThreadReq,
        WORK, WhyConfig, category, current_category, state,
    },
};

use crate::{
    futex::blocking_futex,
    shared::{count, is_armed, kernel_stack, now_ns, switch_stacks, target_thread, user_stack},
};

#[unsafe(no_mangle)]
static WHY_CONFIG: Global<WhyConfig> = Global::new(WhyConfig {
    prev_state_offset: 0,
    next_pid_offset: 0,
    waking_pid_offset: 0,
});

/// Every target thread seen switching out, so a wakeup can tell one of the target's threads
/// (for a handoff) from any other task on the host.
#[map]
static WHY_THREADS: LruHashMap<u32, ThreadReq> = LruHashMap::with_max_entries(16384, 0);

#[map]
static WHY_REQUESTS: HashMap<u64, ReqState> = HashMap::with_max_entries(16384, 0);

#[map]
static WHY_RECORDS: RingBuf = RingBuf::with_byte_size(RECORDS_BYTES, 0);

#[map]
static WHY_ARMED: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static WHY_ORPHANS: Queue<u64> = Queue::with_max_entries(4096, 0);

/// Request ids: this CPU's counter, with the CPU in the top byte.
#[map]
static WHY_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn armed() -> bool {
    is_armed(&WHY_ARMED)
}

#[inline(always)]
fn next_id() -> Option<u64> {
    let seq = WHY_SEQ.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; programs do not nest on one CPU.
    let n = unsafe {
        *seq += 1;
        *seq
    };
    // SAFETY: no preconditions.
    let cpu = u64::from(unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() });
    Some(cpu << 56 | (n & ((1 << 56) - 1)))
}

/// Adds the time since the request's last event to its current category.
#[inline(always)]
fn advance(req: &mut ReqState, now: u64) {
    let dt = now.saturating_sub(req.last_ns);
    let category = current_category(&req.carriers);
    if category < category::COUNT {
        req.ns[category] += dt;
    }
    if now > req.last_ns {
        req.last_ns = now;
    }
}

/// Moves one carrier of `req` from state `from` to `to` (either may be absent).
#[inline(always)]
fn move_carrier(req: &mut ReqState, from: Option<u32>, to: Option<u32>, now: u64) {
    advance(req, now);
    if let Some(from) = from
        && let Some(n) = req.carriers.get_mut(from as usize)
    {
        *n = n.saturating_sub(1);
    }
    if let Some(to) = to
        && let Some(n) = req.carriers.get_mut(to as usize)
    {
        *n = n.saturating_add(1);
    }
}

/// The live request a thread carries; forgets one that has ended.
#[inline(always)]
fn carried(thread: &mut ThreadReq) -> Option<&'static mut ReqState> {
    if thread.req == 0 {
        return None;
    }
    match WHY_REQUESTS.get_ptr_mut(thread.req) {
        // SAFETY: a live map value; see the module's note on races.
        Some(req) => Some(unsafe { &mut *req }),
        None => {
            thread.req = 0;
            None
        }
    }
}

/// The entry of target thread `tid`, made if new.
#[inline(always)]
fn thread(tid: u32) -> Option<&'static mut ThreadReq> {
    if let Some(t) = WHY_THREADS.get_ptr_mut(tid) {
        // SAFETY: a live map value; only this thread's own events and its wakers write it.
        return Some(unsafe { &mut *t });
    }
    let _ = WHY_THREADS.insert(tid, ThreadReq::default(), BPF_NOEXIST as u64);
    // SAFETY: as above.
    WHY_THREADS.get_ptr_mut(tid).map(|t| unsafe { &mut *t })
}

/// `thread` stops carrying its request; a request left with no carrier waits as an orphan.
#[inline(always)]
fn leave(thread: &mut ThreadReq, now: u64) {
    let id = thread.req;
    let from = thread.state;
    if let Some(req) = carried(thread) {
        move_carrier(req, Some(from), None, now);
        if req.carriers == [0; state::COUNT] {
            let _ = WHY_ORPHANS.push(id, 0);
        }
    }
    thread.req = 0;
}

/// `thread` carries `req` from now, in `state`, leaving any request it carried before: a
/// thread works on one request at a time, the last it read or was handed. A request left with
/// no carrier waits as an orphan.
#[inline(always)]
fn carry(thread: &mut ThreadReq, req: u64, st: u32, now: u64) {
    if thread.req != req {
        leave(thread, now);
    }
    thread.req = req;
    thread.state = st;
    if let Some(new) = carried(thread) {
        move_carrier(new, None, Some(st), now);
    }
}

/// A target thread read request bytes that arrived at `arrived_ns`: a request starts, carried
/// by the reader. Returns its id (0: not followed).
#[inline(always)]
pub fn request_read(tid: u32, port_index: u32, arrived_ns: u64, now: u64) -> u64 {
    if !armed() {
        return 0;
    }
    let Some(id) = next_id() else {
        return 0;
    };
    let Some(thread) = thread(tid) else {
        return 0;
    };
    let mut ns = [0u64; category::COUNT];
    // Switched in after the bytes arrived: from its wakeup (or the arrival, for a thread that
    // was runnable already, e.g. preempted) to its switch-in it waited for a CPU, and the time
    // since on the CPU (an event loop's return) was the request's.
    if thread.on_cpu_ns > arrived_ns && thread.on_cpu_ns <= now {
        let woken = thread.woken_ns.max(arrived_ns).min(thread.on_cpu_ns);
        ns[category::QUEUED] = woken - arrived_ns;
        ns[category::RUNQUEUE] = thread.on_cpu_ns - woken;
        ns[category::CPU] = now - thread.on_cpu_ns;
    } else {
        ns[category::QUEUED] = now.saturating_sub(arrived_ns);
    }
    // It arrived while this thread was still on an earlier request: it waited behind it.
    let behind = (thread.done_ns > arrived_ns).then_some(thread.done);
    let req = ReqState {
        arrived_ns,
        last_ns: now,
        ns,
        carriers: [0; state::COUNT],
        port_index,
        samples: 0,
        sample: [Stack::default(); SAMPLES],
        lock: LockWait::default(),
        blocked: BlockWait::default(),
    };
    if WHY_REQUESTS.insert(id, req, BPF_NOEXIST as u64).is_err() {
        count(stats::WHY_REQUESTS_FULL);
        return 0;
    }
    if let Some(done) = behind
        && let Some(req) = WHY_REQUESTS.get_ptr_mut(id)
    {
        // SAFETY: the entry just inserted.
        let req = unsafe { &mut *req };
        let queued = req.ns[category::QUEUED];
        inherit(req, category::QUEUED, queued, &done);
    }
    carry(thread, id, state::CPU, now);
    id
}

/// Orphans looked at per reply: a stale one (replied to meanwhile) is skipped.
const ADOPT_TRIES: usize = 4;

/// `thread`, done with request `done`, takes up the oldest orphan of its port. The orphan
/// waited in the server's queue behind `done`: its time with no carrier is charged to what
/// delayed `done` (CPU, run queue, lock, blocking), in the same proportions, and it inherits
/// `done`'s lock when it has none of its own. (The queue's head was the one delayed; every
/// request behind it waited for the same reason.)
#[inline(always)]
fn adopt(thread: &mut ThreadReq, done: &ReqState, now: u64) {
    let port_index = done.port_index;
    for _ in 0..ADOPT_TRIES {
        let Ok(Some(id)) = WHY_ORPHANS.pop() else {
            return;
        };
        let Some(orphan) = WHY_REQUESTS.get_ptr_mut(id) else {
            continue;
        };
        // SAFETY: a live map value.
        let orphan = unsafe { &mut *orphan };
        if orphan.carriers != [0; state::COUNT] {
            continue;
        }
        if orphan.port_index != port_index {
            // Another port's: back in line.
            let _ = WHY_ORPHANS.push(id, 0);
            continue;
        }
        // The orphan waited in the server's queue behind `done`.
        advance(orphan, now);
        let waited = orphan.ns[category::OTHER];
        inherit(orphan, category::OTHER, waited, &Done::of(done));
        carry(thread, id, state::CPU, now);
        return;
    }
}

/// Moves `waited` nanoseconds of `req` out of category `from` into the causes of `done` (the
/// request it waited behind), in their proportions, and gives it `done`'s lock when it has
/// none of its own. Nothing moves when `done` was not delayed by anything.
#[inline(always)]
fn inherit(req: &mut ReqState, from: usize, waited: u64, done: &Done) {
    let total: u64 = done.work.iter().sum();
    if total == 0 || waited == 0 || from >= category::COUNT {
        return;
    }
    let mut moved = 0;
    for (i, c) in WORK.iter().enumerate() {
        let part = done.work[i];
        let share = waited / total * part + waited % total * part / total;
        req.ns[*c] += share;
        moved += share;
    }
    req.ns[from] = req.ns[from].saturating_sub(moved);
    if req.lock.futex == 0 && done.lock.futex != 0 {
        req.lock = done.lock;
        req.lock.ns = 0;
    }
}

/// Request `id` was replied to at `reply_ns` by thread `tid`: its record goes to userspace,
/// and the thread takes up the oldest orphan of the port.
#[inline(always)]
pub fn request_replied(id: u64, tid: u32, reply_ns: u64) {
    if id == 0 {
        return;
    }
    let Some(req) = WHY_REQUESTS.get_ptr_mut(id) else {
        return;
    };
    // SAFETY: a live map value, removed below.
    let req = unsafe { &mut *req };
    advance(req, reply_ns);
    // Written in place: a record is too big to build on the BPF stack beside the rest.
    match WHY_RECORDS.reserve::<ReqRecord>(0) {
        Some(mut entry) => {
            let record = entry.as_mut_ptr();
            // SAFETY: `record` is the reserved slot, written field by field before submit.
            unsafe {
                (*record).latency_ns = reply_ns.saturating_sub(req.arrived_ns);
                (*record).ns = req.ns;
                (*record).port_index = req.port_index;
                (*record).samples = req.samples;
                (*record).sample = req.sample;
                (*record).lock = req.lock;
                (*record).blocked = req.blocked;
            }
            entry.submit(0);
        }
        None => count(stats::WHY_RECORDS_LOST),
    }
    count(stats::WHY_REQUESTS);
    if let Some(thread) = thread(tid) {
        if thread.req == id {
            thread.req = 0;
        }
        thread.done = Done::of(req);
        thread.done_ns = reply_ns;
        adopt(thread, req, reply_ns);
    }
    let _ = WHY_REQUESTS.remove(id);
}

/// A CPU sample of target thread `tid`: kept with the request it carries.
#[inline(always)]
pub fn sample(tid: u32, user: u64, kernel: i32) {
    if !armed() {
        return;
    }
    let Some(t) = WHY_THREADS.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: a live map value.
    let Some(req) = carried(unsafe { &mut *t }) else {
        return;
    };
    let slot = req.samples as usize % SAMPLES;
    if let Some(s) = req.sample.get_mut(slot) {
        *s = Stack {
            user,
            kernel,
            _pad: 0,
        };
    }
    req.samples += 1;
}

#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: offsets come from this kernel's tracefs formats.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

#[tracepoint]
pub fn why_switch(ctx: TracePointContext) -> u32 {
    if !armed() {
        return 0;
    }
    let config = WHY_CONFIG.load();
    let now = now_ns();
    // The tracepoint runs as the task leaving the CPU.
    if let Some((_, tid)) = target_thread()
        && let Some(thread) = thread(tid)
    {
        let from = thread.state;
        if let Some(req) = carried(thread) {
            let prev_state: u64 = field(&ctx, config.prev_state_offset).unwrap_or(0);
            let to = if stays_runnable(prev_state) {
                state::RUNQUEUE
            } else {
                thread.blocked_ns = now;
                let (user, kernel) = switch_stacks(&ctx, tid, prev_state);
                thread.blocked_at = Stack {
                    user,
                    kernel,
                    _pad: 0,
                };
                thread.waker = Stack::default();
                // Until a wakeup measures a wait, the first block's place stands for them:
                // a carrier can still be blocked when the reply goes out.
                let futex = blocking_futex().unwrap_or(0);
                thread.futex = futex;
                if futex != 0 {
                    if req.lock.futex == 0 {
                        req.lock.futex = futex;
                        req.lock.waiter = thread.blocked_at;
                    }
                    state::LOCK
                } else {
                    if req.blocked.ns == 0 {
                        req.blocked.at = thread.blocked_at;
                    }
                    state::BLOCKED
                }
            };
            move_carrier(req, Some(from), Some(to), now);
            thread.state = to;
        }
    }
    let Some(next) = field::<u32>(&ctx, config.next_pid_offset) else {
        return 0;
    };
    // Only target threads have an entry: the lookup is the filter.
    if let Some(t) = WHY_THREADS.get_ptr_mut(next) {
        // SAFETY: a live map value.
        let thread = unsafe { &mut *t };
        thread.on_cpu_ns = now;
        let from = thread.state;
        if let Some(req) = carried(thread) {
            move_carrier(req, Some(from), Some(state::CPU), now);
            thread.state = state::CPU;
        }
    }
    0
}

/// Runs as the waker. A carrier woken from a block goes to the run queue (a woken futex waiter
/// notes its waker: the lock's holder); a target thread that carries nothing, woken by one
/// that carries a request, carries that request too (a handoff).
#[tracepoint]
pub fn why_waking(ctx: TracePointContext) -> u32 {
    if !armed() {
        return 0;
    }
    let Some(pid) = field::<u32>(&ctx, WHY_CONFIG.load().waking_pid_offset) else {
        return 0;
    };
    let Some(w) = WHY_THREADS.get_ptr_mut(pid) else {
        return 0;
    };
    // SAFETY: a live map value.
    let wakee = unsafe { &mut *w };
    let now = now_ns();
    wakee.woken_ns = now;
    let from = wakee.state;
    if let Some(req) = carried(wakee) {
        if from != state::LOCK && from != state::BLOCKED {
            return 0;
        }
        let waited = now.saturating_sub(wakee.blocked_ns);
        if from == state::LOCK {
            if let Some((_, tid)) = target_thread() {
                wakee.waker = Stack {
                    user: user_stack(&ctx, tid, false),
                    kernel: kernel_stack(&ctx, false),
                    _pad: 0,
                };
            }
            if waited > req.lock.ns {
                req.lock = LockWait {
                    ns: waited,
                    futex: wakee.futex,
                    waiter: wakee.blocked_at,
                    holder: wakee.waker,
                };
            }
        } else if waited > req.blocked.ns {
            req.blocked = BlockWait {
                ns: waited,
                at: wakee.blocked_at,
            };
        }
        move_carrier(req, Some(from), Some(state::RUNQUEUE), now);
        wakee.state = state::RUNQUEUE;
        return 0;
    }
    let Some((_, tid)) = target_thread() else {
        return 0;
    };
    let Some(waker) = WHY_THREADS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: a live map value.
    let waker = unsafe { &mut *waker };
    // Only to a thread that serves requests (it has replied to one): a background job the
    // target runs, woken because a carrier released a lock it waits for, is not handed the
    // request (it would carry it while holding that lock).
    if carried(waker).is_some() && wakee.done_ns != 0 {
        let req = waker.req;
        carry(wakee, req, state::RUNQUEUE, now);
    }
    0
}

/// A carrier waits for new work (poll, epoll, select): it is done with its request for now.
#[tracepoint]
pub fn why_idle(_ctx: TracePointContext) -> u32 {
    if !armed() {
        return 0;
    }
    let Some((_, tid)) = target_thread() else {
        return 0;
    };
    if let Some(t) = WHY_THREADS.get_ptr_mut(tid) {
        // SAFETY: this thread's own entry.
        let thread = unsafe { &mut *t };
        if thread.req != 0 {
            leave(thread, now_ns());
        }
    }
    0
}
