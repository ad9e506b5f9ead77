//! Memory growth by stack (`--memory`): what each stack faulted in and still holds, per
//! interval beside the target's own memory, the leak suspects among them and the mapping
//! calls that grew and released address space.
//!
//! A stack is a leak suspect when the pages it holds keep growing across snapshots (the
//! rule of [`super::alloc::growth`]: three in four steps up or level, at least three up, more
//! at the end than at the start) while the target's anonymous memory grows too. A stack
//! that grew once (warm-up, a cache filling) and then held level is not one, nor is a stack
//! whose pages keep coming and going (a heap trimmed and grown again).

use std::{collections::HashMap, fmt::Write as _};

use profiler_common::memory::{Change, ChangeKey, Growth, GrowthKey, op};
use serde::{Deserialize, Serialize};

use super::{
    alloc::{MemoryGrowth, MemorySample, growth, memory_growth},
    component::{self, Budget, Components, StackPart},
    futex::leaf_frames,
    profile::WeightedStack,
};

/// The files this module's values are written to.
pub const TEXT: &str = "growth.txt";
pub const JSON: &str = "growth.json";

/// The counting rule, in the words the reports use.
pub const RULE: &str = "growth: a write fault of the target on a page it did not hold (first \
     touch of anonymous memory, copy-on-write of the zero page a read had mapped, or a page \
     coming back after a release), counted once per page against the stack that faulted it, \
     in user mode or in a syscall writing to a user buffer; reads of untouched memory map the \
     zero page and grow nothing. release: munmap, madvise DONTNEED/FREE/REMOVE, brk down, \
     mremap shrinking and mmap MAP_FIXED take every held page in their range off the stack \
     that grew it. held = grown - released.";

/// Stacks listed among the largest growers that are not suspects.
const GROWERS_LISTED: usize = 10;
/// Mapping-call stacks listed.
const CHANGES_LISTED: usize = 10;
/// Stacks named per interval.
const INTERVAL_TOP: usize = 3;

/// Per-stack growth over time.
#[derive(Debug, Default)]
pub struct GrowthSnapshots {
    /// (seconds since the capture started, each stack's figures then).
    taken: Vec<(f64, HashMap<GrowthKey, Growth>)>,
}

impl GrowthSnapshots {
    pub fn record(&mut self, at_secs: f64, stacks: &[(GrowthKey, Growth)]) {
        self.taken
            .push((at_secs, stacks.iter().map(|(k, g)| (*k, *g)).collect()));
    }

    pub fn len(&self) -> usize {
        self.taken.len()
    }

    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// (time, held pages) of a stack (the kernel's keys that name the same frames), 0 before
    /// it had any.
    fn held(&self, keys: &[GrowthKey]) -> Vec<(f64, f64)> {
        self.taken
            .iter()
            .map(|(t, stacks)| {
                let held: i64 = keys
                    .iter()
                    .filter_map(|k| stacks.get(k))
                    .map(|g| g.held_pages)
                    .sum();
                (*t, held as f64)
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrowthStack {
    /// Root first; the leaf is the function that touched the page.
    pub frames: Vec<String>,
    /// Held at the end: grown during the capture and not released.
    pub bytes: u64,
    pub pages: u64,
    /// Grown during the capture, held or not.
    pub grown_bytes: u64,
    pub released_bytes: u64,
    /// Of `grown_bytes`, what the kernel wrote for it in a syscall (a read into a fresh
    /// buffer).
    #[serde(default)]
    pub syscall_bytes: u64,
    /// Least-squares slope of the bytes held, per minute.
    pub rate_bytes_per_min: f64,
    /// Share of every stack's held bytes, in percent.
    pub share_percent: f64,
    /// Intervals in which it held more than in the one before.
    pub intervals_grown: usize,
}

/// A stack's mapping calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeStack {
    pub frames: Vec<String>,
    /// brk, mmap, munmap, mremap or madvise.
    pub call: String,
    pub calls: u64,
    pub bytes_added: u64,
    pub bytes_removed: u64,
    /// Held bytes (pages some stack grew) these calls released.
    pub released_bytes: u64,
}

/// The largest grower of an interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalGrower {
    /// Its leafmost frames.
    pub stack: String,
    pub bytes: u64,
}

/// One interval: what was grown and released beside the target's own memory at its end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrowthInterval {
    /// The interval's end, seconds since the capture started.
    pub elapsed_secs: f64,
    pub rss_kb: u64,
    pub anon_kb: u64,
    pub swap_kb: u64,
    pub grown_bytes: u64,
    pub released_bytes: u64,
    /// Held by every stack at its end.
    pub held_bytes: u64,
    pub top: Vec<IntervalGrower>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemorySummary {
    /// Write faults of the target seen, pages counted as growth, held pages released.
    pub faults: u64,
    pub grown_pages: u64,
    pub released_pages: u64,
    pub growth: GrowthReport,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrowthReport {
    pub rule: String,
    pub page_size: u64,
    pub interval_secs: f64,
    pub snapshots: usize,
    /// Over every stack.
    pub grown_bytes: u64,
    pub released_bytes: u64,
    pub held_bytes: u64,
    /// The target's anonymous memory (RAM and swap) from the first snapshot to the last, KiB.
    pub anon_change_kb: i64,
    /// Whether it grew (the condition for any suspect).
    pub anon_growing: bool,
    /// Leak suspects, fastest growing first.
    pub suspects: Vec<GrowthStack>,
    /// The largest holders that are not suspects.
    pub growers: Vec<GrowthStack>,
    /// Mapping calls by stack, most address space moved first.
    pub changes: Vec<ChangeStack>,
    pub intervals: Vec<GrowthInterval>,
    pub memory: MemoryGrowth,
    /// What the target's own memory says of the figures, when it disagrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Held growth by component, against the budget file's budgets.
    #[serde(default)]
    pub components: Components,
}

/// A stack's frames, root first.
type NamedStack = Vec<String>;

/// What the family hands the analysis.
pub struct Analysis<'a> {
    pub snapshots: &'a GrowthSnapshots,
    pub growth: &'a [(GrowthKey, Growth)],
    pub changes: &'a [(ChangeKey, Change)],
    /// Named user stacks by hash (root first).
    pub names: &'a HashMap<u64, Vec<String>>,
    pub page_size: u64,
    pub interval_secs: f64,
    pub memory: &'a [MemorySample],
    /// Components by user stack hash (see [`super::component`]).
    pub components: &'a HashMap<u64, String>,
    pub budget: Option<&'a Budget>,
}

pub fn op_name(code: u8) -> &'static str {
    op::NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("unknown")
}

/// Whether anonymous memory (RAM and swap) grew over the samples: higher at the end than at
/// the start, with a positive slope.
pub fn anon_growing(samples: &[MemorySample]) -> (i64, bool) {
    let series: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.elapsed_secs, (s.anon_kb + s.swap_kb) as f64))
        .collect();
    let (Some(first), Some(last)) = (series.first(), series.last()) else {
        return (0, false);
    };
    let change = (last.1 - first.1) as i64;
    let (slope, _) = growth(&series);
    (change, change > 0 && slope > 0.0)
}

impl Analysis<'_> {
    fn frames(&self, hash: u64) -> Vec<String> {
        self.names.get(&hash).cloned().unwrap_or_default()
    }

    /// The kernel's stacks by what they are called: stacks that differ only in addresses
    /// within the same functions (a function touching pages from several instructions) are
    /// one stack to a reader.
    fn named_stacks(&self) -> Vec<(NamedStack, Vec<(GrowthKey, Growth)>)> {
        let mut groups: HashMap<NamedStack, Vec<(GrowthKey, Growth)>> = HashMap::new();
        for (key, g) in self.growth {
            groups
                .entry(self.frames(key.user_stack))
                .or_default()
                .push((*key, *g));
        }
        groups.into_iter().collect()
    }

    pub fn report(&self) -> GrowthReport {
        let page = self.page_size;
        let (anon_change_kb, anon_grows) = anon_growing(self.memory);
        let held_total: u64 = self
            .growth
            .iter()
            .map(|(_, g)| g.held_pages.max(0) as u64)
            .sum();
        let mut suspects = Vec::new();
        let mut others = Vec::new();
        for (frames, members) in self.named_stacks() {
            let keys: Vec<GrowthKey> = members.iter().map(|(k, _)| *k).collect();
            let series = self.snapshots.held(&keys);
            let (slope, keeps_growing) = growth(&series);
            let held: u64 = members
                .iter()
                .map(|(_, g)| g.held_pages.max(0) as u64)
                .sum();
            let grown: u64 = members.iter().map(|(_, g)| g.pages).sum();
            let in_syscalls: u64 = members.iter().map(|(_, g)| g.kernel_pages).sum();
            let stack = GrowthStack {
                frames,
                bytes: held * page,
                pages: held,
                grown_bytes: grown * page,
                released_bytes: grown.saturating_sub(held) * page,
                syscall_bytes: in_syscalls * page,
                rate_bytes_per_min: slope * 60.0 * page as f64,
                share_percent: if held_total == 0 {
                    0.0
                } else {
                    held as f64 * 100.0 / held_total as f64
                },
                intervals_grown: series.windows(2).filter(|w| w[1].1 > w[0].1).count(),
            };
            if keeps_growing && anon_grows && held > 0 {
                suspects.push(stack);
            } else if grown > 0 {
                others.push(stack);
            }
        }
        suspects.sort_by(|a, b| {
            b.rate_bytes_per_min
                .total_cmp(&a.rate_bytes_per_min)
                .then_with(|| a.frames.cmp(&b.frames))
        });
        others.sort_by(|a, b| {
            (b.bytes, b.grown_bytes, &a.frames).cmp(&(a.bytes, a.grown_bytes, &b.frames))
        });
        others.truncate(GROWERS_LISTED);
        let mut changes: Vec<ChangeStack> = self
            .changes
            .iter()
            .map(|(key, c)| ChangeStack {
                frames: self.frames(key.user_stack),
                call: op_name(key.op).to_string(),
                calls: c.calls,
                bytes_added: c.bytes_added,
                bytes_removed: c.bytes_removed,
                released_bytes: c.pages_released * page,
            })
            .collect();
        changes.sort_by_key(|c| std::cmp::Reverse(c.bytes_added + c.bytes_removed));
        changes.truncate(CHANGES_LISTED);
        let grown_pages: u64 = self.growth.iter().map(|(_, g)| g.pages).sum();
        let held_bytes = held_total * page;
        GrowthReport {
            rule: RULE.to_string(),
            page_size: page,
            interval_secs: self.interval_secs,
            snapshots: self.snapshots.len(),
            grown_bytes: grown_pages * page,
            released_bytes: grown_pages.saturating_sub(held_total) * page,
            held_bytes,
            anon_change_kb,
            anon_growing: anon_grows,
            suspects,
            growers: others,
            changes,
            intervals: self.intervals(),
            memory: memory_growth(self.memory),
            note: note(held_bytes, self.memory),
            components: self.components(),
        }
    }

    /// Held growth by component.
    fn components(&self) -> Components {
        let page = self.page_size as f64;
        let unknown = String::from("[unknown]");
        component::group(
            "held growth",
            self.growth
                .iter()
                .filter(|(_, g)| g.pages > 0)
                .map(|(key, g)| StackPart {
                    component: self.components.get(&key.user_stack).unwrap_or(&unknown),
                    bytes: g.held_pages.max(0) as u64 * self.page_size,
                    series: self
                        .snapshots
                        .held(&[*key])
                        .into_iter()
                        .map(|(t, pages)| (t, pages.max(0.0) * page))
                        .collect(),
                }),
            self.budget,
        )
    }

    /// Each interval's growth and release, beside the memory sample taken with it.
    fn intervals(&self) -> Vec<GrowthInterval> {
        let page = self.page_size;
        let taken = &self.snapshots.taken;
        taken
            .iter()
            .enumerate()
            .map(|(i, (at, now))| {
                let empty = HashMap::new();
                let before = if i == 0 { &empty } else { &taken[i - 1].1 };
                let was = |key: &GrowthKey| before.get(key).copied().unwrap_or_default();
                let mut grown = 0;
                let mut released = 0;
                let mut by_stack: HashMap<String, u64> = HashMap::new();
                for (key, g) in now {
                    let b = was(key);
                    let up = g.pages.saturating_sub(b.pages);
                    let gone = (g.pages - g.held_pages.max(0) as u64)
                        .saturating_sub(b.pages - b.held_pages.max(0) as u64);
                    grown += up;
                    released += gone;
                    if up > 0 {
                        *by_stack
                            .entry(leaf_frames(&self.frames(key.user_stack), 4))
                            .or_default() += up;
                    }
                }
                let mut top: Vec<(String, u64)> = by_stack.into_iter().collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                top.truncate(INTERVAL_TOP);
                let sample = self
                    .memory
                    .iter()
                    .min_by(|a, b| {
                        (a.elapsed_secs - at)
                            .abs()
                            .total_cmp(&(b.elapsed_secs - at).abs())
                    })
                    .cloned()
                    .unwrap_or_default();
                GrowthInterval {
                    elapsed_secs: *at,
                    rss_kb: sample.rss_kb,
                    anon_kb: sample.anon_kb,
                    swap_kb: sample.swap_kb,
                    grown_bytes: grown * page,
                    released_bytes: released * page,
                    held_bytes: now
                        .values()
                        .map(|g| g.held_pages.max(0) as u64)
                        .sum::<u64>()
                        * page,
                    top: top
                        .into_iter()
                        .map(|(stack, pages)| IntervalGrower {
                            stack,
                            bytes: pages * page,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Held bytes by stack, for `memory.folded`/`memory.svg`, rooted at `root`.
    pub fn weighted_stacks(&self, root: &str) -> Vec<WeightedStack> {
        self.growth
            .iter()
            .filter(|(_, g)| g.held_pages > 0)
            .map(|(key, g)| WeightedStack {
                thread: root.to_string(),
                tid: 0,
                frames: self.frames(key.user_stack),
                weight: g.held_pages as u64 * self.page_size,
            })
            .collect()
    }
}

/// Held growth set against the target's anonymous memory: more held than the target has in
/// RAM and swap means releases went unseen.
fn note(held_bytes: u64, samples: &[MemorySample]) -> Option<String> {
    let last = samples.last()?;
    let anon = (last.anon_kb + last.swap_kb) * 1024;
    (anon > 0 && held_bytes > anon + anon / 10).then(|| {
        format!(
            "caution: {} held by the stacks that grew it, more than the target's anonymous \
             memory ({}): some releases went unseen (a call this profiler does not follow, \
             or a range too large to follow)",
            bytes(held_bytes),
            bytes(anon)
        )
    })
}

pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

fn stack_line(out: &mut String, s: &GrowthStack) {
    let _ = writeln!(
        out,
        "  {:>11}/min  held {:>10} ({:>5.1}%) in {} pages  grown {}  released {}  {}",
        bytes(s.rate_bytes_per_min.max(0.0) as u64),
        bytes(s.bytes),
        s.share_percent,
        s.pages,
        bytes(s.grown_bytes),
        bytes(s.released_bytes),
        leaf_frames(&s.frames, 6)
    );
}

/// `growth.txt` and the terminal's growth section.
pub fn render(report: &GrowthReport, listed: usize) -> String {
    let mut out = component::alarms(&report.components);
    if let Some(note) = &report.note {
        let _ = writeln!(out, "{note}");
    }
    let _ = writeln!(
        out,
        "memory growth: {} grown, {} released, {} held; anonymous memory {:+} KiB{}; {} \
         snapshots every {:.0}s",
        bytes(report.grown_bytes),
        bytes(report.released_bytes),
        bytes(report.held_bytes),
        report.anon_change_kb,
        if report.anon_growing {
            " (growing)"
        } else {
            ""
        },
        report.snapshots,
        report.interval_secs
    );
    let m = &report.memory;
    let _ = writeln!(
        out,
        "RSS: {} KiB -> {} KiB ({:+.1}%)",
        m.rss_baseline_kb, m.rss_end_kb, m.rss_growth_percent
    );
    let _ = writeln!(
        out,
        "\nleak suspects (held pages keep growing while anonymous memory grows):"
    );
    if report.suspects.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for s in report.suspects.iter().take(listed) {
        stack_line(&mut out, s);
    }
    let _ = writeln!(out, "\nlargest growers not suspected:");
    if report.growers.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for s in report.growers.iter().take(listed) {
        stack_line(&mut out, s);
    }
    if !report.changes.is_empty() {
        let _ = writeln!(out, "\nmapping calls by stack:");
        for c in report.changes.iter().take(listed) {
            let _ = writeln!(
                out,
                "  {:<7} {:>7} calls  +{:>10}  -{:>10}  released {:>10}  {}",
                c.call,
                c.calls,
                bytes(c.bytes_added),
                bytes(c.bytes_removed),
                bytes(c.released_bytes),
                leaf_frames(&c.frames, 5)
            );
        }
    }
    if !report.intervals.is_empty() {
        let _ = writeln!(
            out,
            "\nper interval: end(s)  anon KiB  grown  released  held  top growers"
        );
        for i in &report.intervals {
            let top: Vec<String> = i
                .top
                .iter()
                .map(|t| format!("{} {}", bytes(t.bytes), t.stack))
                .collect();
            let _ = writeln!(
                out,
                "  {:>7.1} {:>9} {:>10} {:>10} {:>10}  {}",
                i.elapsed_secs,
                i.anon_kb + i.swap_kb,
                bytes(i.grown_bytes),
                bytes(i.released_bytes),
                bytes(i.held_bytes),
                top.join(" | ")
            );
        }
    }
    let components = component::render(&report.components);
    if !components.is_empty() {
        let _ = write!(out, "\n{components}");
    }
    let _ = writeln!(out, "\n{}", report.rule);
    out
}

/// `leaks.txt` when `--alloc` did not run: the suspects of memory growth, saying where they
/// come from.
pub fn render_leaks(report: &GrowthReport, listed: usize) -> String {
    let mut out = String::from(
        "leak suspects from memory growth (--memory; no --alloc, so these are the stacks that \
         faulted pages in and keep holding more, not allocations: see growth.txt)\n",
    );
    out.push_str(&render(report, listed));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stack: u64) -> GrowthKey {
        GrowthKey {
            user_stack: stack,
            tgid: 1,
            _pad: 0,
        }
    }

    fn sample(t: f64, anon_kb: u64) -> MemorySample {
        MemorySample {
            elapsed_secs: t,
            rss_kb: anon_kb + 1000,
            anon_kb,
            ..MemorySample::default()
        }
    }

    /// A leak, a warm-up and a heap that is trimmed and grown again, over six snapshots of a
    /// target whose anonymous memory grows.
    #[test]
    fn only_the_stack_that_keeps_holding_more_is_a_suspect() {
        const LEAK: u64 = 1;
        const WARMUP: u64 = 2;
        const CHURN: u64 = 3;
        let mut snapshots = GrowthSnapshots::default();
        let mut memory = Vec::new();
        let mut last = Vec::new();
        for i in 0..6u64 {
            let stacks = vec![
                (
                    key(LEAK),
                    Growth {
                        pages: 100 * i,
                        held_pages: 100 * i as i64,
                        kernel_pages: 0,
                    },
                ),
                (
                    key(WARMUP),
                    Growth {
                        pages: 500,
                        held_pages: 500,
                        kernel_pages: 100,
                    },
                ),
                // Grows 50 pages every interval and gives them back: it never holds more.
                (
                    key(CHURN),
                    Growth {
                        pages: 50 * (i + 1),
                        held_pages: 50,
                        kernel_pages: 0,
                    },
                ),
            ];
            snapshots.record(i as f64, &stacks);
            memory.push(sample(i as f64, 10_000 + 400 * i));
            last = stacks;
        }
        let names: HashMap<u64, Vec<String>> = [
            (LEAK, vec!["main".into(), "leak_fn".into()]),
            (WARMUP, vec!["main".into(), "warm_up".into()]),
            (CHURN, vec!["main".into(), "churn".into()]),
        ]
        .into();
        let components: HashMap<u64, String> = [
            (LEAK, "leaks".to_string()),
            (WARMUP, "fixture".to_string()),
            (CHURN, "fixture".to_string()),
        ]
        .into();
        let budget = Budget::parse(
            "b.toml",
            "[[component]]\nname = \"leaks\"\nframes = [\"leak_fn\"]\nbudget = \"1 MiB\"\n",
        )
        .unwrap();
        let analysis = Analysis {
            snapshots: &snapshots,
            growth: &last,
            changes: &[],
            names: &names,
            page_size: 4096,
            interval_secs: 1.0,
            memory: &memory,
            components: &components,
            budget: Some(&budget),
        };
        let report = analysis.report();
        assert!(report.anon_growing);
        assert_eq!(report.suspects.len(), 1, "{:#?}", report.suspects);
        let leak = &report.suspects[0];
        assert_eq!(leak.frames.last().unwrap(), "leak_fn");
        assert_eq!((leak.pages, leak.bytes), (500, 500 * 4096));
        assert!((leak.rate_bytes_per_min - 100.0 * 4096.0 * 60.0).abs() < 1.0);
        assert_eq!(leak.intervals_grown, 5);
        assert!((leak.share_percent - 500.0 * 100.0 / 1050.0).abs() < 1e-9);
        let growers: Vec<&str> = report
            .growers
            .iter()
            .map(|g| g.frames.last().unwrap().as_str())
            .collect();
        assert_eq!(growers, ["warm_up", "churn"]);
        assert_eq!(report.growers[0].syscall_bytes, 100 * 4096);
        let churn = &report.growers[1];
        assert_eq!(
            (churn.grown_bytes, churn.released_bytes),
            (300 * 4096, 250 * 4096)
        );
        // Intervals: the churn's 50 pages grown and released each step, the leak's 100 grown.
        let i = &report.intervals[3];
        assert_eq!(i.grown_bytes, 150 * 4096);
        assert_eq!(i.released_bytes, 50 * 4096);
        assert_eq!(i.top[0].stack, "main;leak_fn");
        assert_eq!(i.anon_kb, 11_200);
        // The same stacks in a target whose anonymous memory stays level: no suspect.
        let level: Vec<MemorySample> = (0..6).map(|i| sample(i as f64, 10_000)).collect();
        let flat = Analysis {
            memory: &level,
            ..analysis
        };
        assert!(flat.report().suspects.is_empty());
        // By component: the leak's 500 pages against its 1 MiB budget, the rest held level.
        let by = &report.components.components;
        assert_eq!(by[0].name, "leaks");
        assert_eq!(by[0].bytes, 500 * 4096);
        assert!(by[0].over_budget);
        assert!((by[0].rate_bytes_per_min - 100.0 * 4096.0 * 60.0).abs() < 1.0);
        assert_eq!(by[1].name, "fixture");
        assert_eq!(by[1].bytes, 550 * 4096);
        let text = render(&report, 5);
        assert!(text.contains("leak suspects"), "{text}");
        assert!(
            text.starts_with("OVER BUDGET: component leaks holds 2.0 MiB held growth"),
            "{text}"
        );
        assert!(render_leaks(&report, 5).starts_with("leak suspects from memory growth"));
        // What is written reads back.
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<GrowthReport>(&json).unwrap(), report);
    }

    #[test]
    fn held_beyond_the_targets_memory_is_called_out() {
        assert_eq!(note(4 << 20, &[sample(1.0, 8 * 1024)]), None);
        let said = note(64 << 20, &[sample(1.0, 8 * 1024)]).unwrap();
        assert!(said.starts_with("caution:"), "{said}");
    }
}
