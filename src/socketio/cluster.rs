//! Socket.IO in a cluster: which subjects a namespace and a room are, the sessions kept for
//! recovery on any node, and recovery from the cluster's stream ([`crate::cluster::jetstream`]).
//!
//! With recovery on, every broadcast reaches every socket in the stream's order, and a socket's
//! session (id, namespace, rooms) is kept in the cluster whenever it changes. A client that
//! reconnects to a node that does not hold its socket is recovered from there: its session is
//! read, its rooms joined (so what is broadcast from now on reaches it, held until the replay is
//! sent), its missed broadcasts read back from the stream after its offset, and both are sent
//! in the stream's order, each once. A session the cluster no longer holds, an offset of
//! another epoch or one the stream no longer reaches gives a fresh socket: `recovered` is false,
//! never a silent gap.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::recovery::{self, Logged, Restored};
use super::{Socket, SocketIo};
use crate::cluster::jetstream::Replayed;
use crate::cluster::{ArchivedBody, Cluster};
use crate::shard::Shard;

/// A socket's session as the cluster keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Session {
    sid: String,
    nsp: String,
    rooms: Vec<String>,
    /// The stream's epoch and the last sequence the node had seen when the socket connected:
    /// where a client that received nothing yet is recovered from.
    epoch: u64,
    since: u64,
}

impl SocketIo {
    /// The subject of a namespace's broadcasts, as this node subscribes to it.
    pub(super) fn namespace_subject(c: &Cluster, nsp: &str) -> String {
        let s = c.subjects().sio_namespace(nsp);
        if c.sequenced() {
            c.subjects().sequenced(&s)
        } else {
            s
        }
    }

    /// The subject of a room's broadcasts, as this node subscribes to it.
    pub(super) fn room_subject(c: &Cluster, nsp: &str, room: &str) -> String {
        let s = c.subjects().sio_room(nsp, room);
        if c.sequenced() {
            c.subjects().sequenced(&s)
        } else {
            s
        }
    }

    /// Keeps the socket's session in the cluster, when it is recoverable there: at connect and
    /// whenever its rooms change, so a node that dies takes nothing a client needs with it.
    pub(super) fn keep_session(&self, s: &Socket) {
        let (Some(c), Some(pid)) = (self.cluster().filter(|c| c.sequenced()), &s.pid) else { return };
        let stats = c.stats();
        let session = Session {
            sid: s.id.to_string(),
            nsp: s.nsp.to_string(),
            rooms: s.rooms.borrow().iter().map(|r| r.to_string()).collect(),
            epoch: stats.epoch().unwrap_or(0),
            since: stats.last_seq(),
        };
        if let Ok(value) = serde_json::to_vec(&session) {
            c.put_session(session_key(pid), Bytes::from(value));
        }
    }
}

/// The bucket key of a private id (which is base64url and dots: a valid key as it is).
fn session_key(pid: &str) -> String {
    format!("pid.{pid}")
}

/// Whether claims are recovered from the cluster: in a cluster with recovery, always, on the
/// node that held the socket too (its rooms may have gone quiet there since), so every
/// recovery reads the one stream.
pub(super) fn is_remote_claim(io: &SocketIo, _pid: &str) -> bool {
    io.cluster().is_some_and(|c| c.sequenced())
}

/// Reads a session the cluster keeps, checks the client's offset against the stream, and
/// returns what the socket is restored with (its missed broadcasts still to be read:
/// [`read_missed`]) and where it starts reading; `None` when it cannot be recovered.
pub(super) async fn claim(io: &SocketIo, pid: &str, offset: Option<&str>) -> Option<(Restored, u64)> {
    let c = io.cluster()?;
    let epoch = c.stats().epoch()?;
    let raw = c.get_session(session_key(pid)).await?;
    let session: Session = serde_json::from_slice(&raw).ok()?;
    let from = match offset {
        Some(o) => {
            let (e, seq) = recovery::parse_stream_offset(o)?;
            if e != epoch {
                return None;
            }
            seq + 1
        }
        // Nothing received yet: from where the node was when the socket connected.
        None if session.epoch == epoch => session.since + 1,
        None => return None,
    };
    let restored = Restored {
        sid: session.sid.into(),
        pid: pid.into(),
        rooms: session.rooms.into_iter().map(Arc::from).collect(),
        missed: Vec::new(),
        from_stream: true,
        floor: from.saturating_sub(1),
    };
    Some((restored, from))
}

/// The broadcasts a socket of `nsp` in `rooms` (with id `sid`) would have received, read
/// back from the stream from sequence `from`, in order, with the last sequence read; `None`
/// when the stream no longer holds `from`, cannot be read, or holds more than the socket may
/// be sent (`recovery_max_packets`).
pub(super) async fn read_missed(
    io: &SocketIo,
    nsp: &str,
    sid: &str,
    rooms: &[Arc<str>],
    from: u64,
) -> Option<(Vec<(u64, Logged)>, u64)> {
    let c = io.cluster()?;
    let max = io.cfg.recovery.as_ref().map_or(0, |r| r.max_packets);
    let filter = c.subjects().sio_namespace_filter(nsp);
    let Replayed::Read { messages, complete } = c.replay(filter, from, max.saturating_add(1)).await else {
        return None;
    };
    let epoch = c.stats().epoch()?;
    if !complete || messages.len() > max {
        return None;
    }
    let last = messages.last().map_or(from.saturating_sub(1), |(seq, _)| *seq);
    let member = |r: &str| rooms.iter().any(|x| &**x == r);
    let mut missed = Vec::new();
    for (seq, env) in messages {
        let ArchivedBody::Sio(b) = &env.view().body else { continue };
        let via = b.via.to_native() as usize;
        let reaches = b.nsp.as_str() == nsp
            && b.except_socket.as_ref().is_none_or(|x| x.as_str() != sid)
            && !b.except_rooms.iter().any(|r| member(r.as_str()))
            && match b.rooms.get(via) {
                None => true,
                Some(r) => member(r.as_str()) && !b.rooms[..via].iter().any(|p| member(p.as_str())),
            };
        if reaches {
            let offset = recovery::stream_offset(epoch, seq);
            let text = recovery::append_offset(&env.share(b.text.as_slice()), &offset);
            let binaries: Vec<Bytes> = b.binaries.iter().map(|x| env.share(x.as_slice())).collect();
            missed.push((seq, (offset, text, binaries)));
        }
    }
    Some((missed, last))
}

/// Sends a recovered socket what it missed. `first` was read before the socket existed, up to
/// sequence `last`; once this node receives the socket's rooms, the stream is read again after
/// `last` (what was published while the rooms were being subscribed), and all of it, with what
/// arrived live meanwhile, goes out in the stream's order, each once. False when that second
/// read fails: the caller disconnects the socket rather than leave a gap.
pub(super) async fn finish_replay(
    shard: &Shard,
    io: &SocketIo,
    s: &Rc<Socket>,
    first: Vec<(u64, Logged)>,
    last: u64,
) -> bool {
    let Some(c) = io.cluster() else { return false };
    let mut subjects = vec![SocketIo::namespace_subject(&c, &s.nsp)];
    // Its own-id room has no subject of its own (see `finish_connect`): nothing to wait for.
    subjects.extend(s.rooms.borrow().iter().filter(|r| ***r != *s.id).map(|r| SocketIo::room_subject(&c, &s.nsp, r)));
    c.wait_live(subjects).await;
    let rooms: Vec<Arc<str>> = s.rooms.borrow().iter().map(|r| Arc::from(&**r)).collect();
    let Some((second, _)) = read_missed(io, &s.nsp, &s.id, &rooms, last + 1).await else {
        s.recovering.borrow_mut().take();
        return false;
    };
    let max = io.cfg.recovery.as_ref().map_or(0, |r| r.max_packets);
    let mut missed = first;
    missed.extend(second);
    missed.extend(s.recovering.borrow_mut().take().unwrap_or_default());
    missed.sort_by_key(|(seq, _)| *seq);
    missed.dedup_by_key(|(seq, _)| *seq);
    for (seq, (offset, text, binaries)) in missed {
        if seq <= s.floor.get() {
            continue;
        }
        s.floor.set(seq);
        recovery::push_bounded(&mut s.log.borrow_mut(), (offset, text.clone(), binaries.clone()), max);
        s.eio.send_prepared(shard, &super::engine::prepare_bytes(text, &binaries));
    }
    true
}
