//! The runtime's own settings: what the shard layer needs to run threads, listeners,
//! connections, send queues and rings, whatever protocols it serves. The node's configuration
//! ([`crate::config`]) resolves them from `[server]`, `[http]`, `[websocket]`, `[rings]` and
//! `[sidecar]`, and hands the shards a [`RuntimeConfig`].

use std::net::SocketAddr;
use std::time::Duration;

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
