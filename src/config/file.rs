//! The shape of `imks.toml` and `shards/shard-<N>.toml`, exactly as users write them.
//!
//! Every field has a default, so an empty file (or none) is a valid configuration. Unknown keys
//! are rejected so a typo fails at start-up instead of being silently ignored. These types are
//! only the file's shape; [`super::Config`] is the resolved, validated form the server uses.

use serde::{Deserialize, Serialize};

/// Root of `imks.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerSection,
    pub http: HttpSection,
    pub websocket: WebSocketSection,
    pub rings: RingsSection,
    pub sidecar: SidecarSection,
    pub engineio: EngineIoSection,
    pub socketio: SocketIoSection,
    pub log: LogSection,
    pub auth: crate::auth::AuthSection,
    pub limits: crate::limits::LimitsSection,
    pub chat: crate::chat::ChatSection,
    pub store: crate::store::StoreSection,
    pub membership: crate::membership::MembershipSection,
}

/// `[socketio]`: Socket.IO v5 at `/socket.io/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoSection {
    /// A connection that joins no namespace within this time is closed, in milliseconds.
    /// Default 45000.
    pub connect_timeout_ms: u64,
    /// Most binary attachments one packet may announce. Default 10.
    pub max_attachments: usize,
    /// Connection state recovery window in milliseconds; 0 turns recovery off. Default 0.
    pub recovery_window_ms: u64,
    /// Most events kept per socket for recovery. Default 1000.
    pub recovery_max_packets: usize,
}

impl Default for SocketIoSection {
    fn default() -> Self {
        Self { connect_timeout_ms: 45_000, max_attachments: 10, recovery_window_ms: 0, recovery_max_packets: 1000 }
    }
}

/// `[engineio]`: Engine.IO v4, under Socket.IO and the raw Engine.IO endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineIoSection {
    /// Server ping period, in milliseconds; the first ping goes out one interval after the
    /// open packet. Default 25000.
    pub ping_interval_ms: u64,
    /// How long a client has to answer a ping, in milliseconds. Default 20000.
    pub ping_timeout_ms: u64,
    /// Most bytes in one polling POST or one WebSocket message. Default 1000000.
    pub max_payload: usize,
    /// Most packets held for a polling client between two GETs; one more closes the session.
    /// Default 1024.
    pub max_buffered_packets: usize,
    /// Origins allowed to poll cross-origin; `"*"` allows any. Default `["*"]`.
    pub cors_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`. Default false.
    pub cors_credentials: bool,
}

impl Default for EngineIoSection {
    fn default() -> Self {
        Self {
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_payload: 1_000_000,
            max_buffered_packets: 1024,
            cors_origins: vec!["*".into()],
            cors_credentials: false,
        }
    }
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
    /// says otherwise). Default 100000.
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
            max_connections: 100_000,
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

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A `tracing` filter, e.g. `info` or `imks=debug`. `RUST_LOG` wins when set. Default `info`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { level: "info".into() }
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
