//! Leak suspects from periodic snapshots of per-stack live bytes, and the target's memory
//! (RSS, PSS) over the same time.
//!
//! A stack is a suspect when its live bytes keep growing across snapshots (three in four steps
//! up or level, at least three of them up, and more at the end than at the start; a one-off
//! step up is not growth) and its oldest live allocation is older than the minimum age.
//! Suspects are ranked by growth rate.

use std::{collections::HashMap, fmt::Write as _};

use profiler_common::alloc::{AllocKey, StackAllocs, kind};
use serde::{Deserialize, Serialize};

use super::{
    component::{self, Budget, Components, StackPart},
    profile::WeightedStack,
};
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AllocSummary {
    pub allocator: Allocator,
    /// Allocator calls seen, tracked (sampled in) and freed.
    pub calls: u64,
    pub tracked: u64,
    pub frees: u64,
    /// Frees of blocks allocated before the attach (of those sampled in).
    #[serde(default)]
    pub unknown_frees: u64,
    /// Allocator calls made from inside another (tracked once, as the inner call).
    #[serde(default)]
    pub nested: u64,
    /// `--alloc-duty`: frees of blocks allocated between windows (or before the attach).
    #[serde(default)]
    pub unsampled_frees: u64,
    /// `--alloc-duty`: calls whose window closed before they returned (not tracked).
    #[serde(default)]
    pub window_cut: u64,
    pub leaks: LeakReport,
}

/// The allocator found, and the symbol probed for each function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocator {
    /// "glibc", "jemalloc", "tcmalloc", "mimalloc", "static" (linked into the main binary),
    /// or "custom" (--allocator).
    pub name: String,
    /// Its file as the target sees it.
    pub path: PathBuf,
    /// (function, symbol) pairs probed.
    pub symbols: Vec<(String, String)>,
    /// (function, bytes past the symbol) where each probe sits (see `probe_point`).
    #[serde(default)]
    pub offsets: Vec<(String, u64)>,
    /// (function, offset in the file) of each probe, what the kernel attaches at.
    #[serde(default)]
    pub file_offsets: Vec<(String, u64)>,
}

/// Stacks listed among the largest that are not growing.
const LARGEST_LISTED: usize = 10;

/// Per-stack live bytes over time.
#[derive(Debug, Default)]
pub struct Snapshots {
    /// (seconds since the capture started, live bytes per stack).
    taken: Vec<(f64, HashMap<AllocKey, i64>)>,
}

impl Snapshots {
    pub fn record(&mut self, at_secs: f64, stacks: &[(AllocKey, StackAllocs)]) {
        self.taken.push((
            at_secs,
            stacks.iter().map(|(k, s)| (*k, s.live_bytes)).collect(),
        ));
    }

    pub fn len(&self) -> usize {
        self.taken.len()
    }

    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// (time, live bytes) of one stack, 0 where it had none yet.
    fn series(&self, key: &AllocKey) -> Vec<(f64, f64)> {
        self.taken
            .iter()
            .map(|(t, stacks)| (*t, stacks.get(key).copied().unwrap_or(0) as f64))
            .collect()
    }
}

/// How a series grows: least-squares slope (per second) and whether it "keeps growing".
pub fn growth(series: &[(f64, f64)]) -> (f64, bool) {
    if series.len() < 2 {
        return (0.0, false);
    }
    let n = series.len() as f64;
    let mean_t = series.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = series.iter().map(|p| p.1).sum::<f64>() / n;
    let var: f64 = series.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    let slope = if var == 0.0 {
        0.0
    } else {
        series
            .iter()
            .map(|p| (p.0 - mean_t) * (p.1 - mean_v))
            .sum::<f64>()
            / var
    };
    let steps = series.len() - 1;
    let level_or_up = series.windows(2).filter(|w| w[1].1 >= w[0].1).count();
    let up = series.windows(2).filter(|w| w[1].1 > w[0].1).count();
    let first = series[0].1;
    let last = series[steps].1;
    let keeps_growing = up >= 3 && slope > 0.0 && last > first && level_or_up * 4 >= steps * 3;
    (slope, keeps_growing)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AllocStack {
    /// Root first; the allocating call (`malloc`, `mmap`, …) is the last frame.
    pub frames: Vec<String>,
    pub kind: String,
    /// Scaled by the sampling rate when sampling (then `estimate`).
    pub live_bytes: i64,
    pub live_count: i64,
    pub total_allocs: u64,
    pub total_bytes: u64,
    /// Age of the oldest live allocation (at least: since the stack last had none live).
    pub oldest_age_secs: f64,
    pub growth_bytes_per_min: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemorySample {
    pub elapsed_secs: f64,
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub anon_kb: u64,
    /// Anonymous memory swapped out.
    #[serde(default)]
    pub swap_kb: u64,
    /// Writable private anonymous mappings (heap, arenas, anonymous mmap), resident or not:
    /// nothing the allocator hands out lies outside them.
    #[serde(default)]
    pub anon_vm_kb: u64,
    /// Tracked live bytes and allocations at the same moment (estimates when sampling).
    #[serde(default)]
    pub live_bytes: i64,
    #[serde(default)]
    pub live_count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryGrowth {
    /// RSS at one minute into the capture (or the first sample of a shorter one).
    pub rss_baseline_kb: u64,
    pub rss_end_kb: u64,
    pub rss_growth_percent: f64,
    /// The pool's release rule: more than 10% RSS growth is a leak.
    pub over_10_percent: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeakReport {
    /// One allocation in this many was tracked; above 1, byte and count figures are estimates.
    pub sample_every: u32,
    /// Byte and count figures are estimates (`sample_every` above 1, or `duty` below 1).
    pub estimate: bool,
    /// `--alloc-duty`: the measured share of the time the allocation probes were attached
    /// (runs without it, or from before it, read 0: take that as 1).
    #[serde(default)]
    pub duty: f64,
    /// `--alloc-duty`: allocation windows opened.
    #[serde(default)]
    pub windows: u64,
    /// Live allocations actually tracked, before scaling: the estimate's sample.
    #[serde(default)]
    pub sampled_live_count: i64,
    /// Relative standard error of the scaled live figures, about 1/sqrt(sampled blocks); 0
    /// when nothing is estimated.
    #[serde(default)]
    pub relative_error: f64,
    pub snapshots: usize,
    pub interval_secs: f64,
    pub min_age_secs: f64,
    pub live_bytes: i64,
    pub live_count: i64,
    pub suspects: Vec<AllocStack>,
    pub largest_not_growing: Vec<AllocStack>,
    pub memory: MemoryGrowth,
    /// Set when the target's own memory contradicts the live figures (see [`plausibility`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plausibility: Option<String>,
    /// Live bytes by component, against the budget file's budgets.
    #[serde(default)]
    pub components: Components,
}

pub struct Analysis<'a> {
    pub snapshots: &'a Snapshots,
    pub stacks: &'a [(AllocKey, StackAllocs)],
    /// Names a user stack, root first.
    pub frames: &'a dyn Fn(u64) -> Vec<String>,
    /// Monotonic now, ns (what the kernel's timestamps count from).
    pub now_ns: u64,
    pub min_age_secs: f64,
    pub interval_secs: f64,
    pub sample_every: u32,
    /// The measured share of the time allocations were probed (1 without `--alloc-duty`).
    pub duty: f64,
    /// Allocation windows opened (0 without `--alloc-duty`).
    pub windows: u64,
    pub memory: &'a [MemorySample],
    /// The component of a user stack (see [`super::component`]).
    pub component: &'a dyn Fn(u64) -> String,
    pub budget: Option<&'a Budget>,
}

pub fn kind_name(code: u8) -> &'static str {
    kind::NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("unknown")
}

impl Analysis<'_> {
    fn frames(&self, key: &AllocKey) -> Vec<String> {
        let mut frames = (self.frames)(key.user_stack);
        frames.push(kind_name(key.kind).to_string());
        frames
    }

    /// What one tracked byte or block stands for: the address sample's rate over the duty.
    fn scale(&self) -> f64 {
        f64::from(self.sample_every.max(1)) / self.duty.clamp(f64::MIN_POSITIVE, 1.0)
    }

    fn estimate(&self) -> bool {
        self.sample_every > 1 || self.duty < 1.0
    }

    pub fn report(&self) -> LeakReport {
        let scale = self.scale();
        let mut suspects = Vec::new();
        let mut stable = Vec::new();
        for (key, s) in self.stacks {
            if s.live_bytes <= 0 {
                continue;
            }
            let (slope, keeps_growing) = growth(&self.snapshots.series(key));
            let age = if s.live_since_ns == 0 {
                0.0
            } else {
                self.now_ns.saturating_sub(s.live_since_ns) as f64 / 1e9
            };
            let stack = AllocStack {
                frames: self.frames(key),
                kind: kind_name(key.kind).to_string(),
                live_bytes: scaled(s.live_bytes, scale),
                live_count: scaled(s.live_count, scale),
                total_allocs: scaled(s.total_allocs as i64, scale) as u64,
                total_bytes: scaled(s.total_bytes as i64, scale) as u64,
                oldest_age_secs: age,
                growth_bytes_per_min: slope * 60.0 * scale,
            };
            if keeps_growing && age >= self.min_age_secs {
                suspects.push(stack);
            } else {
                stable.push(stack);
            }
        }
        let (live_bytes, live_count) = live_totals(self.stacks, scale);
        let (_, sampled_live_count) = live_totals(self.stacks, 1.0);
        let estimate = self.estimate();
        suspects.sort_by(|a, b| b.growth_bytes_per_min.total_cmp(&a.growth_bytes_per_min));
        stable.sort_by_key(|s| std::cmp::Reverse(s.live_bytes));
        stable.truncate(LARGEST_LISTED);
        LeakReport {
            sample_every: self.sample_every.max(1),
            estimate,
            duty: self.duty,
            windows: self.windows,
            sampled_live_count,
            relative_error: if estimate {
                1.0 / (sampled_live_count.max(1) as f64).sqrt()
            } else {
                0.0
            },
            snapshots: self.snapshots.len(),
            interval_secs: self.interval_secs,
            min_age_secs: self.min_age_secs,
            live_bytes,
            live_count,
            suspects,
            largest_not_growing: stable,
            memory: memory_growth(self.memory),
            plausibility: plausibility(self.memory),
            components: self.components(),
        }
    }

    /// Live bytes by component.
    fn components(&self) -> Components {
        let scale = self.scale();
        let named: Vec<(String, &AllocKey, &StackAllocs)> = self
            .stacks
            .iter()
            .filter(|(_, s)| s.live_bytes > 0 || s.total_allocs > 0)
            .map(|(k, s)| ((self.component)(k.user_stack), k, s))
            .collect();
        let measure = if self.duty < 1.0 {
            format!(
                "live bytes, estimated from allocations made in the {:.1}% of the time probed",
                self.duty * 100.0
            )
        } else if self.sample_every > 1 {
            format!(
                "live bytes, estimated from one allocation in {}",
                self.sample_every
            )
        } else {
            "live bytes".to_string()
        };
        component::group(
            &measure,
            named.iter().map(|(name, key, s)| StackPart {
                component: name,
                bytes: (s.live_bytes.max(0) as f64 * scale) as u64,
                series: self
                    .snapshots
                    .series(key)
                    .into_iter()
                    .map(|(t, v)| (t, v.max(0.0) * scale))
                    .collect(),
            }),
            self.budget,
        )
    }

    /// Live bytes by stack, for `alloc.folded`/`alloc.svg`, rooted at `root`.
    pub fn weighted_stacks(&self, root: &str) -> Vec<WeightedStack> {
        let scale = self.scale();
        self.stacks
            .iter()
            .filter(|(_, s)| s.live_bytes > 0)
            .map(|(key, s)| WeightedStack {
                thread: root.to_string(),
                tid: 0,
                frames: self.frames(key),
                weight: scaled(s.live_bytes, scale) as u64,
            })
            .collect()
    }
}

/// A tracked figure scaled to what it stands for.
fn scaled(value: i64, scale: f64) -> i64 {
    (value as f64 * scale).round() as i64
}

/// Live bytes and allocations over every stack, scaled by what one tracked block stands for.
pub fn live_totals(stacks: &[(AllocKey, StackAllocs)], scale: f64) -> (i64, i64) {
    let (bytes, count) = stacks.iter().fold((0, 0), |(bytes, count), (_, s)| {
        (bytes + s.live_bytes.max(0), count + s.live_count.max(0))
    });
    (scaled(bytes, scale), scaled(count, scale))
}

pub fn memory_growth(samples: &[MemorySample]) -> MemoryGrowth {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return MemoryGrowth::default();
    };
    let baseline = samples
        .iter()
        .find(|s| s.elapsed_secs >= 60.0)
        .filter(|s| s.elapsed_secs < last.elapsed_secs)
        .unwrap_or(first);
    let growth = if baseline.rss_kb == 0 {
        0.0
    } else {
        (last.rss_kb as f64 - baseline.rss_kb as f64) / baseline.rss_kb as f64 * 100.0
    };
    MemoryGrowth {
        rss_baseline_kb: baseline.rss_kb,
        rss_end_kb: last.rss_kb,
        rss_growth_percent: growth,
        over_10_percent: growth > 10.0,
    }
}

/// Reads the target's `smaps_rollup`.
pub fn sample_memory(pid: u32, elapsed_secs: f64) -> Option<MemorySample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0)
    };
    Some(MemorySample {
        elapsed_secs,
        rss_kb: field("Rss:"),
        pss_kb: field("Pss:"),
        anon_kb: field("Anonymous:"),
        swap_kb: field("Swap:"),
        anon_vm_kb: std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|maps| anon_vm_kb(&maps))
            .unwrap_or(0),
        ..MemorySample::default()
    })
}

/// KiB of writable private mappings backed by no file, from `/proc/PID/maps` text.
fn anon_vm_kb(maps: &str) -> u64 {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let inode = fields.nth(2)?;
            let path = fields.next().unwrap_or("");
            let anonymous = inode == "0" && (path.is_empty() || path == "[heap]");
            if !(anonymous && perms.starts_with("rw") && perms.ends_with('p')) {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let size = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
            Some(size / 1024)
        })
        .sum()
}

/// What the target's own memory says of the tracked live bytes, at the snapshot where they
/// stand highest above it: a warning when they exceed every writable anonymous mapping (no
/// allocation can lie outside those, so the figure cannot be true), a caution when they are
/// well above what is in RAM or swap (memory allocated and never touched can explain that).
pub fn plausibility(samples: &[MemorySample]) -> Option<String> {
    let kib = |b: i64| b.max(0) as u64 / 1024;
    let worst = samples
        .iter()
        .filter(|s| s.live_bytes > 0)
        .max_by_key(|s| kib(s.live_bytes).saturating_sub(s.anon_kb + s.swap_kb))?;
    let live = kib(worst.live_bytes);
    let at = worst.elapsed_secs;
    if worst.anon_vm_kb > 0 && live > worst.anon_vm_kb {
        return Some(format!(
            "warning: tracked live allocations ({live} KiB at {at:.0}s) exceed all of the              target's writable anonymous memory ({} KiB): these figures cannot be true              (frees went unseen); do not rely on them",
            worst.anon_vm_kb
        ));
    }
    let in_memory = worst.anon_kb + worst.swap_kb;
    (live > 2 * in_memory + 8 * 1024).then(|| {
        format!(
            "caution: tracked live allocations ({live} KiB at {at:.0}s) are well above the              target's anonymous memory in RAM and swap ({in_memory} KiB): allocated memory              never touched explains this (large calloc or reserved buffers); frees the              profiler did not see would too"
        )
    })
}

/// The digest's lines: the fastest-growing leak suspects, and a live figure that cannot be
/// true as a warning.
pub fn findings(report: &LeakReport, series: &str) -> Vec<super::findings::Finding> {
    let rss = &report.memory;
    let fastest = report
        .suspects
        .iter()
        .map(|s| s.growth_bytes_per_min)
        .fold(0.0, f64::max)
        .max(1.0);
    let mut found: Vec<super::findings::Finding> = report
        .suspects
        .iter()
        .take(2)
        .map(|s| {
            let n = s.frames.len();
            let site = if n >= 2 { &s.frames[n - 2] } else { &s.kind };
            super::findings::Finding {
                family: "alloc".into(),
                subject: format!("leak {site}"),
                // The fastest grower first; any suspect matters more when RSS grows too.
                impact: 0.4 * s.growth_bytes_per_min / fastest
                    + if rss.over_10_percent { 0.5 } else { 0.3 },
                what: format!(
                    "{site} grows {}/min (oldest {:.0}s, {} live), RSS {:+.0}%",
                    bytes(s.growth_bytes_per_min as i64),
                    s.oldest_age_secs,
                    bytes(s.live_bytes),
                    rss.rss_growth_percent
                ),
                file: "leaks.txt".into(),
            }
        })
        .collect();
    found.extend(component::findings(
        &report.components,
        "alloc",
        "leaks.txt",
    ));
    if let Some(said) = &report.plausibility {
        found.push(super::findings::Finding {
            family: "warning".into(),
            subject: "alloc plausibility".into(),
            impact: 1.0,
            what: said.clone(),
            file: series.into(),
        });
    }
    found
}

/// The memory series' file in a run directory.
pub const MEMORY_CSV: &str = "memory_samples.csv";

/// Reads `memory_samples.csv` back, by its header's column names: files from before a column
/// existed read it as 0.
pub fn read_memory_csv(dir: &std::path::Path) -> std::io::Result<Vec<MemorySample>> {
    let text = std::fs::read_to_string(dir.join(MEMORY_CSV))?;
    Ok(parse_memory_csv(&text))
}

fn parse_memory_csv(text: &str) -> Vec<MemorySample> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let columns = [
        "elapsed_s",
        "rss_kb",
        "pss_kb",
        "anon_kb",
        "swap_kb",
        "anon_vm_kb",
        "live_bytes",
        "live_count",
    ]
    .map(column);
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let get = |i: usize| columns[i].and_then(|c| fields.get(c).copied());
            let int = |i: usize| get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            let signed = |i: usize| get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            Some(MemorySample {
                elapsed_secs: get(0)?.parse().ok()?,
                rss_kb: int(1),
                pss_kb: int(2),
                anon_kb: int(3),
                swap_kb: int(4),
                anon_vm_kb: int(5),
                live_bytes: signed(6),
                live_count: signed(7),
            })
        })
        .collect()
}

pub fn memory_csv(samples: &[MemorySample]) -> String {
    let mut out =
        String::from("elapsed_s,rss_kb,pss_kb,anon_kb,swap_kb,anon_vm_kb,live_bytes,live_count\n");
    for s in samples {
        let _ = writeln!(
            out,
            "{:.1},{},{},{},{},{},{},{}",
            s.elapsed_secs,
            s.rss_kb,
            s.pss_kb,
            s.anon_kb,
            s.swap_kb,
            s.anon_vm_kb,
            s.live_bytes,
            s.live_count
        );
    }
    out
}

fn bytes(n: i64) -> String {
    let n = n as f64;
    if n.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n.abs() >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

/// How the live figures were estimated, and how far to trust them; empty when exact.
pub fn estimate_note(report: &LeakReport) -> String {
    if !report.estimate {
        return String::new();
    }
    let mut how = Vec::new();
    if report.duty > 0.0 && report.duty < 1.0 {
        how.push(format!(
            "allocations probed {:.1}% of the time in {} windows, frees always",
            report.duty * 100.0,
            report.windows
        ));
    }
    if report.sample_every > 1 {
        how.push(format!("one address in {} tracked", report.sample_every));
    }
    format!(
        " (estimates: {}; scaled from {} sampled live blocks, relative error about {:.0}%, more \
         where allocation comes in bursts)",
        how.join(", "),
        report.sampled_live_count,
        report.relative_error * 100.0
    )
}

/// `leaks.txt` and the terminal's leak section.
pub fn render(report: &LeakReport, suspects: usize) -> String {
    let mut out = String::new();
    let est = estimate_note(report);
    out.push_str(&component::alarms(&report.components));
    if let Some(said) = &report.plausibility {
        let _ = writeln!(out, "{said}");
    }
    let _ = writeln!(
        out,
        "live: {} in {} allocations{est}; {} snapshots every {:.0}s",
        bytes(report.live_bytes),
        report.live_count,
        report.snapshots,
        report.interval_secs
    );
    let m = &report.memory;
    let _ = writeln!(
        out,
        "RSS: {} KiB -> {} KiB ({:+.1}%){}",
        m.rss_baseline_kb,
        m.rss_end_kb,
        m.rss_growth_percent,
        if m.over_10_percent {
            "  LEAK by the 10% rule"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "\nleak suspects (growing, oldest live older than {:.0}s):",
        report.min_age_secs
    );
    if report.suspects.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for s in report.suspects.iter().take(suspects) {
        let _ = writeln!(
            out,
            "  {:>10}/min  live {} in {}  oldest {:.0}s  {}",
            bytes(s.growth_bytes_per_min as i64),
            bytes(s.live_bytes),
            s.live_count,
            s.oldest_age_secs,
            super::futex::leaf_frames(&s.frames, 6)
        );
    }
    let _ = writeln!(out, "\nlargest live stacks not growing:");
    if report.largest_not_growing.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for s in report.largest_not_growing.iter().take(suspects) {
        let _ = writeln!(
            out,
            "  live {:>10} in {:>6}  {}",
            bytes(s.live_bytes),
            s.live_count,
            super::futex::leaf_frames(&s.frames, 6)
        );
    }
    let components = component::render(&report.components);
    if !components.is_empty() {
        let _ = write!(out, "\n{components}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sampled in time, each tracked byte stands for 1/duty bytes, and the text says how the
    /// figures were estimated.
    #[test]
    fn time_sampled_figures_are_scaled_by_the_duty() {
        let key = AllocKey {
            user_stack: 7,
            tgid: 1,
            kind: kind::MALLOC,
            _pad: [0; 3],
        };
        let stacks = [(
            key,
            StackAllocs {
                live_bytes: 1000,
                live_count: 100,
                total_allocs: 100,
                total_bytes: 1000,
                ..StackAllocs::default()
            },
        )];
        let snapshots = Snapshots::default();
        let analysis = Analysis {
            snapshots: &snapshots,
            stacks: &stacks,
            frames: &|_| vec!["main".into()],
            now_ns: 0,
            min_age_secs: 10.0,
            interval_secs: 1.0,
            sample_every: 1,
            duty: 0.25,
            windows: 12,
            memory: &[],
            component: &|_| "main".into(),
            budget: None,
        };
        let report = analysis.report();
        assert!(report.estimate);
        assert_eq!((report.live_bytes, report.live_count), (4000, 400));
        assert_eq!(report.sampled_live_count, 100);
        assert!((report.relative_error - 0.1).abs() < 1e-9);
        let text = render(&report, 5);
        assert!(
            text.contains("probed 25.0% of the time in 12 windows")
                && text.contains("100 sampled live blocks")
                && text.contains("about 10%"),
            "{text}"
        );
        let exact = Analysis {
            duty: 1.0,
            windows: 0,
            ..analysis
        };
        let report = exact.report();
        assert!(!report.estimate);
        assert_eq!(report.live_bytes, 1000);
        assert!(!render(&report, 5).contains("estimates"));
    }

    #[test]
    fn growth_tells_leaks_from_churn() {
        let leak: Vec<(f64, f64)> = (0..6)
            .map(|i| (i as f64, 64.0 * 1000.0 * i as f64))
            .collect();
        let (slope, growing) = growth(&leak);
        assert!(growing);
        assert!((slope - 64_000.0).abs() < 1e-6);
        let churn = [
            (0.0, 500.0),
            (1.0, 800.0),
            (2.0, 300.0),
            (3.0, 700.0),
            (4.0, 400.0),
        ];
        assert!(!growth(&churn).1);
        // A leak with one dip is still a leak.
        let dip = [
            (0.0, 0.0),
            (1.0, 10.0),
            (2.0, 9.0),
            (3.0, 20.0),
            (4.0, 30.0),
            (5.0, 40.0),
        ];
        assert!(growth(&dip).1);
        // A slow leak: up every few snapshots, level in between.
        let slow: Vec<(f64, f64)> = (0..12).map(|i| (i as f64, (i / 3) as f64 * 64.0)).collect();
        assert!(growth(&slow).1);
        // One allocation made once and kept is not growth.
        let once = [
            (0.0, 0.0),
            (1.0, 0.0),
            (2.0, 304.0),
            (3.0, 304.0),
            (4.0, 304.0),
        ];
        assert!(!growth(&once).1);
        assert!(
            !growth(&[(0.0, 1.0), (1.0, 2.0)]).1,
            "two snapshots are too few"
        );
    }

    #[test]
    fn rss_growth_from_the_first_minute() {
        let samples: Vec<MemorySample> =
            [(0.0, 1000), (30.0, 5000), (60.0, 10_000), (120.0, 12_000)]
                .iter()
                .map(|&(t, rss)| MemorySample {
                    elapsed_secs: t,
                    rss_kb: rss,
                    ..MemorySample::default()
                })
                .collect();
        let g = memory_growth(&samples);
        assert_eq!(g.rss_baseline_kb, 10_000);
        assert!((g.rss_growth_percent - 20.0).abs() < 1e-9);
        assert!(g.over_10_percent);
        // Shorter than a minute: from the first sample.
        assert_eq!(memory_growth(&samples[..2]).rss_baseline_kb, 1000);
        // What is written reads back, and a file from before the live columns still reads.
        let back = parse_memory_csv(&memory_csv(&samples));
        assert_eq!(back.len(), 4);
        assert_eq!((back[2].elapsed_secs, back[2].rss_kb), (60.0, 10_000));
        let old = parse_memory_csv("elapsed_s,rss_kb,pss_kb,anon_kb\n1.0,10,9,8\n");
        assert_eq!((old[0].anon_kb, old[0].live_bytes), (8, 0));
        assert!(memory_csv(&samples).starts_with(
            "elapsed_s,rss_kb,pss_kb,anon_kb,swap_kb,anon_vm_kb,live_bytes,live_count\n0.0,1000,"
        ));
    }

    #[test]
    fn reads_own_smaps_rollup() {
        let s = sample_memory(std::process::id(), 1.0).unwrap();
        assert!(s.rss_kb > 0 && s.pss_kb > 0);
        assert!(s.anon_vm_kb >= s.anon_kb, "{s:?}");
    }

    #[test]
    fn anonymous_writable_mappings_only() {
        let maps = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
7f0000400000-7f0000800000 ---p 00000000 00:00 0 
7f0000800000-7f0000801000 rw-p 00002000 fe:01 1234                       /usr/lib/libc.so.6
7f0000900000-7f0000901000 rw-s 00000000 00:01 77                         /dev/zero (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(anon_vm_kb(maps), 132 + 4096);
    }

    fn sample(t: f64, anon_kb: u64, anon_vm_kb: u64, live_bytes: i64) -> MemorySample {
        MemorySample {
            elapsed_secs: t,
            anon_kb,
            anon_vm_kb,
            live_bytes,
            ..MemorySample::default()
        }
    }

    #[test]
    fn live_bytes_the_target_cannot_hold_are_called_out() {
        // The ring of 1000 x 4 KiB blocks, counted right.
        let right = [
            sample(0.0, 4140, 8000, 0),
            sample(1.0, 4140, 8000, 4_096_000),
        ];
        assert_eq!(plausibility(&right), None);
        // The same ring with one burst's frees unseen: 82 MiB "live".
        let wrong = [
            sample(1.0, 4140, 8000, 4_096_000),
            sample(2.0, 4140, 8000, 86_016_000),
        ];
        let said = plausibility(&wrong).unwrap();
        assert!(
            said.starts_with("warning:") && said.contains("at 2s"),
            "{said}"
        );
        // 64 MiB calloc'd and never touched: possible, so a caution, not a warning.
        let untouched = [sample(1.0, 2000, 80_000, 64 << 20)];
        assert!(plausibility(&untouched).unwrap().starts_with("caution:"));
    }
}
