//! imks: a thread-per-core, io_uring realtime messaging server.
//!
//! Module map, in layers from the bottom up; a module uses only the layers below it (and the
//! modules before it in its own layer), which `tests/layers.rs` enforces
//! (docs/architecture.md):
//!
//! 1. **Foundation.** [`util`] (local events, slot ids, field errors), [`names`] (the one
//!    validation rule for ids), [`metrics`] (per-shard counters, Prometheus text), [`ring`]
//!    (bounded lock-free SPSC rings between shards), [`sidecar`] (the tokio thread for external
//!    services), [`limits`] (connection, rate, room and name limits).
//! 2. **Pure codecs.** [`http`] (request heads, responses) and [`ws`] (RFC 6455 handshake and
//!    frames): bytes in, values out, no runtime.
//! 3. **Runtime.** [`shard`]: one monoio runtime per core with its listeners, connection slab,
//!    send queues, rooms, rings, timers, the HTTP and WebSocket drivers, and the registry of
//!    per-shard services. It knows no protocol.
//! 4. **Services and protocols.** [`auth`] (who a client is, the per-shard gate),
//!    [`membership`] (who may use which channel), [`store`] (messages, history, offline
//!    queues), [`engineio`] (Engine.IO v4 over polling and WebSocket), [`socketio`] (Socket.IO
//!    v5 on top of it), [`chat`] (identities, presence and the native JSON protocol at `/ws`).
//! 5. **What a node serves.** [`app`]: `/health`, `/metrics`, `/ws-echo`, the IM events on
//!    Socket.IO and the conformance application.
//! 6. **Assembly.** [`config`] (composes each module's section of `imks.toml`) and [`node`]
//!    (the one place that says what a node is made of: listeners, routes, applications,
//!    per-shard and sidecar services).

pub mod app;
pub mod auth;
pub mod chat;
pub mod cluster;
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
