//! Send-queue backpressure with a client that stops reading: each policy (`close`,
//! `drop_newest`, `drop_oldest`) is applied, counted in metrics, and loses nothing it did not
//! report.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const MESSAGES: u32 = 3000;
const SIZE: usize = 16 * 1024;

/// A message whose first four bytes are its sequence number.
fn message(seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; SIZE];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    frame(true, 2, &p, true)
}

/// Opens a raw session and, on a second thread, sends `MESSAGES` messages without reading a
/// byte; returns the socket for reading later.
fn flood(addr: SocketAddr) -> std::net::TcpStream {
    let s = raw_ws(addr);
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for seq in 0..MESSAGES {
            if w.write_all(&message(seq)).is_err() {
                break; // the server gave up on us (close policy)
            }
        }
    });
    s
}

fn start_with(driver: &str, policy: &str) -> (imks::Node, SocketAddr) {
    let policy = policy.to_string();
    start(driver, 1, move |f| {
        f.websocket.backpressure = policy;
        f.websocket.send_queue_len = 8;
        f.websocket.max_message_bytes = SIZE * 2;
        f.websocket.max_frame_bytes = SIZE * 2;
        // Stalled writes are the point here: don't let the write timeout end the session.
        f.websocket.write_timeout_ms = 60_000;
        f.websocket.close_timeout_ms = 60_000;
        f.websocket.ping_interval_ms = 60_000;
    })
}

/// Reads data messages until `want` arrived; returns their sequence numbers.
fn read_seqs(s: &mut std::net::TcpStream, want: u64) -> Vec<u32> {
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < want {
        let (_, op, p) = read_frame(s).expect("frame");
        assert_eq!(op, 2, "only echoes expected");
        seqs.push(u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
    }
    seqs
}

#[test]
fn close_policy_closes_a_slow_consumer_with_1008() {
    on_both_drivers(|d| {
        let (_node, addr) = start_with(d, "close");
        let mut s = flood(addr);
        assert!(wait_until(Duration::from_secs(30), || metric_sum(
            addr,
            "imks_closes_total{shard=\"0\",reason=\"slow_consumer\"}"
        ) == 1
            || metric_sum(addr, "imks_frames_in_total") >= u64::from(MESSAGES)));
        // Now read: whatever was in flight, then the close frame with its reason.
        let code;
        let reason;
        loop {
            let (_, op, p) = read_frame(&mut s).expect("a close frame arrives");
            if op == 8 {
                code = u16::from_be_bytes([p[0], p[1]]);
                reason = String::from_utf8(p[2..].to_vec()).unwrap();
                break;
            }
        }
        assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
        // The server closed its side after the close frame; ours ends the session.
        s.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(wait_until(Duration::from_secs(10), || metric_sum(
            addr,
            "imks_closes_total{shard=\"0\",reason=\"slow_consumer\"}"
        ) == 1));
    });
}

#[test]
fn drop_newest_keeps_the_oldest_and_counts_the_rest() {
    on_both_drivers(|d| {
        let (_node, addr) = start_with(d, "drop_newest");
        let mut s = flood(addr);
        assert!(wait_until(Duration::from_secs(30), || metric_sum(addr, "imks_frames_in_total") == u64::from(MESSAGES)));
        let dropped = metric_sum(addr, "imks_send_queue_drops_total{shard=\"0\",policy=\"drop_newest\"}");
        assert!(dropped > 0, "the client stopped reading, so the queue must have overflowed");
        let seqs = read_seqs(&mut s, u64::from(MESSAGES) - dropped);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order kept, nothing duplicated");
        assert_eq!(seqs[0], 0, "the oldest message is kept");
        assert!(*seqs.last().unwrap() < MESSAGES - 1, "the newest message was dropped");
        // Nothing more than reported: the session is still alive and echoes.
        s.write_all(&message(u32::MAX)).unwrap();
        assert_eq!(read_seqs(&mut s, 1), vec![u32::MAX]);
        assert_eq!(metric_sum(addr, "imks_closes_total{shard=\"0\",reason=\"slow_consumer\"}"), 0);
    });
}

#[test]
fn drop_oldest_keeps_the_newest_and_counts_the_rest() {
    on_both_drivers(|d| {
        let (_node, addr) = start_with(d, "drop_oldest");
        let mut s = flood(addr);
        assert!(wait_until(Duration::from_secs(30), || metric_sum(addr, "imks_frames_in_total") == u64::from(MESSAGES)));
        let dropped = metric_sum(addr, "imks_send_queue_drops_total{shard=\"0\",policy=\"drop_oldest\"}");
        assert!(dropped > 0, "the client stopped reading, so the queue must have overflowed");
        let seqs = read_seqs(&mut s, u64::from(MESSAGES) - dropped);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order kept, nothing duplicated");
        assert_eq!(*seqs.last().unwrap(), MESSAGES - 1, "the newest message is kept");
        s.write_all(&message(u32::MAX)).unwrap();
        assert_eq!(read_seqs(&mut s, 1), vec![u32::MAX]);
    });
}
