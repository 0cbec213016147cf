//! Paced delivery: frames a session is owed (stored messages, acks) go into its send queue at
//! the pace the client reads, and the sender of a tracked frame learns whether a socket write
//! took it. Any protocol may use it; the native chat protocol and the IM events of Socket.IO
//! do.
//!
//! A paced frame is never dropped by the send queue's backpressure policy. While the queue is
//! full, paced frames wait behind it, per session and in order, and the session's writer pulls
//! them in as it drains (`Shard::refill`). A session that lets too many pile up is closed as a
//! slow consumer. A tracked frame that no write took when its session ends is handed back to its
//! sender ([`Tracked::lost`]), so a message is never lost between a queue and a closed socket.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::conn::{Conn, ConnId};
use super::Shard;
use crate::metrics::{CloseReason, ShardStats};

/// What the sender of a tracked frame learns about it.
pub trait Tracked: 'static {
    /// The frame entered the session's send queue.
    fn queued(&self, _shard: &Shard) {}
    /// The session ended (or overflowed) before any socket write took the frame.
    fn lost(self: Box<Self>, shard: &Shard);
}

/// A frame waiting for room in a session's send queue.
struct Paced {
    frame: Bytes,
    tracked: Option<Box<dyn Tracked>>,
}

/// A tracked frame in a send queue, by the tag its write will report.
type Unwritten = (u32, Box<dyn Tracked>);

/// The shard's paced frames, by session.
#[derive(Default)]
pub(crate) struct Pacing {
    /// Frames waiting for room in a session's send queue, in order.
    waiting: RefCell<HashMap<ConnId, VecDeque<Paced>>>,
    /// Tracked frames in a session's send queue that no write has taken yet, by tag, in order.
    unwritten: RefCell<HashMap<ConnId, VecDeque<Unwritten>>>,
}

impl Pacing {
    /// Publishes how many frames wait behind full send queues.
    pub(crate) fn publish_stats(&self, stats: &ShardStats) {
        let backlog: usize = self.waiting.borrow().values().map(VecDeque::len).sum();
        stats.send_backlog_frames.store(backlog as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Shard {
    /// Queues `frame` on a local session at the pace its client reads: into its send queue
    /// while there is room, else behind the frames already waiting for it. `tracked` hears
    /// when the frame is queued and whether it was lost. More than `max_waiting` frames
    /// waiting close the session as a slow consumer.
    pub fn deliver_paced(&self, c: &Conn, frame: Bytes, tracked: Option<Box<dyn Tracked>>, max_waiting: usize) {
        if !c.backlogged.get() && c.queue.borrow().room() > 0 {
            return self.enqueue_paced(c, Paced { frame, tracked });
        }
        let over = {
            let mut waiting = self.pacing.waiting.borrow_mut();
            let q = waiting.entry(c.id).or_default();
            if q.len() >= max_waiting {
                Some(tracked)
            } else {
                q.push_back(Paced { frame, tracked });
                None
            }
        };
        c.backlogged.set(true);
        if let Some(tracked) = over {
            self.close_session(c, 1008, "slow consumer", CloseReason::SlowConsumer);
            if let Some(t) = tracked {
                t.lost(self);
            }
        }
    }

    fn enqueue_paced(&self, c: &Conn, p: Paced) {
        match p.tracked {
            Some(t) => {
                let tag = self.deliver_message(c, p.frame);
                t.queued(self);
                self.pacing.unwritten.borrow_mut().entry(c.id).or_default().push_back((tag, t));
            }
            None => self.deliver_owed(c, p.frame),
        }
    }

    /// Moves frames waiting for a session into its send queue while it has room; called by
    /// the session's writer after each write.
    pub(crate) fn refill(&self, c: &Conn) {
        while c.queue.borrow().room() > 0 {
            let next = self.pacing.waiting.borrow_mut().get_mut(&c.id).and_then(VecDeque::pop_front);
            match next {
                Some(p) => self.enqueue_paced(c, p),
                None => {
                    self.pacing.waiting.borrow_mut().remove(&c.id);
                    c.backlogged.set(false);
                    return;
                }
            }
        }
    }

    /// A write to session `id` took its tracked frames up to `tag`.
    pub(crate) fn written(&self, id: ConnId, tag: u32) {
        let mut unwritten = self.pacing.unwritten.borrow_mut();
        let Some(q) = unwritten.get_mut(&id) else { return };
        while q.front().is_some_and(|(t, _)| *t <= tag) {
            q.pop_front();
        }
        if q.is_empty() {
            unwritten.remove(&id);
        }
    }

    /// A session ended with tracked frames still in its send queue or waiting behind it: their
    /// senders hear they were lost, oldest first.
    pub(crate) fn drop_paced(&self, id: ConnId) {
        let unwritten = self.pacing.unwritten.borrow_mut().remove(&id);
        let waiting = self.pacing.waiting.borrow_mut().remove(&id);
        let lost = unwritten.into_iter().flatten().map(|(_, t)| t);
        for t in lost.chain(waiting.into_iter().flatten().filter_map(|p| p.tracked)) {
            t.lost(self);
        }
    }
}
