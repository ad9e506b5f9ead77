//! `cpu`: samples the target's stacks from a cpu-clock perf event on every CPU.

use aya_ebpf::{
    helpers::bpf_get_current_comm,
    macros::{map, perf_event},
    maps::{Array, HashMap},
    programs::PerfEventContext,
};
use aya_log_ebpf::debug;
use profiler_common::{stack::StackKey, stats};

use crate::{
    shared::{add_to, count, is_armed, kernel_stack, target_thread, user_stack},
    why,
};

#[map]
static CPU_COUNTS: HashMap<StackKey, u64> = HashMap::with_max_entries(65536, 0);

#[map]
static CPU_ARMED: Array<u32> = Array::with_max_entries(1, 0);

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    if !is_armed(&CPU_ARMED) {
        return 0;
    }
    let Some((tgid, tid)) = target_thread() else {
        return 0;
    };
    count(stats::CPU_SAMPLES);
    // SAFETY: perf_event programs get a valid bpf_perf_event_data.
    let cs = unsafe { (*ctx.ctx).regs.cs };
    let key = StackKey {
        tgid,
        tid,
        user_stack: user_stack(&ctx, tid, false),
        kernel_stack: kernel_stack(&ctx, cs & 3 == 3),
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    why::sample(tid, key.user_stack, key.kernel_stack);
    if !add_to(&CPU_COUNTS, &key, 1, stats::CPU_COUNTS_FULL) {
        debug!(
            &ctx,
            "cpu: CPU_COUNTS is full, sample of tid {} dropped", tid
        );
    }
    0
}
