//! Turns the kernel's stack keys into named stacks: fetches user stacks (`USER_STACKS`) and
//! kernel stacks (`KERNEL_STACKS`), symbolizes every distinct address once, and builds
//! root-to-leaf frame lists.

use std::collections::{BTreeMap, HashMap, HashSet};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, StackTraceMap},
};
use profiler_common::stack::{self, StackKey, UserStack, unwinder};

use crate::{
    probes::{ProbeError, map, map_mut},
    procmaps::{Backing, ProcessMaps},
    report::{component::Frame, profile::WeightedStack},
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

/// User and kernel stacks fetched from the kernel maps and named.
pub struct StackTable {
    user: HashMap<u64, UserStack>,
    kernel: HashMap<i32, Vec<u64>>,
    user_names: HashMap<u64, Names>,
    kernel_names: HashMap<u64, Names>,
    /// The file each user address lies in (its base name), for components.
    user_objects: HashMap<u64, String>,
}

impl StackTable {
    /// Fetches the given user stacks (by hash) and kernel stacks (by id) and symbolizes every
    /// distinct address once.
    pub fn load(
        ebpf: &Ebpf,
        user_hashes: impl IntoIterator<Item = u64>,
        kernel_ids: impl IntoIterator<Item = i32>,
        maps: &ProcessMaps,
        symbolizer: &Symbolizer,
    ) -> Result<Self, ProbeError> {
        let user_map: BpfHashMap<_, u64, UserStack> = map(ebpf, PROBE, stack::USER_STACKS_MAP)?;
        let kernel_map: StackTraceMap<_> = map(ebpf, PROBE, stack::KERNEL_STACKS_MAP)?;
        let mut user: HashMap<u64, UserStack> = HashMap::new();
        for hash in user_hashes {
            if hash != stack::NO_USER_STACK
                && !user.contains_key(&hash)
                && let Ok(frames) = user_map.get(&hash, 0)
            {
                user.insert(hash, frames);
            }
        }
        let mut kernel: HashMap<i32, Vec<u64>> = HashMap::new();
        for id in kernel_ids {
            if id >= 0
                && !kernel.contains_key(&id)
                && let Ok(trace) = kernel_map.get(&(id as u32), 0)
            {
                kernel.insert(id, trace.frames().iter().map(|f| f.ip).collect());
            }
        }
        let user_addrs: HashSet<u64> = user
            .values()
            .flat_map(|s| {
                user_frames(s)
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| lookup_addr(i, a))
            })
            .collect();
        let kernel_addrs: HashSet<u64> = kernel
            .values()
            .flat_map(|ips| ips.iter().enumerate().map(|(i, &a)| lookup_addr(i, a)))
            .collect();
        let user_objects = user_addrs
            .iter()
            .map(|&addr| {
                let object = match maps.find(addr).map(|m| &m.backing) {
                    Some(Backing::File(file)) => file.module().to_string(),
                    Some(Backing::Vdso) => "[vdso]".to_string(),
                    Some(Backing::Other(what)) => what.clone(),
                    None => String::new(),
                };
                (addr, object)
            })
            .collect();
        let user_names = symbolizer.user(maps, &user_addrs.into_iter().collect::<Vec<_>>());
        let kernel_names = symbolizer.kernel(&kernel_addrs.into_iter().collect::<Vec<_>>());
        Ok(Self {
            user,
            kernel,
            user_names,
            kernel_names,
            user_objects,
        })
    }

    /// The named frames of a user stack, root first; a lost stack says so, none is empty.
    pub fn user_frames(&self, hash: u64) -> Vec<String> {
        let mut frames = Vec::new();
        match self.user.get(&hash) {
            Some(s) => push_root_first(&mut frames, user_frames(s), &self.user_names),
            None if hash != stack::NO_USER_STACK => frames.push("[user stack lost]".to_string()),
            None => {}
        }
        frames
    }

    /// The named frames of a user stack with the file each lies in, root first (inlined
    /// functions each a frame, in their caller's file).
    pub fn user_located(&self, hash: u64) -> Vec<Frame> {
        let Some(s) = self.user.get(&hash) else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        for (i, &addr) in user_frames(s).iter().enumerate().rev() {
            let at = lookup_addr(i, addr);
            let object = self.user_objects.get(&at).cloned().unwrap_or_default();
            match self.user_names.get(&at) {
                Some(names) => frames.extend(names.iter().map(|name| Frame {
                    name: name.clone(),
                    object: object.clone(),
                })),
                None => frames.push(Frame {
                    name: format!("[unknown]+{addr:#x}"),
                    object,
                }),
            }
        }
        frames
    }

    /// The named frames of a kernel stack, root first.
    pub fn kernel_frames(&self, id: i32) -> Vec<String> {
        let mut frames = Vec::new();
        match self.kernel.get(&id) {
            Some(ips) => push_root_first(&mut frames, ips, &self.kernel_names),
            None if id >= 0 => frames.push("[kernel stack lost]".to_string()),
            None => {}
        }
        frames
    }

    /// How a user stack was walked: (unwinder, why it stopped).
    pub fn walk(&self, hash: u64) -> Option<(&'static str, Option<&'static str>)> {
        let s = self.user.get(&hash)?;
        let stop = (s.stop != stack::stop::NONE).then(|| stop_name(s.stop));
        Some((unwinder_name(s.unwinder), stop))
    }
}

fn user_frames(stack: &UserStack) -> &[u64] {
    &stack.frames[..(stack.len as usize).min(stack::MAX_USER_FRAMES)]
}

/// Names the stacks of `counts`: thread, then user frames, then kernel frames.
pub fn resolve(
    ebpf: &Ebpf,
    counts: &[(StackKey, u64)],
    maps: &ProcessMaps,
    symbolizer: &Symbolizer,
) -> Result<Resolved, ProbeError> {
    let table = StackTable::load(
        ebpf,
        counts.iter().map(|(k, _)| k.user_stack),
        counts.iter().map(|(k, _)| k.kernel_stack),
        maps,
        symbolizer,
    )?;
    let mut stacks = Vec::with_capacity(counts.len());
    let mut unwinders: BTreeMap<String, u64> = BTreeMap::new();
    let mut stops: BTreeMap<String, u64> = BTreeMap::new();
    for (key, weight) in counts {
        let walk = table.walk(key.user_stack);
        *unwinders
            .entry(walk.map_or("none", |w| w.0).to_string())
            .or_default() += weight;
        if let Some((_, Some(stop))) = walk {
            *stops.entry(stop.to_string()).or_default() += weight;
        }
        let mut frames = table.user_frames(key.user_stack);
        frames.extend(table.kernel_frames(key.kernel_stack));
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

/// Removes user stacks (by hash) and kernel stacks (by id) from their maps once what named
/// them has been read: the agent's drains, so the stack maps stay bounded. A stack recorded
/// again between the read and this removal loses its frames for that one entry (drawn as
/// `[user stack lost]`).
pub fn forget(ebpf: &mut Ebpf, user: &[u64], kernel: &[i32]) -> Result<(), ProbeError> {
    let user: HashSet<u64> = user
        .iter()
        .copied()
        .filter(|&h| h != stack::NO_USER_STACK)
        .collect();
    let kernel: HashSet<i32> = kernel.iter().copied().filter(|&id| id >= 0).collect();
    let fail = |map: &'static str| {
        move |source| ProbeError::Map {
            probe: PROBE,
            map,
            source: Box::new(source),
        }
    };
    {
        let mut user_map: BpfHashMap<_, u64, UserStack> =
            map_mut(ebpf, PROBE, stack::USER_STACKS_MAP)?;
        for hash in &user {
            match user_map.remove(hash) {
                Err(err) if !crate::probes::already_gone(&err) => {
                    return Err(fail(stack::USER_STACKS_MAP)(err));
                }
                _ => {}
            }
        }
    }
    if kernel.is_empty() {
        return Ok(());
    }
    // Before the removal, so no kept id is reused while its stack goes, and after it, so
    // none walked during the removal (kept under the new epoch) outlives it.
    bump_epoch(ebpf)?;
    {
        let mut kernel_map: StackTraceMap<_> = map_mut(ebpf, PROBE, stack::KERNEL_STACKS_MAP)?;
        for id in &kernel {
            match kernel_map.remove(&(*id as u32)) {
                Err(err) if !crate::probes::already_gone(&err) => {
                    return Err(fail(stack::KERNEL_STACKS_MAP)(err));
                }
                _ => {}
            }
        }
    }
    bump_epoch(ebpf)
}

/// Moves the stacks' epoch on: the kernel side stops reusing the stack ids it kept (a futex
/// wait's).
fn bump_epoch(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let fail = |source: aya::maps::MapError| ProbeError::Map {
        probe: PROBE,
        map: stack::STACKS_EPOCH_MAP,
        source: Box::new(source),
    };
    let mut epoch: Array<_, u64> = map_mut(ebpf, PROBE, stack::STACKS_EPOCH_MAP)?;
    let next = epoch.get(&0, 0).map_err(fail)? + 1;
    epoch.set(0, next, 0).map_err(fail)
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
