//! The native protocol's JSON envelope, `{"type": string, "data": object, "id"?: string}`: a
//! pure codec from one WebSocket text message to a typed client message, and from server
//! messages to bytes. It knows nothing of sessions, shards or time.
//!
//! Decoding checks the envelope first and the `data` of a known type second, so an error can
//! name what was wrong (`bad_json`, `bad_envelope`, `bad_data`) and echo the envelope `id` when
//! one was readable. Unknown fields are ignored (newer clients may send more); unknown types are
//! returned as [`ClientMsg::Custom`] for the application's router.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A stable, machine-readable error code sent in `error {code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not an object.
    BadJson,
    /// No string `type`, or an `id` or `data` of the wrong kind.
    BadEnvelope,
    /// The `data` of a known type is missing a field or has one of the wrong kind.
    BadData,
    /// No built-in type and no application route for this `type`.
    UnknownType,
    /// A field over its configured limit (content size, list length).
    TooLarge,
    /// A name (room, user) that is empty, too long or holds control characters.
    InvalidName,
    /// The per-session message rate was exceeded; fatal.
    RateLimited,
    /// The sender may not do this (not a member of the room).
    Forbidden,
    /// The session holds as many rooms or presence subscriptions as it may.
    TooMany,
    /// The message could not be stored.
    StoreFailed,
    /// An application handler failed, panicked or timed out.
    Internal,
    /// An application handler did not finish in time.
    Timeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadEnvelope => "bad_envelope",
            ErrorCode::BadData => "bad_data",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooMany => "too_many",
            ErrorCode::StoreFailed => "store_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::Timeout => "timeout",
        }
    }
}

/// A message that could not be decoded; answered with `error` and the session stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
    /// The envelope's `id`, when it could be read.
    pub id: Option<String>,
}

fn decode_error(code: ErrorCode, message: impl Into<String>, id: Option<&str>) -> DecodeError {
    DecodeError { code, message: message.into(), id: id.map(str::to_string) }
}

/// Where a chat message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    User(String),
    Room(String),
}

/// A decoded client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    Ping,
    Chat {
        msg_id: Option<String>,
        to: Recipient,
        content: String,
        content_type: String,
    },
    Read {
        peer_id: String,
        msg_ids: Vec<String>,
    },
    PresenceSubscribe {
        user_ids: Vec<String>,
    },
    PresenceUnsubscribe {
        user_ids: Vec<String>,
    },
    Join {
        room_id: String,
    },
    Leave {
        room_id: String,
    },
    /// A page of a conversation's history, newest first, before `before` (a cursor from an
    /// earlier page).
    History {
        with: Recipient,
        before: Option<String>,
        limit: Option<usize>,
    },
    /// A type with no built-in meaning, for the application's router; `data` is its raw JSON
    /// text (`null` when absent).
    Custom {
        kind: Cow<'a, str>,
        data: &'a str,
    },
}

/// A client message and its envelope `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound<'a> {
    pub id: Option<String>,
    pub msg: ClientMsg<'a>,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatData {
    msg_id: Option<String>,
    to_user_id: Option<String>,
    room_id: Option<String>,
    content: String,
    content_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadData {
    peer_id: String,
    msg_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsersData {
    user_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomData {
    room_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryData {
    peer_id: Option<String>,
    room_id: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

const NULL: &str = "null";

/// Decodes one text message.
pub fn decode(text: &str) -> Result<Inbound<'_>, DecodeError> {
    let env: RawEnvelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) if e.is_data() => return Err(decode_error(ErrorCode::BadEnvelope, e.to_string(), None)),
        Err(e) => return Err(decode_error(ErrorCode::BadJson, e.to_string(), None)),
    };
    let id = match env.id {
        None => None,
        Some(raw) if raw.get() == NULL => None,
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => Some(s),
            Err(_) => return Err(decode_error(ErrorCode::BadEnvelope, "`id` must be a string", None)),
        },
    };
    let Some(kind) = env.kind else {
        return Err(decode_error(ErrorCode::BadEnvelope, "missing string `type`", id.as_deref()));
    };
    let data = env.data.filter(|d| d.get() != NULL);
    if let Some(d) = data {
        if !d.get().starts_with('{') {
            return Err(decode_error(ErrorCode::BadEnvelope, "`data` must be an object", id.as_deref()));
        }
    }
    let fields = |name: &str| -> Result<&RawValue, DecodeError> {
        data.ok_or_else(|| decode_error(ErrorCode::BadData, format!("`{name}` needs `data`"), id.as_deref()))
    };
    let parse = |name: &str| {
        let raw = fields(name)?;
        Ok::<_, DecodeError>(raw.get())
    };
    let bad = |e: serde_json::Error| decode_error(ErrorCode::BadData, e.to_string(), id.as_deref());
    let msg = match kind.as_ref() {
        "ping" => ClientMsg::Ping,
        "chat" => {
            let d: ChatData = serde_json::from_str(parse("chat")?).map_err(bad)?;
            let to = match (d.to_user_id, d.room_id) {
                (Some(u), None) => Recipient::User(u),
                (None, Some(r)) => Recipient::Room(r),
                _ => {
                    return Err(decode_error(
                        ErrorCode::BadData,
                        "`chat` needs exactly one of `toUserId` and `roomId`",
                        id.as_deref(),
                    ))
                }
            };
            ClientMsg::Chat {
                msg_id: d.msg_id,
                to,
                content: d.content,
                content_type: d.content_type.unwrap_or_else(|| "text/plain".into()),
            }
        }
        "read" => {
            let d: ReadData = serde_json::from_str(parse("read")?).map_err(bad)?;
            ClientMsg::Read { peer_id: d.peer_id, msg_ids: d.msg_ids }
        }
        "presence:subscribe" => {
            let d: UsersData = serde_json::from_str(parse("presence:subscribe")?).map_err(bad)?;
            ClientMsg::PresenceSubscribe { user_ids: d.user_ids }
        }
        "presence:unsubscribe" => {
            let d: UsersData = serde_json::from_str(parse("presence:unsubscribe")?).map_err(bad)?;
            ClientMsg::PresenceUnsubscribe { user_ids: d.user_ids }
        }
        "join" => ClientMsg::Join { room_id: serde_json::from_str::<RoomData>(parse("join")?).map_err(bad)?.room_id },
        "leave" => {
            ClientMsg::Leave { room_id: serde_json::from_str::<RoomData>(parse("leave")?).map_err(bad)?.room_id }
        }
        "history" => {
            let d: HistoryData = serde_json::from_str(parse("history")?).map_err(bad)?;
            let with = match (d.peer_id, d.room_id) {
                (Some(p), None) => Recipient::User(p),
                (None, Some(r)) => Recipient::Room(r),
                _ => {
                    return Err(decode_error(
                        ErrorCode::BadData,
                        "`history` needs exactly one of `peerId` and `roomId`",
                        id.as_deref(),
                    ))
                }
            };
            ClientMsg::History { with, before: d.before, limit: d.limit }
        }
        _ => ClientMsg::Custom { kind, data: data.map_or(NULL, RawValue::get) },
    };
    Ok(Inbound { id, msg })
}

/// Encodes a server message `{"type": kind, "data": data, "id"?: id}`.
pub fn encode<T: Serialize + ?Sized>(kind: &str, id: Option<&str>, data: &T) -> String {
    #[derive(Serialize)]
    struct Out<'a, T: ?Sized> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        data: &'a T,
    }
    // Serialising plain structs and strings to a String cannot fail; fall back to an error
    // envelope rather than panic if a caller's type refuses.
    serde_json::to_string(&Out { kind, id, data })
        .unwrap_or_else(|_| r#"{"type":"error","data":{"code":"internal","message":"cannot encode"}}"#.to_string())
}

/// `error {msgId?, code, message}`.
pub fn encode_error(id: Option<&str>, msg_id: Option<&str>, code: ErrorCode, message: &str) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct E<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        msg_id: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
    }
    encode("error", id, &E { msg_id, code, message })
}

/// An `error` for an operation the store refused: code `store_failed`, with the store's own
/// `reason` (`unavailable`, `too_large`, `not_found`, ...) and, for `unavailable`, when to retry
/// (with the same `msgId`, so a message whose commit was uncertain is not stored twice).
pub fn encode_store_error(id: Option<&str>, msg_id: Option<&str>, e: &crate::store::StoreError) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct E<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        msg_id: Option<&'a str>,
        code: ErrorCode,
        reason: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    }
    let retry_after_ms = e.retry_after_ms();
    let message = e.to_string();
    encode(
        "error",
        id,
        &E { msg_id, code: ErrorCode::StoreFailed, reason: e.code(), message: &message, retry_after_ms },
    )
}

/// The status an `ack` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Sent,
    Delivered,
    Read,
}

/// `ack {msgId, status, timestamp, clientMsgId?}`.
pub fn encode_ack(
    id: Option<&str>,
    msg_id: &str,
    client_msg_id: Option<&str>,
    status: AckStatus,
    ts_ms: i64,
) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct A<'a> {
        msg_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<&'a str>,
        status: AckStatus,
        timestamp: i64,
    }
    encode("ack", id, &A { msg_id, client_msg_id, status, timestamp: ts_ms })
}

/// `online` / `offline {userId, timestamp}`.
pub fn encode_presence(online: bool, user_id: &str, ts_ms: i64) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct P<'a> {
        user_id: &'a str,
        timestamp: i64,
    }
    encode(if online { "online" } else { "offline" }, None, &P { user_id, timestamp: ts_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Inbound<'_> {
        decode(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn err(s: &str) -> DecodeError {
        decode(s).expect_err(s)
    }

    #[test]
    fn decodes_every_builtin_type() {
        assert_eq!(ok(r#"{"type":"ping","id":"1"}"#), Inbound { id: Some("1".into()), msg: ClientMsg::Ping });
        let chat = ok(r#"{"type":"chat","data":{"msgId":"c1","toUserId":"bob","content":"hi"}}"#);
        assert_eq!(
            chat.msg,
            ClientMsg::Chat {
                msg_id: Some("c1".into()),
                to: Recipient::User("bob".into()),
                content: "hi".into(),
                content_type: "text/plain".into()
            }
        );
        let room = ok(r#"{"type":"chat","data":{"roomId":"r","content":"x","contentType":"text/markdown"}}"#);
        assert!(matches!(room.msg, ClientMsg::Chat { to: Recipient::Room(ref r), ref content_type, .. }
            if r == "r" && content_type == "text/markdown"));
        assert_eq!(
            ok(r#"{"type":"read","data":{"peerId":"a","msgIds":["x","y"]}}"#).msg,
            ClientMsg::Read { peer_id: "a".into(), msg_ids: vec!["x".into(), "y".into()] }
        );
        assert_eq!(
            ok(r#"{"type":"presence:subscribe","data":{"userIds":["a"]}}"#).msg,
            ClientMsg::PresenceSubscribe { user_ids: vec!["a".into()] }
        );
        assert_eq!(
            ok(r#"{"type":"presence:unsubscribe","data":{"userIds":[]}}"#).msg,
            ClientMsg::PresenceUnsubscribe { user_ids: vec![] }
        );
        assert_eq!(ok(r#"{"type":"join","data":{"roomId":"r"}}"#).msg, ClientMsg::Join { room_id: "r".into() });
        assert_eq!(ok(r#"{"type":"leave","data":{"roomId":"r"}}"#).msg, ClientMsg::Leave { room_id: "r".into() });
        assert_eq!(
            ok(r#"{"type":"history","data":{"peerId":"b","before":"9","limit":2}}"#).msg,
            ClientMsg::History { with: Recipient::User("b".into()), before: Some("9".into()), limit: Some(2) }
        );
        assert_eq!(
            ok(r#"{"type":"history","data":{"roomId":"r"}}"#).msg,
            ClientMsg::History { with: Recipient::Room("r".into()), before: None, limit: None }
        );
        assert_eq!(err(r#"{"type":"history","data":{}}"#).code, ErrorCode::BadData);
    }

    #[test]
    fn unknown_types_go_to_the_router_with_raw_data() {
        let m = ok(r#"{"type":"app:thing","data":{"a":[1,2]},"id":"7"}"#);
        match m.msg {
            ClientMsg::Custom { kind, data } => {
                assert_eq!(kind, "app:thing");
                assert_eq!(data, r#"{"a":[1,2]}"#);
            }
            other => panic!("{other:?}"),
        }
        match ok(r#"{"type":"x"}"#).msg {
            ClientMsg::Custom { data, .. } => assert_eq!(data, "null"),
            other => panic!("{other:?}"),
        }
    }

    /// Found by fuzzing: `data` is passed on as JSON text, checked for syntax only. A number
    /// too large for an `f64` is valid JSON; it reaches the router as written, and a handler
    /// that parses it into a type of its own gets the parse error there.
    #[test]
    fn raw_data_is_checked_for_json_syntax_not_for_number_range() {
        match ok(r#"{"type":"app:big","data":{"a":[1e555,2]}}"#).msg {
            ClientMsg::Custom { data, .. } => {
                assert_eq!(data, r#"{"a":[1e555,2]}"#);
                assert!(serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok());
                assert!(serde_json::from_str::<serde_json::Value>(data).is_err(), "out of an f64's range");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err(r#"{"type":"app:big","data":{"a":[1e,2]}}"#).code, ErrorCode::BadJson);
    }

    #[test]
    fn escaped_type_names_are_unescaped() {
        assert_eq!(ok(r#"{"type":"p\u0069ng"}"#).msg, ClientMsg::Ping);
    }

    #[test]
    fn errors_name_the_problem_and_keep_the_id() {
        assert_eq!(err("not json").code, ErrorCode::BadJson);
        assert_eq!(err("[1,2]").code, ErrorCode::BadEnvelope);
        assert_eq!(err(r#"{"data":{}}"#).code, ErrorCode::BadEnvelope);
        assert_eq!(err(r#"{"type":5}"#).code, ErrorCode::BadEnvelope);
        assert_eq!(err(r#"{"type":"ping","id":5}"#).code, ErrorCode::BadEnvelope);
        let e = err(r#"{"type":"chat","id":"9","data":[1]}"#);
        assert_eq!((e.code, e.id.as_deref()), (ErrorCode::BadEnvelope, Some("9")));
        let e = err(r#"{"type":"chat","id":"9"}"#);
        assert_eq!((e.code, e.id.as_deref()), (ErrorCode::BadData, Some("9")));
        assert_eq!(err(r#"{"type":"chat","data":{"toUserId":"b"}}"#).code, ErrorCode::BadData);
        assert_eq!(err(r#"{"type":"chat","data":{"content":"x"}}"#).code, ErrorCode::BadData);
        assert_eq!(
            err(r#"{"type":"chat","data":{"content":"x","toUserId":"a","roomId":"r"}}"#).code,
            ErrorCode::BadData
        );
        assert_eq!(err(r#"{"type":"read","data":{"peerId":"a","msgIds":"x"}}"#).code, ErrorCode::BadData);
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let full =
            r#"{"type":"chat","id":"q","data":{"msgId":"m","toUserId":"b\u00e9","content":"h\"i","contentType":"t"}}"#;
        assert!(decode(full).is_ok());
        for cut in 0..full.len() {
            if full.is_char_boundary(cut) {
                assert!(decode(&full[..cut]).is_err(), "prefix {cut} decoded");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::test_util::Rng(0x5eed);
        let alphabet = br#"{}[]":,\ atypedchpingmsgIdtoUserIdcontent01null"#;
        for _ in 0..20_000 {
            let len = rng.below(40);
            let s: String = (0..len).map(|_| alphabet[rng.below(alphabet.len())] as char).collect();
            let _ = decode(&s);
        }
    }

    #[test]
    fn encodes_server_messages() {
        assert_eq!(
            encode_ack(Some("1"), "m", Some("c"), AckStatus::Delivered, 5),
            r#"{"type":"ack","id":"1","data":{"msgId":"m","clientMsgId":"c","status":"delivered","timestamp":5}}"#
        );
        assert_eq!(
            encode_error(None, Some("m"), ErrorCode::RateLimited, "slow down"),
            r#"{"type":"error","data":{"msgId":"m","code":"rate_limited","message":"slow down"}}"#
        );
        assert_eq!(encode_presence(false, "u", 3), r#"{"type":"offline","data":{"userId":"u","timestamp":3}}"#);
        let v: serde_json::Value = serde_json::from_str(&encode("pong", Some("x"), &serde_json::json!({}))).unwrap();
        assert_eq!(v["type"], "pong");
        assert_eq!(v["id"], "x");
    }
}
