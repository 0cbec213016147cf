//! Identities and chat on a node: who is online where, presence, and message delivery with
//! `sent` / `delivered` / `read` acknowledgements, for the native protocol at `/ws`
//! ([`session`]) and the embeddable API ([`router`]).
//!
//! # Ownership (shared nothing)
//! - A user's **home shard**, `hash(tenant, user) % shards`, keeps the user's sessions (on any
//!   shard), the sessions watching the user's presence, and the user's offline queue. Logins,
//!   logouts and deliveries to the user are all serialised there, so a message can never fall
//!   between "the user has no session" and "the user just connected".
//! - A conversation's **owner shard**, `hash(conversation key) % shards`, stores its messages,
//!   de-duplicates client `msgId`s and assigns order, and sends the sender's acks.
//!
//! A direct message from A (session on shard S) to B travels S → owner(conversation) [stored,
//! `ack sent` to S] → home(B) [to each of B's sessions, or B's offline queue] → each session's
//! shard [queued on the socket] → owner(conversation) [marked delivered once, `ack delivered`
//! to S]. Every hop is a FIFO ring (or the local queue when both ends are one shard), and the
//! acks for one message both travel owner → S on one ring, so a sender sees `sent` before
//! `delivered`, and its messages' acks in the order it sent them.
//!
//! Each shard runs one chat worker that takes [`ChatMsg`]s in arrival order and awaits the
//! store for each, so store operations of one conversation happen in order even when the
//! store answers asynchronously.

pub mod envelope;
pub mod router;
pub mod session;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::metrics::{self, CloseReason};
use crate::shard::session::{Conn, SessionId};
use crate::shard::{Shard, ShardMsg};
use crate::store::{ConversationKey, Message, MessageId, NewMessage, Store, Target};
use envelope::{encode, encode_ack, encode_error, encode_presence, AckStatus, ErrorCode};

/// What a second login of the same user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateLogin {
    /// Every session stays (several devices).
    Allow,
    /// The oldest session gets `kicked` and is closed with 4001.
    KickOldest,
}

/// `[chat]`: the native protocol.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSection {
    /// What a second login of the same user does: `allow` or `kick_oldest`. Default `allow`.
    pub duplicate_login: DuplicateLogin,
    /// Most sessions one user may have at once under `allow`; the oldest is kicked beyond it.
    /// Default 16.
    pub max_sessions_per_user: usize,
    /// Longest an application route's handler may run before the client is answered
    /// `error timeout`, in milliseconds (an application's own `Timeout` layer may be
    /// stricter). Default 5000.
    pub handler_timeout_ms: u64,
}

impl Default for ChatSection {
    fn default() -> Self {
        Self { duplicate_login: DuplicateLogin::Allow, max_sessions_per_user: 16, handler_timeout_ms: 5000 }
    }
}

/// The resolved `[chat]`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatConfig {
    pub duplicate_login: DuplicateLogin,
    pub max_sessions_per_user: usize,
    pub handler_timeout: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        let s = ChatSection::default();
        Self {
            duplicate_login: s.duplicate_login,
            max_sessions_per_user: s.max_sessions_per_user,
            handler_timeout: Duration::from_millis(s.handler_timeout_ms),
        }
    }
}

/// Close code of a session kicked by a newer login of the same user.
pub const CLOSE_KICKED: u16 = 4001;

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
        session: SessionId,
    },
    /// To the user's home shard: a session of the user closed.
    Unregister {
        user: UserKey,
        session: SessionId,
    },
    /// To `user`'s home shard: `watcher` wants `online`/`offline` for `user`.
    Watch {
        user: UserKey,
        watcher: SessionId,
    },
    Unwatch {
        user: UserKey,
        watcher: SessionId,
    },
    /// To the conversation's owner: store, ack `sent` to `sender`, then deliver.
    Store {
        new: NewMessage,
        sender: SessionId,
        envelope_id: Option<String>,
        to: Delivery,
    },
    /// To the recipient's home shard: a stored message for every session of `user`, or the
    /// offline queue.
    Route {
        user: UserKey,
        message: Box<Message>,
        sender: SessionId,
    },
    /// To a session's shard: a stored message to queue on that session, one of `targets`
    /// (the recipient's sessions when its home shard routed it).
    Deliver {
        session: SessionId,
        frame: Bytes,
        message: Arc<Message>,
        sender: Option<SessionId>,
        targets: Arc<[SessionId]>,
    },
    /// To the recipient's home shard: a session of `targets` closed before the message
    /// reached it. When every target missed it, the home shard routes it again (to sessions
    /// opened since, or the offline queue), so a message is never dropped between devices.
    Missed {
        message: Arc<Message>,
        sender: Option<SessionId>,
        targets: Arc<[SessionId]>,
    },
    /// To the conversation's owner: a message reached a recipient session. `sender` is the
    /// session that sent it, when the message was routed live; a message from the offline
    /// queue acknowledges to every session of its author instead.
    Delivered {
        conversation: ConversationKey,
        id: MessageId,
        sender: Option<SessionId>,
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
        session: SessionId,
    },
    /// To the user's home shard: which sessions does the user have? Answered with
    /// [`ChatMsg::Sessions`] to shard `from`.
    Query {
        user: UserKey,
        from: usize,
        token: u64,
    },
    Sessions {
        token: u64,
        sessions: Vec<SessionId>,
    },
    /// To a conversation's owner: an IM operation from Socket.IO ([`crate::app::im`]).
    Im {
        op: Box<crate::app::im::ImOp>,
        reply: crate::app::im::Reply,
    },
    /// To a session's shard: a frame for it, paced like deliveries ([`Pending::Frame`]).
    Paced {
        session: SessionId,
        frame: Bytes,
    },
    /// To a channel's owner: a Socket.IO socket entered or left it ([`crate::app::im`]).
    ImPresence(Box<crate::app::im::PresenceChange>),
    /// To an Engine.IO session's shard: a Socket.IO packet (an ack) for that session.
    SioPacket {
        session: SessionId,
        packet: String,
    },
    /// To the conversation's owner: a page of its history for `session`.
    History {
        conversation: ConversationKey,
        before: Option<crate::store::Cursor>,
        limit: usize,
        session: SessionId,
        envelope_id: Option<String>,
    },
}

/// Where a stored message goes after the `sent` ack.
pub enum Delivery {
    User(UserKey),
    Room(Arc<str>),
}

/// A user whose home is this shard.
#[derive(Default)]
struct HomeEntry {
    /// Open sessions, oldest first.
    sessions: Vec<SessionId>,
    watchers: HashSet<SessionId>,
}

/// One shard's chat state: its share of the directory, its store partition and its worker's
/// queue.
pub struct Hub {
    config: ChatConfig,
    store: Rc<dyn Store>,
    homes: RefCell<HashMap<UserKey, HomeEntry>>,
    inbox: RefCell<VecDeque<ChatMsg>>,
    worker: RefCell<Option<Waker>>,
    queries: RefCell<HashMap<u64, tokio::sync::oneshot::Sender<Vec<SessionId>>>>,
    next_query: Cell<u64>,
    misses: RefCell<Misses>,
    /// The ring pump, waiting for the inbox to drain below [`INBOX_LOW`].
    room_waiter: RefCell<Option<Waker>>,
    /// Stored messages waiting for room in a session's send queue, in order.
    pending: RefCell<HashMap<SessionId, VecDeque<Pending>>>,
    /// Stored messages in a session's send queue that no write has taken yet, by tag, in
    /// order: routed again if the session ends first.
    unwritten: RefCell<HashMap<SessionId, VecDeque<Unwritten>>>,
    /// For the channels this shard owns: how many sockets each user has in each (IM events).
    channel_presence: RefCell<crate::app::im::PresenceCounts>,
}

/// Queued chat work above which the shard stops taking messages off its rings.
const INBOX_HIGH: usize = 65_536;
/// Queued chat work below which it takes them again.
const INBOX_LOW: usize = INBOX_HIGH / 2;

impl Hub {
    pub fn new(config: ChatConfig, store: Rc<dyn Store>) -> Self {
        Self {
            config,
            store,
            homes: RefCell::new(HashMap::new()),
            inbox: RefCell::new(VecDeque::new()),
            worker: RefCell::new(None),
            queries: RefCell::new(HashMap::new()),
            next_query: Cell::new(0),
            misses: RefCell::new(Misses::default()),
            room_waiter: RefCell::new(None),
            pending: RefCell::new(HashMap::new()),
            unwritten: RefCell::new(HashMap::new()),
            channel_presence: RefCell::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// Resolves while the worker's queue is below its high watermark; otherwise once it has
    /// drained to the low one. The ring pump awaits it, so a worker that falls behind makes the
    /// rings, and through them the senders, wait instead of growing its queue without bound.
    pub async fn wait_for_room(&self) {
        poll_fn(|cx| {
            if self.inbox.borrow().len() < INBOX_HIGH {
                Poll::Ready(())
            } else {
                *self.room_waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    /// The next queued work for the worker; wakes the ring pump once the queue is low again.
    fn poll_next(&self, cx: &mut std::task::Context<'_>) -> Poll<ChatMsg> {
        let mut inbox = self.inbox.borrow_mut();
        match inbox.pop_front() {
            Some(m) => {
                if inbox.len() < INBOX_LOW {
                    if let Some(w) = self.room_waiter.borrow_mut().take() {
                        w.wake();
                    }
                }
                Poll::Ready(m)
            }
            None => {
                *self.worker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Queues work for this shard's worker.
    pub fn accept(&self, msg: ChatMsg) {
        self.inbox.borrow_mut().push_back(msg);
        if let Some(w) = self.worker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Sends `msg` to the chat worker of shard `to`: the local queue when that is this shard,
/// otherwise the ring (ordered behind earlier posts).
pub fn post(shard: &Shard, to: usize, msg: ChatMsg) {
    if to == shard.index {
        shard.chat.accept(msg);
    } else {
        shard.post(to, ShardMsg::Chat(Box::new(msg)));
    }
}

fn post_home(shard: &Shard, user: &UserKey, msg: ChatMsg) {
    post(shard, home_shard(&user.tenant, &user.user, shard.shard_count()), msg);
}

/// Sends a frame to every session of a user, on any shard (several devices), at the pace each
/// reads and in order with the chat messages and acks it gets: never dropped by the send
/// queue's policy.
pub fn send_to_identity(shard: &Shard, tenant: &str, user: &str, frame: Bytes) {
    let user = UserKey { tenant: tenant.into(), user: user.into() };
    post_home(shard, &user.clone(), ChatMsg::ToIdentity { user, frame });
}

/// The sessions a user has on this node, asked of the user's home shard.
pub async fn identity_sessions(shard: &Shard, tenant: &str, user: &str) -> Vec<SessionId> {
    let user = UserKey { tenant: tenant.into(), user: user.into() };
    let home = home_shard(&user.tenant, &user.user, shard.shard_count());
    if home == shard.index {
        return shard.chat.homes.borrow().get(&user).map(|e| e.sessions.clone()).unwrap_or_default();
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let token = shard.chat.next_query.get().wrapping_add(1);
    shard.chat.next_query.set(token);
    shard.chat.queries.borrow_mut().insert(token, tx);
    post(shard, home, ChatMsg::Query { user, from: shard.index, token });
    let answer = monoio::select! {
        r = rx => r.ok(),
        _ = monoio::time::sleep(Duration::from_secs(5)) => None,
    };
    shard.chat.queries.borrow_mut().remove(&token);
    answer.unwrap_or_default()
}

/// Whether a user has a session anywhere on this node.
pub async fn is_online(shard: &Shard, tenant: &str, user: &str) -> bool {
    !identity_sessions(shard, tenant, user).await.is_empty()
}

/// Distinct users online on the node.
pub fn online_count(shard: &Shard) -> u64 {
    shard.node.stats.iter().map(|s| metrics::get(&s.identities_online)).sum()
}

/// The shard's chat worker: takes queued work in order and awaits the store for each.
pub async fn worker(shard: Rc<Shard>) {
    loop {
        let next = poll_fn(|cx| shard.chat.poll_next(cx)).await;
        handle(&shard, next).await;
    }
}

/// The `chat` message a recipient receives.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatOut<'a> {
    msg_id: String,
    from_user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a str>,
    content: &'a str,
    content_type: &'a str,
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
}

fn chat_out(m: &Message) -> ChatOut<'_> {
    let (to_user_id, room_id) = match &m.target {
        Target::User(u) => (Some(&**u), None),
        Target::Room(r) => (None, Some(&**r)),
    };
    ChatOut {
        msg_id: m.id.to_string(),
        from_user_id: &m.author,
        to_user_id,
        room_id,
        content: &m.body,
        content_type: &m.content_type,
        created_at: m.created_at_ms,
        client_msg_id: m.client_msg_id.as_deref(),
    }
}

/// `history {messages, nextCursor}`: the messages as recipients get them, newest first.
fn encode_history(id: Option<&str>, page: &crate::store::Page) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct History<'a> {
        messages: Vec<ChatOut<'a>>,
        next_cursor: Option<String>,
    }
    let h = History {
        messages: page.messages.iter().filter(|m| !m.deleted).map(chat_out).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    };
    encode("history", id, &h)
}

/// Encodes a stored message as the `chat` a recipient gets.
pub fn encode_message(m: &Message) -> Bytes {
    crate::ws::codec::encode_text(&encode("chat", None, &chat_out(m)))
}

fn text(s: String) -> Bytes {
    crate::ws::codec::encode_text(&s)
}

async fn handle(shard: &Rc<Shard>, msg: ChatMsg) {
    let hub = &shard.chat;
    match msg {
        ChatMsg::Register { user, session } => register(shard, user, session).await,
        ChatMsg::Unregister { user, session } => {
            let mut homes = hub.homes.borrow_mut();
            let Some(e) = homes.get_mut(&user) else { return };
            let before = e.sessions.len();
            e.sessions.retain(|s| *s != session);
            if before > 0 && e.sessions.is_empty() {
                metrics::sub(&shard.stats.identities_online, 1);
                let frame = text(encode_presence(false, &user.user, now_ms()));
                for w in &e.watchers {
                    shard.send_to(*w, frame.clone());
                }
            }
            if e.sessions.is_empty() && e.watchers.is_empty() {
                homes.remove(&user);
            }
        }
        ChatMsg::Watch { user, watcher } => {
            let online = {
                let mut homes = hub.homes.borrow_mut();
                let e = homes.entry(user.clone()).or_default();
                e.watchers.insert(watcher);
                !e.sessions.is_empty()
            };
            // The current state, so the watcher need not guess until the next change.
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct State<'a> {
                user_id: &'a str,
                online: bool,
            }
            shard.send_to(watcher, text(encode("presence", None, &State { user_id: &user.user, online })));
        }
        ChatMsg::Unwatch { user, watcher } => {
            let mut homes = hub.homes.borrow_mut();
            if let Some(e) = homes.get_mut(&user) {
                e.watchers.remove(&watcher);
                if e.sessions.is_empty() && e.watchers.is_empty() {
                    homes.remove(&user);
                }
            }
        }
        ChatMsg::Store { new, sender, envelope_id, to } => store(shard, new, sender, envelope_id, to).await,
        ChatMsg::Route { user, message, sender } => route(shard, user, *message, sender).await,
        ChatMsg::Deliver { session, frame, message, sender, targets } => {
            let p = Pending::Message { frame, routed: Routed { message, sender, targets } };
            match shard.session(session) {
                Some(c) if c.closing_since.get().is_none() => deliver_paced(shard, &c, p),
                // The session closed on the way.
                _ => missed(shard, p),
            }
        }
        ChatMsg::Missed { message, sender, targets } => {
            let all_missed = {
                let mut misses = hub.misses.borrow_mut();
                let n = misses.count(message.id);
                n >= targets.len()
            };
            if all_missed {
                hub.misses.borrow_mut().forget(message.id);
                let Target::User(u) = &message.target else { return };
                let user = UserKey { tenant: message.tenant.clone(), user: u.clone() };
                let sessions: Vec<SessionId> = hub
                    .homes
                    .borrow()
                    .get(&user)
                    .map(|e| e.sessions.iter().filter(|s| !targets.contains(s)).copied().collect())
                    .unwrap_or_default();
                deliver_or_queue(shard, user, message, sender, sessions).await;
            }
        }
        ChatMsg::Delivered { conversation, id, sender } => {
            if let Ok(true) = hub.store.mark_delivered(&conversation, id).await {
                if let Ok(Some(m)) = hub.store.get(&conversation, id).await {
                    let ack =
                        encode_ack(None, &id.to_string(), m.client_msg_id.as_deref(), AckStatus::Delivered, now_ms());
                    match sender {
                        Some(s) => send_paced(shard, s, text(ack)),
                        None => send_to_identity(shard, &m.tenant, &m.author, text(ack)),
                    }
                }
            }
        }
        ChatMsg::Read { tenant, reader, conversation, ids } => {
            let Ok(read) = hub.store.mark_read(&tenant, &reader, &conversation, &ids).await else { return };
            let now = now_ms();
            for m in read {
                let ack = encode_ack(None, &m.id.to_string(), m.client_msg_id.as_deref(), AckStatus::Read, now);
                send_to_identity(shard, &m.tenant, &m.author, text(ack));
            }
        }
        ChatMsg::ToIdentity { user, frame } => {
            let sessions = hub.homes.borrow().get(&user).map(|e| e.sessions.clone()).unwrap_or_default();
            for s in sessions {
                send_paced(shard, s, frame.clone());
            }
        }
        ChatMsg::Kick { session } => {
            if let Some(c) = shard.session(session) {
                #[derive(Serialize)]
                struct Kicked {
                    reason: &'static str,
                }
                shard.deliver(&c, text(encode("kicked", None, &Kicked { reason: "duplicate_login" })));
                shard.close_session_keeping_data(&c, CLOSE_KICKED, "kicked: duplicate login", CloseReason::Policy);
            }
        }
        ChatMsg::Query { user, from, token } => {
            let sessions = hub.homes.borrow().get(&user).map(|e| e.sessions.clone()).unwrap_or_default();
            post(shard, from, ChatMsg::Sessions { token, sessions });
        }
        ChatMsg::Sessions { token, sessions } => {
            if let Some(tx) = hub.queries.borrow_mut().remove(&token) {
                let _ = tx.send(sessions);
            }
        }
        ChatMsg::Im { op, reply } => crate::app::im::perform(shard, &hub.store, *op, reply).await,
        ChatMsg::Paced { session, frame } => send_paced(shard, session, frame),
        ChatMsg::ImPresence(change) => crate::app::im::presence_changed(shard, &hub.channel_presence, *change),
        ChatMsg::History { conversation, before, limit, session, envelope_id } => {
            let reply = match hub.store.history(&conversation, before, limit).await {
                Ok(page) => encode_history(envelope_id.as_deref(), &page),
                Err(e) => encode_error(envelope_id.as_deref(), None, ErrorCode::StoreFailed, &e.to_string()),
            };
            shard.send_to(session, text(reply));
        }
        ChatMsg::SioPacket { session, packet } => {
            if let Some(s) = shard.engine.get(shard, &session.to_string()) {
                let text = crate::engineio::packet::Packet::Message(crate::engineio::packet::Payload::Text(
                    Bytes::from(packet),
                ));
                // On a WebSocket, paced like the native protocol's acks: a client that sends a
                // burst of events is not closed for the acks they bring back.
                match s.websocket() {
                    Some(c) if !s.is_closed() && c.closing_since.get().is_none() => {
                        deliver_paced(shard, &c, Pending::Frame(crate::engineio::ws_frame(&text)))
                    }
                    _ => s.send(shard, text),
                }
            }
        }
    }
}

/// A stored message on its way into one session's send queue.
enum Pending {
    /// A stored message for one of its recipient's sessions.
    Message { frame: Bytes, routed: Routed },
    /// Any other frame the server owes the session: an ack, an error about its own message, a
    /// frame sent to its identity. Paced like messages, so a client that sends a burst is not
    /// closed for the acks that burst brings back, and in order with them.
    Frame(Bytes),
}

/// Queues a stored message on a session at the pace the client reads: straight into its send
/// queue while there is room, else behind the messages already waiting for it, which the
/// session's writer pulls in as it drains ([`Hub::refill`]). A stored message is never dropped
/// by the send queue's policy; a client that lets `store.max_offline_per_user` of them pile up
/// is closed as a slow consumer, and what it had not received goes back to its home shard.
fn deliver_paced(shard: &Shard, c: &Conn, p: Pending) {
    if !c.backlogged.get() && c.queue.borrow().room() > 0 {
        return enqueue(shard, c, p);
    }
    let max = shard.node.config.store.max_offline_per_user;
    let over = {
        let mut pending = shard.chat.pending.borrow_mut();
        let q = pending.entry(c.id).or_default();
        if q.len() >= max {
            Some(p)
        } else {
            q.push_back(p);
            None
        }
    };
    c.backlogged.set(true);
    if let Some(p) = over {
        shard.close_session(c, 1008, "slow consumer", CloseReason::SlowConsumer);
        missed(shard, p);
    }
}

/// A stored message routed to a recipient's sessions: what it takes to route it again.
struct Routed {
    message: Arc<Message>,
    /// The session that sent it, for its `delivered` ack.
    sender: Option<SessionId>,
    /// Every session it was routed to.
    targets: Arc<[SessionId]>,
}

/// A stored message in a session's send queue that no write has taken yet: if the session
/// ends first, it is routed again ([`Hub::drop_pending`]).
struct Unwritten {
    tag: u32,
    routed: Routed,
}

/// Puts a stored message in the session's send queue and reports the delivery to the
/// conversation's owner. Until a write takes it, the session remembers it, to route it again
/// if the session ends first.
fn enqueue(shard: &Shard, c: &Conn, p: Pending) {
    match p {
        Pending::Message { frame, routed } => {
            let tag = shard.deliver_message(c, frame);
            // Reported now rather than once written: the ack then shares the sender's next
            // write with its `sent` ack (a third fewer writes in a chat), and a message that no
            // write took is routed again anyway.
            let conversation = routed.message.conversation.clone();
            let owner = conversation.owner_shard(shard.shard_count());
            post(shard, owner, ChatMsg::Delivered { conversation, id: routed.message.id, sender: routed.sender });
            let u = Unwritten { tag, routed };
            shard.chat.unwritten.borrow_mut().entry(c.id).or_default().push_back(u);
        }
        Pending::Frame(frame) => shard.deliver_owed(c, frame),
    }
}

/// A message that did not reach its session: its recipient's home shard routes it again if no
/// session of the user got it.
fn missed(shard: &Shard, p: Pending) {
    // An ack for a session that is gone has no one to tell.
    let Pending::Message { routed, .. } = p else { return };
    missed_routed(shard, routed);
}

fn missed_routed(shard: &Shard, Routed { message, sender, targets }: Routed) {
    metrics::add(&shard.stats.chat_missed, 1);
    if let Target::User(u) = &message.target {
        let user = UserKey { tenant: message.tenant.clone(), user: u.clone() };
        post_home(shard, &user, ChatMsg::Missed { message, sender, targets });
    }
}

/// Sends a session a frame at the pace it reads, in order with the stored messages and other
/// paced frames for it: see [`Pending::Frame`]. Reaches a session on another shard through
/// that shard's chat worker.
fn send_paced(shard: &Shard, session: SessionId, frame: Bytes) {
    if usize::from(session.shard) != shard.index {
        return post(shard, usize::from(session.shard), ChatMsg::Paced { session, frame });
    }
    if let Some(c) = shard.session(session) {
        if c.closing_since.get().is_none() {
            deliver_paced(shard, &c, Pending::Frame(frame));
        }
    }
}

impl Hub {
    /// Copies the store's eviction counts and the size of the sessions' backlogs into the
    /// shard's metrics.
    pub fn publish_stats(&self, stats: &crate::metrics::ShardStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.store.stats();
        stats.store_evicted_conversations.store(s.evicted_conversations, Relaxed);
        stats.store_evicted_messages.store(s.evicted_messages, Relaxed);
        stats.store_forgotten_dedup.store(s.forgotten_dedup, Relaxed);
        let backlog: usize = self.pending.borrow().values().map(VecDeque::len).sum();
        stats.send_backlog_frames.store(backlog as u64, Relaxed);
    }

    /// Moves messages waiting for a session into its send queue while it has room; called by
    /// the session's writer after each write.
    pub fn refill(&self, shard: &Shard, c: &Conn) {
        while c.queue.borrow().room() > 0 {
            let next = self.pending.borrow_mut().get_mut(&c.id).and_then(VecDeque::pop_front);
            match next {
                Some(p) => enqueue(shard, c, p),
                None => {
                    self.pending.borrow_mut().remove(&c.id);
                    c.backlogged.set(false);
                    return;
                }
            }
        }
    }

    /// A write to session `id` took its stored messages up to `tag`.
    pub fn written(&self, id: SessionId, tag: u32) {
        let mut unwritten = self.unwritten.borrow_mut();
        let Some(q) = unwritten.get_mut(&id) else { return };
        while q.front().is_some_and(|u| u.tag <= tag) {
            q.pop_front();
        }
        if q.is_empty() {
            unwritten.remove(&id);
        }
    }

    /// A session ended with messages still waiting for it, in its send queue or behind it: they
    /// go back to their recipients' home shards, oldest first.
    pub fn drop_pending(&self, shard: &Shard, id: SessionId) {
        let unwritten = self.unwritten.borrow_mut().remove(&id);
        for u in unwritten.into_iter().flatten() {
            missed_routed(shard, u.routed);
        }
        let left = self.pending.borrow_mut().remove(&id);
        for p in left.into_iter().flatten() {
            missed(shard, p);
        }
    }
}

async fn register(shard: &Rc<Shard>, user: UserKey, session: SessionId) {
    let hub = &shard.chat;
    let (first, kick, watchers) = {
        let mut homes = hub.homes.borrow_mut();
        let e = homes.entry(user.clone()).or_default();
        let first = e.sessions.is_empty();
        e.sessions.push(session);
        let keep = match hub.config.duplicate_login {
            DuplicateLogin::KickOldest => 1,
            DuplicateLogin::Allow => hub.config.max_sessions_per_user.max(1),
        };
        let excess = e.sessions.len().saturating_sub(keep);
        let kick: Vec<SessionId> = e.sessions.drain(..excess).collect();
        let watchers: Vec<SessionId> = if first { e.watchers.iter().copied().collect() } else { Vec::new() };
        (first, kick, watchers)
    };
    if first {
        metrics::add(&shard.stats.identities_online, 1);
        let frame = text(encode_presence(true, &user.user, now_ms()));
        for w in watchers {
            shard.send_to(w, frame.clone());
        }
    }
    for k in kick {
        post(shard, usize::from(k.shard), ChatMsg::Kick { session: k });
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Connected<'a> {
        user_id: &'a str,
        tenant: &'a str,
        session_id: String,
        online_count: u64,
    }
    let hello = Connected {
        user_id: &user.user,
        tenant: &user.tenant,
        session_id: session.to_string(),
        online_count: online_count(shard),
    };
    shard.send_to(session, text(encode("connected", None, &hello)));
    // Offline messages, oldest first, ahead of anything routed to the user after this point
    // (which this worker handles only once this function returns).
    let queued = match hub.store.take_offline(&user.tenant, &user.user).await {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the offline queue");
            Vec::new()
        }
    };
    let targets: Arc<[SessionId]> = Arc::from([session]);
    for m in queued {
        let frame = encode_message(&m);
        let msg = ChatMsg::Deliver { session, frame, message: Arc::new(m), sender: None, targets: targets.clone() };
        post(shard, usize::from(session.shard), msg);
    }
}

async fn store(shard: &Rc<Shard>, new: NewMessage, sender: SessionId, envelope_id: Option<String>, to: Delivery) {
    let hub = &shard.chat;
    let client_msg_id = new.client_msg_id.clone();
    let appended = match hub.store.append(new).await {
        Ok(a) => a,
        Err(e) => {
            let err =
                encode_error(envelope_id.as_deref(), client_msg_id.as_deref(), ErrorCode::StoreFailed, &e.to_string());
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
        Delivery::Room(room) => shard.post_room(&room, encode_message(&appended.message), Some(sender)),
    }
}

async fn route(shard: &Rc<Shard>, user: UserKey, message: Message, sender: SessionId) {
    let sessions = shard.chat.homes.borrow().get(&user).map(|e| e.sessions.clone()).unwrap_or_default();
    deliver_or_queue(shard, user, Arc::new(message), Some(sender), sessions).await;
}

/// On the recipient's home shard: the message to each of `sessions`, or to the offline queue
/// when there are none.
async fn deliver_or_queue(
    shard: &Rc<Shard>,
    user: UserKey,
    message: Arc<Message>,
    sender: Option<SessionId>,
    sessions: Vec<SessionId>,
) {
    let hub = &shard.chat;
    if sessions.is_empty() {
        metrics::add(&shard.stats.chat_offline_queued, 1);
        let message = Arc::try_unwrap(message).unwrap_or_else(|shared| (*shared).clone());
        match hub.store.push_offline(&user.tenant, &user.user, message).await {
            Ok(dropped) if dropped > 0 => metrics::add(&shard.stats.chat_offline_dropped, dropped as u64),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot queue an offline message"),
        }
        return;
    }
    let frame = encode_message(&message);
    let targets: Arc<[SessionId]> = sessions.into();
    for s in targets.iter().copied() {
        let msg = ChatMsg::Deliver {
            session: s,
            frame: frame.clone(),
            message: message.clone(),
            sender,
            targets: targets.clone(),
        };
        post(shard, usize::from(s.shard), msg);
    }
}

/// How many target sessions missed each message, on the recipient's home shard. Bounded: the
/// oldest counts are forgotten first (a message all but one of whose targets missed it was
/// delivered, and its count is never completed).
#[derive(Default)]
struct Misses {
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

    #[test]
    fn the_ring_pump_waits_while_the_worker_is_far_behind() {
        use std::future::Future;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let store: Rc<dyn Store> = Rc::new(crate::store::MemoryStore::new(Default::default()));
        let hub = Hub::new(ChatConfig::default(), store);
        let pumped = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(pumped.clone());
        let mut cx = Context::from_waker(&waker);
        let kick = || ChatMsg::Kick { session: SessionId::new(0, 0, 0) };
        let mut wait = Box::pin(hub.wait_for_room());
        assert!(wait.as_mut().poll(&mut cx).is_ready(), "an empty queue has room");
        for _ in 0..INBOX_HIGH {
            hub.accept(kick());
        }
        let mut wait = Box::pin(hub.wait_for_room());
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "a full queue makes the pump wait");
        let worker = Waker::noop();
        let mut wcx = Context::from_waker(worker);
        while hub.inbox.borrow().len() >= INBOX_LOW {
            assert_eq!(pumped.0.load(Ordering::SeqCst), 0, "not woken above the low watermark");
            assert!(hub.poll_next(&mut wcx).is_ready());
        }
        assert!(hub.poll_next(&mut wcx).is_ready());
        assert_eq!(pumped.0.load(Ordering::SeqCst), 1, "woken once below it");
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }

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
