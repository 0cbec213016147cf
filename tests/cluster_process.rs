//! The cluster with its nodes as real processes over the real local NATS, for what only a
//! process can show: a node killed with `kill -9`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// `imks serve` with `config` (TOML) in the cluster `prefix`, two shards.
fn spawn_serve(prefix: &str, config: &str) -> (Proc, SocketAddr, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("imks-cluster-{}-{:x}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("imks.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imks"));
    cmd.args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("IMKS_SERVER__SHARDS", "2")
        .env("IMKS_SERVER__PIN_THREADS", "false")
        .env("IMKS_SERVER__LISTEN", "[\"127.0.0.1:0\"]")
        .env("IMKS_CLUSTER__BACKEND", "nats")
        .env("IMKS_CLUSTER__PREFIX", prefix)
        .env("IMKS_CLUSTER__HEARTBEAT_MS", "200")
        .env("IMKS_CLUSTER__NODE_TIMEOUT_MS", "1000");
    let (proc, addr) = spawn_listening(cmd);
    (proc, addr, dir)
}

/// The next native message of type `kind`.
fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return v;
                }
            }
            Ok(_) => continue,
            Err(e) => panic!("no {kind}: {e}"),
        }
    }
}

#[test]
fn the_users_of_a_killed_node_go_offline_for_watchers_on_the_others() {
    let prefix = format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let config = r#"
[auth]
mode = "static"
static_tokens = [
  { token = "t-alice", tenant = "acme", user_id = "alice" },
  { token = "t-bob", tenant = "acme", user_id = "bob" },
]
"#;
    let (mut a_proc, a, dir_a) = spawn_serve(&prefix, config);
    let (_b_proc, b, dir_b) = spawn_serve(&prefix, config);
    // Each node knows the other: two nodes alive.
    for n in [a, b] {
        assert!(wait_until(Duration::from_secs(10), || metric_sum(n, "imks_cluster_nodes ") == 1), "{n} sees no peer");
    }
    let mut bob = ws(a, "/ws?token=t-bob");
    assert_eq!(recv_type(&mut bob, "connected")["type"], "connected");
    let mut watcher = ws(b, "/ws?token=t-alice");
    recv_type(&mut watcher, "connected");
    watcher
        .send(Message::text(json!({"type": "presence:subscribe", "data": {"userIds": ["bob"]}}).to_string()))
        .unwrap();
    let state = recv_type(&mut watcher, "presence");
    assert_eq!(state["data"]["online"], true, "bob is online on A: {state}");
    // A dies without a word: bob's session never closes there, yet he goes offline here once
    // A is not heard from for node_timeout_ms (1 s here).
    a_proc.0.kill().expect("SIGKILL");
    let _ = a_proc.0.wait();
    let killed = Instant::now();
    let offline = recv_type(&mut watcher, "offline");
    assert_eq!(offline["data"]["userId"], "bob");
    assert!(killed.elapsed() < Duration::from_secs(5), "offline after {:?}", killed.elapsed());
    drop(bob);
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
}
