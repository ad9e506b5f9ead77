//! `offcpu`: when a target thread leaves the CPU, remember when and its stacks; when it comes
//! back, add the time it was away to those stacks.

use aya_ebpf::{
    Global,
    bindings::BPF_ANY,
    helpers::bpf_get_current_comm,
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use profiler_common::{
    offcpu::{OffcpuConfig, OffcpuStart},
    stack::StackKey,
    stats,
};

use crate::shared::{add_to, count, now_ns, switch_stacks, target_thread};

#[unsafe(no_mangle)]
static OFFCPU_CONFIG: Global<OffcpuConfig> = Global::new(OffcpuConfig {
    next_pid_offset: 0,
    _pad: 0,
    min_block_ns: 0,
});

#[map]
static OFFCPU_TIMES: HashMap<StackKey, u64> = HashMap::with_max_entries(32768, 0);

/// LRU: a thread's last switch-out (it exited) is never matched by a switch-in, and over a
/// long run (`profiler agent`, thread-per-connection servers) those would fill a plain map.
#[map]
static OFFCPU_START: LruHashMap<u32, OffcpuStart> = LruHashMap::with_max_entries(16384, 0);

#[tracepoint]
pub fn offcpu_switch(ctx: TracePointContext) -> u32 {
    let config = OFFCPU_CONFIG.load();
    let now = now_ns();
    // The tracepoint runs as the task leaving the CPU.
    if let Some((tgid, tid)) = target_thread() {
        count(stats::OFFCPU_SWITCHES);
        let (user, kernel) = switch_stacks(&ctx, tid);
        let start = OffcpuStart {
            ts: now,
            key: StackKey {
                tgid,
                tid,
                user_stack: user,
                kernel_stack: kernel,
                _pad: 0,
                comm: bpf_get_current_comm().unwrap_or_default(),
            },
        };
        if OFFCPU_START.insert(tid, start, BPF_ANY as u64).is_err() {
            count(stats::OFFCPU_START_FULL);
        }
    }
    // SAFETY: the offset comes from this kernel's sched_switch format.
    let Ok(next) = (unsafe { ctx.read_at::<u32>(config.next_pid_offset as usize) }) else {
        return 0;
    };
    // Only target threads have a start; the lookup is the filter.
    // SAFETY: the entry is removed below and not used after.
    if let Some(start) = unsafe { OFFCPU_START.get(next) } {
        let start = *start;
        let _ = OFFCPU_START.remove(next);
        let away = now.saturating_sub(start.ts);
        if away >= config.min_block_ns {
            add_to(&OFFCPU_TIMES, &start.key, away, stats::OFFCPU_TIMES_FULL);
        }
    }
    0
}
