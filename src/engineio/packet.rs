//! Engine.IO v4 packets and their two wire encodings, as a pure codec over in-memory buffers.
//!
//! An Engine.IO packet is a one-character type (`'0'`..`'6'`) followed by optional data. How it
//! travels depends on the transport:
//!
//! - **WebSocket**: one packet per frame. A text frame holds the type character and the data; a
//!   binary frame is always a `message` carrying exactly the frame bytes (v4 dropped the type
//!   byte that v3 put in front of binary data). See [`decode_ws_text`], [`decode_ws_binary`] and
//!   [`encode_ws`].
//! - **HTTP long-polling**: the body of a `POST` (client to server) or of a `GET` response
//!   (server to client) is a *payload*: packets joined by the record separator `\x1e`, with
//!   binary messages written as `b` followed by their standard, padded base64. See
//!   [`decode_payload`] and [`encode_payload`].
//!
//! Decoding never copies text: packet data are [`Bytes`] slices of the frame or body that was
//! passed in. Only base64 data are decoded into fresh buffers. Every encoder computes its exact
//! output size first, so it allocates (or reserves) once.
//!
//! What the codec does **not** decide is which packets are acceptable in which session state
//! (for instance an `open` sent by a client, or a `ping` after the handshake in v4, where pings
//! go from server to client): the session layer rejects those.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The record separator that joins packets in a long-polling payload. It cannot occur inside a
/// multi-byte UTF-8 sequence, so splitting the body bytes on it is safe; the protocol assumes it
/// never occurs in message text (a text message containing it cannot be sent over polling).
pub const SEPARATOR: u8 = 0x1e;

/// Marks a base64-encoded binary message in a long-polling payload (and, from clients forced to
/// base64 such as engine.io-client with `forceBase64`, in a WebSocket text frame).
pub const BINARY_PREFIX: u8 = b'b';

/// Base64 as peers write it. Encoders use the standard padded alphabet (the reference uses
/// `Buffer.toString("base64")`); decoding also accepts missing padding and non-zero trailing
/// bits, because the reference server decodes with Node's lenient `Buffer.from(.., "base64")` and
/// rejecting what it accepts would close sessions other servers keep.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The standard base64 alphabet, indexed by 6-bit value, for the infallible encoder below.
const BASE64_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The seven Engine.IO packet types and their wire characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `0`: sent by the server right after the transport opens, with the handshake JSON.
    Open,
    /// `1`: asks the other side to close the session (or, from the server on a duplicate poll,
    /// tells a stale `GET` that the session is gone).
    Close,
    /// `2`: heartbeat probe; in v4 the server sends it, and a client sends `2probe` only on the
    /// WebSocket it is upgrading to.
    Ping,
    /// `3`: heartbeat answer; from the server only as `3probe` during an upgrade.
    Pong,
    /// `4`: application data (text or binary).
    Message,
    /// `5`: completes the upgrade from long-polling to WebSocket.
    Upgrade,
    /// `6`: used to release a pending long-polling `GET` during an upgrade.
    Noop,
}

impl PacketType {
    /// All packet types, in wire order.
    pub const ALL: [PacketType; 7] = [
        PacketType::Open,
        PacketType::Close,
        PacketType::Ping,
        PacketType::Pong,
        PacketType::Message,
        PacketType::Upgrade,
        PacketType::Noop,
    ];

    /// The ASCII character (`b'0'`..`b'6'`) that starts every encoded packet of this type.
    pub const fn as_byte(self) -> u8 {
        match self {
            PacketType::Open => b'0',
            PacketType::Close => b'1',
            PacketType::Ping => b'2',
            PacketType::Pong => b'3',
            PacketType::Message => b'4',
            PacketType::Upgrade => b'5',
            PacketType::Noop => b'6',
        }
    }

    /// The type of a packet starting with `byte`, or `None` for anything but `b'0'`..`b'6'`.
    pub const fn from_byte(byte: u8) -> Option<PacketType> {
        match byte {
            b'0' => Some(PacketType::Open),
            b'1' => Some(PacketType::Close),
            b'2' => Some(PacketType::Ping),
            b'3' => Some(PacketType::Pong),
            b'4' => Some(PacketType::Message),
            b'5' => Some(PacketType::Upgrade),
            b'6' => Some(PacketType::Noop),
            _ => None,
        }
    }
}

/// The data of a `message` packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Payload {
    /// UTF-8 text. The decoders only produce valid UTF-8 here; code that builds a `Text` itself
    /// must uphold that too, because the bytes go out in WebSocket text frames and polling bodies
    /// declared as UTF-8. [`Payload::text`] builds one from a `&str` safely.
    Text(Bytes),
    /// Raw bytes: a WebSocket binary frame, or a `b<base64>` packet of a polling payload.
    Binary(Bytes),
}

impl Payload {
    /// A text payload copied from `s` (valid UTF-8 by construction).
    pub fn text(s: &str) -> Payload {
        Payload::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The text as `&str`, or `None` for binary data (or a `Text` someone built from invalid
    /// UTF-8). This re-validates rather than trusting the invariant, so it can stay safe code;
    /// validation is a fast linear scan.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Payload::Text(bytes) => std::str::from_utf8(bytes).ok(),
            Payload::Binary(_) => None,
        }
    }
}

/// One Engine.IO packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Packet {
    /// Handshake; the bytes are the JSON object built by [`encode_open`].
    Open(Bytes),
    /// Close the session. Data after the type character are ignored when decoding, as the
    /// reference implementation ignores them.
    Close,
    /// Heartbeat probe, with optional text data (`probe` during an upgrade). Empty data decode
    /// as `None`.
    Ping(Option<Bytes>),
    /// Heartbeat answer, echoing the ping's data.
    Pong(Option<Bytes>),
    /// Application data.
    Message(Payload),
    /// Upgrade completion. Trailing data are ignored when decoding.
    Upgrade,
    /// No operation. Trailing data are ignored when decoding.
    Noop,
}

impl Packet {
    /// The type of this packet.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Open(_) => PacketType::Open,
            Packet::Close => PacketType::Close,
            Packet::Ping(_) => PacketType::Ping,
            Packet::Pong(_) => PacketType::Pong,
            Packet::Message(_) => PacketType::Message,
            Packet::Upgrade => PacketType::Upgrade,
            Packet::Noop => PacketType::Noop,
        }
    }

    /// A text `message` packet copied from `s`.
    pub fn text(s: &str) -> Packet {
        Packet::Message(Payload::text(s))
    }

    /// A binary `message` packet sharing `data`.
    pub fn binary(data: Bytes) -> Packet {
        Packet::Message(Payload::Binary(data))
    }
}

/// Why some client input is not valid Engine.IO. Every variant is fatal for the session: the
/// reference server closes it. Over long-polling the offending `POST` gets the status from
/// [`EioError::http_status`] and later requests with that `sid` get HTTP 400 (the test suite's
/// "closes the session upon invalid packet format"); over WebSocket the connection is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EioError {
    /// An empty WebSocket text frame or an empty `POST` body: there is no type character, so
    /// it is not a packet. Polling: HTTP 400 and close; WebSocket: close.
    #[error("empty packet")]
    Empty,
    /// An empty packet inside a polling payload (a leading or trailing separator, or two in a
    /// row). The reference decoder reports it as a parse error, so the session closes: HTTP 400.
    #[error("empty packet at index {index} of the payload")]
    EmptySegment {
        /// Position of the empty packet among the `\x1e`-separated packets, from 0.
        index: usize,
    },
    /// The first byte is neither `'0'`..`'6'` nor the binary prefix `'b'` (for example the test
    /// suite's `abc`, or `7x`). Polling: HTTP 400 and close; WebSocket: close.
    #[error("unknown packet type byte {0:#04x}")]
    UnknownType(u8),
    /// A text frame or polling body that is not UTF-8. A WebSocket text frame with invalid UTF-8
    /// is already a protocol violation (close code 1007); for polling it is HTTP 400 and close.
    #[error("packet text is not valid UTF-8")]
    InvalidUtf8,
    /// A `b` packet whose data are not base64. Polling: HTTP 400 and close; WebSocket: close.
    #[error("invalid base64 in a binary packet")]
    BadBase64,
    /// A polling body larger than the `maxPayload` announced in the handshake. The reference
    /// server drops such a request and closes the session; answering HTTP 413 and closing the
    /// session is the polite equivalent.
    #[error("payload of {len} bytes exceeds maxPayload ({max})")]
    PayloadTooLarge {
        /// Body length in bytes.
        len: usize,
        /// The limit it was checked against.
        max: usize,
    },
}

impl EioError {
    /// The HTTP status a long-polling `POST` carrying this error should get: 413 when the body
    /// is over `maxPayload`, 400 for anything malformed. The session is closed either way.
    pub fn http_status(&self) -> u16 {
        match self {
            EioError::PayloadTooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// What [`encode_ws`] produces: the frame opcode to use and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsOut {
    /// Send as a text frame (UTF-8 guaranteed when the packet's text was UTF-8).
    Text(Bytes),
    /// Send as a binary frame.
    Binary(Bytes),
}

/// The handshake data of the `open` packet. The field names follow the protocol (camelCase) so
/// the struct can also be used to parse a handshake, for instance in tests and clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenPacket {
    /// The session id the client must send back as `sid` in every later request.
    pub sid: String,
    /// Transports the client may upgrade to: `["websocket"]` on a polling handshake, `[]` on a
    /// WebSocket one (the test suites check both).
    pub upgrades: Vec<String>,
    /// Milliseconds between the server's pings.
    pub ping_interval: u64,
    /// Milliseconds the server waits for a pong before closing the session.
    pub ping_timeout: u64,
    /// The largest polling body the server accepts, in bytes; clients use it to decide how many
    /// packets to batch into one `POST`.
    pub max_payload: u64,
}

/// Decodes one WebSocket text frame.
///
/// The first character is the packet type, the rest its data. A frame starting with `b` is a
/// base64-encoded binary message, as the reference parser accepts from clients that cannot send
/// binary frames. The frame is re-checked for UTF-8 even though a conforming WebSocket layer has
/// already done so: the check is cheap and keeps [`Payload::Text`]'s invariant local.
pub fn decode_ws_text(frame: Bytes) -> Result<Packet, EioError> {
    if frame.is_empty() {
        return Err(EioError::Empty);
    }
    if std::str::from_utf8(&frame).is_err() {
        return Err(EioError::InvalidUtf8);
    }
    decode_packet(frame)
}

/// Decodes one WebSocket binary frame: in v4 it is always a `message` holding exactly the frame
/// bytes (no type byte), so this cannot fail and does not copy.
pub fn decode_ws_binary(frame: Bytes) -> Packet {
    Packet::Message(Payload::Binary(frame))
}

/// Decodes a long-polling `POST` body into its packets, in order.
///
/// The body must be complete (the HTTP layer assembles it) and at most `max_payload` bytes
/// (the handshake's `maxPayload`); it must be UTF-8, and every `\x1e`-separated packet must be
/// non-empty. Any error rejects the whole body: the reference decoder stops at the first bad
/// packet and the server closes the session, so packets before it must not be delivered either.
pub fn decode_payload(body: Bytes, max_payload: usize) -> Result<Vec<Packet>, EioError> {
    if body.len() > max_payload {
        return Err(EioError::PayloadTooLarge { len: body.len(), max: max_payload });
    }
    if body.is_empty() {
        return Err(EioError::Empty);
    }
    if std::str::from_utf8(&body).is_err() {
        return Err(EioError::InvalidUtf8);
    }
    let count = body.iter().filter(|&&b| b == SEPARATOR).count() + 1;
    let mut packets = Vec::with_capacity(count);
    let mut start = 0;
    for index in 0..count {
        let end = body[start..].iter().position(|&b| b == SEPARATOR).map_or(body.len(), |offset| start + offset);
        if end == start {
            return Err(EioError::EmptySegment { index });
        }
        packets.push(decode_packet(body.slice(start..end))?);
        start = end + 1;
    }
    Ok(packets)
}

/// Decodes one non-empty, UTF-8 packet in text form (a text frame or one payload segment).
fn decode_packet(text: Bytes) -> Result<Packet, EioError> {
    let Some(&first) = text.first() else {
        return Err(EioError::Empty);
    };
    if first == BINARY_PREFIX {
        let decoded = BASE64_LENIENT.decode(&text[1..]).map_err(|_| EioError::BadBase64)?;
        return Ok(Packet::Message(Payload::Binary(Bytes::from(decoded))));
    }
    let Some(packet_type) = PacketType::from_byte(first) else {
        return Err(EioError::UnknownType(first));
    };
    let data = text.slice(1..);
    let optional = |data: Bytes| if data.is_empty() { None } else { Some(data) };
    Ok(match packet_type {
        PacketType::Open => Packet::Open(data),
        PacketType::Close => Packet::Close,
        PacketType::Ping => Packet::Ping(optional(data)),
        PacketType::Pong => Packet::Pong(optional(data)),
        PacketType::Message => Packet::Message(Payload::Text(data)),
        PacketType::Upgrade => Packet::Upgrade,
        PacketType::Noop => Packet::Noop,
    })
}

/// Encodes a packet for the WebSocket transport: binary messages become a binary frame sharing
/// the packet's bytes (no copy); everything else becomes a text frame built in one exactly sized
/// allocation.
pub fn encode_ws(packet: &Packet) -> WsOut {
    if let Packet::Message(Payload::Binary(data)) = packet {
        return WsOut::Binary(data.clone());
    }
    let mut out = Vec::with_capacity(encoded_len(packet));
    encode_packet(packet, &mut out);
    WsOut::Text(Bytes::from(out))
}

/// Appends `packets` to `out` as one long-polling payload (`\x1e`-separated, binary messages as
/// `b` + padded standard base64), reserving the exact size first. Nothing is appended for an
/// empty slice; a `GET` must not be answered with an empty body, so the caller waits for a
/// packet (or sends a `noop`) instead.
pub fn encode_payload(packets: &[Packet], out: &mut Vec<u8>) {
    let separators = packets.len().saturating_sub(1);
    out.reserve(packets.iter().map(encoded_len).sum::<usize>() + separators);
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        encode_packet(packet, out);
    }
}

/// Appends one packet in text form: the type character and its data, or `b` + base64 for a
/// binary message. This is the polling form of a packet and also the WebSocket text-frame form
/// for a client that cannot receive binary frames.
pub fn encode_packet(packet: &Packet, out: &mut Vec<u8>) {
    match packet {
        Packet::Message(Payload::Binary(data)) => {
            out.push(BINARY_PREFIX);
            encode_base64(data, out);
        }
        Packet::Message(Payload::Text(data)) | Packet::Open(data) => {
            out.push(packet.packet_type().as_byte());
            out.extend_from_slice(data);
        }
        Packet::Ping(data) | Packet::Pong(data) => {
            out.push(packet.packet_type().as_byte());
            if let Some(data) = data {
                out.extend_from_slice(data);
            }
        }
        Packet::Close | Packet::Upgrade | Packet::Noop => out.push(packet.packet_type().as_byte()),
    }
}

/// The exact number of bytes [`encode_packet`] appends for `packet`.
pub fn encoded_len(packet: &Packet) -> usize {
    match packet {
        Packet::Message(Payload::Binary(data)) => 1 + base64_len(data.len()),
        Packet::Message(Payload::Text(data)) | Packet::Open(data) => 1 + data.len(),
        Packet::Ping(data) | Packet::Pong(data) => 1 + data.as_ref().map_or(0, Bytes::len),
        Packet::Close | Packet::Upgrade | Packet::Noop => 1,
    }
}

/// Encodes the `open` packet: `0` followed by a JSON object with exactly the keys `sid`,
/// `upgrades`, `pingInterval`, `pingTimeout` and `maxPayload`, in that order (the test suites
/// check the key set with `have.all.keys`). Written by hand rather than through serde so it can
/// size its single allocation exactly and cannot fail.
pub fn encode_open(open: &OpenPacket) -> Bytes {
    let mut out = Vec::with_capacity(open_len(open));
    out.push(PacketType::Open.as_byte());
    out.extend_from_slice(OPEN_SID);
    write_json_str(&mut out, &open.sid);
    out.extend_from_slice(OPEN_UPGRADES);
    for (i, upgrade) in open.upgrades.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(&mut out, upgrade);
    }
    out.extend_from_slice(OPEN_PING_INTERVAL);
    write_dec(&mut out, open.ping_interval);
    out.extend_from_slice(OPEN_PING_TIMEOUT);
    write_dec(&mut out, open.ping_timeout);
    out.extend_from_slice(OPEN_MAX_PAYLOAD);
    write_dec(&mut out, open.max_payload);
    out.push(b'}');
    Bytes::from(out)
}

/// The fixed pieces of the `open` handshake JSON, in the order the keys are written.
const OPEN_SID: &[u8] = b"{\"sid\":";
const OPEN_UPGRADES: &[u8] = b",\"upgrades\":[";
const OPEN_PING_INTERVAL: &[u8] = b"],\"pingInterval\":";
const OPEN_PING_TIMEOUT: &[u8] = b",\"pingTimeout\":";
const OPEN_MAX_PAYLOAD: &[u8] = b",\"maxPayload\":";

/// The exact length of [`encode_open`]'s output.
fn open_len(open: &OpenPacket) -> usize {
    let upgrades_len: usize =
        open.upgrades.iter().map(|u| json_str_len(u)).sum::<usize>() + open.upgrades.len().saturating_sub(1);
    1 + OPEN_SID.len()
        + json_str_len(&open.sid)
        + OPEN_UPGRADES.len()
        + upgrades_len
        + OPEN_PING_INTERVAL.len()
        + dec_len(open.ping_interval)
        + OPEN_PING_TIMEOUT.len()
        + dec_len(open.ping_timeout)
        + OPEN_MAX_PAYLOAD.len()
        + dec_len(open.max_payload)
        + 1
}

/// Length of the padded base64 encoding of `n` bytes.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Appends the padded standard base64 encoding of `data`. Hand-written because the `base64`
/// crate's slice encoder returns a `Result` (for a too-small buffer) that cannot happen here
/// and that this crate must not unwrap.
fn encode_base64(data: &[u8], out: &mut Vec<u8>) {
    let char_at = |v: u32| BASE64_CHARS[(v & 0x3f) as usize];
    let mut chunks = data.chunks_exact(3);
    for chunk in &mut chunks {
        let v = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        out.extend_from_slice(&[char_at(v >> 18), char_at(v >> 12), char_at(v >> 6), char_at(v)]);
    }
    match *chunks.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            out.extend_from_slice(&[char_at(v >> 18), char_at(v >> 12), b'=', b'=']);
        }
        [a, b] => {
            let v = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[char_at(v >> 18), char_at(v >> 12), char_at(v >> 6), b'=']);
        }
        _ => {}
    }
}

fn dec_len(n: u64) -> usize {
    crate::util::text::decimal_len(n)
}

/// Appends `n` in decimal.
fn write_dec(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::util::text::decimal(n, &mut [0; 20]).as_bytes());
}

/// Length of `s` as a quoted JSON string.
fn json_str_len(s: &str) -> usize {
    crate::util::text::json_str_len(s)
}

/// Appends `s` as a quoted JSON string.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    crate::util::text::json_str(s, |piece| out.extend_from_slice(piece.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn ws_text(packet: &Packet) -> Bytes {
        match encode_ws(packet) {
            WsOut::Text(t) => t,
            WsOut::Binary(_) => panic!("expected a text frame for {packet:?}"),
        }
    }

    fn payload(packets: &[Packet]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_payload(packets, &mut out);
        out
    }

    /// One packet of every type, with data where the type carries data.
    fn samples() -> Vec<Packet> {
        vec![
            Packet::Open(b(r#"{"sid":"x"}"#)),
            Packet::Open(Bytes::new()),
            Packet::Close,
            Packet::Ping(None),
            Packet::Ping(Some(b("probe"))),
            Packet::Pong(None),
            Packet::Pong(Some(b("probe"))),
            Packet::text("hello"),
            Packet::text(""),
            Packet::text("€€€ ünïcödé 😀"),
            Packet::binary(Bytes::from_static(&[1, 2, 3, 4])),
            Packet::binary(Bytes::new()),
            Packet::Upgrade,
            Packet::Noop,
        ]
    }

    #[test]
    fn packet_type_chars() {
        for (i, t) in PacketType::ALL.iter().enumerate() {
            assert_eq!(t.as_byte(), b'0' + i as u8);
            assert_eq!(PacketType::from_byte(t.as_byte()), Some(*t));
        }
        assert_eq!(PacketType::from_byte(b'7'), None);
        assert_eq!(PacketType::from_byte(b'b'), None);
    }

    #[test]
    fn every_type_round_trips_over_websocket() {
        for packet in samples() {
            let decoded = match encode_ws(&packet) {
                WsOut::Text(frame) => decode_ws_text(frame).unwrap(),
                WsOut::Binary(frame) => decode_ws_binary(frame),
            };
            assert_eq!(decoded, packet);
            assert_eq!(decoded.packet_type(), packet.packet_type());
        }
    }

    #[test]
    fn every_type_round_trips_over_polling() {
        for packet in samples() {
            let body = payload(std::slice::from_ref(&packet));
            assert_eq!(body.len(), encoded_len(&packet));
            assert_eq!(decode_payload(Bytes::from(body), usize::MAX).unwrap(), vec![packet]);
        }
        let all = samples();
        let body = payload(&all);
        assert_eq!(decode_payload(Bytes::from(body), usize::MAX).unwrap(), all);
    }

    #[test]
    fn ws_encoding_examples() {
        assert_eq!(ws_text(&Packet::Ping(Some(b("probe")))), "2probe");
        assert_eq!(ws_text(&Packet::Pong(Some(b("probe")))), "3probe");
        assert_eq!(ws_text(&Packet::Ping(None)), "2");
        assert_eq!(ws_text(&Packet::Close), "1");
        assert_eq!(ws_text(&Packet::Upgrade), "5");
        assert_eq!(ws_text(&Packet::Noop), "6");
        assert_eq!(ws_text(&Packet::text("hello")), "4hello");
        let data = Bytes::from_static(&[1, 2, 3, 4]);
        assert_eq!(encode_ws(&Packet::binary(data.clone())), WsOut::Binary(data.clone()));
        // The binary frame shares the packet's buffer.
        let WsOut::Binary(frame) = encode_ws(&Packet::binary(data.clone())) else { unreachable!() };
        assert_eq!(frame.as_ptr(), data.as_ptr());
    }

    #[test]
    fn ws_decoding_examples() {
        assert_eq!(decode_ws_text(b("4hello")).unwrap(), Packet::text("hello"));
        assert_eq!(decode_ws_text(b("2probe")).unwrap(), Packet::Ping(Some(b("probe"))));
        assert_eq!(decode_ws_text(b("3")).unwrap(), Packet::Pong(None));
        assert_eq!(decode_ws_text(b("5")).unwrap(), Packet::Upgrade);
        assert_eq!(decode_ws_text(b("1")).unwrap(), Packet::Close);
        assert_eq!(decode_ws_text(b("6")).unwrap(), Packet::Noop);
        assert_eq!(decode_ws_text(b("4")).unwrap(), Packet::text(""));
        // Socket.IO packets ride inside messages untouched.
        assert_eq!(decode_ws_text(b(r#"42["foo"]"#)).unwrap(), Packet::text(r#"2["foo"]"#));
        // Base64 fallback for clients that cannot send binary frames.
        assert_eq!(decode_ws_text(b("bAQIDBA==")).unwrap(), Packet::binary(Bytes::from_static(&[1, 2, 3, 4])));
        assert_eq!(decode_ws_binary(Bytes::from_static(&[4, 1, 2])), Packet::binary(Bytes::from_static(&[4, 1, 2])));
        // Data after close/upgrade/noop are ignored, like the reference does.
        assert_eq!(decode_ws_text(b("1junk")).unwrap(), Packet::Close);
        assert_eq!(decode_ws_text(b("5probe")).unwrap(), Packet::Upgrade);
        assert_eq!(decode_ws_text(b("6x")).unwrap(), Packet::Noop);
    }

    #[test]
    fn decoding_is_zero_copy() {
        let frame = b("4hello");
        let Packet::Message(Payload::Text(text)) = decode_ws_text(frame.clone()).unwrap() else { unreachable!() };
        assert_eq!(text.as_ptr(), frame[1..].as_ptr());
        let body = b("4ab\x1e2probe");
        let packets = decode_payload(body.clone(), 100).unwrap();
        let Packet::Message(Payload::Text(first)) = &packets[0] else { unreachable!() };
        assert_eq!(first.as_ptr(), body[1..].as_ptr());
        let Packet::Ping(Some(probe)) = &packets[1] else { unreachable!() };
        assert_eq!(probe.as_ptr(), body[5..].as_ptr());
    }

    #[test]
    fn spec_payload_examples() {
        let packets = decode_payload(b("4hello\x1e2\x1e4world"), 1000).unwrap();
        assert_eq!(packets, vec![Packet::text("hello"), Packet::Ping(None), Packet::text("world")]);
        assert_eq!(payload(&packets), b"4hello\x1e2\x1e4world");

        let packets = decode_payload(b("4hello\x1ebAQIDBA=="), 1000).unwrap();
        assert_eq!(packets, vec![Packet::text("hello"), Packet::binary(Bytes::from_static(&[1, 2, 3, 4]))]);
        assert_eq!(payload(&packets), b"4hello\x1ebAQIDBA==");

        // engine.io-parser 4.0 changelog examples.
        assert_eq!(payload(&[Packet::text("hello"), Packet::text("€€€")]), "4hello\x1e4€€€".as_bytes());
        assert_eq!(
            payload(&[Packet::text("hello"), Packet::binary(Bytes::from_static(&[1, 2, 3]))]),
            b"4hello\x1ebAQID"
        );

        // Test-suite bodies.
        let packets = decode_payload(b("4test1\x1e4test2\x1e4test3"), 1_000_000).unwrap();
        assert_eq!(packets, vec![Packet::text("test1"), Packet::text("test2"), Packet::text("test3")]);
        assert_eq!(decode_payload(b("3"), 1_000_000).unwrap(), vec![Packet::Pong(None)]);
        assert_eq!(decode_payload(b("1"), 1_000_000).unwrap(), vec![Packet::Close]);
        assert_eq!(payload(&[Packet::Noop]), b"6");
        assert_eq!(payload(&[Packet::Close]), b"1");
        assert!(payload(&[]).is_empty());
    }

    #[test]
    fn mixed_text_and_binary_payload() {
        let packets = vec![
            Packet::text(r#"2["chat","hi"]"#),
            Packet::binary(Bytes::from_static(&[0, 255, 128])),
            Packet::binary(Bytes::from_static(b"ab")),
            Packet::text("x"),
            Packet::binary(Bytes::from_static(b"abc")),
            Packet::Ping(None),
        ];
        let body = payload(&packets);
        assert_eq!(body, b"42[\"chat\",\"hi\"]\x1ebAP+A\x1ebYWI=\x1e4x\x1ebYWJj\x1e2");
        assert_eq!(decode_payload(Bytes::from(body), 1000).unwrap(), packets);
    }

    #[test]
    fn base64_matches_the_base64_crate() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let data: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
            let mut ours = Vec::new();
            encode_base64(&data, &mut ours);
            assert_eq!(ours, base64::engine::general_purpose::STANDARD.encode(&data).into_bytes());
            assert_eq!(ours.len(), base64_len(len));
            assert_eq!(BASE64_LENIENT.decode(&ours).unwrap(), data);
        }
    }

    #[test]
    fn lenient_base64_decoding() {
        let want = Packet::binary(Bytes::from_static(&[1, 2, 3, 4]));
        assert_eq!(decode_payload(b("bAQIDBA"), 100).unwrap(), vec![want.clone()]);
        assert_eq!(decode_payload(b("bAQIDBB=="), 100).unwrap(), vec![want]);
        assert_eq!(decode_payload(b("b"), 100).unwrap(), vec![Packet::binary(Bytes::new())]);
    }

    #[test]
    fn errors() {
        assert_eq!(decode_payload(b("abc"), 100), Err(EioError::UnknownType(b'a')));
        assert_eq!(decode_ws_text(b("abc")), Err(EioError::UnknownType(b'a')));
        assert_eq!(decode_ws_text(b("7x")), Err(EioError::UnknownType(b'7')));
        assert_eq!(decode_payload(b("4a\x1e7x"), 100), Err(EioError::UnknownType(b'7')));
        assert_eq!(decode_ws_text(Bytes::new()), Err(EioError::Empty));
        assert_eq!(decode_payload(Bytes::new(), 100), Err(EioError::Empty));
        assert_eq!(decode_payload(b("\x1e"), 100), Err(EioError::EmptySegment { index: 0 }));
        assert_eq!(decode_payload(b("4a\x1e"), 100), Err(EioError::EmptySegment { index: 1 }));
        assert_eq!(decode_payload(b("4a\x1e\x1e4b"), 100), Err(EioError::EmptySegment { index: 1 }));
        assert_eq!(decode_payload(b("\x1e4a"), 100), Err(EioError::EmptySegment { index: 0 }));
        assert_eq!(decode_payload(b("b!!!!"), 100), Err(EioError::BadBase64));
        assert_eq!(decode_payload(b("bA"), 100), Err(EioError::BadBase64));
        assert_eq!(decode_payload(b("bAQ-D"), 100), Err(EioError::BadBase64));
        assert_eq!(decode_ws_text(b("b$")), Err(EioError::BadBase64));
        assert_eq!(decode_payload(b("4hello"), 5), Err(EioError::PayloadTooLarge { len: 6, max: 5 }));
        assert_eq!(decode_payload(b("4hello"), 6).unwrap(), vec![Packet::text("hello")]);
        let invalid = Bytes::from_static(b"4\xff\xfe");
        assert_eq!(decode_ws_text(invalid.clone()), Err(EioError::InvalidUtf8));
        assert_eq!(decode_payload(invalid, 100), Err(EioError::InvalidUtf8));
        // A truncated multi-byte character is invalid too.
        assert_eq!(decode_payload(Bytes::from_static(b"4\xe2\x82"), 100), Err(EioError::InvalidUtf8));
    }

    #[test]
    fn error_statuses() {
        assert_eq!(EioError::PayloadTooLarge { len: 2, max: 1 }.http_status(), 413);
        assert_eq!(EioError::UnknownType(b'a').http_status(), 400);
        assert_eq!(EioError::Empty.http_status(), 400);
        assert_eq!(EioError::UnknownType(b'a').to_string(), "unknown packet type byte 0x61");
    }

    /// Every packet type at every data length from 0 to 8, alone and at each position of a
    /// payload, so the slicing around separators is exercised at each edge.
    #[test]
    fn every_type_at_every_length_edge() {
        for len in 0..=8usize {
            let text: String = "abcdefgh"[..len].to_string();
            let bin: Vec<u8> = (0..len as u8).collect();
            let packets = vec![
                Packet::Open(b(&text)),
                Packet::Close,
                Packet::Ping(if len == 0 { None } else { Some(b(&text)) }),
                Packet::Pong(if len == 0 { None } else { Some(b(&text)) }),
                Packet::text(&text),
                Packet::binary(Bytes::from(bin)),
                Packet::Upgrade,
                Packet::Noop,
            ];
            for packet in &packets {
                let body = payload(std::slice::from_ref(packet));
                assert_eq!(decode_payload(Bytes::from(body.clone()), body.len()).unwrap(), vec![packet.clone()]);
                if body.len() > 1 {
                    assert!(matches!(
                        decode_payload(Bytes::from(body.clone()), body.len() - 1),
                        Err(EioError::PayloadTooLarge { .. })
                    ));
                }
                let ws = match encode_ws(packet) {
                    WsOut::Text(t) => decode_ws_text(t).unwrap(),
                    WsOut::Binary(bin) => decode_ws_binary(bin),
                };
                assert_eq!(&ws, packet);
            }
            // Rotations put each packet first, in the middle and last.
            for shift in 0..packets.len() {
                let mut rotated = packets.clone();
                rotated.rotate_left(shift);
                let body = payload(&rotated);
                assert_eq!(decode_payload(Bytes::from(body), usize::MAX).unwrap(), rotated);
            }
        }
    }

    #[test]
    fn open_packet_encoding() {
        let open = OpenPacket {
            sid: "lv_VI97HAXpY6yYWAAAC".into(),
            upgrades: vec!["websocket".into()],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 1_000_000,
        };
        let encoded = encode_open(&open);
        assert_eq!(
            encoded,
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        assert_eq!(encoded.len(), open_len(&open));
        let parsed: OpenPacket = serde_json::from_slice(&encoded[1..]).unwrap();
        assert_eq!(parsed, open);
        // serde's view of the struct uses the same keys.
        assert_eq!(serde_json::to_vec(&open).unwrap(), encoded[1..].to_vec());

        let ws_only = OpenPacket { upgrades: vec![], ping_interval: 300, ping_timeout: 200, ..open.clone() };
        let encoded = encode_open(&ws_only);
        assert_eq!(
            encoded,
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}"#
        );
        let value: serde_json::Value = serde_json::from_slice(&encoded[1..]).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5);

        // Escaping and extreme numbers; compare against serde_json's output.
        let odd = OpenPacket {
            sid: "a\"b\\c\n\u{1}\u{1f}é/".into(),
            upgrades: vec!["websocket".into(), "x\ty".into()],
            ping_interval: 0,
            ping_timeout: u64::MAX,
            max_payload: 9,
        };
        let encoded = encode_open(&odd);
        assert_eq!(&encoded[1..], serde_json::to_vec(&odd).unwrap().as_slice());
        assert_eq!(serde_json::from_slice::<OpenPacket>(&encoded[1..]).unwrap(), odd);
        // Decoded as a packet it is an open packet with the JSON as data.
        assert_eq!(decode_ws_text(encoded.clone()).unwrap(), Packet::Open(encoded.slice(1..)));
    }

    #[test]
    fn exact_sizes() {
        for packet in samples() {
            let mut out = Vec::new();
            encode_packet(&packet, &mut out);
            assert_eq!(out.len(), encoded_len(&packet));
            if let WsOut::Text(frame) = encode_ws(&packet) {
                assert_eq!(frame.len(), encoded_len(&packet));
            }
        }
        let all = samples();
        let mut out = Vec::new();
        encode_payload(&all, &mut out);
        assert_eq!(out.len(), out.capacity());
        for n in [0u64, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            write_dec(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(dec_len(n), out.len());
        }
    }

    #[test]
    fn payload_accessors() {
        assert_eq!(Payload::text("hé").as_str(), Some("hé"));
        assert_eq!(Payload::Binary(b("x")).as_str(), None);
        assert_eq!(Payload::Text(Bytes::from_static(b"\xff")).as_str(), None);
    }

    use crate::test_util::xorshift;

    /// Deterministic robustness: 2000 random inputs built from protocol-relevant bytes must
    /// never panic, and whatever decodes must re-encode to something that decodes the same.
    #[test]
    fn random_inputs_never_panic() {
        const ALPHABET: &[u8] = b"0123456789b\x1e4AQIDBA==+/-_ \xff\xe2\x82\xac{}\"[]probe";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (xorshift(&mut seed) % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    let r = xorshift(&mut seed);
                    if r % 8 == 0 {
                        r as u8 >> 1
                    } else {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    }
                })
                .collect();
            let input = Bytes::from(input);
            if let Ok(packets) = decode_payload(input.clone(), 64) {
                let body = payload(&packets);
                assert_eq!(decode_payload(Bytes::from(body), usize::MAX).unwrap(), packets);
            }
            if let Ok(packet) = decode_ws_text(input.clone()) {
                let again = match encode_ws(&packet) {
                    WsOut::Text(t) => decode_ws_text(t).unwrap(),
                    WsOut::Binary(bin) => decode_ws_binary(bin),
                };
                assert_eq!(again, packet);
            }
            let _ = decode_ws_binary(input);
        }
    }
}
