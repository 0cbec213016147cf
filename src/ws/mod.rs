//! WebSocket (RFC 6455), pure: the handshake validation ([`handshake`]) and the frame codec
//! ([`codec`], tungstenite used as a codec over our buffers). The session driver that runs them
//! on a connection is the shard's ([`crate::shard::websocket`]).

pub mod codec;
pub mod handshake;
