//! Socket.IO on a real node, over a raw WebSocket, for what a well-behaved client never sends:
//! each bad packet gets the protocol's answer and the shard stays healthy.

mod common;

use std::net::SocketAddr;

use common::sio_text as text;
use common::*;
use tungstenite::Message;

/// A raw Engine.IO WebSocket connected to the main namespace.
fn connected(addr: SocketAddr) -> Ws {
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"), "open packet");
    c.send(Message::text("40")).unwrap();
    let connect = text(&mut c).unwrap();
    let json: serde_json::Value = serde_json::from_str(connect.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["sid"]);
    assert_eq!(text(&mut c).unwrap(), r#"42["auth",{}]"#);
    c
}

/// Reads until the connection ends; true when it ended without more text frames.
fn closes(c: &mut Ws) -> bool {
    text(c).is_none()
}

#[test]
fn events_and_acks_over_raw_frames() {
    let (_node, addr) = start_conformance("io_uring", 2, (5000, 5000));
    let mut c = connected(addr);
    c.send(Message::text(r#"42["message",1,"2",{"3":[true]}]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"42["message-back",1,"2",{"3":[true]}]"#);
    c.send(Message::text(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"43456[1,"2",{"3":[false]}]"#);
    // Binary event: the header, then its two attachments, come back in order.
    c.send(Message::text(r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)).unwrap();
    c.send(Message::binary(vec![1u8, 2])).unwrap();
    c.send(Message::binary(vec![3u8])).unwrap();
    assert_eq!(
        text(&mut c).unwrap(),
        r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
    );
    assert_eq!(c.read().unwrap(), Message::binary(vec![1u8, 2]));
    assert_eq!(c.read().unwrap(), Message::binary(vec![3u8]));
    // Leaving `/` keeps the connection; joining `/custom` then works.
    c.send(Message::text("41")).unwrap();
    c.send(Message::text(r#"40/custom,{"token":"abc"}"#)).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40/custom,{\"sid\":"));
    assert_eq!(text(&mut c).unwrap(), r#"42/custom,["auth",{"token":"abc"}]"#);
}

#[test]
fn unknown_namespace_is_refused_and_the_connection_lives_on() {
    let (_node, addr) = start_conformance("io_uring", 1, (5000, 5000));
    let mut c = connected(addr);
    c.send(Message::text("40/random,")).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"44/random,{"message":"Invalid namespace"}"#);
    c.send(Message::text(r#"42["message","still here"]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"42["message-back","still here"]"#);
}

#[test]
fn bad_packets_close_the_connection_and_the_shard_stays_healthy() {
    on_both_drivers(|d| {
        let (_node, addr) = start_conformance(d, 2, (5000, 5000));
        let cases: Vec<(&str, Vec<Message>)> = vec![
            ("unknown packet type", vec![Message::text("4abc")]),
            ("unknown engine.io type", vec![Message::text("9")]),
            ("event payload not an array", vec![Message::text("42{}")]),
            ("bad ack id", vec![Message::text(r#"42abc["message"]"#)]),
            ("event before connect with junk", vec![Message::text("4299")]),
            (
                "fewer placeholders than attachments",
                vec![Message::text(r#"452-["message",{"_placeholder":true,"num":0}]"#)],
            ),
            ("placeholder out of range", vec![Message::text(r#"451-["message",{"_placeholder":true,"num":3}]"#)]),
            ("binary without a pending packet", vec![Message::binary(vec![1u8])]),
            (
                "text while attachments are pending",
                vec![
                    Message::text(r#"451-["message",{"_placeholder":true,"num":0}]"#),
                    Message::text(r#"42["message"]"#),
                ],
            ),
            ("message over maxPayload", vec![Message::text(format!("42[\"message\",\"{}\"]", "x".repeat(1_000_001)))]),
        ];
        for (name, msgs) in cases {
            let mut c = connected(addr);
            for m in msgs {
                c.send(m).unwrap();
            }
            assert!(closes(&mut c), "{name} on {d}: the connection must close");
        }
        assert_eq!(health(addr)["status"], "ok");
        // A fresh client is served normally afterwards.
        let mut c = connected(addr);
        c.send(Message::text(r#"42["message","ok"]"#)).unwrap();
        assert_eq!(text(&mut c).unwrap(), r#"42["message-back","ok"]"#);
    });
}

#[test]
fn no_connect_within_the_timeout_closes_the_connection() {
    let (_node, addr) = start_conformance("io_uring", 1, (5000, 5000));
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"));
    let started = std::time::Instant::now();
    assert!(closes(&mut c), "closed without a CONNECT");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900) && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
}

/// Connection state recovery across shards: a socket that drops while on shard 0 comes back
/// through shard 1 with the same id, its rooms and the broadcast it missed.
#[test]
fn a_dropped_socket_recovers_its_id_rooms_and_missed_events_on_another_shard() {
    let (node, _) = start_full(
        "io_uring",
        2,
        |_| {},
        |c| {
            c.conformance_mode();
            c.eio.ping_interval = std::time::Duration::from_secs(5);
            c.eio.ping_timeout = std::time::Duration::from_secs(5);
            c.sio.recovery = Some(imks::socketio::recovery::RecoveryConfig {
                window: std::time::Duration::from_secs(10),
                max_packets: 100,
            });
            c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
        },
    );
    let (a, b) = (node.shard_addrs(0)[0], node.shard_addrs(1)[0]);
    let connect = |addr: SocketAddr, auth: &str| -> (Ws, serde_json::Value) {
        let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
        assert!(text(&mut c).unwrap().starts_with("0{"));
        c.send(Message::text(format!("40{auth}"))).unwrap();
        let answer = text(&mut c).unwrap();
        (c, serde_json::from_str(answer.strip_prefix("40").unwrap()).unwrap())
    };
    let last_arg = |packet: &str| -> String {
        let args: Vec<serde_json::Value> = serde_json::from_str(&packet[packet.find('[').unwrap()..]).unwrap();
        args.last().unwrap().as_str().unwrap().to_string()
    };

    let (mut first, hello) = connect(a, "");
    let (sid, pid) = (hello["sid"].as_str().unwrap().to_string(), hello["pid"].as_str().unwrap().to_string());
    let auth = text(&mut first).unwrap();
    assert!(auth.starts_with(r#"42["auth",{},""#), "events carry an offset: {auth}");
    first.send(Message::text(r#"421["join","r"]"#)).unwrap();
    assert_eq!(text(&mut first).unwrap(), r#"431["ok"]"#);
    let (mut publisher, _) = connect(b, "");
    text(&mut publisher);
    publisher.send(Message::text(r#"42["publish",{"room":"r","n":1}]"#)).unwrap();
    let got = text(&mut first).unwrap();
    assert!(got.starts_with(r#"42["msg",{"room":"r","n":1},"#), "{got}");
    let offset = last_arg(&got);

    // The transport drops; a publication happens while the socket is away.
    first.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
    drop(first);
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        metric_sum(a, "imks_closes_total{shard=\"0\",reason=\"client\"}") >= 1
    }));
    publisher.send(Message::text(r#"42["publish",{"room":"r","n":2}]"#)).unwrap();
    publisher.send(Message::text(r#"421["echo-ack"]"#)).unwrap();
    assert_eq!(text(&mut publisher).unwrap(), r#"431[]"#);

    let (mut back, hello) = connect(b, &format!(r#"{{"pid":"{pid}","offset":"{offset}"}}"#));
    assert_eq!(hello["sid"], sid.as_str(), "same socket id");
    assert_eq!(hello["pid"], pid.as_str());
    let missed = text(&mut back).unwrap();
    assert!(missed.starts_with(r#"42["msg",{"room":"r","n":2},"#), "the missed event first: {missed}");
    // Still in the room.
    publisher.send(Message::text(r#"42["publish",{"room":"r","n":3}]"#)).unwrap();
    loop {
        let t = text(&mut back).unwrap();
        if t.contains(r#""n":3"#) {
            break;
        }
    }

    // An unknown offset is not recoverable: a fresh socket.
    let (_c, fresh) = connect(b, &format!(r#"{{"pid":"{pid}","offset":"nope"}}"#));
    assert_ne!(fresh["sid"], sid.as_str());
}

#[test]
fn shutdown_closes_socketio_websockets_with_1001() {
    let (node, addr) = start_conformance("io_uring", 2, (5000, 5000));
    let mut c = connected(addr);
    let stopper = std::thread::spawn(move || node.shutdown());
    let code = loop {
        match c.read() {
            Ok(Message::Text(t)) => assert_eq!(t.as_str(), "1", "an Engine.IO close packet first"),
            Ok(Message::Close(f)) => break u16::from(f.expect("a close code").code),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, 1001);
    let _ = c.flush();
    assert!(stopper.join().unwrap());
}

/// A client that bursts IM events and goes away without reading their acks: the acks that
/// waited in its backlog (its send queue being full) are let go with the session.
#[test]
fn a_backlog_of_acks_is_let_go_when_its_session_closes() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    let (_node, addr) = start("io_uring", 1, |f| {
        f.websocket.send_queue_len = 8;
        f.server.tick_ms = 20;
    });
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"), "open packet");
    c.send(Message::text("40")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{"), "connected");
    // A small receive buffer, so the acks cannot all wait in the kernel.
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket and a pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            c.get_ref().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let mut burst = Vec::new();
    for i in 0..2000 {
        let event = format!(r#"42{i}["message:send",{{"channel_id":"burst","body":"b{i}"}}]"#);
        burst.extend_from_slice(&frame(true, 1, event.as_bytes(), true));
    }
    // As much of the burst as the kernel takes: the server stops reading once it is backlogged.
    let mut raw = c.get_ref().try_clone().unwrap();
    raw.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < burst.len() {
        match raw.write(&burst[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    drop(raw);
    assert!(sent > 100 * 60, "sent {sent} bytes");
    let backlog = || metric_sum(addr, "imks_send_backlog_frames{");
    assert!(wait_until(Duration::from_secs(5), || backlog() > 0), "a backlog forms");
    // Closed with acks unread: the server's write fails and the session ends.
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || backlog() == 0), "still waiting: {}", backlog());
    assert_eq!(health(addr)["shards"][0]["websockets"], 0);
}
