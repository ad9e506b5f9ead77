//! `offcpu`: when a target thread leaves the CPU, remember when and its stacks; when it comes
//! back, add the time it was away to those stacks.

use aya_ebpf::{
    Global,
    bindings::BPF_ANY,
    helpers::bpf_get_current_comm,
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::TracePointContext,
};
use profiler_common::{
    offcpu::{OffcpuConfig, OffcpuStart},
    stack::StackKey,
    stats,
};

use crate::shared::{add_to, count, is_armed, now_ns, switch_stacks, target_thread};

#[unsafe(no_mangle)]
static OFFCPU_CONFIG: Global<OffcpuConfig> = Global::new(OffcpuConfig {
    next_pid_offset: 0,
    prev_state_offset: 0,
    min_block_ns: 0,
});

#[map]
static OFFCPU_TIMES: HashMap<StackKey, u64> = HashMap::with_max_entries(32768, 0);

#[map]
static OFFCPU_ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Each thread's last switch-out, kept between switches and updated in place: `ts` is 0 while
/// the thread runs. An insert at every switch-out and a delete at every switch-in took the LRU's
/// locks twice per switch. LRU: a thread's last switch-out (it exited) is never matched by a
/// switch-in, and over a long run (`profiler agent`, thread-per-connection servers) those would
/// fill a plain map.
#[map]
static OFFCPU_START: LruHashMap<u32, OffcpuStart> = LruHashMap::with_max_entries(16384, 0);

/// Thread `tid` leaves the CPU now, at `key`'s stacks.
#[inline(always)]
fn begin(tid: u32, key: StackKey, now: u64) {
    if let Some(start) = OFFCPU_START.get_ptr_mut(tid) {
        // SAFETY: this thread's own entry; it is read only on the switch that runs it again.
        unsafe {
            (*start).key = key;
            (*start).ts = now;
        }
        return;
    }
    if OFFCPU_START
        .insert(tid, OffcpuStart { ts: now, key }, BPF_ANY as u64)
        .is_err()
    {
        count(stats::OFFCPU_START_FULL);
    }
}

#[tracepoint]
pub fn offcpu_switch(ctx: TracePointContext) -> u32 {
    if !is_armed(&OFFCPU_ARMED) {
        return 0;
    }
    let config = OFFCPU_CONFIG.load();
    let now = now_ns();
    // The tracepoint runs as the task leaving the CPU.
    if let Some((tgid, tid)) = target_thread() {
        count(stats::OFFCPU_SWITCHES);
        // SAFETY: the offset comes from this kernel's sched_switch format.
        let prev_state = unsafe { ctx.read_at::<u64>(config.prev_state_offset as usize) };
        let (user, kernel) = switch_stacks(&ctx, tid, prev_state.unwrap_or(0));
        let key = StackKey {
            tgid,
            tid,
            user_stack: user,
            kernel_stack: kernel,
            _pad: 0,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        begin(tid, key, now);
    }
    // SAFETY: the offset comes from this kernel's sched_switch format.
    let Ok(next) = (unsafe { ctx.read_at::<u32>(config.next_pid_offset as usize) }) else {
        return 0;
    };
    // Only target threads have a start; the lookup is the filter.
    if let Some(start) = OFFCPU_START.get_ptr_mut(next) {
        // SAFETY: the thread's own entry: it is not running, so only this CPU touches it now.
        let start = unsafe { &mut *start };
        if start.ts != 0 {
            // An entry the LRU gave to another thread while its owner was away: the owner's
            // interval is lost, as if the map had been full, and the other thread's start,
            // which is what the entry holds now, is left alone.
            if start.key.tid != next {
                count(stats::OFFCPU_START_FULL);
            } else {
                let away = now.saturating_sub(start.ts);
                start.ts = 0;
                if away >= config.min_block_ns {
                    add_to(&OFFCPU_TIMES, &start.key, away, stats::OFFCPU_TIMES_FULL);
                }
            }
        }
    }
    0
}
