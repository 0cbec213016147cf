//! The work that shards' chat workers send each other ([`ChatMsg`]), and who owns what: a
//! user's home shard ([`home_shard`]) and the way work reaches a shard's worker ([`post`]).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::cluster::Origin;
use super::Hub;
use crate::shard::conn::ConnId;
use crate::shard::Shard;
use crate::store::{ConversationKey, Message, MessageId, NewMessage, Receipt};

/// The shard that keeps a user's sessions, presence watchers and offline queue.
pub fn home_shard(tenant: &str, user: &str, shards: usize) -> usize {
    crate::store::stable_shard(&[tenant, user], shards)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A user on the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey {
    pub tenant: Arc<str>,
    pub user: Arc<str>,
}

/// Work for a shard's chat worker, from any shard (or its own).
pub enum ChatMsg {
    /// To the user's home shard: a session of the user opened.
    Register {
        user: UserKey,
        session: ConnId,
    },
    /// To the user's home shard: a session of the user closed.
    Unregister {
        user: UserKey,
        session: ConnId,
    },
    /// To `user`'s home shard: `watcher` wants `online`/`offline` for `user`.
    Watch {
        user: UserKey,
        watcher: ConnId,
    },
    Unwatch {
        user: UserKey,
        watcher: ConnId,
    },
    /// To the conversation's owner: store, ack `sent` to `sender`, then deliver.
    Store {
        new: NewMessage,
        sender: ConnId,
        envelope_id: Option<String>,
        to: Delivery,
    },
    /// To the recipient's home shard: a stored message for every session of `user`, or the
    /// offline queue.
    Route {
        user: UserKey,
        message: Box<Message>,
        sender: ConnId,
    },
    /// To a session's shard: a stored message to queue on that session, one of `targets`
    /// (the recipient's sessions when its home shard routed it).
    Deliver {
        session: ConnId,
        frame: Bytes,
        message: Arc<Message>,
        sender: Option<ConnId>,
        targets: Arc<[ConnId]>,
        /// The node that stored it, when another one did.
        origin: Option<Arc<Origin>>,
    },
    /// To the recipient's home shard: a session of `targets` closed before the message
    /// reached it. When every target missed it, the home shard routes it again (to sessions
    /// opened since, or the offline queue), so a message is never dropped between devices.
    Missed {
        message: Arc<Message>,
        sender: Option<ConnId>,
        targets: Arc<[ConnId]>,
        origin: Option<Arc<Origin>>,
    },
    /// To the conversation's owner: a message reached a recipient session. `sender` is the
    /// session that sent it, when the message was routed live; a message from the offline
    /// queue acknowledges to every session of its author instead.
    Delivered {
        conversation: ConversationKey,
        /// The message, and whom its `delivered` ack is for.
        receipt: Receipt,
        sender: Option<ConnId>,
    },
    /// To the conversation's owner: `reader` read these messages.
    Read {
        tenant: Arc<str>,
        reader: Arc<str>,
        conversation: ConversationKey,
        ids: Vec<MessageId>,
    },
    /// To the user's home shard: a frame for every session of the user.
    ToIdentity {
        user: UserKey,
        frame: Bytes,
    },
    /// To a session's shard: close it, a newer login took its place.
    Kick {
        session: ConnId,
    },
    /// To a session's shard: a frame for it, paced like deliveries.
    Paced {
        session: ConnId,
        frame: Bytes,
    },
    /// Work of another protocol that must run in order with this worker's (the IM events of
    /// Socket.IO use the same store and owners): run by the worker, awaited before the next.
    Task(ChatTask),
    /// To the recipient's home shard: a message this node stored missed the recipient's
    /// sessions on another node; it is routed again, or queued offline.
    Requeue {
        user: UserKey,
        message: Arc<Message>,
        sender: Option<ConnId>,
    },
    /// To a user's home shard: work from another node ([`super::cluster`]).
    Remote(crate::cluster::Checked),
    /// To the conversation's owner: a page of its history for `session`.
    History {
        conversation: ConversationKey,
        before: Option<crate::store::Cursor>,
        limit: usize,
        session: ConnId,
        envelope_id: Option<String>,
    },
}

/// A closure run by a shard's chat worker ([`ChatMsg::Task`]).
pub type ChatTask = Box<dyn FnOnce(Rc<Shard>, Rc<Hub>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Where a stored message goes after the `sent` ack.
pub enum Delivery {
    User(UserKey),
    Room(Arc<str>),
}

/// Sends `msg` to the chat worker of shard `to`: the local queue when that is this shard,
/// otherwise the ring (ordered behind earlier posts).
pub fn post(shard: &Shard, to: usize, msg: ChatMsg) {
    shard.invoke_on(to, move |shard: &Rc<Shard>| {
        if let Some(hub) = shard.service::<Hub>() {
            hub.accept(msg);
        }
    });
}

pub(super) fn post_home(shard: &Shard, user: &UserKey, msg: ChatMsg) {
    post(shard, home_shard(&user.tenant, &user.user, shard.shard_count()), msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn owners_are_stable_and_spread() {
        assert_eq!(home_shard("acme", "alice", 8), home_shard("acme", "alice", 8));
        assert_eq!(home_shard("acme", "alice", 1), 0);
        let used: HashSet<usize> = (0..200).map(|i| home_shard("t", &format!("user{i}"), 4)).collect();
        assert_eq!(used.len(), 4, "200 users reach every one of 4 shards");
        let k = ConversationKey::direct("acme", "alice", "bob");
        assert_eq!(k.owner_shard(4), ConversationKey::direct("acme", "bob", "alice").owner_shard(4));
        // The parts are kept apart: ("ab", "c") and ("a", "bc") are different users.
        let split = |t: &str, u: &str| crate::store::stable_shard(&[t, u], 1 << 20);
        assert_ne!(split("ab", "c"), split("a", "bc"));
    }
}
