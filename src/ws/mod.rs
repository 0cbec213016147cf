//! WebSocket (RFC 6455): the pure handshake validation ([`handshake`]) and frame codec
//! ([`codec`], tungstenite used as a codec over our buffers), and the session driver on the
//! shard ([`session`]).

pub mod codec;
pub mod handshake;
pub mod session;

use std::rc::Rc;

use crate::shard::session::Conn;
use crate::shard::Shard;

/// What an endpoint does with a session's messages. Runs on the shard that owns the session,
/// so it may be `!Send`; it must not block.
pub trait WsHandler {
    /// The handshake is done; nothing has been read yet.
    fn on_open(&self, _shard: &Rc<Shard>, _conn: &Rc<Conn>) {}
    /// A complete text or binary message arrived.
    fn on_message(&self, shard: &Shard, conn: &Rc<Conn>, msg: tungstenite::Message);
    /// The connection has ended (both directions); called once.
    fn on_close(&self, _shard: &Shard, _conn: &Rc<Conn>) {}
}
