//! Rooms: a socket's joins and leaves with their limits ([`JoinError`]), and each shard's
//! index of who is in which room.

use std::collections::HashMap;
use std::rc::Rc;

use super::{Socket, SocketIo};

/// Sockets by id.
pub(super) type Members = HashMap<Rc<str>, Rc<Socket>>;
/// A namespace's rooms: room name → members on this shard.
pub(super) type RoomIndex = HashMap<Rc<str>, Members>;

/// Why a socket could not join a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Name(#[from] crate::limits::NameError),
    #[error("a socket may be in at most {0} rooms")]
    TooManyRooms(usize),
}

impl Socket {
    /// Joins a room of this namespace (on every shard's view, since broadcasts go to all).
    /// The name is validated and the socket's rooms are bounded (`[limits]`); its own-id room
    /// does not count.
    pub fn join(self: &Rc<Self>, io: &SocketIo, room: &str) -> Result<(), JoinError> {
        if self.rooms.borrow().contains(room) {
            return Ok(());
        }
        let shard = crate::shard::current();
        let limits = shard.as_ref().map(|s| s.node.config.limits.clone()).unwrap_or_default();
        if let Err(e) = crate::limits::validate_name("room", room, limits.max_name_bytes) {
            if let Some(s) = &shard {
                crate::metrics::add(&s.stats.limit_names, 1);
            }
            return Err(e.into());
        }
        // The socket's own room is not the application's doing.
        if self.rooms.borrow().len() > limits.max_rooms_per_session {
            if let Some(s) = &shard {
                crate::metrics::add(&s.stats.limit_rooms, 1);
            }
            return Err(JoinError::TooManyRooms(limits.max_rooms_per_session));
        }
        self.join_unchecked(io, room);
        Ok(())
    }

    pub(super) fn join_unchecked(self: &Rc<Self>, io: &SocketIo, room: &str) {
        let room: Rc<str> = room.into();
        if self.rooms.borrow().contains(&room) {
            return;
        }
        io.fix_held_targets();
        self.rooms.borrow_mut().insert(room.clone());
        io.index_join(self, room);
        io.keep_session(self);
    }

    /// Leaves a room; returns whether the socket was in it.
    pub fn leave(self: &Rc<Self>, io: &SocketIo, room: &str) -> bool {
        if !self.rooms.borrow().contains(room) {
            return false;
        }
        io.fix_held_targets();
        let Some(room) = self.rooms.borrow_mut().take(room) else { return false };
        io.index_leave(self, &room);
        io.keep_session(self);
        true
    }

    pub fn rooms(&self) -> Vec<Rc<str>> {
        self.rooms.borrow().iter().cloned().collect()
    }
}

impl SocketIo {
    fn index_join(&self, s: &Rc<Socket>, room: Rc<str>) {
        let first = {
            let mut rooms = self.rooms.borrow_mut();
            let members = rooms.entry(s.nsp.clone()).or_default().entry(room.clone()).or_default();
            members.insert(s.id.to_rc(), s.clone());
            members.len() == 1
        };
        if first {
            if let Some(c) = self.cluster() {
                c.join(SocketIo::room_subject(&c, &s.nsp, &room));
            }
        }
    }

    pub(super) fn index_leave(&self, s: &Socket, room: &str) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(ns) = rooms.get_mut(&*s.nsp) {
            if let Some(members) = ns.get_mut(room) {
                members.remove(&*s.id);
                if members.is_empty() {
                    ns.remove(room);
                    if let Some(c) = self.cluster() {
                        c.leave(&SocketIo::room_subject(&c, &s.nsp, room));
                    }
                }
            }
        }
    }
}
