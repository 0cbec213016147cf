//! Connection state recovery, as socket.io 4.6+ offers it: a client that loses its connection
//! and comes back within the window gets its socket id, its rooms and the events it missed.
//!
//! With recovery on, every event the server emits carries an offset as its last argument, and
//! each socket keeps its recent events. When a socket drops for a recoverable reason, its state
//! stays on its shard for the window and keeps collecting the broadcasts meant for it. The
//! client reconnects with `{pid, offset}` in its CONNECT auth; the private id names the shard
//! that holds the state, so the new connection may land on any shard and ask that one over the
//! rings.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{RemoteBroadcast, Socket};

/// The `[socketio]` recovery settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryConfig {
    /// How long a disconnected socket can be recovered.
    pub window: Duration,
    /// Most events kept per socket; older ones are evicted, and a client whose last offset was
    /// evicted gets a fresh session instead.
    pub max_packets: usize,
}

/// One sent event: its offset, its encoded text and its attachments.
pub type Logged = (Arc<str>, Bytes, Vec<Bytes>);

/// A disconnected socket, kept for recovery.
pub struct Stored {
    sid: Arc<str>,
    nsp: Arc<str>,
    rooms: Vec<Arc<str>>,
    pub(super) log: VecDeque<Logged>,
    pub(super) window: Duration,
}

/// What a recovered socket gets back. Crosses shards, so everything is `Send`.
pub struct Restored {
    pub sid: Arc<str>,
    pub pid: Arc<str>,
    pub rooms: Vec<Arc<str>>,
    /// Events after the client's last offset, in order.
    pub missed: Vec<Logged>,
    /// Restored from the cluster: what arrives for the socket is held until its missed
    /// broadcasts are read back from the stream ([`super::cluster::finish_replay`]).
    pub from_stream: bool,
    /// Restored from the cluster: the stream sequence the client has everything up to.
    pub floor: u64,
}

/// What a reconnecting client presents.
pub struct Claim {
    pub pid: String,
    pub offset: Option<String>,
}

impl Stored {
    pub(super) fn from_socket(s: &Socket, window: Duration) -> Self {
        Stored {
            sid: Arc::from(&*s.id),
            nsp: Arc::from(&*s.nsp),
            rooms: s.rooms.borrow().iter().map(|r| Arc::from(&**r)).collect(),
            log: s.log.borrow().clone(),
            window,
        }
    }

    /// The state to hand back, or `None` when the client's offset is no longer known.
    pub(super) fn restore(self, pid: &str, offset: Option<&str>) -> Option<Restored> {
        let missed = match offset {
            None => self.log.into_iter().collect(),
            Some(o) => {
                let i = self.log.iter().position(|(x, _, _)| &**x == o)?;
                self.log.into_iter().skip(i + 1).collect()
            }
        };
        Some(Restored { sid: self.sid, pid: pid.into(), rooms: self.rooms, missed, from_stream: false, floor: 0 })
    }
}

/// Whether a broadcast would have reached this disconnected socket.
pub(super) fn matches(s: &Stored, b: &RemoteBroadcast) -> bool {
    let member = |r: &Arc<str>| s.rooms.contains(r) || *r == s.sid;
    s.nsp == b.nsp
        && b.except_socket.as_deref() != Some(&*s.sid)
        && !b.except_rooms.iter().any(member)
        && (b.rooms.is_empty() || b.rooms.iter().any(member))
}

/// Appends `entry`, evicting the oldest beyond `max`.
pub(super) fn push_bounded(log: &mut VecDeque<Logged>, entry: Logged, max: usize) {
    if max == 0 {
        return;
    }
    while log.len() >= max {
        log.pop_front();
    }
    log.push_back(entry);
}

/// The arguments with the offset appended as a last string argument.
pub(super) fn with_offset(args_tail: &str, offset: &str) -> String {
    let quoted = super::json_string(offset);
    if args_tail.is_empty() {
        quoted
    } else {
        format!("{args_tail},{quoted}")
    }
}

/// The offset of a broadcast sequenced by the cluster's recovery stream: `<epoch>-<seq>`.
pub(super) fn stream_offset(epoch: u64, seq: u64) -> Arc<str> {
    format!("{epoch}-{seq}").into()
}

/// The epoch and sequence of a stream offset; `None` for a node-local one.
pub(super) fn parse_stream_offset(offset: &str) -> Option<(u64, u64)> {
    let (epoch, seq) = offset.split_once('-')?;
    Some((epoch.parse().ok()?, seq.parse().ok()?))
}

/// An encoded event packet (`...[args]`) with `offset` added as its last argument.
pub(super) fn append_offset(text: &Bytes, offset: &str) -> Bytes {
    let Some(body) = text.strip_suffix(b"]") else { return text.clone() };
    let quoted = super::json_string(offset);
    let mut out = Vec::with_capacity(text.len() + quoted.len() + 1);
    out.extend_from_slice(body);
    // An event always has a name before its arguments, so there is something to follow.
    out.push(b',');
    out.extend_from_slice(quoted.as_bytes());
    out.push(b']');
    Bytes::from(out)
}

/// Socket.IO drops these sockets for reasons the client did not choose, so they may come back.
pub(super) fn is_recoverable(reason: &str) -> bool {
    matches!(reason, "transport close" | "transport error" | "ping timeout" | "forced close")
}

/// A new private id: random, then the node (in a cluster) and the owning shard, after dots.
pub(super) fn new_pid(node: Option<&str>, shard: usize) -> String {
    match node {
        Some(node) => format!("{}.{node}.{shard}", super::random_id()),
        None => format!("{}.{shard}", super::random_id()),
    }
}

/// The node a private id names, in a cluster.
pub fn node_of(pid: &str) -> Option<&str> {
    let mut parts = pid.rsplitn(3, '.');
    let _shard = parts.next()?;
    let node = parts.next()?;
    parts.next().map(|_| node)
}

/// The shard a private id names.
pub fn owner_of(pid: &str) -> Option<usize> {
    pid.rsplit_once('.').and_then(|(_, shard)| shard.parse().ok())
}

/// The `pid` and `offset` a reconnecting client adds to its CONNECT auth.
pub fn parse_claim(auth: &str) -> Option<Claim> {
    #[derive(serde::Deserialize)]
    struct Raw {
        pid: Option<String>,
        offset: Option<String>,
    }
    let raw: Raw = serde_json::from_str(auth).ok()?;
    Some(Claim { pid: raw.pid?, offset: raw.offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_offsets_round_trip_and_are_appended_to_encoded_events() {
        let o = stream_offset(1764000000000, 42);
        assert_eq!(&*o, "1764000000000-42");
        assert_eq!(parse_stream_offset(&o), Some((1764000000000, 42)));
        assert_eq!(parse_stream_offset("0-x"), None);
        assert_eq!(parse_stream_offset("n1-0-3"), None, "node-local offsets are not the stream's");
        let text = Bytes::from_static(br#"2["msg",{"a":1}]"#);
        assert_eq!(&append_offset(&text, &o)[..], br#"2["msg",{"a":1},"1764000000000-42"]"#);
    }

    #[test]
    fn private_ids_name_their_node_and_shard() {
        let pid = new_pid(Some("node-1"), 3);
        assert_eq!((node_of(&pid), owner_of(&pid)), (Some("node-1"), Some(3)));
        let pid = new_pid(None, 2);
        assert_eq!((node_of(&pid), owner_of(&pid)), (None, Some(2)));
    }

    #[test]
    fn offsets_are_appended_as_a_last_argument() {
        assert_eq!(with_offset("", "0-1"), "\"0-1\"");
        assert_eq!(with_offset("1,{\"a\":2}", "3-9"), "1,{\"a\":2},\"3-9\"");
    }

    #[test]
    fn private_ids_name_their_shard() {
        assert_eq!(owner_of(&new_pid(None, 7)), Some(7));
        assert_eq!(owner_of("no-dot"), None);
    }

    #[test]
    fn claims_need_a_pid() {
        let c = parse_claim(r#"{"pid":"x.1","offset":"0-3","token":"t"}"#).unwrap();
        assert_eq!((c.pid.as_str(), c.offset.as_deref()), ("x.1", Some("0-3")));
        assert!(parse_claim(r#"{"offset":"0-3"}"#).is_none());
        assert!(parse_claim("not json").is_none());
    }

    fn logged(o: &str) -> Logged {
        (o.into(), Bytes::from(o.to_string()), Vec::new())
    }

    #[test]
    fn restore_returns_what_came_after_the_offset() {
        let mut log = VecDeque::new();
        for o in ["0-1", "0-2", "1-1"] {
            push_bounded(&mut log, logged(o), 10);
        }
        let stored =
            || Stored { sid: "s".into(), nsp: "/".into(), rooms: vec![], log: log.clone(), window: Duration::ZERO };
        let r = stored().restore("p.0", Some("0-2")).unwrap();
        assert_eq!(r.missed.iter().map(|m| &*m.0).collect::<Vec<_>>(), ["1-1"]);
        assert_eq!(stored().restore("p.0", None).unwrap().missed.len(), 3);
        assert!(stored().restore("p.0", Some("9-9")).is_none(), "an unknown offset is not recoverable");
    }

    #[test]
    fn the_log_is_bounded() {
        let mut log = VecDeque::new();
        for i in 0..5 {
            push_bounded(&mut log, logged(&format!("0-{i}")), 3);
        }
        assert_eq!(log.iter().map(|m| m.0.to_string()).collect::<Vec<_>>(), ["0-2", "0-3", "0-4"]);
    }
}
