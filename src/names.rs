//! Validation of the names clients and operators choose: tenant, room, namespace, channel and
//! user ids, emoji.
//!
//! One rule for all of them, so a name accepted in one place (a config file) is accepted in
//! every other (the wire, the admin API, the store): non-empty, bounded in bytes (never trust a
//! length), and free of control characters, which would corrupt logs and line-based tools.

/// Most bytes of a tenant, channel, room or user id.
pub const MAX_ID_BYTES: usize = 128;

/// Why a name was refused. `kind` says what the name is ("user id", "channel id", "emoji").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes, more than the {max} allowed")]
    TooLong { kind: &'static str, len: usize, max: usize },
    #[error("{kind} must not contain control characters")]
    Control { kind: &'static str },
}

/// Accepts `s` when it is non-empty, at most `max_len` bytes and has no control character
/// (`char::is_control`: C0, DEL and C1).
///
/// The length is checked first, so a huge name is refused without scanning it.
pub fn validate_name(kind: &'static str, s: &str, max_len: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if s.len() > max_len {
        return Err(NameError::TooLong { kind, len: s.len(), max: max_len });
    }
    if s.chars().any(char::is_control) {
        return Err(NameError::Control { kind });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!(validate_name("user id", "alice", MAX_ID_BYTES), Ok(()));
        assert_eq!(validate_name("emoji", "👍🏽", 32), Ok(()));
        assert_eq!(validate_name("room id", "a:b/c d", MAX_ID_BYTES), Ok(()));
    }

    #[test]
    fn refuses_empty() {
        assert_eq!(validate_name("user id", "", 8), Err(NameError::Empty { kind: "user id" }));
    }

    #[test]
    fn length_is_in_bytes_and_inclusive() {
        assert_eq!(validate_name("user id", "abcd", 4), Ok(()));
        assert_eq!(validate_name("user id", "abcde", 4), Err(NameError::TooLong { kind: "user id", len: 5, max: 4 }));
        // "é" is two bytes.
        assert_eq!(validate_name("user id", "éé", 3), Err(NameError::TooLong { kind: "user id", len: 4, max: 3 }));
    }

    #[test]
    fn refuses_control_characters() {
        for s in ["a\nb", "\0", "x\u{7f}", "tab\there", "c1\u{85}"] {
            assert_eq!(validate_name("channel id", s, 64), Err(NameError::Control { kind: "channel id" }), "{s:?}");
        }
    }

    #[test]
    fn display_names_the_kind_and_the_reason() {
        let e = validate_name("channel id", &"x".repeat(200), MAX_ID_BYTES).unwrap_err();
        assert_eq!(e.to_string(), "channel id is 200 bytes, more than the 128 allowed");
        assert_eq!(NameError::Empty { kind: "user id" }.to_string(), "user id must not be empty");
    }
}
