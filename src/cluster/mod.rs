//! The cluster: N nodes as one service, over NATS or Redis, with fan-out that follows interest.
//!
//! A node that has no member of a room receives nothing for it. Every shard keeps a count of
//! its local members per subject ([`Cluster::join`], [`Cluster::leave`]) and tells the sidecar's
//! [`bridge`] when a subject gains its first or loses its last one; the bridge subscribes while
//! any shard wants a subject and hands each incoming envelope, checked once, to exactly those
//! shards, which deliver it to their own members. Publishing is a `try_send` to the bridge: a
//! shard never waits on the network.
//!
//! - `config`: the `[cluster]` section; [`subject`]: the subjects; [`envelope`]: the rkyv
//!   envelope between nodes; `stats`: the bridge's counters for `/health` and `/metrics`;
//!   [`bridge`]: the sidecar service, over a transport per backend (`nats`, `redis`); `peers`:
//!   who else is alive, and requests to every node with their answers gathered; this file: the
//!   per-shard [`Cluster`] service.
//!
//! Protocols plug in as a [`ClusterHandler`]: Socket.IO delivers broadcasts from other nodes
//! and answers their requests, the native protocol delivers room frames. See
//! `docs/cluster.md`.

pub mod bridge;
mod config;
pub mod envelope;
pub mod jetstream;
mod nats;
mod peers;
mod redis;
mod stats;
pub mod subject;

pub use config::{ClusterBackend, ClusterConfig, ClusterSection};
pub use envelope::{ArchivedBody, ArchivedEnvelope, Body, Envelope, EnvelopeError};
pub use peers::{Gathered, InFlight, CONTROL_SHARD};
pub use stats::{ClusterStats, DropReason, RequestOutcome};
pub use subject::{SubjectKind, Subjects};

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::shard::{Shard, ShardService};
pub use bridge::Asked;
use bridge::{Bridge, ToBridge};
use peers::Peers;

/// An envelope that passed [`envelope::decode`] whole: the only way to build one. Shared by
/// every shard it is handed to.
#[derive(Clone)]
pub struct Checked {
    payload: Bytes,
    /// Where the sender waits for an answer, when it is a request ([`Cluster::answer`]).
    reply: Option<Arc<str>>,
    /// Its place in the recovery stream, when it came sequenced ([`jetstream`]).
    seq: Option<u64>,
}

impl Checked {
    /// Checks `payload` as an envelope of this version.
    pub fn new(payload: Bytes) -> Result<Checked, EnvelopeError> {
        envelope::decode(&payload)?;
        Ok(Checked { payload, reply: None, seq: None })
    }

    fn with_reply(mut self, reply: Option<Arc<str>>) -> Checked {
        self.reply = reply;
        self
    }

    fn with_seq(mut self, seq: Option<u64>) -> Checked {
        self.seq = seq;
        self
    }

    /// Its sequence in the recovery stream, when it came sequenced.
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// Whether the sender waits for an answer.
    pub fn is_request(&self) -> bool {
        self.reply.is_some()
    }

    /// The envelope, read in place.
    pub fn view(&self) -> &ArchivedEnvelope {
        // SAFETY: `Checked::new` is the only constructor, and it ran the full bytecheck
        // validation of `envelope::decode` on exactly these bytes, which `Bytes` never lets
        // anyone change. The archive format has no alignment requirement (rkyv's `unaligned`
        // feature), so the offset of the archive in the buffer does not matter.
        unsafe { rkyv::access_unchecked::<ArchivedEnvelope>(&self.payload[2..]) }
    }

    /// The bytes the envelope arrived in, to slice frames out of without copying.
    pub fn bytes(&self) -> &Bytes {
        &self.payload
    }

    /// `part` (a slice of [`Checked::view`]) as shared bytes of the same buffer.
    pub fn share(&self, part: &[u8]) -> Bytes {
        if part.is_empty() {
            return Bytes::new();
        }
        self.payload.slice_ref(part)
    }
}

/// What the node keeps of the cluster while its shards start: the bridge's queue, each shard's
/// queue from the bridge, and the counters.
pub struct ClusterHandle {
    cfg: ClusterConfig,
    tx: mpsc::Sender<ToBridge>,
    inbound: Mutex<Vec<Option<mpsc::Receiver<Checked>>>>,
    stats: Arc<ClusterStats>,
    sequenced: bool,
}

/// Builds the bridge (for the sidecar) and the handle its shards start from. `sequencing`:
/// Socket.IO broadcasts go through the recovery stream ([`jetstream`]).
pub fn build(cfg: &ClusterConfig, shards: usize, sequencing: Option<jetstream::Sequencing>) -> (Bridge, ClusterHandle) {
    let (tx, rx) = mpsc::channel(cfg.publish_queue);
    let (mut senders, mut receivers) = (Vec::with_capacity(shards), Vec::with_capacity(shards));
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel(cfg.shard_queue);
        senders.push(tx);
        receivers.push(Some(rx));
    }
    let stats = Arc::new(ClusterStats::default());
    let sequenced = sequencing.is_some();
    let bridge = Bridge { cfg: cfg.clone(), rx, shards: senders, stats: stats.clone(), sequencing };
    let handle = ClusterHandle { cfg: cfg.clone(), tx, inbound: Mutex::new(receivers), stats, sequenced };
    (bridge, handle)
}

/// A protocol's part in the cluster: it receives the envelopes of its kind, on the shards
/// that asked for their subjects.
pub trait ClusterHandler: 'static {
    /// One envelope from another node, for this shard's members. Ignores bodies of other
    /// protocols.
    fn receive(&self, shard: &Rc<Shard>, env: &Checked);

    /// Node `node` left the cluster or was found gone (not heard from for
    /// `cluster.node_timeout_ms`): on every shard, once.
    fn node_gone(&self, _shard: &Rc<Shard>, _node: &str) {}

    /// Envelopes from other nodes may have been lost to this node: it was cut off from the
    /// backend and is connected again (core pub/sub keeps nothing for it), the backend's client
    /// fell behind, or a shard's queue was full. On every shard, at its next tick. Protocols
    /// tell their clients, so that a gap is never silent.
    fn gap(&self, _shard: &Rc<Shard>) {}
}

/// A shard's side of the cluster: its interest per subject, its publishing, and the handlers
/// that deliver what arrives.
pub struct Cluster {
    shard: usize,
    node_id: Arc<str>,
    cfg: ClusterConfig,
    subjects: Subjects,
    tx: mpsc::Sender<ToBridge>,
    stats: Arc<ClusterStats>,
    /// Local members per subject.
    interest: RefCell<HashMap<Arc<str>, u32>>,
    /// Subjects whose interest changed since the bridge was last told.
    dirty: RefCell<HashSet<Arc<str>>>,
    changed: tokio::sync::Notify,
    /// Held while interest changes are handed to the bridge, so that [`Cluster::settle`] knows
    /// the ones taken by the flusher before it were handed over too.
    flushing: tokio::sync::Mutex<()>,
    handlers: RefCell<Vec<Rc<dyn ClusterHandler>>>,
    /// The other nodes and the requests to them (on the control shard).
    peers: Peers,
    /// Socket.IO broadcasts go through the recovery stream.
    sequenced: bool,
    /// The gaps the protocols were told of ([`ClusterHandler::gap`]).
    gaps_seen: std::cell::Cell<u64>,
}

impl Cluster {
    /// Starts the shard's side: registers the service and spawns its two tasks (the inbound
    /// pump and the interest flusher). The control shard subscribes to the control subject
    /// and to the node's own.
    pub fn start(shard: &Rc<Shard>, handle: &ClusterHandle) -> Rc<Cluster> {
        let cluster = Rc::new(Cluster {
            shard: shard.index,
            node_id: handle.cfg.node_id.clone(),
            cfg: handle.cfg.clone(),
            subjects: Subjects::new(&handle.cfg.prefix),
            tx: handle.tx.clone(),
            stats: handle.stats.clone(),
            interest: RefCell::new(HashMap::new()),
            dirty: RefCell::new(HashSet::new()),
            changed: tokio::sync::Notify::new(),
            flushing: tokio::sync::Mutex::new(()),
            handlers: RefCell::new(Vec::new()),
            peers: Peers::new(),
            sequenced: handle.sequenced,
            gaps_seen: std::cell::Cell::new(handle.stats.gaps()),
        });
        shard.add_service(cluster.clone());
        if cluster.is_control() {
            cluster.join(cluster.subjects.control());
            cluster.join(cluster.subjects.node(&cluster.node_id));
        }
        let rx = handle.inbound.lock().ok().and_then(|mut v| v.get_mut(shard.index).and_then(Option::take));
        match rx {
            Some(rx) => {
                monoio::spawn(pump(shard.clone(), cluster.clone(), rx));
            }
            None => tracing::error!(shard = shard.index, "the cluster's queue for this shard was already taken"),
        }
        monoio::spawn(flush_interest(cluster.clone()));
        cluster
    }

    pub fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub fn stats(&self) -> &Arc<ClusterStats> {
        &self.stats
    }

    /// Largest envelope the other nodes accept (`cluster.max_envelope_bytes`).
    pub fn max_envelope_bytes(&self) -> usize {
        self.cfg.max_envelope_bytes
    }

    /// Adds a handler for what arrives from other nodes.
    pub fn add_handler(&self, h: Rc<dyn ClusterHandler>) {
        self.handlers.borrow_mut().push(h);
    }

    /// One more local member of `subject`; the first makes the node subscribe.
    pub fn join(&self, subject: String) {
        let mut interest = self.interest.borrow_mut();
        if let Some(n) = interest.get_mut(subject.as_str()) {
            *n += 1;
            return;
        }
        let subject: Arc<str> = subject.into();
        interest.insert(subject.clone(), 1);
        drop(interest);
        self.mark(subject);
    }

    /// One local member of `subject` fewer; the last lets the node unsubscribe.
    pub fn leave(&self, subject: &str) {
        let mut interest = self.interest.borrow_mut();
        let Some((key, n)) = interest.get_key_value(subject).map(|(k, n)| (k.clone(), *n)) else { return };
        if n > 1 {
            interest.insert(key, n - 1);
            return;
        }
        interest.remove(subject);
        drop(interest);
        self.mark(key);
    }

    /// Whether this shard has local members of `subject`.
    pub fn wants(&self, subject: &str) -> bool {
        self.interest.borrow().contains_key(subject)
    }

    fn mark(&self, subject: Arc<str>) {
        if self.dirty.borrow_mut().insert(subject) {
            self.changed.notify_one();
        }
    }

    /// Publishes an envelope to the other nodes; never waits. A full queue drops it, counted.
    pub fn publish(&self, kind: SubjectKind, subject: String, env: &Envelope) {
        let payload = Bytes::from(envelope::encode(env));
        if self.tx.try_send(ToBridge::Publish { kind, subject, payload }).is_err() {
            self.stats.dropped(DropReason::PublishQueue);
        }
    }

    /// Sends an envelope to the nodes subscribed to `subject` and waits for the first answer
    /// ([`Cluster::answer`]), at most `timeout`. Never blocks the shard: the request goes
    /// through the bridge's queue (full: [`Asked::Failed`]) and only the caller's task waits.
    pub async fn ask(&self, kind: SubjectKind, subject: String, env: &Envelope, timeout: Duration) -> Asked {
        let payload = Bytes::from(envelope::encode(env));
        let (answer, asked) = tokio::sync::oneshot::channel();
        if self.tx.try_send(ToBridge::Request { kind, subject, payload, timeout, answer }).is_err() {
            self.stats.dropped(DropReason::PublishQueue);
            return Asked::Failed;
        }
        asked.await.unwrap_or(Asked::Failed)
    }

    /// Whether Socket.IO broadcasts go through the recovery stream ([`jetstream`]).
    pub fn sequenced(&self) -> bool {
        self.sequenced
    }

    /// The broadcasts on `filter` from sequence `from`, read back from the recovery stream.
    pub async fn replay(&self, filter: String, from: u64, max: usize) -> jetstream::Replayed {
        let (answer, read) = tokio::sync::oneshot::channel();
        if self.tx.try_send(ToBridge::Replay { filter, from, max, answer }).is_err() {
            return jetstream::Replayed::Failed;
        }
        read.await.unwrap_or(jetstream::Replayed::Failed)
    }

    /// Waits until the node receives everything published on `subjects` (they are subscribed
    /// and the server has it), at most two seconds.
    pub async fn wait_live(&self, subjects: Vec<String>) {
        let (answer, done) = tokio::sync::oneshot::channel();
        if self.tx.try_send(ToBridge::WaitLive { subjects, answer }).is_ok() {
            let _ = done.await;
        }
    }

    /// Keeps a Socket.IO session's state for recovery on any node (fire and forget).
    pub fn put_session(&self, key: String, value: Bytes) {
        if self.tx.try_send(ToBridge::PutSession { key, value }).is_err() {
            self.stats.dropped(DropReason::PublishQueue);
        }
    }

    /// A kept Socket.IO session's state.
    pub async fn get_session(&self, key: String) -> Option<Bytes> {
        let (answer, got) = tokio::sync::oneshot::channel();
        self.tx.try_send(ToBridge::GetSession { key, answer }).ok()?;
        got.await.ok().flatten()
    }

    /// Answers a request ([`Cluster::ask`]); does nothing for an envelope that is none.
    pub fn answer(&self, to: &Checked, ok: bool) {
        let Some(reply) = &to.reply else { return };
        let env = self.envelope(Body::Answer(envelope::Answer { node: self.node_id.to_string(), ok }));
        self.publish(SubjectKind::Node, reply.to_string(), &env);
    }

    /// An envelope from this node.
    pub fn envelope(&self, body: Body) -> Envelope {
        Envelope { origin: self.node_id.to_string(), body }
    }

    /// Resolves once every interest change made so far on this shard is in the bridge's queue.
    /// The bridge takes its queue in order, so an envelope published after this (a reply
    /// saying that sockets joined a room) reaches the backend after the subscriptions it
    /// relies on: a broadcast to the room sent on the strength of that reply finds the node
    /// subscribed.
    pub async fn settle(&self) {
        self.flush().await;
    }

    /// Hands the bridge every interest change so far; false once the bridge is gone.
    async fn flush(&self) -> bool {
        let _turn = self.flushing.lock().await;
        let dirty: Vec<Arc<str>> = self.dirty.borrow_mut().drain().collect();
        for subject in dirty {
            let on = self.wants(&subject);
            if self.tx.send(ToBridge::Interest { shard: self.shard, subject, on }).await.is_err() {
                return false;
            }
        }
        true
    }
}

impl ShardService for Cluster {
    fn on_tick(&self, shard: &Shard) {
        self.tick_peers();
        self.announce_departures(shard);
        // A reconnect, a slow consumer, a full shard queue: something published by another
        // node may never have reached this one.
        let gaps = self.stats.gaps();
        if gaps != self.gaps_seen.replace(gaps) {
            if let Some(shard) = crate::shard::current() {
                let handlers = self.handlers.borrow().clone();
                for h in &handlers {
                    h.gap(&shard);
                }
            }
        }
    }

    fn on_drain(&self, _shard: &Shard) {
        self.say_leaving();
    }
}

impl Cluster {
    /// Tells every shard's protocols of the nodes that left or were found gone.
    fn announce_departures(&self, shard: &Shard) {
        let departed: Vec<Arc<str>> = std::mem::take(&mut *self.peers.departed.borrow_mut());
        for node in departed {
            for to in 0..shard.shard_count() {
                let node = node.clone();
                shard.invoke_on(to, move |s: &Rc<Shard>| {
                    let Some(c) = s.service::<Cluster>() else { return };
                    let handlers = c.handlers.borrow().clone();
                    for h in &handlers {
                        h.node_gone(s, &node);
                    }
                });
            }
        }
    }
}

/// Tells the bridge what changed, coalesced: a subject joined and left before the bridge heard
/// of it costs nothing, and the bridge always gets the latest state. Waits for room in the
/// bridge's queue (this task only, never the shard's work), so no change is ever lost.
async fn flush_interest(cluster: Rc<Cluster>) {
    loop {
        cluster.changed.notified().await;
        if !cluster.flush().await {
            return;
        }
    }
}

/// Hands what the bridge received to the control traffic's handler ([`Cluster::on_control`])
/// and the rest to the protocols' handlers, in arrival order.
async fn pump(shard: Rc<Shard>, cluster: Rc<Cluster>, mut rx: mpsc::Receiver<Checked>) {
    while let Some(env) = rx.recv().await {
        // The node's own envelope, from a backend that echoes (NATS runs with `no_echo`):
        // delivered locally already, and its own heartbeat or request must not make it wait
        // for itself.
        // Sequenced broadcasts are the exception: every node, their origin too, delivers them
        // as they come back from the recovery stream ([`jetstream`]).
        if env.view().origin.as_str() == &*cluster.node_id && env.seq().is_none() {
            continue;
        }
        if cluster.on_control(&env) {
            cluster.announce_departures(&shard);
            continue;
        }
        let handlers = cluster.handlers.borrow().clone();
        for h in &handlers {
            h.receive(&shard, &env);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checked_envelope_shares_its_frames_with_the_buffer() {
        let env = Envelope {
            origin: "n".into(),
            body: Body::Room(envelope::RoomFrame { room: "r".into(), frame: vec![0x81, 1, b'x'] }),
        };
        let checked = Checked::new(Bytes::from(envelope::encode(&env))).unwrap();
        let ArchivedBody::Room(r) = &checked.view().body else { panic!("not a room frame") };
        let frame = checked.share(r.frame.as_slice());
        assert_eq!(&frame[..], &[0x81, 1, b'x']);
        let range = checked.bytes().as_ptr_range();
        assert!(range.contains(&frame.as_ptr()), "sliced, not copied");
        assert!(Checked::new(Bytes::from_static(b"\xA7\x01junk")).is_err());
    }
}
