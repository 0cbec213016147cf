//! `/ws-echo`: the raw RFC 6455 echo endpoint of the conformance application (part C).

use std::rc::Rc;

use tungstenite::Message;

use crate::shard::conn::Conn;
use crate::shard::Shard;
use crate::shard::WsHandler;
use crate::ws::codec::{encode_frame, Opcode};

pub struct Echo;

impl WsHandler for Echo {
    fn on_message(&self, shard: &Shard, conn: &Rc<Conn>, msg: Message) {
        let frame = match &msg {
            Message::Text(t) => encode_frame(Opcode::Text, t.as_bytes()),
            Message::Binary(b) => encode_frame(Opcode::Binary, b),
            _ => return,
        };
        shard.deliver(conn, frame);
    }
}
