//! `echo` (raw WebSocket message echoed back) and `ack` (Socket.IO `echo-ack` emitted with an
//! ack id, answered by `43<id>[...]`): requests stamped with their send time, answers counted
//! by the stamp they carry back.

use crate::conn::{Behavior, ConnError, Cx, Io, Produce};
use crate::params::{Load, Params, Protocol};
use crate::plan::Sched;
use crate::proto::sio::{self, Packet};
use crate::proto::stamp::{self, Stamp};
use crate::proto::ws::Opcode;

const T: &[u8] = b"\"t\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    WsBinary,
    WsText,
    SioAck,
}

pub struct RoundTrip {
    wire: Wire,
    load: Load,
    size: usize,
    senders: usize,
    sender: usize,
    max_inflight: usize,
    sched: Option<Sched>,
    seq: u64,
    inflight: usize,
}

impl RoundTrip {
    pub fn new(p: &Params, sender: usize) -> RoundTrip {
        let wire = match (p.protocol, p.ws_text) {
            (Protocol::Sio, _) => Wire::SioAck,
            (Protocol::Ws, true) => Wire::WsText,
            (Protocol::Ws, false) => Wire::WsBinary,
        };
        RoundTrip {
            wire,
            load: p.load,
            size: p.size,
            senders: p.connections,
            sender,
            max_inflight: p.max_inflight,
            sched: None,
            seq: 0,
            inflight: 0,
        }
    }

    fn answered(&mut self, t: Option<u64>, cx: &mut Cx<'_>) -> Result<(), ConnError> {
        let t = t.ok_or(ConnError::BadReply)?;
        self.inflight = self.inflight.saturating_sub(1);
        cx.record(t);
        Ok(())
    }
}

impl Behavior for RoundTrip {
    fn on_ws(&mut self, _io: &mut Io, op: Opcode, data: &[u8], cx: &mut Cx<'_>) -> Result<(), ConnError> {
        let t = match op {
            Opcode::Binary => stamp::read_binary(data).map(|(_, t)| t),
            _ => stamp::find_u64(data, T),
        };
        self.answered(t, cx)
    }

    fn on_sio(&mut self, _io: &mut Io, p: Packet<'_>, cx: &mut Cx<'_>) -> Result<(), ConnError> {
        match p {
            Packet::Ack { data, .. } => self.answered(stamp::find_u64(data, T), cx),
            _ => Ok(()),
        }
    }

    fn produce(&mut self, io: &mut Io, cx: &mut Cx<'_>, now: u64) -> Produce {
        let (load, senders, sender) = (self.load, self.senders, self.sender);
        let sched = self.sched.get_or_insert_with(|| Sched::new(load, senders, sender, cx.run.control.start_ns()));
        let end = cx.run.control.planned_end();
        loop {
            let t = match sched.next_paced(now, end, (self.inflight, self.max_inflight), io, cx) {
                Ok(t) => t,
                Err(p) => return p,
            };
            self.seq += 1;
            let (seq, size) = (self.seq, self.size);
            match self.wire {
                Wire::WsBinary => io.send_built(Opcode::Binary, |b| stamp::write_binary(b, seq, t, size)),
                Wire::WsText => io.send_built(Opcode::Text, |b| {
                    stamp::write_json(b, &Stamp { room: None, publisher: None, seq, t }, size)
                }),
                Wire::SioAck => io.send_built(Opcode::Text, |b| {
                    sio::event_head(b, Some(seq), "echo-ack");
                    stamp::write_json(b, &Stamp { room: None, publisher: None, seq, t }, size);
                    b.push(b']');
                }),
            }
            self.inflight += 1;
            sched.advance();
        }
    }

    fn finish(&mut self, cx: &mut Cx<'_>) {
        super::count_unsent(self.sched.as_ref(), cx);
    }
}
