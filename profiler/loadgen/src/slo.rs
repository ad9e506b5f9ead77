//! Latency objectives: `--slo p99=5ms` makes the run fail when the bound is missed.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use super::report::Percentiles;

/// Which latency figure an objective bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SloMetric {
    P50,
    P90,
    P95,
    P99,
    P999,
    Max,
    Mean,
}

impl SloMetric {
    fn name(self) -> &'static str {
        match self {
            Self::P50 => "p50",
            Self::P90 => "p90",
            Self::P95 => "p95",
            Self::P99 => "p99",
            Self::P999 => "p99.9",
            Self::Max => "max",
            Self::Mean => "mean",
        }
    }

    /// The figure from a report's reply latency, in microseconds.
    pub fn of(self, latency: &Percentiles) -> u64 {
        match self {
            Self::P50 => latency.p50,
            Self::P90 => latency.p90,
            Self::P95 => latency.p95,
            Self::P99 => latency.p99,
            Self::P999 => latency.p999,
            Self::Max => latency.max,
            Self::Mean => latency.mean.round() as u64,
        }
    }
}

/// One objective: `metric <= bound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slo {
    pub metric: SloMetric,
    pub bound: Duration,
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}<={}",
            self.metric.name(),
            humantime::format_duration(self.bound)
        )
    }
}

impl FromStr for Slo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "use METRIC=DURATION, e.g. p99=5ms (metrics: p50 p90 p95 p99 p99.9 max mean)";
        let (metric, bound) = s
            .split_once('=')
            .ok_or_else(|| format!("bad SLO {s:?}: {usage}"))?;
        let metric = match metric.trim().to_ascii_lowercase().as_str() {
            "p50" | "median" => SloMetric::P50,
            "p90" => SloMetric::P90,
            "p95" => SloMetric::P95,
            "p99" => SloMetric::P99,
            "p99.9" | "p999" => SloMetric::P999,
            "max" => SloMetric::Max,
            "mean" => SloMetric::Mean,
            other => return Err(format!("unknown SLO metric {other:?}: {usage}")),
        };
        let bound = humantime::parse_duration(bound.trim())
            .map_err(|err| format!("bad SLO bound {bound:?} ({err}): {usage}"))?;
        Ok(Self { metric, bound })
    }
}

/// How one objective fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SloResult {
    /// As given, e.g. `p99<=5ms`.
    pub objective: String,
    pub metric: SloMetric,
    pub bound_us: u64,
    /// `None` when there was no reply to measure: that counts as a miss.
    pub actual_us: Option<u64>,
    pub passed: bool,
}

/// Checks each objective against the reply latency (`None`: no replies).
pub fn evaluate(slos: &[Slo], latency: Option<&Percentiles>) -> Vec<SloResult> {
    slos.iter()
        .map(|slo| {
            let bound_us = u64::try_from(slo.bound.as_micros()).unwrap_or(u64::MAX);
            let actual_us = latency.map(|l| slo.metric.of(l));
            SloResult {
                objective: slo.to_string(),
                metric: slo.metric,
                bound_us,
                actual_us,
                passed: actual_us.is_some_and(|a| a <= bound_us),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(p99: u64) -> Percentiles {
        Percentiles {
            count: 100,
            min: 1,
            p50: 10,
            p90: 20,
            p95: 30,
            p99,
            p999: p99,
            max: p99,
            mean: 12.4,
        }
    }

    #[test]
    fn parses_objectives() {
        let slo: Slo = "p99=5ms".parse().unwrap();
        assert_eq!(slo.metric, SloMetric::P99);
        assert_eq!(slo.bound, Duration::from_millis(5));
        assert_eq!(slo.to_string(), "p99<=5ms");
        assert_eq!("P99.9=1s".parse::<Slo>().unwrap().metric, SloMetric::P999);
        assert_eq!(
            "mean = 250us".parse::<Slo>().unwrap().bound,
            Duration::from_micros(250)
        );
        for bad in ["p99", "p98=5ms", "p99=fast", "=5ms"] {
            assert!(bad.parse::<Slo>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bound_passes_when_met_and_fails_when_missed() {
        let slos = ["p99=5ms".parse().unwrap(), "mean=12us".parse().unwrap()];
        let met = evaluate(&slos, Some(&latency(5000)));
        assert!(met[0].passed, "equal to the bound is within it");
        assert!(met[1].passed, "12.4 rounds to 12");
        let missed = evaluate(&slos, Some(&latency(5001)));
        assert!(!missed[0].passed);
        assert_eq!(missed[0].actual_us, Some(5001));
        let nothing = evaluate(&slos, None);
        assert!(nothing.iter().all(|r| !r.passed && r.actual_us.is_none()));
    }
}
