//! Socket.IO v5 on top of [`crate::engineio`]: namespaces (static and dynamic), connect
//! middleware, events, acks both ways, binary attachments, rooms and broadcasts that reach
//! every shard of the node.
//!
//! Everything here runs on the shard that owns the Engine.IO session, so handlers may be
//! `!Send`. A [`SocketIo`] is built once per shard from the same description; the room index
//! is per shard, and a broadcast is delivered locally and posted once to every other shard,
//! which delivers it to its own members. Packets are encoded once per broadcast, not per
//! recipient.
//!
//! - `api`: what handlers see: [`Namespace`] with its middleware and handlers, [`Event`], acks
//!   ([`AckResponse`], [`AckError`]) and [`ConnectRefusal`].
//! - `socket`: [`Socket`]: emits, acks with their timeouts, the server-side disconnect.
//! - `rooms`: joining and leaving rooms ([`JoinError`]) and the per-shard room index.
//! - `broadcast`: [`SocketIo::of`] and [`SocketIo::broadcast`], a [`RemoteBroadcast`] to the
//!   other shards, delivery to this shard's sockets, and the broadcasts held while the shard
//!   coalesces its writes.
//! - `adapter`: what a [`BroadcastOp`] does besides emitting, on every shard and node
//!   ([`BroadcastOp::fetch_sockets`], `sockets_join`, `sockets_leave`, `disconnect_sockets`),
//!   and events between the nodes' servers ([`SocketIo::server_side_emit`]).
//! - `connect`: joining a namespace (the connect timeout, authentication, middleware, claims
//!   of recovered sockets across shards) and leaving it (the state kept for recovery).
//! - `engine`: the Engine.IO glue: connections, the rate limit, dispatch by packet type.
//! - [`packet`]: the Socket.IO wire format; [`recovery`]: connection state recovery;
//!   `config`: the `[socketio]` section.

mod adapter;
mod api;
mod broadcast;
mod cluster;
mod config;
mod connect;
mod engine;
pub mod packet;
pub mod recovery;
mod rooms;
mod socket;

pub use adapter::{Applied, FetchResult, RemoteSocket, ServerAckReply, ServerAcks};
pub use api::{
    AckError, AckResponse, ConnectRefusal, ConnectionHandler, DisconnectHandler, Event, EventHandler, Middleware,
    Namespace, ServerAck, ServerEvent, ServerEventHandler, SocketId,
};
pub use broadcast::{BroadcastOp, RemoteBroadcast, Target};
pub use config::{SioConfig, SocketIoSection};
pub use rooms::JoinError;
pub use socket::Socket;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::engineio::Sid;
use crate::shard::Shard;
use broadcast::Held;
// For `recovery`, which names them as `super::`.
use connect::{json_string, random_id};
use engine::SioConn;
use recovery::Stored;
use rooms::{Members, RoomIndex};

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
    /// The shard's side of the cluster, when the node is in one ([`SocketIo::join_cluster`]).
    cluster: RefCell<Option<Rc<Cluster>>>,
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
            cluster: RefCell::new(None),
        }
    }

    /// Makes this shard's server part of the node's cluster: its broadcasts reach the sockets
    /// of every node, and it receives theirs. For the assembler, before any socket connects.
    pub fn join_cluster(self: &Rc<Self>, cluster: &Rc<Cluster>) {
        *self.cluster.borrow_mut() = Some(cluster.clone());
        cluster.add_handler(self.clone());
    }

    fn cluster(&self) -> Option<Rc<Cluster>> {
        self.cluster.borrow().clone()
    }

    /// The offset of an event emitted to one socket: with recovery in a cluster, the stream
    /// position the socket has everything up to (a client whose last event was a direct one
    /// recovers from there); otherwise, and for a socket that got broadcasts its node delivered
    /// while cut off from the stream (`Socket::cut_off`), whose place the stream cannot say, a
    /// fresh node-local one ([`SocketIo::next_offset`]).
    fn direct_offset(&self, shard: &Shard, s: &Socket) -> Option<Arc<str>> {
        self.cfg.recovery.as_ref()?;
        let in_stream = |c: &Rc<Cluster>| c.sequenced() && c.stats().connected() && !s.cut_off.get();
        match self.cluster().filter(in_stream).and_then(|c| c.stats().epoch()) {
            Some(epoch) => Some(recovery::stream_offset(epoch, s.floor.get())),
            None => self.next_offset(shard),
        }
    }

    /// A fresh recovery offset, unique in the node (`<shard>-<seq>`), or in the cluster
    /// (`<node>-<shard>-<seq>`), when recovery is on.
    fn next_offset(&self, shard: &Shard) -> Option<Arc<str>> {
        self.cfg.recovery.as_ref()?;
        let n = self.next_offset.get().wrapping_add(1);
        self.next_offset.set(n);
        Some(match self.cluster() {
            Some(c) => format!("{}-{}-{n}", c.node_id(), shard.index).into(),
            None => format!("{}-{n}", shard.index).into(),
        })
    }

    /// Number of sockets connected on this shard, over all namespaces.
    pub fn socket_count(&self) -> usize {
        self.sockets.borrow().values().map(HashMap::len).sum()
    }
}
