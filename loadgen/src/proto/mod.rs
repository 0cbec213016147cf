//! Client-side wire framing, free of sockets, runtimes and clocks: bytes in, values out.
//!
//! - [`ws`]: the RFC 6455 client handshake and frame codec (masked frames out, unmasked in).
//! - [`sio`]: Engine.IO v4 packets carried in WebSocket text messages and the Socket.IO v5
//!   packets inside them.
//! - [`stamp`]: the sequence number and send time every scenario message carries.
//! - [`native`]: imks's native JSON protocol at `/ws` (the `chat` scenario).
//! - [`polling`]: Engine.IO long-polling: HTTP/1.1 requests and responses, `\x1e` payloads.

pub mod native;
pub mod polling;
pub mod sio;
pub mod stamp;
pub mod ws;
