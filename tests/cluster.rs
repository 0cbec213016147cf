//! Several nodes as one service over the real local NATS and Redis (`scripts/ensure-nats.sh`
//! and `scripts/ensure-redis.sh` start them): Socket.IO broadcasts reach every member on every
//! node exactly once, a node receives nothing for rooms it has no member of, interest ends
//! after the delay, bad envelopes are counted and dropped, a node whose backend is unreachable
//! serves on its own, and a node whose connections were cut comes back with its subscriptions.
//!
//! Every behaviour is one function run over each backend (`..._over_nats`, `..._over_redis`).
//! Each test uses a prefix of its own, so tests running at once never see each other.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::sio_text as text;
use common::*;
use imks::cluster::{ClusterBackend, ClusterSection};
use imks::config::file::FileConfig;
use imks::socketio::{Namespace, SocketIo};
use imks::Node;
use serde_json::{json, Value};
use tungstenite::Message;

/// A backend the tests run over: the shared local server.
#[derive(Clone, Copy)]
struct Backend {
    kind: ClusterBackend,
    scheme: &'static str,
    addr: &'static str,
    /// Connections a node keeps to it.
    connections: u64,
}

const NATS: Backend = Backend { kind: ClusterBackend::Nats, scheme: "nats", addr: "127.0.0.1:4222", connections: 1 };
const REDIS: Backend = Backend { kind: ClusterBackend::Redis, scheme: "redis", addr: "127.0.0.1:6379", connections: 2 };

impl Backend {
    fn url(self) -> String {
        self.url_at(self.addr)
    }

    fn url_at(self, addr: &str) -> String {
        format!("{}://{addr}", self.scheme)
    }

    /// Publishes raw bytes on a subject, past any node, and returns once the server routed them.
    fn publish_raw(self, subject: &str, payload: &[u8]) {
        match self.kind {
            ClusterBackend::Redis => redis_publish(subject, payload),
            _ => nats_publish(subject, payload),
        }
    }
}

/// One test per backend for a behaviour: `on_both_backends!(behaviour: name_over_nats, name_over_redis)`.
macro_rules! on_both_backends {
    ($behaviour:ident: $nats:ident, $redis:ident) => {
        #[test]
        fn $nats() {
            $behaviour(NATS)
        }

        #[test]
        fn $redis() {
            $behaviour(REDIS)
        }
    };
}

fn prefix() -> String {
    format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

fn cluster_config(prefix: &str, backend: Backend, url: String) -> impl FnOnce(&mut FileConfig) + '_ {
    move |f| {
        listen_apart(f);
        f.cluster = ClusterSection {
            backend: backend.kind,
            url,
            prefix: prefix.into(),
            unsubscribe_delay_ms: 200,
            ..Default::default()
        };
    }
}

/// A node with a small Socket.IO application: `join` and `leave` a room, and `publish`
/// `{rooms, except, id}` as a `msg` event to those rooms (the whole namespace when `rooms` is
/// empty), acked after the broadcast.
fn node(prefix: &str, backend: Backend, shards: usize) -> (Node, SocketAddr) {
    node_at(prefix, backend, backend.url(), shards)
}

/// A node that reaches the backend at `url` (a proxy, a closed port).
fn node_at(prefix: &str, backend: Backend, url: String, shards: usize) -> (Node, SocketAddr) {
    let config = config("io_uring", shards, cluster_config(prefix, backend, url), |_| {});
    let sio = config.sio.clone();
    let app = Arc::new(move || {
        let main = Namespace::new("/")
            .on("join", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((room,)) = ev.args::<(String,)>() else { return };
                s.join(&io, &room).unwrap();
                s.ack(shard, &ev, "\"ok\"", Vec::new());
            })
            .on("leave", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((room,)) = ev.args::<(String,)>() else { return };
                s.leave(&io, &room);
                s.ack(shard, &ev, "\"ok\"", Vec::new());
            })
            .on("publish", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((req,)) = ev.args::<(Value,)>() else { return };
                let list = |k: &str| -> Vec<String> {
                    req[k].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(String::from)).collect()
                };
                let (rooms, except) = (list("rooms"), list("except"));
                let mut op = io.of("/");
                for r in &rooms {
                    op = op.to(r);
                }
                for r in &except {
                    op = op.except(r);
                }
                op.emit(shard, "msg", &req["id"].to_string());
                s.ack(shard, &ev, "\"ok\"", Vec::new());
            });
        SocketIo::new(sio.clone(), vec![main])
    });
    let node = Node::start_with(config, Some(app)).expect("node starts");
    let addr = node.local_addrs()[0];
    (node, addr)
}

/// A Socket.IO client over a raw WebSocket, with the `msg` ids it has received.
struct Client {
    ws: Ws,
    next_ack: u32,
    got: Vec<Value>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let mut ws = ws(addr, "/socket.io/?EIO=4&transport=websocket");
        assert!(text(&mut ws).unwrap().starts_with("0{"), "open packet");
        ws.send(Message::text("40")).unwrap();
        assert!(text(&mut ws).unwrap().starts_with("40{\"sid\""));
        Client { ws, next_ack: 1, got: Vec::new() }
    }

    /// Emits an event with an ack and waits for the ack, keeping the `msg`s that come first.
    fn call(&mut self, event: &str, arg: Value) {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws.send(Message::text(format!("42{id}{}", json!([event, arg])))).unwrap();
        let ack = format!("43{id}");
        loop {
            let t = text(&mut self.ws).expect("connection open");
            if t.starts_with(&ack) {
                return;
            }
            self.keep(&t);
        }
    }

    fn keep(&mut self, t: &str) {
        let v: Value = serde_json::from_str(t.strip_prefix("42").unwrap_or_else(|| panic!("unexpected {t}"))).unwrap();
        assert_eq!(v[0], "msg", "{t}");
        self.got.push(v[1].clone());
    }

    fn join(&mut self, room: &str) {
        self.call("join", json!(room));
    }

    /// Reads `msg`s until every id in `markers` has arrived.
    fn until(&mut self, markers: &[&str]) {
        let mut missing: BTreeSet<String> = markers.iter().map(|m| m.to_string()).collect();
        missing.retain(|m| !self.got.iter().any(|g| g == m));
        while !missing.is_empty() {
            let t = text(&mut self.ws).expect("connection open");
            self.keep(&t);
            if let Some(s) = self.got.last().and_then(Value::as_str) {
                missing.remove(s);
            }
        }
    }

    /// The ids received that are not markers, with how often each came.
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for g in self.got.iter().filter(|g| !g.as_str().is_some_and(|s| s.starts_with("end-"))) {
            *out.entry(g.to_string()).or_default() += 1;
        }
        out
    }
}

fn subscriptions(addr: SocketAddr) -> u64 {
    metric_sum(addr, "imks_cluster_subscriptions ")
}

fn sio_bytes_in(addr: SocketAddr) -> u64 {
    metric_sum(addr, "imks_cluster_received_bytes_total{kind=\"sio\"}")
}

/// Waits until the node is subscribed to `n` subjects of rooms and namespaces, besides the
/// two every node has: the control subject and its own.
fn wait_subscriptions(addr: SocketAddr, n: u64) {
    let n = n + 2;
    assert!(
        wait_until(Duration::from_secs(10), || subscriptions(addr) == n),
        "{addr}: {} subscriptions, expected {n}",
        subscriptions(addr)
    );
}

fn up(addr: SocketAddr) -> bool {
    health(addr)["checks"]["cluster"]["status"] == "up"
}

fn wait_connected(addr: SocketAddr) {
    assert!(wait_until(Duration::from_secs(10), || up(addr)), "{addr} did not connect to the backend");
}

fn dropped(addr: SocketAddr, why: &str) -> u64 {
    metric_sum(addr, &format!("imks_cluster_dropped_total{{reason=\"{why}\"}}"))
}

on_both_backends!(
    broadcasts_reach_every_member_on_every_node_exactly_once:
    broadcasts_reach_every_member_on_every_node_exactly_once_over_nats,
    broadcasts_reach_every_member_on_every_node_exactly_once_over_redis
);

fn broadcasts_reach_every_member_on_every_node_exactly_once(backend: Backend) {
    let p = prefix();
    let nodes: Vec<(Node, SocketAddr)> = (0..3).map(|_| node(&p, backend, 2)).collect();
    let [a, b, c] = [nodes[0].1, nodes[1].1, nodes[2].1];
    for &n in &[a, b, c] {
        wait_connected(n);
    }
    // Members spread over nodes (and, by the kernel's hashing, over shards).
    let rooms: [(&str, SocketAddr, &[&str]); 7] = [
        ("a1", a, &["r1"]),
        ("a2", a, &["r1", "r2"]),
        ("b1", b, &["r1", "r2"]),
        ("b2", b, &["r2"]),
        ("b3", b, &["r3"]),
        ("c1", c, &["r2"]),
        ("c2", c, &[]),
    ];
    let mut clients: BTreeMap<&str, Client> = BTreeMap::new();
    for (name, addr, joins) in rooms {
        let mut cl = Client::connect(addr);
        for r in joins {
            cl.join(r);
        }
        clients.insert(name, cl);
    }
    // A: the namespace, r1, r2. B: the namespace, r1, r2, r3. C: the namespace, r2.
    wait_subscriptions(a, 3);
    wait_subscriptions(b, 4);
    wait_subscriptions(c, 2);

    let sends: [(&str, &[&str], &[&str]); 4] =
        [("a1", &["r1", "r2"], &[]), ("c2", &["r2", "r1"], &["r3"]), ("b3", &[], &["r2"]), ("c1", &["r3", "r2"], &[])];
    let mut expected: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for (k, (from, to, except)) in sends.iter().enumerate() {
        for i in 0..10 {
            let id = format!("{k}-{i}");
            clients.get_mut(from).unwrap().call("publish", json!({"rooms": to, "except": except, "id": id}));
            for (name, _, joins) in rooms {
                let in_to = to.is_empty() || to.iter().any(|r| joins.contains(r));
                let in_except = except.iter().any(|r| joins.contains(r));
                if in_to && !in_except {
                    expected.entry(name).or_default().insert(json!(id).to_string(), 1);
                }
            }
        }
    }
    // Markers after everything, from every node on every subject: each node publishes a
    // subject's envelopes in order, so once a client has every node's markers of its rooms and
    // of the namespace, every copy that could reach it did. (One node's markers would not do:
    // they say nothing of what another node still has on its way.)
    for marker_sender in ["a1", "b1", "c2"] {
        let cl = clients.get_mut(marker_sender).unwrap();
        for room in ["r1", "r2", "r3"] {
            cl.call("publish", json!({"rooms": [room], "id": format!("end-{marker_sender}-{room}")}));
        }
        cl.call("publish", json!({"rooms": [], "id": format!("end-{marker_sender}-all")}));
    }
    for (name, _, joins) in rooms {
        let cl = clients.get_mut(name).unwrap();
        let mut markers = Vec::new();
        for marker_sender in ["a1", "b1", "c2"] {
            markers.extend(joins.iter().map(|r| format!("end-{marker_sender}-{r}")));
            markers.push(format!("end-{marker_sender}-all"));
        }
        cl.until(&markers.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(cl.counts(), expected.remove(name).unwrap_or_default(), "{name} got other messages than expected");
    }
    // Nothing was dropped on the way: in particular the envelopes Redis sends a node back from
    // itself are ignored, not counted as drops.
    for &n in &[a, b, c] {
        let (_, _, body) = get(n, "/metrics");
        let text = String::from_utf8(body).unwrap();
        let drops: Vec<&str> =
            text.lines().filter(|l| l.starts_with("imks_cluster_dropped_total") && !l.ends_with(" 0")).collect();
        assert!(drops.is_empty(), "{n} dropped envelopes: {drops:?}");
    }
}

on_both_backends!(
    a_node_receives_nothing_for_rooms_it_has_no_member_of:
    a_node_receives_nothing_for_rooms_it_has_no_member_of_over_nats,
    a_node_receives_nothing_for_rooms_it_has_no_member_of_over_redis
);

fn a_node_receives_nothing_for_rooms_it_has_no_member_of(backend: Backend) {
    let p = prefix();
    let nodes: Vec<(Node, SocketAddr)> = (0..3).map(|_| node(&p, backend, 1)).collect();
    let [a, b, c] = [nodes[0].1, nodes[1].1, nodes[2].1];
    for &n in &[a, b, c] {
        wait_connected(n);
    }
    let mut sender = Client::connect(a);
    let mut member = Client::connect(b);
    member.join("busy");
    // C has a socket (so it subscribes to the namespace) but no member of the room.
    let _bystander = Client::connect(c);
    // The namespace; B the room.
    wait_subscriptions(a, 1);
    wait_subscriptions(b, 2);
    wait_subscriptions(c, 1);
    let before = sio_bytes_in(c);
    for i in 0..100 {
        sender.call("publish", json!({"rooms": ["busy"], "id": i}));
    }
    sender.call("publish", json!({"rooms": ["busy"], "id": "end-busy"}));
    member.until(&["end-busy"]);
    assert_eq!(member.counts().len(), 100);
    assert!(sio_bytes_in(b) > 100 * 20, "B received the room's traffic");
    // Everything published on the room reached B, and the namespace subject (which C has) saw
    // nothing: C received no byte.
    assert_eq!(sio_bytes_in(c), before, "C received bytes for a room it has no member of");
    for kind in ["sio", "room"] {
        assert_eq!(metric_sum(c, &format!("imks_cluster_received_messages_total{{kind=\"{kind}\"}}")), 0);
    }

    // Once B's member leaves, B unsubscribes after the delay and stops receiving.
    member.call("leave", json!("busy"));
    wait_subscriptions(b, 1);
    let before = sio_bytes_in(b);
    for i in 0..20 {
        sender.call("publish", json!({"rooms": ["busy"], "id": i}));
    }
    // A message on the namespace subject, which B still has, comes after them from A's
    // connection: once it is in, none of the room's would still be on its way.
    sender.call("publish", json!({"rooms": [], "id": "end-all"}));
    member.until(&["end-all"]);
    let ns_only = sio_bytes_in(b) - before;
    assert!(
        ns_only > 0 && ns_only < 200,
        "B received {ns_only} bytes after leaving, only the namespace message expected"
    );
}

/// Publishes raw bytes on a subject over the NATS text protocol.
fn nats_publish(subject: &str, payload: &[u8]) {
    let mut s = TcpStream::connect("127.0.0.1:4222").expect("NATS runs on 127.0.0.1:4222");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut info = [0u8; 4096];
    let _ = s.read(&mut info).unwrap();
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").unwrap();
    s.write_all(format!("PUB {subject} {}\r\n", payload.len()).as_bytes()).unwrap();
    s.write_all(payload).unwrap();
    s.write_all(b"\r\nPING\r\n").unwrap();
    // The PONG: the server has routed the message.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !String::from_utf8_lossy(&buf).contains("PONG") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "NATS closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Publishes raw bytes on a channel with a `PUBLISH` in RESP, the Redis protocol.
fn redis_publish(channel: &str, payload: &[u8]) {
    let mut s = TcpStream::connect("127.0.0.1:6379").expect("Redis runs on 127.0.0.1:6379");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut cmd =
        format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n", channel.len(), payload.len()).into_bytes();
    cmd.extend_from_slice(payload);
    cmd.extend_from_slice(b"\r\n");
    s.write_all(&cmd).unwrap();
    // The answer (`:<receivers>`): the server has routed the message.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64];
    while !buf.ends_with(b"\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "Redis closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf[0], b':', "{}", String::from_utf8_lossy(&buf));
}

on_both_backends!(
    bad_envelopes_are_counted_and_dropped_and_the_node_goes_on:
    bad_envelopes_are_counted_and_dropped_and_the_node_goes_on_over_nats,
    bad_envelopes_are_counted_and_dropped_and_the_node_goes_on_over_redis
);

fn bad_envelopes_are_counted_and_dropped_and_the_node_goes_on(backend: Backend) {
    let p = prefix();
    let (_a, a) = node(&p, backend, 2);
    let (_b, b) = node(&p, backend, 2);
    wait_connected(a);
    wait_connected(b);
    let mut member = Client::connect(b);
    member.join("room");
    wait_subscriptions(b, 2);
    let subject = format!("{p}.sio.~2f.r.room");
    backend.publish_raw(&subject, b"not an envelope");
    backend.publish_raw(&subject, &[0xA7, 99, 1, 2, 3]);
    backend.publish_raw(&subject, &[0xA7, 1, 1, 2, 3, 4, 5, 6, 7, 8]);
    backend.publish_raw(&subject, &[0xA7]);
    let dropped = |why: &str| dropped(b, why);
    assert!(wait_until(Duration::from_secs(5), || dropped("invalid") == 3 && dropped("version") == 1));
    // The node still serves, and still receives what is valid.
    let mut sender = Client::connect(a);
    sender.call("publish", json!({"rooms": ["room"], "id": "after"}));
    member.until(&["after"]);
    assert_eq!(health(b)["status"], "ok");
}

on_both_backends!(
    a_node_whose_backend_is_unreachable_serves_on_its_own:
    a_node_whose_backend_is_unreachable_serves_on_its_own_over_nats,
    a_node_whose_backend_is_unreachable_serves_on_its_own_over_redis
);

fn a_node_whose_backend_is_unreachable_serves_on_its_own(backend: Backend) {
    let p = prefix();
    // Nothing listens on port 9: the node starts, retries in the background, and serves.
    let (_n, addr) = node_at(&p, backend, backend.url_at("127.0.0.1:9"), 2);
    let h = health(addr);
    assert_eq!(h["checks"]["cluster"]["status"], "down", "{h}");
    let mut member = Client::connect(addr);
    member.join("local");
    let mut sender = Client::connect(addr);
    sender.call("publish", json!({"rooms": ["local"], "id": "here"}));
    member.until(&["here"]);
    assert!(wait_until(Duration::from_secs(5), || dropped(addr, "backend") >= 1));
}

on_both_backends!(
    a_cut_connection_comes_back_with_its_subscriptions:
    a_cut_connection_comes_back_with_its_subscriptions_over_nats,
    a_cut_connection_comes_back_with_its_subscriptions_over_redis
);

/// B reaches the backend through a proxy that cuts its connections, as a network failure
/// would; once B has reconnected, broadcasts flow both ways again without anyone rejoining.
fn a_cut_connection_comes_back_with_its_subscriptions(backend: Backend) {
    let p = prefix();
    let proxy = common::proxy::TcpProxy::start(backend.addr);
    let (_a, a) = node(&p, backend, 1);
    let (_b, b) = node_at(&p, backend, backend.url_at(&proxy.addr()), 1);
    wait_connected(a);
    wait_connected(b);
    let mut on_a = Client::connect(a);
    let mut on_b = Client::connect(b);
    on_a.join("room");
    on_b.join("room");
    // The namespace and the room.
    wait_subscriptions(a, 2);
    wait_subscriptions(b, 2);
    on_a.call("publish", json!({"rooms": ["room"], "id": "before"}));
    on_b.until(&["before"]);

    let reconnects = || metric_sum(b, "imks_cluster_reconnects_total");
    assert_eq!(reconnects(), 0);
    assert!(proxy.cut() as u64 >= backend.connections, "the proxy carried B's connections");
    // Every connection of B came back, with its subscriptions (a reconnect is counted once the
    // backend has them again).
    assert!(
        wait_until(Duration::from_secs(15), || reconnects() >= backend.connections && up(b)),
        "B reconnected {} times, up: {}",
        reconnects(),
        up(b)
    );
    assert_eq!(subscriptions(b), 4, "the gauge still counts B's subjects");
    on_a.call("publish", json!({"rooms": ["room"], "id": "to-b"}));
    on_b.until(&["to-b"]);
    on_b.call("publish", json!({"rooms": ["room"], "id": "to-a"}));
    on_a.until(&["to-a"]);
    assert_eq!(on_b.counts().get("\"before\""), Some(&1));
}
