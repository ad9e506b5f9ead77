//! `cargo xtask bench alloc-server`: what `--alloc` costs a real allocation-heavy server, and
//! the floor under it that no work of ours sets.
//!
//! Debian's redis (linked against Debian's jemalloc) under `redis-benchmark` with pipelining,
//! started, warmed and loaded by the memory bench's code (`memory::start`, `memory::load`).
//! Each round starts a fresh server, warms it with one untimed window, then measures one
//! window of every row on it, the order rotated round by round; each row is a share of the
//! bare window of its own round (throughput) with the server's CPU time per command beside it,
//! the median over rounds.
//!
//! Rows: bare; `--memory` (no allocator probe, for reference); `--alloc`, `--alloc-sample 64`,
//! `--alloc-duty 10`; and anchors that do no work of ours:
//! - bpftrace with empty bodies on the same jemalloc functions, every probe `--alloc` attaches
//!   (uprobe and uretprobe on each allocating function, uprobe on `free`) and `free` alone.
//!   bpftrace 0.17 probes only at the symbol: it refuses `func+off` without its disassembler
//!   and any uretprobe off the entry. jemalloc's `malloc` and `free` begin with instructions the
//!   kernel cannot emulate (`cmp`, `mov`), so there the trap also single-steps out of line; we
//!   probe past them (`profiler/src/probes/alloc/probe_point.rs`).
//! - empty BPF programs (`r0 = 0; exit`) opened here, through the kernel's uprobe PMU scoped to
//!   the server's process as the profiler's are, at the profiler's own file offsets (read from
//!   its `summary.json`): all of `--alloc`'s probes, and `free`'s alone (what `--alloc-duty`
//!   cannot remove). The trap at the same instruction, and an empty program run.
//! - the same points as counting perf events with no program: the trap alone, and the number
//!   of calls per command, from which each row's CPU per command over bare gives a cost per
//!   probe hit.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use serde::Serialize;

use super::{
    Attached, BenchArgs, median,
    memory::{self, REDIS, Running, WINDOW_SECS},
    write_result,
};
use crate::util;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Row {
    Bare,
    Memory,
    Full,
    Sampled,
    Duty,
    BpftraceAll,
    BpftraceFree,
    EmptyAll,
    EmptyFree,
    CountAll,
}

const ROWS: [Row; 10] = [
    Row::Bare,
    Row::Memory,
    Row::Full,
    Row::Sampled,
    Row::Duty,
    Row::BpftraceAll,
    Row::BpftraceFree,
    Row::EmptyAll,
    Row::EmptyFree,
    Row::CountAll,
];

/// Which probes a row traps on, for its cost per hit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hits {
    /// Every call to a probed function, and every return of an allocating one.
    All,
    /// `free`'s calls.
    Free,
    /// Not a fixed set (windows) or no allocator probe.
    None,
}

impl Row {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Memory => "profiler --memory",
            Self::Full => "profiler --alloc",
            Self::Sampled => "profiler --alloc --alloc-sample 64",
            Self::Duty => "profiler --alloc --alloc-duty 10",
            Self::BpftraceAll => "(a) bpftrace empty, all, at entry",
            Self::BpftraceFree => "(b) bpftrace empty, free, at entry",
            Self::EmptyAll => "(a) empty BPF, all, our offsets",
            Self::EmptyFree => "(b) empty BPF, free, our offset",
            Self::CountAll => "trap only (perf count), all",
        }
    }

    /// Commands of each of the four tests per window: about 4 s at the rate each row ran at
    /// on this machine (`--alloc` answers a twentieth of bare, bpftrace at the entries a
    /// hundredth), so the slow rows do not take minutes. Throughput is a rate either way.
    fn per_test(self) -> u64 {
        let base = WINDOW_SECS * 300_000 / 4;
        base / match self {
            Self::Bare | Self::Memory => 1,
            // Long enough to span several 2 s window periods.
            Self::Duty | Self::EmptyFree => 2,
            Self::EmptyAll | Self::CountAll => 4,
            Self::Sampled => 8,
            Self::Full => 16,
            Self::BpftraceFree => 32,
            Self::BpftraceAll => 64,
        }
    }

    fn hits(self) -> Hits {
        match self {
            Self::Full | Self::Sampled | Self::BpftraceAll | Self::EmptyAll | Self::CountAll => {
                Hits::All
            }
            Self::BpftraceFree | Self::EmptyFree => Hits::Free,
            Self::Bare | Self::Memory | Self::Duty => Hits::None,
        }
    }
}

/// The allocator the profiler probes in the server, from its `summary.json`.
#[derive(Debug, Clone, Serialize)]
struct Probed {
    path: PathBuf,
    /// (function, symbol) pairs.
    symbols: Vec<(String, String)>,
    /// (function, offset in the file) where each probe sits.
    file_offsets: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Window {
    round: usize,
    throughput_per_s: f64,
    server_cpu_us_per_op: f64,
    /// The profiler's own counts (`--alloc` rows): allocator calls seen, blocks tracked, frees
    /// of tracked blocks and of blocks from before the attach.
    calls: Option<u64>,
    tracked: Option<u64>,
    frees: Option<u64>,
    unknown_frees: Option<u64>,
    /// Counting row: hits per probe ("malloc", "malloc return", …) over the window.
    hits: Option<BTreeMap<String, u64>>,
    ops: f64,
}

#[derive(Debug, Serialize)]
struct RowResult {
    name: &'static str,
    windows: Vec<Window>,
    /// Median, min and max over rounds of this row's throughput over its round's bare one.
    throughput_share: f64,
    throughput_share_min: f64,
    throughput_share_max: f64,
    /// Median server CPU per command, and the median over rounds of (row - bare).
    server_cpu_us_per_op: f64,
    added_cpu_us_per_op: f64,
    /// Probe hits per command this row traps on (from the counting row), and the added CPU per
    /// hit.
    hits_per_op: Option<f64>,
    added_ns_per_hit: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Result {
    bench: &'static str,
    timestamp: String,
    rounds: usize,
    window_secs: u64,
    load: String,
    loadavg_before: String,
    loadavg_after: String,
    allocator: Probed,
    /// Medians over the counting row's windows: calls per command of each probed function
    /// (and returns of the allocating ones).
    hits_per_op: BTreeMap<String, f64>,
    rows: Vec<RowResult>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let profiler = util::build_profiler()?;
    for tool in ["redis-server", "redis-benchmark", "bpftrace"] {
        memory::which(tool).with_context(|| {
            format!("{tool} is not installed: run `cargo xtask setup` (it installs redis-server, redis-tools and bpftrace)")
        })?;
    }
    let rounds = args.rounds().max(1);
    let scratch = std::env::temp_dir().join(format!(
        "profiler-bench-alloc-server-{}",
        std::process::id()
    ));
    let loadavg_before = loadavg();
    let allocator = probed(&profiler, &scratch).context("reading what --alloc probes")?;
    eprintln!(
        "--alloc probes {} at {}",
        allocator.path.display(),
        allocator
            .file_offsets
            .iter()
            .map(|(f, o)| format!("{f} {o:#x}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut windows: Vec<Vec<Window>> = ROWS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        let server = memory::start(REDIS)?;
        // Warm-up: connections, buffers and the data set in place before anything is measured.
        memory::redis_load(server.addr, Row::Bare.per_test())?;
        for k in 0..ROWS.len() {
            let i = (k + round) % ROWS.len();
            let row = ROWS[i];
            let mut w = window(row, &profiler, &server, &allocator, &scratch)
                .with_context(|| format!("round {round}, {}", row.name()))?;
            w.round = round;
            eprintln!(
                "round {}/{rounds}: {:<38} {:>9.0} commands/s  {:.2} us CPU/command",
                round + 1,
                row.name(),
                w.throughput_per_s,
                w.server_cpu_us_per_op
            );
            windows[i].push(w);
        }
        drop(server);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let hits_per_op =
        hits_per_op(&windows[ROWS.iter().position(|r| *r == Row::CountAll).unwrap_or(0)]);
    let all: f64 = hits_per_op.values().sum();
    let free = hits_per_op.get("free").copied().unwrap_or(0.0);
    let rows: Vec<RowResult> = ROWS
        .iter()
        .zip(&windows)
        .map(|(row, ws)| {
            let bare = &windows[0];
            let mut shares: Vec<f64> = ws
                .iter()
                .zip(bare)
                .map(|(w, b)| w.throughput_per_s / b.throughput_per_s)
                .collect();
            let mut added: Vec<f64> = ws
                .iter()
                .zip(bare)
                .map(|(w, b)| w.server_cpu_us_per_op - b.server_cpu_us_per_op)
                .collect();
            let mut cpu: Vec<f64> = ws.iter().map(|w| w.server_cpu_us_per_op).collect();
            let hits = match row.hits() {
                Hits::All => Some(all),
                Hits::Free => Some(free),
                Hits::None => None,
            };
            let added_cpu = median(&mut added);
            let (lo, hi) = shares
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
            RowResult {
                name: row.name(),
                windows: ws.clone(),
                throughput_share: median(&mut shares),
                throughput_share_min: lo,
                throughput_share_max: hi,
                server_cpu_us_per_op: median(&mut cpu),
                added_cpu_us_per_op: added_cpu,
                hits_per_op: hits,
                added_ns_per_hit: hits.filter(|h| *h > 0.0).map(|h| added_cpu * 1e3 / h),
            }
        })
        .collect();
    let result = Result {
        bench: "alloc-server",
        timestamp: jiff::Timestamp::now().to_string(),
        rounds,
        window_secs: WINDOW_SECS,
        load: "redis-benchmark -P 8 -c 32 -r 100000 -d 256 -t set,get,lpush,lpop".into(),
        loadavg_before,
        loadavg_after: loadavg(),
        allocator,
        hits_per_op,
        rows,
    };
    print(&result);
    let path = write_result("alloc-server", &result)?;
    println!("written to {}", path.display());
    Ok(())
}

fn print(result: &Result) {
    let bare = &result.rows[0];
    let (lo, hi) = bare.windows.iter().fold((f64::MAX, 0.0f64), |(lo, hi), w| {
        (lo.min(w.throughput_per_s), hi.max(w.throughput_per_s))
    });
    println!(
        "\nredis-server (jemalloc) under {}: median of {} rounds, order rotated each round",
        result.load, result.rounds
    );
    println!(
        "bare: {lo:.0}–{hi:.0} commands/s across rounds; load average {} before, {} after",
        result.loadavg_before, result.loadavg_after
    );
    println!(
        "probe hits per command: {}",
        result
            .hits_per_op
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(full) = result.rows.iter().find(|r| r.name == Row::Full.name()) {
        let per_op = |f: fn(&Window) -> Option<u64>| {
            let mut v: Vec<f64> = full
                .windows
                .iter()
                .filter_map(|w| Some(f(w)? as f64 / w.ops.max(1.0)))
                .collect();
            median(&mut v)
        };
        println!(
            "profiler --alloc saw per command: {:.2} allocator calls, {:.2} frees of blocks it tracked, {:.2} of older blocks",
            per_op(|w| w.calls),
            per_op(|w| w.frees),
            per_op(|w| w.unknown_frees)
        );
    }
    println!(
        "  {:<38} {:>18} {:>10} {:>10} {:>8} {:>9}",
        "", "share of bare", "CPU/cmd", "added", "hits/cmd", "ns/hit"
    );
    for r in &result.rows {
        println!(
            "  {:<38} {:>5.2} ({:.2}–{:.2}) {:>7.2} us {:>7.2} us {:>8} {:>9}",
            r.name,
            r.throughput_share,
            r.throughput_share_min,
            r.throughput_share_max,
            r.server_cpu_us_per_op,
            r.added_cpu_us_per_op,
            r.hits_per_op.map_or("".into(), |h| format!("{h:.2}")),
            r.added_ns_per_hit.map_or("".into(), |n| format!("{n:.0}")),
        );
    }
    let share = |row: Row| {
        result
            .rows
            .iter()
            .find(|r| r.name == row.name())
            .map_or(f64::NAN, |r| r.throughput_share)
    };
    println!(
        "floor with no work of ours: every probe {:.2} of bare (target 0.25 for --alloc), free alone {:.2} (target 0.6 sampled)",
        share(Row::EmptyAll),
        share(Row::EmptyFree)
    );
}

/// Median hits per command of each probe over the counting row's windows.
fn hits_per_op(windows: &[Window]) -> BTreeMap<String, f64> {
    let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for w in windows {
        for (probe, n) in w.hits.iter().flatten() {
            per.entry(probe.clone())
                .or_default()
                .push(*n as f64 / w.ops.max(1.0));
        }
    }
    per.into_iter()
        .map(|(k, mut v)| (k, median(&mut v)))
        .collect()
}

/// What `--alloc` probes in redis: a short capture on a server of its own.
fn probed(profiler: &Path, scratch: &Path) -> anyhow::Result<Probed> {
    std::fs::create_dir_all(scratch)?;
    let server = memory::start(REDIS)?;
    let out = scratch.join("probed");
    let attached = Attached::spawn(
        profiler_cmd(profiler, &["--alloc"], server.child.pid(), &out),
        Some("profiling pid"),
    )?;
    thread::sleep(Duration::from_secs(1));
    attached.stop()?;
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json"))?)?;
    let allocator = &summary["alloc"]["allocator"];
    let pairs = |field: &str| -> Vec<(String, serde_json::Value)> {
        allocator[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].clone())))
            .collect()
    };
    let probed = Probed {
        path: allocator["path"]
            .as_str()
            .context("no alloc.allocator.path in summary.json")?
            .into(),
        symbols: pairs("symbols")
            .into_iter()
            .filter_map(|(f, s)| Some((f, s.as_str()?.to_string())))
            .collect(),
        file_offsets: pairs("file_offsets")
            .into_iter()
            .filter_map(|(f, o)| Some((f, o.as_u64()?)))
            .collect(),
    };
    if !probed.file_offsets.iter().any(|(f, _)| f == "free") {
        bail!("summary.json names no probe on free: {allocator}");
    }
    drop(server);
    Ok(probed)
}

fn profiler_cmd(profiler: &Path, flags: &[&str], pid: u32, out: &Path) -> Command {
    let mut cmd = Command::new(profiler);
    cmd.args(["attach", "--quiet"])
        .args(flags)
        .arg("--pid")
        .arg(pid.to_string())
        .arg("--output")
        .arg(out);
    cmd
}

/// One measured window of `row` on the warm server.
fn window(
    row: Row,
    profiler: &Path,
    server: &Running,
    allocator: &Probed,
    scratch: &Path,
) -> anyhow::Result<Window> {
    let pid = server.child.pid();
    let flags: &[&str] = match row {
        Row::Memory => &["--memory"],
        Row::Full => &["--alloc"],
        Row::Sampled => &["--alloc", "--alloc-sample", "64"],
        Row::Duty => &["--alloc", "--alloc-duty", "10"],
        _ => &[],
    };
    let mut w = Window::default();
    let timed = |w: &mut Window| -> anyhow::Result<()> {
        let before = super::cpu_time(pid);
        let (throughput, ops) = memory::redis_load(server.addr, row.per_test())?;
        let cpu = super::cpu_time(pid).saturating_sub(before);
        w.throughput_per_s = throughput;
        w.ops = ops;
        w.server_cpu_us_per_op = cpu.as_secs_f64() * 1e6 / ops.max(1.0);
        Ok(())
    };
    match row {
        Row::Bare => timed(&mut w)?,
        Row::Memory | Row::Full | Row::Sampled | Row::Duty => {
            let out = scratch.join("capture");
            let _ = std::fs::remove_dir_all(&out);
            let attached = Attached::spawn(
                profiler_cmd(profiler, flags, pid, &out),
                Some("profiling pid"),
            )?;
            timed(&mut w)?;
            attached.stop()?;
            if row != Row::Memory {
                let summary: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(out.join("summary.json"))?)?;
                let alloc = &summary["alloc"];
                w.calls = alloc["calls"].as_u64();
                w.tracked = alloc["tracked"].as_u64();
                w.frees = alloc["frees"].as_u64();
                w.unknown_frees = alloc["unknown_frees"].as_u64();
            }
        }
        Row::BpftraceAll | Row::BpftraceFree => {
            let attached = bpftrace(pid, allocator, row == Row::BpftraceFree)?;
            timed(&mut w)?;
            attached.stop()?;
        }
        Row::EmptyAll | Row::EmptyFree | Row::CountAll => {
            let probes =
                RawProbes::open(pid, allocator, row == Row::EmptyFree, row != Row::CountAll)?;
            timed(&mut w)?;
            if row == Row::CountAll {
                w.hits = Some(probes.counts()?);
            }
            drop(probes);
        }
    }
    Ok(w)
}

/// bpftrace with empty probes on the allocator's functions, at their symbols (bpftrace 0.17
/// takes no other place for a uretprobe, nor an offset without its disassembler), scoped to
/// the server with `-p`.
fn bpftrace(pid: u32, allocator: &Probed, free_only: bool) -> anyhow::Result<Attached> {
    let lib = allocator.path.display();
    let mut script = String::new();
    for (function, symbol) in &allocator.symbols {
        if function == "free" {
            script.push_str(&format!("uprobe:{lib}:{symbol} {{}} "));
        } else if !free_only {
            script.push_str(&format!(
                "uretprobe:{lib}:{symbol} {{}} uprobe:{lib}:{symbol} {{}} "
            ));
        }
    }
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-p", &pid.to_string(), "-e", &script]);
    let attached = Attached::spawn(cmd, None)?;
    // bpftrace says nothing on stderr once attached; a few uprobes take milliseconds.
    thread::sleep(Duration::from_secs(2));
    Ok(attached)
}

/// Uprobes opened by this process through the kernel's uprobe PMU (`perf_event_open`, scoped
/// to the server's process, as aya attaches the profiler's), at the profiler's file offsets:
/// with an empty BPF program each, or with none, counting hits. Closing the descriptors
/// detaches them.
struct RawProbes {
    /// (probe name, event).
    events: Vec<(String, OwnedFd)>,
    _program: Option<OwnedFd>,
}

impl RawProbes {
    fn open(pid: u32, allocator: &Probed, free_only: bool, program: bool) -> anyhow::Result<Self> {
        let ty: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
            .context("no uprobe PMU in /sys/bus/event_source/devices")?
            .trim()
            .parse()?;
        let retprobe_bit: u32 =
            std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/format/retprobe")?
                .trim()
                .strip_prefix("config:")
                .context("unexpected uprobe retprobe format")?
                .parse()?;
        let program = program.then(empty_program).transpose()?;
        let path = CString::new(format!("/proc/{pid}/root{}", allocator.path.display()))?;
        const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
        let mut events = Vec::new();
        for (function, offset) in &allocator.file_offsets {
            if free_only && function != "free" {
                continue;
            }
            // The return probe first, at the same point, as the profiler attaches them.
            let mut kinds = Vec::new();
            if function != "free" {
                kinds.push((format!("{function} return"), true));
            }
            kinds.push((function.clone(), false));
            for (name, ret) in kinds {
                // perf_event_attr (136 bytes, PERF_ATTR_SIZE_VER8): type, size, config
                // (the retprobe bit), flags (0: enabled), uprobe_path, probe_offset.
                let mut attr = [0u64; 17];
                attr[0] = u64::from(ty) | (136u64 << 32);
                attr[1] = if ret { 1 << retprobe_bit } else { 0 };
                attr[7] = path.as_ptr() as u64;
                attr[8] = *offset;
                // SAFETY: attr is a valid perf_event_attr of the size it states, and the path
                // it points to outlives the call.
                let fd = unsafe {
                    libc::syscall(
                        libc::SYS_perf_event_open,
                        attr.as_ptr(),
                        pid as libc::pid_t,
                        -1,
                        -1,
                        PERF_FLAG_FD_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("perf_event_open uprobe {name} at {offset:#x}"));
                }
                // SAFETY: a descriptor the kernel just gave us, owned by nothing else.
                let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                if let Some(program) = &program {
                    const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
                    // SAFETY: both descriptors are ours and open.
                    let rc = unsafe {
                        libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, program.as_raw_fd())
                    };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("attaching the empty program to {name}"));
                    }
                }
                events.push((name, fd));
            }
        }
        Ok(Self {
            events,
            _program: program,
        })
    }

    /// Hits per probe so far (counting events, without a program). A task-bound counter counts
    /// the server's main thread, where redis runs its commands.
    fn counts(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        self.events
            .iter()
            .map(|(name, fd)| {
                let mut count = 0u64;
                // SAFETY: reads 8 bytes into a u64 from our open descriptor.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        (&mut count as *mut u64).cast(),
                        size_of::<u64>(),
                    )
                };
                if n != size_of::<u64>() as isize {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("reading the count of {name}"));
                }
                Ok((name.clone(), count))
            })
            .collect()
    }
}

/// A BPF program of the kprobe type (uprobes run those) that returns 0 and does nothing else.
fn empty_program() -> anyhow::Result<OwnedFd> {
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    // bpf_attr for BPF_PROG_LOAD: prog_type (BPF_PROG_TYPE_KPROBE), insn_cnt, insns, license;
    // the rest zero. The name sits at byte 48.
    let mut attr = [0u64; 16];
    attr[0] = 2 | (2u64 << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let name = b"bench_empty\0";
    // SAFETY: attr is 128 bytes; the name's 12 bytes go at 48..60, inside it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            name.as_ptr(),
            (attr.as_mut_ptr() as *mut u8).add(48),
            name.len(),
        );
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; insns and license outlive
    // the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_ptr(),
            size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("loading an empty BPF program");
    }
    // SAFETY: a descriptor the kernel just gave us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
