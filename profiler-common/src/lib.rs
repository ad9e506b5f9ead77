//! Types shared by the eBPF programs (`profiler-ebpf`) and userspace (`profiler`).
//!
//! Everything here crosses the kernel/user boundary: `#[repr(C)]`, fixed-width integers,
//! explicit padding, and a size assertion beside each type. Map, program and global names are
//! `pub const`s so both sides (and a test) agree on them.
#![no_std]

pub mod alloc;
pub mod cpu;
pub mod futex;
pub mod hist;
pub mod memory;
pub mod offcpu;
pub mod sched;
pub mod sock;
pub mod stack;
pub mod stats;
pub mod unwind;
pub mod why;

/// Length of `task_struct::comm`, the thread name.
pub const TASK_COMM_LEN: usize = 16;

/// Globals every program reads; set by the loader before load (the `const volatile` of libbpf).
pub mod globals {
    /// `u32`: the target's tgid (the pid a user passes); 0 matches nothing.
    pub const TARGET_TGID: &str = "TARGET_TGID";
}

/// Implements `aya::Pod` for shared types when built for userspace.
#[macro_export]
macro_rules! impl_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: repr(C), only integer fields and explicit padding, so every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
