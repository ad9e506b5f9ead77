//! Stacks with weights (samples, microseconds, bytes), named root to leaf, and the function
//! shares computed from them.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// One stack and how much of the measured quantity it accounts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedStack {
    /// Thread name; the flamegraph's root frame.
    pub thread: String,
    pub tid: u32,
    /// Frame names, root first, leaf last (user frames, then kernel frames).
    pub frames: Vec<String>,
    pub weight: u64,
}

/// One stack's live figures (an allocation's blocks, a growth's held pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStack {
    /// Named frames, root first.
    pub frames: Vec<String>,
    pub bytes: i64,
    pub count: i64,
}

/// A function's share of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionShare {
    pub function: String,
    pub weight: u64,
    /// Fraction of the profile's total weight, 0 to 1.
    pub share: f64,
}

/// Self and total weights per function.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunctionTotals {
    pub total_weight: u64,
    /// Weight of stacks whose leaf is the function, largest first.
    pub top_self: Vec<FunctionShare>,
    /// Weight of stacks in which the function appears at all, largest first.
    pub top_total: Vec<FunctionShare>,
}

/// Computes the `n` heaviest functions by self and by total weight. Recursion counts a stack
/// once per function, so total never exceeds 100%.
pub fn function_totals(stacks: &[WeightedStack], n: usize) -> FunctionTotals {
    let total_weight: u64 = stacks.iter().map(|s| s.weight).sum();
    let mut self_w: HashMap<&str, u64> = HashMap::new();
    let mut total_w: HashMap<&str, u64> = HashMap::new();
    for stack in stacks {
        if let Some(leaf) = stack.frames.last() {
            *self_w.entry(leaf).or_default() += stack.weight;
        }
        let unique: HashSet<&str> = stack.frames.iter().map(String::as_str).collect();
        for function in unique {
            *total_w.entry(function).or_default() += stack.weight;
        }
    }
    let top = |weights: HashMap<&str, u64>| {
        let mut shares: Vec<FunctionShare> = weights
            .into_iter()
            .map(|(function, weight)| FunctionShare {
                function: function.to_string(),
                weight,
                share: if total_weight == 0 {
                    0.0
                } else {
                    weight as f64 / total_weight as f64
                },
            })
            .collect();
        shares.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.function.cmp(&b.function)));
        shares.truncate(n);
        shares
    };
    FunctionTotals {
        total_weight,
        top_self: top(self_w),
        top_total: top(total_w),
    }
}

/// Frames of lock, wake and syscall machinery: a stack is named by the code that called them.
pub const MACHINERY: &[&str] = &[
    "syscall",
    "futex",
    "Mutex",
    "mutex_",
    "lock_contended",
    "unlock",
    "drop_in_place",
    "MutexGuard",
    "pthread_",
    "__lll_",
    "std::sys::sync",
    "parking_lot",
];

/// What a stack is named by: its leafmost user frame that is not lock or syscall machinery
/// (the function that took a lock, released it, or blocked), else its leafmost frame.
pub fn named_frame(frames: &[String]) -> String {
    let user = || {
        frames
            .iter()
            .rev()
            .filter(|f| !f.ends_with(crate::symbolize::KERNEL_SUFFIX))
    };
    user()
        .find(|f| !is_machinery(f))
        .or_else(|| user().next())
        .or(frames.last())
        .cloned()
        .unwrap_or_else(|| "[no stack]".into())
}

/// Whether a frame is lock, wake or syscall machinery rather than the code that called it.
pub fn is_machinery(frame: &str) -> bool {
    MACHINERY.iter().any(|m| frame.contains(m))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadWeight {
    pub name: String,
    pub weight: u64,
}

/// A stack (root first) and its weight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackWeight {
    pub thread: String,
    pub frames: Vec<String>,
    pub weight: u64,
}

/// Weight per thread, heaviest first.
pub fn thread_weights(stacks: &[WeightedStack]) -> Vec<ThreadWeight> {
    thread_totals(stacks)
        .into_iter()
        .map(|(name, weight)| ThreadWeight { name, weight })
        .collect()
}
/// Weight per thread name, heaviest first.
pub fn thread_totals(stacks: &[WeightedStack]) -> Vec<(String, u64)> {
    let mut by_thread: BTreeMap<&str, u64> = BTreeMap::new();
    for stack in stacks {
        *by_thread.entry(&stack.thread).or_default() += stack.weight;
    }
    let mut threads: Vec<(String, u64)> = by_thread
        .into_iter()
        .map(|(name, w)| (name.to_string(), w))
        .collect();
    threads.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    threads
}

#[cfg(test)]
pub(crate) fn stack(thread: &str, frames: &[&str], weight: u64) -> WeightedStack {
    WeightedStack {
        thread: thread.into(),
        tid: 1,
        frames: frames.iter().map(|f| f.to_string()).collect(),
        weight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_and_total_shares() {
        let stacks = [
            stack("a", &["main", "outer", "middle", "hot_leaf"], 6),
            stack("b", &["main", "outer", "hot_leaf"], 2),
            stack("a", &["main", "rec", "rec", "rec"], 2),
        ];
        let totals = function_totals(&stacks, 10);
        assert_eq!(totals.total_weight, 10);
        assert_eq!(totals.top_self[0].function, "hot_leaf");
        assert_eq!(totals.top_self[0].weight, 8);
        assert!((totals.top_self[0].share - 0.8).abs() < 1e-9);
        assert_eq!(totals.top_total[0].function, "main");
        assert_eq!(totals.top_total[0].weight, 10);
        let rec = totals
            .top_total
            .iter()
            .find(|f| f.function == "rec")
            .unwrap();
        assert_eq!(rec.weight, 2, "recursion is counted once per stack");
        assert_eq!(function_totals(&stacks, 1).top_self.len(), 1);
    }

    #[test]
    fn threads_heaviest_first() {
        let stacks = [
            stack("b", &["x"], 1),
            stack("a", &["x"], 5),
            stack("b", &["y"], 1),
        ];
        assert_eq!(
            thread_totals(&stacks),
            vec![("a".to_string(), 5), ("b".to_string(), 2)]
        );
    }

    #[test]
    fn empty_profile_has_no_shares() {
        let totals = function_totals(&[], 10);
        assert_eq!(totals.total_weight, 0);
        assert!(totals.top_self.is_empty());
    }
}
