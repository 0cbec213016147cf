//! The subjects nodes publish and subscribe to: one per Socket.IO room, namespace, native room,
//! user and node, under the cluster's prefix. Pure: names in, subjects out.
//!
//! | Subject | Who subscribes | What travels on it |
//! |---|---|---|
//! | `<p>.sio.<nsp>.all` | nodes with a socket in the namespace | broadcasts to the whole namespace |
//! | `<p>.sio.<nsp>.r.<room>` | nodes with a socket in the room | broadcasts to the room |
//! | `<p>.room.<room>` | nodes with a native session in the room | native room frames |
//! | `<p>.user.<tenant>.<user>` | nodes with a session of the user | direct messages, acks, logins |
//! | `<p>.presence.<tenant>.<user>` | nodes with a session watching the user | online / offline |
//! | `<p>.node.<id>` | that node | what is addressed to one node: answers to its requests, receipts |
//! | `<p>.ctl` | every node | heartbeats, departures and requests to every node |
//!
//! A name becomes one subject token: letters, digits, `-` and `_` stay as they are; every other
//! byte is written `~` and two lowercase hex digits, and the empty name is `~`. So a name can
//! never add a token (`.`), a wildcard (`*`, `>`) or a space, two names never share a token,
//! and a subject is readable in `nats sub` for the usual room names.

use std::fmt::Write;

/// What a subject is for: the label of its traffic in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    /// A Socket.IO namespace or room.
    Sio,
    /// A native-protocol room.
    Room,
    /// One node.
    Node,
    /// A user's sessions.
    User,
    /// A user's presence, for the nodes that watch it.
    Presence,
    /// The cluster's control subject.
    Control,
}

impl SubjectKind {
    pub const ALL: [SubjectKind; 6] = [
        SubjectKind::Sio,
        SubjectKind::Room,
        SubjectKind::Node,
        SubjectKind::User,
        SubjectKind::Presence,
        SubjectKind::Control,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Sio => "sio",
            SubjectKind::Room => "room",
            SubjectKind::Node => "node",
            SubjectKind::User => "user",
            SubjectKind::Presence => "presence",
            SubjectKind::Control => "ctl",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind of a subject under `prefix`, from its second token; `None` for a subject that
    /// is not one of ours.
    pub fn of(prefix: &str, subject: &str) -> Option<SubjectKind> {
        let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
        let mut tokens = rest.split('.');
        let kind = tokens.next()?;
        match kind {
            "sio" | "sioseq" => Some(SubjectKind::Sio),
            "room" => Some(SubjectKind::Room),
            "node" => Some(SubjectKind::Node),
            "user" => Some(SubjectKind::User),
            "presence" => Some(SubjectKind::Presence),
            // The control subject is exactly `<p>.ctl`.
            "ctl" if tokens.next().is_none() => Some(SubjectKind::Control),
            _ => None,
        }
    }
}

/// Appends `name` to `out` as one subject token.
pub fn push_token(out: &mut String, name: &str) {
    if name.is_empty() {
        out.push('~');
        return;
    }
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "~{b:02x}");
        }
    }
}

/// Builds the subjects of one cluster (one prefix).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn start(&self, kind: &str, extra: usize) -> String {
        let mut s = String::with_capacity(self.prefix.len() + kind.len() + extra + 2);
        s.push_str(&self.prefix);
        s.push('.');
        s.push_str(kind);
        s
    }

    /// Broadcasts to every socket of a Socket.IO namespace.
    pub fn sio_namespace(&self, nsp: &str) -> String {
        let mut s = self.start("sio", nsp.len() + 5);
        s.push('.');
        push_token(&mut s, nsp);
        s.push_str(".all");
        s
    }

    /// Broadcasts to a room of a Socket.IO namespace.
    pub fn sio_room(&self, nsp: &str, room: &str) -> String {
        let mut s = self.start("sio", nsp.len() + room.len() + 4);
        s.push('.');
        push_token(&mut s, nsp);
        s.push_str(".r.");
        push_token(&mut s, room);
        s
    }

    /// A namespace's or room's subject as the recovery stream republishes it, with each
    /// broadcast's sequence ([`super::jetstream`]): `sio` becomes `sioseq`.
    pub fn sequenced(&self, sio_subject: &str) -> String {
        let rest = sio_subject.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix(".sio.")).unwrap_or(sio_subject);
        let mut s = self.start("sioseq", rest.len() + 1);
        s.push('.');
        s.push_str(rest);
        s
    }

    /// Every broadcast of a namespace in the recovery stream: its filter subject.
    pub fn sio_namespace_filter(&self, nsp: &str) -> String {
        let mut s = self.start("sio", nsp.len() + 3);
        s.push('.');
        push_token(&mut s, nsp);
        s.push_str(".>");
        s
    }

    /// Frames for a native-protocol room.
    pub fn room(&self, room: &str) -> String {
        let mut s = self.start("room", room.len() + 1);
        s.push('.');
        push_token(&mut s, room);
        s
    }

    /// What is for a user's sessions, on the nodes that have some.
    pub fn user(&self, tenant: &str, user: &str) -> String {
        let mut s = self.start("user", tenant.len() + user.len() + 2);
        s.push('.');
        push_token(&mut s, tenant);
        s.push('.');
        push_token(&mut s, user);
        s
    }

    /// A user's presence changes, on the nodes with sessions watching the user.
    pub fn presence(&self, tenant: &str, user: &str) -> String {
        let mut s = self.start("presence", tenant.len() + user.len() + 2);
        s.push('.');
        push_token(&mut s, tenant);
        s.push('.');
        push_token(&mut s, user);
        s
    }

    /// What is addressed to one node.
    pub fn node(&self, node_id: &str) -> String {
        let mut s = self.start("node", node_id.len() + 1);
        s.push('.');
        push_token(&mut s, node_id);
        s
    }

    /// What every node hears: heartbeats, departures, requests.
    pub fn control(&self) -> String {
        self.start("ctl", 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str) -> String {
        let mut s = String::new();
        push_token(&mut s, name);
        s
    }

    #[test]
    fn a_token_never_holds_a_separator_wildcard_or_space() {
        for name in ["a.b", "*", ">", "a b", "/", "", "~", "é", "a\u{0}b", "room-1_x"] {
            let t = token(name);
            assert!(!t.is_empty(), "{name:?}");
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)), "{name:?} -> {t}");
        }
        assert_eq!(token("room-1_x"), "room-1_x");
        assert_eq!(token("a.b"), "a~2eb");
        assert_eq!(token("/"), "~2f");
        assert_eq!(token(""), "~");
    }

    #[test]
    fn distinct_names_get_distinct_tokens() {
        let names = ["", "~", "~7e", "a.b", "a~2eb", "a", "A", "é", "/", "/chat"];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            assert!(seen.insert(token(n)), "{n:?} collides");
        }
    }

    #[test]
    fn subjects_name_their_kind() {
        let s = Subjects::new("imks");
        assert_eq!(s.sio_namespace("/"), "imks.sio.~2f.all");
        assert_eq!(s.sio_room("/", "lobby"), "imks.sio.~2f.r.lobby");
        assert_eq!(s.room("general"), "imks.room.general");
        assert_eq!(s.node("n1"), "imks.node.n1");
        assert_eq!(s.sequenced(&s.sio_room("/", "a")), "imks.sioseq.~2f.r.a");
        assert_eq!(s.sio_namespace_filter("/"), "imks.sio.~2f.>");
        assert_eq!(SubjectKind::of("imks", &s.sequenced(&s.sio_namespace("/"))), Some(SubjectKind::Sio));
        assert_eq!(s.user("acme", "a.b"), "imks.user.acme.a~2eb");
        assert_eq!(s.presence("acme", "bob"), "imks.presence.acme.bob");
        assert_eq!(SubjectKind::of("imks", &s.user("t", "u")), Some(SubjectKind::User));
        assert_eq!(SubjectKind::of("imks", &s.presence("t", "u")), Some(SubjectKind::Presence));
        assert_eq!(SubjectKind::of("imks", &s.sio_room("/", "a")), Some(SubjectKind::Sio));
        assert_eq!(SubjectKind::of("imks", &s.room("a")), Some(SubjectKind::Room));
        assert_eq!(SubjectKind::of("imks", &s.node("a")), Some(SubjectKind::Node));
        assert_eq!(s.control(), "imks.ctl");
        assert_eq!(SubjectKind::of("imks", &s.control()), Some(SubjectKind::Control));
        assert_eq!(SubjectKind::of("imks", "imks.ctl.x"), None);
        assert_eq!(SubjectKind::of("other", &s.node("a")), None);
        assert_eq!(SubjectKind::of("imks", "imksx.node.a"), None);
    }
}
