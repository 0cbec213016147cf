//! A shard's Engine.IO sessions ([`Engine`]) and their heartbeats: one heap of deadlines per
//! shard, driven by one task.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use super::packet::Packet;
use super::session::{close, Transport};
use super::{CloseReason, EioApp, EioConfig, EioSession, Sid};
use crate::metrics;
use crate::shard::{Shard, ShardService};

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
    /// Sessions closed within the last [`CLOSED_KEPT`], with when: a long-poll `GET` that
    /// reached the node before its session closed, but this shard only after (it came through
    /// another shard), is answered as if it had been waiting ([`Engine::closed_after`]).
    closed: RefCell<Closed>,
}

/// How long [`Engine::closed_after`] remembers a closed session: far longer than a request
/// takes between two shards.
pub const CLOSED_KEPT: Duration = Duration::from_secs(10);

/// Recently closed sessions, by id and in the order they closed.
#[derive(Default)]
struct Closed {
    at: std::collections::HashMap<Sid, Instant>,
    order: std::collections::VecDeque<(Instant, Sid)>,
}

impl Closed {
    /// Notes that `id` closed `now`, forgetting those closed [`CLOSED_KEPT`] before.
    fn record(&mut self, id: Sid, now: Instant) {
        while let Some(&(at, old)) = self.order.front() {
            if now.duration_since(at) < CLOSED_KEPT {
                break;
            }
            self.order.pop_front();
            self.at.remove(&old);
        }
        self.at.insert(id, now);
        self.order.push_back((now, id));
    }

    /// Whether `id` closed at or after `arrived`.
    fn after(&self, id: Sid, arrived: Instant) -> bool {
        self.at.get(&id).is_some_and(|&at| at >= arrived)
    }
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
            closed: RefCell::default(),
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
    pub(super) fn schedule(&self, at: Instant, id: Sid) {
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

    pub(super) fn create(
        self: &Rc<Self>,
        shard: &Shard,
        app: Rc<dyn EioApp>,
        transport: Transport,
    ) -> Option<Rc<EioSession>> {
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
            queue: RefCell::default(),
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
        metrics::add(&shard.stats.eio_sessions, 1);
        Some(s)
    }

    pub(super) fn remove(&self, shard: &Shard, s: &EioSession) {
        let mut sessions = self.sessions.borrow_mut();
        let slot = s.id.slot as usize;
        if sessions.get(slot).is_some_and(|x| x.id == s.id) {
            sessions.remove(slot);
            metrics::sub(&shard.stats.eio_sessions, 1);
            // Only a polling session has long-polls that may still be on their way.
            if matches!(*s.transport.borrow(), Transport::Polling) {
                self.closed.borrow_mut().record(s.id, Instant::now());
            }
        }
    }

    /// Whether session `sid` of this shard closed at or after `arrived` (and within
    /// [`CLOSED_KEPT`]): a request that reached the node then came before the close.
    pub(super) fn closed_after(&self, sid: &str, arrived: Instant) -> bool {
        sid.parse::<Sid>().is_ok_and(|id| self.closed.borrow().after(id, arrived))
    }

    /// Closes every session (node shutdown): polling clients get a close packet.
    pub fn close_all(&self, shard: &Shard) {
        let all: Vec<Rc<EioSession>> = self.sessions.borrow().iter().map(|(_, s)| s.clone()).collect();
        for s in all {
            close(shard, &s, CloseReason::ServerShutdown, true);
        }
    }
}

/// Starts a session's heartbeat, as the reference server does it: a ping one `ping_interval`
/// after the open packet, then one `ping_interval` after each pong; a ping without a pong within
/// `ping_timeout` closes the session. (Clients expect a ping at most interval + timeout after the
/// previous one, so the next ping must not wait for the timeout to run out.)
///
/// A session's heartbeat is an entry in its shard's deadline heap ([`heartbeats`]), not
/// a task with a timer of its own: a timer future alone is 640 bytes, and every idle session
/// has a heartbeat.
pub(super) fn start_heartbeat(s: &Rc<EioSession>) {
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

impl ShardService for Engine {
    /// Polling sessions have no connection for the drain to close: they end here, and a pending
    /// GET answers their close packet.
    fn on_drain(&self, shard: &Shard) {
        self.close_all(shard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_ordered_against_a_close_by_when_it_arrived() {
        let mut closed = Closed::default();
        let t0 = Instant::now();
        let (a, b) = (Sid::new(0, 1, 1), Sid::new(0, 2, 1));
        closed.record(a, t0 + Duration::from_millis(5));
        assert!(closed.after(a, t0), "arrived before the close");
        assert!(closed.after(a, t0 + Duration::from_millis(5)));
        assert!(!closed.after(a, t0 + Duration::from_millis(6)), "arrived after the close");
        assert!(!closed.after(b, t0), "never closed");
        // Forgotten once CLOSED_KEPT has passed since, and the memory goes with it.
        closed.record(b, t0 + Duration::from_millis(5) + CLOSED_KEPT);
        assert!(!closed.after(a, t0));
        assert!(closed.after(b, t0));
        assert_eq!((closed.at.len(), closed.order.len()), (1, 1));
    }
}
