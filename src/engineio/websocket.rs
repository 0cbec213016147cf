//! The WebSocket transport: a fresh session, the upgrade of a polling session (`2probe`, then
//! `5`), and a socket that another shard accepted for a session of this one.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;

use super::packet::{self, Packet, Payload};
use super::session::{close, on_packet, open_packet, ws_frame, Transport};
use super::table::start_heartbeat;
use super::{CloseReason, EioApp, EioSession, Engine};
use crate::shard::conn::Conn;
use crate::shard::{Shard, WsHandler};

/// The WebSocket side of Engine.IO: a fresh session (no `sid`), or the upgrade of a polling
/// session (`sid` given).
pub struct EioWs {
    engine: Rc<Engine>,
    app: Rc<dyn EioApp>,
    session: RefCell<Option<Rc<EioSession>>>,
    /// The session being upgraded onto this connection, until its `5` arrives.
    upgrade_of: Option<Rc<EioSession>>,
    /// For a fresh session: who the upgrade request's token said the client is.
    identity: RefCell<Option<Rc<crate::auth::Identity>>>,
}

impl EioWs {
    pub fn new(engine: Rc<Engine>, app: Rc<dyn EioApp>, upgrade_of: Option<Rc<EioSession>>) -> Self {
        Self { engine, app, session: RefCell::new(None), upgrade_of, identity: RefCell::new(None) }
    }

    /// A fresh session whose handshake the gate admitted ([`crate::auth::Gate::admit`]) with this
    /// identity.
    pub fn with_identity(self, identity: Option<Rc<crate::auth::Identity>>) -> Self {
        *self.identity.borrow_mut() = identity;
        self
    }
}

impl WsHandler for EioWs {
    fn on_open(&self, shard: &Rc<Shard>, conn: &Rc<Conn>) {
        if let Some(s) = &self.upgrade_of {
            if s.closed.get() || s.upgrading.get() || s.is_websocket() {
                // Another WebSocket has this session (or is taking it): as the reference
                // server does, accept the handshake and close at once.
                shard.close_session(conn, 1008, "session already upgraded", crate::metrics::CloseReason::Protocol);
            } else {
                s.candidates.borrow_mut().push(conn.clone());
            }
            return; // the session goes on; it switches to us on `5`
        }
        let Some(s) = self.engine.create(shard, self.app.clone(), Transport::WebSocket(conn.clone())) else {
            shard.close_session(conn, 1013, "no session slots", crate::metrics::CloseReason::Limit);
            return;
        };
        *s.identity.borrow_mut() = self.identity.borrow_mut().take();
        shard.deliver(conn, ws_frame(&open_packet(&s, &[])));
        *self.session.borrow_mut() = Some(s.clone());
        start_heartbeat(&s);
        self.app.on_open(shard, &s);
    }

    fn on_message(&self, shard: &Shard, conn: &Rc<Conn>, msg: tungstenite::Message) {
        if msg.len() > self.engine.cfg.max_payload {
            shard.close_session(conn, 1009, "message over maxPayload", crate::metrics::CloseReason::TooBig);
            return;
        }
        let p = match msg {
            tungstenite::Message::Text(t) => packet::decode_ws_text(Bytes::from(t)),
            tungstenite::Message::Binary(b) => Ok(Packet::Message(Payload::Binary(b))),
            _ => return,
        };
        let session = self.session.borrow().clone();
        if let Some(s) = session {
            match p {
                Ok(p) => {
                    on_packet(shard, &s, p);
                }
                Err(_) => close(shard, &s, CloseReason::ParseError, false),
            }
            return;
        }
        // Upgrading: only `2probe` then `5` are expected, strictly in that order.
        let Some(s) = &self.upgrade_of else { return };
        match p {
            Ok(Packet::Ping(Some(d))) if &d[..] == b"probe" && !s.upgrading.get() => {
                s.upgrading.set(true);
                shard.deliver(conn, ws_frame(&Packet::Pong(Some(d))));
                // Release a pending GET (it answers `6`) so the client can pause polling.
                s.wake_poll();
            }
            Ok(Packet::Upgrade) if s.upgrading.get() => {
                *s.transport.borrow_mut() = Transport::WebSocket(conn.clone());
                s.upgrading.set(false);
                // Taken, not drained: the session keeps no polling storage once upgraded.
                let others = std::mem::take(&mut *s.candidates.borrow_mut());
                for other in others.iter().filter(|c| c.id != conn.id) {
                    shard.close_session(other, 1008, "session already upgraded", crate::metrics::CloseReason::Protocol);
                }
                // Whatever the polling side had not fetched goes out on the WebSocket.
                let pending = s.queue.borrow_mut().take_all();
                for p in pending {
                    shard.deliver(conn, ws_frame(&p));
                }
                s.wake_poll();
                *self.session.borrow_mut() = Some(s.clone());
            }
            _ => {
                shard.close_session(conn, 1002, "bad upgrade", crate::metrics::CloseReason::Protocol);
            }
        }
    }

    fn on_close(&self, shard: &Shard, conn: &Rc<Conn>) {
        let session = self.session.borrow_mut().take();
        if let Some(s) = session {
            close(shard, &s, CloseReason::TransportClose, false);
        } else if let Some(s) = &self.upgrade_of {
            // The upgrade failed: the session carries on polling.
            s.candidates.borrow_mut().retain(|c| c.id != conn.id);
            if s.candidates.borrow().is_empty() {
                s.upgrading.set(false);
            }
        }
    }
}

/// Who serves a WebSocket that another shard accepted and upgraded for a session of this
/// one ([`crate::shard::Route::HandOff`]); `None` when the session ended meanwhile.
pub(super) fn adopt(shard: &Rc<Shard>, sid: &str) -> Option<Rc<dyn WsHandler>> {
    let engine = shard.service::<Engine>()?;
    let s = engine.get(shard, sid)?;
    Some(Rc::new(EioWs::new(engine, s.app.clone(), Some(s))))
}
