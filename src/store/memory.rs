//! The in-memory [`Store`], the default backend: one per shard, lost on restart.
//!
//! Everything sits behind one `RefCell`. Each method borrows it, does its work synchronously
//! and returns an already-complete future, so no borrow ever outlives the call, let alone an
//! `.await`. Every collection is bounded by [`StoreConfig`]; the eviction rules are on the
//! fields below and in `docs/storage.md`.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use super::check_body;
use super::lru::Lru;
use super::{
    Appended, ConversationKey, Cursor, Edit, Message, MessageId, NewMessage, Page, Receipt, Store, StoreConfig,
    StoreError, StoreFuture, StoreStats, MAX_CLIENT_MSG_ID_BYTES, MAX_EMOJI_BYTES,
};
use crate::names::validate_name;

/// A shard's messages, read state, offline queues and dedup index, in memory.
pub struct MemoryStore {
    cfg: StoreConfig,
    inner: RefCell<Inner>,
}

struct Inner {
    /// At most `max_conversations`; a new one evicts the least recently appended-to, whole.
    conversations: HashMap<ConversationKey, Conversation>,
    /// Conversations by last append.
    conversation_lru: Lru<ConversationKey>,
    dedup: Dedup,
    /// Tenant, then user: lookups by `&str` without building a key.
    offline: HashMap<Arc<str>, HashMap<Arc<str>, OfflineQueue>>,
    /// At most `max_offline_users` queues; a new one drops the least recently pushed-to queue.
    offline_lru: Lru<(Arc<str>, Arc<str>)>,
    offline_users: usize,
    /// Messages over every conversation, at most `max_messages`.
    total_messages: usize,
    /// Messages over every offline queue, at most `max_offline_messages`.
    offline_messages: usize,
    stats: StoreStats,
}

struct Conversation {
    tenant: Arc<str>,
    /// Consecutive `seq`s, oldest first: at most `max_messages_per_conversation`, dropped from
    /// the front. Consecutive, so a `seq` finds its message by subtraction.
    messages: VecDeque<Message>,
    next_seq: u64,
    by_id: HashMap<MessageId, u64>,
    /// This conversation's place in `conversation_lru`.
    tick: u64,
    /// At most `max_readers_per_conversation`; a new reader forgets the least recently marking.
    readers: HashMap<Arc<str>, ReadState>,
    reader_lru: Lru<Arc<str>>,
}

impl Conversation {
    fn new(tenant: Arc<str>, tick: u64) -> Self {
        Self {
            tenant,
            messages: VecDeque::new(),
            next_seq: 1,
            by_id: HashMap::new(),
            tick,
            readers: HashMap::new(),
            reader_lru: Lru::new(),
        }
    }

    /// The `seq` of the oldest message still kept (`next_seq` when none is).
    fn first_seq(&self) -> u64 {
        self.messages.front().map_or(self.next_seq, |m| m.seq)
    }

    fn index_of(&self, id: &MessageId) -> Option<usize> {
        let seq = *self.by_id.get(id)?;
        usize::try_from(seq.checked_sub(self.first_seq())?).ok().filter(|&i| i < self.messages.len())
    }

    fn get(&self, id: &MessageId) -> Option<&Message> {
        self.index_of(id).and_then(|i| self.messages.get(i))
    }

    fn get_mut(&mut self, id: &MessageId) -> Option<&mut Message> {
        self.index_of(id).and_then(|i| self.messages.get_mut(i))
    }
}

/// What one reader has read in one conversation: a pointer, as in Postgres.
#[derive(Default)]
struct ReadState {
    /// The highest `seq` read; every message up to it counts as read.
    highest: u64,
    tick: u64,
}

/// The dedup index: `(tenant, author, client_msg_id)` to the message first stored with it.
///
/// A bounded FIFO of `max_dedup_entries`: the oldest entry is forgotten first, so a client
/// retransmitting a very old id gets it stored again. An entry whose message was evicted is
/// ignored, and the retransmission is stored as new.
struct Dedup {
    map: HashMap<Rc<str>, (ConversationKey, MessageId, u64)>,
    /// Insertion order. An entry re-pointed to a new message is queued again under a new serial;
    /// its old queue slot then no longer matches and removes nothing when it leaves.
    order: VecDeque<(Rc<str>, u64)>,
    serial: u64,
}

impl Dedup {
    /// The key, length-prefixed so no choice of names makes two triples meet.
    fn key(tenant: &str, author: &str, client_msg_id: &str) -> String {
        format!("{}:{tenant}{}:{author}{client_msg_id}", tenant.len(), author.len())
    }

    fn get(&self, key: &str) -> Option<(&ConversationKey, MessageId)> {
        self.map.get(key).map(|(c, id, _)| (c, *id))
    }

    /// Remembers `key`; returns how many entries were forgotten to stay within `max`.
    fn insert(&mut self, key: String, conversation: ConversationKey, id: MessageId, max: usize) -> u64 {
        self.serial += 1;
        let key: Rc<str> = key.into();
        self.map.insert(key.clone(), (conversation, id, self.serial));
        self.order.push_back((key, self.serial));
        let mut forgotten = 0;
        while self.order.len() > max {
            let Some((old, serial)) = self.order.pop_front() else { break };
            if self.map.get(&old).is_some_and(|e| e.2 == serial) {
                self.map.remove(&old);
                forgotten += 1;
            }
        }
        forgotten
    }
}

struct OfflineQueue {
    /// At most `max_offline_per_user`; one more drops the oldest.
    messages: VecDeque<Message>,
    tick: u64,
}

impl MemoryStore {
    pub fn new(cfg: StoreConfig) -> Self {
        Self {
            cfg,
            inner: RefCell::new(Inner {
                conversations: HashMap::new(),
                conversation_lru: Lru::new(),
                dedup: Dedup { map: HashMap::new(), order: VecDeque::new(), serial: 0 },
                offline: HashMap::new(),
                offline_lru: Lru::new(),
                offline_users: 0,
                total_messages: 0,
                offline_messages: 0,
                stats: StoreStats::default(),
            }),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    fn append_now(&self, m: NewMessage) -> Result<Appended, StoreError> {
        check_body(&m.body, self.cfg.max_body_bytes)?;
        let inner = &mut *self.inner.borrow_mut();
        let dedup_key = match &m.client_msg_id {
            Some(cid) => {
                validate_name("client message id", cid, MAX_CLIENT_MSG_ID_BYTES)?;
                let key = Dedup::key(&m.tenant, &m.author, cid);
                if let Some((conv, id)) = inner.dedup.get(&key) {
                    if let Some(original) = inner.conversations.get(conv).and_then(|c| c.get(&id)) {
                        return Ok(Appended { message: original.clone(), duplicate: true });
                    }
                }
                Some(key)
            }
            None => None,
        };

        if let Some(c) = inner.conversations.get_mut(&m.conversation) {
            c.tick = inner.conversation_lru.touch(c.tick);
        } else {
            while inner.conversations.len() >= self.cfg.max_conversations {
                let Some(old) = inner.conversation_lru.pop_oldest() else { break };
                if let Some(gone) = inner.conversations.remove(&old) {
                    inner.total_messages -= gone.messages.len();
                    inner.stats.evicted_conversations += 1;
                }
            }
        }
        let conv = inner.conversations.entry(m.conversation.clone()).or_insert_with(|| {
            Conversation::new(m.tenant.clone(), inner.conversation_lru.insert(m.conversation.clone()))
        });

        let seq = conv.next_seq;
        conv.next_seq += 1;
        let message = Message::first_stored(m, uuid::Uuid::now_v7(), seq);
        conv.by_id.insert(message.id, seq);
        conv.messages.push_back(message.clone());
        inner.total_messages += 1;
        while conv.messages.len() > self.cfg.max_messages_per_conversation {
            if let Some(old) = conv.messages.pop_front() {
                conv.by_id.remove(&old.id);
                inner.total_messages -= 1;
                inner.stats.evicted_messages += 1;
            }
        }
        // The shard-wide bound: whole conversations, least recently appended to first. The one
        // just appended to is the most recent, so it goes last, and never while it is alone.
        while inner.total_messages > self.cfg.max_messages && inner.conversations.len() > 1 {
            let Some(old) = inner.conversation_lru.pop_oldest() else { break };
            if let Some(gone) = inner.conversations.remove(&old) {
                inner.total_messages -= gone.messages.len();
                inner.stats.evicted_conversations += 1;
            }
        }
        if let Some(key) = dedup_key {
            inner.stats.forgotten_dedup +=
                inner.dedup.insert(key, message.conversation.clone(), message.id, self.cfg.max_dedup_entries);
        }
        Ok(Appended { message, duplicate: false })
    }

    /// Runs `f` on the message, or fails with `NotFound`.
    fn with_message<T>(
        &self,
        conversation: &ConversationKey,
        id: MessageId,
        f: impl FnOnce(&mut Message) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self.inner.borrow_mut();
        let message =
            inner.conversations.get_mut(conversation).and_then(|c| c.get_mut(&id)).ok_or(StoreError::NotFound)?;
        f(message)
    }

    fn edit_now(
        &self,
        conversation: &ConversationKey,
        id: MessageId,
        editor: &str,
        body: String,
        now_ms: i64,
    ) -> Result<Message, StoreError> {
        let (max_body, max_edits) = (self.cfg.max_body_bytes, self.cfg.max_edits_per_message);
        self.with_message(conversation, id, |m| {
            if &*m.author != editor {
                return Err(StoreError::Forbidden);
            }
            if m.deleted {
                return Err(StoreError::Deleted);
            }
            check_body(&body, max_body)?;
            let previous = std::mem::replace(&mut m.body, body);
            m.edits.push(Edit { body: previous, edited_at_ms: now_ms });
            if m.edits.len() > max_edits {
                // At most max_edits_per_message entries, so the shift is short.
                m.edits.drain(..m.edits.len() - max_edits);
            }
            m.edited_at_ms = Some(now_ms);
            Ok(m.clone())
        })
    }

    fn delete_now(
        &self,
        conversation: &ConversationKey,
        id: MessageId,
        by: &str,
        now_ms: i64,
    ) -> Result<Message, StoreError> {
        self.with_message(conversation, id, |m| {
            if &*m.author != by {
                return Err(StoreError::Forbidden);
            }
            if !m.deleted {
                m.deleted = true;
                m.body = String::new();
                m.edits = Vec::new();
                m.edited_at_ms = Some(now_ms);
            }
            Ok(m.clone())
        })
    }

    fn react_now(
        &self,
        conversation: &ConversationKey,
        id: MessageId,
        user: &str,
        emoji: &str,
        add: bool,
    ) -> Result<Message, StoreError> {
        validate_name("emoji", emoji, MAX_EMOJI_BYTES)?;
        let max = self.cfg.max_reactions_per_message;
        self.with_message(conversation, id, |m| {
            if m.deleted {
                return Err(StoreError::Deleted);
            }
            if add {
                if !m.reactions.get(emoji).is_some_and(|users| users.contains(user)) {
                    if m.reactions.values().map(BTreeSet::len).sum::<usize>() >= max {
                        return Err(StoreError::LimitReached { what: "reactions", max });
                    }
                    m.reactions.entry(emoji.to_owned()).or_default().insert(user.into());
                }
            } else if let Some(users) = m.reactions.get_mut(emoji) {
                users.remove(user);
                if users.is_empty() {
                    m.reactions.remove(emoji);
                }
            }
            Ok(m.clone())
        })
    }

    fn history_now(&self, conversation: &ConversationKey, before: Option<Cursor>, limit: usize) -> Page {
        let limit = if limit == 0 { self.cfg.max_history_page } else { limit.min(self.cfg.max_history_page) };
        let inner = self.inner.borrow();
        let Some(conv) = inner.conversations.get(conversation) else {
            return Page { messages: Vec::new(), next_cursor: None };
        };
        let end = before.map_or(u64::MAX, Cursor::seq);
        // Messages with seq < end are the first `hi` kept ones.
        let hi = usize::try_from(end.saturating_sub(conv.first_seq())).unwrap_or(usize::MAX).min(conv.messages.len());
        let lo = hi.saturating_sub(limit);
        let messages: Vec<Message> = conv.messages.range(lo..hi).rev().cloned().collect();
        let next_cursor = match messages.last() {
            Some(oldest) if lo > 0 => Some(Cursor::before_seq(oldest.seq)),
            _ => None,
        };
        Page { messages, next_cursor }
    }

    fn mark_read_now(
        &self,
        tenant: &str,
        reader: &str,
        conversation: &ConversationKey,
        ids: &[MessageId],
    ) -> Vec<Receipt> {
        let inner = &mut *self.inner.borrow_mut();
        let Some(conv) = inner.conversations.get_mut(conversation) else { return Vec::new() };
        if &*conv.tenant != tenant {
            return Vec::new();
        }
        let first_seq = conv.first_seq();
        if let Some(s) = conv.readers.get_mut(reader) {
            s.tick = conv.reader_lru.touch(s.tick);
        } else {
            while conv.readers.len() >= self.cfg.max_readers_per_conversation {
                let Some(old) = conv.reader_lru.pop_oldest() else { break };
                conv.readers.remove(&old);
            }
            let reader: Arc<str> = reader.into();
            let tick = conv.reader_lru.insert(reader.clone());
            conv.readers.insert(reader, ReadState { tick, ..ReadState::default() });
        }
        let Some(state) = conv.readers.get_mut(reader) else { return Vec::new() };
        let old = state.highest;
        let mut read: Vec<&Message> = ids
            .iter()
            .filter_map(|id| {
                let seq = *conv.by_id.get(id)?;
                conv.messages.get(usize::try_from(seq.checked_sub(first_seq)?).ok()?)
            })
            .collect();
        read.sort_by_key(|m| m.seq);
        read.dedup_by_key(|m| m.seq);
        if let Some(top) = read.last() {
            state.highest = state.highest.max(top.seq);
        }
        read.into_iter().filter(|m| m.seq > old && &*m.author != reader && !m.deleted).map(Receipt::from).collect()
    }

    fn read_state_now(&self, tenant: &str, reader: &str, conversation: &ConversationKey) -> u64 {
        let inner = self.inner.borrow();
        inner
            .conversations
            .get(conversation)
            .filter(|c| &*c.tenant == tenant)
            .and_then(|c| c.readers.get(reader))
            .map_or(0, |s| s.highest)
    }

    fn push_offline_now(&self, tenant: &str, user: &str, message: Message) -> usize {
        let inner = &mut *self.inner.borrow_mut();
        let mut dropped = 0;
        let exists = inner.offline.get(tenant).is_some_and(|users| users.contains_key(user));
        if !exists {
            while inner.offline_users >= self.cfg.max_offline_users {
                let Some((t, u)) = inner.offline_lru.pop_oldest() else { break };
                if let Some(q) = remove_queue(&mut inner.offline, &t, &u) {
                    inner.offline_users -= 1;
                    inner.offline_messages -= q.messages.len();
                    dropped += q.messages.len();
                }
            }
            let (t, u): (Arc<str>, Arc<str>) = (tenant.into(), user.into());
            let tick = inner.offline_lru.insert((t.clone(), u.clone()));
            inner.offline.entry(t).or_default().insert(u, OfflineQueue { messages: VecDeque::new(), tick });
            inner.offline_users += 1;
        }
        if let Some(q) = inner.offline.get_mut(tenant).and_then(|users| users.get_mut(user)) {
            if exists {
                q.tick = inner.offline_lru.touch(q.tick);
            }
            q.messages.push_back(message);
            inner.offline_messages += 1;
            while q.messages.len() > self.cfg.max_offline_per_user {
                q.messages.pop_front();
                inner.offline_messages -= 1;
                dropped += 1;
            }
        }
        // The shard-wide bound: whole queues, least recently pushed to first; the queue just
        // pushed to is the most recent, so it goes last, and never while it is alone.
        while inner.offline_messages > self.cfg.max_offline_messages && inner.offline_users > 1 {
            let Some((t, u)) = inner.offline_lru.pop_oldest() else { break };
            if let Some(q) = remove_queue(&mut inner.offline, &t, &u) {
                inner.offline_users -= 1;
                inner.offline_messages -= q.messages.len();
                dropped += q.messages.len();
            }
        }
        inner.stats.dropped_offline += dropped as u64;
        dropped
    }

    fn take_offline_now(&self, tenant: &str, user: &str) -> Vec<Message> {
        let inner = &mut *self.inner.borrow_mut();
        match remove_queue(&mut inner.offline, tenant, user) {
            Some(q) => {
                inner.offline_lru.remove(q.tick);
                inner.offline_users -= 1;
                inner.offline_messages -= q.messages.len();
                q.messages.into()
            }
            None => Vec::new(),
        }
    }

    fn offline_len_now(&self, tenant: &str, user: &str) -> usize {
        let inner = self.inner.borrow();
        inner.offline.get(tenant).and_then(|users| users.get(user)).map_or(0, |q| q.messages.len())
    }
}

/// Removes a user's queue, and the tenant's map once empty so departed tenants cost nothing.
fn remove_queue(
    offline: &mut HashMap<Arc<str>, HashMap<Arc<str>, OfflineQueue>>,
    tenant: &str,
    user: &str,
) -> Option<OfflineQueue> {
    let users = offline.get_mut(tenant)?;
    let q = users.remove(user);
    if users.is_empty() {
        offline.remove(tenant);
    }
    q
}

/// An already-complete future: the memory store never waits.
fn ready<T: 'static>(r: Result<T, StoreError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(r))
}

impl Store for MemoryStore {
    fn append(&self, msg: NewMessage) -> StoreFuture<Appended> {
        ready(self.append_now(msg))
    }

    fn get(&self, conversation: &ConversationKey, id: MessageId) -> StoreFuture<Option<Message>> {
        let inner = self.inner.borrow();
        ready(Ok(inner.conversations.get(conversation).and_then(|c| c.get(&id)).cloned()))
    }

    fn edit(
        &self,
        conversation: &ConversationKey,
        id: MessageId,
        editor: &str,
        body: String,
        now_ms: i64,
    ) -> StoreFuture<Message> {
        ready(self.edit_now(conversation, id, editor, body, now_ms))
    }

    fn delete(&self, conversation: &ConversationKey, id: MessageId, by: &str, now_ms: i64) -> StoreFuture<Message> {
        ready(self.delete_now(conversation, id, by, now_ms))
    }

    fn react(
        &self,
        conversation: &ConversationKey,
        id: MessageId,
        user: &str,
        emoji: &str,
        add: bool,
    ) -> StoreFuture<Message> {
        ready(self.react_now(conversation, id, user, emoji, add))
    }

    fn history(&self, conversation: &ConversationKey, before: Option<Cursor>, limit: usize) -> StoreFuture<Page> {
        ready(Ok(self.history_now(conversation, before, limit)))
    }

    fn mark_delivered(&self, conversation: &ConversationKey, id: MessageId) -> StoreFuture<bool> {
        ready(match self.with_message(conversation, id, |m| Ok(!std::mem::replace(&mut m.delivered, true))) {
            Err(StoreError::NotFound) => Ok(false),
            other => other,
        })
    }

    fn mark_read(
        &self,
        tenant: &str,
        reader: &str,
        conversation: &ConversationKey,
        ids: &[MessageId],
    ) -> StoreFuture<Vec<Receipt>> {
        ready(Ok(self.mark_read_now(tenant, reader, conversation, ids)))
    }

    fn read_state(&self, tenant: &str, reader: &str, conversation: &ConversationKey) -> StoreFuture<u64> {
        ready(Ok(self.read_state_now(tenant, reader, conversation)))
    }

    fn push_offline(&self, tenant: &str, user: &str, message: Message) -> StoreFuture<usize> {
        ready(Ok(self.push_offline_now(tenant, user, message)))
    }

    fn take_offline(&self, tenant: &str, user: &str) -> StoreFuture<Vec<Message>> {
        ready(Ok(self.take_offline_now(tenant, user)))
    }

    fn offline_len(&self, tenant: &str, user: &str) -> StoreFuture<usize> {
        ready(Ok(self.offline_len_now(tenant, user)))
    }

    fn stats(&self) -> StoreStats {
        self.inner.borrow().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{now, Target};

    fn store_with(f: impl FnOnce(&mut StoreConfig)) -> Rc<dyn Store> {
        let mut cfg = StoreConfig::default();
        f(&mut cfg);
        Rc::new(MemoryStore::new(cfg))
    }

    fn store() -> Rc<dyn Store> {
        store_with(|_| {})
    }

    fn dm() -> ConversationKey {
        ConversationKey::direct("t", "alice", "bob")
    }

    fn new_msg(conv: &ConversationKey, author: &str, cid: Option<&str>, body: &str) -> NewMessage {
        NewMessage {
            tenant: "t".into(),
            conversation: conv.clone(),
            author: author.into(),
            target: Target::User("bob".into()),
            client_msg_id: cid.map(str::to_owned),
            body: body.into(),
            content_type: "text/plain".into(),
            created_at_ms: 1_700_000_000_000,
        }
    }

    fn send(s: &dyn Store, conv: &ConversationKey, author: &str, body: &str) -> Message {
        now(s.append(new_msg(conv, author, None, body))).unwrap().message
    }

    fn bodies(ms: &[Message]) -> Vec<&str> {
        ms.iter().map(|m| m.body.as_str()).collect()
    }

    #[test]
    fn seq_counts_from_one_per_conversation() {
        let s = store();
        let room = ConversationKey::room("t", "general");
        let a = send(&*s, &dm(), "alice", "1");
        let b = send(&*s, &dm(), "bob", "2");
        let c = send(&*s, &room, "alice", "r1");
        assert_eq!((a.seq, b.seq, c.seq), (1, 2, 1));
        assert!(a.id < b.id, "v7 ids sort by creation");
        assert_eq!(a.id.get_version_num(), 7);
        assert_eq!(now(s.get(&dm(), b.id)).unwrap(), Some(b.clone()));
        assert_eq!(now(s.get(&room, b.id)).unwrap(), None);
    }

    #[test]
    fn duplicate_returns_the_original_and_stores_nothing() {
        let s = store();
        let first = now(s.append(new_msg(&dm(), "alice", Some("m1"), "hello"))).unwrap();
        assert!(!first.duplicate);
        let again = now(s.append(new_msg(&dm(), "alice", Some("m1"), "hello, changed"))).unwrap();
        assert!(again.duplicate);
        assert_eq!(again.message, first.message);
        let page = now(s.history(&dm(), None, 10)).unwrap();
        assert_eq!(bodies(&page.messages), ["hello"]);
        // The next new message still gets the next seq.
        assert_eq!(send(&*s, &dm(), "alice", "x").seq, 2);
    }

    #[test]
    fn dedup_is_per_author_and_tenant() {
        let s = store();
        let a = now(s.append(new_msg(&dm(), "alice", Some("m1"), "from alice"))).unwrap();
        let b = now(s.append(new_msg(&dm(), "bob", Some("m1"), "from bob"))).unwrap();
        assert!(!b.duplicate);
        assert_ne!(a.message.id, b.message.id);
        let mut other_tenant = new_msg(&ConversationKey::direct("u", "alice", "bob"), "alice", Some("m1"), "u");
        other_tenant.tenant = "u".into();
        assert!(!now(s.append(other_tenant)).unwrap().duplicate);
    }

    #[test]
    fn dedup_forgets_oldest_first_at_its_bound() {
        let s = store_with(|c| c.max_dedup_entries = 2);
        for cid in ["a", "b"] {
            now(s.append(new_msg(&dm(), "alice", Some(cid), cid))).unwrap();
        }
        // Both remembered at the bound.
        assert!(now(s.append(new_msg(&dm(), "alice", Some("a"), "a"))).unwrap().duplicate);
        assert_eq!(s.stats().forgotten_dedup, 0);
        now(s.append(new_msg(&dm(), "alice", Some("c"), "c"))).unwrap();
        assert_eq!(s.stats().forgotten_dedup, 1);
        assert!(!now(s.append(new_msg(&dm(), "alice", Some("a"), "a again"))).unwrap().duplicate);
        assert!(now(s.append(new_msg(&dm(), "alice", Some("c"), "c"))).unwrap().duplicate);
    }

    #[test]
    fn duplicate_of_an_evicted_message_is_stored_again() {
        let s = store_with(|c| c.max_messages_per_conversation = 1);
        now(s.append(new_msg(&dm(), "alice", Some("m1"), "one"))).unwrap();
        send(&*s, &dm(), "alice", "two");
        let again = now(s.append(new_msg(&dm(), "alice", Some("m1"), "one"))).unwrap();
        assert!(!again.duplicate);
        assert_eq!(again.message.seq, 3);
        assert!(now(s.append(new_msg(&dm(), "alice", Some("m1"), "one"))).unwrap().duplicate);
    }

    #[test]
    fn refuses_oversized_bodies_and_client_ids() {
        let s = store_with(|c| c.max_body_bytes = 4);
        assert!(now(s.append(new_msg(&dm(), "alice", None, "four"))).is_ok());
        assert_eq!(
            now(s.append(new_msg(&dm(), "alice", None, "fives"))).unwrap_err(),
            StoreError::TooLarge { size: 5, max: 4 }
        );
        let long = "x".repeat(MAX_CLIENT_MSG_ID_BYTES + 1);
        assert!(matches!(now(s.append(new_msg(&dm(), "alice", Some(&long), "b"))), Err(StoreError::Invalid(_))));
        assert_eq!(now(s.history(&dm(), None, 10)).unwrap().messages.len(), 1);
    }

    #[test]
    fn oldest_message_is_dropped_over_the_per_conversation_bound() {
        let s = store_with(|c| c.max_messages_per_conversation = 3);
        let first = send(&*s, &dm(), "alice", "1");
        for b in ["2", "3"] {
            send(&*s, &dm(), "alice", b);
        }
        assert_eq!(s.stats().evicted_messages, 0);
        assert!(now(s.get(&dm(), first.id)).unwrap().is_some());
        send(&*s, &dm(), "alice", "4");
        assert_eq!(s.stats().evicted_messages, 1);
        assert_eq!(now(s.get(&dm(), first.id)).unwrap(), None);
        let page = now(s.history(&dm(), None, 10)).unwrap();
        assert_eq!(bodies(&page.messages), ["4", "3", "2"]);
        assert_eq!(page.next_cursor, None);
    }

    #[test]
    fn least_recently_appended_conversation_is_evicted_whole() {
        let s = store_with(|c| c.max_conversations = 2);
        let (a, b, c) =
            (ConversationKey::room("t", "a"), ConversationKey::room("t", "b"), ConversationKey::room("t", "c"));
        let in_a = send(&*s, &a, "alice", "a1");
        send(&*s, &b, "alice", "b1");
        // Appending to `a` makes `b` the least recently appended-to.
        send(&*s, &a, "alice", "a2");
        assert_eq!(s.stats().evicted_conversations, 0);
        send(&*s, &c, "alice", "c1");
        assert_eq!(s.stats().evicted_conversations, 1);
        assert!(now(s.history(&b, None, 10)).unwrap().messages.is_empty());
        assert_eq!(now(s.get(&a, in_a.id)).unwrap().map(|m| m.body), Some("a1".into()));
        // A reappearing conversation starts again from seq 1.
        assert_eq!(send(&*s, &b, "alice", "b again").seq, 1);
        assert_eq!(s.stats().evicted_conversations, 2);
        assert!(now(s.history(&a, None, 10)).unwrap().messages.is_empty(), "a was now the oldest");
    }

    #[test]
    fn the_shard_wide_offline_bound_drops_whole_queues_least_recent_first() {
        let s = store_with(|c| c.max_offline_messages = 3);
        let m = |body: &str| send(&*s, &ConversationKey::room("t", "r"), "alice", body);
        assert_eq!(now(s.push_offline("t", "bob", m("1"))).unwrap(), 0);
        assert_eq!(now(s.push_offline("t", "bob", m("2"))).unwrap(), 0);
        assert_eq!(now(s.push_offline("t", "carol", m("3"))).unwrap(), 0);
        // A fourth message: bob's queue, the least recently pushed to, goes whole.
        assert_eq!(now(s.push_offline("t", "carol", m("4"))).unwrap(), 2);
        assert_eq!(now(s.offline_len("t", "bob")).unwrap(), 0);
        assert_eq!(now(s.take_offline("t", "carol")).unwrap().len(), 2);
        assert_eq!(s.stats().dropped_offline, 2);
        // Taking a queue frees its share of the bound.
        for i in 0..3 {
            assert_eq!(now(s.push_offline("t", "dave", m(&i.to_string()))).unwrap(), 0);
        }
    }

    #[test]
    fn the_shard_wide_message_bound_evicts_whole_conversations_least_recent_first() {
        let s = store_with(|c| c.max_messages = 4);
        let (a, b, c) =
            (ConversationKey::room("t", "a"), ConversationKey::room("t", "b"), ConversationKey::room("t", "c"));
        send(&*s, &a, "alice", "a1");
        send(&*s, &a, "alice", "a2");
        send(&*s, &b, "alice", "b1");
        send(&*s, &c, "alice", "c1");
        assert_eq!(s.stats().evicted_conversations, 0, "4 messages fit");
        send(&*s, &c, "alice", "c2");
        assert_eq!(s.stats().evicted_conversations, 1);
        assert!(now(s.history(&a, None, 10)).unwrap().messages.is_empty(), "a, the least recent, went whole");
        assert_eq!(now(s.history(&b, None, 10)).unwrap().messages.len(), 1);
        // One conversation alone is bounded by its own limit, never evicted by this one.
        let lone = store_with(|c| c.max_messages = 2);
        for i in 0..5 {
            send(&*lone, &a, "alice", &format!("m{i}"));
        }
        assert_eq!(now(lone.history(&a, None, 10)).unwrap().messages.len(), 5);
        assert_eq!(lone.stats().evicted_conversations, 0);
    }

    #[test]
    fn history_pages_newest_first_without_gaps_or_repeats() {
        let s = store();
        for i in 1..=23 {
            send(&*s, &dm(), "alice", &i.to_string());
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = now(s.history(&dm(), cursor, 5)).unwrap();
            pages += 1;
            assert!(page.messages.len() <= 5 && !page.messages.is_empty());
            seen.extend(page.messages.iter().map(|m| m.seq));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(pages, 5);
        assert_eq!(seen, (1..=23).rev().collect::<Vec<u64>>());
    }

    #[test]
    fn history_last_page_exactly_full_has_no_cursor() {
        let s = store();
        for i in 1..=4 {
            send(&*s, &dm(), "alice", &i.to_string());
        }
        let p1 = now(s.history(&dm(), None, 2)).unwrap();
        let p2 = now(s.history(&dm(), p1.next_cursor, 2)).unwrap();
        assert_eq!(bodies(&p2.messages), ["2", "1"]);
        assert_eq!(p2.next_cursor, None);
        assert_eq!(now(s.history(&dm(), Some(Cursor::before_seq(1)), 2)).unwrap().messages, []);
        assert_eq!(now(s.history(&ConversationKey::room("t", "none"), None, 2)).unwrap().messages, []);
    }

    #[test]
    fn history_limit_is_capped_and_zero_means_the_cap() {
        let s = store_with(|c| c.max_history_page = 3);
        for i in 1..=10 {
            send(&*s, &dm(), "alice", &i.to_string());
        }
        assert_eq!(now(s.history(&dm(), None, 1000)).unwrap().messages.len(), 3);
        assert_eq!(now(s.history(&dm(), None, 0)).unwrap().messages.len(), 3);
        assert_eq!(now(s.history(&dm(), None, 1)).unwrap().messages.len(), 1);
    }

    #[test]
    fn edit_keeps_history_and_only_the_author_may() {
        let s = store_with(|c| c.max_edits_per_message = 2);
        let m = send(&*s, &dm(), "alice", "v1");
        assert_eq!(now(s.edit(&dm(), m.id, "bob", "nope".into(), 5)).unwrap_err(), StoreError::Forbidden);
        let e = now(s.edit(&dm(), m.id, "alice", "v2".into(), 10)).unwrap();
        assert_eq!((e.body.as_str(), e.edited_at_ms), ("v2", Some(10)));
        assert_eq!(e.edits, [Edit { body: "v1".into(), edited_at_ms: 10 }]);
        now(s.edit(&dm(), m.id, "alice", "v3".into(), 20)).unwrap();
        let e = now(s.edit(&dm(), m.id, "alice", "v4".into(), 30)).unwrap();
        assert_eq!(bodies_of_edits(&e), ["v2", "v3"], "oldest forgotten at max_edits_per_message");
        assert_eq!(now(s.get(&dm(), m.id)).unwrap(), Some(e));
        assert_eq!(now(s.edit(&dm(), MessageId::nil(), "alice", "x".into(), 0)).unwrap_err(), StoreError::NotFound);
    }

    fn bodies_of_edits(m: &Message) -> Vec<&str> {
        m.edits.iter().map(|e| e.body.as_str()).collect()
    }

    #[test]
    fn edit_refuses_oversized_body() {
        let s = store_with(|c| c.max_body_bytes = 3);
        let m = send(&*s, &dm(), "alice", "abc");
        assert_eq!(
            now(s.edit(&dm(), m.id, "alice", "abcd".into(), 1)).unwrap_err(),
            StoreError::TooLarge { size: 4, max: 3 }
        );
    }

    #[test]
    fn delete_is_soft_author_only_and_final() {
        let s = store();
        let m = send(&*s, &dm(), "alice", "secret");
        now(s.edit(&dm(), m.id, "alice", "secret 2".into(), 1)).unwrap();
        assert_eq!(now(s.delete(&dm(), m.id, "bob", 2)).unwrap_err(), StoreError::Forbidden);
        let d = now(s.delete(&dm(), m.id, "alice", 3)).unwrap();
        assert!(d.deleted);
        assert_eq!((d.body.as_str(), d.edits.len(), d.seq), ("", 0, 1));
        assert_eq!(now(s.delete(&dm(), m.id, "alice", 4)).unwrap(), d, "deleting twice changes nothing");
        assert_eq!(now(s.edit(&dm(), m.id, "alice", "back".into(), 5)).unwrap_err(), StoreError::Deleted);
        assert_eq!(now(s.react(&dm(), m.id, "bob", "👍", true)).unwrap_err(), StoreError::Deleted);
        assert_eq!(now(s.history(&dm(), None, 10)).unwrap().messages, [d]);
        assert_eq!(now(s.delete(&dm(), MessageId::nil(), "alice", 0)).unwrap_err(), StoreError::NotFound);
    }

    #[test]
    fn reactions_add_and_remove_idempotently() {
        let s = store();
        let m = send(&*s, &dm(), "alice", "hi");
        now(s.react(&dm(), m.id, "bob", "👍", true)).unwrap();
        let r = now(s.react(&dm(), m.id, "bob", "👍", true)).unwrap();
        now(s.react(&dm(), m.id, "alice", "👍", true)).unwrap();
        assert_eq!(r.reactions["👍"].len(), 1);
        let r = now(s.get(&dm(), m.id)).unwrap().unwrap();
        assert_eq!(r.reactions["👍"].iter().map(|u| &**u).collect::<Vec<_>>(), ["alice", "bob"]);
        now(s.react(&dm(), m.id, "bob", "👍", false)).unwrap();
        now(s.react(&dm(), m.id, "bob", "👍", false)).unwrap();
        let r = now(s.react(&dm(), m.id, "alice", "👍", false)).unwrap();
        assert!(r.reactions.is_empty(), "an emoji nobody uses is removed");
        now(s.react(&dm(), m.id, "bob", "🎉", false)).unwrap();
    }

    #[test]
    fn reactions_validate_the_emoji_and_are_bounded() {
        let s = store_with(|c| c.max_reactions_per_message = 2);
        let m = send(&*s, &dm(), "alice", "hi");
        for bad in ["", "\n", &"x".repeat(MAX_EMOJI_BYTES + 1)] {
            assert!(matches!(now(s.react(&dm(), m.id, "bob", bad, true)), Err(StoreError::Invalid(_))), "{bad:?}");
        }
        assert!(now(s.react(&dm(), m.id, "bob", &"x".repeat(MAX_EMOJI_BYTES), true)).is_ok());
        now(s.react(&dm(), m.id, "bob", "a", true)).unwrap();
        assert_eq!(
            now(s.react(&dm(), m.id, "bob", "b", true)).unwrap_err(),
            StoreError::LimitReached { what: "reactions", max: 2 }
        );
        // Re-adding an existing one is still fine at the bound.
        assert!(now(s.react(&dm(), m.id, "bob", "a", true)).is_ok());
    }

    #[test]
    fn read_state_is_bounded_by_readers() {
        let s = store_with(|c| c.max_readers_per_conversation = 2);
        let m = send(&*s, &dm(), "alice", "1");
        for r in ["r1", "r2", "r3"] {
            now(s.mark_read("t", r, &dm(), &[m.id])).unwrap();
        }
        assert_eq!(now(s.read_state("t", "r1", &dm())).unwrap(), 0, "the least recent reader is forgotten");
        assert_eq!(now(s.read_state("t", "r3", &dm())).unwrap(), 1);
        assert_eq!(now(s.mark_read("t", "r1", &dm(), &[m.id])).unwrap().len(), 1, "and reads again");
    }

    #[test]
    fn offline_queue_is_fifo_and_drops_oldest_at_its_bound() {
        let s = store_with(|c| c.max_offline_per_user = 3);
        for i in 1..=3 {
            let m = send(&*s, &dm(), "alice", &i.to_string());
            assert_eq!(now(s.push_offline("t", "bob", m)).unwrap(), 0);
        }
        let m = send(&*s, &dm(), "alice", "4");
        assert_eq!(now(s.push_offline("t", "bob", m)).unwrap(), 1);
        assert_eq!(s.stats().dropped_offline, 1);
        assert_eq!(now(s.offline_len("t", "bob")).unwrap(), 3);
        assert_eq!(now(s.offline_len("u", "bob")).unwrap(), 0);
        assert_eq!(bodies(&now(s.take_offline("t", "bob")).unwrap()), ["2", "3", "4"]);
        assert_eq!(now(s.offline_len("t", "bob")).unwrap(), 0);
        assert!(now(s.take_offline("t", "bob")).unwrap().is_empty());
    }

    #[test]
    fn offline_users_bound_drops_the_least_recently_pushed_queue() {
        let s = store_with(|c| c.max_offline_users = 2);
        let m = send(&*s, &dm(), "alice", "x");
        for user in ["u1", "u2", "u1", "u1"] {
            assert_eq!(now(s.push_offline("t", user, m.clone())).unwrap(), 0);
        }
        // u2 was pushed to least recently: its one message goes.
        assert_eq!(now(s.push_offline("t", "u3", m.clone())).unwrap(), 1);
        assert_eq!(now(s.offline_len("t", "u2")).unwrap(), 0);
        assert_eq!(now(s.offline_len("t", "u1")).unwrap(), 3);
        // Taking a queue frees its slot.
        assert_eq!(now(s.take_offline("t", "u1")).unwrap().len(), 3);
        assert_eq!(now(s.push_offline("t", "u4", m.clone())).unwrap(), 0);
        assert_eq!(now(s.offline_len("t", "u3")).unwrap(), 1);
        assert_eq!(s.stats().dropped_offline, 1);
    }

    #[test]
    fn message_serialises_with_snake_case_fields() {
        let s = store();
        let m = send(&*s, &dm(), "alice", "hi");
        let m = now(s.react(&dm(), m.id, "bob", "👍", true)).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        let expected = serde_json::json!({
            "id": m.id.to_string(),
            "conversation": "dm:t:alice:bob",
            "tenant": "t",
            "author": "alice",
            "target": { "user": "bob" },
            "client_msg_id": null,
            "body": "hi",
            "content_type": "text/plain",
            "created_at_ms": 1_700_000_000_000_i64,
            "seq": 1,
            "edited_at_ms": null,
            "edits": [],
            "deleted": false,
            "reactions": { "👍": ["bob"] },
            "delivered": false,
        });
        assert_eq!(json, expected);
    }
}
