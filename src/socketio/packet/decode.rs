//! Decoding: Socket.IO packet text to a validated [`Packet`], and cheap readers of an event's
//! name and of the arguments of events and acks.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::placeholders::check_placeholders;
use super::{Packet, PacketKind, SioError, MAIN_NAMESPACE, RESERVED_EVENTS};

/// Decodes one Socket.IO packet from the text of an Engine.IO message.
///
/// `max_attachments` bounds the `N-` count of BINARY_* packets (the reference default is
/// [`DEFAULT_MAX_ATTACHMENTS`](super::DEFAULT_MAX_ATTACHMENTS)), so a client cannot make the
/// server wait for, and buffer, an unbounded number of binary messages.
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
/// This is the form [`encode_event`](super::encode_event) and [`encode_ack`](super::encode_ack)
/// take, so a server can echo or forward arguments (`42["message",...]` to
/// `42["message-back",...]`, or an event's arguments into its ACK) with one copy and no JSON
/// round trip. `None` for other kinds or data that are not shaped like a decoded event or ack.
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

#[cfg(test)]
mod tests {
    use super::super::encode_packet;
    use super::super::tests::{check, d, err, packet, MAX, PH0};
    use super::*;

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
}
