//! The native protocol across the nodes of a cluster ([`crate::cluster`]).
//!
//! Each node keeps the directory of its own sessions, as one node does; the cluster adds what
//! crosses nodes, on subjects that only nodes with an interest subscribe to:
//!
//! - **A user's sessions** (`user.<tenant>.<user>`, subscribed by the user's home shard while
//!   the node has a session of the user): direct messages ([`Body::UserMessage`]), frames for
//!   all of a user's devices ([`Body::IdentityFrame`]), logins that kick older sessions
//!   ([`Body::Login`]) and presence queries.
//! - **A user's presence** (`presence.<tenant>.<user>`, subscribed while a session of the node
//!   watches the user): `online` / `offline` per node ([`Body::Presence`]). A user is online
//!   while any node has a session of the user.
//! - **A node** (`node.<id>`, subscribed by shard 0): `delivered` receipts and misses for the
//!   messages the node stored, whose `sent` acks it gave.
//! - **Native rooms** (`room.<key>`, subscribed by every shard with a member): room messages.
//!
//! A direct message is stored once, by the node its sender is connected to (the origin). The
//! recipient's home shard there delivers it to the recipient's local sessions and publishes it
//! for the others; when the origin has none, it asks ([`Cluster::ask`]): the nodes with
//! sessions deliver it and answer, and when none has any (NATS answers "no responders" at
//! once) or none answers within `chat.cluster_route_timeout_ms`, the origin queues it offline.
//! Receipts go back to the origin, which marks the message delivered once and acks its sender.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::{now_ms, post, ChatMsg, Hub, UserKey};
use crate::cluster::envelope::{self, ChatMessage, UserRef};
use crate::cluster::{ArchivedBody, Asked, Body, Checked, Cluster, ClusterHandler, SubjectKind};
use crate::shard::conn::ConnId;
use crate::shard::Shard;
use crate::store::{ConversationKey, Message, MessageId, Receipt, Target};

/// Where a message routed from another node came from: its `delivered` receipt and its misses
/// go back there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub node: Arc<str>,
    /// The sending session on that node.
    pub session: Option<Arc<str>>,
}

pub(super) fn cluster(shard: &Shard) -> Option<Rc<Cluster>> {
    shard.service::<Cluster>()
}

/// A session of this shard joined a native room.
pub(super) fn join_room(shard: &Shard, key: &str) {
    if let Some(c) = cluster(shard) {
        c.join(c.subjects().room(key));
    }
}

/// A session of this shard left a native room (or closed).
pub(super) fn leave_room(shard: &Shard, key: &str) {
    if let Some(c) = cluster(shard) {
        c.leave(&c.subjects().room(key));
    }
}

/// A room message to the members on other nodes.
pub(super) fn publish_room(shard: &Shard, key: &str, frame: &Bytes) {
    let Some(c) = cluster(shard) else { return };
    let env = c.envelope(Body::Room(envelope::RoomFrame { room: key.to_string(), frame: frame.to_vec() }));
    c.publish(SubjectKind::Room, c.subjects().room(key), &env);
}

/// On the user's home shard: one more (`on`) or one fewer session of `user` on this node.
pub(super) fn user_session(shard: &Shard, user: &UserKey, on: bool) {
    let Some(c) = cluster(shard) else { return };
    let subject = c.subjects().user(&user.tenant, &user.user);
    if on {
        c.join(subject);
    } else {
        c.leave(&subject);
    }
}

/// On the user's home shard: one more (`on`) or one fewer session of this node watching `user`.
pub(super) fn user_watched(shard: &Shard, user: &UserKey, on: bool) {
    let Some(c) = cluster(shard) else { return };
    let subject = c.subjects().presence(&user.tenant, &user.user);
    if on {
        c.join(subject);
    } else {
        c.leave(&subject);
    }
}

fn user_ref(user: &UserKey) -> UserRef {
    UserRef { tenant: user.tenant.to_string(), user: user.user.to_string() }
}

fn wire(m: &Message) -> ChatMessage {
    ChatMessage {
        id: *m.id.as_bytes(),
        conversation: m.conversation.as_str().to_string(),
        tenant: m.tenant.to_string(),
        author: m.author.to_string(),
        recipient: match &m.target {
            Target::User(u) => u.to_string(),
            Target::Room(r) => r.to_string(),
        },
        client_msg_id: m.client_msg_id.clone(),
        body: m.body.clone(),
        content_type: m.content_type.clone(),
        created_at_ms: m.created_at_ms,
        seq: m.seq,
    }
}

fn unwire(m: &envelope::ArchivedChatMessage) -> Message {
    let new = crate::store::NewMessage {
        conversation: ConversationKey::from_wire(m.conversation.as_str()),
        tenant: m.tenant.as_str().into(),
        author: m.author.as_str().into(),
        target: Target::User(m.recipient.as_str().into()),
        client_msg_id: m.client_msg_id.as_ref().map(|s| s.to_string()),
        body: m.body.to_string(),
        content_type: m.content_type.to_string(),
        created_at_ms: m.created_at_ms.to_native(),
    };
    Message::first_stored(new, MessageId::from_bytes(m.id), m.seq.to_native())
}

fn user_message(c: &Cluster, message: &Message, frame: &Bytes, sender: Option<ConnId>) -> crate::cluster::Envelope {
    c.envelope(Body::UserMessage(envelope::UserMessage {
        message: wire(message),
        frame: frame.to_vec(),
        sender: sender.map(|s| s.to_string()),
    }))
}

/// On the recipient's home shard of the origin: the message for the recipient's sessions on
/// other nodes, when this node delivers to its own too.
pub(super) fn publish_message(shard: &Shard, user: &UserKey, message: &Message, frame: &Bytes, sender: Option<ConnId>) {
    let Some(c) = cluster(shard) else { return };
    let env = user_message(&c, message, frame, sender);
    c.publish(SubjectKind::User, c.subjects().user(&user.tenant, &user.user), &env);
}

/// On the recipient's home shard of the origin, which has no session of the recipient: asks
/// the nodes that have some to deliver the message. True when one did; false when the node is
/// alone, no node has a session, or none answered in time (the caller then queues it offline).
pub(super) async fn route_remote(
    shard: &Shard,
    hub: &Hub,
    user: &UserKey,
    message: &Message,
    frame: &Bytes,
    sender: Option<ConnId>,
) -> bool {
    let Some(c) = cluster(shard) else { return false };
    let env = user_message(&c, message, frame, sender);
    let subject = c.subjects().user(&user.tenant, &user.user);
    match c.ask(SubjectKind::User, subject, &env, hub.config.cluster_route_timeout).await {
        Asked::Answered(a) => matches!(&a.view().body, ArchivedBody::Answer(ans) if ans.ok),
        Asked::NoOne | Asked::TimedOut | Asked::Failed => false,
    }
}

/// A frame for the user's sessions on other nodes.
pub(super) fn publish_identity(shard: &Shard, user: &UserKey, frame: &Bytes) {
    let Some(c) = cluster(shard) else { return };
    let env = c.envelope(Body::Identity(envelope::IdentityFrame { user: user_ref(user), frame: frame.to_vec() }));
    c.publish(SubjectKind::User, c.subjects().user(&user.tenant, &user.user), &env);
}

/// The user's sessions on this node came or went: for the watchers on other nodes.
pub(super) fn publish_presence(shard: &Shard, user: &UserKey, online: bool) {
    let Some(c) = cluster(shard) else { return };
    let node = c.node_id().to_string();
    let env = c.envelope(Body::Presence(envelope::Presence { user: user_ref(user), node, online, at_ms: now_ms() }));
    c.publish(SubjectKind::Presence, c.subjects().presence(&user.tenant, &user.user), &env);
}

/// A login of the user here, at `at_ms`: other nodes kick older sessions.
pub(super) fn publish_login(shard: &Shard, user: &UserKey, at_ms: i64) {
    let Some(c) = cluster(shard) else { return };
    let env = c.envelope(Body::Login(envelope::Login { user: user_ref(user), node: c.node_id().to_string(), at_ms }));
    c.publish(SubjectKind::User, c.subjects().user(&user.tenant, &user.user), &env);
}

/// Whether a node other than this one has a session of `user`; false when alone.
pub(super) async fn online_elsewhere(shard: &Shard, hub: &Hub, user: &UserKey) -> Option<Arc<str>> {
    let c = cluster(shard)?;
    let env = c.envelope(Body::PresenceQuery(user_ref(user)));
    let subject = c.subjects().user(&user.tenant, &user.user);
    match c.ask(SubjectKind::User, subject, &env, hub.config.cluster_route_timeout).await {
        Asked::Answered(a) => match &a.view().body {
            ArchivedBody::Answer(ans) if ans.ok => Some(ans.node.as_str().into()),
            _ => None,
        },
        _ => None,
    }
}

/// A message from another node reached a session here: its receipt goes back to the origin.
pub(super) fn send_delivered(shard: &Shard, origin: &Origin, message: &Message) {
    let Some(c) = cluster(shard) else { return };
    let env = c.envelope(Body::Delivered(envelope::Delivered {
        conversation: message.conversation.as_str().to_string(),
        id: *message.id.as_bytes(),
        tenant: message.tenant.to_string(),
        author: message.author.to_string(),
        client_msg_id: message.client_msg_id.clone(),
        sender: origin.session.as_deref().map(str::to_string),
    }));
    c.publish(SubjectKind::Node, c.subjects().node(&origin.node), &env);
}

/// A message from another node missed every session it was queued on here: the origin routes
/// it again (or queues it offline).
pub(super) fn send_missed(shard: &Shard, origin: &Origin, message: &Message) {
    let Some(c) = cluster(shard) else { return };
    let env = c.envelope(Body::Missed(envelope::Missed {
        message: wire(message),
        sender: origin.session.as_deref().map(str::to_string),
    }));
    c.publish(SubjectKind::Node, c.subjects().node(&origin.node), &env);
}

fn user_key(u: &envelope::ArchivedUserRef) -> UserKey {
    UserKey { tenant: u.tenant.as_str().into(), user: u.user.as_str().into() }
}

impl ClusterHandler for Hub {
    /// Every native session here hears that messages from other nodes may have been missed,
    /// and fetches its history again: a gap is never silent.
    fn gap(&self, shard: &Rc<Shard>) {
        #[derive(serde::Serialize)]
        struct Resync {
            reason: &'static str,
        }
        let frame = super::encode::text(super::envelope::encode("resync", None, &Resync { reason: "cluster_gap" }));
        // Every session is in its user's entry on the user's home shard: each once.
        let sessions: Vec<ConnId> = self.homes.borrow().values().flat_map(|e| e.sessions.iter().copied()).collect();
        for id in sessions {
            super::delivery::send_paced(shard, id, frame.clone());
        }
    }

    /// The users who had sessions only on that node go offline for the watchers here.
    fn node_gone(&self, shard: &Rc<Shard>, node: &str) {
        super::directory::node_gone(shard, self, node);
    }

    fn receive(&self, shard: &Rc<Shard>, env: &Checked) {
        match &env.view().body {
            // Every shard with members of the room got it: each serves its own.
            ArchivedBody::Room(r) => {
                let room: Arc<str> = r.room.as_str().into();
                shard.deliver_room_local(&room, env.share(r.frame.as_slice()), None);
            }
            // For the node: handed to the shard that owns the conversation or user.
            ArchivedBody::Delivered(d) => {
                let conversation = ConversationKey::from_wire(d.conversation.as_str());
                let receipt = Receipt {
                    id: MessageId::from_bytes(d.id),
                    tenant: d.tenant.as_str().into(),
                    author: d.author.as_str().into(),
                    client_msg_id: d.client_msg_id.as_ref().map(|s| s.to_string()),
                };
                let sender = d.sender.as_ref().and_then(|s| s.as_str().parse::<ConnId>().ok());
                let owner = conversation.owner_shard(shard.shard_count());
                post(shard, owner, ChatMsg::Delivered { conversation, receipt, sender });
            }
            ArchivedBody::Missed(m) => {
                let message = Arc::new(unwire(&m.message));
                let sender = m.sender.as_ref().and_then(|s| s.as_str().parse::<ConnId>().ok());
                let user = UserKey { tenant: message.tenant.clone(), user: m.message.recipient.as_str().into() };
                let home = super::home_shard(&user.tenant, &user.user, shard.shard_count());
                post(shard, home, ChatMsg::Requeue { user, message, sender });
            }
            // For a user's home shard, which subscribed: in order with its other work.
            ArchivedBody::UserMessage(_)
            | ArchivedBody::Identity(_)
            | ArchivedBody::Presence(_)
            | ArchivedBody::PresenceQuery(_)
            | ArchivedBody::Login(_) => self.accept(ChatMsg::Remote(env.clone())),
            ArchivedBody::Sio(_)
            | ArchivedBody::Answer(_)
            | ArchivedBody::Heartbeat(_)
            | ArchivedBody::Leaving
            | ArchivedBody::Request(_)
            | ArchivedBody::Reply(_) => {}
        }
    }
}

/// On a user's home shard: work from another node, in order with the shard's chat work.
pub(super) async fn remote(shard: &Rc<Shard>, hub: &Hub, env: Checked) {
    let Some(c) = cluster(shard) else { return };
    match &env.view().body {
        ArchivedBody::UserMessage(m) => {
            let message = unwire(&m.message);
            let user = UserKey { tenant: message.tenant.clone(), user: m.message.recipient.as_str().into() };
            let sessions = hub.sessions_of(&user);
            if sessions.is_empty() {
                // Not ours to answer: a node with sessions will, or the origin queues it.
                return;
            }
            c.answer(&env, true);
            let origin = Origin {
                node: env.view().origin.as_str().into(),
                session: m.sender.as_ref().map(|s| Arc::from(s.as_str())),
            };
            let frame = env.share(m.frame.as_slice());
            super::delivery::deliver_to(shard, Arc::new(message), frame, None, Some(Arc::new(origin)), sessions);
        }
        ArchivedBody::Identity(i) => {
            let user = user_key(&i.user);
            super::directory::to_identity(shard, hub, user, env.share(i.frame.as_slice()));
        }
        ArchivedBody::PresenceQuery(u) if !hub.sessions_of(&user_key(u)).is_empty() => c.answer(&env, true),
        ArchivedBody::Presence(p) => {
            super::directory::remote_presence(shard, hub, user_key(&p.user), p.node.as_str().into(), p.online);
        }
        ArchivedBody::Login(l) => {
            super::directory::remote_login(shard, hub, user_key(&l.user), l.node.as_str(), l.at_ms.to_native());
        }
        _ => {}
    }
}
