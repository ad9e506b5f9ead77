//! `profiler compare OLD NEW` and named baselines: what changed between two captures, a
//! differential flamegraph, and regression gates with a verdict CI can act on.
//!
//! Each run is an output directory, read through [`RunDir`] (the types that wrote it). A
//! figure a gate needs that one run has and the other lacks is an error naming what is
//! missing, and a comparison where every gate was skipped is an error too: a verdict of
//! "pass" always rests on at least one figure.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::{self, BufReader},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    report::{
        component::Components,
        flamegraph::{self, Labels},
        folded,
        sock::PortLatency,
    },
    rundir::{RunDir, RunDirError},
};

/// Thresholds a release must stay within; a baseline's `gates.json` overrides them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Gates {
    /// p95 and p99 latency may rise at most this much, percent.
    pub latency_up_percent: f64,
    /// Throughput may fall at most this much, percent.
    pub throughput_down_percent: f64,
    /// The target's resident memory may rise at most this much, percent.
    pub rss_up_percent: f64,
    /// The target's CPU use may rise at most this much, percent.
    pub cpu_up_percent: f64,
    /// Fail on any leak suspect the old run did not have.
    pub fail_on_new_leak_suspects: bool,
    /// Rises no larger than these pass whatever their percentage: on a lightly loaded target a
    /// p99 of a few hundred µs or a CPU use of 0.3% of a core moves by more than 10% between
    /// identical runs. Latency in µs, CPU in percentage points of one core, RSS in KiB.
    pub latency_up_min_us: f64,
    pub cpu_up_min_points: f64,
    pub rss_up_min_kb: f64,
    /// A component's bytes (live with `--alloc`, held growth with `--memory`) may rise at most
    /// this much, percent, and at most `component_up_min_kb`; a component the old run lacked
    /// may hold up to that floor.
    pub component_up_percent: f64,
    pub component_up_min_kb: f64,
    /// Fail on any component over its budget in the new run.
    pub fail_over_budget: bool,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            latency_up_percent: 10.0,
            throughput_down_percent: 10.0,
            rss_up_percent: 15.0,
            cpu_up_percent: 15.0,
            fail_on_new_leak_suspects: true,
            latency_up_min_us: 100.0,
            cpu_up_min_points: 1.0,
            rss_up_min_kb: 1024.0,
            component_up_percent: 20.0,
            component_up_min_kb: 1024.0,
            fail_over_budget: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Run(#[from] RunDirError),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the {gate} gate needs {what}: {} has it but {} does not, so the runs cannot be \
         compared on it (capture both the same way, or drop the gate)",
        has.display(),
        lacks.display()
    )]
    Missing {
        gate: String,
        what: &'static str,
        has: PathBuf,
        lacks: PathBuf,
    },
    #[error(
        "{} and {} share no figure any gate reads (latency, throughput, CPU, RSS, leak \
         suspects): nothing was compared",
        old.display(),
        new.display()
    )]
    NothingCompared { old: PathBuf, new: PathBuf },
    #[error("no baseline named {name} under {}: save one with `profiler baseline save {name} DIR`", dir.display())]
    NoBaseline { name: String, dir: PathBuf },
    #[error("baseline {name} exists at {}: pass --force to replace it", dir.display())]
    BaselineExists { name: String, dir: PathBuf },
}

/// One output directory's figures.
struct Run {
    run: RunDir,
    cpu: Option<Vec<(Vec<String>, u64)>>,
}

fn load_run(dir: &Path) -> Result<Run, CompareError> {
    let run = RunDir::open(dir)?;
    let path = run.file("cpu.folded");
    let cpu = match fs::File::open(&path) {
        Ok(file) => Some(
            folded::parse(BufReader::new(file))
                .map_err(|source| CompareError::Read { path, source })?,
        ),
        Err(_) => None,
    };
    Ok(Run { run, cpu })
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateResult {
    pub name: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
    pub change_percent: Option<f64>,
    pub limit: String,
    /// "pass", "fail" or "skipped" (neither run has the figure).
    pub result: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionMove {
    pub function: String,
    /// Share of on-CPU samples with the function as leaf, 0 to 1.
    pub old_self_share: f64,
    pub new_self_share: f64,
    pub change: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Change {
    pub name: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub schema_version: u32,
    pub old: String,
    pub new: String,
    /// "pass" or "regression".
    pub verdict: String,
    pub gates: Vec<GateResult>,
    /// Functions whose share of CPU samples moved most.
    pub cpu_functions: Vec<FunctionMove>,
    /// Latency percentiles, microseconds.
    pub latency: Vec<Change>,
    /// Total wait per lock, microseconds.
    pub locks: Vec<Change>,
    /// Leak suspects (stacks) the new run has and the old did not.
    pub new_leak_suspects: Vec<String>,
    pub outputs: Vec<String>,
}

/// The latency percentiles gates and tables read.
#[derive(Debug, Clone, Copy)]
enum Percentile {
    P50,
    P95,
    P99,
}

impl Percentile {
    fn name(self) -> &'static str {
        match self {
            Self::P50 => "p50",
            Self::P95 => "p95",
            Self::P99 => "p99",
        }
    }
}

/// What the latency and throughput gates read: the load driver's report, else `sock`.
const LATENCY_SOURCE: &str = "a load report (load.json) or a `--sock` capture";

/// Both runs' leak suspects from the source they share: allocations (`--alloc`) where both
/// tracked them, else memory growth (`--memory`). Runs that share none compare as one side
/// lacking suspects, since the stacks of one source are not those of the other.
fn leak_suspects(old: &Run, new: &Run) -> (Option<BTreeSet<String>>, Option<BTreeSet<String>>) {
    match (
        (old.leak_suspects(), old.growth_suspects()),
        (new.leak_suspects(), new.growth_suspects()),
    ) {
        ((Some(o), _), (Some(n), _)) | ((_, Some(o)), (_, Some(n))) => (Some(o), Some(n)),
        ((None, None), (None, None)) => (None, None),
        ((None, None), _) => (None, Some(BTreeSet::new())),
        _ => (Some(BTreeSet::new()), None),
    }
}

impl Run {
    fn rss_kb(&self) -> Option<f64> {
        let summary = &self.run.summary;
        summary
            .target
            .usage
            .as_ref()
            .map(|u| u.rss_kb as f64)
            .or_else(|| {
                let memory = &summary.alloc.as_ref()?.leaks.memory;
                (memory.rss_end_kb > 0).then_some(memory.rss_end_kb as f64)
            })
            .or_else(|| {
                let memory = &summary.memory.as_ref()?.growth.memory;
                (memory.rss_end_kb > 0).then_some(memory.rss_end_kb as f64)
            })
    }

    fn cpu_percent(&self) -> Option<f64> {
        self.run
            .summary
            .target
            .usage
            .as_ref()
            .map(|u| u.cpu_percent)
    }

    /// The port that served the most requests, as the `sock` family saw it.
    fn busiest_port(&self) -> Option<&PortLatency> {
        let sock = self.run.summary.sock.as_ref()?;
        sock.ports
            .iter()
            .filter(|p| p.requests > 0)
            .max_by_key(|p| p.requests)
    }

    /// Latency percentile in µs: the load driver's client-side view when the run holds its
    /// report, else the kernel's socket-to-reply view of the busiest port.
    fn latency_us(&self, percentile: Percentile) -> Option<f64> {
        let from_load = self.run.load.as_ref().and_then(|l| l.latency_us).map(|l| {
            (match percentile {
                Percentile::P50 => l.p50,
                Percentile::P95 => l.p95,
                Percentile::P99 => l.p99,
            }) as f64
        });
        from_load.or_else(|| {
            let s = &self.busiest_port()?.socket_to_reply;
            Some(match percentile {
                Percentile::P50 => s.p50_us,
                Percentile::P95 => s.p95_us,
                Percentile::P99 => s.p99_us,
            })
        })
    }

    /// Requests (or shares) answered per second.
    fn throughput(&self) -> Option<f64> {
        if let Some(load) = &self.run.load {
            return Some(load.achieved_rate_per_s);
        }
        let sock = self.run.summary.sock.as_ref()?;
        let served: Vec<f64> = sock
            .ports
            .iter()
            .filter(|p| p.requests > 0)
            .map(|p| p.socket_to_reply.rate_per_s)
            .collect();
        (!served.is_empty()).then(|| served.iter().sum())
    }

    /// Suspects of memory growth (`--memory`); `None` when the run did not follow growth.
    fn growth_suspects(&self) -> Option<BTreeSet<String>> {
        let memory = self.run.summary.memory.as_ref()?;
        Some(
            memory
                .growth
                .suspects
                .iter()
                .map(|s| s.frames.join(";"))
                .collect(),
        )
    }

    /// Leak suspects' stacks; `None` when the run tracked no allocations.
    fn leak_suspects(&self) -> Option<BTreeSet<String>> {
        let alloc = self.run.summary.alloc.as_ref()?;
        Some(
            alloc
                .leaks
                .suspects
                .iter()
                .map(|s| s.frames.join(";"))
                .collect(),
        )
    }

    /// Components from allocation tracking, else from memory growth.
    fn components(&self, alloc: bool) -> Option<&Components> {
        let s = &self.run.summary;
        if alloc {
            s.alloc.as_ref().map(|a| &a.leaks.components)
        } else {
            s.memory.as_ref().map(|m| &m.growth.components)
        }
    }

    fn lock_waits(&self) -> BTreeMap<String, f64> {
        self.run
            .summary
            .futex
            .iter()
            .flat_map(|f| &f.locks)
            .map(|l| (l.name.clone(), l.total_wait_us))
            .collect()
    }
}

/// A gate's two figures, or an error when only one run has its figure.
fn figures<'a>(
    gate: &str,
    what: &'static str,
    old: &'a Run,
    new: &'a Run,
    figure: impl Fn(&Run) -> Option<f64>,
) -> Result<(Option<f64>, Option<f64>), CompareError> {
    let (o, n) = (figure(old), figure(new));
    let missing = |has: &Run, lacks: &Run| CompareError::Missing {
        gate: gate.into(),
        what,
        has: has.run.dir.clone(),
        lacks: lacks.run.dir.clone(),
    };
    match (o, n) {
        (Some(_), None) => Err(missing(old, new)),
        (None, Some(_)) => Err(missing(new, old)),
        _ => Ok((o, n)),
    }
}

fn change_percent(old: f64, new: f64) -> Option<f64> {
    (old != 0.0).then(|| (new - old) / old * 100.0)
}

/// A gate on a figure that must not rise (or, with `falling`, fall) more than `limit` percent
/// and more than `floor` in its own unit.
fn gate(
    name: &str,
    old: Option<f64>,
    new: Option<f64>,
    limit: f64,
    floor: f64,
    falling: bool,
) -> GateResult {
    let change = old.zip(new).and_then(|(o, n)| change_percent(o, n));
    let moved = old.zip(new).map_or(0.0, |(o, n)| (n - o).abs());
    let result = match change {
        None => "skipped",
        Some(c) if ((falling && c < -limit) || (!falling && c > limit)) && moved > floor => "fail",
        Some(_) => "pass",
    };
    GateResult {
        name: name.into(),
        old,
        new,
        change_percent: change,
        limit: {
            let sign = if falling { "-" } else { "+" };
            if floor > 0.0 {
                format!("{sign}{limit}% and {sign}{floor}")
            } else {
                format!("{sign}{limit}%")
            }
        },
        result: result.into(),
    }
}

/// Gates on components: each one's bytes between the runs (from the source both have:
/// allocations where both tracked them, else growth), and every component the new run holds
/// over its budget.
fn component_gates(old: &Run, new: &Run, gates: &Gates) -> Vec<GateResult> {
    let both = |alloc: bool| old.components(alloc).zip(new.components(alloc));
    let mut results = Vec::new();
    let Some((o, n)) = both(true).or_else(|| both(false)) else {
        // Only the new run has components: its budgets still hold.
        if let Some(n) = new.components(true).or_else(|| new.components(false)) {
            results.extend(budget_gates(n, gates));
        }
        return results;
    };
    let floor = gates.component_up_min_kb * 1024.0;
    for c in &n.components {
        let before = o
            .components
            .iter()
            .find(|p| p.name == c.name)
            .map_or(0.0, |p| p.bytes as f64);
        let now = c.bytes as f64;
        // Gated when it matters in either run: a budget, or more than the floor.
        if c.budget_bytes.is_none() && before.max(now) <= floor {
            continue;
        }
        let mut result = gate(
            &format!("component {}", c.name),
            Some(before),
            Some(now),
            gates.component_up_percent,
            floor,
            false,
        );
        if before == 0.0 && now > floor {
            result.result = "fail".into();
        } else if before == 0.0 {
            result.result = "pass".into();
        }
        results.push(result);
    }
    results.extend(budget_gates(n, gates));
    results
}

fn budget_gates(n: &Components, gates: &Gates) -> Vec<GateResult> {
    n.components
        .iter()
        .filter_map(|c| {
            let budget = c.budget_bytes? as f64;
            Some(GateResult {
                name: format!("budget {}", c.name),
                old: Some(budget),
                new: Some(c.bytes as f64),
                change_percent: (budget > 0.0).then(|| (c.bytes as f64 - budget) / budget * 100.0),
                limit: "budget".into(),
                result: if gates.fail_over_budget && c.over_budget {
                    "fail"
                } else {
                    "pass"
                }
                .into(),
            })
        })
        .collect()
}

/// Self shares of the heaviest-moving functions between two folded profiles.
fn function_moves(
    old: &[(Vec<String>, u64)],
    new: &[(Vec<String>, u64)],
    n: usize,
) -> Vec<FunctionMove> {
    let shares = |stacks: &[(Vec<String>, u64)]| {
        let total: u64 = stacks.iter().map(|s| s.1).sum();
        let mut by: BTreeMap<String, f64> = BTreeMap::new();
        for (frames, w) in stacks {
            if let Some(leaf) = frames.last() {
                *by.entry(leaf.clone()).or_default() += *w as f64 / total.max(1) as f64;
            }
        }
        by
    };
    let (old, new) = (shares(old), shares(new));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut moves: Vec<FunctionMove> = names
        .into_iter()
        .map(|f| {
            let o = old.get(f).copied().unwrap_or(0.0);
            let n = new.get(f).copied().unwrap_or(0.0);
            FunctionMove {
                function: f.clone(),
                old_self_share: o,
                new_self_share: n,
                change: n - o,
            }
        })
        .collect();
    moves.sort_by(|a, b| b.change.abs().total_cmp(&a.change.abs()));
    moves.truncate(n);
    moves
}

/// Compares two runs, writing `diff.svg`, `compare.json` and `compare.txt` into `out`.
pub fn compare(
    old: &Path,
    new: &Path,
    out: &Path,
    gates: &Gates,
) -> Result<Comparison, CompareError> {
    let old_run = load_run(old)?;
    let new_run = load_run(new)?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CompareError::Write { path, source }
    };
    fs::create_dir_all(out).map_err(write_err(out))?;
    let mut outputs = Vec::new();

    let latency_gate = |percentile: Percentile| -> Result<GateResult, CompareError> {
        let name = format!("{} latency", percentile.name());
        let (o, n) = figures(&name, LATENCY_SOURCE, &old_run, &new_run, |r| {
            r.latency_us(percentile)
        })?;
        Ok(gate(
            &name,
            o,
            n,
            gates.latency_up_percent,
            gates.latency_up_min_us,
            false,
        ))
    };
    let (p95, p99) = (
        latency_gate(Percentile::P95)?,
        latency_gate(Percentile::P99)?,
    );
    let (old_rate, new_rate) = figures(
        "throughput",
        LATENCY_SOURCE,
        &old_run,
        &new_run,
        Run::throughput,
    )?;
    let usage = "the target's CPU and memory at the end (it exited before the capture ended?)";
    let (old_rss, new_rss) = figures("RSS", usage, &old_run, &new_run, Run::rss_kb)?;
    let (old_cpu, new_cpu) = figures("CPU", usage, &old_run, &new_run, Run::cpu_percent)?;
    let mut results = vec![
        p95,
        p99,
        gate(
            "throughput",
            old_rate,
            new_rate,
            gates.throughput_down_percent,
            0.0,
            true,
        ),
        gate(
            "RSS",
            old_rss,
            new_rss,
            gates.rss_up_percent,
            gates.rss_up_min_kb,
            false,
        ),
        gate(
            "CPU",
            old_cpu,
            new_cpu,
            gates.cpu_up_percent,
            gates.cpu_up_min_points,
            false,
        ),
    ];
    let new_leaks: Vec<String> = match leak_suspects(&old_run, &new_run) {
        (Some(old_leaks), Some(new_leaks)) => {
            let grown: Vec<String> = new_leaks
                .into_iter()
                .filter(|s| !old_leaks.contains(s))
                .collect();
            results.push(GateResult {
                name: "new leak suspects".into(),
                old: Some(0.0),
                new: Some(grown.len() as f64),
                change_percent: None,
                limit: "none".into(),
                result: if gates.fail_on_new_leak_suspects && !grown.is_empty() {
                    "fail"
                } else {
                    "pass"
                }
                .into(),
            });
            grown
        }
        (None, None) => {
            results.push(GateResult {
                name: "new leak suspects".into(),
                old: None,
                new: None,
                change_percent: None,
                limit: "none".into(),
                result: "skipped".into(),
            });
            Vec::new()
        }
        (Some(_), None) | (None, Some(_)) if !gates.fail_on_new_leak_suspects => Vec::new(),
        (Some(_), None) => {
            return Err(CompareError::Missing {
                gate: "new leak suspects".into(),
                what: "an `--alloc` or `--memory` capture",
                has: old_run.run.dir.clone(),
                lacks: new_run.run.dir.clone(),
            });
        }
        (None, Some(_)) => {
            return Err(CompareError::Missing {
                gate: "new leak suspects".into(),
                what: "an `--alloc` or `--memory` capture",
                has: new_run.run.dir.clone(),
                lacks: old_run.run.dir.clone(),
            });
        }
    };
    results.extend(component_gates(&old_run, &new_run, gates));
    if results.iter().all(|g| g.result == "skipped") {
        return Err(CompareError::NothingCompared {
            old: old.into(),
            new: new.into(),
        });
    }

    let cpu_functions = match (&old_run.cpu, &new_run.cpu) {
        // A new capture with no CPU sample (an idle target, a short capture) has nothing to
        // draw; an empty old one still shows everything as grown.
        (Some(o), Some(n)) if !n.is_empty() => {
            let lines = |stacks: &[(Vec<String>, u64)]| -> Vec<String> {
                stacks
                    .iter()
                    .map(|(f, w)| format!("{} {w}", f.join(";")))
                    .collect()
            };
            let diff_lines = folded::differential(&lines(o), &lines(n))
                .map_err(write_err(&out.join("diff.svg")))?;
            let title = format!(
                "cpu: {} vs {}",
                old_run.run.dir.display(),
                new_run.run.dir.display()
            );
            let labels = Labels {
                title: &title,
                subtitle: Some("differential: red grew, blue shrank (normalised sample counts)"),
                count_name: "samples",
            };
            let path = out.join("diff.svg");
            let file = fs::File::create(&path).map_err(write_err(&path))?;
            flamegraph::write(&diff_lines, &labels, io::BufWriter::new(file))
                .map_err(write_err(&path))?;
            outputs.push("diff.svg".to_string());
            function_moves(o, n, 10)
        }
        _ => Vec::new(),
    };

    let latency = [Percentile::P50, Percentile::P95, Percentile::P99]
        .into_iter()
        .map(|p| Change {
            name: p.name().into(),
            old: old_run.latency_us(p),
            new: new_run.latency_us(p),
        })
        .filter(|c| c.old.is_some() || c.new.is_some())
        .collect();
    let (old_locks, new_locks) = (old_run.lock_waits(), new_run.lock_waits());
    let lock_names: BTreeSet<&String> = old_locks.keys().chain(new_locks.keys()).collect();
    let locks = lock_names
        .into_iter()
        .map(|name| Change {
            name: name.clone(),
            old: old_locks.get(name).copied(),
            new: new_locks.get(name).copied(),
        })
        .collect();

    let verdict = if results.iter().any(|g| g.result == "fail") {
        "regression"
    } else {
        "pass"
    };
    outputs.push("compare.json".to_string());
    outputs.push("compare.txt".to_string());
    let comparison = Comparison {
        schema_version: 1,
        old: old.display().to_string(),
        new: new.display().to_string(),
        verdict: verdict.into(),
        gates: results,
        cpu_functions,
        latency,
        locks,
        new_leak_suspects: new_leaks,
        outputs,
    };
    let json = serde_json::to_vec_pretty(&comparison).map_err(io::Error::other);
    let json_path = out.join("compare.json");
    fs::write(&json_path, json.map_err(write_err(&json_path))?).map_err(write_err(&json_path))?;
    let txt_path = out.join("compare.txt");
    fs::write(&txt_path, render(&comparison)).map_err(write_err(&txt_path))?;
    Ok(comparison)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

/// The comparison for the terminal and `compare.txt`.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} -> {}: {}", c.old, c.new, c.verdict.to_uppercase());
    let _ = writeln!(
        out,
        "\n  {:<18} {:>12} {:>12} {:>9}  {:>7}  result",
        "gate", "old", "new", "change", "limit"
    );
    for g in &c.gates {
        let _ = writeln!(
            out,
            "  {:<18} {:>12} {:>12} {:>9}  {:>7}  {}",
            g.name,
            fmt_opt(g.old),
            fmt_opt(g.new),
            g.change_percent
                .map_or_else(|| "-".to_string(), |p| format!("{p:+.1}%")),
            g.limit,
            g.result
        );
    }
    if !c.cpu_functions.is_empty() {
        let _ = writeln!(
            out,
            "\n  functions whose CPU share moved most (self share):"
        );
        for f in &c.cpu_functions {
            let _ = writeln!(
                out,
                "    {:>+7.2} pts  {:>6.2}% -> {:>6.2}%  {}",
                f.change * 100.0,
                f.old_self_share * 100.0,
                f.new_self_share * 100.0,
                f.function
            );
        }
    }
    if !c.latency.is_empty() {
        let _ = writeln!(out, "\n  latency (us):");
        for l in &c.latency {
            let _ = writeln!(
                out,
                "    {:<4} {:>10} -> {:>10}",
                l.name,
                fmt_opt(l.old),
                fmt_opt(l.new)
            );
        }
    }
    if !c.locks.is_empty() {
        let _ = writeln!(out, "\n  lock wait (us):");
        for l in &c.locks {
            let _ = writeln!(
                out,
                "    {:>12} -> {:>12}  {}",
                fmt_opt(l.old),
                fmt_opt(l.new),
                l.name
            );
        }
    }
    for s in &c.new_leak_suspects {
        let _ = writeln!(out, "\n  NEW LEAK SUSPECT: {s}");
    }
    out
}

/// Where named baselines live.
pub fn baselines_dir(results: &Path) -> PathBuf {
    results.join("baselines")
}

/// Copies a run's reports into `results/baselines/NAME`, with default gates to edit.
pub fn save_baseline(
    results: &Path,
    name: &str,
    run: &Path,
    force: bool,
) -> Result<PathBuf, CompareError> {
    load_run(run)?;
    let dir = baselines_dir(results).join(name);
    if dir.exists() {
        if !force {
            return Err(CompareError::BaselineExists {
                name: name.into(),
                dir,
            });
        }
        fs::remove_dir_all(&dir).map_err(|source| CompareError::Write {
            path: dir.clone(),
            source,
        })?;
    }
    fs::create_dir_all(&dir).map_err(|source| CompareError::Write {
        path: dir.clone(),
        source,
    })?;
    let entries = fs::read_dir(run).map_err(|source| CompareError::Read {
        path: run.into(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let from = entry.path();
        if from.is_file() {
            let to = dir.join(entry.file_name());
            fs::copy(&from, &to).map_err(|source| CompareError::Write { path: to, source })?;
        }
    }
    let gates = dir.join("gates.json");
    let json = serde_json::to_vec_pretty(&Gates::default()).map_err(io::Error::other);
    fs::write(
        &gates,
        json.map_err(|source| CompareError::Write {
            path: gates.clone(),
            source,
        })?,
    )
    .map_err(|source| CompareError::Write {
        path: gates.clone(),
        source,
    })?;
    Ok(dir)
}

/// Compares `run` against the named baseline with the baseline's gates.
pub fn check_baseline(
    results: &Path,
    name: &str,
    run: &Path,
    out: &Path,
) -> Result<Comparison, CompareError> {
    let dir = baselines_dir(results).join(name);
    if !dir.join(crate::rundir::SUMMARY).is_file() {
        return Err(CompareError::NoBaseline {
            name: name.into(),
            dir: baselines_dir(results),
        });
    }
    let gates = read_gates(&dir.join("gates.json"))?;
    compare(&dir, run, out, &gates)
}

/// Gates from a JSON file; fields it leaves out keep their defaults.
pub fn read_gates(path: &Path) -> Result<Gates, CompareError> {
    if !path.exists() {
        return Ok(Gates::default());
    }
    let text = fs::read_to_string(path).map_err(|source| CompareError::Read {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| CompareError::Read {
        path: path.into(),
        source: io::Error::other(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        alloc::{AllocStack, AllocSummary},
        futex::{FutexSummary, LockReport},
        sock::{LatencyReport, Percentiles},
        summary::{SCHEMA_VERSION, Summary, TargetUsage},
    };

    fn result_of(c: &Comparison, name: &str) -> String {
        c.gates
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.result.clone())
            .unwrap_or_default()
    }

    fn run_dir(root: &Path, name: &str, summary: &Summary, folded: &str) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("summary.json"),
            serde_json::to_string(summary).unwrap(),
        )
        .unwrap();
        fs::write(dir.join("cpu.folded"), folded).unwrap();
        dir
    }

    fn bare() -> Summary {
        Summary {
            schema_version: SCHEMA_VERSION,
            ..Summary::default()
        }
    }

    fn summary(rss: u64, cpu: f64, p99: f64, suspects: &[&[&str]]) -> Summary {
        let mut s = bare();
        s.target.usage = Some(TargetUsage {
            cpu_seconds: 1.0,
            cpu_percent: cpu,
            rss_kb: rss,
        });
        let port = |port, requests, p99_us, rate_per_s| PortLatency {
            port,
            requests,
            socket_to_reply: Percentiles {
                p50_us: 100.0_f64.min(p99_us),
                p95_us: 200.0_f64.min(p99_us),
                p99_us,
                rate_per_s,
                ..Percentiles::default()
            },
            ..PortLatency::default()
        };
        s.sock = Some(LatencyReport {
            duration_secs: 5.0,
            ports: vec![port(3333, 5000, p99, 1000.0), port(8080, 0, 0.0, 0.0)],
            untracked_ports: Vec::new(),
        });
        s.futex = Some(FutexSummary {
            locks: vec![LockReport {
                name: "SHARE_LOG".into(),
                total_wait_us: 500.0,
                ..LockReport::default()
            }],
            ..FutexSummary::default()
        });
        let mut alloc = AllocSummary::default();
        alloc.leaks.suspects = suspects
            .iter()
            .map(|frames| AllocStack {
                frames: frames.iter().map(|f| f.to_string()).collect(),
                ..AllocStack::default()
            })
            .collect();
        s.alloc = Some(alloc);
        s
    }

    #[test]
    fn load_reports_win_over_kernel_figures() {
        let root = tempfile::tempdir().unwrap();
        let dir = run_dir(root.path(), "run", &summary(1, 1.0, 1000.0, &[]), "t;x 1\n");
        let report = |p99: u64| {
            let report = crate::load::LoadReport {
                schema_version: crate::load::report::SCHEMA_VERSION,
                latency_us: Some(crate::load::Percentiles {
                    count: 1000,
                    p50: 300,
                    p95: 900,
                    p99,
                    ..Default::default()
                }),
                achieved_rate_per_s: 17.5,
                ..Default::default()
            };
            serde_json::to_string(&report).unwrap()
        };
        fs::write(dir.join("loadtest_smoke_1.json"), report(111)).unwrap();
        fs::write(dir.join("loadtest_standard_1.json"), report(222)).unwrap();
        let run = load_run(&dir).unwrap();
        assert_eq!(
            run.latency_us(Percentile::P99),
            Some(222.0),
            "the standard profile's report"
        );
        assert_eq!(run.throughput(), Some(17.5));
        fs::write(dir.join("load.json"), report(333)).unwrap();
        assert_eq!(
            load_run(&dir).unwrap().latency_us(Percentile::P99),
            Some(333.0)
        );
        // Without a load report, the busiest port the kernel saw.
        fs::remove_file(dir.join("load.json")).unwrap();
        fs::remove_file(dir.join("loadtest_smoke_1.json")).unwrap();
        fs::remove_file(dir.join("loadtest_standard_1.json")).unwrap();
        let run = load_run(&dir).unwrap();
        assert_eq!(run.latency_us(Percentile::P99), Some(1000.0));
        assert_eq!(run.throughput(), Some(1000.0));
    }

    #[test]
    fn a_capture_without_cpu_samples_still_compares() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let old = run_dir(
            root,
            "old",
            &summary(100, 1.0, 1000.0, &[]),
            "t;main;work 3\n",
        );
        let idle = run_dir(root, "idle", &summary(100, 1.0, 1000.0, &[]), "");
        let c = compare(&old, &idle, &root.join("cmp1"), &Gates::default()).unwrap();
        assert_eq!(c.verdict, "pass", "{}", render(&c));
        assert!(c.cpu_functions.is_empty());
        assert!(!c.outputs.contains(&"diff.svg".to_string()));
        let c = compare(&idle, &old, &root.join("cmp2"), &Gates::default()).unwrap();
        assert_eq!(c.cpu_functions[0].function, "work");
        let svg = fs::read_to_string(root.join("cmp2/diff.svg")).unwrap();
        assert!(svg.contains("work"));
    }

    #[test]
    fn passes_within_gates_and_fails_past_them() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let folded = "t;main;work 90\nt;main;idle 10\n";
        let old = run_dir(root, "old", &summary(100_000, 50.0, 1000.0, &[]), folded);
        let same = run_dir(root, "same", &summary(105_000, 52.0, 1050.0, &[]), folded);
        let c = compare(&old, &same, &root.join("cmp1"), &Gates::default()).unwrap();
        assert_eq!(c.verdict, "pass", "{}", render(&c));
        assert!(root.join("cmp1/diff.svg").is_file());

        let worse_folded = "t;main;work 50\nt;main;slow_path 40\nt;main;idle 10\n";
        let worse = run_dir(
            root,
            "worse",
            &summary(130_000, 50.0, 1200.0, &[&["main", "leaky", "malloc"]]),
            worse_folded,
        );
        let c = compare(&old, &worse, &root.join("cmp2"), &Gates::default()).unwrap();
        assert_eq!(c.verdict, "regression");
        assert_eq!(result_of(&c, "p99 latency"), "fail", "{}", render(&c));
        assert_eq!(result_of(&c, "throughput"), "pass");
        assert_eq!(result_of(&c, "RSS"), "fail");
        assert_eq!(result_of(&c, "CPU"), "pass");
        assert_eq!(result_of(&c, "p95 latency"), "pass");
        assert_eq!(result_of(&c, "new leak suspects"), "fail");
        assert_eq!(c.new_leak_suspects, vec!["main;leaky;malloc"]);
        assert_eq!(c.cpu_functions[0].function, "slow_path");
        assert!((c.cpu_functions[0].change - 0.4).abs() < 1e-9);
        let svg = fs::read_to_string(root.join("cmp2/diff.svg")).unwrap();
        assert!(svg.contains("slow_path"));
        let json: Comparison =
            serde_json::from_slice(&fs::read(root.join("cmp2/compare.json")).unwrap()).unwrap();
        assert_eq!(json.verdict, "regression");

        // Below the floors a large percentage is noise: 0.3% -> 0.6% of a core, p99 +60 µs.
        let quiet = run_dir(root, "quiet", &summary(100_000, 0.3, 100.0, &[]), folded);
        let noisy = run_dir(root, "noisy", &summary(100_500, 0.6, 160.0, &[]), folded);
        let c = compare(&quiet, &noisy, &root.join("cmp4"), &Gates::default()).unwrap();
        assert_eq!(c.verdict, "pass", "{}", render(&c));
        let busy = run_dir(root, "busy", &summary(100_500, 3.8, 400.0, &[]), folded);
        let c = compare(&quiet, &busy, &root.join("cmp5"), &Gates::default()).unwrap();
        assert_eq!(result_of(&c, "CPU"), "fail", "{}", render(&c));
        assert_eq!(result_of(&c, "p99 latency"), "fail", "{}", render(&c));

        // Looser gates pass the same change.
        let loose = Gates {
            latency_up_percent: 50.0,
            rss_up_percent: 50.0,
            fail_on_new_leak_suspects: false,
            ..Gates::default()
        };
        assert_eq!(
            compare(&old, &worse, &root.join("cmp3"), &loose)
                .unwrap()
                .verdict,
            "pass"
        );
    }

    /// Runs with no data never pass: an empty summary is not a run, a figure one side lacks
    /// is named, and a comparison with every gate skipped is an error.
    #[test]
    fn runs_without_figures_never_pass() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let full = run_dir(root, "full", &summary(100, 1.0, 1000.0, &[]), "t;x 1\n");
        let empty = root.join("empty");
        fs::create_dir_all(&empty).unwrap();
        fs::write(empty.join("summary.json"), "{}").unwrap();
        let err = compare(&full, &empty, &root.join("out"), &Gates::default()).unwrap_err();
        assert!(
            matches!(err, CompareError::Run(RunDirError::NoSchema { .. })),
            "{err}"
        );

        // Neither run has a single figure: nothing was compared.
        let a = run_dir(root, "a", &bare(), "t;x 1\n");
        let b = run_dir(root, "b", &bare(), "t;x 1\n");
        let err = compare(&a, &b, &root.join("out"), &Gates::default()).unwrap_err();
        assert!(matches!(err, CompareError::NothingCompared { .. }), "{err}");

        // One side lacks what a gate reads: named, whichever side it is.
        let mut no_sock = summary(100, 1.0, 1000.0, &[]);
        no_sock.sock = None;
        let no_sock = run_dir(root, "no-sock", &no_sock, "t;x 1\n");
        for (old, new) in [(&full, &no_sock), (&no_sock, &full)] {
            let err = compare(old, new, &root.join("out"), &Gates::default()).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, CompareError::Missing { lacks, .. } if lacks == &no_sock)
                    && text.contains("p95 latency")
                    && text.contains("--sock"),
                "{text}"
            );
        }
        let mut no_alloc = summary(100, 1.0, 1000.0, &[]);
        no_alloc.alloc = None;
        let no_alloc = run_dir(root, "no-alloc", &no_alloc, "t;x 1\n");
        let err = compare(&full, &no_alloc, &root.join("out"), &Gates::default()).unwrap_err();
        assert!(err.to_string().contains("--alloc"), "{err}");
        // Neither has allocations: that gate alone is skipped.
        let c = compare(&no_alloc, &no_alloc, &root.join("out"), &Gates::default()).unwrap();
        assert_eq!(result_of(&c, "new leak suspects"), "skipped");
        assert_eq!(c.verdict, "pass");
        assert!(matches!(
            compare(&a, &root.join("nope"), &root.join("out"), &Gates::default()),
            Err(CompareError::Run(RunDirError::NotARun { .. }))
        ));
    }

    #[test]
    fn baselines_save_and_check() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let run = run_dir(root, "run", &summary(100_000, 50.0, 1000.0, &[]), "t;x 1\n");
        let results = root.join("results");
        let saved = save_baseline(&results, "v1", &run, false).unwrap();
        assert!(saved.join("gates.json").is_file() && saved.join("cpu.folded").is_file());
        assert!(matches!(
            save_baseline(&results, "v1", &run, false),
            Err(CompareError::BaselineExists { .. })
        ));
        let c = check_baseline(&results, "v1", &run, &root.join("check")).unwrap();
        assert_eq!(c.verdict, "pass");
        assert!(matches!(
            check_baseline(&results, "nope", &run, &root.join("check")),
            Err(CompareError::NoBaseline { .. })
        ));
        // An empty run cannot become a baseline either.
        let empty = root.join("empty");
        fs::create_dir_all(&empty).unwrap();
        fs::write(empty.join("summary.json"), "{}").unwrap();
        assert!(save_baseline(&results, "v2", &empty, false).is_err());
    }

    /// Runs that followed memory growth (and tracked no allocations) gate on its suspects;
    /// a run of each source compares as one lacking the other's.
    #[test]
    fn growth_suspects_gate_when_both_runs_followed_growth() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let with_growth = |suspects: &[&[&str]]| {
            let mut s = summary(100_000, 50.0, 1000.0, &[]);
            s.alloc = None;
            let mut memory = crate::report::memory::MemorySummary::default();
            memory.growth.suspects = suspects
                .iter()
                .map(|frames| crate::report::memory::GrowthStack {
                    frames: frames.iter().map(|f| f.to_string()).collect(),
                    ..Default::default()
                })
                .collect();
            s.memory = Some(memory);
            s
        };
        let folded = "t;x 1\n";
        let old = run_dir(
            root,
            "old",
            &with_growth(&[&["main", "cache_fill"]]),
            folded,
        );
        let new = run_dir(
            root,
            "new",
            &with_growth(&[&["main", "cache_fill"], &["main", "leak_96"]]),
            folded,
        );
        let c = compare(&old, &new, &root.join("cmp1"), &Gates::default()).unwrap();
        assert_eq!(result_of(&c, "new leak suspects"), "fail");
        assert_eq!(c.new_leak_suspects, vec!["main;leak_96"]);
        let allocs = run_dir(root, "alloc", &summary(100_000, 50.0, 1000.0, &[]), folded);
        assert!(matches!(
            compare(&allocs, &new, &root.join("cmp2"), &Gates::default()),
            Err(CompareError::Missing { .. })
        ));
    }

    /// A component that grew past the gate fails it, one that held level passes, and one over
    /// its budget in the new run fails its budget gate even when it did not grow.
    #[test]
    fn components_gate_on_growth_and_budget() {
        use crate::report::component::{ComponentBytes, Components};
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let with = |parts: &[(&str, u64, Option<u64>)]| {
            let mut s = summary(100_000, 50.0, 1000.0, &[]);
            s.alloc.as_mut().unwrap().leaks.components = Components {
                measure: "live bytes".into(),
                budget_file: None,
                components: parts
                    .iter()
                    .map(|(name, bytes, budget)| ComponentBytes {
                        name: name.to_string(),
                        bytes: *bytes,
                        budget_bytes: *budget,
                        over_budget: budget.is_some_and(|b| *bytes > b),
                        ..Default::default()
                    })
                    .collect(),
            };
            s
        };
        let folded = "t;x 1\n";
        let mib = 1 << 20;
        let old = run_dir(
            root,
            "old",
            &with(&[
                ("conn", 10 * mib, None),
                ("parser", 4 * mib, None),
                ("tiny", 10, None),
            ]),
            folded,
        );
        let new = run_dir(
            root,
            "new",
            &with(&[
                ("conn", 10 * mib + 4096, None),
                ("parser", 8 * mib, None),
                ("tiny", 900, None),
                ("cache", 5 * mib, None),
            ]),
            folded,
        );
        let c = compare(&old, &new, &root.join("cmp1"), &Gates::default()).unwrap();
        assert_eq!(result_of(&c, "component conn"), "pass");
        assert_eq!(result_of(&c, "component parser"), "fail");
        assert_eq!(
            result_of(&c, "component cache"),
            "fail",
            "new and past the floor"
        );
        assert_eq!(
            result_of(&c, "component tiny"),
            "",
            "below the floor in both runs"
        );
        assert_eq!(c.verdict, "regression");
        let budgeted = run_dir(
            root,
            "budgeted",
            &with(&[
                ("conn", 10 * mib, Some(8 * mib)),
                ("parser", 4 * mib, Some(5 * mib)),
            ]),
            folded,
        );
        let c = compare(&budgeted, &budgeted, &root.join("cmp2"), &Gates::default()).unwrap();
        assert_eq!(result_of(&c, "component conn"), "pass");
        assert_eq!(result_of(&c, "budget conn"), "fail");
        assert_eq!(result_of(&c, "budget parser"), "pass");
        assert_eq!(c.verdict, "regression");
        assert!(render(&c).contains("budget conn"));
    }
}
