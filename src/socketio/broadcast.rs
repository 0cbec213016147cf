//! Broadcasts: [`SocketIo::of`] builds one ([`BroadcastOp`], [`Target`]), [`SocketIo::broadcast`]
//! encodes it once and posts it to every other shard as a [`RemoteBroadcast`], and each shard
//! picks its own matching sockets ([`SocketIo::deliver_local`]). While the shard coalesces
//! writes, broadcasts are held for its next flush and released together.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::engine::prepare_bytes;
use super::recovery::{self, Logged};
use super::{packet, Socket, SocketIo};
use crate::cluster::envelope::SioBroadcast;
use crate::cluster::{ArchivedBody, Body, Checked, Cluster, ClusterHandler, SubjectKind};
use crate::engineio::Prepared;
use crate::shard::{Broadcast, Shard, ShardMsg, ShardService};

/// A broadcast as it travels to the other shards: encoded once, shared.
pub struct RemoteBroadcast {
    pub nsp: Arc<str>,
    pub rooms: Vec<Arc<str>>,
    pub except_rooms: Vec<Arc<str>>,
    pub except_socket: Option<Arc<str>>,
    pub text: Bytes,
    pub binaries: Vec<Bytes>,
    /// The packet's recovery offset (recovery on only).
    pub offset: Option<Arc<str>>,
    /// Its sequence in the cluster's recovery stream, when it came through it.
    pub seq: Option<u64>,
}

impl RemoteBroadcast {
    /// Whether `other` goes to the same sockets, but perhaps for the sender it leaves out.
    fn same_targets(&self, other: &RemoteBroadcast) -> bool {
        self.nsp == other.nsp && self.rooms == other.rooms && self.except_rooms == other.except_rooms
    }
}

impl Broadcast for RemoteBroadcast {
    fn deliver(self: Arc<Self>, shard: &Rc<Shard>) {
        if let Some(io) = shard.service::<SocketIo>() {
            io.deliver_local(shard, &self);
        }
    }
}

/// Sends a broadcast to the other nodes: once on its namespace's subject, or once on the
/// subject of each room it names (see [`SioBroadcast::via`]), so only nodes with members of
/// those rooms receive it.
fn publish(cluster: &Cluster, b: &RemoteBroadcast) {
    let body = SioBroadcast {
        nsp: b.nsp.to_string(),
        rooms: b.rooms.iter().map(|r| r.to_string()).collect(),
        via: 0,
        except_rooms: b.except_rooms.iter().map(|r| r.to_string()).collect(),
        except_socket: b.except_socket.as_deref().map(str::to_string),
        text: b.text.to_vec(),
        binaries: b.binaries.iter().map(|x| x.to_vec()).collect(),
        offset: b.offset.as_deref().map(str::to_string),
    };
    let subjects = cluster.subjects();
    // Published on `sio` subjects either way: with recovery, the stream keeps them and
    // republishes them sequenced.
    if b.rooms.is_empty() {
        let subject = subjects.sio_namespace(&b.nsp);
        cluster.publish(SubjectKind::Sio, subject, &cluster.envelope(Body::Sio(body)));
        return;
    }
    for (via, room) in b.rooms.iter().enumerate() {
        let subject = subjects.sio_room(&b.nsp, room);
        let body = SioBroadcast { via: u32::try_from(via).unwrap_or(u32::MAX), ..body.clone() };
        cluster.publish(SubjectKind::Sio, subject, &cluster.envelope(Body::Sio(body)));
    }
}

impl ClusterHandler for SocketIo {
    /// With recovery in a cluster, a broadcast lost to this node would be a silent gap behind a
    /// client's later offsets: every socket here has its transport closed instead, and its
    /// client, reconnecting with its last offset, gets what it missed from the stream.
    fn gap(&self, shard: &Rc<Shard>) {
        if !self.cluster().is_some_and(|c| c.sequenced()) {
            return;
        }
        let sessions: Vec<Rc<crate::engineio::EioSession>> = {
            let mut seen = HashSet::new();
            let sockets = self.sockets.borrow();
            sockets.values().flat_map(|m| m.values()).filter(|s| seen.insert(s.eio.id)).map(|s| s.eio.clone()).collect()
        };
        for eio in sessions {
            crate::engineio::close(shard, &eio, crate::engineio::CloseReason::TransportError, false);
        }
    }

    /// A broadcast from another node, for this shard's sockets: the members of its `via` room
    /// who are in none of the rooms before it (they get the copy sent for that room). Or a
    /// request of another node, on the control shard ([`SocketIo::answer`]).
    fn receive(&self, shard: &Rc<Shard>, env: &Checked) {
        let b = match &env.view().body {
            ArchivedBody::Sio(b) => b,
            ArchivedBody::Request(r) => return self.answer(shard, env.view().origin.as_str(), r),
            _ => return,
        };
        let name = |s: &rkyv::string::ArchivedString| Arc::<str>::from(s.as_str());
        let (rooms, mut except_rooms) = match b.rooms.get(b.via.to_native() as usize) {
            Some(room) => {
                let before = &b.rooms[..b.via.to_native() as usize];
                (vec![name(room)], before.iter().map(name).collect::<Vec<_>>())
            }
            None => (Vec::new(), Vec::new()),
        };
        except_rooms.extend(b.except_rooms.iter().map(name));
        let text = env.share(b.text.as_slice());
        // Sequenced by the recovery stream: the offset is its place there, added here.
        let (text, offset, seq) = match (env.seq(), self.cluster().and_then(|c| c.stats().epoch())) {
            (Some(seq), Some(epoch)) => {
                let offset = recovery::stream_offset(epoch, seq);
                (recovery::append_offset(&text, &offset), Some(offset), Some(seq))
            }
            _ => (text, b.offset.as_ref().map(name), None),
        };
        let msg = Arc::new(RemoteBroadcast {
            nsp: name(&b.nsp),
            rooms,
            except_rooms,
            except_socket: b.except_socket.as_ref().map(name),
            text,
            binaries: b.binaries.iter().map(|x| env.share(x.as_slice())).collect(),
            offset,
            seq,
        });
        self.deliver_local(shard, &msg);
    }
}

/// Who a broadcast goes to.
#[derive(Default, Clone)]
pub struct Target<'a> {
    /// Members of any of these rooms; every socket of the namespace when empty.
    pub rooms: Vec<&'a str>,
    /// Except members of these rooms.
    pub except_rooms: Vec<&'a str>,
    /// Except this socket (the sender).
    pub except_socket: Option<&'a str>,
}

/// A broadcast being built by [`SocketIo::of`]. Without `to`, it reaches the whole namespace.
pub struct BroadcastOp<'a> {
    io: &'a SocketIo,
    pub(super) nsp: &'a str,
    pub(super) target: Target<'a>,
}

impl<'a> BroadcastOp<'a> {
    /// Adds a room: members of any added room receive it.
    pub fn to(mut self, room: &'a str) -> Self {
        self.target.rooms.push(room);
        self
    }

    /// Leaves out members of this room.
    pub fn except(mut self, room: &'a str) -> Self {
        self.target.except_rooms.push(room);
        self
    }

    /// Leaves out one socket (usually the sender).
    pub fn except_socket(mut self, id: &'a str) -> Self {
        self.target.except_socket = Some(id);
        self
    }

    pub fn emit(self, shard: &Shard, event: &str, args_tail: &str) {
        self.emit_binary(shard, event, args_tail, Vec::new());
    }

    pub fn emit_binary(self, shard: &Shard, event: &str, args_tail: &str, binaries: Vec<Bytes>) {
        self.io.broadcast(shard, self.nsp, &self.target, event, args_tail, binaries);
    }
}

/// Broadcasts to the same rooms, held for the shard's next flush ([`SocketIo::hold`]).
pub(super) struct Held {
    items: Vec<Arc<RemoteBroadcast>>,
    /// Who they reach, once rooms or sockets changed after they were sent; until then, the
    /// members at the release.
    targets: Option<Vec<Rc<Socket>>>,
}

impl ShardService for SocketIo {
    fn release_held(&self, shard: &Shard, at_flush: bool) {
        self.release(shard, at_flush);
    }
}

impl SocketIo {
    /// Starts a broadcast to namespace `nsp`: `io.of("/").to("room").except("muted").emit(...)`.
    pub fn of<'a>(&'a self, nsp: &'a str) -> BroadcastOp<'a> {
        BroadcastOp { io: self, nsp, target: Target::default() }
    }

    /// Sends an event to the target sockets of `nsp` on every shard of the node, exactly once
    /// each. Encoded once here; other shards get the same bytes through the rings.
    pub fn broadcast(
        &self,
        shard: &Shard,
        nsp: &str,
        target: &Target<'_>,
        event: &str,
        args_tail: &str,
        binaries: Vec<Bytes>,
    ) {
        // Sequenced through the stream while it can be reached; cut off from it, a broadcast is
        // delivered here as on a node alone (with a node-local offset, from which no client
        // recovers elsewhere: `recovered` false, never a silent gap).
        if let Some(cluster) = self.cluster().filter(|c| c.sequenced() && c.stats().connected()) {
            // Every node delivers it as it comes back from the recovery stream, this one too.
            let text = Bytes::from(packet::encode_event(nsp, None, event, args_tail, binaries.len()));
            let msg = RemoteBroadcast {
                offset: None,
                seq: None,
                nsp: nsp.into(),
                rooms: target.rooms.iter().map(|r| Arc::from(*r)).collect(),
                except_rooms: target.except_rooms.iter().map(|r| Arc::from(*r)).collect(),
                except_socket: target.except_socket.map(Arc::from),
                text,
                binaries,
            };
            return publish(&cluster, &msg);
        }
        let offset = self.next_offset(shard);
        let text = match &offset {
            Some(o) => packet::encode_event(nsp, None, event, &recovery::with_offset(args_tail, o), binaries.len()),
            None => packet::encode_event(nsp, None, event, args_tail, binaries.len()),
        };
        let text = Bytes::from(text);
        let msg = Arc::new(RemoteBroadcast {
            offset,
            seq: None,
            nsp: nsp.into(),
            rooms: target.rooms.iter().map(|r| Arc::from(*r)).collect(),
            except_rooms: target.except_rooms.iter().map(|r| Arc::from(*r)).collect(),
            except_socket: target.except_socket.map(Arc::from),
            text,
            binaries,
        });
        self.deliver_local(shard, &msg);
        let shards = shard.shard_count();
        if shards > 1 {
            let remote: Arc<dyn Broadcast> = msg.clone();
            for to in (0..shards).filter(|&to| to != shard.index) {
                shard.post(to, ShardMsg::Broadcast(remote.clone()));
            }
        }
        if let Some(cluster) = self.cluster() {
            publish(&cluster, &msg);
        }
    }

    /// Delivers a broadcast to this shard's matching sockets. While the shard coalesces
    /// writes, it is held for the shard's next flush instead (see `SocketIo::hold`).
    pub fn deliver_local(&self, shard: &Shard, b: &Arc<RemoteBroadcast>) {
        if b.offset.is_none() && shard.coalesce.is_active() {
            self.hold(shard, b);
            return;
        }
        let targets = self.targets(b, b.except_socket.as_deref());
        if let Some(offset) = &b.offset {
            let max = self.cfg.recovery.as_ref().map_or(0, |r| r.max_packets);
            let entry: Logged = (offset.clone(), b.text.clone(), b.binaries.clone());
            for t in &targets {
                recovery::push_bounded(&mut t.log.borrow_mut(), entry.clone(), max);
            }
            // Disconnected sockets that match keep it for when they come back.
            for stored in self.stored.borrow_mut().values_mut() {
                if recovery::matches(stored, b) {
                    recovery::push_bounded(&mut stored.log, entry.clone(), max);
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        let prepared = prepare_bytes(b.text.clone(), &b.binaries);
        // Delivered here while the node is cut off from the recovery stream.
        let cut_off = b.seq.is_none() && b.offset.is_some() && self.cluster().is_some_and(|c| c.sequenced());
        let breaks = self.cluster().map_or(0, |c| c.stats().breaks());
        for s in targets {
            if cut_off {
                s.cut_off.set(true);
            }
            if let (Some(seq), Some(offset)) = (b.seq, &b.offset) {
                // Sent by a recovery's replay already, or to be sent after it; or the socket
                // got broadcasts delivered while the node was cut off, which this one may
                // precede (see `Socket::cut_off`); or the flow broke since the socket was
                // created, and what it missed comes with its recovery (`Socket::breaks_seen`).
                if seq <= s.floor.get() || s.cut_off.get() || s.breaks_seen < breaks {
                    continue;
                }
                if let Some(buffer) = s.recovering.borrow_mut().as_mut() {
                    buffer.push((seq, (offset.clone(), b.text.clone(), b.binaries.clone())));
                    continue;
                }
                s.floor.set(seq);
            }
            s.eio.send_broadcast(shard, &prepared);
        }
    }

    /// This shard's sockets that a broadcast reaches, but `except_socket`.
    fn targets(&self, b: &RemoteBroadcast, except_socket: Option<&str>) -> Vec<Rc<Socket>> {
        self.select(&b.nsp, &b.rooms, &b.except_rooms, except_socket)
    }

    /// This shard's sockets of `nsp` in any of `rooms` (all of them when empty), in none of
    /// `except_rooms`, and not `except_socket`: who a broadcast reaches, and what an adapter
    /// operation applies to.
    pub(super) fn select<R: AsRef<str>>(
        &self,
        nsp: &str,
        rooms: &[R],
        except_rooms: &[R],
        except_socket: Option<&str>,
    ) -> Vec<Rc<Socket>> {
        let index = self.rooms.borrow();
        let ns_rooms = index.get(nsp);
        let in_room = |s: &Socket, list: &[R]| list.iter().any(|r| s.rooms.borrow().contains(r.as_ref()));
        // Only a union of several rooms can list a socket twice.
        let dedupe = rooms.len() > 1;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut consider = |s: &Rc<Socket>| {
            if except_socket == Some(&*s.id) || (!except_rooms.is_empty() && in_room(s, except_rooms)) {
                return;
            }
            if !dedupe || seen.insert(s.id.clone()) {
                out.push(s.clone());
            }
        };
        if rooms.is_empty() {
            if let Some(all) = self.sockets.borrow().get(nsp) {
                all.values().for_each(&mut consider);
            }
        } else {
            let sockets = self.sockets.borrow();
            let by_id = sockets.get(nsp);
            for r in rooms {
                if let Some(members) = ns_rooms.and_then(|n| n.get(r.as_ref())) {
                    members.values().for_each(&mut consider);
                }
                // Every socket is in the room named by its id, which is not indexed: the
                // socket table already maps the id to the socket.
                if let Some(s) = by_id.and_then(|m| m.get(r.as_ref())) {
                    consider(s);
                }
            }
        }
        out
    }

    /// Holds a broadcast until the shard's next coalesced flush. Consecutive broadcasts to the
    /// same rooms share one walk of their members when they are released, and each member gets
    /// them all at once: most of a broadcast's cost is reaching each member's session.
    fn hold(&self, shard: &Shard, b: &Arc<RemoteBroadcast>) {
        {
            let mut held = self.held.borrow_mut();
            match held.last_mut() {
                Some(g) if g.targets.is_none() && g.items[0].same_targets(b) => g.items.push(b.clone()),
                _ => held.push(Held { items: vec![b.clone()], targets: None }),
            }
        }
        shard.coalesce.held_one(&shard.stats);
    }

    /// Fixes who the held broadcasts reach before rooms or sockets change, so that they reach
    /// the sockets they would have reached when they were sent.
    pub(super) fn fix_held_targets(&self) {
        let mut held = self.held.borrow_mut();
        for g in held.iter_mut().filter(|g| g.targets.is_none()) {
            g.targets = Some(self.targets(&g.items[0], None));
        }
    }

    /// Sends the held broadcasts, in order; [`Shard::release_held`] calls it. At the flush they
    /// are written at once; released early (something else is sent first), they are ordinary
    /// broadcasts that the writer may still hold.
    fn release(&self, shard: &Shard, at_flush: bool) {
        let groups = std::mem::take(&mut *self.held.borrow_mut());
        for g in groups {
            let targets = match g.targets {
                Some(t) => t,
                None => self.targets(&g.items[0], None),
            };
            let prepared: Vec<Prepared> = g.items.iter().map(|b| prepare_bytes(b.text.clone(), &b.binaries)).collect();
            for s in targets {
                let mine = g.items.iter().zip(&prepared).filter(|(b, _)| b.except_socket.as_deref() != Some(&*s.id));
                s.eio.send_many(shard, mine.map(|(_, p)| p), !at_flush);
            }
        }
    }
}
