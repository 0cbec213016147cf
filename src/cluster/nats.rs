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
        Ok(Nats { client, inbound: inbound.clone(), stats: stats.clone(), stops: Default::default() })
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
        let (client, stats) = (self.client.clone(), self.stats.clone());
        tokio::task::spawn_local(async move {
            if confirm(&client).await {
                stats.subscribed();
            }
        });
        let (inbound, name) = (self.inbound.clone(), subject.clone());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (client, stats) = (self.client.clone(), self.stats.clone());
        tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    m = subscriber.next() => match m {
                        Some(m) => {
                            let reply = m.reply.map(|r| Arc::from(r.as_str()));
                            inbound.route(kind, &name, m.payload, reply, &targets.borrow())
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
        self.stops.insert(subject, stop);
    }

    fn unsubscribe(&mut self, subject: Arc<str>) {
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
