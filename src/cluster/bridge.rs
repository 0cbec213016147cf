//! The bridge: the sidecar service that talks to NATS for the whole node. Shards never do.
//!
//! - **Interest.** Each shard reports when a subject gains its first or loses its last local
//!   member ([`ToBridge::Interest`]). The bridge keeps, per subject, the shards that want it;
//!   it subscribes when the first shard does, and unsubscribes `cluster.unsubscribe_delay_ms`
//!   after the last one let go, unless one came back meanwhile. It never subscribes to a
//!   wildcard, so the node receives nothing for rooms it has no member of.
//! - **Inbound.** Each subscription is a task that checks every envelope once
//!   ([`super::Checked`]) and hands the same bytes to every shard that wants the subject,
//!   with `try_send`: a shard that is far behind loses the envelope, counted, and never holds
//!   up the others.
//! - **Outbound.** Shards `try_send` envelopes ([`ToBridge::Publish`]); the bridge publishes
//!   them in the order each shard sent them. While the backend is unreachable they are dropped
//!   and counted: local delivery goes on regardless.
//!
//! The NATS connection is made with `no_echo`, so a node never receives its own envelopes (it
//! delivered them locally already), and reconnects forever with the client's backoff; the
//! client subscribes again to every live subject after a reconnect.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::stats::{ClusterStats, DropReason};
use super::subject::SubjectKind;
use super::{Checked, ClusterConfig};
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
}

/// How a request ended.
#[derive(Clone)]
pub enum Asked {
    /// A node answered.
    Answered(Checked),
    /// No node is subscribed to the subject: nobody got the request.
    NoOne,
    /// Some node got it, none answered in time.
    TimedOut,
    /// The backend is unreachable, or the answer was not an envelope.
    Failed,
}

/// The sidecar service of the cluster.
pub struct Bridge {
    pub(super) cfg: ClusterConfig,
    pub(super) rx: mpsc::Receiver<ToBridge>,
    pub(super) shards: Vec<mpsc::Sender<Checked>>,
    pub(super) stats: Arc<ClusterStats>,
}

impl SidecarService for Bridge {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn run(self: Box<Self>, ctx: ServiceContext) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(self.serve(ctx))
    }
}

/// A live subscription.
struct Sub {
    /// The shards that want the subject; shared with the subscription's reader.
    shards: Rc<RefCell<Vec<usize>>>,
    /// Ends the subscription: its reader unsubscribes, waits for the server to have it, and
    /// counts it.
    stop: tokio::sync::oneshot::Sender<()>,
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
    async fn serve(mut self, ctx: ServiceContext) {
        ctx.set_state("connecting");
        let stats = self.stats.clone();
        let events = stats.clone();
        let options = async_nats::ConnectOptions::new()
            .no_echo()
            .name(format!("imks {}", self.cfg.node_id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(self.cfg.connect_timeout)
            .event_callback(move |event| {
                let stats = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            if stats.connected_once() {
                                stats.reconnected();
                            }
                            stats.set_connected(true);
                            tracing::info!("cluster backend connected");
                        }
                        async_nats::Event::Disconnected => {
                            stats.set_connected(false);
                            tracing::warn!("cluster backend disconnected; reconnecting");
                        }
                        async_nats::Event::SlowConsumer(_) => stats.slow_consumer(),
                        other => tracing::info!(event = %other, "cluster backend"),
                    }
                }
            });
        let client = match options.connect(self.cfg.url.as_str()).await {
            Ok(c) => c,
            Err(e) => {
                // Only a malformed address gets here: the client retries unreachable ones.
                tracing::error!(error = %e, url = %self.cfg.url, "cannot use the cluster backend");
                ctx.set_state(format!("failed: {e}"));
                ctx.stopping().await;
                return;
            }
        };
        let inbound = Rc::new(Inbound {
            shards: self.shards.clone(),
            stats: stats.clone(),
            max: self.cfg.max_envelope_bytes,
            log: RefCell::new(DropLog { last: None, quiet: 0 }),
        });
        let mut subs: HashMap<Arc<str>, Sub> = HashMap::new();
        let delay = self.cfg.unsubscribe_delay;
        let mut sweep = tokio::time::interval(delay.checked_div(4).unwrap_or(delay).max(Duration::from_millis(20)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(self.cfg.health_interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopping = ctx.stopping();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopping => break,
                msg = self.rx.recv() => match msg {
                    Some(ToBridge::Publish { kind, subject, payload }) => {
                        if !stats.connected() {
                            stats.dropped(DropReason::Backend);
                            continue;
                        }
                        let len = payload.len();
                        match client.publish(subject, payload).await {
                            Ok(()) => stats.sent(kind, len),
                            Err(_) => stats.dropped(DropReason::Backend),
                        }
                    }
                    Some(ToBridge::Request { kind, subject, payload, timeout, answer }) => {
                        if !stats.connected() {
                            stats.dropped(DropReason::Backend);
                            let _ = answer.send(Asked::Failed);
                            continue;
                        }
                        stats.sent(kind, payload.len());
                        let client = client.clone();
                        tokio::task::spawn_local(async move {
                            let request = async_nats::Request::new().payload(payload).timeout(Some(timeout));
                            let asked = match client.send_request(subject, request).await {
                                Ok(m) => Checked::new(m.payload).map_or(Asked::Failed, Asked::Answered),
                                Err(e) => match e.kind() {
                                    async_nats::RequestErrorKind::NoResponders => Asked::NoOne,
                                    async_nats::RequestErrorKind::TimedOut => Asked::TimedOut,
                                    async_nats::RequestErrorKind::Other => Asked::Failed,
                                },
                            };
                            let _ = answer.send(asked);
                        });
                    }
                    Some(ToBridge::Interest { shard, subject, on }) => {
                        self.interest(&client, &inbound, &mut subs, shard, subject, on).await;
                    }
                    None => break,
                },
                _ = sweep.tick() => {
                    let now = Instant::now();
                    let expired: Vec<Arc<str>> = subs
                        .iter()
                        .filter(|(_, s)| s.idle_since.is_some_and(|t| now.duration_since(t) >= delay))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for subject in expired {
                        if let Some(s) = subs.remove(&subject) {
                            let _ = s.stop.send(());
                        }
                    }
                    stats.set_publish_queue_depth(self.rx.len());
                    ctx.set_state(if stats.connected() { "ok" } else { "disconnected" });
                }
                _ = health.tick() => {
                    let (client, stats) = (client.clone(), stats.clone());
                    tokio::task::spawn_local(async move {
                        let start = Instant::now();
                        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
                            stats.set_rtt(start.elapsed());
                        }
                    });
                }
            }
        }
        // Publish what the shards handed over before they stopped, within the shutdown timeout.
        while let Ok(msg) = self.rx.try_recv() {
            if let ToBridge::Publish { kind, subject, payload } = msg {
                let len = payload.len();
                if client.publish(subject, payload).await.is_ok() {
                    stats.sent(kind, len);
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        drop(subs);
        stats.set_connected(false);
    }

    async fn interest(
        &self,
        client: &async_nats::Client,
        inbound: &Rc<Inbound>,
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
                if let Some(s) = subs.remove(&subject) {
                    let _ = s.stop.send(());
                }
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
        let mut subscriber = match client.subscribe(subject.to_string()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot subscribe");
                return;
            }
        };
        // Counted once the server has it (a round trip after the SUB), so the gauge says what
        // the backend routes to this node.
        let (confirm, stats) = (client.clone(), self.stats.clone());
        tokio::task::spawn_local(async move {
            if confirm.flush().await.is_ok() {
                stats.subscribed();
            }
        });
        let shards = Rc::new(RefCell::new(vec![shard]));
        let (targets, inbound, name) = (shards.clone(), inbound.clone(), subject.clone());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (client, stats) = (client.clone(), self.stats.clone());
        tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    m = subscriber.next() => match m {
                        Some(m) => inbound.route(kind, &name, m.payload, m.reply, &targets.borrow()),
                        None => break,
                    },
                    _ = &mut stopped => {
                        // Counted once the server has it, like the subscription.
                        let _ = subscriber.unsubscribe().await;
                        let _ = client.flush().await;
                        stats.unsubscribed();
                        break;
                    }
                }
            }
        });
        subs.insert(subject, Sub { shards, stop, idle_since: None });
    }
}

/// What every subscription's reader shares: the shards' queues, the counters, the bounds.
struct Inbound {
    shards: Vec<mpsc::Sender<Checked>>,
    stats: Arc<ClusterStats>,
    max: usize,
    log: RefCell<DropLog>,
}

impl Inbound {
    /// Checks one envelope and hands it to the shards that want its subject.
    fn route(
        &self,
        kind: SubjectKind,
        subject: &str,
        payload: Bytes,
        reply: Option<async_nats::Subject>,
        targets: &[usize],
    ) {
        self.stats.received(kind, payload.len());
        if payload.len() > self.max {
            self.stats.dropped(DropReason::TooLarge);
            self.log
                .borrow_mut()
                .log(subject, &format_args!("{} bytes, over cluster.max_envelope_bytes", payload.len()));
            return;
        }
        let checked = match Checked::new(payload) {
            Ok(c) => c.with_reply(reply.map(|r| Arc::from(r.as_str()))),
            Err(e) => {
                self.stats.dropped(DropReason::from_reason(e.reason()));
                self.log.borrow_mut().log(subject, &e);
                return;
            }
        };
        for &shard in targets {
            let Some(tx) = self.shards.get(shard) else { continue };
            if tx.try_send(checked.clone()).is_err() {
                self.stats.dropped(DropReason::ShardQueue);
            }
        }
    }
}
