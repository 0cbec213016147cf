//! HTTP/1.1 on a real node: keep-alive, pipelining, routes, every limit's answer and the
//! slow-loris timeouts. Each limit is set small and then exceeded.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

fn read_to_eof(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    rest
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |_| {});
        let mut s = connect(addr);
        for _ in 0..5 {
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (status, head, body) = read_response(&mut s);
            assert_eq!(status, 200, "{head}");
            assert!(head.to_ascii_lowercase().contains("connection: keep-alive"), "{head}");
            let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(h["status"], "ok");
        }
        assert_eq!(metric_sum(addr, "imks_connections_total{"), 2, "one connection for five requests (+1 for metrics)");
    });
}

#[test]
fn requests_larger_than_the_first_read_buffer_work_between_small_ones() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |_| {});
        let mut s = connect(addr);
        // A 6 KiB head: more than a connection's first 2 KiB buffer, sent in pieces.
        let filler = "x".repeat(6000);
        let big = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
        for _ in 0..3 {
            for piece in big.as_bytes().chunks(1500) {
                s.write_all(piece).unwrap();
            }
            assert_eq!(read_response(&mut s).0, 200);
            // Back to a small buffer between requests: a small request still works at once.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s).0, 200);
        }
        // A big request and a small one pipelined together.
        s.write_all(format!("{big}GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(read_response(&mut s).0, 200);
        assert_eq!(read_response(&mut s).0, 404);
    });
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |_| {});
        let mut s = connect(addr);
        s.write_all(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
              GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let statuses: Vec<u16> = (0..4).map(|_| read_response(&mut s).0).collect();
        assert_eq!(statuses, vec![200, 404, 405, 200]);
        assert!(read_to_eof(&mut s).is_empty(), "closed after Connection: close");
    });
}

#[test]
fn routes_answer_as_documented() {
    let (_node, addr) = start("io_uring", 2, |_| {});
    let h = health(addr);
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_s"].is_u64());
    assert_eq!(h["sidecar"]["status"], "ok");
    assert_eq!(h["shards"].as_array().unwrap().len(), 2);
    for s in h["shards"].as_array().unwrap() {
        assert_eq!(s["driver"], "io_uring");
        assert!(s["connections"].is_u64());
    }
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let text = String::from_utf8(body).unwrap();
    for family in [
        "imks_connections_active",
        "imks_connections_total",
        "imks_closes_total",
        "imks_frames_in_total",
        "imks_frames_out_total",
        "imks_bytes_in_total",
        "imks_bytes_out_total",
        "imks_send_queue_drops_total",
        "imks_ring_pushes_total",
        "imks_ring_drops_total",
        "imks_sidecar_up",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "missing {family}");
    }
    assert!(text.contains("imks_sidecar_up 1"));
    let (status, head, _) = get(addr, "/ws-echo");
    assert_eq!(status, 426);
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    assert_eq!(get(addr, "/missing").0, 404);
}

#[test]
fn malformed_and_oversized_requests_get_clear_statuses() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 2, |f| {
            f.http.max_head_bytes = 1024;
            f.http.max_headers = 8;
            f.http.max_body_bytes = 100;
        });
        let many_headers: String = (0..9).map(|i| format!("X-H{i}: v\r\n")).collect();
        let cases = [
            ("garbage", "GARBAGE\r\n\r\n".to_string(), 400),
            ("HTTP/2 request line", "GET / HTTP/2.0\r\n\r\n".into(), 400),
            ("head too large", format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(2000)), 431),
            ("head never ends", format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(2000)), 431),
            ("too many headers", format!("GET / HTTP/1.1\r\n{many_headers}\r\n"), 431),
            ("body too large", "POST /health HTTP/1.1\r\nContent-Length: 101\r\n\r\n".into(), 413),
            ("bad content-length", "POST /health HTTP/1.1\r\nContent-Length: 1x\r\n\r\n".into(), 400),
            ("chunked body", "POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".into(), 501),
            ("bad websocket key", "GET /ws-echo HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n".into(), 400),
            ("websocket version 8", "GET /ws-echo HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n".into(), 426),
        ];
        for (name, raw, want) in cases {
            let mut s = connect(addr);
            s.write_all(raw.as_bytes()).unwrap();
            let (status, head, _) = read_response(&mut s);
            assert_eq!(status, want, "{name} on {d}: {head}");
            assert!(head.to_ascii_lowercase().contains("connection: close"), "{name}: {head}");
            assert!(read_to_eof(&mut s).is_empty(), "{name}: the connection closes after an error");
        }
        // Exactly at the limits is fine.
        let at_limit: String = (0..7).map(|i| format!("X-H{i}: v\r\n")).collect();
        let (status, _, _) = http(addr, &format!("GET /health HTTP/1.1\r\nConnection: close\r\n{at_limit}\r\n"));
        assert_eq!(status, 200, "8 headers (7 + Connection) are allowed");
        assert_eq!(health(addr)["status"], "ok", "the shards survive bad input");
        assert!(
            metric_sum(addr, "imks_closes_total{shard=\"0\",reason=\"too_big\"}")
                + metric_sum(addr, "imks_closes_total{shard=\"1\",reason=\"too_big\"}")
                >= 4
        );
    });
}

#[test]
fn slow_loris_header_gets_408() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |f| {
            f.server.tick_ms = 20;
            f.http.header_timeout_ms = 200;
            f.http.idle_timeout_ms = 10_000;
        });
        let mut s = connect(addr);
        let started = Instant::now();
        // One byte now and then, never finishing the head.
        for b in b"GET /health HTTP/1.1\r\nX-Slow: " {
            if s.write_all(std::slice::from_ref(b)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            if started.elapsed() > Duration::from_millis(400) {
                break;
            }
        }
        let (status, _, _) = read_response(&mut s);
        assert_eq!(status, 408);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(wait_until(Duration::from_secs(3), || metric_sum(
            addr,
            "imks_closes_total{shard=\"0\",reason=\"header_timeout\"}"
        ) == 1));
    });
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |f| {
            f.server.tick_ms = 20;
            f.http.idle_timeout_ms = 200;
        });
        let mut s = connect(addr);
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s).0, 200);
        let started = Instant::now();
        assert!(read_to_eof(&mut s).is_empty(), "closed without a response");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(3), "{waited:?}");
        assert!(wait_until(Duration::from_secs(3), || metric_sum(
            addr,
            "imks_closes_total{shard=\"0\",reason=\"idle_timeout\"}"
        ) == 1));
    });
}

#[test]
fn connection_limit_answers_503_and_frees_slots() {
    on_both_drivers(|d| {
        let (_node, addr) = start(d, 1, |f| f.server.max_connections = 2);
        let a = ws(addr, "/ws-echo");
        let b = ws(addr, "/ws-echo");
        let mut s = connect(addr);
        let (status, head, _) = read_response(&mut s);
        assert_eq!(status, 503, "{head}");
        assert!(head.contains("Retry-After"), "{head}");
        drop((a, b));
        // Slots come back once the sessions are gone.
        assert!(wait_until(Duration::from_secs(5), || {
            let mut s = connect(addr);
            s.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
            read_response(&mut s).0 == 200
        }));
        assert!(metric_sum(addr, "imks_closes_total{shard=\"0\",reason=\"limit\"}") >= 1);
    });
}

/// A port another process listens on (even with SO_REUSEPORT, as a second imks would) is
/// refused at start-up instead of silently sharing its connections.
#[test]
fn a_port_in_use_by_another_process_is_refused_at_start() {
    use socket2::{Domain, Protocol, Socket, Type};
    let other = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    other.set_reuse_port(true).unwrap();
    other.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    other.listen(16).unwrap();
    let taken = other.local_addr().unwrap().as_socket().unwrap();
    let mut f = imks::config::file::FileConfig::default();
    f.server.listen = vec![taken.to_string()];
    f.server.shards = 2;
    f.server.pin_threads = false;
    let config = imks::Config::resolve(f, |_| Ok(None)).unwrap();
    match imks::Node::start(config) {
        Err(e @ imks::node::NodeError::Launch(imks::shard::launch::LaunchError::InUse { .. })) => {
            assert!(e.to_string().contains(&taken.to_string()), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started on a port another process listens on"),
    }
    // Once it is free, the node starts there.
    drop(other);
    let mut f = imks::config::file::FileConfig::default();
    f.server.listen = vec![taken.to_string()];
    f.server.shards = 1;
    f.server.pin_threads = false;
    let node = imks::Node::start(imks::Config::resolve(f, |_| Ok(None)).unwrap()).expect("a free port");
    assert_eq!(node.local_addrs()[0], taken);
}
