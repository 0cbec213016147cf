//! `[engineio]`: the section as written in `imks.toml`, and its resolution into [`EioConfig`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::{require_positive as positive, FieldError};

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

/// Engine.IO settings (the `[engineio]` section).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EioConfig {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Most bytes a polling POST body or a WebSocket message may hold.
    pub max_payload: usize,
    /// Most packets buffered for a polling client between two GETs; more closes the session.
    pub max_buffered_packets: usize,
    /// Allowed CORS origins for polling; `*` allows any and echoes the request's origin.
    pub cors_origins: Vec<String>,
    pub cors_credentials: bool,
}

impl EngineIoSection {
    /// Validates the section; the error names the field.
    pub fn resolve(&self) -> Result<EioConfig, FieldError> {
        positive("engineio.ping_interval_ms", self.ping_interval_ms)?;
        positive("engineio.ping_timeout_ms", self.ping_timeout_ms)?;
        positive("engineio.max_payload", self.max_payload as u64)?;
        positive("engineio.max_buffered_packets", self.max_buffered_packets as u64)?;
        Ok(EioConfig {
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            ping_timeout: Duration::from_millis(self.ping_timeout_ms),
            max_payload: self.max_payload,
            max_buffered_packets: self.max_buffered_packets,
            cors_origins: self.cors_origins.clone(),
            cors_credentials: self.cors_credentials,
        })
    }
}
