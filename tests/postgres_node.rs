//! A real node on the Postgres store (`store.backend = "postgres"`), each test on a database of
//! its own on the local server, driven by plain WebSocket clients: the native protocol (`/ws`)
//! for chat and history, and the IM events over Socket.IO for edits, deletes and reactions.
//! What the store suite checks of the store alone, checked here end to end: acked messages and
//! offline queues survive a restart, retries are de-duplicated across it, history pages never
//! skip a message while others send, racing edits and reactions end consistent, and `/health`
//! and `/metrics` report the database. A test fails, never skips, when Postgres cannot be
//! reached.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::native::Answer;
use common::native::{static_users, two_shards, Client};
use common::pg::{HeldLock, TestDb};
use common::*;
use imks::store::migrate::MIGRATIONS;
use imks::Node;
use serde_json::{json, Value};
use tungstenite::Message;

const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "pager"];

/// A two-shard node on `db` with the Postgres store, the users of [`USERS`] and no message rate
/// limit; `tweak` may change the rest of the file config.
fn node_on(db: &TestDb, tweak: impl FnOnce(&mut imks::config::file::FileConfig)) -> (Node, [SocketAddr; 2]) {
    two_shards(
        "io_uring",
        |f| {
            static_users(f, USERS);
            f.limits.message_rate = 0;
            f.store = db.store_config();
            tweak(f);
        },
        |_| {},
    )
}

/// The `msgId`s of a conversation's history, oldest first.
fn history_ids(c: &mut Client, with: (&str, &str)) -> Vec<String> {
    c.whole_history(with, 4).iter().map(|m| m["msgId"].as_str().unwrap().to_string()).collect()
}

#[test]
fn acked_messages_and_offline_queues_survive_a_restart() {
    let db = TestDb::new();
    assert_eq!(db.count("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), 0, "an empty database");
    let (node, [a, b]) = node_on(&db, |_| {});
    assert_eq!(
        db.count("SELECT count(*) FROM imks_migration"),
        MIGRATIONS.len() as i64,
        "the node migrates its database at start-up"
    );

    let (mut bob, _) = Client::connect(b, "t-bob");
    let (mut alice, _) = Client::connect(a, "t-alice");
    for i in 0..10 {
        alice.chat_to("bob", &format!("b{i}"), &format!("to bob {i}"));
        alice.chat_to("carol", &format!("c{i}"), &format!("to carol {i}"));
    }
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut order = Vec::new();
    while order.len() < 20 {
        let ack = alice.recv_type("ack");
        if ack["data"]["status"] == "sent" {
            let cid = ack["data"]["clientMsgId"].as_str().unwrap().to_string();
            assert!(ids.insert(cid.clone(), ack["data"]["msgId"].as_str().unwrap().to_string()).is_none(), "{ack}");
            order.push(cid);
        }
    }
    let sent: Vec<String> = (0..10).flat_map(|i| [format!("b{i}"), format!("c{i}")]).collect();
    assert_eq!(order, sent, "sent acks in send order");
    for i in 0..10 {
        let m = bob.recv_type("chat");
        assert_eq!(
            (m["data"]["msgId"].as_str(), m["data"]["content"].as_str()),
            (Some(&*ids[&format!("b{i}")]), Some(&*format!("to bob {i}")))
        );
    }
    assert!(node.shutdown(), "the node stops within its shutdown timeout");
    drop((alice, bob));

    let (_node, [a, b]) = node_on(&db, |_| {});
    let (mut alice, _) = Client::connect(a, "t-alice");
    let expected = |prefix: &str| -> Vec<String> { (0..10).map(|i| ids[&format!("{prefix}{i}")].clone()).collect() };
    assert_eq!(history_ids(&mut alice, ("peerId", "bob")), expected("b"), "bob's conversation, in order");
    assert_eq!(history_ids(&mut alice, ("peerId", "carol")), expected("c"), "carol's conversation, in order");

    // Carol was offline all along: her messages are pushed when she first logs in, after the
    // restart, in order, and then acknowledged `delivered` to alice.
    let (mut carol, _) = Client::connect(b, "t-carol");
    for (i, id) in expected("c").iter().enumerate() {
        let m = carol.recv();
        assert_eq!(m["type"], "chat", "offline message {i}: {m}");
        assert_eq!(
            (m["data"]["msgId"].as_str(), m["data"]["content"].as_str()),
            (Some(&**id), Some(&*format!("to carol {i}")))
        );
    }
    carol.assert_nothing_pending("carol's queue held only the ten messages");
    let mut delivered: Vec<String> = (0..10)
        .map(|_| alice.recv_type("ack"))
        .inspect(|a| assert_eq!(a["data"]["status"], "delivered", "{a}"))
        .map(|a| a["data"]["clientMsgId"].as_str().unwrap().to_string())
        .collect();
    delivered.sort();
    assert_eq!(delivered, (0..10).map(|i| format!("c{i}")).collect::<Vec<_>>(), "one delivered ack each");
    // Bob got his live: nothing waits for him.
    let (mut bob, _) = Client::connect(a, "t-bob");
    bob.assert_nothing_pending("bob's messages were delivered before the restart");
    assert_eq!(db.count("SELECT count(*) FROM message_offline"), 0, "every offline queue was taken");
}

#[test]
fn a_retry_after_a_restart_is_acked_with_the_original_id_and_stored_once() {
    let db = TestDb::migrated();
    let (node, [a, _]) = node_on(&db, |_| {});
    let (mut alice, _) = Client::connect(a, "t-alice");
    alice.chat_to("bob", "m1", "first");
    let original = alice.sent_id("m1");
    assert!(node.shutdown());
    drop(alice);

    let (_node, [a, b]) = node_on(&db, |_| {});
    let (mut alice, _) = Client::connect(b, "t-alice");
    alice.chat_to("bob", "m1", "retransmitted");
    assert_eq!(
        alice.sent_id("m1"),
        original,
        "the retry is acked with the id of the message stored before the restart"
    );
    let history = alice.whole_history(("peerId", "bob"), 10);
    let found: Vec<(&str, &str)> =
        history.iter().map(|m| (m["msgId"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
    assert_eq!(found, [(&*original, "first")], "stored once, as first sent");
    assert_eq!(db.count("SELECT count(*) FROM message WHERE client_msg_id = 'm1'"), 1);
    // Bob was offline: the message waits for him once, not twice.
    let (mut bob, _) = Client::connect(a, "t-bob");
    assert_eq!(bob.recv_type("chat")["data"]["msgId"], original.as_str());
    bob.assert_nothing_pending("the retry was not queued again");
}

// The writers end with the shards, not at the shutdown timeout: the node lets go of its own
// handle on the store once the shards have started, and a writer that is told the node stops
// commits what is queued and ends.
#[test]
fn a_node_stops_once_its_writes_are_committed_not_at_the_shutdown_timeout() {
    let db = TestDb::migrated();
    let (node, [a, _]) = node_on(&db, |f| f.server.shutdown_timeout_ms = 3000);
    let (mut alice, _) = Client::connect(a, "t-alice");
    alice.chat_to("bob", "s1", "before the stop");
    alice.sent_id("s1");
    drop(alice);
    let t0 = Instant::now();
    assert!(node.shutdown(), "the node stops cleanly");
    assert!(t0.elapsed() < Duration::from_millis(1500), "an idle node took {:?} to stop", t0.elapsed());
    assert_eq!(db.count("SELECT count(*) FROM message WHERE client_msg_id = 's1'"), 1);
}

/// A history page as the pager saw it.
struct Page {
    /// The message ids, newest first.
    ids: Vec<String>,
    /// Whether the node said there were older pages.
    more: bool,
    /// Its place in its walk from the newest page (0).
    index: usize,
    /// Every message acknowledged `sent` to its sender before the page was asked for.
    acked_before: HashSet<String>,
}

#[test]
fn history_pages_never_skip_a_message_while_others_send() {
    const PER_SENDER: usize = 60;
    const SENDERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
    let db = TestDb::migrated();
    let (_node, addrs) = node_on(&db, |_| {});
    // Server id -> (sender, its place in the sender's sequence).
    let acked: Arc<Mutex<HashMap<String, (usize, usize)>>> = Arc::default();
    let senders: Vec<_> = SENDERS
        .iter()
        .enumerate()
        .map(|(s, user)| {
            let (mut c, _) = Client::connect(addrs[s % 2], &format!("t-{user}"));
            let acked = acked.clone();
            std::thread::spawn(move || {
                for k in 0..PER_SENDER {
                    let cid = format!("{s}-{k}");
                    c.chat_in("general", &cid, &format!("message {cid}"));
                    let id = c.sent_id(&cid);
                    acked.lock().unwrap().insert(id, (s, k));
                }
            })
        })
        .collect();

    let (mut pager, _) = Client::connect(addrs[1], "t-pager");
    assert!(wait_until(Duration::from_secs(10), || !acked.lock().unwrap().is_empty()), "no message was acked");
    let mut pages: Vec<Page> = Vec::new();
    let mut walks_while_sending = 0;
    while senders.iter().any(|t| !t.is_finished()) {
        walks_while_sending += 1;
        let mut before: Option<String> = None;
        for index in 0.. {
            let acked_before: HashSet<String> = acked.lock().unwrap().keys().cloned().collect();
            let mut data = json!({"roomId": "general", "limit": 7});
            if let Some(c) = &before {
                data["before"] = json!(c);
            }
            let (messages, next) = pager.history_page(data);
            let ids = messages.iter().map(|m| m["msgId"].as_str().unwrap().to_string()).collect();
            pages.push(Page { ids, more: next.is_some(), index, acked_before });
            match next {
                Some(c) => before = Some(c),
                None => break,
            }
        }
    }
    for t in senders {
        t.join().expect("a sender failed");
    }
    let acked = acked.lock().unwrap().clone();
    let total = SENDERS.len() * PER_SENDER;
    assert_eq!(acked.len(), total, "every message was acked with an id of its own");

    // Where each message stands in the room, from the database.
    let seq_of: HashMap<String, u64> = db
        .strings("SELECT id::text || ' ' || seq FROM message WHERE target = 'general'")
        .iter()
        .map(|row| {
            let (id, seq) = row.split_once(' ').unwrap();
            (id.to_string(), seq.parse().unwrap())
        })
        .collect();
    assert_eq!(seq_of.len(), total, "the room holds exactly the acked messages");

    // After the last ack: one walk from the newest sees every message once, seqs without gaps,
    // each sender's messages in the order it sent them.
    let all = pager.whole_history(("roomId", "general"), 50);
    let ids: Vec<String> = all.iter().map(|m| m["msgId"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), total, "each message once");
    assert_eq!(ids.iter().collect::<HashSet<_>>(), acked.keys().collect::<HashSet<_>>(), "exactly the acked messages");
    let seqs: Vec<u64> = ids.iter().map(|id| seq_of[id]).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "oldest first, seqs from 1 without gaps");
    for s in 0..SENDERS.len() {
        let places: Vec<usize> = ids.iter().filter(|id| acked[*id].0 == s).map(|id| acked[id].1).collect();
        assert_eq!(places, (0..PER_SENDER).collect::<Vec<_>>(), "sender {s}'s messages in the order it sent them");
    }

    // The walks made while others sent: each page is a run of consecutive seqs that starts
    // right below the previous page, and holds every message acked before it was asked for
    // whose seq falls in its range.
    assert!(walks_while_sending >= 1 && !pages.is_empty());
    let mut previous_low: Option<u64> = None;
    for (n, page) in pages.iter().enumerate() {
        let seqs: Vec<u64> = page.ids.iter().map(|id| seq_of[id]).collect();
        if page.index == 0 {
            previous_low = None;
        }
        assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1), "page {n}: seqs not consecutive: {seqs:?}");
        if let (Some(low), Some(first)) = (previous_low, seqs.first()) {
            assert_eq!(*first, low - 1, "page {n} does not start right below the page before it");
        }
        let high = previous_low.map_or(u64::MAX, |l| l - 1);
        let low = if page.more { *seqs.last().expect("a page with more after it is not empty") } else { 1 };
        let missing: Vec<u64> = page
            .acked_before
            .iter()
            .map(|id| seq_of[id])
            .filter(|s| (low..=high).contains(s) && !seqs.contains(s))
            .collect();
        assert!(missing.is_empty(), "page {n} (seqs {seqs:?}) skipped acked messages at seqs {missing:?}");
        previous_low = seqs.last().copied().or(previous_low);
    }
}

/// A Socket.IO client of the IM events (`docs/im-events.md`) over a raw WebSocket.
struct Im {
    ws: Ws,
    next_ack: u64,
}

impl Im {
    /// Connects to the main namespace with `auth: {token}`.
    fn connect(addr: SocketAddr, token: &str) -> Im {
        let mut ws = ws(addr, "/socket.io/?EIO=4&transport=websocket");
        assert!(sio_text(&mut ws).unwrap().starts_with("0{"), "Engine.IO open packet");
        ws.send(Message::text(format!("40{}", json!({"token": token})))).unwrap();
        let connected = sio_text(&mut ws).unwrap();
        assert!(connected.starts_with("40{\"sid\""), "{connected}");
        Im { ws, next_ack: 1 }
    }

    /// Emits `event` with `data` and returns the ack's argument, skipping the broadcasts that
    /// arrive meanwhile.
    fn call(&mut self, event: &str, data: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws.send(Message::text(format!("42{id}{}", json!([event, data])))).unwrap();
        let prefix = format!("43{id}[");
        loop {
            let t = sio_text(&mut self.ws).expect("the connection stays open");
            if let Some(rest) = t.strip_prefix(&prefix) {
                let args: Value = serde_json::from_str(&format!("[{rest}")).unwrap();
                return args[0].clone();
            }
        }
    }
}

/// What one client did to one message: an edit (with the body it set), a delete, or a
/// reaction, and what the node answered.
#[derive(Debug, Clone)]
enum Op {
    Edit { body: String },
    Delete,
    React { user: String, emoji: String, add: bool },
}

#[test]
fn racing_edits_deletes_and_reactions_end_in_a_consistent_state() {
    const MESSAGES: usize = 6;
    const MAX_EDITS: usize = 3;
    const EMOJIS: [&str; 2] = ["👍", "🎉"];
    let db = TestDb::migrated();
    let (_node, addrs) = node_on(&db, |f| f.store.max_edits_per_message = MAX_EDITS);
    let mut author = Im::connect(addrs[0], "t-alice");
    let ids: Vec<String> = (0..MESSAGES)
        .map(|i| {
            let ack = author.call("message:send", json!({"channel_id": "race", "body": format!("original {i}")}));
            assert_eq!(ack["ok"], true, "{ack}");
            ack["message"]["id"].as_str().unwrap().to_string()
        })
        .collect();
    let to_delete: BTreeSet<usize> = [0, 2, 4].into();

    // Two sockets of the author (one per shard) edit every message in turn; the second also
    // deletes three of them partway. Three other users (on both shards) add and remove two
    // emojis on every message, each waiting for its answer before its next operation.
    type Log = Vec<(usize, Op, Value)>;
    let mut workers: Vec<std::thread::JoinHandle<Log>> = Vec::new();
    for (w, addr) in addrs.iter().enumerate() {
        let (ids, to_delete, addr) = (ids.clone(), to_delete.clone(), *addr);
        workers.push(std::thread::spawn(move || {
            let mut c = Im::connect(addr, "t-alice");
            let mut log = Log::new();
            for round in 0..6 {
                for (i, id) in ids.iter().enumerate() {
                    let body = format!("editor {w} round {round} message {i}");
                    let ack = c.call("message:edit", json!({"channel_id": "race", "message_id": id, "body": body}));
                    log.push((i, Op::Edit { body }, ack));
                    if w == 1 && round == 2 && to_delete.contains(&i) {
                        let ack = c.call("message:delete", json!({"channel_id": "race", "message_id": id}));
                        log.push((i, Op::Delete, ack));
                    }
                }
            }
            log
        }));
    }
    for (r, user) in ["bob", "carol", "dave"].into_iter().enumerate() {
        let (ids, addr) = (ids.clone(), addrs[r % 2]);
        workers.push(std::thread::spawn(move || {
            let mut c = Im::connect(addr, &format!("t-{user}"));
            let mut log = Log::new();
            for round in 0..4 {
                for (i, id) in ids.iter().enumerate() {
                    for (e, emoji) in EMOJIS.iter().enumerate() {
                        let add = (round + i + r + e) % 3 != 0;
                        let event = if add { "reaction:add" } else { "reaction:remove" };
                        let ack = c.call(event, json!({"channel_id": "race", "message_id": id, "emoji": emoji}));
                        log.push((i, Op::React { user: user.to_string(), emoji: emoji.to_string(), add }, ack));
                    }
                }
            }
            log
        }));
    }
    let logs: Vec<Log> = workers.into_iter().map(|t| t.join().expect("a client failed")).collect();

    let reader_page = author.call("message:history", json!({"channel_id": "race", "limit": 100}));
    assert_eq!(reader_page["ok"], true, "{reader_page}");
    let finals: HashMap<String, Value> = reader_page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m.clone()))
        .collect();
    assert_eq!(finals.len(), MESSAGES);
    let mut reacted = 0;

    for (i, id) in ids.iter().enumerate() {
        let m = &finals[id];
        let ops = logs.iter().flatten().filter(|(j, _, _)| *j == i);
        let deleted = to_delete.contains(&i);
        assert_eq!(m["deleted"], deleted, "message {i}: {m}");
        // What each operation was answered: ok, or refused only because the message was deleted.
        for (_, op, ack) in ops.clone() {
            if ack["ok"] != true {
                assert!(deleted && ack["error"]["code"] == "deleted", "message {i}: {op:?} refused: {ack}");
            }
        }
        if deleted {
            // The deleting socket edits it again afterwards: the race did happen.
            assert!(
                ops.clone().any(|(_, _, ack)| ack["error"]["code"] == "deleted"),
                "message {i}: nothing after its delete"
            );
            assert_eq!((m["body"].as_str(), m["edit_history"].as_array().map(Vec::len)), (Some(""), Some(0)), "{m}");
        } else {
            // Every edit was applied once, one after another: each acked edit replaced the body
            // the one before it set, starting from the original, and the last one's body stays.
            let replaced: HashMap<String, String> = ops
                .clone()
                .filter_map(|(_, op, ack)| match op {
                    Op::Edit { body } => {
                        let previous = ack["message"]["edit_history"].as_array()?.last()?["body"].as_str()?;
                        Some((previous.to_string(), body.clone()))
                    }
                    _ => None,
                })
                .collect();
            let edits = ops.clone().filter(|(_, op, _)| matches!(op, Op::Edit { .. })).count();
            let mut chain = vec![format!("original {i}")];
            while let Some(next) = replaced.get(chain.last().unwrap()) {
                chain.push(next.clone());
            }
            assert_eq!(chain.len(), edits + 1, "message {i}: the edits do not form one sequence: {chain:?}");
            assert_eq!(m["body"].as_str(), chain.last().map(String::as_str), "message {i}: the last edit's body");
            let history: Vec<&str> =
                m["edit_history"].as_array().unwrap().iter().map(|e| e["body"].as_str().unwrap()).collect();
            let kept = &chain[chain.len().saturating_sub(1 + MAX_EDITS)..chain.len() - 1];
            assert_eq!(history, kept, "message {i}: the newest {MAX_EDITS} previous bodies, oldest first");
        }
        // Reactions: for each (user, emoji), what that user's last applied operation said.
        let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut last: BTreeMap<(String, String), bool> = BTreeMap::new();
        for (_, op, ack) in ops {
            if let (Op::React { user, emoji, add }, true) = (op, ack["ok"] == true) {
                last.insert((user.clone(), emoji.clone()), *add);
            }
        }
        for ((user, emoji), add) in last {
            if add {
                expected.entry(emoji).or_default().insert(user);
            }
        }
        let actual: BTreeMap<String, BTreeSet<String>> = serde_json::from_value(m["reactions"].clone()).unwrap();
        assert_eq!(actual, expected, "message {i}: reactions");
        reacted += actual.values().map(BTreeSet::len).sum::<usize>();
    }
    assert!(reacted > 0, "no reaction was left to compare");
}

#[test]
fn health_reports_postgres_up_and_metrics_count_commits() {
    let db = TestDb::migrated();
    let (_node, [a, b]) = node_on(&db, |f| f.store.postgres.health_interval_ms = 50);
    for addr in [a, b] {
        let pinged = || {
            let check = &health(addr)["checks"]["postgres"];
            check["status"] == "up" && check["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0)
        };
        assert!(wait_until(Duration::from_secs(5), pinged), "{}", health(addr)["checks"]);
    }
    let commits = || metric_sum(a, "imks_store_pg_commits_total ");
    assert_eq!(commits(), 0, "nothing written yet");
    let (mut alice, _) = Client::connect(b, "t-alice");
    for i in 0..5 {
        alice.chat_to("bob", &format!("h{i}"), "counted");
        alice.sent_id(&format!("h{i}"));
    }
    assert!(commits() > 0, "commits: {}", commits());
    assert!(metric_sum(b, "imks_store_pg_rows_total ") >= 5, "every message is a committed row");
    assert_eq!(metric_sum(a, "imks_store_pg_up "), 1);
}

/// A login whose offline queue cannot be read yet (its rows are locked) holds only the
/// messages routed to that user: the shard's other chat work goes on, and once the queue is
/// read the user gets it first, then what arrived meanwhile.
#[test]
fn a_login_waiting_for_its_offline_queue_holds_only_its_own_messages() {
    let db = TestDb::migrated();
    let (_node, [a, b]) = node_on(&db, |_| {});
    let (mut alice, _) = Client::connect(a, "t-alice");
    for i in 0..3 {
        alice.chat_to("carol", &format!("q{i}"), &format!("queued {i}"));
        alice.sent_id(&format!("q{i}"));
    }
    // Two other users whose conversation and recipient live on carol's home shard, whose chat
    // worker her login would hold if it waited there.
    let home = imks::chat::home_shard("default", "carol", 2);
    let (x, y) = ["bob", "dave", "erin", "pager"]
        .iter()
        .flat_map(|x| ["bob", "dave", "erin", "pager"].map(|y| (*x, y)))
        .find(|(x, y)| {
            x != y
                && imks::store::ConversationKey::direct("default", x, y).owner_shard(2) == home
                && imks::chat::home_shard("default", y, 2) == home
        })
        .expect("a pair of users on carol's home shard");

    // Carol's queued rows only: her login's read waits, the writer's inserts do not.
    let lock = HeldLock::take(&db.url(), "SELECT * FROM message_offline WHERE user_id = 'carol' FOR UPDATE");
    let (mut carol, _) = Client::connect(b, "t-carol");
    let (mut cx, _) = Client::connect(a, &format!("t-{x}"));
    let (mut cy, _) = Client::connect(b, &format!("t-{y}"));
    cx.chat_to(y, "live", "while carol logs in");
    let deadline = Instant::now() + Duration::from_secs(5);
    assert!(matches!(cx.answer_until("live", deadline), Some(Answer::Sent(_))), "the shard's chat work goes on");
    assert_eq!(cy.recv_type("chat")["data"]["content"], "while carol logs in");
    alice.chat_to("carol", "late", "after the login");
    alice.sent_id("late");
    assert_eq!(
        carol.recv_until(Instant::now() + Duration::from_millis(300)),
        None,
        "nothing reaches carol before her queue"
    );

    drop(lock);
    let got: Vec<Value> = (0..4).map(|_| carol.recv_type("chat")["data"]["content"].clone()).collect();
    assert_eq!(got, ["queued 0", "queued 1", "queued 2", "after the login"], "the queue first, then the rest");
    assert_eq!(db.count("SELECT count(*) FROM message_offline"), 0);
}

/// While the writer cannot commit (the message table is locked), writes wait in the queue up to
/// `store.postgres.max_queued_writes`; one more is refused at once with `unavailable` and a
/// retry hint, and nothing is acknowledged before its commit. Once the lock goes, everything
/// queued commits and is acknowledged, and a retry of the refused message is stored once.
#[test]
fn past_the_queue_bound_a_write_is_refused_at_once_and_the_queued_ones_commit_later() {
    let db = TestDb::migrated();
    let (_node, [a, _]) = node_on(&db, |f| {
        f.store.postgres.max_queued_writes = 3;
        f.store.postgres.write_timeout_ms = 30_000;
    });
    let (mut alice, _) = Client::connect(a, "t-alice");
    alice.chat_to("bob", "warm", "before the lock");
    alice.sent_id("warm");
    // Bob is offline: the message's queue entry is a write too; let it commit first, so the
    // bound below counts only the writes of this test.
    assert!(wait_until(Duration::from_secs(5), || db.count("SELECT count(*) FROM message_offline") == 1));

    let lock = HeldLock::take(&db.url(), "LOCK TABLE message IN ACCESS EXCLUSIVE MODE");
    for i in 0..3 {
        alice.chat_to("bob", &format!("q{i}"), &format!("queued {i}"));
    }
    alice.chat_to("bob", "over", "one too many");
    let t0 = Instant::now();
    match alice.answer_until("over", t0 + Duration::from_secs(5)) {
        Some(Answer::Error { code, reason, retry_after_ms }) => {
            assert_eq!((code.as_str(), reason.as_str()), ("store_failed", "unavailable"));
            assert!(retry_after_ms.is_some_and(|ms| ms > 0), "with a retry hint");
        }
        other => panic!("the fourth write should be refused at once, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "refused at once, not after a timeout");
    assert_eq!(
        alice.recv_until(Instant::now() + Duration::from_millis(300)),
        None,
        "nothing is acknowledged while the database cannot commit"
    );

    drop(lock);
    let acked: Vec<String> = (0..3).map(|i| alice.sent_id(&format!("q{i}"))).collect();
    // Their queue entries for offline bob are writes too: the retry comes once they are in.
    assert!(wait_until(Duration::from_secs(5), || db.count("SELECT count(*) FROM message_offline") == 4));
    alice.chat_to("bob", "over", "one too many");
    let retried = alice.sent_id("over");
    assert_eq!(
        db.count("SELECT count(*) FROM message WHERE client_msg_id IN ('q0', 'q1', 'q2', 'over')"),
        4,
        "the queued writes and the retry, each once"
    );
    assert!(!acked.contains(&retried));
    assert_eq!(db.count("SELECT count(*) FROM message WHERE client_msg_id = 'over'"), 1);
}

/// A read the database does not answer within `store.postgres.read_timeout_ms` (the message
/// table is locked) is answered `unavailable`, and the next one, once it can, is served.
#[test]
fn a_read_past_its_timeout_is_answered_unavailable() {
    let db = TestDb::migrated();
    let (_node, [a, _]) = node_on(&db, |f| f.store.postgres.read_timeout_ms = 400);
    let (mut alice, _) = Client::connect(a, "t-alice");
    alice.chat_to("bob", "m1", "hello");
    alice.sent_id("m1");

    let lock = HeldLock::take(&db.url(), "LOCK TABLE message IN ACCESS EXCLUSIVE MODE");
    let t0 = Instant::now();
    alice.send(json!({"type": "history", "id": "h1", "data": {"peerId": "bob"}}));
    let answer = loop {
        let m = alice.recv_until(t0 + Duration::from_secs(5)).expect("an answer to the history request");
        if m["id"] == "h1" {
            break m;
        }
    };
    assert_eq!(
        (answer["type"].as_str(), answer["data"]["reason"].as_str()),
        (Some("error"), Some("unavailable")),
        "{answer}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(400) && t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(lock);
    let (page, _) = alice.history_page(json!({"peerId": "bob"}));
    assert_eq!(page.len(), 1, "served again once the database answers");
}

/// The connection drops after the database committed a batch but before the writer heard
/// (the answer is lost on the way): the writer reconnects, reads its `store_writer` row, finds
/// the batch committed and acknowledges it with the ids it stored; a retry of the message is
/// acknowledged with the same id; the database holds it once.
#[test]
fn a_commit_whose_answer_is_lost_is_acked_once_with_its_stored_id() {
    let db = TestDb::migrated();
    let proxy = common::pg::CuttingProxy::start();
    let url = proxy.url(&db);
    let (node, [a, _]) = node_on(&db, |f| {
        f.store.postgres.url = url;
        // No pings on the way: the lost answer is the writer's.
        f.store.postgres.health_interval_ms = 600_000;
        f.store.postgres.reconnect_max_ms = 100;
    });
    let (mut alice, _) = Client::connect(a, "t-alice");
    let (mut bob, _) = Client::connect(a, "t-bob");
    alice.chat_to("bob", "warm", "the writer is connected");
    alice.sent_id("warm");
    bob.recv_type("chat");
    // Nothing else in flight when the answer is cut: the delivery mark of "warm" is committed
    // (its ack follows the commit) and the health ping has connected and answered.
    let delivered = alice.recv_type("ack");
    assert_eq!(delivered["data"]["status"], "delivered", "{delivered}");
    assert!(wait_until(Duration::from_secs(5), || health(a)["checks"]["postgres"]["latency_ms"].is_number()));

    proxy.cut_next_answer();
    alice.chat_to("bob", "m1", "committed, answer lost");
    let first = alice.sent_id("m1");
    assert_eq!(proxy.cuts(), 1, "the batch's answer was lost");
    assert!(metric_sum(a, "imks_store_pg_reconnects_total") >= 1, "the writer reconnected");
    alice.chat_to("bob", "m1", "retried");
    assert_eq!(alice.sent_id("m1"), first, "the retry is acknowledged with the stored id");
    assert_eq!(db.count("SELECT count(*) FROM message WHERE client_msg_id = 'm1'"), 1, "stored once");
    assert_eq!(bob.recv_type("chat")["data"]["content"], "committed, answer lost", "delivered once");
    bob.assert_nothing_pending("the retry is not delivered again");
    drop(node);
}
