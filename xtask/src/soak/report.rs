//! The soak's figures (start vs end of the mixed load, the memory phase),
//! its pass/fail checks, and `target/soak/soak.json` + `soak.md`.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::kinds::Kind;
use super::memory::Memory;
use super::mixed::{Mixed, Sample};
use super::sample::{ProcStats, quantile};

/// Slack on open fds between start and end (pooled connections come and go).
const FD_SLACK: u64 = 16;
const MEMORY_GOAL_MIB: f64 = 64.0;

#[derive(Debug, Default, Serialize)]
pub struct Point {
    pub at_s: f64,
    pub agent: ProcStats,
    pub envoy: ProcStats,
    /// Decision p99 (µs) and requests per second over the window that
    /// starts (start point) or ends (end point) here.
    pub decision_p99_us: Option<f64>,
    pub decisions: f64,
    pub req_per_s: f64,
    /// The window's actual length (whole sample intervals).
    pub window_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub warmup_s: f64,
    pub window_s: f64,
    pub total_requests: u64,
    pub unexpected: u64,
    pub req_per_s: f64,
    pub start: Point,
    pub end: Point,
    pub mixed: Mixed,
    pub memory: Memory,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(mixed: Mixed, memory: Memory) -> Self {
        let run = mixed.duration_s;
        let (warmup_s, window_s) = ((run * 0.1).min(20.0), (run * 0.2).min(60.0));
        let s = &mixed.samples;
        let first = s.iter().position(|x| x.at_s >= warmup_s).unwrap_or(0);
        let first_end = s
            .iter()
            .position(|x| x.at_s >= s[first].at_s + window_s)
            .unwrap_or(s.len() - 1);
        let last = s.len() - 1;
        let last_start = s
            .iter()
            .rposition(|x| x.at_s <= s[last].at_s - window_s)
            .unwrap_or(0);
        let total_requests = mixed.requests.values().map(|k| k.sent).sum();
        let mut report = Self {
            warmup_s,
            window_s,
            total_requests,
            unexpected: mixed.requests.values().map(|k| k.unexpected).sum(),
            req_per_s: total_requests as f64 / s[last].at_s.max(1e-9),
            start: point(&s[first], &s[first], &s[first_end]),
            end: point(&s[last], &s[last_start], &s[last]),
            mixed,
            memory,
            checks: Vec::new(),
        };
        report.checks = report.checks();
        report
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn checks(&self) -> Vec<Check> {
        let check = |name: &str, ok: bool, detail: String| Check {
            name: name.into(),
            ok,
            detail,
        };
        let (a0, a1) = (self.start.agent, self.end.agent);
        let (e0, e1) = (self.start.envoy, self.end.envoy);
        let rss_limit = a0.rss_mib() * 1.25 + 4.0;
        let sent = |k: Kind| self.mixed.requests.get(&k).map_or(0.0, |t| t.sent as f64);
        let expected: BTreeMap<&str, f64> = [
            ("invalid_json", sent(Kind::InvalidJson)),
            ("unknown_model", sent(Kind::UnknownModel)),
            ("missing_model", sent(Kind::MissingModel)),
        ]
        .into();
        let unexplained: Vec<String> = self
            .mixed
            .agent_errors_delta
            .iter()
            .filter(|(reason, v)| expected.get(reason.as_str()).copied().unwrap_or(0.0) != **v)
            .map(|(reason, v)| {
                format!(
                    "{reason} +{v} (expected +{})",
                    expected.get(reason.as_str()).copied().unwrap_or(0.0)
                )
            })
            .collect();
        let m = &self.memory;
        vec![
            check(
                "0 unexpected errors",
                self.unexpected == 0,
                format!("{} of {}", self.unexpected, self.total_requests),
            ),
            check(
                "agent error counters match the bad input sent",
                unexplained.is_empty(),
                if unexplained.is_empty() {
                    "yes".into()
                } else {
                    unexplained.join(", ")
                },
            ),
            check(
                "in-flight back to 0 on every pod",
                self.mixed.in_flight_after.is_empty() && self.mixed.pods > 0,
                format!(
                    "{} pods, busy: {:?}",
                    self.mixed.pods, self.mixed.in_flight_after
                ),
            ),
            check(
                "agent fds flat",
                a1.fds <= a0.fds + FD_SLACK,
                format!("{} → {} (slack {FD_SLACK})", a0.fds, a1.fds),
            ),
            check(
                "Envoy fds flat",
                e1.fds <= e0.fds + FD_SLACK,
                format!("{} → {} (slack {FD_SLACK})", e0.fds, e1.fds),
            ),
            check(
                "agent RSS flat",
                a1.rss_mib() <= rss_limit,
                format!(
                    "{:.1} → {:.1} MiB (limit start × 1.25 + 4 = {rss_limit:.1})",
                    a0.rss_mib(),
                    a1.rss_mib()
                ),
            ),
            check(
                "1,000 pods + 1M blocks ≤ 64 MiB",
                m.after.rss_mib() <= MEMORY_GOAL_MIB
                    && m.pods_ready == m.pods as f64
                    && m.blocks_recorded >= super::memory::TARGET_BLOCKS as f64,
                format!(
                    "VmRSS {:.1} MiB, {} pods ready, {} blocks",
                    m.after.rss_mib(),
                    m.pods_ready,
                    m.blocks_recorded
                ),
            ),
        ]
    }

    /// Writes `target/soak/soak.json` and `soak.md`, prints the markdown.
    pub fn write(&self) -> Result<()> {
        let dir = crate::root().join("target/soak");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(self)?)?;
        let md = super::markdown::render(self);
        std::fs::write(dir.join("soak.md"), &md)?;
        println!("{md}");
        println!("written: {}/soak.json, soak.md", dir.display());
        Ok(())
    }
}

/// The figures at `at`, with the window `from`..`to` for p99 and req/s.
fn point(at: &Sample, from: &Sample, to: &Sample) -> Point {
    let seconds = (to.at_s - from.at_s).max(1e-9);
    Point {
        at_s: at.at_s,
        agent: at.agent,
        envoy: at.envoy,
        decision_p99_us: quantile(&from.decision, &to.decision, 0.99).map(|s| s * 1e6),
        decisions: to.decisions - from.decisions,
        req_per_s: (to.done - from.done) as f64 / seconds,
        window_s: seconds,
    }
}
