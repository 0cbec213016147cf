//! imks's native JSON protocol at `/ws`, the client's side of what the `chat` scenario uses:
//! the `connected` greeting, `chat` to a user, and the `ack` and `chat` messages that come back.
//!
//! Every message the generator sends carries a client `msgId` of the form
//! `<sender>.<seq>.<t>` ([`MsgId`]): the sender's index in the run, its sequence number and the
//! (intended) send time in nanoseconds on the host's monotonic clock. The server hands that id
//! back as `clientMsgId` in both acks and in the delivery, so each of the three tells by itself
//! which message it answers and when that was sent. The time also keeps ids unique from one run
//! to the next, which matters because the server de-duplicates `msgId`s per conversation and a
//! token-minted user (`lg-3`) keeps its conversations across runs.
//!
//! Server messages are read by scanning for keys, like [`super::stamp`]: the server writes
//! `type` first, and nothing the generator sends contains a quoted key.

use super::sio::{push_str, push_u64};

/// The client message id the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgId {
    /// The sending connection's index among all connections of the run.
    pub sender: u64,
    /// 1, 2, ... per sender.
    pub seq: u64,
    /// Send time (intended time in open loop), nanoseconds on the monotonic clock.
    pub t: u64,
}

impl MsgId {
    fn write(&self, out: &mut Vec<u8>) {
        push_u64(out, self.sender);
        out.push(b'.');
        push_u64(out, self.seq);
        out.push(b'.');
        push_u64(out, self.t);
    }

    /// Reads `<sender>.<seq>.<t>`; anything else (another client's id) is `None`.
    pub fn parse(s: &[u8]) -> Option<MsgId> {
        let mut parts = s.split(|&b| b == b'.');
        let mut next = || parts.next().and_then(number);
        let id = MsgId { sender: next()?, seq: next()?, t: next()? };
        parts.next().is_none().then_some(id)
    }
}

fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| acc.checked_mul(10)?.checked_add(u64::from(b - b'0')))
}

/// Appends `{"type":"chat","data":{"msgId":"...","toUserId":"...","content":"xxx"}}` with a
/// content of `content_len` bytes (at least one: the server keeps what it is given, and an
/// empty message is not one a real client sends).
pub fn write_chat(out: &mut Vec<u8>, id: &MsgId, to_user: &str, content_len: usize) {
    out.extend_from_slice(b"{\"type\":\"chat\",\"data\":{\"msgId\":\"");
    id.write(out);
    out.extend_from_slice(b"\",\"toUserId\":");
    push_str(out, to_user);
    out.extend_from_slice(b",\"content\":\"");
    out.resize(out.len() + content_len.max(1), b'x');
    out.extend_from_slice(b"\"}}");
}

/// The acknowledgement statuses the scenario counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Stored by the conversation's owner shard.
    Sent,
    /// Queued on a session of the recipient.
    Delivered,
}

/// What a server message means to the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// `ack` with `status` `sent` or `delivered` (`read` is never asked for) for `clientMsgId`.
    Ack { status: AckStatus, id: Option<MsgId> },
    /// `chat`: a delivery; `id` is its `clientMsgId`.
    Chat { id: Option<MsgId> },
    /// `error` with its `code`.
    Error { code: &'a [u8] },
    /// `connected`, `pong`, presence, an `ack` of another status, ...: nothing to count.
    Other,
}

/// Classifies one text message from the server; `None` when it has no string `type`.
pub fn parse(msg: &[u8]) -> Option<ServerMsg<'_>> {
    let id = |m: &[u8]| find_str(m, b"\"clientMsgId\"").and_then(MsgId::parse);
    Some(match find_str(msg, b"\"type\"")? {
        b"ack" => match find_str(msg, b"\"status\"") {
            Some(b"sent") => ServerMsg::Ack { status: AckStatus::Sent, id: id(msg) },
            Some(b"delivered") => ServerMsg::Ack { status: AckStatus::Delivered, id: id(msg) },
            _ => ServerMsg::Other,
        },
        b"chat" => ServerMsg::Chat { id: id(msg) },
        b"error" => ServerMsg::Error { code: find_str(msg, b"\"code\"").unwrap_or(b"") },
        _ => ServerMsg::Other,
    })
}

/// The `userId` of a `connected` greeting, `None` for any other message.
pub fn connected_user(msg: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(msg).ok()?;
    if v.get("type")?.as_str()? != "connected" {
        return None;
    }
    Some(v.get("data")?.get("userId")?.as_str()?.to_string())
}

/// The raw contents of the string value of `key` (given with its quotes) anywhere in `json`, up
/// to its closing quote; `None` when absent, not a string, or holding escapes (none of the
/// values the scenario reads has any).
pub fn find_str<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let s = super::stamp::value_of(json, key)?.strip_prefix(b"\"")?;
    let end = s.iter().position(|&b| b == b'"' || b == b'\\')?;
    (s[end] == b'"').then_some(&s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_message_is_json_the_server_reads() {
        let mut out = Vec::new();
        let id = MsgId { sender: 7, seq: 42, t: 1_234_567_890_123 };
        write_chat(&mut out, &id, "anon-\"x\"", 10);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "chat");
        assert_eq!(v["data"]["msgId"], "7.42.1234567890123");
        assert_eq!(v["data"]["toUserId"], "anon-\"x\"");
        assert_eq!(v["data"]["content"].as_str().map(str::len), Some(10));
        let mut out = Vec::new();
        write_chat(&mut out, &id, "u", 0);
        assert!(out.ends_with(b"\"content\":\"x\"}}"));
    }

    #[test]
    fn msg_ids_round_trip_and_refuse_others() {
        let id = MsgId { sender: 0, seq: 1, t: u64::MAX };
        let mut out = Vec::new();
        id.write(&mut out);
        assert_eq!(MsgId::parse(&out), Some(id));
        for bad in [&b""[..], b"1.2", b"1.2.3.4", b"a.2.3", b"1..3", b"99999999999999999999999.1.1"] {
            assert_eq!(MsgId::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reads_what_imks_sends() {
        let id = Some(MsgId { sender: 1, seq: 2, t: 3 });
        let sent = br#"{"type":"ack","data":{"msgId":"0191","clientMsgId":"1.2.3","status":"sent","timestamp":5}}"#;
        assert_eq!(parse(sent), Some(ServerMsg::Ack { status: AckStatus::Sent, id }));
        let delivered =
            br#"{"type":"ack","data":{"msgId":"9","clientMsgId":"1.2.3","status":"delivered","timestamp":5}}"#;
        assert_eq!(parse(delivered), Some(ServerMsg::Ack { status: AckStatus::Delivered, id }));
        let read = br#"{"type":"ack","data":{"msgId":"9","status":"read","timestamp":5}}"#;
        assert_eq!(parse(read), Some(ServerMsg::Other));
        let chat = br#"{"type":"chat","data":{"msgId":"9","fromUserId":"a","toUserId":"b","content":"xx","contentType":"text/plain","createdAt":1,"clientMsgId":"1.2.3"}}"#;
        assert_eq!(parse(chat), Some(ServerMsg::Chat { id }));
        let foreign = br#"{"type":"chat","data":{"msgId":"9","content":"hi"}}"#;
        assert_eq!(parse(foreign), Some(ServerMsg::Chat { id: None }));
        let err = br#"{"type":"error","data":{"code":"rate_limited","message":"slow down"}}"#;
        assert_eq!(parse(err), Some(ServerMsg::Error { code: b"rate_limited" }));
        assert_eq!(parse(br#"{"type":"pong","data":{"timestamp":1}}"#), Some(ServerMsg::Other));
        assert_eq!(parse(b"not json"), None);
        let hello =
            br#"{"type":"connected","data":{"userId":"anon-1f","tenant":"default","sessionId":"0:1","onlineCount":2}}"#;
        assert_eq!(connected_user(hello).as_deref(), Some("anon-1f"));
        assert_eq!(connected_user(sent), None);
    }

    #[test]
    fn find_str_skips_values_and_refuses_escapes() {
        assert_eq!(find_str(br#"{"a":"type","type" : "x"}"#, b"\"type\""), Some(&b"x"[..]));
        assert_eq!(find_str(br#"{"type":"a\"b"}"#, b"\"type\""), None);
        assert_eq!(find_str(br#"{"type":5}"#, b"\"type\""), None);
        assert_eq!(find_str(br#"{"type":"unterminated"#, b"\"type\""), None);
    }
}
