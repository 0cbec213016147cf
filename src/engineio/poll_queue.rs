//! What waits for a polling client's next GET: packets in order, at most
//! `engineio.max_buffered_packets` of application data, and past that the node's backpressure
//! policy (`websocket.backpressure`), as a WebSocket's send queue applies it.
//!
//! The policy acts on whole groups, never on part of one: a Socket.IO binary event travels as a
//! header packet and its attachments, and a client that got the attachments without the header
//! (or the header without them) would fail the connection. Control packets (open, ping, pong,
//! close, noop) are never dropped or refused: the protocol bounds them, and dropping a ping
//! would end a healthy session.

use std::collections::VecDeque;

use super::packet::Packet;
use crate::shard::config::Backpressure;

/// What happened to a group offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    Queued,
    /// Not queued, under `drop_newest`: this many packets dropped.
    DroppedNewest(usize),
    /// Queued after dropping this many older data packets, under `drop_oldest`.
    DroppedOldest(usize),
    /// Queued past the bound under `close`: the caller closes the session.
    Overflow,
}

/// The packets of a polling session, each marked with whether it starts its group.
#[derive(Debug, Default)]
pub(super) struct PollQueue {
    entries: VecDeque<(Packet, bool)>,
    /// Application data packets queued (what the bound counts).
    data: usize,
}

fn is_data(p: &Packet) -> bool {
    matches!(p, Packet::Message(_))
}

impl PollQueue {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Offers the packets of one send, in order, as a group. Data beyond `max` packets is
    /// handled by `policy`.
    pub(super) fn push_group(&mut self, group: &[Packet], max: usize, policy: Backpressure) -> Pushed {
        let data = group.iter().filter(|p| is_data(p)).count();
        if data == 0 || self.data + data <= max {
            self.append(group);
            return Pushed::Queued;
        }
        match policy {
            Backpressure::Close => {
                self.append(group);
                Pushed::Overflow
            }
            Backpressure::DropNewest => Pushed::DroppedNewest(group.len()),
            Backpressure::DropOldest if data > max => Pushed::DroppedNewest(group.len()),
            Backpressure::DropOldest => {
                let mut dropped = 0;
                while self.data + data > max {
                    match self.drop_oldest_data_group() {
                        0 => break,
                        n => dropped += n,
                    }
                }
                self.append(group);
                Pushed::DroppedOldest(dropped)
            }
        }
    }

    /// Queues a control packet (open, close), which no bound or policy refuses.
    pub(super) fn push_control(&mut self, p: Packet) {
        debug_assert!(!is_data(&p));
        self.append(std::slice::from_ref(&p));
    }

    fn append(&mut self, group: &[Packet]) {
        for (i, p) in group.iter().enumerate() {
            self.data += usize::from(is_data(p));
            self.entries.push_back((p.clone(), i == 0));
        }
    }

    /// Removes the oldest group that holds application data, whole. Returns how many packets
    /// it removed (0: none left).
    fn drop_oldest_data_group(&mut self) -> usize {
        let Some(start) = self.entries.iter().position(|(p, first)| *first && is_data(p)) else { return 0 };
        let end = self
            .entries
            .iter()
            .skip(start + 1)
            .position(|(_, first)| *first)
            .map_or(self.entries.len(), |n| start + 1 + n);
        let removed: Vec<(Packet, bool)> = self.entries.drain(start..end).collect();
        self.data -= removed.iter().filter(|(p, _)| is_data(p)).count();
        removed.len()
    }

    /// Takes every queued packet, in order.
    pub(super) fn take_all(&mut self) -> Vec<Packet> {
        self.data = 0;
        self.entries.drain(..).map(|(p, _)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engineio::packet::Payload;
    use bytes::Bytes;

    fn text(s: &'static str) -> Packet {
        Packet::Message(Payload::Text(Bytes::from_static(s.as_bytes())))
    }

    fn bin(s: &'static str) -> Packet {
        Packet::Message(Payload::Binary(Bytes::from_static(s.as_bytes())))
    }

    fn texts(q: &mut PollQueue) -> Vec<String> {
        q.take_all()
            .into_iter()
            .map(|p| match p {
                Packet::Message(Payload::Text(t) | Payload::Binary(t)) => String::from_utf8_lossy(&t).into_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn up_to_the_bound_everything_is_queued_in_order() {
        let mut q = PollQueue::default();
        for p in [text("a"), text("b"), text("c")] {
            assert_eq!(q.push_group(&[p], 3, Backpressure::Close), Pushed::Queued);
        }
        assert_eq!(texts(&mut q), ["a", "b", "c"]);
        assert!(q.is_empty());
        assert_eq!(q.push_group(&[text("d")], 1, Backpressure::Close), Pushed::Queued, "the count starts again");
    }

    #[test]
    fn past_the_bound_each_policy_does_what_it_says() {
        let full = || {
            let mut q = PollQueue::default();
            q.push_group(&[text("a")], 2, Backpressure::Close);
            q.push_group(&[text("b")], 2, Backpressure::Close);
            q
        };
        let mut q = full();
        assert_eq!(q.push_group(&[text("c")], 2, Backpressure::Close), Pushed::Overflow);
        assert_eq!(texts(&mut q), ["a", "b", "c"]);
        let mut q = full();
        assert_eq!(q.push_group(&[text("c")], 2, Backpressure::DropNewest), Pushed::DroppedNewest(1));
        assert_eq!(texts(&mut q), ["a", "b"]);
        let mut q = full();
        assert_eq!(q.push_group(&[text("c")], 2, Backpressure::DropOldest), Pushed::DroppedOldest(1));
        assert_eq!(texts(&mut q), ["b", "c"]);
    }

    #[test]
    fn groups_are_dropped_whole_and_control_packets_never() {
        let mut q = PollQueue::default();
        // A binary event: its header and two attachments are one group.
        q.push_group(&[text("hdr"), bin("att1"), bin("att2")], 4, Backpressure::DropOldest);
        q.push_group(&[Packet::Ping(None)], 4, Backpressure::DropOldest);
        q.push_group(&[text("x")], 4, Backpressure::DropOldest);
        // Two more data packets: the oldest data group goes, all three of its packets.
        assert_eq!(q.push_group(&[text("y"), text("z")], 4, Backpressure::DropOldest), Pushed::DroppedOldest(3));
        assert_eq!(texts(&mut q), ["Ping(None)", "x", "y", "z"]);
        // A group larger than the bound is refused whole rather than emptying the queue.
        q.push_group(&[text("keep")], 2, Backpressure::DropOldest);
        assert_eq!(
            q.push_group(&[text("1"), text("2"), text("3")], 2, Backpressure::DropOldest),
            Pushed::DroppedNewest(3)
        );
        // Control packets are queued whatever the bound.
        assert_eq!(q.push_group(&[Packet::Close], 0, Backpressure::DropNewest), Pushed::Queued);
        assert_eq!(texts(&mut q), ["keep", "Close"]);
    }
}
