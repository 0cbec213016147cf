//! Text pieces the hand-written encoders share (Engine.IO's open packet, Socket.IO's packet
//! headers): decimal numbers and quoted JSON strings, written without allocating.

/// Number of decimal digits of `n`.
pub fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// `n` in decimal, written into `buf`.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// The JSON escape of one byte, if it needs one: quote, backslash and the C0 controls, as both
/// `JSON.stringify` and serde_json escape them (neither escapes `/` or non-ASCII).
pub fn json_escape(byte: u8) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b", "\\t", "\\n",
        "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014",
        "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e",
        "\\u001f",
    ];
    match byte {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        0..=0x1f => CONTROL.get(usize::from(byte)).copied(),
        _ => None,
    }
}

/// Length of `s` as a quoted JSON string.
pub fn json_str_len(s: &str) -> usize {
    2 + s.bytes().map(|b| json_escape(b).map_or(1, str::len)).sum::<usize>()
}

/// Hands `piece` the parts of `s` as a quoted JSON string, in order: quotes, runs of `s` and
/// escapes. Escaped bytes are all ASCII, so the runs always end on character boundaries.
pub fn json_str(s: &str, mut piece: impl FnMut(&str)) {
    piece("\"");
    let mut run_start = 0;
    for (i, b) in s.bytes().enumerate() {
        if let Some(escape) = json_escape(b) {
            piece(s.get(run_start..i).unwrap_or(""));
            piece(escape);
            run_start = i + 1;
        }
    }
    piece(s.get(run_start..).unwrap_or(""));
    piece("\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_their_lengths() {
        let mut buf = [0; 20];
        for n in [0, 7, 9, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string());
            assert_eq!(decimal_len(n), n.to_string().len());
        }
    }

    #[test]
    fn json_strings_match_serde_json() {
        for s in ["", "plain", "q\"uote", "back\\slash", "nl\n tab\t bell\u{7}", "é/ü", "\u{1f}x"] {
            let mut out = String::new();
            json_str(s, |p| out.push_str(p));
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
            assert_eq!(json_str_len(s), out.len(), "{s:?}");
        }
    }
}
