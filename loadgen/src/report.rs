//! Results: what a worker process hands its parent ([`WorkerReport`], raw counts and
//! histograms), and the run's [`Report`] merged from them, printed as text or written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::params::{soak_split, Load, Params, Protocol, Scenario};
use crate::plan::Kind;
use crate::probe::{Leftover, Memory, ServerCpu, ServerProbe};
use crate::stats::{
    add_raw, new_hist, percentiles, Hist, Percentiles, SoakTotals, DUP_DELIVERED_ACK, DUP_DELIVERY, DUP_SENT_ACK,
    SOAK_TYPES,
};
use crate::sys::CpuTimes;

/// One second of one worker (the last one may be shorter: see `dur_s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub index: usize,
    /// End of this interval, in seconds since the measurement started.
    pub t_s: f64,
    pub dur_s: f64,
    pub sent: u64,
    pub received: u64,
    pub failed: u64,
    pub errors: u64,
    pub p99_us: f64,
    pub alive: u64,
}

/// Everything one process measured, with histograms as raw `(value_ns, count)` pairs so the
/// parent merges them exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub index: usize,
    pub threads: usize,
    pub planned: usize,
    pub established: usize,
    pub setup_failed: usize,
    pub alive_at_end: usize,
    pub dropped: usize,
    pub sent: u64,
    pub received: u64,
    pub failed: u64,
    pub unsent: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Vec<(u64, u64)>,
    pub setup_latency: Vec<(u64, u64)>,
    /// Chat's acknowledgements and expected deliveries.
    #[serde(default)]
    pub chat: Option<WorkerChat>,
    /// Soak's books and its minutes.
    #[serde(default)]
    pub soak: Option<WorkerSoak>,
    /// Per URL, with several: connections, answers or deliveries, latencies.
    #[serde(default)]
    pub by_target: Vec<WorkerTarget>,
    pub series: Vec<Tick>,
    pub cpu: CpuTimes,
    /// Peak resident memory of the worker process, KiB.
    pub peak_rss_kb: u64,
    /// Measurement start to the end of the drain: the span `cpu` covers.
    pub wall_s: f64,
    /// Measurement start to the end of sending (shorter than `--duration` with `--total`).
    pub measured_s: f64,
}

/// One process's chat figures beyond `sent` and `received` (the deliveries).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerChat {
    /// Deliveries owed to the measured messages: one per session of the recipient.
    pub expected: u64,
    pub sent_acks: Vec<(u64, u64)>,
    pub delivered_acks: Vec<(u64, u64)>,
    /// Repeats of a sent ack, a delivered ack, a delivery.
    pub duplicates: [u64; 3],
}

/// One process's soak figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerSoak {
    pub counts: SoakTotals,
    /// Latencies of each minute of the measurement (the last one may be shorter, and holds the
    /// drain), as raw histograms.
    pub minutes: Vec<Vec<(u64, u64)>>,
}

/// One process's figures for one URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerTarget {
    pub connections: usize,
    pub received: u64,
    pub latency: Vec<(u64, u64)>,
}

/// What the server figures were read from and what they said.
#[derive(Debug, Clone, Default)]
pub struct ServerInputs {
    /// Every `--server-pid`.
    pub pids: Vec<u32>,
    pub before: Memory,
    pub after_setup: Memory,
    pub at_end: Memory,
    pub cpu: Option<ServerCpu>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Units {
    /// What `sent` counts: requests, publishes, handshakes or connections.
    pub sent: String,
    /// What `received` counts: answers, deliveries, handshakes completed or connections still up.
    pub received: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub planned: usize,
    pub established: usize,
    pub setup_failed: usize,
    pub alive_at_end: usize,
    /// Lost during the run (closed by the server, protocol errors).
    pub dropped: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub sent: u64,
    pub received: u64,
    /// `sent` for echo, ack and connect; publishes × subscribers per room for fan-out; the
    /// planned connections for idle.
    pub expected: u64,
    pub lost: u64,
    /// Received beyond the expected count (a server delivering twice).
    pub duplicates: u64,
    /// Handshakes that failed (connect).
    pub failed: u64,
    /// Open-loop sends that were due but never went out (the generator or socket held them).
    pub unsent: u64,
    /// All errors, warm-up and set-up included; by kind in `errors`.
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub sent_per_s: f64,
    pub received_per_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadgenUse {
    pub processes: usize,
    pub threads: usize,
    pub cores_available: usize,
    pub user_s: f64,
    pub sys_s: f64,
    pub cpu_s: f64,
    /// CPU seconds per wall second × 100 (percent of one core; over 100 with several cores).
    pub cpu_pct: f64,
    /// Above 90% of the cores it may use: the generator, not the server, may be the limit.
    pub saturated: bool,
    /// Peak resident memory, KiB, summed over worker processes.
    pub peak_rss_kb: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    /// The first `--server-pid`.
    pub pid: Option<u32>,
    /// Every `--server-pid`: the CPU and RSS figures below are their sum.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// With several `--server-pid`: each process's share of `cpu_s`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessCpu>,
    pub cpu_user_s: Option<f64>,
    pub cpu_sys_s: Option<f64>,
    pub cpu_s: Option<f64>,
    /// Percent of one core over the measurement and drain.
    pub cpu_pct: Option<f64>,
    /// `received` per server CPU second: the work the server does per unit of CPU.
    pub received_per_cpu_s: Option<f64>,
    pub rss_before_kb: Option<u64>,
    pub rss_after_setup_kb: Option<u64>,
    pub rss_end_kb: Option<u64>,
    /// (RSS after set-up − RSS before) / connections established.
    pub rss_per_conn_bytes: Option<f64>,
    pub health_connections_before: Option<u64>,
    pub health_connections_after_setup: Option<u64>,
}

/// One of several server processes' CPU over the measurement and drain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    pub pid: u32,
    pub cpu_s: f64,
    /// Percent of one core.
    pub cpu_pct: f64,
}

/// What the connections to one of several URLs received: with fan-out's publishers on the
/// first URL, the deliveries on another one are those that crossed between nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UrlReport {
    pub url: String,
    pub connections: usize,
    pub received: u64,
    pub received_per_s: f64,
    pub latency_us: Percentiles,
}

/// One kind of thing a chat message brings back: its `sent` ack, its `delivered` ack, or its
/// delivery to the recipient.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatKind {
    /// One per message for the acks; one per session of the recipient for deliveries.
    pub expected: u64,
    /// Distinct ones received (each message's first).
    pub received: u64,
    /// `expected − received`.
    pub lost: u64,
    /// Received again for a message already counted.
    pub duplicates: u64,
    /// From the message's (intended) send time to the arrival of the first one.
    pub latency_us: Percentiles,
}

/// The chat scenario's figures per kind (`counts` and `latency_us` repeat the deliveries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatReport {
    pub sent_acks: ChatKind,
    pub delivered_acks: ChatKind,
    pub deliveries: ChatKind,
}

/// One second of the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub t_s: f64,
    pub dur_s: f64,
    pub sent: u64,
    pub received: u64,
    pub failed: u64,
    pub errors: u64,
    pub sent_per_s: f64,
    pub received_per_s: f64,
    /// The highest p99 of the worker processes in that second (exact with one process).
    pub p99_us: f64,
    pub alive: u64,
    pub server_cpu_pct: Option<f64>,
    /// The server's RSS at the end of the second, KiB (with `--server-pid`).
    #[serde(default)]
    pub server_rss_kb: Option<u64>,
}

/// Soak: one kind of client over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakKind {
    pub kind: String,
    /// Clients of this kind held at once.
    pub clients: usize,
    /// Sessions set up (first ones and replacements), left cleanly, dropped (by the server or
    /// an error), set-ups that failed.
    pub opened: u64,
    pub left: u64,
    pub dropped: u64,
    pub failed: u64,
    /// Measured messages sent; native sends skipped because the peer was away.
    pub sent: u64,
    pub skipped: u64,
    /// What clients of this kind were owed, received, lost (= owed − received), and received
    /// again.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
}

/// Soak: one kind of thing owed (see `SOAK_TYPES`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakType {
    #[serde(rename = "type")]
    pub kind: String,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
}

/// Soak: the latency of one minute of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Minute {
    /// 1, 2, ...; the last one may be shorter and holds the drain.
    pub minute: usize,
    pub latency_us: Percentiles,
}

/// Soak: the server's RSS over the run (from the per-second series).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RssTrend {
    /// The first second's.
    pub start_kb: u64,
    /// At the end of the warm-up: the first minute, or the first quarter of a shorter run.
    pub warm_kb: u64,
    pub warm_s: f64,
    pub end_kb: u64,
    pub max_kb: u64,
    /// `end_kb − warm_kb` (negative when it shrank).
    pub growth_after_warmup_kb: i64,
}

/// The soak scenario's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakReport {
    pub kinds: Vec<SoakKind>,
    pub types: Vec<SoakType>,
    pub per_minute: Vec<Minute>,
    pub rss: Option<RssTrend>,
    /// What the health endpoint showed once every client had left (with `--health-url`).
    pub leftover: Option<Leftover>,
    /// What the server still held then: connections and sessions (the largest of
    /// `leftover.connections`, `leftover.websockets` and `leftover.engineio_sessions`, as a
    /// WebSocket session rides on a connection and a Socket.IO session may ride on either) and
    /// native users still online; `None` when not checked.
    pub leaked: Option<u64>,
}

/// The run's report; `--json` writes it as is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub scenario: Scenario,
    pub protocol: Protocol,
    /// The first `--url` (the only one with a single server).
    pub url: String,
    /// Every `--url`.
    #[serde(default)]
    pub urls: Vec<String>,
    pub load: Load,
    pub units: Units,
    pub started_unix_ms: u64,
    pub measured_s: f64,
    pub wall_s: f64,
    pub connections: Connections,
    pub counts: Counts,
    pub rates: Rates,
    pub latency_us: Percentiles,
    /// With several `--url`: what the connections to each received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_url: Vec<UrlReport>,
    pub setup_latency_us: Percentiles,
    /// Chat only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatReport>,
    /// Soak only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakReport>,
    pub errors: BTreeMap<String, u64>,
    pub loadgen: LoadgenUse,
    pub server: Option<ServerReport>,
    pub timeseries: Vec<Point>,
    pub params: Params,
}

fn units(s: Scenario) -> Units {
    let (sent, received) = match s {
        Scenario::Echo | Scenario::Ack => ("requests", "answers"),
        Scenario::Chat => ("messages", "deliveries"),
        Scenario::Fanout => ("publishes", "deliveries"),
        Scenario::Connect => ("handshakes started", "handshakes connected"),
        Scenario::Idle => ("connections established", "connections alive at the end"),
        Scenario::Soak => ("messages", "receipts (answers, broadcasts, acks, deliveries)"),
    };
    Units { sent: sent.into(), received: received.into() }
}

impl Report {
    /// What went wrong in the run, one phrase each: messages lost or delivered twice,
    /// connections that failed or dropped, handshakes that failed. Empty for a clean run.
    pub fn problems(&self) -> Vec<String> {
        let c = &self.counts;
        let mut out = Vec::new();
        let mut say = |n: u64, what: &str| {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        };
        say(c.lost, &format!("{} lost", self.units.received));
        say(c.duplicates, &format!("{} received twice", self.units.received));
        if let Some(chat) = &self.chat {
            say(chat.sent_acks.lost, "sent acks lost");
            say(chat.delivered_acks.lost, "delivered acks lost");
            say(chat.sent_acks.duplicates + chat.delivered_acks.duplicates, "acks received twice");
        }
        if let Some(soak) = &self.soak {
            say(soak.kinds.iter().map(|k| k.failed).sum(), "client set-ups failed");
            say(soak.leaked.unwrap_or(0), "connections or sessions left on the server after every client left");
        }
        say(c.failed, "handshakes failed");
        say(self.connections.setup_failed as u64, "connections failed to set up");
        say(self.connections.dropped as u64, "connections dropped during the run");
        out
    }

    /// Soak, once every client has left: what the server still holds (see
    /// [`ServerProbe::leftover`]), waiting at most `wait`.
    pub fn check_leftover(&mut self, probe: &ServerProbe, wait: std::time::Duration, open_fds_before: Option<u64>) {
        if let Some(soak) = self.soak.as_mut() {
            soak.leftover = probe.leftover(wait, open_fds_before);
            // A WebSocket session rides on a connection, and a Socket.IO session on a WebSocket
            // or on nothing between long-polls: the largest count is what was left.
            soak.leaked = soak
                .leftover
                .as_ref()
                .map(|l| l.connections.max(l.websockets).max(l.engineio_sessions) + l.identities_online.unwrap_or(0));
        }
    }

    /// Merges the workers' reports.
    pub fn build(
        p: &Params,
        workers: &[WorkerReport],
        server: Option<ServerInputs>,
        started_unix_ms: u64,
        cores_available: usize,
    ) -> Result<Report, Error> {
        let mut lat = new_hist()?;
        let mut setup_lat = new_hist()?;
        let mut errors = BTreeMap::new();
        let mut conns = Connections::default();
        let (mut sent, mut received, mut failed, mut unsent) = (0u64, 0u64, 0u64, 0u64);
        let (mut cpu, mut wall_s, mut measured_s, mut threads) = (CpuTimes::default(), 0f64, 0f64, 0usize);
        let mut peak_rss_kb = 0;
        let mut series: Vec<Point> = Vec::new();
        let (mut sent_acks, mut delivered_acks) = (new_hist()?, new_hist()?);
        let (mut chat_expected, mut duplicates) = (0u64, [0u64; 3]);
        let mut by_url: Vec<(usize, u64, Hist)> = Vec::new();
        let mut soak = SoakTotals::default();
        let mut minutes: Vec<Hist> = Vec::new();
        for w in workers {
            if let Some(s) = &w.soak {
                soak.add(&s.counts);
                for (i, raw) in s.minutes.iter().enumerate() {
                    if minutes.len() <= i {
                        minutes.push(new_hist()?);
                    }
                    add_raw(&mut minutes[i], raw);
                }
            }
            for (i, t) in w.by_target.iter().enumerate() {
                if by_url.len() <= i {
                    by_url.push((0, 0, new_hist()?));
                }
                let (conns, received, lat) = &mut by_url[i];
                *conns += t.connections;
                *received += t.received;
                add_raw(lat, &t.latency);
            }
            if let Some(c) = &w.chat {
                add_raw(&mut sent_acks, &c.sent_acks);
                add_raw(&mut delivered_acks, &c.delivered_acks);
                chat_expected += c.expected;
                for (d, n) in duplicates.iter_mut().zip(c.duplicates) {
                    *d += n;
                }
            }
            add_raw(&mut lat, &w.latency);
            add_raw(&mut setup_lat, &w.setup_latency);
            for (k, v) in &w.errors {
                *errors.entry(k.clone()).or_insert(0) += v;
            }
            conns.planned += w.planned;
            conns.established += w.established;
            conns.setup_failed += w.setup_failed;
            conns.alive_at_end += w.alive_at_end;
            conns.dropped += w.dropped;
            sent += w.sent;
            received += w.received;
            failed += w.failed;
            unsent += w.unsent;
            cpu = cpu.add(&w.cpu);
            peak_rss_kb += w.peak_rss_kb;
            wall_s = wall_s.max(w.wall_s);
            measured_s = measured_s.max(w.measured_s);
            threads += w.threads;
            for t in &w.series {
                if series.len() <= t.index {
                    series.resize(t.index + 1, Point::default());
                }
                let pt = &mut series[t.index];
                pt.t_s = pt.t_s.max(t.t_s);
                pt.dur_s = pt.dur_s.max(t.dur_s);
                pt.sent += t.sent;
                pt.received += t.received;
                pt.failed += t.failed;
                pt.errors += t.errors;
                pt.p99_us = pt.p99_us.max(t.p99_us);
                pt.alive += t.alive;
            }
        }
        let server_cpu = server.as_ref().and_then(|s| s.cpu.as_ref());
        for (i, pt) in series.iter_mut().enumerate() {
            if pt.dur_s > 0.0 {
                pt.sent_per_s = pt.sent as f64 / pt.dur_s;
                pt.received_per_s = pt.received as f64 / pt.dur_s;
            }
            pt.server_cpu_pct = server_cpu.and_then(|c| c.per_second.get(i).copied());
            pt.server_rss_kb = server_cpu.and_then(|c| c.rss_kb_per_second.get(i).copied());
        }
        if p.scenario == Scenario::Idle {
            sent = conns.established as u64;
            received = conns.alive_at_end as u64;
        }
        let sum = |m: &[[u64; 5]; 3]| m.iter().flatten().sum::<u64>();
        if p.scenario == Scenario::Soak {
            received = sum(&soak.received);
        }
        let expected = match p.scenario {
            Scenario::Fanout => sent * p.subscribers as u64,
            Scenario::Idle => p.connections as u64,
            Scenario::Chat => chat_expected,
            Scenario::Soak => sum(&soak.expected),
            _ => sent,
        };
        let soak_report = (p.scenario == Scenario::Soak).then(|| soak_report(p, &soak, &minutes, &series));
        let kind = |expected: u64, received: u64, duplicates: u64, lat: &Hist| ChatKind {
            expected,
            received,
            lost: expected.saturating_sub(received),
            duplicates,
            latency_us: percentiles(lat),
        };
        let chat = (p.scenario == Scenario::Chat).then(|| ChatReport {
            sent_acks: kind(sent, sent_acks.len(), duplicates[DUP_SENT_ACK], &sent_acks),
            delivered_acks: kind(sent, delivered_acks.len(), duplicates[DUP_DELIVERED_ACK], &delivered_acks),
            deliveries: kind(expected, received, duplicates[DUP_DELIVERY], &lat),
        });
        let per_s = |n: u64| if measured_s > 0.0 { n as f64 / measured_s } else { 0.0 };
        let cpu_pct = if wall_s > 0.0 { cpu.total() / wall_s * 100.0 } else { 0.0 };
        let usable = threads.min(cores_available).max(1);
        let server = server.map(|s| {
            let cpu = s.cpu.as_ref();
            let cpu_s = cpu.map(|c| c.cpu.total());
            let rss_per_conn_bytes = match (s.before.rss_kb, s.after_setup.rss_kb) {
                (Some(b), Some(a)) if conns.established > 0 => {
                    Some((a as f64 - b as f64) * 1024.0 / conns.established as f64)
                }
                _ => None,
            };
            let processes = match (cpu, s.pids.len()) {
                (Some(c), n) if n > 1 => s
                    .pids
                    .iter()
                    .zip(&c.per_process)
                    .map(|(&pid, t)| ProcessCpu {
                        pid,
                        cpu_s: t.total(),
                        cpu_pct: if c.wall_s > 0.0 { t.total() / c.wall_s * 100.0 } else { 0.0 },
                    })
                    .collect(),
                _ => Vec::new(),
            };
            ServerReport {
                pid: s.pids.first().copied(),
                pids: s.pids.clone(),
                processes,
                cpu_user_s: cpu.map(|c| c.cpu.user_s),
                cpu_sys_s: cpu.map(|c| c.cpu.sys_s),
                cpu_s,
                cpu_pct: cpu.filter(|c| c.wall_s > 0.0).map(|c| c.cpu.total() / c.wall_s * 100.0),
                received_per_cpu_s: cpu_s.filter(|&c| c > 0.0).map(|c| received as f64 / c),
                rss_before_kb: s.before.rss_kb,
                rss_after_setup_kb: s.after_setup.rss_kb,
                rss_end_kb: s.at_end.rss_kb,
                rss_per_conn_bytes,
                health_connections_before: s.before.connections,
                health_connections_after_setup: s.after_setup.connections,
            }
        });
        Ok(Report {
            tool: "imks-loadgen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scenario: p.scenario,
            protocol: p.protocol,
            url: p.url().to_string(),
            urls: p.urls.clone(),
            load: p.load,
            units: units(p.scenario),
            started_unix_ms,
            measured_s,
            wall_s,
            counts: Counts {
                sent,
                received,
                expected,
                lost: expected.saturating_sub(received),
                // Chat tells repeats apart by message id (and counts only first receipts as
                // received); the others can only see more than expected.
                duplicates: match p.scenario {
                    Scenario::Chat => duplicates[DUP_DELIVERY],
                    Scenario::Soak => sum(&soak.duplicates),
                    _ => received.saturating_sub(expected),
                },
                failed,
                unsent,
                errors: errors.values().sum(),
            },
            connections: conns,
            rates: Rates { sent_per_s: per_s(sent), received_per_s: per_s(received) },
            latency_us: percentiles(&lat),
            per_url: by_url
                .iter()
                .zip(&p.urls)
                .map(|((connections, received, lat), url)| UrlReport {
                    url: url.clone(),
                    connections: *connections,
                    received: *received,
                    received_per_s: per_s(*received),
                    latency_us: percentiles(lat),
                })
                .collect(),
            setup_latency_us: percentiles(&setup_lat),
            chat,
            soak: soak_report,
            errors,
            loadgen: LoadgenUse {
                processes: workers.len(),
                threads,
                cores_available,
                user_s: cpu.user_s,
                sys_s: cpu.sys_s,
                cpu_s: cpu.total(),
                cpu_pct,
                saturated: cpu_pct >= 90.0 * usable as f64,
                peak_rss_kb,
            },
            server,
            timeseries: series,
            params: redacted(p),
        })
    }

    /// The human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mode = match self.load {
            Load::Open { rate } => format!("open loop at {}/s", si(rate)),
            Load::Closed { window } => format!("closed loop, window {window}"),
        };
        let proto = match self.protocol {
            Protocol::Ws => "ws",
            Protocol::Sio => "sio",
        };
        let _ = writeln!(
            s,
            "imks-loadgen {:?} over {proto} to {}: {mode}, {:.1} s measured",
            self.scenario, self.url, self.measured_s
        );
        let c = &self.connections;
        if self.scenario == Scenario::Connect {
            let _ = writeln!(s, "  concurrency   {} handshakes in progress at most", c.planned);
        } else {
            let _ = writeln!(
                s,
                "  connections   {} planned, {} established, {} failed, {} dropped, {} alive at the end",
                c.planned, c.established, c.setup_failed, c.dropped, c.alive_at_end
            );
        }
        let n = &self.counts;
        if self.scenario == Scenario::Idle {
            let _ = writeln!(
                s,
                "  held          {} of {} connections for {:.1} s, lost {}, errors {}",
                n.received, n.expected, self.measured_s, n.lost, n.errors
            );
        } else {
            let (sent, received) = match self.scenario {
                Scenario::Connect => ("started", "connected"),
                _ => (short(&self.units.sent), short(&self.units.received)),
            };
            let _ = writeln!(s, "  {sent:<13} {} ({}/s)", n.sent, si(self.rates.sent_per_s));
            let _ = writeln!(
                s,
                "  {received:<13} {} of {} expected ({}/s), lost {}, duplicates {}, unsent {}, failed {}, errors {}",
                n.received,
                n.expected,
                si(self.rates.received_per_s),
                n.lost,
                n.duplicates,
                n.unsent,
                n.failed,
                n.errors
            );
        }
        let l = &self.latency_us;
        if l.count > 0 {
            let _ = writeln!(
                s,
                "  latency µs    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n {})",
                us(l.p50_us),
                us(l.p90_us),
                us(l.p99_us),
                us(l.p999_us),
                us(l.max_us),
                us(l.mean_us),
                l.count
            );
        }
        for u in &self.per_url {
            let l = &u.latency_us;
            let _ = writeln!(
                s,
                "  via {}  {} connections, {} {} ({}/s); µs p50 {}  p99 {}  p99.9 {}  max {}",
                u.url,
                u.connections,
                u.received,
                short(&self.units.received),
                si(u.received_per_s),
                us(l.p50_us),
                us(l.p99_us),
                us(l.p999_us),
                us(l.max_us)
            );
        }
        if let Some(c) = &self.chat {
            for (name, k) in [("sent acks", &c.sent_acks), ("delivered acks", &c.delivered_acks)] {
                let l = &k.latency_us;
                let _ = writeln!(
                    s,
                    "  {name:<14} {} of {}, lost {}, duplicates {}; µs p50 {}  p99 {}  p99.9 {}  max {}",
                    k.received,
                    k.expected,
                    k.lost,
                    k.duplicates,
                    us(l.p50_us),
                    us(l.p99_us),
                    us(l.p999_us),
                    us(l.max_us)
                );
            }
        }
        if let Some(soak) = &self.soak {
            soak_summary(&mut s, soak);
        }
        let l = &self.setup_latency_us;
        if l.count > 0 && self.scenario != Scenario::Connect {
            let _ = writeln!(s, "  set-up µs     p50 {}  p99 {}  max {}", us(l.p50_us), us(l.p99_us), us(l.max_us));
        }
        if !self.errors.is_empty() {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "  errors        {}", list.join(", "));
        }
        let g = &self.loadgen;
        let _ = writeln!(
            s,
            "  loadgen       {:.2} s user + {:.2} s sys = {:.0}% of one core ({} process(es), {} threads, {} cores), peak RSS {} KiB{}",
            g.user_s,
            g.sys_s,
            g.cpu_pct,
            g.processes,
            g.threads,
            g.cores_available,
            g.peak_rss_kb,
            if g.saturated { "  SATURATED: the generator may be the bottleneck" } else { "" }
        );
        if let Some(srv) = &self.server {
            if let (Some(cpu), Some(pct)) = (srv.cpu_s, srv.cpu_pct) {
                let work = srv
                    .received_per_cpu_s
                    .filter(|_| self.scenario != Scenario::Idle)
                    .map(|w| format!(", {} {} per CPU-second", si(w), self.units.received));
                let _ = writeln!(s, "  server CPU    {cpu:.2} s = {pct:.0}% of one core{}", work.unwrap_or_default());
                if !srv.processes.is_empty() {
                    let each: Vec<String> =
                        srv.processes.iter().map(|c| format!("pid {} {:.0}%", c.pid, c.cpu_pct)).collect();
                    let _ = writeln!(s, "                ({})", each.join(", "));
                }
            }
            if let (Some(b), Some(a)) = (srv.rss_before_kb, srv.rss_after_setup_kb) {
                let per =
                    srv.rss_per_conn_bytes.map(|x| format!(", {:.0} bytes per connection", x)).unwrap_or_default();
                let end = srv.rss_end_kb.map(|e| format!(", {} KiB at the end", e)).unwrap_or_default();
                let _ = writeln!(s, "  server RSS    {b} KiB before, {a} KiB after set-up{end}{per}");
            }
        }
        s
    }
}

/// Soak's section of the report from the merged books, minutes and series.
fn soak_report(p: &Params, t: &SoakTotals, minutes: &[Hist], series: &[Point]) -> SoakReport {
    let clients = soak_split(p.connections, p.mix);
    let kinds = Kind::ALL
        .iter()
        .map(|&k| {
            let i = k as usize;
            let (expected, received) = (t.expected[i].iter().sum::<u64>(), t.received[i].iter().sum::<u64>());
            SoakKind {
                kind: k.name().into(),
                clients: clients[i],
                opened: t.opened[i],
                left: t.left[i],
                dropped: t.dropped[i],
                failed: t.failed[i],
                sent: t.sent[i],
                skipped: t.skipped[i],
                expected,
                received,
                lost: expected.saturating_sub(received),
                duplicates: t.duplicates[i].iter().sum(),
            }
        })
        .collect();
    let types = SOAK_TYPES
        .iter()
        .enumerate()
        .map(|(ty, name)| {
            let col = |m: &[[u64; 5]; 3]| m.iter().map(|row| row[ty]).sum::<u64>();
            let (expected, received) = (col(&t.expected), col(&t.received));
            SoakType {
                kind: (*name).into(),
                expected,
                received,
                lost: expected.saturating_sub(received),
                duplicates: col(&t.duplicates),
            }
        })
        .collect();
    let per_minute =
        minutes.iter().enumerate().map(|(i, h)| Minute { minute: i + 1, latency_us: percentiles(h) }).collect();
    SoakReport { kinds, types, per_minute, rss: rss_trend(series), leftover: None, leaked: None }
}

/// The RSS figures of a series with `server_rss_kb`.
fn rss_trend(series: &[Point]) -> Option<RssTrend> {
    let rss: Vec<(f64, u64)> = series.iter().filter_map(|p| p.server_rss_kb.map(|r| (p.t_s, r))).collect();
    let (&(_, start_kb), &(end_s, end_kb)) = (rss.first()?, rss.last()?);
    let warm_s = 60f64.min(end_s / 4.0);
    let &(warm_s, warm_kb) = rss.iter().find(|(t, _)| *t >= warm_s).unwrap_or(&rss[0]);
    Some(RssTrend {
        start_kb,
        warm_kb,
        warm_s,
        end_kb,
        max_kb: rss.iter().map(|r| r.1).max().unwrap_or(0),
        growth_after_warmup_kb: end_kb as i64 - warm_kb as i64,
    })
}

fn soak_summary(s: &mut String, soak: &SoakReport) {
    for k in &soak.kinds {
        let _ = writeln!(
            s,
            "  {:<13} {} clients, {} sessions ({} left, {} dropped, {} set-ups failed), sent {}{}, owed {}, received {}, lost {}, duplicates {}",
            k.kind,
            k.clients,
            k.opened,
            k.left,
            k.dropped,
            k.failed,
            k.sent,
            if k.skipped > 0 { format!(" (skipped {}: peer away)", k.skipped) } else { String::new() },
            k.expected,
            k.received,
            k.lost,
            k.duplicates
        );
    }
    let types: Vec<String> = soak.types.iter().map(|t| format!("{} {}/{}", t.kind, t.received, t.expected)).collect();
    let _ = writeln!(s, "  received/owed {}", types.join(", "));
    for m in &soak.per_minute {
        let l = &m.latency_us;
        let _ = writeln!(
            s,
            "  minute {:<6} µs p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n {})",
            m.minute,
            us(l.p50_us),
            us(l.p90_us),
            us(l.p99_us),
            us(l.p999_us),
            us(l.max_us),
            l.count
        );
    }
    if let Some(r) = &soak.rss {
        let _ = writeln!(
            s,
            "  RSS trend     {} KiB at the start, {} KiB after {:.0} s of warm-up, {} KiB at the end (max {}): {:+} KiB after warm-up",
            r.start_kb, r.warm_kb, r.warm_s, r.end_kb, r.max_kb, r.growth_after_warmup_kb
        );
    }
    match &soak.leftover {
        Some(l) => {
            let fds = match (l.open_fds_before, l.open_fds) {
                (Some(b), Some(a)) => format!(", open fds {b} before the run, {a} after"),
                _ => String::new(),
            };
            let users = l.identities_online.map(|n| format!(", {n} native users online")).unwrap_or_default();
            let _ = writeln!(
                s,
                "  left behind   {} connections, {} WebSocket sessions, {} Engine.IO sessions{users}, {:.1} s after \
                 every client left{fds}",
                l.connections, l.websockets, l.engineio_sessions, l.waited_s
            );
        }
        None => {
            let _ = writeln!(s, "  left behind   not checked (give --health-url)");
        }
    }
}

/// The parameters as a report shows them: without the token or the secret.
fn redacted(p: &Params) -> Params {
    let mut p = p.clone();
    let hide = |s: &mut Option<String>| {
        if s.is_some() {
            *s = Some("<redacted>".into());
        }
    };
    hide(&mut p.token);
    hide(&mut p.jwt_secret);
    p
}

fn short(unit: &str) -> &str {
    unit.split(' ').next().unwrap_or(unit)
}

/// 1234567 → "1.23M".
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The line printed each second on a terminal. Here, beside [`Tick`], because both a single
/// process's run and the parent of worker processes print it.
pub fn progress_line(p: &Params, t: &Tick) -> String {
    let rate = |n: u64| if t.dur_s > 0.0 { si(n as f64 / t.dur_s) } else { "-".into() };
    let (sent, received) = match p.scenario {
        Scenario::Fanout => ("publishes", "deliveries"),
        Scenario::Chat => ("messages", "deliveries"),
        Scenario::Connect => ("started", "connected"),
        Scenario::Soak => ("messages", "received"),
        _ => ("sent", "received"),
    };
    format!(
        "[{:>5.1}s] {sent} {}/s  {received} {}/s  p99 {:.0} µs  alive {}  errors {}",
        t.t_s,
        rate(t.sent),
        rate(t.received),
        t.p99_us,
        t.alive,
        t.errors
    )
}

fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_workers() {
        let mut p = Params::new(Scenario::Fanout, "ws://127.0.0.1:1");
        p.subscribers = 10;
        let tick = |i: usize, received: u64, p99_us: f64| Tick {
            index: i,
            t_s: i as f64 + 1.0,
            dur_s: 1.0,
            received,
            p99_us,
            ..Tick::default()
        };
        let a = WorkerReport {
            sent: 5,
            received: 30,
            latency: vec![(1000, 30)],
            series: vec![tick(0, 10, 5.0), tick(1, 20, 7.0)],
            measured_s: 2.0,
            wall_s: 2.0,
            threads: 1,
            ..WorkerReport::default()
        };
        let b = WorkerReport {
            sent: 5,
            received: 70,
            latency: vec![(2000, 70)],
            series: vec![tick(0, 70, 9.0)],
            measured_s: 2.0,
            wall_s: 2.0,
            threads: 1,
            ..WorkerReport::default()
        };
        let r = Report::build(&p, &[a, b], None, 0, 2).unwrap();
        assert_eq!((r.counts.sent, r.counts.received, r.counts.expected, r.counts.lost), (10, 100, 100, 0));
        assert_eq!(r.latency_us.count, 100);
        assert_eq!(r.timeseries.len(), 2);
        assert_eq!((r.timeseries[0].received, r.timeseries[0].p99_us), (80, 9.0));
        assert_eq!(r.rates.received_per_s, 50.0);
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.counts, r.counts);
        assert!(r.summary().contains("deliveries"));
    }
}
