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

pub mod coalesce;
pub mod config;
pub mod conn;
pub mod http;
pub mod launch;
pub mod pacing;
pub mod rooms;
pub mod route;
pub mod services;
pub mod websocket;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpListener;
use slab::Slab;

use crate::metrics::{self, CloseReason, DriverKind, ShardStats};
use crate::ring::{PushError, ShardRings};
use crate::sidecar::{FromSidecar, SidecarHealth, SidecarLink, ToSidecar};
use crate::util::LocalEvent;
use crate::ws::codec::{encode_close, encode_frame, Opcode};
use config::{DriverChoice, RingFullPolicy, RuntimeConfig, ShardConfig};
use conn::{Conn, ConnId, Enqueued, FrameKind, Phase};
use rooms::RoomTable;
pub use route::{Route, Router, WsHandler};
pub use services::{MissingService, ShardService};

/// A message between shards: the whole set the runtime carries. Frames are encoded once by
/// the sender and the `Bytes` shared; anything a protocol needs beyond frames travels as a
/// closure ([`ShardMsg::Invoke`]) defined by that protocol, so a new protocol adds no variant.
pub enum ShardMsg {
    /// A frame for one session owned by the receiving shard.
    ToSession { id: ConnId, frame: Bytes },
    /// A frame for every local member of `room` on the receiving shard, but `except`.
    ToRoom { room: Arc<str>, frame: Bytes, except: Option<ConnId> },
    /// A broadcast encoded once by the sender, the same `Arc` for every shard: each receiving
    /// shard delivers it to its own members.
    Broadcast(Arc<dyn Broadcast>),
    /// Work to run on the receiving shard (seastar's `invoke_on`).
    Invoke(Task),
}

/// A closure run on another shard by [`Shard::invoke_on`].
pub type Task = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// A protocol's broadcast as it travels to the other shards ([`ShardMsg::Broadcast`]).
pub trait Broadcast: Send + Sync {
    /// Delivers it to the receiving shard's members.
    fn deliver(self: Arc<Self>, shard: &Rc<Shard>);
}

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

thread_local! {
    /// The shard running on this thread: one shard per thread is the design's invariant, and
    /// code that only gets `&Shard` (handlers) uses this to spawn work that outlives the call.
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// The shard that runs on this thread, if any.
pub fn current() -> Option<Rc<Shard>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs a shard on the current thread until the node shuts down. Called on the shard's thread.
pub fn run(init: ShardInit) {
    let index = init.cfg.index;
    if let Some(cpu) = init.cfg.cpu {
        if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
            tracing::warn!(shard = index, cpu, error = ?e, "cannot pin shard to its CPU");
        }
    }
    let cfg = init.node.config.clone();
    let want_uring = cfg.driver != DriverChoice::Epoll;
    if want_uring {
        let urb = io_uring_builder();
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(cfg.uring_entries)
            .uring_builder(urb)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                init.node.stats[index].set_driver(DriverKind::IoUring);
                tracing::info!(shard = index, driver = "io_uring", cpu = ?init.cfg.cpu, "shard starting");
                rt.block_on(shard_main(init));
                return;
            }
            Err(e) if cfg.driver == DriverChoice::Auto => {
                tracing::warn!(shard = index, error = %e, "io_uring unavailable; falling back to epoll");
            }
            Err(source) => {
                let _ = init.ready.send(Err(ShardError::Runtime { shard: index, driver: "io_uring", source }));
                return;
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build() {
        Ok(mut rt) => {
            init.node.stats[index].set_driver(DriverKind::Epoll);
            tracing::info!(shard = index, driver = "epoll", cpu = ?init.cfg.cpu, "shard starting");
            rt.block_on(shard_main(init));
        }
        Err(source) => {
            let _ = init.ready.send(Err(ShardError::Runtime { shard: index, driver: "epoll", source }));
        }
    }
}

/// io_uring flags measured to help on these machines (runtime-notes): cooperative task running
/// and a single issuer, since only this thread ever submits to the ring.
fn io_uring_builder() -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    b.setup_coop_taskrun().setup_single_issuer();
    b
}

async fn shard_main(init: ShardInit) {
    let ShardInit { cfg, node, rings, sidecar, ready, setup } = init;
    let index = cfg.index;
    let ShardRings { outboxes, inboxes, bell, .. } = rings;
    let node_config = node.config.clone();
    let shard = Rc::new(Shard {
        index,
        stats: node.stats[index].clone(),
        cfg,
        node,
        conns: RefCell::new(Slab::new()),
        next_generation: Cell::new(0),
        rooms: RefCell::new(RoomTable::default()),
        outboxes: RefCell::new(outboxes),
        ring_waiters: RefCell::new(Vec::new()),
        sidecar_tx: RefCell::new(Some(sidecar.tx)),
        probes: RefCell::new(HashMap::new()),
        next_probe: Cell::new(0),
        backlog: RefCell::new((0..node_config.shards.len()).map(|_| Default::default()).collect()),
        backlog_waker: RefCell::new(None),
        services: RefCell::default(),
        router: RefCell::new(Rc::new(route::NotFound)),
        pacing: pacing::Pacing::default(),
        stopping: LocalEvent::default(),
        drained: LocalEvent::default(),
        read_scratch: RefCell::new(vec![0; node_config.http.read_buffer_bytes]),
        coalesce: coalesce::Coalescer::default(),
    });

    CURRENT.with(|c| *c.borrow_mut() = Some(shard.clone()));
    monoio::spawn(ring_pump(shard.clone(), inboxes, bell));
    monoio::spawn(backlog_pump(shard.clone()));
    monoio::spawn(sidecar_pump(shard.clone(), sidecar.rx));
    monoio::spawn(ticker(shard.clone()));
    setup(&shard);
    if let Some(c) = node_config.ws.coalesce {
        monoio::spawn(coalesce::flusher(shard.clone(), c.window));
    }
    serve(&shard, ready).await;
    // The pumps and the ticker never finish and monoio does not drop suspended tasks, so the
    // shard's `Rc` outlives this function: release the sidecar explicitly.
    shard.sidecar_tx.borrow_mut().take();
    shard.probes.borrow_mut().clear();
    tracing::info!(shard = index, "shard stopped");
}

/// Binds, accepts until the node stops, then drains the connections.
async fn serve(shard: &Rc<Shard>, ready: std::sync::mpsc::Sender<Result<Vec<SocketAddr>, ShardError>>) {
    let index = shard.index;

    // Bind only now that every task is in place: a bound listener gets its share of
    // connections at once, and they would hang if nothing accepted them.
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for addr in shard.cfg.listen.clone() {
        match bind_reuseport(addr) {
            Ok(l) => {
                addrs.push(l.local_addr().unwrap_or(addr));
                listeners.push(l);
            }
            Err(source) => {
                let _ = ready.send(Err(ShardError::Bind { shard: index, addr, source }));
                return;
            }
        }
    }
    let _ = ready.send(Ok(addrs));
    let mut accepting = Vec::new();
    for l in listeners {
        accepting.push(monoio::spawn(accept_loop(shard.clone(), l)));
    }
    for a in accepting {
        a.await;
    }
    // Listeners are closed (the accept loops own them and have returned): now drain.
    shard.begin_drain();
    let timeout = shard.node.config.shutdown_timeout;
    let drained = monoio::select! {
        _ = shard.drained.wait() => true,
        _ = monoio::time::sleep(timeout) => false,
    };
    if !drained {
        let left = shard.conns.borrow().len();
        tracing::warn!(shard = index, left, "shutdown timeout: dropping remaining connections");
        for (_, c) in shard.conns.borrow().iter() {
            c.abort(CloseReason::Shutdown);
        }
        // Give the aborted connections' tasks a moment to observe EOF and clean up.
        let grace = monoio::time::sleep(Duration::from_millis(200));
        monoio::select! {
            _ = shard.drained.wait() => {},
            _ = grace => {},
        }
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = shard.stopping.wait() => None,
        };
        let Some(res) = accepted else { break };
        match res {
            Ok((stream, peer)) => {
                metrics::add(&shard.stats.connections_total, 1);
                let _ = stream.set_nodelay(true);
                monoio::spawn(http::serve(shard.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = shard.index, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
}

/// Drains every inbound ring whenever the doorbell rings. The node rings it on shutdown too.
async fn ring_pump(
    shard: Rc<Shard>,
    inboxes: Vec<Option<crate::ring::Inbox<ShardMsg>>>,
    bell: Arc<crate::ring::Doorbell>,
) {
    let mut rings = ShardRings { index: shard.index, outboxes: Vec::new(), inboxes, bell: bell.clone() };
    loop {
        bell.wait().await;
        if shard.node.is_stopping() && !shard.stopping.is_set() {
            shard.stopping.set();
        }
        loop {
            // Work queues up behind the shard's services (the chat worker); while one is far
            // behind, leave messages in the rings so their senders feel the backpressure.
            shard.services_ready().await;
            let n = rings.drain_all(256, |_, msg| shard.handle_ring(msg));
            metrics::add(&shard.stats.ring_received, n as u64);
            if n == 0 {
                break;
            }
            // Let sessions write what just arrived before taking more.
            monoio::time::sleep(Duration::ZERO).await;
        }
    }
}

/// Pushes what [`Shard::post`] could not, in order, waiting for ring space.
async fn backlog_pump(shard: Rc<Shard>) {
    loop {
        poll_fn(|cx| {
            if shard.backlog.borrow().iter().any(|q| !q.is_empty()) {
                Poll::Ready(())
            } else {
                *shard.backlog_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let destinations = shard.backlog.borrow().len();
        for to in 0..destinations {
            loop {
                let Some(msg) = shard.backlog.borrow_mut()[to].pop_front() else { break };
                shard.push_ring(to, msg).await;
            }
        }
    }
}

async fn sidecar_pump(shard: Rc<Shard>, mut rx: tokio::sync::mpsc::Receiver<FromSidecar>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            FromSidecar::Probe { token, health } => {
                let waiter = shard.probes.borrow_mut().remove(&token);
                if let Some(w) = waiter {
                    let _ = w.send(health);
                }
            }
        }
    }
}

/// The shard's coarse timer: heartbeats, HTTP deadlines, write stalls and close timeouts for
/// every connection, checked once per tick instead of one timer per connection.
async fn ticker(shard: Rc<Shard>) {
    let cfg = shard.node.config.clone();
    loop {
        monoio::time::sleep(cfg.tick).await;
        let now = Instant::now();
        for (_, c) in shard.conns.borrow().iter() {
            shard.check_timers(c, now);
        }
        shard.pacing.publish_stats(&shard.stats);
        shard.each_service(|s| s.on_tick(&shard));
        shard.coalesce.on_tick(cfg.ws.coalesce.as_ref(), &shard.stats, now);
        if !shard.coalesce.is_active() {
            shard.release_held_broadcasts();
        }
        // A task waiting for ring space is woken by the receiver; this is the safety net for a
        // waiter whose wake went to a task that has since gone away.
        for w in shard.ring_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
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

    fn check_timers(&self, c: &Conn, now: Instant) {
        let ws = &self.node.config.ws;
        if c.write_started.get().is_some_and(|t| now.duration_since(t) >= ws.write_timeout) {
            c.abort(CloseReason::WriteTimeout);
            return;
        }
        match c.phase.get() {
            Phase::HttpIdle | Phase::HttpHead => {
                if c.deadline.get().is_some_and(|d| now >= d) {
                    let reason = if c.phase.get() == Phase::HttpHead {
                        CloseReason::HeaderTimeout
                    } else {
                        CloseReason::IdleTimeout
                    };
                    c.deadline.set(None);
                    c.interrupt_read(reason);
                }
            }
            Phase::HttpBusy => {}
            Phase::WebSocket => {
                if c.closing_since.get().is_some_and(|t| now.duration_since(t) >= ws.close_timeout) {
                    c.abort(CloseReason::Shutdown);
                    return;
                }
                if let Some(p) = c.ping_sent.get() {
                    if c.last_rx.get() > p {
                        c.ping_sent.set(None);
                    } else if now.duration_since(p) >= ws.ping_timeout {
                        c.abort(CloseReason::PingTimeout);
                        return;
                    }
                }
                if c.ping_sent.get().is_none()
                    && c.closing_since.get().is_none()
                    && now.duration_since(c.last_rx.get()) >= ws.ping_interval
                {
                    c.ping_sent.set(Some(now));
                    if c.enqueue(FrameKind::Control, encode_frame(Opcode::Ping, b"")) == Enqueued::Overflow {
                        self.close_session(c, 1008, "slow consumer", CloseReason::SlowConsumer);
                    }
                }
            }
        }
    }

    /// Queues a data frame for a local session, applying its backpressure policy.
    pub fn deliver(&self, c: &Conn, frame: Bytes) {
        self.deliver_as(c, FrameKind::Data, frame);
    }

    /// As [`Shard::deliver`] for a broadcast: while the shard coalesces writes, the frame may
    /// wait for the next flush to share a socket write with others.
    pub fn deliver_broadcast(&self, c: &Conn, frame: Bytes) {
        self.deliver_as(c, FrameKind::Broadcast, frame);
    }

    /// As [`Shard::deliver`] for a stored chat message; returns the tag that
    /// [`conn::SendQueue::take_written_tag`] reports once a write took it.
    pub fn deliver_message(&self, c: &Conn, frame: Bytes) -> u32 {
        let tag = c.next_tag();
        self.deliver_as(c, FrameKind::Owed(tag), frame);
        tag
    }

    /// As [`Shard::deliver`] for a frame the server owes the session (an ack or error about its
    /// own chat message): the `drop_oldest` policy never drops it.
    pub fn deliver_owed(&self, c: &Conn, frame: Bytes) {
        self.deliver_as(c, FrameKind::Owed(0), frame);
    }

    /// As [`Shard::deliver`], but the frame leaves in a socket write of its own
    /// ([`FrameKind::DataFlush`]).
    pub fn deliver_flushed(&self, c: &Conn, frame: Bytes) {
        self.deliver_as(c, FrameKind::DataFlush, frame);
    }

    fn deliver_as(&self, c: &Conn, kind: FrameKind, frame: Bytes) {
        // Broadcasts held for the flush were sent before this.
        self.release_held_broadcasts();
        match c.enqueue(kind, frame) {
            Enqueued::Queued | Enqueued::Closed => {}
            Enqueued::DroppedNewest => metrics::add(&self.stats.drops_newest, 1),
            Enqueued::DroppedOldest => metrics::add(&self.stats.drops_oldest, 1),
            Enqueued::Overflow => self.close_session(c, 1008, "slow consumer", CloseReason::SlowConsumer),
        }
    }

    /// Starts the server side of a WebSocket close: queued data is dropped unless this is a
    /// shutdown (which drains it first), then a close frame is queued and the close timeout runs.
    pub fn close_session(&self, c: &Conn, code: u16, text: &str, reason: CloseReason) {
        self.close_with(c, code, text, reason, reason == CloseReason::Shutdown);
    }

    /// As [`Shard::close_session`], but what is already queued (an `error` or `kicked`
    /// message explaining the close) goes out before the close frame.
    pub fn close_session_keeping_data(&self, c: &Conn, code: u16, text: &str, reason: CloseReason) {
        self.close_with(c, code, text, reason, true);
    }

    fn close_with(&self, c: &Conn, code: u16, text: &str, reason: CloseReason, keep_data: bool) {
        if c.closing_since.get().is_some() {
            return;
        }
        self.release_held_broadcasts();
        c.set_reason(reason);
        if !keep_data {
            c.queue.borrow_mut().clear_data();
        }
        c.closing_since.set(Some(Instant::now()));
        c.close_code.set(Some(code));
        c.enqueue(FrameKind::Close, encode_close(code, text));
    }

    /// Sends the broadcasts held for the coalesced flush now, because something else is about
    /// to be sent and must not overtake them.
    pub fn release_held_broadcasts(&self) {
        self.release_held(false);
    }

    /// Sends the held broadcasts: native room messages and Socket.IO broadcasts. At the flush
    /// they are written at once; released early, they are broadcasts the writers may still hold.
    /// Costs one flag test when nothing is held, as it is asked before every frame queued.
    pub fn release_held(&self, at_flush: bool) {
        if !self.coalesce.begin_release() {
            return;
        }
        let held = self.rooms.borrow_mut().take_held();
        let kind = if at_flush { FrameKind::Data } else { FrameKind::Broadcast };
        for (members, frames) in held {
            for id in members {
                let Some(c) = self.session(id) else { continue };
                for (frame, except) in &frames {
                    if *except != Some(id) {
                        self.deliver_as(&c, kind, frame.clone());
                    }
                }
            }
        }
        self.each_service(|s| s.release_held(self, at_flush));
        self.coalesce.end_release();
    }

    /// Sends an encoded frame to a session on any shard of this node, without waiting (other
    /// shards through [`Shard::post`]). The local case never touches a ring.
    pub fn send_to(&self, id: ConnId, frame: Bytes) {
        if usize::from(id.shard) == self.index {
            if let Some(c) = self.session(id) {
                self.deliver(&c, frame);
            }
        } else {
            self.post(usize::from(id.shard), ShardMsg::ToSession { id, frame });
        }
    }

    /// Sends an encoded frame to every member of `room` on every shard of this node, but
    /// `except`: encoded once, the same bytes go to each shard and each member. Other shards are
    /// reached with [`Shard::post`], so it never waits.
    pub fn post_room(&self, room: &Arc<str>, frame: Bytes, except: Option<ConnId>) {
        self.deliver_room(room, &frame, except);
        for to in 0..self.shard_count() {
            if to != self.index {
                self.post(to, ShardMsg::ToRoom { room: room.clone(), frame: frame.clone(), except });
            }
        }
    }

    fn deliver_room(&self, room: &Arc<str>, frame: &Bytes, except: Option<ConnId>) {
        if self.coalesce.is_active() {
            // Held whole, as Socket.IO broadcasts are: see `SocketIo::hold`.
            self.rooms.borrow_mut().hold(room, frame.clone(), except);
            self.coalesce.held_one(&self.stats);
            return;
        }
        let members: Vec<ConnId> = self.rooms.borrow().members(room).filter(|m| Some(*m) != except).collect();
        for id in members {
            if let Some(c) = self.session(id) {
                self.deliver_broadcast(&c, frame.clone());
            }
        }
    }

    fn handle_ring(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::ToSession { id, frame } => {
                if let Some(c) = self.session(id) {
                    self.deliver(&c, frame);
                }
            }
            ShardMsg::ToRoom { room, frame, except } => self.deliver_room(&room, &frame, except),
            ShardMsg::Broadcast(b) => b.deliver(self),
            ShardMsg::Invoke(task) => task(self),
        }
    }

    /// Runs `task` on shard `to` without waiting (seastar's `invoke_on`): at once when `to` is
    /// this shard, otherwise over the ring ([`Shard::post`], ordered behind earlier posts).
    pub fn invoke_on(self: &Rc<Self>, to: usize, task: impl FnOnce(&Rc<Shard>) + Send + 'static) {
        if to == self.index {
            task(self);
        } else {
            self.post(to, ShardMsg::Invoke(Box::new(task)));
        }
    }

    /// Runs `f` on shard `owner` and waits for its answer (seastar's `submit_to`). The answer
    /// comes back over the ring to this shard. `None` when the message or its answer was
    /// dropped (`rings.full_policy = "drop"`) or the node is stopping; callers bound the wait
    /// with their own timeout.
    pub async fn call<R, F, Fut>(self: &Rc<Self>, owner: usize, f: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = R> + 'static,
    {
        if owner == self.index {
            return Some(f(self.clone()).await);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let from = self.index;
        self.push_ring(
            owner,
            ShardMsg::Invoke(Box::new(move |owner: &Rc<Shard>| {
                let owner = owner.clone();
                monoio::spawn(async move {
                    let answer = f(owner.clone()).await;
                    owner.post(from, ShardMsg::Invoke(Box::new(move |_: &Rc<Shard>| drop(tx.send(answer)))));
                });
            })),
        )
        .await;
        rx.await.ok()
    }

    /// Sends a message to shard `to` without waiting, for code that cannot await (handlers).
    /// A full ring puts it in an ordered per-destination backlog (or drops it under the `drop`
    /// policy, counted); later posts queue behind it so order is kept.
    pub fn post(&self, to: usize, msg: ShardMsg) {
        let queued_behind = self.backlog.borrow().get(to).is_some_and(|q| !q.is_empty());
        let msg = if queued_behind {
            msg
        } else {
            let mut outboxes = self.outboxes.borrow_mut();
            let Some(Some(outbox)) = outboxes.get_mut(to) else { return };
            match outbox.try_push(msg) {
                Ok(()) => {
                    metrics::add(&self.stats.ring_pushes, 1);
                    return;
                }
                Err((PushError::Closed, _)) => return,
                Err((PushError::Full, m)) => {
                    metrics::add(&self.stats.ring_full, 1);
                    if self.node.config.ring_full_policy == RingFullPolicy::Drop {
                        metrics::add(&self.stats.ring_drops, 1);
                        return;
                    }
                    m
                }
            }
        };
        if let Some(q) = self.backlog.borrow_mut().get_mut(to) {
            q.push_back(msg);
        }
        if let Some(w) = self.backlog_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Pushes onto the ring to shard `to`, applying `rings.full_policy` when it is full. The
    /// ring is never borrowed across an await.
    pub async fn push_ring(&self, to: usize, msg: ShardMsg) {
        let mut msg = Some(msg);
        let mut counted_full = false;
        poll_fn(|cx| {
            let Some(m) = msg.take() else { return Poll::Ready(()) };
            let mut outboxes = self.outboxes.borrow_mut();
            let Some(Some(outbox)) = outboxes.get_mut(to) else { return Poll::Ready(()) };
            match outbox.try_push(m) {
                Ok(()) => {
                    metrics::add(&self.stats.ring_pushes, 1);
                    // Space came back: let other local tasks waiting on rings retry too.
                    if counted_full {
                        for w in self.ring_waiters.borrow_mut().drain(..) {
                            w.wake();
                        }
                    }
                    Poll::Ready(())
                }
                Err((PushError::Closed, _)) => Poll::Ready(()),
                Err((PushError::Full, m)) => {
                    if !counted_full {
                        counted_full = true;
                        metrics::add(&self.stats.ring_full, 1);
                    }
                    if self.node.config.ring_full_policy == RingFullPolicy::Drop {
                        metrics::add(&self.stats.ring_drops, 1);
                        return Poll::Ready(());
                    }
                    outbox.register_space_waker(cx.waker());
                    match outbox.try_push(m) {
                        Ok(()) => {
                            metrics::add(&self.stats.ring_pushes, 1);
                            Poll::Ready(())
                        }
                        Err((PushError::Closed, _)) => Poll::Ready(()),
                        Err((PushError::Full, m)) => {
                            self.ring_waiters.borrow_mut().push(cx.waker().clone());
                            msg = Some(m);
                            Poll::Pending
                        }
                    }
                }
            }
        })
        .await
    }

    /// Resolves once every service can take more work from the rings
    /// ([`ShardService::poll_ring_ready`]).
    async fn services_ready(&self) {
        if !self.services.borrow().has_hooks() {
            return;
        }
        let hooks = self.services.borrow().hooks();
        for h in hooks.iter() {
            poll_fn(|cx| h.poll_ring_ready(cx)).await;
        }
    }

    /// The router the assembler set ([`Shard::set_router`]).
    pub fn router(&self) -> Rc<dyn Router> {
        self.router.borrow().clone()
    }

    /// Sets who answers this shard's requests; for the assembler.
    pub fn set_router(&self, router: Rc<dyn Router>) {
        *self.router.borrow_mut() = router;
    }

    /// Asks the sidecar for its health, without ever blocking the shard: a full channel or a
    /// late answer is reported as unavailable.
    pub async fn probe_sidecar(&self) -> Option<SidecarHealth> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = self.next_probe.get().wrapping_add(1);
        self.next_probe.set(token);
        let sent = match self.sidecar_tx.borrow().as_ref() {
            Some(s) => s.try_send(ToSidecar::Probe { shard: self.index, token }).is_ok(),
            None => false,
        };
        if !sent {
            return None;
        }
        self.probes.borrow_mut().insert(token, tx);
        let answer = monoio::select! {
            r = rx => r.ok(),
            _ = monoio::time::sleep(self.node.config.sidecar_probe_timeout) => None,
        };
        self.probes.borrow_mut().remove(&token);
        answer
    }

    /// Graceful shutdown, after the listeners are closed: WebSockets get close 1001 after their
    /// queued frames, idle HTTP connections are closed, busy ones finish their response.
    fn begin_drain(&self) {
        self.each_service(|s| s.on_drain(self));
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for c in &conns {
            match c.phase.get() {
                Phase::WebSocket => self.close_session(c, 1001, "server shutting down", CloseReason::Shutdown),
                Phase::HttpIdle | Phase::HttpHead => c.interrupt_read(CloseReason::Shutdown),
                Phase::HttpBusy => {}
            }
        }
        if self.conns.borrow().is_empty() {
            self.drained.set();
        }
    }
}
