//! Fuzzes `parse_head`: it must never panic, a complete head must respect the limits, and the
//! answer must not depend on how the bytes were split across reads. A prefix of the input may
//! only be `Incomplete` (before the head ends) or give exactly the answer the whole input gives,
//! since the parser reports only what the bytes it has seen prove.

#![no_main]

use imks::http::parse::{parse_head, Limits, Parsed};
use libfuzzer_sys::fuzz_target;

/// Small limits, so the fuzzer reaches every limit with short inputs.
const LIMITS: Limits = Limits { max_head_bytes: 512, max_headers: 8, max_body_bytes: 1024 };

fn outcome(buf: &[u8]) -> Option<String> {
    match parse_head(buf, &LIMITS) {
        Ok(Parsed::Incomplete) => None,
        Ok(Parsed::Complete(head)) => {
            assert!(head.head_len <= buf.len().min(LIMITS.max_head_bytes));
            assert!(head.content_length <= LIMITS.max_body_bytes);
            assert!(head.path.starts_with('/'));
            assert!(head.minor_version <= 1);
            assert!(head.headers.len() <= LIMITS.max_headers);
            let _ = (head.query_param("a"), head.header("host"), head.is_websocket_upgrade());
            Some(format!("{head:?}"))
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 413 | 431 | 501));
            Some(format!("{e:?}"))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let full = outcome(data);
    let head_len = match parse_head(data, &LIMITS) {
        Ok(Parsed::Complete(head)) => Some(head.head_len),
        _ => None,
    };
    // Past `max_head_bytes` the parser sees the same window as for the whole input.
    for k in 0..data.len().min(LIMITS.max_head_bytes + 1) {
        match outcome(&data[..k]) {
            None => {
                if let Some(n) = head_len {
                    assert!(k < n, "prefix {k} incomplete, but the head ends at {n}");
                }
            }
            Some(prefix) => assert_eq!(Some(&prefix), full.as_ref(), "prefix {k} disagrees with the whole input"),
        }
    }
});
