//! `/socket.io/` by default: the IM event set on Socket.IO, with a channel id as the room.
//!
//! Clients send `channel:join`, `channel:leave`, `message:send`, `message:edit`,
//! `message:delete`, `message:history`, `typing:start`, `typing:stop`, `reaction:add` and
//! `reaction:remove`, each with one object argument and an optional ack. Channels receive
//! `message:new`, `message:updated`, `message:deleted`, `typing`, `reaction:updated` and
//! `presence:update`. Payloads are described in `docs/im-events.md`.
//!
//! Only members may join or send to a channel ([`crate::membership`]). Operations that touch
//! stored messages run in the chat worker of the conversation's owner shard
//! ([`crate::chat::ChatMsg::Task`]), in order with the native protocol's work there: it
//! stores, broadcasts to the channel's room on every shard and sends the ack back to the
//! client's Engine.IO session, wherever it lives.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chat::{self, ChatMsg, ChatTask, Hub};
use crate::engineio::Sid;
use crate::shard::Shard;
use crate::socketio::{packet, Event, Namespace, SioConfig, Socket, SocketIo};
use crate::store::{ConversationKey, Cursor, Message, MessageId, NewMessage, Store, StoreError, Target};

/// Builds the IM application of one shard.
pub fn build(config: SioConfig) -> SocketIo {
    SocketIo::new(config, vec![namespace()])
}

/// The IM events' own state on a shard: for the channels this shard owns, how many sockets
/// each user has in each. A per-shard service; the assembler registers it with the IM app.
#[derive(Default)]
pub struct ImState {
    presence: RefCell<PresenceCounts>,
}

impl crate::shard::ShardService for ImState {}

/// The Socket.IO room of a channel. Length-prefixed so no tenant and channel pair can name
/// another's room.
pub fn channel_room(tenant: &str, channel: &str) -> String {
    format!("ch:{}:{tenant}:{channel}", tenant.len())
}

/// Where an operation's ack goes: the client's Engine.IO session, namespace and ack id, and
/// its socket id (left out of the channel broadcast when it already gets the ack).
#[derive(Debug, Clone)]
pub struct Reply {
    pub session: Sid,
    pub socket: Arc<str>,
    pub nsp: Arc<str>,
    pub ack: Option<u64>,
}

/// An operation on stored messages, run on the conversation's owner shard.
#[derive(Debug)]
pub enum ImOp {
    Send(NewMessage),
    Edit { conversation: ConversationKey, id: MessageId, editor: Arc<str>, body: String },
    Delete { conversation: ConversationKey, id: MessageId, by: Arc<str> },
    React { conversation: ConversationKey, id: MessageId, user: Arc<str>, emoji: String, add: bool },
    History { conversation: ConversationKey, before: Option<Cursor>, limit: usize },
}

/// A socket of `user` entered (or left) a channel, sent to the channel's owner shard, which
/// counts the user's sockets there and tells the channel when the first arrives or the last is
/// gone.
#[derive(Debug)]
pub struct PresenceChange {
    tenant: Arc<str>,
    channel: Arc<str>,
    user: Arc<str>,
    online: bool,
    /// The socket's namespace, and the socket (not told that it came online itself).
    nsp: Arc<str>,
    socket: Arc<str>,
}

/// Counts of a user's sockets in a channel, by namespace, tenant, channel and user.
pub type PresenceCounts = std::collections::HashMap<(Arc<str>, Arc<str>, Arc<str>, Arc<str>), u32>;

/// A stored message on the wire.
#[derive(Serialize)]
struct WireMessage<'a> {
    id: String,
    channel_id: &'a str,
    author: Author<'a>,
    body: &'a str,
    content_type: &'a str,
    created_at: i64,
    edited_at: Option<i64>,
    edit_history: Vec<WireEdit<'a>>,
    deleted: bool,
    reactions: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<Arc<str>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
    seq: u64,
}

#[derive(Serialize)]
struct Author<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct WireEdit<'a> {
    body: &'a str,
    edited_at: i64,
}

fn channel_of(m: &Message) -> &str {
    match &m.target {
        Target::Room(r) => r,
        Target::User(u) => u,
    }
}

fn wire(m: &Message) -> WireMessage<'_> {
    WireMessage {
        id: m.id.to_string(),
        channel_id: channel_of(m),
        author: Author { user_id: &m.author },
        body: &m.body,
        content_type: &m.content_type,
        created_at: m.created_at_ms,
        edited_at: m.edited_at_ms,
        edit_history: m.edits.iter().map(|e| WireEdit { body: &e.body, edited_at: e.edited_at_ms }).collect(),
        deleted: m.deleted,
        reactions: &m.reactions,
        client_msg_id: m.client_msg_id.as_deref(),
        seq: m.seq,
    }
}

fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

#[derive(Serialize)]
struct Failure<'a> {
    ok: bool,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    /// With `unavailable`: when the client may try again (with the same `clientMsgId`).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

fn failure(code: &str, message: &str) -> String {
    json(&Failure { ok: false, error: ErrorBody { code, message, retry_after_ms: None } })
}

fn store_failure(e: &StoreError) -> String {
    let error = ErrorBody { code: e.code(), message: &e.to_string(), retry_after_ms: e.retry_after_ms() };
    json(&Failure { ok: false, error })
}

fn ack(shard: &Shard, s: &Socket, ev: &Event<'_>, body: &str) {
    s.ack(shard, ev, body, Vec::new());
}

/// The main namespace with the IM events. Handlers belong to the namespace, shared by every
/// socket; only the disconnect hook is per socket.
fn namespace() -> Namespace {
    Namespace::new("/")
        .on_connection(on_connection)
        .on("channel:join", |shard, s, ev| join(shard, s, &ev, true))
        .on("channel:leave", |shard, s, ev| join(shard, s, &ev, false))
        .on("message:send", send)
        .on("message:edit", edit)
        .on("message:delete", delete)
        .on("reaction:add", |shard, s, ev| react(shard, s, &ev, true))
        .on("reaction:remove", |shard, s, ev| react(shard, s, &ev, false))
        .on("message:history", history)
        .on("typing:start", |shard, s, ev| typing(shard, s, &ev, true))
        .on("typing:stop", |shard, s, ev| typing(shard, s, &ev, false))
}

fn edit(shard: &Shard, s: &Rc<Socket>, ev: Event<'_>) {
    #[derive(Deserialize)]
    struct Edit {
        channel_id: String,
        message_id: String,
        body: String,
    }
    let Some((d, conversation, id)) = with_message::<Edit>(shard, s, &ev, |d| (&d.channel_id, &d.message_id)) else {
        return;
    };
    let op = ImOp::Edit { conversation, id, editor: s.identity.user_id.clone(), body: d.body };
    run(shard, s, &ev, op);
}

fn delete(shard: &Shard, s: &Rc<Socket>, ev: Event<'_>) {
    #[derive(Deserialize)]
    struct Delete {
        channel_id: String,
        message_id: String,
    }
    let Some((_, conversation, id)) = with_message::<Delete>(shard, s, &ev, |d| (&d.channel_id, &d.message_id)) else {
        return;
    };
    run(shard, s, &ev, ImOp::Delete { conversation, id, by: s.identity.user_id.clone() });
}

fn history(shard: &Shard, s: &Rc<Socket>, ev: Event<'_>) {
    #[derive(Deserialize)]
    struct History {
        channel_id: String,
        before: Option<String>,
        limit: Option<usize>,
    }
    let Some(d) = arg::<History>(shard, s, &ev) else { return };
    if !member(shard, s, &ev, &d.channel_id) {
        return;
    }
    let before = match d.before.as_deref().map(str::parse::<Cursor>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return ack(shard, s, &ev, &failure("bad_data", &e.to_string())),
    };
    let conversation = ConversationKey::room(&s.identity.tenant, &d.channel_id);
    let limit = d.limit.unwrap_or(50);
    run(shard, s, &ev, ImOp::History { conversation, before, limit });
}

fn on_connection(_shard: &Shard, s: &Rc<Socket>, _auth: Option<&str>) {
    s.on_disconnect(|shard, s, _reason| {
        // The socket leaves every channel it was in; its user's last socket there goes offline.
        let prefix = format!("ch:{}:{}:", s.identity.tenant.len(), s.identity.tenant);
        for room in s.rooms() {
            if let Some(channel) = room.strip_prefix(&prefix) {
                post_presence(shard, s, channel, false);
            }
        }
    });
}

/// Tells the channel's owner shard that a socket of this user entered or left `channel`.
fn post_presence(shard: &Shard, s: &Socket, channel: &str, online: bool) {
    let owner = ConversationKey::room(&s.identity.tenant, channel).owner_shard(shard.shard_count());
    let change = PresenceChange {
        tenant: s.identity.tenant.clone(),
        channel: channel.into(),
        user: s.identity.user_id.clone(),
        online,
        nsp: (&*s.nsp).into(),
        socket: (&*s.id).into(),
    };
    let task: ChatTask = Box::new(move |shard: Rc<Shard>, _| {
        presence_changed(&shard, change);
        Box::pin(std::future::ready(()))
    });
    chat::post(shard, owner, ChatMsg::Task(task));
}

/// On the owner shard: counts the user's sockets in the channel and announces the user online
/// with the first and offline with the last.
fn presence_changed(shard: &Shard, c: PresenceChange) {
    let (Some(io), Some(state)) = (shard.service::<SocketIo>(), shard.service::<ImState>()) else { return };
    let key = (c.nsp.clone(), c.tenant.clone(), c.channel.clone(), c.user.clone());
    let announce = {
        let mut counts = state.presence.borrow_mut();
        if c.online {
            let n = counts.entry(key).or_insert(0);
            *n += 1;
            *n == 1
        } else {
            match counts.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => counts.remove(&key).is_some(),
                None => false,
            }
        }
    };
    if !announce {
        return;
    }
    let room = channel_room(&c.tenant, &c.channel);
    let body = presence(&c.channel, &c.user, if c.online { "online" } else { "offline" });
    let to = io.of(&c.nsp).to(&room);
    if c.online {
        to.except_socket(&c.socket).emit(shard, "presence:update", &body);
    } else {
        to.emit(shard, "presence:update", &body);
    }
}

fn presence(channel: &str, user_id: &str, status: &str) -> String {
    #[derive(Serialize)]
    struct Presence<'a> {
        channel_id: &'a str,
        user_id: &'a str,
        status: &'a str,
        timestamp: i64,
    }
    json(&Presence { channel_id: channel, user_id, status, timestamp: chat::now_ms() })
}

/// The event's first argument as `T`, or an ack with `bad_data`.
fn arg<T: serde::de::DeserializeOwned>(shard: &Shard, s: &Socket, ev: &Event<'_>) -> Option<T> {
    match ev.args::<(T,)>() {
        Ok((v,)) => Some(v),
        Err(e) => {
            ack(shard, s, ev, &failure("bad_data", &e.to_string()));
            None
        }
    }
}

/// Whether the socket's user may use `channel`; answers the ack when not.
fn member(shard: &Shard, s: &Socket, ev: &Event<'_>, channel: &str) -> bool {
    let max = shard.node.config.limits.max_name_bytes;
    if let Err(e) = crate::limits::validate_name("channel", channel, max) {
        crate::metrics::add(&shard.stats.limit_names, 1);
        ack(shard, s, ev, &failure("invalid_name", &e.to_string()));
        return false;
    }
    let members = shard.service::<crate::membership::Members>();
    if !members.is_some_and(|m| m.is_member(&s.identity.tenant, channel, &s.identity.user_id)) {
        ack(shard, s, ev, &failure("forbidden", "not a member of this channel"));
        return false;
    }
    true
}

fn with_message<T: serde::de::DeserializeOwned>(
    shard: &Shard,
    s: &Socket,
    ev: &Event<'_>,
    ids: impl Fn(&T) -> (&String, &String),
) -> Option<(T, ConversationKey, MessageId)> {
    let d = arg::<T>(shard, s, ev)?;
    let (channel, message) = ids(&d);
    if !member(shard, s, ev, channel) {
        return None;
    }
    let Ok(id) = message.parse::<MessageId>() else {
        ack(shard, s, ev, &failure("bad_data", "message_id is not a message id"));
        return None;
    };
    let conversation = ConversationKey::room(&s.identity.tenant, channel);
    Some((d, conversation, id))
}

fn join(shard: &Shard, s: &Rc<Socket>, ev: &Event<'_>, join: bool) {
    #[derive(Deserialize)]
    struct Join {
        channel_id: String,
    }
    let Some(d) = arg::<Join>(shard, s, ev) else { return };
    let Some(io) = shard.service::<SocketIo>() else { return };
    let room = channel_room(&s.identity.tenant, &d.channel_id);
    if join {
        if !member(shard, s, ev, &d.channel_id) {
            return;
        }
        let already = s.rooms().iter().any(|r| **r == *room);
        if let Err(e) = s.join(&io, &room) {
            return ack(shard, s, ev, &failure("too_many", &e.to_string()));
        }
        // Joining again is not news.
        if !already {
            post_presence(shard, s, &d.channel_id, true);
        }
    } else {
        // Only a socket that was in the channel may tell it that it went offline.
        if s.leave(&io, &room) {
            post_presence(shard, s, &d.channel_id, false);
        }
    }
    ack(shard, s, ev, r#"{"ok":true}"#);
}

fn send(shard: &Shard, s: &Rc<Socket>, ev: Event<'_>) {
    #[derive(Deserialize)]
    struct Send {
        channel_id: String,
        body: String,
        content_type: Option<String>,
        client_msg_id: Option<String>,
    }
    let Some(d) = arg::<Send>(shard, s, &ev) else { return };
    if !member(shard, s, &ev, &d.channel_id) {
        return;
    }
    let tenant = s.identity.tenant.clone();
    let channel: Arc<str> = d.channel_id.into();
    let new = NewMessage {
        conversation: ConversationKey::room(&tenant, &channel),
        tenant,
        author: s.identity.user_id.clone(),
        target: Target::Room(channel),
        client_msg_id: d.client_msg_id,
        body: d.body,
        content_type: d.content_type.unwrap_or_else(|| "text/plain".into()),
        created_at_ms: chat::now_ms(),
    };
    run(shard, s, &ev, ImOp::Send(new));
}

fn react(shard: &Shard, s: &Rc<Socket>, ev: &Event<'_>, add: bool) {
    #[derive(Deserialize)]
    struct React {
        channel_id: String,
        message_id: String,
        emoji: String,
    }
    let Some((d, conversation, id)) = with_message::<React>(shard, s, ev, |d| (&d.channel_id, &d.message_id)) else {
        return;
    };
    run(shard, s, ev, ImOp::React { conversation, id, user: s.identity.user_id.clone(), emoji: d.emoji, add });
}

fn typing(shard: &Shard, s: &Rc<Socket>, ev: &Event<'_>, on: bool) {
    #[derive(Deserialize)]
    struct Typing {
        channel_id: String,
    }
    let Some(d) = arg::<Typing>(shard, s, ev) else { return };
    if !member(shard, s, ev, &d.channel_id) {
        return;
    }
    #[derive(Serialize)]
    struct Out<'a> {
        channel_id: &'a str,
        user_id: &'a str,
        typing: bool,
    }
    let Some(io) = shard.service::<SocketIo>() else { return };
    let room = channel_room(&s.identity.tenant, &d.channel_id);
    let body = json(&Out { channel_id: &d.channel_id, user_id: &s.identity.user_id, typing: on });
    io.of(&s.nsp).to(&room).except_socket(&s.id).emit(shard, "typing", &body);
    ack(shard, s, ev, r#"{"ok":true}"#);
}

/// Sends an operation to its conversation's owner shard.
fn run(shard: &Shard, s: &Socket, ev: &Event<'_>, op: ImOp) {
    let conversation = match &op {
        ImOp::Send(n) => &n.conversation,
        ImOp::Edit { conversation, .. }
        | ImOp::Delete { conversation, .. }
        | ImOp::React { conversation, .. }
        | ImOp::History { conversation, .. } => conversation,
    };
    let owner = conversation.owner_shard(shard.shard_count());
    let reply = Reply { session: s.engine().id, socket: (&*s.id).into(), nsp: (&*s.nsp).into(), ack: ev.ack_id() };
    let task: ChatTask = Box::new(move |shard: Rc<Shard>, hub: Rc<Hub>| Box::pin(perform(shard, hub, op, reply)));
    chat::post(shard, owner, ChatMsg::Task(task));
}

/// An event for a channel's room: name, JSON body, tenant and channel.
type RoomEvent = (&'static str, String, Arc<str>, Arc<str>);

/// Runs an operation on the owner shard: store, broadcast to the channel, ack the client.
async fn perform(shard: Rc<Shard>, hub: Rc<Hub>, op: ImOp, reply: Reply) {
    let Some(io) = shard.service::<SocketIo>() else { return };
    let store: &Rc<dyn Store> = hub.store();
    let shard = &shard;
    let result: Result<(String, Option<RoomEvent>), StoreError> = async {
        Ok(match op {
            ImOp::Send(new) => {
                let appended = store.append(new).await?;
                let m = appended.message;
                let body = json(&wire(&m));
                let ack = format!(r#"{{"ok":true,"duplicate":{},"message":{body}}}"#, appended.duplicate);
                // A retransmission is acknowledged again but not shown twice.
                let event = (!appended.duplicate).then(|| ("message:new", body, m.tenant.clone(), channel_arc(&m)));
                (ack, event)
            }
            ImOp::Edit { conversation, id, editor, body } => {
                let m = store.edit(&conversation, id, &editor, body, chat::now_ms()).await?;
                let body = json(&wire(&m));
                (
                    format!(r#"{{"ok":true,"message":{body}}}"#),
                    Some(("message:updated", body, m.tenant.clone(), channel_arc(&m))),
                )
            }
            ImOp::Delete { conversation, id, by } => {
                let m = store.delete(&conversation, id, &by, chat::now_ms()).await?;
                #[derive(Serialize)]
                struct Deleted<'a> {
                    id: String,
                    channel_id: &'a str,
                    deleted_by: &'a str,
                    deleted_at: i64,
                }
                let body = json(&Deleted {
                    id: m.id.to_string(),
                    channel_id: channel_of(&m),
                    deleted_by: &by,
                    deleted_at: chat::now_ms(),
                });
                (r#"{"ok":true}"#.to_string(), Some(("message:deleted", body, m.tenant.clone(), channel_arc(&m))))
            }
            ImOp::React { conversation, id, user, emoji, add } => {
                let m = store.react(&conversation, id, &user, &emoji, add).await?;
                #[derive(Serialize)]
                struct Reactions<'a> {
                    message_id: String,
                    channel_id: &'a str,
                    reactions: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<Arc<str>>>,
                }
                let body = json(&Reactions {
                    message_id: m.id.to_string(),
                    channel_id: channel_of(&m),
                    reactions: &m.reactions,
                });
                (
                    format!(r#"{{"ok":true,"reactions":{}}}"#, json(&m.reactions)),
                    Some(("reaction:updated", body, m.tenant.clone(), channel_arc(&m))),
                )
            }
            ImOp::History { conversation, before, limit } => {
                let page = store.history(&conversation, before, limit).await?;
                #[derive(Serialize)]
                struct Out<'a> {
                    ok: bool,
                    messages: Vec<WireMessage<'a>>,
                    next_cursor: Option<String>,
                }
                let out = Out {
                    ok: true,
                    messages: page.messages.iter().map(wire).collect(),
                    next_cursor: page.next_cursor.map(|c| c.to_string()),
                };
                (json(&out), None)
            }
        })
    }
    .await;
    let ack_body = match result {
        Ok((ack_body, event)) => {
            if let Some((name, body, tenant, channel)) = event {
                let room = channel_room(&tenant, &channel);
                io.of(&reply.nsp).to(&room).except_socket(&reply.socket).emit(shard, name, &body);
            }
            ack_body
        }
        Err(e) => store_failure(&e),
    };
    if let Some(id) = reply.ack {
        let packet = packet::encode_ack(&reply.nsp, id, &ack_body, 0);
        let session = reply.session;
        let task: ChatTask = Box::new(move |shard: Rc<Shard>, hub: Rc<Hub>| {
            send_ack(&shard, &hub, session, packet);
            Box::pin(std::future::ready(()))
        });
        chat::post(shard, usize::from(session.shard), ChatMsg::Task(task));
    }
}

/// On the session's shard: an ack for a Socket.IO client. On a WebSocket it is paced like the
/// native protocol's acks, so a client that sends a burst of events is not closed for the acks
/// they bring back.
fn send_ack(shard: &Shard, hub: &Hub, session: Sid, packet: String) {
    use crate::engineio::packet::{Packet, Payload};
    let Some(s) = shard.service::<crate::engineio::Engine>().and_then(|e| e.get(shard, &session.to_string())) else {
        return;
    };
    let text = Packet::Message(Payload::Text(bytes::Bytes::from(packet)));
    match s.websocket() {
        Some(c) if !s.is_closed() && c.closing_since.get().is_none() => {
            let frame = crate::engineio::ws_frame(&text);
            shard.deliver_paced(&c, frame, None, hub.store_config().max_offline_per_user);
        }
        _ => s.send(shard, text),
    }
}

fn channel_arc(m: &Message) -> Arc<str> {
    channel_of(m).into()
}
