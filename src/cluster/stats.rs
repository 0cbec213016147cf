//! The bridge's counters and state, shared by the sidecar (which writes them) and every shard
//! (which reads them for `/health` and `/metrics`): atomics, no lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::subject::SubjectKind;

/// Why an envelope was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The publish queue to the bridge was full.
    PublishQueue,
    /// A shard's queue from the bridge was full.
    ShardQueue,
    /// Larger than `cluster.max_envelope_bytes`.
    TooLarge,
    /// Not an envelope (bad header, failed validation).
    Invalid,
    /// An envelope of a version this node does not read.
    Version,
    /// The backend refused the publish, or the node was disconnected.
    Backend,
    /// A request from another node, while `cluster.max_pending_requests` were being answered.
    Requests,
}

impl DropReason {
    const ALL: [DropReason; 7] = [
        DropReason::PublishQueue,
        DropReason::ShardQueue,
        DropReason::TooLarge,
        DropReason::Invalid,
        DropReason::Version,
        DropReason::Backend,
        DropReason::Requests,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::PublishQueue => "publish_queue",
            DropReason::ShardQueue => "shard_queue",
            DropReason::TooLarge => "too_large",
            DropReason::Invalid => "invalid",
            DropReason::Version => "version",
            DropReason::Backend => "backend",
            DropReason::Requests => "requests",
        }
    }

    /// The drop for an envelope error's reason label.
    pub fn from_reason(reason: &str) -> DropReason {
        if reason == "version" {
            DropReason::Version
        } else {
            DropReason::Invalid
        }
    }
}

/// How a request to the other nodes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Every node alive when it went out answered (or left).
    Complete,
    /// Some did not answer in time, or the backend was unreachable.
    Partial,
    /// Not sent: `cluster.max_pending_requests` were in flight.
    Refused,
}

impl RequestOutcome {
    const ALL: [RequestOutcome; 3] = [RequestOutcome::Complete, RequestOutcome::Partial, RequestOutcome::Refused];

    fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Complete => "complete",
            RequestOutcome::Partial => "partial",
            RequestOutcome::Refused => "refused",
        }
    }
}

const KINDS: usize = SubjectKind::ALL.len();

/// Traffic of one direction, by subject kind.
#[derive(Default)]
struct Traffic {
    messages: [AtomicU64; KINDS],
    bytes: [AtomicU64; KINDS],
}

impl Traffic {
    fn add(&self, kind: SubjectKind, bytes: usize) {
        self.messages[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.bytes[kind.index()].fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The bridge's state and counters.
#[derive(Default)]
pub struct ClusterStats {
    connected: AtomicBool,
    /// The recovery stream's epoch (its creation time, ms); 0 until it is ready.
    epoch: AtomicU64,
    last_seq: AtomicU64,
    /// Set at the first connection, so later ones count as reconnects.
    ever_connected: AtomicBool,
    /// The last measured round trip to the backend, in microseconds; 0 before the first.
    rtt_us: AtomicU64,
    out: Traffic,
    inbound: Traffic,
    subscriptions: AtomicU64,
    subscribes: AtomicU64,
    unsubscribes: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    reconnects: AtomicU64,
    /// Times envelopes from other nodes may have been lost to this node: reconnects, slow
    /// consumers, envelopes dropped for a full shard queue.
    gaps: AtomicU64,
    /// Times the flow from other nodes broke, counted as it breaks (a disconnect, a slow
    /// consumer, a full shard queue), where `gaps` counts a disconnect only once reconnected.
    breaks: AtomicU64,
    slow_consumers: AtomicU64,
    publish_queue_depth: AtomicU64,
    /// Broadcasts for the recovery stream not yet stored there ([`super::jetstream::outbox`]).
    outbox_depth: AtomicU64,
    /// Batches of the outbox sent again after a publish was not acknowledged.
    outbox_retries: AtomicU64,
    /// Other nodes alive, as the control shard knows them.
    nodes: AtomicU64,
    requests: [AtomicU64; RequestOutcome::ALL.len()],
}

impl ClusterStats {
    pub fn set_connected(&self, up: bool) {
        if self.connected.swap(up, Ordering::Relaxed) && !up {
            self.breaks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many times the flow from other nodes broke so far (see the field).
    pub fn breaks(&self) -> u64 {
        self.breaks.load(Ordering::Relaxed)
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch.max(1), Ordering::Relaxed);
    }

    /// Notes the sequence of a broadcast received from the recovery stream.
    pub fn saw_seq(&self, seq: u64) {
        self.last_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// The highest sequence received from the recovery stream so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// The recovery stream's epoch, once it is ready.
    pub fn epoch(&self) -> Option<u64> {
        let e = self.epoch.load(Ordering::Relaxed);
        (e > 0).then_some(e)
    }

    /// Whether the node was connected before (and marks that it now has been).
    pub fn connected_once(&self) -> bool {
        self.ever_connected.swap(true, Ordering::Relaxed)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_rtt(&self, rtt: std::time::Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.rtt_us.store(us, Ordering::Relaxed);
    }

    /// The last round trip, in milliseconds.
    pub fn rtt_ms(&self) -> Option<f64> {
        let us = self.rtt_us.load(Ordering::Relaxed);
        (us > 0).then(|| us as f64 / 1000.0)
    }

    pub fn sent(&self, kind: SubjectKind, bytes: usize) {
        self.out.add(kind, bytes);
    }

    pub fn received(&self, kind: SubjectKind, bytes: usize) {
        self.inbound.add(kind, bytes);
    }

    /// Bytes received on subjects of this kind so far.
    pub fn received_bytes(&self, kind: SubjectKind) -> u64 {
        self.inbound.bytes[kind.index()].load(Ordering::Relaxed)
    }

    /// Envelopes received on subjects of this kind so far.
    pub fn received_messages(&self, kind: SubjectKind) -> u64 {
        self.inbound.messages[kind.index()].load(Ordering::Relaxed)
    }

    pub fn sent_messages(&self, kind: SubjectKind) -> u64 {
        self.out.messages[kind.index()].load(Ordering::Relaxed)
    }

    pub fn subscribed(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.subscribes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unsubscribed(&self) {
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        self.unsubscribes.fetch_add(1, Ordering::Relaxed);
    }

    /// Subjects the node is subscribed to now.
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Relaxed)
    }

    pub fn dropped(&self, why: DropReason) {
        if why == DropReason::ShardQueue {
            self.breaks.fetch_add(1, Ordering::Relaxed);
            self.gaps.fetch_add(1, Ordering::Relaxed);
        }
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn drops(&self, why: DropReason) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// How many times envelopes from other nodes may have been lost to this node.
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    pub fn reconnected(&self) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slow_consumer(&self) {
        self.breaks.fetch_add(1, Ordering::Relaxed);
        self.gaps.fetch_add(1, Ordering::Relaxed);
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` envelopes the client lost because the bridge read them too slowly.
    pub fn slow_consumer_lost(&self, n: u64) {
        self.slow_consumers.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_publish_queue_depth(&self, n: usize) {
        self.publish_queue_depth.store(n as u64, Ordering::Relaxed);
    }

    pub fn set_outbox_depth(&self, n: usize) {
        self.outbox_depth.store(n as u64, Ordering::Relaxed);
    }

    pub fn outbox_retried(&self) {
        self.outbox_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_nodes(&self, n: usize) {
        self.nodes.store(n as u64, Ordering::Relaxed);
    }

    /// Other nodes alive now.
    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }

    pub fn request_done(&self, outcome: RequestOutcome) {
        self.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self, outcome: RequestOutcome) -> u64 {
        self.requests[outcome as usize].load(Ordering::Relaxed)
    }

    /// Appends the `imks_cluster_*` families to a Prometheus text.
    pub fn render(&self, out: &mut String) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP imks_cluster_up Whether the node is connected to the cluster's backend.");
        let _ = writeln!(out, "# TYPE imks_cluster_up gauge");
        let _ = writeln!(out, "imks_cluster_up {}", u8::from(self.connected()));
        let _ = writeln!(out, "# HELP imks_cluster_rtt_seconds The last measured round trip to the backend.");
        let _ = writeln!(out, "# TYPE imks_cluster_rtt_seconds gauge");
        let _ = writeln!(out, "imks_cluster_rtt_seconds {}", g(&self.rtt_us) as f64 / 1e6);
        for (name, dir, help) in [
            ("imks_cluster_sent", &self.out, "Envelopes published, by subject kind."),
            ("imks_cluster_received", &self.inbound, "Envelopes received from the backend, by subject kind."),
        ] {
            let _ = writeln!(out, "# HELP {name}_messages_total {help}");
            let _ = writeln!(out, "# TYPE {name}_messages_total counter");
            for k in SubjectKind::ALL {
                let _ =
                    writeln!(out, "{name}_messages_total{{kind=\"{}\"}} {}", k.as_str(), g(&dir.messages[k.index()]));
            }
            let _ = writeln!(out, "# HELP {name}_bytes_total {help}");
            let _ = writeln!(out, "# TYPE {name}_bytes_total counter");
            for k in SubjectKind::ALL {
                let _ = writeln!(out, "{name}_bytes_total{{kind=\"{}\"}} {}", k.as_str(), g(&dir.bytes[k.index()]));
            }
        }
        let _ = writeln!(out, "# HELP imks_cluster_recovery_epoch The epoch of the Socket.IO recovery stream (its creation time in ms); 0 while it is not ready or not used.");
        let _ = writeln!(out, "# TYPE imks_cluster_recovery_epoch gauge");
        let _ = writeln!(out, "imks_cluster_recovery_epoch {}", g(&self.epoch));
        let _ = writeln!(out, "# HELP imks_cluster_subscriptions Subjects the node is subscribed to.");
        let _ = writeln!(out, "# TYPE imks_cluster_subscriptions gauge");
        let _ = writeln!(out, "imks_cluster_subscriptions {}", g(&self.subscriptions));
        let _ = writeln!(out, "# HELP imks_cluster_subscribes_total Subscriptions made.");
        let _ = writeln!(out, "# TYPE imks_cluster_subscribes_total counter");
        let _ = writeln!(out, "imks_cluster_subscribes_total {}", g(&self.subscribes));
        let _ = writeln!(
            out,
            "# HELP imks_cluster_unsubscribes_total Subscriptions ended (after cluster.unsubscribe_delay_ms)."
        );
        let _ = writeln!(out, "# TYPE imks_cluster_unsubscribes_total counter");
        let _ = writeln!(out, "imks_cluster_unsubscribes_total {}", g(&self.unsubscribes));
        let _ = writeln!(out, "# HELP imks_cluster_dropped_total Envelopes dropped, by reason.");
        let _ = writeln!(out, "# TYPE imks_cluster_dropped_total counter");
        for d in DropReason::ALL {
            let _ = writeln!(out, "imks_cluster_dropped_total{{reason=\"{}\"}} {}", d.as_str(), self.drops(d));
        }
        let _ = writeln!(
            out,
            "# HELP imks_cluster_reconnects_total Reconnections to the backend (Redis: of either connection)."
        );
        let _ = writeln!(out, "# TYPE imks_cluster_reconnects_total counter");
        let _ = writeln!(out, "imks_cluster_reconnects_total {}", g(&self.reconnects));
        let _ = writeln!(
            out,
            "# HELP imks_cluster_slow_consumer_total Times the backend client fell behind (NATS: a subscription's buffer was full; Redis: envelopes lost past cluster.redis_inbound_buffer)."
        );
        let _ = writeln!(out, "# TYPE imks_cluster_slow_consumer_total counter");
        let _ = writeln!(out, "imks_cluster_slow_consumer_total {}", g(&self.slow_consumers));
        let _ = writeln!(out, "# HELP imks_cluster_publish_queue Envelopes waiting to be published.");
        let _ = writeln!(out, "# TYPE imks_cluster_publish_queue gauge");
        let _ = writeln!(out, "imks_cluster_publish_queue {}", g(&self.publish_queue_depth));
        let _ = writeln!(
            out,
            "# HELP imks_cluster_outbox Broadcasts waiting to be stored in the recovery stream (held while the backend is unreachable)."
        );
        let _ = writeln!(out, "# TYPE imks_cluster_outbox gauge");
        let _ = writeln!(out, "imks_cluster_outbox {}", g(&self.outbox_depth));
        let _ = writeln!(
            out,
            "# HELP imks_cluster_outbox_retries_total Batches sent to the recovery stream again, after a publish was not acknowledged."
        );
        let _ = writeln!(out, "# TYPE imks_cluster_outbox_retries_total counter");
        let _ = writeln!(out, "imks_cluster_outbox_retries_total {}", g(&self.outbox_retries));
        let _ =
            writeln!(out, "# HELP imks_cluster_nodes Other nodes alive (heard from within cluster.node_timeout_ms).");
        let _ = writeln!(out, "# TYPE imks_cluster_nodes gauge");
        let _ = writeln!(out, "imks_cluster_nodes {}", self.nodes());
        let _ = writeln!(out, "# HELP imks_cluster_requests_total Requests to the other nodes, by how they ended.");
        let _ = writeln!(out, "# TYPE imks_cluster_requests_total counter");
        for o in RequestOutcome::ALL {
            let _ = writeln!(out, "imks_cluster_requests_total{{outcome=\"{}\"}} {}", o.as_str(), self.requests(o));
        }
    }
}
