//! The NATS transport of the bridge: core NATS, one subscription per subject.
//!
//! The connection is made with `no_echo`, so a node never receives its own envelopes, and
//! reconnects forever with the client's backoff; the client subscribes again to every live
//! subject after a reconnect, and the reconnect is counted once a round trip shows the server
//! has them. A subscription, and its end, is counted in the gauge once a round trip after it
//! shows the server has it, so the gauge says what the backend routes to this node.
//!
//! The round trip is [`round_trip`], not `Client::flush`: async-nats resolves a flush once the
//! bytes are written to the socket, before the server has read them.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use tokio::sync::oneshot;

use bytes::Bytes;

use super::bridge::{Asked, Inbound, Outgoing, Targets, Transport, ROUND_TRIP_TIMEOUT};
use super::stats::{ClusterStats, DropReason};
use super::subject::SubjectKind;
use super::{Checked, ClusterConfig};

pub(super) struct Nats {
    client: async_nats::Client,
    inbound: Rc<Inbound>,
    stats: Arc<ClusterStats>,
    /// Ends each subscription: its reader unsubscribes, waits for the server to have it, and
    /// counts it.
    stops: std::collections::HashMap<Arc<str>, oneshot::Sender<()>>,
    /// Hands the subscriptions of sequenced broadcasts to their one reader.
    sequenced: tokio::sync::mpsc::UnboundedSender<SequencedSub>,
}

/// Whether a subject carries broadcasts sequenced by the recovery stream (`<p>.sioseq....`).
fn is_sequenced(subject: &str) -> bool {
    subject.split('.').nth(1) == Some("sioseq")
}

/// A subscription of sequenced broadcasts, for [`sequenced_reader`].
struct SequencedSub {
    name: Arc<str>,
    kind: SubjectKind,
    targets: Targets,
    subscriber: async_nats::Subscriber,
    stopped: oneshot::Receiver<()>,
}

/// What the sequenced reader takes from one subscription.
enum Item {
    Message {
        seq: Option<u64>,
        name: Arc<str>,
        kind: SubjectKind,
        targets: Targets,
        payload: Bytes,
    },
    /// The subscription was ended and unsubscribed.
    Ended,
}

impl Item {
    fn order(&self) -> u64 {
        match self {
            Item::Message { seq, .. } => seq.unwrap_or(0),
            Item::Ended => u64::MAX,
        }
    }
}

/// Reads every subscription of sequenced broadcasts as one: a socket in several rooms must get
/// their broadcasts in the stream's order (its last offset then says exactly what it has), and
/// a reader per subscription would interleave them as the runtime schedules them. The client
/// hands what it read from the connection, in the server's order, to the subscriptions'
/// queues in one go; this takes all that is ready across them and routes it sorted by sequence.
async fn sequenced_reader(
    mut added: tokio::sync::mpsc::UnboundedReceiver<SequencedSub>,
    inbound: Rc<Inbound>,
    client: async_nats::Client,
    stats: Arc<ClusterStats>,
) {
    use futures_util::stream::{self, SelectAll};
    use futures_util::FutureExt;
    let mut all: SelectAll<Pin<Box<dyn futures_util::Stream<Item = Item>>>> = SelectAll::new();
    loop {
        let first = tokio::select! {
            s = added.recv() => match s {
                Some(s) => {
                    let state = (Some(s.subscriber), s.stopped, s.name, s.kind, s.targets);
                    all.push(Box::pin(stream::unfold(state, |(sub, mut stopped, name, kind, targets)| async move {
                        let mut sub = sub?;
                        tokio::select! {
                            m = sub.next() => {
                                let m = m?;
                                let seq = super::jetstream::sequence_of(m.headers.as_ref());
                                let item = Item::Message { seq, name: name.clone(), kind, targets: targets.clone(), payload: m.payload };
                                Some((item, (Some(sub), stopped, name, kind, targets)))
                            }
                            _ = &mut stopped => {
                                let _ = sub.unsubscribe().await;
                                Some((Item::Ended, (None, stopped, name, kind, targets)))
                            }
                        }
                    })));
                    continue;
                }
                None => return,
            },
            Some(item) = all.next(), if !all.is_empty() => item,
        };
        let mut batch = vec![first];
        while let Some(Some(item)) = all.next().now_or_never() {
            batch.push(item);
        }
        batch.sort_by_key(Item::order);
        for item in batch {
            match item {
                Item::Message { seq, name, kind, targets, payload } => {
                    inbound.route(kind, &name, payload, None, seq, &targets.borrow())
                }
                Item::Ended => {
                    let (client, stats) = (client.clone(), stats.clone());
                    tokio::task::spawn_local(async move {
                        confirm(&client).await;
                        stats.unsubscribed();
                    });
                }
            }
        }
    }
}

impl Nats {
    /// Starts connecting; returns at once (the client retries an unreachable server in the
    /// background). Fails only on an address the client cannot use.
    pub(super) async fn connect(
        cfg: &ClusterConfig,
        stats: &Arc<ClusterStats>,
        inbound: &Rc<Inbound>,
    ) -> Result<Nats, async_nats::ConnectError> {
        let events = stats.clone();
        // The client, for the event callback's confirming round trip after a reconnect; set
        // once `connect` returns, which is before any reconnect.
        let once: Arc<OnceLock<async_nats::Client>> = Arc::new(OnceLock::new());
        let in_events = once.clone();
        let options = async_nats::ConnectOptions::new()
            .no_echo()
            .name(format!("imks {}", cfg.node_id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(cfg.connect_timeout)
            .event_callback(move |event| {
                let (stats, client) = (events.clone(), in_events.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            stats.set_connected(true);
                            if stats.connected_once() {
                                // The client sent its subscriptions again before this event
                                // came; a round trip after them shows the server has them.
                                if let Some(c) = client.get() {
                                    confirm(c).await;
                                }
                                stats.reconnected();
                            }
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
        let client = options.connect(cfg.url.as_str()).await?;
        let _ = once.set(client.clone());
        let (sequenced, added) = tokio::sync::mpsc::unbounded_channel();
        tokio::task::spawn_local(sequenced_reader(added, inbound.clone(), client.clone(), stats.clone()));
        Ok(Nats { client, inbound: inbound.clone(), stats: stats.clone(), stops: Default::default(), sequenced })
    }
}

impl Transport for Nats {
    async fn subscribe(&mut self, subject: Arc<str>, kind: SubjectKind, targets: Targets) {
        let mut subscriber = match self.client.subscribe(subject.to_string()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot subscribe");
                return;
            }
        };
        let (client, stats, inbound, name) =
            (self.client.clone(), self.stats.clone(), self.inbound.clone(), subject.clone());
        tokio::task::spawn_local(async move {
            if confirm(&client).await {
                stats.subscribed();
                inbound.live.borrow_mut().insert(name);
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        self.stops.insert(subject.clone(), stop);
        if is_sequenced(&subject) {
            // One reader for all of them, in the stream's order (see `sequenced_reader`).
            let _ = self.sequenced.send(SequencedSub { name: subject, kind, targets, subscriber, stopped });
            return;
        }
        let (inbound, name) = (self.inbound.clone(), subject);
        let (client, stats) = (self.client.clone(), self.stats.clone());
        let mut stopped = stopped;
        tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    m = subscriber.next() => match m {
                        Some(m) => {
                            let reply = m.reply.map(|r| Arc::from(r.as_str()));
                            inbound.route(kind, &name, m.payload, reply, None, &targets.borrow())
                        }
                        None => break,
                    },
                    _ = &mut stopped => {
                        let _ = subscriber.unsubscribe().await;
                        confirm(&client).await;
                        stats.unsubscribed();
                        break;
                    }
                }
            }
        });
    }

    fn unsubscribe(&mut self, subject: Arc<str>) {
        // Not live from now on; taken out here rather than when the reader ends, which may
        // come after a new subscription to the same subject is live.
        self.inbound.live.borrow_mut().remove(&subject);
        if let Some(stop) = self.stops.remove(&subject) {
            let _ = stop.send(());
        }
    }

    async fn publish(&mut self, batch: &mut Vec<Outgoing>) {
        for Outgoing { kind, subject, payload } in batch.drain(..) {
            let len = payload.len();
            match self.client.publish(subject, payload).await {
                Ok(()) => self.stats.sent(kind, len),
                Err(_) => self.stats.dropped(DropReason::Backend),
            }
        }
    }

    fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> Pin<Box<dyn Future<Output = Asked>>> {
        let client = self.client.clone();
        Box::pin(async move {
            let request = async_nats::Request::new().payload(payload).timeout(Some(timeout));
            match client.send_request(subject, request).await {
                Ok(m) => Checked::new(m.payload).map_or(Asked::Failed, Asked::Answered),
                Err(e) => match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => Asked::NoOne,
                    async_nats::RequestErrorKind::TimedOut => Asked::TimedOut,
                    async_nats::RequestErrorKind::Other => Asked::Failed,
                },
            }
        })
    }

    fn round_trip(&self) -> Pin<Box<dyn Future<Output = bool>>> {
        let client = self.client.clone();
        Box::pin(async move { round_trip(&client).await })
    }

    fn nats(&self) -> Option<async_nats::Client> {
        Some(self.client.clone())
    }

    async fn close(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.client.flush()).await;
        // Dropping the stops ends the readers.
        drop(self.stops);
    }
}

/// A round trip through the server: a request to a fresh inbox, which nobody listens on, so the
/// server answers "no responders" once it has handled everything this connection sent before.
/// False when no answer came within [`ROUND_TRIP_TIMEOUT`] (disconnected, or something such as
/// a `nats sub '>'` listens on every subject and swallowed the request).
async fn round_trip(client: &async_nats::Client) -> bool {
    let request = async_nats::Request::new().timeout(Some(ROUND_TRIP_TIMEOUT));
    match client.send_request(client.new_inbox(), request).await {
        Ok(_) => true,
        Err(e) => e.kind() == async_nats::RequestErrorKind::NoResponders,
    }
}

/// Waits until the server has what this connection sent: a [`round_trip`], or where none
/// answers, until the bytes are at least written (once connected again), so the gauge never
/// stays behind. Whether it came to that.
async fn confirm(client: &async_nats::Client) -> bool {
    round_trip(client).await || client.flush().await.is_ok()
}
