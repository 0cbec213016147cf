//! Engine.IO v4 long-polling as a client sees it: HTTP/1.1 requests out, responses in, and the
//! payloads inside them.
//!
//! A polling client holds a session with two kinds of request on the session's URL
//! (`/socket.io/?EIO=4&transport=polling&sid=...`): a `GET` that the server parks until it has
//! packets to send (the long-poll), and a `POST` whose body carries the client's packets. Both
//! bodies are a *payload*: text packets separated by the record separator `\x1e` (`2` a ping,
//! `3` a pong, `42[...]` a Socket.IO event, ...). Responses are framed by `Content-Length`
//! (imks never sends chunked bodies; one is refused here rather than misread).

/// Separates the packets of a payload.
pub const RECORD_SEPARATOR: u8 = 0x1e;

/// Longest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// A response this client cannot read; the session cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    #[error("HTTP response head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("HTTP response body of {0} bytes exceeds the limit")]
    BodyTooLarge(u64),
    #[error("chunked HTTP responses are not supported")]
    Chunked,
    #[error("HTTP status {status}: {body}")]
    Status { status: u16, body: String },
}

/// One complete response: its status, where its body lies in the buffer, whether the server
/// closes the connection after it, and how many bytes it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `start..end` of the body in the parsed buffer.
    pub body: (usize, usize),
    /// `Connection: close`, or HTTP/1.0 without keep-alive.
    pub close: bool,
    /// Bytes of the buffer the response used (head and body).
    pub len: usize,
}

/// Appends a `GET` of `path` (its query included) on a keep-alive connection.
pub fn write_get(out: &mut Vec<u8>, host: &str, path: &str) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nAccept: */*\r\n\r\n");
}

/// Appends a `POST` of `body` (a payload) to `path`; `close` asks the server to close the
/// connection after its answer, so the TIME_WAIT state stays on the server's side.
pub fn write_post(out: &mut Vec<u8>, host: &str, path: &str, body: &[u8], close: bool) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: ");
    super::sio::push_u64(out, body.len() as u64);
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Parses the response at the start of `buf`: `Ok(None)` while it is incomplete (read more),
/// the response once head and body are both buffered. The head is checked before anything is
/// taken from it, and the body length against `max_body` before the caller buffers it.
pub fn parse_response(buf: &[u8], max_body: usize) -> Result<Option<Response>, PollError> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(PollError::HeadTooLarge) } else { Ok(None) };
    };
    if head_end > MAX_HEAD {
        return Err(PollError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| PollError::Malformed("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(PollError::Malformed("no status line"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(PollError::Malformed("not HTTP/1.x")),
    };
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse().ok())
        .ok_or(PollError::Malformed("bad status code"))?;
    let (mut length, mut close, mut keep_alive) = (None::<u64>, false, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(PollError::Malformed("header without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| PollError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(PollError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(PollError::Chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    let length = length.ok_or(PollError::Malformed("no Content-Length"))?;
    if length > max_body as u64 {
        return Err(PollError::BodyTooLarge(length));
    }
    let start = head_end + 4;
    let end = start + length as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Response { status, body: (start, end), close: close || (http10 && !keep_alive), len: end }))
}

/// The packets of a payload, in order (an empty body has none).
pub fn packets(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == RECORD_SEPARATOR).filter(|p| !p.is_empty())
}

/// Appends `packet` to a payload being built in `out`.
pub fn push_packet(out: &mut Vec<u8>, packet: &[u8]) {
    if !out.is_empty() {
        out.push(RECORD_SEPARATOR);
    }
    out.extend_from_slice(packet);
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\ncontent-length: 21\r\n\
        Connection: keep-alive\r\n\r\n2\x1e42[\"msg\",{\"t\":1}]\x1e6";

    #[test]
    fn a_response_split_at_every_byte_parses_only_once_complete() {
        let mut two = RESPONSE.to_vec();
        two.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        for cut in 0..=two.len() {
            // The bytes arrive in two reads: everything before `cut`, then the rest.
            let mut buf = two[..cut].to_vec();
            let mut seen = Vec::new();
            for chunk in [&two[cut..], &[][..]] {
                while let Some(r) = parse_response(&buf, 1 << 20).unwrap() {
                    seen.push((r.status, buf[r.body.0..r.body.1].to_vec(), r.close));
                    buf.drain(..r.len);
                }
                buf.extend_from_slice(chunk);
            }
            while let Some(r) = parse_response(&buf, 1 << 20).unwrap() {
                seen.push((r.status, buf[r.body.0..r.body.1].to_vec(), r.close));
                buf.drain(..r.len);
            }
            assert!(buf.is_empty(), "cut {cut}: {} bytes left", buf.len());
            assert_eq!(seen.len(), 2, "cut {cut}");
            assert_eq!(seen[0], (200, b"2\x1e42[\"msg\",{\"t\":1}]\x1e6".to_vec(), false), "cut {cut}");
            assert_eq!(seen[1], (400, b"{}".to_vec(), true), "cut {cut}");
        }
    }

    #[test]
    fn payloads_split_into_packets_and_build_back() {
        let body = b"2\x1e42[\"msg\",{\"t\":1}]\x1e6";
        let p: Vec<&[u8]> = packets(body).collect();
        assert_eq!(p, [&b"2"[..], b"42[\"msg\",{\"t\":1}]", b"6"]);
        let mut out = Vec::new();
        for x in &p {
            push_packet(&mut out, x);
        }
        assert_eq!(out, body);
        assert_eq!(packets(b"").count(), 0);
    }

    #[test]
    fn requests_are_http11_with_a_body_length() {
        let mut out = Vec::new();
        write_post(&mut out, "127.0.0.1:3000", "/socket.io/?EIO=4&transport=polling&sid=a", b"3", true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /socket.io/?EIO=4&transport=polling&sid=a HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 1\r\n") && text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n3"));
        let mut out = Vec::new();
        write_get(&mut out, "h", "/p");
        assert_eq!(out, b"GET /p HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n");
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        let err = |r: &[u8]| parse_response(r, 100).unwrap_err();
        assert_eq!(err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), PollError::Chunked);
        assert_eq!(err(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n"), PollError::BodyTooLarge(101));
        assert!(matches!(err(b"HTTP/1.1 200 OK\r\n\r\n"), PollError::Malformed(_)));
        assert!(matches!(err(b"SPDY 200 OK\r\nContent-Length: 0\r\n\r\n"), PollError::Malformed(_)));
        assert!(matches!(err(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"), PollError::Malformed(_)));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            PollError::Malformed(_)
        ));
        assert_eq!(parse_response(&[b'x'; MAX_HEAD], 100), Ok(None));
        assert_eq!(parse_response(&[b'x'; MAX_HEAD + 1], 100), Err(PollError::HeadTooLarge));
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 100).unwrap().unwrap();
        assert!(r.close);
    }
}
