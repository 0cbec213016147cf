//! The runtime's own settings: what the shard layer needs to run threads, listeners,
//! connections, send queues and rings, whatever protocols it serves. The file's sections
//! (`[server]`, `[http]`, `[websocket]`, `[rings]`, `[sidecar]` and the per-shard files) are
//! defined here with their defaults, and [`resolve`] validates them into a [`RuntimeConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::{require_positive as positive, FieldError};

/// Which io_uring/epoll driver a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// io_uring, falling back to epoll when the ring cannot be created.
    Auto,
    IoUring,
    Epoll,
}

/// What a full session send queue does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backpressure {
    /// Close the session with 1008 "slow consumer".
    Close,
    /// Drop the frame being queued.
    DropNewest,
    /// Drop the oldest queued data frame to make room.
    DropOldest,
}

/// What a full cross-shard ring does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RingFullPolicy {
    /// The sending task waits until the receiving shard frees a slot.
    Wait,
    /// The message is dropped.
    Drop,
}

/// HTTP/1.1 limits.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpConfig {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub read_buffer_bytes: usize,
}

/// WebSocket session settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WsConfig {
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub backpressure: Backpressure,
    pub write_timeout: Duration,
    pub close_timeout: Duration,
    /// Write coalescing under load; `None` when `websocket.coalesce_us` is 0.
    pub coalesce: Option<Coalesce>,
}

/// When and how long a busy shard holds broadcast frames (see [`super::coalesce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Coalesce {
    pub window: Duration,
    pub on_busy_percent: u8,
    pub off_busy_percent: u8,
}

/// One shard's resolved settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardConfig {
    pub index: usize,
    pub cpu: Option<usize>,
    pub listen: Vec<SocketAddr>,
    pub max_connections: usize,
    pub send_queue_len: usize,
}

/// Everything the shard layer reads, shared by every shard of a node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuntimeConfig {
    pub shards: Vec<ShardConfig>,
    pub driver: DriverChoice,
    pub uring_entries: u32,
    /// Open connections on the node (`server.max_connections`).
    pub max_connections: usize,
    /// Limits on every connection and session, whatever its protocol: connections per
    /// address, message rate, rooms, names (`[limits]`).
    pub limits: crate::limits::LimitsConfig,
    pub shutdown_timeout: Duration,
    pub tick: Duration,
    pub http: HttpConfig,
    pub ws: WsConfig,
    pub ring_capacity: usize,
    pub ring_full_policy: RingFullPolicy,
    pub sidecar_channel_capacity: usize,
    pub sidecar_probe_timeout: Duration,
}

/// `[server]`: shards, listeners and process-wide limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Addresses every shard listens on (SO_REUSEPORT). Default `["0.0.0.0:3000"]`.
    pub listen: Vec<String>,
    /// Number of shards; 0 means one per CPU the process may run on. Default 0.
    pub shards: usize,
    /// CPUs to pin shards to, in shard order; empty means the first `shards` allowed CPUs.
    /// Default `[]`.
    pub cpus: Vec<usize>,
    /// Pin each shard to one CPU. With `cpus` empty, shard `i` takes the `i`-th CPU the process
    /// may run on. Default true.
    pub pin_threads: bool,
    /// I/O driver: `auto` (io_uring, falling back to epoll), `io_uring` or `epoll`. Default `auto`.
    pub driver: String,
    /// io_uring submission queue entries per shard. Default 1024.
    pub uring_entries: u32,
    /// Maximum connections on the whole node (spread evenly over shards unless a shard file
    /// says otherwise); 0 means as many as the open-files limit allows: the hard limit less 256
    /// descriptors the node keeps for itself. Default 0.
    pub max_connections: usize,
    /// How long a graceful shutdown may take before remaining connections are dropped, in
    /// milliseconds. Default 10000.
    pub shutdown_timeout_ms: u64,
    /// Period of the per-shard timer that drives heartbeats and timeouts, in milliseconds.
    /// Timeouts fire up to one tick late. Default 100.
    pub tick_ms: u64,
    /// Directory of per-shard override files (`shard-<N>.toml`), relative to the config file.
    /// Default `shards`.
    pub shards_dir: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:3000".into()],
            shards: 0,
            cpus: Vec::new(),
            pin_threads: true,
            driver: "auto".into(),
            uring_entries: 1024,
            max_connections: 0,
            shutdown_timeout_ms: 10_000,
            tick_ms: 100,
            shards_dir: "shards".into(),
        }
    }
}

/// `[http]`: HTTP/1.1 limits and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Largest request line plus headers, in bytes; larger gets 431. Default 8192.
    pub max_head_bytes: usize,
    /// Most headers in one request; more gets 431. Default 64.
    pub max_headers: usize,
    /// Largest request body, in bytes; larger gets 413. Default 1048576 (1 MiB).
    pub max_body_bytes: usize,
    /// Time allowed to receive a whole request head once its first byte arrived (slow-loris
    /// defence), in milliseconds; exceeded gets 408 and a close. Default 10000.
    pub header_timeout_ms: u64,
    /// Time a keep-alive connection may sit between requests, in milliseconds. Default 60000.
    pub idle_timeout_ms: u64,
    /// Read buffer size per connection, in bytes. Default 16384.
    pub read_buffer_bytes: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            max_head_bytes: 8192,
            max_headers: 64,
            max_body_bytes: 1 << 20,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            read_buffer_bytes: 16 * 1024,
        }
    }
}

/// `[websocket]`: RFC 6455 sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketSection {
    /// Largest message (after reassembly), in bytes; larger closes with 1009. Default 1048576.
    pub max_message_bytes: usize,
    /// Largest single frame, in bytes; larger closes with 1009. Default 1048576.
    pub max_frame_bytes: usize,
    /// A ping is sent after this long without traffic from the client, in milliseconds.
    /// Default 25000.
    pub ping_interval_ms: u64,
    /// The session is closed when nothing arrives this long after a ping, in milliseconds.
    /// Default 20000.
    pub ping_timeout_ms: u64,
    /// Frames a session may have queued for sending. Default 1024.
    pub send_queue_len: usize,
    /// What happens when the send queue is full: `close` (close 1008 "slow consumer"),
    /// `drop_newest` or `drop_oldest`. Default `close`.
    pub backpressure: String,
    /// A socket write that makes no progress for this long closes the session, in milliseconds.
    /// Default 10000.
    pub write_timeout_ms: u64,
    /// Time the peer has to answer our close frame before the socket is dropped, in
    /// milliseconds. Default 5000.
    pub close_timeout_ms: u64,
    /// Write coalescing under load: while a shard is busy, broadcast frames wait up to this
    /// long, in microseconds, so that several leave in one socket write. 0 turns it off. At
    /// most 1000000. Default 2000.
    pub coalesce_us: u64,
    /// Coalescing turns on after a tick in which the shard's thread was busy at least this
    /// percentage of the time (0 = always). At most 100. Default 80.
    pub coalesce_on_busy_percent: u8,
    /// Coalescing turns off after a tick in which the shard was busy less than this
    /// percentage of the time. At most `coalesce_on_busy_percent`. Default 50.
    pub coalesce_off_busy_percent: u8,
}

impl Default for WebSocketSection {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_frame_bytes: 1 << 20,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            send_queue_len: 1024,
            backpressure: "close".into(),
            write_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            coalesce_us: 5_000,
            coalesce_on_busy_percent: 80,
            coalesce_off_busy_percent: 50,
        }
    }
}

/// `[rings]`: the SPSC rings between shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingsSection {
    /// Slots in each ring (one per ordered pair of shards). Default 8192.
    pub capacity: usize,
    /// When a ring is full: `wait` (the sending task waits for space; nothing is lost) or
    /// `drop` (the message is dropped). Both are counted. Default `wait`.
    pub full_policy: String,
}

impl Default for RingsSection {
    fn default() -> Self {
        Self { capacity: 8192, full_policy: "wait".into() }
    }
}

/// `[sidecar]`: the tokio thread that talks to external services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarSection {
    /// Capacity of each channel between a shard and the sidecar. Default 4096.
    pub channel_capacity: usize,
    /// How long `/health` waits for the sidecar's answer, in milliseconds. Default 1000.
    pub probe_timeout_ms: u64,
}

impl Default for SidecarSection {
    fn default() -> Self {
        Self { channel_capacity: 4096, probe_timeout_ms: 1000 }
    }
}

/// `shards/shard-<N>.toml`: overrides for one shard. Absent fields keep the node-wide value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardFile {
    /// CPU to pin this shard to.
    pub cpu: Option<usize>,
    /// Listen addresses of this shard (replaces `server.listen`).
    pub listen: Option<Vec<String>>,
    /// Maximum connections on this shard.
    pub max_connections: Option<usize>,
    /// Send queue length of this shard's sessions.
    pub send_queue_len: Option<usize>,
}

/// How many shards `[server]` asks for: `shards`, else one per CPU listed in `cpus`, else one
/// per CPU the process may run on.
pub fn shard_count(s: &ServerSection) -> Result<usize, FieldError> {
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let count = match s.shards {
        0 if !s.cpus.is_empty() => s.cpus.len(),
        0 => available,
        n => n,
    };
    if count > 1024 {
        return Err(FieldError::new("server.shards", "at most 1024 shards"));
    }
    if !s.cpus.is_empty() && s.cpus.len() != count {
        return Err(FieldError::new(
            "server.cpus",
            format!("lists {} CPUs for {} shards; give one per shard or none", s.cpus.len(), count),
        ));
    }
    Ok(count)
}

/// The runtime's sections of one configuration file.
pub struct Sections<'a> {
    pub server: &'a ServerSection,
    pub http: &'a HttpSection,
    pub websocket: &'a WebSocketSection,
    pub rings: &'a RingsSection,
    pub sidecar: &'a SidecarSection,
}

/// Validates the runtime's sections. `shard_files[i]` holds shard `i`'s overrides, if any
/// (one entry per shard of [`shard_count`]); `limits` is the resolved `[limits]`.
pub fn resolve(
    sections: Sections<'_>,
    shard_files: &[Option<ShardFile>],
    limits: crate::limits::LimitsConfig,
) -> Result<RuntimeConfig, FieldError> {
    let Sections { server: s, http: h, websocket: w, rings, sidecar } = sections;
    let driver = match s.driver.as_str() {
        "auto" => DriverChoice::Auto,
        "io_uring" | "iouring" => DriverChoice::IoUring,
        "epoll" | "legacy" => DriverChoice::Epoll,
        other => {
            return Err(FieldError::new("server.driver", format!("`{other}` is not one of auto, io_uring, epoll")))
        }
    };
    let shard_count = shard_count(s)?;
    let listen = parse_addrs("server.listen", &s.listen)?;
    if listen.is_empty() {
        return Err(FieldError::new("server.listen", "needs at least one address"));
    }
    // 0: as many as the open-files limit allows (the default), so a default start never asks
    // for more than the host can give.
    let max_connections = match s.max_connections {
        0 => crate::limits::connections_the_fd_limit_allows(),
        n => n,
    };
    positive("server.tick_ms", s.tick_ms)?;
    positive("server.uring_entries", u64::from(s.uring_entries))?;
    positive("http.max_head_bytes", h.max_head_bytes as u64)?;
    positive("http.max_headers", h.max_headers as u64)?;
    positive("http.header_timeout_ms", h.header_timeout_ms)?;
    positive("http.idle_timeout_ms", h.idle_timeout_ms)?;
    if h.read_buffer_bytes < 512 {
        return Err(FieldError::new("http.read_buffer_bytes", "must be at least 512"));
    }
    positive("websocket.max_message_bytes", w.max_message_bytes as u64)?;
    positive("websocket.max_frame_bytes", w.max_frame_bytes as u64)?;
    positive("websocket.ping_interval_ms", w.ping_interval_ms)?;
    positive("websocket.ping_timeout_ms", w.ping_timeout_ms)?;
    positive("websocket.send_queue_len", w.send_queue_len as u64)?;
    positive("websocket.write_timeout_ms", w.write_timeout_ms)?;
    positive("websocket.close_timeout_ms", w.close_timeout_ms)?;
    if w.coalesce_us > 1_000_000 {
        return Err(FieldError::new("websocket.coalesce_us", "must be at most 1000000 (one second)"));
    }
    if w.coalesce_on_busy_percent > 100 {
        return Err(FieldError::new("websocket.coalesce_on_busy_percent", "must be at most 100"));
    }
    if w.coalesce_off_busy_percent > w.coalesce_on_busy_percent {
        return Err(FieldError::new(
            "websocket.coalesce_off_busy_percent",
            "must be at most websocket.coalesce_on_busy_percent",
        ));
    }
    let backpressure = match w.backpressure.as_str() {
        "close" => Backpressure::Close,
        "drop_newest" => Backpressure::DropNewest,
        "drop_oldest" => Backpressure::DropOldest,
        other => {
            return Err(FieldError::new(
                "websocket.backpressure",
                format!("`{other}` is not one of close, drop_newest, drop_oldest"),
            ))
        }
    };
    if rings.capacity < 2 {
        return Err(FieldError::new("rings.capacity", "must be at least 2"));
    }
    let ring_full_policy = match rings.full_policy.as_str() {
        "wait" => RingFullPolicy::Wait,
        "drop" => RingFullPolicy::Drop,
        other => return Err(FieldError::new("rings.full_policy", format!("`{other}` is not one of wait, drop"))),
    };
    positive("sidecar.channel_capacity", sidecar.channel_capacity as u64)?;
    positive("sidecar.probe_timeout_ms", sidecar.probe_timeout_ms)?;

    let allowed = if s.pin_threads { allowed_cpus() } else { Vec::new() };
    let per_shard_conns = max_connections.div_ceil(shard_count);
    let mut shards = Vec::with_capacity(shard_count);
    for index in 0..shard_count {
        let over = shard_files.get(index).cloned().flatten().unwrap_or_default();
        let field = |name: &str| format!("{}/shard-{index}.toml: {name}", s.shards_dir);
        let listen = match &over.listen {
            Some(l) => parse_addrs(&field("listen"), l)?,
            None => listen.clone(),
        };
        if listen.is_empty() {
            return Err(FieldError::new(field("listen"), "needs at least one address"));
        }
        let cpu = over
            .cpu
            .or_else(|| s.cpus.get(index).copied())
            .or_else(|| (!allowed.is_empty()).then(|| allowed[index % allowed.len()]));
        let cpu = if s.pin_threads { cpu } else { None };
        let max_connections = over.max_connections.unwrap_or(per_shard_conns);
        positive(&field("max_connections"), max_connections as u64)?;
        let send_queue_len = over.send_queue_len.unwrap_or(w.send_queue_len);
        positive(&field("send_queue_len"), send_queue_len as u64)?;
        shards.push(ShardConfig { index, cpu, listen, max_connections, send_queue_len });
    }

    Ok(RuntimeConfig {
        shards,
        driver,
        uring_entries: s.uring_entries,
        max_connections,
        limits,
        shutdown_timeout: Duration::from_millis(s.shutdown_timeout_ms),
        tick: Duration::from_millis(s.tick_ms),
        http: HttpConfig {
            max_head_bytes: h.max_head_bytes,
            max_headers: h.max_headers,
            max_body_bytes: h.max_body_bytes,
            header_timeout: Duration::from_millis(h.header_timeout_ms),
            idle_timeout: Duration::from_millis(h.idle_timeout_ms),
            read_buffer_bytes: h.read_buffer_bytes,
        },
        ws: WsConfig {
            max_message_bytes: w.max_message_bytes,
            max_frame_bytes: w.max_frame_bytes,
            ping_interval: Duration::from_millis(w.ping_interval_ms),
            ping_timeout: Duration::from_millis(w.ping_timeout_ms),
            backpressure,
            write_timeout: Duration::from_millis(w.write_timeout_ms),
            close_timeout: Duration::from_millis(w.close_timeout_ms),
            coalesce: (w.coalesce_us > 0).then(|| Coalesce {
                window: Duration::from_micros(w.coalesce_us),
                on_busy_percent: w.coalesce_on_busy_percent,
                off_busy_percent: w.coalesce_off_busy_percent,
            }),
        },
        ring_capacity: rings.capacity,
        ring_full_policy,
        sidecar_channel_capacity: sidecar.channel_capacity,
        sidecar_probe_timeout: Duration::from_millis(sidecar.probe_timeout_ms),
    })
}

fn parse_addrs(field: &str, list: &[String]) -> Result<Vec<SocketAddr>, FieldError> {
    list.iter()
        .map(|a| a.parse().map_err(|_| FieldError::new(field, format!("`{a}` is not an IP:port address"))))
        .collect()
}

/// The CPUs this process may run on (its affinity mask), in ascending order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask that sched_getaffinity fills in; we pass its exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}
