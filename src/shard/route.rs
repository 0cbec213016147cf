//! Who answers a request: the assembler's [`Router`] maps each request head to a [`Route`], and
//! the transport drivers ([`super::http`], [`super::websocket`]) run it. Handlers run on the
//! shard that owns the connection, so they may be `!Send`; they must not block.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::conn::Conn;
use super::Shard;
use crate::http::parse::RequestHead;
use crate::http::Response;

/// Maps a request to who answers it. One per shard, set by the assembler.
pub trait Router: 'static {
    fn route(&self, shard: &Rc<Shard>, head: &RequestHead) -> Route;
}

/// Where a request goes.
pub enum Route {
    /// An HTTP answer, computed once the body is in.
    Http(Rc<dyn HttpHandler>),
    /// An answer known at routing time (a refusal, a protocol error, 404).
    Fixed(Response),
    /// A WebSocket upgrade, served on this shard by the handler.
    WebSocket(Rc<dyn WsHandler>),
    /// A WebSocket upgrade for a session that shard `owner` keeps: after the handshake the
    /// socket moves there, and `adopt` runs on that shard to say who serves it (`None`: the
    /// session is gone, and the socket is closed).
    HandOff { owner: usize, adopt: Adopt },
}

/// Run on the shard a socket moves to ([`Route::HandOff`]).
pub type Adopt = Box<dyn FnOnce(&Rc<Shard>) -> Option<Rc<dyn WsHandler>> + Send>;

/// The future an [`HttpHandler`] answers with.
pub type ResponseFuture<'a> = Pin<Box<dyn Future<Output = Response> + 'a>>;

/// An HTTP endpoint.
pub trait HttpHandler {
    /// Answers a request whose head and body are complete.
    fn respond<'a>(&'a self, shard: &'a Rc<Shard>, head: &'a RequestHead, body: &'a [u8]) -> ResponseFuture<'a>;
}

/// What an endpoint does with a WebSocket session's messages.
pub trait WsHandler {
    /// The handshake is done; nothing has been read yet.
    fn on_open(&self, _shard: &Rc<Shard>, _conn: &Rc<Conn>) {}
    /// A complete text or binary message arrived.
    fn on_message(&self, shard: &Shard, conn: &Rc<Conn>, msg: tungstenite::Message);
    /// The connection has ended (both directions); called once.
    fn on_close(&self, _shard: &Shard, _conn: &Rc<Conn>) {}
}

/// The router of a shard the assembler gave none: every request gets 404.
pub(super) struct NotFound;

impl Router for NotFound {
    fn route(&self, _shard: &Rc<Shard>, _head: &RequestHead) -> Route {
        Route::Fixed(Response::new(404, "text/plain", "not found\n"))
    }
}
