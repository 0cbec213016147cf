//! Write coalescing under load (`websocket.coalesce_us`), forced on with both thresholds at 0:
//! broadcasts wait for the shard's flush, everything else goes at once and takes the waiting
//! broadcasts along, in order.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::sio_text as text;
use common::*;
use tungstenite::Message;

/// Long enough that nothing in the test waits for it by accident; the test waits for it once.
const WINDOW_US: u64 = 1_000_000;

fn start_coalescing(driver: &str) -> (imks::Node, SocketAddr) {
    start_full(
        driver,
        1,
        |f| coalesce_always(f, WINDOW_US),
        |c| {
            c.conformance_mode();
            c.eio.ping_interval = Duration::from_secs(30);
            c.eio.ping_timeout = Duration::from_secs(30);
        },
    )
}

fn connected(addr: SocketAddr) -> Ws {
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"), "open packet");
    c.send(Message::text("40")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{"));
    assert_eq!(text(&mut c).unwrap(), r#"42["auth",{}]"#);
    c
}

#[test]
fn a_busy_shard_holds_broadcasts_and_lets_replies_through() {
    on_both_drivers(|driver| {
        let (_node, addr) = start_coalescing(driver);
        assert!(wait_until(Duration::from_secs(10), || metric_sum(addr, "imks_write_coalescing") == 1));
        let mut sub = connected(addr);
        sub.send(Message::text(r#"421["join","r"]"#)).unwrap();
        assert_eq!(text(&mut sub).unwrap(), r#"431["ok"]"#);
        let mut publisher = connected(addr);

        // Each publish is followed by an acked emit: the ack comes back at once while the
        // broadcast waits, so the frames that went out are exactly the acks.
        let flushes = metric_sum(addr, "imks_coalesced_flushes_total");
        let frames = metric_sum(addr, "imks_frames_out_total");
        const N: u64 = 10;
        for n in 0..N {
            publisher.send(Message::text(format!(r#"42["publish",{{"room":"r","n":{n}}}]"#))).unwrap();
            publisher.send(Message::text(format!(r#"42{n}["echo-ack"]"#))).unwrap();
            assert_eq!(text(&mut publisher).unwrap(), format!("43{n}[]"));
        }
        assert_eq!(
            (metric_sum(addr, "imks_frames_out_total") - frames, metric_sum(addr, "imks_coalesced_flushes_total")),
            (N, flushes),
            "only the acks left before the flush"
        );

        // The subscriber's own acked emit goes at once, after the broadcasts that waited.
        let writes = metric_sum(addr, "imks_ws_writes_total");
        sub.send(Message::text(r#"4277["echo-ack","x"]"#)).unwrap();
        for n in 0..N {
            assert_eq!(text(&mut sub).unwrap(), format!(r#"42["msg",{{"room":"r","n":{n}}}]"#));
        }
        assert_eq!(text(&mut sub).unwrap(), r#"4377["x"]"#);
        assert_eq!(metric_sum(addr, "imks_coalesced_flushes_total"), flushes, "released by the ack, not the flush");
        assert_eq!(metric_sum(addr, "imks_ws_writes_total") - writes, 1, "eleven frames in one write");

        // Alone, a broadcast goes out at the flush.
        publisher.send(Message::text(r#"42["publish",{"room":"r","n":"last"}]"#)).unwrap();
        assert_eq!(text(&mut sub).unwrap(), r#"42["msg",{"room":"r","n":"last"}]"#);
        assert!(metric_sum(addr, "imks_coalesced_flushes_total") > flushes);
    });
}

#[test]
fn an_idle_shard_does_not_coalesce() {
    let (_node, addr) = start_full(
        "io_uring",
        1,
        |f| {
            f.server.tick_ms = 20;
            f.websocket.coalesce_us = WINDOW_US;
        },
        |c| c.conformance_mode(),
    );
    let mut sub = connected(addr);
    sub.send(Message::text(r#"421["join","r"]"#)).unwrap();
    assert_eq!(text(&mut sub).unwrap(), r#"431["ok"]"#);
    let mut publisher = connected(addr);
    for n in 0..5 {
        publisher.send(Message::text(format!(r#"42["publish",{{"room":"r","n":{n}}}]"#))).unwrap();
        assert_eq!(text(&mut sub).unwrap(), format!(r#"42["msg",{{"room":"r","n":{n}}}]"#));
    }
    assert_eq!(metric_sum(addr, "imks_write_coalescing"), 0);
    assert_eq!(metric_sum(addr, "imks_coalesced_flushes_total"), 0);
}

/// A node coalescing at once, serving an application whose events broadcast to room `r` and
/// change rooms without answering, so that nothing but the flush releases what is held.
fn start_room_app(driver: &str) -> (imks::Node, SocketAddr) {
    use imks::socketio::{Namespace, SioConfig, SocketIo};
    let config = config(driver, 1, |f| coalesce_always(f, WINDOW_US), |_| {});
    let factory = || {
        let room_event = |f: fn(&SocketIo, &std::rc::Rc<imks::socketio::Socket>)| {
            move |shard: &imks::shard::Shard, s: &std::rc::Rc<imks::socketio::Socket>, _: imks::socketio::Event<'_>| {
                if let Some(io) = &shard.service::<SocketIo>() {
                    f(io, s);
                }
            }
        };
        let main = Namespace::new("/")
            .on("tell", |shard, _s, ev| {
                if let Some(io) = &shard.service::<SocketIo>() {
                    io.of("/").to("r").emit(shard, "told", ev.args_tail());
                }
            })
            .on("shout", |shard, s, ev| {
                if let Some(io) = &shard.service::<SocketIo>() {
                    io.of("/").to("r").except_socket(&s.id).emit(shard, "shouted", ev.args_tail());
                }
            })
            .on("join-quietly", room_event(|io, s| s.join(io, "r").unwrap()))
            .on("leave-quietly", room_event(|io, s| assert!(s.leave(io, "r"))))
            .on("echo", |shard, s, ev| s.ack(shard, &ev, ev.args_tail(), Vec::new()));
        SocketIo::new(SioConfig::default(), vec![main])
    };
    let node = imks::Node::start_with(config, Some(std::sync::Arc::new(factory))).unwrap();
    let addr = node.local_addrs()[0];
    (node, addr)
}

fn connected_plain(addr: SocketAddr) -> Ws {
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"), "open packet");
    c.send(Message::text("40")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{"));
    c
}

/// Asks for an ack and returns what arrived before it.
fn before_ack(c: &mut Ws, id: u32) -> Vec<String> {
    c.send(Message::text(format!(r#"42{id}["echo"]"#))).unwrap();
    let mut seen = Vec::new();
    loop {
        let t = text(c).unwrap();
        if t == format!("43{id}[]") {
            return seen;
        }
        seen.push(t);
    }
}

#[test]
fn held_broadcasts_reach_who_was_in_the_room_when_they_were_sent() {
    on_both_drivers(|driver| {
        let (_node, addr) = start_room_app(driver);
        assert!(wait_until(Duration::from_secs(10), || metric_sum(addr, "imks_write_coalescing") == 1));
        let (mut stays, mut actor) = (connected_plain(addr), connected_plain(addr));
        for c in [&mut stays, &mut actor] {
            c.send(Message::text(r#"42["join-quietly"]"#)).unwrap();
            assert_eq!(before_ack(c, 1), Vec::<String>::new());
        }

        // One connection, so the server takes these in order. Nothing is sent back, so only the
        // flush releases the broadcasts, and each reaches the members of when it was sent.
        let flushes = metric_sum(addr, "imks_coalesced_flushes_total");
        let (frames, writes) = (metric_sum(addr, "imks_frames_out_total"), metric_sum(addr, "imks_ws_writes_total"));
        for m in [r#"["tell",0]"#, r#"["leave-quietly"]"#, r#"["tell",1]"#, r#"["join-quietly"]"#, r#"["tell",2]"#] {
            actor.send(Message::text(format!("42{m}"))).unwrap();
        }
        for n in 0..3 {
            assert_eq!(text(&mut stays).unwrap(), format!(r#"42["told",{n}]"#));
        }
        assert!(metric_sum(addr, "imks_coalesced_flushes_total") > flushes, "released by the flush");
        assert_eq!(metric_sum(addr, "imks_broadcasts_held_total"), 3);
        let out =
            || (metric_sum(addr, "imks_frames_out_total") - frames, metric_sum(addr, "imks_ws_writes_total") - writes);
        assert!(wait_until(Duration::from_secs(5), || out().0 == 5), "{:?}", out());
        assert_eq!(out(), (5, 2), "each member's broadcasts in one write");
        assert_eq!(before_ack(&mut actor, 2), [r#"42["told",0]"#, r#"42["told",2]"#]);

        // Broadcasts to the same room leave out each one's own sender.
        let (frames, writes) = (metric_sum(addr, "imks_frames_out_total"), metric_sum(addr, "imks_ws_writes_total"));
        stays.send(Message::text(r#"42["shout","a"]"#)).unwrap();
        actor.send(Message::text(r#"42["shout","b"]"#)).unwrap();
        stays.send(Message::text(r#"42["shout","c"]"#)).unwrap();
        assert_eq!(text(&mut actor).unwrap(), r#"42["shouted","a"]"#);
        assert_eq!(text(&mut actor).unwrap(), r#"42["shouted","c"]"#);
        assert_eq!(text(&mut stays).unwrap(), r#"42["shouted","b"]"#);
        let out =
            || (metric_sum(addr, "imks_frames_out_total") - frames, metric_sum(addr, "imks_ws_writes_total") - writes);
        assert!(wait_until(Duration::from_secs(5), || out().0 == 3), "{:?}", out());
        assert_eq!(out(), (3, 2), "each member's share in one write");
        assert_eq!(before_ack(&mut stays, 3), Vec::<String>::new());
        assert_eq!(before_ack(&mut actor, 4), Vec::<String>::new());
    });
}

#[test]
fn a_long_polling_member_gets_held_broadcasts_at_the_flush() {
    let (_node, addr) = start_room_app("io_uring");
    assert!(wait_until(Duration::from_secs(10), || metric_sum(addr, "imks_write_coalescing") == 1));
    const PATH: &str = "/socket.io/?EIO=4&transport=polling";
    let (_, _, body) = get(addr, PATH);
    let open: serde_json::Value = serde_json::from_slice(&body[1..]).unwrap();
    let at = format!("{PATH}&sid={}", open["sid"].as_str().unwrap());
    let post = |body: &str| {
        let raw = format!(
            "POST {at} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, _, reply) = http(addr, &raw);
        assert_eq!((status, reply.as_slice()), (200, &b"ok"[..]));
    };
    let poll = || String::from_utf8(get(addr, &at).2).unwrap();
    post("40");
    assert!(poll().starts_with("40{"));
    post(r#"42["join-quietly"]"#);

    let flushes = metric_sum(addr, "imks_coalesced_flushes_total");
    let mut actor = connected_plain(addr);
    actor.send(Message::text(r#"42["tell",0]"#)).unwrap();
    actor.send(Message::text(r#"42["tell",1]"#)).unwrap();
    assert_eq!(poll(), "42[\"told\",0]\u{1e}42[\"told\",1]");
    assert!(metric_sum(addr, "imks_coalesced_flushes_total") > flushes, "released by the flush");
}

#[test]
fn coalescing_that_batches_nothing_rests() {
    let (_node, addr) = start_full("io_uring", 1, |f| coalesce_always(f, 2_000), |c| c.conformance_mode());
    assert!(wait_until(Duration::from_secs(10), || metric_sum(addr, "imks_write_coalescing") == 1));
    let mut sub = connected(addr);
    sub.send(Message::text(r#"421["join","r"]"#)).unwrap();
    assert_eq!(text(&mut sub).unwrap(), r#"431["ok"]"#);
    let mut publisher = connected(addr);
    // One broadcast at a time, each waited for: every flush carries one, and sharing nothing it
    // only delays them. After eight such flushes coalescing turns off, and after its rest it is
    // back (both thresholds are 0 here).
    let mut n = 0;
    let rested = wait_until(Duration::from_secs(10), || {
        publisher.send(Message::text(format!(r#"42["publish",{{"room":"r","n":{n}}}]"#))).unwrap();
        assert_eq!(text(&mut sub).unwrap(), format!(r#"42["msg",{{"room":"r","n":{n}}}]"#));
        n += 1;
        metric_sum(addr, "imks_write_coalescing") == 0
    });
    assert!(rested, "still coalescing after {n} lone broadcasts");
    assert!(n >= 8, "judged after eight flushes, not {n}");
    assert!(wait_until(Duration::from_secs(10), || metric_sum(addr, "imks_write_coalescing") == 1));
}

#[test]
fn broadcasts_spread_over_rooms_that_share_no_writes_rest() {
    // A long window, so that each burst below is held in one flush.
    let (_node, addr) = start_full("io_uring", 1, |f| coalesce_always(f, 20_000), |c| c.conformance_mode());
    assert!(wait_until(Duration::from_secs(10), || metric_sum(addr, "imks_write_coalescing") == 1));
    const ROOMS: usize = 12;
    let mut subs: Vec<Ws> = (0..ROOMS)
        .map(|i| {
            let mut sub = connected(addr);
            sub.send(Message::text(format!(r#"421["join","r{i}"]"#))).unwrap();
            assert_eq!(text(&mut sub).unwrap(), r#"431["ok"]"#);
            sub
        })
        .collect();
    let mut publisher = connected(addr);
    let held = metric_sum(addr, "imks_broadcasts_held_total");
    let flushes = metric_sum(addr, "imks_coalesced_flushes_total");
    // One broadcast to every room at a time: each flush releases many broadcasts, but every
    // member gets one, alone in its write. After eight such flushes coalescing turns off.
    let mut n = 0;
    let rested = wait_until(Duration::from_secs(10), || {
        for i in 0..ROOMS {
            publisher.send(Message::text(format!(r#"42["publish",{{"room":"r{i}","n":{n}}}]"#))).unwrap();
        }
        for (i, sub) in subs.iter_mut().enumerate() {
            assert_eq!(text(sub).unwrap(), format!(r#"42["msg",{{"room":"r{i}","n":{n}}}]"#));
        }
        n += 1;
        metric_sum(addr, "imks_write_coalescing") == 0
    });
    assert!(rested, "still coalescing after {n} bursts");
    let held = metric_sum(addr, "imks_broadcasts_held_total") - held;
    let flushes = metric_sum(addr, "imks_coalesced_flushes_total") - flushes;
    assert!(flushes >= 8, "judged after eight flushes, not {flushes}");
    assert!(held >= 3 * flushes, "several broadcasts a flush ({held} in {flushes}): counted by broadcasts, it batched");
}

#[test]
fn broadcasts_from_another_shard_are_held_there_too() {
    let (node, _) = start_full(
        "io_uring",
        2,
        |f| coalesce_always(f, WINDOW_US),
        |c| {
            c.conformance_mode();
            c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
        },
    );
    let (a, b) = (node.shard_addrs(0)[0], node.shard_addrs(1)[0]);
    assert!(wait_until(Duration::from_secs(10), || metric_sum(a, "imks_write_coalescing") == 2));
    let (mut here, mut there, mut publisher) = (connected(a), connected(b), connected(a));
    for c in [&mut here, &mut there] {
        c.send(Message::text(r#"421["join","r"]"#)).unwrap();
        assert_eq!(text(c).unwrap(), r#"431["ok"]"#);
    }
    const N: u64 = 10;
    for n in 0..N {
        publisher.send(Message::text(format!(r#"42["publish",{{"room":"r","n":{n}}}]"#))).unwrap();
    }
    for c in [&mut here, &mut there] {
        for n in 0..N {
            assert_eq!(text(c).unwrap(), format!(r#"42["msg",{{"room":"r","n":{n}}}]"#));
        }
    }
    // Each shard held all ten for its own member.
    assert_eq!(metric_sum(a, "imks_broadcasts_held_total{shard=\"0\"}"), N);
    assert_eq!(metric_sum(a, "imks_broadcasts_held_total{shard=\"1\"}"), N);
}
