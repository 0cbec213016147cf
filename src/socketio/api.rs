//! What applications see: a [`Namespace`] with its middleware and handlers, the [`Event`]s they
//! receive, acks and their errors, and the refusal a middleware answers with.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

use super::packet::{self, Packet};
use super::Socket;
use crate::cluster::envelope::SioAnswer;
use crate::cluster::Cluster;
use crate::shard::Shard;

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
    pub(super) packet: &'a Packet,
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

/// An event from another node's server ([`Namespace::on_server_side`]).
pub struct ServerEvent<'a> {
    pub name: &'a str,
    /// The arguments as raw JSON without brackets, as the sender gave them (not checked: they
    /// come from a node of the same cluster).
    pub args_tail: &'a str,
    /// The sending node's id.
    pub from: &'a str,
    /// Present when the sender waits for acknowledgements
    /// ([`super::SocketIo::server_side_emit_with_ack`]); the handler may keep it and answer later.
    pub ack: Option<ServerAck>,
}

impl ServerEvent<'_> {
    /// The arguments parsed as a JSON array into `T` (e.g. a tuple).
    pub fn args<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&format!("[{}]", self.args_tail))
    }
}

/// The way back to a node that waits for an acknowledgement of its server-side event. Dropped
/// without [`ServerAck::send`], the sender counts this node as missing at its deadline, as
/// socket.io does.
pub struct ServerAck {
    pub(super) cluster: Rc<Cluster>,
    pub(super) to: String,
    pub(super) id: u64,
}

impl ServerAck {
    /// Answers with these arguments (raw JSON without brackets).
    pub fn send(self, args_tail: &str) {
        self.cluster.reply(&self.to, self.id, SioAnswer::Ack(args_tail.to_string()));
    }
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
pub type ServerEventHandler = Rc<dyn Fn(&Shard, ServerEvent<'_>)>;
pub(super) type AckCallback = Box<dyn FnOnce(&Shard, Result<AckResponse, AckError>)>;

enum NsMatch {
    Exact(String),
    Dynamic(Rc<dyn Fn(&str) -> bool>),
}

/// A namespace: which names it serves, its middleware, its connection handler and the event
/// handlers every socket of it shares.
pub struct Namespace {
    matcher: NsMatch,
    pub(super) middleware: Vec<Middleware>,
    pub(super) on_connection: Option<ConnectionHandler>,
    /// Shared by every socket of the namespace: a handler registered here costs nothing per
    /// socket, where [`Socket::on`] costs a map entry per socket.
    pub(super) events: HashMap<String, EventHandler>,
    /// Events from the other nodes' servers ([`super::SocketIo::server_side_emit`]).
    pub(super) server_events: HashMap<String, ServerEventHandler>,
}

impl Namespace {
    /// A namespace with exactly this name (`/`, `/chat`).
    pub fn new(name: &str) -> Self {
        Self {
            matcher: NsMatch::Exact(name.to_string()),
            middleware: Vec::new(),
            on_connection: None,
            events: HashMap::new(),
            server_events: HashMap::new(),
        }
    }

    /// Namespaces created on demand for every name the predicate accepts.
    pub fn dynamic(pred: impl Fn(&str) -> bool + 'static) -> Self {
        Self {
            matcher: NsMatch::Dynamic(Rc::new(pred)),
            middleware: Vec::new(),
            on_connection: None,
            events: HashMap::new(),
            server_events: HashMap::new(),
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

    /// Handles event `name` sent by another node's server to this namespace
    /// ([`super::SocketIo::server_side_emit`], socket.io's `serverSideEmit`). It runs once per node,
    /// on the node's control shard ([`crate::cluster::CONTROL_SHARD`]), never for the node's
    /// own emits.
    pub fn on_server_side(mut self, name: &str, f: impl Fn(&Shard, ServerEvent<'_>) + 'static) -> Self {
        self.server_events.insert(name.to_string(), Rc::new(f));
        self
    }

    /// Called once per socket that joined, with the CONNECT auth payload (raw JSON).
    pub fn on_connection(mut self, f: impl Fn(&Shard, &Rc<Socket>, Option<&str>) + 'static) -> Self {
        self.on_connection = Some(Rc::new(f));
        self
    }

    pub(super) fn matches(&self, name: &str) -> bool {
        match &self.matcher {
            NsMatch::Exact(n) => n == name,
            NsMatch::Dynamic(p) => p(name),
        }
    }
}

/// A Socket.IO socket id: 120 random bits as 20 base64url characters, or the id a recovered
/// socket had. A type of its own so that it is never taken for an Engine.IO session id
/// ([`crate::engineio::Sid`]) or a connection id; it reads as the `str` it is on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(Rc<str>);

impl SocketId {
    pub fn random() -> Self {
        Self(super::random_id().into())
    }

    /// The id as a room name (every socket is in the room named by its id).
    pub fn to_rc(&self) -> Rc<str> {
        self.0.clone()
    }
}

impl From<&str> for SocketId {
    fn from(id: &str) -> Self {
        Self(id.into())
    }
}

impl std::ops::Deref for SocketId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for SocketId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SocketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
