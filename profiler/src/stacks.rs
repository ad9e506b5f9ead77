//! Turns the kernel's stack keys into named stacks: fetches user stacks (`USER_STACKS`) and
//! kernel stacks (`KERNEL_STACKS`), symbolizes every distinct address once, and builds
//! root-to-leaf frame lists.

use std::collections::{BTreeMap, HashMap, HashSet};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, StackTraceMap},
};
use profiler_common::stack::{self, StackKey, UserStack, unwinder};

use crate::{
    probes::{ProbeError, map},
    procmaps::ProcessMaps,
    report::profile::WeightedStack,
    symbolize::{Names, Symbolizer},
};

const PROBE: &str = "stacks";

/// Stacks resolved to names, and how their user stacks were obtained.
pub struct Resolved {
    pub stacks: Vec<WeightedStack>,
    /// Weight per unwinder name ("frame_pointer", "dwarf", "mixed", "none").
    pub unwinders: BTreeMap<String, u64>,
    /// Weight per reason a table walk stopped ("end" is a complete stack).
    pub stops: BTreeMap<String, u64>,
}

pub fn unwinder_name(code: u8) -> &'static str {
    match code {
        unwinder::FRAME_POINTER => "frame_pointer",
        unwinder::DWARF => "dwarf",
        unwinder::MIXED => "mixed",
        _ => "unknown",
    }
}

pub fn stop_name(code: u8) -> &'static str {
    stack::stop::NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("unknown")
}

/// The name of a thread from its NUL-padded comm.
pub fn comm_name(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Return addresses point after the call; the call itself is one byte earlier. Adjusting keeps
/// a call that ends a function (a noreturn call) attributed to the caller, and line info right.
fn lookup_addr(index: usize, addr: u64) -> u64 {
    if index == 0 {
        addr
    } else {
        addr.saturating_sub(1)
    }
}

pub fn resolve(
    ebpf: &Ebpf,
    counts: &[(StackKey, u64)],
    maps: &ProcessMaps,
    symbolizer: &Symbolizer,
) -> Result<Resolved, ProbeError> {
    let user_map: BpfHashMap<_, u64, UserStack> = map(ebpf, PROBE, stack::USER_STACKS_MAP)?;
    let kernel_map: StackTraceMap<_> = map(ebpf, PROBE, stack::KERNEL_STACKS_MAP)?;

    let mut user: HashMap<u64, UserStack> = HashMap::new();
    let mut kernel: HashMap<i32, Vec<u64>> = HashMap::new();
    for (key, _) in counts {
        if key.user_stack != stack::NO_USER_STACK
            && !user.contains_key(&key.user_stack)
            && let Ok(frames) = user_map.get(&key.user_stack, 0)
        {
            user.insert(key.user_stack, frames);
        }
        if key.kernel_stack >= 0
            && !kernel.contains_key(&key.kernel_stack)
            && let Ok(trace) = kernel_map.get(&(key.kernel_stack as u32), 0)
        {
            let ips = trace.frames().iter().map(|f| f.ip).collect();
            kernel.insert(key.kernel_stack, ips);
        }
    }

    let user_addrs: HashSet<u64> = user
        .values()
        .flat_map(|s| {
            s.frames[..(s.len as usize).min(stack::MAX_USER_FRAMES)]
                .iter()
                .enumerate()
                .map(|(i, &a)| lookup_addr(i, a))
        })
        .collect();
    let kernel_addrs: HashSet<u64> = kernel
        .values()
        .flat_map(|ips| ips.iter().enumerate().map(|(i, &a)| lookup_addr(i, a)))
        .collect();
    let user_names = symbolizer.user(maps, &user_addrs.into_iter().collect::<Vec<_>>());
    let kernel_names = symbolizer.kernel(&kernel_addrs.into_iter().collect::<Vec<_>>());

    let mut stacks = Vec::with_capacity(counts.len());
    let mut unwinders: BTreeMap<String, u64> = BTreeMap::new();
    let mut stops: BTreeMap<String, u64> = BTreeMap::new();
    for (key, weight) in counts {
        let mut frames = Vec::new();
        let user_stack = user.get(&key.user_stack);
        let unwinder = user_stack.map_or("none", |s| unwinder_name(s.unwinder));
        *unwinders.entry(unwinder.to_string()).or_default() += weight;
        if let Some(s) = user_stack
            && s.stop != stack::stop::NONE
        {
            *stops.entry(stop_name(s.stop).to_string()).or_default() += weight;
        }
        if let Some(s) = user_stack {
            let len = (s.len as usize).min(stack::MAX_USER_FRAMES);
            push_root_first(&mut frames, &s.frames[..len], &user_names);
        } else if key.user_stack != stack::NO_USER_STACK {
            frames.push("[user stack lost]".to_string());
        }
        if let Some(ips) = kernel.get(&key.kernel_stack) {
            push_root_first(&mut frames, ips, &kernel_names);
        } else if key.kernel_stack >= 0 {
            frames.push("[kernel stack lost]".to_string());
        }
        if frames.is_empty() {
            frames.push("[no stack]".to_string());
        }
        stacks.push(WeightedStack {
            thread: comm_name(&key.comm),
            tid: key.tid,
            frames,
            weight: *weight,
        });
    }
    Ok(Resolved {
        stacks,
        unwinders,
        stops,
    })
}

/// Appends `addrs` (leaf first, as the kernel records them) root first, expanding inlined
/// functions.
fn push_root_first(frames: &mut Vec<String>, addrs: &[u64], names: &HashMap<u64, Names>) {
    for (i, &addr) in addrs.iter().enumerate().rev() {
        let at = lookup_addr(i, addr);
        match names.get(&at) {
            Some(names) => frames.extend(names.iter().cloned()),
            None => frames.push(format!("[unknown]+{addr:#x}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_name(b"burner-1\0\0\0\0\0\0\0\0"), "burner-1");
        assert_eq!(comm_name(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn frames_read_root_first_with_inlines_expanded() {
        let names: HashMap<u64, Names> = [
            (0x10, vec!["leaf".to_string()]),
            (
                0x1f,
                vec!["caller".to_string(), "inlined_helper".to_string()],
            ),
            (0x2f, vec!["main".to_string()]),
        ]
        .into();
        let mut frames = Vec::new();
        push_root_first(&mut frames, &[0x10, 0x20, 0x30, 0x40], &names);
        assert_eq!(
            frames,
            vec!["[unknown]+0x40", "main", "caller", "inlined_helper", "leaf"]
        );
    }
}
