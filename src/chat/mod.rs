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

mod config;
pub mod envelope;
pub mod router;
pub mod session;

pub use config::{ChatConfig, ChatSection, DuplicateLogin};

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::Hash;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::metrics::{self, CloseReason};
use crate::shard::conn::ConnId;
use crate::shard::pacing::Tracked;
use crate::shard::{Shard, ShardMsg, ShardService};
use crate::store::{ConversationKey, Message, MessageId, NewMessage, Store, Target};
use envelope::{encode, encode_ack, encode_error, encode_presence, AckStatus, ErrorCode};

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
    },
    /// To the recipient's home shard: a session of `targets` closed before the message
    /// reached it. When every target missed it, the home shard routes it again (to sessions
    /// opened since, or the offline queue), so a message is never dropped between devices.
    Missed {
        message: Arc<Message>,
        sender: Option<ConnId>,
        targets: Arc<[ConnId]>,
    },
    /// To the conversation's owner: a message reached a recipient session. `sender` is the
    /// session that sent it, when the message was routed live; a message from the offline
    /// queue acknowledges to every session of its author instead.
    Delivered {
        conversation: ConversationKey,
        id: MessageId,
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
    /// To the user's home shard: which sessions does the user have? Answered with
    /// [`ChatMsg::Sessions`] to shard `from`.
    /// To a session's shard: a frame for it, paced like deliveries.
    Paced {
        session: ConnId,
        frame: Bytes,
    },
    /// Work of another protocol that must run in order with this worker's (the IM events of
    /// Socket.IO use the same store and owners): run by the worker, awaited before the next.
    Task(ChatTask),
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

/// A user whose home is this shard.
#[derive(Default)]
struct HomeEntry {
    /// Open sessions, oldest first.
    sessions: Vec<ConnId>,
    watchers: HashSet<ConnId>,
}

/// One shard's chat state: its share of the directory, its store partition and its worker's
/// queue.
pub struct Hub {
    config: ChatConfig,
    /// `[store]`: the offline bound doubles as the bound on what waits behind a full queue.
    store_cfg: crate::store::StoreConfig,
    store: Rc<dyn Store>,
    homes: RefCell<HashMap<UserKey, HomeEntry>>,
    inbox: RefCell<VecDeque<ChatMsg>>,
    worker: RefCell<Option<Waker>>,
    misses: RefCell<Misses>,
    /// The ring pump, waiting for the inbox to drain below [`INBOX_LOW`].
    room_waiter: RefCell<Option<Waker>>,
}

/// Queued chat work above which the shard stops taking messages off its rings.
const INBOX_HIGH: usize = 65_536;
/// Queued chat work below which it takes them again.
const INBOX_LOW: usize = INBOX_HIGH / 2;

impl Hub {
    /// Starts the chat hub of a shard: registers it and spawns its worker.
    pub fn start(
        shard: &Rc<Shard>,
        config: ChatConfig,
        store_cfg: crate::store::StoreConfig,
        store: Rc<dyn Store>,
    ) -> Rc<Hub> {
        let hub = Rc::new(Hub::new(config, store_cfg, store));
        shard.add_service(hub.clone());
        monoio::spawn(worker(shard.clone(), hub.clone()));
        hub
    }

    fn new(config: ChatConfig, store_cfg: crate::store::StoreConfig, store: Rc<dyn Store>) -> Self {
        Self {
            config,
            store_cfg,
            store,
            homes: RefCell::new(HashMap::new()),
            inbox: RefCell::new(VecDeque::new()),
            worker: RefCell::new(None),
            misses: RefCell::new(Misses::default()),
            room_waiter: RefCell::new(None),
        }
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    pub fn store_config(&self) -> &crate::store::StoreConfig {
        &self.store_cfg
    }

    /// This shard's partition of the message store.
    pub fn store(&self) -> &Rc<dyn Store> {
        &self.store
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
    if to != shard.index {
        let accept = move |shard: &Rc<Shard>| {
            if let Some(hub) = shard.service::<Hub>() {
                hub.accept(msg);
            }
        };
        return shard.post(to, ShardMsg::Invoke(Box::new(accept)));
    }
    if let Some(hub) = shard.service::<Hub>() {
        hub.accept(msg);
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
pub async fn identity_sessions(shard: &Shard, tenant: &str, user: &str) -> Vec<ConnId> {
    let user = UserKey { tenant: tenant.into(), user: user.into() };
    let home = home_shard(&user.tenant, &user.user, shard.shard_count());
    // Asked of the home shard's worker, so the answer is in order with the logins before it.
    let ask = move |home: Rc<Shard>| async move {
        let Some(hub) = home.service::<Hub>() else { return Vec::new() };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let query: ChatTask = Box::new(move |_, hub: Rc<Hub>| {
            Box::pin(async move {
                let _ = tx.send(hub.sessions_of(&user));
            })
        });
        hub.accept(ChatMsg::Task(query));
        rx.await.unwrap_or_default()
    };
    let Some(shard) = crate::shard::current().filter(|s| s.index == shard.index) else { return Vec::new() };
    let answer = monoio::select! {
        r = shard.call(home, ask) => r,
        _ = monoio::time::sleep(Duration::from_secs(5)) => None,
    };
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
async fn worker(shard: Rc<Shard>, hub: Rc<Hub>) {
    loop {
        let next = poll_fn(|cx| hub.poll_next(cx)).await;
        handle(&shard, &hub, next).await;
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

async fn handle(shard: &Rc<Shard>, hub: &Rc<Hub>, msg: ChatMsg) {
    match msg {
        ChatMsg::Register { user, session } => register(shard, hub, user, session).await,
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
        ChatMsg::Store { new, sender, envelope_id, to } => store(shard, hub, new, sender, envelope_id, to).await,
        ChatMsg::Route { user, message, sender } => route(shard, hub, user, *message, sender).await,
        ChatMsg::Deliver { session, frame, message, sender, targets } => {
            let routed = Box::new(Routed { message, sender, targets });
            match shard.session(session) {
                Some(c) if c.closing_since.get().is_none() => {
                    shard.deliver_paced(&c, frame, Some(routed), hub.store_cfg.max_offline_per_user)
                }
                // The session closed on the way.
                _ => routed.lost(shard),
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
                let sessions: Vec<ConnId> = hub
                    .homes
                    .borrow()
                    .get(&user)
                    .map(|e| e.sessions.iter().filter(|s| !targets.contains(s)).copied().collect())
                    .unwrap_or_default();
                deliver_or_queue(shard, hub, user, message, sender, sessions).await;
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
        ChatMsg::Paced { session, frame } => send_paced(shard, session, frame),
        ChatMsg::Task(task) => task(shard.clone(), hub.clone()).await,
        ChatMsg::History { conversation, before, limit, session, envelope_id } => {
            let reply = match hub.store.history(&conversation, before, limit).await {
                Ok(page) => encode_history(envelope_id.as_deref(), &page),
                Err(e) => encode_error(envelope_id.as_deref(), None, ErrorCode::StoreFailed, &e.to_string()),
            };
            shard.send_to(session, text(reply));
        }
    }
}

/// A stored message routed to a recipient's sessions: what it takes to route it again.
struct Routed {
    message: Arc<Message>,
    /// The session that sent it, for its `delivered` ack.
    sender: Option<ConnId>,
    /// Every session it was routed to.
    targets: Arc<[ConnId]>,
}

impl Tracked for Routed {
    /// Reported when queued rather than once written: the ack then shares the sender's next
    /// write with its `sent` ack (a third fewer writes in a chat), and a message that no write
    /// took is routed again anyway.
    fn queued(&self, shard: &Shard) {
        let conversation = self.message.conversation.clone();
        let owner = conversation.owner_shard(shard.shard_count());
        post(shard, owner, ChatMsg::Delivered { conversation, id: self.message.id, sender: self.sender });
    }

    /// The message did not reach its session: its recipient's home shard routes it again if
    /// no session of the user got it.
    fn lost(self: Box<Self>, shard: &Shard) {
        let Routed { message, sender, targets } = *self;
        metrics::add(&shard.stats.chat_missed, 1);
        if let Target::User(u) = &message.target {
            let user = UserKey { tenant: message.tenant.clone(), user: u.clone() };
            post_home(shard, &user, ChatMsg::Missed { message, sender, targets });
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

impl Hub {
    /// The sessions a user of this home shard has.
    fn sessions_of(&self, user: &UserKey) -> Vec<ConnId> {
        self.homes.borrow().get(user).map(|e| e.sessions.clone()).unwrap_or_default()
    }
}

impl ShardService for Hub {
    /// Copies the store's eviction counts into the shard's metrics.
    fn on_tick(&self, shard: &Shard) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.store.stats();
        let stats = &shard.stats;
        stats.store_evicted_conversations.store(s.evicted_conversations, Relaxed);
        stats.store_evicted_messages.store(s.evicted_messages, Relaxed);
        stats.store_forgotten_dedup.store(s.forgotten_dedup, Relaxed);
    }

    /// Ready while the worker's queue is below its high watermark; otherwise once it has
    /// drained to the low one. A worker that falls behind makes the rings, and through them the
    /// senders, wait instead of growing its queue without bound.
    fn poll_ring_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.inbox.borrow().len() < INBOX_HIGH {
            Poll::Ready(())
        } else {
            *self.room_waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

async fn register(shard: &Rc<Shard>, hub: &Hub, user: UserKey, session: ConnId) {
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
        let kick: Vec<ConnId> = e.sessions.drain(..excess).collect();
        let watchers: Vec<ConnId> = if first { e.watchers.iter().copied().collect() } else { Vec::new() };
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
    let targets: Arc<[ConnId]> = Arc::from([session]);
    for m in queued {
        let frame = encode_message(&m);
        let msg = ChatMsg::Deliver { session, frame, message: Arc::new(m), sender: None, targets: targets.clone() };
        post(shard, usize::from(session.shard), msg);
    }
}

async fn store(
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

async fn route(shard: &Rc<Shard>, hub: &Hub, user: UserKey, message: Message, sender: ConnId) {
    let sessions = hub.sessions_of(&user);
    deliver_or_queue(shard, hub, user, Arc::new(message), Some(sender), sessions).await;
}

/// On the recipient's home shard: the message to each of `sessions`, or to the offline queue
/// when there are none.
async fn deliver_or_queue(
    shard: &Rc<Shard>,
    hub: &Hub,
    user: UserKey,
    message: Arc<Message>,
    sender: Option<ConnId>,
    sessions: Vec<ConnId>,
) {
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
    let targets: Arc<[ConnId]> = sessions.into();
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
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let store: Rc<dyn Store> = Rc::new(crate::store::MemoryStore::new(Default::default()));
        let hub = Hub::new(ChatConfig::default(), Default::default(), store);
        let pumped = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(pumped.clone());
        let mut cx = Context::from_waker(&waker);
        let kick = || ChatMsg::Kick { session: ConnId::new(0, 0, 0) };
        assert!(hub.poll_ring_ready(&mut cx).is_ready(), "an empty queue has room");
        for _ in 0..INBOX_HIGH {
            hub.accept(kick());
        }
        assert!(hub.poll_ring_ready(&mut cx).is_pending(), "a full queue makes the pump wait");
        let worker = Waker::noop();
        let mut wcx = Context::from_waker(worker);
        while hub.inbox.borrow().len() >= INBOX_LOW {
            assert_eq!(pumped.0.load(Ordering::SeqCst), 0, "not woken above the low watermark");
            assert!(hub.poll_next(&mut wcx).is_ready());
        }
        assert!(hub.poll_next(&mut wcx).is_ready());
        assert_eq!(pumped.0.load(Ordering::SeqCst), 1, "woken once below it");
        assert!(hub.poll_ring_ready(&mut cx).is_ready());
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
