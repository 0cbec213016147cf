//! `/engine.io/`: the raw Engine.IO echo of the conformance application (part A): every message
//! packet goes back unchanged, text as text and binary as binary.

use std::rc::Rc;

use crate::engineio::packet::Payload;
use crate::engineio::{EioApp, EioSession};
use crate::shard::Shard;

pub struct EioEcho;

impl EioApp for EioEcho {
    fn on_message(&self, shard: &Shard, s: &Rc<EioSession>, msg: Payload) {
        s.send_message(shard, msg);
    }
}
