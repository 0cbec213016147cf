//! A shard's room table: which of *this shard's* sessions are in which room.
//!
//! Each shard keeps only its own members, so joins and leaves never cross cores; a room emit
//! goes once to every shard over the rings and each shard fans out to its local members.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::conn::ConnId;

#[derive(Default)]
pub struct RoomTable {
    members: HashMap<Arc<str>, HashSet<ConnId>>,
    rooms_of: HashMap<ConnId, HashSet<Arc<str>>>,
    /// Room messages held for the shard's coalesced flush, oldest first.
    held: Vec<HeldRoom>,
}

/// Messages to one room in a row, held for the shard's next coalesced flush.
struct HeldRoom {
    room: Arc<str>,
    /// Each message, and the session it leaves out (its sender).
    frames: Vec<(Bytes, Option<ConnId>)>,
    /// The members they go to, fixed when membership changed after they were sent; until then,
    /// the members at the release.
    members: Option<Vec<ConnId>>,
}

/// Held room messages on their way out: who gets them, and each message with the session it
/// leaves out.
pub type Released = (Vec<ConnId>, Vec<(Bytes, Option<ConnId>)>);

impl RoomTable {
    /// Holds a message to `room` for the shard's next flush; messages to the same room in a row
    /// reach its members in one pass.
    pub fn hold(&mut self, room: &Arc<str>, frame: Bytes, except: Option<ConnId>) {
        match self.held.last_mut() {
            Some(g) if g.members.is_none() && g.room == *room => g.frames.push((frame, except)),
            _ => self.held.push(HeldRoom { room: room.clone(), frames: vec![(frame, except)], members: None }),
        }
    }

    /// Takes what is held, oldest first, each with the members it goes to.
    pub fn take_held(&mut self) -> Vec<Released> {
        let held = std::mem::take(&mut self.held);
        held.into_iter()
            .map(|g| {
                let members = g.members.unwrap_or_else(|| self.members(&g.room).collect());
                (members, g.frames)
            })
            .collect()
    }

    /// Before membership changes, fixes who the held messages go to: the members of when they
    /// were sent.
    fn fix_held(&mut self) {
        let members = &self.members;
        for g in self.held.iter_mut().filter(|g| g.members.is_none()) {
            g.members = Some(members.get(&g.room).into_iter().flatten().copied().collect());
        }
    }

    /// Adds `id` to `room`; returns false when it was already a member.
    pub fn join(&mut self, room: &str, id: ConnId) -> bool {
        self.fix_held();
        let room: Arc<str> = match self.members.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => Arc::from(room),
        };
        let added = self.members.entry(room.clone()).or_default().insert(id);
        self.rooms_of.entry(id).or_default().insert(room);
        added
    }

    /// Removes `id` from `room`; an emptied room is dropped.
    pub fn leave(&mut self, room: &str, id: ConnId) -> bool {
        self.fix_held();
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
    pub fn leave_all(&mut self, id: ConnId) {
        self.fix_held();
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

    pub fn members(&self, room: &str) -> impl Iterator<Item = ConnId> + '_ {
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
    fn held_messages_go_to_the_members_of_when_they_were_sent() {
        let mut t = RoomTable::default();
        let (a, b, c) = (ConnId::new(0, 1, 1), ConnId::new(0, 2, 1), ConnId::new(0, 3, 1));
        let r: Arc<str> = "r".into();
        t.join("r", a);
        t.hold(&r, Bytes::from_static(b"1"), None);
        t.hold(&r, Bytes::from_static(b"2"), Some(a));
        t.join("r", b); // fixes the first group at {a}
        t.hold(&r, Bytes::from_static(b"3"), None);
        t.leave("r", a); // fixes the second at {a, b}
        t.join("r", c);
        t.hold(&r, Bytes::from_static(b"4"), None); // to whoever is in at the release
        t.leave("r", b);
        let held = t.take_held();
        assert!(t.take_held().is_empty(), "taken once");
        let sorted = |mut m: Vec<ConnId>| {
            m.sort_by_key(|s| s.slot);
            m
        };
        let shape: Vec<(Vec<ConnId>, usize)> = held.into_iter().map(|(m, f)| (sorted(m), f.len())).collect();
        assert_eq!(shape, vec![(vec![a], 2), (vec![a, b], 1), (vec![b, c], 1)]);
    }

    #[test]
    fn join_leave_and_cleanup() {
        let mut t = RoomTable::default();
        let a = ConnId::new(0, 1, 1);
        let b = ConnId::new(0, 2, 1);
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
