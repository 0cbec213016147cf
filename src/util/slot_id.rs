//! Ids of slab entries that any shard can route by: the id names its owning shard and slab
//! slot, so no shard needs a global map; the slot's generation and 64 random bits make a stale
//! or guessed id miss instead of reaching whoever holds the slot now. Connections
//! ([`crate::shard::conn::ConnId`]) and Engine.IO sessions ([`crate::engineio::Sid`]) wrap it in
//! types of their own.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

/// Globally unique, unguessable id of a slab entry: owning shard, slab slot, slot generation
/// and 64 bits from a CSPRNG. Rendered as 24 base64url characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId {
    pub shard: u16,
    pub slot: u32,
    pub generation: u32,
    pub nonce: u64,
}

const ID_BYTES: usize = 18;

impl SlotId {
    /// A fresh id for `slot` on `shard`, with 64 bits from the thread's CSPRNG (ChaCha12 seeded
    /// from the OS).
    pub fn new(shard: u16, slot: u32, generation: u32) -> Self {
        Self { shard, slot, generation, nonce: rand::random::<u64>() }
    }

    fn to_bytes(self) -> [u8; ID_BYTES] {
        let mut b = [0u8; ID_BYTES];
        b[0..2].copy_from_slice(&self.shard.to_be_bytes());
        b[2..6].copy_from_slice(&self.slot.to_be_bytes());
        b[6..10].copy_from_slice(&self.generation.to_be_bytes());
        b[10..18].copy_from_slice(&self.nonce.to_be_bytes());
        b
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 24];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode_slice(self.to_bytes(), &mut out)
            .map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&out[..n]).map_err(|_| fmt::Error)?)
    }
}

/// A string that is not an id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed id")]
pub struct BadSlotId;

impl FromStr for SlotId {
    type Err = BadSlotId;

    fn from_str(s: &str) -> Result<Self, BadSlotId> {
        if s.len() != 24 {
            return Err(BadSlotId);
        }
        let mut b = [0u8; ID_BYTES];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(s, &mut b).map_err(|_| BadSlotId)?;
        if n != ID_BYTES {
            return Err(BadSlotId);
        }
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&b[10..18]);
        Ok(SlotId { shard: u16_at(0), slot: u32_at(2), generation: u32_at(6), nonce: u64::from_be_bytes(nonce) })
    }
}

/// Declares a type of its own over [`SlotId`], for one table's entries: `new`, `Deref` to the
/// fields, and the same text form, so two tables' ids cannot be mixed up.
macro_rules! slot_id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $crate::util::slot_id::SlotId);

        impl $name {
            pub fn new(shard: u16, slot: u32, generation: u32) -> Self {
                Self($crate::util::slot_id::SlotId::new(shard, slot, generation))
            }
        }

        impl std::ops::Deref for $name {
            type Target = $crate::util::slot_id::SlotId;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::util::slot_id::BadSlotId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}
pub(crate) use slot_id_type;
