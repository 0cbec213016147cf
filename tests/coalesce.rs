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
        |f| {
            f.server.tick_ms = 20;
            f.websocket.coalesce_us = WINDOW_US;
            f.websocket.coalesce_on_busy_percent = 0;
            f.websocket.coalesce_off_busy_percent = 0;
        },
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
