//! The native protocol across nodes over the real local NATS: direct messages with their
//! `sent`, `delivered` and `read` acks to users whose sessions are on other nodes (several
//! devices on several nodes), offline queues, presence, kicks on a newer login elsewhere,
//! rooms, and de-duplication by `msgId` across nodes. Postgres is the shared store where a
//! test needs one (read state, the offline queue, de-duplication).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::native::{cluster_node, login, Client};
use common::pg::TestDb;
use common::*;
use imks::config::file::FileConfig;
use imks::Node;
use serde_json::json;

const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

fn prefix() -> String {
    format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A two-shard node of the cluster `prefix`, on Postgres when `db` is given.
fn node(prefix: &str, db: Option<&TestDb>, tweak: impl FnOnce(&mut FileConfig)) -> (Node, SocketAddr) {
    node_at(prefix, "nats://127.0.0.1:4222", db, tweak)
}

/// As [`node`], with the NATS at `url`.
fn node_at(prefix: &str, url: &str, db: Option<&TestDb>, tweak: impl FnOnce(&mut FileConfig)) -> (Node, SocketAddr) {
    cluster_node(prefix, url, USERS, db, tweak)
}

fn subscriptions(addr: SocketAddr) -> u64 {
    metric_sum(addr, "imks_cluster_subscriptions ")
}

/// Waits until the node has `n` subscriptions besides the control subject every node has.
fn wait_subscriptions(addr: SocketAddr, n: u64) {
    let n = n + 1;
    assert!(
        wait_until(Duration::from_secs(10), || subscriptions(addr) == n),
        "{addr}: {} subscriptions, expected {n}",
        subscriptions(addr)
    );
}

/// The `chat` messages a client receives until `n` have come, as (msgId, content).
fn chats(c: &mut Client, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.recv_type("chat");
        out.push((
            m["data"]["msgId"].as_str().unwrap().to_string(),
            m["data"]["content"].as_str().unwrap().to_string(),
        ));
    }
    out
}

/// Acks of `status` until one for each of `ids` came; counts every ack of that status seen.
fn acks(c: &mut Client, status: &str, ids: &[String]) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while !ids.iter().all(|i| seen.contains_key(i)) {
        let m = c.recv_type("ack");
        if m["data"]["status"] == status {
            *seen.entry(m["data"]["msgId"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    seen
}

#[test]
fn direct_messages_reach_devices_on_other_nodes_with_delivered_and_read_acks() {
    let (p, db) = (prefix(), TestDb::migrated());
    let nodes: Vec<(Node, SocketAddr)> = (0..3).map(|_| node(&p, Some(&db), |_| {})).collect();
    let [a, b, c] = [nodes[0].1, nodes[1].1, nodes[2].1];
    wait_cluster_up(&[a, b, c]);
    let mut alice = login(a, "alice");
    let mut bob_b = login(b, "bob");
    let mut bob_c = login(c, "bob");
    // Each node its own subject; A alice's, B and C bob's.
    for n in [a, b, c] {
        wait_subscriptions(n, 2);
    }
    for i in 0..20 {
        alice.chat_to("bob", &format!("m{i}"), &format!("hello {i}"));
    }
    // Every ack of alice's messages, by status: `sent` for each, and one `delivered` each
    // though two devices on two nodes got it.
    let mut by_status: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    while by_status.len() < 40 {
        let m = alice.recv_type("ack");
        let d = &m["data"];
        let key = (d["clientMsgId"].as_str().unwrap().to_string(), d["status"].as_str().unwrap().to_string());
        *by_status.entry(key).or_default() += 1;
        ids.insert(d["clientMsgId"].as_str().unwrap().to_string(), d["msgId"].as_str().unwrap().to_string());
    }
    assert!(by_status.values().all(|&n| n == 1), "{by_status:?}");
    let sent: Vec<String> = (0..20).map(|i| ids[&format!("m{i}")].clone()).collect();
    let expected: Vec<(String, String)> = (0..20).map(|i| (sent[i].clone(), format!("hello {i}"))).collect();
    assert_eq!(chats(&mut bob_b, 20), expected, "bob's device on B, in order");
    assert_eq!(chats(&mut bob_c, 20), expected, "bob's device on C, in order");
    alice.assert_nothing_pending("no second delivered ack");
    bob_b.assert_nothing_pending("B got each once");
    bob_c.assert_nothing_pending("C got each once");

    // Bob reads on B: alice, on A, hears of it.
    bob_b.send(json!({"type": "read", "data": {"peerId": "alice", "msgIds": [sent[19]]}}));
    let read = acks(&mut alice, "read", &sent[19..]);
    assert_eq!(read.get(&sent[19]), Some(&1));
    alice.assert_nothing_pending("one read ack");
}

#[test]
fn a_message_for_a_user_offline_everywhere_waits_for_a_login_on_any_node() {
    let (p, db) = (prefix(), TestDb::migrated());
    let (_a, a) = node(&p, Some(&db), |_| {});
    let (_b, b) = node(&p, Some(&db), |_| {});
    wait_cluster_up(&[a, b]);
    let mut alice = login(a, "alice");
    wait_subscriptions(a, 2);
    alice.chat_to("carol", "q1", "while you were out");
    let id = alice.sent_id("q1");
    // Queued by A (no node had carol), read by B at carol's login.
    assert!(wait_until(Duration::from_secs(5), || db.count("SELECT count(*) FROM message_offline") == 1));
    let mut carol = login(b, "carol");
    assert_eq!(chats(&mut carol, 1), vec![(id.clone(), "while you were out".to_string())]);
    // Delivered from the queue: acknowledged to the author's sessions, on A.
    assert_eq!(acks(&mut alice, "delivered", std::slice::from_ref(&id)).get(&id), Some(&1));
}

#[test]
fn a_retransmission_on_another_node_is_stored_and_delivered_once() {
    let (p, db) = (prefix(), TestDb::migrated());
    let (_a, a) = node(&p, Some(&db), |_| {});
    let (_b, b) = node(&p, Some(&db), |_| {});
    wait_cluster_up(&[a, b]);
    let mut bob = login(b, "bob");
    wait_subscriptions(b, 2);
    let mut first = login(a, "alice");
    first.chat_to("bob", "same", "once");
    let id = first.sent_id("same");
    assert_eq!(chats(&mut bob, 1), vec![(id.clone(), "once".to_string())]);
    // The client lost its answer, reconnected to another node and sent again.
    drop(first);
    let mut again = login(b, "alice");
    again.chat_to("bob", "same", "once");
    assert_eq!(again.sent_id("same"), id, "the same message");
    bob.assert_nothing_pending("not delivered twice");
    assert_eq!(db.count("SELECT count(*) FROM message"), 1);
    // Bob answers from B on the conversation A wrote to: its order goes on without a gap.
    bob.chat_to("alice", "r1", "reply");
    bob.sent_id("r1");
    let seqs = db.strings("SELECT seq::text FROM message ORDER BY message.seq");
    assert_eq!(seqs, ["1", "2"]);
}

#[test]
fn two_nodes_appending_to_one_conversation_keep_its_order_without_gaps() {
    let (p, db) = (prefix(), TestDb::migrated());
    let (_a, a) = node(&p, Some(&db), |_| {});
    let (_b, b) = node(&p, Some(&db), |_| {});
    wait_cluster_up(&[a, b]);
    let mut alice = login(a, "alice");
    let mut bob = login(b, "bob");
    wait_subscriptions(a, 2);
    wait_subscriptions(b, 2);
    // Both send at once, pipelined, to each other: one conversation, two writers.
    for i in 0..50 {
        alice.chat_to("bob", &format!("a{i}"), "x");
        bob.chat_to("alice", &format!("b{i}"), "y");
    }
    for i in 0..50 {
        alice.sent_id(&format!("a{i}"));
        bob.sent_id(&format!("b{i}"));
    }
    let seqs: Vec<i64> =
        db.strings("SELECT seq::text FROM message ORDER BY message.seq").iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<i64>>(), "every seq once, none skipped");
}

#[test]
fn presence_follows_a_user_over_every_node() {
    let p = prefix();
    let nodes: Vec<(Node, SocketAddr)> = (0..3).map(|_| node(&p, None, |_| {})).collect();
    let [a, b, c] = [nodes[0].1, nodes[1].1, nodes[2].1];
    wait_cluster_up(&[a, b, c]);
    // Bob is online on B before anyone watches: the first watcher on A learns it.
    let bob_b = login(b, "bob");
    wait_subscriptions(b, 2);
    let mut watcher = login(a, "alice");
    watcher.send(json!({"type": "presence:subscribe", "data": {"userIds": ["bob", "dave"]}}));
    let mut state = BTreeMap::new();
    while state.len() < 2 {
        let m = watcher.recv_type("presence");
        state.insert(m["data"]["userId"].as_str().unwrap().to_string(), m["data"]["online"].clone());
    }
    assert_eq!(state["bob"], true, "online on another node");
    assert_eq!(state["dave"], false);
    // A: its subject, alice's, bob's and dave's presence.
    wait_subscriptions(a, 4);

    // Dave comes online on C: online. A second device on C: nothing new.
    let dave = login(c, "dave");
    assert_eq!(watcher.recv_type("online")["data"]["userId"], "dave");
    // Presence from different nodes is not ordered between them: wait until A has C's news
    // of Bob before B's can follow, or A may hear B's "gone" first and see Bob offline for a
    // moment (see docs/cluster.md, presence).
    let presence_heard = || metric_sum(a, "imks_cluster_received_messages_total{kind=\"presence\"}");
    let heard = presence_heard();
    let bob_c = login(c, "bob");
    assert!(wait_until(Duration::from_secs(10), || presence_heard() > heard), "C's news of Bob never reached A");
    // Bob leaves B but is still on C: nothing. Then C too: offline.
    let heard = presence_heard();
    drop(bob_b);
    assert!(wait_until(Duration::from_secs(10), || presence_heard() > heard), "B's news of Bob never reached A");
    watcher.assert_nothing_pending("bob is still online on C");
    drop(bob_c);
    assert_eq!(watcher.recv_type("offline")["data"]["userId"], "bob");
    drop(dave);
    assert_eq!(watcher.recv_type("offline")["data"]["userId"], "dave");
}

#[test]
fn a_newer_login_on_another_node_kicks_the_older_session() {
    let p = prefix();
    let kick = |f: &mut FileConfig| f.chat.duplicate_login = imks::chat::DuplicateLogin::KickOldest;
    let (_a, a) = node(&p, None, kick);
    let (_b, b) = node(&p, None, kick);
    wait_cluster_up(&[a, b]);
    let mut old = login(a, "bob");
    wait_subscriptions(a, 2);
    let mut new = login(b, "bob");
    let kicked = old.recv_type("kicked");
    assert_eq!(kicked["data"]["reason"], "duplicate_login");
    let code = loop {
        match old.ws.read() {
            Ok(tungstenite::Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(4001));
    new.assert_nothing_pending("the newer session stays");
    // And it still gets bob's messages.
    let mut alice = login(a, "alice");
    alice.chat_to("bob", "k1", "still here?");
    let id = alice.sent_id("k1");
    assert_eq!(chats(&mut new, 1), vec![(id, "still here?".to_string())]);
}

#[test]
fn room_messages_reach_members_on_every_node_once() {
    let p = prefix();
    let nodes: Vec<(Node, SocketAddr)> = (0..3).map(|_| node(&p, None, |_| {})).collect();
    let [a, b, c] = [nodes[0].1, nodes[1].1, nodes[2].1];
    wait_cluster_up(&[a, b, c]);
    let mut members: Vec<Client> = [(a, "alice"), (b, "bob"), (c, "carol"), (c, "dave")]
        .into_iter()
        .map(|(n, u)| {
            let mut cl = login(n, u);
            cl.send(json!({"type": "join", "data": {"roomId": "lobby"}}));
            cl.recv_type("joined");
            cl
        })
        .collect();
    let mut outsider = login(b, "erin");
    // Each node its subject, its users' and the room.
    wait_subscriptions(a, 3);
    wait_subscriptions(b, 4);
    wait_subscriptions(c, 4);
    for i in 0..10 {
        members[0].chat_in("lobby", &format!("l{i}"), &format!("to all {i}"));
        members[0].sent_id(&format!("l{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for m in members.iter_mut().skip(1) {
        let got: Vec<String> = chats(m, 10).into_iter().map(|(_, c)| c).collect();
        assert_eq!(got, (0..10).map(|i| format!("to all {i}")).collect::<Vec<_>>());
        m.assert_nothing_pending("each once");
        assert!(Instant::now() < deadline);
    }
    outsider.assert_nothing_pending("not a member");
}

#[test]
fn sessions_of_a_node_cut_off_from_nats_are_told_to_fetch_history_again() {
    let p = prefix();
    let proxy = common::proxy::TcpProxy::start("127.0.0.1:4222");
    let (_a, a) = node_at(&p, &format!("nats://{}", proxy.addr()), None, |_| {});
    wait_cluster_up(&[a]);
    let mut bob = login(a, "bob");
    wait_subscriptions(a, 2);
    let reconnects = || metric_sum(a, "imks_cluster_reconnects_total");
    assert_eq!(reconnects(), 0);
    assert!(proxy.cut() >= 1, "the proxy carried the node's connection");
    assert!(wait_until(Duration::from_secs(15), || reconnects() >= 1), "the node reconnected");
    // Whatever other nodes sent meanwhile is lost to this one: its sessions hear of it.
    let notice = bob.recv_type("resync");
    assert_eq!(notice["data"]["reason"], "cluster_gap");
    bob.assert_nothing_pending("one notice");
}

/// A burst of direct messages to a user whose sessions are all on another node: each is routed
/// by a request to that node, later ones held until its answer; they reach every device in the
/// order they were sent, each once, however the answers and the burst interleave.
#[test]
fn a_burst_of_direct_messages_to_another_node_keeps_its_order() {
    const N: usize = 300;
    let p = prefix();
    let (_a, a) = node(&p, None, |_| {});
    let (_b, b) = node(&p, None, |_| {});
    wait_cluster_up(&[a, b]);
    let mut alice = login(a, "alice");
    let mut bob = login(b, "bob");
    // Each node its own subject and its user's.
    wait_subscriptions(a, 2);
    wait_subscriptions(b, 2);
    for i in 0..N {
        alice.chat_to("bob", &format!("m{i}"), &format!("burst {i}"));
        // Now and then a pause, so some arrive while a route is under way and some after.
        if i % 7 == 3 {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    let got: Vec<String> = chats(&mut bob, N).into_iter().map(|(_, c)| c).collect();
    assert_eq!(got, (0..N).map(|i| format!("burst {i}")).collect::<Vec<_>>(), "in order, each once");
    bob.assert_nothing_pending("nothing more");
}
