//! Sequenced Socket.IO broadcasts for connection-state recovery across nodes, on JetStream.
//!
//! With `[socketio] recovery_window_ms` set in a cluster, every broadcast is published on its
//! `sio` subject, which the stream `<prefix>_sio` keeps for the recovery window; the stream
//! republishes each one on the matching `sioseq` subject with its sequence (`Nats-Sequence`),
//! and nodes with members subscribe to those instead. Every node, the sender's included,
//! delivers a broadcast only as it comes back sequenced, so every socket receives a namespace's
//! broadcasts in the stream's one order, and the offset a client last saw
//! (`<epoch>-<sequence>`) says exactly what it has: a recovering client, on any node, gets the
//! matching broadcasts after it, read back from the stream, once each and in order.
//!
//! A socket's session (id, namespace, rooms) is kept in the stream `<prefix>_sio_sessions`
//! (the last message of its subject `<prefix>.siosess.<key>`) whenever it changes, so a node that dies with `kill -9` loses
//! nothing a client needs to recover elsewhere. The epoch is the stream's creation time: a
//! stream created again (a NATS that lost its storage) is a new epoch, and recovering from an
//! older one fails (`recovered` is false) rather than leaving a silent gap.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::Checked;

/// The stream and bucket behind sequenced broadcasts.
#[derive(Debug, Clone)]
pub struct Sequencing {
    /// How long broadcasts and sessions are kept: the recovery window.
    pub window: Duration,
    /// Most broadcasts the stream keeps; older ones go first.
    pub max_messages: i64,
}

/// The stream's name for a prefix.
pub fn stream_name(prefix: &str) -> String {
    format!("{prefix}_sio")
}

fn sessions_name(prefix: &str) -> String {
    format!("{prefix}_sio_sessions")
}

/// What the bridge holds once the stream and bucket exist.
#[derive(Clone)]
pub struct Sequenced {
    pub stream: stream::Stream,
    /// The last state of each session, one subject per session (a stream rather than the
    /// key-value API, which NATS 2.9 and this client disagree on).
    pub sessions: stream::Stream,
    js: jetstream::Context,
    prefix: String,
    /// The stream's creation time in milliseconds: the epoch of its offsets.
    pub epoch: u64,
}

/// Why the stream or bucket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SequencingError {
    #[error("cannot create the stream: {0}")]
    Stream(String),
    #[error("cannot create the session stream: {0}")]
    Bucket(String),
}

/// Finds or creates the stream and the session bucket.
pub async fn ensure(client: &async_nats::Client, prefix: &str, s: &Sequencing) -> Result<Sequenced, SequencingError> {
    let js = jetstream::new(client.clone());
    let config = stream::Config {
        name: stream_name(prefix),
        subjects: vec![format!("{prefix}.sio.>")],
        max_age: s.window,
        max_messages: s.max_messages,
        storage: stream::StorageType::File,
        republish: Some(stream::Republish {
            source: format!("{prefix}.sio.>"),
            destination: format!("{prefix}.sioseq.>"),
            headers_only: false,
        }),
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(config).await.map_err(|e| SequencingError::Stream(e.to_string()))?;
    let created = stream.info().await.map_err(|e| SequencingError::Stream(e.to_string()))?.created;
    let epoch = u64::try_from(created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let sessions = stream::Config {
        name: sessions_name(prefix),
        subjects: vec![format!("{prefix}.siosess.>")],
        max_age: s.window,
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let sessions = js.get_or_create_stream(sessions).await.map_err(|e| SequencingError::Bucket(e.to_string()))?;
    Ok(Sequenced { stream, sessions, epoch, js, prefix: prefix.to_string() })
}

/// The sequence of a republished message, from its `Nats-Sequence` header.
pub fn sequence_of(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    headers?.get(async_nats::header::NATS_SEQUENCE)?.as_str().trim().parse().ok()
}

/// What a replay read.
pub enum Replayed {
    /// The broadcasts on `filter` after the start, in order, with their sequences; `complete`
    /// is false when the stream no longer holds the start (evicted: recovery must fail).
    Read {
        messages: Vec<(u64, Checked)>,
        complete: bool,
    },
    Failed,
}

/// Reads the broadcasts on `filter` from sequence `from` up to the stream's last one (at most
/// `max`), within `timeout`.
pub async fn replay(seq: &Sequenced, filter: String, from: u64, max: usize, timeout: Duration) -> Replayed {
    let read = async {
        let mut stream = seq.stream.clone();
        let info = stream.info().await.ok()?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let complete = from >= first || from == 0;
        if from > last {
            return Some(Replayed::Read { messages: Vec::new(), complete });
        }
        let config = consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.ok()?;
        let mut messages = consumer.messages().await.ok()?;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(Ok(m)) = messages.next().await else { break };
            let Ok(info) = m.info() else { break };
            let (at, pending) = (info.stream_sequence, info.pending);
            if at > last {
                break;
            }
            if let Ok(c) = Checked::new(m.message.payload.clone()) {
                out.push((at, c));
            }
            if pending == 0 || at >= last {
                break;
            }
        }
        Some(Replayed::Read { messages: out, complete })
    };
    tokio::time::timeout(timeout, read).await.ok().flatten().unwrap_or(Replayed::Failed)
}

fn session_subject(seq: &Sequenced, key: &str) -> String {
    let mut s = format!("{}.siosess.", seq.prefix);
    super::subject::push_token(&mut s, key);
    s
}

/// Keeps a session's state (as the caller encoded it) under `key`, once stored.
pub async fn put_session(seq: &Sequenced, key: String, value: Bytes) {
    let stored = match seq.js.publish(session_subject(seq, &key), value).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = stored {
        tracing::warn!(error = %e, "cannot keep a Socket.IO session for recovery");
    }
}

/// A session's state, if the stream still holds it.
pub async fn get_session(seq: &Sequenced, key: String) -> Option<Bytes> {
    let m = seq.sessions.get_last_raw_message_by_subject(&session_subject(seq, &key)).await.ok()?;
    Some(m.payload)
}

/// A broadcast on its way into the recovery stream.
pub(super) struct Pending {
    pub kind: super::subject::SubjectKind,
    pub subject: String,
    pub payload: Bytes,
}

/// How long the outbox waits for the stream to acknowledge a batch before it sends the batch
/// again.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outbox: puts the node's broadcasts into the recovery stream, each acknowledged, in the
/// order the shards handed them over, each once.
///
/// A publish over core NATS is lost unseen when the connection breaks: the client drops what it
/// had written but the server had not read, and what was queued while it was down. In the
/// stream that would be a gap nobody can see, on every node (the stream's sequences have none).
/// So each broadcast goes out as a JetStream publish with a message id
/// (`<node>-<incarnation>-<n>`, the incarnation random at every start, so a node restarted
/// under the same `cluster.node_id` is not taken for a repeat of its former self), one batch at
/// a time: the next batch only after the stream acknowledged every one of the last.
/// A batch not acknowledged within [`ACK_TIMEOUT`] is sent again, whole, once the backend is
/// reachable; the stream's de-duplication (by message id, within its two-minute window) keeps
/// what it stored already once. Nothing after the batch went out meanwhile, so the order holds.
///
/// While the backend is unreachable the broadcasts wait here, up to `max` and as many more in
/// `rx` (past that the bridge drops them, counted and logged), and go out once it is back.
/// Those were delivered on their node as it went, with node-local offsets
/// (`SocketIo::broadcast`), to sockets that take nothing more from the stream.
pub(super) async fn outbox(
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
    sequenced: std::rc::Rc<std::cell::RefCell<Option<Sequenced>>>,
    stats: std::sync::Arc<super::stats::ClusterStats>,
    node_id: std::sync::Arc<str>,
    max: usize,
) {
    let incarnation: u64 = rand::random();
    let mut queue: std::collections::VecDeque<(u64, Pending)> = std::collections::VecDeque::new();
    let mut next_id = 0u64;
    let mut closed = false;
    loop {
        if queue.is_empty() {
            if closed {
                return;
            }
            match rx.recv().await {
                Some(p) => {
                    queue.push_back((next_id, p));
                    next_id += 1;
                }
                None => return,
            }
        }
        while queue.len() < max {
            match rx.try_recv() {
                Ok(p) => {
                    queue.push_back((next_id, p));
                    next_id += 1;
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        stats.set_outbox_depth(queue.len() + rx.len());
        let js = sequenced.borrow().as_ref().filter(|_| stats.connected()).map(|s| s.js.clone());
        let Some(js) = js else {
            // Unreachable, or the stream is not ready yet: wait, then try again.
            if closed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let n = queue.len().min(super::bridge::PUBLISH_BATCH);
        let mut acks = Vec::with_capacity(n);
        for (id, p) in queue.iter().take(n) {
            let publish = jetstream::context::Publish::build()
                .message_id(format!("{node_id}-{incarnation:x}-{id}"))
                .payload(p.payload.clone());
            match js.send_publish(p.subject.clone(), publish).await {
                Ok(ack) => acks.push(ack),
                Err(_) => break,
            }
        }
        let sent = acks.len();
        let stored = tokio::time::timeout(ACK_TIMEOUT, async {
            let mut stored = 0;
            for ack in acks {
                if ack.await.is_err() {
                    break;
                }
                stored += 1;
            }
            stored
        })
        .await
        .unwrap_or(0);
        for (_, p) in queue.drain(..stored) {
            stats.sent(p.kind, p.payload.len());
        }
        stats.set_outbox_depth(queue.len() + rx.len());
        if stored < n {
            stats.outbox_retried();
            tracing::debug!(sent, stored, "the recovery stream did not acknowledge a batch; sending it again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
