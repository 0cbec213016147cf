//! The native JSON protocol at `/ws`, driven by a plain WebSocket client (tungstenite) against a
//! real node: auth before the upgrade, chat with sent/delivered/read acks across shards,
//! offline delivery, de-duplication, presence, duplicate logins and errors.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use imks::config::file::FileConfig;
use imks::Node;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// Static tokens for alice, bob, carol and dave in tenant `acme`, and eve in tenant `other`.
pub const STATIC_AUTH: &str = r#"
mode = "static"
static_tokens = [
  { token = "t-alice", tenant = "acme", user_id = "alice" },
  { token = "t-bob", tenant = "acme", user_id = "bob" },
  { token = "t-carol", tenant = "acme", user_id = "carol" },
  { token = "t-dave", tenant = "acme", user_id = "dave" },
  { token = "t-eve", tenant = "other", user_id = "bob" },
]
"#;

fn static_auth(f: &mut FileConfig) {
    f.auth = toml::from_str(STATIC_AUTH).expect("auth section");
}

/// A node with two shards, each on its own loopback address, so a test chooses the shard a
/// client lands on.
fn two_shards(driver: &str, tweak: impl FnOnce(&mut FileConfig)) -> (Node, [SocketAddr; 2]) {
    let (node, _) = start_full(
        driver,
        2,
        |f| {
            static_auth(f);
            tweak(f);
        },
        |c| {
            c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
        },
    );
    let addrs = [node.shard_addrs(0)[0], node.shard_addrs(1)[0]];
    (node, addrs)
}

struct Client {
    ws: Ws,
}

impl Client {
    /// Connects with `?token=` and returns the client and its `connected` message.
    fn connect(addr: SocketAddr, token: &str) -> (Client, Value) {
        let ws = ws(addr, &format!("/ws?token={token}"));
        let mut c = Client { ws };
        let hello = c.recv();
        assert_eq!(hello["type"], "connected", "{hello}");
        (c, hello)
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t)).unwrap();
    }

    /// The next JSON message; panics on close or timeout.
    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next message of type `kind`, skipping others (presence noise and the like).
    fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The close code the server ends with, reading past any messages; `None` when it ends
    /// the connection without a close frame. A read that times out fails the test.
    fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(e) if common::is_closed(&e) => return None,
                Err(e) => panic!("neither a message nor a close: {e}"),
            }
        }
    }

    fn chat_to(&mut self, user: &str, msg_id: &str, content: &str) {
        self.send(json!({"type": "chat", "data": {"msgId": msg_id, "toUserId": user, "content": content}}));
    }
}

/// An upgrade to `/ws` with extra headers; returns the HTTP status and body.
fn upgrade_status(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = connect(addr);
    let mut req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let (status, _, body) = read_response(&mut s);
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn connected_ping_and_errors_that_keep_the_session() {
    on_both_drivers(|d| {
        let (_node, [a, _]) = two_shards(d, |_| {});
        let (mut alice, hello) = Client::connect(a, "t-alice");
        assert_eq!(hello["data"]["userId"], "alice");
        assert!(hello["data"]["onlineCount"].as_u64().unwrap() >= 1, "{hello}");
        alice.send(json!({"type": "ping", "id": "p1"}));
        let pong = alice.recv();
        assert_eq!((pong["type"].as_str(), pong["id"].as_str()), (Some("pong"), Some("p1")));
        for (bad, code) in [
            ("not json", "bad_json"),
            (r#"{"data":{}}"#, "bad_envelope"),
            (r#"{"type":"chat","id":"x","data":{"content":"no recipient"}}"#, "bad_data"),
            (r#"{"type":"no-such-type"}"#, "unknown_type"),
            (r#"{"type":"join","data":{"roomId":"bad\u0007name"}}"#, "invalid_name"),
            (r#"{"type":"read","data":{"peerId":"bob","msgIds":["not-a-uuid"]}}"#, "bad_data"),
        ] {
            alice.send_text(bad);
            let e = alice.recv();
            assert_eq!(e["type"], "error", "{bad}: {e}");
            assert_eq!(e["data"]["code"], code, "{bad}: {e}");
        }
        let e = {
            alice.send_text(r#"{"type":"chat","id":"x","data":{"content":"c"}}"#);
            alice.recv()
        };
        assert_eq!(e["id"], "x", "the envelope id is echoed on errors");
        alice.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
        assert_eq!(alice.recv()["data"]["code"], "bad_json");
        // Still open.
        alice.send(json!({"type": "ping"}));
        assert_eq!(alice.recv()["type"], "pong");
    });
}

/// The acceptance scenario: sender and recipient on different shards exchange 10,000
/// messages; each gets exactly one `sent` and one `delivered` ack, in order, none lost.
#[test]
fn ten_thousand_messages_across_shards_each_acked_sent_then_delivered_in_order() {
    const N: usize = 10_000;
    // The default limits: the exchange stays within a session's burst.
    let (_node, [a, b]) = two_shards("io_uring", |_| {});
    let (mut bob, _) = Client::connect(b, "t-bob");
    let (alice, _) = Client::connect(a, "t-alice");
    // Write from one thread (raw masked frames on a clone of the socket), read on another.
    let mut writer: TcpStream = alice.ws.get_ref().try_clone().unwrap();
    let send = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..N {
            let text = json!({"type":"chat","data":{"msgId": format!("m{i}"),"toUserId":"bob","content": format!("hello {i}")}})
                .to_string();
            batch.extend_from_slice(&frame(true, 1, text.as_bytes(), true));
            if batch.len() > 32 * 1024 {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        writer.write_all(&batch).unwrap();
    });
    let recv_bob = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            let m = bob.recv();
            if m["type"] == "chat" {
                assert_eq!(m["data"]["fromUserId"], "alice");
                got.push(m["data"]["clientMsgId"].as_str().unwrap().to_string());
            }
        }
        got
    });
    let mut alice = alice;
    let mut sent = Vec::with_capacity(N);
    let mut delivered = Vec::with_capacity(N);
    let mut server_ids: HashMap<String, String> = HashMap::new();
    while sent.len() < N || delivered.len() < N {
        let m = alice.recv_type("ack");
        let client_id = m["data"]["clientMsgId"].as_str().unwrap().to_string();
        let id = m["data"]["msgId"].as_str().unwrap().to_string();
        match m["data"]["status"].as_str().unwrap() {
            "sent" => {
                assert!(server_ids.insert(client_id.clone(), id).is_none(), "second sent ack for {client_id}");
                sent.push(client_id);
            }
            "delivered" => {
                assert_eq!(server_ids.get(&client_id), Some(&id), "delivered before sent for {client_id}");
                delivered.push(client_id);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    send.join().unwrap();
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(sent, expected, "sent acks, once each, in order");
    assert_eq!(delivered, expected, "delivered acks, once each, in order");
    assert_eq!(recv_bob.join().unwrap(), expected, "bob got every message once, in order");
    // Server ids are UUID v7: they sort in creation order.
    let mut ids: Vec<&String> = expected.iter().map(|c| &server_ids[c]).collect();
    let unsorted = ids.clone();
    ids.sort();
    assert_eq!(ids, unsorted);
    assert!(server_ids.values().all(|id| id.as_bytes()[14] == b'7'), "UUID version 7");
}

/// A client that sends a burst and reads nothing until it is done: the acks the burst brings
/// back overflow its send queue many times over. They wait for it instead (the server stops
/// reading from it meanwhile), so it gets every ack once it reads, and is not closed.
#[test]
fn a_burst_sent_before_reading_gets_every_ack() {
    const N: usize = 1000;
    let (_node, [a, b]) = two_shards("io_uring", |f| f.websocket.send_queue_len = 64);
    let (mut bob, _) = Client::connect(b, "t-bob");
    let (mut alice, _) = Client::connect(a, "t-alice");
    // A small receive buffer, so the acks cannot all wait in the kernel either.
    let size: libc::c_int = 16384;
    // SAFETY: a valid socket and a pointer to a c_int of the given length.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            alice.ws.get_ref().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let recv_bob = std::thread::spawn(move || (0..N).map(|_| bob.recv_type("chat")).count());
    let mut writer: TcpStream = alice.ws.get_ref().try_clone().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let send = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..N {
            let text = json!({"type":"chat","data":{"msgId": format!("b{i}"),"toUserId":"bob","content": format!("burst {i}")}})
                .to_string();
            batch.extend_from_slice(&frame(true, 1, text.as_bytes(), true));
        }
        writer.write_all(&batch).unwrap();
        let _ = done_tx.send(());
    });
    // Read only once the whole burst is written (or the kernel's buffers could not take it all
    // while the server waits for alice to read: then reading is what lets the rest through).
    let _ = done_rx.recv_timeout(Duration::from_secs(20));
    let (mut sent, mut delivered) = (0, 0);
    while sent < N || delivered < N {
        let m = alice.recv_type("ack");
        let expected = format!("b{}", if m["data"]["status"] == "sent" { sent } else { delivered });
        assert_eq!(m["data"]["clientMsgId"], expected.as_str(), "{m}");
        match m["data"]["status"].as_str() {
            Some("sent") => sent += 1,
            Some("delivered") => delivered += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    send.join().unwrap();
    assert_eq!(recv_bob.join().unwrap(), N);
    alice.send(json!({"type": "ping"}));
    assert_eq!(alice.recv_type("pong")["type"], "pong", "alice's session is still open");
}

#[test]
fn offline_messages_are_pushed_in_order_on_connect_then_marked_delivered() {
    on_both_drivers(|d| {
        let (_node, [a, b]) = two_shards(d, |_| {});
        let (mut alice, _) = Client::connect(a, "t-alice");
        for i in 0..50 {
            alice.chat_to("bob", &format!("o{i}"), &format!("while you were away {i}"));
        }
        for i in 0..50 {
            let ack = alice.recv_type("ack");
            assert_eq!(
                (ack["data"]["status"].as_str(), ack["data"]["clientMsgId"].as_str()),
                (Some("sent"), Some(&*format!("o{i}")))
            );
        }
        let (mut bob, hello) = Client::connect(b, "t-bob");
        assert_eq!(hello["data"]["userId"], "bob");
        for i in 0..50 {
            let m = bob.recv();
            assert_eq!(m["type"], "chat", "{m}");
            assert_eq!(m["data"]["content"], format!("while you were away {i}"));
            assert!(m["data"]["createdAt"].as_i64().unwrap() > 0);
        }
        for i in 0..50 {
            let ack = alice.recv_type("ack");
            assert_eq!(ack["data"]["status"], "delivered");
            assert_eq!(ack["data"]["clientMsgId"], format!("o{i}"));
        }
        // The queue is empty now: a reconnect gets nothing old.
        drop(bob);
        let (mut bob2, _) = Client::connect(b, "t-bob");
        bob2.send(json!({"type": "ping"}));
        assert_eq!(bob2.recv()["type"], "pong");
    });
}

#[test]
fn a_repeated_msg_id_is_stored_and_delivered_once() {
    let (_node, [a, b]) = two_shards("io_uring", |_| {});
    let (mut bob, _) = Client::connect(b, "t-bob");
    let (mut alice, _) = Client::connect(a, "t-alice");
    alice.chat_to("bob", "same", "first");
    alice.chat_to("bob", "same", "retransmitted");
    alice.chat_to("bob", "next", "second");
    let mut sent_ids = Vec::new();
    while sent_ids.len() < 3 {
        let ack = alice.recv_type("ack");
        if ack["data"]["status"] == "sent" {
            sent_ids.push(ack["data"]["msgId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(sent_ids[0], sent_ids[1], "the duplicate is acked with the original id");
    assert_ne!(sent_ids[1], sent_ids[2]);
    let first = bob.recv_type("chat");
    assert_eq!(first["data"]["content"], "first");
    let second = bob.recv_type("chat");
    assert_eq!(second["data"]["content"], "second", "the retransmission is not delivered");
}

#[test]
fn read_receipts_reach_the_sender() {
    let (_node, [a, b]) = two_shards("epoll", |_| {});
    let (mut bob, _) = Client::connect(b, "t-bob");
    let (mut alice, _) = Client::connect(a, "t-alice");
    alice.chat_to("bob", "r1", "read me");
    let m = bob.recv_type("chat");
    let id = m["data"]["msgId"].as_str().unwrap().to_string();
    bob.send(json!({"type": "read", "data": {"peerId": "alice", "msgIds": [id]}}));
    loop {
        let ack = alice.recv_type("ack");
        if ack["data"]["status"] == "read" {
            assert_eq!(ack["data"]["msgId"], id);
            assert_eq!(ack["data"]["clientMsgId"], "r1");
            break;
        }
    }
    // Reading again sends nothing new: the next ack-free exchange is a pong.
    bob.send(json!({"type": "read", "data": {"peerId": "alice", "msgIds": [id]}}));
    alice.send(json!({"type": "ping"}));
    let next = alice.recv();
    assert_eq!(next["type"], "pong", "{next}");
}

#[test]
fn every_device_of_a_recipient_gets_the_message_on_any_shard() {
    let (_node, [a, b]) = two_shards("io_uring", |_| {});
    let (mut phone, _) = Client::connect(a, "t-bob");
    let (mut laptop, _) = Client::connect(b, "t-bob");
    let (mut alice, _) = Client::connect(b, "t-alice");
    alice.chat_to("bob", "d1", "to all devices");
    assert_eq!(phone.recv_type("chat")["data"]["content"], "to all devices");
    assert_eq!(laptop.recv_type("chat")["data"]["content"], "to all devices");
    let statuses: Vec<String> =
        (0..2).map(|_| alice.recv_type("ack")["data"]["status"].as_str().unwrap().to_string()).collect();
    assert_eq!(statuses, ["sent", "delivered"]);
    // Exactly one delivered ack even with two devices: nothing else is pending.
    alice.send(json!({"type": "ping"}));
    assert_eq!(alice.recv()["type"], "pong");
    // Tenants are separate: eve is "bob" in another tenant and gets nothing.
    let (mut eve, _) = Client::connect(a, "t-eve");
    alice.chat_to("bob", "d2", "acme only");
    assert_eq!(phone.recv_type("chat")["data"]["content"], "acme only");
    eve.send(json!({"type": "ping"}));
    assert_eq!(eve.recv()["type"], "pong");
}

#[test]
fn presence_subscribers_see_online_and_offline() {
    on_both_drivers(|d| {
        let (_node, [a, b]) = two_shards(d, |_| {});
        let (mut carol, _) = Client::connect(a, "t-carol");
        carol.send(json!({"type": "presence:subscribe", "data": {"userIds": ["bob"]}}));
        let state = carol.recv_type("presence");
        assert_eq!((state["data"]["userId"].as_str(), state["data"]["online"].as_bool()), (Some("bob"), Some(false)));
        let (bob, _) = Client::connect(b, "t-bob");
        let on = carol.recv();
        assert_eq!((on["type"].as_str(), on["data"]["userId"].as_str()), (Some("online"), Some("bob")));
        assert!(on["data"]["timestamp"].as_i64().unwrap() > 0);
        // A second device is not a new `online`; its close is not an `offline` either.
        let (second, _) = Client::connect(a, "t-bob");
        drop(second);
        drop(bob);
        let off = carol.recv();
        assert_eq!((off["type"].as_str(), off["data"]["userId"].as_str()), (Some("offline"), Some("bob")));
        // The pong proves carol's shard handled the unsubscribe; bob then logs in on the same
        // shard, so his login reaches his home shard after it (one FIFO ring).
        carol.send(json!({"type": "presence:unsubscribe", "data": {"userIds": ["bob"]}}));
        carol.send(json!({"type": "ping"}));
        assert_eq!(carol.recv()["type"], "pong");
        let (_bob, _) = Client::connect(a, "t-bob");
        carol.send(json!({"type": "ping"}));
        assert_eq!(carol.recv()["type"], "pong", "no more notices after unsubscribe");
    });
}

#[test]
fn kick_oldest_policy_kicks_the_first_session() {
    let (_node, [a, b]) = two_shards("io_uring", |f| {
        f.chat = toml::from_str(r#"duplicate_login = "kick_oldest""#).unwrap();
    });
    let (mut first, _) = Client::connect(a, "t-bob");
    let (mut second, _) = Client::connect(b, "t-bob");
    let kicked = first.recv();
    assert_eq!(kicked["type"], "kicked", "{kicked}");
    assert_eq!(first.close_code(), Some(4001));
    second.send(json!({"type": "ping"}));
    assert_eq!(second.recv()["type"], "pong");
}

#[test]
fn room_chat_reaches_joined_members_on_every_shard() {
    let (_node, [a, b]) = two_shards("io_uring", |_| {});
    let (mut alice, _) = Client::connect(a, "t-alice");
    let (mut bob, _) = Client::connect(b, "t-bob");
    let (mut carol, _) = Client::connect(a, "t-carol");
    for c in [&mut alice, &mut bob] {
        c.send(json!({"type": "join", "id": "j", "data": {"roomId": "general"}}));
        let j = c.recv_type("joined");
        assert_eq!((j["id"].as_str(), j["data"]["roomId"].as_str()), (Some("j"), Some("general")));
    }
    alice.send(json!({"type": "chat", "data": {"roomId": "general", "content": "hi all", "msgId": "g1"}}));
    assert_eq!(alice.recv_type("ack")["data"]["status"], "sent");
    let m = bob.recv_type("chat");
    assert_eq!((m["data"]["roomId"].as_str(), m["data"]["content"].as_str()), (Some("general"), Some("hi all")));
    // Carol did not join: she gets nothing.
    carol.send(json!({"type": "ping"}));
    assert_eq!(carol.recv()["type"], "pong");
}

#[test]
fn a_busy_shard_batches_room_messages_and_not_acks() {
    // Coalescing forced on (both thresholds 0) with a window far longer than the test's sends.
    let (_node, [a, b]) = two_shards("io_uring", |f| coalesce_always(f, 1_000_000));
    assert!(wait_until(Duration::from_secs(10), || metric_sum(a, "imks_write_coalescing") == 2));
    let (mut alice, _) = Client::connect(a, "t-alice");
    let (mut bob, _) = Client::connect(b, "t-bob");
    for c in [&mut alice, &mut bob] {
        c.send(json!({"type": "join", "id": "j", "data": {"roomId": "general"}}));
        c.recv_type("joined");
    }
    let bob_writes = || metric_sum(a, "imks_ws_writes_total{shard=\"1\"}");
    let flushes = || metric_sum(a, "imks_coalesced_flushes_total");
    let (before, flushed) = (bob_writes(), flushes());
    const N: usize = 10;
    for i in 0..N {
        alice.send(json!({"type": "chat", "data": {"roomId": "general", "content": format!("m{i}")}}));
        // Acks are never held.
        assert_eq!(alice.recv_type("ack")["data"]["status"], "sent");
    }
    assert_eq!(flushes(), flushed, "every ack came back before the first flush");
    for i in 0..N {
        assert_eq!(bob.recv_type("chat")["data"]["content"], format!("m{i}"));
    }
    let writes = bob_writes() - before;
    assert!(writes <= 2, "{N} room messages sent one by one reached bob in {writes} writes");
    assert!(flushes() > flushed, "they waited for a flush");
}

/// The contents of the chat messages that arrive before the next message of type `kind`.
fn chats_before(c: &mut Client, kind: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let v = c.recv();
        if v["type"] == kind {
            return seen;
        }
        if v["type"] == "chat" {
            seen.push(v["data"]["content"].as_str().unwrap().to_string());
        }
    }
}

#[test]
fn held_room_messages_reach_who_was_in_the_room_when_they_were_sent() {
    let (_node, [a, b]) = two_shards("io_uring", |f| coalesce_always(f, 1_000_000));
    assert!(wait_until(Duration::from_secs(10), || metric_sum(a, "imks_write_coalescing") == 2));
    let (mut alice, _) = Client::connect(a, "t-alice");
    let (mut bob, _) = Client::connect(b, "t-bob");
    let (mut carol, _) = Client::connect(b, "t-carol");
    let join = json!({"type": "join", "id": "j", "data": {"roomId": "general"}});
    for c in [&mut alice, &mut bob] {
        c.send(join.clone());
        c.recv_type("joined");
    }
    let held_on_b = || metric_sum(a, "imks_broadcasts_held_total{shard=\"1\"}");
    let say = |alice: &mut Client, text: &str| {
        let held = held_on_b();
        alice.send(json!({"type": "chat", "data": {"roomId": "general", "content": text}}));
        assert_eq!(alice.recv_type("ack")["data"]["status"], "sent");
        assert!(wait_until(Duration::from_secs(5), || held_on_b() > held), "held on bob's shard");
    };

    // Held for bob; carol joins and bob leaves before the flush. The replies release it, to
    // the members of when it was sent, ahead of themselves.
    say(&mut alice, "m0");
    carol.send(join.clone());
    assert_eq!(chats_before(&mut carol, "joined"), Vec::<String>::new());
    bob.send(json!({"type": "leave", "id": "l", "data": {"roomId": "general"}}));
    assert_eq!(chats_before(&mut bob, "left"), ["m0"]);

    // Held again: now it is carol's, and only the flush releases it.
    say(&mut alice, "m1");
    assert_eq!(carol.recv_type("chat")["data"]["content"], "m1");
    bob.send(join);
    assert_eq!(chats_before(&mut bob, "joined"), Vec::<String>::new());
}

#[test]
fn auth_failures_are_refused_before_the_upgrade() {
    let (_node, [a, _]) = two_shards("io_uring", |_| {});
    let (status, body) = upgrade_status(a, "/ws", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(upgrade_status(a, "/ws?token=wrong", &[]).0, 401);
    // The token may come from the Authorization header instead.
    let mut req = format!("ws://{a}/ws").into_client_request().unwrap();
    req.headers_mut().insert("Authorization", "Bearer t-dave".parse().unwrap());
    let (mut ws, resp) = tungstenite::client::client(req, connect(a)).unwrap();
    assert_eq!(resp.status(), 101);
    let hello: Value = match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        m => panic!("{m:?}"),
    };
    assert_eq!(hello["data"]["userId"], "dave");
    // Origins: same-origin and no Origin pass; another origin is refused with 403.
    assert_eq!(upgrade_status(a, "/ws?token=t-alice", &[("Origin", "https://evil.example")]).0, 403);
    assert_eq!(upgrade_status(a, "/ws?token=t-alice", &[("Origin", &format!("http://{a}"))]).0, 101);
    assert!(metric_sum(a, "imks_auth_failures_total") >= 2);
    assert!(metric_sum(a, "imks_origin_refused_total") >= 1);
}

#[test]
fn a_flooding_client_is_limited_and_the_others_are_not() {
    let (_node, [a, b]) = two_shards("io_uring", |f| {
        f.limits.message_rate = 20;
        f.limits.message_burst = 20;
    });
    let (mut bob, _) = Client::connect(b, "t-bob");
    let (mut alice, _) = Client::connect(a, "t-alice");
    let (mut flood, _) = Client::connect(a, "t-carol");
    for _ in 0..100 {
        if flood.ws.send(Message::text(r#"{"type":"ping"}"#)).is_err() {
            break;
        }
    }
    let mut saw_error = false;
    let code = loop {
        match flood.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["data"]["code"], "rate_limited");
                    saw_error = true;
                }
            }
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert!(saw_error, "an error precedes the close");
    assert_eq!(code, Some(1008));
    // Alice, on the same shard, is unaffected.
    for i in 0..10 {
        alice.chat_to("bob", &format!("f{i}"), "still fine");
        assert_eq!(bob.recv_type("chat")["data"]["content"], "still fine");
    }
    assert!(metric_sum(a, "imks_limits_exceeded_total{shard=\"0\",limit=\"message_rate\"") >= 1);
}

#[test]
fn room_count_and_name_limits() {
    let (_node, [a, _]) = two_shards("io_uring", |f| {
        f.limits.max_rooms_per_session = 3;
        f.limits.max_name_bytes = 16;
    });
    let (mut alice, _) = Client::connect(a, "t-alice");
    for i in 0..3 {
        alice.send(json!({"type": "join", "data": {"roomId": format!("r{i}")}}));
        assert_eq!(alice.recv()["type"], "joined");
    }
    alice.send(json!({"type": "join", "data": {"roomId": "r3"}}));
    assert_eq!(alice.recv()["data"]["code"], "too_many");
    alice.send(json!({"type": "join", "data": {"roomId": "r0"}}));
    assert_eq!(alice.recv()["type"], "joined", "joining a room again is not a new room");
    alice.send(json!({"type": "join", "data": {"roomId": "x".repeat(17)}}));
    assert_eq!(alice.recv()["data"]["code"], "invalid_name");
    alice.send(json!({"type": "leave", "data": {"roomId": "r1"}}));
    assert_eq!(alice.recv()["type"], "left");
    alice.send(json!({"type": "join", "data": {"roomId": "r3"}}));
    assert_eq!(alice.recv()["type"], "joined", "leaving frees a place");
    assert!(metric_sum(a, "imks_limits_exceeded_total{shard=\"0\",limit=\"rooms_per_session\"") >= 1);
}

#[test]
fn connection_limits_per_ip_node_and_shard_answer_503() {
    // Per IP.
    let (_node, [a, _]) = two_shards("io_uring", |f| f.limits.max_connections_per_ip = 2);
    let (_c1, _) = Client::connect(a, "t-alice");
    let (_c2, _) = Client::connect(a, "t-bob");
    let (status, _) = upgrade_status(a, "/ws?token=t-carol", &[]);
    assert_eq!(status, 503);
    drop(_c1);
    assert!(wait_until(Duration::from_secs(5), || upgrade_status(a, "/ws?token=t-carol", &[]).0 == 101));
    drop(_c2);
    let refused = || metric_sum(a, "imks_limits_exceeded_total{shard=\"0\",limit=\"ip_connections\"");
    assert!(wait_until(Duration::from_secs(5), || refused() >= 1));

    // Per node: two connections over two shards, each shard allowing more.
    let (node2, _) = start_full(
        "io_uring",
        2,
        |f| {
            static_auth(f);
            f.server.max_connections = 2;
        },
        |c| {
            c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
            c.runtime.shards[0].max_connections = 10;
            c.runtime.shards[1].max_connections = 10;
        },
    );
    let (a2, b2) = (node2.shard_addrs(0)[0], node2.shard_addrs(1)[0]);
    let (_d1, _) = Client::connect(a2, "t-alice");
    let (_d2, _) = Client::connect(a2, "t-bob");
    assert_eq!(upgrade_status(a2, "/ws?token=t-carol", &[]).0, 503);
    assert_eq!(upgrade_status(b2, "/ws?token=t-carol", &[]).0, 503, "the other shard is full too");
    drop(_d1);
    let node_refusals = || metric_sum(b2, "imks_limits_exceeded_total{shard=\"1\",limit=\"node_connections\"");
    assert!(wait_until(Duration::from_secs(5), || node_refusals() >= 1));

    // Per shard: shard 0 may hold one connection, shard 1 is not affected.
    let (node3, _) = start_full("epoll", 2, static_auth, |c| {
        c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
        c.runtime.shards[0].max_connections = 1;
    });
    let (a3, b3) = (node3.shard_addrs(0)[0], node3.shard_addrs(1)[0]);
    let (_e1, _) = Client::connect(a3, "t-alice");
    assert_eq!(upgrade_status(a3, "/ws?token=t-bob", &[]).0, 503);
    let (_e2, _) = Client::connect(b3, "t-bob");
}

/// A message routed to a session that is closing is not lost: when every session it was
/// routed to missed it, the recipient's home shard queues it offline, and the next login gets
/// it.
#[test]
fn a_message_that_misses_a_closing_session_is_queued_for_the_next_login() {
    let (_node, [a, b]) = two_shards("io_uring", |f| {
        f.limits.message_rate = 5;
        f.limits.message_burst = 5;
        f.websocket.close_timeout_ms = 30_000;
    });
    let (mut alice, _) = Client::connect(a, "t-alice");
    let (mut bob, _) = Client::connect(b, "t-bob");
    // Bob floods: the server starts closing his session and waits for his close reply, which
    // this client does not send until it reads again.
    for _ in 0..10 {
        bob.send_text(r#"{"type":"ping"}"#);
    }
    let err = bob.recv_type("error");
    assert_eq!(err["data"]["code"], "rate_limited");
    alice.chat_to("bob", "late", "are you there?");
    assert_eq!(alice.recv_type("ack")["data"]["status"], "sent");
    assert!(wait_until(Duration::from_secs(5), || metric_sum(b, "imks_chat_missed_total") >= 1));
    assert_eq!(bob.close_code(), Some(1008));
    drop(bob);
    let (mut bob, _) = Client::connect(a, "t-bob");
    let m = bob.recv_type("chat");
    assert_eq!(
        (m["data"]["clientMsgId"].as_str(), m["data"]["content"].as_str()),
        (Some("late"), Some("are you there?"))
    );
    let ack = alice.recv_type("ack");
    assert_eq!(
        (ack["data"]["status"].as_str(), ack["data"]["clientMsgId"].as_str()),
        (Some("delivered"), Some("late"))
    );
}

#[test]
fn config_membership_and_its_admin_api_decide_who_may_join_and_send() {
    let (node, [a, b]) = two_shards("io_uring", |f| {
        f.membership = toml::from_str(
            "mode = \"config\"\nchannels = [{ tenant = \"acme\", id = \"general\", members = [\"alice\"] }]",
        )
        .unwrap();
    });
    let (mut alice, _) = Client::connect(a, "t-alice");
    let (mut bob, _) = Client::connect(b, "t-bob");
    alice.send(json!({"type": "join", "data": {"roomId": "general"}}));
    assert_eq!(alice.recv()["type"], "joined");
    bob.send(json!({"type": "join", "data": {"roomId": "general"}}));
    assert_eq!(bob.recv()["data"]["code"], "forbidden");
    bob.send(json!({"type": "chat", "data": {"roomId": "general", "content": "let me in", "msgId": "x"}}));
    let e = bob.recv();
    assert_eq!((e["data"]["code"].as_str(), e["data"]["msgId"].as_str()), (Some("forbidden"), Some("x")));
    // The in-memory admin API changes membership at run time, for every shard at once.
    assert!(node.shared().membership_admin.add_member("acme", "general", "bob").unwrap());
    bob.send(json!({"type": "join", "data": {"roomId": "general"}}));
    assert_eq!(bob.recv()["type"], "joined");
    bob.send(json!({"type": "chat", "data": {"roomId": "general", "content": "thanks", "msgId": "y"}}));
    assert_eq!(bob.recv_type("ack")["data"]["status"], "sent");
    assert_eq!(alice.recv_type("chat")["data"]["content"], "thanks");
}

#[test]
fn store_evictions_are_counted_in_the_metrics() {
    let (_node, [a, _]) = two_shards("io_uring", |f| f.store.max_messages_per_conversation = 2);
    let (mut alice, _) = Client::connect(a, "t-alice");
    for i in 0..5 {
        alice.chat_to("bob", &format!("e{i}"), &format!("message {i}"));
        assert_eq!(alice.recv_type("ack")["data"]["status"], "sent");
    }
    // Five messages in a conversation that keeps two: three evicted, on the owner shard.
    let evicted = || metric_sum(a, "imks_store_evicted_messages_total{");
    assert!(wait_until(Duration::from_secs(5), || evicted() == 3), "evicted: {}", evicted());
    assert_eq!(metric_sum(a, "imks_store_evicted_conversations_total{"), 0);
}

#[test]
fn history_pages_a_conversation_newest_first() {
    let (_node, [a, b]) = two_shards("epoll", |_| {});
    let (mut alice, _) = Client::connect(a, "t-alice");
    for i in 0..5 {
        alice.chat_to("bob", &format!("h{i}"), &format!("message {i}"));
        assert_eq!(alice.recv_type("ack")["data"]["status"], "sent");
    }
    let (mut bob, _) = Client::connect(b, "t-bob");
    for _ in 0..5 {
        bob.recv_type("chat");
    }
    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut data = json!({"peerId": "alice", "limit": 2});
        if let Some(c) = &before {
            data["before"] = json!(c);
        }
        bob.send(json!({"type": "history", "id": "h", "data": data}));
        let page = bob.recv_type("history");
        assert_eq!(page["id"], "h");
        let contents: Vec<String> = page["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect();
        pages.push(contents);
        match page["data"]["nextCursor"].as_str() {
            Some(c) => before = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        pages,
        vec![vec!["message 4", "message 3"], vec!["message 2", "message 1"], vec!["message 0"]],
        "newest first, no gaps, no repeats"
    );
    bob.send(json!({"type": "history", "data": {"peerId": "alice", "before": "not-a-cursor"}}));
    assert_eq!(bob.recv()["data"]["code"], "bad_data");
}

/// More queued messages than a session's send queue holds (`websocket.send_queue_len`) are
/// pushed at the pace the client reads, not dropped or answered with "slow consumer".
#[test]
fn a_long_offline_queue_is_pushed_at_the_pace_of_the_client() {
    const N: usize = 5_000;
    let (_node, [a, b]) = two_shards("io_uring", |f| {
        f.limits.message_rate = 0;
        f.websocket.send_queue_len = 256;
    });
    let (alice, _) = Client::connect(a, "t-alice");
    let mut writer: TcpStream = alice.ws.get_ref().try_clone().unwrap();
    let mut batch = Vec::new();
    for i in 0..N {
        let text =
            json!({"type":"chat","data":{"msgId": format!("q{i}"),"toUserId":"bob","content": format!("queued {i}")}})
                .to_string();
        batch.extend_from_slice(&frame(true, 1, text.as_bytes(), true));
    }
    writer.write_all(&batch).unwrap();
    let mut alice = alice;
    for i in 0..N {
        let ack = alice.recv_type("ack");
        assert_eq!(ack["data"]["clientMsgId"], format!("q{i}"), "{ack}");
    }
    let (mut bob, _) = Client::connect(b, "t-bob");
    for i in 0..N {
        let m = bob.recv();
        assert_eq!(m["type"], "chat", "message {i}: {m}");
        assert_eq!(m["data"]["content"], format!("queued {i}"));
        if i % 1000 == 0 {
            // A slow reader: the server must wait for it, not close it.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for i in 0..N {
        let ack = alice.recv_type("ack");
        assert_eq!(
            (ack["data"]["status"].as_str(), ack["data"]["clientMsgId"].as_str()),
            (Some("delivered"), Some(&*format!("q{i}")))
        );
    }
}

#[test]
fn presence_subscriptions_sessions_per_user_and_content_size_are_bounded() {
    let (_node, [a, b]) = two_shards("io_uring", |f| {
        f.limits.max_presence_subscriptions = 2;
        f.chat.max_sessions_per_user = 2;
        f.store.max_body_bytes = 16;
    });
    let (mut alice, _) = Client::connect(a, "t-alice");
    alice.send(json!({"type": "presence:subscribe", "data": {"userIds": ["bob", "carol"]}}));
    alice.recv_type("presence");
    alice.recv_type("presence");
    alice.send(json!({"type": "presence:subscribe", "data": {"userIds": ["dave"]}}));
    assert_eq!(alice.recv_type("error")["data"]["code"], "too_many");
    alice.send(json!({"type": "presence:subscribe", "data": {"userIds": ["bob"]}}));
    alice.send(json!({"type": "ping"}));
    assert_eq!(alice.recv()["type"], "pong", "following someone again is not a new subscription");

    alice.chat_to("bob", "big", &"x".repeat(17));
    let e = alice.recv();
    assert_eq!((e["data"]["code"].as_str(), e["data"]["msgId"].as_str()), (Some("too_large"), Some("big")));
    alice.chat_to("bob", "fits", &"x".repeat(16));
    assert_eq!(alice.recv_type("ack")["data"]["status"], "sent");

    // A third device of bob's kicks the oldest under `allow` with two sessions at most.
    let (mut first, _) = Client::connect(a, "t-bob");
    let (_second, _) = Client::connect(b, "t-bob");
    let (_third, _) = Client::connect(a, "t-bob");
    assert_eq!(first.recv_type("kicked")["data"]["reason"], "duplicate_login");
    assert_eq!(first.close_code(), Some(4001));
}

/// A two-shard node that gives up on stalled writes after 300 ms, where shard 1 has a
/// `queue_len`-frame send queue, and bob connected to shard 1 through a socket that takes
/// little: the server's writes to it stall soon. Returns shard 0's address for everyone else.
fn with_a_stalled_reader(queue_len: usize, max_offline: usize) -> (Node, SocketAddr, Client) {
    let (node, _) = start_full(
        "io_uring",
        2,
        |f| {
            static_auth(f);
            f.limits.message_rate = 0;
            f.store.max_offline_per_user = max_offline;
            f.websocket.close_timeout_ms = 300;
            f.websocket.write_timeout_ms = 300;
            f.server.tick_ms = 20;
        },
        |c| {
            c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
            c.runtime.shards[1].send_queue_len = queue_len;
        },
    );
    let (a, b) = (node.shard_addrs(0)[0], node.shard_addrs(1)[0]);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&b.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (ws, _) = tungstenite::client::client(format!("ws://{b}/ws?token=t-bob"), stream).unwrap();
    (node, a, Client { ws })
}

#[test]
fn messages_no_write_took_go_offline_when_the_session_ends() {
    // Bob stops reading; the server gives up on its stalled write. Every message is either
    // written to bob's socket or pushed to bob when he comes back: none of those still in his
    // send queue is lost.
    const N: usize = 400;
    let (_node, a, mut bob) = with_a_stalled_reader(8, 1000);
    assert_eq!(bob.recv()["type"], "connected");
    let written_to_bob = || metric_sum(a, "imks_frames_out_total{shard=\"1\"}") - 1; // less `connected`

    let (mut alice, _) = Client::connect(a, "t-alice");
    let body = "z".repeat(16_000);
    for i in 0..N {
        alice.send(json!({"type":"chat","data":{"msgId": format!("q{i}"),"toUserId":"bob","content": body}}));
    }
    let write_timeouts = || metric_sum(a, "imks_closes_total{shard=\"1\",reason=\"write_timeout\"}");
    assert!(wait_until(Duration::from_secs(10), || write_timeouts() >= 1), "bob's stalled write was not given up");
    assert!(wait_until(Duration::from_secs(10), || metric_sum(a, "imks_websockets_active{shard=\"1\"}") == 0));
    let written = written_to_bob() as usize;
    assert!(written < N, "the test needs writes to stall: {written} of {N} written");
    drop(bob);

    // What no write took comes back, in order, right after `connected`.
    let (mut again, _) = Client::connect(a, "t-bob");
    for i in written..N {
        let m = again.recv_type("chat");
        assert_eq!(m["data"]["content"].as_str().map(str::len), Some(16_000));
        assert_eq!(m["data"]["fromUserId"], "alice", "message {i}");
    }
    // Nothing more: a ping is answered next.
    again.send(json!({"type": "ping"}));
    assert_eq!(again.recv()["type"], "pong", "only the {} unwritten messages were pushed", N - written);

    // Alice hears `sent` for each, and `delivered` once for each: for those queued on bob's
    // first session when they were, for the rest when his new session got them.
    let (mut sent, mut delivered) = (0, std::collections::HashSet::new());
    while sent < N || delivered.len() < N {
        let ack = alice.recv_type("ack");
        match ack["data"]["status"].as_str() {
            Some("sent") => sent += 1,
            Some("delivered") => assert!(delivered.insert(ack["data"]["msgId"].to_string()), "twice: {ack}"),
            other => panic!("{other:?}"),
        }
    }
    alice.send(json!({"type": "ping"}));
    assert_eq!(alice.recv()["type"], "pong", "no ack after the last");
}

#[test]
/// A client that stops reading while stored messages pile up for it (more than
/// `store.max_offline_per_user` waiting behind a full send queue) is closed as a slow consumer,
/// and what it had not received is queued for its next login rather than dropped.
fn a_client_that_stops_reading_is_closed_and_its_waiting_messages_go_offline() {
    const N: usize = 600;
    // Bob's shard (1) has a tiny send queue; alice's keeps the default for her acks.
    let (_node, a, mut bob) = with_a_stalled_reader(4, 64);
    assert_eq!(bob.recv()["type"], "connected");
    let (alice, _) = Client::connect(a, "t-alice");
    let mut writer: TcpStream = alice.ws.get_ref().try_clone().unwrap();
    let body = "y".repeat(16_000);
    let mut batch = Vec::new();
    for i in 0..N {
        let text =
            json!({"type":"chat","data":{"msgId": format!("s{i}"),"toUserId":"bob","content": body}}).to_string();
        batch.extend_from_slice(&frame(true, 1, text.as_bytes(), true));
    }
    let send = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    let mut alice = alice;
    let mut sent = 0;
    while sent < N {
        if alice.recv_type("ack")["data"]["status"] == "sent" {
            sent += 1;
        }
    }
    send.join().unwrap();
    let slow = || metric_sum(a, "imks_closes_total{shard=\"1\",reason=\"slow_consumer\"");
    assert!(wait_until(Duration::from_secs(10), || slow() >= 1), "bob was not closed as a slow consumer");
    // Its close frame waits behind the bytes bob never read; the server gives up on the write.
    drop(bob);
    assert!(wait_until(Duration::from_secs(10), || metric_sum(a, "imks_chat_offline_queued_total") >= 1));
    let (mut again, _) = Client::connect(a, "t-bob");
    assert_eq!(again.recv_type("chat")["data"]["content"].as_str().map(str::len), Some(16_000));
}
