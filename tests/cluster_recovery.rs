//! Socket.IO connection-state recovery across nodes, with the nodes as real processes over the
//! real local NATS (JetStream): a node killed with `kill -9` while a room's broadcasts flow,
//! its clients recovering on another node with no gap and no duplicate, a client that had
//! received nothing yet, and a recovery that is impossible (`recovered` false, never a gap).

mod common;

use std::time::Duration;

use common::recovery::*;
use common::*;
use serde_json::json;
use tungstenite::Message;

#[test]
fn clients_of_a_killed_node_recover_on_another_with_no_gap_and_no_duplicate() {
    let prefix = format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let (mut x_proc, x) = spawn_node(&prefix);
    let (_y_proc, y) = spawn_node(&prefix);
    wait_recovery_ready(x);
    wait_recovery_ready(y);

    let mut publisher = Client::connect(y, None);
    // One client receives part of the flow; another is in a room that stays quiet until X dies.
    let mut early = Client::connect(x, None);
    early.call("join", json!("flow"));
    let mut quiet = Client::connect(x, None);
    quiet.call("join", json!("later"));
    // One more, that will come back with no offset at all (a client whose server sent it none).
    let mut bare = Client::connect(x, None);
    bare.call("join", json!("later"));
    let (bare_sid, bare_pid) = (bare.sid.clone(), bare.pid.clone());
    // X's subjects: the control subject, its own, the namespace's and the two rooms'.
    assert!(wait_until(Duration::from_secs(10), || metric_sum(x, "imks_cluster_subscriptions ") == 5));

    for n in 0..100 {
        publisher.emit("publish", json!({"room": "flow", "n": n}));
    }
    early.until(99);
    assert_eq!(early.got, (0..100).collect::<Vec<u64>>());
    let (early_sid, early_pid, offset) = (early.sid.clone(), early.pid.clone(), early.offset.clone().unwrap());
    let (quiet_sid, quiet_pid) = (quiet.sid.clone(), quiet.pid.clone());
    // The quiet client got no broadcast, only its greeting, whose offset is its place in the
    // stream when it connected.
    let quiet_offset = quiet.offset.clone().expect("the greeting's offset");
    assert!(quiet_offset.split_once('-').is_some_and(|(e, _)| e.parse::<u64>().is_ok()), "{quiet_offset}");

    // kill -9, while the flow goes on.
    x_proc.0.kill().expect("SIGKILL");
    let _ = x_proc.0.wait();
    let flow = std::thread::spawn(move || {
        for n in 100..300 {
            publisher.emit("publish", json!({"room": "flow", "n": n}));
            std::thread::sleep(Duration::from_millis(1));
        }
        for n in 0..20 {
            publisher.emit("publish", json!({"room": "later", "n": 1000 + n}));
        }
        publisher
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut back = Client::connect(y, Some((&early_pid, Some(&offset))));
    assert_eq!((back.sid.as_str(), back.pid.as_str()), (early_sid.as_str(), early_pid.as_str()), "recovered");
    let _publisher = flow.join().unwrap();
    back.until(299);
    assert_eq!(back.got, (100..300).collect::<Vec<u64>>(), "the rest, in order, each once");

    // The client that had no offset yet gets everything after it connected.
    let mut quiet_back = Client::connect(y, Some((&quiet_pid, Some(&quiet_offset))));
    assert_eq!(quiet_back.sid, quiet_sid, "recovered from its greeting's offset");
    quiet_back.until(1019);
    assert_eq!(quiet_back.got, (1000..1020).collect::<Vec<u64>>());
    let mut bare_back = Client::connect(y, Some((&bare_pid, None)));
    assert_eq!(bare_back.sid, bare_sid, "recovered with no offset");
    bare_back.until(1019);
    assert_eq!(bare_back.got, (1000..1020).collect::<Vec<u64>>());

    // An unknown session, or an offset of another epoch: a fresh socket, `recovered` false.
    let fresh = Client::connect(y, Some(("nobody.node.0", Some("1-1"))));
    assert_ne!(fresh.pid, "nobody.node.0");
    let stale = Client::connect(y, Some((&early_pid, Some("1-5"))));
    assert_ne!(stale.sid, early_sid, "an offset of another epoch is not recovered");
    delete_streams(&prefix);
}

#[test]
fn cut_off_from_nats_a_node_with_recovery_still_delivers_its_own_broadcasts() {
    let prefix = format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    // Nothing listens on port 9: the stream cannot sequence anything.
    let (_proc, x) = spawn_node_at(&prefix, "nats://127.0.0.1:9");
    let mut member = Client::connect(x, None);
    member.call("join", json!("local"));
    let mut publisher = Client::connect(x, None);
    for n in 0..10 {
        publisher.emit("publish", json!({"room": "local", "n": n}));
    }
    member.until(9);
    assert_eq!(member.got, (0..10).collect::<Vec<u64>>());
    // A node-local offset: no other node could recover from it, and none pretends to.
    let offset = member.offset.clone().expect("an offset");
    assert!(!offset.chars().next().is_some_and(|c| c.is_ascii_digit()), "not a stream offset: {offset}");
}

#[test]
fn broadcasts_a_node_missed_while_cut_off_reach_its_clients_from_the_stream() {
    let prefix = format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let proxy = common::proxy::TcpProxy::start("127.0.0.1:4222");
    let (_x_proc, x) = spawn_node_at(&prefix, &format!("nats://{}", proxy.addr()));
    let (_y_proc, y) = spawn_node(&prefix);
    wait_recovery_ready(x);
    wait_recovery_ready(y);
    let mut member = Client::connect(x, None);
    member.call("join", json!("flow"));
    assert!(wait_until(Duration::from_secs(10), || metric_sum(x, "imks_cluster_subscriptions ") == 4));
    let mut publisher = Client::connect(y, None);
    for n in 0..50 {
        publisher.emit("publish", json!({"room": "flow", "n": n}));
    }
    member.until(49);
    // X is cut off; what Y publishes meanwhile never reaches X over core NATS.
    assert!(proxy.cut() >= 1);
    for n in 50..100 {
        publisher.emit("publish", json!({"room": "flow", "n": n}));
    }
    assert!(wait_until(Duration::from_secs(15), || metric_sum(x, "imks_cluster_reconnects_total") >= 1));
    // X closes its clients' transports rather than let their offsets hide the gap; the client
    // comes back with its last offset and gets the rest from the stream.
    let ended = loop {
        match member.ws.read() {
            Ok(Message::Text(t)) if t.as_str() == "2" => member.ws.send(Message::text("3")).unwrap(),
            Ok(Message::Close(_)) => break true,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    assert!(ended, "the transport was closed");
    let (pid, offset) = (member.pid.clone(), member.offset.clone().expect("an offset"));
    let mut back = Client::connect(x, Some((&pid, Some(&offset))));
    assert_eq!(back.sid, member.sid, "recovered");
    for n in 100..120 {
        publisher.emit("publish", json!({"room": "flow", "n": n}));
    }
    back.until(119);
    let mut all = member.got.clone();
    all.extend(&back.got);
    assert_eq!(all, (0..120).collect::<Vec<u64>>(), "nothing lost, nothing twice");
    delete_streams(&prefix);
}

/// A node killed and started again under the same `cluster.node_id` within the stream's
/// de-duplication window: its broadcasts are new ones, not repeats of its former self's (the
/// stream keeps each message id once), and reach the other node's members.
#[test]
fn a_node_restarted_under_the_same_id_is_not_taken_for_a_repeat() {
    let prefix = format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let node_id = [("IMKS_CLUSTER__NODE_ID", "steady")];
    let nats = "nats://127.0.0.1:4222";
    let (mut x_proc, x) = spawn_node_with(&prefix, nats, &node_id);
    let (_y_proc, y) = spawn_node(&prefix);
    wait_recovery_ready(x);
    wait_recovery_ready(y);
    let mut member = Client::connect(y, None);
    member.call("join", json!("flow"));
    assert!(wait_until(Duration::from_secs(10), || metric_sum(y, "imks_cluster_subscriptions ") == 4));
    let mut publisher = Client::connect(x, None);
    for n in 0..10 {
        assert!(publisher.try_call("publish", json!({"room": "flow", "n": n})));
    }
    member.until(9);
    x_proc.0.kill().expect("SIGKILL");
    let _ = x_proc.0.wait();
    let (_x_again, x) = spawn_node_with(&prefix, nats, &node_id);
    wait_recovery_ready(x);
    let mut publisher = Client::connect(x, None);
    for n in 10..20 {
        assert!(publisher.try_call("publish", json!({"room": "flow", "n": n})));
    }
    member.until(19);
    assert_eq!(member.got, (0..20).collect::<Vec<u64>>(), "each once, in order");
    delete_streams(&prefix);
}

/// Cut off from NATS, a node holds its broadcasts for the stream up to `cluster.publish_queue`
/// in the outbox (and as many in the queue to it); past that they are dropped and counted,
/// and local delivery goes on.
#[test]
fn past_the_outbox_bound_broadcasts_are_dropped_counted_and_delivered_locally() {
    let prefix = format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let (_proc, x) = spawn_node_with(&prefix, "nats://127.0.0.1:9", &[("IMKS_CLUSTER__PUBLISH_QUEUE", "8")]);
    let mut member = Client::connect(x, None);
    member.call("join", json!("local"));
    let mut publisher = Client::connect(x, None);
    for n in 0..50 {
        assert!(publisher.try_call("publish", json!({"room": "local", "n": n})));
    }
    member.until(49);
    assert_eq!(member.got, (0..50).collect::<Vec<u64>>(), "every one delivered here");
    let held = || metric_sum(x, "imks_cluster_outbox ");
    let dropped = || metric_sum(x, "imks_cluster_dropped_total{reason=\"publish_queue\"}");
    let all = wait_until(Duration::from_secs(5), || held() + dropped() == 50);
    assert!(all, "each one held or counted: {} held, {} dropped", held(), dropped());
    assert!(held() <= 16, "held {}, at most the bound twice", held());
}
