//! `chat`: point-to-point messages with acknowledgements over imks's native protocol at `/ws`.
//!
//! Connections come in pairs, both in one process (see [`crate::plan::plan`]). Each learns
//! its user id from the server's `connected` during set-up ([`hello`]) and registers it in the
//! run's [`crate::shared::Directory`]; when sending starts, each looks its peer's user up once
//! and sends it `chat` messages while the peer does the same the other way. Every message brings
//! back three things, each naming the message by its client id and so by its send time (see
//! [`crate::proto::native`]): the `sent` ack and the `delivered` ack to the sender, and the
//! delivery to the recipient. Each is counted once per message ([`Seen`] catches repeats), with
//! its own latency from the (intended) send time.
//!
//! The window (closed loop) and `--max-inflight` (open loop) count the messages whose
//! `delivered` ack has not come back: that ack is the last of the server's work on a message.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::conn::{Behavior, Conn, ConnError, Cx, Io, Produce};
use crate::params::{Load, Params};
use crate::plan::Sched;
use crate::proto::native::{self, AckStatus, MsgId, ServerMsg};
use crate::proto::ws::Opcode;
use crate::stats::{Ack, DUP_DELIVERED_ACK, DUP_DELIVERY, DUP_SENT_ACK};

/// Waits for the server's `connected` and returns the user id it names. Whatever follows it
/// (a user's offline queue) stays queued for the behavior.
pub async fn hello(c: &mut Conn) -> Result<String, ConnError> {
    loop {
        let (op, msg) = c.recv().await?;
        if op != Opcode::Text {
            continue;
        }
        if let Some(user) = native::connected_user(&msg) {
            return Ok(user);
        }
        if let Some(ServerMsg::Error { code }) = native::parse(&msg) {
            return Err(ConnError::Refused(format!("error {} before connected", String::from_utf8_lossy(code))));
        }
    }
}

/// Farthest a sequence number may lie beyond the oldest one still missing: 16 Mi messages, a
/// 2 MiB bitmap. Anything farther is not a number this run sent.
const MAX_AHEAD: u64 = 1 << 24;

/// The sequence numbers (1, 2, ...) of one sender seen so far: a bitmap that drops each leading
/// word once it is full. Messages arrive nearly in order, so it stays a word or two long; only
/// messages that never arrive keep it growing, up to [`MAX_AHEAD`].
#[derive(Debug, Default)]
pub struct Seen {
    /// Sequence number − 1 of the first bit of `words[0]`; a multiple of 64.
    base: u64,
    words: VecDeque<u64>,
}

impl Seen {
    /// Marks `seq`: `Some(true)` the first time, `Some(false)` for a repeat, `None` for a number
    /// no sender of this run could have used.
    pub fn insert(&mut self, seq: u64) -> Option<bool> {
        let n = seq.checked_sub(1)?;
        if n < self.base {
            return Some(false);
        }
        let off = n - self.base;
        if off >= MAX_AHEAD {
            return None;
        }
        let (w, bit) = ((off / 64) as usize, 1u64 << (off % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        if self.words[w] & bit != 0 {
            return Some(false);
        }
        self.words[w] |= bit;
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
        Some(true)
    }
}

/// The peer a sender writes to.
struct Peer {
    user: Arc<str>,
    /// Sessions of that user in this process: deliveries each message is owed.
    sessions: u64,
}

pub struct Chat {
    load: Load,
    size: usize,
    senders: usize,
    /// This connection's index over the run: its messages' `sender`.
    index: usize,
    /// The local slot of the peer connection.
    peer_slot: usize,
    max_inflight: usize,
    /// `None` before the first send; `Some(None)` when the peer never connected.
    peer: Option<Option<Peer>>,
    sched: Option<Sched>,
    seq: u64,
    inflight: usize,
    sent_acks: Seen,
    delivered_acks: Seen,
    /// Deliveries by sending connection (just the peer, unless a shared token makes every
    /// connection one user).
    deliveries: HashMap<u64, Seen>,
}

impl Chat {
    pub fn new(p: &Params, index: usize, peer_slot: usize) -> Chat {
        Chat {
            load: p.load,
            size: p.size,
            senders: p.connections,
            index,
            peer_slot,
            max_inflight: p.max_inflight,
            peer: None,
            sched: None,
            seq: 0,
            inflight: 0,
            sent_acks: Seen::default(),
            delivered_acks: Seen::default(),
            deliveries: HashMap::new(),
        }
    }

    fn ack(&mut self, status: AckStatus, id: MsgId, cx: &mut Cx<'_>) -> Result<(), ConnError> {
        // Only this connection's own messages are acknowledged to it, and only those it sent.
        if id.sender != self.index as u64 || id.seq > self.seq {
            return Err(ConnError::BadReply);
        }
        let (seen, ack, dup) = match status {
            AckStatus::Sent => (&mut self.sent_acks, Ack::Sent, DUP_SENT_ACK),
            AckStatus::Delivered => (&mut self.delivered_acks, Ack::Delivered, DUP_DELIVERED_ACK),
        };
        match seen.insert(id.seq) {
            Some(true) => {
                if status == AckStatus::Delivered {
                    self.inflight = self.inflight.saturating_sub(1);
                }
                cx.run.record_ack(ack, id.t, cx.now, cx.tally);
            }
            Some(false) if cx.run.measured(id.t) => cx.tally.duplicates[dup] += 1,
            Some(false) => {}
            None => return Err(ConnError::BadReply),
        }
        Ok(())
    }

    fn delivery(&mut self, id: MsgId, cx: &mut Cx<'_>) -> Result<(), ConnError> {
        match self.deliveries.entry(id.sender).or_default().insert(id.seq) {
            Some(true) => cx.record(id.t),
            Some(false) if cx.run.measured(id.t) => cx.tally.duplicates[DUP_DELIVERY] += 1,
            Some(false) => {}
            None => return Err(ConnError::BadReply),
        }
        Ok(())
    }

    /// The peer, looked up once: set-up is over when the first send is due.
    fn peer<'a>(peer: &'a mut Option<Option<Peer>>, slot: usize, cx: &Cx<'_>) -> Option<&'a Peer> {
        peer.get_or_insert_with(|| {
            let found = cx.run.directory.lock().ok().and_then(|d| d.user(slot));
            if found.is_none() {
                cx.run.stats.error("no_peer");
            }
            found.map(|(user, sessions)| Peer { user, sessions })
        })
        .as_ref()
    }
}

/// The report's error kind for an `error {code}` from the server.
fn error_kind(code: &[u8]) -> &'static str {
    match code {
        b"rate_limited" => "rate_limited",
        b"store_failed" => "store_failed",
        _ => "server_error",
    }
}

impl Behavior for Chat {
    fn on_ws(&mut self, _io: &mut Io, op: Opcode, data: &[u8], cx: &mut Cx<'_>) -> Result<(), ConnError> {
        if op != Opcode::Text {
            return Err(ConnError::BadReply);
        }
        let (status, id) = match native::parse(data).ok_or(ConnError::BadReply)? {
            ServerMsg::Ack { status, id } => (Some(status), id.ok_or(ConnError::BadReply)?),
            ServerMsg::Chat { id } => (None, id.ok_or(ConnError::BadReply)?),
            ServerMsg::Error { code } => {
                cx.run.stats.error(error_kind(code));
                return Ok(());
            }
            ServerMsg::Other => return Ok(()),
        };
        // Sent before this run began: a message a previous run left in a token user's offline
        // queue, or its `delivered` ack now that it is delivered. Not ours to count.
        if id.t < cx.run.control.start_ns() {
            return Ok(());
        }
        match status {
            Some(s) => self.ack(s, id, cx),
            None => self.delivery(id, cx),
        }
    }

    fn produce(&mut self, io: &mut Io, cx: &mut Cx<'_>, now: u64) -> Produce {
        let Some(peer) = Chat::peer(&mut self.peer, self.peer_slot, cx) else { return Produce::Idle };
        let (load, senders, index) = (self.load, self.senders, self.index);
        let sched = self.sched.get_or_insert_with(|| Sched::new(load, senders, index, cx.run.control.start_ns()));
        let end = cx.run.control.planned_end();
        loop {
            let t = match sched.next_paced(now, end, (self.inflight, self.max_inflight), io, cx) {
                Ok(t) => t,
                Err(p) => return p,
            };
            if cx.run.measured(t) {
                cx.run.stats.count_expected(cx.shard, peer.sessions);
            }
            self.seq += 1;
            let (id, size) = (MsgId { sender: index as u64, seq: self.seq, t }, self.size);
            io.send_built(Opcode::Text, |b| native::write_chat(b, &id, &peer.user, size));
            self.inflight += 1;
            sched.advance();
        }
    }

    fn finish(&mut self, cx: &mut Cx<'_>) {
        super::count_unsent(self.sched.as_ref(), cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_each_number_once_and_forgets_complete_prefixes() {
        let mut s = Seen::default();
        assert_eq!(s.insert(0), None);
        for seq in (1..=200).rev() {
            assert_eq!(s.insert(seq), Some(true));
        }
        assert_eq!((s.base, s.words.len()), (192, 1));
        assert_eq!(s.insert(5), Some(false));
        assert_eq!(s.insert(200), Some(false));
        assert_eq!(s.insert(1000), Some(true));
        assert_eq!(s.insert(1000), Some(false));
        assert_eq!(s.insert(192 + MAX_AHEAD + 1), None);
        assert_eq!(s.insert(u64::MAX), None);
    }
}
