//! The embeddable API of the native protocol: routes (exact, longest prefix, fallback), the
//! middleware chain (a panicking handler, a timeout), `on_connect`, `on_disconnect` with
//! `DisconnectInfo`, `on_error`, and `send_to_identity` / `is_online` / `identity_sessions`
//! across shards.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use imks::chat::router::{
    ChatApp, HandlerError, HandlerFuture, Initiator, Logging, Middleware, Next, Reject, Request, Timeout,
};
use imks::config::file::FileConfig;
use imks::node::AppFactories;
use imks::{Config, Node};
use serde_json::{json, Value};
use tungstenite::Message;

const AUTH: &str = r#"
mode = "static"
static_tokens = [
  { token = "t-alice", tenant = "acme", user_id = "alice" },
  { token = "t-bob", tenant = "acme", user_id = "bob" },
  { token = "t-mallory", tenant = "acme", user_id = "mallory" },
]
"#;

type Log = Arc<Mutex<Vec<String>>>;

/// An application's own membership source: `vip-` channels are alice's alone.
struct VipOnly;

impl imks::membership::MembershipSource for VipOnly {
    fn is_member(&self, _tenant: &str, channel: &str, user: &str) -> bool {
        !channel.starts_with("vip-") || user == "alice"
    }
}

/// An application layer: refuses `app:guarded` before any handler runs, and records the order
/// layers run in.
struct Guard(Log, &'static str);

impl Middleware for Guard {
    fn call(&self, req: Request, next: Next) -> HandlerFuture {
        if req.kind == "app:guarded" {
            self.0.lock().unwrap().push(format!("layer {}", self.1));
        }
        if req.kind == "app:guarded" && self.1 == "inner" {
            return Box::pin(async { Err(HandlerError::Refused { code: "guarded".into(), message: "no".into() }) });
        }
        next.run(req)
    }
}

fn app(log: Log) -> ChatApp {
    let (l1, l2) = (log.clone(), log.clone());
    ChatApp::new()
        .layer(Guard(log.clone(), "outer"))
        .layer(Guard(log, "inner"))
        .layer(Logging)
        .layer(Timeout(Duration::from_millis(200)))
        .route("app:echo", |req: Request| async move { Ok(Some(json!({"echo": req.data::<Value>()?}))) })
        .prefix("app:", |req: Request| async move { Ok(Some(json!({"prefix": "app:", "kind": req.kind}))) })
        .prefix("app:long:", |req: Request| async move { Ok(Some(json!({"prefix": "app:long:", "kind": req.kind}))) })
        .fallback(|req: Request| async move { Ok(Some(json!({"fallback": req.kind}))) })
        .route("app:panic", |_req: Request| async move {
            if true {
                panic!("handler bug");
            }
            Ok(None)
        })
        .route("app:slow", |_req: Request| async move {
            monoio::time::sleep(Duration::from_secs(5)).await;
            Ok(None)
        })
        .route("app:guarded", |_req: Request| async move { Ok(Some(json!("the handler ran"))) })
        .route("app:refuse", |_req: Request| async move {
            Err(HandlerError::Refused { code: "nope".into(), message: "refused by the app".into() })
        })
        .route("app:notify", |req: Request| async move {
            #[derive(serde::Deserialize)]
            struct N {
                user: String,
            }
            let n: N = req.data()?;
            let online = imks::chat::is_online(&req.shard, &req.identity.tenant, &n.user).await;
            let sessions = imks::chat::identity_sessions(&req.shard, &req.identity.tenant, &n.user).await;
            let frame = imks::chat::session::frame("app:note", &json!({"from": &*req.identity.user_id}));
            imks::chat::send_to_identity(&req.shard, &req.identity.tenant, &n.user, frame);
            Ok(Some(json!({"online": online, "sessions": sessions.len()})))
        })
        .on_connect(|identity, _head| {
            if &*identity.user_id == "mallory" {
                Err(Reject { status: 403, message: "mallory is banned".into() })
            } else {
                Ok(())
            }
        })
        .on_disconnect(move |_shard, s, info| {
            l1.lock().unwrap().push(format!("disconnect {} {:?} {:?}", s.identity.user_id, info.initiator, info.code));
        })
        .on_error(move |_shard, s, kind, e| {
            l2.lock().unwrap().push(format!("error {} {kind} {}", s.identity.user_id, e.code()));
        })
}

fn start(log: Log) -> (Node, [std::net::SocketAddr; 2]) {
    let mut f = FileConfig::default();
    f.server.listen = vec!["127.0.0.1:0".into()];
    f.server.shards = 2;
    f.server.pin_threads = false;
    f.log.level = "warn".into();
    f.auth = toml::from_str(AUTH).unwrap();
    // Tighter than the application's own 200 ms `Timeout` layer: the node's bound wins.
    f.chat.handler_timeout_ms = 100;
    let mut c = Config::resolve(f, |_| Ok(None)).unwrap();
    c.runtime.shards[0].listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.runtime.shards[1].listen = vec!["127.0.0.2:0".parse().unwrap()];
    let factories = AppFactories {
        socketio: None,
        chat: Some(Arc::new(move || app(log.clone()))),
        membership: Some(Arc::new(VipOnly)),
    };
    let node = Node::start_apps(c, factories).unwrap();
    let addrs = [node.shard_addrs(0)[0], node.shard_addrs(1)[0]];
    (node, addrs)
}

fn client(addr: std::net::SocketAddr, token: &str) -> Ws {
    let mut c = ws(addr, &format!("/ws?token={token}"));
    assert_eq!(recv(&mut c)["type"], "connected");
    c
}

fn recv(c: &mut Ws) -> Value {
    loop {
        match c.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            m => panic!("{m:?}"),
        }
    }
}

fn call(c: &mut Ws, kind: &str, data: Value) -> Value {
    c.send(Message::text(json!({"type": kind, "id": "r", "data": data}).to_string())).unwrap();
    let v = recv(c);
    assert_eq!(v["id"], "r", "{v}");
    v
}

#[test]
fn routes_middleware_and_hooks() {
    let log: Log = Default::default();
    let (node, [a, b]) = start(log.clone());
    let mut alice = client(a, "t-alice");

    let echo = call(&mut alice, "app:echo", json!({"x": 1}));
    assert_eq!((echo["type"].as_str(), &echo["data"]["echo"]), (Some("app:echo"), &json!({"x": 1})));
    assert_eq!(call(&mut alice, "app:other", json!({}))["data"]["prefix"], "app:");
    assert_eq!(call(&mut alice, "app:long:x", json!({}))["data"]["prefix"], "app:long:", "longest prefix wins");
    assert_eq!(call(&mut alice, "misc", json!({}))["data"]["fallback"], "misc");
    assert_eq!(call(&mut alice, "app:echo", json!(null))["data"]["echo"], Value::Null);

    // A panicking handler answers `internal`; the shard and the session live on.
    let e = call(&mut alice, "app:panic", json!({}));
    assert_eq!((e["type"].as_str(), e["data"]["code"].as_str()), (Some("error"), Some("internal")));
    let e = call(&mut alice, "app:slow", json!({}));
    assert_eq!(e["data"]["code"], "timeout");
    assert_eq!(e["data"]["message"], "handler did not finish within 100ms", "chat.handler_timeout_ms applies");
    let e = call(&mut alice, "app:refuse", json!({}));
    assert_eq!((e["data"]["code"].as_str(), e["data"]["message"].as_str()), (Some("nope"), Some("refused by the app")));
    assert_eq!(call(&mut alice, "app:echo", json!({"n": 2}))["data"]["echo"]["n"], 2);
    // Layers run in the order added, and one may answer instead of the handler.
    assert_eq!(call(&mut alice, "app:guarded", json!({}))["data"]["code"], "guarded");
    {
        let log = log.lock().unwrap();
        let layers: Vec<&String> = log.iter().filter(|l| l.starts_with("layer")).collect();
        assert_eq!(layers, ["layer outer", "layer inner"]);
    }
    // `data` must be an object: anything else is refused before any handler runs.
    assert_eq!(call(&mut alice, "app:echo", json!(2))["data"]["code"], "bad_envelope");
    let again = client(a, "t-bob");
    drop(again);

    // The application's membership source decides who may join.
    assert_eq!(call(&mut alice, "join", json!({"roomId": "vip-lounge"}))["type"], "joined");
    {
        let mut bob = client(b, "t-bob");
        assert_eq!(call(&mut bob, "join", json!({"roomId": "vip-lounge"}))["data"]["code"], "forbidden");
        assert_eq!(call(&mut bob, "join", json!({"roomId": "lobby"}))["type"], "joined");
    }

    // on_connect refuses before the upgrade.
    let mut s = connect(a);
    use std::io::Write;
    s.write_all(
        b"GET /ws?token=t-mallory HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("mallory is banned"));

    // Identity API across shards: bob has sessions on both shards.
    let mut bob1 = client(a, "t-bob");
    let mut bob2 = client(b, "t-bob");
    let r = call(&mut alice, "app:notify", json!({"user": "bob"}));
    assert_eq!(r["data"], json!({"online": true, "sessions": 2}));
    for bob in [&mut bob1, &mut bob2] {
        let note = recv(bob);
        assert_eq!((note["type"].as_str(), note["data"]["from"].as_str()), (Some("app:note"), Some("alice")));
    }
    let r = call(&mut alice, "app:notify", json!({"user": "nobody"}));
    assert_eq!(r["data"], json!({"online": false, "sessions": 0}));

    // on_disconnect sees who closed and with which code.
    bob2.close(None).unwrap();
    while bob2.read().is_ok() {}
    assert!(wait_until(Duration::from_secs(5), || log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l == &format!("disconnect bob {:?} Some(1005)", Initiator::Client))));
    drop(node); // shutdown: the remaining sessions end with 1001
    let log = log.lock().unwrap();
    assert!(log.iter().any(|l| l == "error alice app:panic internal"), "{log:?}");
    assert!(log.iter().any(|l| l == "error alice app:slow timeout"), "{log:?}");
    assert!(log.iter().any(|l| l == &format!("disconnect alice {:?} Some(1001)", Initiator::Shutdown)), "{log:?}");
}
