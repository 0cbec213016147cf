//! Counters and latency histograms.
//!
//! Connections count into their own [`Tally`] without any synchronisation and flush it into one
//! of a few sharded, cache-padded mutexes once per wake-up (one lock per read batch, not per
//! message). The collector takes each shard's lock once a second to cut the per-second series.
//!
//! What counts is decided by the send time each message carries: a send is *measured* when its
//! (intended) time lies in the measurement window, and so is its answer, whenever it arrives.
//! Warm-up traffic and the drain are thereby kept apart without any race on a phase flag.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub type Hist = Histogram<u64>;

/// Highest latency kept, in nanoseconds (one hour); larger values are clamped to it.
const HIST_HIGH_NS: u64 = 3_600_000_000_000;

/// An empty latency histogram in nanoseconds, three significant digits.
pub fn new_hist() -> Result<Hist, Error> {
    Histogram::new_with_bounds(1, HIST_HIGH_NS, 3).map_err(|e| Error::Config(format!("histogram: {e}")))
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

pub fn percentiles(h: &Hist) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        min_us: us(h.min()),
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// The histogram as `(value_ns, count)` pairs, for worker processes to hand to their parent.
pub fn to_raw(h: &Hist) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

pub fn add_raw(h: &mut Hist, raw: &[(u64, u64)]) {
    for &(v, n) in raw {
        h.saturating_record_n(v, n);
    }
}

/// The chat scenario's acknowledgements, counted beside its deliveries (which are the
/// scenario's `received`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// `ack` with `status: "sent"`: the message is stored.
    Sent = 0,
    /// `ack` with `status: "delivered"`: it reached a session of the recipient.
    Delivered = 1,
}

/// What a repeat was a repeat of, in [`Tally::duplicates`].
pub const DUP_SENT_ACK: usize = 0;
pub const DUP_DELIVERED_ACK: usize = 1;
pub const DUP_DELIVERY: usize = 2;

/// One connection's unflushed counts.
#[derive(Debug, Default)]
pub struct Tally {
    /// The URL (index in `Params::urls`) the connection is on: its answers and deliveries are
    /// also counted per URL, when there are several.
    pub target: usize,
    /// Measured sends.
    pub sent: u64,
    /// Measured answers or deliveries; one latency each in `lat`.
    pub received: u64,
    /// Measured sends that definitely failed (handshakes that did not complete).
    pub failed: u64,
    /// Intended open-loop sends that could not go out before the end of the window.
    pub unsent: u64,
    pub lat: Vec<u64>,
    /// Chat: latencies of measured acks, by [`Ack`].
    pub acks: [Vec<u64>; 2],
    /// Chat: repeats of a measured ack or delivery already counted, by `DUP_*`.
    pub duplicates: [u64; 3],
}

impl Tally {
    pub fn record(&mut self, latency_ns: u64) {
        self.received += 1;
        self.lat.push(latency_ns);
    }

    pub fn record_ack(&mut self, ack: Ack, latency_ns: u64) {
        self.acks[ack as usize].push(latency_ns);
    }

    pub fn is_empty(&self) -> bool {
        self.sent == 0
            && self.received == 0
            && self.failed == 0
            && self.unsent == 0
            && self.acks.iter().all(Vec::is_empty)
            && self.duplicates == [0; 3]
    }
}

struct Shard {
    lat: Hist,
    interval: Hist,
    received: u64,
    failed: u64,
    unsent: u64,
    i_sent: u64,
    i_received: u64,
    i_failed: u64,
    acks: [Hist; 2],
    duplicates: [u64; 3],
    /// Answers or deliveries and their latencies per URL; empty with a single URL.
    by_target: Vec<(u64, Hist)>,
}

/// Keeps each shard on its own cache lines.
#[repr(align(128))]
struct Padded<T>(T);

/// One second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Interval {
    pub sent: u64,
    pub received: u64,
    pub failed: u64,
    pub errors: u64,
    pub p99_ns: u64,
}

/// The run's totals.
pub struct Totals {
    pub sent: u64,
    pub received: u64,
    pub failed: u64,
    pub unsent: u64,
    pub lat: Hist,
    /// Chat: deliveries the measured sends are owed.
    pub expected: u64,
    pub acks: [Hist; 2],
    pub duplicates: [u64; 3],
    /// Received and latencies per URL; empty with a single URL.
    pub by_target: Vec<(u64, Hist)>,
}

pub struct Stats {
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Measured sends, counted when they are admitted rather than when a tally is flushed, so
    /// the drain never sees an answer arrive for a send it does not know of (see
    /// [`crate::shared::Run::admit`]).
    sent: Box<[Padded<AtomicU64>]>,
    /// Chat: deliveries owed to measured sends (one per session of the recipient), counted
    /// like `sent`, before the message is written.
    expected: Box<[Padded<AtomicU64>]>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    interval_errors: AtomicU64,
    tickets: AtomicU64,
    total: Option<u64>,
    total_reached: AtomicBool,
    scratch: Mutex<Hist>,
}

impl Stats {
    /// Counters in `shards` shards; `targets` URLs (counted apart when more than one).
    pub fn new(shards: usize, total: Option<u64>, targets: usize) -> Result<Stats, Error> {
        let template = new_hist()?;
        let by_target: Vec<(u64, Hist)> =
            if targets > 1 { (0..targets).map(|_| (0, template.clone())).collect() } else { Vec::new() };
        let shards: Box<[Padded<Mutex<Shard>>]> = (0..shards.max(1))
            .map(|_| {
                Padded(Mutex::new(Shard {
                    lat: template.clone(),
                    interval: template.clone(),
                    received: 0,
                    failed: 0,
                    unsent: 0,
                    i_sent: 0,
                    i_received: 0,
                    i_failed: 0,
                    acks: [template.clone(), template.clone()],
                    duplicates: [0; 3],
                    by_target: by_target.clone(),
                }))
            })
            .collect();
        let sent = (0..shards.len()).map(|_| Padded(AtomicU64::new(0))).collect();
        let expected = (0..shards.len()).map(|_| Padded(AtomicU64::new(0))).collect();
        Ok(Stats {
            shards,
            sent,
            expected,
            errors: Mutex::new(BTreeMap::new()),
            interval_errors: AtomicU64::new(0),
            tickets: AtomicU64::new(0),
            total,
            total_reached: AtomicBool::new(false),
            scratch: Mutex::new(template),
        })
    }

    /// Counts one error of `kind` (connection failures and drops; they never end the run).
    pub fn error(&self, kind: &'static str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(kind).or_default() += 1;
        }
        self.interval_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect()).unwrap_or_default()
    }

    /// Whether one more measured send fits under `--total`.
    pub fn take_ticket(&self) -> bool {
        let Some(total) = self.total else { return true };
        let k = self.tickets.fetch_add(1, Ordering::Relaxed);
        if k + 1 >= total {
            self.total_reached.store(true, Ordering::Relaxed);
        }
        k < total
    }

    /// Whether `--total` measured sends have gone out.
    pub fn total_reached(&self) -> bool {
        self.total_reached.load(Ordering::Relaxed)
    }

    /// Counts one measured send on `shard`.
    pub fn count_sent(&self, shard: usize) {
        self.sent[shard % self.sent.len()].0.fetch_add(1, Ordering::SeqCst);
    }

    /// Takes back a send counted by [`Stats::count_sent`] that did not go out after all.
    pub fn uncount_sent(&self, shard: usize) {
        self.sent[shard % self.sent.len()].0.fetch_sub(1, Ordering::SeqCst);
    }

    fn sent_total(&self) -> u64 {
        self.sent.iter().map(|s| s.0.load(Ordering::SeqCst)).sum()
    }

    /// Chat: `n` more deliveries owed, for a measured send just admitted on `shard`.
    pub fn count_expected(&self, shard: usize, n: u64) {
        self.expected[shard % self.expected.len()].0.fetch_add(n, Ordering::SeqCst);
    }

    fn expected_total(&self) -> u64 {
        self.expected.iter().map(|s| s.0.load(Ordering::SeqCst)).sum()
    }

    /// Adds a connection's tally to shard `shard` and empties it. Its `sent` only feeds the
    /// per-second series; the total comes from [`Stats::count_sent`].
    pub fn flush(&self, shard: usize, t: &mut Tally) {
        let Ok(mut s) = self.shards[shard % self.shards.len()].0.lock() else { return };
        s.i_sent += t.sent;
        s.received += t.received;
        s.i_received += t.received;
        s.failed += t.failed;
        s.i_failed += t.failed;
        s.unsent += t.unsent;
        for &ns in &t.lat {
            s.lat.saturating_record(ns.max(1));
            s.interval.saturating_record(ns.max(1));
        }
        if let Some((received, lat)) = s.by_target.get_mut(t.target) {
            *received += t.received;
            for &ns in &t.lat {
                lat.saturating_record(ns.max(1));
            }
        }
        for (h, lat) in s.acks.iter_mut().zip(&t.acks) {
            for &ns in lat {
                h.saturating_record(ns.max(1));
            }
        }
        for (d, n) in s.duplicates.iter_mut().zip(t.duplicates) {
            *d += n;
        }
        drop(s);
        t.sent = 0;
        t.received = 0;
        t.failed = 0;
        t.unsent = 0;
        t.lat.clear();
        t.acks.iter_mut().for_each(Vec::clear);
        t.duplicates = [0; 3];
    }

    /// The counts since the previous call, and their p99.
    pub fn interval(&self) -> Interval {
        self.interval_into(None)
    }

    /// [`Stats::interval`], adding the interval's latencies to `acc` too (soak's minutes).
    pub fn interval_into(&self, acc: Option<&mut Hist>) -> Interval {
        let mut out = Interval { errors: self.interval_errors.swap(0, Ordering::Relaxed), ..Interval::default() };
        let Ok(mut merged) = self.scratch.lock() else { return out };
        merged.reset();
        for shard in self.shards.iter() {
            let Ok(mut s) = shard.0.lock() else { continue };
            out.sent += std::mem::take(&mut s.i_sent);
            out.received += std::mem::take(&mut s.i_received);
            out.failed += std::mem::take(&mut s.i_failed);
            let _ = merged.add(&s.interval);
            s.interval.reset();
        }
        out.p99_ns = if merged.is_empty() { 0 } else { merged.value_at_quantile(0.99) };
        if let Some(acc) = acc {
            let _ = acc.add(&*merged);
        }
        out
    }

    /// `(sent, received, failed)` so far, without touching the interval counts.
    pub fn progress(&self) -> (u64, u64, u64) {
        let sent = self.sent_total();
        let (received, failed) =
            self.shards.iter().filter_map(|s| s.0.lock().ok()).fold((0, 0), |(b, c), s| (b + s.received, c + s.failed));
        (sent, received, failed)
    }

    /// Chat: `(expected deliveries, sent acks, delivered acks)` so far, for the drain to know
    /// when everything owed has arrived.
    pub fn chat_progress(&self) -> (u64, u64, u64) {
        let expected = self.expected_total();
        let acks = self.shards.iter().filter_map(|s| s.0.lock().ok()).fold((0, 0), |(a, b), s| {
            (a + s.acks[Ack::Sent as usize].len(), b + s.acks[Ack::Delivered as usize].len())
        });
        (expected, acks.0, acks.1)
    }

    pub fn totals(&self) -> Result<Totals, Error> {
        let mut t = Totals {
            sent: self.sent_total(),
            received: 0,
            failed: 0,
            unsent: 0,
            lat: new_hist()?,
            expected: self.expected_total(),
            acks: [new_hist()?, new_hist()?],
            duplicates: [0; 3],
            by_target: Vec::new(),
        };
        for shard in self.shards.iter() {
            let Ok(s) = shard.0.lock() else { continue };
            if t.by_target.is_empty() {
                t.by_target = s.by_target.clone();
            } else {
                for ((received, lat), (r, h)) in t.by_target.iter_mut().zip(&s.by_target) {
                    *received += r;
                    let _ = lat.add(h);
                }
            }
            t.received += s.received;
            t.failed += s.failed;
            t.unsent += s.unsent;
            let _ = t.lat.add(&s.lat);
            for (h, sh) in t.acks.iter_mut().zip(&s.acks) {
                let _ = h.add(sh);
            }
            for (d, n) in t.duplicates.iter_mut().zip(s.duplicates) {
                *d += n;
            }
        }
        Ok(t)
    }
}

/// Soak: what its clients are owed and what they received, by the kind of client that is owed
/// it and by what it is, counted as it happens (atomics: a few hundred events a second).
pub const SOAK_TYPES: [&str; 5] = ["acks", "broadcasts", "dm_sent_acks", "dm_delivered_acks", "dm_deliveries"];
/// [`SOAK_TYPES`] by index.
pub const T_ACK: usize = 0;
pub const T_BROADCAST: usize = 1;
pub const T_DM_SENT: usize = 2;
pub const T_DM_DELIVERED: usize = 3;
pub const T_DM_DELIVERY: usize = 4;

/// Per kind of client (`crate::plan::Kind` as index) and per [`SOAK_TYPES`] entry.
type Matrix = [[AtomicU64; 5]; 3];

#[derive(Debug, Default)]
pub struct SoakCounts {
    expected: Matrix,
    received: Matrix,
    duplicates: Matrix,
    /// Per kind: sessions set up (first ones and replacements), left cleanly, dropped by the
    /// server or an error, set-ups that failed, measured sends, and sends skipped because the
    /// native peer was away.
    opened: [AtomicU64; 3],
    left: [AtomicU64; 3],
    dropped: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    sent: [AtomicU64; 3],
    skipped: [AtomicU64; 3],
}

/// Which per-kind counter of [`SoakCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Opened,
    Left,
    Dropped,
    Failed,
    Sent,
    Skipped,
}

/// [`SoakCounts`] as plain numbers, for a worker's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoakTotals {
    pub expected: [[u64; 5]; 3],
    pub received: [[u64; 5]; 3],
    pub duplicates: [[u64; 5]; 3],
    pub opened: [u64; 3],
    pub left: [u64; 3],
    pub dropped: [u64; 3],
    pub failed: [u64; 3],
    pub sent: [u64; 3],
    pub skipped: [u64; 3],
}

impl SoakCounts {
    pub fn expect(&self, kind: usize, ty: usize, n: u64) {
        if n > 0 {
            self.expected[kind % 3][ty % 5].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn receive(&self, kind: usize, ty: usize) {
        self.received[kind % 3][ty % 5].fetch_add(1, Ordering::Relaxed);
    }

    pub fn duplicate(&self, kind: usize, ty: usize) {
        self.duplicates[kind % 3][ty % 5].fetch_add(1, Ordering::Relaxed);
    }

    pub fn life(&self, kind: usize, what: Life) {
        let c = match what {
            Life::Opened => &self.opened,
            Life::Left => &self.left,
            Life::Dropped => &self.dropped,
            Life::Failed => &self.failed,
            Life::Sent => &self.sent,
            Life::Skipped => &self.skipped,
        };
        c[kind % 3].fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> SoakTotals {
        let m = |x: &Matrix| x.each_ref().map(|row| row.each_ref().map(|c| c.load(Ordering::Relaxed)));
        let v = |x: &[AtomicU64; 3]| x.each_ref().map(|c| c.load(Ordering::Relaxed));
        SoakTotals {
            expected: m(&self.expected),
            received: m(&self.received),
            duplicates: m(&self.duplicates),
            opened: v(&self.opened),
            left: v(&self.left),
            dropped: v(&self.dropped),
            failed: v(&self.failed),
            sent: v(&self.sent),
            skipped: v(&self.skipped),
        }
    }
}

impl SoakTotals {
    /// Adds another worker's totals.
    pub fn add(&mut self, o: &SoakTotals) {
        for (a, b) in [(&mut self.expected, &o.expected), (&mut self.received, &o.received)] {
            add_matrix(a, b);
        }
        add_matrix(&mut self.duplicates, &o.duplicates);
        for (a, b) in [
            (&mut self.opened, &o.opened),
            (&mut self.left, &o.left),
            (&mut self.dropped, &o.dropped),
            (&mut self.failed, &o.failed),
            (&mut self.sent, &o.sent),
            (&mut self.skipped, &o.skipped),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }
}

fn add_matrix(a: &mut [[u64; 5]; 3], b: &[[u64; 5]; 3]) {
    for (ra, rb) in a.iter_mut().zip(b) {
        for (x, y) in ra.iter_mut().zip(rb) {
            *x += y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_flush_into_totals_and_intervals() {
        let stats = Stats::new(4, Some(3), 2).unwrap();
        let mut t = Tally::default();
        assert!(stats.take_ticket() && stats.take_ticket());
        assert!(!stats.total_reached());
        assert!(stats.take_ticket());
        assert!(stats.total_reached());
        assert!(!stats.take_ticket());
        t.sent = 3;
        for _ in 0..4 {
            stats.count_sent(1);
        }
        stats.uncount_sent(1);
        t.record(1000);
        t.record(3000);
        stats.flush(5, &mut t);
        assert!(t.is_empty() && t.lat.is_empty());
        stats.error("closed");
        let i = stats.interval();
        assert_eq!((i.sent, i.received, i.errors), (3, 2, 1));
        assert!(i.p99_ns >= 2990 && i.p99_ns <= 3010, "{}", i.p99_ns);
        assert_eq!(stats.interval(), Interval::default());
        t.target = 1;
        t.record(5000);
        stats.flush(2, &mut t);
        let tot = stats.totals().unwrap();
        assert_eq!((tot.sent, tot.received), (3, 3));
        let per_target: Vec<(u64, u64)> = tot.by_target.iter().map(|(r, h)| (*r, h.len())).collect();
        assert_eq!(per_target, [(2, 2), (1, 1)]);
        let mut h = new_hist().unwrap();
        add_raw(&mut h, &to_raw(&tot.lat));
        assert_eq!(percentiles(&h), percentiles(&tot.lat));
        assert_eq!(stats.errors().get("closed"), Some(&1));
    }
}
