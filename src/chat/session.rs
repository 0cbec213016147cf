//! A native-protocol session at `/ws`: authenticated before the upgrade, then each text
//! message is rate-limited, decoded ([`super::envelope`]) and either handled here (built-in
//! types) or routed to the application ([`super::router`]).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::envelope::{self, encode, encode_error, ClientMsg, ErrorCode, Inbound, Recipient};
use super::router::{ChatApp, DisconnectInfo, Request, SessionInfo};
use super::{home_shard, post, ChatMsg, Delivery, UserKey};
use crate::auth::Identity;
use crate::http::parse::RequestHead;
use crate::http::Response;
use crate::limits::{validate_name, TokenBucket};
use crate::metrics::{self, CloseReason};
use crate::shard::conn::Conn;
use crate::shard::{Shard, WsHandler};
use crate::store::{ConversationKey, MessageId, NewMessage, Target};
use crate::ws::codec::encode_text;

/// Decides an upgrade to `/ws`: origin (403), token (401), then the application's
/// `on_connect`. Nothing is allocated for the session unless all pass.
pub fn accept(shard: &Shard, head: &RequestHead) -> Result<Rc<NativeWs>, Response> {
    let refuse = |e: crate::shard::MissingService| Response::refusal(500, "internal", &e.to_string());
    let identity = shard.require::<crate::auth::Gate>().map_err(refuse)?.check(head)?;
    let hub = shard.require::<super::Hub>().map_err(refuse)?;
    let members = shard.require::<crate::membership::Members>().map_err(refuse)?;
    let app = shard.service::<ChatApp>();
    if let Some(app) = &app {
        if let Err(r) = app.connect(&identity, head) {
            return Err(Response::refusal(r.status, "refused", &r.message));
        }
    }
    Ok(Rc::new(NativeWs::new(shard, identity, app, hub, members)))
}

/// One native session's state; the handler object is per connection.
pub struct NativeWs {
    identity: Rc<Identity>,
    hub: Rc<super::Hub>,
    members: Rc<crate::membership::Members>,
    user: UserKey,
    app: Option<Rc<ChatApp>>,
    state: RefCell<State>,
}

struct State {
    bucket: Option<TokenBucket>,
    /// Room keys in the shard's room table.
    rooms: Vec<Arc<str>>,
    watching: HashSet<Arc<str>>,
}

/// The shard room-table key of a native room (kept apart from other protocols' rooms).
fn room_key(tenant: &str, room: &str) -> Arc<str> {
    format!("native\u{0}{tenant}\u{0}{room}").into()
}

impl NativeWs {
    fn new(
        shard: &Shard,
        identity: Identity,
        app: Option<Rc<ChatApp>>,
        hub: Rc<super::Hub>,
        members: Rc<crate::membership::Members>,
    ) -> Self {
        let user = UserKey { tenant: identity.tenant.clone(), user: identity.user_id.clone() };
        let bucket = shard.node.config.limits.rate.map(|r| TokenBucket::new(r, Instant::now()));
        Self {
            identity: Rc::new(identity),
            hub,
            members,
            user,
            app,
            state: RefCell::new(State { bucket, rooms: Vec::new(), watching: HashSet::new() }),
        }
    }

    fn send(&self, shard: &Shard, conn: &Conn, text: String) {
        shard.deliver(conn, encode_text(&text));
    }

    fn error(&self, shard: &Shard, conn: &Conn, id: Option<&str>, msg_id: Option<&str>, code: ErrorCode, m: &str) {
        self.send(shard, conn, encode_error(id, msg_id, code, m));
    }

    /// Takes a token from the session's bucket; false when the rate is exceeded.
    fn within_rate(&self, shard: &Shard) -> bool {
        let Some(limit) = shard.node.config.limits.rate else { return true };
        let mut st = self.state.borrow_mut();
        match &mut st.bucket {
            Some(b) => b.take(limit, Instant::now()),
            None => true,
        }
    }

    fn handle(&self, shard: &Shard, conn: &Rc<Conn>, inbound: Inbound<'_>) {
        let id = inbound.id.as_deref();
        let limits = &shard.node.config.limits;
        let shards = shard.shard_count();
        match inbound.msg {
            ClientMsg::Ping => {
                #[derive(Serialize)]
                struct Pong {
                    timestamp: i64,
                }
                self.send(shard, conn, encode("pong", id, &Pong { timestamp: super::now_ms() }));
            }
            ClientMsg::Chat { msg_id, to, content, content_type } => {
                let max_body = self.hub.store_config().max_body_bytes;
                if content.len() > max_body {
                    let m = format!("content is longer than {max_body} bytes");
                    return self.error(shard, conn, id, msg_id.as_deref(), ErrorCode::TooLarge, &m);
                }
                if let Some(m) = &msg_id {
                    if m.is_empty() || m.len() > limits.max_name_bytes {
                        let text = "msgId must be 1 to max_name_bytes bytes";
                        return self.error(shard, conn, id, Some(m), ErrorCode::BadData, text);
                    }
                }
                let tenant = &self.identity.tenant;
                let (conversation, target, delivery) = match to {
                    Recipient::User(u) => {
                        if let Err(e) = validate_name("user", &u, limits.max_name_bytes) {
                            metrics::add(&shard.stats.limit_names, 1);
                            let m = e.to_string();
                            return self.error(shard, conn, id, msg_id.as_deref(), ErrorCode::InvalidName, &m);
                        }
                        let u: Arc<str> = u.into();
                        (
                            ConversationKey::direct(tenant, &self.identity.user_id, &u),
                            Target::User(u.clone()),
                            Delivery::User(UserKey { tenant: tenant.clone(), user: u }),
                        )
                    }
                    Recipient::Room(r) => {
                        if let Err(e) = validate_name("room", &r, limits.max_name_bytes) {
                            metrics::add(&shard.stats.limit_names, 1);
                            let m = e.to_string();
                            return self.error(shard, conn, id, msg_id.as_deref(), ErrorCode::InvalidName, &m);
                        }
                        if !self.members.is_member(tenant, &r, &self.identity.user_id) {
                            let m = "not a member of this room";
                            return self.error(shard, conn, id, msg_id.as_deref(), ErrorCode::Forbidden, m);
                        }
                        let key = room_key(tenant, &r);
                        let r: Arc<str> = r.into();
                        (ConversationKey::room(tenant, &r), Target::Room(r), Delivery::Room(key))
                    }
                };
                let owner = conversation.owner_shard(shards);
                let new = NewMessage {
                    tenant: tenant.clone(),
                    conversation,
                    author: self.identity.user_id.clone(),
                    target,
                    client_msg_id: msg_id,
                    body: content,
                    content_type,
                    created_at_ms: super::now_ms(),
                };
                post(
                    shard,
                    owner,
                    ChatMsg::Store { new, sender: conn.id, envelope_id: id.map(str::to_string), to: delivery },
                );
            }
            ClientMsg::Read { peer_id, msg_ids } => {
                if validate_name("user", &peer_id, limits.max_name_bytes).is_err() {
                    return self.error(shard, conn, id, None, ErrorCode::InvalidName, "bad peerId");
                }
                let mut ids = Vec::with_capacity(msg_ids.len());
                for m in &msg_ids {
                    match m.parse::<MessageId>() {
                        Ok(u) => ids.push(u),
                        Err(_) => return self.error(shard, conn, id, Some(m), ErrorCode::BadData, "not a message id"),
                    }
                }
                let conversation = ConversationKey::direct(&self.identity.tenant, &self.identity.user_id, &peer_id);
                let owner = conversation.owner_shard(shards);
                let msg = ChatMsg::Read {
                    tenant: self.identity.tenant.clone(),
                    reader: self.identity.user_id.clone(),
                    conversation,
                    ids,
                };
                post(shard, owner, msg);
            }
            ClientMsg::PresenceSubscribe { user_ids } => {
                for u in user_ids {
                    if validate_name("user", &u, limits.max_name_bytes).is_err() {
                        return self.error(shard, conn, id, None, ErrorCode::InvalidName, "bad user id");
                    }
                    let u: Arc<str> = u.into();
                    {
                        let mut st = self.state.borrow_mut();
                        if st.watching.contains(&u) {
                            continue;
                        }
                        if st.watching.len() >= limits.max_presence_subscriptions {
                            drop(st);
                            let m = "too many presence subscriptions";
                            return self.error(shard, conn, id, None, ErrorCode::TooMany, m);
                        }
                        st.watching.insert(u.clone());
                    }
                    let user = UserKey { tenant: self.identity.tenant.clone(), user: u };
                    let home = home_shard(&user.tenant, &user.user, shards);
                    post(shard, home, ChatMsg::Watch { user, watcher: conn.id });
                }
            }
            ClientMsg::PresenceUnsubscribe { user_ids } => {
                for u in user_ids {
                    let u: Arc<str> = u.into();
                    if self.state.borrow_mut().watching.remove(&u) {
                        let user = UserKey { tenant: self.identity.tenant.clone(), user: u };
                        let home = home_shard(&user.tenant, &user.user, shards);
                        post(shard, home, ChatMsg::Unwatch { user, watcher: conn.id });
                    }
                }
            }
            ClientMsg::Join { room_id } => {
                if let Err(e) = validate_name("room", &room_id, limits.max_name_bytes) {
                    metrics::add(&shard.stats.limit_names, 1);
                    return self.error(shard, conn, id, None, ErrorCode::InvalidName, &e.to_string());
                }
                if !self.members.is_member(&self.identity.tenant, &room_id, &self.identity.user_id) {
                    return self.error(shard, conn, id, None, ErrorCode::Forbidden, "not a member of this room");
                }
                let key = room_key(&self.identity.tenant, &room_id);
                {
                    let mut st = self.state.borrow_mut();
                    if !st.rooms.contains(&key) {
                        if st.rooms.len() >= limits.max_rooms_per_session {
                            drop(st);
                            metrics::add(&shard.stats.limit_rooms, 1);
                            return self.error(shard, conn, id, None, ErrorCode::TooMany, "too many rooms");
                        }
                        st.rooms.push(key.clone());
                        shard.rooms.borrow_mut().join(&key, conn.id);
                        super::cluster::join_room(shard, &key);
                    }
                }
                self.send(shard, conn, encode("joined", id, &RoomReply { room_id: &room_id }));
            }
            ClientMsg::Leave { room_id } => {
                let key = room_key(&self.identity.tenant, &room_id);
                let was_in = {
                    let mut st = self.state.borrow_mut();
                    let before = st.rooms.len();
                    st.rooms.retain(|r| *r != key);
                    st.rooms.len() < before
                };
                shard.rooms.borrow_mut().leave(&key, conn.id);
                if was_in {
                    super::cluster::leave_room(shard, &key);
                }
                self.send(shard, conn, encode("left", id, &RoomReply { room_id: &room_id }));
            }
            ClientMsg::History { with, before, limit } => {
                let before = match before.as_deref().map(str::parse::<crate::store::Cursor>) {
                    None => None,
                    Some(Ok(c)) => Some(c),
                    Some(Err(e)) => return self.error(shard, conn, id, None, ErrorCode::BadData, &e.to_string()),
                };
                let tenant = &self.identity.tenant;
                let conversation = match with {
                    Recipient::User(peer) => ConversationKey::direct(tenant, &self.identity.user_id, &peer),
                    Recipient::Room(room) => {
                        if !self.members.is_member(tenant, &room, &self.identity.user_id) {
                            return self.error(
                                shard,
                                conn,
                                id,
                                None,
                                ErrorCode::Forbidden,
                                "not a member of this room",
                            );
                        }
                        ConversationKey::room(tenant, &room)
                    }
                };
                let owner = conversation.owner_shard(shards);
                let msg = ChatMsg::History {
                    conversation,
                    before,
                    limit: limit.unwrap_or(50),
                    session: conn.id,
                    envelope_id: id.map(str::to_string),
                };
                post(shard, owner, msg);
            }
            ClientMsg::Custom { kind, data } => self.route(shard, conn, id, &kind, data),
        }
    }

    fn route(&self, shard: &Shard, conn: &Rc<Conn>, id: Option<&str>, kind: &str, data: &str) {
        let Some(app) = &self.app else {
            return self.error(shard, conn, id, None, ErrorCode::UnknownType, &format!("unknown type `{kind}`"));
        };
        let Some(me) = crate::shard::current() else { return };
        // The envelope decoder checked it is JSON; this only copies it.
        let Ok(data) = serde_json::value::RawValue::from_string(data.to_string()) else {
            return self.error(shard, conn, id, None, ErrorCode::BadData, "data is not JSON");
        };
        let req = Request {
            shard: me.clone(),
            session: conn.id,
            identity: self.identity.clone(),
            kind: kind.to_string(),
            id: id.map(str::to_string),
            data,
        };
        let Some(fut) = app.dispatch(req) else {
            return self.error(shard, conn, id, None, ErrorCode::UnknownType, &format!("unknown type `{kind}`"));
        };
        let (app, conn, identity) = (app.clone(), conn.clone(), self.identity.clone());
        let (kind, id) = (kind.to_string(), id.map(str::to_string));
        // Every handler is bounded by `chat.handler_timeout_ms`, whatever its own layers say.
        let limit = self.hub.config().handler_timeout;
        monoio::spawn(async move {
            let result = monoio::select! {
                r = fut => r,
                _ = monoio::time::sleep(limit) => Err(super::router::HandlerError::Timeout(limit)),
            };
            match result {
                Ok(Some(data)) => me.deliver(&conn, encode_text(&encode(&kind, id.as_deref(), &data))),
                Ok(None) => {}
                Err(e) => {
                    metrics::add(&me.stats.handler_errors, 1);
                    let code = match e.code() {
                        "internal" => ErrorCode::Internal,
                        "timeout" => ErrorCode::Timeout,
                        "bad_data" => ErrorCode::BadData,
                        _ => ErrorCode::Internal,
                    };
                    let text = match &e {
                        // An application's own refusal keeps its code.
                        super::router::HandlerError::Refused { code, message } => {
                            encode_error_with_code(id.as_deref(), code, message)
                        }
                        other => encode_error(id.as_deref(), None, code, &other.to_string()),
                    };
                    me.deliver(&conn, encode_text(&text));
                    app.failed(&me, &SessionInfo { id: conn.id, identity: &identity }, &kind, &e);
                }
            }
        });
    }
}

fn encode_error_with_code(id: Option<&str>, code: &str, message: &str) -> String {
    #[derive(Serialize)]
    struct E<'a> {
        code: &'a str,
        message: &'a str,
    }
    encode("error", id, &E { code, message })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoomReply<'a> {
    room_id: &'a str,
}

impl WsHandler for NativeWs {
    fn on_open(&self, shard: &Rc<Shard>, conn: &Rc<Conn>) {
        // The home shard answers `connected` (with the online count that includes this user)
        // and then pushes the offline queue, in that order.
        let home = home_shard(&self.user.tenant, &self.user.user, shard.shard_count());
        post(shard, home, ChatMsg::Register { user: self.user.clone(), session: conn.id });
    }

    fn on_message(&self, shard: &Shard, conn: &Rc<Conn>, msg: tungstenite::Message) {
        if conn.closing_since.get().is_some() {
            return;
        }
        if !self.within_rate(shard) {
            metrics::add(&shard.stats.limit_rate, 1);
            let limit = shard.node.config.limits.rate.map(|r| r.per_second).unwrap_or(0);
            let m = format!("more than {limit} messages per second");
            self.error(shard, conn, None, None, ErrorCode::RateLimited, &m);
            shard.close_session_keeping_data(conn, 1008, "rate limit exceeded", CloseReason::Policy);
            return;
        }
        let text = match &msg {
            tungstenite::Message::Text(t) => t.as_str(),
            _ => {
                let m = "the native protocol is JSON text; binary messages are not accepted";
                return self.error(shard, conn, None, None, ErrorCode::BadJson, m);
            }
        };
        match envelope::decode(text) {
            Ok(inbound) => self.handle(shard, conn, inbound),
            Err(e) => self.error(shard, conn, e.id.as_deref(), None, e.code, &e.message),
        }
    }

    fn on_close(&self, shard: &Shard, conn: &Rc<Conn>) {
        // What still waits for room in the queue is let go by the session driver, after this.
        let shards = shard.shard_count();
        let home = home_shard(&self.user.tenant, &self.user.user, shards);
        post(shard, home, ChatMsg::Unregister { user: self.user.clone(), session: conn.id });
        let st = self.state.borrow();
        for key in &st.rooms {
            super::cluster::leave_room(shard, key);
        }
        for u in &st.watching {
            let user = UserKey { tenant: self.identity.tenant.clone(), user: u.clone() };
            let home = home_shard(&user.tenant, &user.user, shards);
            post(shard, home, ChatMsg::Unwatch { user, watcher: conn.id });
        }
        if let Some(app) = &self.app {
            let reason = conn.close_reason.get().unwrap_or(CloseReason::Client);
            let info = DisconnectInfo::new(reason, conn.close_code.get());
            app.disconnected(shard, &SessionInfo { id: conn.id, identity: &self.identity }, &info);
        }
    }
}

/// Frames a text for a session (used by the application API).
pub fn frame(kind: &str, data: &impl Serialize) -> Bytes {
    encode_text(&encode(kind, None, data))
}
