//! The `sock` family's reports: per-port percentiles (`latency.txt`, `latency.json`, the
//! summary's `sock` section), the HdrHistogram percentile distribution (`latency.hgrm`), a
//! percentile-spectrum plot (`latency.svg`) and per-interval percentiles
//! (`latency_timeseries.csv`).

use std::{collections::BTreeMap, fmt::Write as _, io};

use profiler_common::hist::slot_mid;
use serde::{Deserialize, Serialize};

use super::hist::Merged;

/// What the kernel counted for one port, so far.
#[derive(Debug, Clone, Default)]
pub struct PortData {
    pub port: u16,
    pub socket_to_reply: Merged,
    pub service: Merged,
    pub new_connection: Merged,
    pub first_request: Merged,
    pub pushes: u64,
    pub unseen: u64,
    /// The first and last reply on the port (ns, monotonic), when there was one.
    pub replies_between: Option<(u64, u64)>,
}

/// One distribution, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub rate_per_s: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(hist: &Merged, duration_secs: f64) -> Self {
        let count = hist.count();
        let us = |q: f64| hist.quantile(q) as f64 / 1000.0;
        let sum: f64 = hist
            .slots
            .iter()
            .enumerate()
            .map(|(slot, &n)| n as f64 * slot_mid(slot) as f64)
            .sum();
        Self {
            count,
            rate_per_s: count as f64 / duration_secs.max(1e-9),
            mean_us: if count == 0 {
                0.0
            } else {
                sum / count as f64 / 1000.0
            },
            p50_us: us(0.5),
            p90_us: us(0.9),
            p95_us: us(0.95),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: us(1.0),
        }
    }
}

/// One listening port of the target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PortLatency {
    pub port: u16,
    /// Requests replied to: the steady state (each has a service time) and the first requests
    /// of connections accepted during the capture.
    pub requests: u64,
    /// Writes with no request pending (server pushes), not paired with anything.
    pub pushes: u64,
    /// Requests whose bytes were queued before their socket was known (usually only right
    /// after attaching): they have a service time but no socket-to-reply time.
    pub unseen: u64,
    /// Connections accepted during the capture and read by the target.
    pub connections: u64,
    /// Bytes queued on the socket → first byte of the reply written, for every request but a
    /// new connection's first.
    pub socket_to_reply: Percentiles,
    /// First read of the request → first byte of the reply written, for the same requests.
    pub service: Percentiles,
    /// Handshake complete → the target's first read or write of the connection.
    pub new_connection: Percentiles,
    /// Socket-to-reply of each new connection's first request (login, subscribe, TLS), kept
    /// apart because it is connection setup, not the steady state.
    #[serde(default)]
    pub first_request: Percentiles,
    /// Seconds over which replies went out: from the first reply to the last, plus one mean
    /// gap (so `requests / served_secs` is the rate while serving). The capture's length when
    /// fewer than two replies were seen. Reply rates are over this span, not the capture.
    #[serde(default)]
    pub served_secs: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyReport {
    pub duration_secs: f64,
    /// Busiest port first.
    pub ports: Vec<PortLatency>,
    /// Listening ports beyond what the kernel side tracks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untracked_ports: Vec<u16>,
}

impl LatencyReport {
    pub fn new(data: &[PortData], duration_secs: f64, untracked_ports: Vec<u16>) -> Self {
        let mut ports: Vec<PortLatency> = data
            .iter()
            .map(|p| {
                let requests = p.service.count() + p.first_request.count();
                let served = served_secs(p.replies_between, requests, duration_secs);
                PortLatency {
                    port: p.port,
                    requests,
                    pushes: p.pushes,
                    unseen: p.unseen,
                    connections: p.new_connection.count(),
                    socket_to_reply: Percentiles::of(&p.socket_to_reply, served),
                    service: Percentiles::of(&p.service, served),
                    new_connection: Percentiles::of(&p.new_connection, duration_secs),
                    first_request: Percentiles::of(&p.first_request, served),
                    served_secs: served,
                }
            })
            .collect();
        ports.sort_by_key(|p| (std::cmp::Reverse(p.requests), p.port));
        Self {
            duration_secs,
            ports,
            untracked_ports,
        }
    }
}

/// The span replies went out over: first to last reply plus one mean gap between them, so that
/// `requests / span` is the serving rate; the capture's length with fewer than two replies.
pub fn served_secs(between: Option<(u64, u64)>, requests: u64, capture_secs: f64) -> f64 {
    match between {
        Some((first, last)) if requests >= 2 && last > first => {
            let span = (last - first) as f64 / 1e9;
            span * requests as f64 / (requests - 1) as f64
        }
        _ => capture_secs,
    }
}

/// A latency for people: `412us`, `14.10ms`, `1.20s`.
pub fn duration(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.0}us")
    }
}

/// `latency.txt`: a wrk-style percentile table per port.
pub fn text(report: &LatencyReport) -> String {
    let mut out = String::new();
    if report.ports.is_empty() {
        out.push_str("no listening TCP port of the target was seen\n");
    }
    for p in &report.ports {
        // Older summaries have no span: the capture's length, as they were written.
        let served = if p.served_secs > 0.0 {
            p.served_secs
        } else {
            report.duration_secs
        };
        let _ = writeln!(
            out,
            "port {}: {} requests ({:.1}/s over the {:.1}s they were served, of {:.1}s), {} new \
             connections, {} pushes (not paired), {} unseen arrivals",
            p.port,
            p.requests,
            p.requests as f64 / served.max(1e-9),
            served,
            report.duration_secs,
            p.connections,
            p.pushes,
            p.unseen
        );
        let _ = writeln!(
            out,
            "  {:<8} {:>16} {:>12} {:>15} {:>14}",
            "", "socket-to-reply", "service", "new-connection", "first-request"
        );
        type Column = fn(&Percentiles) -> f64;
        let rows: [(&str, Column); 7] = [
            ("mean", |p| p.mean_us),
            ("50%", |p| p.p50_us),
            ("90%", |p| p.p90_us),
            ("95%", |p| p.p95_us),
            ("99%", |p| p.p99_us),
            ("99.9%", |p| p.p999_us),
            ("max", |p| p.max_us),
        ];
        for (label, get) in rows {
            let cell = |d: &Percentiles| {
                if d.count == 0 {
                    "-".to_string()
                } else {
                    duration(get(d))
                }
            };
            let _ = writeln!(
                out,
                "  {label:<8} {:>16} {:>12} {:>15} {:>14}",
                cell(&p.socket_to_reply),
                cell(&p.service),
                cell(&p.new_connection),
                cell(&p.first_request)
            );
        }
        let _ = writeln!(
            out,
            "  {:<8} {:>16} {:>12} {:>15} {:>14}\n",
            "count",
            p.socket_to_reply.count,
            p.service.count,
            p.new_connection.count,
            p.first_request.count
        );
    }
    if !report.untracked_ports.is_empty() {
        let _ = writeln!(
            out,
            "not tracked (more than {} listening ports): {:?}",
            profiler_common::sock::MAX_PORTS,
            report.untracked_ports
        );
    }
    out
}

/// `latency.hgrm`: HdrHistogram's percentile distribution (values in milliseconds), as
/// `HistogramLogProcessor` and the HdrHistogram plotter read it.
pub fn hgrm(hist: &Merged, out: &mut impl io::Write) -> io::Result<()> {
    let hdr = hist.to_hdr();
    const SCALE: f64 = 1e6; // ns per ms
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !hdr.is_empty() {
        for v in hdr.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if hdr.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            hdr.mean() / SCALE,
            hdr.stdev() / SCALE,
            hdr.max() as f64 / SCALE,
        )
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        hdr.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hdr.buckets(),
        hdr.distinct_values()
    )
}

/// Per-interval socket-to-reply percentiles: `latency_timeseries.csv`.
#[derive(Debug, Default)]
pub struct Timeseries {
    rows: Vec<(f64, u16, u64, f64, f64)>,
    previous: BTreeMap<u16, Merged>,
}

impl Timeseries {
    /// Records what each port gained since the previous call (`at`: seconds into the capture).
    pub fn record(&mut self, at: f64, ports: &[PortData]) {
        for port in ports {
            let previous = self.previous.entry(port.port).or_default();
            let window = port.socket_to_reply.since(previous);
            let us = |q: f64| window.quantile(q) as f64 / 1000.0;
            self.rows
                .push((at, port.port, window.count(), us(0.5), us(0.99)));
            *previous = port.socket_to_reply.clone();
        }
    }

    pub fn write(&self, out: &mut impl io::Write) -> io::Result<()> {
        writeln!(out, "elapsed_s,port,count,p50_us,p99_us")?;
        for (at, port, count, p50, p99) in &self.rows {
            writeln!(out, "{at:.3},{port},{count},{p50:.1},{p99:.1}")?;
        }
        Ok(())
    }
}

/// `latency.svg`: latency by percentile, the percentile axis log-scaled as `1/(1-p)` so the
/// tail gets the room (the HdrHistogram plotter's view), one line per port and kind.
pub fn spectrum_svg(data: &[PortData], title: &str) -> String {
    const W: f64 = 900.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 200.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let series: Vec<(String, &Merged)> = data
        .iter()
        .flat_map(|p| {
            [
                (format!("{} socket-to-reply", p.port), &p.socket_to_reply),
                (format!("{} service", p.port), &p.service),
            ]
        })
        .filter(|(_, h)| h.count() > 0)
        .collect();
    // Nines shown: as many as the largest sample supports, at least two.
    let most = series.iter().map(|(_, h)| h.count()).max().unwrap_or(0);
    let nines = ((most.max(1) as f64).log10().ceil() as u32).clamp(2, 6);
    let top_ms = series
        .iter()
        .map(|(_, h)| h.quantile(1.0) as f64 / 1e6)
        .fold(0.0f64, f64::max)
        .max(0.001);
    // Round ticks (1, 2 or 5 times a power of ten), at most six of them.
    let magnitude = 10f64.powf(top_ms.log10().floor());
    let step = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|f| f * magnitude)
        .find(|step| top_ms / step <= 6.0)
        .unwrap_or(magnitude * 10.0);
    let ticks = (top_ms / step).ceil().max(1.0) as u32;
    let max_ms = step * ticks as f64;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x_of = |nine: f64| LEFT + nine / nines as f64 * pw;
    let y_of = |ms: f64| TOP + ph - ms / max_ms * ph;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        W / 2.0,
        escape(title)
    );
    for n in 0..=nines {
        let x = x_of(n as f64);
        let label = match n {
            0 => "0%".to_string(),
            n => format!("{}%", 100.0 - 100.0 / 10f64.powi(n as i32)),
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    for i in 0..=ticks {
        let ms = step * i as f64;
        let y = y_of(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{ms:.decimals$} ms</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        H - 10.0
    );
    for (i, (name, hist)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = (0..=nines * 40)
            .map(|step| {
                let nine = step as f64 / 40.0;
                let q = 1.0 - 10f64.powf(-nine);
                let ms = hist.quantile(q) as f64 / 1e6;
                format!("{:.1},{:.1}", x_of(nine), y_of(ms))
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            points.join(" "),
            escape(name)
        );
        let y = TOP + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{0}" y1="{y}" x2="{1}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{2}" y="{3}">{4}</text>"#,
            LEFT + pw + 12.0,
            LEFT + pw + 32.0,
            LEFT + pw + 38.0,
            y + 4.0,
            escape(name)
        );
    }
    if series.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no requests recorded</text>"#,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use profiler_common::hist::{Hist, SLOTS, slot_of};

    use super::*;

    fn merged(values_us: &[u64]) -> Merged {
        let mut hist = Hist { slots: [0; SLOTS] };
        for &v in values_us {
            hist.slots[slot_of(v * 1000)] += 1;
        }
        let mut m = Merged::default();
        m.add(&hist);
        m
    }

    fn port(values_us: &[u64]) -> PortData {
        PortData {
            port: 3333,
            socket_to_reply: merged(values_us),
            service: merged(&values_us.iter().map(|v| v / 2).collect::<Vec<_>>()),
            new_connection: merged(&[50]),
            first_request: merged(&[300]),
            pushes: 7,
            unseen: 1,
            replies_between: None,
        }
    }

    #[test]
    fn percentiles_and_report() {
        let values: Vec<u64> = (1..=1000).collect();
        let report = LatencyReport::new(&[port(&values)], 10.0, vec![]);
        let p = &report.ports[0];
        assert_eq!(
            (p.requests, p.pushes, p.unseen, p.connections),
            (1001, 7, 1, 1)
        );
        assert_eq!(p.first_request.count, 1);
        let s2r = &p.socket_to_reply;
        assert_eq!(s2r.count, 1000);
        assert!((s2r.rate_per_s - 100.0).abs() < 1e-9);
        for (got, want) in [
            (s2r.p50_us, 500.0),
            (s2r.p99_us, 990.0),
            (s2r.mean_us, 500.5),
        ] {
            assert!((got - want).abs() / want < 0.01, "{got} vs {want}");
        }
        let text = text(&report);
        assert!(
            text.starts_with("port 3333: 1001 requests (100.1/s over the 10.0s"),
            "{text}"
        );
        assert!(text.contains("99%"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ports"][0]["socket_to_reply"]["count"], 1000);
    }

    /// 1001 replies within 2.5 s of a 25 s capture are served at 400/s, not 40/s.
    #[test]
    fn rates_are_over_the_span_requests_were_served() {
        let values: Vec<u64> = (1..=1000).collect();
        let mut data = port(&values);
        data.replies_between = Some((5_000_000_000, 7_500_000_000));
        let report = LatencyReport::new(&[data], 25.0, vec![]);
        let p = &report.ports[0];
        assert!((p.served_secs - 2.5 * 1001.0 / 1000.0).abs() < 1e-9);
        assert!((p.socket_to_reply.rate_per_s - 1000.0 / p.served_secs).abs() < 1e-9);
        let text = text(&report);
        assert!(
            text.starts_with(
                "port 3333: 1001 requests (400.0/s over the 2.5s they were served, of 25.0s)"
            ),
            "{text}"
        );
        assert_eq!(served_secs(Some((10, 10)), 1, 25.0), 25.0);
        assert_eq!(served_secs(None, 500, 25.0), 25.0);
    }

    #[test]
    fn hgrm_is_a_percentile_distribution() {
        let mut out = Vec::new();
        hgrm(&merged(&(1..=1000).collect::<Vec<_>>()), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<Vec<f64>> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.contains("Value"))
            .map(|l| l.split_whitespace().map(|c| c.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20);
        // Values (ms) and percentiles rise, the count reaches the total, the last row is 100%.
        assert!(
            rows.windows(2)
                .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1])
        );
        let last = rows.last().unwrap();
        assert_eq!((last[1], last[2]), (1.0, 1000.0));
        assert!((last[0] - 1.0).abs() < 0.01, "max {} ms", last[0]);
        assert!(text.contains("Total count    =         1000"), "{text}");
    }

    #[test]
    fn timeseries_counts_each_window_once() {
        let mut series = Timeseries::default();
        series.record(1.0, &[port(&[100; 10])]);
        let mut both = port(&[100; 10]);
        both.socket_to_reply.add_merged(&merged(&[5000; 4]));
        series.record(2.0, &[both]);
        let mut out = Vec::new();
        series.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "elapsed_s,port,count,p50_us,p99_us");
        let row =
            |i: usize| -> Vec<f64> { lines[i].split(',').map(|c| c.parse().unwrap()).collect() };
        // Each window has only its own requests: 10 of 100 µs, then 4 of 5 ms.
        let (first, second) = (row(1), row(2));
        assert_eq!(first[..3], [1.0, 3333.0, 10.0], "{text}");
        assert!((first[3] - 100.0).abs() < 1.0, "{text}");
        assert_eq!(second[..3], [2.0, 3333.0, 4.0], "{text}");
        assert!((second[4] - 5000.0).abs() < 40.0, "{text}");
    }

    #[test]
    fn spectrum_plots_every_series() {
        let svg = spectrum_svg(&[port(&(1..=100).collect::<Vec<_>>())], "latency <x>");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("3333 socket-to-reply") && svg.contains("latency &lt;x&gt;"));
        assert!(spectrum_svg(&[], "t").contains("no requests recorded"));
    }
}
