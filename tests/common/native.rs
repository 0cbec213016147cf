//! A client of the native protocol (`/ws`) over a plain WebSocket (tungstenite), and a
//! two-shard node whose users log in with static tokens, for tests that drive a node the way
//! an application's clients do.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use imks::config::file::FileConfig;
use imks::{Config, Node};
use serde_json::{json, Value};
use tungstenite::Message;

use super::{start_full, ws, Ws};

/// The tenant of every user of [`static_users`].
pub const TENANT: &str = "acme";

/// `[auth]` in static mode with the token `t-<user>` for each user, all in [`TENANT`].
pub fn static_users<'a>(f: &mut FileConfig, users: impl IntoIterator<Item = &'a str>) {
    let tokens: Vec<String> = users
        .into_iter()
        .map(|u| format!("{{ token = \"t-{u}\", tenant = \"{TENANT}\", user_id = \"{u}\" }}"))
        .collect();
    let section = format!("mode = \"static\"\nstatic_tokens = [\n{}\n]\n", tokens.join(",\n"));
    f.auth = toml::from_str(&section).expect("auth section");
}

/// A node with two shards on `driver`, each on its own loopback address (shard 0 on 127.0.0.1,
/// shard 1 on 127.0.0.2), so a test chooses the shard a client lands on.
pub fn two_shards(
    driver: &str,
    tweak: impl FnOnce(&mut FileConfig),
    resolved: impl FnOnce(&mut Config),
) -> (Node, [SocketAddr; 2]) {
    let (node, _) = start_full(driver, 2, tweak, |c| {
        c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
        resolved(c);
    });
    let addrs = [node.shard_addrs(0)[0], node.shard_addrs(1)[0]];
    (node, addrs)
}

/// A native session of `user`, whose static token is `t-<user>` ([`static_users`]).
pub fn login(addr: SocketAddr, user: &str) -> Client {
    Client::connect(addr, &format!("t-{user}")).0
}

/// A two-shard node of the native-protocol cluster `prefix` over the NATS at `url`, on its own
/// loopback address, with static tokens for `users`, no rate limit, on Postgres when `db` is
/// given, after `tweak`.
pub fn cluster_node<'a>(
    prefix: &str,
    url: &str,
    users: impl IntoIterator<Item = &'a str>,
    db: Option<&super::pg::TestDb>,
    tweak: impl FnOnce(&mut FileConfig),
) -> (Node, SocketAddr) {
    super::start("io_uring", 2, |f| {
        super::listen_apart(f);
        static_users(f, users);
        f.limits.message_rate = 0;
        f.cluster = imks::cluster::ClusterSection {
            backend: imks::cluster::ClusterBackend::Nats,
            url: url.into(),
            prefix: prefix.into(),
            unsubscribe_delay_ms: 200,
            ..Default::default()
        };
        if let Some(db) = db {
            f.store = db.store_config();
        }
        tweak(f);
    })
}

/// What a node answered to one `chat` with a `msgId`.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `ack sent` with the server's id of the message.
    Sent(String),
    /// `error`, with its `code`, `reason` and `retryAfterMs`.
    Error { code: String, reason: String, retry_after_ms: Option<u64> },
}

pub struct Client {
    pub ws: Ws,
}

impl Client {
    /// Connects with `?token=` and returns the client and its `connected` message.
    pub fn connect(addr: SocketAddr, token: &str) -> (Client, Value) {
        let mut c = Client { ws: ws(addr, &format!("/ws?token={token}")) };
        let hello = c.recv();
        assert_eq!(hello["type"], "connected", "{hello}");
        (c, hello)
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    /// The next JSON message; panics on close or when none comes within the socket's read
    /// timeout (10 s).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next message of type `kind`, skipping others.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The next JSON message, or `None` once `deadline` passes without one. Reads in slices
    /// of at most 100 ms, so the deadline is kept to about that.
    pub fn recv_until(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.ws.get_mut().set_read_timeout(Some(left.min(Duration::from_millis(100)))).unwrap();
            let r = self.ws.read();
            self.ws.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            match r {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    continue
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Checks the session is open and nothing is waiting ahead of the reply: a ping's answer is
    /// the next message.
    pub fn assert_nothing_pending(&mut self, what: &str) {
        self.send(json!({"type": "ping"}));
        let next = self.recv();
        assert_eq!(next["type"], "pong", "{what}: got {next}");
    }

    pub fn chat_to(&mut self, user: &str, msg_id: &str, content: &str) {
        self.send(json!({"type": "chat", "data": {"msgId": msg_id, "toUserId": user, "content": content}}));
    }

    pub fn chat_in(&mut self, room: &str, msg_id: &str, content: &str) {
        self.send(json!({"type": "chat", "data": {"msgId": msg_id, "roomId": room, "content": content}}));
    }

    /// The answer to the `chat` with `msgId` `msg_id` (skipping everything else), or `None`
    /// once `deadline` passes without one.
    pub fn answer_until(&mut self, msg_id: &str, deadline: Instant) -> Option<Answer> {
        loop {
            let m = self.recv_until(deadline)?;
            let d = &m["data"];
            match m["type"].as_str() {
                Some("ack") if d["status"] == "sent" && d["clientMsgId"] == msg_id => {
                    return Some(Answer::Sent(d["msgId"].as_str().expect("an ack names its message").to_string()));
                }
                Some("error") if d["msgId"] == msg_id => {
                    return Some(Answer::Error {
                        code: d["code"].as_str().unwrap_or_default().to_string(),
                        reason: d["reason"].as_str().unwrap_or_default().to_string(),
                        retry_after_ms: d["retryAfterMs"].as_u64(),
                    });
                }
                _ => {}
            }
        }
    }

    /// The server id in the `sent` ack of `msg_id`; panics on an error or after 10 s.
    pub fn sent_id(&mut self, msg_id: &str) -> String {
        match self.answer_until(msg_id, Instant::now() + Duration::from_secs(10)) {
            Some(Answer::Sent(id)) => id,
            other => panic!("no sent ack for {msg_id}: {other:?}"),
        }
    }

    /// One `history` page of `data` (`peerId` or `roomId`, `before`, `limit`): its messages,
    /// newest first, and its `nextCursor`. Panics on an error.
    pub fn history_page(&mut self, data: Value) -> (Vec<Value>, Option<String>) {
        self.send(json!({"type": "history", "id": "page", "data": data}));
        loop {
            let m = self.recv();
            if m["id"] != "page" {
                continue;
            }
            assert_eq!(m["type"], "history", "{m}");
            let messages = m["data"]["messages"].as_array().expect("messages").clone();
            return (messages, m["data"]["nextCursor"].as_str().map(str::to_string));
        }
    }

    /// Every message of a conversation (`("peerId", user)` or `("roomId", room)`), oldest
    /// first, paged `limit` at a time from the newest.
    pub fn whole_history(&mut self, with: (&str, &str), limit: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut data = json!({with.0: with.1, "limit": limit});
            if let Some(c) = &before {
                data["before"] = json!(c);
            }
            let (page, next) = self.history_page(data);
            all.extend(page);
            match next {
                Some(c) => before = Some(c),
                None => break,
            }
        }
        all.reverse();
        all
    }
}
