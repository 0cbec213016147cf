//! Engine.IO session ids: the [`SlotId`](crate::util::slot_id::SlotId) of the session's entry in
//! its shard's Engine.IO table, sent to the client as `sid`.

crate::util::slot_id::slot_id_type! {
    /// An Engine.IO session's id: a type of its own so that it is never taken for a connection
    /// id (the two name entries of different tables).
    Sid
}
