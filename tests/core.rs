//! The shard runtime assembled by hand, with no protocol at all: a per-shard service, a sidecar
//! service and a router of a test's own, reached from any shard with `invoke_on`, `call` and the
//! sidecar service's bounded inbox. This is what the assembler (`src/node.rs`) does for the
//! real protocols, so it shows the core is protocol free, and it drives each path directly.

mod common;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imks::http::parse::RequestHead;
use imks::http::Response;
use imks::shard::launch::Launched;
use imks::shard::route::{HttpHandler, ResponseFuture};
use imks::shard::{Route, Router, Shard, ShardService, ShardSetup};
use imks::sidecar::{ServiceContext, SidecarService};
use tokio::sync::{mpsc, oneshot};

/// A sidecar service: doubles numbers the shards send it, counts them in its state, and when
/// the node stops records how many it had answered ("flushes").
struct Doubler {
    inbox: mpsc::Receiver<(u64, oneshot::Sender<u64>)>,
    flushed: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

impl SidecarService for Doubler {
    fn name(&self) -> &'static str {
        "doubler"
    }

    fn run(mut self: Box<Self>, ctx: ServiceContext) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async move {
            ctx.set_state("ok, 0 answered");
            let mut answered = 0u64;
            loop {
                tokio::select! {
                    work = self.inbox.recv() => {
                        let Some((n, reply)) = work else { break };
                        let _ = reply.send(n * 2);
                        answered += 1;
                        ctx.set_state(format!("ok, {answered} answered"));
                    }
                    _ = ctx.stopping() => break,
                }
            }
            self.flushed.store(answered, Ordering::SeqCst);
            self.stopped.store(true, Ordering::SeqCst);
        })
    }
}

/// A shard's handle on the doubler: the sending end of its bounded inbox.
struct DoublerHandle(mpsc::Sender<(u64, oneshot::Sender<u64>)>);

/// A per-shard service: how many times it was hit, and how many ticks it saw.
#[derive(Default)]
struct Counter {
    hits: Cell<u64>,
    ticks: Cell<u64>,
}

impl ShardService for Counter {
    fn on_tick(&self, _shard: &Shard) {
        self.ticks.set(self.ticks.get() + 1);
    }
}

/// `/call/N`: asks shard N's counter for a hit with `Shard::call` and answers with what that
/// shard said. `/post/N`: hits shard N's counter with `Shard::invoke_on`, without waiting.
/// `/count`: this shard's hits and ticks.
struct Routes;

struct Handler(&'static str, usize);

impl HttpHandler for Handler {
    fn respond<'a>(&'a self, shard: &'a Rc<Shard>, _head: &'a RequestHead, _body: &'a [u8]) -> ResponseFuture<'a> {
        Box::pin(async move {
            let (what, to) = (self.0, self.1);
            let body = match what {
                "call" => {
                    let answer = shard
                        .call(to, |owner: Rc<Shard>| async move {
                            let counter = owner.service::<Counter>()?;
                            counter.hits.set(counter.hits.get() + 1);
                            Some((owner.index, counter.hits.get()))
                        })
                        .await
                        .flatten();
                    match answer {
                        Some((index, hits)) => format!("shard {index} hits {hits}"),
                        None => "no answer".to_string(),
                    }
                }
                "double" => {
                    let Some(doubler) = shard.service::<DoublerHandle>() else {
                        return Response::new(500, "text/plain", "");
                    };
                    let (tx, rx) = oneshot::channel();
                    // Never waits on the sidecar: a full inbox is an answer of its own.
                    if doubler.0.try_send((to as u64, tx)).is_err() {
                        return Response::new(503, "text/plain", "sidecar busy");
                    }
                    match rx.await {
                        Ok(n) => format!("doubled {n}"),
                        Err(_) => "no answer".to_string(),
                    }
                }
                "sidecar" => match shard.probe_sidecar().await {
                    Some(h) => h.services.iter().map(|(name, state)| format!("{name}: {state}")).collect(),
                    None => "no answer".to_string(),
                },
                "post" => {
                    shard.invoke_on(to, |owner: &Rc<Shard>| {
                        if let Some(counter) = owner.service::<Counter>() {
                            counter.hits.set(counter.hits.get() + 1);
                        }
                    });
                    "posted".to_string()
                }
                _ => match shard.service::<Counter>() {
                    Some(c) => format!("shard {} hits {} ticks {}", shard.index, c.hits.get(), c.ticks.get()),
                    None => "no counter".to_string(),
                },
            };
            Response::new(200, "text/plain", body)
        })
    }
}

impl Router for Routes {
    fn route(&self, shard: &Rc<Shard>, head: &RequestHead) -> Route {
        let path = head.path.as_str();
        let target = |p: &str| p.parse::<usize>().ok().filter(|&n| n < shard.shard_count());
        if let Some(n) = path.strip_prefix("/call/").and_then(target) {
            return Route::Http(Rc::new(Handler("call", n)));
        }
        if let Some(n) = path.strip_prefix("/post/").and_then(target) {
            return Route::Http(Rc::new(Handler("post", n)));
        }
        if let Some(n) = path.strip_prefix("/double/").and_then(|p| p.parse::<usize>().ok()) {
            return Route::Http(Rc::new(Handler("double", n)));
        }
        match path {
            "/count" => Route::Http(Rc::new(Handler("count", shard.index))),
            "/sidecar" => Route::Http(Rc::new(Handler("sidecar", shard.index))),
            // The native protocol's upgrade, on a node that registered none of its services.
            "/ws" => match imks::chat::session::accept(shard, head) {
                Ok(handler) => Route::WebSocket(handler),
                Err(refusal) => Route::Fixed(refusal),
            },
            _ => Route::Fixed(Response::new(404, "text/plain", "not found\n")),
        }
    }
}

/// What the doubler did, read after the node stopped.
#[derive(Default, Clone)]
struct Stopped {
    flushed: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

/// Two shards, each on its own loopback address so a test knows which one it talks to.
fn start(driver: &str) -> (Launched, [SocketAddr; 2], Stopped) {
    let mut runtime = common::config(driver, 2, |f| f.server.tick_ms = 20, |_| {}).runtime;
    runtime.shards[0].listen = vec!["127.0.0.1:0".parse().expect("an address")];
    runtime.shards[1].listen = vec!["127.0.0.2:0".parse().expect("an address")];
    let (tx, inbox) = mpsc::channel(16);
    let stopped = Stopped::default();
    let doubler = Doubler { inbox, flushed: stopped.flushed.clone(), stopped: stopped.stopped.clone() };
    let setup: ShardSetup = Arc::new(move |shard: &Rc<Shard>| {
        shard.add_service(Rc::new(Counter::default()));
        shard.provide(Rc::new(DoublerHandle(tx.clone())));
        shard.set_router(Rc::new(Routes));
    });
    let launched = Launched::start(runtime, setup, vec![Box::new(doubler)]).expect("the runtime starts");
    let addrs = [launched.shard_addrs(0)[0], launched.shard_addrs(1)[0]];
    (launched, addrs, stopped)
}

fn body(addr: SocketAddr, path: &str) -> String {
    let (status, _, body) = common::get(addr, path);
    assert_eq!(status, 200, "{path}");
    String::from_utf8(body).expect("text")
}

#[test]
fn call_runs_on_the_owner_and_brings_its_answer_back() {
    common::on_both_drivers(|driver| {
        let (_runtime, [a, b], _) = start(driver);
        assert_eq!(body(a, "/call/1"), "shard 1 hits 1", "from shard 0 to shard 1");
        assert_eq!(body(a, "/call/1"), "shard 1 hits 2");
        assert_eq!(body(b, "/call/0"), "shard 0 hits 1", "the other way");
        assert_eq!(body(b, "/call/1"), "shard 1 hits 3", "the local path");
        assert!(body(a, "/count").starts_with("shard 0 hits 1 "));
    });
}

#[test]
fn invoke_on_runs_on_the_target_shard_without_waiting() {
    common::on_both_drivers(|driver| {
        let (_runtime, [a, b], _) = start(driver);
        for _ in 0..3 {
            assert_eq!(body(a, "/post/1"), "posted");
        }
        assert_eq!(body(b, "/post/1"), "posted", "the local path");
        let hits = |addr| body(addr, "/count").split(' ').nth(3).and_then(|n| n.parse::<u64>().ok());
        assert!(common::wait_until(Duration::from_secs(5), || hits(b) == Some(4)), "shard 1 counted every post");
        assert_eq!(hits(a), Some(0), "shard 0 ran none of them");
    });
}

#[test]
fn services_take_part_in_the_ticker() {
    let (_runtime, [a, _], _) = start("epoll");
    let ticks = || body(a, "/count").split(' ').nth(5).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let first = ticks();
    assert!(common::wait_until(Duration::from_secs(5), || ticks() >= first + 3), "on_tick runs every tick");
}

#[test]
fn a_protocol_whose_services_are_missing_fails_closed() {
    let (_runtime, [a, _], _) = start("epoll");
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (status, _, body) = common::http(a, request);
    assert_eq!(status, 500, "no gate, no upgrade");
    let body = String::from_utf8(body).expect("text");
    assert!(body.contains("Gate"), "the refusal names what is missing: {body}");
}

#[test]
fn sidecar_services_answer_every_shard_report_their_state_and_stop_with_the_node() {
    let (mut runtime, [a, b], stopped) = start("io_uring");
    assert_eq!(body(a, "/double/21"), "doubled 42");
    assert_eq!(body(b, "/double/5"), "doubled 10");
    assert_eq!(body(a, "/sidecar"), "doubler: ok, 2 answered", "its state, in the sidecar's health");
    assert!(!stopped.stopped.load(Ordering::SeqCst));
    assert!(runtime.stop_and_join(), "every thread ends, the sidecar too");
    assert!(stopped.stopped.load(Ordering::SeqCst), "told to stop when the node stopped");
    assert_eq!(stopped.flushed.load(Ordering::SeqCst), 2, "and finished what it held before the sidecar ended");
}
