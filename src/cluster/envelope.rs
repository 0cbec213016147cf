//! The envelope: what one node sends others, as rkyv bytes behind a two-byte header. Pure:
//! values in, bytes out, and bytes in, a validated view out.
//!
//! ```text
//! +-------+---------+---------------------------------------------+
//! | 0xA7  | version | rkyv archive of Envelope (root at the end)  |
//! +-------+---------+---------------------------------------------+
//! ```
//!
//! The archive is little-endian with 32-bit relative pointers and no alignment requirement, so
//! a receiver reads it in place, at any offset of the buffer it arrived in, on any host. Every
//! incoming envelope is checked whole (bytecheck) before anything reads it; a receiver never
//! trusts the sender. Frames inside are encoded once at the origin in the form the receivers
//! send to their sockets, so a receiver slices them out of the buffer instead of re-encoding.
//!
//! A new field or variant is a new [`VERSION`]; a node drops (and counts) an envelope of a
//! version it does not know, so nodes of two versions in one cluster lose that traffic rather
//! than misread it.

use rkyv::rancor;

/// The first byte of every envelope.
pub const MAGIC: u8 = 0xA7;
/// The envelope format this build writes and reads.
pub const VERSION: u8 = 1;

/// One message between nodes.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Envelope {
    /// The sending node's id (`cluster.node_id`).
    pub origin: String,
    pub body: Body,
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Body {
    /// A Socket.IO broadcast, published once on the subject of each room it names (or on the
    /// namespace's subject when it names none).
    Sio(SioBroadcast),
    /// A frame for every native session in a room.
    Room(RoomFrame),
    /// A stored direct message for the recipient's sessions on other nodes.
    UserMessage(UserMessage),
    /// To the origin node: its message reached a recipient session here.
    Delivered(Delivered),
    /// To the origin node: its message missed every recipient session it was queued on here.
    Missed(Missed),
    /// A frame for every session of a user (acks for the author's other devices).
    Identity(IdentityFrame),
    /// A user's sessions on `node` came (`online`) or went.
    Presence(Presence),
    /// Who has sessions of this user? Answered by nodes that have some.
    PresenceQuery(UserRef),
    /// A session of the user logged in on `node` at `at_ms`: older ones elsewhere are kicked
    /// when the node keeps one session per user.
    Login(Login),
    /// The answer to a request: `ok` says whether the node did what was asked.
    Answer(Answer),
    /// The origin is alive: published on the control subject every `cluster.heartbeat_ms`, and
    /// sent straight to a node heard of for the first time, so that it knows the origin at once.
    Heartbeat(Heartbeat),
    /// The origin is shutting down: stop waiting for its answers.
    Leaving,
    /// A request to every other node, published on the control subject. Each answers once, on
    /// the origin's node subject, for all its shards.
    Request(Request),
    /// One node's answer to a [`Request`] of the node it is sent to.
    Reply(Reply),
}

/// A user of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct UserRef {
    pub tenant: String,
    pub user: String,
}

/// A stored chat message as the nodes that deliver it need it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ChatMessage {
    /// The message id (a UUID), as its 16 bytes.
    pub id: [u8; 16],
    pub conversation: String,
    pub tenant: String,
    pub author: String,
    /// The recipient of a direct message.
    pub recipient: String,
    pub client_msg_id: Option<String>,
    pub body: String,
    pub content_type: String,
    pub created_at_ms: i64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct UserMessage {
    pub message: ChatMessage,
    /// The frame every recipient session is sent, encoded once at the origin.
    pub frame: Vec<u8>,
    /// The sending session on the origin node, for its `delivered` ack.
    pub sender: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Delivered {
    pub conversation: String,
    pub id: [u8; 16],
    pub tenant: String,
    pub author: String,
    pub client_msg_id: Option<String>,
    pub sender: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Missed {
    pub message: ChatMessage,
    pub sender: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct IdentityFrame {
    pub user: UserRef,
    pub frame: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Presence {
    pub user: UserRef,
    pub node: String,
    pub online: bool,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Login {
    pub user: UserRef,
    pub node: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Answer {
    pub node: String,
    pub ok: bool,
}

/// A node's sign of life.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Heartbeat {
    /// Random at every start: a node restarted under the same id is a new member, whose
    /// requests in flight died with the old one.
    pub incarnation: u64,
}

/// A request to the other nodes.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Request {
    /// Unique among the origin's requests in flight; the replies carry it back. 0 for a
    /// request that wants no reply.
    pub id: u64,
    pub op: SioOp,
}

/// An answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Reply {
    pub id: u64,
    pub answer: SioAnswer,
}

/// Which sockets of a namespace a Socket.IO operation is for: as a broadcast picks them.
#[derive(Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SioSelector {
    pub nsp: String,
    /// Members of any of these rooms; every socket of the namespace when empty.
    pub rooms: Vec<String>,
    pub except_rooms: Vec<String>,
    pub except_socket: Option<String>,
}

/// A Socket.IO adapter operation (socket.io's `fetchSockets`, `socketsJoin`, `socketsLeave`,
/// `disconnectSockets`, `serverSideEmit`).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum SioOp {
    /// Answered with [`SioAnswer::Sockets`].
    Fetch(SioSelector),
    /// The selected sockets join `rooms`; answered with [`SioAnswer::Count`].
    Join { sel: SioSelector, rooms: Vec<String> },
    /// The selected sockets leave `rooms`; answered with [`SioAnswer::Count`].
    Leave { sel: SioSelector, rooms: Vec<String> },
    /// The selected sockets are disconnected (`close`: with their whole connection); answered
    /// with [`SioAnswer::Count`].
    Disconnect { sel: SioSelector, close: bool },
    /// An event for the namespace's server-side handler on each node; answered with
    /// [`SioAnswer::Ack`] when `ack` and the handler acknowledges.
    ServerEmit { nsp: String, event: String, args_tail: String, ack: bool },
}

/// A node's answer to a [`SioOp`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum SioAnswer {
    /// The node's selected sockets; `truncated` when they did not all fit in one envelope
    /// (`cluster.max_envelope_bytes`).
    Sockets { sockets: Vec<SioSocket>, truncated: bool },
    /// How many of the node's sockets the operation applied to.
    Count(u32),
    /// The server-side handler's acknowledgement: its arguments as raw JSON without brackets.
    Ack(String),
}

/// One socket as `fetch_sockets` describes it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SioSocket {
    pub id: String,
    pub nsp: String,
    /// Every room it is in, its own-id room included.
    pub rooms: Vec<String>,
    /// Who the client authenticated as.
    pub tenant: String,
    pub user_id: String,
}

/// A Socket.IO broadcast as other nodes need it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SioBroadcast {
    pub nsp: String,
    /// Every room the broadcast names; empty for the whole namespace.
    pub rooms: Vec<String>,
    /// Which of `rooms` this copy was published for. A receiver delivers it to members of
    /// `rooms[via]` who are in none of `rooms[..via]`: those get the copy published for the
    /// first of their rooms, so a member of several rooms gets the broadcast once.
    pub via: u32,
    pub except_rooms: Vec<String>,
    /// The sending socket, when it is left out.
    pub except_socket: Option<String>,
    /// The encoded Socket.IO packet (an Engine.IO message's payload).
    pub text: Vec<u8>,
    /// Its binary attachments, in order.
    pub binaries: Vec<Vec<u8>>,
    /// Its connection-state-recovery offset, when recovery is on.
    pub offset: Option<String>,
}

/// A frame for the members of a native-protocol room.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct RoomFrame {
    pub room: String,
    /// An encoded WebSocket frame, sent as it is.
    pub frame: Vec<u8>,
}

/// Why bytes are not an envelope this node can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("too short for an envelope header ({0} bytes)")]
    Truncated(usize),
    #[error("not an imks envelope (first byte {0:#04x})")]
    Magic(u8),
    #[error("envelope version {0}, this node reads version {VERSION}")]
    Version(u8),
    #[error("invalid envelope: {0}")]
    Invalid(String),
}

impl EnvelopeError {
    /// Its label in `imks_cluster_dropped_total{reason=...}`.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::Version(_) => "version",
            EnvelopeError::Truncated(_) | EnvelopeError::Magic(_) | EnvelopeError::Invalid(_) => "invalid",
        }
    }
}

/// Writes an envelope: the header, then its archive.
pub fn encode(env: &Envelope) -> Vec<u8> {
    // Serializing into memory cannot fail for these types (no shared pointers, no limits).
    let archive = match rkyv::to_bytes::<rancor::Error>(env) {
        Ok(a) => a,
        Err(e) => unreachable!("serializing an envelope into memory failed: {e}"),
    };
    let mut out = Vec::with_capacity(archive.len() + 2);
    out.push(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&archive);
    out
}

/// Checks bytes as an envelope of this version, whole, and returns a view of it in place.
pub fn decode(bytes: &[u8]) -> Result<&ArchivedEnvelope, EnvelopeError> {
    let [magic, version, archive @ ..] = bytes else { return Err(EnvelopeError::Truncated(bytes.len())) };
    if *magic != MAGIC {
        return Err(EnvelopeError::Magic(*magic));
    }
    if *version != VERSION {
        return Err(EnvelopeError::Version(*version));
    }
    let env =
        rkyv::access::<ArchivedEnvelope, rancor::Error>(archive).map_err(|e| EnvelopeError::Invalid(e.to_string()))?;
    // Node ids are tokens (`cluster.node_id`); anything else is not from a node, and replies
    // go to the origin's subject.
    if !super::config::is_token(env.origin.as_str()) {
        return Err(EnvelopeError::Invalid("the origin is not a node id".into()));
    }
    if let ArchivedBody::Sio(b) = &env.body {
        let via = b.via.to_native() as usize;
        if via >= b.rooms.len().max(1) {
            return Err(EnvelopeError::Invalid(format!("via {via} names none of {} rooms", b.rooms.len())));
        }
    }
    Ok(env)
}

/// An owned copy of a checked envelope (for tests and the fuzz target: the node itself reads
/// envelopes in place).
pub fn to_owned(env: &ArchivedEnvelope) -> Result<Envelope, EnvelopeError> {
    rkyv::deserialize::<Envelope, rancor::Error>(env).map_err(|e| EnvelopeError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sio() -> Envelope {
        Envelope {
            origin: "node-a".into(),
            body: Body::Sio(SioBroadcast {
                nsp: "/".into(),
                rooms: vec!["a".into(), "b".into()],
                via: 1,
                except_rooms: vec!["muted".into()],
                except_socket: Some("sid".into()),
                text: b"2[\"chat\",\"hi\"]".to_vec(),
                binaries: vec![vec![1, 2, 3]],
                offset: None,
            }),
        }
    }

    fn room() -> Envelope {
        Envelope { origin: "n".into(), body: Body::Room(RoomFrame { room: "r".into(), frame: vec![0x81, 1, b'x'] }) }
    }

    /// One envelope of each control body.
    fn control() -> Vec<Envelope> {
        let sel = SioSelector {
            nsp: "/".into(),
            rooms: vec!["a".into()],
            except_rooms: vec!["b".into()],
            except_socket: Some("sid".into()),
        };
        let socket = SioSocket {
            id: "sid".into(),
            nsp: "/".into(),
            rooms: vec!["sid".into(), "a".into()],
            tenant: "default".into(),
            user_id: "u".into(),
        };
        let bodies = [
            Body::Heartbeat(Heartbeat { incarnation: u64::MAX }),
            Body::Leaving,
            Body::Request(Request { id: 7, op: SioOp::Fetch(sel.clone()) }),
            Body::Request(Request { id: 8, op: SioOp::Join { sel: sel.clone(), rooms: vec!["x".into()] } }),
            Body::Request(Request { id: 9, op: SioOp::Leave { sel: sel.clone(), rooms: vec![] } }),
            Body::Request(Request { id: 10, op: SioOp::Disconnect { sel, close: true } }),
            Body::Request(Request {
                id: 0,
                op: SioOp::ServerEmit { nsp: "/".into(), event: "e".into(), args_tail: "1,{}".into(), ack: false },
            }),
            Body::Reply(Reply { id: 7, answer: SioAnswer::Sockets { sockets: vec![socket], truncated: true } }),
            Body::Reply(Reply { id: 8, answer: SioAnswer::Count(3) }),
            Body::Reply(Reply { id: 11, answer: SioAnswer::Ack("\"pong\"".into()) }),
        ];
        bodies.into_iter().map(|body| Envelope { origin: "node-b".into(), body }).collect()
    }

    fn all() -> Vec<Envelope> {
        let mut all = vec![sio(), room()];
        all.extend(control());
        all
    }

    #[test]
    fn round_trips_at_any_offset_of_its_buffer() {
        for env in all() {
            let bytes = encode(&env);
            for pad in 0..8 {
                let mut buf = vec![0u8; pad];
                buf.extend_from_slice(&bytes);
                let view = decode(&buf[pad..]).unwrap();
                let back: Envelope = rkyv::deserialize::<Envelope, rancor::Error>(view).unwrap();
                assert_eq!(back, env);
            }
        }
    }

    #[test]
    fn every_truncation_is_refused_and_never_panics() {
        for env in all() {
            let bytes = encode(&env);
            for cut in 0..bytes.len() {
                if let Ok(v) = decode(&bytes[..cut]) {
                    panic!("cut at {cut} of {}: {v:?} from {env:?}", bytes.len());
                }
            }
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        for env in [sio(), control().swap_remove(7)] {
            let bytes = encode(&env);
            for i in 2..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut b = bytes.clone();
                    b[i] ^= flip;
                    // Either refused, or a valid envelope that differs: never a crash.
                    let _ = decode(&b);
                }
            }
        }
    }

    #[test]
    fn refuses_other_versions_and_foreign_bytes() {
        let mut b = encode(&room());
        b[1] = VERSION + 1;
        assert_eq!(decode(&b).unwrap_err(), EnvelopeError::Version(VERSION + 1));
        assert_eq!(decode(&b).unwrap_err().reason(), "version");
        assert_eq!(decode(b"{\"json\":1}").unwrap_err(), EnvelopeError::Magic(b'{'));
        assert_eq!(decode(&[MAGIC]).unwrap_err(), EnvelopeError::Truncated(1));
    }

    #[test]
    fn refuses_an_origin_that_is_no_node_id() {
        for origin in ["", "a.b", "node>", "x y"] {
            let bytes = encode(&Envelope { origin: origin.into(), body: Body::Leaving });
            assert!(matches!(decode(&bytes), Err(EnvelopeError::Invalid(_))), "{origin:?}");
        }
    }

    #[test]
    fn refuses_a_via_that_names_no_room() {
        let Envelope { origin, body: Body::Sio(mut b) } = sio() else { unreachable!() };
        b.via = 2;
        let bytes = encode(&Envelope { origin, body: Body::Sio(b) });
        assert!(matches!(decode(&bytes), Err(EnvelopeError::Invalid(_))));
    }
}
