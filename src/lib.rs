//! imks: a thread-per-core, io_uring realtime messaging server.
//!
//! Module map, in the order a connection's bytes flow through them:
//!
//! - [`config`]: `imks.toml`, `shards/shard-<N>.toml` and `IMKS_*` overrides, resolved into
//!   [`config::Config`].
//! - [`node`]: assembles a node: sidecar thread, ring mesh, one pinned shard thread per core.
//! - [`shard`]: one monoio runtime per core with its listeners, connection slab, room table,
//!   coarse timer and ring endpoints; [`shard::session`] holds session ids and send queues.
//! - [`http`]: the pure HTTP/1.1 head parser and the per-connection driver (keep-alive,
//!   pipelining, limits, timeouts, upgrade).
//! - [`auth`]: who a client is (anonymous, static tokens or JWT) and which web origins may
//!   connect; pure, shared by all shards.
//! - [`ws`]: the pure WebSocket handshake and codec, and the session driver (reader and
//!   coalescing writer).
//! - [`engineio`]: Engine.IO v4 sessions over polling and WebSocket, with the pure packet codec.
//! - [`socketio`]: Socket.IO v5 namespaces, events, acks, binary and cross-shard rooms on top
//!   of Engine.IO, with the pure packet codec.
//! - [`chat`]: identities on the node (home shards), presence, and the native JSON protocol at
//!   `/ws` with `sent`/`delivered`/`read` acks, offline delivery and the embeddable router.
//! - [`app`]: what the node serves: `/health`, `/metrics`, `/ws-echo`, the IM events on
//!   Socket.IO, and in conformance mode the raw Engine.IO echo.
//! - [`limits`]: connection limits per node and IP, per-session rate and room limits, names.
//! - [`ring`]: bounded lock-free SPSC rings between shards, with doorbells.
//! - [`sidecar`]: the tokio thread for external services, reached over bounded channels.
//! - [`store`]: the per-shard message store interface and its in-memory backend: messages,
//!   history, edits, reactions, read state, offline queues, with bounded eviction.
//! - [`membership`]: who may send to and join each channel, a lock-free snapshot shared by all
//!   shards.
//! - [`names`]: the one validation rule for tenant, room, channel and user ids.
//! - [`metrics`]: per-shard counters and Prometheus rendering.

pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod engineio;
pub mod http;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod names;
pub mod node;
pub mod ring;
pub mod shard;
pub mod sidecar;
pub mod socketio;
pub mod store;
#[cfg(test)]
mod test_util;
pub mod util;
pub mod ws;

pub use config::Config;
pub use node::Node;
