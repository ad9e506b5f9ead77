//! `futex`: lock contention. The futex syscalls' tracepoints time every wait-type operation of
//! the target's threads per (lock address, waiter stack), and count wakes per (lock address,
//! waker stack). futex(2) covers glibc (WAIT|PRIVATE) and Rust's std (WAIT_BITSET|PRIVATE);
//! the newer futex_wait/futex_waitv/futex_wake syscalls are traced where the kernel has them.

use aya::{Ebpf, maps::HashMap, programs::TracePoint};
use profiler_common::futex::{self, FutexConfig, FutexKey, FutexWait, FutexWaiter};

use super::{ProbeError, map, program_mut};
use crate::tracefs::{self, Format};

const PROBE: &str = "futex";

#[derive(Debug, Clone, Default)]
pub struct Config {}

/// Everything the futex maps held.
pub struct FutexData {
    pub waits: Vec<(FutexKey, FutexWait)>,
    pub wakes: Vec<(FutexKey, u64)>,
    pub waiters: Vec<(FutexWaiter, u64)>,
}

fn offset(event: &str, field: &str) -> Result<u32, ProbeError> {
    let format = Format::load("syscalls", event).map_err(|e| super::offcpu::tracefs_error(&e))?;
    format
        .offset("syscalls", event, field, 8)
        .map_err(|e| super::offcpu::tracefs_error(&e))
}

/// The newer syscalls' layouts where present; 0 (unused) where not.
fn optional_offset(event: &str, field: &str) -> Result<u32, ProbeError> {
    if tracefs::exists("syscalls", event) {
        offset(event, field)
    } else {
        Ok(0)
    }
}

pub fn kernel_config(_config: &Config) -> Result<FutexConfig, ProbeError> {
    Ok(FutexConfig {
        futex_uaddr_offset: offset("sys_enter_futex", "uaddr")?,
        futex_op_offset: offset("sys_enter_futex", "op")?,
        wait_uaddr_offset: optional_offset("sys_enter_futex_wait", "uaddr")?,
        wake_uaddr_offset: optional_offset("sys_enter_futex_wake", "uaddr")?,
        waitv_waiters_offset: optional_offset("sys_enter_futex_waitv", "waiters")?,
        _pad: 0,
    })
}

/// Loads `program` and attaches it to each of `events` the kernel has; the first is required.
fn attach_to(ebpf: &mut Ebpf, program: &'static str, events: &[&str]) -> Result<(), ProbeError> {
    let present: Vec<&str> = events
        .iter()
        .enumerate()
        .filter(|(i, e)| *i == 0 || tracefs::exists("syscalls", e))
        .map(|(_, e)| *e)
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let prog: &mut TracePoint = program_mut(ebpf, PROBE, program)?;
    prog.load().map_err(|source| ProbeError::Load {
        probe: PROBE,
        program,
        source: Box::new(source),
    })?;
    for event in present {
        prog.attach("syscalls", event)
            .map_err(|source| ProbeError::Attach {
                probe: PROBE,
                program,
                target: format!("syscalls:{event}"),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

pub fn attach(ebpf: &mut Ebpf, _config: &Config) -> Result<(), ProbeError> {
    attach_to(ebpf, futex::ENTER_PROGRAM, &["sys_enter_futex"])?;
    attach_to(
        ebpf,
        futex::EXIT_PROGRAM,
        &[
            "sys_exit_futex",
            "sys_exit_futex_wait",
            "sys_exit_futex_waitv",
        ],
    )?;
    for (program, event) in [
        (futex::WAIT_ENTER_PROGRAM, "sys_enter_futex_wait"),
        (futex::WAITV_ENTER_PROGRAM, "sys_enter_futex_waitv"),
        (futex::WAKE_ENTER_PROGRAM, "sys_enter_futex_wake"),
    ] {
        if tracefs::exists("syscalls", event) {
            attach_to(ebpf, program, &[event])?;
        }
    }
    Ok(())
}

fn entries<K: aya::Pod, V: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Vec<(K, V)>, ProbeError> {
    let table: HashMap<_, K, V> = map(ebpf, PROBE, name)?;
    table
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProbeError::Map {
            probe: PROBE,
            map: name,
            source: Box::new(source),
        })
}

pub fn read(ebpf: &Ebpf) -> Result<FutexData, ProbeError> {
    Ok(FutexData {
        waits: entries(ebpf, futex::WAITS_MAP)?,
        wakes: entries(ebpf, futex::WAKES_MAP)?,
        waiters: entries(ebpf, futex::WAITERS_MAP)?,
    })
}
