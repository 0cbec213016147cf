//! Socket.IO v5 packets (the default `socket.io-parser` text format), as a pure codec.
//!
//! Every Socket.IO packet travels as the text of one Engine.IO `message` (so on the wire it is
//! prefixed with `4`); binary attachments follow as separate Engine.IO binary messages. The
//! text form is
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]
//! ```
//!
//! - `type` is one digit, `0` CONNECT to `6` BINARY_ACK ([`PacketKind`]);
//! - `attachments` is present exactly for the BINARY_* types: how many binary messages follow;
//! - `namespace` is present when it starts with `/` and is not the main namespace `/`. It runs
//!   to the first `,`, or to the end of the text: real clients send `40/custom` and `41/custom`
//!   without the comma, and the test suite does too;
//! - `ack id` is the run of digits right before the data;
//! - `data` is JSON, and is kept exactly as the client sent it (a validated
//!   [`RawValue`], with its key order and spacing), so a server can
//!   forward or echo arguments without re-serialising them.
//!
//! Decoding validates each packet the way the reference parser does (socket.io-parser 4.2),
//! and a little more strictly where the reference is loose in ways no client relies on (see
//! [`decode`]). Any [`SioError`] from decoding means the reference server would close the whole
//! Engine.IO connection, which is what the test suite checks for `4abc`, `42{}` and
//! `42abc[...]`.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The main namespace, implied when a packet names none.
pub const MAIN_NAMESPACE: &str = "/";

/// Event names the reference parser refuses to decode, because its event emitters give them a
/// special meaning; a client that sends one is treated as sending a malformed packet.
pub const RESERVED_EVENTS: [&str; 6] =
    ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// The reference parser's default limit on attachments per packet (`maxAttachments`).
pub const DEFAULT_MAX_ATTACHMENTS: usize = 10;

/// The seven Socket.IO packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// `0`: a client asks to join a namespace (optionally with an auth object); the server
    /// answers with a CONNECT carrying `{"sid": ...}`.
    Connect,
    /// `1`: leave a namespace. Carries no data.
    Disconnect,
    /// `2`: an event: a non-empty array whose first element is the event name.
    Event,
    /// `3`: the answer to an event sent with an ack id; the data are the ack arguments.
    Ack,
    /// `4`: the server refuses a CONNECT, with `{"message": ...}`.
    ConnectError,
    /// `5`: an event whose arguments contain binary attachments (placeholders in the JSON).
    BinaryEvent,
    /// `6`: an ack whose arguments contain binary attachments.
    BinaryAck,
}

impl PacketKind {
    /// All packet kinds, in wire order.
    pub const ALL: [PacketKind; 7] = [
        PacketKind::Connect,
        PacketKind::Disconnect,
        PacketKind::Event,
        PacketKind::Ack,
        PacketKind::ConnectError,
        PacketKind::BinaryEvent,
        PacketKind::BinaryAck,
    ];

    /// The ASCII digit that starts a packet of this kind.
    pub const fn as_byte(self) -> u8 {
        match self {
            PacketKind::Connect => b'0',
            PacketKind::Disconnect => b'1',
            PacketKind::Event => b'2',
            PacketKind::Ack => b'3',
            PacketKind::ConnectError => b'4',
            PacketKind::BinaryEvent => b'5',
            PacketKind::BinaryAck => b'6',
        }
    }

    /// The kind a packet starting with `byte` has, or `None` for anything but `b'0'`..`b'6'`.
    pub const fn from_byte(byte: u8) -> Option<PacketKind> {
        match byte {
            b'0' => Some(PacketKind::Connect),
            b'1' => Some(PacketKind::Disconnect),
            b'2' => Some(PacketKind::Event),
            b'3' => Some(PacketKind::Ack),
            b'4' => Some(PacketKind::ConnectError),
            b'5' => Some(PacketKind::BinaryEvent),
            b'6' => Some(PacketKind::BinaryAck),
            _ => None,
        }
    }

    /// Whether packets of this kind carry an `N-` attachment count and are followed by N binary
    /// messages.
    pub const fn is_binary(self) -> bool {
        matches!(self, PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }

    /// Whether packets of this kind may carry an ack id: events (to request an ack) and acks
    /// (which must).
    pub const fn takes_ack_id(self) -> bool {
        matches!(self, PacketKind::Event | PacketKind::Ack | PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }
}

/// A decoded Socket.IO packet.
#[derive(Clone, Debug)]
pub struct Packet {
    /// The packet type.
    pub kind: PacketKind,
    /// The namespace, [`MAIN_NAMESPACE`] when the packet names none. Never contains a `,`
    /// when decoded; encoders rely on that, since the format has no escape for it.
    pub nsp: String,
    /// The ack id: on an event, the client wants an ACK with this id; on an ACK, the id of the
    /// event it answers.
    pub id: Option<u64>,
    /// The JSON data exactly as sent, validated for the packet kind.
    pub data: Option<Box<RawValue>>,
    /// For BINARY_* packets, how many binary messages follow; 0 otherwise.
    pub attachments: usize,
}

impl Packet {
    /// The data as JSON text, if any.
    pub fn data_json(&self) -> Option<&str> {
        self.data.as_deref().map(RawValue::get)
    }
}

/// Packets are equal when all fields are, comparing the data as JSON text (`RawValue` has no
/// equality of its own): two packets that encode identically are equal.
impl PartialEq for Packet {
    fn eq(&self, other: &Packet) -> bool {
        self.kind == other.kind
            && self.nsp == other.nsp
            && self.id == other.id
            && self.attachments == other.attachments
            && self.data_json() == other.data_json()
    }
}

impl Eq for Packet {}

/// Why a Socket.IO packet (or binary attachment sequence) was refused.
///
/// Every variant is fatal for the whole Engine.IO connection, as in the reference server,
/// where a parser error closes the underlying connection: over WebSocket, close it; over
/// long-polling, close the session (later requests with its `sid` get HTTP 400). None of them
/// is answered with a CONNECT_ERROR, which is reserved for well-formed CONNECTs that are
/// refused (unknown namespace, failed auth).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SioError {
    /// An empty Engine.IO message where a Socket.IO packet was expected.
    #[error("empty packet")]
    Empty,
    /// The first character is not `0`..`6` (the test suite sends `4abc`, i.e. packet `abc`).
    #[error("unknown packet type byte {0:#04x}")]
    UnknownType(u8),
    /// A BINARY_EVENT or BINARY_ACK without an `N-` attachment count right after the type.
    #[error("missing or malformed attachment count")]
    BadAttachments,
    /// An `N-` attachment count on a packet type that cannot have attachments.
    #[error("attachment count on a non-binary packet")]
    UnexpectedAttachments,
    /// More attachments announced than the server allows; refused before any are buffered.
    #[error("more than {max} attachments")]
    TooManyAttachments {
        /// The limit passed to [`decode`].
        max: usize,
    },
    /// The ack id is unusable: junk where the ack id or the data should start (the test
    /// suite's `42abc[...]`), more digits than fit in a `u64`, or an id on CONNECT, DISCONNECT
    /// or CONNECT_ERROR, which never carry one.
    #[error("invalid ack id")]
    BadAckId,
    /// An ACK or BINARY_ACK without an ack id: there is nothing it could answer.
    #[error("ack without an ack id")]
    MissingAckId,
    /// The data are not one valid JSON value, or are followed by something else (trailing
    /// garbage), or start with whitespace.
    #[error("malformed JSON data")]
    Malformed,
    /// CONNECT data that are not a JSON object (the auth payload must be an object).
    #[error("CONNECT data must be an object")]
    BadConnectPayload,
    /// A DISCONNECT with data.
    #[error("DISCONNECT carries no data")]
    UnexpectedPayload,
    /// EVENT or BINARY_EVENT data that are missing or not a non-empty array starting with a
    /// string (the event name); the test suite sends `42{}`.
    #[error("event data must be a non-empty array starting with the event name")]
    BadEventPayload,
    /// An event whose name is one of [`RESERVED_EVENTS`].
    #[error("reserved event name")]
    ReservedEvent,
    /// ACK or BINARY_ACK data that are missing or not an array.
    #[error("ack data must be an array")]
    BadAckPayload,
    /// CONNECT_ERROR data that are neither an object nor a string.
    #[error("CONNECT_ERROR data must be an object or a string")]
    BadConnectErrorPayload,
    /// A placeholder object (`"_placeholder": true`) whose `num` is missing, not a
    /// non-negative integer, or not below the announced attachment count.
    #[error("invalid attachment placeholder")]
    BadPlaceholder,
    /// The distinct placeholders in the data do not match the announced attachment count, so
    /// some attachment would be lost or some placeholder left unresolved.
    #[error("{found} distinct placeholders for {expected} attachments")]
    WrongAttachmentCount {
        /// The attachment count in the packet header.
        expected: usize,
        /// How many distinct placeholder numbers the data reference.
        found: usize,
    },
    /// A text packet arrived while the binary attachments of a previous packet were still
    /// expected.
    #[error("text packet while binary attachments are pending")]
    UnexpectedText,
    /// A binary message arrived while no packet was waiting for attachments.
    #[error("binary message without a pending binary packet")]
    UnexpectedBinary,
}

/// Decodes one Socket.IO packet from the text of an Engine.IO message.
///
/// `max_attachments` bounds the `N-` count of BINARY_* packets (the reference default is
/// [`DEFAULT_MAX_ATTACHMENTS`]), so a client cannot make the server wait for, and buffer, an
/// unbounded number of binary messages.
///
/// Validation per kind:
///
/// | kind          | ack id     | data                                                  |
/// |---------------|------------|-------------------------------------------------------|
/// | CONNECT       | refused    | optional; an object                                   |
/// | DISCONNECT    | refused    | none                                                  |
/// | EVENT         | optional   | required; non-empty array, first element a string that is not a [reserved](RESERVED_EVENTS) name |
/// | ACK           | required   | required; an array                                    |
/// | CONNECT_ERROR | refused    | optional; an object or a string                       |
/// | BINARY_EVENT  | optional   | as EVENT, plus placeholders matching the count ([`check_placeholders`]) |
/// | BINARY_ACK    | required   | as ACK, plus placeholders matching the count          |
///
/// Compared with the reference parser this refuses a few inputs it lets through but that no
/// client produces: ack ids on CONNECT/DISCONNECT/CONNECT_ERROR, ACKs without id or data, an
/// empty attachment count (`5-`), JSON data with leading whitespace, numbers as event names
/// or names that are lone UTF-16 surrogates, placeholder sets that skip or repeat attachment
/// numbers, and binary-packet data nested deeper than serde_json's 128-level recursion limit
/// (non-binary data are skipped iteratively and may nest arbitrarily deep).
pub fn decode(text: &str, max_attachments: usize) -> Result<Packet, SioError> {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(SioError::Empty);
    };
    let kind = PacketKind::from_byte(first).ok_or(SioError::UnknownType(first))?;
    let mut pos = 1;

    // Attachment count: `<digits>-`, only on binary kinds.
    let count_end = digits_end(bytes, pos);
    let dash_follows = bytes.get(count_end) == Some(&b'-');
    let mut attachments = 0;
    if kind.is_binary() {
        if count_end == pos || !dash_follows {
            return Err(SioError::BadAttachments);
        }
        attachments = bytes
            .get(pos..count_end)
            .and_then(parse_decimal)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= max_attachments)
            .ok_or(SioError::TooManyAttachments { max: max_attachments })?;
        pos = count_end + 1;
    } else if count_end > pos && dash_follows {
        return Err(SioError::UnexpectedAttachments);
    }

    // Namespace: from a leading `/` to the first `,` (consumed) or the end of the text.
    let mut nsp = MAIN_NAMESPACE;
    if bytes.get(pos) == Some(&b'/') {
        let rest = text.get(pos..).ok_or(SioError::Malformed)?;
        match rest.find(',') {
            Some(comma) => {
                nsp = rest.get(..comma).ok_or(SioError::Malformed)?;
                pos += comma + 1;
            }
            None => {
                nsp = rest;
                pos = bytes.len();
            }
        }
    }

    // Ack id: the digits right before the data.
    let id_end = digits_end(bytes, pos);
    let id = if id_end > pos {
        let id = bytes.get(pos..id_end).and_then(parse_decimal).ok_or(SioError::BadAckId)?;
        if !kind.takes_ack_id() {
            return Err(SioError::BadAckId);
        }
        pos = id_end;
        Some(id)
    } else {
        None
    };
    if id.is_none() && matches!(kind, PacketKind::Ack | PacketKind::BinaryAck) {
        return Err(SioError::MissingAckId);
    }

    // Data: the rest, which must be exactly one JSON value.
    let json = text.get(pos..).ok_or(SioError::Malformed)?;
    let data = match json.as_bytes().first() {
        None => None,
        Some(&lead) if !starts_json_value(lead) => {
            // Junk where the ack id or the data should be, as in `2abc["x"]`.
            return Err(if kind.takes_ack_id() && !lead.is_ascii_whitespace() {
                SioError::BadAckId
            } else {
                SioError::Malformed
            });
        }
        // The one full parse of a non-binary packet: validates the JSON (one value, nothing
        // but whitespace after it, which is trimmed) while copying it.
        Some(_) => Some(RawValue::from_string(json.to_owned()).map_err(|_| SioError::Malformed)?),
    };
    let shape = data.as_deref().map(|raw| shape_of(raw.get()));

    match kind {
        PacketKind::Connect => {
            if !matches!(shape, None | Some(Shape::Object)) {
                return Err(SioError::BadConnectPayload);
            }
        }
        PacketKind::Disconnect => {
            if shape.is_some() {
                return Err(SioError::UnexpectedPayload);
            }
        }
        PacketKind::Event | PacketKind::BinaryEvent => match shape {
            Some(Shape::Array(Head::Name)) => {}
            Some(Shape::Array(Head::Reserved)) => return Err(SioError::ReservedEvent),
            _ => return Err(SioError::BadEventPayload),
        },
        PacketKind::Ack | PacketKind::BinaryAck => {
            if !matches!(shape, Some(Shape::Array(_))) {
                return Err(SioError::BadAckPayload);
            }
        }
        PacketKind::ConnectError => {
            if !matches!(shape, None | Some(Shape::Object) | Some(Shape::String)) {
                return Err(SioError::BadConnectErrorPayload);
            }
        }
    }
    if kind.is_binary() {
        // Binary packets always have data here (the kind checks above require it).
        if let Some(raw) = data.as_deref() {
            check_placeholders(raw, attachments)?;
        }
    }

    Ok(Packet { kind, nsp: nsp.to_owned(), id, data, attachments })
}

/// Checks the binary placeholders of `data` against an attachment count.
///
/// A placeholder is any object, at any depth, whose `_placeholder` member is `true`; the
/// reference replaces it with attachment number `num`. Every placeholder's `num` must be a
/// non-negative integer below `attachments` ([`SioError::BadPlaceholder`] otherwise), and the
/// distinct numbers used must be exactly `attachments` many, so every attachment is referenced
/// ([`SioError::WrongAttachmentCount`] otherwise). The JSON itself is left untouched.
/// [`decode`] already runs this for BINARY_* packets; it is public for packets built locally.
pub fn check_placeholders(data: &RawValue, attachments: usize) -> Result<(), SioError> {
    let mut slots = vec![false; attachments];
    scan_placeholders(data.get(), &mut slots)?;
    check_slots(&slots)
}

/// Fails unless every attachment slot was referenced by a placeholder.
fn check_slots(slots: &[bool]) -> Result<(), SioError> {
    let found = slots.iter().filter(|&&seen| seen).count();
    if found == slots.len() {
        Ok(())
    } else {
        Err(SioError::WrongAttachmentCount { expected: slots.len(), found })
    }
}

/// The event name of an EVENT or BINARY_EVENT: the first array element, unescaped. Borrowed
/// from the packet unless the name contains JSON escapes. `None` for other kinds or data that
/// are not an array starting with a string (which [`decode`] never produces for events).
///
/// Reads only the name, not the arguments after it, so it stays cheap for large events.
pub fn event_name(packet: &Packet) -> Option<Cow<'_, str>> {
    if !matches!(packet.kind, PacketKind::Event | PacketKind::BinaryEvent) {
        return None;
    }
    first_string(packet.data_json()?)
}

/// The arguments of an event or ack as raw JSON text, exactly as sent and without the
/// brackets: for `["chat",1,{"a":2}]` (an event) `1,{"a":2}`; for `[1,{"a":2}]` (an ack) the
/// same. Empty when there are no arguments.
///
/// This is the form [`encode_event`] and [`encode_ack`] take, so a server can echo or forward
/// arguments (`42["message",...]` to `42["message-back",...]`, or an event's arguments into
/// its ACK) with one copy and no JSON round trip. `None` for other kinds or data that are not
/// shaped like a decoded event or ack.
pub fn args_tail(packet: &Packet) -> Option<&str> {
    let json = packet.data_json()?;
    let last = json.len().checked_sub(1)?;
    if !json.starts_with('[') || !json.ends_with(']') {
        return None;
    }
    let start = match packet.kind {
        PacketKind::Event | PacketKind::BinaryEvent => {
            let (_, name_end) = leading_string(json)?;
            let after = name_end + count_ws(json.get(name_end..)?);
            match json.as_bytes().get(after)? {
                b',' => after + 1,
                b']' => return Some(""),
                _ => return None,
            }
        }
        PacketKind::Ack | PacketKind::BinaryAck => 1,
        _ => return None,
    };
    Some(json.get(start..last)?.trim_matches(is_json_ws))
}

/// The arguments of an event (after the name) or of an ack, each as its own raw JSON value
/// borrowed from the packet, for handlers that take arguments one by one without building a
/// `serde_json::Value`. Parses the array once.
pub fn args_raw(packet: &Packet) -> Result<Vec<&RawValue>, SioError> {
    let skip = match packet.kind {
        PacketKind::Event | PacketKind::BinaryEvent => 1,
        PacketKind::Ack | PacketKind::BinaryAck => 0,
        _ => return Err(SioError::BadEventPayload),
    };
    let json = packet.data_json().ok_or(SioError::BadEventPayload)?;
    let mut items: Vec<&RawValue> = serde_json::from_str(json).map_err(|_| SioError::Malformed)?;
    if items.len() < skip {
        return Err(SioError::BadEventPayload);
    }
    items.drain(..skip);
    Ok(items)
}

/// The exact length of [`encode`]'s output.
pub fn encoded_len(kind: PacketKind, nsp: &str, id: Option<u64>, data: Option<&str>, attachments: usize) -> usize {
    header_len(kind, nsp, id, attachments) + data.map_or(0, str::len)
}

/// Encodes a packet in compact form: the attachment count only for BINARY_* kinds (ignored
/// otherwise), the namespace only when it is not `/` (an empty one counts as `/`), then the
/// ack id and the data verbatim. One allocation of exactly the right size.
///
/// The caller guarantees what decoding guarantees: `nsp` starts with `/` and has no `,`, and
/// `data` is valid JSON of the right shape for `kind`.
pub fn encode(kind: PacketKind, nsp: &str, id: Option<u64>, data: Option<&str>, attachments: usize) -> String {
    let mut out = String::with_capacity(encoded_len(kind, nsp, id, data, attachments));
    write_header(&mut out, kind, nsp, id, attachments);
    out.push_str(data.unwrap_or(""));
    out
}

/// Appends the [`encode`] form to `out`, reserving exactly what it needs. Lets a caller put the
/// Engine.IO `4` in front (or batch several packets) in the same buffer.
pub fn encode_into(
    out: &mut String,
    kind: PacketKind,
    nsp: &str,
    id: Option<u64>,
    data: Option<&str>,
    attachments: usize,
) {
    out.reserve_exact(encoded_len(kind, nsp, id, data, attachments));
    write_header(out, kind, nsp, id, attachments);
    out.push_str(data.unwrap_or(""));
}

/// Encodes a decoded (or locally built) packet; `decode(&encode_packet(p))` gives back `p`.
pub fn encode_packet(packet: &Packet) -> String {
    encode(packet.kind, &packet.nsp, packet.id, packet.data_json(), packet.attachments)
}

/// Encodes an event `[<event>,<args_tail>]`: `event` is escaped as a JSON string, `args_tail`
/// is raw JSON values separated by commas, without brackets (as [`args_tail`] returns; empty
/// for none). With `attachments > 0` the packet is a BINARY_EVENT and `args_tail` must contain
/// the matching placeholders. One exactly sized allocation.
pub fn encode_event(nsp: &str, id: Option<u64>, event: &str, args_tail: &str, attachments: usize) -> String {
    let mut out = String::new();
    encode_event_into(&mut out, nsp, id, event, args_tail, attachments);
    out
}

/// Appends the [`encode_event`] form to `out`, reserving exactly what it needs.
pub fn encode_event_into(
    out: &mut String,
    nsp: &str,
    id: Option<u64>,
    event: &str,
    args_tail: &str,
    attachments: usize,
) {
    let kind = if attachments > 0 { PacketKind::BinaryEvent } else { PacketKind::Event };
    let args_len = if args_tail.is_empty() { 0 } else { 1 + args_tail.len() };
    out.reserve_exact(header_len(kind, nsp, id, attachments) + 2 + json_str_len(event) + args_len);
    write_header(out, kind, nsp, id, attachments);
    out.push('[');
    write_json_str(out, event);
    if !args_tail.is_empty() {
        out.push(',');
        out.push_str(args_tail);
    }
    out.push(']');
}

/// Encodes an ACK `[<args_tail>]` for ack id `id` (a BINARY_ACK when `attachments > 0`).
pub fn encode_ack(nsp: &str, id: u64, args_tail: &str, attachments: usize) -> String {
    let mut out = String::new();
    encode_ack_into(&mut out, nsp, id, args_tail, attachments);
    out
}

/// Appends the [`encode_ack`] form to `out`, reserving exactly what it needs.
pub fn encode_ack_into(out: &mut String, nsp: &str, id: u64, args_tail: &str, attachments: usize) {
    let kind = if attachments > 0 { PacketKind::BinaryAck } else { PacketKind::Ack };
    out.reserve_exact(header_len(kind, nsp, Some(id), attachments) + 2 + args_tail.len());
    write_header(out, kind, nsp, Some(id), attachments);
    out.push('[');
    out.push_str(args_tail);
    out.push(']');
}

/// Encodes the server's CONNECT answer `{"sid":"<sid>"}` (the test suite checks the object
/// has exactly the key `sid`).
pub fn encode_connect(nsp: &str, sid: &str) -> String {
    encode_object_with_string(PacketKind::Connect, nsp, "{\"sid\":", sid)
}

/// Encodes a CONNECT_ERROR `{"message":"<message>"}`, e.g. `4/random,{"message":"Invalid
/// namespace"}` as the test suite expects for an unknown namespace.
pub fn encode_connect_error(nsp: &str, message: &str) -> String {
    encode_object_with_string(PacketKind::ConnectError, nsp, "{\"message\":", message)
}

/// Encodes a DISCONNECT for `nsp` (`1`, or `1/admin,`).
pub fn encode_disconnect(nsp: &str) -> String {
    encode(PacketKind::Disconnect, nsp, None, None, 0)
}

/// Encodes `<header><prefix>"<value>"}`, the one-string-member objects of CONNECT and
/// CONNECT_ERROR.
fn encode_object_with_string(kind: PacketKind, nsp: &str, prefix: &str, value: &str) -> String {
    let mut out = String::with_capacity(header_len(kind, nsp, None, 0) + prefix.len() + json_str_len(value) + 1);
    write_header(&mut out, kind, nsp, None, 0);
    out.push_str(prefix);
    write_json_str(&mut out, value);
    out.push('}');
    out
}

/// Collects the binary attachments that follow a BINARY_EVENT or BINARY_ACK.
///
/// Feed it every Socket.IO message of one connection in arrival order: text through
/// [`push_text`](Self::push_text) (or decoded packets through
/// [`push_packet`](Self::push_packet)) and Engine.IO binary messages through
/// [`push_binary`](Self::push_binary). Each call returns `Some((packet, attachments))` once a
/// packet is complete: immediately for non-binary packets, after the announced number of
/// binary messages for binary ones. Placeholders stay in the packet's JSON; attachment `k` is
/// `attachments[k]`.
///
/// Any error is fatal for the connection, as in the reference decoder, and leaves the
/// assembler as it was. Buffered memory is bounded by the `max_attachments` given to
/// [`decode`] times the Engine.IO message size limit.
#[derive(Debug, Default)]
pub struct BinaryAssembler {
    /// The binary packet waiting for attachments, and those received so far.
    pending: Option<(Packet, Vec<Bytes>)>,
}

/// A complete packet and its binary attachments, in placeholder order (empty for non-binary
/// packets).
pub type Assembled = (Packet, Vec<Bytes>);

impl BinaryAssembler {
    /// An assembler with nothing pending.
    pub fn new() -> BinaryAssembler {
        BinaryAssembler { pending: None }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// How many more binary messages the pending packet needs (0 when none is pending).
    pub fn missing(&self) -> usize {
        self.pending.as_ref().map_or(0, |(packet, got)| packet.attachments.saturating_sub(got.len()))
    }

    /// Decodes a text message and feeds the packet in. A text message while attachments are
    /// pending is refused before it is decoded, as the reference does.
    pub fn push_text(&mut self, text: &str, max_attachments: usize) -> Result<Option<Assembled>, SioError> {
        if self.pending.is_some() {
            return Err(SioError::UnexpectedText);
        }
        self.push_packet(decode(text, max_attachments)?)
    }

    /// Feeds a decoded packet in. Packets from [`decode`] have consistent placeholders; a
    /// locally built binary packet should go through [`check_placeholders`] first.
    pub fn push_packet(&mut self, packet: Packet) -> Result<Option<Assembled>, SioError> {
        if self.pending.is_some() {
            return Err(SioError::UnexpectedText);
        }
        if packet.kind.is_binary() && packet.attachments > 0 {
            let buffers = Vec::with_capacity(packet.attachments);
            self.pending = Some((packet, buffers));
            return Ok(None);
        }
        Ok(Some((packet, Vec::new())))
    }

    /// Feeds an Engine.IO binary message in: the next attachment of the pending packet.
    pub fn push_binary(&mut self, data: Bytes) -> Result<Option<Assembled>, SioError> {
        let Some((packet, buffers)) = self.pending.as_mut() else {
            return Err(SioError::UnexpectedBinary);
        };
        buffers.push(data);
        if buffers.len() < packet.attachments {
            return Ok(None);
        }
        Ok(self.pending.take())
    }

    /// Drops any pending packet and its attachments (for example when the connection closes).
    pub fn reset(&mut self) {
        self.pending = None;
    }
}

/// The top-level shape of validated JSON data, which is all the per-kind rules look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// An object.
    Object,
    /// An array, with what its first element is.
    Array(Head),
    /// A string.
    String,
    /// A number, boolean or null.
    Other,
}

/// The first element of the top-level array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    /// The array is empty.
    Empty,
    /// A string that can be an event name.
    Name,
    /// A string that is a reserved event name (compared after unescaping, as the reference
    /// compares the parsed string, so `"\u0063onnect"` is reserved too).
    Reserved,
    /// Anything else.
    NotString,
}

/// The shape of `json`, which must already be validated (and trimmed): in valid JSON the first
/// byte tells the type of the value, and the first non-whitespace byte after `[` the type of
/// the first element, so no second parse is needed.
fn shape_of(json: &str) -> Shape {
    match json.as_bytes().first() {
        Some(b'{') => Shape::Object,
        Some(b'"') => Shape::String,
        Some(b'[') => {
            let after = json.get(1..).unwrap_or("");
            Shape::Array(match after.as_bytes().get(count_ws(after)) {
                Some(b']') => Head::Empty,
                Some(b'"') => match first_string(json) {
                    Some(name) if RESERVED_EVENTS.contains(&name.as_ref()) => Head::Reserved,
                    Some(_) => Head::Name,
                    // Unreachable for validated JSON; refusing is the safe answer.
                    None => Head::NotString,
                },
                _ => Head::NotString,
            })
        }
        _ => Shape::Other,
    }
}

/// Mutable state of one placeholder scan: the attachment slots placeholders mark, and the
/// error that aborted the scan, if any. The error travels here because serde can only return
/// its own error type through the deserializer.
struct ScanState<'a> {
    slots: &'a mut [bool],
    error: Option<SioError>,
}

/// Walks all of `json` without building anything and marks the slot of every placeholder;
/// a bad placeholder fails the scan. serde_json's recursion limit (128 levels) bounds the
/// nesting, so hostile input cannot exhaust the stack.
fn scan_placeholders(json: &str, slots: &mut [bool]) -> Result<(), SioError> {
    let mut state = ScanState { slots, error: None };
    let mut de = serde_json::Deserializer::from_str(json);
    let result = Scan { state: &mut state }.deserialize(&mut de).and_then(|()| de.end());
    result.map_err(|_| state.error.take().unwrap_or(SioError::Malformed))
}

/// A serde seed that walks one JSON value of any type; see [`scan_placeholders`].
struct Scan<'s, 'a> {
    state: &'s mut ScanState<'a>,
}

impl<'de> DeserializeSeed<'de> for Scan<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.state;
        while seq.next_element_seed(Scan { state: &mut *state })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.state;
        // Later duplicates win, as with JSON.parse.
        let mut is_placeholder = false;
        let mut num = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Key::Placeholder => is_placeholder = map.next_value_seed(IsTrue)?,
                Key::Num => num = map.next_value_seed(Index)?,
                Key::Other => map.next_value_seed(Scan { state: &mut *state })?,
            }
        }
        if is_placeholder {
            let slot = num.and_then(|n| usize::try_from(n).ok()).and_then(|n| state.slots.get_mut(n));
            match slot {
                Some(slot) => *slot = true,
                None => {
                    state.error = Some(SioError::BadPlaceholder);
                    return Err(de::Error::custom("invalid placeholder"));
                }
            }
        }
        Ok(())
    }
}

/// The object keys that matter to placeholders.
enum Key {
    Placeholder,
    Num,
    Other,
}

/// Reads an object key into [`Key`] without allocating (escaped keys are unescaped by
/// serde_json first, as `JSON.parse` would).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "_placeholder" => Key::Placeholder,
            "num" => Key::Num,
            _ => Key::Other,
        })
    }
}

/// Reads any value and reports whether it is exactly `true` (the reference tests
/// `_placeholder === true`).
struct IsTrue;

impl<'de> DeserializeSeed<'de> for IsTrue {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IsTrue {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// Reads any value and returns it as an attachment index when it is a non-negative integer
/// (`0`, or `0.0` / `1e0`, which `JSON.parse` turns into the same numbers).
struct Index;

/// Above this a JSON number may not be an exact integer in JavaScript.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

impl<'de> DeserializeSeed<'de> for Index {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<u64>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Index {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u64>, E> {
        Ok(u64::try_from(v).ok())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u64>, E> {
        Ok(Some(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<u64>, E> {
        let integral = (0.0..=MAX_SAFE_INTEGER).contains(&v) && v.fract() == 0.0;
        Ok(integral.then_some(v as u64))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Whether a JSON value can start with `byte` (digits excluded: they were taken as the ack id).
fn starts_json_value(byte: u8) -> bool {
    matches!(byte, b'{' | b'[' | b'"' | b'-' | b't' | b'f' | b'n')
}

/// JSON's insignificant whitespace.
fn is_json_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// How many JSON whitespace bytes `s` starts with.
fn count_ws(s: &str) -> usize {
    s.bytes().take_while(|&b| is_json_ws(char::from(b))).count()
}

/// The first element of the JSON array `json` if it is a string, unescaped; borrowed unless it
/// contains escapes. Finds the string by scanning for its closing quote, so it reads only the
/// name however large the rest of the array is.
fn first_string(json: &str) -> Option<Cow<'_, str>> {
    let (start, end) = leading_string(json)?;
    let quoted = json.get(start..end)?;
    let inner = quoted.get(1..quoted.len().saturating_sub(1))?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The byte range (quotes included) of the string that is the first element of the JSON array
/// `json`, found by scanning for the closing quote; valid because the data were validated.
fn leading_string(json: &str) -> Option<(usize, usize)> {
    let bytes = json.as_bytes();
    if bytes.first() != Some(&b'[') {
        return None;
    }
    let start = 1 + count_ws(json.get(1..)?);
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some((start, i + 1)),
            _ => i += 1,
        }
    }
    None
}

/// The end of the run of ASCII digits starting at `from`.
fn digits_end(bytes: &[u8], from: usize) -> usize {
    from + bytes.get(from..).map_or(0, |rest| rest.iter().take_while(|b| b.is_ascii_digit()).count())
}

/// Parses ASCII digits as a `u64`; `None` on overflow (or an empty or non-digit input).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether `nsp` is written out (anything but the main namespace; empty counts as main).
fn names_namespace(nsp: &str) -> bool {
    !nsp.is_empty() && nsp != MAIN_NAMESPACE
}

/// Length of everything before the data.
fn header_len(kind: PacketKind, nsp: &str, id: Option<u64>, attachments: usize) -> usize {
    1 + if kind.is_binary() { dec_len(attachments as u64) + 1 } else { 0 }
        + if names_namespace(nsp) { nsp.len() + 1 } else { 0 }
        + id.map_or(0, dec_len)
}

/// Writes everything before the data.
fn write_header(out: &mut String, kind: PacketKind, nsp: &str, id: Option<u64>, attachments: usize) {
    out.push(char::from(kind.as_byte()));
    if kind.is_binary() {
        write_dec(out, attachments as u64);
        out.push('-');
    }
    if names_namespace(nsp) {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        write_dec(out, id);
    }
}

/// Number of decimal digits of `n`.
fn dec_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// Appends `n` in decimal.
fn write_dec(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &buf[i..] {
        out.push(char::from(digit));
    }
}

/// The JSON escape of one byte, if it needs one: quote, backslash and the C0 controls, as both
/// `JSON.stringify` and serde_json escape them (neither escapes `/` or non-ASCII).
fn json_escape(byte: u8) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b", "\\t", "\\n",
        "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014",
        "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e",
        "\\u001f",
    ];
    match byte {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        0..=0x1f => CONTROL.get(usize::from(byte)).copied(),
        _ => None,
    }
}

/// Length of `s` as a quoted JSON string.
fn json_str_len(s: &str) -> usize {
    2 + s.bytes().map(|b| json_escape(b).map_or(1, str::len)).sum::<usize>()
}

/// Appends `s` as a quoted JSON string. Escaped bytes are all ASCII, so slicing `s` around
/// them always lands on character boundaries.
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut run_start = 0;
    for (i, b) in s.bytes().enumerate() {
        if let Some(escape) = json_escape(b) {
            out.push_str(s.get(run_start..i).unwrap_or(""));
            out.push_str(escape);
            run_start = i + 1;
        }
    }
    out.push_str(s.get(run_start..).unwrap_or(""));
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = DEFAULT_MAX_ATTACHMENTS;

    fn d(text: &str) -> Packet {
        decode(text, MAX).unwrap_or_else(|e| panic!("{text:?} should decode: {e}"))
    }

    fn err(text: &str) -> SioError {
        match decode(text, MAX) {
            Ok(p) => panic!("{text:?} should fail, got {p:?}"),
            Err(e) => e,
        }
    }

    fn packet(kind: PacketKind, nsp: &str, id: Option<u64>, data: Option<&str>, attachments: usize) -> Packet {
        Packet {
            kind,
            nsp: nsp.to_string(),
            id,
            data: data.map(|d| RawValue::from_string(d.to_string()).unwrap()),
            attachments,
        }
    }

    /// Decodes `text`, checks the fields, and checks that encoding gives `text` back (or
    /// `canonical` when the input was not in compact form).
    fn check(text: &str, want: Packet, canonical: Option<&str>) {
        let got = d(text);
        assert_eq!(got, want, "decoding {text:?}");
        let encoded = encode_packet(&got);
        assert_eq!(encoded, canonical.unwrap_or(text), "encoding {text:?}");
        assert_eq!(encoded.len(), encoded.capacity(), "exact capacity for {text:?}");
        assert_eq!(d(&encoded), got, "re-decoding {text:?}");
    }

    const PH0: &str = r#"{"_placeholder":true,"num":0}"#;
    const PH1: &str = r#"{"_placeholder":true,"num":1}"#;

    #[test]
    fn kind_bytes() {
        for (i, kind) in PacketKind::ALL.iter().enumerate() {
            assert_eq!(kind.as_byte(), b'0' + i as u8);
            assert_eq!(PacketKind::from_byte(kind.as_byte()), Some(*kind));
        }
        assert_eq!(PacketKind::from_byte(b'7'), None);
        assert!(PacketKind::BinaryAck.is_binary() && !PacketKind::Ack.is_binary());
    }

    /// Every example of the v5 protocol document's "Packet encoding" section.
    #[test]
    fn spec_examples() {
        use PacketKind::*;
        check("0", packet(Connect, "/", None, None, 0), None);
        check(
            r#"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#,
            packet(Connect, "/admin", None, Some(r#"{"sid":"oSO0OpakMV_3jnilAAAA"}"#), 0),
            None,
        );
        check(
            r#"4{"message":"Not authorized"}"#,
            packet(ConnectError, "/", None, Some(r#"{"message":"Not authorized"}"#), 0),
            None,
        );
        check(r#"2["foo"]"#, packet(Event, "/", None, Some(r#"["foo"]"#), 0), None);
        check(r#"2/admin,["bar"]"#, packet(Event, "/admin", None, Some(r#"["bar"]"#), 0), None);
        let one = format!(r#"["baz",{PH0}]"#);
        check(&format!("51-{one}"), packet(BinaryEvent, "/", None, Some(&one), 1), None);
        let two = format!(r#"["baz",{PH0},{PH1}]"#);
        check(&format!("52-/admin,{two}"), packet(BinaryEvent, "/admin", None, Some(&two), 2), None);
        check(r#"212["foo"]"#, packet(Event, "/", Some(12), Some(r#"["foo"]"#), 0), None);
        check(r#"3/admin,13["bar"]"#, packet(Ack, "/admin", Some(13), Some(r#"["bar"]"#), 0), None);
        let bar = format!(r#"["bar",{PH0}]"#);
        check(&format!("61-15{bar}"), packet(BinaryAck, "/", Some(15), Some(&bar), 1), None);
        check("1", packet(Disconnect, "/", None, None, 0), None);
        check("1/admin,", packet(Disconnect, "/admin", None, None, 0), None);
    }

    /// The sample session of the v5 document (Socket.IO part, without the Engine.IO `4`).
    #[test]
    fn spec_sample_session() {
        use PacketKind::*;
        check("0", packet(Connect, "/", None, None, 0), None);
        check(
            r#"0{"sid":"wZX3oN0bSVIhsaknAAAI"}"#,
            packet(Connect, "/", None, Some(r#"{"sid":"wZX3oN0bSVIhsaknAAAI"}"#), 0),
            None,
        );
        check(r#"2["hey","Jude"]"#, packet(Event, "/", None, Some(r#"["hey","Jude"]"#), 0), None);
        check("0/admin,", packet(Connect, "/admin", None, None, 0), None);
        check(
            r#"0/admin,{"sid":"-G5j-67EZFp-q59rADQM"}"#,
            packet(Connect, "/admin", None, Some(r#"{"sid":"-G5j-67EZFp-q59rADQM"}"#), 0),
            None,
        );
        check(r#"2/admin,1["tellme"]"#, packet(Event, "/admin", Some(1), Some(r#"["tellme"]"#), 0), None);
        let ack = format!("[{PH0}]");
        check(&format!("61-/admin,1{ack}"), packet(BinaryAck, "/admin", Some(1), Some(&ack), 1), None);
        assert_eq!(encode_connect("/", "wZX3oN0bSVIhsaknAAAI"), r#"0{"sid":"wZX3oN0bSVIhsaknAAAI"}"#);
        assert_eq!(encode_connect("/admin", "-G5j-67EZFp-q59rADQM"), r#"0/admin,{"sid":"-G5j-67EZFp-q59rADQM"}"#);
        assert_eq!(encode_event("/", None, "hey", r#""Jude""#, 0), r#"2["hey","Jude"]"#);
        assert_eq!(encode_ack("/admin", 1, PH0, 1), format!("61-/admin,1[{PH0}]"));
        assert_eq!(encode_disconnect("/"), "1");
        assert_eq!(encode_disconnect("/admin"), "1/admin,");
        assert_eq!(encode_connect_error("/", "Not authorized"), r#"4{"message":"Not authorized"}"#);
    }

    /// What the socket.io-protocol v5 test suite sends, and what it expects back, with the
    /// server behaviour of its reference configuration built from these helpers.
    #[test]
    fn test_suite_packets() {
        use PacketKind::*;
        // Connections: with and without namespace, auth payload and trailing comma.
        check("0", packet(Connect, "/", None, None, 0), None);
        let auth = d(r#"0{"token":"123"}"#);
        assert_eq!(auth.data_json(), Some(r#"{"token":"123"}"#));
        assert_eq!(
            encode_event("/", None, "auth", auth.data_json().unwrap_or("{}"), 0),
            r#"2["auth",{"token":"123"}]"#
        );
        assert_eq!(encode_event("/", None, "auth", "{}", 0), r#"2["auth",{}]"#);
        check("0/custom,", packet(Connect, "/custom", None, None, 0), None);
        check("0/custom", packet(Connect, "/custom", None, None, 0), Some("0/custom,"));
        let custom = d(r#"0/custom,{"token":"abc"}"#);
        assert_eq!(custom, packet(Connect, "/custom", None, Some(r#"{"token":"abc"}"#), 0));
        assert_eq!(
            encode_event(&custom.nsp, None, "auth", custom.data_json().unwrap_or("{}"), 0),
            r#"2/custom,["auth",{"token":"abc"}]"#
        );
        check("0/random", packet(Connect, "/random", None, None, 0), Some("0/random,"));
        assert_eq!(encode_connect_error("/random", "Invalid namespace"), r#"4/random,{"message":"Invalid namespace"}"#);
        // Invalid handshake `4abc` is packet `abc`.
        assert_eq!(err("abc"), SioError::UnknownType(b'a'));
        // Disconnections.
        check("1", packet(Disconnect, "/", None, None, 0), None);
        check("1/custom", packet(Disconnect, "/custom", None, None, 0), Some("1/custom,"));

        // Plain echo.
        let msg = d(r#"2["message",1,"2",{"3":[true]}]"#);
        assert_eq!(event_name(&msg).as_deref(), Some("message"));
        let tail = args_tail(&msg).unwrap();
        assert_eq!(tail, r#"1,"2",{"3":[true]}"#);
        assert_eq!(encode_event(&msg.nsp, None, "message-back", tail, 0), r#"2["message-back",1,"2",{"3":[true]}]"#);

        // Echo with an ack: the event's arguments become the ack's.
        let msg = d(r#"2456["message-with-ack",1,"2",{"3":[false]}]"#);
        assert_eq!(msg.id, Some(456));
        assert_eq!(event_name(&msg).as_deref(), Some("message-with-ack"));
        let id = msg.id.unwrap();
        assert_eq!(encode_ack(&msg.nsp, id, args_tail(&msg).unwrap(), 0), r#"3456[1,"2",{"3":[false]}]"#);

        // Binary echo, through the assembler.
        let mut asm = BinaryAssembler::new();
        let header = format!(r#"52-["message",{PH0},{PH1}]"#);
        assert_eq!(asm.push_text(&header, MAX).unwrap(), None);
        assert_eq!(asm.missing(), 2);
        assert_eq!(asm.push_binary(Bytes::from_static(&[1, 2, 3])).unwrap(), None);
        let (p, bins) = asm.push_binary(Bytes::from_static(&[4, 5, 6])).unwrap().unwrap();
        assert!(!asm.is_pending());
        assert_eq!(bins, vec![Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[4, 5, 6])]);
        assert_eq!(
            encode_event(&p.nsp, p.id, "message-back", args_tail(&p).unwrap(), p.attachments),
            format!(r#"52-["message-back",{PH0},{PH1}]"#)
        );

        // Binary echo with an ack.
        let header = format!(r#"52-789["message-with-ack",{PH0},{PH1}]"#);
        assert_eq!(asm.push_text(&header, MAX).unwrap(), None);
        asm.push_binary(Bytes::from_static(&[1, 2, 3])).unwrap();
        let (p, bins) = asm.push_binary(Bytes::from_static(&[4, 5, 6])).unwrap().unwrap();
        assert_eq!(bins.len(), 2);
        assert_eq!(
            encode_ack(&p.nsp, p.id.unwrap(), args_tail(&p).unwrap(), p.attachments),
            format!(r#"62-789[{PH0},{PH1}]"#)
        );

        // The three "close the connection upon invalid format" cases.
        assert_eq!(err("abc"), SioError::UnknownType(b'a'));
        assert_eq!(err("2{}"), SioError::BadEventPayload);
        assert_eq!(err(r#"2abc["message-with-ack",1,"2",{"3":[false]}]"#), SioError::BadAckId);
    }

    #[test]
    fn data_is_kept_verbatim() {
        for text in [
            r#"2["ev",{"b":1,"a":2,"c":{"z":[3,2,1],"y":null}}]"#,
            r#"2["ev", {"b" : 1 ,"a":[1, 2]} ,  "x"]"#,
            r#"2["ev",1.50,1e3,-0,"\u00e9\n",true]"#,
            r#"3/admin,7[ {"k":"v"} ]"#,
            "0{\n  \"token\": \"t\"\n}",
            r#"4"plain string error""#,
        ] {
            let p = d(text);
            let data_start = text.find(['[', '{', '"']).unwrap();
            assert_eq!(p.data_json(), Some(&text[data_start..]));
            assert_eq!(encode_packet(&p), text);
        }
        // Trailing whitespace after the value is allowed and dropped.
        let p = d("2[\"x\"] \n");
        assert_eq!(p.data_json(), Some(r#"["x"]"#));
        assert_eq!(encode_packet(&p), r#"2["x"]"#);
    }

    #[test]
    fn non_canonical_headers() {
        use PacketKind::*;
        check(r#"2007["x"]"#, packet(Event, "/", Some(7), Some(r#"["x"]"#), 0), Some(r#"27["x"]"#));
        check(
            r#"501-["x",{"_placeholder":true,"num":0}]"#,
            packet(BinaryEvent, "/", None, Some(&format!(r#"["x",{PH0}]"#)), 1),
            Some(&format!(r#"51-["x",{PH0}]"#)),
        );
        check(r#"2/,["x"]"#, packet(Event, "/", None, Some(r#"["x"]"#), 0), Some(r#"2["x"]"#));
        check("0/,", packet(Connect, "/", None, None, 0), Some("0"));
        check(r#"50-["x"]"#, packet(BinaryEvent, "/", None, Some(r#"["x"]"#), 0), None);
        check(&format!("2{}[\"x\"]", u64::MAX), packet(Event, "/", Some(u64::MAX), Some(r#"["x"]"#), 0), None);
        check(r#"2/ünï,["x"]"#, packet(Event, "/ünï", None, Some(r#"["x"]"#), 0), None);
        // Number-like namespace text stays in the namespace when there is no comma.
        check("1/abc123", packet(Disconnect, "/abc123", None, None, 0), Some("1/abc123,"));
    }

    #[test]
    fn errors() {
        assert_eq!(err(""), SioError::Empty);
        assert_eq!(err("7"), SioError::UnknownType(b'7'));
        assert_eq!(err("9[]"), SioError::UnknownType(b'9'));
        assert_eq!(err("é"), SioError::UnknownType(0xc3));
        // Events.
        assert_eq!(err("2"), SioError::BadEventPayload);
        assert_eq!(err("2/admin,"), SioError::BadEventPayload);
        assert_eq!(err("212"), SioError::BadEventPayload);
        assert_eq!(err("2[]"), SioError::BadEventPayload);
        assert_eq!(err("2[1]"), SioError::BadEventPayload);
        assert_eq!(err(r#"2[["x"]]"#), SioError::BadEventPayload);
        assert_eq!(err(r#"2"x""#), SioError::BadEventPayload);
        assert_eq!(err("2null"), SioError::BadEventPayload);
        assert_eq!(err(r#"2["connect"]"#), SioError::ReservedEvent);
        assert_eq!(err(r#"2["disconnecting",1]"#), SioError::ReservedEvent);
        assert_eq!(err(r#"2["removeListener"]"#), SioError::ReservedEvent);
        assert_eq!(err(r#"2["\u0063onnect"]"#), SioError::ReservedEvent);
        assert_eq!(err(r#"5[ "disconnect" ]"#), SioError::BadAttachments);
        assert_eq!(err(r#"50-[ "disconnect" ]"#), SioError::ReservedEvent);
        assert_eq!(d(r#"2["x","connect"]"#).kind, PacketKind::Event);
        // A lone surrogate is valid JSON text but cannot be a Rust string, so it cannot name an
        // event here (JavaScript would accept it); as an argument it is carried verbatim.
        assert_eq!(err(r#"2["\ud800"]"#), SioError::BadEventPayload);
        assert_eq!(d(r#"2["x","\ud800"]"#).data_json(), Some(r#"["x","\ud800"]"#));
        // Ack ids.
        assert_eq!(err(r#"2abc["x"]"#), SioError::BadAckId);
        assert_eq!(err(r#"212x["x"]"#), SioError::BadAckId);
        assert_eq!(err(r#"2/admin,abc["x"]"#), SioError::BadAckId);
        assert_eq!(err(r#"218446744073709551616["x"]"#), SioError::BadAckId);
        assert_eq!(err(r#"299999999999999999999999999999["x"]"#), SioError::BadAckId);
        assert_eq!(err("0123{}"), SioError::BadAckId);
        assert_eq!(err("1/admin,5"), SioError::BadAckId);
        assert_eq!(err("42abc"), SioError::BadAckId);
        assert_eq!(err(r#"3["x"]"#), SioError::MissingAckId);
        assert_eq!(err("3"), SioError::MissingAckId);
        assert_eq!(err(format!("61-[{PH0}]").as_str()), SioError::MissingAckId);
        assert_eq!(err("31"), SioError::BadAckPayload);
        assert_eq!(err("31{}"), SioError::BadAckPayload);
        assert_eq!(err(r#"31"x""#), SioError::BadAckPayload);
        assert_eq!(d("31[]").data_json(), Some("[]"));
        // Connect / disconnect / connect_error payloads.
        assert_eq!(err("0[]"), SioError::BadConnectPayload);
        assert_eq!(err(r#"0"x""#), SioError::BadConnectPayload);
        assert_eq!(err("0null"), SioError::BadConnectPayload);
        assert_eq!(err("0/admin,true"), SioError::BadConnectPayload);
        assert_eq!(err("1{}"), SioError::UnexpectedPayload);
        assert_eq!(err("1/admin,[]"), SioError::UnexpectedPayload);
        assert_eq!(err("4[]"), SioError::BadConnectErrorPayload);
        assert_eq!(err("4abc"), SioError::Malformed);
        assert!(d("4").data.is_none());
        // Attachments.
        assert_eq!(err(r#"5["x"]"#), SioError::BadAttachments);
        assert_eq!(err(r#"5-["x"]"#), SioError::BadAttachments);
        assert_eq!(err(r#"51["x"]"#), SioError::BadAttachments);
        assert_eq!(err(r#"5x-["x"]"#), SioError::BadAttachments);
        assert_eq!(err("5"), SioError::BadAttachments);
        assert_eq!(err(r#"611["x"]"#), SioError::BadAttachments);
        assert_eq!(err(r#"511-["x"]"#), SioError::TooManyAttachments { max: MAX });
        assert_eq!(err(r#"5184467440737095516160-["x"]"#), SioError::TooManyAttachments { max: MAX });
        assert_eq!(decode(r#"52-["x"]"#, 1), Err(SioError::TooManyAttachments { max: 1 }));
        assert_eq!(err(r#"21-["x"]"#), SioError::UnexpectedAttachments);
        assert_eq!(err(r#"31-["x"]"#), SioError::UnexpectedAttachments);
        // Malformed JSON.
        assert_eq!(err(r#"2["x"]x"#), SioError::Malformed);
        assert_eq!(err(r#"2["x"]]"#), SioError::Malformed);
        assert_eq!(err(r#"2["x"] ["y"]"#), SioError::Malformed);
        assert_eq!(err(r#"2["x""#), SioError::Malformed);
        assert_eq!(err(r#"2["x",]"#), SioError::Malformed);
        assert_eq!(err(r#"2 ["x"]"#), SioError::Malformed);
        assert_eq!(err("2[\"x\n\"]"), SioError::Malformed);
        assert_eq!(err(r#"0{"a":1,}"#), SioError::Malformed);
        assert_eq!(err(r#"0{'a':1}"#), SioError::Malformed);
        // Deep nesting is skipped iteratively by serde_json, so it is accepted as JSON.parse
        // accepts it; only the placeholder scan of binary packets recurses, and serde_json's
        // recursion limit (128) turns very deep binary data into an error instead of a stack
        // overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(d(&format!(r#"2["x",{deep}]"#)).kind, PacketKind::Event);
        assert_eq!(d(&format!("0{{\"a\":{deep}}}")).kind, PacketKind::Connect);
        assert_eq!(err(&format!(r#"50-["x",{deep}]"#)), SioError::Malformed);
    }

    #[test]
    fn placeholders() {
        // Valid sets, in any key order and nesting.
        d(&format!(r#"51-["x",{PH0}]"#));
        d(r#"51-["x",{"num":0,"_placeholder":true}]"#);
        d(&format!(r#"51-["x",{{"a":[{{"b":{PH0}}}]}}]"#));
        d(&format!(r#"52-["x",{PH1},{PH0}]"#));
        d(r#"51-["x",{"_placeholder":true,"num":0.0}]"#);
        d(r#"51-["x",{"_placeholder":true,"num":0,"extra":"ok"}]"#);
        d(&format!(r#"61-3[{PH0}]"#));
        // Out of range, negative, non-integer, missing or non-numeric numbers.
        assert_eq!(err(&format!(r#"51-["x",{PH1}]"#)), SioError::BadPlaceholder);
        assert_eq!(err(r#"51-["x",{"_placeholder":true,"num":-1}]"#), SioError::BadPlaceholder);
        assert_eq!(err(r#"51-["x",{"_placeholder":true,"num":0.5}]"#), SioError::BadPlaceholder);
        assert_eq!(err(r#"51-["x",{"_placeholder":true}]"#), SioError::BadPlaceholder);
        assert_eq!(err(r#"51-["x",{"_placeholder":true,"num":"0"}]"#), SioError::BadPlaceholder);
        assert_eq!(err(&format!(r#"50-["x",{PH0}]"#)), SioError::BadPlaceholder);
        // Wrong distinct counts.
        assert_eq!(err(&format!(r#"52-["x",{PH0}]"#)), SioError::WrongAttachmentCount { expected: 2, found: 1 });
        assert_eq!(err(&format!(r#"52-["x",{PH0},{PH0}]"#)), SioError::WrongAttachmentCount { expected: 2, found: 1 });
        assert_eq!(err(r#"51-["x"]"#), SioError::WrongAttachmentCount { expected: 1, found: 0 });
        assert_eq!(
            err(r#"51-["x",{"_placeholder":false,"num":0}]"#),
            SioError::WrongAttachmentCount { expected: 1, found: 0 }
        );
        assert_eq!(
            err(r#"51-["x",{"_placeholder":"true","num":0}]"#),
            SioError::WrongAttachmentCount { expected: 1, found: 0 }
        );
        // Placeholder-looking data in non-binary packets are plain data.
        let p = d(r#"2["x",{"_placeholder":true,"num":5}]"#);
        assert_eq!(p.attachments, 0);
        // The public helper.
        let raw = RawValue::from_string(format!(r#"["x",{PH0},{PH1}]"#)).unwrap();
        assert_eq!(check_placeholders(&raw, 2), Ok(()));
        assert_eq!(check_placeholders(&raw, 3), Err(SioError::WrongAttachmentCount { expected: 3, found: 2 }));
        assert_eq!(check_placeholders(&raw, 1), Err(SioError::BadPlaceholder));
        let plain = RawValue::from_string(r#"["x",1]"#.to_string()).unwrap();
        assert_eq!(check_placeholders(&plain, 0), Ok(()));
    }

    #[test]
    fn event_name_and_args() {
        let p = d(r#"2["chat",{"room":"r1"},2]"#);
        assert!(matches!(event_name(&p), Some(Cow::Borrowed("chat"))));
        assert_eq!(args_tail(&p), Some(r#"{"room":"r1"},2"#));
        let args = args_raw(&p).unwrap();
        assert_eq!(args.iter().map(|a| a.get()).collect::<Vec<_>>(), vec![r#"{"room":"r1"}"#, "2"]);

        let p = d(r#"2["a\"b\u00e9"]"#);
        assert!(matches!(event_name(&p), Some(Cow::Owned(ref s)) if s == "a\"bé"));
        assert_eq!(args_tail(&p), Some(""));
        assert!(args_raw(&p).unwrap().is_empty());

        let p = d(r#"2[ "spaced" , 1 , 2 ]"#);
        assert_eq!(event_name(&p).as_deref(), Some("spaced"));
        assert_eq!(args_tail(&p), Some("1 , 2"));
        assert_eq!(args_raw(&p).unwrap().len(), 2);

        let p = d(r#"2["é\\",[1,"]"]]"#);
        assert_eq!(event_name(&p).as_deref(), Some("é\\"));
        assert_eq!(args_tail(&p), Some(r#"[1,"]"]"#));

        let ack = d(r#"35[1,{"a":[2]}]"#);
        assert_eq!(event_name(&ack), None);
        assert_eq!(args_tail(&ack), Some(r#"1,{"a":[2]}"#));
        assert_eq!(args_raw(&ack).unwrap().len(), 2);
        assert_eq!(args_tail(&d("35[]")), Some(""));
        assert_eq!(args_tail(&d("3/x,1[ ]")), Some(""));
        assert_eq!(args_tail(&d(r#"2/x,1[ "e" ]"#)), Some(""));

        let connect = d(r#"0{"a":1}"#);
        assert_eq!(event_name(&connect), None);
        assert_eq!(args_tail(&connect), None);
        assert!(args_raw(&connect).is_err());

        // Packets built by hand with nonsense data do not panic the helpers.
        let odd = packet(PacketKind::Event, "/", None, Some(r#"{"a":"b"}"#), 0);
        assert_eq!(event_name(&odd), None);
        assert_eq!(args_tail(&odd), None);
        assert!(args_raw(&odd).is_err());
        let odd = packet(PacketKind::Event, "/", None, Some("[]"), 0);
        assert_eq!(event_name(&odd), None);
        assert_eq!(args_tail(&odd), None);
        assert!(args_raw(&odd).is_err());
        let odd = packet(PacketKind::Event, "/", None, None, 0);
        assert_eq!(event_name(&odd), None);
        assert_eq!(args_tail(&odd), None);
    }

    #[test]
    fn encoders() {
        assert_eq!(encode(PacketKind::Event, "/", None, Some(r#"["x"]"#), 0), r#"2["x"]"#);
        assert_eq!(encode(PacketKind::Event, "", Some(3), Some(r#"["x"]"#), 0), r#"23["x"]"#);
        assert_eq!(encode(PacketKind::Event, "/a", None, Some(r#"["x"]"#), 5), r#"2/a,["x"]"#);
        assert_eq!(encode(PacketKind::BinaryAck, "/a", Some(0), Some("[]"), 12), "612-/a,0[]");
        assert_eq!(encode(PacketKind::Connect, "/", None, None, 0), "0");
        assert_eq!(encode_event("/", Some(9), "x", "", 0), r#"29["x"]"#);
        assert_eq!(encode_event("/n", None, "quote\"nl\nctl\u{1}", "1", 0), r#"2/n,["quote\"nl\nctl\u0001",1]"#);
        assert_eq!(encode_ack("/", 0, "", 0), "30[]");
        assert_eq!(encode_connect("/", "a\"b"), r#"0{"sid":"a\"b"}"#);

        // Exactly sized allocations.
        for s in [
            encode(PacketKind::BinaryEvent, "/admin", Some(123), Some(&format!(r#"["x",{PH0}]"#)), 1),
            encode_event("/admin", Some(1), "é\u{7}", &format!(r#"{{"a":1}},{PH1},{PH0}"#), 2),
            encode_ack("/admin", 77, "1,2", 0),
            encode_connect("/admin", "sid\\"),
            encode_connect_error("/", "nope\t"),
            encode_disconnect("/admin"),
        ] {
            assert_eq!(s.len(), s.capacity(), "{s:?}");
            // And they decode.
            d(&s);
        }
        assert_eq!(
            encoded_len(PacketKind::BinaryEvent, "/admin", Some(123), Some(r#"["x"]"#), 3),
            r#"53-/admin,123["x"]"#.len()
        );

        // The escaper agrees with serde_json.
        let nasty: String = (0u8..0x80).map(char::from).chain("é😀\u{2028}".chars()).collect();
        let ours = encode_event("/", None, &nasty, "", 0);
        let theirs = format!("2[{}]", serde_json::to_string(&nasty).unwrap());
        assert_eq!(ours, theirs);
        assert_eq!(event_name(&d(&ours)).as_deref(), Some(nasty.as_str()));

        // The `_into` forms append after an Engine.IO prefix in one buffer.
        let mut frame = String::from("4");
        encode_event_into(&mut frame, "/", Some(1), "ev", "true", 0);
        assert_eq!(frame, r#"421["ev",true]"#);
        let mut frame = String::from("4");
        encode_ack_into(&mut frame, "/x", 2, "null", 0);
        assert_eq!(frame, "43/x,2[null]");
        let mut frame = String::from("4");
        encode_into(&mut frame, PacketKind::Connect, "/x", None, Some(r#"{"sid":"s"}"#), 0);
        assert_eq!(frame, r#"40/x,{"sid":"s"}"#);
    }

    #[test]
    fn assembler() {
        let mut asm = BinaryAssembler::default();
        // Non-binary packets pass straight through.
        let (p, bins) = asm.push_text(r#"2["x"]"#, MAX).unwrap().unwrap();
        assert_eq!(p.kind, PacketKind::Event);
        assert!(bins.is_empty());
        // A binary packet announcing no attachments completes at once.
        let (p, bins) = asm.push_text(r#"50-["x"]"#, MAX).unwrap().unwrap();
        assert_eq!(p.kind, PacketKind::BinaryEvent);
        assert!(bins.is_empty());
        // Binary without a pending packet.
        assert_eq!(asm.push_binary(Bytes::from_static(b"x")), Err(SioError::UnexpectedBinary));
        // Text while attachments are pending, even valid text, and the state survives it.
        assert_eq!(asm.push_text(&format!(r#"51-["x",{PH0}]"#), MAX), Ok(None));
        assert!(asm.is_pending());
        assert_eq!(asm.push_text(r#"2["y"]"#, MAX), Err(SioError::UnexpectedText));
        assert_eq!(asm.push_text("garbage", MAX), Err(SioError::UnexpectedText));
        assert_eq!(asm.push_packet(d(r#"2["y"]"#)), Err(SioError::UnexpectedText));
        let (p, bins) = asm.push_binary(Bytes::from_static(b"data")).unwrap().unwrap();
        assert_eq!(p.attachments, 1);
        assert_eq!(bins, vec![Bytes::from_static(b"data")]);
        assert_eq!(asm.missing(), 0);
        // Decode errors pass through; reset drops a pending packet.
        assert_eq!(asm.push_text("2{}", MAX), Err(SioError::BadEventPayload));
        assert_eq!(asm.push_text(&format!(r#"61-4[{PH0}]"#), MAX), Ok(None));
        asm.reset();
        assert!(!asm.is_pending());
        assert_eq!(asm.push_binary(Bytes::new()), Err(SioError::UnexpectedBinary));
    }

    #[test]
    fn error_messages() {
        assert_eq!(SioError::UnknownType(b'a').to_string(), "unknown packet type byte 0x61");
        assert_eq!(
            SioError::WrongAttachmentCount { expected: 2, found: 1 }.to_string(),
            "1 distinct placeholders for 2 attachments"
        );
    }

    use crate::test_util::xorshift;

    /// Deterministic robustness: 2000 random inputs assembled from protocol fragments must never
    /// panic; whatever decodes must survive an encode/decode round trip unchanged, and the
    /// argument helpers must rebuild the same data.
    #[test]
    fn random_inputs_never_panic() {
        const FRAGMENTS: &[&str] = &[
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "7",
            "-",
            "/",
            "/admin",
            ",",
            "[",
            "]",
            "{",
            "}",
            "\"",
            "\"ev\"",
            "\"connect\"",
            ":",
            "1",
            "42",
            "18446744073709551615",
            "18446744073709551616",
            "_placeholder",
            "num",
            "true",
            "false",
            "null",
            " ",
            "\\",
            "\\u00e9",
            "é",
            "\n",
            PH0,
            PH1,
            "1.5",
            "-1",
            "x",
            "abc",
            "\"k\":",
        ];
        const NSPS: &[&str] = &["", "/,", "/admin,", "/admin", "/é,", "/a/b,"];
        const IDS: &[&str] = &["", "", "0", "7", "123", "18446744073709551615", "18446744073709551616", "00"];
        const DATA: &[&str] = &[
            "",
            r#"["ev"]"#,
            r#"["ev",1,"2",{"3":[true]}]"#,
            r#"["ev", {"b" : 1 ,"a":[1, 2]} ]"#,
            r#"["e\"v\u00e9",null]"#,
            r#"["connect"]"#,
            "[]",
            "[1]",
            r#"{"token":"123"}"#,
            "{}",
            r#""message""#,
            "null",
            r#"["ev",{"_placeholder":true,"num":0}]"#,
            r#"["ev",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]"#,
            r#"[{"_placeholder":true,"num":0}]"#,
            r#"["ev",{"num":0,"_placeholder":true}]"#,
        ];
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut decoded = 0;
        for round in 0..2000 {
            let mut pick = |list: &[&'static str]| list[(xorshift(&mut seed) % list.len() as u64) as usize];
            let mut text = String::new();
            if round % 4 == 0 {
                // Free-form soup of fragments.
                let parts = 1 + round % 9;
                for _ in 0..parts {
                    text.push_str(pick(FRAGMENTS));
                }
            } else {
                // Grammar-shaped packets with occasional damage.
                let kind = pick(&["0", "1", "2", "3", "4", "5", "6"]);
                text.push_str(kind);
                if kind == "5" || kind == "6" || round % 7 == 0 {
                    text.push_str(pick(&["0-", "1-", "2-", "3-", "-", "11-"]));
                }
                text.push_str(pick(NSPS));
                text.push_str(pick(IDS));
                if round % 2 == 0 {
                    text.push_str(pick(DATA));
                } else {
                    // Data of the right shape for the kind, so more packets decode.
                    text.push_str(match kind {
                        "0" => pick(&["", "{}", r#"{"token":"123"}"#]),
                        "1" => "",
                        "2" | "5" => pick(&DATA[1..6]),
                        "3" | "6" => pick(&DATA[1..8]),
                        "4" => pick(&["", "{}", r#""message""#]),
                        _ => pick(&DATA[12..]),
                    });
                }
                if round % 5 == 0 {
                    text.push_str(pick(FRAGMENTS));
                }
            }
            let max = (xorshift(&mut seed) % 4) as usize;
            let Ok(p) = decode(&text, max) else { continue };
            decoded += 1;
            let encoded = encode_packet(&p);
            assert_eq!(encoded.len(), encoded.capacity());
            assert_eq!(decode(&encoded, max).as_ref(), Ok(&p), "{text:?} -> {encoded:?}");
            if let (Some(name), Some(tail)) = (event_name(&p), args_tail(&p)) {
                let rebuilt = encode_event(&p.nsp, p.id, &name, tail, p.attachments);
                assert_eq!(decode(&rebuilt, max).map(|q| q.attachments), Ok(p.attachments), "{text:?}");
                let wrapped = format!("[{tail}]");
                let wrapped: Vec<&RawValue> = serde_json::from_str(&wrapped).unwrap();
                assert_eq!(args_raw(&p).unwrap().len(), wrapped.len(), "{text:?}");
            }
            if let Some(data) = p.data.as_deref() {
                if p.kind.is_binary() {
                    assert_eq!(check_placeholders(data, p.attachments), Ok(()));
                }
            }
            let mut asm = BinaryAssembler::new();
            let done = asm.push_packet(p.clone()).unwrap();
            assert_eq!(done.is_some(), !asm.is_pending());
            for _ in 0..asm.missing() {
                let _ = asm.push_binary(Bytes::new()).unwrap();
            }
            assert!(!asm.is_pending());
        }
        assert!(decoded > 250, "only {decoded} inputs decoded; the generator is too weak");
    }
}
