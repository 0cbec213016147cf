//! Connection ids, the per-connection bounded send queue and the connection entry kept in each
//! shard's slab.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use super::config::Backpressure;
use crate::metrics::CloseReason;

crate::util::slot_id::slot_id_type! {
    /// A connection's id: the [`SlotId`](crate::util::slot_id::SlotId) of its entry in its
    /// shard's slab. Routes a frame to its connection from any shard; a distinct type from
    /// Engine.IO's session ids, which name entries of another table.
    ConnId
}

/// What kind of bytes a queued frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Application data: counts against the queue limit and may be dropped by policy.
    Data,
    /// As [`FrameKind::Data`], for a frame many sessions get (a broadcast): while the shard
    /// coalesces writes, a queue holding only these may wait for the shard's next flush
    /// ([`SendQueue::may_wait`], [`crate::shard::coalesce`]).
    Broadcast,
    /// Data that must leave in a socket write of its own, after which the writer takes more
    /// (a reply a client may expect to read apart from what follows it).
    DataFlush,
    /// Data the server owes the session (paced): a tracked frame (a stored message), tagged so that its session
    /// can tell when a write took it ([`SendQueue::take_written_tag`]; tags grow with each
    /// message), or, with tag 0, an ack or error about the client's own message. Counts as data,
    /// but `drop_oldest` never drops it to make room.
    Owed(u32),
    /// Ping, pong: never dropped, limited separately.
    Control,
    /// A close frame: nothing is queued after it, and the writer shuts the socket after it.
    Close,
}

impl FrameKind {
    fn is_data(self) -> bool {
        !matches!(self, FrameKind::Control | FrameKind::Close)
    }

    /// Whether `drop_oldest` may drop it to make room: data the server does not owe.
    fn is_droppable(self) -> bool {
        matches!(self, FrameKind::Data | FrameKind::DataFlush | FrameKind::Broadcast)
    }
}

/// Result of offering a frame to a send queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued after dropping the oldest data frame (`drop_oldest`).
    DroppedOldest,
    /// Not queued (`drop_newest`).
    DroppedNewest,
    /// The queue overflowed under the `close` policy: the caller must close with 1008.
    Overflow,
    /// The session is closing; nothing more is accepted.
    Closed,
}

/// Most control frames (pongs, pings) a session may have queued: a peer that floods pings while
/// not reading is a slow consumer too.
pub const MAX_QUEUED_CONTROL: usize = 64;

/// A session's bounded queue of encoded frames waiting to be written.
#[derive(Debug)]
pub struct SendQueue {
    frames: VecDeque<(FrameKind, Bytes)>,
    data: usize,
    control: usize,
    limit: usize,
    policy: Backpressure,
    closed: bool,
    /// The last drain stopped after a [`FrameKind::DataFlush`] frame.
    stopped_at_flush: bool,
    /// The highest [`FrameKind::Owed`] tag the last drain took (0: none).
    drained_tag: u32,
    /// A frame that must not wait for a coalesced flush (any but a broadcast) is queued.
    prompt: bool,
}

impl SendQueue {
    pub fn new(limit: usize, policy: Backpressure) -> Self {
        Self {
            frames: VecDeque::new(),
            data: 0,
            control: 0,
            limit,
            policy,
            closed: false,
            stopped_at_flush: false,
            drained_tag: 0,
            prompt: false,
        }
    }

    /// Offers one encoded frame. Never grows past `limit` data frames.
    pub fn push(&mut self, kind: FrameKind, frame: Bytes) -> Enqueued {
        if self.closed {
            return Enqueued::Closed;
        }
        if self.frames.len() == self.frames.capacity() {
            // Double from one slot, not from std's four: an idle session keeps the storage
            // its busiest moment needed, which for most is the handshake's one or two frames.
            self.frames.reserve_exact(self.frames.len().max(1));
        }
        let r = match kind {
            FrameKind::Control if self.control >= MAX_QUEUED_CONTROL => Enqueued::Overflow,
            FrameKind::Control => {
                self.control += 1;
                self.frames.push_back((kind, frame));
                Enqueued::Queued
            }
            FrameKind::Close => {
                self.closed = true;
                self.frames.push_back((kind, frame));
                Enqueued::Queued
            }
            _ if self.data >= self.limit => match self.policy {
                Backpressure::Close => Enqueued::Overflow,
                Backpressure::DropNewest => Enqueued::DroppedNewest,
                Backpressure::DropOldest => match self.frames.iter().position(|(k, _)| k.is_droppable()) {
                    Some(i) => {
                        self.frames.remove(i);
                        self.frames.push_back((kind, frame));
                        Enqueued::DroppedOldest
                    }
                    None => Enqueued::DroppedNewest,
                },
            },
            _ => {
                self.data += 1;
                self.frames.push_back((kind, frame));
                Enqueued::Queued
            }
        };
        if kind != FrameKind::Broadcast && matches!(r, Enqueued::Queued | Enqueued::DroppedOldest) {
            self.prompt = true;
        }
        r
    }

    /// Whether the writer may hold what is queued for a coalesced flush: only broadcasts are
    /// queued, with room for more, and the session is not closing.
    pub fn may_wait(&self) -> bool {
        !self.prompt && !self.closed && self.data < self.limit
    }

    /// Drops every queued data frame (before a close that must not wait behind them).
    pub fn clear_data(&mut self) {
        self.frames.retain(|(k, _)| !k.is_data());
        self.data = 0;
    }

    /// Moves queued frames into `out` until it holds at least `max_bytes`. Returns the number
    /// of frames taken and whether a close frame was among them.
    pub fn drain_into(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> (usize, bool) {
        self.drained_tag = 0;
        // Sized once for what this drain takes, rather than grown frame by frame.
        let mut want = out.len();
        for (kind, frame) in &self.frames {
            if want >= max_bytes {
                break;
            }
            want += frame.len();
            if matches!(kind, FrameKind::DataFlush | FrameKind::Close) {
                break;
            }
        }
        out.reserve(want - out.len());
        let mut n = 0;
        let mut close = false;
        while out.len() < max_bytes {
            let Some((kind, frame)) = self.frames.pop_front() else { break };
            out.extend_from_slice(&frame);
            n += 1;
            match kind {
                FrameKind::Data | FrameKind::Broadcast => self.data -= 1,
                FrameKind::Owed(tag) => {
                    self.data -= 1;
                    self.drained_tag = self.drained_tag.max(tag);
                }
                FrameKind::DataFlush => {
                    self.data -= 1;
                    self.stopped_at_flush = true;
                    break;
                }
                FrameKind::Control => self.control -= 1,
                FrameKind::Close => {
                    close = true;
                    break;
                }
            }
        }
        if self.frames.is_empty() {
            self.prompt = false;
        }
        (n, close)
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The highest message tag the last drain took, once its write has succeeded; 0 when it
    /// took none. Resets it.
    pub fn take_written_tag(&mut self) -> u32 {
        std::mem::take(&mut self.drained_tag)
    }

    /// Whether the last drain stopped at a flush frame; resets the flag.
    pub fn take_stopped_at_flush(&mut self) -> bool {
        std::mem::take(&mut self.stopped_at_flush)
    }

    /// Data frames that can be queued before the backpressure policy applies.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.data)
    }

    /// Whether the next data frame would meet the backpressure policy.
    pub fn is_full(&self) -> bool {
        self.data >= self.limit
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }
}

/// What phase a connection is in, for the shard's timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between HTTP requests: the idle deadline applies.
    HttpIdle,
    /// Part of a request head has arrived: the header deadline applies.
    HttpHead,
    /// Writing a response or handling a request: no timer.
    HttpBusy,
    WebSocket,
}

/// One connection in a shard's slab. Lives in an `Rc`; shared by the connection's reader task,
/// its writer task and the shard's timer, all on the same thread.
pub struct Conn {
    pub id: ConnId,
    pub fd: RawFd,
    pub phase: Cell<Phase>,
    /// When the current HTTP phase's deadline passes.
    pub deadline: Cell<Option<Instant>>,
    /// Set by the timer or by a server-side close; read by the tasks to know why the socket
    /// went away.
    pub close_reason: Cell<Option<CloseReason>>,
    /// When a close frame was queued by us (the close timeout runs from here).
    pub closing_since: Cell<Option<Instant>>,
    /// The WebSocket close code we sent, or the client's when it closed first.
    pub close_code: Cell<Option<u16>>,
    /// Last time bytes arrived.
    pub last_rx: Cell<Instant>,
    /// When we sent a ping that has not been answered by any traffic yet.
    pub ping_sent: Cell<Option<Instant>>,
    /// When the writer's current socket write started, if one is in flight.
    pub write_started: Cell<Option<Instant>>,
    /// Socket writes completed so far: lets the reader tell a writer that is moving from one
    /// that is stuck behind a peer that does not read.
    pub writes_done: Cell<u64>,
    pub queue: RefCell<SendQueue>,
    writer: Cell<Option<Waker>>,
    /// The reader, waiting for room in the queue (see [`Conn::wake_reader`]).
    reader: Cell<Option<Waker>>,
    /// The reader has stopped: the writer exits once the queue is empty.
    pub reader_done: Cell<bool>,
    /// The writer holds broadcasts for the shard's next coalesced flush
    /// ([`crate::shard::coalesce::Coalescer::hold`]): another broadcast need not wake it.
    pub holding: Cell<bool>,
    /// Paced frames wait for room in this session's queue (the shard's pacing refills it).
    pub backlogged: Cell<bool>,
    /// The tag of the last tracked frame queued ([`FrameKind::Owed`]).
    last_tag: Cell<u32>,
}

impl Conn {
    pub fn new(id: ConnId, fd: RawFd, now: Instant, queue_len: usize, policy: Backpressure) -> Self {
        Self {
            id,
            fd,
            phase: Cell::new(Phase::HttpIdle),
            deadline: Cell::new(None),
            close_reason: Cell::new(None),
            closing_since: Cell::new(None),
            close_code: Cell::new(None),
            last_rx: Cell::new(now),
            ping_sent: Cell::new(None),
            write_started: Cell::new(None),
            writes_done: Cell::new(0),
            queue: RefCell::new(SendQueue::new(queue_len, policy)),
            writer: Cell::new(None),
            reader: Cell::new(None),
            reader_done: Cell::new(false),
            holding: Cell::new(false),
            backlogged: Cell::new(false),
            last_tag: Cell::new(0),
        }
    }

    /// Records why the connection is ending; the first reason wins.
    pub fn set_reason(&self, r: CloseReason) {
        if self.close_reason.get().is_none() {
            self.close_reason.set(Some(r));
        }
    }

    /// Queues a frame and wakes the writer.
    pub fn enqueue(&self, kind: FrameKind, frame: Bytes) -> Enqueued {
        let (r, still_held) = {
            let mut q = self.queue.borrow_mut();
            let r = q.push(kind, frame);
            (r, self.holding.get() && q.may_wait())
        };
        // A writer holding broadcasts for the flush would only look and wait again: it is woken
        // when something that must not wait arrives, or by the flush itself.
        if matches!(r, Enqueued::Queued | Enqueued::DroppedOldest) && !still_held {
            self.wake_writer();
        }
        r
    }

    /// The tag for the next tracked frame queued on this session; never 0.
    pub fn next_tag(&self) -> u32 {
        let t = self.last_tag.get().wrapping_add(1).max(1);
        self.last_tag.set(t);
        t
    }

    pub fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    pub fn set_writer_waker(&self, w: &Waker) {
        self.writer.set(Some(w.clone()));
    }

    /// Wakes a reader waiting for room in the queue; the writer calls it after each write and
    /// when it ends.
    pub fn wake_reader(&self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    pub fn set_reader_waker(&self, w: &Waker) {
        self.reader.set(Some(w.clone()));
    }

    /// Shuts the socket down in both directions so pending reads and writes complete at once.
    /// Used by the timer and by forced closes; the tasks then see EOF or an error and clean up.
    pub fn abort(&self, reason: CloseReason) {
        self.set_reason(reason);
        // SAFETY: `fd` is this connection's socket, kept open by its stream halves until the
        // connection task removes this entry from the slab; shutdown(2) only changes socket
        // state and is safe on any valid descriptor.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
        self.wake_writer();
    }

    /// Shuts down only the read side: the reader's pending read returns EOF, and it can still
    /// write a response (used for the HTTP header and idle timeouts).
    pub fn interrupt_read(&self, reason: CloseReason) {
        self.set_reason(reason);
        // SAFETY: as in `abort`.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::slot_id::BadSlotId;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn id_roundtrips_and_rejects_garbage() {
        let id = ConnId::new(3, 77, 9);
        let s = id.to_string();
        assert_eq!(s.len(), 24);
        assert_eq!(s.parse::<ConnId>(), Ok(id));
        assert_eq!("short".parse::<ConnId>(), Err(BadSlotId));
        assert_eq!("!!!!!!!!!!!!!!!!!!!!!!!!".parse::<ConnId>(), Err(BadSlotId));
        assert_ne!(ConnId::new(3, 77, 9).nonce, id.nonce);
    }

    #[test]
    fn close_policy_reports_overflow_without_growing() {
        let mut q = SendQueue::new(2, Backpressure::Close);
        assert_eq!(q.push(FrameKind::Data, b("a")), Enqueued::Queued);
        assert_eq!(q.push(FrameKind::Data, b("b")), Enqueued::Queued);
        assert_eq!(q.push(FrameKind::Data, b("c")), Enqueued::Overflow);
        assert_eq!(q.len(), 2);
        // Control frames still fit: a pong must not be blocked by data.
        assert_eq!(q.push(FrameKind::Control, b("p")), Enqueued::Queued);
    }

    #[test]
    fn a_flush_frame_ends_the_write_batch() {
        let mut q = SendQueue::new(8, Backpressure::Close);
        q.push(FrameKind::Data, b("a"));
        q.push(FrameKind::DataFlush, b("b"));
        q.push(FrameKind::Data, b("c"));
        let mut out = Vec::new();
        assert_eq!(q.drain_into(&mut out, 1 << 20), (2, false));
        assert_eq!(out, b"ab");
        out.clear();
        assert_eq!(q.drain_into(&mut out, 1 << 20), (1, false));
        assert_eq!(out, b"c");
    }

    #[test]
    fn a_drain_sizes_its_buffer_once_for_what_it_takes() {
        let mut q = SendQueue::new(64, Backpressure::Close);
        let frame = "0123456789".repeat(7);
        for _ in 0..20 {
            q.push(FrameKind::Data, Bytes::from(frame.clone()));
        }
        let mut out = Vec::new();
        assert_eq!(q.drain_into(&mut out, 1 << 20), (20, false));
        assert_eq!(out.len(), 20 * 70);
        assert_eq!(out.capacity(), out.len(), "one allocation of exactly the batch");
        // A batch limit stops the sizing where the drain stops.
        for _ in 0..20 {
            q.push(FrameKind::Data, Bytes::from(frame.clone()));
        }
        let mut out = Vec::new();
        assert_eq!(q.drain_into(&mut out, 300), (5, false));
        assert_eq!(out.capacity(), 5 * 70);
    }

    #[test]
    fn drop_newest_keeps_the_first_frames() {
        let mut q = SendQueue::new(2, Backpressure::DropNewest);
        q.push(FrameKind::Data, b("a"));
        q.push(FrameKind::Data, b("b"));
        assert_eq!(q.push(FrameKind::Data, b("c")), Enqueued::DroppedNewest);
        assert_eq!(q.push(FrameKind::DataFlush, b("d")), Enqueued::DroppedNewest, "counts as data");
        let mut out = vec![];
        q.drain_into(&mut out, usize::MAX);
        assert_eq!(out, b"ab");
    }

    #[test]
    fn drop_oldest_keeps_the_last_frames_and_controls() {
        let mut q = SendQueue::new(2, Backpressure::DropOldest);
        q.push(FrameKind::Control, b("P"));
        q.push(FrameKind::Data, b("a"));
        q.push(FrameKind::Data, b("b"));
        assert_eq!(q.push(FrameKind::Data, b("c")), Enqueued::DroppedOldest);
        let mut out = vec![];
        q.drain_into(&mut out, usize::MAX);
        assert_eq!(out, b"Pbc");
    }

    #[test]
    fn a_drain_reports_the_last_message_tag_it_took() {
        let mut q = SendQueue::new(8, Backpressure::Close);
        q.push(FrameKind::Owed(1), b("m1"));
        q.push(FrameKind::Data, b("x"));
        q.push(FrameKind::Owed(2), b("m2"));
        q.push(FrameKind::Owed(3), b("m3"));
        assert_eq!(q.push(FrameKind::Owed(4), b("m4")), Enqueued::Queued);
        let mut out = vec![];
        assert_eq!(q.drain_into(&mut out, 5), (3, false), "m1, x and m2 fill five bytes");
        assert_eq!(q.take_written_tag(), 2);
        assert_eq!(q.take_written_tag(), 0, "taken once");
        out.clear();
        q.push(FrameKind::Data, b("y"));
        q.drain_into(&mut out, usize::MAX);
        assert_eq!(out, b"m3m4y");
        assert_eq!(q.take_written_tag(), 4);
        q.drain_into(&mut out, usize::MAX);
        assert_eq!(q.take_written_tag(), 0, "an empty drain took none");
        // Messages count against the limit like any data frame.
        let mut q = SendQueue::new(1, Backpressure::Close);
        q.push(FrameKind::Owed(1), b("m1"));
        assert_eq!(q.push(FrameKind::Owed(2), b("m2")), Enqueued::Overflow);
    }

    #[test]
    fn drop_oldest_never_drops_what_is_owed() {
        let mut q = SendQueue::new(3, Backpressure::DropOldest);
        q.push(FrameKind::Owed(1), b("m"));
        q.push(FrameKind::Data, b("a"));
        q.push(FrameKind::Owed(0), b("k"));
        assert_eq!(q.push(FrameKind::Data, b("b")), Enqueued::DroppedOldest, "a goes");
        assert_eq!(q.push(FrameKind::Data, b("c")), Enqueued::DroppedOldest, "b goes");
        let mut out = vec![];
        q.drain_into(&mut out, usize::MAX);
        assert_eq!(out, b"mkc");
        let mut q = SendQueue::new(1, Backpressure::DropOldest);
        q.push(FrameKind::Owed(0), b("k"));
        assert_eq!(q.push(FrameKind::Data, b("a")), Enqueued::DroppedNewest, "nothing droppable");
    }

    #[test]
    fn only_a_queue_of_broadcasts_with_room_may_wait() {
        let mut q = SendQueue::new(3, Backpressure::DropNewest);
        assert!(q.may_wait());
        q.push(FrameKind::Broadcast, b("a"));
        q.push(FrameKind::Broadcast, b("b"));
        assert!(q.may_wait());
        q.push(FrameKind::Owed(0), b("k"));
        assert!(!q.may_wait(), "an ack goes at once");
        let mut out = vec![];
        q.drain_into(&mut out, 1);
        assert!(!q.may_wait(), "the ack is still queued");
        q.drain_into(&mut out, usize::MAX);
        assert_eq!(out, b"abk");
        assert!(q.may_wait(), "prompt again only once something prompt comes");
        for kind in [FrameKind::Data, FrameKind::DataFlush, FrameKind::Control] {
            let mut q = SendQueue::new(3, Backpressure::DropNewest);
            q.push(kind, b("x"));
            assert!(!q.may_wait(), "{kind:?}");
        }
        let mut q = SendQueue::new(2, Backpressure::DropNewest);
        q.push(FrameKind::Broadcast, b("a"));
        q.push(FrameKind::Broadcast, b("b"));
        assert!(!q.may_wait(), "full");
        assert_eq!(q.push(FrameKind::Data, b("c")), Enqueued::DroppedNewest);
        out.clear();
        assert_eq!(q.drain_into(&mut out, 1), (1, false));
        assert!(q.may_wait(), "room again, and the dropped frame does not count");
        q.push(FrameKind::Close, b("X"));
        assert!(!q.may_wait(), "closing");
    }

    #[test]
    fn nothing_is_accepted_after_close_and_drain_stops_there() {
        let mut q = SendQueue::new(4, Backpressure::Close);
        q.push(FrameKind::Data, b("a"));
        q.push(FrameKind::Close, b("X"));
        assert_eq!(q.push(FrameKind::Data, b("b")), Enqueued::Closed);
        let mut out = vec![];
        assert_eq!(q.drain_into(&mut out, usize::MAX), (2, true));
        assert_eq!(out, b"aX");
    }

    #[test]
    fn control_flood_overflows() {
        let mut q = SendQueue::new(4, Backpressure::DropNewest);
        for _ in 0..MAX_QUEUED_CONTROL {
            assert_eq!(q.push(FrameKind::Control, b("p")), Enqueued::Queued);
        }
        assert_eq!(q.push(FrameKind::Control, b("p")), Enqueued::Overflow);
    }

    #[test]
    fn drain_respects_the_byte_budget() {
        let mut q = SendQueue::new(8, Backpressure::Close);
        for _ in 0..4 {
            q.push(FrameKind::Data, b("xxxx"));
        }
        let mut out = vec![];
        assert_eq!(q.drain_into(&mut out, 6), (2, false));
        assert_eq!(q.len(), 2);
    }
}
