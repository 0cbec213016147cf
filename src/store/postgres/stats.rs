//! The Postgres store's counters: shared by the sidecar's writer, readers and pinger (which
//! update them) and every shard's [`super::PgStore`] (which admits writes against the queue
//! bounds and renders them for `/health` and `/metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::store::{BackendCheck, StoreError};

/// Upper bounds, in microseconds, of the commit latency histogram's buckets.
const COMMIT_US_BUCKETS: [u64; 13] =
    [250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 5_000_000];
/// Upper bounds of the rows-per-commit histogram's buckets.
const ROWS_BUCKETS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/// A Prometheus histogram with fixed buckets, updated with relaxed atomics.
struct Histogram<const N: usize> {
    bounds: [u64; N],
    counts: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [u64; N]) -> Self {
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// Renders the family; `scale` divides bounds and sum (1e6 turns microseconds into seconds).
    fn render(&self, out: &mut String, name: &str, help: &str, scale: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *b as f64 / scale);
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum.load(Relaxed) as f64 / scale);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Why a write was answered `unavailable`, for `imks_store_pg_refused_total{reason}`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// The queue was at `max_queued_writes` or `max_queued_bytes`.
    QueueFull,
    /// Not committed within `write_timeout_ms`.
    Timeout,
    /// The database refused the write itself (logged).
    Failed,
}

/// The Postgres store's shared counters.
pub struct PgStats {
    up: AtomicBool,
    /// The last ping's round trip, in microseconds; `u64::MAX` before the first.
    ping_us: AtomicU64,
    queued_writes: AtomicUsize,
    queued_bytes: AtomicUsize,
    max_writes: usize,
    max_bytes: usize,
    commits: AtomicU64,
    rows: AtomicU64,
    commit_us: Histogram<13>,
    batch_rows: Histogram<12>,
    refused_full: AtomicU64,
    refused_timeout: AtomicU64,
    refused_failed: AtomicU64,
    reconnects: AtomicU64,
    reads: AtomicU64,
    read_failures: AtomicU64,
}

impl PgStats {
    pub(super) fn new(max_writes: usize, max_bytes: usize) -> Self {
        Self {
            up: AtomicBool::new(false),
            ping_us: AtomicU64::new(u64::MAX),
            queued_writes: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_writes,
            max_bytes,
            commits: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            commit_us: Histogram::new(COMMIT_US_BUCKETS),
            batch_rows: Histogram::new(ROWS_BUCKETS),
            refused_full: AtomicU64::new(0),
            refused_timeout: AtomicU64::new(0),
            refused_failed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_failures: AtomicU64::new(0),
        }
    }

    /// Takes room for one write of `bytes` in the queue, or refuses it when the queue is at a
    /// bound. Every admitted write is [`PgStats::release`]d once answered.
    pub(super) fn admit(&self, bytes: usize) -> Result<(), StoreError> {
        let writes = self.queued_writes.fetch_add(1, Relaxed);
        let queued = self.queued_bytes.fetch_add(bytes, Relaxed);
        if writes >= self.max_writes || queued.saturating_add(bytes) > self.max_bytes {
            self.release(bytes);
            self.refused(Refusal::QueueFull);
            return Err(StoreError::Unavailable { reason: "the write queue is full".into(), retry_after_ms: 500 });
        }
        Ok(())
    }

    pub(super) fn release(&self, bytes: usize) {
        self.queued_writes.fetch_sub(1, Relaxed);
        self.queued_bytes.fetch_sub(bytes, Relaxed);
    }

    pub(super) fn refused(&self, why: Refusal) {
        let c = match why {
            Refusal::QueueFull => &self.refused_full,
            Refusal::Timeout => &self.refused_timeout,
            Refusal::Failed => &self.refused_failed,
        };
        c.fetch_add(1, Relaxed);
    }

    pub(super) fn committed(&self, rows: usize, took: std::time::Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.rows.fetch_add(rows as u64, Relaxed);
        self.commit_us.observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        self.batch_rows.observe(rows as u64);
    }

    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Relaxed);
    }

    pub(super) fn pinged(&self, us: u64) {
        self.ping_us.store(us, Relaxed);
    }

    pub(super) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub(super) fn read_done(&self, ok: bool) {
        self.reads.fetch_add(1, Relaxed);
        if !ok {
            self.read_failures.fetch_add(1, Relaxed);
        }
    }

    /// Writes waiting for their commit, node-wide.
    pub fn queued_writes(&self) -> usize {
        self.queued_writes.load(Relaxed)
    }

    pub(super) fn check(&self) -> BackendCheck {
        let us = self.ping_us.load(Relaxed);
        BackendCheck {
            name: "postgres",
            status: if self.up.load(Relaxed) { "up" } else { "down" },
            latency_ms: (us != u64::MAX).then(|| us as f64 / 1000.0),
        }
    }

    pub(super) fn render(&self, out: &mut String) {
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        one(
            "imks_store_pg_up",
            "gauge",
            "1 while the Postgres store answers its pings.",
            u8::from(self.up.load(Relaxed)).to_string(),
        );
        let us = self.ping_us.load(Relaxed);
        if us != u64::MAX {
            one("imks_store_pg_ping_seconds", "gauge", "The last ping's round trip.", (us as f64 / 1e6).to_string());
        }
        one(
            "imks_store_pg_queue_writes",
            "gauge",
            "Writes waiting for their commit.",
            self.queued_writes.load(Relaxed).to_string(),
        );
        one(
            "imks_store_pg_queue_bytes",
            "gauge",
            "Bytes of writes waiting for their commit.",
            self.queued_bytes.load(Relaxed).to_string(),
        );
        one(
            "imks_store_pg_commits_total",
            "counter",
            "Transactions the writer committed.",
            self.commits.load(Relaxed).to_string(),
        );
        one(
            "imks_store_pg_rows_total",
            "counter",
            "Writes committed (messages, edits, reactions, marks).",
            self.rows.load(Relaxed).to_string(),
        );
        one(
            "imks_store_pg_reconnects_total",
            "counter",
            "Connections the writer opened after losing one.",
            self.reconnects.load(Relaxed).to_string(),
        );
        one(
            "imks_store_pg_reads_total",
            "counter",
            "Reads (history, offline queue, single messages).",
            self.reads.load(Relaxed).to_string(),
        );
        one(
            "imks_store_pg_read_failures_total",
            "counter",
            "Reads answered unavailable.",
            self.read_failures.load(Relaxed).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP imks_store_pg_refused_total Writes answered unavailable, by reason.\n# TYPE imks_store_pg_refused_total counter"
        );
        for (reason, c) in
            [("queue_full", &self.refused_full), ("timeout", &self.refused_timeout), ("failed", &self.refused_failed)]
        {
            let _ = writeln!(out, "imks_store_pg_refused_total{{reason=\"{reason}\"}} {}", c.load(Relaxed));
        }
        self.commit_us.render(
            out,
            "imks_store_pg_commit_seconds",
            "How long each commit took, statements included.",
            1e6,
        );
        self.batch_rows.render(out, "imks_store_pg_batch_rows", "Writes per commit.", 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_each_bound_and_releases() {
        let s = PgStats::new(2, 100);
        assert!(s.admit(10).is_ok());
        assert!(s.admit(10).is_ok());
        assert!(matches!(s.admit(1), Err(StoreError::Unavailable { .. })), "count bound");
        s.release(10);
        assert!(s.admit(91).is_err(), "byte bound");
        assert!(s.admit(90).is_ok());
        assert_eq!(s.queued_writes(), 2);
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("imks_store_pg_refused_total{reason=\"queue_full\"} 2"), "{out}");
    }

    #[test]
    fn histograms_are_cumulative() {
        let s = PgStats::new(1, 1);
        s.committed(3, std::time::Duration::from_micros(4_000));
        s.committed(700, std::time::Duration::from_micros(300_000));
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("imks_store_pg_batch_rows_bucket{le=\"5\"} 1"), "{out}");
        assert!(out.contains("imks_store_pg_batch_rows_bucket{le=\"1000\"} 2"), "{out}");
        assert!(out.contains("imks_store_pg_commit_seconds_bucket{le=\"0.005\"} 1"), "{out}");
        assert!(out.contains("imks_store_pg_commit_seconds_sum 0.304"), "{out}");
        assert!(out.contains("imks_store_pg_rows_total 703"), "{out}");
    }
}
