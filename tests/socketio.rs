//! Socket.IO on a real node, over a raw WebSocket, for what a well-behaved client never sends:
//! each bad packet gets the protocol's answer and the shard stays healthy.

mod common;

use std::net::SocketAddr;

use common::*;
use tungstenite::Message;

fn text(c: &mut Ws) -> Option<String> {
    loop {
        match c.read() {
            Ok(Message::Text(t)) if t.as_str() == "2" => c.send(Message::text("3")).unwrap(),
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(m) => panic!("unexpected {m:?}"),
        }
    }
}

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
