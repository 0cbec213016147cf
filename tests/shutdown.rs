//! Graceful shutdown of a real node: listeners close first, WebSockets get 1001 after their
//! queued frames, idle HTTP connections close, and stragglers are cut at the drain timeout.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

#[test]
fn websockets_get_1001_and_the_node_stops() {
    on_both_drivers(|d| {
        let (node, addr) = start(d, 2, |_| {});
        let mut clients: Vec<Ws> = (0..8).map(|_| ws(addr, "/ws-echo")).collect();
        for c in &mut clients {
            c.send(Message::text("ready")).unwrap();
            assert_eq!(c.read().unwrap(), Message::text("ready"));
        }
        let mut idle_http = connect(addr);
        idle_http.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut idle_http).0, 200);

        let stopper = std::thread::spawn(move || node.shutdown());
        for c in &mut clients {
            let frame = match c.read() {
                Ok(Message::Close(f)) => f,
                Ok(m) => panic!("unexpected {m:?}"),
                Err(e) => panic!("no close frame: {e}"),
            };
            assert_eq!(u16::from(frame.expect("close code").code), 1001);
            // Answer the close, as a well-behaved client does.
            let _ = c.flush();
        }
        let mut rest = Vec::new();
        let _ = idle_http.read_to_end(&mut rest);
        assert!(rest.is_empty(), "idle keep-alive connection closed without a response");
        assert!(stopper.join().unwrap(), "every thread ended in time");
        assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "listener closed");
    });
}

#[test]
fn a_client_that_never_answers_is_cut_at_the_drain_timeout() {
    let (node, addr) = start("io_uring", 1, |f| {
        f.server.shutdown_timeout_ms = 300;
        f.server.tick_ms = 20;
        f.websocket.close_timeout_ms = 60_000;
    });
    // A raw session that never reads nor answers the close frame.
    let silent = raw_ws(addr);
    let started = Instant::now();
    assert!(node.shutdown());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "drain bounded by server.shutdown_timeout_ms: {took:?}");
    drop(silent);
}
