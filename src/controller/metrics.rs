//! The controller's counters, rendered as Prometheus text on `/metrics`. Passed around in the
//! application state; no global registry.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges of one controller process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Addresses allocated (instance creation and added addresses).
    pub allocations: AtomicU64,
    /// Allocation attempts that collided in the database and were chosen again.
    pub conflicts_retried: AtomicU64,
    /// Watch requests waiting right now.
    pub watch_clients: AtomicU64,
    /// Watch requests answered.
    pub watch_responses: AtomicU64,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
    /// Requests answered 503 because the database was unavailable.
    pub database_unavailable: AtomicU64,
    /// Watches refused because `max_watches` were waiting.
    pub watches_refused: AtomicU64,
    /// Rows a choice in a dense range read (random draws looked up, block counts and the used
    /// values of one block).
    pub allocation_rows_read: AtomicU64,
    /// Watch answers built (read and encoded).
    pub answers_built: AtomicU64,
    /// Watch answers sent as another watcher of the same key built them.
    pub answers_shared: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, &AtomicU64); 10] = [
            (
                "flat6_controller_allocations_total",
                "counter",
                "Addresses allocated.",
                &self.allocations,
            ),
            (
                "flat6_controller_allocation_conflicts_retried_total",
                "counter",
                "Allocation collisions chosen again.",
                &self.conflicts_retried,
            ),
            (
                "flat6_controller_watch_clients",
                "gauge",
                "Watch requests waiting now.",
                &self.watch_clients,
            ),
            (
                "flat6_controller_watch_responses_total",
                "counter",
                "Watch requests answered.",
                &self.watch_responses,
            ),
            (
                "flat6_controller_unauthorized_total",
                "counter",
                "Requests refused for a missing or wrong token.",
                &self.unauthorized,
            ),
            (
                "flat6_controller_database_unavailable_total",
                "counter",
                "Requests answered 503: database unavailable.",
                &self.database_unavailable,
            ),
            (
                "flat6_controller_watches_refused_total",
                "counter",
                "Watches answered 503: max_watches were waiting.",
                &self.watches_refused,
            ),
            (
                "flat6_controller_allocation_rows_read_total",
                "counter",
                "Rows read to choose in dense ranges (lookups, block counts, one block).",
                &self.allocation_rows_read,
            ),
            (
                "flat6_controller_watch_answers_built_total",
                "counter",
                "Watch answers read and encoded.",
                &self.answers_built,
            ),
            (
                "flat6_controller_watch_answers_shared_total",
                "counter",
                "Watch answers sent as built for another watcher of the same key.",
                &self.answers_shared,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let m = Metrics::default();
        m.allocations.fetch_add(3, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE flat6_controller_allocations_total counter\nflat6_controller_allocations_total 3\n"));
        assert_eq!(text.lines().filter(|l| l.starts_with("# HELP")).count(), 10);
    }
}
