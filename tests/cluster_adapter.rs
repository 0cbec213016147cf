//! The Socket.IO adapter operations across the shards of a node and the nodes of a cluster,
//! over the real local NATS (`scripts/ensure-nats.sh` starts one): `fetch_sockets`,
//! `sockets_join`, `sockets_leave`, `disconnect_sockets` and server-side emits with acks, and
//! what a request gives when a node does not answer or leaves.
//!
//! Three nodes of two shards each; each test uses a prefix of its own, so tests running at once
//! never see each other.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sio_text as text;
use common::*;
use imks::cluster::{ClusterBackend, ClusterSection};
use imks::socketio::{BroadcastOp, Namespace, SocketIo};
use imks::Node;
use serde_json::{json, Value};
use tungstenite::Message;

const NATS: &str = "nats://127.0.0.1:4222";

fn prefix() -> String {
    format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// How a test node behaves.
#[derive(Clone, Copy)]
struct Opts {
    /// `cluster.request_timeout_ms`.
    request_timeout_ms: u64,
    /// Its server-side `ping` handler never acknowledges.
    silent: bool,
}

const OPTS: Opts = Opts { request_timeout_ms: 5000, silent: false };

/// A node of the test cluster, with the number of server-side `ping`s its handler received.
struct TestNode {
    node: Option<Node>,
    addr: SocketAddr,
    id: String,
    pings: Arc<AtomicUsize>,
}

/// The operation a client asks for: `{rooms, except, ...}` picks the sockets, as a broadcast.
fn op<'a>(io: &'a SocketIo, req: &'a Value) -> BroadcastOp<'a> {
    let mut op = io.of("/");
    for r in req["rooms"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        op = op.to(r);
    }
    for r in req["except"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        op = op.except(r);
    }
    op
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// A node whose Socket.IO application lets a client drive the adapter operations: `join` and
/// `publish` (as in tests/cluster.rs), and `fetch`, `sockets_join`, `sockets_leave`,
/// `disconnect_sockets` and `server_emit`, each answered with a `result` event once the operation
/// completed. Its server-side `ping` handler counts the pings and acknowledges with its node
/// id and the arguments, unless `silent`.
fn start_node(prefix: &str, shards: usize, opts: Opts) -> TestNode {
    let id = format!("node-{:08x}", rand::random::<u32>());
    let cluster = ClusterSection {
        backend: ClusterBackend::Nats,
        url: NATS.into(),
        node_id: id.clone(),
        prefix: prefix.into(),
        unsubscribe_delay_ms: 200,
        heartbeat_ms: 200,
        node_timeout_ms: 3000,
        request_timeout_ms: opts.request_timeout_ms,
        ..Default::default()
    };
    let config = config(
        "io_uring",
        shards,
        move |f| {
            listen_apart(f);
            f.cluster = cluster;
        },
        |_| {},
    );
    let sio = config.sio.clone();
    let pings = Arc::new(AtomicUsize::new(0));
    let counter = pings.clone();
    let app = Arc::new(move || {
        let counter = counter.clone();
        let main = Namespace::new("/")
            .on("join", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((room,)) = ev.args::<(String,)>() else { return };
                s.join(&io, &room).unwrap();
                s.ack(shard, &ev, "\"ok\"", Vec::new());
            })
            .on("publish", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((req,)) = ev.args::<(Value,)>() else { return };
                op(&io, &req).emit(shard, "msg", &req["id"].to_string());
                s.ack(shard, &ev, "\"ok\"", Vec::new());
            })
            .on("fetch", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((req,)) = ev.args::<(Value,)>() else { return };
                let (fetch, s, started) = (op(&io, &req).fetch_sockets(shard), s.clone(), Instant::now());
                monoio::spawn(async move {
                    let r = fetch.await;
                    let sockets: Vec<Value> = r
                        .sockets
                        .iter()
                        .map(|x| json!({"id": x.id, "rooms": x.rooms, "node": x.node.as_deref(), "nsp": x.nsp}))
                        .collect();
                    let ms = started.elapsed().as_millis() as u64;
                    let out = json!({"sockets": sockets, "missing": r.missing_nodes, "truncated": r.truncated, "ms": ms});
                    answer(&s, out);
                });
            })
            .on("sockets_join", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((req,)) = ev.args::<(Value,)>() else { return };
                let applied = op(&io, &req).sockets_join(shard, &strings(&req["join"]));
                let s = s.clone();
                monoio::spawn(async move {
                    let r = applied.await;
                    answer(&s, json!({"sockets": r.sockets, "missing": r.missing_nodes}));
                });
            })
            .on("sockets_leave", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((req,)) = ev.args::<(Value,)>() else { return };
                let applied = op(&io, &req).sockets_leave(shard, &strings(&req["leave"]));
                let s = s.clone();
                monoio::spawn(async move {
                    let r = applied.await;
                    answer(&s, json!({"sockets": r.sockets, "missing": r.missing_nodes}));
                });
            })
            .on("disconnect_sockets", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((req,)) = ev.args::<(Value,)>() else { return };
                let applied = op(&io, &req).disconnect_sockets(shard, req["close"] == true);
                let s = s.clone();
                monoio::spawn(async move {
                    let r = applied.await;
                    answer(&s, json!({"sockets": r.sockets, "missing": r.missing_nodes}));
                });
            })
            .on("server_emit", |shard, s, ev| {
                let Some(io) = shard.service::<SocketIo>() else { return };
                let Ok((req,)) = ev.args::<(Value,)>() else { return };
                let timeout = Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(5000));
                let args = req["args"].to_string();
                let acks = io.server_side_emit_with_ack(shard, "/", "ping", &args, timeout);
                let (s, started) = (s.clone(), Instant::now());
                monoio::spawn(async move {
                    let r = acks.await;
                    let acks: Vec<Value> = r
                        .acks
                        .iter()
                        .map(|a| json!({"node": &*a.node, "args": serde_json::from_str::<Value>(&format!("[{}]", a.args_tail)).unwrap()}))
                        .collect();
                    let ms = started.elapsed().as_millis() as u64;
                    answer(&s, json!({"acks": acks, "missing": r.missing_nodes, "ms": ms}));
                });
            })
            .on_server_side("ping", move |shard, ev| {
                counter.fetch_add(1, Ordering::SeqCst);
                let got = ev.args::<(Value,)>().map(|(v,)| v).unwrap_or(Value::Null);
                let (Some(ack), false) = (ev.ack, opts.silent) else { return };
                let node = shard.service::<imks::cluster::Cluster>().map(|c| c.node_id().to_string());
                ack.send(&json!({"node": node, "from": ev.from, "got": got}).to_string());
            });
        SocketIo::new(sio.clone(), vec![main])
    });
    let node = Node::start_with(config, Some(app)).expect("node starts");
    let addr = node.local_addrs()[0];
    TestNode { node: Some(node), addr, id, pings }
}

/// Sends the client the result of an operation, as a `result` event.
fn answer(s: &imks::socketio::Socket, v: Value) {
    if let Some(shard) = imks::shard::current() {
        s.emit(&shard, "result", &v.to_string());
    }
}

/// Three nodes of two shards, each knowing the two others.
fn cluster(opts: [Opts; 3]) -> Vec<TestNode> {
    let p = prefix();
    let nodes: Vec<TestNode> = opts.iter().map(|o| start_node(&p, 2, *o)).collect();
    for n in &nodes {
        wait_nodes(n.addr, 2);
    }
    nodes
}

fn wait_nodes(addr: SocketAddr, n: u64) {
    let nodes = || metric_sum(addr, "imks_cluster_nodes ");
    assert!(wait_until(Duration::from_secs(10), || nodes() == n), "{addr} knows {} other nodes, not {n}", nodes());
}

/// A Socket.IO client over a raw WebSocket, keeping the `msg` ids it receives.
struct Client {
    ws: Ws,
    sid: String,
    next_ack: u32,
    got: Vec<Value>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let mut ws = ws(addr, "/socket.io/?EIO=4&transport=websocket");
        assert!(text(&mut ws).unwrap().starts_with("0{"), "open packet");
        ws.send(Message::text("40")).unwrap();
        let connect = text(&mut ws).unwrap();
        let data: Value = serde_json::from_str(connect.strip_prefix("40").expect("CONNECT")).unwrap();
        let sid = data["sid"].as_str().unwrap().to_string();
        Client { ws, sid, next_ack: 1, got: Vec::new() }
    }

    /// The next packet; a `msg` is kept and gives `Some(None)`. `None` once the connection
    /// closed.
    fn read(&mut self) -> Option<Option<String>> {
        let t = text(&mut self.ws)?;
        let Some(rest) = t.strip_prefix("42[\"msg\",") else { return Some(Some(t)) };
        let v: Value = serde_json::from_str(&format!("[{rest}")).unwrap();
        self.got.push(v[0].clone());
        Some(None)
    }

    /// The next packet that is not a `msg` (those are kept).
    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(t) = self.read()? {
                return Some(t);
            }
        }
    }

    /// Emits an event with an ack and waits for the ack.
    fn call(&mut self, event: &str, arg: Value) {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws.send(Message::text(format!("42{id}{}", json!([event, arg])))).unwrap();
        let ack = format!("43{id}");
        let t = self.next().expect("connection open");
        assert!(t.starts_with(&ack), "expected the ack {ack}, got {t}");
    }

    /// Emits an event and waits for its `result`.
    fn request(&mut self, event: &str, arg: Value) -> Value {
        self.ws.send(Message::text(format!("42{}", json!([event, arg])))).unwrap();
        let t = self.next().expect("connection open");
        let v: Value = serde_json::from_str(t.strip_prefix("42").unwrap_or_else(|| panic!("unexpected {t}"))).unwrap();
        assert_eq!(v[0], "result", "{t}");
        v[1].clone()
    }

    fn join(&mut self, room: &str) {
        self.call("join", json!(room));
    }

    /// Reads until `msg` `marker` arrived.
    fn until(&mut self, marker: &str) {
        while !self.got.iter().any(|g| g == marker) {
            if let Some(t) = self.read().expect("connection open") {
                panic!("unexpected {t} while waiting for {marker}");
            }
        }
    }

    /// The `msg` ids received but the markers (`end-...`).
    fn received(&self) -> BTreeSet<String> {
        self.got.iter().filter_map(Value::as_str).filter(|s| !s.starts_with("end-")).map(String::from).collect()
    }
}

/// Socket ids with their rooms, from a `fetch` result.
fn by_id(result: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for s in result["sockets"].as_array().unwrap() {
        let rooms = strings(&s["rooms"]).into_iter().map(String::from).collect();
        assert!(out.insert(s["id"].as_str().unwrap().to_string(), rooms).is_none(), "listed twice: {s}");
    }
    out
}

/// The rooms a test gave a client, with its own-id room.
fn rooms_of(c: &Client, rooms: &[&str]) -> BTreeSet<String> {
    rooms.iter().map(|r| r.to_string()).chain([c.sid.clone()]).collect()
}

/// Clients spread over the nodes (and, by the kernel's hashing, over their shards), each in
/// the given rooms.
fn clients(nodes: &[TestNode], layout: &[(usize, &[&str])]) -> Vec<Client> {
    layout
        .iter()
        .map(|(node, rooms)| {
            let mut c = Client::connect(nodes[*node].addr);
            for r in *rooms {
                c.join(r);
            }
            c
        })
        .collect()
}

#[test]
fn fetch_sockets_returns_exactly_a_rooms_sockets_on_every_node_with_their_rooms() {
    let nodes = cluster([OPTS; 3]);
    let layout: &[(usize, &[&str])] = &[
        (0, &["red"]),
        (0, &["red", "blue"]),
        (0, &[]),
        (1, &["red"]),
        (1, &["blue"]),
        (1, &["red", "muted"]),
        (2, &["red", "blue"]),
        (2, &["green"]),
        (2, &["red"]),
        (2, &["red"]),
    ];
    let mut cl = clients(&nodes, layout);
    let expect = |pick: &dyn Fn(&[&str]) -> bool, cl: &[Client]| -> BTreeMap<String, BTreeSet<String>> {
        layout.iter().zip(cl).filter(|((_, r), _)| pick(r)).map(|((_, r), c)| (c.sid.clone(), rooms_of(c, r))).collect()
    };

    let red = cl[2].request("fetch", json!({"rooms": ["red"]}));
    assert_eq!(red["missing"], 0, "{red}");
    assert_eq!(red["truncated"], false);
    assert_eq!(by_id(&red), expect(&|r| r.contains(&"red"), &cl), "{red}");
    // Where each socket is: this node's have no node id, the others' their node's.
    for s in red["sockets"].as_array().unwrap() {
        let index = cl.iter().position(|c| c.sid == s["id"]).unwrap();
        let home = layout[index].0;
        let node = if home == 0 { Value::Null } else { json!(nodes[home].id) };
        assert_eq!(s["node"], node, "{s}");
        assert_eq!(s["nsp"], "/");
    }

    // A union of rooms lists each socket once; `except` and a socket's own room as a broadcast.
    let some = cl[4].request("fetch", json!({"rooms": ["red", "blue"], "except": ["muted"]}));
    let want = expect(&|r| (r.contains(&"red") || r.contains(&"blue")) && !r.contains(&"muted"), &cl);
    assert_eq!(by_id(&some), want, "{some}");
    let seventh = cl[7].sid.clone();
    let one = cl[0].request("fetch", json!({"rooms": [seventh]}));
    assert_eq!(by_id(&one).into_keys().collect::<Vec<_>>(), [cl[7].sid.clone()]);

    // The whole namespace, from a node of its own: every client of the test.
    let all = cl[8].request("fetch", json!({}));
    assert_eq!(by_id(&all), expect(&|_| true, &cl), "{all}");
    let none = cl[8].request("fetch", json!({"rooms": ["nobody-here"]}));
    assert_eq!(none["sockets"], json!([]));
    assert_eq!(none["missing"], 0);
}

#[test]
fn sockets_join_and_leave_move_the_sockets_of_every_node() {
    let nodes = cluster([OPTS; 3]);
    let layout: &[(usize, &[&str])] =
        &[(0, &["red"]), (0, &[]), (1, &["red"]), (1, &["red", "muted"]), (1, &[]), (2, &["red"]), (2, &[])];
    let mut cl = clients(&nodes, layout);
    let in_red: BTreeSet<usize> = (0..layout.len()).filter(|&i| layout[i].1.contains(&"red")).collect();

    // Red's members but the muted one join `moved`, wherever they are.
    let joined = cl[1].request("sockets_join", json!({"rooms": ["red"], "except": ["muted"], "join": ["moved"]}));
    assert_eq!(joined, json!({"sockets": in_red.len() - 1, "missing": 0}));
    // A broadcast to `moved` from another node reaches exactly them: each client reads up to
    // the namespace's marker, which left the sender after the broadcast.
    cl[6].call("publish", json!({"rooms": ["moved"], "id": "to-moved"}));
    cl[6].call("publish", json!({"rooms": [], "id": "end-1"}));
    for (i, c) in cl.iter_mut().enumerate() {
        c.until("end-1");
        let member = in_red.contains(&i) && !layout[i].1.contains(&"muted");
        assert_eq!(c.received().contains("to-moved"), member, "client {i} on node {}", layout[i].0);
    }
    let fetched = cl[4].request("fetch", json!({"rooms": ["moved"]}));
    assert_eq!(fetched["sockets"].as_array().unwrap().len(), in_red.len() - 1, "{fetched}");

    // And leave it again: the next broadcast to `moved` reaches nobody.
    let left = cl[0].request("sockets_leave", json!({"rooms": ["moved"], "leave": ["moved"]}));
    assert_eq!(left, json!({"sockets": in_red.len() - 1, "missing": 0}));
    cl[6].call("publish", json!({"rooms": ["moved"], "id": "after-leave"}));
    cl[6].call("publish", json!({"rooms": [], "id": "end-2"}));
    for (i, c) in cl.iter_mut().enumerate() {
        c.until("end-2");
        assert!(!c.received().contains("after-leave"), "client {i} on node {}", layout[i].0);
    }
    let fetched = cl[4].request("fetch", json!({"rooms": ["moved"]}));
    assert_eq!(fetched["sockets"], json!([]), "{fetched}");
    // They are still in red.
    let red = cl[4].request("fetch", json!({"rooms": ["red"]}));
    assert_eq!(red["sockets"].as_array().unwrap().len(), in_red.len());
}

#[test]
fn disconnect_sockets_disconnects_the_sockets_of_every_node() {
    let nodes = cluster([OPTS; 3]);
    let layout: &[(usize, &[&str])] =
        &[(0, &[]), (0, &["doomed"]), (1, &["doomed"]), (1, &[]), (2, &["doomed"]), (2, &["closed"]), (1, &["closed"])];
    let mut cl = clients(&nodes, layout);

    let done = cl[0].request("disconnect_sockets", json!({"rooms": ["doomed"]}));
    assert_eq!(done, json!({"sockets": 3, "missing": 0}));
    // Each is told it left the namespace (`41`), and its connection stays open.
    for i in [1, 2, 4] {
        assert_eq!(cl[i].next().as_deref(), Some("41"), "client {i}");
    }
    let done = cl[3].request("disconnect_sockets", json!({"rooms": ["closed"], "close": true}));
    assert_eq!(done, json!({"sockets": 2, "missing": 0}));
    // With `close`, the whole connection ends after the `41` and the Engine.IO close packet,
    // so that the client knows not to reconnect.
    for i in [5, 6] {
        assert_eq!(cl[i].next().as_deref(), Some("41"), "client {i}");
        assert_eq!(cl[i].next().as_deref(), Some("1"), "client {i}");
        assert_eq!(cl[i].next(), None, "client {i}: connection still open");
    }
    let left = cl[0].request("fetch", json!({}));
    let ids: BTreeSet<String> = by_id(&left).into_keys().collect();
    assert_eq!(ids, [&cl[0], &cl[3]].iter().map(|c| c.sid.clone()).collect(), "{left}");
    // A disconnected socket's connection may join again.
    cl[1].ws.send(Message::text("40")).unwrap();
    assert!(cl[1].next().unwrap().starts_with("40{\"sid\""));
}

#[test]
fn server_side_emit_reaches_every_other_nodes_handler_once_with_their_acks() {
    let nodes = cluster([OPTS; 3]);
    let mut a = Client::connect(nodes[0].addr);
    let r = a.request("server_emit", json!({"args": {"n": 1}, "timeout_ms": 5000}));
    assert_eq!(r["missing"], 0, "{r}");
    let mut acks: Vec<Value> = r["acks"].as_array().unwrap().clone();
    acks.sort_by_key(|a| a["node"].to_string());
    let mut want: Vec<Value> = nodes[1..]
        .iter()
        .map(|n| json!({"node": n.id, "args": [{"node": n.id, "from": nodes[0].id, "got": {"n": 1}}]}))
        .collect();
    want.sort_by_key(|a| a["node"].to_string());
    assert_eq!(acks, want);
    let pings: Vec<usize> = nodes.iter().map(|n| n.pings.load(Ordering::SeqCst)).collect();
    assert_eq!(pings, [0, 1, 1], "the sender's node never, every other node once");
}

#[test]
fn a_node_that_never_answers_gives_partial_results_at_the_deadline() {
    let silent = Opts { request_timeout_ms: 5000, silent: true };
    let nodes = cluster([OPTS, OPTS, silent]);
    let mut a = Client::connect(nodes[0].addr);
    let r = a.request("server_emit", json!({"args": 2, "timeout_ms": 800}));
    assert_eq!(r["missing"], 1, "{r}");
    assert_eq!(r["acks"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["acks"][0]["node"], json!(nodes[1].id));
    let ms = r["ms"].as_u64().unwrap();
    assert!((750..3000).contains(&ms), "answered after {ms} ms, the deadline was 800 ms");
    // The silent node did get it.
    assert!(wait_until(Duration::from_secs(5), || nodes[2].pings.load(Ordering::SeqCst) == 1));
    assert_eq!(metric_sum(nodes[0].addr, "imks_cluster_requests_total{outcome=\"partial\"}"), 1);
}

#[test]
fn a_node_that_leaves_is_not_waited_for() {
    let short = Opts { request_timeout_ms: 20_000, silent: false };
    let mut nodes = cluster([short; 3]);
    let mut a = Client::connect(nodes[0].addr);
    let _c = Client::connect(nodes[2].addr);
    let all = a.request("fetch", json!({}));
    assert_eq!(all["sockets"].as_array().unwrap().len(), 2, "{all}");
    assert!(nodes[2].node.take().unwrap().shutdown());
    // It said it was leaving: a request does not wait for it until its deadline (20 s), nor
    // until it would have been taken for gone (3 s, and then it would count as missing).
    let r = a.request("fetch", json!({}));
    assert_eq!(r["missing"], 0, "{r}");
    assert_eq!(by_id(&r).into_keys().collect::<Vec<_>>(), [a.sid.clone()]);
    assert!(r["ms"].as_u64().unwrap() < 2000, "{r}");
    wait_nodes(nodes[0].addr, 1);
    wait_nodes(nodes[1].addr, 1);
}

/// A node in a process of its own (`imks conformance`), which a test can freeze with SIGSTOP:
/// alive to the backend (its connection stays open), silent to the cluster. Killed when
/// dropped.
struct Process(std::process::Child);

impl Process {
    fn start(prefix: &str, id: &str) -> (Process, SocketAddr) {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imks"))
            .args(["conformance", "--port", "0", "--ping-interval", "60000", "--ping-timeout", "60000"])
            .env("IMKS_LOG__LEVEL", "info")
            .env("RUST_LOG", "info")
            .env("IMKS_SERVER__SHARDS", "2")
            .env("IMKS_CLUSTER__BACKEND", "nats")
            .env("IMKS_CLUSTER__URL", NATS)
            .env("IMKS_CLUSTER__PREFIX", prefix)
            .env("IMKS_CLUSTER__NODE_ID", id)
            .env("IMKS_CLUSTER__HEARTBEAT_MS", "200")
            .env("IMKS_CLUSTER__NODE_TIMEOUT_MS", "3000")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let outs: [Option<Box<dyn std::io::Read + Send>>; 2] =
            [child.stdout.take().map(|o| Box::new(o) as _), child.stderr.take().map(|o| Box::new(o) as _)];
        for out in outs.into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let process = Process(child);
        let mut log = Vec::new();
        loop {
            let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no start: {log:?}"));
            if line.contains("imks listening") {
                let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).expect("addr in the log");
                return (process, addr.parse().unwrap());
            }
            log.push(line);
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.0.id().to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_frozen_node_gives_partial_results_at_the_deadline_until_it_is_taken_for_gone() {
    let p = prefix();
    let quick = Opts { request_timeout_ms: 1000, silent: false };
    let nodes: Vec<TestNode> = (0..2).map(|_| start_node(&p, 2, quick)).collect();
    let (frozen, addr) = Process::start(&p, "frozen");
    for n in &nodes {
        wait_nodes(n.addr, 2);
    }
    let mut a = Client::connect(nodes[0].addr);
    let _b = Client::connect(nodes[1].addr);
    let _f = Client::connect(addr);
    let all = a.request("fetch", json!({}));
    assert_eq!((all["sockets"].as_array().unwrap().len(), &all["missing"]), (3, &json!(0)), "{all}");

    // Frozen, it neither answers nor beats, but it is not gone yet: the request completes at
    // its deadline with what the others answered, and says one node is missing.
    frozen.signal("-STOP");
    let r = a.request("fetch", json!({}));
    assert_eq!(r["missing"], 1, "{r}");
    assert_eq!(r["sockets"].as_array().unwrap().len(), 2, "{r}");
    let ms = r["ms"].as_u64().unwrap();
    assert!((950..2900).contains(&ms), "answered after {ms} ms, the deadline was 1000 ms");

    // Not heard from for `node_timeout_ms`, it is gone: nobody waits for it any more.
    wait_nodes(nodes[0].addr, 1);
    let r = a.request("fetch", json!({}));
    assert_eq!(r["missing"], 0, "{r}");
    assert!(r["ms"].as_u64().unwrap() < 900, "{r}");

    // Thawed, it beats again and is back.
    frozen.signal("-CONT");
    wait_nodes(nodes[0].addr, 2);
    let r = a.request("fetch", json!({}));
    assert_eq!(r["missing"], 0, "{r}");
}

/// Publishes raw bytes on a subject over the NATS text protocol, and returns once the server
/// has routed them.
fn nats_publish(subject: &str, payload: &[u8]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect("127.0.0.1:4222").expect("NATS runs on 127.0.0.1:4222");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut info = [0u8; 4096];
    let _ = s.read(&mut info).unwrap();
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").unwrap();
    s.write_all(format!("PUB {subject} {}\r\n", payload.len()).as_bytes()).unwrap();
    s.write_all(payload).unwrap();
    s.write_all(b"\r\nPING\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !String::from_utf8_lossy(&buf).contains("PONG") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "NATS closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_node_ignores_envelopes_under_its_own_id() {
    use imks::cluster::envelope::{self, Body, Envelope, Heartbeat};
    let p = prefix();
    let a = start_node(&p, 2, Opts { request_timeout_ms: 1000, silent: false });
    // Subscribed to the control subject and its own.
    assert!(wait_until(Duration::from_secs(10), || metric_sum(a.addr, "imks_cluster_subscriptions ") == 2));
    let beat = |origin: &str| {
        envelope::encode(&Envelope { origin: origin.into(), body: Body::Heartbeat(Heartbeat { incarnation: 1 }) })
    };
    // A backend that echoes would hand a node its own heartbeat: it must not count itself.
    // The second heartbeat, from another id, comes after it on the same subject.
    nats_publish(&format!("{p}.ctl"), &beat(&a.id));
    nats_publish(&format!("{p}.ctl"), &beat("other"));
    wait_nodes(a.addr, 1);
    let mut c = Client::connect(a.addr);
    // Nor does it wait for itself; "other" never answers, so it is the one missing.
    let r = c.request("fetch", json!({}));
    assert_eq!(r["missing"], 1, "{r}");
    assert_eq!(by_id(&r).into_keys().collect::<Vec<_>>(), [c.sid.clone()]);
}
