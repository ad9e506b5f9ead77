//! `report.html`: one self-contained page (no network) with everything a capture found.
//! Flamegraphs are embedded as `data:` URL iframes, so each keeps inferno's interactivity in its
//! own document; charts are inline SVG. Built from the run directory and its summary, so a page
//! can be rebuilt for any archived run.

use std::{fmt::Write as _, fs, path::Path};

use serde_json::Value;

/// The page's file name in a run directory.
pub const FILE: &str = "report.html";

/// Sections every page has, in order; the headless-browser test checks for each id.
pub const SECTIONS: &[(&str, &str)] = &[
    ("overview", "Overview"),
    ("cpu", "CPU"),
    ("offcpu", "Off-CPU"),
    ("locks", "Locks"),
    ("latency", "Latency"),
    ("alloc", "Allocations"),
    ("drops", "Dropped events"),
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn get<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |v, k| v.get(k))
}

fn num(value: &Value, keys: &[&str]) -> String {
    match get(value, keys) {
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.1}")
            }
        }
        Some(Value::String(s)) => escape(s),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "–".into(),
    }
}

fn frames(value: &Value) -> String {
    value
        .as_array()
        .map(|f| {
            let names: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
            let start = names.len().saturating_sub(6);
            let mut s = if start > 0 {
                "…;".to_string()
            } else {
                String::new()
            };
            s.push_str(&names[start..].join(";"));
            escape(&s)
        })
        .unwrap_or_default()
}

/// An SVG from the run directory as its own document (a `data:` URL, so the page needs no other
/// file), keeping inferno's interactivity: parsed as HTML, inferno's `fg:` attributes would not
/// be seen and its frames would be drawn wrong. A `data:` document has an opaque origin of its
/// own, so its script reaches nothing of the page. (A `sandbox` attribute would also deny it
/// the window APIs it needs, and it would draw nothing.)
fn embed(dir: &Path, file: &str) -> Option<String> {
    use base64::Engine as _;
    let svg = fs::read(dir.join(file)).ok()?;
    let height = svg_height(&svg).unwrap_or(480) + 8;
    Some(format!(
        "<iframe class=\"graph\" title=\"{file}\" style=\"height:{height}px\" src=\"data:image/svg+xml;base64,{}\"></iframe>",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

/// The `height` attribute of an SVG's root element.
fn svg_height(svg: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(svg.get(..4096.min(svg.len()))?).ok()?;
    let root = &text[text.find("<svg")?..];
    let value = root[root.find("height=\"")? + 8..].split('"').next()?;
    value.parse().ok()
}

fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

fn not_captured(out: &mut String, flag: &str) {
    let _ = write!(
        out,
        "<p class=\"none\">Not captured in this run (enable with <code>{flag}</code>).</p>"
    );
}

/// A line chart of RSS and PSS over time from `memory_samples.csv`.
fn memory_chart(dir: &Path) -> Option<String> {
    let csv = fs::read_to_string(dir.join("memory_samples.csv")).ok()?;
    let points: Vec<(f64, f64, f64)> = csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<f64> = l.split(',').filter_map(|v| v.parse().ok()).collect();
            Some((*f.first()?, *f.get(1)? / 1024.0, *f.get(2)? / 1024.0))
        })
        .collect();
    if points.len() < 2 {
        return None;
    }
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
    Some(format!(
        r##"<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="RSS over time">
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#888"/>
<text x="{pad}" y="{ty}" font-size="12">{m_max:.1} MiB</text><text x="{r}" y="{tb}" font-size="12" text-anchor="end">{t_max:.0} s</text>
<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{rss}"/><polyline fill="none" stroke="#2c7fb8" stroke-width="2" stroke-dasharray="4 3" points="{pss}"/>
<text x="{r}" y="{pad}" font-size="12" text-anchor="end" fill="#c0392b">RSS</text><text x="{r}" y="{pl}" font-size="12" text-anchor="end" fill="#2c7fb8">PSS</text>
</svg>"##,
        b = h - pad,
        r = w - pad,
        ty = pad - 8.0,
        tb = h - pad + 18.0,
        pl = pad + 16.0,
        rss = line(|p| p.1),
        pss = line(|p| p.2),
    ))
}

/// Builds the page for the run in `dir` from its summary.
pub fn render(dir: &Path, summary: &crate::report::summary::Summary) -> String {
    let summary = serde_json::to_value(summary).unwrap_or(Value::Null);
    render_value(dir, &summary)
}

fn render_value(dir: &Path, summary: &Value) -> String {
    let mut body = String::new();
    let title = format!(
        "{} (pid {})",
        num(summary, &["target", "comm"]),
        num(summary, &["target", "pid"])
    );

    body.push_str("<section id=\"overview\"><h2>Overview</h2>");
    table(
        &mut body,
        &["", ""],
        &[
            vec!["command".into(), num(summary, &["target", "cmdline"])],
            vec!["kernel".into(), num(summary, &["kernel"])],
            vec!["started".into(), num(summary, &["started_at"])],
            vec!["duration (s)".into(), num(summary, &["duration_secs"])],
            vec!["ended by".into(), num(summary, &["end_reason"])],
            vec![
                "target CPU (% of a core)".into(),
                num(summary, &["target", "usage", "cpu_percent"]),
            ],
            vec![
                "target RSS (KiB)".into(),
                num(summary, &["target", "usage", "rss_kb"]),
            ],
            vec![
                "cgroup".into(),
                num(summary, &["target", "placement", "cgroup"]),
            ],
            vec![
                "container".into(),
                num(summary, &["target", "placement", "container_id"]),
            ],
            vec!["unwinding".into(), num(summary, &["unwind", "mode"])],
        ],
    );
    if let Some(notes) = summary.get("notes").and_then(Value::as_array) {
        for note in notes.iter().filter_map(Value::as_str) {
            let _ = write!(body, "<p class=\"note\">{}</p>", escape(note));
        }
    }
    body.push_str("</section>");

    body.push_str("<section id=\"cpu\"><h2>CPU</h2>");
    match summary.get("cpu") {
        Some(cpu) => {
            let _ = write!(
                body,
                "<p>{} samples at {} Hz.</p>",
                num(cpu, &["samples"]),
                num(cpu, &["frequency_hz"])
            );
            body.push_str(&embed(dir, "cpu.svg").unwrap_or_default());
            let rows: Vec<Vec<String>> = cpu
                .get("top_self")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|f| {
                    vec![
                        format!("{:.1}%", f["share"].as_f64().unwrap_or(0.0) * 100.0),
                        num(f, &["weight"]),
                        num(f, &["function"]),
                    ]
                })
                .collect();
            table(&mut body, &["self", "samples", "function"], &rows);
        }
        None => not_captured(&mut body, "--cpu"),
    }
    body.push_str("</section>");

    body.push_str("<section id=\"offcpu\"><h2>Off-CPU</h2>");
    match summary.get("offcpu") {
        Some(off) => {
            let _ = write!(
                body,
                "<p>{} µs off-CPU in {} switches.</p>",
                num(off, &["total_us"]),
                num(off, &["switches"])
            );
            body.push_str(&embed(dir, "offcpu.svg").unwrap_or_default());
        }
        None => not_captured(&mut body, "--offcpu"),
    }
    body.push_str("</section>");

    body.push_str("<section id=\"locks\"><h2>Locks</h2>");
    match summary.get("futex") {
        Some(futex) => {
            let rows: Vec<Vec<String>> = futex
                .get("locks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .take(10)
                .map(|l| {
                    vec![
                        num(l, &["name"]),
                        num(l, &["waiters"]),
                        num(l, &["waits"]),
                        num(l, &["total_wait_us"]),
                        num(l, &["p99_us"]),
                        num(l, &["max_wait_us"]),
                        l.get("top_waiters")
                            .and_then(|w| w.get(0))
                            .map(|w| frames(&w["frames"]))
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                &mut body,
                &[
                    "lock",
                    "waiters",
                    "waits",
                    "total wait (µs)",
                    "p99 (µs)",
                    "max (µs)",
                    "top waiter",
                ],
                &rows,
            );
            body.push_str(&embed(dir, "locks.svg").unwrap_or_default());
        }
        None => not_captured(&mut body, "--futex"),
    }
    body.push_str("</section>");

    body.push_str("<section id=\"latency\"><h2>Latency</h2>");
    match summary.get("sock") {
        Some(sock) => {
            let rows: Vec<Vec<String>> = sock
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    vec![
                        num(p, &["port"]),
                        num(p, &["requests"]),
                        num(p, &["socket_to_reply", "rate_per_s"]),
                        num(p, &["socket_to_reply", "p50_us"]),
                        num(p, &["socket_to_reply", "p95_us"]),
                        num(p, &["socket_to_reply", "p99_us"]),
                        num(p, &["socket_to_reply", "p999_us"]),
                        num(p, &["socket_to_reply", "max_us"]),
                    ]
                })
                .collect();
            table(
                &mut body,
                &[
                    "port",
                    "requests",
                    "per s",
                    "p50 (µs)",
                    "p95 (µs)",
                    "p99 (µs)",
                    "p99.9 (µs)",
                    "max (µs)",
                ],
                &rows,
            );
            body.push_str(&embed(dir, "latency.svg").unwrap_or_default());
        }
        None => not_captured(&mut body, "--sock"),
    }
    body.push_str("</section>");

    body.push_str("<section id=\"alloc\"><h2>Allocations</h2>");
    match summary.get("alloc") {
        Some(alloc) => {
            let _ = write!(
                body,
                "<p>Allocator {} ({}); {} live bytes in {} allocations{}.</p>",
                num(alloc, &["allocator", "name"]),
                num(alloc, &["allocator", "path"]),
                num(alloc, &["leaks", "live_bytes"]),
                num(alloc, &["leaks", "live_count"]),
                if alloc["leaks"]["estimate"].as_bool() == Some(true) {
                    " (estimated from a sample)"
                } else {
                    ""
                }
            );
            let _ = write!(
                body,
                "<p>{} allocator calls, {} tracked, {} freed; {} frees of blocks allocated \
                 before the attach; {} calls from inside the allocator.</p>",
                num(alloc, &["calls"]),
                num(alloc, &["tracked"]),
                num(alloc, &["frees"]),
                num(alloc, &["unknown_frees"]),
                num(alloc, &["nested"]),
            );
            let rows: Vec<Vec<String>> = alloc["leaks"]["suspects"]
                .as_array()
                .into_iter()
                .flatten()
                .take(10)
                .map(|s| {
                    vec![
                        num(s, &["growth_bytes_per_min"]),
                        num(s, &["live_bytes"]),
                        num(s, &["live_count"]),
                        num(s, &["oldest_age_secs"]),
                        frames(&s["frames"]),
                    ]
                })
                .collect();
            body.push_str("<h3>Leak suspects</h3>");
            table(
                &mut body,
                &[
                    "growth (B/min)",
                    "live bytes",
                    "live",
                    "oldest (s)",
                    "stack",
                ],
                &rows,
            );
            body.push_str("<h3>Memory</h3>");
            let _ = write!(
                body,
                "<p>RSS {} KiB → {} KiB ({}%).</p>",
                num(alloc, &["leaks", "memory", "rss_baseline_kb"]),
                num(alloc, &["leaks", "memory", "rss_end_kb"]),
                num(alloc, &["leaks", "memory", "rss_growth_percent"])
            );
            body.push_str(&memory_chart(dir).unwrap_or_default());
            body.push_str(&embed(dir, "alloc.svg").unwrap_or_default());
        }
        None => not_captured(&mut body, "--alloc"),
    }
    body.push_str("</section>");

    body.push_str("<section id=\"drops\"><h2>Dropped events</h2>");
    let rows: Vec<Vec<String>> = summary
        .get("dropped")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| vec![escape(k), v.to_string()])
        .collect();
    table(&mut body, &["counter", "count"], &rows);
    body.push_str("</section>");

    let nav: String = SECTIONS
        .iter()
        .map(|(id, name)| format!("<a href=\"#{id}\">{name}</a>"))
        .collect::<Vec<_>>()
        .join(" · ");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>profiler: {title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px; color: #222; }}
nav {{ position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid #ddd; }}
section {{ margin: 24px 0; }} h2 {{ border-bottom: 2px solid #c0392b; padding-bottom: 4px; }}
table {{ border-collapse: collapse; margin: 8px 0; }} th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f5f5f5; }} td {{ font-family: ui-monospace, monospace; font-size: 12px; }}
iframe.graph {{ width: 100%; border: 1px solid #ddd; }} .none {{ color: #888; }} .note {{ background: #fff8e1; padding: 4px 8px; }}
</style></head>
<body><h1>profiler: {title}</h1><nav>{nav}</nav>
{body}
</body></html>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_present_and_text_escaped() {
        let dir = std::env::temp_dir().join(format!("profiler-html-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("cpu.svg"),
            "<svg width=\"1200\" height=\"382\"><script>var x = \"a\" < 1;</script></svg>",
        )
        .unwrap();
        fs::write(
            dir.join("memory_samples.csv"),
            "elapsed_s,rss_kb,pss_kb,anon_kb\n0.0,1024,900,10\n5.0,2048,1900,20\n",
        )
        .unwrap();
        let summary = serde_json::json!({
            "target": {"comm": "pool<1>", "pid": 7, "cmdline": "pool --x"},
            "cpu": {"samples": 10, "frequency_hz": 99, "top_self": [{"function": "hot_leaf", "weight": 9, "share": 0.9}]},
            "alloc": {"allocator": {"name": "glibc", "path": "/lib/libc.so.6"},
                      "calls": 500, "tracked": 400, "frees": 300, "unknown_frees": 20, "nested": 100,
                      "leaks": {"live_bytes": 64, "live_count": 1, "estimate": false, "suspects": [],
                                "memory": {"rss_baseline_kb": 1024, "rss_end_kb": 2048, "rss_growth_percent": 100.0}}},
            "dropped": {"user_stacks_full": 0}
        });
        let html = render_value(&dir, &summary);
        for (id, _) in SECTIONS {
            assert!(
                html.contains(&format!("<section id=\"{id}\">")),
                "{id} missing"
            );
        }
        assert!(html.contains("pool&lt;1&gt; (pid 7)"));
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD
            .encode("<svg width=\"1200\" height=\"382\"><script>var x = \"a\" < 1;</script></svg>");
        assert!(html.contains(&format!(
            "style=\"height:390px\" src=\"data:image/svg+xml;base64,{encoded}\""
        )));
        assert!(html.contains("hot_leaf"));
        assert!(html.contains(
            "500 allocator calls, 400 tracked, 300 freed; 20 frees of blocks allocated before \
             the attach; 100 calls from inside the allocator."
        ));
        assert!(html.contains("<polyline"), "RSS chart drawn");
        assert!(html.contains("enable with <code>--offcpu</code>"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "self-contained"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
