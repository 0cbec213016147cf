//! Engine.IO session ids: the [`SlotId`] of the session's entry in its shard's Engine.IO table,
//! sent to the client as `sid`. A type of its own so that a session id is never taken for a
//! connection id (the two name entries of different tables).

use std::fmt;
use std::str::FromStr;

use crate::util::slot_id::{BadSlotId, SlotId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(pub SlotId);

impl Sid {
    pub fn new(shard: u16, slot: u32, generation: u32) -> Self {
        Self(SlotId::new(shard, slot, generation))
    }
}

impl std::ops::Deref for Sid {
    type Target = SlotId;

    fn deref(&self) -> &SlotId {
        &self.0
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Sid {
    type Err = BadSlotId;

    fn from_str(s: &str) -> Result<Self, BadSlotId> {
        s.parse().map(Self)
    }
}
