//! The NATS transport of the bridge: core NATS, one subscription per subject.
//!
//! The connection is made with `no_echo`, so a node never receives its own envelopes, and
//! reconnects forever with the client's backoff; the client subscribes again to every live
//! subject after a reconnect. A subscription, and its end, is counted in the gauge once the
//! client has flushed it to the server.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::bridge::{Inbound, Outgoing, Targets, Transport};
use super::stats::{ClusterStats, DropReason};
use super::subject::SubjectKind;
use super::ClusterConfig;

pub(super) struct Nats {
    client: async_nats::Client,
    inbound: Rc<Inbound>,
    stats: Arc<ClusterStats>,
    /// Ends each subscription: its reader unsubscribes, flushes, and counts it.
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
        let options = async_nats::ConnectOptions::new()
            .no_echo()
            .name(format!("imks {}", cfg.node_id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(cfg.connect_timeout)
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
        let client = options.connect(cfg.url.as_str()).await?;
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
        let (confirm, stats) = (self.client.clone(), self.stats.clone());
        tokio::task::spawn_local(async move {
            if confirm.flush().await.is_ok() {
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
                        Some(m) => inbound.route(kind, &name, m.payload, &targets.borrow()),
                        None => break,
                    },
                    _ = &mut stopped => {
                        let _ = subscriber.unsubscribe().await;
                        let _ = client.flush().await;
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

    fn round_trip(&self) -> Pin<Box<dyn Future<Output = bool>>> {
        let client = self.client.clone();
        Box::pin(async move { client.flush().await.is_ok() })
    }

    async fn close(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.client.flush()).await;
        // Dropping the stops ends the readers.
        drop(self.stops);
    }
}
