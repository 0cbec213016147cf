//! The server side of the WebSocket opening handshake (RFC 6455 4.2), as a pure check over a
//! parsed [`RequestHead`] plus the `101 Switching Protocols` writer.
//!
//! The checks run in a fixed order (method, version, upgrade tokens, key, WebSocket version) so
//! a request with several faults always gets the same answer. Every refusal ends the connection:
//! a client that asked to switch protocols and was refused has no further HTTP to send.

use base64::Engine;

use crate::http::parse::{push_header, Method, RequestHead};

/// Why an upgrade request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("websocket upgrade requires GET")]
    NotGet,
    #[error("websocket upgrade requires HTTP/1.1")]
    NotHttp11,
    #[error("websocket upgrade requires Connection: Upgrade and Upgrade: websocket")]
    MissingUpgrade,
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    #[error("Sec-WebSocket-Key must be base64 of 16 bytes")]
    BadKey,
    #[error("unsupported Sec-WebSocket-Version, only 13 is supported")]
    UnsupportedVersion,
}

impl HandshakeError {
    /// The response status. An HTTP/1.0 upgrade gets 400, not 505: the server does speak
    /// HTTP/1.0, it is only the upgrade that needs 1.1 (RFC 6455 4.1), so "version not
    /// supported" would be wrong. A bad WebSocket version gets 426 with the version we speak,
    /// so the client can retry with it (RFC 6455 4.4).
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::NotGet => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::NotHttp11
            | HandshakeError::MissingUpgrade
            | HandshakeError::MissingKey
            | HandshakeError::BadKey => 400,
        }
    }

    /// Headers the error response must carry: `Allow` for 405 (RFC 9110 15.5.6), and for 426
    /// the WebSocket version we speak (RFC 6455 4.4) plus the `Upgrade` that RFC 9110 15.5.22
    /// requires on every 426.
    pub fn response_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            HandshakeError::NotGet => &[("Allow", "GET")],
            HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
            _ => &[],
        }
    }
}

/// Checks an upgrade request and returns the `Sec-WebSocket-Accept` value for the response.
///
/// `Connection` must list `upgrade` and `Upgrade` must list `websocket`, case-insensitively and
/// possibly among other tokens (browsers send `Connection: keep-alive, Upgrade`). The key is
/// only checked for shape, 16 bytes in base64, as RFC 6455 4.2.1 asks; the accept value is
/// derived from the key exactly as sent.
pub fn validate_upgrade(head: &RequestHead) -> Result<String, HandshakeError> {
    if head.method != Method::Get {
        return Err(HandshakeError::NotGet);
    }
    if head.minor_version != 1 {
        return Err(HandshakeError::NotHttp11);
    }
    if !head.header_has_token("connection", "upgrade") || !head.header_has_token("upgrade", "websocket") {
        return Err(HandshakeError::MissingUpgrade);
    }
    let key = head.header("sec-websocket-key").map(str::trim).ok_or(HandshakeError::MissingKey)?;
    if !is_valid_key(key) {
        return Err(HandshakeError::BadKey);
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// A valid key is 24 characters of padded base64 that decode to exactly 16 bytes. Decoding
/// into a stack buffer keeps the check allocation-free.
fn is_valid_key(key: &str) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded).is_ok_and(|n| n == 16)
}

/// Appends the `101 Switching Protocols` response. `protocol` is the subprotocol chosen from
/// the client's `Sec-WebSocket-Protocol` list, if any; it is echoed only when chosen, since
/// naming one the client did not offer makes it fail the connection.
pub fn write_upgrade_response(out: &mut Vec<u8>, accept: &str, protocol: Option<&str>) {
    out.reserve(128 + accept.len() + protocol.map_or(0, |p| p.len() + 26));
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    push_header(out, "Upgrade", "websocket");
    push_header(out, "Connection", "Upgrade");
    push_header(out, "Sec-WebSocket-Accept", accept);
    if let Some(p) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse_head, Limits, Parsed};

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    /// RFC 6455 1.3 (checked against an independent SHA-1).
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn head(raw: &str) -> RequestHead {
        let limits = Limits { max_head_bytes: 8192, max_headers: 64, max_body_bytes: 1024 };
        match parse_head(raw.as_bytes(), &limits) {
            Ok(Parsed::Complete(h)) => h,
            _ => panic!("not a complete head: {raw:?}"),
        }
    }

    /// An upgrade request with the given request line and headers, plus `Host`.
    fn upgrade(request_line: &str, headers: &[&str]) -> RequestHead {
        let mut raw = format!("{request_line}\r\nHost: example.com\r\n");
        for h in headers {
            raw.push_str(h);
            raw.push_str("\r\n");
        }
        raw.push_str("\r\n");
        head(&raw)
    }

    const GOOD: [&str; 4] = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    fn without(name: &str) -> Vec<&'static str> {
        GOOD.iter().copied().filter(|h| !h.starts_with(name)).collect()
    }

    fn with(name: &str, line: &'static str) -> Vec<&'static str> {
        let mut v = without(name);
        v.push(line);
        v
    }

    #[test]
    fn rfc_accept_example() {
        assert_eq!(tungstenite::handshake::derive_accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT);
        assert_eq!(validate_upgrade(&upgrade("GET /ws-echo HTTP/1.1", &GOOD)), Ok(RFC_ACCEPT.to_string()));
    }

    #[test]
    fn tokens_are_case_insensitive_and_listed() {
        let h = upgrade(
            "GET /chat HTTP/1.1",
            &[
                "connection: keep-alive, Upgrade",
                "upgrade: WebSocket",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                "sec-websocket-version: 13",
            ],
        );
        assert_eq!(validate_upgrade(&h), Ok(RFC_ACCEPT.to_string()));
        // Tokens spread over repeated headers count too.
        let h = upgrade("GET / HTTP/1.1", &with("Connection", "Connection: keep-alive\r\nConnection: upgrade"));
        assert_eq!(validate_upgrade(&h), Ok(RFC_ACCEPT.to_string()));
    }

    #[test]
    fn not_get() {
        let e = validate_upgrade(&upgrade("POST / HTTP/1.1", &GOOD)).unwrap_err();
        assert_eq!((e.status(), e.response_headers()), (405, &[("Allow", "GET")][..]));
        assert_eq!(e, HandshakeError::NotGet);
        // The method is checked first.
        assert_eq!(validate_upgrade(&upgrade("HEAD / HTTP/1.0", &[])), Err(HandshakeError::NotGet));
    }

    #[test]
    fn not_http11() {
        let e = validate_upgrade(&upgrade("GET / HTTP/1.0", &GOOD)).unwrap_err();
        assert_eq!((e.status(), e.response_headers()), (400, &[][..]));
        assert_eq!(e, HandshakeError::NotHttp11);
    }

    #[test]
    fn missing_upgrade_tokens() {
        for headers in [
            without("Connection"),
            without("Upgrade"),
            with("Connection", "Connection: keep-alive"),
            with("Upgrade", "Upgrade: h2c"),
            with("Upgrade", "Upgrade: websocket2"),
            with("Connection", "Connection: upgrades"),
        ] {
            let e = validate_upgrade(&upgrade("GET / HTTP/1.1", &headers)).unwrap_err();
            assert_eq!((e.status(), &e), (400, &HandshakeError::MissingUpgrade), "{headers:?}");
        }
    }

    #[test]
    fn missing_key() {
        let e = validate_upgrade(&upgrade("GET / HTTP/1.1", &without("Sec-WebSocket-Key"))).unwrap_err();
        assert_eq!((e.status(), e), (400, HandshakeError::MissingKey));
    }

    #[test]
    fn bad_keys() {
        for line in [
            "Sec-WebSocket-Key:",
            "Sec-WebSocket-Key: abc",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",     // unpadded
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=",    // short padding
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXg=",   // 17 bytes
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXh4",   // 18 bytes
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ!==",   // not base64
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==",   // non-canonical trailing bits
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==AA", // trailing data
        ] {
            let e = validate_upgrade(&upgrade("GET / HTTP/1.1", &with("Sec-WebSocket-Key", line))).unwrap_err();
            assert_eq!((e.status(), &e), (400, &HandshakeError::BadKey), "{line:?}");
        }
        // Any 16 bytes will do, not only the RFC's.
        let ok = upgrade("GET / HTTP/1.1", &with("Sec-WebSocket-Key", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(validate_upgrade(&ok).is_ok());
    }

    #[test]
    fn unsupported_version() {
        for headers in [
            without("Sec-WebSocket-Version"),
            with("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"),
            with("Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8"),
            with("Sec-WebSocket-Version", "Sec-WebSocket-Version: 130"),
        ] {
            let e = validate_upgrade(&upgrade("GET / HTTP/1.1", &headers)).unwrap_err();
            assert_eq!(e, HandshakeError::UnsupportedVersion, "{headers:?}");
            assert_eq!(e.status(), 426);
            assert_eq!(e.response_headers(), &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")]);
        }
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(HandshakeError::NotGet.to_string(), "websocket upgrade requires GET");
        assert_eq!(HandshakeError::MissingKey.to_string(), "missing Sec-WebSocket-Key");
        for e in [HandshakeError::MissingUpgrade, HandshakeError::MissingKey, HandshakeError::BadKey] {
            assert!(e.response_headers().is_empty());
        }
    }

    #[test]
    fn upgrade_response_bytes() {
        let mut out = Vec::new();
        write_upgrade_response(&mut out, RFC_ACCEPT, None);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        let mut out = Vec::new();
        write_upgrade_response(&mut out, RFC_ACCEPT, Some("chat"));
        assert!(String::from_utf8_lossy(&out)
            .ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"));
    }

    #[test]
    fn upgrade_response_parses_as_http() {
        let mut out = Vec::new();
        write_upgrade_response(&mut out, RFC_ACCEPT, Some("chat"));
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())));
        assert_eq!(resp.code, Some(101));
    }
}
