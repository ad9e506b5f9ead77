//! Ground truth for allocation accounting through Rust's global allocator, like
//! `fixtures/alloc_ring.c`: keeps exactly BLOCKS live boxed buffers of SIZE bytes (default
//! 1000 of 4096) in a ring and every PERIOD_MS (default 100; 0: flat out) drops and
//! re-allocates PER_BURST of them (default 20000) in ring order, so the same addresses come
//! straight back. Prints "ready blocks N size S", then runs until killed.
//! Arguments: BLOCKS PER_BURST PERIOD_MS SIZE.

use std::{hint::black_box, time::Duration};

#[inline(never)]
fn ring_block(size: usize) -> Box<[u8]> {
    let mut block = vec![0u8; size].into_boxed_slice();
    block[..size.min(64)].fill(1);
    black_box(block)
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (blocks, per_burst, period_ms, size) =
        (arg(1, 1000), arg(2, 20_000), arg(3, 100), arg(4, 4096));
    let mut ring: Vec<Box<[u8]>> = (0..blocks).map(|_| ring_block(size)).collect();
    println!("ready blocks {blocks} size {size}");
    let mut at = 0;
    loop {
        for _ in 0..per_burst {
            // Drop first, so the allocator can hand the same block back.
            ring[at] = Box::new([]);
            ring[at] = ring_block(size);
            at = (at + 1) % blocks;
        }
        if period_ms > 0 {
            std::thread::sleep(Duration::from_millis(period_ms as u64));
        }
    }
}
