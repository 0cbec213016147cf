//! Least-recently-used order for the store's bounded maps.
//!
//! Each entry gets a tick from a per-map counter when it is used; a `BTreeMap` from tick to key
//! finds the oldest in O(log n), and the owner keeps the entry's current tick beside its value
//! so moving it to the newest end is a remove and an insert, O(log n), instead of a scan.

use std::collections::BTreeMap;

#[derive(Debug)]
pub(super) struct Lru<K> {
    tick: u64,
    order: BTreeMap<u64, K>,
}

impl<K> Lru<K> {
    pub(super) fn new() -> Self {
        Self { tick: 0, order: BTreeMap::new() }
    }

    /// Adds `key` as the most recently used; returns its tick.
    pub(super) fn insert(&mut self, key: K) -> u64 {
        self.tick += 1;
        self.order.insert(self.tick, key);
        self.tick
    }

    /// Makes the entry at `tick` the most recently used; returns its new tick. An unknown tick
    /// is returned unchanged.
    pub(super) fn touch(&mut self, tick: u64) -> u64 {
        match self.order.remove(&tick) {
            Some(key) => self.insert(key),
            None => tick,
        }
    }

    pub(super) fn remove(&mut self, tick: u64) {
        self.order.remove(&tick);
    }

    /// Removes and returns the least recently used key.
    pub(super) fn pop_oldest(&mut self) -> Option<K> {
        self.order.pop_first().map(|(_, k)| k)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_least_recently_used_first() {
        let mut l = Lru::new();
        let a = l.insert("a");
        let _b = l.insert("b");
        let _a = l.touch(a);
        assert_eq!(l.len(), 2);
        assert_eq!(l.pop_oldest(), Some("b"));
        assert_eq!(l.pop_oldest(), Some("a"));
        assert_eq!(l.pop_oldest(), None);
    }

    #[test]
    fn remove_and_unknown_touch() {
        let mut l = Lru::new();
        let a = l.insert(1);
        l.remove(a);
        assert_eq!(l.touch(a), a);
        assert_eq!(l.pop_oldest(), None);
    }
}
