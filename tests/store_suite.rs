//! The store interface's behaviour, one suite run against both backends, so they cannot
//! drift: each test below runs once on the memory store and once on the Postgres store (a
//! database of its own on the real server, the store on a sidecar thread as a node runs it).
//! Bounds that only the memory store has (evictions, the dedup window) are tested next to it.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use common::pg::{block_on, PgRun, TestDb};
use imks::store::{
    ConversationKey, Cursor, MemoryStore, Message, MessageId, NewMessage, Store, StoreConfig, StoreError, Target,
};

type Test = fn(Rc<dyn Store>) -> Pin<Box<dyn Future<Output = ()>>>;

/// The bounds the suite tests, the same for both stores.
fn config() -> StoreConfig {
    StoreConfig {
        max_history_page: 5,
        max_body_bytes: 64,
        max_edits_per_message: 2,
        max_reactions_per_message: 3,
        max_offline_per_user: 4,
        ..Default::default()
    }
}

fn on_memory(test: Test) {
    block_on(test(Rc::new(MemoryStore::new(config()))));
}

fn on_postgres(test: Test) {
    let db = TestDb::migrated();
    let mut cfg = db.store_config();
    let pg = cfg.postgres.clone();
    cfg = StoreConfig { postgres: pg, backend: cfg.backend, ..config() };
    let run = PgRun::start(&cfg);
    block_on(test(Rc::new(run.store())));
    run.stop();
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::on_memory(|s| Box::pin(super::$name(s))) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::on_postgres(|s| Box::pin(super::$name(s))) })*
        }
    };
}

suite!(
    seq_counts_from_one_per_conversation,
    a_retransmission_returns_the_original_and_stores_nothing,
    dedup_is_per_author_and_tenant,
    refuses_bad_bodies_and_client_ids,
    history_pages_newest_first_without_gaps_or_repeats,
    history_limit_is_capped_and_zero_means_the_cap,
    edits_keep_a_bounded_history_and_only_the_author_may,
    delete_is_soft_author_only_and_final,
    reactions_are_idempotent_validated_and_bounded,
    delivered_is_reported_once,
    read_state_is_a_pointer,
    offline_queue_keeps_push_order_and_the_newest_at_its_bound,
    many_appends_in_flight_keep_their_call_order,
    a_burst_of_appends_retransmissions_and_edits_keeps_every_answer,
);

fn dm() -> ConversationKey {
    ConversationKey::direct("t", "alice", "bob")
}

fn new_msg(conv: &ConversationKey, author: &str, cid: Option<&str>, body: &str) -> NewMessage {
    NewMessage {
        tenant: "t".into(),
        conversation: conv.clone(),
        author: author.into(),
        target: Target::User("bob".into()),
        client_msg_id: cid.map(str::to_owned),
        body: body.into(),
        content_type: "text/plain".into(),
        created_at_ms: 1_700_000_000_123,
    }
}

async fn send(s: &dyn Store, conv: &ConversationKey, author: &str, body: &str) -> Message {
    s.append(new_msg(conv, author, None, body)).await.expect("appends").message
}

fn bodies(ms: &[Message]) -> Vec<&str> {
    ms.iter().map(|m| m.body.as_str()).collect()
}

async fn seq_counts_from_one_per_conversation(s: Rc<dyn Store>) {
    let room = ConversationKey::room("t", "general");
    let a = send(&*s, &dm(), "alice", "1").await;
    let b = send(&*s, &dm(), "bob", "2").await;
    let c = send(&*s, &room, "alice", "r1").await;
    assert_eq!((a.seq, b.seq, c.seq), (1, 2, 1));
    assert!(a.id < b.id, "v7 ids sort by creation");
    assert_eq!(a.id.get_version_num(), 7);
    assert_eq!(a.created_at_ms, 1_700_000_000_123, "times keep their milliseconds");
    assert_eq!(s.get(&dm(), b.id).await.unwrap(), Some(b.clone()), "what get returns is what append did");
    assert_eq!(s.get(&room, b.id).await.unwrap(), None, "a message is found in its own conversation only");
    assert_eq!(s.get(&dm(), MessageId::nil()).await.unwrap(), None);
}

async fn a_retransmission_returns_the_original_and_stores_nothing(s: Rc<dyn Store>) {
    let first = s.append(new_msg(&dm(), "alice", Some("m1"), "hello")).await.unwrap();
    assert!(!first.duplicate);
    let again = s.append(new_msg(&dm(), "alice", Some("m1"), "hello, changed")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message, "the original, with its id");
    let page = s.history(&dm(), None, 10).await.unwrap();
    assert_eq!(bodies(&page.messages), ["hello"]);
    assert_eq!(send(&*s, &dm(), "alice", "x").await.seq, 2, "no gap in seq");
}

async fn dedup_is_per_author_and_tenant(s: Rc<dyn Store>) {
    let a = s.append(new_msg(&dm(), "alice", Some("m1"), "from alice")).await.unwrap();
    let b = s.append(new_msg(&dm(), "bob", Some("m1"), "from bob")).await.unwrap();
    assert!(!b.duplicate);
    assert_ne!(a.message.id, b.message.id);
    let mut other_tenant = new_msg(&ConversationKey::direct("u", "alice", "bob"), "alice", Some("m1"), "u");
    other_tenant.tenant = "u".into();
    assert!(!s.append(other_tenant).await.unwrap().duplicate);
}

async fn refuses_bad_bodies_and_client_ids(s: Rc<dyn Store>) {
    let long = "x".repeat(65);
    assert_eq!(
        s.append(new_msg(&dm(), "alice", None, &long)).await.unwrap_err(),
        StoreError::TooLarge { size: 65, max: 64 }
    );
    assert_eq!(s.append(new_msg(&dm(), "alice", None, "a\0b")).await.unwrap_err(), StoreError::NulInBody);
    let cid = "c".repeat(129);
    assert!(matches!(s.append(new_msg(&dm(), "alice", Some(&cid), "x")).await, Err(StoreError::Invalid(_))));
    assert!(matches!(s.append(new_msg(&dm(), "alice", Some("a\nb"), "x")).await, Err(StoreError::Invalid(_))));
    assert_eq!(send(&*s, &dm(), "alice", "ok").await.seq, 1, "refusals take no seq");
}

async fn history_pages_newest_first_without_gaps_or_repeats(s: Rc<dyn Store>) {
    for i in 1..=12 {
        send(&*s, &dm(), "alice", &i.to_string()).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = s.history(&dm(), cursor, 5).await.unwrap();
        seen.extend(page.messages.iter().map(|m| m.seq));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, (1..=12).rev().collect::<Vec<u64>>());
    // A last page exactly full has no cursor.
    let page = s.history(&dm(), Some(Cursor::before_seq(6)), 5).await.unwrap();
    assert_eq!(page.messages.len(), 5);
    assert_eq!(page.next_cursor, None);
    assert!(s.history(&ConversationKey::room("t", "empty"), None, 5).await.unwrap().messages.is_empty());
}

async fn history_limit_is_capped_and_zero_means_the_cap(s: Rc<dyn Store>) {
    for i in 0..8 {
        send(&*s, &dm(), "alice", &i.to_string()).await;
    }
    assert_eq!(s.history(&dm(), None, 100).await.unwrap().messages.len(), 5);
    assert_eq!(s.history(&dm(), None, 0).await.unwrap().messages.len(), 5);
    assert_eq!(s.history(&dm(), None, 2).await.unwrap().messages.len(), 2);
}

async fn edits_keep_a_bounded_history_and_only_the_author_may(s: Rc<dyn Store>) {
    let m = send(&*s, &dm(), "alice", "v1").await;
    assert_eq!(s.edit(&dm(), m.id, "bob", "nope".into(), 5).await.unwrap_err(), StoreError::Forbidden);
    assert_eq!(s.edit(&dm(), MessageId::nil(), "alice", "x".into(), 5).await.unwrap_err(), StoreError::NotFound);
    assert!(matches!(s.edit(&dm(), m.id, "alice", "x".repeat(65), 5).await, Err(StoreError::TooLarge { .. })));
    let e = s.edit(&dm(), m.id, "alice", "v2".into(), 1_000).await.unwrap();
    assert_eq!(e.body, "v2");
    assert_eq!(e.edited_at_ms, Some(1_000));
    s.edit(&dm(), m.id, "alice", "v3".into(), 2_000).await.unwrap();
    let e = s.edit(&dm(), m.id, "alice", "v4".into(), 3_000).await.unwrap();
    let previous: Vec<(&str, i64)> = e.edits.iter().map(|x| (x.body.as_str(), x.edited_at_ms)).collect();
    assert_eq!(previous, [("v2", 2_000), ("v3", 3_000)], "the newest two, oldest first");
    assert_eq!(s.get(&dm(), m.id).await.unwrap(), Some(e), "what edit returned is stored");
}

async fn delete_is_soft_author_only_and_final(s: Rc<dyn Store>) {
    let m = send(&*s, &dm(), "alice", "secret").await;
    s.edit(&dm(), m.id, "alice", "secret2".into(), 10).await.unwrap();
    s.react(&dm(), m.id, "bob", "👍", true).await.unwrap();
    assert_eq!(s.delete(&dm(), m.id, "bob", 20).await.unwrap_err(), StoreError::Forbidden);
    let d = s.delete(&dm(), m.id, "alice", 20).await.unwrap();
    assert!(d.deleted);
    assert_eq!((d.body.as_str(), d.edits.len(), d.seq), ("", 0, 1), "body and history gone, place kept");
    assert_eq!(d.edited_at_ms, Some(20));
    assert_eq!(s.delete(&dm(), m.id, "alice", 30).await.unwrap(), d, "deleting twice changes nothing");
    assert_eq!(s.edit(&dm(), m.id, "alice", "back".into(), 40).await.unwrap_err(), StoreError::Deleted);
    assert_eq!(s.react(&dm(), m.id, "bob", "👎", true).await.unwrap_err(), StoreError::Deleted);
    let page = s.history(&dm(), None, 5).await.unwrap();
    assert_eq!(page.messages, [d], "still in history, as deleted");
}

async fn reactions_are_idempotent_validated_and_bounded(s: Rc<dyn Store>) {
    let m = send(&*s, &dm(), "alice", "hi").await;
    let users = |m: &Message, e: &str| m.reactions.get(e).map(|u| u.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    let r = s.react(&dm(), m.id, "bob", "👍", true).await.unwrap();
    let r2 = s.react(&dm(), m.id, "bob", "👍", true).await.unwrap();
    assert_eq!(r, r2, "adding twice is one reaction");
    let r = s.react(&dm(), m.id, "carol", "👍", true).await.unwrap();
    assert_eq!(users(&r, "👍"), Some(vec!["bob".into(), "carol".into()]));
    let r = s.react(&dm(), m.id, "bob", "🎉", true).await.unwrap();
    assert_eq!(
        s.react(&dm(), m.id, "dave", "🎉", true).await.unwrap_err(),
        StoreError::LimitReached { what: "reactions", max: 3 }
    );
    assert_eq!(s.react(&dm(), m.id, "bob", "🎉", true).await.unwrap(), r, "re-adding at the bound is fine");
    let r = s.react(&dm(), m.id, "bob", "🎉", false).await.unwrap();
    assert_eq!(users(&r, "🎉"), None, "an emoji nobody uses any more is gone");
    assert_eq!(s.react(&dm(), m.id, "bob", "🎉", false).await.unwrap(), r, "removing twice changes nothing");
    assert!(matches!(s.react(&dm(), m.id, "bob", "", true).await, Err(StoreError::Invalid(_))));
    assert!(matches!(s.react(&dm(), m.id, "bob", &"x".repeat(33), true).await, Err(StoreError::Invalid(_))));
    assert_eq!(s.react(&dm(), MessageId::nil(), "bob", "👍", true).await.unwrap_err(), StoreError::NotFound);
    assert_eq!(s.get(&dm(), m.id).await.unwrap().map(|m| m.reactions), Some(r.reactions));
}

async fn delivered_is_reported_once(s: Rc<dyn Store>) {
    let m = s.append(new_msg(&dm(), "alice", Some("c1"), "hi")).await.unwrap().message;
    assert!(!s.get(&dm(), m.id).await.unwrap().unwrap().delivered);
    assert!(s.mark_delivered(&dm(), m.id).await.unwrap(), "the first time");
    assert!(!s.mark_delivered(&dm(), m.id).await.unwrap(), "not again");
    assert!(!s.mark_delivered(&dm(), MessageId::nil()).await.unwrap(), "nor for a message never stored");
    assert!(!s.mark_delivered(&ConversationKey::room("t", "x"), m.id).await.unwrap(), "nor in another conversation");
    assert!(s.get(&dm(), m.id).await.unwrap().unwrap().delivered);
}

async fn read_state_is_a_pointer(s: Rc<dyn Store>) {
    let a1 = send(&*s, &dm(), "alice", "a1").await;
    let b1 = send(&*s, &dm(), "bob", "b1").await;
    let a2 = send(&*s, &dm(), "alice", "a2").await;
    let a3 = send(&*s, &dm(), "alice", "a3").await;
    let ids = |r: Vec<imks::store::Receipt>| r.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(s.read_state("t", "bob", &dm()).await.unwrap(), 0);
    // Bob reads a2 (and his own b1, and an unknown id): a2 is newly read; the pointer is at 3.
    let read = s.mark_read("t", "bob", &dm(), &[a2.id, b1.id, a2.id, MessageId::nil()]).await.unwrap();
    assert_eq!(ids(read), [a2.id], "own, repeated and unknown ids left out");
    assert_eq!(s.read_state("t", "bob", &dm()).await.unwrap(), 3);
    // a1 is below the pointer: already read. a3 is new.
    assert_eq!(ids(s.mark_read("t", "bob", &dm(), &[a3.id, a1.id]).await.unwrap()), [a3.id]);
    assert_eq!(s.read_state("t", "bob", &dm()).await.unwrap(), 4);
    assert!(s.mark_read("t", "bob", &dm(), &[a1.id, a2.id, a3.id]).await.unwrap().is_empty());
    // Per reader, and per tenant.
    assert_eq!(ids(s.mark_read("t", "alice", &dm(), &[b1.id]).await.unwrap()), [b1.id]);
    assert!(s.mark_read("u", "carol", &dm(), &[a1.id]).await.unwrap().is_empty());
    assert_eq!(s.read_state("u", "carol", &dm()).await.unwrap(), 0);
    // A deleted message moves the pointer but tells nobody.
    let a4 = send(&*s, &dm(), "alice", "a4").await;
    s.delete(&dm(), a4.id, "alice", 1).await.unwrap();
    assert!(s.mark_read("t", "bob", &dm(), &[a4.id]).await.unwrap().is_empty());
    assert_eq!(s.read_state("t", "bob", &dm()).await.unwrap(), 5);
}

async fn offline_queue_keeps_push_order_and_the_newest_at_its_bound(s: Rc<dyn Store>) {
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(send(&*s, &dm(), "alice", &format!("m{i}")).await);
    }
    for m in &sent[..3] {
        assert_eq!(s.push_offline("t", "bob", m.clone()).await.unwrap(), 0);
    }
    assert_eq!(s.offline_len("t", "bob").await.unwrap(), 3);
    assert_eq!(s.offline_len("t", "carol").await.unwrap(), 0);
    assert_eq!(bodies(&s.take_offline("t", "bob").await.unwrap()), ["m0", "m1", "m2"]);
    assert!(s.take_offline("t", "bob").await.unwrap().is_empty(), "taking empties the queue");
    for m in &sent {
        s.push_offline("t", "bob", m.clone()).await.unwrap();
    }
    assert_eq!(bodies(&s.take_offline("t", "bob").await.unwrap()), ["m2", "m3", "m4", "m5"], "the newest four");
    assert_eq!(s.offline_len("t", "bob").await.unwrap(), 0);
}

async fn many_appends_in_flight_keep_their_call_order(s: Rc<dyn Store>) {
    // Every append is called before any is awaited, as the chat worker does under load.
    let room = ConversationKey::room("t", "busy");
    let pending: Vec<_> = (0..200)
        .map(|i| {
            let conv = if i % 2 == 0 { dm() } else { room.clone() };
            s.append(new_msg(&conv, "alice", Some(&format!("c{i}")), &i.to_string()))
        })
        .collect();
    let mut done = Vec::new();
    for p in pending {
        done.push(p.await.unwrap().message);
    }
    let dm_seqs: Vec<u64> = done.iter().filter(|m| m.conversation == dm()).map(|m| m.seq).collect();
    assert_eq!(dm_seqs, (1..=100).collect::<Vec<_>>(), "seq follows call order");
    let bodies: Vec<u64> = done.iter().filter(|m| m.conversation == room).map(|m| m.body.parse().unwrap()).collect();
    assert_eq!(bodies, (0..100).map(|i| 2 * i + 1).collect::<Vec<_>>());
    let page = s.history(&room, None, 3).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [100, 99, 98]);
}

async fn a_burst_of_appends_retransmissions_and_edits_keeps_every_answer(s: Rc<dyn Store>) {
    // Called together, so that (on Postgres) they share batches, including ones that mix the
    // appends with an edit and a read mark, and retransmissions that fail the dedup index.
    let first = s.append(new_msg(&dm(), "alice", Some("c0"), "first")).await.unwrap().message;
    let mut pending = Vec::new();
    for round in 0..3 {
        pending.push(s.append(new_msg(&dm(), "alice", Some(&format!("n{round}")), &format!("new {round}"))));
        pending.push(s.append(new_msg(&dm(), "alice", Some("c0"), "first, again")));
    }
    let edit = s.edit(&dm(), first.id, "alice", "edited".into(), 7);
    let read = s.mark_read("t", "bob", &dm(), &[first.id]);
    let mut answers = Vec::new();
    for p in pending {
        answers.push(p.await.unwrap());
    }
    let news: Vec<u64> = answers.iter().filter(|a| !a.duplicate).map(|a| a.message.seq).collect();
    assert_eq!(news, [2, 3, 4], "new messages in call order, no gap left by the retransmissions");
    for again in answers.iter().filter(|a| a.duplicate) {
        assert_eq!((again.message.id, again.message.seq), (first.id, 1), "a retransmission answers the original");
    }
    assert_eq!(edit.await.unwrap().body, "edited");
    assert_eq!(read.await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), [first.id]);
    let page = s.history(&dm(), None, 5).await.unwrap();
    assert_eq!(bodies(&page.messages), ["new 2", "new 1", "new 0", "edited"]);
}
