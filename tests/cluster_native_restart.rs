//! The native protocol across nodes when NATS itself fails: a NATS of the test's own killed
//! with `kill -9` and started again while direct messages flow, on Postgres. A file of its own,
//! so its load does not run beside the timing of the other cross-node tests.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::native::{cluster_node, login};
use common::pg::TestDb;
use common::*;

/// NATS killed (`kill -9`) and started again while alice, on A, sends bob, on B, a direct
/// message every millisecond, on Postgres: every message acknowledged `sent` reaches bob, live,
/// or in his history with alice, which he is told to fetch again (`resync`) once his node is
/// back; none reaches him twice live.
#[test]
fn a_nats_restart_loses_no_direct_message_acknowledged_sent() {
    const N: usize = 400;
    let mut nats = common::nats::PrivateNats::start();
    let (p, db) = (format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff), TestDb::migrated());
    let (_a, a) = cluster_node(&p, &nats.url(), ["alice", "bob"], Some(&db), |_| {});
    let (_b, b) = cluster_node(&p, &nats.url(), ["alice", "bob"], Some(&db), |_| {});
    wait_cluster_up(&[a, b]);
    let mut alice = login(a, "alice");
    let mut bob = login(b, "bob");
    // The control subject, each node's own and its user's.
    for n in [a, b] {
        assert!(wait_until(Duration::from_secs(10), || metric_sum(n, "imks_cluster_subscriptions ") == 3));
    }
    for i in 0..N {
        alice.chat_to("bob", &format!("m{i}"), &format!("hello {i}"));
        std::thread::sleep(Duration::from_millis(1));
        if i == 100 {
            nats.kill();
        }
        if i == 250 {
            nats.restart();
        }
    }
    // Every message is stored (Postgres is up throughout) and acknowledged `sent`.
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ids.len() < N {
        let Some(m) = alice.recv_until(deadline) else {
            let missing: Vec<String> = (0..N).map(|i| format!("m{i}")).filter(|k| !ids.contains_key(k)).collect();
            panic!("no `sent` ack for {} messages: {:?}", missing.len(), &missing[..missing.len().min(20)]);
        };
        let d = &m["data"];
        assert_ne!(m["type"], "error", "{m}");
        if m["type"] == "ack" && d["status"] == "sent" {
            ids.insert(d["clientMsgId"].as_str().unwrap().to_string(), d["msgId"].as_str().unwrap().to_string());
        }
    }
    let sent: Vec<String> = (0..N).map(|i| ids[&format!("m{i}")].clone()).collect();
    // Bob reads what comes live until his node has told him of the gap and nothing more comes.
    let mut live: Vec<String> = Vec::new();
    let mut told = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(m) = bob.recv_until(if told { Instant::now() + Duration::from_secs(2) } else { deadline }) {
        match m["type"].as_str() {
            Some("chat") => live.push(m["data"]["msgId"].as_str().unwrap().to_string()),
            Some("resync") => {
                assert_eq!(m["data"]["reason"], "cluster_gap");
                told = true;
            }
            _ => {}
        }
    }
    assert!(told, "bob was told to fetch his history again");
    let mut once = live.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), live.len(), "nothing twice live");
    let history: Vec<String> =
        bob.whole_history(("peerId", "alice"), 100).iter().map(|m| m["msgId"].as_str().unwrap().to_string()).collect();
    let missing: Vec<&String> = sent.iter().filter(|id| !live.contains(id) && !history.contains(id)).collect();
    assert!(missing.is_empty(), "{} acknowledged messages bob cannot get: {:?}", missing.len(), missing);
    assert_eq!(history, sent, "the history holds every message, in order");
}
