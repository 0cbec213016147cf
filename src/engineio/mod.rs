//! Engine.IO v4 on a shard: sessions over long-polling and WebSocket, the upgrade from one to
//! the other, heartbeats and the protocol's error answers. The wire format is the pure
//! [`packet`] module; the layer above (Socket.IO, or the raw echo of the conformance
//! application) is an [`EioApp`].
//!
//! A session belongs to the shard that opened it: its id is a [`Sid`], which names that
//! shard. Everything about a session (its queue, its pending long-poll, its timers) lives there
//! and is touched only by that shard's thread.
//!
//! The files:
//! - `mod.rs`: what the layer above sees: [`EioApp`] and [`CloseReason`].
//! - `session.rs`: one session ([`EioSession`]), its send paths, the packets it receives and
//!   [`close`].
//! - `table.rs`: a shard's sessions ([`Engine`]), with the heap of heartbeat deadlines and the
//!   task that drives it.
//! - `polling.rs`: the long-polling transport: handshake, GET and POST, CORS, the protocol's
//!   error answers ([`RequestError`]), and forwarding a request to the shard that owns its
//!   session.
//! - `websocket.rs`: the WebSocket transport ([`EioWs`]): a fresh session, the upgrade from
//!   polling, and a socket handed over by another shard.
//! - `route.rs`: where a request goes ([`route()`]).
//! - `packet.rs`, `sid.rs`, `config.rs`: the wire format, session ids, `[engineio]`.

pub mod packet;

use std::rc::Rc;

use crate::shard::Shard;
use packet::Payload;

pub use config::{EioConfig, EngineIoSection};
pub use polling::{cors, parse_query, EioQuery, RequestError, TransportKind};
pub use route::route;
pub(crate) use session::ws_frame;
pub use session::{close, EioSession, Prepared};
pub use sid::Sid;
pub use table::Engine;
pub use websocket::EioWs;

mod config;
mod poll_queue;
mod polling;
mod route;
mod session;
mod sid;
mod table;
mod websocket;

/// What sits on top of Engine.IO. Runs on the session's shard; may be `!Send`.
pub trait EioApp {
    /// The session exists and its open packet is queued.
    fn on_open(&self, _shard: &Shard, _s: &Rc<EioSession>) {}
    fn on_message(&self, shard: &Shard, s: &Rc<EioSession>, msg: Payload);
    /// The session is gone, for this reason.
    fn on_close(&self, _shard: &Shard, _s: &Rc<EioSession>, _reason: CloseReason) {}
}

/// Why an Engine.IO session ended. [`CloseReason::as_str`] is the reason string the reference
/// server reports to the layer above (Socket.IO passes it to disconnect handlers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The node is shutting down.
    ServerShutdown,
    /// The client sent something that is not Engine.IO.
    ParseError,
    /// No pong within `ping_timeout`.
    PingTimeout,
    /// The transport failed: a second concurrent GET, an oversized POST, too many packets
    /// buffered for a polling client.
    TransportError,
    /// The client closed its transport (or sent a close packet).
    TransportClose,
    /// The server closed it on purpose (Socket.IO's `disconnect(true)`).
    ForcedClose,
    /// The client sent no Socket.IO CONNECT in time.
    ConnectTimeout,
    /// The client sent faster than `limits.message_rate` allows.
    RateLimited,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::ParseError => "parse error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::TransportError => "transport error",
            CloseReason::TransportClose => "transport close",
            CloseReason::ForcedClose => "forced close",
            CloseReason::ConnectTimeout => "connect timeout",
            CloseReason::RateLimited => "rate limited",
        }
    }

    /// The WebSocket close code and the metrics reason, for a session on a WebSocket.
    fn websocket_close(self) -> (u16, crate::metrics::CloseReason) {
        use crate::metrics::CloseReason as Metric;
        match self {
            CloseReason::ServerShutdown => (1001, Metric::Shutdown),
            CloseReason::ParseError => (1002, Metric::Protocol),
            CloseReason::PingTimeout => (1000, Metric::PingTimeout),
            CloseReason::TransportError => (1000, Metric::Io),
            CloseReason::RateLimited => (1008, Metric::Policy),
            CloseReason::TransportClose | CloseReason::ForcedClose | CloseReason::ConnectTimeout => {
                (1000, Metric::Client)
            }
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
