//! The flow between nodes broken under load, with Socket.IO recovery on: a NATS server of the
//! test's own killed with `kill -9` and started again, and a receiving node whose queue to its
//! shard overflows (what a slow consumer does too), while a room's broadcasts flow. Nothing
//! acknowledged to the publisher is lost, nothing arrives twice or out of order, and a client
//! that cannot be recovered is told (`recovered` false), never left with a silent gap.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nats::PrivateNats;
use common::recovery::*;
use common::*;
use serde_json::json;

/// A member of room `flow` on `addr`, reading until it has `last` (once known). Returns what it
/// got as sessions: a session is what one socket received, over every connection that
/// recovered it; a reconnect that was not recovered (`recovered` false) starts a new one.
fn member(addr: SocketAddr, last: Arc<AtomicU64>) -> std::thread::JoinHandle<Vec<Vec<u64>>> {
    let mut c = Client::connect(addr, None);
    c.call("join", json!("flow"));
    std::thread::spawn(move || {
        let mut sessions: Vec<Vec<u64>> = Vec::new();
        let mut current = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let end = last.load(Ordering::SeqCst);
            if current.contains(&end) || c.got.contains(&end) {
                current.append(&mut c.got);
                sessions.push(current);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr}: no msg {end} within a minute; {} sessions, the last ones: {:?} {:?}",
                sessions.len() + 1,
                &current[current.len().saturating_sub(5)..],
                &c.got[c.got.len().saturating_sub(5)..]
            );
            match c.pump() {
                Pumped::Message | Pumped::Idle => {}
                Pumped::Closed => {
                    // The node closed the transport (a gap it cannot hide): back with the last
                    // offset, as socket.io-client does.
                    current.append(&mut c.got);
                    let (sid, pid, offset) = (c.sid.clone(), c.pid.clone(), c.offset.clone());
                    c = reconnect(addr, Some((&pid, offset.as_deref())));
                    if c.sid != sid {
                        sessions.push(std::mem::take(&mut current));
                        c.call("join", json!("flow"));
                    }
                }
            }
        }
        sessions
    })
}

/// The first places where `got` is not strictly increasing (out of order, or twice).
fn disorder(got: &[u64]) -> Vec<&[u64]> {
    got.windows(2).filter(|w| w[0] >= w[1]).take(5).collect()
}

/// Connects again until a connection stays open through the greeting (a node that closes its
/// transports after a gap may close a new one too); at most ten tries.
fn reconnect(addr: SocketAddr, claim: Option<(&str, Option<&str>)>) -> Client {
    for _ in 0..10 {
        if let Some(c) = Client::try_connect(addr, claim) {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{addr}: no connection stays open");
}

#[test]
fn nats_restarted_under_load_loses_nothing_acknowledged_and_duplicates_nothing() {
    let mut nats = PrivateNats::start();
    let prefix = format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let (_x_proc, x) = spawn_node_at(&prefix, &nats.url());
    let (_y_proc, y) = spawn_node_at(&prefix, &nats.url());
    wait_recovery_ready(x);
    wait_recovery_ready(y);
    eprintln!("X is {x}, Y is {y}");

    let last = Arc::new(AtomicU64::new(u64::MAX));
    // X has members only; Y has a member and the publisher.
    let on_x = member(x, last.clone());
    let on_y = member(y, last.clone());
    // X's subjects: the control subject, its own, the namespace's and the room's.
    assert!(wait_until(Duration::from_secs(10), || metric_sum(x, "imks_cluster_subscriptions ") == 4));

    // About 1,000 publishes a second, each acknowledged by Y once broadcast. One whose
    // connection ended before its ack may or may not have gone out; the next one gets a new
    // number either way.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(y, None);
            let (mut acked, mut n) = (Vec::new(), 0u64);
            while !stop.load(Ordering::SeqCst) {
                if c.try_call("publish", json!({"room": "flow", "n": n})) {
                    acked.push(n);
                } else {
                    c = reconnect(y, None);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (c, acked)
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    nats.kill();
    std::thread::sleep(Duration::from_millis(300));
    nats.restart();
    assert!(
        wait_until(Duration::from_secs(20), || metric_sum(x, "imks_cluster_reconnects_total") >= 1
            && metric_sum(y, "imks_cluster_reconnects_total") >= 1),
        "both nodes reconnect"
    );
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let (mut c, acked) = publisher.join().unwrap();
    // One more, acknowledged, that every member waits for.
    let end = acked.last().copied().unwrap_or(0) + 1_000_000;
    let mut tries = 0;
    while !c.try_call("publish", json!({"room": "flow", "n": end})) {
        tries += 1;
        assert!(tries < 5, "Y does not take the last publish");
        c = reconnect(y, None);
    }
    last.store(end, Ordering::SeqCst);
    assert!(acked.len() > 1000, "the load ran: {} acknowledged", acked.len());

    // Everything held while NATS was down is in the stream.
    assert!(wait_until(Duration::from_secs(5), || metric_sum(y, "imks_cluster_outbox ") == 0));
    // The member on X, the node that publishes nothing, is recovered every time and has every
    // acknowledged broadcast, in order, once.
    let on_x = on_x.join().unwrap();
    assert_eq!(on_x.len(), 1, "X's member was recovered every time");
    let x_got = &on_x[0];
    assert!(disorder(x_got).is_empty(), "X: in order, each once; not at {:?}", disorder(x_got));
    let missing: Vec<u64> = acked.iter().copied().filter(|n| x_got.binary_search(n).is_err()).collect();
    assert!(
        missing.is_empty(),
        "X lost {} acknowledged broadcasts: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );

    // The member on Y got what Y delivered while cut off with node-local offsets, from which it
    // cannot be recovered: it is told (a new session), and each session is in order, once.
    let on_y = on_y.join().unwrap();
    for (i, got) in on_y.iter().enumerate() {
        assert!(disorder(got).is_empty(), "Y, session {i}: in order, each once; not at {:?}", disorder(got));
    }
    if let [got] = &on_y[..] {
        let missing = acked.iter().filter(|n| got.binary_search(n).is_err()).count();
        assert_eq!(missing, 0, "Y's member was recovered every time, yet lost broadcasts");
    }
    delete_streams_at(&nats.url()["nats://".len()..], &prefix);
}

/// The receiving node's queue from the bridge to its shard holds one envelope
/// (`cluster.shard_queue`), and a flood of broadcasts overflows it: the envelopes dropped are
/// a gap, counted; the node closes its clients' transports, and they recover from the stream
/// with every broadcast, in order, once.
#[test]
fn a_full_shard_queue_is_a_gap_its_clients_recover_from() {
    const N: u64 = 400;
    let prefix = format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let nats = "nats://127.0.0.1:4222";
    let (_x_proc, x) = spawn_node_with(&prefix, nats, &[("IMKS_CLUSTER__SHARD_QUEUE", "1")]);
    let (_y_proc, y) = spawn_node(&prefix);
    wait_recovery_ready(x);
    wait_recovery_ready(y);
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let on_x = member(x, last.clone());
    assert!(wait_until(Duration::from_secs(10), || metric_sum(x, "imks_cluster_subscriptions ") == 4));
    let mut publisher = Client::connect(y, None);
    for n in 0..N {
        publisher.emit("publish", json!({"room": "flow", "n": n}));
    }
    assert!(publisher.try_call("publish", json!({"room": "flow", "n": N})));
    last.store(N, Ordering::SeqCst);
    let sessions = on_x.join().unwrap();
    let dropped = metric_sum(x, "imks_cluster_dropped_total{reason=\"shard_queue\"}");
    assert!(dropped >= 1, "the shard queue overflowed");
    assert_eq!(sessions.len(), 1, "recovered every time");
    assert_eq!(sessions[0], (0..=N).collect::<Vec<u64>>(), "every broadcast, in order, once");
    delete_streams(&prefix);
}
