//! The Engine.IO glue: [`SocketIo`] as an Engine.IO application. A session opens a
//! connection ([`SioConn`]), its messages pass the rate limit and the binary assembler and are
//! dispatched by packet type, and its close removes its sockets. Also how an encoded
//! Socket.IO packet becomes Engine.IO messages.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

use super::packet::{self, BinaryAssembler, Packet, PacketKind};
use super::{AckResponse, Event, Socket, SocketIo};
use crate::engineio::packet::{Packet as EioPacket, Payload};
use crate::engineio::{self, EioApp, EioSession, Prepared};
use crate::shard::Shard;

/// Per-connection state: the sockets of each namespace and the binary assembler.
pub(super) struct SioConn {
    pub(super) sockets: RefCell<HashMap<Rc<str>, Rc<Socket>>>,
    pub(super) assembler: RefCell<BinaryAssembler>,
    /// Set once some namespace was joined: the connect timeout no longer applies, and its
    /// task ends then rather than holding its memory until the timeout.
    pub(super) joined: crate::util::LocalEvent,
    /// The connection's message rate (`limits.message_rate`), over every namespace.
    pub(super) bucket: Cell<Option<crate::limits::TokenBucket>>,
}

impl EioApp for SocketIo {
    fn on_open(&self, shard: &Shard, s: &Rc<EioSession>) {
        let conn = Rc::new(SioConn {
            sockets: RefCell::new(HashMap::new()),
            assembler: RefCell::new(BinaryAssembler::new()),
            joined: crate::util::LocalEvent::default(),
            bucket: Cell::new(
                shard.node.config.limits.rate.map(|r| crate::limits::TokenBucket::new(r, std::time::Instant::now())),
            ),
        });
        self.conns.borrow_mut().insert(s.id, conn.clone());
        self.arm_connect_timeout(shard, s, conn);
    }

    fn on_message(&self, shard: &Shard, s: &Rc<EioSession>, msg: Payload) {
        let Some(conn) = self.conns.borrow().get(&s.id).cloned() else { return };
        if let (Some(limit), Some(mut bucket)) = (shard.node.config.limits.rate, conn.bucket.get()) {
            let ok = bucket.take(limit, std::time::Instant::now());
            conn.bucket.set(Some(bucket));
            if !ok {
                crate::metrics::add(&shard.stats.limit_rate, 1);
                let data = format!(
                    "{{\"code\":\"rate_limited\",\"message\":\"more than {} messages per second\"}}",
                    limit.per_second
                );
                let sockets: Vec<Rc<Socket>> = conn.sockets.borrow().values().cloned().collect();
                for socket in sockets {
                    socket.emit(shard, "error", &data);
                }
                engineio::close(shard, s, engineio::CloseReason::RateLimited, true);
                return;
            }
        }
        let assembled = match msg {
            Payload::Text(t) => match std::str::from_utf8(&t) {
                Ok(text) => conn.assembler.borrow_mut().push_text(text, self.cfg.max_attachments),
                Err(_) => Err(packet::SioError::Malformed),
            },
            Payload::Binary(b) => conn.assembler.borrow_mut().push_binary(b),
        };
        match assembled {
            Ok(Some((p, binaries))) => self.dispatch(shard, s, &conn, p, binaries),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(sid = %s.sid, error = %e, "closing connection on a bad packet");
                engineio::close(shard, s, engineio::CloseReason::ParseError, false);
            }
        }
    }

    fn on_close(&self, shard: &Shard, s: &Rc<EioSession>, reason: engineio::CloseReason) {
        let Some(conn) = self.conns.borrow_mut().remove(&s.id) else { return };
        let sockets: Vec<Rc<Socket>> = conn.sockets.borrow_mut().drain().map(|(_, s)| s).collect();
        for socket in sockets {
            self.remove_socket(shard, &socket, reason.as_str());
        }
    }
}

impl SocketIo {
    fn dispatch(&self, shard: &Shard, eio: &Rc<EioSession>, conn: &Rc<SioConn>, p: Packet, binaries: Vec<Bytes>) {
        match p.kind {
            PacketKind::Connect => self.connect(shard, eio, conn, &p),
            PacketKind::Disconnect => {
                let s = conn.sockets.borrow().get(p.nsp.as_str()).cloned();
                if let Some(s) = s {
                    self.remove_socket(shard, &s, "client namespace disconnect");
                }
            }
            PacketKind::Event | PacketKind::BinaryEvent => {
                let Some(s) = conn.sockets.borrow().get(p.nsp.as_str()).cloned() else { return };
                let Some(name) = packet::event_name(&p) else { return };
                let own = s.events.borrow().get(&*name).cloned();
                let handler =
                    own.or_else(|| self.namespaces.get(s.ns_index).and_then(|ns| ns.events.get(&*name).cloned()));
                if let Some(h) = handler {
                    h(shard, &s, Event { name: &name, packet: &p, binaries });
                }
            }
            PacketKind::Ack | PacketKind::BinaryAck => {
                let Some(s) = conn.sockets.borrow().get(p.nsp.as_str()).cloned() else { return };
                let Some(id) = p.id else { return };
                let cb = s.acks.borrow_mut().remove(&id);
                if let Some(cb) = cb {
                    let args_tail = packet::args_tail(&p).unwrap_or("").to_string();
                    cb(shard, Ok(AckResponse { args_tail, binaries }));
                }
            }
            PacketKind::ConnectError => {
                engineio::close(shard, eio, engineio::CloseReason::ParseError, false);
            }
        }
    }
}

/// A packet and its attachments as Engine.IO messages, ready to send to many sessions.
pub(super) fn prepare(text: String, binaries: &[Bytes]) -> Prepared {
    prepare_bytes(Bytes::from(text), binaries)
}

/// [`prepare`], for text already in [`Bytes`].
pub(super) fn prepare_bytes(text: Bytes, binaries: &[Bytes]) -> Prepared {
    let mut packets = Vec::with_capacity(1 + binaries.len());
    packets.push(EioPacket::Message(Payload::Text(text)));
    packets.extend(binaries.iter().map(|b| EioPacket::Message(Payload::Binary(b.clone()))));
    Prepared::new(packets)
}

/// A packet without attachments as one Engine.IO message.
pub(super) fn text_packet(text: String) -> EioPacket {
    EioPacket::Message(Payload::Text(Bytes::from(text)))
}
