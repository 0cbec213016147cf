//! `fanout`: subscribers join a room each, publishers (which join nothing) emit `publish` with
//! a stamped object, and the server sends `msg` with the same object to every member.
//!
//! Socket.IO: `42<id>["join","r0"]` acked with `"ok"`, then `42["publish",{...}]`; the server
//! emits `42["msg",{...}]`. Raw WebSocket (the convention the raw-frame baseline implements):
//! a subscriber sends the text `{"join":"r0"}` and gets the text `ok`; a publisher sends the
//! stamped object as text, and the server forwards that text unchanged to the room.
//!
//! Closed loop has no answer from the server to count a window with, so a publisher counts the
//! deliveries of its own messages to the subscribers in its own process (see
//! [`crate::plan::plan`]): it keeps publishing while fewer than `window` publishes' worth of
//! deliveries are outstanding.

use std::sync::atomic::Ordering;

use crate::conn::{Behavior, Conn, ConnError, Cx, Io, Produce, WBUF_HIGH};
use crate::params::{Load, Params, Protocol};
use crate::plan::{room_name, Due, Sched};
use crate::proto::sio::{self, Packet};
use crate::proto::stamp::{self, Stamp};
use crate::proto::ws::Opcode;

const T: &[u8] = b"\"t\"";
const PUB: &[u8] = b"\"pub\"";
const JOIN_ACK_ID: u64 = 1;

/// Joins `room` and waits for the server's `"ok"`.
pub async fn join(c: &mut Conn, room: &str) -> Result<(), ConnError> {
    match c.protocol {
        Protocol::Sio => {
            c.io.send_built(Opcode::Text, |b| {
                sio::event_head(b, Some(JOIN_ACK_ID), "join");
                sio::push_str(b, room);
                b.push(b']');
            });
            c.flush().await?;
            loop {
                let (op, msg) = c.recv().await?;
                if op != Opcode::Text {
                    continue;
                }
                match sio::parse(&msg)? {
                    Packet::Ack { id: JOIN_ACK_ID, data, .. } if sio::first_str(data) == Some(b"ok") => return Ok(()),
                    Packet::Ack { id: JOIN_ACK_ID, data, .. } => {
                        return Err(ConnError::Refused(format!("join answered {}", String::from_utf8_lossy(data))))
                    }
                    Packet::Ping => {
                        c.io.send(Opcode::Text, sio::PONG);
                        c.flush().await?;
                    }
                    _ => {}
                }
            }
        }
        Protocol::Ws => {
            c.io.send_built(Opcode::Text, |b| {
                b.extend_from_slice(b"{\"join\":");
                sio::push_str(b, room);
                b.push(b'}');
            });
            c.flush().await?;
            let (_, msg) = c.recv().await?;
            if msg != b"ok" {
                return Err(ConnError::Refused(format!(
                    "join answered {:?}",
                    String::from_utf8_lossy(&msg[..msg.len().min(80)])
                )));
            }
            Ok(())
        }
    }
}

/// Counts every `msg` it receives.
pub struct Subscriber;

impl Subscriber {
    fn delivered(data: &[u8], cx: &mut Cx<'_>) -> Result<(), ConnError> {
        let t = stamp::find_u64(data, T).ok_or(ConnError::BadReply)?;
        cx.record(t);
        if let Some(p) = stamp::find_u64(data, PUB) {
            cx.run.feedback.delivered(p);
        }
        Ok(())
    }
}

impl Behavior for Subscriber {
    fn on_ws(&mut self, _io: &mut Io, _op: Opcode, data: &[u8], cx: &mut Cx<'_>) -> Result<(), ConnError> {
        Subscriber::delivered(data, cx)
    }

    fn on_sio(&mut self, _io: &mut Io, p: Packet<'_>, cx: &mut Cx<'_>) -> Result<(), ConnError> {
        match p {
            Packet::Event { data, .. } if data.starts_with(b"[\"msg\",") => Subscriber::delivered(data, cx),
            _ => Ok(()),
        }
    }
}

/// Publishes to the rooms in turn: publisher `i`'s `k`-th message goes to room `(i + k) % R`.
pub struct Publisher {
    protocol: Protocol,
    load: Load,
    index: usize,
    senders: usize,
    size: usize,
    rooms: Vec<String>,
    sched: Option<Sched>,
    seq: u64,
    /// Deliveries to local subscribers that this publisher's messages are owed.
    owed: u64,
}

impl Publisher {
    pub fn new(p: &Params, index: usize) -> Publisher {
        Publisher {
            protocol: p.protocol,
            load: p.load,
            index,
            senders: p.publishers,
            size: p.size,
            rooms: (0..p.rooms).map(room_name).collect(),
            sched: None,
            seq: 0,
            owed: 0,
        }
    }

    /// Closed loop: whether a publish to a room with `subs` local subscribers still fits the
    /// window. Registers for a wake-up when it does not.
    fn window_open(&self, window: usize, subs: usize, cx: &Cx<'_>) -> bool {
        let Some(slot) = cx.run.feedback.slot(self.index as u64) else { return true };
        let limit = (window * cx.run.plan.max_local_subs) as u64;
        let fits = |delivered: u64| self.owed.saturating_sub(delivered) + subs as u64 <= limit.max(subs as u64);
        if fits(slot.delivered.load(Ordering::Acquire)) {
            return true;
        }
        slot.waker.register(cx.waker);
        // A delivery may have landed between the check and the registration.
        fits(slot.delivered.load(Ordering::Acquire))
    }
}

impl Behavior for Publisher {
    fn produce(&mut self, io: &mut Io, cx: &mut Cx<'_>, now: u64) -> Produce {
        let (load, senders, index) = (self.load, self.senders, self.index);
        let mut sched = *self.sched.get_or_insert_with(|| Sched::new(load, senders, index, cx.run.control.start_ns()));
        let end = cx.run.control.planned_end();
        let res = loop {
            let t = match sched.due(now) {
                Due::At(d) if d >= end => break Produce::Idle,
                Due::At(d) => break Produce::At(d),
                Due::Now(t) => t,
            };
            if t >= end {
                break Produce::Idle;
            }
            if io.pending() >= WBUF_HIGH {
                break Produce::Blocked;
            }
            let room = (self.index + self.seq as usize) % self.rooms.len();
            let subs = cx.run.plan.local_subs.get(room).copied().unwrap_or(0);
            if let Sched::Closed { window } = sched {
                if !self.window_open(window, subs, cx) {
                    break Produce::Blocked;
                }
            }
            if !cx.admit(t) {
                break Produce::Idle;
            }
            self.seq += 1;
            self.owed += subs as u64;
            let s = Stamp { room: Some(&self.rooms[room]), publisher: Some(self.index as u64), seq: self.seq, t };
            let size = self.size;
            match self.protocol {
                Protocol::Sio => io.send_built(Opcode::Text, |b| {
                    sio::event_head(b, None, "publish");
                    stamp::write_json(b, &s, size);
                    b.push(b']');
                }),
                Protocol::Ws => io.send_built(Opcode::Text, |b| stamp::write_json(b, &s, size)),
            }
            sched.advance();
        };
        self.sched = Some(sched);
        res
    }

    fn finish(&mut self, cx: &mut Cx<'_>) {
        if cx.run.stats.total_reached() {
            return;
        }
        if let Some(s) = &self.sched {
            cx.tally.unsent += s.remaining(cx.run.control.measure_start(), cx.run.control.planned_end());
        }
    }
}
