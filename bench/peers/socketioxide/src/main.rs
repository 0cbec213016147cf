//! socketioxide 0.18 peer for `bench/run`: the bench events of shared/conformance-server.md
//! part B item 10 on 127.0.0.1:PORT, served by axum on a current-thread (single-threaded) tokio
//! runtime, since the benchmark pins every server to one core. socketioxide 0.18 handlers are
//! async: it spawns one tokio task per received event.
//!
//! With `BENCH_REDIS_URL` (`redis://HOST:PORT`) it is one node of a cluster: broadcasts reach
//! the other nodes through the `socketioxide-redis` adapter on that Redis (RESP3, as the
//! adapter requires), as a socketioxide user scales out.
//!
//! Usage: imks-bench-socketioxide PORT

use std::time::Duration;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::SocketIo;
use socketioxide_redis::drivers::redis::redis_client as redis;
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

/// Every argument of an event, however many. socketioxide hands a tuple-like type the whole
/// argument list (any other type gets the first argument only), and sends a tuple-like value
/// back as separate arguments, so this (de)serializes as a tuple.
struct Args(Vec<Value>);

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgsVisitor;
        impl<'de> Visitor<'de> for ArgsVisitor {
            type Value = Args;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Args, A::Error> {
                let mut args = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(arg) = seq.next_element()? {
                    args.push(arg);
                }
                Ok(Args(args))
            }
        }
        deserializer.deserialize_tuple(usize::MAX, ArgsVisitor)
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(self.0.len())?;
        for arg in &self.0 {
            tuple.serialize_element(arg)?;
        }
        tuple.end()
    }
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    // echo-ack: ack with the same arguments.
    socket.on("echo-ack", async |Data::<Args>(args), ack: AckSender<A>| {
        ack.send(&args).ok();
    });
    // join / leave: room membership, acked "ok" when the client asked for an ack.
    socket.on("join", async |socket: SocketRef<A>, Data::<String>(room), ack: AckSender<A>| {
        socket.join(room);
        ack.send("ok").ok();
    });
    socket.on("leave", async |socket: SocketRef<A>, Data::<String>(room), ack: AckSender<A>| {
        socket.leave(room);
        ack.send("ok").ok();
    });
    // publish: emit `msg` with the same object to every member of obj.room, the sender included
    // (`within`, unlike `to`, does not leave the sender out).
    socket.on("publish", async |socket: SocketRef<A>, Data::<Value>(obj)| {
        let Some(room) = obj.get("room").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        socket.within(room).emit("msg", &obj).await.ok();
    });
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: imks-bench-socketioxide PORT");
            std::process::exit(2);
        }
    };

    // Relaxed heartbeats, as imks is started with in the benchmarks; everything else default.
    let builder =
        SocketIo::builder().ping_interval(Duration::from_millis(25_000)).ping_timeout(Duration::from_millis(20_000));
    let (app, adapter) = match std::env::var("BENCH_REDIS_URL") {
        Ok(url) => {
            let client = redis::Client::open(format!("{url}?protocol=resp3"))?;
            let ctr = RedisAdapterCtr::new_with_redis(&client).await?;
            let (layer, io) = builder.with_adapter::<RedisAdapter<_>>(ctr).build_layer();
            io.ns("/", on_connect).await?;
            (axum::Router::new().layer(layer), format!(" (redis adapter on {url})"))
        }
        Err(_) => {
            let (layer, io) = builder.build_layer();
            io.ns("/", on_connect);
            (axum::Router::new().layer(layer), String::new())
        }
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("socketioxide listening on 127.0.0.1:{port}{adapter}");
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // axum leaves Nagle's algorithm on by default; BENCH_NODELAY=1 turns it off, as imks, node
    // and the raw baseline do, to compare the servers with equal socket options.
    if std::env::var("BENCH_NODELAY").is_ok_and(|v| v == "1") {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    } else {
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    }
    Ok(())
}
