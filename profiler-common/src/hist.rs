//! The one histogram of the product: every latency-like value (off-CPU time, futex wait,
//! socket-to-reply, allocation age) is counted in it, kernel side, and merged in userspace.
//!
//! Log-linear, like HdrHistogram: values in nanoseconds; below 64 one slot per value, above it
//! 64 slots per power of two, so a slot is at most 1/64 of its value wide and its midpoint is
//! within 0.8% of anything in it. 2^37 ns (137 s) and above land in the last slot.

use crate::impl_pod;

/// Sub-buckets per power of two, as bits.
pub const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values at or above this share the last slot.
pub const MAX_TRACKED: u64 = 1 << 37;
/// Slots: (37 - SUB_BITS + 1) powers of two, 64 slots each.
pub const SLOTS: usize = ((37 - SUB_BITS + 1) as usize) << SUB_BITS;

/// Position of the highest set bit (`v` > 0), without a count-leading-zeros instruction,
/// which BPF lacks.
#[inline(always)]
pub const fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The slot a value (ns) is counted in.
#[inline(always)]
pub const fn slot_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    if v >= MAX_TRACKED {
        return SLOTS - 1;
    }
    let e = log2(v);
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    (((e - SUB_BITS + 1) as usize) << SUB_BITS) | sub as usize
}

/// The smallest value in `slot`.
#[inline(always)]
pub const fn slot_low(slot: usize) -> u64 {
    let group = slot >> SUB_BITS;
    let sub = (slot as u64) & (SUB - 1);
    if group == 0 {
        return sub;
    }
    let e = group as u32 + SUB_BITS - 1;
    (1 << e) | (sub << (e - SUB_BITS))
}

/// One past the largest value in `slot`.
#[inline(always)]
pub const fn slot_high(slot: usize) -> u64 {
    let group = slot >> SUB_BITS;
    if group == 0 {
        return slot_low(slot) + 1;
    }
    slot_low(slot) + (1 << (group as u32 - 1))
}

/// The value a slot stands for when it is read back: its midpoint.
#[inline(always)]
pub const fn slot_mid(slot: usize) -> u64 {
    (slot_low(slot) + slot_high(slot) - 1) / 2
}

/// Counts per slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hist {
    pub slots: [u64; SLOTS],
}
const _: () = assert!(core::mem::size_of::<Hist>() == 16 * 1024);

impl_pod!(Hist);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn slots_are_contiguous_and_tight() {
        assert_eq!(SLOTS, 2048);
        let mut expected_low = 0;
        for slot in 0..SLOTS {
            assert_eq!(slot_low(slot), expected_low, "slot {slot}");
            assert!(slot_high(slot) > slot_low(slot));
            expected_low = slot_high(slot);
        }
        assert_eq!(slot_high(SLOTS - 1), MAX_TRACKED);
    }

    #[test]
    fn round_trip_within_one_percent() {
        let mut v = 1u64;
        while v < MAX_TRACKED {
            let slot = slot_of(v);
            assert!(
                slot_low(slot) <= v && v < slot_high(slot),
                "{v} in slot {slot}"
            );
            let back = slot_mid(slot);
            let err = back.abs_diff(v) as f64 / v as f64;
            assert!(err <= 0.008, "{v} -> {back}: {err}");
            v = v + v / 7 + 1;
        }
        assert_eq!(slot_of(MAX_TRACKED * 4), SLOTS - 1);
        assert_eq!(slot_of(0), 0);
        assert_eq!(log2(1), 0);
        assert_eq!(log2(u64::MAX), 63);
    }
}
