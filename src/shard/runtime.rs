//! A shard's life: its pinned thread and I/O driver (io_uring, else epoll), the tasks it
//! starts, its SO_REUSEPORT listeners and accept loop, the sidecar link, and the drain at
//! shutdown.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpListener;
use slab::Slab;

use super::config::DriverChoice;
use super::conn::{Conn, Phase};
use super::rooms::RoomTable;
use super::{coalesce, http, messages, pacing, route, timers, Shard, ShardError, ShardInit};
use crate::metrics::{self, CloseReason, DriverKind};
use crate::ring::ShardRings;
use crate::sidecar::{FromSidecar, SidecarHealth, ToSidecar};
use crate::util::LocalEvent;

thread_local! {
    /// The shard running on this thread: one shard per thread is the design's invariant, and
    /// code that only gets `&Shard` (handlers) uses this to spawn work that outlives the call.
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// The shard that runs on this thread, if any.
pub fn current() -> Option<Rc<Shard>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs a shard on the current thread until the node shuts down. Called on the shard's thread.
pub fn run(init: ShardInit) {
    let index = init.cfg.index;
    if let Some(cpu) = init.cfg.cpu {
        if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
            tracing::warn!(shard = index, cpu, error = ?e, "cannot pin shard to its CPU");
        }
    }
    let cfg = init.node.config.clone();
    let want_uring = cfg.driver != DriverChoice::Epoll;
    if want_uring {
        let urb = io_uring_builder();
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(cfg.uring_entries)
            .uring_builder(urb)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                init.node.stats[index].set_driver(DriverKind::IoUring);
                tracing::info!(shard = index, driver = "io_uring", cpu = ?init.cfg.cpu, "shard starting");
                rt.block_on(shard_main(init));
                return;
            }
            Err(e) if cfg.driver == DriverChoice::Auto => {
                tracing::warn!(shard = index, error = %e, "io_uring unavailable; falling back to epoll");
            }
            Err(source) => {
                let _ = init.ready.send(Err(ShardError::Runtime { shard: index, driver: "io_uring", source }));
                return;
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build() {
        Ok(mut rt) => {
            init.node.stats[index].set_driver(DriverKind::Epoll);
            tracing::info!(shard = index, driver = "epoll", cpu = ?init.cfg.cpu, "shard starting");
            rt.block_on(shard_main(init));
        }
        Err(source) => {
            let _ = init.ready.send(Err(ShardError::Runtime { shard: index, driver: "epoll", source }));
        }
    }
}

/// io_uring flags measured to help on these machines (runtime-notes): cooperative task running
/// and a single issuer, since only this thread ever submits to the ring.
fn io_uring_builder() -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    b.setup_coop_taskrun().setup_single_issuer();
    b
}

async fn shard_main(init: ShardInit) {
    let ShardInit { cfg, node, rings, sidecar, ready, setup } = init;
    let index = cfg.index;
    let ShardRings { outboxes, inboxes, bell, .. } = rings;
    let node_config = node.config.clone();
    let shard = Rc::new(Shard {
        index,
        stats: node.stats[index].clone(),
        cfg,
        node,
        conns: RefCell::new(Slab::new()),
        next_generation: Cell::new(0),
        rooms: RefCell::new(RoomTable::default()),
        outboxes: RefCell::new(outboxes),
        ring_waiters: RefCell::new(Vec::new()),
        sidecar_tx: RefCell::new(Some(sidecar.tx)),
        probes: RefCell::new(HashMap::new()),
        next_probe: Cell::new(0),
        backlog: RefCell::new((0..node_config.shards.len()).map(|_| Default::default()).collect()),
        backlog_waker: RefCell::new(None),
        services: RefCell::default(),
        router: RefCell::new(Rc::new(route::NotFound)),
        pacing: pacing::Pacing::default(),
        stopping: LocalEvent::default(),
        drained: LocalEvent::default(),
        read_scratch: RefCell::new(vec![0; node_config.http.read_buffer_bytes]),
        coalesce: coalesce::Coalescer::default(),
    });

    CURRENT.with(|c| *c.borrow_mut() = Some(shard.clone()));
    monoio::spawn(messages::ring_pump(shard.clone(), inboxes, bell));
    monoio::spawn(messages::backlog_pump(shard.clone()));
    monoio::spawn(sidecar_pump(shard.clone(), sidecar.rx));
    monoio::spawn(timers::ticker(shard.clone()));
    setup(&shard);
    if let Some(c) = node_config.ws.coalesce {
        monoio::spawn(coalesce::flusher(shard.clone(), c.window));
    }
    serve(&shard, ready).await;
    // The pumps and the ticker never finish and monoio does not drop suspended tasks, so the
    // shard's `Rc` outlives this function: release the sidecar explicitly.
    shard.sidecar_tx.borrow_mut().take();
    shard.probes.borrow_mut().clear();
    tracing::info!(shard = index, "shard stopped");
}

/// Binds, accepts until the node stops, then drains the connections.
async fn serve(shard: &Rc<Shard>, ready: std::sync::mpsc::Sender<Result<Vec<SocketAddr>, ShardError>>) {
    let index = shard.index;

    // Bind only now that every task is in place: a bound listener gets its share of
    // connections at once, and they would hang if nothing accepted them.
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for addr in shard.cfg.listen.clone() {
        match bind_reuseport(addr) {
            Ok(l) => {
                addrs.push(l.local_addr().unwrap_or(addr));
                listeners.push(l);
            }
            Err(source) => {
                let _ = ready.send(Err(ShardError::Bind { shard: index, addr, source }));
                return;
            }
        }
    }
    let _ = ready.send(Ok(addrs));
    let mut accepting = Vec::new();
    for l in listeners {
        accepting.push(monoio::spawn(accept_loop(shard.clone(), l)));
    }
    for a in accepting {
        a.await;
    }
    // Listeners are closed (the accept loops own them and have returned): now drain.
    shard.begin_drain();
    let timeout = shard.node.config.shutdown_timeout;
    let drained = monoio::select! {
        _ = shard.drained.wait() => true,
        _ = monoio::time::sleep(timeout) => false,
    };
    if !drained {
        let left = shard.conns.borrow().len();
        tracing::warn!(shard = index, left, "shutdown timeout: dropping remaining connections");
        for (_, c) in shard.conns.borrow().iter() {
            c.abort(CloseReason::Shutdown);
        }
        // Give the aborted connections' tasks a moment to observe EOF and clean up.
        let grace = monoio::time::sleep(Duration::from_millis(200));
        monoio::select! {
            _ = shard.drained.wait() => {},
            _ = grace => {},
        }
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = shard.stopping.wait() => None,
        };
        let Some(res) = accepted else { break };
        match res {
            Ok((stream, peer)) => {
                metrics::add(&shard.stats.connections_total, 1);
                let _ = stream.set_nodelay(true);
                monoio::spawn(http::serve(shard.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = shard.index, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
}

async fn sidecar_pump(shard: Rc<Shard>, mut rx: tokio::sync::mpsc::Receiver<FromSidecar>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            FromSidecar::Probe { token, health } => {
                let waiter = shard.probes.borrow_mut().remove(&token);
                if let Some(w) = waiter {
                    let _ = w.send(health);
                }
            }
        }
    }
}

impl Shard {
    /// Asks the sidecar for its health, without ever blocking the shard: a full channel or a
    /// late answer is reported as unavailable.
    pub async fn probe_sidecar(&self) -> Option<SidecarHealth> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = self.next_probe.get().wrapping_add(1);
        self.next_probe.set(token);
        let sent = match self.sidecar_tx.borrow().as_ref() {
            Some(s) => s.try_send(ToSidecar::Probe { shard: self.index, token }).is_ok(),
            None => false,
        };
        if !sent {
            return None;
        }
        self.probes.borrow_mut().insert(token, tx);
        let answer = monoio::select! {
            r = rx => r.ok(),
            _ = monoio::time::sleep(self.node.config.sidecar_probe_timeout) => None,
        };
        self.probes.borrow_mut().remove(&token);
        answer
    }

    /// Graceful shutdown, after the listeners are closed: WebSockets get close 1001 after their
    /// queued frames, idle HTTP connections are closed, busy ones finish their response.
    fn begin_drain(&self) {
        self.each_service(|s| s.on_drain(self));
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for c in &conns {
            match c.phase.get() {
                Phase::WebSocket => self.close_session(c, 1001, "server shutting down", CloseReason::Shutdown),
                Phase::HttpIdle | Phase::HttpHead => c.interrupt_read(CloseReason::Shutdown),
                Phase::HttpBusy => {}
            }
        }
        if self.conns.borrow().is_empty() {
            self.drained.set();
        }
    }
}
