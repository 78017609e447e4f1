//! Per-model request metrics, exposed in the Prometheus text format at
//! `GET /metrics`.
//!
//! Label values need no escaping: model names are checked against a safe
//! alphabet at upload, and versions are numbers the server assigns.
//!
//! Each loaded model version carries its own counters (atomics: nothing is
//! locked on the request path), so a version's series live exactly as long
//! as the version is served.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::decisions::{Outcome, Stage};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// The statuses counted one by one; anything else is counted as `other`.
const STATUSES: [u16; 12] = [200, 400, 401, 403, 413, 415, 500, 502, 503, 504, 507, 429];

/// Sandbox failure kinds, as in the `x-airlock-error` header.
const FAILURES: [&str; 9] = [
    "trap",
    "deadline",
    "memory",
    "output",
    "capacity",
    "busy",
    "model-error",
    "denied",
    "guard",
];

/// The counters of one model version.
#[derive(Debug, Default)]
pub struct ModelStats {
    by_status: [AtomicU64; STATUSES.len() + 1],
    failures: [AtomicU64; FAILURES.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Guard decisions: count and total microseconds, by guard, stage and
    /// decision. A lock, not atomics: the set of guards is open, and a
    /// guard call costs tens of microseconds beside it.
    guards: Mutex<GuardCounts>,
}

/// Per (guard, stage, decision): how many, and their total microseconds.
type GuardCounts = BTreeMap<(String, Stage, Outcome), (u64, u64)>;

impl ModelStats {
    /// Records one inference request: its status, its failure kind (the
    /// `x-airlock-error` value, if any) and how long it took.
    pub fn record(&self, status: u16, failure: Option<&str>, elapsed: Duration) {
        let slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.by_status[slot].fetch_add(1, Ordering::Relaxed);
        if let Some(i) = failure.and_then(|f| FAILURES.iter().position(|k| *k == f)) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl ModelStats {
    /// Records one decision of `guard` on this model version.
    pub fn record_guard(&self, guard: &str, stage: Stage, outcome: Outcome, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut guards = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        let slot = guards
            .entry((guard.to_owned(), stage, outcome))
            .or_default();
        slot.0 += 1;
        slot.1 = slot.1.saturating_add(micros);
    }
}

/// Renders the metrics of `models` (name, version, stats) as Prometheus text.
pub fn render<'a>(models: impl Iterator<Item = (&'a str, &'a str, &'a ModelStats)>) -> String {
    let models: Vec<_> = models.collect();
    let mut out = String::new();
    out.push_str("# HELP airlock_models_served Model versions being served.\n");
    out.push_str("# TYPE airlock_models_served gauge\n");
    let _ = writeln!(out, "airlock_models_served {}", models.len());

    out.push_str(
        "# HELP airlock_requests_total Inference requests, by model, version and HTTP status.\n",
    );
    out.push_str("# TYPE airlock_requests_total counter\n");
    for (model, version, stats) in &models {
        for (i, counter) in stats.by_status.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let status = STATUSES
                .get(i)
                .map_or_else(|| "other".to_owned(), u16::to_string);
            let _ = writeln!(
                out,
                "airlock_requests_total{{model=\"{model}\",version=\"{version}\",status=\"{status}\"}} {n}"
            );
        }
    }

    out.push_str(
        "# HELP airlock_failures_total Requests the sandbox or the model failed, by kind.\n",
    );
    out.push_str("# TYPE airlock_failures_total counter\n");
    for (model, version, stats) in &models {
        for (kind, counter) in FAILURES.iter().zip(&stats.failures) {
            let _ = writeln!(
                out,
                "airlock_failures_total{{model=\"{model}\",version=\"{version}\",kind=\"{kind}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }

    out.push_str("# HELP airlock_request_duration_seconds Inference request latency, from routing to the response body.\n");
    out.push_str("# TYPE airlock_request_duration_seconds histogram\n");
    for (model, version, stats) in &models {
        let labels = format!("model=\"{model}\",version=\"{version}\"");
        let mut cumulative = 0;
        for (bound, counter) in BUCKETS.iter().zip(&stats.buckets) {
            cumulative += counter.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "airlock_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = stats.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "airlock_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let sum = stats.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "airlock_request_duration_seconds_sum{{{labels}}} {sum}"
        );
        let _ = writeln!(
            out,
            "airlock_request_duration_seconds_count{{{labels}}} {count}"
        );
    }

    out.push_str("# HELP airlock_guard_decisions_total Guard decisions, by model, version, guard, stage and decision.\n");
    out.push_str("# TYPE airlock_guard_decisions_total counter\n");
    let guards: Vec<_> = models
        .iter()
        .map(|(model, version, stats)| {
            let guards = stats.guards.lock().unwrap_or_else(|p| p.into_inner());
            (*model, *version, guards.clone())
        })
        .collect();
    for (model, version, guards) in &guards {
        for ((guard, stage, outcome), (n, _)) in guards {
            let _ = writeln!(
                out,
                "airlock_guard_decisions_total{{model=\"{model}\",version=\"{version}\",guard=\"{guard}\",stage=\"{}\",decision=\"{}\"}} {n}",
                stage.as_str(),
                outcome.as_str()
            );
        }
    }
    out.push_str("# HELP airlock_guard_duration_seconds Time in guards, sandbox included.\n");
    out.push_str("# TYPE airlock_guard_duration_seconds summary\n");
    for (model, version, guards) in &guards {
        let mut totals: BTreeMap<(&str, Stage), (u64, u64)> = BTreeMap::new();
        for ((guard, stage, _), (n, micros)) in guards {
            let total = totals.entry((guard.as_str(), *stage)).or_default();
            total.0 += n;
            total.1 = total.1.saturating_add(*micros);
        }
        for ((guard, stage), (n, micros)) in totals {
            let labels = format!(
                "model=\"{model}\",version=\"{version}\",guard=\"{guard}\",stage=\"{}\"",
                stage.as_str()
            );
            let _ = writeln!(
                out,
                "airlock_guard_duration_seconds_sum{{{labels}}} {}",
                micros as f64 / 1e6
            );
            let _ = writeln!(out, "airlock_guard_duration_seconds_count{{{labels}}} {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_buckets_add_up() {
        let stats = ModelStats::default();
        stats.record(200, None, Duration::from_micros(300));
        stats.record(200, None, Duration::from_millis(3));
        stats.record(504, Some("deadline"), Duration::from_secs(3));
        stats.record(418, None, Duration::from_micros(50));
        let text = render([("m", "1", &stats)].into_iter());
        assert!(
            text.contains("airlock_requests_total{model=\"m\",version=\"1\",status=\"200\"} 2")
        );
        assert!(text.contains("status=\"504\"} 1"));
        assert!(text.contains("status=\"other\"} 1"));
        assert!(text.contains("kind=\"deadline\"} 1"));
        assert!(text.contains("kind=\"trap\"} 0"));
        assert!(text.contains("le=\"0.0001\"} 1"));
        assert!(text.contains("le=\"0.0005\"} 2"));
        assert!(text.contains("le=\"0.005\"} 3"));
        assert!(text.contains("le=\"2.5\"} 3"));
        assert!(text.contains("le=\"+Inf\"} 4"));
        assert!(
            text.contains("airlock_request_duration_seconds_count{model=\"m\",version=\"1\"} 4")
        );
    }

    #[test]
    fn guard_decisions_are_counted_and_timed() {
        let stats = ModelStats::default();
        let ms = Duration::from_millis(1);
        stats.record_guard("pii", Stage::Request, Outcome::Rewrite, ms);
        stats.record_guard("pii", Stage::Request, Outcome::Rewrite, ms);
        stats.record_guard("pii", Stage::Request, Outcome::Allow, ms);
        stats.record_guard("range", Stage::Response, Outcome::Deny, 2 * ms);
        let text = render([("m", "1", &stats)].into_iter());
        let labels = "model=\"m\",version=\"1\"";
        assert!(text.contains(&format!(
            "airlock_guard_decisions_total{{{labels},guard=\"pii\",stage=\"request\",decision=\"rewrite\"}} 2"
        )));
        assert!(text.contains(&format!(
            "airlock_guard_decisions_total{{{labels},guard=\"range\",stage=\"response\",decision=\"deny\"}} 1"
        )));
        assert!(text.contains(&format!(
            "airlock_guard_duration_seconds_count{{{labels},guard=\"pii\",stage=\"request\"}} 3"
        )));
        assert!(text.contains(&format!(
            "airlock_guard_duration_seconds_sum{{{labels},guard=\"range\",stage=\"response\"}} 0.002"
        )));
    }
}
