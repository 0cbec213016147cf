//! The pure HTTP/1.x request-head parser and response writer.
//!
//! Bytes in, a validated [`RequestHead`] or an [`HttpError`] out: no I/O, no runtime, no clock
//! (the caller passes the `Date` value). [`parse_head`] never consumes input; the connection
//! driver owns the buffer and uses [`RequestHead::head_len`] and
//! [`RequestHead::content_length`] to find the body and any pipelined request behind it, or the
//! first WebSocket bytes after an upgrade.
//!
//! What is accepted, and why:
//!
//! - HTTP/1.0 and HTTP/1.1 only; anything else is malformed (400), since there is no HTTP/2 or
//!   HTTP/0.9 support to negotiate.
//! - Bodies framed by `Content-Length` only. Any `Transfer-Encoding` header, `chunked` included,
//!   is answered with 501, even when a `Content-Length` is present too: the server has no
//!   endpoint that takes a streamed body, and refusing both framings at once rules out
//!   request-smuggling ambiguity between them. The connection is closed after the error, so
//!   nothing after the head is ever interpreted.
//! - Header values must be UTF-8 (400 otherwise), so handlers can treat them as text.
//! - The request target must be in origin form (`/path?query`); absolute form and `*` are
//!   refused, as no proxying or server-wide `OPTIONS` is offered.

use std::mem::MaybeUninit;

/// Per-connection limits, checked while parsing so a hostile client cannot make the server
/// buffer or allocate more than configured.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes of request line plus headers, final empty line included.
    pub max_head_bytes: usize,
    /// Most header lines in one request.
    pub max_headers: usize,
    /// Largest `Content-Length` accepted.
    pub max_body_bytes: usize,
}

/// The request method. Only the methods routes care about get their own variant; everything
/// else is [`Method::Other`], so routing can answer 405 without keeping the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Patch,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 9.1): `get` is not `GET`.
    fn from_token(s: &str) -> Self {
        match s {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// A validated request head, owned so it can outlive the read buffer it was parsed from.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// The request path, without the query string; always starts with `/`.
    pub path: String,
    /// The raw query string after the first `?`, not decoded; `None` when there is no `?`.
    pub query: Option<String>,
    /// The `x` of `HTTP/1.x`: 0 or 1.
    pub minor_version: u8,
    /// Header names as sent, values raw (leading and trailing whitespace trimmed by httparse).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of request line and headers, final empty line included (plus any empty lines the
    /// client sent before the request line): the body or the next request starts here.
    pub head_len: usize,
    /// The body length from `Content-Length`; 0 when absent.
    pub content_length: usize,
    /// Whether the connection may stay open after the response: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
}

impl RequestHead {
    /// The first header called `name` (case-insensitive), or `None` when it is absent or its
    /// value is not UTF-8 (which [`parse_head`] already refuses, but a head can be built by
    /// hand).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Whether any `name` header holds `token` in its comma-separated list, compared
    /// case-insensitively. Tokens can be spread over repeated headers
    /// (`Connection: keep-alive` then `Connection: Upgrade`), so every occurrence is searched.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        let token = token.as_bytes();
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
    }

    /// The first query parameter called `name`, percent-decoded with `+` as a space
    /// (form encoding, which browsers and most clients use for query strings).
    ///
    /// A malformed escape (`%zz`, or `%` near the end) is kept literally rather than
    /// rejected: a lenient reading cannot be exploited since the result is only ever a string,
    /// and refusing the whole request over one odd parameter would help nobody. A value that
    /// decodes to invalid UTF-8 gives `None`, like a missing one. Names are decoded too and
    /// compared exactly. A parameter without `=` has the empty value.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(k).as_slice() != name.as_bytes() {
                return None;
            }
            Some(String::from_utf8(percent_decode(v)).ok())
        })?
    }

    /// Whether the client asks for a WebSocket (an `Upgrade` header with the `websocket`
    /// token). Routing only needs this much; [`crate::ws::handshake::validate_upgrade`] checks
    /// `Connection`, the key and the version.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }
}

/// The result of looking at the bytes buffered so far.
pub enum Parsed {
    /// No complete head yet, and none of the bytes so far breaks a rule: read more.
    Incomplete,
    Complete(RequestHead),
}

/// Why a request is refused. Every variant ends the connection after its error response, since
/// the framing of whatever follows cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("request head too large")]
    HeadTooLarge,
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("transfer-encoding not supported")]
    UnsupportedTransferEncoding,
}

impl HttpError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::Malformed(_) => 400,
            HttpError::UnsupportedTransferEncoding => 501,
        }
    }
}

/// Header slots kept on the stack; the default `max_headers` fits, so a request costs no
/// allocation before it is known to be valid.
const STACK_HEADERS: usize = 64;

/// Looks at the bytes buffered for the next request.
///
/// httparse runs over at most `max_head_bytes` of `buf`, so a head that does not end within
/// the limit is refused as soon as the limit is reached, and nothing past it is ever scanned.
/// Parsing a partial buffer also catches a malformed request line or header as soon as its
/// bytes arrive, instead of waiting for the limit or the header timeout (a TLS handshake sent to
/// the plain port gets its 400 at once). httparse reports errors only for bytes it has seen, so
/// a prefix of a valid request is always `Incomplete`.
///
/// Bytes after the head (body, pipelined requests) are not looked at.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let window = &buf[..buf.len().min(limits.max_head_bytes)];

    let mut stack: [MaybeUninit<httparse::Header<'_>>; STACK_HEADERS] =
        [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap[..]
    };

    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(window, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(e) => return Err(map_httparse_error(e)),
    };

    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
        // httparse sets all three on `Complete`; stay total anyway.
        return Err(HttpError::Malformed("incomplete request line"));
    };
    if minor_version > 1 {
        return Err(HttpError::Malformed("unsupported HTTP version"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("request target must be an absolute path"));
    }

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut cl_error: Option<HttpError> = None;
    for h in req.headers.iter() {
        if std::str::from_utf8(h.value).is_err() {
            return Err(HttpError::Malformed("header value not UTF-8"));
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if h.name.eq_ignore_ascii_case("content-length") && cl_error.is_none() {
            if let Err(e) = merge_content_length(h.value, &mut content_length) {
                cl_error = Some(e);
            }
        }
    }
    // Transfer-Encoding wins over any Content-Length problem: 501 says what the server lacks.
    if transfer_encoding {
        return Err(HttpError::UnsupportedTransferEncoding);
    }
    if let Some(e) = cl_error {
        return Err(e);
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > limits.max_body_bytes as u64 {
        return Err(HttpError::BodyTooLarge);
    }

    let keep_alive = {
        let head = TokenView { headers: req.headers };
        if minor_version == 1 {
            !head.has("connection", "close")
        } else {
            head.has("connection", "keep-alive") && !head.has("connection", "close")
        }
    };

    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    Ok(Parsed::Complete(RequestHead {
        method: Method::from_token(method),
        path,
        query,
        minor_version,
        headers: req.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect(),
        head_len,
        content_length: content_length as usize,
        keep_alive,
    }))
}

/// Token lookups over httparse's borrowed headers, before anything is copied.
struct TokenView<'a, 'b> {
    headers: &'a [httparse::Header<'b>],
}

impl TokenView<'_, '_> {
    fn has(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
    }
}

/// Folds one `Content-Length` header into the length seen so far. RFC 9112 6.3: a list of
/// identical values (`5, 5`, or repeated headers) is one length; differing values mean an
/// attack or a broken client, and which one to believe cannot be known.
fn merge_content_length(value: &[u8], seen: &mut Option<u64>) -> Result<(), HttpError> {
    for item in value.split(|&b| b == b',') {
        let n = parse_content_length(trim_ows(item)).ok_or(HttpError::Malformed("invalid content-length"))?;
        if seen.is_some_and(|prev| prev != n) {
            return Err(HttpError::Malformed("conflicting content-length"));
        }
        *seen = Some(n);
    }
    Ok(())
}

/// Digits only (no sign, no whitespace inside), at least one. A value too large for `u64` is
/// still a valid length, just one above any limit, so it saturates instead of failing.
fn parse_content_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

fn map_httparse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::HeaderName => HttpError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        httparse::Error::Version => HttpError::Malformed("unsupported HTTP version"),
        httparse::Error::Token => HttpError::Malformed("invalid request line"),
        httparse::Error::Status => HttpError::Malformed("invalid request line"),
    }
}

/// Strips optional whitespace (space and tab) around a list element.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Decodes `%XX` escapes and `+`; a `%` not followed by two hex digits is kept as is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The reason phrase for a status code. Clients ignore it, but a readable one helps whoever
/// reads a capture; unknown codes get their class name.
pub fn status_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Unknown",
        },
    }
}

/// Appends a complete response: status line, `Date`, `Server`, `Content-Type`,
/// `Content-Length`, `Connection`, then `extra`, the empty line and the body.
///
/// `Content-Length` is always sent (the body is in hand, and it lets the client reuse the
/// connection), except for 1xx and 204, which cannot have a body (RFC 9110 8.6): for those the
/// length and `body` are left out so the framing stays right.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
    date: &str,
) {
    let no_body = (100..200).contains(&status) || status == 204;
    let extra_len: usize = extra.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    out.reserve(128 + date.len() + content_type.len() + extra_len + if no_body { 0 } else { body.len() });
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(status_reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(out, "Date", date);
    push_header(out, "Server", "imks");
    push_header(out, "Content-Type", content_type);
    if !no_body {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    push_header(out, "Connection", if keep_alive { "keep-alive" } else { "close" });
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    if !no_body {
        out.extend_from_slice(body);
    }
}

/// Appends `name: value\r\n`. CR, LF and NUL are dropped from both, so a value that came from
/// a client (or a config file) can never end the header early and inject headers or a body.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let clean = |b: &u8| !matches!(b, b'\r' | b'\n' | 0);
    out.extend(name.as_bytes().iter().filter(|b| clean(b)));
    out.extend_from_slice(b": ");
    out.extend(value.as_bytes().iter().filter(|b| clean(b)));
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal without going through `fmt` (which would need an error path).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::util::text::decimal(n, &mut [0; 20]).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_head_bytes: 8192, max_headers: 64, max_body_bytes: 1 << 20 };

    fn parse(input: &[u8]) -> Result<Parsed, HttpError> {
        parse_head(input, &LIMITS)
    }

    fn complete(input: &[u8], limits: &Limits) -> RequestHead {
        match parse_head(input, limits) {
            Ok(Parsed::Complete(h)) => h,
            Ok(Parsed::Incomplete) => panic!("incomplete: {:?}", String::from_utf8_lossy(input)),
            Err(e) => panic!("error {e:?}: {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn error(input: &[u8], limits: &Limits) -> HttpError {
        match parse_head(input, limits) {
            Ok(Parsed::Complete(h)) => panic!("complete: {h:?}"),
            Ok(Parsed::Incomplete) => panic!("incomplete: {:?}", String::from_utf8_lossy(input)),
            Err(e) => e,
        }
    }

    fn is_incomplete(input: &[u8], limits: &Limits) -> bool {
        matches!(parse_head(input, limits), Ok(Parsed::Incomplete))
    }

    /// Feeds every prefix of `input`: before the head ends it must be `Incomplete`, from there
    /// on `Complete` with the same head as the full input (bytes after the head are not looked
    /// at). Returns the head.
    fn split_everywhere(input: &[u8]) -> RequestHead {
        let full = complete(input, &LIMITS);
        let want = format!("{full:?}");
        for k in 0..input.len() {
            match parse(&input[..k]) {
                Ok(Parsed::Incomplete) => assert!(k < full.head_len, "prefix {k} incomplete past the head"),
                Ok(Parsed::Complete(h)) => {
                    assert!(k >= full.head_len, "prefix {k} complete before the head ends");
                    assert_eq!(format!("{h:?}"), want, "prefix {k}");
                }
                Err(e) => panic!("prefix {k} of a valid request: {e:?}"),
            }
        }
        full
    }

    #[test]
    fn get_with_query_split_everywhere() {
        let req = b"GET /ws-echo?room=a%20b&x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: test\r\n\r\n";
        let h = split_everywhere(req);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path, "/ws-echo");
        assert_eq!(h.query.as_deref(), Some("room=a%20b&x=1"));
        assert_eq!(h.minor_version, 1);
        assert_eq!(h.head_len, req.len());
        assert_eq!(h.content_length, 0);
        assert!(h.keep_alive);
        assert_eq!(h.headers, vec![("Host".into(), b"example.com".to_vec()), ("User-Agent".into(), b"test".to_vec())]);
    }

    #[test]
    fn post_with_body_split_everywhere() {
        let head = b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
        let req = [&head[..], b"hello"].concat();
        let h = split_everywhere(&req);
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.path, "/submit");
        assert_eq!(h.query, None);
        assert_eq!(h.head_len, head.len());
        assert_eq!(h.content_length, 5);
        assert_eq!(&req[h.head_len..h.head_len + h.content_length], b"hello");
    }

    #[test]
    fn pipelined_requests_split_everywhere() {
        let first = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
        let second = b"POST /x?y HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".as_slice();
        let buf = [first, second].concat();
        let h1 = split_everywhere(&buf);
        assert_eq!((h1.path.as_str(), h1.head_len, h1.content_length), ("/health", first.len(), 0));
        let rest = &buf[h1.head_len + h1.content_length..];
        let h2 = split_everywhere(rest);
        assert_eq!((h2.method, h2.path.as_str(), h2.query.as_deref()), (Method::Post, "/x", Some("y")));
        assert_eq!(h2.head_len + h2.content_length, second.len());
        assert!(!h2.keep_alive);
    }

    #[test]
    fn keep_alive_rules_split_everywhere() {
        let cases: [(&[u8], u8, bool); 7] = [
            (b"GET / HTTP/1.1\r\n\r\n", 1, true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 1, false),
            (b"GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", 1, false),
            (b"GET / HTTP/1.1\r\nConnection: upgrade\r\nconnection: Close\r\n\r\n", 1, false),
            (b"GET / HTTP/1.0\r\n\r\n", 0, false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0, true),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", 0, false),
        ];
        for (req, minor, keep_alive) in cases {
            let h = split_everywhere(req);
            assert_eq!((h.minor_version, h.keep_alive), (minor, keep_alive), "{:?}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn lenient_framing_accepted() {
        // Bare LF line endings and empty lines before the request line (RFC 9112 2.2).
        let h = split_everywhere(b"GET /a HTTP/1.1\nHost: x\n\n");
        assert_eq!(h.head_len, 25);
        let req = b"\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(split_everywhere(req).head_len, req.len());
    }

    #[test]
    fn methods() {
        for (m, want) in [
            ("GET", Method::Get),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("HEAD", Method::Head),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Patch),
            ("get", Method::Other),
            ("BREW", Method::Other),
        ] {
            assert_eq!(complete(format!("{m} / HTTP/1.1\r\n\r\n").as_bytes(), &LIMITS).method, want);
        }
    }

    #[test]
    fn empty_buffer_is_incomplete() {
        assert!(is_incomplete(b"", &LIMITS));
        assert!(is_incomplete(b"", &Limits { max_head_bytes: 0, ..LIMITS }));
    }

    /// A request whose head is exactly `len` bytes.
    fn head_of_len(len: usize) -> Vec<u8> {
        let base = b"GET / HTTP/1.1\r\nX-Pad: \r\n\r\n".len();
        let mut v = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        v.extend(std::iter::repeat_n(b'a', len - base));
        v.extend_from_slice(b"\r\n\r\n");
        assert_eq!(v.len(), len);
        v
    }

    #[test]
    fn head_size_limit_exact_boundary() {
        let limits = Limits { max_head_bytes: 100, ..LIMITS };
        let fits = head_of_len(100);
        assert_eq!(complete(&fits, &limits).head_len, 100);
        // Body and pipelined bytes behind the head do not count.
        let with_body = [&fits[..], &[b'z'; 500]].concat();
        assert_eq!(complete(&with_body, &limits).head_len, 100);

        let over = head_of_len(101);
        for k in 0..100 {
            assert!(is_incomplete(&over[..k], &limits), "prefix {k}");
        }
        // Once the limit is reached without the head ending, it can never fit.
        for k in 100..=over.len() {
            assert_eq!(error(&over[..k], &limits), HttpError::HeadTooLarge, "prefix {k}");
        }
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
    }

    fn with_headers(n: usize) -> Vec<u8> {
        let mut v = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            v.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn header_count_limit_exact_boundary() {
        for max in [0, 1, 8, 64, 65, 100] {
            let limits = Limits { max_headers: max, ..LIMITS };
            assert_eq!(complete(&with_headers(max), &limits).headers.len(), max);
            let over = with_headers(max + 1);
            assert_eq!(error(&over, &limits), HttpError::TooManyHeaders, "max {max}");
            // The extra header is only counted once its line is complete.
            assert!(is_incomplete(&over[..over.len() - 4], &limits), "max {max}");
        }
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn body_size_limit() {
        let limits = Limits { max_body_bytes: 10, ..LIMITS };
        assert_eq!(complete(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n", &limits).content_length, 10);
        let e = error(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", &limits);
        assert_eq!((e.status(), e), (413, HttpError::BodyTooLarge));
        // Too many digits for u64 is still a length, just a large one.
        let e = error(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n", &limits);
        assert_eq!(e, HttpError::BodyTooLarge);
    }

    #[test]
    fn content_length_validation() {
        for bad in ["abc", "-1", "+5", "0x10", "5 5", "5;", "1.0", ","] {
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            let e = error(req.as_bytes(), &LIMITS);
            assert_eq!(e, HttpError::Malformed("invalid content-length"), "{bad:?}");
            assert_eq!(e.status(), 400);
        }
        let empty = error(b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", &LIMITS);
        assert_eq!(empty, HttpError::Malformed("invalid content-length"));
        // Identical duplicates and lists are one length (RFC 9112 6.3).
        for ok in ["Content-Length: 007\r\n", "Content-Length: 7\r\ncontent-length: 7\r\n", "Content-Length: 7 , 7\r\n"]
        {
            let req = format!("POST / HTTP/1.1\r\n{ok}\r\n");
            assert_eq!(complete(req.as_bytes(), &LIMITS).content_length, 7, "{ok:?}");
        }
        for conflict in ["Content-Length: 7\r\nContent-Length: 8\r\n", "Content-Length: 7, 8\r\n"] {
            let req = format!("POST / HTTP/1.1\r\n{conflict}\r\n");
            let e = error(req.as_bytes(), &LIMITS);
            assert_eq!((e.status(), e), (400, HttpError::Malformed("conflicting content-length")), "{conflict:?}");
        }
    }

    #[test]
    fn transfer_encoding_refused() {
        for te in [
            "Transfer-Encoding: chunked\r\n",
            "transfer-encoding: gzip\r\n",
            "Transfer-Encoding:\r\n",
            // With Content-Length too: still 501, the connection closes either way.
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: nope\r\n",
        ] {
            let req = format!("POST / HTTP/1.1\r\n{te}\r\n");
            let e = error(req.as_bytes(), &LIMITS);
            assert_eq!((e.status(), e), (501, HttpError::UnsupportedTransferEncoding), "{te:?}");
        }
    }

    #[test]
    fn malformed_request_lines() {
        let cases: [(&[u8], &str); 11] = [
            (b"HELLO\r\n\r\n", "invalid request line"),
            (b"GET  / HTTP/1.1\r\n\r\n", "invalid request line"),
            (b"GET /\r\n\r\n", "invalid request line"),
            (b"GET / HTTP/2.0\r\n\r\n", "unsupported HTTP version"),
            (b"GET / HTTP/1.2\r\n\r\n", "unsupported HTTP version"),
            (b"GET / HTTP/0.9\r\n\r\n", "unsupported HTTP version"),
            (b"GET / http/1.1\r\n\r\n", "unsupported HTTP version"),
            (b"GET http://example.com/ HTTP/1.1\r\n\r\n", "request target must be an absolute path"),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", "request target must be an absolute path"),
            (b"GET /\xff HTTP/1.1\r\n\r\n", "invalid request line"),
            (b"GET / HTTP/1.1\rX\r\n\r\n", "invalid line ending"),
        ];
        for (req, why) in cases {
            let e = error(req, &LIMITS);
            assert_eq!((e.status(), e), (400, HttpError::Malformed(why)), "{:?}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn malformed_headers() {
        let cases: [(&[u8], &str); 7] = [
            (b"X: a\x01b\r\n", "invalid header value"),
            (b"X: a\x00b\r\n", "invalid header value"),
            (b"X: a\x7fb\r\n", "invalid header value"),
            (b"X: a\r\n folded\r\n", "invalid header name"),
            (b"Bad Name: x\r\n", "invalid header name"),
            (b": novalue\r\n", "invalid header name"),
            (b"X: \xff\xfe\r\n", "header value not UTF-8"),
        ];
        for (header, why) in cases {
            let req = [b"GET / HTTP/1.1\r\n".as_slice(), header, b"\r\n"].concat();
            let e = error(&req, &LIMITS);
            assert_eq!((e.status(), e), (400, HttpError::Malformed(why)), "{:?}", String::from_utf8_lossy(header));
        }
        // UTF-8 beyond ASCII is fine.
        let h = complete("GET / HTTP/1.1\r\nX-Name: Zoë\r\n\r\n".as_bytes(), &LIMITS);
        assert_eq!(h.header("x-name"), Some("Zoë"));
    }

    #[test]
    fn garbage_rejected_before_the_head_ends() {
        // A TLS ClientHello on the plain port: refused at once, not after the header timeout.
        let e = error(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", &LIMITS);
        assert_eq!(e.status(), 400);
        assert_eq!(error(b"GET / HTTP/3", &LIMITS), HttpError::Malformed("unsupported HTTP version"));
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(HttpError::HeadTooLarge.to_string(), "request head too large");
        assert_eq!(HttpError::TooManyHeaders.to_string(), "too many request headers");
        assert_eq!(HttpError::BodyTooLarge.to_string(), "request body too large");
        assert_eq!(HttpError::Malformed("invalid header name").to_string(), "malformed request: invalid header name");
        assert_eq!(HttpError::UnsupportedTransferEncoding.to_string(), "transfer-encoding not supported");
    }

    #[test]
    fn header_lookup() {
        let h = complete(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Multi: one\r\nx-multi: two\r\nX-Empty:\r\nX-Pad:   spaced  \r\n\r\n",
            &LIMITS,
        );
        assert_eq!(h.header("host"), Some("a"));
        assert_eq!(h.header("HOST"), Some("a"));
        assert_eq!(h.header("x-multi"), Some("one"));
        assert_eq!(h.header("x-empty"), Some(""));
        assert_eq!(h.header("x-pad"), Some("spaced"));
        assert_eq!(h.header("missing"), None);

        let mut built = h.clone();
        built.headers.push(("X-Bin".into(), vec![0xff]));
        assert_eq!(built.header("x-bin"), None);
    }

    #[test]
    fn header_tokens() {
        let h = complete(
            b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nupgrade: WebSocket\r\nX-List: a,,b ,\tc\r\nX-List: d\r\n\r\n",
            &LIMITS,
        );
        assert!(h.header_has_token("connection", "upgrade"));
        assert!(h.header_has_token("CONNECTION", "Keep-Alive"));
        assert!(!h.header_has_token("connection", "close"));
        assert!(!h.header_has_token("connection", "keep"));
        for t in ["a", "b", "c", "d"] {
            assert!(h.header_has_token("x-list", t), "{t}");
        }
        assert!(!h.header_has_token("missing", "a"));
        assert!(h.is_websocket_upgrade());
        assert!(!complete(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", &LIMITS).is_websocket_upgrade());
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n", &LIMITS).is_websocket_upgrade());
    }

    #[test]
    fn query_params() {
        let h = complete(b"GET /p?a=1&b=hello+world&c=%41%62%2B%3d&d&e=&a=2&f=100%&g=%zz%4&h%20k=v&u=%C3%A9&bad=%ff HTTP/1.1\r\n\r\n", &LIMITS);
        assert_eq!(h.query_param("a").as_deref(), Some("1"), "first match wins");
        assert_eq!(h.query_param("b").as_deref(), Some("hello world"));
        assert_eq!(h.query_param("c").as_deref(), Some("Ab+="));
        assert_eq!(h.query_param("d").as_deref(), Some(""));
        assert_eq!(h.query_param("e").as_deref(), Some(""));
        assert_eq!(h.query_param("f").as_deref(), Some("100%"), "malformed escapes kept literally");
        assert_eq!(h.query_param("g").as_deref(), Some("%zz%4"));
        assert_eq!(h.query_param("h k").as_deref(), Some("v"), "names are decoded");
        assert_eq!(h.query_param("u").as_deref(), Some("é"));
        assert_eq!(h.query_param("bad"), None, "invalid UTF-8");
        assert_eq!(h.query_param("missing"), None);
        assert_eq!(h.query_param("A"), None, "names are case-sensitive");

        let no_query = complete(b"GET /p HTTP/1.1\r\n\r\n", &LIMITS);
        assert_eq!((no_query.query.as_deref(), no_query.query_param("a")), (None, None));
        let empty = complete(b"GET /p? HTTP/1.1\r\n\r\n", &LIMITS);
        assert_eq!((empty.path.as_str(), empty.query.as_deref(), empty.query_param("a")), ("/p", Some(""), None));
        let two = complete(b"GET /p?x=a?b HTTP/1.1\r\n\r\n", &LIMITS);
        assert_eq!(two.query_param("x").as_deref(), Some("a?b"), "only the first ? splits");
    }

    const DATE: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

    #[test]
    fn response_bytes() {
        let mut out = b"previous".to_vec();
        write_response(&mut out, 200, "text/plain", &[("X-A", "1")], b"hi", true, DATE);
        let want = "previousHTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nServer: imks\r\n\
                    Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhi";
        assert_eq!(String::from_utf8_lossy(&out), want);

        let mut out = Vec::new();
        write_response(&mut out, 431, "text/plain", &[], b"", false, DATE);
        let want = "HTTP/1.1 431 Request Header Fields Too Large\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
                    Server: imks\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(String::from_utf8_lossy(&out), want);
    }

    #[test]
    fn response_without_body_status() {
        let mut out = Vec::new();
        write_response(&mut out, 204, "text/plain", &[], b"ignored", true, DATE);
        let s = String::from_utf8_lossy(&out);
        assert!(s.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!s.contains("Content-Length"));
        assert!(s.ends_with("Connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn response_headers_cannot_be_injected() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "text/plain\r\nX-Evil: 1", &[("X-A\n", "a\r\n\r\nbody\0")], b"", true, DATE);
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("Content-Type: text/plainX-Evil: 1\r\n"));
        assert!(s.contains("X-A: abody\r\n\r\n"));
        assert_eq!(s.matches("\r\n\r\n").count(), 1);
        let mut out = Vec::new();
        push_header(&mut out, "N", "v");
        assert_eq!(out, b"N: v\r\n");
    }

    #[test]
    fn reasons() {
        assert_eq!(status_reason(200), "OK");
        assert_eq!(status_reason(404), "Not Found");
        assert_eq!(status_reason(413), "Content Too Large");
        assert_eq!(status_reason(426), "Upgrade Required");
        assert_eq!(status_reason(501), "Not Implemented");
        assert_eq!(status_reason(499), "Client Error");
        assert_eq!(status_reason(42), "Unknown");
        let mut out = Vec::new();
        write_response(&mut out, 599, "a", &[], b"", false, DATE);
        assert!(out.starts_with(b"HTTP/1.1 599 Server Error\r\n"));
        let mut n = Vec::new();
        push_decimal(&mut n, u64::MAX);
        assert_eq!(n, u64::MAX.to_string().as_bytes());
        n.clear();
        push_decimal(&mut n, 0);
        assert_eq!(n, b"0");
    }

    use crate::test_util::Rng;

    fn outcome(buf: &[u8], limits: &Limits) -> Option<String> {
        match parse_head(buf, limits) {
            Ok(Parsed::Incomplete) => None,
            Ok(Parsed::Complete(h)) => Some(format!("{h:?}")),
            Err(e) => Some(format!("{e:?}")),
        }
    }

    /// However the input is split, a prefix is `Incomplete` until the head ends and otherwise
    /// gives exactly the whole input's answer: the parser only reports what it has seen.
    fn assert_split_consistent(input: &[u8], limits: &Limits) {
        let full = outcome(input, limits);
        let head_len = match parse_head(input, limits) {
            Ok(Parsed::Complete(h)) => Some(h.head_len),
            _ => None,
        };
        for k in 0..input.len() {
            match outcome(&input[..k], limits) {
                None => assert!(head_len.is_none_or(|n| k < n), "prefix {k} incomplete past the head"),
                Some(o) => assert_eq!(Some(o), full, "prefix {k} of {:?}", String::from_utf8_lossy(input)),
            }
        }
    }

    #[test]
    fn robustness_random_and_mutated_inputs() {
        let seeds: [&[u8]; 4] = [
            b"GET /ws-echo?room=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST /p HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\r\nPUT /a%20b HTTP/1.1\nX: y\n\n",
        ];
        let interesting = b"\r\n:, %\t\0\x7f\xff/?=0123456789HTTP/1.GET";
        let small = Limits { max_head_bytes: 64, max_headers: 3, max_body_bytes: 4 };
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut complete_count, mut error_count) = (0, 0);
        for i in 0..2000 {
            let input: Vec<u8> = if i % 4 == 0 {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = seeds[rng.below(seeds.len())].to_vec();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(v.len() + 1);
                    let byte =
                        if rng.below(2) == 0 { interesting[rng.below(interesting.len())] } else { rng.next() as u8 };
                    match rng.below(4) {
                        0 if at < v.len() => v[at] = byte,
                        1 => v.insert(at, byte),
                        2 if at < v.len() => {
                            v.remove(at);
                        }
                        _ => v.truncate(at),
                    }
                }
                v
            };
            for limits in [&LIMITS, &small] {
                assert_split_consistent(&input, limits);
                match parse_head(&input, limits) {
                    Ok(Parsed::Complete(h)) => {
                        complete_count += 1;
                        assert!(h.head_len <= input.len().min(limits.max_head_bytes));
                        assert!(h.content_length <= limits.max_body_bytes);
                        assert!(h.path.starts_with('/'));
                        assert!(h.minor_version <= 1);
                        // The head alone parses to the same thing.
                        let again = complete(&input[..h.head_len], limits);
                        assert_eq!(format!("{again:?}"), format!("{h:?}"));
                        let _ = (h.query_param("room"), h.is_websocket_upgrade(), h.header("host"));
                    }
                    Ok(Parsed::Incomplete) => assert!(input.len() < limits.max_head_bytes),
                    Err(e) => {
                        error_count += 1;
                        assert!(matches!(e.status(), 400 | 413 | 431 | 501));
                    }
                }
            }
        }
        // The mutations must reach both outcomes, or the test proves little.
        assert!(complete_count > 100 && error_count > 100, "{complete_count} complete, {error_count} errors");
    }
}
