//! One Engine.IO session: its state, its send paths on either transport, the packets it
//! receives, and its end.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use super::packet::{self, Packet, Payload, WsOut};
use super::{CloseReason, EioApp, Engine, Sid};
use crate::shard::conn::Conn;
use crate::shard::Shard;
use crate::ws::codec::{encode_frame, Opcode};

pub(super) enum Transport {
    Polling,
    WebSocket(Rc<Conn>),
}

/// One Engine.IO session.
pub struct EioSession {
    pub id: Sid,
    pub sid: Rc<str>,
    /// The table the session is in, with the settings it runs under.
    pub(super) engine: Rc<Engine>,
    pub(super) app: Rc<dyn EioApp>,
    pub(super) transport: RefCell<Transport>,
    /// Packets waiting for the next polling GET (also while an upgrade is in progress).
    pub(super) queue: RefCell<super::poll_queue::PollQueue>,
    pub(super) poll_waiter: RefCell<Option<Waker>>,
    pub(super) poll_active: Cell<bool>,
    /// A WebSocket has sent `2probe` and the upgrade is not finished.
    pub(super) upgrading: Cell<bool>,
    /// WebSockets opened to upgrade this session, until one of them finishes it; the others
    /// are then closed.
    pub(super) candidates: RefCell<Vec<Rc<Conn>>>,
    /// A ping went out and its pong has not come back.
    pub(super) awaiting_pong: Cell<bool>,
    /// When the next ping is due: one interval after the open packet, then after each pong.
    /// The session is dead once `ping_due + ping_timeout` passes without a pong, to the
    /// millisecond (the protocol allows no grace), whatever the timers' slack.
    pub(super) ping_due: Cell<Instant>,
    pub(super) closed: Cell<bool>,
    /// Set on close, so tasks waiting on the session's timers let go of it at once.
    pub(super) closed_event: crate::util::LocalEvent,
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
    pub(super) fn expired(&self) -> bool {
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
            None => self.queue_for_polling(shard, std::iter::once(std::slice::from_ref(&p))),
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
            None => self.queue_for_polling(shard, std::iter::once(std::slice::from_ref(&p))),
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
            None => self.queue_for_polling(shard, ps.map(|p| p.packets.as_slice())),
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

    /// Queues groups of packets (each one send: a packet, or an event with its attachments) for
    /// the next GET. Past `engineio.max_buffered_packets`, the node's backpressure policy
    /// applies to whole groups, as on a WebSocket ([`super::poll_queue`]).
    fn queue_for_polling<'a>(self: &Rc<Self>, shard: &Shard, groups: impl Iterator<Item = &'a [Packet]>) {
        use super::poll_queue::Pushed;
        // Broadcasts held for the flush were sent before this.
        shard.release_held_broadcasts();
        let (max, policy) = (self.engine.cfg.max_buffered_packets, shard.node.config.ws.backpressure);
        let mut overflow = false;
        for group in groups {
            match self.queue.borrow_mut().push_group(group, max, policy) {
                Pushed::Queued => {}
                Pushed::DroppedNewest(n) => crate::metrics::add(&shard.stats.drops_newest, n as u64),
                Pushed::DroppedOldest(n) => crate::metrics::add(&shard.stats.drops_oldest, n as u64),
                Pushed::Overflow => overflow = true,
            }
        }
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

    pub(super) fn wake_poll(&self) {
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
                if why == crate::metrics::CloseReason::Policy || reason == CloseReason::ForcedClose {
                    // What explains the close goes out first: an `error` event, or the
                    // DISCONNECT and close packets of a server-side disconnect, without which
                    // a socket.io client takes the close for a network failure and reconnects.
                    shard.close_session_keeping_data(&c, code, reason.as_str(), why);
                } else {
                    shard.close_session(&c, code, "", why);
                }
            }
        }
        None if notify => s.queue.borrow_mut().push_control(Packet::Close),
        None => {}
    }
    s.closed.set(true);
    s.closed_event.set();
    s.candidates.borrow_mut().clear();
    s.wake_poll();
    s.engine.remove(shard, s);
    // Called once our state is final, so the app sees a closed, unregistered session.
    s.app.clone().on_close(shard, s, reason);
}

pub(super) fn open_packet(s: &EioSession, upgrades: &[&str]) -> Packet {
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
pub(super) fn on_packet(shard: &Shard, s: &Rc<EioSession>, p: Packet) -> bool {
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
