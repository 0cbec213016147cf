//! `[socketio]`: the section as written in `imks.toml`, and its resolution into [`SioConfig`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::packet;
use super::recovery::RecoveryConfig;
use crate::util::{require_positive as positive, FieldError};

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

/// Socket.IO settings (the `[socketio]` section).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SioConfig {
    /// A connection that joins no namespace within this time is closed.
    pub connect_timeout: Duration,
    /// Most binary attachments one packet may announce.
    pub max_attachments: usize,
    /// Connection state recovery (socket.io 4.6+); off when `None`.
    pub recovery: Option<RecoveryConfig>,
}

impl Default for SioConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(45),
            max_attachments: packet::DEFAULT_MAX_ATTACHMENTS,
            recovery: None,
        }
    }
}

impl SocketIoSection {
    /// Validates the section; the error names the field.
    pub fn resolve(&self) -> Result<SioConfig, FieldError> {
        positive("socketio.connect_timeout_ms", self.connect_timeout_ms)?;
        positive("socketio.recovery_max_packets", self.recovery_max_packets as u64)?;
        Ok(SioConfig {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_attachments: self.max_attachments,
            recovery: (self.recovery_window_ms > 0).then(|| RecoveryConfig {
                window: Duration::from_millis(self.recovery_window_ms),
                max_packets: self.recovery_max_packets,
            }),
        })
    }
}
