//! Storing messages and delivering them: the owner stores and acks `sent`, the recipient's
//! home shard routes to the recipient's sessions or offline queue, each session's shard queues
//! the message at the pace the session reads, and the `delivered` / `read` acks go back to the
//! sender. A message that misses every session it was routed to is routed again ([`Misses`]).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::cluster::{self, Origin};
use super::directory::send_to_identity;
use super::encode::{encode_history, encode_message, text};
use super::envelope::{encode_ack, encode_store_error, AckStatus};
use super::msg::post_home;
use super::{now_ms, post, ChatMsg, Delivery, Hub, UserKey};
use crate::metrics;
use crate::shard::conn::ConnId;
use crate::shard::pacing::Tracked;
use crate::shard::Shard;
use crate::store::{ConversationKey, Message, MessageId, NewMessage, Receipt, Target};

/// On the conversation's owner: stores the message, acks `sent` to its sender, then sends it
/// on to its recipient's home shard or its room.
pub(super) async fn store(
    shard: &Rc<Shard>,
    hub: &Hub,
    new: NewMessage,
    sender: ConnId,
    envelope_id: Option<String>,
    to: Delivery,
) {
    let client_msg_id = new.client_msg_id.clone();
    let appended = match hub.store.append(new).await {
        Ok(a) => a,
        Err(e) => {
            let err = encode_store_error(envelope_id.as_deref(), client_msg_id.as_deref(), &e);
            send_paced(shard, sender, text(err));
            return;
        }
    };
    let m = &appended.message;
    let ack =
        encode_ack(envelope_id.as_deref(), &m.id.to_string(), m.client_msg_id.as_deref(), AckStatus::Sent, now_ms());
    send_paced(shard, sender, text(ack));
    if appended.duplicate {
        // Already delivered (or queued) the first time: acknowledge again, deliver nothing.
        metrics::add(&shard.stats.chat_duplicates, 1);
        return;
    }
    metrics::add(&shard.stats.chat_stored, 1);
    match to {
        Delivery::User(user) => {
            let message = Box::new(appended.message);
            post_home(shard, &user.clone(), ChatMsg::Route { user, message, sender });
        }
        Delivery::Room(room) => {
            let frame = encode_message(&appended.message);
            cluster::publish_room(shard, &room, &frame);
            shard.post_room(&room, frame, Some(sender))
        }
    }
}

/// On the recipient's home shard: a stored message to the user's sessions.
pub(super) async fn route(shard: &Rc<Shard>, hub: &Hub, user: UserKey, message: Message, sender: ConnId) {
    let sessions = hub.sessions_of(&user);
    deliver_or_queue(shard, hub, user, Arc::new(message), Some(sender), sessions).await;
}

/// On the recipient's home shard: the message to each of `sessions`, or to the offline queue
/// when there are none.
pub(super) async fn deliver_or_queue(
    shard: &Rc<Shard>,
    hub: &Hub,
    user: UserKey,
    message: Arc<Message>,
    sender: Option<ConnId>,
    sessions: Vec<ConnId>,
) {
    // A login is reading the user's offline queue: after it (`directory::register`).
    if let Some(e) = hub.homes.borrow_mut().get_mut(&user).filter(|e| e.loading > 0) {
        e.held.push_back((message, sender));
        return;
    }
    if sessions.is_empty() {
        if cluster::cluster(shard).is_some() {
            return Box::pin(route_in_cluster(shard, hub, user, message, sender)).await;
        }
        return queue_offline(shard, hub, &user, message).await;
    }
    let frame = encode_message(&message);
    cluster::publish_message(shard, &user, &message, &frame, sender);
    deliver_to(shard, message, frame, sender, None, sessions);
}

/// The user has no session on this node: the nodes that have some deliver the message, or it
/// waits in the offline queue. Later messages to the user wait for the answer, to keep their
/// order.
async fn route_in_cluster(shard: &Rc<Shard>, hub: &Hub, user: UserKey, message: Arc<Message>, sender: Option<ConnId>) {
    hub.homes.borrow_mut().entry(user.clone()).or_default().loading += 1;
    route_one(shard, hub, &user, message, sender).await;
    drain_held(shard, hub, &user).await;
}

/// Delivers what was held for `user` behind a wait that ends here (a route through the
/// cluster, a login reading the offline queue), one message at a time and in order. The wait
/// goes on until none is left, so what is routed to the user meanwhile is held behind them
/// rather than overtaking them; held messages are taken only once no other wait remains.
pub(super) async fn drain_held(shard: &Rc<Shard>, hub: &Hub, user: &UserKey) {
    while let Some((message, sender)) = super::directory::next_held(hub, user) {
        let sessions = hub.sessions_of(user);
        if !sessions.is_empty() {
            let frame = encode_message(&message);
            cluster::publish_message(shard, user, &message, &frame, sender);
            deliver_to(shard, message, frame, sender, None, sessions);
        } else if cluster::cluster(shard).is_some() {
            route_one(shard, hub, user, message, sender).await;
        } else {
            queue_offline(shard, hub, user, message).await;
        }
    }
}

/// Asks the nodes that have sessions of `user` to deliver `message`; where none took it, it
/// goes to a session that opened here meanwhile, or to the offline queue.
async fn route_one(shard: &Rc<Shard>, hub: &Hub, user: &UserKey, message: Arc<Message>, sender: Option<ConnId>) {
    let frame = encode_message(&message);
    let taken = cluster::route_remote(shard, hub, user, &message, &frame, sender).await;
    if !taken {
        // A session may have opened here meanwhile (its login read the offline queue already).
        let sessions = hub.sessions_of(user);
        if sessions.is_empty() {
            queue_offline(shard, hub, user, message).await;
        } else {
            deliver_to(shard, message, frame, sender, None, sessions);
        }
    }
}

async fn queue_offline(shard: &Shard, hub: &Hub, user: &UserKey, message: Arc<Message>) {
    metrics::add(&shard.stats.chat_offline_queued, 1);
    let message = Arc::try_unwrap(message).unwrap_or_else(|shared| (*shared).clone());
    match hub.store.push_offline(&user.tenant, &user.user, message).await {
        Ok(dropped) if dropped > 0 => metrics::add(&shard.stats.chat_offline_dropped, dropped as u64),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot queue an offline message"),
    }
}

/// Queues a message on each of a user's `sessions` (on their shards), tracked so that its
/// `delivered` receipt reaches the node and session that sent it.
pub(super) fn deliver_to(
    shard: &Shard,
    message: Arc<Message>,
    frame: Bytes,
    sender: Option<ConnId>,
    origin: Option<Arc<Origin>>,
    sessions: Vec<ConnId>,
) {
    let targets: Arc<[ConnId]> = sessions.into();
    for s in targets.iter().copied() {
        let msg = ChatMsg::Deliver {
            session: s,
            frame: frame.clone(),
            message: message.clone(),
            sender,
            targets: targets.clone(),
            origin: origin.clone(),
        };
        post(shard, usize::from(s.shard), msg);
    }
}

/// On the recipient's home shard: a message this node stored missed the recipient's sessions
/// on another node.
pub(super) async fn requeue(
    shard: &Rc<Shard>,
    hub: &Hub,
    user: UserKey,
    message: Arc<Message>,
    sender: Option<ConnId>,
) {
    let sessions = hub.sessions_of(&user);
    deliver_or_queue(shard, hub, user, message, sender, sessions).await;
}

/// On a session's shard: queues a routed message on the session at the pace it reads.
pub(super) fn deliver(shard: &Shard, hub: &Hub, session: ConnId, frame: Bytes, routed: Routed) {
    let routed = Box::new(routed);
    match shard.session(session) {
        Some(c) if c.closing_since.get().is_none() => {
            shard.deliver_paced(&c, frame, Some(routed), hub.store_cfg.max_offline_per_user)
        }
        // The session closed on the way.
        _ => routed.lost(shard),
    }
}

/// On the recipient's home shard: a target session missed the message; once every target
/// did, routes it again to the user's other sessions, or the offline queue.
pub(super) async fn missed(
    shard: &Rc<Shard>,
    hub: &Hub,
    message: Arc<Message>,
    sender: Option<ConnId>,
    targets: Arc<[ConnId]>,
    origin: Option<Arc<Origin>>,
) {
    let all_missed = {
        let mut misses = hub.misses.borrow_mut();
        let n = misses.count(message.id);
        n >= targets.len()
    };
    if all_missed {
        hub.misses.borrow_mut().forget(message.id);
        let Target::User(u) = &message.target else { return };
        let user = UserKey { tenant: message.tenant.clone(), user: u.clone() };
        let sessions: Vec<ConnId> = hub
            .homes
            .borrow()
            .get(&user)
            .map(|e| e.sessions.iter().filter(|s| !targets.contains(s)).copied().collect())
            .unwrap_or_default();
        if let Some(origin) = origin {
            // Stored by another node: this node's other sessions, or back to the origin.
            if sessions.is_empty() {
                return cluster::send_missed(shard, &origin, &message);
            }
            let frame = encode_message(&message);
            return deliver_to(shard, message, frame, sender, Some(origin), sessions);
        }
        deliver_or_queue(shard, hub, user, message, sender, sessions).await;
    }
}

/// On the conversation's owner: a message reached a recipient session; acks `delivered` the
/// first time.
pub(super) async fn delivered(
    shard: &Shard,
    hub: &Hub,
    conversation: ConversationKey,
    r: Receipt,
    sender: Option<ConnId>,
) {
    if let Ok(true) = hub.store.mark_delivered(&conversation, r.id).await {
        let ack = encode_ack(None, &r.id.to_string(), r.client_msg_id.as_deref(), AckStatus::Delivered, now_ms());
        match sender {
            Some(s) => send_paced(shard, s, text(ack)),
            None => send_to_identity(shard, &r.tenant, &r.author, text(ack)),
        }
    }
}

/// On the conversation's owner: marks messages read and acks `read` to their authors.
pub(super) async fn read(
    shard: &Shard,
    hub: &Hub,
    tenant: Arc<str>,
    reader: Arc<str>,
    conversation: ConversationKey,
    ids: Vec<MessageId>,
) {
    let Ok(read) = hub.store.mark_read(&tenant, &reader, &conversation, &ids).await else { return };
    let now = now_ms();
    for r in read {
        let ack = encode_ack(None, &r.id.to_string(), r.client_msg_id.as_deref(), AckStatus::Read, now);
        send_to_identity(shard, &r.tenant, &r.author, text(ack));
    }
}

/// On the conversation's owner: a page of its history for `session`.
pub(super) async fn history(
    shard: &Shard,
    hub: &Hub,
    conversation: ConversationKey,
    before: Option<crate::store::Cursor>,
    limit: usize,
    session: ConnId,
    envelope_id: Option<String>,
) {
    let reply = match hub.store.history(&conversation, before, limit).await {
        Ok(page) => encode_history(envelope_id.as_deref(), &page),
        Err(e) => encode_store_error(envelope_id.as_deref(), None, &e),
    };
    shard.send_to(session, text(reply));
}

/// A stored message routed to a recipient's sessions: what it takes to route it again.
pub(super) struct Routed {
    pub(super) message: Arc<Message>,
    /// The session that sent it, for its `delivered` ack.
    pub(super) sender: Option<ConnId>,
    /// Every session it was routed to.
    pub(super) targets: Arc<[ConnId]>,
    /// The node that stored it, when another one did: the receipt and a miss go back there.
    pub(super) origin: Option<Arc<Origin>>,
}

impl Tracked for Routed {
    /// Reported when queued rather than once written: the ack then shares the sender's next
    /// write with its `sent` ack (a third fewer writes in a chat), and a message that no write
    /// took is routed again anyway.
    fn queued(&self, shard: &Shard) {
        if let Some(origin) = &self.origin {
            return cluster::send_delivered(shard, origin, &self.message);
        }
        let conversation = self.message.conversation.clone();
        let owner = conversation.owner_shard(shard.shard_count());
        let receipt = Receipt::from(&*self.message);
        post(shard, owner, ChatMsg::Delivered { conversation, receipt, sender: self.sender });
    }

    /// The message did not reach its session: its recipient's home shard routes it again if
    /// no session of the user got it.
    fn lost(self: Box<Self>, shard: &Shard) {
        let Routed { message, sender, targets, origin } = *self;
        metrics::add(&shard.stats.chat_missed, 1);
        if let Target::User(u) = &message.target {
            let user = UserKey { tenant: message.tenant.clone(), user: u.clone() };
            post_home(shard, &user, ChatMsg::Missed { message, sender, targets, origin });
        }
    }
}

/// Sends a session a frame at the pace it reads, in order with the stored messages and other
/// paced frames for it ([`Shard::deliver_paced`]). Reaches a session on another shard through
/// that shard's chat worker.
pub fn send_paced(shard: &Shard, session: ConnId, frame: Bytes) {
    if usize::from(session.shard) != shard.index {
        return post(shard, usize::from(session.shard), ChatMsg::Paced { session, frame });
    }
    let Some(hub) = shard.service::<Hub>() else { return };
    if let Some(c) = shard.session(session) {
        if c.closing_since.get().is_none() {
            shard.deliver_paced(&c, frame, None, hub.store_cfg.max_offline_per_user);
        }
    }
}

/// How many target sessions missed each message, on the recipient's home shard. Bounded: the
/// oldest counts are forgotten first (a message all but one of whose targets missed it was
/// delivered, and its count is never completed).
#[derive(Default)]
pub(super) struct Misses {
    counts: HashMap<MessageId, usize>,
    order: VecDeque<MessageId>,
}

const MAX_TRACKED_MISSES: usize = 65_536;

impl Misses {
    /// Counts one more miss of `id`; returns the total.
    fn count(&mut self, id: MessageId) -> usize {
        let n = self.counts.entry(id).or_insert(0);
        *n += 1;
        let total = *n;
        if total == 1 {
            self.order.push_back(id);
            if self.order.len() > MAX_TRACKED_MISSES {
                if let Some(old) = self.order.pop_front() {
                    self.counts.remove(&old);
                }
            }
        }
        total
    }

    fn forget(&mut self, id: MessageId) {
        self.counts.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_complete_once_every_target_missed_and_stay_bounded() {
        let mut m = Misses::default();
        let id = MessageId::now_v7();
        assert_eq!(m.count(id), 1);
        assert_eq!(m.count(id), 2);
        m.forget(id);
        assert_eq!(m.count(id), 1, "forgotten counts start again");
        for _ in 0..MAX_TRACKED_MISSES + 10 {
            m.count(MessageId::now_v7());
        }
        assert!(m.counts.len() <= MAX_TRACKED_MISSES);
        assert!(!m.counts.contains_key(&id), "the oldest count was evicted");
    }
}
