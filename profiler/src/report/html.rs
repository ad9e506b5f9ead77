//! `report.html`: one self-contained page (no network) with everything a capture found, built
//! with maud from the typed summary (so a renamed field is a compile error here) and the run
//! directory's files. Flamegraphs are embedded as `data:` URL iframes, so each keeps inferno's
//! interactivity in its own document; charts are inline SVG. A page can be rebuilt for any
//! archived run.

use std::{fs, path::Path};

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::memory::MemorySummary;

use super::{
    alloc::{AllocSummary, MemorySample},
    component::Components,
    cpu::CpuSummary,
    futex::FutexSummary,
    memory::{GrowthStack, bytes},
    offcpu::OffcpuSummary,
    sock::LatencyReport,
    summary::Summary,
    why::WhyReport,
};

/// The page's file name in a run directory.
pub const FILE: &str = "report.html";

/// Sections every page has, in order; the headless-browser test checks for each id.
pub const SECTIONS: &[(&str, &str)] = &[
    ("findings", "Findings"),
    ("overview", "Overview"),
    ("cpu", "CPU"),
    ("offcpu", "Off-CPU"),
    ("locks", "Locks"),
    ("latency", "Latency"),
    ("tail", "Tail latency"),
    ("alloc", "Allocations"),
    ("memory", "Memory growth"),
    ("drops", "Dropped events"),
];

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px; color: #222; }
nav { position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid #ddd; }
section { margin: 24px 0; } h2 { border-bottom: 2px solid #c0392b; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td { font-family: ui-monospace, monospace; font-size: 12px; }
iframe.graph { width: 100%; border: 1px solid #ddd; } .none { color: #888; } .note { background: #fff8e1; padding: 4px 8px; }
.over { color: #fff; background: #c0392b; padding: 2px 6px; font-weight: bold; }
";

/// Builds the page for the run in `dir` from its summary.
pub fn render(dir: &Path, summary: &Summary) -> String {
    let title = format!("{} (pid {})", summary.target.comm, summary.target.pid);
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "profiler: " (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "profiler: " (title) }
                nav {
                    @for (i, (id, name)) in SECTIONS.iter().enumerate() {
                        @if i > 0 { " · " }
                        a href={ "#" (id) } { (name) }
                    }
                }
                (findings(summary))
                (overview(summary))
                (section("cpu", summary.cpu.as_ref(), "--cpu", |c| cpu(dir, c)))
                (section("offcpu", summary.offcpu.as_ref(), "--offcpu", |o| offcpu(dir, o)))
                (section("locks", summary.futex.as_ref(), "--futex", |f| locks(dir, f)))
                (section("latency", summary.sock.as_ref(), "--sock", |s| latency(dir, s)))
                (section("tail", summary.why.as_ref(), "--why", |w| tail(dir, w)))
                (section("alloc", summary.alloc.as_ref(), "--alloc", |a| alloc(dir, a)))
                (section("memory", summary.memory.as_ref(), "--memory", |m| memory(dir, m)))
                section id="drops" {
                    h2 { "Dropped events" }
                    (table(&["counter", "count"], summary.dropped.iter().map(|(name, count)| {
                        vec![html! { (name) }, html! { (count) }]
                    })))
                }
            }
        }
    };
    page.into_string()
}

/// A family's section: its content, or how to capture it.
fn section<T>(id: &str, value: Option<&T>, flag: &str, content: impl Fn(&T) -> Markup) -> Markup {
    let title = SECTIONS
        .iter()
        .find(|(s, _)| *s == id)
        .map_or(id, |(_, t)| t);
    html! {
        section id=(id) {
            h2 { (title) }
            @match value {
                Some(value) => (content(value)),
                None => p class="none" { "Not captured in this run (enable with " code { (flag) } ")." },
            }
        }
    }
}

/// The digest: what the capture found, strongest first, each with the file to open.
fn findings(s: &Summary) -> Markup {
    html! {
        section id="findings" {
            h2 { "Findings" }
            @if s.findings.is_empty() {
                p class="none" { "Nothing stood out: no hot function, contended lock, slow tail or leak." }
            }
            ol {
                @for f in s.findings.iter().filter(|f| f.family != "warning") {
                    li { (f.what) " " span class="none" { "(" (f.file) ")" } }
                }
            }
            @for f in s.findings.iter().filter(|f| f.family == "warning") {
                p class="note" { "warning: " (f.what) }
            }
        }
    }
}

fn overview(s: &Summary) -> Markup {
    let usage = s.target.usage.as_ref();
    let rows: Vec<(&str, String)> = vec![
        ("command", s.target.cmdline.clone()),
        ("kernel", s.kernel.clone()),
        ("started", s.started_at.clone()),
        ("duration (s)", format!("{:.1}", s.duration_secs)),
        ("ended by", s.end_reason.clone()),
        (
            "target CPU (% of a core)",
            usage.map_or("–".into(), |u| format!("{:.1}", u.cpu_percent)),
        ),
        (
            "target RSS (KiB)",
            usage.map_or("–".into(), |u| u.rss_kb.to_string()),
        ),
        (
            "cgroup",
            s.target.placement.cgroup.clone().unwrap_or("–".into()),
        ),
        (
            "container",
            s.target
                .placement
                .container_id
                .clone()
                .unwrap_or("–".into()),
        ),
        ("unwinding", s.unwind.mode.clone()),
    ];
    html! {
        section id="overview" {
            h2 { "Overview" }
            (table(&["", ""], rows.into_iter().map(|(k, v)| vec![html! { (k) }, html! { (v) }])))
            @for note in &s.notes {
                p class="note" { (note) }
            }
        }
    }
}

fn cpu(dir: &Path, c: &CpuSummary) -> Markup {
    html! {
        p { (c.samples) " samples at " (c.frequency_hz) " Hz." }
        (embed(dir, "cpu.svg"))
        (table(&["self", "samples", "function"], c.top_self.iter().map(|f| vec![
            html! { (format!("{:.1}%", f.share * 100.0)) },
            html! { (f.weight) },
            html! { (f.function) },
        ])))
    }
}

fn offcpu(dir: &Path, o: &OffcpuSummary) -> Markup {
    html! {
        p { (o.total_us) " µs off-CPU in " (o.switches) " switches." }
        (embed(dir, "offcpu.svg"))
    }
}

fn locks(dir: &Path, f: &FutexSummary) -> Markup {
    let head = [
        "lock",
        "waiters",
        "waits",
        "total wait (µs)",
        "p99 (µs)",
        "max (µs)",
        "top waiter",
    ];
    html! {
        (table(&head, f.locks.iter().take(10).map(|l| vec![
            html! { (l.name) },
            html! { (l.waiters) },
            html! { (l.waits) },
            html! { (format!("{:.0}", l.total_wait_us)) },
            html! { (format!("{:.0}", l.p99_us)) },
            html! { (format!("{:.0}", l.max_wait_us)) },
            html! { (l.top_waiters.first().map(|w| frames(&w.frames)).unwrap_or_default()) },
        ])))
        (embed(dir, "locks.svg"))
    }
}

fn latency(dir: &Path, s: &LatencyReport) -> Markup {
    let head = [
        "port",
        "requests",
        "per s (served)",
        "p50 (µs)",
        "p95 (µs)",
        "p99 (µs)",
        "p99.9 (µs)",
        "max (µs)",
    ];
    let us = |v: f64| html! { (format!("{v:.0}")) };
    html! {
        (table(&head, s.ports.iter().map(|p| {
            let r = &p.socket_to_reply;
            vec![
                html! { (p.port) },
                html! { (p.requests) },
                html! { (format!("{:.1}", r.rate_per_s)) },
                us(r.p50_us), us(r.p95_us), us(r.p99_us), us(r.p999_us), us(r.max_us),
            ]
        })))
        (embed(dir, "latency.svg"))
    }
}

fn tail(dir: &Path, w: &WhyReport) -> Markup {
    let head = ["share", "per request", "kind", "cause", "where", "held by"];
    let leaf = |frames: &[String]| super::futex::leaf_frames(frames, 4);
    html! {
        @for p in &w.ports {
            h3 { "Port " (p.port) }
            p {
                "The slowest " (p.tail.requests) " of " (p.requests) " requests ("
                (w.tail_rule) ", at least " (format!("{:.0}", p.tail.threshold_us)) " µs, mean "
                (format!("{:.0}", p.tail.mean_us)) " µs) against typical ones (p25–p75, mean "
                (format!("{:.0}", p.typical.mean_us)) " µs); "
                (format!("{:.1}", p.cpu_us_per_request)) " µs of CPU per request."
            }
            @for (label, g) in [("Tail", &p.tail), ("Typical", &p.typical)] {
                h4 { (label) }
                (table(&head, g.causes.iter().take(8).map(|c| vec![
                    html! { (format!("{:.1}%", c.share * 100.0)) },
                    html! { (format!("{:.0} µs", c.mean_us)) },
                    html! { (c.kind) },
                    html! { (c.name) },
                    html! { (leaf(&c.stack)) },
                    html! { (leaf(&c.holder_stack)) },
                ])))
            }
        }
        (embed(dir, "tail.svg"))
        (embed(dir, "tail-vs-typical.svg"))
    }
}

fn alloc(dir: &Path, a: &AllocSummary) -> Markup {
    let leaks = &a.leaks;
    let memory = &leaks.memory;
    let samples = super::alloc::read_memory_csv(dir).unwrap_or_default();
    html! {
        @if let Some(said) = &leaks.plausibility {
            p class="note" { (said) }
        }
        p {
            "Allocator " (a.allocator.name) " (" (a.allocator.path.display()) "); "
            (leaks.live_bytes) " live bytes in " (leaks.live_count) " allocations"
            @if leaks.estimate { " (estimated from a sample)" }
            "."
        }
        p {
            (a.calls) " allocator calls, " (a.tracked) " tracked, " (a.frees) " freed; "
            (a.unknown_frees) " frees of blocks allocated before the attach; "
            (a.nested) " calls from inside the allocator."
        }
        h3 { "Leak suspects" }
        (table(&["growth (B/min)", "live bytes", "live", "oldest (s)", "stack"],
            leaks.suspects.iter().take(10).map(|s| vec![
                html! { (format!("{:.0}", s.growth_bytes_per_min)) },
                html! { (s.live_bytes) },
                html! { (s.live_count) },
                html! { (format!("{:.1}", s.oldest_age_secs)) },
                html! { (frames(&s.frames)) },
            ])))
        (components(&leaks.components))
        h3 { "Memory" }
        p {
            "RSS " (memory.rss_baseline_kb) " KiB → " (memory.rss_end_kb) " KiB ("
            (format!("{:+.1}", memory.rss_growth_percent)) "%)."
        }
        (memory_chart(&samples))
        (embed(dir, "alloc.svg"))
    }
}

fn memory(dir: &Path, m: &MemorySummary) -> Markup {
    let g = &m.growth;
    let samples = super::alloc::read_memory_csv(dir).unwrap_or_default();
    let head = [
        "rate", "held", "share", "pages", "grown", "released", "stack",
    ];
    let rows = |stacks: &[GrowthStack]| -> Vec<Vec<Markup>> {
        stacks
            .iter()
            .take(10)
            .map(|s| {
                vec![
                    html! { (bytes(s.rate_bytes_per_min.max(0.0) as u64)) "/min" },
                    html! { (bytes(s.bytes)) },
                    html! { (format!("{:.1}%", s.share_percent)) },
                    html! { (s.pages) },
                    html! { (bytes(s.grown_bytes)) },
                    html! { (bytes(s.released_bytes)) },
                    html! { (frames(&s.frames)) },
                ]
            })
            .collect()
    };
    html! {
        @if let Some(said) = &g.note {
            p class="note" { (said) }
        }
        p {
            (bytes(g.grown_bytes)) " grown, " (bytes(g.released_bytes)) " released, "
            (bytes(g.held_bytes)) " held; anonymous memory "
            (format!("{:+}", g.anon_change_kb)) " KiB"
            @if g.anon_growing { " (growing)" }
            "; " (m.faults) " write faults."
        }
        h3 { "Leak suspects" }
        @if g.suspects.is_empty() {
            p class="none" { "None: no stack kept holding more while anonymous memory grew." }
        } @else {
            (table(&head, rows(&g.suspects).into_iter()))
        }
        h3 { "Largest growers" }
        (table(&head, rows(&g.growers).into_iter()))
        (components(&g.components))
        h3 { "Memory" }
        (memory_chart(&samples))
        (embed(dir, "memory.svg"))
        p class="none" { (g.rule) }
    }
}

/// Each component's bytes against its budget, those over it first and marked.
fn components(c: &Components) -> Markup {
    if c.components.is_empty() {
        return html! {};
    }
    html! {
        h3 { "Components" }
        @for over in c.over_budget() {
            p class="over" {
                "OVER BUDGET: " (over.name) " holds " (bytes(over.bytes)) " " (c.measure)
                " against " (bytes(over.budget_bytes.unwrap_or(0)))
            }
        }
        p class="none" {
            (c.measure)
            @if let Some(file) = &c.budget_file { "; budgets from " (file) }
        }
        (table(&["component", "bytes", "budget", "rate", "share", ""],
            c.components.iter().map(|k| vec![
                html! { (k.name) },
                html! { (bytes(k.bytes)) },
                html! { @if let Some(b) = k.budget_bytes { (bytes(b)) } @else { "-" } },
                html! { (format!("{:+.0}", k.rate_bytes_per_min)) " B/min" },
                html! { (format!("{:.1}%", k.share_percent)) },
                html! { @if k.over_budget { strong class="over" { "OVER BUDGET" } } },
            ])))
    }
}

fn table(head: &[&str], rows: impl Iterator<Item = Vec<Markup>>) -> Markup {
    html! {
        table {
            thead { tr { @for h in head { th { (h) } } } }
            tbody {
                @for row in rows {
                    tr { @for cell in row { td { (cell) } } }
                }
            }
        }
    }
}

/// The leafmost frames of a stack, root first.
fn frames(frames: &[String]) -> String {
    let start = frames.len().saturating_sub(6);
    let shown = frames[start..].join(";");
    if start > 0 {
        format!("…;{shown}")
    } else {
        shown
    }
}

/// An SVG from the run directory as its own document (a `data:` URL, so the page needs no other
/// file), keeping inferno's interactivity: parsed as HTML, inferno's `fg:` attributes would not
/// be seen and its frames would be drawn wrong. A `data:` document has an opaque origin of its
/// own, so its script reaches nothing of the page. (A `sandbox` attribute would also deny it
/// the window APIs it needs, and it would draw nothing.)
fn embed(dir: &Path, file: &str) -> Markup {
    use base64::Engine as _;
    let Ok(svg) = fs::read(dir.join(file)) else {
        return html! {};
    };
    let height = svg_height(&svg).unwrap_or(480) + 8;
    let src = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    );
    html! {
        iframe class="graph" title=(file) style={ "height:" (height) "px" } src=(src) {}
    }
}

/// The `height` attribute of an SVG's root element.
fn svg_height(svg: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(svg.get(..4096.min(svg.len()))?).ok()?;
    let root = &text[text.find("<svg")?..];
    let value = root[root.find("height=\"")? + 8..].split('"').next()?;
    value.parse().ok()
}

/// A line chart of RSS and PSS over time.
fn memory_chart(samples: &[MemorySample]) -> Markup {
    if samples.len() < 2 {
        return html! {};
    }
    let points: Vec<(f64, f64, f64)> = samples
        .iter()
        .map(|s| {
            (
                s.elapsed_secs,
                s.rss_kb as f64 / 1024.0,
                s.pss_kb as f64 / 1024.0,
            )
        })
        .collect();
    let (w, h, pad) = (760.0, 240.0, 48.0);
    let t_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let m_max = points
        .iter()
        .map(|p| p.1.max(p.2))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |t: f64| pad + t / t_max * (w - 2.0 * pad);
    let y = |m: f64| h - pad - m / m_max * (h - 2.0 * pad);
    let line = |pick: fn(&(f64, f64, f64)) -> f64| {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(pick(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (b, r) = (h - pad, w - pad);
    html! {
        svg class="chart" viewBox={ "0 0 " (w) " " (h) } width=(w) height=(h) role="img" aria-label="RSS over time" {
            line x1=(pad) y1=(b) x2=(r) y2=(b) stroke="#888" {}
            line x1=(pad) y1=(pad) x2=(pad) y2=(b) stroke="#888" {}
            text x=(pad) y=(pad - 8.0) font-size="12" { (format!("{m_max:.1} MiB")) }
            text x=(r) y=(b + 18.0) font-size="12" text-anchor="end" { (format!("{t_max:.0} s")) }
            polyline fill="none" stroke="#c0392b" stroke-width="2" points=(line(|p| p.1)) {}
            polyline fill="none" stroke="#2c7fb8" stroke-width="2" stroke-dasharray="4 3" points=(line(|p| p.2)) {}
            text x=(r) y=(pad) font-size="12" text-anchor="end" fill="#c0392b" { "RSS" }
            text x=(r) y=(pad + 16.0) font-size="12" text-anchor="end" fill="#2c7fb8" { "PSS" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{cpu::CpuSummary, profile::FunctionShare, summary::TargetSummary};

    #[test]
    fn every_section_present_and_text_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let svg = "<svg width=\"1200\" height=\"382\"><script>var x = \"a\" < 1;</script></svg>";
        fs::write(dir.join("cpu.svg"), svg).unwrap();
        fs::write(
            dir.join(super::super::alloc::MEMORY_CSV),
            "elapsed_s,rss_kb,pss_kb,anon_kb\n0.0,1024,900,10\n5.0,2048,1900,20\n",
        )
        .unwrap();
        let mut alloc = AllocSummary {
            calls: 500,
            tracked: 400,
            frees: 300,
            unknown_frees: 20,
            nested: 100,
            ..AllocSummary::default()
        };
        alloc.allocator.name = "glibc".into();
        alloc.leaks.live_bytes = 64;
        alloc.leaks.components = Components {
            measure: "live bytes".into(),
            budget_file: Some("budget.toml".into()),
            components: vec![crate::report::component::ComponentBytes {
                name: "share log".into(),
                bytes: 2048,
                budget_bytes: Some(1024),
                over_budget: true,
                ..Default::default()
            }],
        };
        let summary = Summary {
            target: TargetSummary {
                comm: "pool<1>".into(),
                pid: 7,
                cmdline: "pool --x".into(),
                ..TargetSummary::default()
            },
            cpu: Some(CpuSummary {
                samples: 10,
                frequency_hz: 99,
                top_self: vec![FunctionShare {
                    function: "hot_leaf".into(),
                    weight: 9,
                    share: 0.9,
                }],
                ..CpuSummary::default()
            }),
            alloc: Some(alloc),
            dropped: [("user_stacks_full".to_string(), 0)].into(),
            ..Summary::default()
        };
        let html = render(dir, &summary);
        for (id, _) in SECTIONS {
            assert!(
                html.contains(&format!("<section id=\"{id}\">")),
                "{id} missing"
            );
        }
        assert!(html.contains("pool&lt;1&gt; (pid 7)"));
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(svg);
        assert!(html.contains(&format!(
            "style=\"height:390px\" src=\"data:image/svg+xml;base64,{encoded}\""
        )));
        assert!(html.contains("hot_leaf"));
        assert!(html.contains(
            "500 allocator calls, 400 tracked, 300 freed; 20 frees of blocks allocated before \
             the attach; 100 calls from inside the allocator."
        ));
        assert!(html.contains("<polyline"), "RSS chart drawn");
        assert!(
            html.contains("OVER BUDGET: share log holds 2.0 KiB live bytes against 1.0 KiB"),
            "the component over its budget, loudly"
        );
        assert!(html.contains("enable with <code>--offcpu</code>"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "self-contained"
        );
    }
}
