//! `[chat]`: the section as written in `imks.toml`, and its resolution into [`ChatConfig`].

use std::time::Duration;

use serde::Serialize;

use crate::util::{require_positive as positive, FieldError};

/// What a second login of the same user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateLogin {
    /// Every session stays (several devices).
    Allow,
    /// The oldest session gets `kicked` and is closed with 4001.
    KickOldest,
}

/// `[chat]`: the native protocol.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSection {
    /// What a second login of the same user does: `allow` or `kick_oldest`. Default `allow`.
    pub duplicate_login: DuplicateLogin,
    /// Most sessions one user may have at once under `allow`; the oldest is kicked beyond it.
    /// Default 16.
    pub max_sessions_per_user: usize,
    /// Longest an application route's handler may run before the client is answered
    /// `error timeout`, in milliseconds (an application's own `Timeout` layer may be
    /// stricter). Default 5000.
    pub handler_timeout_ms: u64,
    /// In a cluster: how long the node that stored a direct message waits for another node to
    /// say it delivered it, when the recipient has no session on this node, before queueing it
    /// offline. Nodes without a session of the recipient say nothing (and NATS answers "no
    /// responders" at once when no node subscribes), so this is only waited when a node is slow
    /// or just lost the recipient's last session. Default 1000.
    pub cluster_route_timeout_ms: u64,
}

impl Default for ChatSection {
    fn default() -> Self {
        Self {
            duplicate_login: DuplicateLogin::Allow,
            max_sessions_per_user: 16,
            handler_timeout_ms: 5000,
            cluster_route_timeout_ms: 1000,
        }
    }
}

/// The resolved `[chat]`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatConfig {
    pub duplicate_login: DuplicateLogin,
    pub max_sessions_per_user: usize,
    pub handler_timeout: Duration,
    pub cluster_route_timeout: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        let s = ChatSection::default();
        Self {
            duplicate_login: s.duplicate_login,
            max_sessions_per_user: s.max_sessions_per_user,
            handler_timeout: Duration::from_millis(s.handler_timeout_ms),
            cluster_route_timeout: Duration::from_millis(s.cluster_route_timeout_ms),
        }
    }
}

impl ChatSection {
    /// Validates the section; the error names the field.
    pub fn resolve(&self) -> Result<ChatConfig, FieldError> {
        positive("chat.handler_timeout_ms", self.handler_timeout_ms)?;
        positive("chat.max_sessions_per_user", self.max_sessions_per_user as u64)?;
        positive("chat.cluster_route_timeout_ms", self.cluster_route_timeout_ms)?;
        Ok(ChatConfig {
            duplicate_login: self.duplicate_login,
            max_sessions_per_user: self.max_sessions_per_user,
            handler_timeout: Duration::from_millis(self.handler_timeout_ms),
            cluster_route_timeout: Duration::from_millis(self.cluster_route_timeout_ms),
        })
    }
}
