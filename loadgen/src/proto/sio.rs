//! Engine.IO v4 over WebSocket and the Socket.IO v5 packets inside it, as a client sees them.
//!
//! On a WebSocket every text message is one Engine.IO packet: a type digit (`0` open, `1`
//! close, `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop) and its data. A message packet
//! carries one Socket.IO packet: a type digit, for binary packets an attachment count and `-`, a
//! namespace and `,` unless it is `/`, an ack id, then JSON. So `42["a",1]` is an event,
//! `4317[1]` the ack with id 17, `40{"sid":"x"}` the answer to CONNECT.

use serde::Deserialize;

/// Packets the client sends that never change.
pub const PONG: &[u8] = b"3";
pub const CONNECT_MAIN: &[u8] = b"40";

/// A packet the client cannot make sense of; the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SioError {
    #[error("empty Engine.IO packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    EioType(char),
    #[error("bad Engine.IO open packet: {0}")]
    Open(String),
    #[error("unknown Socket.IO packet type {0:?}")]
    SioType(char),
    #[error("malformed Socket.IO packet")]
    Malformed,
    #[error("server refused the Socket.IO connection: {0}")]
    ConnectRefused(String),
    #[error("server closed the Engine.IO session")]
    Closed,
}

/// The open packet's settings (`0{"sid":...,"pingInterval":...}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Open {
    pub sid: String,
    #[serde(default)]
    pub ping_interval: u64,
    #[serde(default)]
    pub ping_timeout: u64,
    #[serde(default)]
    pub max_payload: Option<u64>,
}

/// Parses an Engine.IO open packet, `0` and its JSON.
pub fn parse_open(text: &[u8]) -> Result<Open, SioError> {
    match text.split_first() {
        Some((b'0', json)) => serde_json::from_slice(json).map_err(|e| SioError::Open(e.to_string())),
        Some((&t, _)) => Err(SioError::Open(format!("expected `0`, got packet type {:?}", t as char))),
        None => Err(SioError::Empty),
    }
}

/// One Engine.IO packet, with the Socket.IO packet inside a message split into its parts.
/// `data` is the JSON that follows the header (an array for events and acks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    Open(&'a [u8]),
    Close,
    Ping,
    Pong,
    Upgrade,
    Noop,
    Connect { nsp: &'a [u8], data: &'a [u8] },
    Disconnect { nsp: &'a [u8] },
    Event { nsp: &'a [u8], id: Option<u64>, data: &'a [u8] },
    Ack { nsp: &'a [u8], id: u64, data: &'a [u8] },
    ConnectError { nsp: &'a [u8], data: &'a [u8] },
    BinaryEvent { nsp: &'a [u8], id: Option<u64>, attachments: u32, data: &'a [u8] },
    BinaryAck { nsp: &'a [u8], id: u64, attachments: u32, data: &'a [u8] },
}

/// Splits one WebSocket text message into its packet. Nothing is copied.
pub fn parse(text: &[u8]) -> Result<Packet<'_>, SioError> {
    let (&eio, rest) = text.split_first().ok_or(SioError::Empty)?;
    match eio {
        b'0' => Ok(Packet::Open(rest)),
        b'1' => Ok(Packet::Close),
        b'2' => Ok(Packet::Ping),
        b'3' => Ok(Packet::Pong),
        b'4' => parse_sio(rest),
        b'5' => Ok(Packet::Upgrade),
        b'6' => Ok(Packet::Noop),
        t => Err(SioError::EioType(t as char)),
    }
}

fn parse_sio(s: &[u8]) -> Result<Packet<'_>, SioError> {
    let (&ty, mut rest) = s.split_first().ok_or(SioError::Malformed)?;
    let mut attachments = 0u32;
    if matches!(ty, b'5' | b'6') {
        let dash = rest.iter().position(|&b| b == b'-').ok_or(SioError::Malformed)?;
        attachments = digits(&rest[..dash]).ok_or(SioError::Malformed)?.try_into().map_err(|_| SioError::Malformed)?;
        rest = &rest[dash + 1..];
    }
    let mut nsp: &[u8] = b"/";
    if rest.first() == Some(&b'/') {
        match rest.iter().position(|&b| b == b',') {
            Some(i) => {
                nsp = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                nsp = rest;
                rest = &[];
            }
        }
    }
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let id = if n == 0 { None } else { Some(digits(&rest[..n]).ok_or(SioError::Malformed)?) };
    let data = &rest[n..];
    let need_id = |id: Option<u64>| id.ok_or(SioError::Malformed);
    Ok(match ty {
        b'0' => Packet::Connect { nsp, data },
        b'1' => Packet::Disconnect { nsp },
        b'2' => Packet::Event { nsp, id, data },
        b'3' => Packet::Ack { nsp, id: need_id(id)?, data },
        b'4' => Packet::ConnectError { nsp, data },
        b'5' => Packet::BinaryEvent { nsp, id, attachments, data },
        b'6' => Packet::BinaryAck { nsp, id: need_id(id)?, attachments, data },
        t => return Err(SioError::SioType(t as char)),
    })
}

/// A decimal number that fits a `u64`, or `None`.
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Appends an event header on `/`: `42<id>["name",`. The caller appends the arguments and `]`.
pub fn event_head(out: &mut Vec<u8>, id: Option<u64>, name: &str) {
    out.extend_from_slice(b"42");
    if let Some(id) = id {
        push_u64(out, id);
    }
    out.extend_from_slice(b"[\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",");
}

/// Appends the decimal form of `v` (what `write!` does, without the formatting machinery).
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a JSON string (the room names and pads the scenarios use need no escaping beyond
/// quotes and backslashes, which are escaped anyway).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// The first string argument of an event or ack array, e.g. `ok` in `["ok"]`. Good enough for
/// the plain names and `"ok"` answers the scenarios look at (no escapes inside).
pub fn first_str(array: &[u8]) -> Option<&[u8]> {
    let s = trim_start(array.strip_prefix(b"[")?);
    let s = s.strip_prefix(b"\"")?;
    let end = s.iter().position(|&b| b == b'"' || b == b'\\')?;
    (s[end] == b'"').then_some(&s[..end])
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engineio_and_socketio_packets() {
        assert_eq!(parse(b"2"), Ok(Packet::Ping));
        assert_eq!(parse(b"6"), Ok(Packet::Noop));
        assert_eq!(parse(b"40{\"sid\":\"a\"}"), Ok(Packet::Connect { nsp: b"/", data: b"{\"sid\":\"a\"}" }));
        assert_eq!(parse(b"40/custom,{}"), Ok(Packet::Connect { nsp: b"/custom", data: b"{}" }));
        assert_eq!(parse(b"41/custom"), Ok(Packet::Disconnect { nsp: b"/custom" }));
        assert_eq!(parse(b"42[\"msg\",1]"), Ok(Packet::Event { nsp: b"/", id: None, data: b"[\"msg\",1]" }));
        assert_eq!(parse(b"4217[\"a\"]"), Ok(Packet::Event { nsp: b"/", id: Some(17), data: b"[\"a\"]" }));
        assert_eq!(parse(b"43456[1]"), Ok(Packet::Ack { nsp: b"/", id: 456, data: b"[1]" }));
        assert_eq!(
            parse(b"452-/x,9[\"a\",{}]"),
            Ok(Packet::BinaryEvent { nsp: b"/x", id: Some(9), attachments: 2, data: b"[\"a\",{}]" })
        );
        assert_eq!(
            parse(b"44{\"message\":\"no\"}"),
            Ok(Packet::ConnectError { nsp: b"/", data: b"{\"message\":\"no\"}" })
        );
        assert_eq!(parse(b"43[1]"), Err(SioError::Malformed));
        assert_eq!(parse(b"47"), Err(SioError::SioType('7')));
        assert_eq!(parse(b"9"), Err(SioError::EioType('9')));
        assert_eq!(parse(b""), Err(SioError::Empty));
        assert_eq!(parse(b"4399999999999999999999[1]"), Err(SioError::Malformed));
    }

    #[test]
    fn parses_open() {
        let open = parse_open(
            br#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        )
        .unwrap();
        assert_eq!(open.sid, "abc");
        assert_eq!((open.ping_interval, open.ping_timeout, open.max_payload), (25000, 20000, Some(1_000_000)));
        assert!(parse_open(b"40").is_err());
    }

    #[test]
    fn encodes_events() {
        let mut out = Vec::new();
        event_head(&mut out, Some(12), "join");
        push_str(&mut out, "r\"1");
        out.push(b']');
        assert_eq!(out, br#"4212["join","r\"1"]"#);
        let mut out = Vec::new();
        event_head(&mut out, None, "publish");
        push_u64(&mut out, 0);
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"42[\"publish\",018446744073709551615");
        assert_eq!(first_str(br#"["ok"]"#), Some(&b"ok"[..]));
        assert_eq!(first_str(br#"[ "ok",1]"#), Some(&b"ok"[..]));
        assert_eq!(first_str(b"[1]"), None);
    }
}
