//! Socket.IO v5 on top of [`crate::engineio`]: namespaces (static and dynamic), connect
//! middleware, events, acks both ways, binary attachments, rooms and broadcasts that reach
//! every shard of the node.
//!
//! Everything here runs on the shard that owns the Engine.IO session, so handlers may be
//! `!Send`. A [`SocketIo`] is built once per shard from the same description; the room index
//! is per shard, and a broadcast is delivered locally and posted once to every other shard,
//! which delivers it to its own members. Packets are encoded once per broadcast, not per
//! recipient.

mod config;
pub mod packet;
pub mod recovery;

pub use config::{SioConfig, SocketIoSection};

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::engineio::packet::{Packet as EioPacket, Payload};
use crate::engineio::{self, EioApp, EioSession, Prepared, Sid};
use crate::shard::{Broadcast, Shard, ShardMsg, ShardService};
use packet::{BinaryAssembler, Packet, PacketKind};
use recovery::{Logged, Restored, Stored};

/// A refused CONNECT: sent to the client as CONNECT_ERROR `{"message": ...}` plus `data`.
#[derive(Debug, Clone)]
pub struct ConnectRefusal {
    pub message: String,
    /// Extra JSON placed under `data`, if any.
    pub data: Option<String>,
}

/// An event's arguments, as the client sent them.
pub struct Event<'a> {
    pub name: &'a str,
    packet: &'a Packet,
    /// Binary attachments, in placeholder order.
    pub binaries: Vec<Bytes>,
}

impl Event<'_> {
    /// The arguments after the event name as raw JSON without brackets (`1,"2",{}`).
    pub fn args_tail(&self) -> &str {
        packet::args_tail(self.packet).unwrap_or("")
    }

    /// The arguments parsed as a JSON array into `T` (e.g. a tuple).
    pub fn args<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&format!("[{}]", self.args_tail()))
    }

    /// The ack id, when the client wants an answer.
    pub fn ack_id(&self) -> Option<u64> {
        self.packet.id
    }
}

/// What the client answered to an event sent with [`Socket::emit_with_ack`].
pub struct AckResponse {
    /// The ack arguments as raw JSON without brackets.
    pub args_tail: String,
    pub binaries: Vec<Bytes>,
}

/// Why an ack did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("ack timed out")]
    Timeout,
    #[error("socket disconnected before the ack")]
    Disconnected,
}

pub type EventHandler = Rc<dyn Fn(&Shard, &Rc<Socket>, Event<'_>)>;
pub type ConnectionHandler = Rc<dyn Fn(&Shard, &Rc<Socket>, Option<&str>)>;
pub type Middleware = Rc<dyn Fn(&Shard, &Rc<Socket>, Option<&str>) -> Result<(), ConnectRefusal>>;
pub type DisconnectHandler = Rc<dyn Fn(&Shard, &Rc<Socket>, &str)>;
type AckCallback = Box<dyn FnOnce(&Shard, Result<AckResponse, AckError>)>;

enum NsMatch {
    Exact(String),
    Dynamic(Rc<dyn Fn(&str) -> bool>),
}

/// A namespace: which names it serves, its middleware, its connection handler and the event
/// handlers every socket of it shares.
pub struct Namespace {
    matcher: NsMatch,
    middleware: Vec<Middleware>,
    on_connection: Option<ConnectionHandler>,
    /// Shared by every socket of the namespace: a handler registered here costs nothing per
    /// socket, where [`Socket::on`] costs a map entry per socket.
    events: HashMap<String, EventHandler>,
}

impl Namespace {
    /// A namespace with exactly this name (`/`, `/chat`).
    pub fn new(name: &str) -> Self {
        Self {
            matcher: NsMatch::Exact(name.to_string()),
            middleware: Vec::new(),
            on_connection: None,
            events: HashMap::new(),
        }
    }

    /// Namespaces created on demand for every name the predicate accepts.
    pub fn dynamic(pred: impl Fn(&str) -> bool + 'static) -> Self {
        Self {
            matcher: NsMatch::Dynamic(Rc::new(pred)),
            middleware: Vec::new(),
            on_connection: None,
            events: HashMap::new(),
        }
    }

    /// Connect middleware: runs before the socket joins; an error refuses it.
    pub fn middleware(
        mut self,
        f: impl Fn(&Shard, &Rc<Socket>, Option<&str>) -> Result<(), ConnectRefusal> + 'static,
    ) -> Self {
        self.middleware.push(Rc::new(f));
        self
    }

    /// Handles event `name` from every socket of the namespace (unless the socket has its own
    /// handler for it, [`Socket::on`]).
    pub fn on(mut self, name: &str, f: impl Fn(&Shard, &Rc<Socket>, Event<'_>) + 'static) -> Self {
        self.events.insert(name.to_string(), Rc::new(f));
        self
    }

    /// Called once per socket that joined, with the CONNECT auth payload (raw JSON).
    pub fn on_connection(mut self, f: impl Fn(&Shard, &Rc<Socket>, Option<&str>) + 'static) -> Self {
        self.on_connection = Some(Rc::new(f));
        self
    }

    fn matches(&self, name: &str) -> bool {
        match &self.matcher {
            NsMatch::Exact(n) => n == name,
            NsMatch::Dynamic(p) => p(name),
        }
    }
}

/// One client's membership of one namespace.
pub struct Socket {
    /// The Socket.IO id (not the Engine.IO session id).
    pub id: Rc<str>,
    pub nsp: Rc<str>,
    eio: Rc<EioSession>,
    events: RefCell<HashMap<String, EventHandler>>,
    on_disconnect: RefCell<Vec<DisconnectHandler>>,
    acks: RefCell<HashMap<u64, AckCallback>>,
    next_ack: Cell<u64>,
    rooms: RefCell<HashSet<Rc<str>>>,
    connected: Cell<bool>,
    /// The private id a client presents to recover this socket (recovery on only).
    pid: Option<Rc<str>>,
    /// Recently sent events with their offsets, for recovery.
    log: RefCell<std::collections::VecDeque<Logged>>,
    /// This socket resumed a disconnected one: same id, rooms and missed packets.
    pub recovered: bool,
    /// Its namespace's place in [`SocketIo`]'s list (for the namespace's event handlers).
    ns_index: usize,
    /// Who the client is: from the CONNECT auth `{token}`, else the handshake's token, else
    /// the anonymous identity when `auth.mode` allows it.
    pub identity: Rc<crate::auth::Identity>,
}

/// Why a socket could not join a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Name(#[from] crate::limits::NameError),
    #[error("a socket may be in at most {0} rooms")]
    TooManyRooms(usize),
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
        let offset = shard.service::<SocketIo>().and_then(|io| io.next_offset(shard));
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

    /// Joins a room of this namespace (on every shard's view, since broadcasts go to all).
    /// The name is validated and the socket's rooms are bounded (`[limits]`); its own-id room
    /// does not count.
    pub fn join(self: &Rc<Self>, io: &SocketIo, room: &str) -> Result<(), JoinError> {
        if self.rooms.borrow().contains(room) {
            return Ok(());
        }
        let shard = crate::shard::current();
        let limits = shard.as_ref().map(|s| s.node.config.limits.clone()).unwrap_or_default();
        if let Err(e) = crate::limits::validate_name("room", room, limits.max_name_bytes) {
            if let Some(s) = &shard {
                crate::metrics::add(&s.stats.limit_names, 1);
            }
            return Err(e.into());
        }
        // The socket's own room is not the application's doing.
        if self.rooms.borrow().len() > limits.max_rooms_per_session {
            if let Some(s) = &shard {
                crate::metrics::add(&s.stats.limit_rooms, 1);
            }
            return Err(JoinError::TooManyRooms(limits.max_rooms_per_session));
        }
        self.join_unchecked(io, room);
        Ok(())
    }

    fn join_unchecked(self: &Rc<Self>, io: &SocketIo, room: &str) {
        let room: Rc<str> = room.into();
        if self.rooms.borrow().contains(&room) {
            return;
        }
        io.fix_held_targets();
        self.rooms.borrow_mut().insert(room.clone());
        io.index_join(self, room);
    }

    /// Leaves a room; returns whether the socket was in it.
    pub fn leave(self: &Rc<Self>, io: &SocketIo, room: &str) -> bool {
        if !self.rooms.borrow().contains(room) {
            return false;
        }
        io.fix_held_targets();
        let Some(room) = self.rooms.borrow_mut().take(room) else { return false };
        io.index_leave(self, &room);
        true
    }

    pub fn rooms(&self) -> Vec<Rc<str>> {
        self.rooms.borrow().iter().cloned().collect()
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

fn prepare(text: String, binaries: &[Bytes]) -> Prepared {
    prepare_bytes(Bytes::from(text), binaries)
}

fn prepare_bytes(text: Bytes, binaries: &[Bytes]) -> Prepared {
    let mut packets = Vec::with_capacity(1 + binaries.len());
    packets.push(EioPacket::Message(Payload::Text(text)));
    packets.extend(binaries.iter().map(|b| EioPacket::Message(Payload::Binary(b.clone()))));
    Prepared::new(packets)
}

/// A broadcast as it travels to the other shards: encoded once, shared.
pub struct RemoteBroadcast {
    pub nsp: Arc<str>,
    pub rooms: Vec<Arc<str>>,
    pub except_rooms: Vec<Arc<str>>,
    pub except_socket: Option<Arc<str>>,
    pub text: Bytes,
    pub binaries: Vec<Bytes>,
    /// The packet's recovery offset (recovery on only).
    pub offset: Option<Arc<str>>,
}

impl RemoteBroadcast {
    /// Whether `other` goes to the same sockets, but perhaps for the sender it leaves out.
    fn same_targets(&self, other: &RemoteBroadcast) -> bool {
        self.nsp == other.nsp && self.rooms == other.rooms && self.except_rooms == other.except_rooms
    }
}

impl Broadcast for RemoteBroadcast {
    fn deliver(self: Arc<Self>, shard: &Rc<Shard>) {
        if let Some(io) = shard.service::<SocketIo>() {
            io.deliver_local(shard, &self);
        }
    }
}

impl ShardService for SocketIo {
    fn release_held(&self, shard: &Shard, at_flush: bool) {
        self.release(shard, at_flush);
    }
}

/// Broadcasts to the same rooms, held for the shard's next flush ([`SocketIo::hold`]).
struct Held {
    items: Vec<Arc<RemoteBroadcast>>,
    /// Who they reach, once rooms or sockets changed after they were sent; until then, the
    /// members at the release.
    targets: Option<Vec<Rc<Socket>>>,
}

/// Who a broadcast goes to.
#[derive(Default, Clone)]
pub struct Target<'a> {
    /// Members of any of these rooms; every socket of the namespace when empty.
    pub rooms: Vec<&'a str>,
    /// Except members of these rooms.
    pub except_rooms: Vec<&'a str>,
    /// Except this socket (the sender).
    pub except_socket: Option<&'a str>,
}

/// A broadcast being built by [`SocketIo::of`]. Without `to`, it reaches the whole namespace.
pub struct BroadcastOp<'a> {
    io: &'a SocketIo,
    nsp: &'a str,
    target: Target<'a>,
}

impl<'a> BroadcastOp<'a> {
    /// Adds a room: members of any added room receive it.
    pub fn to(mut self, room: &'a str) -> Self {
        self.target.rooms.push(room);
        self
    }

    /// Leaves out members of this room.
    pub fn except(mut self, room: &'a str) -> Self {
        self.target.except_rooms.push(room);
        self
    }

    /// Leaves out one socket (usually the sender).
    pub fn except_socket(mut self, id: &'a str) -> Self {
        self.target.except_socket = Some(id);
        self
    }

    pub fn emit(self, shard: &Shard, event: &str, args_tail: &str) {
        self.emit_binary(shard, event, args_tail, Vec::new());
    }

    pub fn emit_binary(self, shard: &Shard, event: &str, args_tail: &str, binaries: Vec<Bytes>) {
        self.io.broadcast(shard, self.nsp, &self.target, event, args_tail, binaries);
    }
}

/// Per-connection state: the sockets of each namespace and the binary assembler.
struct SioConn {
    sockets: RefCell<HashMap<Rc<str>, Rc<Socket>>>,
    assembler: RefCell<BinaryAssembler>,
    /// Set once some namespace was joined: the connect timeout no longer applies, and its
    /// task ends then rather than holding its memory until the timeout.
    joined: crate::util::LocalEvent,
    /// The connection's message rate (`limits.message_rate`), over every namespace.
    bucket: Cell<Option<crate::limits::TokenBucket>>,
}

/// Sockets by id.
type Members = HashMap<Rc<str>, Rc<Socket>>;
/// A namespace's rooms: room name → members on this shard.
type RoomIndex = HashMap<Rc<str>, Members>;

/// The Socket.IO server of one shard.
pub struct SocketIo {
    cfg: SioConfig,
    namespaces: Vec<Namespace>,
    conns: RefCell<HashMap<Sid, Rc<SioConn>>>,
    /// Namespace → room → socket id → socket, for this shard's sockets.
    rooms: RefCell<HashMap<Rc<str>, RoomIndex>>,
    /// Namespace → socket id → socket.
    sockets: RefCell<HashMap<Rc<str>, Members>>,
    /// Disconnected sockets that may still be recovered, by private id.
    stored: RefCell<HashMap<Rc<str>, Stored>>,
    next_offset: Cell<u64>,
    /// Broadcasts held for the shard's next coalesced flush, oldest first.
    held: RefCell<Vec<Held>>,
}

impl SocketIo {
    pub fn new(cfg: SioConfig, namespaces: Vec<Namespace>) -> Self {
        Self {
            cfg,
            namespaces,
            conns: RefCell::new(HashMap::new()),
            rooms: RefCell::new(HashMap::new()),
            sockets: RefCell::new(HashMap::new()),
            stored: RefCell::new(HashMap::new()),
            next_offset: Cell::new(0),
            held: RefCell::new(Vec::new()),
        }
    }

    /// A fresh recovery offset, unique in the node (`<shard>-<seq>`), when recovery is on.
    fn next_offset(&self, shard: &Shard) -> Option<Arc<str>> {
        self.cfg.recovery.as_ref()?;
        let n = self.next_offset.get().wrapping_add(1);
        self.next_offset.set(n);
        Some(format!("{}-{n}", shard.index).into())
    }

    /// Number of sockets connected on this shard, over all namespaces.
    pub fn socket_count(&self) -> usize {
        self.sockets.borrow().values().map(HashMap::len).sum()
    }

    /// Starts a broadcast to namespace `nsp`: `io.of("/").to("room").except("muted").emit(...)`.
    pub fn of<'a>(&'a self, nsp: &'a str) -> BroadcastOp<'a> {
        BroadcastOp { io: self, nsp, target: Target::default() }
    }

    /// Sends an event to the target sockets of `nsp` on every shard of the node, exactly once
    /// each. Encoded once here; other shards get the same bytes through the rings.
    pub fn broadcast(
        &self,
        shard: &Shard,
        nsp: &str,
        target: &Target<'_>,
        event: &str,
        args_tail: &str,
        binaries: Vec<Bytes>,
    ) {
        let offset = self.next_offset(shard);
        let text = match &offset {
            Some(o) => packet::encode_event(nsp, None, event, &recovery::with_offset(args_tail, o), binaries.len()),
            None => packet::encode_event(nsp, None, event, args_tail, binaries.len()),
        };
        let text = Bytes::from(text);
        let msg = Arc::new(RemoteBroadcast {
            offset,
            nsp: nsp.into(),
            rooms: target.rooms.iter().map(|r| Arc::from(*r)).collect(),
            except_rooms: target.except_rooms.iter().map(|r| Arc::from(*r)).collect(),
            except_socket: target.except_socket.map(Arc::from),
            text,
            binaries,
        });
        self.deliver_local(shard, &msg);
        let shards = shard.shard_count();
        if shards > 1 {
            let remote: Arc<dyn Broadcast> = msg.clone();
            for to in (0..shards).filter(|&to| to != shard.index) {
                shard.post(to, ShardMsg::Broadcast(remote.clone()));
            }
        }
    }

    /// Delivers a broadcast to this shard's matching sockets. While the shard coalesces
    /// writes, it is held for the shard's next flush instead (see [`SocketIo::hold`]).
    pub fn deliver_local(&self, shard: &Shard, b: &Arc<RemoteBroadcast>) {
        if b.offset.is_none() && shard.coalesce.is_active() {
            self.hold(shard, b);
            return;
        }
        let targets = self.targets(b, b.except_socket.as_deref());
        if let Some(offset) = &b.offset {
            let max = self.cfg.recovery.as_ref().map_or(0, |r| r.max_packets);
            let entry: Logged = (offset.clone(), b.text.clone(), b.binaries.clone());
            for t in &targets {
                recovery::push_bounded(&mut t.log.borrow_mut(), entry.clone(), max);
            }
            // Disconnected sockets that match keep it for when they come back.
            for stored in self.stored.borrow_mut().values_mut() {
                if recovery::matches(stored, b) {
                    recovery::push_bounded(&mut stored.log, entry.clone(), max);
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        let prepared = prepare_bytes(b.text.clone(), &b.binaries);
        for s in targets {
            s.eio.send_broadcast(shard, &prepared);
        }
    }

    /// This shard's sockets that a broadcast reaches, but `except_socket`.
    fn targets(&self, b: &RemoteBroadcast, except_socket: Option<&str>) -> Vec<Rc<Socket>> {
        let rooms = self.rooms.borrow();
        let ns_rooms = rooms.get(&*b.nsp);
        let in_room = |s: &Socket, list: &[Arc<str>]| list.iter().any(|r| s.rooms.borrow().contains(&**r));
        // Only a union of several rooms can list a socket twice.
        let dedupe = b.rooms.len() > 1;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut consider = |s: &Rc<Socket>| {
            if except_socket == Some(&*s.id) || (!b.except_rooms.is_empty() && in_room(s, &b.except_rooms)) {
                return;
            }
            if !dedupe || seen.insert(s.id.clone()) {
                out.push(s.clone());
            }
        };
        if b.rooms.is_empty() {
            if let Some(all) = self.sockets.borrow().get(&*b.nsp) {
                all.values().for_each(&mut consider);
            }
        } else {
            let sockets = self.sockets.borrow();
            let by_id = sockets.get(&*b.nsp);
            for r in &b.rooms {
                if let Some(members) = ns_rooms.and_then(|n| n.get(&**r)) {
                    members.values().for_each(&mut consider);
                }
                // Every socket is in the room named by its id, which is not indexed: the
                // socket table already maps the id to the socket.
                if let Some(s) = by_id.and_then(|m| m.get(&**r)) {
                    consider(s);
                }
            }
        }
        out
    }

    /// Holds a broadcast until the shard's next coalesced flush. Consecutive broadcasts to the
    /// same rooms share one walk of their members when they are released, and each member gets
    /// them all at once: most of a broadcast's cost is reaching each member's session.
    fn hold(&self, shard: &Shard, b: &Arc<RemoteBroadcast>) {
        {
            let mut held = self.held.borrow_mut();
            match held.last_mut() {
                Some(g) if g.targets.is_none() && g.items[0].same_targets(b) => g.items.push(b.clone()),
                _ => held.push(Held { items: vec![b.clone()], targets: None }),
            }
        }
        shard.coalesce.held_one(&shard.stats);
    }

    /// Fixes who the held broadcasts reach before rooms or sockets change, so that they reach
    /// the sockets they would have reached when they were sent.
    fn fix_held_targets(&self) {
        let mut held = self.held.borrow_mut();
        for g in held.iter_mut().filter(|g| g.targets.is_none()) {
            g.targets = Some(self.targets(&g.items[0], None));
        }
    }

    /// Sends the held broadcasts, in order; [`Shard::release_held`] calls it. At the flush they
    /// are written at once; released early (something else is sent first), they are ordinary
    /// broadcasts that the writer may still hold.
    fn release(&self, shard: &Shard, at_flush: bool) {
        let groups = std::mem::take(&mut *self.held.borrow_mut());
        for g in groups {
            let targets = match g.targets {
                Some(t) => t,
                None => self.targets(&g.items[0], None),
            };
            let prepared: Vec<Prepared> = g.items.iter().map(|b| prepare_bytes(b.text.clone(), &b.binaries)).collect();
            for s in targets {
                let mine = g.items.iter().zip(&prepared).filter(|(b, _)| b.except_socket.as_deref() != Some(&*s.id));
                s.eio.send_many(shard, mine.map(|(_, p)| p), !at_flush);
            }
        }
    }

    fn index_join(&self, s: &Rc<Socket>, room: Rc<str>) {
        self.rooms
            .borrow_mut()
            .entry(s.nsp.clone())
            .or_default()
            .entry(room)
            .or_default()
            .insert(s.id.clone(), s.clone());
    }

    fn index_leave(&self, s: &Socket, room: &str) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(ns) = rooms.get_mut(&*s.nsp) {
            if let Some(members) = ns.get_mut(room) {
                members.remove(&*s.id);
                if members.is_empty() {
                    ns.remove(room);
                }
            }
        }
    }

    fn remove_socket(&self, shard: &Shard, s: &Rc<Socket>, reason: &str) {
        if !s.connected.replace(false) {
            return;
        }
        self.fix_held_targets();
        if let (Some(cfg), Some(pid)) = (&self.cfg.recovery, &s.pid) {
            if recovery::is_recoverable(reason) {
                self.store(shard, pid.clone(), Stored::from_socket(s, cfg.window));
            }
        }
        // Out of the room index first, so that nothing broadcast from here on reaches the
        // socket; `s.rooms` is kept until the handlers ran, which need to know where it was
        // (the IM app tells those channels the user went offline).
        let rooms: Vec<Rc<str>> = s.rooms.borrow().iter().cloned().collect();
        for r in &rooms {
            self.index_leave(s, r);
        }
        if let Some(all) = self.sockets.borrow_mut().get_mut(&*s.nsp) {
            all.remove(&*s.id);
        }
        if let Some(conn) = self.conns.borrow().get(&s.eio.id) {
            conn.sockets.borrow_mut().remove(&*s.nsp);
        }
        let pending: Vec<AckCallback> = s.acks.borrow_mut().drain().map(|(_, cb)| cb).collect();
        for cb in pending {
            cb(shard, Err(AckError::Disconnected));
        }
        let handlers = s.on_disconnect.borrow().clone();
        for h in handlers {
            h(shard, s, reason);
        }
        // Again, for any room a handler joined.
        let rooms: Vec<Rc<str>> = s.rooms.borrow_mut().drain().collect();
        for r in &rooms {
            self.index_leave(s, r);
        }
    }

    fn connect(&self, shard: &Shard, eio: &Rc<EioSession>, conn: &Rc<SioConn>, p: &Packet) {
        let nsp: Rc<str> = p.nsp.as_str().into();
        if conn.sockets.borrow().contains_key(&nsp) {
            return; // already connected to it: ignore the repeat, as the reference server does
        }
        if crate::limits::validate_name("namespace", &nsp, shard.node.config.limits.max_name_bytes).is_err() {
            crate::metrics::add(&shard.stats.limit_names, 1);
            eio.send(shard, text_packet(packet::encode_connect_error(&nsp, "Invalid namespace")));
            return;
        }
        let Some(ns_index) = self.namespaces.iter().position(|n| n.matches(&nsp)) else {
            eio.send(shard, text_packet(packet::encode_connect_error(&nsp, "Invalid namespace")));
            return;
        };
        let auth: Option<String> = p.data_json().map(str::to_string);
        let claim = if self.cfg.recovery.is_some() { auth.as_deref().and_then(recovery::parse_claim) } else { None };
        let Some(claim) = claim else {
            return self.finish_connect(shard, eio, conn, ns_index, nsp, auth.as_deref(), None);
        };
        match recovery::owner_of(&claim.pid).filter(|&o| o != shard.index && o < shard.shard_count()) {
            None => {
                let restored = self.take_stored(&claim.pid, claim.offset.as_deref());
                self.finish_connect(shard, eio, conn, ns_index, nsp, auth.as_deref(), restored);
            }
            Some(owner) => {
                // The socket lived on another shard: ask it for the state, then connect here.
                let (pid, offset) = (claim.pid, claim.offset);
                let ask = move |owner: Rc<Shard>| async move {
                    owner.service::<SocketIo>().and_then(|io| io.take_stored(&pid, offset.as_deref()))
                };
                let Some(shard) = crate::shard::current() else { return };
                let (eio, conn) = (eio.clone(), conn.clone());
                monoio::spawn(async move {
                    let restored = monoio::select! {
                        r = shard.call(owner, ask) => r.flatten(),
                        _ = monoio::time::sleep(Duration::from_secs(2)) => None,
                    };
                    let Some(io) = shard.service::<SocketIo>() else { return };
                    if !eio.is_closed() {
                        io.finish_connect(&shard, &eio, &conn, ns_index, nsp, auth.as_deref(), restored);
                    }
                });
            }
        }
    }

    /// Creates the socket (a recovered one when `restored` is given), answers the CONNECT and
    /// runs the connection handler.
    #[allow(clippy::too_many_arguments)]
    fn finish_connect(
        &self,
        shard: &Shard,
        eio: &Rc<EioSession>,
        conn: &SioConn,
        ns_index: usize,
        nsp: Rc<str>,
        auth: Option<&str>,
        restored: Option<Restored>,
    ) {
        let Some(ns) = self.namespaces.get(ns_index) else { return };
        let identity = match authenticate(shard, eio, auth) {
            Ok(i) => i,
            Err(e) => {
                let data = format!(
                    "{{\"message\":{},\"data\":{{\"code\":{},\"message\":{}}}}}",
                    json_string(e.code()),
                    json_string(e.code()),
                    json_string(&e.to_string())
                );
                let text = packet::encode(PacketKind::ConnectError, &nsp, None, Some(&data), 0);
                eio.send(shard, text_packet(text));
                return;
            }
        };
        let recovering = self.cfg.recovery.is_some();
        let (id, pid, recovered): (Rc<str>, Option<Rc<str>>, bool) = match &restored {
            Some(r) => (Rc::from(&*r.sid), Some(Rc::from(&*r.pid)), true),
            None => (random_id().into(), recovering.then(|| recovery::new_pid(shard.index).into()), false),
        };
        let socket = Rc::new(Socket {
            id,
            nsp: nsp.clone(),
            eio: eio.clone(),
            events: RefCell::new(HashMap::new()),
            on_disconnect: RefCell::new(Vec::new()),
            acks: RefCell::new(HashMap::new()),
            next_ack: Cell::new(0),
            rooms: RefCell::new(HashSet::new()),
            connected: Cell::new(false),
            pid,
            log: RefCell::new(std::collections::VecDeque::new()),
            recovered,
            identity,
            ns_index,
        });
        // A recovered socket already passed the middleware when it first connected.
        if !recovered {
            for m in &ns.middleware {
                if let Err(refusal) = m(shard, &socket, auth) {
                    let data = match &refusal.data {
                        Some(d) => format!("{{\"message\":{},\"data\":{d}}}", json_string(&refusal.message)),
                        None => format!("{{\"message\":{}}}", json_string(&refusal.message)),
                    };
                    let text = packet::encode(PacketKind::ConnectError, &nsp, None, Some(&data), 0);
                    eio.send(shard, text_packet(text));
                    return;
                }
            }
        }
        socket.connected.set(true);
        conn.joined.set();
        self.fix_held_targets();
        conn.sockets.borrow_mut().insert(nsp.clone(), socket.clone());
        self.sockets.borrow_mut().entry(nsp.clone()).or_default().insert(socket.id.clone(), socket.clone());
        // Every socket is in the room named by its own id, so `to(id)` reaches it anywhere. Only
        // the socket's own set records it: broadcasts find it through the socket table, and an
        // index entry per socket would cost every connection a map of its own.
        socket.rooms.borrow_mut().insert(socket.id.clone());
        let answer = match &socket.pid {
            Some(pid) => {
                let data = format!("{{\"sid\":{},\"pid\":{}}}", json_string(&socket.id), json_string(pid));
                packet::encode(PacketKind::Connect, &nsp, None, Some(&data), 0)
            }
            None => packet::encode_connect(&nsp, &socket.id),
        };
        eio.send_flushed(shard, text_packet(answer));
        if let Some(r) = restored {
            for room in &r.rooms {
                // Its own-id room is already recorded (and never indexed, see above).
                if **room != *socket.id {
                    socket.join_unchecked(self, room);
                }
            }
            let max = self.cfg.recovery.as_ref().map_or(0, |c| c.max_packets);
            for (offset, text, binaries) in r.missed {
                recovery::push_bounded(&mut socket.log.borrow_mut(), (offset, text.clone(), binaries.clone()), max);
                eio.send_prepared(shard, &prepare_bytes(text, &binaries));
            }
        }
        if let Some(h) = &ns.on_connection {
            h(shard, &socket, auth);
        }
    }

    /// Keeps a disconnected socket's state for the recovery window.
    fn store(&self, _shard: &Shard, pid: Rc<str>, stored: Stored) {
        let window = stored.window;
        self.stored.borrow_mut().insert(pid.clone(), stored);
        monoio::spawn(async move {
            monoio::time::sleep(window).await;
            if let Some(io) = crate::shard::current().and_then(|s| s.service::<SocketIo>()) {
                io.stored.borrow_mut().remove(&pid);
            }
        });
    }

    /// Takes a stored socket for a client that presents its private id and last offset.
    fn take_stored(&self, pid: &str, offset: Option<&str>) -> Option<Restored> {
        let stored = self.stored.borrow_mut().remove(pid)?;
        stored.restore(pid, offset)
    }

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

/// Who a CONNECT is from: the `token` of its auth payload, else the handshake's identity, else
/// what the authenticator makes of no token (anonymous, or `missing_token`).
fn authenticate(
    shard: &Shard,
    eio: &EioSession,
    auth: Option<&str>,
) -> Result<Rc<crate::auth::Identity>, crate::auth::AuthError> {
    #[derive(serde::Deserialize)]
    struct Auth {
        token: Option<String>,
    }
    let token = auth.and_then(|a| serde_json::from_str::<Auth>(a).ok()).and_then(|a| a.token);
    if token.is_none() {
        if let Some(i) = eio.identity.borrow().as_ref() {
            return Ok(i.clone());
        }
    }
    let gate = shard.service::<crate::auth::Gate>().ok_or(crate::auth::AuthError::Unavailable)?;
    gate.identify(token.as_deref()).map(Rc::new)
}

/// A Socket.IO socket id: 120 random bits as 20 base64url characters.
fn random_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 15]>())
}

fn text_packet(text: String) -> EioPacket {
    EioPacket::Message(Payload::Text(Bytes::from(text)))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl EioApp for SocketIo {
    fn on_open(&self, _shard: &Shard, s: &Rc<EioSession>) {
        let conn = Rc::new(SioConn {
            sockets: RefCell::new(HashMap::new()),
            assembler: RefCell::new(BinaryAssembler::new()),
            joined: crate::util::LocalEvent::default(),
            bucket: Cell::new(
                _shard.node.config.limits.rate.map(|r| crate::limits::TokenBucket::new(r, std::time::Instant::now())),
            ),
        });
        self.conns.borrow_mut().insert(s.id, conn.clone());
        // A connection that joins no namespace in time is closed; when a token is required,
        // the auth timeout bounds that wait too.
        let mut timeout = self.cfg.connect_timeout;
        if let Some(gate) = _shard.service::<crate::auth::Gate>().filter(|g| g.requires_token()) {
            timeout = timeout.min(gate.timeout);
        }
        let s = s.clone();
        monoio::spawn(async move {
            monoio::select! {
                _ = monoio::time::sleep(timeout) => {},
                _ = s.wait_closed() => return,
                _ = conn.joined.wait() => return,
            }
            let Some(shard) = crate::shard::current() else { return };
            if !conn.joined.is_set() && !s.is_closed() {
                engineio::close(&shard, &s, engineio::CloseReason::ConnectTimeout, true);
            }
        });
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
