//! Engine.IO v4 on a shard: sessions over long-polling and WebSocket, the upgrade from one to
//! the other, heartbeats and the protocol's error answers. The wire format is the pure
//! [`packet`] module; the layer above (Socket.IO, or the raw echo of the conformance
//! application) is an [`EioApp`].
//!
//! A session belongs to the shard that opened it: its id is a [`Sid`], which names that
//! shard. Everything about a session (its queue, its pending long-poll, its timers) lives there
//! and is touched only by that shard's thread.

pub mod packet;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use crate::http::parse::{Method, RequestHead};
use crate::http::Response;
use crate::shard::conn::Conn;
use crate::shard::route::{HttpHandler, ResponseFuture};
use crate::shard::{Route, Shard, ShardService, WsHandler};
use crate::ws::codec::{encode_frame, Opcode};
use packet::{Packet, Payload, WsOut};

pub use config::{EioConfig, EngineIoSection};
pub use sid::Sid;

mod config;
mod sid;

/// The protocol's error answers: HTTP 400 with `{"code":N,"message":"..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Transport unknown")]
    UnknownTransport,
    #[error("Session ID unknown")]
    UnknownSid,
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    #[error("Bad request")]
    BadRequest,
    #[error("Forbidden")]
    Forbidden,
    #[error("Unsupported protocol version")]
    UnsupportedVersion,
}

impl RequestError {
    pub fn code(self) -> u8 {
        match self {
            RequestError::UnknownTransport => 0,
            RequestError::UnknownSid => 1,
            RequestError::BadHandshakeMethod => 2,
            RequestError::BadRequest => 3,
            RequestError::Forbidden => 4,
            RequestError::UnsupportedVersion => 5,
        }
    }

    pub fn response(self, head: &RequestHead, cfg: &EioConfig) -> Response {
        let mut r = error_body(self);
        cors(head, cfg, &mut r);
        r
    }
}

/// What sits on top of Engine.IO. Runs on the session's shard; may be `!Send`.
pub trait EioApp {
    /// The session exists and its open packet is queued.
    fn on_open(&self, _shard: &Shard, _s: &Rc<EioSession>) {}
    fn on_message(&self, shard: &Shard, s: &Rc<EioSession>, msg: Payload);
    /// The session is gone, for this reason.
    fn on_close(&self, _shard: &Shard, _s: &Rc<EioSession>, _reason: CloseReason) {}
}

/// Why an Engine.IO session ended. [`CloseReason::as_str`] is the reason string the reference
/// server reports to the layer above (Socket.IO passes it to disconnect handlers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The node is shutting down.
    ServerShutdown,
    /// The client sent something that is not Engine.IO.
    ParseError,
    /// No pong within `ping_timeout`.
    PingTimeout,
    /// The transport failed: a second concurrent GET, an oversized POST, too many packets
    /// buffered for a polling client.
    TransportError,
    /// The client closed its transport (or sent a close packet).
    TransportClose,
    /// The server closed it on purpose (Socket.IO's `disconnect(true)`).
    ForcedClose,
    /// The client sent no Socket.IO CONNECT in time.
    ConnectTimeout,
    /// The client sent faster than `limits.message_rate` allows.
    RateLimited,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::ParseError => "parse error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::TransportError => "transport error",
            CloseReason::TransportClose => "transport close",
            CloseReason::ForcedClose => "forced close",
            CloseReason::ConnectTimeout => "connect timeout",
            CloseReason::RateLimited => "rate limited",
        }
    }

    /// The WebSocket close code and the metrics reason, for a session on a WebSocket.
    fn websocket_close(self) -> (u16, crate::metrics::CloseReason) {
        use crate::metrics::CloseReason as Metric;
        match self {
            CloseReason::ServerShutdown => (1001, Metric::Shutdown),
            CloseReason::ParseError => (1002, Metric::Protocol),
            CloseReason::PingTimeout => (1000, Metric::PingTimeout),
            CloseReason::TransportError => (1000, Metric::Io),
            CloseReason::RateLimited => (1008, Metric::Policy),
            CloseReason::TransportClose | CloseReason::ForcedClose | CloseReason::ConnectTimeout => {
                (1000, Metric::Client)
            }
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

enum Transport {
    Polling,
    WebSocket(Rc<Conn>),
}

/// One Engine.IO session.
pub struct EioSession {
    pub id: Sid,
    pub sid: Rc<str>,
    /// The table the session is in, with the settings it runs under.
    engine: Rc<Engine>,
    app: Rc<dyn EioApp>,
    transport: RefCell<Transport>,
    /// Packets waiting for the next polling GET (also while an upgrade is in progress).
    queue: RefCell<VecDeque<Packet>>,
    poll_waiter: RefCell<Option<Waker>>,
    poll_active: Cell<bool>,
    /// A WebSocket has sent `2probe` and the upgrade is not finished.
    upgrading: Cell<bool>,
    /// WebSockets opened to upgrade this session, until one of them finishes it; the others
    /// are then closed.
    candidates: RefCell<Vec<Rc<Conn>>>,
    /// A ping went out and its pong has not come back.
    awaiting_pong: Cell<bool>,
    /// When the next ping is due: one interval after the open packet, then after each pong.
    /// The session is dead once `ping_due + ping_timeout` passes without a pong, to the
    /// millisecond (the protocol allows no grace), whatever the timers' slack.
    ping_due: Cell<Instant>,
    closed: Cell<bool>,
    /// Set on close, so tasks waiting on the session's timers let go of it at once.
    closed_event: crate::util::LocalEvent,
    /// Who the handshake's token (`?token=` or `Authorization: Bearer`) said the client is;
    /// Socket.IO uses it when a CONNECT carries no token of its own.
    pub identity: RefCell<Option<Rc<crate::auth::Identity>>>,
}

impl EioSession {
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Resolves when the session closes.
    pub async fn wait_closed(&self) {
        self.closed_event.wait().await
    }

    /// Whether the pong deadline has passed (the heartbeat task may not have noticed yet).
    fn expired(&self) -> bool {
        Instant::now() >= self.ping_due.get() + self.engine.cfg.ping_timeout
    }

    pub fn is_websocket(&self) -> bool {
        matches!(*self.transport.borrow(), Transport::WebSocket(_))
    }

    /// The WebSocket connection, when the session uses one now (not while upgrading).
    pub(crate) fn websocket(&self) -> Option<Rc<Conn>> {
        match &*self.transport.borrow() {
            Transport::WebSocket(c) if !self.upgrading.get() => Some(c.clone()),
            _ => None,
        }
    }

    /// Sends one packet on whichever transport the session uses now.
    pub fn send(self: &Rc<Self>, shard: &Shard, p: Packet) {
        if self.closed.get() {
            return;
        }
        match self.websocket() {
            Some(c) => shard.deliver(&c, ws_frame(&p)),
            None => self.queue_for_polling(shard, std::iter::once(p)),
        }
    }

    /// Sends one packet that the client should read on its own: on a WebSocket it leaves in a
    /// socket write of its own. (Some clients, the protocol test suites among them, handle one
    /// message per read and drop a second one that arrives in the same read; the reference
    /// server never batches a reply with what follows it.)
    pub fn send_flushed(self: &Rc<Self>, shard: &Shard, p: Packet) {
        if self.closed.get() {
            return;
        }
        match self.websocket() {
            Some(c) => shard.deliver_flushed(&c, ws_frame(&p)),
            None => self.queue_for_polling(shard, std::iter::once(p)),
        }
    }

    /// Sends packets encoded once for many sessions: WebSocket sessions share the same frame
    /// bytes, polling sessions the same payload bytes.
    pub fn send_prepared(self: &Rc<Self>, shard: &Shard, p: &Prepared) {
        self.send_prepared_as(shard, p, false);
    }

    /// As [`EioSession::send_prepared`] for a broadcast, which a busy shard may hold for a
    /// moment to write it together with others ([`crate::shard::coalesce`]).
    pub fn send_broadcast(self: &Rc<Self>, shard: &Shard, p: &Prepared) {
        self.send_prepared_as(shard, p, true);
    }

    fn send_prepared_as(self: &Rc<Self>, shard: &Shard, p: &Prepared, broadcast: bool) {
        self.send_many(shard, std::iter::once(p), broadcast);
    }

    /// Sends several prepared broadcasts in order, finding the session's transport once.
    /// `broadcast`: a busy shard may hold them for a moment, as [`EioSession::send_broadcast`].
    pub fn send_many<'a>(self: &Rc<Self>, shard: &Shard, ps: impl Iterator<Item = &'a Prepared>, broadcast: bool) {
        if self.closed.get() {
            return;
        }
        match self.websocket() {
            Some(c) => {
                for f in ps.flat_map(Prepared::frames) {
                    if broadcast {
                        shard.deliver_broadcast(&c, f.clone());
                    } else {
                        shard.deliver(&c, f.clone());
                    }
                }
            }
            None => self.queue_for_polling(shard, ps.flat_map(|p| p.packets.iter().cloned())),
        }
    }

    /// Whether a volatile packet could go out now without being buffered for long: a
    /// WebSocket with room in its queue, or a long-poll waiting for data.
    pub fn ready_for_volatile(&self) -> bool {
        match self.websocket() {
            Some(c) => !c.queue.borrow().is_full(),
            None => self.poll_active.get(),
        }
    }

    fn queue_for_polling(self: &Rc<Self>, shard: &Shard, packets: impl Iterator<Item = Packet>) {
        // Broadcasts held for the flush were sent before this.
        shard.release_held_broadcasts();
        let overflow = {
            let mut q = self.queue.borrow_mut();
            q.extend(packets);
            q.len() > self.engine.cfg.max_buffered_packets
        };
        if overflow {
            close(shard, self, CloseReason::TransportError, true);
        } else {
            self.wake_poll();
        }
    }

    /// Sends a message packet: text or binary.
    pub fn send_message(self: &Rc<Self>, shard: &Shard, msg: Payload) {
        self.send(shard, Packet::Message(msg));
    }

    fn wake_poll(&self) {
        if let Some(w) = self.poll_waiter.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Packets encoded once and sent to many sessions (a broadcast).
pub struct Prepared {
    packets: Vec<Packet>,
    frames: std::cell::OnceCell<Vec<Bytes>>,
}

impl Prepared {
    pub fn new(packets: Vec<Packet>) -> Self {
        Self { packets, frames: std::cell::OnceCell::new() }
    }

    /// The WebSocket frames, encoded on first use and shared afterwards.
    fn frames(&self) -> &[Bytes] {
        self.frames.get_or_init(|| self.packets.iter().map(ws_frame).collect())
    }
}

pub(crate) fn ws_frame(p: &Packet) -> Bytes {
    match packet::encode_ws(p) {
        WsOut::Text(t) => encode_frame(Opcode::Text, &t),
        WsOut::Binary(b) => encode_frame(Opcode::Binary, &b),
    }
}

/// A shard's Engine.IO sessions.
pub struct Engine {
    /// `[engineio]`.
    pub cfg: EioConfig,
    sessions: RefCell<Slab<Rc<EioSession>>>,
    generation: Cell<u32>,
    /// Heartbeat deadlines, earliest first: a ping due, or a pong overdue (see [`heartbeats`]).
    /// At most about two entries per session (the live one and one made stale by a pong).
    timers: RefCell<std::collections::BinaryHeap<std::cmp::Reverse<Deadline>>>,
    /// What [`Deadline::at`] counts from.
    epoch: Instant,
    /// The heartbeat task, waiting for a deadline earlier than the one it sleeps for.
    timers_waker: RefCell<Option<Waker>>,
    timers_changed: Cell<bool>,
}

/// A heartbeat deadline in the heap: nanoseconds since the engine's epoch, then the session's
/// slot and generation. 16 bytes rather than an `Instant` and a `Sid` (40): the heap
/// holds about two for every open session.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at: u64,
    slot: u32,
    generation: u32,
}

impl Engine {
    /// Starts the Engine.IO table of a shard: registers it and spawns its heartbeat task.
    pub fn start(shard: &Rc<Shard>, cfg: EioConfig) -> Rc<Engine> {
        let engine = Rc::new(Engine::new(cfg));
        shard.add_service(engine.clone());
        monoio::spawn(heartbeats(shard.clone(), engine.clone()));
        engine
    }

    fn new(cfg: EioConfig) -> Self {
        Self {
            cfg,
            sessions: RefCell::default(),
            generation: Cell::default(),
            timers: RefCell::default(),
            epoch: Instant::now(),
            timers_waker: RefCell::default(),
            timers_changed: Cell::default(),
        }
    }
}

impl Engine {
    /// `at` as a [`Deadline::at`]; exact, since every deadline comes after the epoch (and
    /// saturating, a few centuries on).
    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, at: u64) -> Instant {
        self.epoch + Duration::from_nanos(at)
    }

    /// Adds a heartbeat deadline for session `id`. Entries of closed sessions stay until they
    /// come due; when they outnumber the live ones the heap is swept, so a connect storm
    /// cannot grow it beyond about two entries per open session.
    fn schedule(&self, at: Instant, id: Sid) {
        let at = self.since_epoch(at);
        let earliest = self.timers.borrow().peek().is_none_or(|t| at < t.0.at);
        let mut timers = self.timers.borrow_mut();
        timers.push(std::cmp::Reverse(Deadline { at, slot: id.slot, generation: id.generation }));
        if timers.len() > 2 * self.sessions.borrow().len() + 1024 {
            let sessions = self.sessions.borrow();
            timers.retain(|t| {
                let d = t.0;
                sessions.get(d.slot as usize).is_some_and(|s| s.id.generation == d.generation && !s.closed.get())
            });
        }
        drop(timers);
        if earliest {
            self.timers_changed.set(true);
            if let Some(w) = self.timers_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Resolves when a deadline earlier than all others was added.
    async fn timers_changed(&self) {
        poll_fn(|cx| {
            if self.timers_changed.replace(false) {
                Poll::Ready(())
            } else {
                *self.timers_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The session in `slot`, if it is still the one of that `generation`.
    fn by_slot(&self, slot: u32, generation: u32) -> Option<Rc<EioSession>> {
        self.sessions.borrow().get(slot as usize).filter(|s| s.id.generation == generation).cloned()
    }

    pub fn get(&self, shard: &Shard, sid: &str) -> Option<Rc<EioSession>> {
        let id: Sid = sid.parse().ok()?;
        if usize::from(id.shard) != shard.index {
            return None;
        }
        self.sessions.borrow().get(id.slot as usize).filter(|s| s.id == id).cloned()
    }

    pub fn len(&self) -> usize {
        self.sessions.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.borrow().is_empty()
    }

    fn create(self: &Rc<Self>, shard: &Shard, app: Rc<dyn EioApp>, transport: Transport) -> Option<Rc<EioSession>> {
        let mut sessions = self.sessions.borrow_mut();
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let entry = sessions.vacant_entry();
        let id = Sid::new(u16::try_from(shard.index).ok()?, u32::try_from(entry.key()).ok()?, generation);
        let s = Rc::new(EioSession {
            id,
            sid: id.to_string().into(),
            engine: self.clone(),
            app,
            transport: RefCell::new(transport),
            queue: RefCell::new(VecDeque::new()),
            poll_waiter: RefCell::new(None),
            poll_active: Cell::new(false),
            upgrading: Cell::new(false),
            candidates: RefCell::new(Vec::new()),
            awaiting_pong: Cell::new(false),
            ping_due: Cell::new(Instant::now() + self.cfg.ping_interval),
            closed: Cell::new(false),
            closed_event: crate::util::LocalEvent::default(),
            identity: RefCell::new(None),
        });
        entry.insert(s.clone());
        Some(s)
    }

    fn remove(&self, s: &EioSession) {
        let mut sessions = self.sessions.borrow_mut();
        let slot = s.id.slot as usize;
        if sessions.get(slot).is_some_and(|x| x.id == s.id) {
            sessions.remove(slot);
        }
    }

    /// Closes every session (node shutdown): polling clients get a close packet.
    pub fn close_all(&self, shard: &Shard) {
        let all: Vec<Rc<EioSession>> = self.sessions.borrow().iter().map(|(_, s)| s.clone()).collect();
        for s in all {
            close(shard, &s, CloseReason::ServerShutdown, true);
        }
    }
}

/// Ends a session: wakes a pending GET (which answers the queued close packet, or `6`), tells
/// the app, and forgets the session. `notify` queues a close packet for the client.
pub fn close(shard: &Shard, s: &Rc<EioSession>, reason: CloseReason, notify: bool) {
    if s.closed.get() {
        return;
    }
    let conn = match &*s.transport.borrow() {
        Transport::WebSocket(c) => Some(c.clone()),
        Transport::Polling => None,
    };
    match conn {
        Some(c) => {
            if notify {
                shard.deliver(&c, ws_frame(&Packet::Close));
            }
            if !c.reader_done.get() {
                let (code, why) = reason.websocket_close();
                if why == crate::metrics::CloseReason::Policy {
                    // What explains the close (an `error` event) goes out first.
                    shard.close_session_keeping_data(&c, code, reason.as_str(), why);
                } else {
                    shard.close_session(&c, code, "", why);
                }
            }
        }
        None if notify => s.queue.borrow_mut().push_back(Packet::Close),
        None => {}
    }
    s.closed.set(true);
    s.closed_event.set();
    s.candidates.borrow_mut().clear();
    s.wake_poll();
    s.engine.remove(s);
    // Called once our state is final, so the app sees a closed, unregistered session.
    s.app.clone().on_close(shard, s, reason);
}

/// Starts a session's heartbeat, as the reference server does it: a ping one `ping_interval`
/// after the open packet, then one `ping_interval` after each pong; a ping without a pong within
/// `ping_timeout` closes the session. (Clients expect a ping at most interval + timeout after the
/// previous one, so the next ping must not wait for the timeout to run out.)
///
/// A session's heartbeat is an entry in its shard's deadline heap ([`Engine::heartbeats`]), not
/// a task with a timer of its own: a timer future alone is 640 bytes, and every idle session
/// has a heartbeat.
fn start_heartbeat(s: &Rc<EioSession>) {
    s.engine.schedule(s.ping_due.get(), s.id);
}

/// Drives every heartbeat of the shard's sessions: sleeps until the earliest deadline, then
/// pings the sessions whose ping is due and closes those whose pong is overdue. Deadlines are
/// exact (the earliest one is slept for, not a coarse tick); an entry whose session has since
/// answered, closed or moved on is stale and skipped.
async fn heartbeats(shard: Rc<Shard>, engine: Rc<Engine>) {
    loop {
        let next = engine.timers.borrow().peek().map(|t| engine.instant(t.0.at));
        match next {
            None => engine.timers_changed().await,
            Some(at) if at > Instant::now() => {
                let at = monoio::time::Instant::from_std(at);
                monoio::select! {
                    _ = monoio::time::sleep_until(at) => {},
                    _ = engine.timers_changed() => {},
                }
            }
            Some(_) => {}
        }
        let now = Instant::now();
        loop {
            let due = {
                let mut timers = engine.timers.borrow_mut();
                match timers.peek() {
                    Some(t) if engine.instant(t.0.at) <= now => timers.pop().map(|t| t.0),
                    _ => None,
                }
            };
            let Some(d) = due else { break };
            let at = engine.instant(d.at);
            let Some(s) = engine.by_slot(d.slot, d.generation) else { continue };
            let id = s.id;
            if s.closed.get() {
                continue;
            }
            let cfg = &engine.cfg;
            if !s.awaiting_pong.get() && at == s.ping_due.get() {
                s.awaiting_pong.set(true);
                s.send(&shard, Packet::Ping(None));
                engine.schedule(s.ping_due.get() + cfg.ping_timeout, id);
            } else if s.awaiting_pong.get() && at == s.ping_due.get() + cfg.ping_timeout {
                close(&shard, &s, CloseReason::PingTimeout, false);
            }
        }
    }
}

fn open_packet(s: &EioSession, upgrades: &[&str]) -> Packet {
    let cfg = &s.engine.cfg;
    let open = packet::OpenPacket {
        sid: s.sid.to_string(),
        upgrades: upgrades.iter().map(|u| u.to_string()).collect(),
        ping_interval: u64::try_from(cfg.ping_interval.as_millis()).unwrap_or(u64::MAX),
        ping_timeout: u64::try_from(cfg.ping_timeout.as_millis()).unwrap_or(u64::MAX),
        max_payload: cfg.max_payload as u64,
    };
    // `encode_open` writes the whole packet; `Packet::Open` holds only its JSON.
    let encoded = packet::encode_open(&open);
    Packet::Open(if encoded.first() == Some(&b'0') { encoded.slice(1..) } else { encoded })
}

/// Handles one packet from the client, on either transport. Returns false when the session
/// ended because of it.
fn on_packet(shard: &Shard, s: &Rc<EioSession>, p: Packet) -> bool {
    match p {
        Packet::Message(m) => {
            s.app.clone().on_message(shard, s, m);
        }
        // As the reference server: any pong clears the pong deadline and schedules the next
        // ping one interval later (the entries made stale by it are skipped).
        Packet::Pong(_) => {
            s.awaiting_pong.set(false);
            s.ping_due.set(Instant::now() + s.engine.cfg.ping_interval);
            s.engine.schedule(s.ping_due.get(), s.id);
        }
        Packet::Close => {
            close(shard, s, CloseReason::TransportClose, false);
            return false;
        }
        Packet::Ping(data) => s.send(shard, Packet::Pong(data)),
        Packet::Noop => {}
        Packet::Open(_) | Packet::Upgrade => {
            close(shard, s, CloseReason::ParseError, true);
            return false;
        }
    }
    !s.closed.get()
}

/// The query of an Engine.IO request.
pub struct EioQuery {
    pub transport: TransportKind,
    pub sid: Option<String>,
}

/// The transport a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Polling,
    WebSocket,
}

/// Checks `EIO` and `transport`.
pub fn parse_query(head: &RequestHead) -> Result<EioQuery, RequestError> {
    if head.query_param("EIO").as_deref() != Some("4") {
        return Err(RequestError::UnsupportedVersion);
    }
    let transport = match head.query_param("transport").as_deref() {
        Some("polling") => TransportKind::Polling,
        Some("websocket") => TransportKind::WebSocket,
        _ => return Err(RequestError::UnknownTransport),
    };
    Ok(EioQuery { transport, sid: head.query_param("sid") })
}

/// Adds the CORS headers for a polling response.
pub fn cors(head: &RequestHead, cfg: &EioConfig, r: &mut Response) {
    let Some(origin) = head.header("origin") else {
        if cfg.cors_origins.iter().any(|o| o == "*") {
            r.headers.push(("Access-Control-Allow-Origin", "*".into()));
        }
        return;
    };
    let allowed = cfg.cors_origins.iter().any(|o| o == "*" || o == origin);
    if allowed {
        r.headers.push(("Access-Control-Allow-Origin", origin.to_string()));
        r.headers.push(("Vary", "Origin".into()));
        if cfg.cors_credentials {
            r.headers.push(("Access-Control-Allow-Credentials", "true".into()));
        }
    }
}

/// Answers a polling request (or its CORS preflight) for `app`.
async fn polling(
    shard: &Rc<Shard>,
    engine: &Rc<Engine>,
    app: &Rc<dyn EioApp>,
    head: &RequestHead,
    body: &[u8],
) -> Response {
    let cfg = &engine.cfg;
    if head.method == Method::Options {
        let mut r = Response::new(204, "text/plain", Vec::new());
        cors(head, cfg, &mut r);
        r.headers.push(("Access-Control-Allow-Methods", "GET, POST, OPTIONS".into()));
        r.headers.push(("Access-Control-Allow-Headers", "content-type".into()));
        r.headers.push(("Access-Control-Max-Age", "86400".into()));
        return r;
    }
    let q = match parse_query(head) {
        Ok(q) => q,
        Err(e) => return e.response(head, cfg),
    };
    if q.transport != TransportKind::Polling {
        return RequestError::BadRequest.response(head, cfg);
    }
    let mut r = match (&q.sid, head.method) {
        (None, Method::Get) => match admit(shard, head) {
            Ok(identity) => handshake(shard, engine, app, identity.map(Rc::new)),
            // A refused origin gets no CORS headers: its page may not read the answer.
            Err(refused) if refused.status == 403 => return refused,
            Err(refused) => refused,
        },
        (None, _) => return RequestError::BadHandshakeMethod.response(head, cfg),
        (Some(sid), m @ (Method::Get | Method::Post)) => {
            let post = m == Method::Post;
            match sid.parse::<Sid>() {
                Ok(id) if usize::from(id.shard) != shard.index && usize::from(id.shard) < shard.shard_count() => {
                    forward_poll(shard, engine, usize::from(id.shard), sid.clone(), post, body).await
                }
                _ => serve_poll(shard, engine, sid, post, body).await,
            }
        }
        (Some(_), _) => RequestError::BadHandshakeMethod.response(head, cfg),
    };
    cors(head, cfg, &mut r);
    r
}

/// Runs a polling request on the shard that owns its session (there are no sticky sessions: any
/// shard may receive any request) and waits for the answer. Bounded: a lost answer (ring
/// `drop` policy) becomes a 503 after one heartbeat.
async fn forward_poll(
    shard: &Rc<Shard>,
    engine: &Engine,
    owner: usize,
    sid: String,
    post: bool,
    body: &[u8],
) -> Response {
    let body = Bytes::copy_from_slice(body);
    let run = move |owner: Rc<Shard>| async move {
        match owner.service::<Engine>() {
            Some(engine) => serve_poll(&owner, &engine, &sid, post, &body).await,
            None => error_body(RequestError::UnknownSid),
        }
    };
    let limit = engine.cfg.ping_interval + engine.cfg.ping_timeout + Duration::from_secs(1);
    let answer = monoio::select! {
        r = shard.call(owner, run) => r,
        _ = monoio::time::sleep(limit) => None,
    };
    answer.unwrap_or_else(|| Response::new(503, "text/plain", "session owner did not answer\n"))
}

/// A polling GET or POST for a session of this shard (the request may have arrived on another
/// shard). CORS headers are added by the shard that answers the client.
async fn serve_poll(shard: &Shard, engine: &Engine, sid: &str, post: bool, body: &[u8]) -> Response {
    let Some(s) = engine.get(shard, sid) else {
        return error_body(RequestError::UnknownSid);
    };
    if s.expired() {
        close(shard, &s, CloseReason::PingTimeout, false);
        return error_body(RequestError::UnknownSid);
    }
    if s.is_websocket() && !s.upgrading.get() {
        return error_body(RequestError::BadRequest);
    }
    if post {
        poll_post(shard, &s, body)
    } else {
        poll_get(shard, &s).await
    }
}

fn error_body(e: RequestError) -> Response {
    let body = format!("{{\"code\":{},\"message\":\"{}\"}}", e.code(), e);
    Response::new(if e == RequestError::Forbidden { 403 } else { 400 }, "application/json", body)
}

/// Who serves a WebSocket that another shard accepted and upgraded for a session of this
/// one ([`Route::HandOff`]); `None` when the session ended meanwhile.
fn adopt(shard: &Rc<Shard>, sid: &str) -> Option<Rc<dyn WsHandler>> {
    let engine = shard.service::<Engine>()?;
    let s = engine.get(shard, sid)?;
    Some(Rc::new(EioWs::new(engine, s.app.clone(), Some(s))))
}

fn payload_response(s: &EioSession) -> Response {
    let packets: Vec<Packet> = s.queue.borrow_mut().drain(..).collect();
    let mut body = Vec::with_capacity(64);
    packet::encode_payload(&packets, &mut body);
    Response::new(200, "text/plain; charset=UTF-8", body)
}

fn handshake(
    shard: &Rc<Shard>,
    engine: &Rc<Engine>,
    app: &Rc<dyn EioApp>,
    identity: Option<Rc<crate::auth::Identity>>,
) -> Response {
    let Some(s) = engine.create(shard, app.clone(), Transport::Polling) else {
        return Response::new(503, "text/plain", "no session slots\n");
    };
    *s.identity.borrow_mut() = identity;
    s.queue.borrow_mut().push_back(open_packet(&s, &["websocket"]));
    start_heartbeat(&s);
    app.on_open(shard, &s);
    payload_response(&s)
}

/// How long a GET during an upgrade waits before it is answered with a noop (the reference
/// server's upgrade check period).
const UPGRADE_CHECK: Duration = Duration::from_millis(100);

/// A long-poll: answers at once with what is queued, or waits until something is.
async fn poll_get(shard: &Shard, s: &Rc<EioSession>) -> Response {
    if s.poll_active.get() {
        // Two GETs at once: the protocol closes the session; the pending one gets `1`.
        close(shard, s, CloseReason::TransportError, true);
        return error_body(RequestError::BadRequest);
    }
    s.poll_active.set(true);
    poll_fn(|cx| {
        if !s.queue.borrow().is_empty() || s.closed.get() || s.upgrading.get() || s.is_websocket() {
            Poll::Ready(())
        } else {
            *s.poll_waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    if s.upgrading.get() && s.queue.borrow().is_empty() && !s.closed.get() {
        // As the reference server does, release a GET during an upgrade with a noop only after
        // up to one check period, so a `5` that follows the probe at once finishes the upgrade
        // first (and this GET then gets 400).
        let settled = poll_fn(|cx| {
            if !s.upgrading.get() || s.closed.get() || !s.queue.borrow().is_empty() {
                Poll::Ready(())
            } else {
                *s.poll_waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        monoio::select! {
            _ = settled => {},
            _ = monoio::time::sleep(UPGRADE_CHECK) => {},
        }
    }
    s.poll_active.set(false);
    if s.is_websocket() && !s.upgrading.get() && !s.closed.get() {
        // The upgrade finished while this GET waited: polling is over for this session.
        return error_body(RequestError::BadRequest);
    }
    if s.queue.borrow().is_empty() {
        // Closed by the client, or upgrading: a noop lets the client pause polling.
        return Response::new(200, "text/plain; charset=UTF-8", "6");
    }
    payload_response(s)
}

fn poll_post(shard: &Shard, s: &Rc<EioSession>, body: &[u8]) -> Response {
    let max = s.engine.cfg.max_payload;
    if body.len() > max {
        close(shard, s, CloseReason::TransportError, true);
        return Response::new(413, "text/plain", "payload too large\n");
    }
    let packets = match packet::decode_payload(Bytes::copy_from_slice(body), max) {
        Ok(p) => p,
        Err(_) => {
            close(shard, s, CloseReason::ParseError, true);
            return error_body(RequestError::BadRequest);
        }
    };
    for p in packets {
        if !on_packet(shard, s, p) {
            break;
        }
    }
    Response::new(200, "text/html", "ok")
}

impl ShardService for Engine {
    /// Polling sessions have no connection for the drain to close: they end here, and a pending
    /// GET answers their close packet.
    fn on_drain(&self, shard: &Shard) {
        self.close_all(shard);
    }
}

/// The authenticator's verdict on a handshake ([`crate::auth::Gate::admit`]).
fn admit(shard: &Shard, head: &RequestHead) -> Result<Option<crate::auth::Identity>, Response> {
    match shard.require::<crate::auth::Gate>() {
        Ok(gate) => gate.admit(head),
        Err(e) => Err(Response::refusal(500, "internal", &e.to_string())),
    }
}

/// Where an Engine.IO request for `app` goes: a polling request (or its preflight) is answered
/// over HTTP; a WebSocket opens a fresh session, upgrades one of this shard, or moves to the
/// shard that owns the session it upgrades.
pub fn route(shard: &Rc<Shard>, engine: &Rc<Engine>, app: Rc<dyn EioApp>, head: &RequestHead) -> Route {
    let cfg = &engine.cfg;
    if !head.is_websocket_upgrade() {
        return Route::Http(Rc::new(Polling { engine: engine.clone(), app }));
    }
    let q = match parse_query(head) {
        Ok(q) => q,
        Err(e) => return Route::Fixed(e.response(head, cfg)),
    };
    if q.transport != TransportKind::WebSocket {
        return Route::Fixed(RequestError::BadRequest.response(head, cfg));
    }
    let upgrade_of = match q.sid {
        None => None,
        Some(sid) => match sid.parse::<Sid>().map(|id| usize::from(id.shard)) {
            Ok(owner) if owner != shard.index && owner < shard.shard_count() => {
                return Route::HandOff { owner, adopt: Box::new(move |shard: &Rc<Shard>| adopt(shard, &sid)) };
            }
            _ => match engine.get(shard, &sid) {
                // A session already on a WebSocket: `EioWs` answers 101 and closes at once.
                Some(s) => Some(s),
                None => return Route::Fixed(RequestError::UnknownSid.response(head, cfg)),
            },
        },
    };
    if upgrade_of.is_some() {
        return Route::WebSocket(Rc::new(EioWs::new(engine.clone(), app, upgrade_of)));
    }
    match admit(shard, head) {
        Ok(identity) => {
            Route::WebSocket(Rc::new(EioWs::new(engine.clone(), app, None).with_identity(identity.map(Rc::new))))
        }
        Err(refused) => Route::Fixed(refused),
    }
}

/// The polling transport of one app.
struct Polling {
    engine: Rc<Engine>,
    app: Rc<dyn EioApp>,
}

impl HttpHandler for Polling {
    fn respond<'a>(&'a self, shard: &'a Rc<Shard>, head: &'a RequestHead, body: &'a [u8]) -> ResponseFuture<'a> {
        Box::pin(polling(shard, &self.engine, &self.app, head, body))
    }
}

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

    /// A fresh session whose handshake was [`admit`]ted with this identity.
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
                let pending = std::mem::take(&mut *s.queue.borrow_mut());
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
