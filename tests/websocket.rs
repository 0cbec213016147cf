//! WebSocket behaviour of a real node, driven by a real client (tungstenite) and raw frames.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use tungstenite::Message;

#[test]
fn echoes_text_and_binary_byte_for_byte() {
    on_both_drivers(|d| {
        let (node, addr) = start(d, 2, |_| {});
        let mut c = ws(addr, "/ws-echo");
        c.send(Message::text("héllo")).unwrap();
        assert_eq!(c.read().unwrap(), Message::text("héllo"));
        let bin: Vec<u8> = (0..=255).collect();
        c.send(Message::binary(bin.clone())).unwrap();
        assert_eq!(c.read().unwrap(), Message::binary(bin));
        let big = "x".repeat(300_000);
        c.send(Message::text(big.clone())).unwrap();
        assert_eq!(c.read().unwrap(), Message::text(big));
        c.close(None).unwrap();
        loop {
            match c.read() {
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(node.shutdown());
    });
}

#[test]
fn fragments_with_interleaved_ping_are_reassembled() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |_| {});
        let mut s = raw_ws(addr);
        let mut bytes = frame(false, 1, b"hel", true);
        bytes.extend(frame(true, 9, b"pp", true));
        bytes.extend(frame(false, 0, b"lo ", true));
        bytes.extend(frame(true, 0, b"world", true));
        // Written one byte at a time: the server must cope with any split.
        for b in &bytes {
            s.write_all(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(read_frame(&mut s).unwrap(), (true, 10, b"pp".to_vec()), "pong first");
        assert_eq!(read_frame(&mut s).unwrap(), (true, 1, b"hello world".to_vec()));
    });
}

#[test]
fn many_pipelined_messages_all_come_back_in_order() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |_| {});
        let mut s = raw_ws(addr);
        let mut bytes = Vec::new();
        for i in 0..2000u32 {
            bytes.extend(frame(true, 2, &i.to_be_bytes(), true));
        }
        s.write_all(&bytes).unwrap();
        for i in 0..2000u32 {
            assert_eq!(read_frame(&mut s).unwrap(), (true, 2, i.to_be_bytes().to_vec()));
        }
    });
}

#[test]
fn bad_frames_get_the_right_close_code_and_the_node_stays_healthy() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 2, |f| {
            f.websocket.max_message_bytes = 1024;
            f.websocket.max_frame_bytes = 1024;
        });
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("oversized frame", frame(true, 2, &[0u8; 2000], true), 1009),
            (
                "oversized fragmented message",
                [frame(false, 2, &[0u8; 800], true), frame(true, 0, &[0u8; 800], true)].concat(),
                1009,
            ),
            ("invalid utf-8", frame(true, 1, &[0x68, 0xff, 0x69], true), 1007),
            ("invalid utf-8 in first fragment", frame(false, 1, &[0xc0, 0xaf], true), 1007),
            ("unmasked client frame", frame(true, 1, b"hi", false), 1002),
            (
                "reserved bits",
                {
                    let mut f = frame(true, 1, b"hi", true);
                    f[0] |= 0x40;
                    f
                },
                1002,
            ),
            ("reserved opcode", frame(true, 3, b"", true), 1002),
            ("fragmented ping", frame(false, 9, b"", true), 1002),
            ("control frame over 125 bytes", frame(true, 9, &[1u8; 126], true), 1002),
            ("continuation without start", frame(true, 0, b"x", true), 1002),
            ("close with invalid code", frame(true, 8, &999u16.to_be_bytes(), true), 1002),
        ];
        for (name, bytes, want) in cases {
            let mut s = raw_ws(addr);
            s.write_all(&bytes).unwrap();
            assert_eq!(read_close_code(&mut s), want, "{name} on {d}");
        }
        let h = health(addr);
        assert_eq!(h["status"], "ok");
        assert!(wait_until(Duration::from_secs(5), || metric_sum(addr, "imks_closes_total{") >= 11));
        assert!(
            metric_sum(addr, "imks_closes_total{shard=\"0\",reason=\"too_big\"}")
                + metric_sum(addr, "imks_closes_total{shard=\"1\",reason=\"too_big\"}")
                >= 2
        );
    });
}

#[test]
fn close_handshake_echoes_the_code() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |_| {});
        let mut s = raw_ws(addr);
        let mut p = 4000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        s.write_all(&frame(true, 8, &p, true)).unwrap();
        assert_eq!(read_close_code(&mut s), 4000);
        // Then the server closes the TCP connection.
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut rest).unwrap();
        assert!(rest.is_empty());
    });
}

#[test]
fn silent_client_is_pinged_then_dropped() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |f| {
            f.server.tick_ms = 20;
            f.websocket.ping_interval_ms = 150;
            f.websocket.ping_timeout_ms = 150;
        });
        let mut s = raw_ws(addr);
        let started = std::time::Instant::now();
        let (_, op, _) = read_frame(&mut s).unwrap();
        assert_eq!(op, 9, "a ping arrives after the interval");
        assert!(started.elapsed() >= Duration::from_millis(140));
        // We never answer: the server must drop us after the timeout.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(wait_until(Duration::from_secs(5), || metric_sum(
            addr,
            "imks_closes_total{shard=\"0\",reason=\"ping_timeout\"}"
        ) == 1));
    });
}

#[test]
fn answering_pings_keeps_the_session_alive() {
    let (_node, addr) = start("io_uring", 1, |f| {
        f.server.tick_ms = 20;
        f.websocket.ping_interval_ms = 100;
        f.websocket.ping_timeout_ms = 100;
    });
    let mut c = ws(addr, "/ws-echo");
    c.get_mut().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let end = std::time::Instant::now() + Duration::from_millis(800);
    let mut pings = 0;
    while std::time::Instant::now() < end {
        match c.read() {
            Ok(Message::Ping(_)) => pings += 1, // tungstenite queues the pong; flushed below
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("session dropped: {e}"),
        }
        let _ = c.flush();
    }
    assert!(pings >= 3, "pings: {pings}");
    c.send(Message::text("still here")).unwrap();
    c.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        match c.read().unwrap() {
            Message::Text(t) => {
                assert_eq!(t.as_str(), "still here");
                break;
            }
            Message::Ping(_) => continue,
            m => panic!("unexpected {m:?}"),
        }
    }
}

#[test]
fn connections_land_on_every_shard() {
    let (_node, addr) = start("io_uring", 2, |_| {});
    let clients: Vec<Ws> = (0..64).map(|_| ws(addr, "/ws-echo")).collect();
    assert!(wait_until(Duration::from_secs(5), || {
        let h = health(addr);
        h["shards"].as_array().unwrap().iter().map(|s| s["websockets"].as_u64().unwrap()).sum::<u64>() == 64
    }));
    let h = health(addr);
    for s in h["shards"].as_array().unwrap() {
        assert!(s["websockets"].as_u64().unwrap() > 0, "shard without connections: {h}");
        assert_eq!(s["driver"], "io_uring");
    }
    drop(clients);
}
