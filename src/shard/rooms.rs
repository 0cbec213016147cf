//! A shard's room table: which of *this shard's* sessions are in which room.
//!
//! Each shard keeps only its own members, so joins and leaves never cross cores; a room emit
//! goes once to every shard over the rings and each shard fans out to its local members.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::session::SessionId;

#[derive(Default)]
pub struct RoomTable {
    members: HashMap<Arc<str>, HashSet<SessionId>>,
    rooms_of: HashMap<SessionId, HashSet<Arc<str>>>,
}

impl RoomTable {
    /// Adds `id` to `room`; returns false when it was already a member.
    pub fn join(&mut self, room: &str, id: SessionId) -> bool {
        let room: Arc<str> = match self.members.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => Arc::from(room),
        };
        let added = self.members.entry(room.clone()).or_default().insert(id);
        self.rooms_of.entry(id).or_default().insert(room);
        added
    }

    /// Removes `id` from `room`; an emptied room is dropped.
    pub fn leave(&mut self, room: &str, id: SessionId) -> bool {
        let removed = match self.members.get_mut(room) {
            Some(set) => {
                let r = set.remove(&id);
                if set.is_empty() {
                    self.members.remove(room);
                }
                r
            }
            None => false,
        };
        if let Some(rooms) = self.rooms_of.get_mut(&id) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.rooms_of.remove(&id);
            }
        }
        removed
    }

    /// Removes `id` from every room (on disconnect).
    pub fn leave_all(&mut self, id: SessionId) {
        if let Some(rooms) = self.rooms_of.remove(&id) {
            for room in rooms {
                if let Some(set) = self.members.get_mut(&room) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.members.remove(&room);
                    }
                }
            }
        }
    }

    pub fn members(&self, room: &str) -> impl Iterator<Item = SessionId> + '_ {
        self.members.get(room).into_iter().flat_map(|s| s.iter().copied())
    }

    pub fn room_count(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_leave_and_cleanup() {
        let mut t = RoomTable::default();
        let a = SessionId::new(0, 1, 1);
        let b = SessionId::new(0, 2, 1);
        assert!(t.join("r", a));
        assert!(!t.join("r", a));
        t.join("r", b);
        t.join("s", a);
        let mut m: Vec<_> = t.members("r").collect();
        m.sort_by_key(|s| s.slot);
        assert_eq!(m, vec![a, b]);
        assert!(t.leave("r", b));
        assert!(!t.leave("r", b));
        t.leave_all(a);
        assert_eq!(t.room_count(), 0);
        assert_eq!(t.members("r").count(), 0);
    }
}
