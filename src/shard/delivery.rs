//! Queueing frames on this shard's sessions: one session, a room on every shard, broadcasts
//! held for the coalesced flush, and closes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::conn::{Conn, ConnId, Enqueued, FrameKind};
use super::{Shard, ShardMsg};
use crate::metrics::{self, CloseReason};
use crate::ws::codec::encode_close;

impl Shard {
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
    /// [`super::conn::SendQueue::take_written_tag`] reports once a write took it.
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

    /// A frame for this shard's members of `room` only: what arrived for them from another
    /// node, which every shard with members received.
    pub fn deliver_room_local(&self, room: &Arc<str>, frame: Bytes, except: Option<ConnId>) {
        self.deliver_room(room, &frame, except);
    }

    pub(super) fn deliver_room(&self, room: &Arc<str>, frame: &Bytes, except: Option<ConnId>) {
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
}
