//! The adapter operations, on every shard of the node and every node of the cluster:
//! socket.io's `fetchSockets`, `socketsJoin`, `socketsLeave`, `disconnectSockets` (on a
//! [`BroadcastOp`], which picks the sockets as a broadcast would) and `serverSideEmit`
//! ([`SocketIo::server_side_emit`], [`Namespace::on_server_side`](super::Namespace::on_server_side)).
//!
//! An operation is one [`SioOp`], the same value on every path: each shard of this node
//! applies it to its own sockets ([`SocketIo::apply`], reached with [`Shard::call`]), and the
//! control shard sends it to the other nodes ([`Cluster::request`]), each of which applies it on
//! all its shards and answers once ([`SocketIo::answer`]). The operation starts when it is
//! called, so a handler that does not need the result may drop the future; awaited, the result
//! says how many nodes did not answer by `cluster.request_timeout_ms`.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{ready, Either};
use rkyv::rancor;

use super::api::{ServerAck, ServerEvent};
use super::{BroadcastOp, Socket, SocketIo};
use crate::cluster::envelope::{ArchivedRequest, SioAnswer, SioOp, SioSelector, SioSocket};
use crate::cluster::{Cluster, DropReason, Gathered, CONTROL_SHARD};
use crate::shard::Shard;

/// A socket as [`BroadcastOp::fetch_sockets`] found it, on this node or another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSocket {
    pub id: String,
    pub nsp: String,
    /// Every room it is in, its own-id room included.
    pub rooms: Vec<String>,
    /// Who the client authenticated as ([`crate::auth::Identity`]).
    pub tenant: String,
    pub user_id: String,
    /// The node that holds it; `None` for this node.
    pub node: Option<Arc<str>>,
}

/// What [`BroadcastOp::fetch_sockets`] found.
#[derive(Debug, Default)]
pub struct FetchResult {
    pub sockets: Vec<RemoteSocket>,
    /// Nodes alive when the request went out that did not answer in time: their sockets are
    /// not in `sockets`.
    pub missing_nodes: usize,
    /// Some node had more matching sockets than fit in one envelope
    /// (`cluster.max_envelope_bytes`) and sent only those that fit.
    pub truncated: bool,
}

/// What [`BroadcastOp::sockets_join`], [`BroadcastOp::sockets_leave`] and
/// [`BroadcastOp::disconnect_sockets`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Sockets it applied to, on the nodes that answered.
    pub sockets: usize,
    /// Nodes alive when the request went out that did not answer in time: it may or may not
    /// have applied there.
    pub missing_nodes: usize,
}

/// One node's acknowledgement of a server-side event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAckReply {
    pub node: Arc<str>,
    /// The handler's arguments as raw JSON without brackets.
    pub args_tail: String,
}

/// What [`SocketIo::server_side_emit_with_ack`] gathered.
#[derive(Debug, Default)]
pub struct ServerAcks {
    pub acks: Vec<ServerAckReply>,
    /// Other nodes that did not acknowledge in time (no handler, a handler that never
    /// answered, or a node that stopped answering).
    pub missing_nodes: usize,
}

/// What an operation gathered: this node's shards' answers, and the other nodes'.
struct Outcome {
    local: Vec<SioAnswer>,
    remote: Gathered,
}

impl BroadcastOp<'_> {
    fn selector(&self) -> SioSelector {
        SioSelector {
            nsp: self.nsp.to_string(),
            rooms: self.target.rooms.iter().map(|r| r.to_string()).collect(),
            except_rooms: self.target.except_rooms.iter().map(|r| r.to_string()).collect(),
            except_socket: self.target.except_socket.map(str::to_string),
        }
    }

    /// The matching sockets on every node (socket.io's `fetchSockets`), with their rooms.
    pub fn fetch_sockets(self, shard: &Shard) -> impl Future<Output = FetchResult> + 'static {
        start(shard, SioOp::Fetch(self.selector()), None, |o| {
            let mut out = FetchResult { missing_nodes: o.remote.missing, ..FetchResult::default() };
            let answers = o.local.into_iter().map(|a| (None, a));
            for (node, answer) in answers.chain(o.remote.answers.into_iter().map(|(n, a)| (Some(n), a))) {
                if let SioAnswer::Sockets { sockets, truncated } = answer {
                    out.truncated |= truncated;
                    out.sockets.extend(sockets.into_iter().map(|s| RemoteSocket {
                        id: s.id,
                        nsp: s.nsp,
                        rooms: s.rooms,
                        tenant: s.tenant,
                        user_id: s.user_id,
                        node: node.clone(),
                    }));
                }
            }
            out
        })
    }

    /// The matching sockets on every node join `rooms` (socket.io's `socketsJoin`). Each join
    /// is checked as [`Socket::join`] checks it (name, `limits.max_rooms_per_session`); one
    /// refused is counted there and skipped. Once the future resolves, a broadcast to these
    /// rooms reaches the sockets of every node that answered.
    pub fn sockets_join(self, shard: &Shard, rooms: &[&str]) -> impl Future<Output = Applied> + 'static {
        let rooms = rooms.iter().map(|r| r.to_string()).collect();
        start(shard, SioOp::Join { sel: self.selector(), rooms }, None, applied)
    }

    /// The matching sockets on every node leave `rooms` (socket.io's `socketsLeave`).
    pub fn sockets_leave(self, shard: &Shard, rooms: &[&str]) -> impl Future<Output = Applied> + 'static {
        let rooms = rooms.iter().map(|r| r.to_string()).collect();
        start(shard, SioOp::Leave { sel: self.selector(), rooms }, None, applied)
    }

    /// Disconnects the matching sockets on every node (socket.io's `disconnectSockets`); with
    /// `close`, their whole connections too ([`Socket::disconnect`]).
    pub fn disconnect_sockets(self, shard: &Shard, close: bool) -> impl Future<Output = Applied> + 'static {
        start(shard, SioOp::Disconnect { sel: self.selector(), close }, None, applied)
    }
}

fn applied(o: Outcome) -> Applied {
    let count = |a: &SioAnswer| match a {
        SioAnswer::Count(n) => *n as usize,
        _ => 0,
    };
    let here: usize = o.local.iter().map(count).sum();
    let there: usize = o.remote.answers.iter().map(|(_, a)| count(a)).sum();
    Applied { sockets: here + there, missing_nodes: o.remote.missing }
}

impl SocketIo {
    /// Sends an event to namespace `nsp`'s server-side handler on every other node
    /// ([`Namespace::on_server_side`](super::Namespace::on_server_side), socket.io's
    /// `serverSideEmit`), wanting no acknowledgement. Nothing happens on a node alone.
    pub fn server_side_emit(&self, nsp: &str, event: &str, args_tail: &str) {
        if let Some(c) = self.cluster() {
            let op =
                SioOp::ServerEmit { nsp: nsp.into(), event: event.into(), args_tail: args_tail.into(), ack: false };
            c.tell_all(op);
        }
    }

    /// As [`SocketIo::server_side_emit`], and gathers each node's acknowledgement until every
    /// other live node acknowledged or `timeout` passed (socket.io's
    /// `serverSideEmitWithAck`).
    pub fn server_side_emit_with_ack(
        &self,
        shard: &Shard,
        nsp: &str,
        event: &str,
        args_tail: &str,
        timeout: Duration,
    ) -> impl Future<Output = ServerAcks> + 'static {
        let op = SioOp::ServerEmit { nsp: nsp.into(), event: event.into(), args_tail: args_tail.into(), ack: true };
        start(shard, op, Some(timeout), |o| ServerAcks {
            acks: o
                .remote
                .answers
                .into_iter()
                .filter_map(|(node, a)| match a {
                    SioAnswer::Ack(args_tail) => Some(ServerAckReply { node, args_tail }),
                    _ => None,
                })
                .collect(),
            missing_nodes: o.remote.missing,
        })
    }

    /// Applies an operation to this shard's sockets; `None` for one that is not about sockets.
    fn apply(&self, shard: &Shard, op: &SioOp) -> Option<SioAnswer> {
        let select =
            |sel: &SioSelector| self.select(&sel.nsp, &sel.rooms, &sel.except_rooms, sel.except_socket.as_deref());
        let count = |targets: &[Rc<Socket>]| SioAnswer::Count(u32::try_from(targets.len()).unwrap_or(u32::MAX));
        Some(match op {
            SioOp::Fetch(sel) => {
                SioAnswer::Sockets { sockets: select(sel).iter().map(|s| describe(s)).collect(), truncated: false }
            }
            SioOp::Join { sel, rooms } => {
                let targets = select(sel);
                for s in &targets {
                    for room in rooms {
                        // A refusal is counted by `join`, and the other rooms still apply.
                        let _ = s.join(self, room);
                    }
                }
                count(&targets)
            }
            SioOp::Leave { sel, rooms } => {
                let targets = select(sel);
                for s in &targets {
                    for room in rooms {
                        s.leave(self, room);
                    }
                }
                count(&targets)
            }
            SioOp::Disconnect { sel, close } => {
                let targets = select(sel);
                for s in &targets {
                    s.disconnect(shard, self, *close);
                }
                count(&targets)
            }
            SioOp::ServerEmit { .. } => return None,
        })
    }

    /// A request from another node, on the control shard: a server-side event goes to its
    /// handler here; any other operation is applied on every shard of the node and answered
    /// once. Requests beyond `cluster.max_pending_requests` are dropped, counted.
    pub(super) fn answer(&self, shard: &Rc<Shard>, origin: &str, r: &ArchivedRequest) {
        let Some(cluster) = self.cluster() else { return };
        let Ok(op) = rkyv::deserialize::<SioOp, rancor::Error>(&r.op) else {
            cluster.stats().dropped(DropReason::Invalid);
            return;
        };
        let id = r.id.to_native();
        if let SioOp::ServerEmit { nsp, event, args_tail, ack } = op {
            let ack = (ack && id != 0).then(|| ServerAck { cluster: cluster.clone(), to: origin.to_string(), id });
            return self.server_event(
                shard,
                &nsp,
                ServerEvent { name: &event, args_tail: &args_tail, from: origin, ack },
            );
        }
        let Some(turn) = cluster.begin_incoming() else { return };
        let (shard, origin) = (shard.clone(), origin.to_string());
        monoio::spawn(async move {
            let _turn = turn;
            let answers = on_every_shard(&shard, op).await;
            if id == 0 {
                return;
            }
            let answer = fit(merge(answers), cluster.max_envelope_bytes());
            cluster.reply(&origin, id, answer);
        });
    }

    fn server_event(&self, shard: &Shard, nsp: &str, ev: ServerEvent<'_>) {
        let handler = self.namespaces.iter().find(|n| n.matches(nsp)).and_then(|n| n.server_events.get(ev.name));
        // Without a handler the event is dropped and its ack never comes, as in socket.io.
        if let Some(h) = handler.cloned() {
            h(shard, ev);
        }
    }
}

/// The socket as other nodes see it.
fn describe(s: &Socket) -> SioSocket {
    let mut rooms: Vec<String> = s.rooms.borrow().iter().map(|r| r.to_string()).collect();
    rooms.sort_unstable();
    SioSocket {
        id: s.id.to_string(),
        nsp: s.nsp.to_string(),
        rooms,
        tenant: s.identity.tenant.to_string(),
        user_id: s.identity.user_id.to_string(),
    }
}

/// Starts `op` on every shard of this node and, in a cluster, on every other node; `finish`
/// makes the result of what came back. The work is under way when this returns.
fn start<T: 'static>(
    shard: &Shard,
    op: SioOp,
    timeout: Option<Duration>,
    finish: impl FnOnce(Outcome) -> T + 'static,
) -> impl Future<Output = T> + 'static {
    let Some(shard) = crate::shard::current().filter(|s| std::ptr::eq(&**s, shard)) else {
        // Only a shard's own thread holds a `&Shard` in practice; anywhere else, nothing to do.
        return Either::Right(ready(finish(Outcome { local: Vec::new(), remote: Gathered::default() })));
    };
    let clustered = shard.service::<SocketIo>().and_then(|io| io.cluster()).is_some();
    let here = !matches!(op, SioOp::ServerEmit { .. });
    let local = here.then(|| monoio::spawn(on_every_shard_owned(shard.clone(), op.clone())));
    Either::Left(monoio::spawn(async move {
        let remote = if clustered {
            let ask = move |s0: Rc<Shard>| async move {
                match s0.service::<Cluster>() {
                    Some(c) => c.request(op, timeout).await,
                    None => Gathered::default(),
                }
            };
            shard.call(CONTROL_SHARD, ask).await.unwrap_or_default()
        } else {
            Gathered::default()
        };
        let local = match local {
            Some(task) => task.await,
            None => Vec::new(),
        };
        finish(Outcome { local, remote })
    }))
}

async fn on_every_shard_owned(shard: Rc<Shard>, op: SioOp) -> Vec<SioAnswer> {
    on_every_shard(&shard, op).await
}

/// Applies `op` on every shard of this node, at once, and returns their answers. A shard that
/// changed rooms hands its subscriptions to the bridge before it answers
/// ([`Cluster::settle`]), so an answer published after this is never ahead of them.
async fn on_every_shard(shard: &Rc<Shard>, op: SioOp) -> Vec<SioAnswer> {
    let changes_rooms = matches!(op, SioOp::Join { .. });
    let op = Arc::new(op);
    let calls: Vec<_> = (0..shard.shard_count())
        .map(|to| {
            let (shard, op) = (shard.clone(), op.clone());
            monoio::spawn(async move {
                let apply = move |here: Rc<Shard>| async move {
                    let io = here.service::<SocketIo>()?;
                    let answer = io.apply(&here, &op);
                    if changes_rooms {
                        if let Some(c) = io.cluster() {
                            c.settle().await;
                        }
                    }
                    answer
                };
                shard.call(to, apply).await.flatten()
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.extend(call.await);
    }
    answers
}

/// One answer for the node from its shards'.
fn merge(answers: Vec<SioAnswer>) -> SioAnswer {
    let mut out: Option<SioAnswer> = None;
    for a in answers {
        out = Some(match (out, a) {
            (None, a) => a,
            (
                Some(SioAnswer::Sockets { mut sockets, truncated }),
                SioAnswer::Sockets { sockets: more, truncated: t },
            ) => {
                sockets.extend(more);
                SioAnswer::Sockets { sockets, truncated: truncated || t }
            }
            (Some(SioAnswer::Count(a)), SioAnswer::Count(b)) => SioAnswer::Count(a.saturating_add(b)),
            (Some(kept), _) => kept,
        });
    }
    out.unwrap_or(SioAnswer::Count(0))
}

/// Room left in an envelope for what is not the sockets (header, origin, request id).
const ENVELOPE_OVERHEAD: usize = 1024;

/// Keeps a fetch answer within one envelope of `max` bytes: the sockets that fit, marked
/// truncated when some did not, rather than an envelope every node would drop.
fn fit(answer: SioAnswer, max: usize) -> SioAnswer {
    let SioAnswer::Sockets { mut sockets, truncated } = answer else { return answer };
    let budget = max.saturating_sub(ENVELOPE_OVERHEAD);
    let mut used = 0;
    let keep = sockets
        .iter()
        .take_while(|s| {
            used += archived_size(s);
            used <= budget
        })
        .count();
    let cut = keep < sockets.len();
    sockets.truncate(keep);
    SioAnswer::Sockets { sockets, truncated: truncated || cut }
}

/// An upper bound of a socket's size in an envelope: 8 bytes per string or list inline (rkyv's
/// 32-bit relative pointer and length), the bytes, and slack.
fn archived_size(s: &SioSocket) -> usize {
    let rooms: usize = s.rooms.iter().map(|r| 8 + r.len()).sum();
    48 + s.id.len() + s.nsp.len() + s.tenant.len() + s.user_id.len() + rooms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::envelope::{self, Body, Envelope, Reply};

    fn socket(i: usize, rooms: usize) -> SioSocket {
        SioSocket {
            id: format!("socket-{i:014}"),
            nsp: "/chat".into(),
            rooms: (0..rooms).map(|r| format!("room-{r}")).collect(),
            tenant: "default".into(),
            user_id: format!("user-{i}"),
        }
    }

    #[test]
    fn merges_the_shards_answers_into_one() {
        let a = SioAnswer::Sockets { sockets: vec![socket(1, 1)], truncated: false };
        let b = SioAnswer::Sockets { sockets: vec![socket(2, 0)], truncated: true };
        let SioAnswer::Sockets { sockets, truncated } = merge(vec![a, b]) else { panic!("not sockets") };
        assert_eq!(sockets.len(), 2);
        assert!(truncated);
        assert_eq!(merge(vec![SioAnswer::Count(2), SioAnswer::Count(3)]), SioAnswer::Count(5));
        assert_eq!(merge(Vec::new()), SioAnswer::Count(0));
    }

    #[test]
    fn a_fetch_answer_always_fits_in_one_envelope() {
        for (n, rooms, max) in [(10, 2, 64 * 1024), (5000, 3, 64 * 1024), (300, 40, 16 * 1024), (0, 0, 2048)] {
            let all: Vec<SioSocket> = (0..n).map(|i| socket(i, rooms)).collect();
            let answer = fit(SioAnswer::Sockets { sockets: all, truncated: false }, max);
            let SioAnswer::Sockets { sockets, truncated } = &answer else { panic!("not sockets") };
            assert_eq!(*truncated, sockets.len() < n, "{n} sockets, {max} bytes");
            let env = Envelope {
                origin: "n0123456789abcdef".into(),
                body: Body::Reply(Reply { id: u64::MAX, answer: answer.clone() }),
            };
            let bytes = envelope::encode(&env);
            assert!(bytes.len() <= max, "{} bytes over {max} for {} sockets", bytes.len(), sockets.len());
            if *truncated {
                // Not cut far below the limit either.
                assert!(bytes.len() > max / 2, "{} bytes of {max}", bytes.len());
            }
        }
    }
}
