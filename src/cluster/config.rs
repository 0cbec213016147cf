//! `[cluster]`: whether a node joins others, over which backend, and the bridge's bounds.
//!
//! [`ClusterSection`] is the file's shape (every field defaulted, unknown keys refused);
//! [`ClusterSection::resolve`] validates it into [`ClusterConfig`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::{require_positive, FieldError};

/// Which backend carries traffic between nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterBackend {
    /// A node on its own: nothing leaves it.
    #[default]
    None,
    /// Core NATS, one subject per room, user and namespace with members on the node.
    Nats,
    /// Redis pub/sub, one channel per subject, as with NATS.
    Redis,
}

impl ClusterBackend {
    /// The address a backend is reached at when `cluster.url` is left empty.
    pub fn default_url(self) -> &'static str {
        match self {
            ClusterBackend::None => "",
            ClusterBackend::Nats => "nats://127.0.0.1:4222",
            ClusterBackend::Redis => "redis://127.0.0.1:6379",
        }
    }
}

/// `[cluster]` as written in `imks.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// `"none"` (default: a node on its own), `"nats"` or `"redis"`.
    pub backend: ClusterBackend,
    /// The backend's address. Empty (the default): the backend's own default,
    /// `nats://127.0.0.1:4222` for NATS, `redis://127.0.0.1:6379` for Redis. A Redis address
    /// starts with `redis://` (`redis://user:password@host:port/db` with credentials); a NATS
    /// one must not.
    pub url: String,
    /// This node's name in the cluster: letters, digits, `-` and `_`, at most 64 bytes. Empty
    /// (the default): a random one at every start, which is what a replaceable node wants.
    pub node_id: String,
    /// The first token of every subject, so several clusters can share one NATS or Redis.
    /// Letters, digits, `-` and `_`. Default `imks`.
    pub prefix: String,
    /// How long a subject stays subscribed after the node's last member of it left, so that a
    /// member leaving and another joining soon after cost no subscription churn. Default 5000.
    pub unsubscribe_delay_ms: u64,
    /// Most envelopes waiting to be published (all shards together); past it a publish is
    /// dropped and counted in `imks_cluster_dropped_total{reason="publish_queue"}`. Also the
    /// most broadcasts the recovery stream's outbox holds while NATS is unreachable. Default
    /// 65536.
    pub publish_queue: usize,
    /// Most envelopes waiting for one shard to take them; past it an incoming envelope is
    /// dropped for that shard and counted (`reason="shard_queue"`). Default 65536.
    pub shard_queue: usize,
    /// Largest envelope accepted from the backend; a larger one is dropped and counted
    /// (`reason="too_large"`). Default 1048576 (the NATS default payload limit).
    pub max_envelope_bytes: usize,
    /// How long one attempt to connect to the backend may take, the first or a reconnect; a
    /// node starts without its backend and keeps trying in the background. Default 2000.
    pub connect_timeout_ms: u64,
    /// How often the bridge measures the round trip to the backend for `/health`. Default 5000.
    pub health_interval_ms: u64,
    /// Redis only: most envelopes the subscriber connection may hold before the bridge reads
    /// them; past it the oldest are lost and counted in `imks_cluster_slow_consumer_total`, as
    /// NATS does past its client's 65536 per subscription. Memory for it is taken at start-up,
    /// about 200 bytes an envelope. Default 8192.
    pub redis_inbound_buffer: usize,
    /// How often a node tells the others it is alive, on the control subject. Default 2000.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is taken for gone: requests stop waiting for it.
    /// Must be more than `heartbeat_ms`. Default 6000.
    pub node_timeout_ms: u64,
    /// Longest a request to the other nodes (`fetch_sockets`, `sockets_join`, ...) waits for
    /// their answers; it then completes with those that came and the number that did not.
    /// Default 5000.
    pub request_timeout_ms: u64,
    /// Most requests in flight on a node, in each direction: its own waiting for answers, and
    /// others' being answered. Past it a new request of its own completes at once with every
    /// node missing, and one from another node is dropped and counted
    /// (`imks_cluster_dropped_total{reason="requests"}`). Default 1024.
    pub max_pending_requests: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            backend: ClusterBackend::None,
            url: String::new(),
            node_id: String::new(),
            prefix: "imks".into(),
            unsubscribe_delay_ms: 5000,
            publish_queue: 65536,
            shard_queue: 65536,
            max_envelope_bytes: 1 << 20,
            connect_timeout_ms: 2000,
            health_interval_ms: 5000,
            redis_inbound_buffer: 8192,
            heartbeat_ms: 2000,
            node_timeout_ms: 6000,
            request_timeout_ms: 5000,
            max_pending_requests: 1024,
        }
    }
}

/// The resolved `[cluster]`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    pub backend: ClusterBackend,
    /// Never empty when a backend is set: the backend's default when the file leaves it out.
    pub url: String,
    /// Never empty: generated at resolve time when the file leaves it out.
    pub node_id: Arc<str>,
    pub prefix: Arc<str>,
    pub unsubscribe_delay: Duration,
    pub publish_queue: usize,
    pub shard_queue: usize,
    pub max_envelope_bytes: usize,
    pub connect_timeout: Duration,
    pub health_interval: Duration,
    pub redis_inbound_buffer: usize,
    pub heartbeat: Duration,
    pub node_timeout: Duration,
    pub request_timeout: Duration,
    pub max_pending_requests: usize,
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.backend != ClusterBackend::None
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        // The defaults are valid by construction.
        ClusterSection::default().resolve().unwrap_or_else(|e| unreachable!("default [cluster]: {e}"))
    }
}

/// Whether `s` is a non-empty token of letters, digits, `-` and `_`: safe in a subject, a key
/// and a log line.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterSection {
    pub fn resolve(&self) -> Result<ClusterConfig, FieldError> {
        let node_id: Arc<str> = if self.node_id.is_empty() {
            // Random, so a restarted node is a new member: nothing addressed to the old one
            // reaches the new one by mistake.
            format!("n{:016x}", rand::random::<u64>()).into()
        } else if is_token(&self.node_id) {
            self.node_id.as_str().into()
        } else {
            return Err(FieldError::new("cluster.node_id", "use 1 to 64 letters, digits, `-` or `_`"));
        };
        if !is_token(&self.prefix) {
            return Err(FieldError::new("cluster.prefix", "use 1 to 64 letters, digits, `-` or `_`"));
        }
        let url = if self.url.is_empty() { self.backend.default_url() } else { self.url.as_str() };
        let redis_scheme = url.starts_with("redis://") || url.starts_with("rediss://");
        match self.backend {
            ClusterBackend::None => {}
            _ if url.trim().is_empty() => {
                return Err(FieldError::new("cluster.url", "a cluster backend needs its address"));
            }
            ClusterBackend::Nats if redis_scheme => {
                return Err(FieldError::new("cluster.url", "a Redis address for the NATS backend"));
            }
            ClusterBackend::Redis if !url.starts_with("redis://") => {
                return Err(FieldError::new("cluster.url", "a Redis address starts with redis://"));
            }
            ClusterBackend::Nats | ClusterBackend::Redis => {}
        }
        require_positive("cluster.publish_queue", self.publish_queue as u64)?;
        require_positive("cluster.shard_queue", self.shard_queue as u64)?;
        require_positive("cluster.max_envelope_bytes", self.max_envelope_bytes as u64)?;
        require_positive("cluster.connect_timeout_ms", self.connect_timeout_ms)?;
        require_positive("cluster.health_interval_ms", self.health_interval_ms)?;
        require_positive("cluster.redis_inbound_buffer", self.redis_inbound_buffer as u64)?;
        require_positive("cluster.heartbeat_ms", self.heartbeat_ms)?;
        require_positive("cluster.request_timeout_ms", self.request_timeout_ms)?;
        require_positive("cluster.max_pending_requests", self.max_pending_requests as u64)?;
        if self.node_timeout_ms <= self.heartbeat_ms {
            return Err(FieldError::new(
                "cluster.node_timeout_ms",
                "must be more than cluster.heartbeat_ms, or live nodes are taken for gone",
            ));
        }
        Ok(ClusterConfig {
            backend: self.backend,
            url: url.to_string(),
            node_id,
            prefix: self.prefix.as_str().into(),
            unsubscribe_delay: Duration::from_millis(self.unsubscribe_delay_ms),
            publish_queue: self.publish_queue,
            shard_queue: self.shard_queue,
            max_envelope_bytes: self.max_envelope_bytes,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            health_interval: Duration::from_millis(self.health_interval_ms),
            redis_inbound_buffer: self.redis_inbound_buffer,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            node_timeout: Duration::from_millis(self.node_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_pending_requests: self.max_pending_requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_a_node_on_its_own_with_a_generated_id() {
        let a = ClusterSection::default().resolve().unwrap();
        let b = ClusterSection::default().resolve().unwrap();
        assert!(!a.enabled());
        assert!(is_token(&a.node_id));
        assert_ne!(a.node_id, b.node_id, "each start is a new member");
    }

    #[test]
    fn refuses_ids_and_prefixes_that_would_break_a_subject() {
        for bad in ["a.b", "a b", "*", ">", &"x".repeat(65)] {
            let s = ClusterSection { node_id: bad.to_string(), ..Default::default() };
            assert_eq!(s.resolve().unwrap_err().field, "cluster.node_id", "{bad}");
            let s = ClusterSection { prefix: bad.to_string(), ..Default::default() };
            assert_eq!(s.resolve().unwrap_err().field, "cluster.prefix", "{bad}");
        }
        let s = ClusterSection { publish_queue: 0, ..Default::default() };
        assert_eq!(s.resolve().unwrap_err().field, "cluster.publish_queue");
        let s = ClusterSection { backend: ClusterBackend::Nats, url: " ".into(), ..Default::default() };
        assert_eq!(s.resolve().unwrap_err().field, "cluster.url");
        let s = ClusterSection { heartbeat_ms: 2000, node_timeout_ms: 2000, ..Default::default() };
        assert_eq!(s.resolve().unwrap_err().field, "cluster.node_timeout_ms");
        let s = ClusterSection { max_pending_requests: 0, ..Default::default() };
        assert_eq!(s.resolve().unwrap_err().field, "cluster.max_pending_requests");
    }

    #[test]
    fn the_url_defaults_per_backend_and_must_match_it() {
        let url = |backend, url: &str| ClusterSection { backend, url: url.into(), ..Default::default() }.resolve();
        assert_eq!(url(ClusterBackend::Nats, "").unwrap().url, "nats://127.0.0.1:4222");
        assert_eq!(url(ClusterBackend::Redis, "").unwrap().url, "redis://127.0.0.1:6379");
        assert_eq!(url(ClusterBackend::Redis, "redis://h:1/2").unwrap().url, "redis://h:1/2");
        assert_eq!(url(ClusterBackend::Nats, "h:4222").unwrap().url, "h:4222");
        for (backend, bad) in [
            (ClusterBackend::Redis, "nats://127.0.0.1:4222"),
            (ClusterBackend::Redis, "127.0.0.1:6379"),
            (ClusterBackend::Nats, "redis://127.0.0.1:6379"),
        ] {
            assert_eq!(url(backend, bad).unwrap_err().field, "cluster.url", "{bad}");
        }
    }
}
