//! Per-shard counters and their Prometheus rendering.
//!
//! Each shard owns one [`ShardStats`] and is its only writer, so updates are uncontended
//! `Relaxed` atomic adds on the shard's own cache lines; `/metrics` and `/health`, served by any
//! shard, only read them. There is no lock and no cross-core write traffic on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Instant;

/// Why a connection ended. Counted per shard as `imks_closes_total{reason=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The peer closed (WebSocket close frame or TCP EOF between HTTP requests).
    Client = 0,
    /// The server shut down (WebSocket 1001).
    Shutdown,
    /// WebSocket protocol error (1002) or malformed HTTP (400).
    Protocol,
    /// Invalid UTF-8 in a text message (1007).
    InvalidUtf8,
    /// A message or request over its size limit (1009, 413, 431).
    TooBig,
    /// The send queue overflowed under the `close` policy (1008).
    SlowConsumer,
    /// No traffic within ping interval + ping timeout.
    PingTimeout,
    /// A socket write made no progress within the write timeout.
    WriteTimeout,
    /// An HTTP request head did not arrive within the header timeout (408).
    HeaderTimeout,
    /// A keep-alive connection sat idle past the idle timeout.
    IdleTimeout,
    /// The shard or node connection limit was reached (503).
    Limit,
    /// A socket error.
    Io,
    /// Handed to the shard that owns its session (an Engine.IO upgrade); not an end.
    Moved,
    /// A policy ended it: the message rate limit (1008) or a newer login of the same user.
    Policy,
}

impl CloseReason {
    pub const ALL: [CloseReason; 14] = [
        CloseReason::Client,
        CloseReason::Shutdown,
        CloseReason::Protocol,
        CloseReason::InvalidUtf8,
        CloseReason::TooBig,
        CloseReason::SlowConsumer,
        CloseReason::PingTimeout,
        CloseReason::WriteTimeout,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::Limit,
        CloseReason::Io,
        CloseReason::Moved,
        CloseReason::Policy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Protocol => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::TooBig => "too_big",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Limit => "limit",
            CloseReason::Io => "io_error",
            CloseReason::Moved => "moved",
            CloseReason::Policy => "policy",
        }
    }
}

/// The I/O driver a shard ended up running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DriverKind {
    Starting = 0,
    IoUring,
    Epoll,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Starting => "starting",
            DriverKind::IoUring => "io_uring",
            DriverKind::Epoll => "epoll",
        }
    }
}

/// Counters of one shard. Written only by that shard.
#[derive(Debug, Default)]
#[repr(align(128))] // keep each shard's counters on their own cache lines
pub struct ShardStats {
    driver: AtomicU8,
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub websockets_active: AtomicU64,
    pub http_requests: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub drops_newest: AtomicU64,
    pub drops_oldest: AtomicU64,
    pub ring_pushes: AtomicU64,
    pub ring_full: AtomicU64,
    pub ring_drops: AtomicU64,
    pub ring_received: AtomicU64,
    /// Connections refused, by limit (`limits_exceeded` family).
    pub limit_node: AtomicU64,
    pub limit_shard: AtomicU64,
    pub limit_ip: AtomicU64,
    pub limit_rate: AtomicU64,
    pub limit_rooms: AtomicU64,
    pub limit_names: AtomicU64,
    pub auth_failures: AtomicU64,
    pub origin_refused: AtomicU64,
    /// Users homed on this shard with at least one session.
    pub identities_online: AtomicU64,
    pub chat_stored: AtomicU64,
    pub chat_duplicates: AtomicU64,
    pub chat_offline_queued: AtomicU64,
    pub chat_offline_dropped: AtomicU64,
    /// Deliveries that found their session gone.
    pub chat_missed: AtomicU64,
    /// The store's eviction counts ([`crate::store::StoreStats`]), copied on every tick.
    pub store_evicted_conversations: AtomicU64,
    pub store_evicted_messages: AtomicU64,
    pub store_forgotten_dedup: AtomicU64,
    /// Engine.IO long-polling GETs parked until the session has something to send.
    pub polls_waiting: AtomicU64,
    /// Open Engine.IO sessions, over every transport.
    pub eio_sessions: AtomicU64,
    /// Frames waiting in sessions' backlogs for room in their send queues, copied every tick.
    pub send_backlog_frames: AtomicU64,
    /// Socket writes by WebSocket sessions (each carries one or more frames).
    pub ws_writes: AtomicU64,
    /// Share of the last tick the shard's thread spent on the CPU, in percent.
    pub busy_percent: AtomicU64,
    /// 1 while the shard coalesces broadcast writes (`websocket.coalesce_us`).
    pub write_coalescing: AtomicU64,
    /// Flushes of coalesced writes.
    pub coalesced_flushes: AtomicU64,
    /// Broadcasts (Socket.IO emits, native room messages) held for a coalesced flush before
    /// reaching any session.
    pub broadcasts_held: AtomicU64,
    pub handler_errors: AtomicU64,
    closes: [AtomicU64; CloseReason::ALL.len()],
}

impl ShardStats {
    pub fn set_driver(&self, d: DriverKind) {
        self.driver.store(d as u8, Relaxed);
    }

    pub fn driver(&self) -> DriverKind {
        match self.driver.load(Relaxed) {
            1 => DriverKind::IoUring,
            2 => DriverKind::Epoll,
            _ => DriverKind::Starting,
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closes[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason as usize].load(Relaxed)
    }
}

/// Adds `n` to a counter owned by the current shard.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Subtracts `n` from a gauge owned by the current shard.
#[inline]
pub fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Relaxed);
}

#[inline]
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

/// Renders every shard's counters in the Prometheus text exposition format (0.0.4).
pub fn render_prometheus(shards: &[std::sync::Arc<ShardStats>], started: Instant, sidecar_ok: bool) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&ShardStats) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, s) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", value(s));
        }
    };
    family("imks_connections_active", "gauge", "Open TCP connections.", &|s| get(&s.connections_active));
    family("imks_connections_total", "counter", "Accepted TCP connections.", &|s| get(&s.connections_total));
    family("imks_websockets_active", "gauge", "Open WebSocket sessions.", &|s| get(&s.websockets_active));
    family("imks_http_requests_total", "counter", "HTTP requests parsed.", &|s| get(&s.http_requests));
    family("imks_frames_in_total", "counter", "WebSocket data messages received.", &|s| get(&s.frames_in));
    family("imks_frames_out_total", "counter", "WebSocket frames written.", &|s| get(&s.frames_out));
    family("imks_bytes_in_total", "counter", "Bytes read from sockets.", &|s| get(&s.bytes_in));
    family("imks_bytes_out_total", "counter", "Bytes written to sockets.", &|s| get(&s.bytes_out));
    family("imks_ring_pushes_total", "counter", "Messages pushed onto cross-shard rings.", &|s| get(&s.ring_pushes));
    family("imks_ring_full_total", "counter", "Pushes that found a cross-shard ring full.", &|s| get(&s.ring_full));
    family("imks_ring_drops_total", "counter", "Messages dropped because a ring was full (policy drop).", &|s| {
        get(&s.ring_drops)
    });
    family("imks_ring_received_total", "counter", "Messages taken off cross-shard rings.", &|s| get(&s.ring_received));
    family("imks_identities_online", "gauge", "Users with a session, counted on their home shard.", &|s| {
        get(&s.identities_online)
    });
    family("imks_chat_stored_total", "counter", "Chat messages stored (owner shard).", &|s| get(&s.chat_stored));
    family("imks_chat_duplicates_total", "counter", "Chat messages with a repeated client msgId.", &|s| {
        get(&s.chat_duplicates)
    });
    family("imks_chat_offline_queued_total", "counter", "Chat messages queued for an offline user.", &|s| {
        get(&s.chat_offline_queued)
    });
    family("imks_chat_offline_dropped_total", "counter", "Offline messages dropped by the queue bound.", &|s| {
        get(&s.chat_offline_dropped)
    });
    family(
        "imks_chat_missed_total",
        "counter",
        "Deliveries whose session closed on the way.",
        &|s| get(&s.chat_missed),
    );
    family(
        "imks_send_backlog_frames",
        "gauge",
        "Frames (stored messages, acks) waiting for room in their sessions' send queues.",
        &|s| get(&s.send_backlog_frames),
    );
    family(
        "imks_ws_writes_total",
        "counter",
        "Socket writes by WebSocket sessions; imks_frames_out_total over this is frames per write.",
        &|s| get(&s.ws_writes),
    );
    family("imks_shard_busy_percent", "gauge", "Share of the last tick the shard's thread was on the CPU.", &|s| {
        get(&s.busy_percent)
    });
    family(
        "imks_write_coalescing",
        "gauge",
        "1 while the shard holds broadcast frames to write several at once (websocket.coalesce_us).",
        &|s| get(&s.write_coalescing),
    );
    family("imks_coalesced_flushes_total", "counter", "Flushes of broadcast frames held by write coalescing.", &|s| {
        get(&s.coalesced_flushes)
    });
    family(
        "imks_broadcasts_held_total",
        "counter",
        "Broadcasts (Socket.IO emits, native room messages) held whole for a coalesced flush, then sent to their rooms together.",
        &|s| get(&s.broadcasts_held),
    );
    family(
        "imks_store_evicted_conversations_total",
        "counter",
        "Conversations evicted whole by store.max_conversations or store.max_messages.",
        &|s| get(&s.store_evicted_conversations),
    );
    family(
        "imks_store_evicted_messages_total",
        "counter",
        "Messages dropped from a conversation by store.max_messages_per_conversation.",
        &|s| get(&s.store_evicted_messages),
    );
    family(
        "imks_store_forgotten_dedup_total",
        "counter",
        "De-duplication entries forgotten by store.max_dedup_entries.",
        &|s| get(&s.store_forgotten_dedup),
    );
    family("imks_engineio_sessions_active", "gauge", "Open Engine.IO sessions, over every transport.", &|s| {
        get(&s.eio_sessions)
    });
    family(
        "imks_engineio_polls_waiting",
        "gauge",
        "Engine.IO long-polling GETs parked until their session has something to send.",
        &|s| get(&s.polls_waiting),
    );
    family("imks_handler_errors_total", "counter", "Application handlers that failed, panicked or timed out.", &|s| {
        get(&s.handler_errors)
    });
    family("imks_auth_failures_total", "counter", "Connections refused for a missing or bad token.", &|s| {
        get(&s.auth_failures)
    });
    family("imks_origin_refused_total", "counter", "Connections refused for their Origin (403).", &|s| {
        get(&s.origin_refused)
    });
    let _ = writeln!(
        out,
        "# HELP imks_limits_exceeded_total Requests or sessions refused by a limit.\n# TYPE imks_limits_exceeded_total counter"
    );
    for (i, s) in shards.iter().enumerate() {
        for (limit, c) in [
            ("node_connections", &s.limit_node),
            ("shard_connections", &s.limit_shard),
            ("ip_connections", &s.limit_ip),
            ("message_rate", &s.limit_rate),
            ("rooms_per_session", &s.limit_rooms),
            ("names", &s.limit_names),
        ] {
            let _ = writeln!(out, "imks_limits_exceeded_total{{shard=\"{i}\",limit=\"{limit}\"}} {}", get(c));
        }
    }
    let _ = writeln!(
        out,
        "# HELP imks_send_queue_drops_total Frames dropped by a full session send queue.\n# TYPE imks_send_queue_drops_total counter"
    );
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "imks_send_queue_drops_total{{shard=\"{i}\",policy=\"drop_newest\"}} {}",
            get(&s.drops_newest)
        );
        let _ = writeln!(
            out,
            "imks_send_queue_drops_total{{shard=\"{i}\",policy=\"drop_oldest\"}} {}",
            get(&s.drops_oldest)
        );
    }
    let _ = writeln!(out, "# HELP imks_closes_total Connections closed, by reason.\n# TYPE imks_closes_total counter");
    for (i, s) in shards.iter().enumerate() {
        for r in CloseReason::ALL {
            let _ = writeln!(out, "imks_closes_total{{shard=\"{i}\",reason=\"{}\"}} {}", r.as_str(), s.closes(r));
        }
    }
    let _ = writeln!(
        out,
        "# HELP imks_shard_driver I/O driver of each shard (1 for the one in use).\n# TYPE imks_shard_driver gauge"
    );
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(out, "imks_shard_driver{{shard=\"{i}\",driver=\"{}\"}} 1", s.driver().as_str());
    }
    let _ = writeln!(
        out,
        "# HELP imks_sidecar_up Whether the sidecar answered its last probe.\n# TYPE imks_sidecar_up gauge"
    );
    let _ = writeln!(out, "imks_sidecar_up {}", u8::from(sidecar_ok));
    let _ =
        writeln!(out, "# HELP imks_uptime_seconds Seconds since the node started.\n# TYPE imks_uptime_seconds gauge");
    let _ = writeln!(out, "imks_uptime_seconds {}", started.elapsed().as_secs());
    let p = ProcessStats::read();
    let mut gauge = |name: &str, help: &str, value: Option<u64>| {
        if let Some(v) = value {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    };
    gauge("process_resident_memory_bytes", "Resident memory of the process, in bytes.", p.rss_bytes);
    gauge("process_open_fds", "Open file descriptors of the process.", p.open_fds);
    gauge("process_max_fds", "The process's limit on open file descriptors (soft).", p.max_fds);
    out
}

/// The process's memory and file descriptors, read from `/proc` and `getrlimit` when asked
/// (`/health`, `/metrics`); `None` where the platform does not say. Counting descriptors lists
/// `/proc/self/fd`, about a millisecond per 10,000 open: cheap for a health probe, and never on
/// the message path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessStats {
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    pub fn read() -> Self {
        Self { rss_bytes: rss_bytes(), open_fds: open_fds(), max_fds: max_fds() }
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

fn open_fds() -> Option<u64> {
    // The listing's own descriptor is one of the entries; leave it out.
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1) as u64)
}

fn max_fds() -> Option<u64> {
    crate::util::rlimit::nofile().ok().map(|l| l.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_each_shard_and_reason() {
        let a = Arc::new(ShardStats::default());
        let b = Arc::new(ShardStats::default());
        add(&b.frames_in, 5);
        b.closed(CloseReason::SlowConsumer);
        a.set_driver(DriverKind::Epoll);
        let text = render_prometheus(&[a, b], Instant::now(), true);
        assert!(text.contains("imks_frames_in_total{shard=\"1\"} 5"));
        assert!(text.contains("imks_closes_total{shard=\"1\",reason=\"slow_consumer\"} 1"));
        assert!(text.contains("imks_closes_total{shard=\"0\",reason=\"slow_consumer\"} 0"));
        assert!(text.contains("imks_shard_driver{shard=\"0\",driver=\"epoll\"} 1"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "undeclared {name}");
        }
    }
}
