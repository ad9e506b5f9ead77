//! Reading the kernel's histograms (`profiler_common::hist`): merging copies and answering
//! percentiles, directly or through `hdrhistogram`.

use profiler_common::hist::{Hist, SLOTS, slot_mid};

/// Counts per slot, merged from any number of kernel histograms.
#[derive(Clone, PartialEq, Eq)]
pub struct Merged {
    pub slots: Vec<u64>,
}

impl Default for Merged {
    fn default() -> Self {
        Self {
            slots: vec![0; SLOTS],
        }
    }
}

impl std::fmt::Debug for Merged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Merged {{ count: {} }}", self.count())
    }
}

impl Merged {
    pub fn add(&mut self, hist: &Hist) {
        for (mine, theirs) in self.slots.iter_mut().zip(&hist.slots) {
            *mine += theirs;
        }
    }

    pub fn add_merged(&mut self, other: &Merged) {
        for (mine, theirs) in self.slots.iter_mut().zip(&other.slots) {
            *mine += theirs;
        }
    }

    /// What was added since `earlier`, a copy of this same (only growing) histogram.
    pub fn since(&self, earlier: &Merged) -> Merged {
        Merged {
            slots: self
                .slots
                .iter()
                .zip(&earlier.slots)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    pub fn count(&self) -> u64 {
        self.slots.iter().sum()
    }

    /// The value (ns) at quantile `q` in 0..=1, as a slot midpoint; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        // The smallest value such that at least q of all values are at or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (slot, &n) in self.slots.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return slot_mid(slot);
            }
        }
        slot_mid(SLOTS - 1)
    }

    /// The same distribution as an HdrHistogram (3 significant figures), values in ns.
    pub fn to_hdr(&self) -> hdrhistogram::Histogram<u64> {
        let mut hdr =
            hdrhistogram::Histogram::<u64>::new(3).expect("3 significant figures is valid");
        for (slot, &n) in self.slots.iter().enumerate() {
            if n > 0 {
                // Auto-resizing histograms take any value.
                let _ = hdr.record_n(slot_mid(slot).max(1), n);
            }
        }
        hdr
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::hist::slot_of;

    use super::*;

    fn hist_of(values: &[u64]) -> Hist {
        let mut hist = Hist { slots: [0; SLOTS] };
        for &v in values {
            hist.slots[slot_of(v)] += 1;
        }
        hist
    }

    #[test]
    fn quantiles_within_slot_error() {
        // 1..=1000 µs, one each.
        let values: Vec<u64> = (1..=1000).map(|us| us * 1000).collect();
        let mut merged = Merged::default();
        merged.add(&hist_of(&values[..500]));
        merged.add(&hist_of(&values[500..]));
        assert_eq!(merged.count(), 1000);
        for (q, exact) in [
            (0.5, 500_000.0),
            (0.9, 900_000.0),
            (0.99, 990_000.0),
            (1.0, 1e6),
        ] {
            let got = merged.quantile(q) as f64;
            assert!((got - exact).abs() / exact < 0.01, "q{q}: {got} vs {exact}");
        }
        assert_eq!(Merged::default().quantile(0.5), 0);
    }

    /// Per-CPU copies merged slot by slot, then into hdrhistogram, give the same percentiles
    /// as recording every value straight into hdrhistogram.
    #[test]
    fn per_cpu_copies_merge_into_hdr() {
        let values: Vec<u64> = (0..5000u64).map(|i| 1_000 + (i * i) % 3_000_000).collect();
        let mut merged = Merged::default();
        for cpu in 0..4 {
            let mine: Vec<u64> = values.iter().copied().skip(cpu).step_by(4).collect();
            merged.add(&hist_of(&mine));
        }
        let mut direct = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for &v in &values {
            direct.record(v).unwrap();
        }
        let hdr = merged.to_hdr();
        assert_eq!(hdr.len(), direct.len());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let (a, b) = (
                hdr.value_at_quantile(q) as f64,
                direct.value_at_quantile(q) as f64,
            );
            assert!((a - b).abs() / b < 0.01, "q{q}: merged {a} vs direct {b}");
        }
        let later = {
            let mut m = merged.clone();
            m.add(&hist_of(&[7_000; 3]));
            m
        };
        assert_eq!(later.since(&merged).count(), 3);
        assert!(later.since(&merged).quantile(0.5).abs_diff(7_000) < 70);
    }

    #[test]
    fn hdr_agrees() {
        let values: Vec<u64> = (0..2000).map(|i| 10_000 + i * 997).collect();
        let mut merged = Merged::default();
        merged.add(&hist_of(&values));
        let hdr = merged.to_hdr();
        assert_eq!(hdr.len(), 2000);
        for q in [0.5, 0.99] {
            let a = hdr.value_at_quantile(q) as f64;
            let b = merged.quantile(q) as f64;
            assert!((a - b).abs() / b < 0.01, "q{q}: hdr {a} vs ours {b}");
        }
    }
}
