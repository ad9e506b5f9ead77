//! The eBPF programs of every probe family, built into one object that `profiler` embeds.
//! Each family lives in its own module; what they share (target filter, stats, stacks) is in
//! `shared`.
#![no_std]
#![no_main]
#![expect(internal_features, reason = "atomic_xadd is unstable")]
#![feature(core_intrinsics)]

mod alloc;
mod cpu;
mod futex;
mod memory;
mod offcpu;
mod shared;
mod sock;
mod unwind;
mod why;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL: the stack and perf helpers the probes call are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
