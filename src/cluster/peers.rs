//! The other nodes: who is alive, and requests to all of them.
//!
//! - **Liveness.** Every node publishes a [`Heartbeat`] on the control subject every
//!   `cluster.heartbeat_ms`, at once when its backend connects, and straight to a node it hears
//!   of for the first time (so two nodes know each other one round trip after the later one
//!   started, not a heartbeat later). A node not heard from for `cluster.node_timeout_ms` is
//!   gone; one that shuts down says so ([`Body::Leaving`]).
//! - **Requests.** A [`Request`] goes out once on the control subject; each live node answers
//!   once, on the requester's node subject, for all its shards. The request completes when
//!   every node that was alive when it went out answered, left or was found gone, or at its
//!   deadline, with the answers that came and the number of nodes that did not answer: it never
//!   waits longer, whatever the other nodes do.
//!
//! All of it runs on the node's control shard ([`CONTROL_SHARD`]), the only one subscribed to
//! the control and node subjects: a request from another shard reaches it with
//! [`crate::shard::Shard::call`]. One shard per node keeps one view of the cluster, and the
//! other shards never receive control traffic.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkyv::rancor;

use super::envelope::{ArchivedBody, ArchivedReply, Body, Heartbeat, Reply, Request, SioAnswer, SioOp};
use super::stats::{DropReason, RequestOutcome};
use super::{Checked, Cluster, SubjectKind};

/// The shard that speaks for its node in the cluster's control traffic.
pub const CONTROL_SHARD: usize = 0;

/// What a request gathered.
#[derive(Debug, Default)]
pub struct Gathered {
    /// One answer per node that answered, with its id.
    pub answers: Vec<(Arc<str>, SioAnswer)>,
    /// Nodes that were alive when the request went out and did not answer in time (or were
    /// found gone meanwhile). Nodes that announced their shutdown are not counted.
    pub missing: usize,
}

/// Another node, as last heard of.
struct Peer {
    seen: Instant,
    incarnation: u64,
}

/// A request waiting for its answers.
struct Pending {
    /// Nodes yet to answer.
    waiting: HashSet<Arc<str>>,
    /// Nodes that were waited for and found gone.
    lost: usize,
    answers: Vec<(Arc<str>, SioAnswer)>,
    /// Wakes the request once nobody is left to wait for.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Pending {
    fn stop_waiting(&mut self, node: &str, lost: bool) {
        if self.waiting.remove(node) {
            self.lost += usize::from(lost);
            self.finish_if_complete();
        }
    }

    fn finish_if_complete(&mut self) {
        if self.waiting.is_empty() {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
    }
}

/// The control shard's view of the other nodes and its requests in flight. Empty on the other
/// shards.
pub(super) struct Peers {
    /// This start of the node ([`Heartbeat::incarnation`]).
    incarnation: u64,
    known: RefCell<HashMap<Arc<str>, Peer>>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_id: Cell<u64>,
    last_beat: Cell<Option<Instant>>,
    /// Whether the backend was connected at the last tick: a new connection beats at once.
    was_up: Cell<bool>,
    /// The node said it is leaving: it beats no more, or the others would take it back.
    leaving: Cell<bool>,
    /// Requests from other nodes being answered.
    incoming: Rc<Cell<usize>>,
    /// Nodes that left or were found gone since the protocols were last told
    /// ([`ClusterHandler::node_gone`]).
    pub(super) departed: RefCell<Vec<Arc<str>>>,
}

impl Peers {
    pub(super) fn new() -> Self {
        Self {
            incarnation: rand::random(),
            known: RefCell::new(HashMap::new()),
            pending: RefCell::new(HashMap::new()),
            // Random, so that a late answer to a node's previous start matches nothing.
            next_id: Cell::new(rand::random::<u64>() >> 1),
            last_beat: Cell::new(None),
            was_up: Cell::new(false),
            leaving: Cell::new(false),
            departed: RefCell::new(Vec::new()),
            incoming: Rc::new(Cell::new(0)),
        }
    }
}

/// A request from another node being answered; counted in `cluster.max_pending_requests` until
/// dropped.
pub struct InFlight(Rc<Cell<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Forgets a request whose caller stopped waiting (its future was dropped).
struct Forget<'a> {
    cluster: &'a Cluster,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.cluster.peers.pending.borrow_mut().remove(&self.id);
    }
}

impl Cluster {
    /// Whether this shard speaks for the node in the control traffic.
    pub fn is_control(&self) -> bool {
        self.shard == CONTROL_SHARD
    }

    /// The other nodes alive now, as the control shard knows them (0 on other shards).
    pub fn live_nodes(&self) -> usize {
        self.known_alive().len()
    }

    fn known_alive(&self) -> HashSet<Arc<str>> {
        let now = Instant::now();
        let timeout = self.cfg.node_timeout;
        let known = self.peers.known.borrow();
        known.iter().filter(|(_, p)| now.duration_since(p.seen) < timeout).map(|(id, _)| id.clone()).collect()
    }

    /// Sends `op` to every other node and gathers their answers, until every node alive now
    /// answered or `timeout` (`cluster.request_timeout_ms` when `None`) passed. Runs on the
    /// control shard only; elsewhere it answers at once with nothing.
    pub async fn request(&self, op: SioOp, timeout: Option<Duration>) -> Gathered {
        if !self.is_control() {
            return Gathered::default();
        }
        let waiting = self.known_alive();
        if waiting.is_empty() {
            return Gathered::default();
        }
        let missing = waiting.len();
        if !self.stats.connected() {
            // The request could not leave: no need to wait to know nobody answers.
            self.stats.request_done(RequestOutcome::Partial);
            return Gathered { answers: Vec::new(), missing };
        }
        if self.peers.pending.borrow().len() >= self.cfg.max_pending_requests {
            self.stats.request_done(RequestOutcome::Refused);
            return Gathered { answers: Vec::new(), missing };
        }
        let id = self.next_request_id();
        let (done, finished) = tokio::sync::oneshot::channel();
        let pending = Pending { waiting, lost: 0, answers: Vec::new(), done: Some(done) };
        self.peers.pending.borrow_mut().insert(id, pending);
        let _forget = Forget { cluster: self, id };
        let env = self.envelope(Body::Request(Request { id, op }));
        self.publish(SubjectKind::Control, self.subjects.control(), &env);
        monoio::select! {
            _ = finished => {},
            _ = monoio::time::sleep(timeout.unwrap_or(self.cfg.request_timeout)) => {},
        }
        let Some(p) = self.peers.pending.borrow_mut().remove(&id) else { return Gathered::default() };
        let missing = p.waiting.len() + p.lost;
        self.stats.request_done(if missing == 0 { RequestOutcome::Complete } else { RequestOutcome::Partial });
        Gathered { answers: p.answers, missing }
    }

    /// Sends `op` to every other node, wanting no answer.
    pub fn tell_all(&self, op: SioOp) {
        let env = self.envelope(Body::Request(Request { id: 0, op }));
        self.publish(SubjectKind::Control, self.subjects.control(), &env);
    }

    fn next_request_id(&self) -> u64 {
        // 0 marks a request that wants no answer.
        let id = self.peers.next_id.get().wrapping_add(1).max(1);
        self.peers.next_id.set(id);
        id
    }

    /// Answers request `id` of node `to`.
    pub fn reply(&self, to: &str, id: u64, answer: SioAnswer) {
        let env = self.envelope(Body::Reply(Reply { id, answer }));
        self.publish(SubjectKind::Node, self.subjects.node(to), &env);
    }

    /// Admits one more request from another node, or refuses it (counted) when
    /// `cluster.max_pending_requests` are being answered already.
    pub fn begin_incoming(&self) -> Option<InFlight> {
        let n = self.peers.incoming.get();
        if n >= self.cfg.max_pending_requests {
            self.stats.dropped(DropReason::Requests);
            return None;
        }
        self.peers.incoming.set(n + 1);
        Some(InFlight(self.peers.incoming.clone()))
    }

    /// Handles the control bodies (heartbeats, departures, replies); false for any other,
    /// which goes to the protocols.
    pub(super) fn on_control(&self, env: &Checked) -> bool {
        let view = env.view();
        let origin = view.origin.as_str();
        match &view.body {
            ArchivedBody::Heartbeat(h) => self.heard(origin, h.incarnation.to_native()),
            ArchivedBody::Leaving => self.left(origin),
            ArchivedBody::Reply(r) => self.answered(origin, r),
            _ => return false,
        }
        true
    }

    fn heard(&self, origin: &str, incarnation: u64) {
        let now = Instant::now();
        let restarted = {
            let mut known = self.peers.known.borrow_mut();
            match known.get_mut(origin) {
                Some(p) => {
                    p.seen = now;
                    std::mem::replace(&mut p.incarnation, incarnation) != incarnation
                }
                None => {
                    known.insert(origin.into(), Peer { seen: now, incarnation });
                    self.stats.set_nodes(known.len());
                    self.beat_to(origin);
                    return;
                }
            }
        };
        if restarted {
            // Its previous start will not answer what it was asked.
            self.stop_waiting(origin, true);
            self.beat_to(origin);
        }
    }

    fn left(&self, origin: &str) {
        let gone = self.peers.known.borrow_mut().remove(origin).is_some();
        if gone {
            self.stats.set_nodes(self.peers.known.borrow().len());
            self.peers.departed.borrow_mut().push(origin.into());
        }
        self.stop_waiting(origin, false);
    }

    fn stop_waiting(&self, node: &str, lost: bool) {
        for p in self.peers.pending.borrow_mut().values_mut() {
            p.stop_waiting(node, lost);
        }
    }

    fn answered(&self, origin: &str, r: &ArchivedReply) {
        let mut pending = self.peers.pending.borrow_mut();
        // A late answer, to a request that already completed, or from a node not asked.
        let Some(p) = pending.get_mut(&r.id.to_native()).filter(|p| p.waiting.contains(origin)) else { return };
        let Ok(answer) = rkyv::deserialize::<SioAnswer, rancor::Error>(&r.answer) else {
            self.stats.dropped(DropReason::Invalid);
            return;
        };
        if let Some(node) = p.waiting.take(origin) {
            p.answers.push((node, answer));
        }
        p.finish_if_complete();
    }

    fn heartbeat(&self) -> super::Envelope {
        self.envelope(Body::Heartbeat(Heartbeat { incarnation: self.peers.incarnation }))
    }

    /// A heartbeat straight to one node, which has just been heard of for the first time.
    fn beat_to(&self, node: &str) {
        // Not connected yet (Redis reports the node up once both its connections are): the
        // heartbeat the tick sends on connecting reaches every node anyway.
        if self.peers.leaving.get() || !self.stats.connected() {
            return;
        }
        self.publish(SubjectKind::Node, self.subjects.node(node), &self.heartbeat());
    }

    /// The control shard's tick: beats when due (or when the backend has just connected), and
    /// forgets the nodes not heard from for `cluster.node_timeout_ms`.
    pub(super) fn tick_peers(&self) {
        if !self.is_control() || self.peers.leaving.get() {
            return;
        }
        let now = Instant::now();
        let up = self.stats.connected();
        let due = self.peers.last_beat.get().is_none_or(|t| now.duration_since(t) >= self.cfg.heartbeat);
        if up && (due || !self.peers.was_up.get()) {
            self.publish(SubjectKind::Control, self.subjects.control(), &self.heartbeat());
            self.peers.last_beat.set(Some(now));
        }
        self.peers.was_up.set(up);
        let timeout = self.cfg.node_timeout;
        let mut gone = Vec::new();
        self.peers.known.borrow_mut().retain(|id, p| {
            let alive = now.duration_since(p.seen) < timeout;
            if !alive {
                gone.push(id.clone());
            }
            alive
        });
        if !gone.is_empty() {
            self.stats.set_nodes(self.peers.known.borrow().len());
            for node in gone {
                tracing::info!(%node, "cluster node not heard from; taken for gone");
                self.stop_waiting(&node, true);
                self.peers.departed.borrow_mut().push(node);
            }
        }
    }

    /// The node is shutting down: tells the others, so they stop waiting for its answers, and
    /// beats no more (its connections may take a while to drain).
    pub(super) fn say_leaving(&self) {
        if self.is_control() && !self.peers.leaving.replace(true) {
            self.publish(SubjectKind::Control, self.subjects.control(), &self.envelope(Body::Leaving));
        }
    }
}
