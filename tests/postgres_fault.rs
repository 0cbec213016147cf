//! The Postgres store when the database dies: a node on a Postgres server of the test's own
//! ([`PrivatePg`]), which the test kills abruptly while twenty clients send, then starts again.
//! While it is down the node answers `unavailable` instead of hanging and everything that needs
//! no database keeps working on every shard; once it is back the clients' retries (same
//! `msgId`) go through, and the database holds every acknowledged message exactly once.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::native::{static_users, two_shards, Answer, Client};
use common::pg::{self, PrivatePg};
use common::*;
use imks::store::{StoreBackend, StoreConfig};

const CLIENTS: usize = 20;
/// `store.postgres.write_timeout_ms`: how long a write may wait for its commit.
const WRITE_TIMEOUT_MS: u64 = 1500;
/// How long past the write timeout a client waits for an answer before it counts as none.
const MARGIN_MS: u64 = 1500;
/// The longest a shard may take to answer `/health` or a new session while the database is
/// down.
const QUICK: Duration = Duration::from_secs(1);

/// One try at sending one message, as its client saw it.
#[derive(Debug)]
struct Attempt {
    msg_id: String,
    sent_at: Instant,
    answered_at: Instant,
    /// `None`: no answer within the write timeout and the margin.
    answer: Option<Answer>,
}

/// What the clients tell the test as they go.
struct Progress {
    stop: AtomicBool,
    acked: Vec<AtomicUsize>,
    refused: Vec<AtomicUsize>,
}

impl Progress {
    fn acked(&self) -> Vec<usize> {
        self.acked.iter().map(|a| a.load(Relaxed)).collect()
    }

    fn refused(&self) -> Vec<usize> {
        self.refused.iter().map(|a| a.load(Relaxed)).collect()
    }
}

/// Client `i`: sends direct messages to the next client with new `msgId`s, one at a time,
/// until told to stop; a message refused or not answered in time is sent again with the same
/// `msgId` (after the `retryAfterMs` it was given, at most 200 ms) until it is acked.
fn client(i: usize, addr: SocketAddr, progress: Arc<Progress>) -> Vec<Attempt> {
    let (mut c, _) = Client::connect(addr, &format!("t-u{i}"));
    let to = format!("u{}", (i + 1) % CLIENTS);
    let mut log = Vec::new();
    let mut k = 0;
    while !progress.stop.load(Relaxed) {
        let msg_id = format!("u{i}-{k}");
        loop {
            c.chat_to(&to, &msg_id, &format!("message {k} of u{i}"));
            let sent_at = Instant::now();
            let answer = c.answer_until(&msg_id, sent_at + Duration::from_millis(WRITE_TIMEOUT_MS + MARGIN_MS));
            log.push(Attempt { msg_id: msg_id.clone(), sent_at, answered_at: Instant::now(), answer: answer.clone() });
            match answer {
                Some(Answer::Sent(_)) => {
                    progress.acked[i].fetch_add(1, Relaxed);
                    break;
                }
                Some(Answer::Error { retry_after_ms, .. }) => {
                    progress.refused[i].fetch_add(1, Relaxed);
                    std::thread::sleep(Duration::from_millis(retry_after_ms.unwrap_or(0).min(200)));
                }
                None => {}
            }
        }
        k += 1;
    }
    log
}

/// `/health` of one shard, which must answer within [`QUICK`].
fn quick_health(addr: SocketAddr) -> serde_json::Value {
    let t0 = Instant::now();
    let h = health(addr);
    assert!(t0.elapsed() < QUICK, "{addr} took {:?} to answer /health", t0.elapsed());
    h
}

fn postgres_status(addr: SocketAddr) -> String {
    quick_health(addr)["checks"]["postgres"]["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_database_crash_is_answered_unavailable_and_loses_no_acked_message() {
    let pg = PrivatePg::start();
    let mut store = StoreConfig { backend: StoreBackend::Postgres, ..Default::default() };
    store.postgres.url = pg.url();
    store.postgres.write_timeout_ms = WRITE_TIMEOUT_MS;
    store.postgres.reconnect_max_ms = 200;
    store.postgres.read_timeout_ms = 1000;
    store.postgres.connect_timeout_ms = 1000;
    store.postgres.health_interval_ms = 100;
    let users: Vec<String> = (0..CLIENTS).map(|i| format!("u{i}")).chain(["fresh".to_string()]).collect();
    let (_node, addrs) = two_shards(
        "epoll",
        |f| {
            static_users(f, users.iter().map(String::as_str));
            f.limits.message_rate = 0;
            f.store = store;
        },
        |_| {},
    );
    let progress = Arc::new(Progress {
        stop: AtomicBool::new(false),
        acked: (0..CLIENTS).map(|_| AtomicUsize::new(0)).collect(),
        refused: (0..CLIENTS).map(|_| AtomicUsize::new(0)).collect(),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, progress) = (addrs[i % 2], progress.clone());
            std::thread::spawn(move || client(i, addr, progress))
        })
        .collect();
    let total = |v: Vec<usize>| v.iter().sum::<usize>();
    assert!(wait_until(Duration::from_secs(20), || total(progress.acked()) >= 200), "acked: {:?}", progress.acked());

    // Down, while the clients' writes wait for a database that is gone: every shard answers at
    // once, /health (which reports the database down), a new session (`connected`, then its
    // pong), and a history request, refused rather than left waiting.
    let refused_before = progress.refused();
    let killed_at = Instant::now();
    pg.kill();
    for addr in addrs {
        assert!(
            wait_until(Duration::from_secs(5), || postgres_status(addr) == "down"),
            "{addr}: the database is not reported down"
        );
        let t0 = Instant::now();
        let (mut fresh, hello) = Client::connect(addr, "t-fresh");
        assert_eq!(hello["data"]["userId"], "fresh");
        fresh.assert_nothing_pending("a new session while the database is down");
        assert!(t0.elapsed() < QUICK, "{addr}: a new session took {:?}", t0.elapsed());
        fresh.send(serde_json::json!({"type": "history", "id": "h", "data": {"peerId": "u0"}}));
        let answer = fresh.recv_until(Instant::now() + QUICK).expect("history answered while the database is down");
        assert_eq!((answer["type"].as_str(), answer["id"].as_str()), (Some("error"), Some("h")), "{answer}");
        assert_eq!(
            (answer["data"]["code"].as_str(), answer["data"]["reason"].as_str()),
            (Some("store_failed"), Some("unavailable")),
            "{answer}"
        );
    }
    // Every client's message is refused within the write timeout (and a margin) of the crash.
    let deadline = Duration::from_millis(WRITE_TIMEOUT_MS + MARGIN_MS);
    let each_refused = || progress.refused().iter().zip(&refused_before).all(|(now, before)| now > before);
    assert!(
        wait_until(deadline.saturating_sub(killed_at.elapsed()), each_refused),
        "{:?} after the crash, refusals per client went from {refused_before:?} to {:?}",
        killed_at.elapsed(),
        progress.refused()
    );

    // Back: the retries go through.
    let acked_before = progress.acked();
    pg.restart();
    let restarted_at = Instant::now();
    for addr in addrs {
        assert!(
            wait_until(Duration::from_secs(10), || postgres_status(addr) == "up"),
            "{addr}: the database is not reported up"
        );
    }
    let each_acked_again = || progress.acked().iter().zip(&acked_before).all(|(now, before)| *now >= before + 5);
    assert!(wait_until(Duration::from_secs(20), each_acked_again), "acked per client: {:?}", progress.acked());
    progress.stop.store(true, Relaxed);
    let attempts: Vec<Attempt> = clients.into_iter().flat_map(|t| t.join().expect("a client failed")).collect();

    // Every try was answered in time; refusals are `unavailable` with a time to retry, and
    // came only once the database had gone.
    let unanswered: Vec<&Attempt> = attempts.iter().filter(|a| a.answer.is_none()).collect();
    assert!(
        unanswered.is_empty(),
        "{} tries had no answer within {deadline:?}: {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(5)]
    );
    let mut refusals = 0;
    for a in &attempts {
        if let Some(Answer::Error { code, reason, retry_after_ms }) = &a.answer {
            refusals += 1;
            assert_eq!((code.as_str(), reason.as_str()), ("store_failed", "unavailable"), "{a:?}");
            assert!(retry_after_ms.is_some(), "{a:?}");
            assert!(a.answered_at >= killed_at, "refused while the database was up: {a:?}");
        }
    }
    let slowest = attempts.iter().map(|a| a.answered_at - a.sent_at).max().unwrap_or_default();
    eprintln!(
        "{} tries, {refusals} refused, slowest answer {slowest:?}, down for {:?}",
        attempts.len(),
        restarted_at - killed_at
    );

    // The database holds every acked message once, under the id its ack gave, and nothing that
    // was never acked (every message was retried until it was).
    let mut acked: HashMap<&str, &str> = HashMap::new();
    for a in &attempts {
        if let Some(Answer::Sent(id)) = &a.answer {
            if let Some(earlier) = acked.insert(&a.msg_id, id) {
                assert_eq!(earlier, id, "{} acked with two ids", a.msg_id);
            }
        }
    }
    let rows = pg::strings(&pg.url(), "SELECT client_msg_id || ' ' || id::text FROM message");
    let stored: HashMap<&str, &str> = rows.iter().map(|r| r.split_once(' ').unwrap()).collect();
    assert_eq!(stored.len(), rows.len(), "a msgId stored twice");
    let missing: Vec<_> = acked.iter().filter(|(m, id)| stored.get(*m) != Some(id)).collect();
    assert!(missing.is_empty(), "acked but not stored under the acked id: {missing:?}");
    let never_acked: Vec<_> = stored.keys().filter(|m| !acked.contains_key(*m)).collect();
    assert!(never_acked.is_empty(), "stored but never acked: {never_acked:?}");
    let gaps = pg::count(
        &pg.url(),
        "SELECT count(*) FROM (SELECT conversation FROM message GROUP BY conversation HAVING max(seq) <> count(*)) g",
    );
    assert_eq!(gaps, 0, "every conversation's seqs run from 1 without gaps");

    let a = addrs[0];
    assert!(metric_sum(a, "imks_store_pg_reconnects_total ") >= 1, "the writer reconnected");
    assert!(metric_sum(a, "imks_store_pg_refused_total{reason=\"timeout\"}") >= 1, "writes timed out while down");
}
