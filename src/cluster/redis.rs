//! The Redis transport of the bridge: pub/sub, one channel per subject, over two connections
//! (the `fred` client): a publisher, and a subscriber in subscribe mode, which Redis lets do
//! nothing else.
//!
//! - **Subscriptions** are kept level-triggered: the bridge says which subjects it wants
//!   ([`Redis::subscribe`], [`Redis::unsubscribe`] only change that and wake one task), and the
//!   task brings the server in line, `SUBSCRIBE` / `UNSUBSCRIBE` for what changed, each followed
//!   by a `PING` whose answer shows the server has it (fred answers a `SUBSCRIBE` once written,
//!   not once the server has it); only then does the gauge count it. One task in order, so an
//!   unsubscribe and a subscribe of the same subject can never cross. A failed attempt is tried
//!   again at the next sweep.
//! - **Reconnects** are fred's (forever, exponential backoff up to 4 s). A new subscriber
//!   connection has no subscriptions: the task subscribes to every wanted subject again, and
//!   only then counts the reconnect and reports the node connected. This is done here rather
//!   than with fred's `SubscriberClient::manage_subscriptions` so that it goes through the same
//!   ordered task as every other change (a resubscription racing an unsubscribe could leave
//!   the node subscribed to a subject it no longer routes, receiving bytes for nothing).
//! - **Echo.** Redis sends a node its own publishes; [`super::bridge::Inbound`] drops those
//!   (the envelope's `origin` is this node), uncounted.
//! - **Publishing** goes out in pipelines, one a batch of the bridge, so a batch costs one
//!   round trip. A publish is tried once: lost with the connection, it is dropped and counted,
//!   never sent twice (at most once, as with NATS).
//! - **Inbound** envelopes reach the bridge through fred's broadcast channel of
//!   `cluster.redis_inbound_buffer` messages; envelopes lost past it are counted as a slow
//!   consumer.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::{Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::{Builder, Message, Value};
use tokio::sync::{broadcast, Notify};

use super::bridge::{Asked, Inbound, Outgoing, Targets, Transport, ROUND_TRIP_TIMEOUT};
use super::stats::{ClusterStats, DropReason};
use super::subject::SubjectKind;
use super::ClusterConfig;

/// Most channels in one `SUBSCRIBE` when subscribing to everything again after a reconnect.
const RESUBSCRIBE_CHUNK: usize = 512;

pub(super) struct Redis {
    publisher: Client,
    subscriber: Client,
    stats: Arc<ClusterStats>,
    subs: Rc<Subscriptions>,
}

/// The subscriber's state, shared by the bridge (which changes what is wanted), the task that
/// keeps the server in line, and the reader.
struct Subscriptions {
    /// What the node wants: each subject with its kind and the shards that want it. Read by
    /// the reader for every envelope.
    wanted: RefCell<HashMap<Arc<str>, (SubjectKind, Targets)>>,
    /// What the server has, as far as a round trip showed: what the gauge counts.
    confirmed: RefCell<HashSet<Arc<str>>>,
    /// Subjects whose wanted state changed since the task last looked.
    dirty: RefCell<HashSet<Arc<str>>>,
    /// The subscriber connection is new and has none of `confirmed`.
    fresh: Cell<bool>,
    /// The last attempt failed; the next sweep wakes the task again.
    failed: Cell<bool>,
    wake: Notify,
}

/// Which connection an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

/// Whether each connection is up, and has been before (so the next one is a reconnect).
#[derive(Default)]
struct Links {
    publisher: Cell<bool>,
    subscriber: Cell<bool>,
    publisher_seen: Cell<bool>,
    subscriber_seen: Cell<bool>,
}

impl Links {
    fn set(&self, role: Role, up: bool, stats: &ClusterStats) {
        let (now, seen) = match role {
            Role::Publisher => (&self.publisher, &self.publisher_seen),
            Role::Subscriber => (&self.subscriber, &self.subscriber_seen),
        };
        if up && !now.get() {
            if seen.replace(true) {
                stats.reconnected();
            }
            tracing::info!(connection = ?role, "cluster backend connected");
        } else if !up && now.get() {
            tracing::warn!(connection = ?role, "cluster backend disconnected; reconnecting");
        }
        now.set(up);
        stats.set_connected(self.publisher.get() && self.subscriber.get());
    }
}

impl Redis {
    /// Starts connecting; returns at once (fred retries an unreachable server in the
    /// background). Fails only on an address fred cannot use.
    pub(super) fn connect(
        cfg: &ClusterConfig,
        stats: &Arc<ClusterStats>,
        inbound: &Rc<Inbound>,
    ) -> Result<Redis, RedisError> {
        let mut config = Config::from_url(&cfg.url)?;
        // Retry the first connection as any later one, in the background, instead of failing.
        config.fail_fast = false;
        let connection = ConnectionConfig {
            connection_timeout: cfg.connect_timeout,
            // At most once: a publish lost with its connection is not sent again.
            max_command_attempts: 1,
            ..Default::default()
        };
        let client = |inbound_buffer: usize| {
            Builder::from_config(config.clone())
                .set_connection_config(connection.clone())
                .set_performance_config(PerformanceConfig {
                    // A command waits at most this long, a reconnect included, so the bridge is
                    // never stuck behind a connection that died unnoticed.
                    default_command_timeout: ROUND_TRIP_TIMEOUT,
                    // fred sizes every event channel of a client with it, pub/sub messages
                    // included: only the subscriber needs room for many.
                    broadcast_channel_capacity: inbound_buffer,
                    ..Default::default()
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 4000, 2))
                .build()
        };
        let publisher = client(32)?;
        let subscriber = client(cfg.redis_inbound_buffer)?;
        let subs = Rc::new(Subscriptions {
            wanted: RefCell::new(HashMap::new()),
            confirmed: RefCell::new(HashSet::new()),
            dirty: RefCell::new(HashSet::new()),
            fresh: Cell::new(false),
            failed: Cell::new(false),
            wake: Notify::new(),
        });
        let links = Rc::new(Links::default());
        // Every receiver exists before the clients connect, so no event or envelope is missed.
        tokio::task::spawn_local(read(subscriber.message_rx(), subs.clone(), inbound.clone(), stats.clone()));
        tokio::task::spawn_local(watch(publisher.clone(), Role::Publisher, subs.clone(), links.clone(), stats.clone()));
        tokio::task::spawn_local(watch(
            subscriber.clone(),
            Role::Subscriber,
            subs.clone(),
            links.clone(),
            stats.clone(),
        ));
        tokio::task::spawn_local(keep(subscriber.clone(), subs.clone(), links, stats.clone()));
        publisher.connect();
        subscriber.connect();
        Ok(Redis { publisher, subscriber, stats: stats.clone(), subs })
    }
}

impl Transport for Redis {
    async fn subscribe(&mut self, subject: Arc<str>, kind: SubjectKind, targets: Targets) {
        self.subs.wanted.borrow_mut().insert(subject.clone(), (kind, targets));
        self.subs.dirty.borrow_mut().insert(subject);
        self.subs.wake.notify_one();
    }

    fn unsubscribe(&mut self, subject: Arc<str>) {
        self.subs.wanted.borrow_mut().remove(&subject);
        self.subs.dirty.borrow_mut().insert(subject);
        self.subs.wake.notify_one();
    }

    async fn publish(&mut self, batch: &mut Vec<Outgoing>) {
        let pipeline = self.publisher.pipeline();
        let mut sizes = Vec::with_capacity(batch.len());
        for Outgoing { kind, subject, payload } in batch.drain(..) {
            sizes.push((kind, payload.len()));
            // Queues the command in memory; nothing is sent yet and nothing can fail.
            let _: Result<(), RedisError> = pipeline.publish(subject, payload).await;
        }
        let results = pipeline.try_all::<Value>().await;
        if results.len() != sizes.len() {
            // The pipeline failed as a whole (disconnected, timed out).
            for _ in &sizes {
                self.stats.dropped(DropReason::Backend);
            }
            return;
        }
        for ((kind, len), result) in sizes.into_iter().zip(results) {
            match result {
                Ok(_) => self.stats.sent(kind, len),
                Err(_) => self.stats.dropped(DropReason::Backend),
            }
        }
    }

    /// Redis pub/sub carries no answers: a request is a publish, and `PUBLISH` says how many
    /// subscribers got it. None is [`Asked::NoOne`]; some is [`Asked::TimedOut`], so a caller
    /// falls back as if no answer came (a direct message is then queued offline as well as
    /// delivered by the nodes that have the user: at least once, never lost).
    fn request(&self, subject: String, payload: Bytes, _timeout: Duration) -> Pin<Box<dyn Future<Output = Asked>>> {
        let client = self.publisher.clone();
        Box::pin(async move {
            match client.publish::<i64, _, _>(subject, payload).await {
                Ok(0) => Asked::NoOne,
                Ok(_) => Asked::TimedOut,
                Err(_) => Asked::Failed,
            }
        })
    }

    fn round_trip(&self) -> Pin<Box<dyn Future<Output = bool>>> {
        let client = self.publisher.clone();
        Box::pin(async move { client.ping::<Value>(None).await.is_ok() })
    }

    fn tick(&mut self) {
        if self.subs.failed.get() {
            self.subs.wake.notify_one();
        }
    }

    async fn close(self) {
        let quit = async {
            let _ = self.publisher.quit().await;
            let _ = self.subscriber.quit().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), quit).await;
    }
}

/// Hands every envelope of a wanted subject to the bridge's [`Inbound`].
async fn read(
    mut messages: broadcast::Receiver<Message>,
    subs: Rc<Subscriptions>,
    inbound: Rc<Inbound>,
    stats: Arc<ClusterStats>,
) {
    loop {
        match messages.recv().await {
            Ok(m) => {
                let wanted = subs.wanted.borrow();
                // Not wanted: in flight when the node let go of the subject.
                let Some((kind, targets)) = wanted.get(&*m.channel) else { continue };
                let payload = match m.value {
                    Value::Bytes(b) => b,
                    Value::String(s) => s.into_inner(),
                    // Refused as an envelope too short for its header, counted.
                    _ => Bytes::new(),
                };
                inbound.route(*kind, &m.channel, payload, None, None, &targets.borrow());
            }
            Err(broadcast::error::RecvError::Lagged(n)) => stats.slow_consumer_lost(n),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Follows one connection's events: an error means it is down (fred reconnects on its own), a
/// (re)connection that it is up; for the subscriber, up once it has its subscriptions again.
async fn watch(client: Client, role: Role, subs: Rc<Subscriptions>, links: Rc<Links>, stats: Arc<ClusterStats>) {
    let (mut errors, mut connections) = (client.error_rx(), client.reconnect_rx());
    loop {
        tokio::select! {
            // An error and the reconnection after it can both be waiting: the error first.
            biased;
            e = errors.recv() => match e {
                Ok((error, _)) => {
                    tracing::debug!(connection = ?role, %error, "cluster backend error");
                    links.set(role, false, &stats);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => links.set(role, false, &stats),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            c = connections.recv() => match c {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => match role {
                    Role::Publisher => links.set(role, true, &stats),
                    Role::Subscriber => {
                        links.set(role, false, &stats);
                        subs.fresh.set(true);
                        subs.wake.notify_one();
                    }
                },
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Brings the server's subscriptions in line with what the node wants, whenever woken.
async fn keep(client: Client, subs: Rc<Subscriptions>, links: Rc<Links>, stats: Arc<ClusterStats>) {
    loop {
        subs.wake.notified().await;
        match reconcile(&client, &subs, &links, &stats).await {
            Ok(()) => subs.failed.set(false),
            Err(e) => {
                // Tried again at the next sweep, or when the connection is back.
                tracing::debug!(error = %e, "cluster subscriptions not in line yet");
                subs.failed.set(true);
            }
        }
    }
}

async fn reconcile(
    client: &Client,
    subs: &Subscriptions,
    links: &Links,
    stats: &ClusterStats,
) -> Result<(), RedisError> {
    loop {
        if subs.fresh.get() {
            // Everything wanted now, whatever changed before.
            subs.dirty.borrow_mut().clear();
            let wanted: Vec<Arc<str>> = subs.wanted.borrow().keys().cloned().collect();
            // What is no longer wanted went with the old connection.
            subs.confirmed.borrow_mut().retain(|s| {
                let keep = subs.wanted.borrow().contains_key(s);
                if !keep {
                    stats.unsubscribed();
                }
                keep
            });
            for chunk in wanted.chunks(RESUBSCRIBE_CHUNK) {
                confirm(client, Change::Subscribe, chunk).await?;
                let mut confirmed = subs.confirmed.borrow_mut();
                for s in chunk {
                    if confirmed.insert(s.clone()) {
                        stats.subscribed();
                    }
                }
            }
            subs.fresh.set(false);
            links.set(Role::Subscriber, true, stats);
            continue;
        }
        let dirty: Vec<Arc<str>> = subs.dirty.borrow_mut().drain().collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        {
            let (wanted, confirmed) = (subs.wanted.borrow(), subs.confirmed.borrow());
            for s in &dirty {
                match (wanted.contains_key(s), confirmed.contains(s)) {
                    (true, false) => add.push(s.clone()),
                    (false, true) => remove.push(s.clone()),
                    _ => {}
                }
            }
        }
        let result = async {
            if !remove.is_empty() {
                confirm(client, Change::Unsubscribe, &remove).await?;
                let mut confirmed = subs.confirmed.borrow_mut();
                for s in remove.drain(..) {
                    confirmed.remove(&s);
                    stats.unsubscribed();
                }
            }
            if !add.is_empty() {
                confirm(client, Change::Subscribe, &add).await?;
                let mut confirmed = subs.confirmed.borrow_mut();
                for s in add.drain(..) {
                    confirmed.insert(s);
                    stats.subscribed();
                }
            }
            Ok::<(), RedisError>(())
        }
        .await;
        if let Err(e) = result {
            // Looked at again next time.
            subs.dirty.borrow_mut().extend(add.into_iter().chain(remove));
            return Err(e);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Subscribe,
    Unsubscribe,
}

/// Sends the change, then a `PING`: Redis answers in order, so its answer shows the server has
/// the change.
async fn confirm(client: &Client, change: Change, subjects: &[Arc<str>]) -> Result<(), RedisError> {
    let channels: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
    match change {
        Change::Subscribe => client.subscribe(channels).await?,
        Change::Unsubscribe => client.unsubscribe(channels).await?,
    }
    client.ping::<Value>(None).await?;
    Ok(())
}
