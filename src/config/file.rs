//! The shape of `imks.toml` and `shards/shard-<N>.toml`, exactly as users write them.
//!
//! Every field has a default, so an empty file (or none) is a valid configuration. Unknown keys
//! are rejected so a typo fails at start-up instead of being silently ignored. These types are
//! only the file's shape; [`super::Config`] is the resolved, validated form the server uses.
//!
//! Each section belongs to the module it configures, which also resolves it (the shard's
//! `[server]`, `[http]`, `[websocket]`, `[rings]` and `[sidecar]`; Engine.IO's, Socket.IO's,
//! chat's, auth's, ...); this file only composes them into the file's root.

use serde::{Deserialize, Serialize};

pub use crate::chat::ChatSection;
pub use crate::engineio::EngineIoSection;
pub use crate::shard::config::{HttpSection, RingsSection, ServerSection, ShardFile, SidecarSection, WebSocketSection};
pub use crate::socketio::SocketIoSection;

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
    pub chat: ChatSection,
    pub store: crate::store::StoreSection,
    pub membership: crate::membership::MembershipSection,
    pub cluster: crate::cluster::ClusterSection,
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
