//! The decision log: one record per guard decision — which model and
//! version, which guard and version, request or response, what it decided,
//! how long it took. Never the payload, and never a denial's reason (a
//! guard may quote the data it refused).
//!
//! Each decision is emitted as a `tracing` event on the target
//! `airlock::decision` (JSON lines on Lambda, where CloudWatch keeps them)
//! and kept in a bounded in-memory ring that the admin API serves at
//! `GET /v2/repository/decisions`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many decisions the in-memory ring keeps.
pub const RING_CAPACITY: usize = 4096;

/// Where in a request a guard ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Before the model, on the request.
    Request,
    /// After the model, on its response.
    Response,
}

impl Stage {
    /// `"request"` or `"response"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Request => "request",
            Stage::Response => "response",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a guard decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Let it through unchanged.
    Allow,
    /// Refused it.
    Deny,
    /// Replaced it.
    Rewrite,
    /// Gave no usable decision (trapped, ran out of time or memory, rewrote
    /// into another structure) or was not loaded: the request failed closed.
    Error,
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Allow,
        Outcome::Deny,
        Outcome::Rewrite,
        Outcome::Error,
    ];

    /// `"allow"`, `"deny"`, `"rewrite"` or `"error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Rewrite => "rewrite",
            Outcome::Error => "error",
        }
    }
}

/// One guard decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The guarded model.
    pub model: String,
    /// Its version.
    pub version: String,
    /// The guard.
    pub guard: String,
    /// The guard's version (empty when it was not loaded).
    pub guard_version: String,
    /// Request or response.
    pub stage: Stage,
    /// What it decided.
    pub decision: Outcome,
    /// Time in the guard, sandbox included, in microseconds.
    pub micros: u64,
}

/// The log: a tracing event per decision, and the most recent ones in memory.
#[derive(Debug)]
pub struct DecisionLog {
    recent: Mutex<VecDeque<Decision>>,
    capacity: usize,
}

impl Default for DecisionLog {
    fn default() -> Self {
        Self::with_capacity(RING_CAPACITY)
    }
}

impl DecisionLog {
    /// A log keeping the last `capacity` decisions in memory.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(capacity.min(RING_CAPACITY))),
            capacity,
        }
    }

    /// Records a decision taken `elapsed` ago by `guard` (at `guard_version`)
    /// on `model` (at `version`).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        model: &str,
        version: &str,
        guard: &str,
        guard_version: &str,
        stage: Stage,
        decision: Outcome,
        elapsed: Duration,
    ) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        tracing::info!(
            target: "airlock::decision",
            model,
            version,
            guard,
            guard_version,
            stage = stage.as_str(),
            decision = decision.as_str(),
            micros,
            "guard decision"
        );
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let entry = Decision {
            unix_ms,
            model: model.to_owned(),
            version: version.to_owned(),
            guard: guard.to_owned(),
            guard_version: guard_version.to_owned(),
            stage,
            decision,
            micros,
        };
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        if self.capacity > 0 {
            recent.push_back(entry);
        }
    }

    /// The most recent decisions, at most `limit`, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Decision> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let skip = recent.len().saturating_sub(limit);
        recent.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_most_recent() {
        let log = DecisionLog::with_capacity(3);
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            log.record(
                "m",
                "1",
                &format!("g{i}"),
                "1",
                Stage::Request,
                *outcome,
                Duration::from_micros(i as u64),
            );
        }
        let all = log.recent(10);
        let guards: Vec<_> = all.iter().map(|d| d.guard.as_str()).collect();
        assert_eq!(guards, ["g1", "g2", "g3"], "oldest dropped first");
        assert_eq!(all[2].decision, Outcome::Error);
        assert_eq!(all[2].micros, 3);
        assert_eq!(log.recent(1)[0].guard, "g3");
        let json = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(json["stage"], "request");
        assert_eq!(json["decision"], "deny");
    }
}
