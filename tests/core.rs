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
use imks::shard::config::{RingFullPolicy, RuntimeConfig};
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
    /// Set while it blocks the sidecar's thread (asked to double 0).
    blocking: Arc<AtomicBool>,
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
                        if n == 0 {
                            // A stuck client of an external service: it blocks the sidecar's
                            // thread, as a blocking call would.
                            self.blocking.store(true, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(1500));
                            self.blocking.store(false, Ordering::SeqCst);
                        }
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

struct Handler(&'static str, usize, usize);

/// Whether a shard is blocked by `/block/N/SLOT`, by slot.
static BLOCKED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

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
                "block" => {
                    // A shard that does not drain its rings for a while; `BLOCKED[slot]` says
                    // when it is (one slot per test, as tests run side by side).
                    let slot = self.2;
                    shard.invoke_on(to, move |_: &Rc<Shard>| {
                        BLOCKED[slot].store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(300));
                        BLOCKED[slot].store(false, Ordering::SeqCst);
                    });
                    "blocked".to_string()
                }
                "burst" => {
                    for _ in 0..100 {
                        shard.invoke_on(to, |owner: &Rc<Shard>| {
                            if let Some(counter) = owner.service::<Counter>() {
                                counter.hits.set(counter.hits.get() + 1);
                            }
                        });
                    }
                    "burst".to_string()
                }
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
            return Route::Http(Rc::new(Handler("call", n, 0)));
        }
        if let Some(n) = path.strip_prefix("/post/").and_then(target) {
            return Route::Http(Rc::new(Handler("post", n, 0)));
        }
        if let Some((n, slot)) = path.strip_prefix("/block/").and_then(|p| p.split_once('/')) {
            let slot = slot.parse::<usize>().ok().filter(|&s| s < BLOCKED.len());
            if let (Some(n), Some(slot)) = (target(n), slot) {
                return Route::Http(Rc::new(Handler("block", n, slot)));
            }
        }
        if let Some(n) = path.strip_prefix("/burst/").and_then(target) {
            return Route::Http(Rc::new(Handler("burst", n, 0)));
        }
        if let Some(n) = path.strip_prefix("/double/").and_then(|p| p.parse::<usize>().ok()) {
            return Route::Http(Rc::new(Handler("double", n, 0)));
        }
        match path {
            "/count" => Route::Http(Rc::new(Handler("count", shard.index, 0))),
            "/sidecar" => Route::Http(Rc::new(Handler("sidecar", shard.index, 0))),
            "/metrics" => Route::Http(Rc::new(imks::app::Metrics)),
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
    blocking: Arc<AtomicBool>,
}

/// Two shards, each on its own loopback address so a test knows which one it talks to.
fn start(driver: &str) -> (Launched, [SocketAddr; 2], Stopped) {
    start_tuned(driver, |_| {})
}

/// As [`start`], with the runtime's settings tweaked.
fn start_tuned(driver: &str, tweak: impl FnOnce(&mut RuntimeConfig)) -> (Launched, [SocketAddr; 2], Stopped) {
    let mut runtime = common::config(driver, 2, |f| f.server.tick_ms = 20, |_| {}).runtime;
    tweak(&mut runtime);
    runtime.shards[0].listen = vec!["127.0.0.1:0".parse().expect("an address")];
    runtime.shards[1].listen = vec!["127.0.0.2:0".parse().expect("an address")];
    let (tx, inbox) = mpsc::channel(16);
    let stopped = Stopped::default();
    let doubler = Doubler {
        inbox,
        flushed: stopped.flushed.clone(),
        stopped: stopped.stopped.clone(),
        blocking: stopped.blocking.clone(),
    };
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

/// Shard 1 stops draining its rings for 300 ms while shard 0 sends it 100 closures.
fn burst_while_blocked(policy: RingFullPolicy, slot: usize) -> (Launched, u64, u64) {
    let (runtime, [a, b], _) = start_tuned("epoll", |r| {
        r.ring_capacity = 4;
        r.ring_full_policy = policy;
    });
    assert_eq!(body(a, &format!("/block/1/{slot}")), "blocked");
    let blocked = || BLOCKED[slot].load(Ordering::SeqCst);
    assert!(common::wait_until(Duration::from_secs(5), blocked), "shard 1 is blocked");
    assert_eq!(body(a, "/burst/1"), "burst");
    let hits = |addr| body(addr, "/count").split(' ').nth(3).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let drops = || common::metric_sum(a, "imks_ring_drops_total{");
    // Settled: every closure either ran on shard 1 or was dropped.
    let settled = || hits(b) + drops() >= 100;
    assert!(
        common::wait_until(Duration::from_secs(10), settled),
        "the burst settles: {} ran, {} dropped",
        hits(b),
        drops()
    );
    (runtime, hits(b), drops())
}

#[test]
fn a_full_ring_under_the_drop_policy_drops_and_counts() {
    let (_runtime, ran, dropped) = burst_while_blocked(RingFullPolicy::Drop, 0);
    assert!(dropped > 0, "a 4-slot ring to a blocked shard overflows");
    assert_eq!(ran + dropped, 100, "each closure ran or was counted as dropped");
}

#[test]
fn a_full_ring_under_the_wait_policy_loses_nothing() {
    let (_runtime, ran, dropped) = burst_while_blocked(RingFullPolicy::Wait, 1);
    assert_eq!((ran, dropped), (100, 0), "every closure waits for room and runs");
}

#[test]
fn a_stuck_sidecar_fails_health_probes_at_the_probe_timeout_and_recovers() {
    let (_runtime, [a, b], doubler) = start_tuned("io_uring", |r| r.sidecar_probe_timeout = Duration::from_millis(200));
    assert_eq!(body(a, "/sidecar"), "doubler: ok, 0 answered");
    // Shard 1 asks the doubler for what blocks the sidecar's thread for 1.5 s.
    let stuck = std::thread::spawn(move || body(b, "/double/0"));
    let blocking = || doubler.blocking.load(Ordering::SeqCst);
    assert!(common::wait_until(Duration::from_secs(5), blocking), "the sidecar is stuck");
    let started = std::time::Instant::now();
    assert_eq!(body(a, "/sidecar"), "no answer", "a probe the sidecar cannot answer in time");
    let waited = started.elapsed();
    // The probe's timeout, with a wide margin below the 1.5 s the sidecar is stuck.
    assert!(waited >= Duration::from_millis(190) && waited < Duration::from_millis(1200), "{waited:?}");
    assert_eq!(stuck.join().expect("the request"), "doubled 0");
    assert!(
        common::wait_until(Duration::from_secs(5), || body(a, "/sidecar").starts_with("doubler: ok")),
        "probes are answered again"
    );
}
