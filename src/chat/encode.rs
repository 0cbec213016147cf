//! The frames a session gets from the chat worker: the `chat` a recipient receives, pages of
//! `history`, and text frames of encoded envelopes.

use bytes::Bytes;
use serde::Serialize;

use super::envelope::encode;
use crate::store::{Message, Target};

/// The `chat` message a recipient receives.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatOut<'a> {
    msg_id: String,
    from_user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a str>,
    content: &'a str,
    content_type: &'a str,
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
}

fn chat_out(m: &Message) -> ChatOut<'_> {
    let (to_user_id, room_id) = match &m.target {
        Target::User(u) => (Some(&**u), None),
        Target::Room(r) => (None, Some(&**r)),
    };
    ChatOut {
        msg_id: m.id.to_string(),
        from_user_id: &m.author,
        to_user_id,
        room_id,
        content: &m.body,
        content_type: &m.content_type,
        created_at: m.created_at_ms,
        client_msg_id: m.client_msg_id.as_deref(),
    }
}

/// `history {messages, nextCursor}`: the messages as recipients get them, newest first.
pub(super) fn encode_history(id: Option<&str>, page: &crate::store::Page) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct History<'a> {
        messages: Vec<ChatOut<'a>>,
        next_cursor: Option<String>,
    }
    let h = History {
        messages: page.messages.iter().filter(|m| !m.deleted).map(chat_out).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    };
    encode("history", id, &h)
}

/// Encodes a stored message as the `chat` a recipient gets.
pub fn encode_message(m: &Message) -> Bytes {
    crate::ws::codec::encode_text(&encode("chat", None, &chat_out(m)))
}

pub(super) fn text(s: String) -> Bytes {
    crate::ws::codec::encode_text(&s)
}
