//! [`Socket`]: one client in one namespace. Emits (plain, binary, volatile, with an ack and
//! its timeout), answers to the client's acks, and the server-side disconnect.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::api::{AckCallback, DisconnectHandler, EventHandler};
use super::engine::{prepare, prepare_bytes};
use super::recovery::{self, Logged};
use super::{packet, AckError, AckResponse, Event, SocketId, SocketIo};
use crate::engineio::packet::{Packet as EioPacket, Payload};
use crate::engineio::{self, EioSession};
use crate::shard::Shard;

/// One client's membership of one namespace.
pub struct Socket {
    /// The Socket.IO id (not the Engine.IO session id).
    pub id: SocketId,
    pub nsp: Rc<str>,
    pub(super) eio: Rc<EioSession>,
    pub(super) events: RefCell<HashMap<String, EventHandler>>,
    pub(super) on_disconnect: RefCell<Vec<DisconnectHandler>>,
    pub(super) acks: RefCell<HashMap<u64, AckCallback>>,
    pub(super) next_ack: Cell<u64>,
    pub(super) rooms: RefCell<HashSet<Rc<str>>>,
    pub(super) connected: Cell<bool>,
    /// The private id a client presents to recover this socket (recovery on only).
    pub(super) pid: Option<Rc<str>>,
    /// Recently sent events with their offsets, for recovery.
    pub(super) log: RefCell<std::collections::VecDeque<Logged>>,
    /// In a cluster with recovery: the stream sequence of the last broadcast sent to the
    /// socket; one at or below it was sent already (by a recovery's replay).
    pub(super) floor: Cell<u64>,
    /// In a cluster with recovery, while the socket's missed broadcasts are read back: the
    /// broadcasts that arrive meanwhile, sent after them.
    pub(super) recovering: RefCell<Option<Vec<(u64, Logged)>>>,
    /// In a cluster with recovery: the socket was sent a broadcast its node delivered while
    /// cut off from the stream (with a node-local offset). A broadcast that comes back from the
    /// stream after that is not sent to it: one published before those could arrive after
    /// them; and its direct emits carry node-local offsets too, so its client's offset never
    /// says it has less than it got. Its transport is closed once the node is back (a gap), and
    /// its client is not recovered (`recovered` false): told, never reordered or sent twice.
    pub(super) cut_off: Cell<bool>,
    /// In a cluster with recovery: how many times the flow from the stream had broken
    /// ([`crate::cluster::ClusterStats::breaks`]) when the socket was created. After a later
    /// break, broadcasts from the stream are not sent to it (one it missed may precede them,
    /// and its offset would then hide the miss); its transport is closed once the node handles
    /// the gap, and its client recovers from its last offset.
    pub(super) breaks_seen: u64,
    /// This socket resumed a disconnected one: same id, rooms and missed packets.
    pub recovered: bool,
    /// Its namespace's place in [`SocketIo`]'s list (for the namespace's event handlers).
    pub(super) ns_index: usize,
    /// Who the client is: from the CONNECT auth `{token}`, else the handshake's token, else
    /// the anonymous identity when `auth.mode` allows it.
    pub identity: Rc<crate::auth::Identity>,
}

impl Socket {
    /// Handles event `name` from this client.
    pub fn on(&self, name: &str, f: impl Fn(&Shard, &Rc<Socket>, Event<'_>) + 'static) {
        self.events.borrow_mut().insert(name.to_string(), Rc::new(f));
    }

    /// Called once when the socket leaves its namespace, with the reason. Broadcasts no longer
    /// reach the socket by then, but [`Socket::rooms`] still lists the rooms it was in.
    pub fn on_disconnect(&self, f: impl Fn(&Shard, &Rc<Socket>, &str) + 'static) {
        self.on_disconnect.borrow_mut().push(Rc::new(f));
    }

    pub fn is_connected(&self) -> bool {
        self.connected.get()
    }

    /// The Engine.IO session under this socket.
    pub fn engine(&self) -> &Rc<EioSession> {
        &self.eio
    }

    /// Emits an event; `args_tail` is the arguments as raw JSON without brackets.
    pub fn emit(&self, shard: &Shard, event: &str, args_tail: &str) {
        self.emit_binary(shard, event, args_tail, Vec::new());
    }

    /// Emits an event with binary attachments (`args_tail` holds the placeholders).
    pub fn emit_binary(&self, shard: &Shard, event: &str, args_tail: &str, binaries: Vec<Bytes>) {
        let offset = shard.service::<SocketIo>().and_then(|io| io.direct_offset(shard, self));
        let Some(offset) = offset else {
            let text = packet::encode_event(&self.nsp, None, event, args_tail, binaries.len());
            return self.send(shard, text, binaries);
        };
        // With recovery on, every event carries its offset as a last argument (as socket.io
        // does) and is kept for a client that comes back.
        let tail = recovery::with_offset(args_tail, &offset);
        let text = Bytes::from(packet::encode_event(&self.nsp, None, event, &tail, binaries.len()));
        self.record(shard, &offset, &text, &binaries);
        self.eio.send_prepared(shard, &prepare_bytes(text, &binaries));
    }

    fn record(&self, shard: &Shard, offset: &Arc<str>, text: &Bytes, binaries: &[Bytes]) {
        let io = shard.service::<SocketIo>();
        let max = io.as_ref().and_then(|io| io.cfg.recovery.as_ref()).map_or(0, |r| r.max_packets);
        recovery::push_bounded(&mut self.log.borrow_mut(), (offset.clone(), text.clone(), binaries.to_vec()), max);
    }

    /// Emits only if the transport can take it right away; otherwise drops it.
    pub fn emit_volatile(&self, shard: &Shard, event: &str, args_tail: &str) {
        if self.eio.ready_for_volatile() {
            self.emit(shard, event, args_tail);
        }
    }

    /// Emits an event and calls `cb` with the client's ack, or with an error after `timeout`
    /// or when the socket goes away first.
    pub fn emit_with_ack(
        self: &Rc<Self>,
        shard: &Shard,
        event: &str,
        args_tail: &str,
        binaries: Vec<Bytes>,
        timeout: Duration,
        cb: impl FnOnce(&Shard, Result<AckResponse, AckError>) + 'static,
    ) {
        let id = self.next_ack.get().wrapping_add(1);
        self.next_ack.set(id);
        self.acks.borrow_mut().insert(id, Box::new(cb));
        let text = packet::encode_event(&self.nsp, Some(id), event, args_tail, binaries.len());
        self.send(shard, text, binaries);
        let me = self.clone();
        monoio::spawn(async move {
            monoio::time::sleep(timeout).await;
            let cb = me.acks.borrow_mut().remove(&id);
            if let (Some(cb), Some(shard)) = (cb, crate::shard::current()) {
                cb(&shard, Err(AckError::Timeout));
            }
        });
    }

    /// Answers the client's event `ev` (which asked for an ack) with these arguments.
    pub fn ack(&self, shard: &Shard, ev: &Event<'_>, args_tail: &str, binaries: Vec<Bytes>) {
        if let Some(id) = ev.ack_id() {
            let text = packet::encode_ack(&self.nsp, id, args_tail, binaries.len());
            self.send(shard, text, binaries);
        }
    }

    /// Server-side disconnect from this namespace; `close` also ends the whole connection.
    pub fn disconnect(self: &Rc<Self>, shard: &Shard, io: &SocketIo, close: bool) {
        if !self.connected.get() {
            return;
        }
        self.send(shard, packet::encode_disconnect(&self.nsp), Vec::new());
        io.remove_socket(shard, self, "server namespace disconnect");
        if close {
            engineio::close(shard, &self.eio, engineio::CloseReason::ForcedClose, true);
        }
    }

    fn send(&self, shard: &Shard, text: String, binaries: Vec<Bytes>) {
        if binaries.is_empty() {
            self.eio.send(shard, EioPacket::Message(Payload::Text(Bytes::from(text))));
        } else {
            self.eio.send_prepared(shard, &prepare(text, &binaries));
        }
    }
}
