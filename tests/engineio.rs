//! Engine.IO v4 on a real node (the conformance application's raw echo at `/engine.io/`):
//! both transports, the upgrade, heartbeats, closing and every error answer.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

const PATH: &str = "/engine.io/?EIO=4&transport=polling";

fn poll_get(addr: SocketAddr, sid: &str) -> (u16, String) {
    let (status, _, body) = get(addr, &format!("{PATH}&sid={sid}"));
    (status, String::from_utf8(body).unwrap())
}

fn poll_post(addr: SocketAddr, sid: &str, body: &str) -> (u16, String) {
    let raw = format!(
        "POST {PATH}&sid={sid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http(addr, &raw);
    (status, String::from_utf8(body).unwrap())
}

/// The conformance application on one shard with 5 s heartbeats, after `file` and `eio` adjust
/// its file config and its resolved `[engineio]`.
fn start_eio(
    driver: &str,
    file: impl FnOnce(&mut imks::config::file::FileConfig),
    eio: impl FnOnce(&mut imks::engineio::EioConfig),
) -> (imks::Node, SocketAddr) {
    start_full(driver, 1, file, |c| {
        c.conformance_mode();
        c.eio.ping_interval = Duration::from_secs(5);
        c.eio.ping_timeout = Duration::from_secs(5);
        eio(&mut c.eio);
    })
}

/// Waits until a long-polling GET is parked on the node, as `imks_engineio_polls_waiting` says,
/// so the next request surely comes after it.
fn wait_parked(addr: SocketAddr) {
    let parked = || metric_sum(addr, "imks_engineio_polls_waiting") >= 1;
    assert!(wait_until(Duration::from_secs(10), parked), "no long-poll parked");
}

/// Opens a polling session; returns its sid and the open packet's JSON.
fn handshake(addr: SocketAddr) -> (String, serde_json::Value) {
    let (status, head, body) = get(addr, PATH);
    assert_eq!(status, 200, "{head}");
    let body = String::from_utf8(body).unwrap();
    let json: serde_json::Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
    (json["sid"].as_str().unwrap().to_string(), json)
}

#[test]
fn polling_handshake_has_exactly_the_protocol_keys() {
    let (_node, addr) = start_conformance("io_uring", 2, (300, 200));
    let (sid, open) = handshake(addr);
    let mut keys: Vec<&str> = open.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["pingTimeout"], 200);
    assert_eq!(open["maxPayload"], 1_000_000);
    assert!(sid.len() >= 20);
}

#[test]
fn bad_requests_get_400_with_the_protocol_code() {
    let (_node, addr) = start_conformance("io_uring", 1, (300, 200));
    for (path, code) in [
        ("/engine.io/?transport=polling", 5),
        ("/engine.io/?EIO=3&transport=polling", 5),
        ("/engine.io/?EIO=4", 0),
        ("/engine.io/?EIO=4&transport=carrier-pigeon", 0),
        ("/engine.io/?EIO=4&transport=polling&sid=nope", 1),
    ] {
        let (status, _, body) = get(addr, path);
        assert_eq!(status, 400, "{path}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["code"], code, "{path}");
    }
    let raw = format!("POST {PATH} HTTP/1.1\r\nConnection: close\r\nContent-Length: 6\r\n\r\n4hello");
    assert_eq!(http(addr, &raw).0, 400, "POST without sid");
}

#[test]
fn polling_echoes_text_and_binary_in_order() {
    on_both_drivers(|d| {
        let (_node, addr) = start_conformance(d, 2, (2000, 2000));
        let (sid, _) = handshake(addr);
        assert_eq!(poll_post(addr, &sid, "4hello\u{1e}bAQID\u{1e}4é"), (200, "ok".into()));
        assert_eq!(poll_get(addr, &sid), (200, "4hello\u{1e}bAQID\u{1e}4é".into()));
    });
}

#[test]
fn first_ping_comes_one_interval_after_open_and_pong_keeps_the_session() {
    let (_node, addr) = start_conformance("io_uring", 1, (300, 200));
    let started = Instant::now();
    let (sid, _) = handshake(addr);
    assert_eq!(poll_get(addr, &sid), (200, "2".into()));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(280) && waited < Duration::from_millis(1000), "{waited:?}");
    let ponged = Instant::now();
    assert_eq!(poll_post(addr, &sid, "3").0, 200);
    // Answered: the next ping comes one interval after the pong (not interval + timeout, which
    // is when clients give up on the server).
    assert_eq!(poll_get(addr, &sid), (200, "2".into()));
    let gap = ponged.elapsed();
    assert!(gap >= Duration::from_millis(280) && gap < Duration::from_millis(450), "{gap:?}");
}

#[test]
fn unanswered_ping_ends_the_session_on_time() {
    let (_node, addr) = start_conformance("io_uring", 1, (300, 200));
    let started = Instant::now();
    let (sid, _) = handshake(addr);
    assert_eq!(poll_get(addr, &sid), (200, "2".into()));
    // No pong: gone at interval + timeout (500 ms) after the open packet. Asked 50 ms later, so
    // that a loaded machine does not make the request arrive first (it would wait for the
    // session's last packet instead of getting 400).
    std::thread::sleep(Duration::from_millis(550).saturating_sub(started.elapsed()));
    assert_eq!(poll_get(addr, &sid).0, 400);
}

#[test]
fn client_close_releases_the_pending_get_with_noop() {
    let (_node, addr) = start_conformance("io_uring", 1, (5000, 5000));
    let (sid, _) = handshake(addr);
    let pending = {
        let sid = sid.clone();
        std::thread::spawn(move || poll_get(addr, &sid))
    };
    wait_parked(addr);
    assert_eq!(poll_post(addr, &sid, "1").0, 200);
    assert_eq!(pending.join().unwrap(), (200, "6".into()));
    assert_eq!(poll_get(addr, &sid).0, 400, "the session is gone");
}

/// Open Engine.IO sessions on the node, as `/health` reports them.
fn health_sessions(addr: SocketAddr) -> u64 {
    health(addr)["shards"].as_array().unwrap().iter().map(|s| s["engineio_sessions"].as_u64().unwrap()).sum()
}

#[test]
fn health_and_metrics_count_polling_sessions_until_they_close_or_time_out() {
    let (_node, addr) = start_conformance("io_uring", 1, (300, 200));
    assert_eq!(health_sessions(addr), 0);
    let (closed, _) = handshake(addr);
    let (timed_out, _) = handshake(addr);
    // A polling session holds no connection between requests: only the session count shows it.
    assert_eq!(health_sessions(addr), 2);
    assert_eq!(metric_sum(addr, "imks_engineio_sessions_active"), 2);
    assert_eq!(poll_post(addr, &closed, "1").0, 200);
    assert_eq!(health_sessions(addr), 1, "a closed session is not counted");
    // The other one never answers a ping: it ends at interval + timeout.
    let gone = || health_sessions(addr) == 0 && metric_sum(addr, "imks_engineio_sessions_active") == 0;
    assert!(wait_until(Duration::from_secs(10), gone), "a timed-out session is still counted");
    assert_eq!(poll_get(addr, &timed_out).0, 400);
}

#[test]
fn a_second_concurrent_get_is_refused_and_closes_the_session() {
    let (_node, addr) = start_conformance("io_uring", 1, (5000, 5000));
    let (sid, _) = handshake(addr);
    let pending = {
        let sid = sid.clone();
        std::thread::spawn(move || poll_get(addr, &sid))
    };
    wait_parked(addr);
    assert_eq!(poll_get(addr, &sid).0, 400);
    assert_eq!(pending.join().unwrap(), (200, "1".into()));
    assert_eq!(poll_get(addr, &sid).0, 400);
}

#[test]
fn invalid_packet_closes_the_session() {
    let (_node, addr) = start_conformance("io_uring", 1, (5000, 5000));
    let (sid, _) = handshake(addr);
    assert_eq!(poll_post(addr, &sid, "abc").0, 400);
    assert_eq!(poll_get(addr, &sid).0, 400);
}

fn eio_ws(addr: SocketAddr, sid: Option<&str>) -> Ws {
    let mut path = "/engine.io/?EIO=4&transport=websocket".to_string();
    if let Some(sid) = sid {
        path.push_str(&format!("&sid={sid}"));
    }
    ws(addr, &path)
}

fn text(c: &mut Ws) -> String {
    loop {
        match c.read().unwrap() {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            m => panic!("unexpected {m:?}"),
        }
    }
}

#[test]
fn websocket_session_echoes_and_pings() {
    on_both_drivers(|d| {
        let (_node, addr) = start_conformance(d, 2, (300, 200));
        let mut c = eio_ws(addr, None);
        let open = text(&mut c);
        let json: serde_json::Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        assert_eq!(json["upgrades"], serde_json::json!([]));
        c.send(Message::text("4hello")).unwrap();
        assert_eq!(text(&mut c), "4hello");
        c.send(Message::binary(vec![1u8, 2, 3])).unwrap();
        assert_eq!(c.read().unwrap(), Message::binary(vec![1u8, 2, 3]));
        assert_eq!(text(&mut c), "2", "server ping");
        c.send(Message::text("3")).unwrap();
        assert_eq!(text(&mut c), "2", "still alive one interval later");
    });
}

#[test]
fn upgrade_from_polling_to_websocket() {
    on_both_drivers(|d| {
        let (_node, addr) = start_conformance(d, 1, (5000, 5000));
        let (sid, _) = handshake(addr);
        let pending = {
            let sid = sid.clone();
            std::thread::spawn(move || poll_get(addr, &sid))
        };
        wait_parked(addr);
        let mut c = eio_ws(addr, Some(&sid));
        c.send(Message::text("2probe")).unwrap();
        assert_eq!(text(&mut c), "3probe");
        assert_eq!(pending.join().unwrap(), (200, "6".into()), "the pending GET is released with a noop");
        // Something sent while upgrading waits for the WebSocket.
        assert_eq!(poll_post(addr, &sid, "4during").0, 200);
        c.send(Message::text("5")).unwrap();
        assert_eq!(text(&mut c), "4during");
        c.send(Message::text("4after")).unwrap();
        assert_eq!(text(&mut c), "4after");
        assert_eq!(poll_get(addr, &sid).0, 400, "polling is over for this session");
        let (status, _, _) = get(addr, &format!("/engine.io/?EIO=4&transport=websocket&sid={sid}"));
        assert_eq!(status, 400, "a second WebSocket for the sid is refused");
    });
}

/// The conformance application on two shards with 5 s heartbeats, each shard on its own
/// address (shard 0 on 127.0.0.1, shard 1 on 127.0.0.2), so a test chooses the shard a
/// request lands on.
fn two_shard_conformance(driver: &str) -> (imks::Node, SocketAddr, SocketAddr) {
    let (node, _) = start_full(
        driver,
        2,
        |_| {},
        |c| {
            c.conformance_mode();
            c.eio.ping_interval = Duration::from_secs(5);
            c.eio.ping_timeout = Duration::from_secs(5);
            c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
        },
    );
    let (a, b) = (node.shard_addrs(0)[0], node.shard_addrs(1)[0]);
    (node, a, b)
}

/// No sticky sessions: with each shard on its own address, the handshake goes to shard 0 and
/// every later request of the session to shard 1, which serves them through the rings (and
/// hands the upgraded WebSocket over to shard 0).
#[test]
fn requests_of_one_session_are_served_from_any_shard() {
    on_both_drivers(|d| {
        let (_node, a, b) = two_shard_conformance(d);
        assert_ne!(a.ip(), b.ip());
        let (sid, _) = handshake(a);
        assert_eq!(poll_post(b, &sid, "4via shard 1"), (200, "ok".into()));
        assert_eq!(poll_get(b, &sid), (200, "4via shard 1".into()));
        assert_eq!(poll_post(a, &sid, "4via shard 0"), (200, "ok".into()));
        assert_eq!(poll_get(b, &sid), (200, "4via shard 0".into()));
        // Upgrade through shard 1 while a GET waits on shard 0.
        let pending = {
            let sid = sid.clone();
            std::thread::spawn(move || poll_get(a, &sid))
        };
        wait_parked(a);
        let mut c = eio_ws(b, Some(&sid));
        c.send(Message::text("2probe")).unwrap();
        assert_eq!(text(&mut c), "3probe");
        assert_eq!(pending.join().unwrap(), (200, "6".into()));
        c.send(Message::text("5")).unwrap();
        c.send(Message::text("4over the moved socket")).unwrap();
        assert_eq!(text(&mut c), "4over the moved socket");
        assert_eq!(poll_get(b, &sid).0, 400);
        assert!(metric_sum(a, "imks_ring_pushes_total{") >= 4, "the requests crossed the rings");
        assert_eq!(metric_sum(a, "imks_closes_total{shard=\"1\",reason=\"moved\"}"), 1);
    });
}

#[test]
fn a_get_that_overtakes_the_upgrade_is_answered_not_left_hanging() {
    let (_node, addr) = start_conformance("io_uring", 1, (5000, 5000));
    let (sid, _) = handshake(addr);
    let pending = {
        let sid = sid.clone();
        std::thread::spawn(move || poll_get(addr, &sid))
    };
    wait_parked(addr);
    let mut c = eio_ws(addr, Some(&sid));
    // `2probe` and `5` back to back, as a client that does not wait for `3probe` sends them.
    c.send(Message::text("2probe")).unwrap();
    c.send(Message::text("5")).unwrap();
    assert_eq!(text(&mut c), "3probe");
    let (status, _) = pending.join().unwrap();
    assert!(status == 400 || status == 200, "answered, not left hanging: {status}");
    assert_eq!(poll_get(addr, &sid).0, 400);
}

#[test]
fn a_second_websocket_for_an_upgraded_session_is_closed() {
    let (_node, addr) = start_conformance("io_uring", 1, (5000, 5000));
    let (sid, _) = handshake(addr);
    let mut c = eio_ws(addr, Some(&sid));
    c.send(Message::text("2probe")).unwrap();
    assert_eq!(text(&mut c), "3probe");
    // A second one while the first is upgrading, and one after: both 101, then closed.
    let mut during = eio_ws(addr, Some(&sid));
    c.send(Message::text("5")).unwrap();
    let mut after = eio_ws(addr, Some(&sid));
    for other in [&mut during, &mut after] {
        match other.read() {
            Ok(Message::Close(_)) | Err(_) => {}
            m => panic!("expected a close, got {m:?}"),
        }
    }
    c.send(Message::text("4still mine")).unwrap();
    assert_eq!(text(&mut c), "4still mine");
}

#[test]
fn polling_answers_cors_preflights_and_echoes_the_origin() {
    let (_node, addr) = start_conformance("io_uring", 1, (5000, 5000));
    let (status, head, _) = http(
        addr,
        &format!(
            "OPTIONS {PATH} HTTP/1.1\r\nHost: x\r\nOrigin: http://app.example\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 204, "{head}");
    assert!(head.contains("Access-Control-Allow-Origin: http://app.example"), "{head}");
    assert!(head.contains("Access-Control-Allow-Methods: GET, POST, OPTIONS"), "{head}");
    let (status, head, body) = http(
        addr,
        &format!("GET {PATH} HTTP/1.1\r\nHost: x\r\nOrigin: http://app.example\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert!(head.contains("Access-Control-Allow-Origin: http://app.example"), "{head}");
    assert!(body.starts_with(b"0{"));
}

#[test]
fn more_packets_than_max_buffered_packets_for_a_polling_client_close_its_session() {
    let (_node, addr) = start_eio(
        "io_uring",
        |_| {},
        |e| {
            e.max_buffered_packets = 4;
        },
    );
    let (sid, _) = handshake(addr);
    // Four echoes wait for the next GET: at the bound, not past it.
    assert_eq!(poll_post(addr, &sid, "4a\u{1e}4b\u{1e}4c\u{1e}4d"), (200, "ok".into()));
    assert_eq!(poll_get(addr, &sid), (200, "4a\u{1e}4b\u{1e}4c\u{1e}4d".into()));
    // Five do not fit: the session is closed, and its next GET finds none.
    assert_eq!(poll_post(addr, &sid, "4a\u{1e}4b\u{1e}4c\u{1e}4d\u{1e}4e").0, 200);
    assert_eq!(poll_get(addr, &sid).0, 400, "closed past engineio.max_buffered_packets");
}

#[test]
fn a_polling_post_over_max_payload_gets_413_and_closes_the_session() {
    let (_node, addr) = start_eio(
        "epoll",
        |_| {},
        |e| {
            e.max_payload = 100;
        },
    );
    let (sid, open) = handshake(addr);
    assert_eq!(open["maxPayload"], 100, "the client is told the bound");
    assert_eq!(poll_post(addr, &sid, &format!("4{}", "x".repeat(99))), (200, "ok".into()), "at the bound");
    assert_eq!(poll_get(addr, &sid).0, 200);
    assert_eq!(poll_post(addr, &sid, &format!("4{}", "x".repeat(100))).0, 413, "one byte over");
    assert_eq!(poll_get(addr, &sid).0, 400, "the session is gone");
}

#[test]
fn a_restricted_cors_list_answers_only_its_origins_with_credentials() {
    let (_node, addr) = start_eio(
        "io_uring",
        |_| {},
        |e| {
            e.cors_origins = vec!["https://app.example".into()];
            e.cors_credentials = true;
        },
    );
    let preflight = |origin: &str| {
        http(
            addr,
            &format!(
                "OPTIONS {PATH} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let (status, head, _) = preflight("https://app.example");
    assert_eq!(status, 204, "{head}");
    assert!(head.contains("Access-Control-Allow-Origin: https://app.example"), "{head}");
    assert!(head.contains("Access-Control-Allow-Credentials: true"), "{head}");
    assert!(head.contains("Vary: Origin"), "{head}");
    let (status, head, _) = preflight("https://elsewhere.example");
    assert_eq!(status, 204, "{head}");
    assert!(!head.contains("Access-Control-Allow-Origin"), "an origin off the list gets no grant: {head}");
    assert!(!head.contains("Access-Control-Allow-Credentials"), "{head}");
}

#[test]
fn sids_are_checked_before_any_ring_hop() {
    let (_node, addr) = start_conformance("io_uring", 2, (5000, 5000));
    let pushes = || metric_sum(addr, "imks_ring_pushes_total{");
    let before = pushes();
    let out_of_range = imks::engineio::Sid::new(7, 0, 1).to_string();
    for sid in ["not-a-sid", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA", out_of_range.as_str()] {
        let (status, body) = poll_get(addr, sid);
        assert_eq!(status, 400, "{sid}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["code"], 1, "Session ID unknown: {sid}");
        let (status, _) = poll_post(addr, sid, "4x");
        assert_eq!(status, 400, "{sid}");
    }
    assert_eq!(pushes(), before, "no request crossed the rings");
}

#[test]
fn past_max_buffered_packets_polling_follows_the_drop_policies() {
    for (policy, kept) in [("drop_newest", "4a\u{1e}4b\u{1e}4c"), ("drop_oldest", "4c\u{1e}4d\u{1e}4e")] {
        let (_node, addr) = start_eio(
            "epoll",
            |f| f.websocket.backpressure = policy.into(),
            |e| {
                e.max_buffered_packets = 3;
            },
        );
        let (sid, _) = handshake(addr);
        assert_eq!(poll_post(addr, &sid, "4a\u{1e}4b\u{1e}4c\u{1e}4d\u{1e}4e"), (200, "ok".into()), "{policy}");
        assert_eq!(poll_get(addr, &sid), (200, kept.into()), "{policy} keeps three of five");
        assert_eq!(metric_sum(addr, &format!("imks_send_queue_drops_total{{shard=\"0\",policy=\"{policy}\"}}")), 2);
        // The session goes on.
        assert_eq!(poll_post(addr, &sid, "4f"), (200, "ok".into()), "{policy}");
        assert_eq!(poll_get(addr, &sid), (200, "4f".into()), "{policy}");
    }
}

/// A long-poll GET that reached the node before the client's close (`POST 1`) is answered with
/// a noop (`6`), as on one shard, even when it came through the other shard and reached the
/// session's shard only after the close; a GET after the close gets 400. Each round sends the
/// GET to shard 1, and the close to shard 0 (the session's) [`GAP`] later: the GET has
/// reached the node by then, but its way between the shards may take longer (when a shard is
/// not scheduled at once, as on a loaded machine). Before the fix, about one run in three of
/// this test failed here during a build on the other core.
#[test]
fn a_get_before_a_close_through_another_shard_gets_a_noop_not_400() {
    let (_node, a, b) = two_shard_conformance("io_uring");
    for round in 0..300 {
        let (sid, _) = handshake(a);
        let mut pending = connect(b);
        let mut close = connect(a);
        pending
            .write_all(format!("GET {PATH}&sid={sid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        std::thread::sleep(GAP);
        close
            .write_all(
                format!("POST {PATH}&sid={sid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\n1")
                    .as_bytes(),
            )
            .unwrap();
        let mut answer = String::new();
        pending.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n6"), "round {round}: {answer}");
        let mut closed = String::new();
        close.read_to_string(&mut closed).unwrap();
        assert!(closed.starts_with("HTTP/1.1 200"), "round {round}: {closed}");
        assert_eq!(poll_get(b, &sid).0, 400, "a GET after the close");
    }
}

/// Between the GET and the close in the test above:
/// long enough for shard 1 to have read the GET (it is ordered by that), short enough for the
/// close to overtake it between the shards now and then.
const GAP: Duration = Duration::from_millis(5);

/// A `sid` is checked before any ring hop: a malformed one, or one that names a shard the node
/// does not have, is answered `400` by the shard that got it, and nothing crosses the rings.
#[test]
fn a_malformed_or_foreign_sid_is_refused_at_once_without_a_ring_hop() {
    let (_node, addr) = start_conformance("io_uring", 2, (5000, 5000));
    let pushes = || metric_sum(addr, "imks_ring_pushes_total{");
    let before = pushes();
    let no_such_shard = imks::engineio::Sid::new(7, 0, 1).to_string();
    for sid in ["abc", "AAAAAAAAAAAAAAAAAAAAAAA!", &no_such_shard] {
        assert_eq!(poll_get(addr, sid), (400, r#"{"code":1,"message":"Session ID unknown"}"#.into()), "{sid}");
        assert_eq!(poll_post(addr, sid, "4x").0, 400, "{sid}");
        let (status, _, _) = get(addr, &format!("/engine.io/?EIO=4&transport=websocket&sid={sid}"));
        assert_eq!(status, 400, "{sid}");
    }
    assert_eq!(pushes(), before, "nothing crossed the rings");
}
