//! Shared helpers for integration tests: a real node on 127.0.0.1:0 and real clients.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use imks::config::file::FileConfig;
use imks::{Config, Node};

pub mod native;
pub mod nats;
pub mod pg;
pub mod proxy;
pub mod recovery;

pub const DRIVERS: [&str; 2] = ["io_uring", "epoll"];

/// Starts a node on 127.0.0.1:0 with `shards` shards and the given driver, after `tweak` edits
/// the file-level config.
pub fn start(driver: &str, shards: usize, tweak: impl FnOnce(&mut FileConfig)) -> (Node, SocketAddr) {
    start_full(driver, shards, tweak, |_| {})
}

/// Starts the conformance application (as `imks conformance`) with the given Engine.IO ping
/// interval and timeout in milliseconds.
pub fn start_conformance(driver: &str, shards: usize, ping_ms: (u64, u64)) -> (Node, SocketAddr) {
    start_full(
        driver,
        shards,
        |f| f.server.tick_ms = 20,
        |c| {
            c.conformance_mode();
            c.sio.connect_timeout = Duration::from_millis(1000);
            c.eio.ping_interval = Duration::from_millis(ping_ms.0);
            c.eio.ping_timeout = Duration::from_millis(ping_ms.1);
        },
    )
}

/// Write coalescing on whatever the load (both thresholds 0), with this window and a 20 ms
/// tick, for tests of what a busy shard does.
pub fn coalesce_always(f: &mut FileConfig, window_us: u64) {
    f.server.tick_ms = 20;
    f.websocket.coalesce_us = window_us;
    f.websocket.coalesce_on_busy_percent = 0;
    f.websocket.coalesce_off_busy_percent = 0;
}

pub fn start_full(
    driver: &str,
    shards: usize,
    tweak: impl FnOnce(&mut FileConfig),
    resolved: impl FnOnce(&mut Config),
) -> (Node, SocketAddr) {
    let node = Node::start(config(driver, shards, tweak, resolved)).expect("node starts");
    let addr = node.local_addrs()[0];
    (node, addr)
}

/// A loopback address of its own for each cluster node a test process starts (127.0.0.2,
/// 127.0.0.3, …), so the nodes of a test are apart by address as on separate hosts: all of
/// 127.0.0.0/8 is the loopback on Linux.
pub fn node_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250 + 2;
    format!("127.0.0.{n}")
}

/// Waits until each node's `/health` says its cluster backend is up.
pub fn wait_cluster_up(addrs: &[SocketAddr]) {
    for &a in addrs {
        let up = || health(a)["checks"]["cluster"]["status"] == "up";
        assert!(wait_until(Duration::from_secs(10), up), "{a} did not connect to its cluster backend");
    }
}

/// Listens on port 0 of the next [`node_ip`].
pub fn listen_apart(f: &mut FileConfig) {
    f.server.listen = vec![format!("{}:0", node_ip())];
}

/// The configuration `start_full` starts a node with, for tests that start it with an
/// application of their own.
pub fn config(
    driver: &str,
    shards: usize,
    tweak: impl FnOnce(&mut FileConfig),
    resolved: impl FnOnce(&mut Config),
) -> Config {
    let mut f = FileConfig::default();
    f.server.listen = vec!["127.0.0.1:0".into()];
    f.server.shards = shards;
    f.server.driver = driver.into();
    f.server.pin_threads = false;
    f.server.shutdown_timeout_ms = 3000;
    f.log.level = "warn".into();
    tweak(&mut f);
    let mut config = Config::resolve(f, |_| Ok(None)).expect("valid config");
    resolved(&mut config);
    config
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends a raw HTTP request and reads one response (status, headers, body) using Content-Length.
pub fn http(addr: SocketAddr, raw: &str) -> (u16, String, Vec<u8>) {
    let mut s = connect(addr);
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s)
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
}

pub fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        assert!(n > 0, "EOF before response head; got {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, body)
}

pub fn health(addr: SocketAddr) -> serde_json::Value {
    let (status, _, body) = get(addr, "/health");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// The value of one Prometheus sample, e.g. `metric(addr, "imks_frames_in_total{shard=\"0\"}")`,
/// summed over shards when `name` has no labels of its own.
pub fn metric_sum(addr: SocketAddr, prefix: &str) -> u64 {
    let (_, _, body) = get(addr, "/metrics");
    let text = String::from_utf8(body).unwrap();
    text.lines().filter(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum()
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub type Ws = tungstenite::WebSocket<TcpStream>;

pub fn ws(addr: SocketAddr, path: &str) -> Ws {
    let s = connect(addr);
    let (ws, resp) = tungstenite::client::client(format!("ws://{addr}{path}"), s).expect("ws handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// A raw WebSocket connection (handshake done by hand) for sending frames a real client would
/// refuse to send.
pub fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(
        b"GET /ws-echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 101, "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    s
}

/// Encodes a client frame; `mask` false builds an (illegal) unmasked one.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads one server frame: (fin, opcode, payload).
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    assert_eq!(h[1] & 0x80, 0, "server frames are never masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((h[0] & 0x80 != 0, h[0] & 0x0f, p))
}

/// Reads frames until a close frame and returns its code.
pub fn read_close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (_, op, p) = read_frame(s).expect("frame before close");
        if op == 8 {
            assert!(p.len() >= 2, "close frame without code");
            return u16::from_be_bytes([p[0], p[1]]);
        }
    }
}

/// Runs `f` once per I/O driver, naming the driver on failure.
pub fn on_both_drivers(f: impl Fn(&str)) {
    for d in DRIVERS {
        eprintln!("--- driver {d}");
        f(d);
    }
}

/// The next Engine.IO text message on a raw WebSocket, answering server pings on the way;
/// `None` once the connection has closed: a close frame or the end of the stream. A read that
/// times out is no close: it fails the test.
pub fn sio_text(c: &mut Ws) -> Option<String> {
    use tungstenite::Message;
    loop {
        match c.read() {
            Ok(Message::Text(t)) if t.as_str() == "2" => c.send(Message::text("3")).unwrap(),
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => return None,
            Err(e) if is_closed(&e) => return None,
            Err(e) => panic!("neither a message nor a close: {e}"),
            Ok(m) => panic!("unexpected {m:?}"),
        }
    }
}

/// Whether a WebSocket read error means the connection ended (rather than a read timeout or
/// a broken frame): the peer closed, reset or went away.
pub fn is_closed(e: &tungstenite::Error) -> bool {
    use std::io::ErrorKind;
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => true,
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        tungstenite::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof
                | ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// A node process of a test, killed when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns an `imks` command (its stdout piped here) and waits for the address it logs
/// (`imks listening addr=…`). `SHOW_NODE_LOG=1` passes the node's log on, to debug a test.
pub fn spawn_listening(mut cmd: std::process::Command) -> (Proc, SocketAddr) {
    use std::io::BufRead;
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("imks starts");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let show = std::env::var_os("SHOW_NODE_LOG").is_some();
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if show {
                eprintln!("{line}");
            }
            if let Some(addr) = line.split("imks listening addr=").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("imks reports its address");
    (Proc(child), addr.parse().expect("an address"))
}
