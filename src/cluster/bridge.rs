//! The bridge: the sidecar service that talks to the cluster's backend for the whole node.
//! Shards never do. This file is the part every backend shares; a [`Transport`] is what differs
//! between them ([`super::nats`], [`super::redis`]).
//!
//! - **Interest.** Each shard reports when a subject gains its first or loses its last local
//!   member ([`ToBridge::Interest`]). The bridge keeps, per subject, the shards that want it;
//!   it subscribes when the first shard does, and unsubscribes `cluster.unsubscribe_delay_ms`
//!   after the last one let go, unless one came back meanwhile. It never subscribes to a
//!   wildcard or pattern, so the node receives nothing for rooms it has no member of.
//! - **Inbound.** The transport hands every envelope of a subscribed subject to [`Inbound`],
//!   which checks it once ([`super::Checked`]) and hands the same bytes to every shard that
//!   wants the subject, with `try_send`: a shard that is far behind loses the envelope, counted,
//!   and never holds up the others.
//! - **Outbound.** Shards `try_send` envelopes ([`ToBridge::Publish`]); the bridge publishes
//!   them in the order each shard sent them, in batches of what is already queued (up to
//!   [`PUBLISH_BATCH`]), so a backend that answers every publish (Redis) costs one round trip a
//!   batch, not one an envelope. While the backend is unreachable they are dropped and counted:
//!   local delivery goes on regardless. Broadcasts for the recovery stream are the exception:
//!   they go through the outbox ([`jetstream::outbox`]), which has each one acknowledged by the
//!   stream and holds them while the backend is unreachable.
//!
//! Both backends reconnect forever and subscribe again to every live subject after a
//! reconnect; a reconnect is counted once the backend has the subscriptions back. A node never
//! delivers its own envelopes from the backend (it delivered them locally already): NATS does
//! not send them (`no_echo`), Redis does, and [`Inbound`] drops those of this node's origin.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::jetstream::{self, Replayed, Sequenced, Sequencing};
use super::stats::{ClusterStats, DropReason};
use super::subject::SubjectKind;
use super::{Checked, ClusterBackend, ClusterConfig};
use crate::sidecar::{ServiceContext, SidecarService};

/// What a shard hands the bridge.
pub enum ToBridge {
    /// Shard `shard` now has (`on`) or no longer has local members of `subject`.
    Interest { shard: usize, subject: Arc<str>, on: bool },
    /// An envelope to publish on `subject`.
    Publish { kind: SubjectKind, subject: String, payload: Bytes },
    /// An envelope for the nodes subscribed to `subject`, whose first answer (an envelope)
    /// comes back on `answer`.
    Request { kind: SubjectKind, subject: String, payload: Bytes, timeout: Duration, answer: oneshot::Sender<Asked> },
    /// The broadcasts on `filter` from sequence `from` (sequenced mode, [`super::jetstream`]).
    Replay { filter: String, from: u64, max: usize, answer: oneshot::Sender<Replayed> },
    /// Answers once every one of `subjects` is subscribed and the server has it (or after two
    /// seconds): from then on, nothing published on them passes this node by.
    WaitLive { subjects: Vec<String>, answer: oneshot::Sender<()> },
    /// Keeps a Socket.IO session for recovery.
    PutSession { key: String, value: Bytes },
    /// A kept Socket.IO session.
    GetSession { key: String, answer: oneshot::Sender<Option<Bytes>> },
}

/// How a request ended.
#[derive(Clone)]
pub enum Asked {
    /// A node answered.
    Answered(Checked),
    /// No node is subscribed to the subject: nobody got the request.
    NoOne,
    /// Some node got it, none answered in time (or the backend cannot carry answers: Redis).
    TimedOut,
    /// The backend is unreachable, or the answer was not an envelope.
    Failed,
}

/// Most envelopes the bridge publishes in one go. Bounds how long an interest change queued
/// behind publishes waits (one batch), not memory: the envelopes are already in the bridge's
/// queue (`cluster.publish_queue`).
pub const PUBLISH_BATCH: usize = 256;

/// How long the bridge waits for a round trip (the health check, a confirmation).
pub(super) const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(2);

/// An envelope on its way out.
pub(super) struct Outgoing {
    pub kind: SubjectKind,
    pub subject: String,
    pub payload: Bytes,
}

/// The shards that want a subject: written by the bridge, read by the transport's reader for
/// every envelope of the subject.
pub(super) type Targets = Rc<RefCell<Vec<usize>>>;

/// What differs between backends: the connection, subscribing, publishing and the round trip.
/// Each implementation keeps [`ClusterStats`]'s connection state, reconnects and subscription
/// gauge itself, and hands what arrives to [`Inbound::route`].
pub(super) trait Transport {
    /// Starts delivering `subject` to `targets` (read at every envelope, so later changes to the
    /// shards count). Counted in `imks_cluster_subscriptions` once the backend has it.
    async fn subscribe(&mut self, subject: Arc<str>, kind: SubjectKind, targets: Targets);

    /// Stops delivering `subject`. Counted once the backend has it.
    fn unsubscribe(&mut self, subject: Arc<str>);

    /// Publishes `batch` in order and empties it, counting each envelope sent or dropped.
    async fn publish(&mut self, batch: &mut Vec<Outgoing>);

    /// Sends a request and waits for its first answer; spawned, so it never holds up the bridge.
    fn request(&self, subject: String, payload: Bytes, timeout: Duration) -> Pin<Box<dyn Future<Output = Asked>>>;

    /// A round trip to the backend, for `/health`; spawned, so it never holds up the bridge.
    fn round_trip(&self) -> Pin<Box<dyn Future<Output = bool>>>;

    /// Called every sweep (a quarter of the unsubscribe delay, at least every 20 ms): a chance
    /// to retry what failed.
    fn tick(&mut self) {}

    /// The NATS client, for the recovery stream ([`super::jetstream`]); `None` for Redis, where
    /// Socket.IO recovery stays on each node.
    fn nats(&self) -> Option<async_nats::Client> {
        None
    }

    /// Flushes what is on its way and lets go of the connection, within a second or two.
    async fn close(self);
}

/// The sidecar service of the cluster.
pub struct Bridge {
    pub(super) cfg: ClusterConfig,
    pub(super) rx: mpsc::Receiver<ToBridge>,
    pub(super) shards: Vec<mpsc::Sender<Checked>>,
    pub(super) stats: Arc<ClusterStats>,
    /// Sequenced Socket.IO broadcasts, when recovery is on ([`super::jetstream`]).
    pub(super) sequencing: Option<Sequencing>,
}

impl SidecarService for Bridge {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn run(self: Box<Self>, ctx: ServiceContext) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(self.serve(ctx))
    }
}

/// A subject the node is subscribed to.
struct Sub {
    /// The shards that want the subject; shared with the transport's reader.
    shards: Targets,
    /// When the last shard let go: the subscription ends `unsubscribe_delay` later.
    idle_since: Option<Instant>,
}

/// Logs a dropped envelope at most once a second, with how many went unlogged.
struct DropLog {
    last: Option<Instant>,
    quiet: u64,
}

impl DropLog {
    fn log(&mut self, subject: &str, why: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.quiet += 1;
            return;
        }
        tracing::warn!(subject, error = %why, unlogged = self.quiet, "dropped an envelope from the cluster");
        self.last = Some(now);
        self.quiet = 0;
    }
}

impl Bridge {
    async fn serve(self, ctx: ServiceContext) {
        ctx.set_state("connecting");
        let inbound = Rc::new(Inbound {
            shards: self.shards.clone(),
            stats: self.stats.clone(),
            max: self.cfg.max_envelope_bytes,
            // Only Redis sends a node its own publishes.
            echo_of: (self.cfg.backend == ClusterBackend::Redis).then(|| self.cfg.node_id.clone()),
            log: RefCell::new(DropLog { last: None, quiet: 0 }),
            live: RefCell::new(std::collections::HashSet::new()),
        });
        let connected = match self.cfg.backend {
            ClusterBackend::Nats => super::nats::Nats::connect(&self.cfg, &self.stats, &inbound)
                .await
                .map(Either::Nats)
                .map_err(BackendError::from),
            ClusterBackend::Redis => super::redis::Redis::connect(&self.cfg, &self.stats, &inbound)
                .map(Either::Redis)
                .map_err(BackendError::from),
            ClusterBackend::None => return,
        };
        match connected {
            Ok(Either::Nats(t)) => self.run(ctx, t, inbound).await,
            Ok(Either::Redis(t)) => self.run(ctx, t, inbound).await,
            Err(e) => {
                // Only a malformed address gets here: the clients retry unreachable ones.
                tracing::error!(error = %e, url = %self.cfg.url, "cannot use the cluster backend");
                ctx.set_state(format!("failed: {e}"));
                ctx.stopping().await;
            }
        }
    }

    async fn run<T: Transport>(mut self, ctx: ServiceContext, mut transport: T, inbound: Rc<Inbound>) {
        let stats = self.stats.clone();
        let sequenced: Rc<RefCell<Option<Sequenced>>> = Rc::new(RefCell::new(None));
        if let (Some(s), Some(client)) = (self.sequencing.clone(), transport.nats()) {
            let (stats, slot, prefix) = (stats.clone(), sequenced.clone(), self.cfg.prefix.clone());
            tokio::task::spawn_local(async move {
                loop {
                    if stats.connected() {
                        match jetstream::ensure(&client, &prefix, &s).await {
                            Ok(seq) => {
                                stats.set_epoch(seq.epoch);
                                *slot.borrow_mut() = Some(seq);
                                return;
                            }
                            Err(e) => tracing::warn!(error = %e, "Socket.IO recovery across nodes is not ready"),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
        // Broadcasts for the recovery stream go through the outbox (acknowledged, in order,
        // held while the backend is unreachable); the rest straight to the transport.
        let outbox = match (&self.sequencing, transport.nats()) {
            (Some(_), Some(_)) => {
                // Bounded as the shards' queue to the bridge is; the outbox takes from it what
                // it can hold.
                let (tx, rx) = mpsc::channel(self.cfg.publish_queue);
                let task = tokio::task::spawn_local(jetstream::outbox(
                    rx,
                    sequenced.clone(),
                    stats.clone(),
                    self.cfg.node_id.clone(),
                    self.cfg.publish_queue,
                ));
                Some((tx, task))
            }
            _ => None,
        };
        let stream_subjects = format!("{}.sio.", self.cfg.prefix);
        let drops = RefCell::new(DropLog { last: None, quiet: 0 });
        let to_outbox = |batch: &mut Vec<Outgoing>| {
            if let Some((tx, _)) = &outbox {
                batch.retain_mut(|o| {
                    if !o.subject.starts_with(&stream_subjects) {
                        return true;
                    }
                    let (subject, payload) = (std::mem::take(&mut o.subject), std::mem::take(&mut o.payload));
                    if tx.try_send(jetstream::Pending { kind: o.kind, subject, payload }).is_err() {
                        stats.dropped(DropReason::PublishQueue);
                        drops.borrow_mut().log(&stream_subjects, &"the recovery stream's outbox is full");
                    }
                    false
                });
            }
        };
        let mut subs: HashMap<Arc<str>, Sub> = HashMap::new();
        let delay = self.cfg.unsubscribe_delay;
        let mut sweep = tokio::time::interval(delay.checked_div(4).unwrap_or(delay).max(Duration::from_millis(20)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(self.cfg.health_interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        let stopping = ctx.stopping();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopping => break,
                msg = self.rx.recv() => {
                    // What is queued already goes out with it, up to an interest change.
                    let mut next = msg;
                    while let Some(ToBridge::Publish { kind, subject, payload }) = next {
                        batch.push(Outgoing { kind, subject, payload });
                        next = if batch.len() < PUBLISH_BATCH { self.rx.try_recv().ok() } else { None };
                    }
                    to_outbox(&mut batch);
                    self.publish(&mut transport, &mut batch).await;
                    match next {
                        Some(ToBridge::Interest { shard, subject, on }) => {
                            self.interest(&mut transport, &mut subs, shard, subject, on).await;
                        }
                        Some(ToBridge::Replay { filter, from, max, answer }) => {
                            let Some(seq) = sequenced.borrow().clone() else {
                                let _ = answer.send(Replayed::Failed);
                                continue;
                            };
                            tokio::task::spawn_local(async move {
                                let read = jetstream::replay(&seq, filter, from, max, Duration::from_secs(5)).await;
                                let _ = answer.send(read);
                            });
                        }
                        Some(ToBridge::WaitLive { subjects, answer }) => {
                            let inbound = inbound.clone();
                            tokio::task::spawn_local(async move {
                                let deadline = Instant::now() + ROUND_TRIP_TIMEOUT;
                                let live = |s: &String| inbound.live.borrow().contains(s.as_str());
                                while Instant::now() < deadline && !subjects.iter().all(live) {
                                    tokio::time::sleep(Duration::from_millis(2)).await;
                                }
                                let _ = answer.send(());
                            });
                        }
                        Some(ToBridge::PutSession { key, value }) => {
                            if let Some(seq) = sequenced.borrow().clone() {
                                tokio::task::spawn_local(async move { jetstream::put_session(&seq, key, value).await });
                            }
                        }
                        Some(ToBridge::GetSession { key, answer }) => {
                            let Some(seq) = sequenced.borrow().clone() else {
                                let _ = answer.send(None);
                                continue;
                            };
                            tokio::task::spawn_local(async move {
                                let _ = answer.send(jetstream::get_session(&seq, key).await);
                            });
                        }
                        Some(ToBridge::Request { kind, subject, payload, timeout, answer }) => {
                            if !stats.connected() {
                                stats.dropped(DropReason::Backend);
                                let _ = answer.send(Asked::Failed);
                                continue;
                            }
                            stats.sent(kind, payload.len());
                            let asked = transport.request(subject, payload, timeout);
                            tokio::task::spawn_local(async move {
                                let _ = answer.send(asked.await);
                            });
                        }
                        // Never: the loop above takes every publish.
                        Some(ToBridge::Publish { .. }) => {}
                        // Closed only when every shard let go, which comes with `stopping`.
                        None if self.rx.is_closed() && self.rx.is_empty() => break,
                        None => {}
                    }
                }
                _ = sweep.tick() => {
                    let now = Instant::now();
                    let expired: Vec<Arc<str>> = subs
                        .iter()
                        .filter(|(_, s)| s.idle_since.is_some_and(|t| now.duration_since(t) >= delay))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for subject in expired {
                        subs.remove(&subject);
                        transport.unsubscribe(subject);
                    }
                    transport.tick();
                    stats.set_publish_queue_depth(self.rx.len());
                    ctx.set_state(if stats.connected() { "ok" } else { "disconnected" });
                }
                _ = health.tick() => {
                    let (round_trip, stats) = (transport.round_trip(), stats.clone());
                    tokio::task::spawn_local(async move {
                        let start = Instant::now();
                        if let Ok(true) = tokio::time::timeout(ROUND_TRIP_TIMEOUT, round_trip).await {
                            stats.set_rtt(start.elapsed());
                        }
                    });
                }
            }
        }
        // Publish what the shards handed over before they stopped, within the shutdown timeout.
        while let Ok(msg) = self.rx.try_recv() {
            if let ToBridge::Publish { kind, subject, payload } = msg {
                batch.push(Outgoing { kind, subject, payload });
                if batch.len() == PUBLISH_BATCH {
                    to_outbox(&mut batch);
                    self.publish(&mut transport, &mut batch).await;
                }
            }
        }
        to_outbox(&mut batch);
        self.publish(&mut transport, &mut batch).await;
        if let Some((tx, task)) = outbox {
            // The outbox ends once it stored what it holds (or could not, within a second).
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        transport.close().await;
        drop(subs);
        stats.set_connected(false);
    }

    async fn publish<T: Transport>(&self, transport: &mut T, batch: &mut Vec<Outgoing>) {
        if batch.is_empty() {
            return;
        }
        if !self.stats.connected() {
            for _ in batch.drain(..) {
                self.stats.dropped(DropReason::Backend);
            }
            return;
        }
        transport.publish(batch).await;
    }

    async fn interest<T: Transport>(
        &self,
        transport: &mut T,
        subs: &mut HashMap<Arc<str>, Sub>,
        shard: usize,
        subject: Arc<str>,
        on: bool,
    ) {
        if let Some(s) = subs.get_mut(&subject) {
            let mut shards = s.shards.borrow_mut();
            shards.retain(|&x| x != shard);
            if on {
                shards.push(shard);
            }
            s.idle_since = shards.is_empty().then(Instant::now);
            if shards.is_empty() && self.cfg.unsubscribe_delay.is_zero() {
                drop(shards);
                subs.remove(&subject);
                transport.unsubscribe(subject);
            }
            return;
        }
        if !on {
            return;
        }
        let Some(kind) = SubjectKind::of(&self.cfg.prefix, &subject) else {
            tracing::warn!(%subject, "a shard asked for a subject outside the cluster's prefix");
            return;
        };
        let shards = Rc::new(RefCell::new(vec![shard]));
        transport.subscribe(subject.clone(), kind, shards.clone()).await;
        subs.insert(subject, Sub { shards, idle_since: None });
    }
}

/// Why the bridge cannot use its backend at all (an unreachable one is retried, not an error).
#[derive(Debug, thiserror::Error)]
enum BackendError {
    #[error("NATS: {0}")]
    Nats(#[from] async_nats::ConnectError),
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),
}

/// The connected transport, whichever the backend.
enum Either {
    Nats(super::nats::Nats),
    Redis(super::redis::Redis),
}

/// What every reader of the backend shares: the shards' queues, the counters, the bounds.
pub(super) struct Inbound {
    shards: Vec<mpsc::Sender<Checked>>,
    stats: Arc<ClusterStats>,
    max: usize,
    /// This node's id, where the backend sends a node its own envelopes back: those are dropped
    /// uncounted (they are neither traffic from the cluster nor a fault).
    echo_of: Option<Arc<str>>,
    log: RefCell<DropLog>,
    /// Subjects the backend has confirmed it routes to this node ([`ToBridge::WaitLive`]).
    pub(super) live: RefCell<std::collections::HashSet<Arc<str>>>,
}

impl Inbound {
    /// Checks one envelope and hands it to the shards that want its subject.
    pub(super) fn route(
        &self,
        kind: SubjectKind,
        subject: &str,
        payload: Bytes,
        reply: Option<Arc<str>>,
        seq: Option<u64>,
        targets: &[usize],
    ) {
        let len = payload.len();
        if len > self.max {
            self.stats.received(kind, len);
            self.stats.dropped(DropReason::TooLarge);
            self.log.borrow_mut().log(subject, &format_args!("{len} bytes, over cluster.max_envelope_bytes"));
            return;
        }
        if let Some(s) = seq {
            self.stats.saw_seq(s);
        }
        let checked = match Checked::new(payload) {
            Ok(c) => c.with_reply(reply).with_seq(seq),
            Err(e) => {
                self.stats.received(kind, len);
                self.stats.dropped(DropReason::from_reason(e.reason()));
                self.log.borrow_mut().log(subject, &e);
                return;
            }
        };
        if self.echo_of.as_deref().is_some_and(|me| checked.view().origin.as_str() == me) {
            return;
        }
        self.stats.received(kind, len);
        for &shard in targets {
            let Some(tx) = self.shards.get(shard) else { continue };
            if tx.try_send(checked.clone()).is_err() {
                self.stats.dropped(DropReason::ShardQueue);
            }
        }
    }
}
