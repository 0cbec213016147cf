//! Fuzzes the WebSocket handshake over whatever `parse_head` accepts: no panic, an accepted
//! upgrade yields a well-formed 101 response, and a refusal maps to its documented status.

#![no_main]

use imks::http::parse::{parse_head, write_response, Limits, Parsed};
use imks::ws::handshake::{validate_upgrade, write_upgrade_response};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_head_bytes: 2048, max_headers: 16, max_body_bytes: 1024 };

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Complete(head)) = parse_head(data, &LIMITS) else {
        return;
    };
    let mut out = Vec::new();
    match validate_upgrade(&head) {
        Ok(accept) => {
            assert_eq!(accept.len(), 28, "base64 of a SHA-1");
            let protocol = head.header("sec-websocket-protocol");
            write_upgrade_response(&mut out, &accept, protocol);
            assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            // Nothing from the request can end the response head early.
            let end = out.windows(4).position(|w| w == b"\r\n\r\n");
            assert_eq!(end, Some(out.len() - 4));
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 405 | 426));
            let body = format!("{e}\n");
            write_response(&mut out, e.status(), "text/plain", e.response_headers(), body.as_bytes(), false, "now");
        }
    }
});
