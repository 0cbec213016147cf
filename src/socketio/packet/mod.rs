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
//! [`decode()`]). Any [`SioError`] from decoding means the reference server would close the whole
//! Engine.IO connection, which is what the test suite checks for `4abc`, `42{}` and
//! `42abc[...]`.
//!
//! The codec is split along its seams: this module holds the packet model ([`PacketKind`],
//! [`Packet`], [`SioError`] and the protocol constants); `decode` parses and validates text and
//! reads event names and arguments; `encode` writes packets with exactly sized allocations;
//! `placeholders` checks the binary attachment placeholders of BINARY_* data; `assemble` joins a
//! binary packet with the attachments that follow it ([`BinaryAssembler`]). Everything public is
//! re-exported here, so callers name it `socketio::packet::NAME`.

mod assemble;
mod decode;
mod encode;
mod placeholders;

pub use assemble::{Assembled, BinaryAssembler};
pub use decode::{args_raw, args_tail, decode, event_name};
pub use encode::{
    encode, encode_ack, encode_ack_into, encode_connect, encode_connect_error, encode_disconnect, encode_event,
    encode_event_into, encode_into, encode_packet, encoded_len,
};
pub use placeholders::check_placeholders;

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
        /// The limit passed to [`decode()`].
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    pub(super) const MAX: usize = DEFAULT_MAX_ATTACHMENTS;

    pub(super) fn d(text: &str) -> Packet {
        decode(text, MAX).unwrap_or_else(|e| panic!("{text:?} should decode: {e}"))
    }

    pub(super) fn err(text: &str) -> SioError {
        match decode(text, MAX) {
            Ok(p) => panic!("{text:?} should fail, got {p:?}"),
            Err(e) => e,
        }
    }

    pub(super) fn packet(
        kind: PacketKind,
        nsp: &str,
        id: Option<u64>,
        data: Option<&str>,
        attachments: usize,
    ) -> Packet {
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
    pub(super) fn check(text: &str, want: Packet, canonical: Option<&str>) {
        let got = d(text);
        assert_eq!(got, want, "decoding {text:?}");
        let encoded = encode_packet(&got);
        assert_eq!(encoded, canonical.unwrap_or(text), "encoding {text:?}");
        assert_eq!(encoded.len(), encoded.capacity(), "exact capacity for {text:?}");
        assert_eq!(d(&encoded), got, "re-decoding {text:?}");
    }

    pub(super) const PH0: &str = r#"{"_placeholder":true,"num":0}"#;
    pub(super) const PH1: &str = r#"{"_placeholder":true,"num":1}"#;

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
