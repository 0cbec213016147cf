//! What the scenarios carry in their messages: a sequence number and the send time, padded to
//! the requested size, so every reply or delivery says by itself when it was sent.
//!
//! - JSON (Socket.IO events, raw WebSocket text):
//!   `{"room":"r0","pub":3,"seq":17,"t":123456789,"pad":"xxxx"}`; `room` and `pub` only in
//!   fan-out. Servers may re-serialise the object (key order, spacing), so the reader looks for
//!   keys rather than positions.
//! - Binary (raw WebSocket binary): `seq` and `t` as little-endian `u64`, then zero bytes.

use super::sio::{push_str, push_u64};

/// The fields of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp<'a> {
    pub room: Option<&'a str>,
    pub publisher: Option<u64>,
    pub seq: u64,
    /// Send time in nanoseconds on the host's monotonic clock (intended time in open loop).
    pub t: u64,
}

/// Appends the JSON object, padded so that it is `size` bytes long when `size` allows.
pub fn write_json(out: &mut Vec<u8>, s: &Stamp<'_>, size: usize) {
    let start = out.len();
    out.push(b'{');
    if let Some(room) = s.room {
        out.extend_from_slice(b"\"room\":");
        push_str(out, room);
        out.push(b',');
    }
    if let Some(p) = s.publisher {
        out.extend_from_slice(b"\"pub\":");
        push_u64(out, p);
        out.push(b',');
    }
    out.extend_from_slice(b"\"seq\":");
    push_u64(out, s.seq);
    out.extend_from_slice(b",\"t\":");
    push_u64(out, s.t);
    out.extend_from_slice(b",\"pad\":\"");
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}");
}

/// Appends the binary form, `size` bytes (at least 16).
pub fn write_binary(out: &mut Vec<u8>, seq: u64, t: u64, size: usize) {
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&t.to_le_bytes());
    out.resize(out.len() + size.saturating_sub(16), 0);
}

/// `(seq, t)` from the binary form.
pub fn read_binary(data: &[u8]) -> Option<(u64, u64)> {
    let seq = data.get(..8)?;
    let t = data.get(8..16)?;
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    Some((word(seq), word(t)))
}

/// What follows `key` (given with its quotes) and its colon, anywhere in `json`, whitespace
/// skipped. A plain scan: the objects are small and the scenarios' strings never contain a
/// quoted key.
pub fn value_of<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(i) = json.get(from..)?.windows(key.len()).position(|w| w == key) {
        let rest = skip_ws(&json[from + i + key.len()..]);
        if let Some(after) = rest.strip_prefix(b":") {
            return Some(skip_ws(after));
        }
        from += i + 1;
    }
    None
}

/// The unsigned integer value of `key` (given with its quotes, `b"\"t\""`) anywhere in `json`.
pub fn find_u64(json: &[u8], key: &[u8]) -> Option<u64> {
    let after = value_of(json, key)?;
    let n = after.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 20 {
        return None;
    }
    after[..n].iter().try_fold(0u64, |acc, &b| acc.checked_mul(10)?.checked_add(u64::from(b - b'0')))
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_stamp_has_the_requested_size_and_reads_back() {
        for size in [0, 40, 64, 200] {
            let mut out = Vec::new();
            let s = Stamp { room: Some("r1"), publisher: Some(2), seq: 17, t: 1_234_567_890_123 };
            write_json(&mut out, &s, size);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["room"], "r1");
            if size > 60 {
                assert_eq!(out.len(), size);
            }
            assert_eq!(find_u64(&out, b"\"t\""), Some(1_234_567_890_123));
            assert_eq!(find_u64(&out, b"\"seq\""), Some(17));
            assert_eq!(find_u64(&out, b"\"pub\""), Some(2));
        }
    }

    #[test]
    fn finds_keys_in_reserialised_objects() {
        assert_eq!(find_u64(br#"{"pad":"t","room":"t", "t" : 5,"seq":1}"#, b"\"t\""), Some(5));
        assert_eq!(find_u64(br#"{"t":"5"}"#, b"\"t\""), None);
        assert_eq!(find_u64(br#"{"x":1}"#, b"\"t\""), None);
    }

    #[test]
    fn binary_stamp_round_trips() {
        let mut out = Vec::new();
        write_binary(&mut out, 9, 99, 64);
        assert_eq!(out.len(), 64);
        assert_eq!(read_binary(&out), Some((9, 99)));
        assert_eq!(read_binary(&out[..10]), None);
    }
}
