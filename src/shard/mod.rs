//! A shard: one pinned thread running one monoio runtime, with its own SO_REUSEPORT listeners,
//! connection slab, room table, timer and ring endpoints. Nothing in here is shared with other
//! shards except through the rings, the per-shard counters (written only here) and the sidecar
//! channels.
//!
//! The shard is the runtime and knows no protocol. It runs the transports (the HTTP/1.1 driver,
//! [`http`], and the WebSocket session driver, [`websocket`]), asks the assembler's [`Router`]
//! who answers each request, and carries work between shards as a small generic message set
//! ([`ShardMsg`]): a frame for a session, a frame for a room, a broadcast, or a closure to run
//! on the receiving shard ([`Shard::invoke_on`], [`Shard::call`]). Protocols and services are
//! registered on it by the assembler ([`services`]).
//!
//! - `runtime`: the shard's thread, its I/O driver, listeners and accept loop, the drain.
//! - `messages`: the message set between shards, the ring pumps, `invoke_on` and `call`.
//! - `delivery`: queueing frames on local sessions, rooms, closes and held broadcasts.
//! - `timers`: the coarse ticker (heartbeats, deadlines, write stalls, close timeouts).
//! - [`conn`], [`http`], [`websocket`], [`route`]: a connection, its two transports' drivers
//!   and who answers it; [`pacing`], [`coalesce`], [`rooms`]: what its send queue offers.
//! - [`services`], [`launch`], [`config`]: what the assembler plugs in and starts.

pub mod coalesce;
pub mod config;
pub mod conn;
mod delivery;
pub mod http;
pub mod launch;
mod messages;
pub mod pacing;
pub mod rooms;
pub mod route;
mod runtime;
pub mod services;
mod timers;
pub mod websocket;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use slab::Slab;

use crate::metrics::{self, ShardStats};
use crate::ring::ShardRings;
use crate::sidecar::{SidecarHealth, SidecarLink, ToSidecar};
use crate::util::LocalEvent;
use config::{RuntimeConfig, ShardConfig};
use conn::{Conn, ConnId};
pub use messages::{Broadcast, ShardMsg, Task};
use rooms::RoomTable;
pub use route::{Route, Router, WsHandler};
pub use runtime::{current, run};
pub use services::{MissingService, ShardService};

/// State every shard of a node can read: the runtime's settings, every shard's counters, the
/// start time, the connection counts and the shutdown flag. Written only at start-up and when
/// the node stops.
pub struct NodeState {
    pub config: Arc<RuntimeConfig>,
    pub stats: Vec<Arc<ShardStats>>,
    pub started: Instant,
    /// Open connections on the node (`server.max_connections`).
    pub connections: crate::limits::NodeCounter,
    /// Open connections per client address (`limits.max_connections_per_ip`).
    pub ip_counter: Arc<crate::limits::IpCounter>,
    stopping: std::sync::atomic::AtomicBool,
}

impl NodeState {
    pub fn new(config: Arc<RuntimeConfig>) -> Self {
        Self {
            stats: (0..config.shards.len()).map(|_| Arc::new(ShardStats::default())).collect(),
            config,
            started: Instant::now(),
            connections: Default::default(),
            ip_counter: Default::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the node as stopping; the caller then rings every shard's doorbell.
    pub fn set_stopping(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// What the assembler does on each shard's thread before the shard accepts connections:
/// register its services and router, spawn their tasks.
pub type ShardSetup = Arc<dyn Fn(&Rc<Shard>) + Send + Sync>;

/// Why a shard could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: cannot build the {driver} runtime: {source}")]
    Runtime { shard: usize, driver: &'static str, source: std::io::Error },
    #[error("shard {shard}: cannot listen on {addr}: {source}")]
    Bind { shard: usize, addr: SocketAddr, source: std::io::Error },
}

/// Everything a shard thread needs to start, moved onto it.
pub struct ShardInit {
    pub cfg: ShardConfig,
    pub node: Arc<NodeState>,
    pub rings: ShardRings<ShardMsg>,
    pub sidecar: SidecarLink,
    pub setup: ShardSetup,
    /// Where to report the bound listener addresses (or the start error) once accepting.
    pub ready: std::sync::mpsc::Sender<Result<Vec<SocketAddr>, ShardError>>,
}

/// The shard's state, shared by its tasks through an `Rc`.
pub struct Shard {
    pub index: usize,
    pub cfg: ShardConfig,
    pub node: Arc<NodeState>,
    pub stats: Arc<ShardStats>,
    conns: RefCell<Slab<Rc<Conn>>>,
    next_generation: Cell<u32>,
    pub rooms: RefCell<RoomTable>,
    outboxes: RefCell<Vec<Option<crate::ring::Outbox<ShardMsg>>>>,
    ring_waiters: RefCell<Vec<Waker>>,
    /// Taken (dropped) when the shard ends: the sidecar stops once every shard has let go.
    sidecar_tx: RefCell<Option<tokio::sync::mpsc::Sender<ToSidecar>>>,
    /// Probes awaiting an answer, by a token never reused (a late answer cannot reach a newer
    /// probe that happens to reuse a slot).
    probes: RefCell<HashMap<u64, tokio::sync::oneshot::Sender<SidecarHealth>>>,
    next_probe: Cell<u64>,
    /// Messages [`Shard::post`]ed while a ring was full, per destination, in order.
    backlog: RefCell<Vec<std::collections::VecDeque<ShardMsg>>>,
    backlog_waker: RefCell<Option<Waker>>,
    /// The protocols and services the assembler registered here ([`services`]).
    services: RefCell<services::Services>,
    /// Who answers each request: the assembler's routes.
    router: RefCell<Rc<dyn Router>>,
    /// Frames waiting for room in a session's send queue, and tracked frames in it
    /// ([`pacing`]).
    pub(crate) pacing: pacing::Pacing,
    /// Set when the node begins a graceful shutdown.
    pub stopping: LocalEvent,
    /// Set when the last connection is gone after `stopping`.
    drained: LocalEvent,
    /// Where WebSocket sessions read bursts (`http.read_buffer_bytes`), one at a time: a
    /// session copies what it read into its decoder before it awaits anything, so sessions
    /// hold no read buffer of their own beyond a small first one.
    pub read_scratch: RefCell<Vec<u8>>,
    /// Write coalescing under load (`websocket.coalesce_us`).
    pub coalesce: coalesce::Coalescer,
}

impl Shard {
    /// How many shards the node runs.
    pub fn shard_count(&self) -> usize {
        self.node.stats.len()
    }

    /// Adds a connection to the slab and returns its entry; `None` over the shard's or the
    /// node's connection limit (counted in `imks_limits_exceeded_total`).
    pub fn register(&self, fd: std::os::fd::RawFd) -> Option<Rc<Conn>> {
        let mut conns = self.conns.borrow_mut();
        if conns.len() >= self.cfg.max_connections {
            metrics::add(&self.stats.limit_shard, 1);
            return None;
        }
        let entry = conns.vacant_entry();
        let slot = u32::try_from(entry.key()).ok()?;
        let shard = u16::try_from(self.index).ok()?;
        // Last: once counted against the node, the connection is registered.
        if !self.node.connections.try_acquire(self.node.config.max_connections) {
            metrics::add(&self.stats.limit_node, 1);
            return None;
        }
        let generation = self.next_generation.get().wrapping_add(1);
        self.next_generation.set(generation);
        let conn = Rc::new(Conn::new(
            ConnId::new(shard, slot, generation),
            fd,
            Instant::now(),
            self.cfg.send_queue_len,
            self.node.config.ws.backpressure,
        ));
        entry.insert(conn.clone());
        metrics::add(&self.stats.connections_active, 1);
        Some(conn)
    }

    /// Removes a connection from the slab and the room table.
    pub fn unregister(&self, conn: &Conn) {
        let slot = conn.id.slot as usize;
        let mut conns = self.conns.borrow_mut();
        if conns.get(slot).is_some_and(|c| c.id == conn.id) {
            conns.remove(slot);
            self.node.connections.release();
            self.stats.connections_active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let empty = conns.is_empty();
        drop(conns);
        self.rooms.borrow_mut().leave_all(conn.id);
        if empty && self.stopping.is_set() {
            self.drained.set();
        }
    }

    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// The local session with this id, if it is still connected.
    pub fn session(&self, id: ConnId) -> Option<Rc<Conn>> {
        if usize::from(id.shard) != self.index {
            return None;
        }
        self.conns.borrow().get(id.slot as usize).filter(|c| c.id == id).cloned()
    }

    /// The router the assembler set ([`Shard::set_router`]).
    pub fn router(&self) -> Rc<dyn Router> {
        self.router.borrow().clone()
    }

    /// Sets who answers this shard's requests; for the assembler.
    pub fn set_router(&self, router: Rc<dyn Router>) {
        *self.router.borrow_mut() = router;
    }
}
