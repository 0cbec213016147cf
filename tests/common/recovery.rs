//! Socket.IO recovery across nodes, for the cluster's tests: `imks conformance` nodes as real
//! processes over NATS with recovery on, and a raw Socket.IO client that keeps what it received.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use super::sio_text as text;
use super::*;

/// `imks conformance` with recovery on, in the cluster `prefix`, two shards.
pub fn spawn_node(prefix: &str) -> (Proc, SocketAddr) {
    spawn_node_at(prefix, "nats://127.0.0.1:4222")
}

pub fn spawn_node_at(prefix: &str, url: &str) -> (Proc, SocketAddr) {
    spawn_node_with(prefix, url, &[])
}

/// As [`spawn_node_at`], with more `IMKS_*` variables.
pub fn spawn_node_with(prefix: &str, url: &str, env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imks"));
    cmd.args(["conformance", "--port", "0", "--recovery-window-ms", "60000"])
        // Clients here read only when they expect something: heartbeats must not close them.
        .args(["--ping-interval", "25000", "--ping-timeout", "20000"])
        .env("RUST_LOG", "info")
        .env("IMKS_SERVER__SHARDS", "2")
        .env("IMKS_SERVER__PIN_THREADS", "false")
        .env("IMKS_CLUSTER__BACKEND", "nats")
        .env("IMKS_CLUSTER__PREFIX", prefix)
        .env("IMKS_CLUSTER__URL", url)
        .env("IMKS_CLUSTER__UNSUBSCRIBE_DELAY_MS", "200")
        .envs(env.iter().copied());
    spawn_listening(cmd)
}

/// Waits until the node's recovery stream is ready.
pub fn wait_recovery_ready(addr: SocketAddr) {
    let ready = || metric_sum(addr, "imks_cluster_recovery_epoch ") > 0;
    assert!(wait_until(Duration::from_secs(15), ready), "{addr}: the recovery stream is not ready");
}

/// A raw Socket.IO client: its id, private id, and the `msg` numbers and offsets it received.
pub struct Client {
    pub ws: Ws,
    pub sid: String,
    pub pid: String,
    next_ack: u32,
    pub got: Vec<u64>,
    pub offset: Option<String>,
}

impl Client {
    /// Connects, with `{pid, offset}` when recovering; returns the client.
    pub fn connect(addr: SocketAddr, claim: Option<(&str, Option<&str>)>) -> Client {
        Client::try_connect(addr, claim).expect("the client connects")
    }

    /// [`Client::connect`], or `None` when the server closed the connection before the
    /// greeting (as a node closing its transports after a gap may).
    pub fn try_connect(addr: SocketAddr, claim: Option<(&str, Option<&str>)>) -> Option<Client> {
        let mut ws = ws(addr, "/socket.io/?EIO=4&transport=websocket");
        assert!(text(&mut ws)?.starts_with("0{"));
        let auth = match claim {
            Some((pid, Some(offset))) => json!({"pid": pid, "offset": offset}).to_string(),
            Some((pid, None)) => json!({"pid": pid}).to_string(),
            None => String::new(),
        };
        ws.send(Message::text(format!("40{auth}"))).ok()?;
        let connect = text(&mut ws)?;
        let data: Value = serde_json::from_str(connect.strip_prefix("40").expect("a CONNECT")).unwrap();
        let mut c = Client {
            ws,
            sid: data["sid"].as_str().unwrap().to_string(),
            pid: data["pid"].as_str().expect("recovery gives a pid").to_string(),
            next_ack: 1,
            got: Vec::new(),
            offset: None,
        };
        // The conformance application greets every socket.
        let auth_event = c.try_next_event()?;
        assert_eq!(auth_event[0], "auth");
        // A direct emit carries an offset too: where the socket is in the stream.
        c.offset = auth_event.as_array().and_then(|a| a.last()).and_then(Value::as_str).map(String::from);
        Some(c)
    }

    /// The next event, keeping `msg`s (their number and offset) and returning others.
    pub fn next_event(&mut self) -> Value {
        self.try_next_event().expect("connection open")
    }

    /// [`Client::next_event`], or `None` once the connection ended.
    pub fn try_next_event(&mut self) -> Option<Value> {
        loop {
            let t = text(&mut self.ws)?;
            if t.starts_with("43") {
                return Some(json!(["ack", t]));
            }
            let v: Value =
                serde_json::from_str(t.strip_prefix("42").unwrap_or_else(|| panic!("unexpected {t}"))).unwrap();
            if v[0] == "msg" {
                self.got.push(v[1]["n"].as_u64().unwrap());
                self.offset = v.as_array().and_then(|a| a.last()).and_then(Value::as_str).map(String::from);
                continue;
            }
            return Some(v);
        }
    }

    /// Emits an event without asking for an ack.
    pub fn emit(&mut self, event: &str, arg: Value) {
        self.ws.send(Message::text(format!("42{}", json!([event, arg])))).unwrap();
    }

    pub fn call(&mut self, event: &str, arg: Value) {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws.send(Message::text(format!("42{id}{}", json!([event, arg])))).unwrap();
        loop {
            let e = self.next_event();
            if e[0] == "ack" && e[1].as_str().is_some_and(|t| t.starts_with(&format!("43{id}"))) {
                return;
            }
        }
    }

    /// Reads `msg`s until number `n` arrived.
    pub fn until(&mut self, n: u64) {
        while !self.got.contains(&n) {
            let t = match text_or_timeout(&mut self.ws) {
                Some(t) => t,
                None => panic!("no msg {n}; got {} of them: {:?}", self.got.len(), self.got),
            };
            let v: Value =
                serde_json::from_str(t.strip_prefix("42").unwrap_or_else(|| panic!("unexpected {t}"))).unwrap();
            assert_eq!(v[0], "msg", "{t}");
            self.got.push(v[1]["n"].as_u64().unwrap());
            self.offset = v.as_array().and_then(|a| a.last()).and_then(Value::as_str).map(String::from);
        }
    }
}

/// The next Engine.IO text message, answering pings; `None` after 10 s without one.
pub fn text_or_timeout(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str() == "2" => ws.send(Message::text("3")).unwrap(),
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

/// Deletes the test's stream and bucket from the shared NATS.
pub fn delete_streams(prefix: &str) {
    delete_streams_at("127.0.0.1:4222", prefix)
}

/// Deletes the test's stream and bucket from the NATS at `addr`.
pub fn delete_streams_at(addr: &str, prefix: &str) {
    let mut s = TcpStream::connect(addr).expect("NATS");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf).unwrap();
    s.write_all(b"CONNECT {\"verbose\":false}\r\nSUB _done 1\r\n").unwrap();
    for name in [format!("{prefix}_sio"), format!("{prefix}_sio_sessions")] {
        s.write_all(format!("PUB $JS.API.STREAM.DELETE.{name} _done 0\r\n\r\n").as_bytes()).unwrap();
    }
    s.write_all(b"PING\r\n").unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while String::from_utf8_lossy(&seen).matches("MSG _done").count() < 2 && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// What [`Client::pump`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// A message arrived (a `msg` is kept in `got`).
    Message,
    /// The connection ended.
    Closed,
    /// Nothing for the read timeout.
    Idle,
}

impl Client {
    /// Emits an event with an ack and waits for it (keeping `msg`s meanwhile); false when the
    /// connection ended, or no ack came within the read timeout.
    pub fn try_call(&mut self, event: &str, arg: Value) -> bool {
        let id = self.next_ack;
        self.next_ack += 1;
        if self.ws.send(Message::text(format!("42{id}{}", json!([event, arg])))).is_err() {
            return false;
        }
        let ack = format!("43{id}[");
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) if t.as_str() == "2" => {
                    if self.ws.send(Message::text("3")).is_err() {
                        return false;
                    }
                }
                Ok(Message::Text(t)) if t.starts_with(&ack) => return true,
                Ok(Message::Text(t)) => self.keep(&t),
                Ok(Message::Close(_)) | Err(_) => return false,
                Ok(_) => continue,
            }
        }
    }

    /// Reads one message, answering pings and keeping `msg`s.
    pub fn pump(&mut self) -> Pumped {
        match self.ws.read() {
            Ok(Message::Text(t)) if t.as_str() == "2" => {
                let _ = self.ws.send(Message::text("3"));
                Pumped::Message
            }
            Ok(Message::Text(t)) => {
                self.keep(&t);
                Pumped::Message
            }
            Ok(Message::Close(_)) => Pumped::Closed,
            Ok(_) => Pumped::Message,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Pumped::Idle,
            Err(_) => Pumped::Closed,
        }
    }

    /// Keeps a `msg` event's number and offset; other packets are let go.
    fn keep(&mut self, t: &str) {
        let Some(v) = t.strip_prefix("42").and_then(|j| serde_json::from_str::<Value>(j).ok()) else { return };
        if v[0] == "msg" {
            if let Some(n) = v[1]["n"].as_u64() {
                self.got.push(n);
            }
            self.offset = v.as_array().and_then(|a| a.last()).and_then(Value::as_str).map(String::from);
        }
    }
}
