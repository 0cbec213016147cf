//! imks-loadgen's protocol code against a real, in-process imks node (the conformance node, or a
//! two-shard node for the native protocol), and fan-out against two conformance nodes joined
//! over the local NATS (`scripts/ensure-nats.sh`): short, small runs of every scenario. Not
//! timed: each asserts that the run completed with nothing lost.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use imks::cluster::{ClusterBackend, ClusterSection};
use imks::config::file::FileConfig;
use imks::{Config, Node};
use imks_loadgen::{Load, Params, Protocol, Report, Scenario};

/// A conformance node (as `imks conformance`) on 127.0.0.1:0 with relaxed heartbeats.
fn start_conformance() -> (Node, SocketAddr) {
    start_conformance_with(|_| {})
}

fn start_conformance_with(tweak: impl FnOnce(&mut FileConfig)) -> (Node, SocketAddr) {
    let mut f = FileConfig::default();
    f.server.listen = vec!["127.0.0.1:0".into()];
    f.server.shards = 1;
    f.server.pin_threads = false;
    f.server.shutdown_timeout_ms = 3000;
    f.log.level = "warn".into();
    tweak(&mut f);
    let mut c = Config::resolve(f, |_| Ok(None)).expect("valid config");
    c.conformance_mode();
    c.eio.ping_interval = Duration::from_secs(20);
    c.eio.ping_timeout = Duration::from_secs(20);
    let node = Node::start(c).expect("node starts");
    let addr = node.local_addrs()[0];
    (node, addr)
}

/// A node with two shards serving the native protocol at `/ws`, without the per-session message
/// rate limit (the closed-loop run sends as fast as the node answers). `tweak` sets auth.
fn start_native(tweak: impl FnOnce(&mut FileConfig)) -> (Node, SocketAddr) {
    let mut f = FileConfig::default();
    f.server.listen = vec!["127.0.0.1:0".into()];
    f.server.shards = 2;
    f.server.pin_threads = false;
    f.server.shutdown_timeout_ms = 3000;
    f.log.level = "warn".into();
    f.limits.message_rate = 0;
    tweak(&mut f);
    let c = Config::resolve(f, |_| Ok(None)).expect("valid config");
    let node = Node::start(c).expect("node starts");
    let addr = node.local_addrs()[0];
    (node, addr)
}

/// Small, bounded defaults: one thread, no warm-up, ended by `total` well before `duration`.
fn params(scenario: Scenario, addr: SocketAddr) -> Params {
    let mut p = Params::new(scenario, &format!("ws://{addr}"));
    p.threads = 1;
    p.warmup_s = 0.0;
    p.duration_s = 15.0;
    p.drain_s = 5.0;
    p.connections = 10;
    p.load = Load::Closed { window: 4 };
    p
}

fn run(p: &Params) -> Report {
    let r = imks_loadgen::run(p).unwrap_or_else(|e| panic!("{:?} run failed: {e}", p.scenario));
    eprint!("{}", r.summary());
    r
}

fn assert_complete(r: &Report, sent: u64, expected: u64) {
    assert_eq!(r.connections.setup_failed, 0, "{:?}", r.errors);
    assert_eq!(r.connections.dropped, 0, "{:?}", r.errors);
    assert_eq!(r.counts.sent, sent);
    assert_eq!(r.counts.expected, expected);
    assert_eq!(r.counts.received, expected, "errors {:?}", r.errors);
    assert_eq!((r.counts.lost, r.counts.duplicates, r.counts.unsent), (0, 0, 0));
    assert_eq!(r.latency_us.count, expected);
    assert!(r.latency_us.p50_us > 0.0 && r.latency_us.max_us >= r.latency_us.p99_us);
    assert!(!r.timeseries.is_empty());
    assert!(r.loadgen.cpu_s > 0.0);
}

#[test]
fn echo_over_raw_websocket() {
    let (_node, addr) = start_conformance();
    let mut p = params(Scenario::Echo, addr);
    p.total = Some(2000);
    let r = run(&p);
    assert_complete(&r, 2000, 2000);
    assert_eq!(r.connections.alive_at_end, 10);

    // Open loop, text payloads.
    p.ws_text = true;
    p.load = Load::Open { rate: 2000.0 };
    p.total = Some(500);
    assert_complete(&run(&p), 500, 500);
}

#[test]
fn ack_over_socketio() {
    let (_node, addr) = start_conformance();
    let mut p = params(Scenario::Ack, addr);
    p.total = Some(2000);
    p.size = 200;
    let r = run(&p);
    assert_complete(&r, 2000, 2000);

    p.load = Load::Open { rate: 1000.0 };
    p.total = Some(300);
    assert_complete(&run(&p), 300, 300);
}

#[test]
fn fanout_over_socketio() {
    let (node, addr) = start_conformance();
    let mut p = params(Scenario::Fanout, addr);
    p.rooms = 2;
    p.subscribers = 5;
    p.publishers = 2;
    p.load = Load::Open { rate: 600.0 };
    p.total = Some(300);
    let r = run(&p);
    assert_complete(&r, 300, 1500);
    assert_eq!(r.connections.established, 12);

    // Closed loop: publishers keep a window of deliveries in flight.
    p.load = Load::Closed { window: 2 };
    p.total = Some(400);
    assert_complete(&run(&p), 400, 2000);

    // --server-pid: our own process, since the node runs in it.
    p.server_pids = vec![std::process::id()];
    p.total = Some(100);
    let r = run(&p);
    let s = r.server.as_ref().expect("server figures");
    // CPU time comes in clock ticks: a run this short may well show none.
    assert!(s.rss_before_kb.is_some() && s.rss_after_setup_kb.is_some() && s.cpu_s.is_some(), "{s:?}");
    drop(node);
}

/// `/health` of a node, as JSON.
fn health(addr: SocketAddr) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).expect("node listens");
    write!(s, "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_default()
}

#[test]
fn fanout_spreads_rooms_over_two_clustered_nodes() {
    // A subject prefix of this test's own: other tests on the same NATS never see its traffic.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let prefix = format!("lg{:x}{:x}", std::process::id(), nanos & 0xffff_ffff);
    let cluster = |f: &mut FileConfig| {
        f.cluster = ClusterSection {
            backend: ClusterBackend::Nats,
            prefix: prefix.clone(),
            unsubscribe_delay_ms: 200,
            ..ClusterSection::default()
        };
    };
    let (_a, a) = start_conformance_with(cluster);
    let (_b, b) = start_conformance_with(cluster);
    for addr in [a, b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while health(addr)["checks"]["cluster"]["status"] != "up" {
            assert!(Instant::now() < deadline, "{addr} did not connect to NATS");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut p = params(Scenario::Fanout, a);
    p.urls.push(format!("ws://{b}"));
    p.spread = imks_loadgen::params::Spread::Rooms;
    p.rooms = 2;
    p.subscribers = 5;
    p.publishers = 1;
    // Node B subscribes to its room once its first member joined, a moment after the join is
    // acked: the warm-up's publishes, which are not counted, cover that moment.
    p.warmup_s = 1.0;
    p.load = Load::Open { rate: 400.0 };
    p.total = Some(200);
    p.server_pids = vec![std::process::id(), std::process::id()];
    let r = run(&p);
    assert_complete(&r, 200, 1000);
    // The publisher and room r0 on A, room r1 on B: half the deliveries crossed to B.
    let per_url: Vec<(usize, u64, u64)> =
        r.per_url.iter().map(|u| (u.connections, u.received, u.latency_us.count)).collect();
    assert_eq!(per_url, [(6, 500, 500), (5, 500, 500)]);
    let s = r.server.as_ref().expect("server figures");
    assert_eq!(s.processes.len(), 2, "{s:?}");
}

#[test]
fn connect_storm() {
    let (_node, addr) = start_conformance();
    let mut p = params(Scenario::Connect, addr);
    p.connections = 5;
    p.total = Some(50);
    let r = run(&p);
    assert_eq!(r.counts.sent, 50);
    assert_eq!((r.counts.received, r.counts.failed, r.counts.lost), (50, 0, 0), "{:?}", r.errors);
    assert_eq!(r.latency_us.count, 50);

    p.protocol = Protocol::Ws;
    p.load = Load::Open { rate: 200.0 };
    p.total = Some(30);
    let r = run(&p);
    assert_eq!((r.counts.sent, r.counts.received, r.counts.lost), (30, 30, 0), "{:?}", r.errors);
}

#[test]
fn idle_connections_stay_up() {
    let (_node, addr) = start_conformance();
    let mut p = params(Scenario::Idle, addr);
    p.connections = 20;
    p.duration_s = 1.0;
    p.health_url = Some(format!("http://{addr}/health"));
    let r = run(&p);
    assert_eq!((r.connections.established, r.connections.alive_at_end), (20, 20), "{:?}", r.errors);
    assert_eq!((r.counts.sent, r.counts.received, r.counts.lost), (20, 20, 0));
    let s = r.server.as_ref().expect("health figures");
    assert_eq!(s.health_connections_after_setup.map(|c| c >= 20), Some(true), "{s:?}");
}

#[test]
fn worker_processes_merge_into_one_report() {
    let (_node, addr) = start_conformance();
    let mut p = params(Scenario::Ack, addr);
    p.processes = 2;
    p.worker_exe = Some(env!("CARGO_BIN_EXE_imks-loadgen").into());
    p.total = Some(1000);
    let r = run(&p);
    assert_eq!(r.loadgen.processes, 2);
    assert_eq!(r.connections.established, 10);
    assert_complete(&r, 1000, 1000);
}

/// Everything a chat run sent came back exactly once: one `sent` ack, one `delivered` ack and
/// one delivery per message.
fn assert_chat_complete(r: &Report, sent: u64) {
    assert_complete(r, sent, sent);
    let c = r.chat.as_ref().expect("chat figures");
    for (name, k) in [("sent", &c.sent_acks), ("delivered", &c.delivered_acks), ("deliveries", &c.deliveries)] {
        assert_eq!((k.expected, k.received, k.lost, k.duplicates), (sent, sent, 0, 0), "{name}: {:?}", r.errors);
        assert_eq!(k.latency_us.count, sent, "{name}");
        assert!(k.latency_us.p50_us > 0.0, "{name}");
    }
    assert_eq!(r.counts.errors, 0, "{:?}", r.errors);
}

#[test]
fn chat_over_the_native_protocol() {
    let (_node, addr) = start_native(|_| {});
    // Anonymous: each connection learns its random user from `connected`.
    let mut p = params(Scenario::Chat, addr);
    assert_eq!(p.protocol, Protocol::Ws);
    p.total = Some(1000);
    let r = run(&p);
    assert_chat_complete(&r, 1000);
    assert_eq!(r.connections.alive_at_end, 10);
    assert!(r.summary().contains("delivered acks"));

    // Open loop, bigger messages.
    p.load = Load::Open { rate: 1000.0 };
    p.size = 300;
    p.total = Some(300);
    assert_chat_complete(&run(&p), 300);
}

#[test]
fn chat_with_minted_jwts() {
    let (_node, addr) = start_native(|f| {
        f.auth.mode = imks::auth::config::AuthMode::Jwt;
        f.auth.jwt.secret = Some("loadgen-test-secret".into());
    });
    let mut p = params(Scenario::Chat, addr);
    p.connections = 4;
    p.total = Some(200);
    p.jwt_secret = Some("wrong".into());
    assert!(matches!(imks_loadgen::run(&p), Err(imks_loadgen::Error::NoConnections(_))));
    p.jwt_secret = Some("loadgen-test-secret".into());
    let r = run(&p);
    assert_chat_complete(&r, 200);
    assert_eq!(r.params.jwt_secret.as_deref(), Some("<redacted>"));
}

/// The binary's verdict: a run whose connections failed exits 3 with the reason on stderr,
/// unless `--allow-loss`; a clean run exits 0.
#[test]
fn the_exit_status_tells_a_clean_run_from_a_lossy_one() {
    // One shard, so the limit does not depend on how the kernel spreads the connections.
    let (_node, addr) = start_native(|f| {
        f.server.shards = 1;
        f.server.max_connections = 4;
    });
    let loadgen = |extra: &[&str], connections: &str| {
        let url = format!("ws://{addr}");
        let mut args = vec!["idle", "-c", connections, "--url", &url, "--protocol", "ws", "-q"];
        args.extend(["-d", "1", "--warmup", "0", "--drain", "0", "--setup-timeout", "5", "--threads", "1"]);
        args.extend(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imks-loadgen"))
            .args(&args)
            .output()
            .expect("imks-loadgen runs");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = loadgen(&[], "3");
    assert_eq!(code, Some(0), "three connections fit: {stderr}");
    let (code, stderr) = loadgen(&[], "8");
    assert_eq!(code, Some(3), "eight do not: {stderr}");
    let reason = stderr.lines().find(|l| l.contains("FAILED")).unwrap_or_default();
    assert!(reason.contains("connections failed to set up"), "{stderr}");
    let (code, stderr) = loadgen(&["--allow-loss"], "8");
    assert_eq!(code, Some(0), "--allow-loss: {stderr}");
}

/// A short soak: three kinds of client (Socket.IO over WebSocket and over long-polling, native)
/// on a two-shard node, with churn; every message owed arrived, each kind carried traffic, and
/// the node holds no connection once every client left.
#[test]
fn soak_with_churn_loses_nothing_and_leaves_nothing_behind() {
    let (_node, addr) = start_conformance_with(|f| f.server.shards = 2);
    let mut p = params(Scenario::Soak, addr);
    p.connections = 300;
    p.mix = [60, 10, 30];
    p.rooms = 6;
    p.threads = 2;
    p.load = Load::Open { rate: 600.0 };
    p.churn = 20;
    p.duration_s = 4.0;
    p.drain_s = 10.0;
    p.health_url = Some(format!("http://{addr}/health"));
    p.server_pids = vec![std::process::id()];
    let r = run(&p);
    assert!(r.problems().is_empty(), "{:?}, errors {:?}", r.problems(), r.errors);
    assert_eq!((r.connections.established, r.connections.setup_failed, r.connections.dropped), (300, 0, 0));
    assert!(r.counts.expected > 0);
    assert_eq!((r.counts.received, r.counts.lost, r.counts.duplicates), (r.counts.expected, 0, 0));
    let soak = r.soak.as_ref().expect("soak figures");
    let clients: Vec<usize> = soak.kinds.iter().map(|k| k.clients).collect();
    assert_eq!(clients, [180, 30, 90]);
    for k in &soak.kinds {
        assert!(k.sent > 0 && k.received > 0, "{} carried no traffic: {k:?}", k.kind);
        assert_eq!((k.received, k.lost, k.duplicates, k.dropped, k.failed), (k.expected, 0, 0, 0, 0), "{k:?}");
        // Every session left cleanly: the first ones, their replacements, and at the end all.
        assert_eq!(k.left, k.opened, "{k:?}");
    }
    // Four seconds at 20 a second: about 80 clients replaced.
    let opened: u64 = soak.kinds.iter().map(|k| k.opened).sum();
    assert!((300 + 60..=300 + 100).contains(&opened), "{opened} sessions");
    for t in &soak.types {
        assert!(t.expected > 0 && t.received == t.expected, "{t:?}");
    }
    assert_eq!(soak.leaked, Some(0), "{:?}", soak.leftover);
    let left = soak.leftover.as_ref().expect("checked with --health-url");
    assert_eq!(left.identities_online, Some(0), "read from /metrics");
    assert!(!soak.per_minute.is_empty() && soak.per_minute[0].latency_us.count > 0);
    assert!(r.timeseries.iter().any(|p| p.server_rss_kb.is_some()), "RSS per second");
    assert!(soak.rss.is_some());
    assert!(imks_loadgen::plot::svg(&r).contains("server RSS"));
}
