//! RFC 6455 from the client's side: the upgrade request and the check of its answer, masked
//! frames out, unmasked frames in, fragments reassembled.
//!
//! Incoming frames are parsed in place: [`parse_head`] first decides whether a whole frame is
//! buffered (and refuses a length over the limit before anything is allocated), and
//! [`Decoder::decode`] hands out borrowed payloads, so a read buffer full of small messages costs
//! no allocation at all. Only fragmented messages are copied, into one reused buffer.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID every server appends to the client's key (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest handshake response head accepted: real servers send a few hundred bytes, so anything
/// longer is not a WebSocket server.
pub const MAX_HEAD: usize = 16 * 1024;

/// What can go wrong on the wire. Frame errors are the server's fault and end the connection
/// with the close code of [`WsError::close_code`]; handshake errors end it before it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("handshake refused with HTTP {0}")]
    Status(u16),
    #[error("malformed handshake response")]
    BadResponse,
    #[error("handshake response head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("handshake response without the right Upgrade or Sec-WebSocket-Accept")]
    BadAccept,
    #[error("server frame sets reserved bits {0:#04x}")]
    ReservedBits(u8),
    #[error("server frame has unknown opcode {0:#x}")]
    BadOpcode(u8),
    #[error("server frame is masked")]
    Masked,
    #[error("fragmented or oversized control frame")]
    BadControl,
    #[error("message of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("continuation frame outside a fragmented message, or a new message inside one")]
    BadContinuation,
}

impl WsError {
    /// The close code a client sends for this error, `None` when no WebSocket exists yet.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            WsError::Status(_) | WsError::BadResponse | WsError::HeadTooLarge | WsError::BadAccept => None,
            WsError::TooLarge(_) => Some(1009),
            _ => Some(1002),
        }
    }
}

/// The `Sec-WebSocket-Key` for 16 random bytes.
pub fn client_key(nonce: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Appends the upgrade request for `path` (with its query) on `host`, with
/// `Authorization: Bearer <token>` when a token is given (checked for header-safe bytes by
/// [`crate::params::Params::validate`]).
pub fn write_request(out: &mut Vec<u8>, host: &str, path: &str, key: &str, token: Option<&str>) {
    for part in [
        "GET ",
        path,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
        key,
        "\r\nSec-WebSocket-Version: 13\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    if let Some(t) = token {
        out.extend_from_slice(b"Authorization: Bearer ");
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Checks the server's answer to the upgrade request sent with `key`: `Ok(None)` while the head
/// is incomplete, `Ok(Some(len))` with the head's length once it is a valid `101`. Bytes after
/// the head are already WebSocket frames.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, WsError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(WsError::HeadTooLarge) } else { Ok(None) };
    };
    if end + 4 > MAX_HEAD {
        return Err(WsError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| WsError::BadResponse)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(WsError::BadResponse)?;
    if code != 101 {
        return Err(WsError::Status(code));
    }
    let expected = accept_for(key);
    let (mut upgrade, mut accept) = (false, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(WsError::BadResponse)?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = value == expected;
        }
    }
    if upgrade && accept {
        Ok(Some(end + 4))
    } else {
        Err(WsError::BadAccept)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        self as u8 >= 8
    }
}

/// Appends one final, masked client frame.
pub fn encode(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode as u8);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `buf` with the masking key, eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(word) ^ m).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key restarts at its first byte.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The head of a server frame whose payload is entirely in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: Opcode,
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses the frame at the front of `buf`: `Ok(None)` until the whole frame is buffered. The
/// length is checked against `max_payload` first, so a lying length field costs nothing.
pub fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<FrameHead>, WsError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits(b0 & 0x70));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::BadOpcode(b0 & 0x0F))?;
    if b1 & 0x80 != 0 {
        return Err(WsError::Masked);
    }
    let (len, header_len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                (u64::from_be_bytes(w), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(WsError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(WsError::TooLarge(len));
    }
    let payload_len = len as usize;
    if buf.len() < header_len + payload_len {
        return Ok(None);
    }
    Ok(Some(FrameHead { fin, opcode, header_len, payload_len }))
}

/// What a server sent, one event per complete message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Message { opcode: Opcode, data: &'a [u8] },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close(Option<u16>),
}

/// Reassembles fragmented messages across calls; unfragmented ones are never copied.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    frag_opcode: Option<Opcode>,
    frag: Vec<u8>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Decoder {
        Decoder { max_message, frag_opcode: None, frag: Vec::new() }
    }

    /// Hands every complete frame at the front of `buf` to `f` and returns how many bytes they
    /// took; the rest is an incomplete frame to keep for the next read.
    pub fn decode<E: From<WsError>>(
        &mut self,
        buf: &[u8],
        mut f: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut pos = 0;
        while let Some(h) = parse_head(&buf[pos..], self.max_message)? {
            let start = pos + h.header_len;
            let payload = &buf[start..start + h.payload_len];
            pos = start + h.payload_len;
            match h.opcode {
                Opcode::Ping => f(Event::Ping(payload))?,
                Opcode::Pong => f(Event::Pong(payload))?,
                Opcode::Close => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    f(Event::Close(code))?;
                }
                Opcode::Text | Opcode::Binary => {
                    if self.frag_opcode.is_some() {
                        return Err(WsError::BadContinuation.into());
                    }
                    if h.fin {
                        f(Event::Message { opcode: h.opcode, data: payload })?;
                    } else {
                        self.frag_opcode = Some(h.opcode);
                        self.frag.clear();
                        self.frag.extend_from_slice(payload);
                    }
                }
                Opcode::Continuation => {
                    let Some(opcode) = self.frag_opcode else {
                        return Err(WsError::BadContinuation.into());
                    };
                    let total = self.frag.len() + payload.len();
                    if total > self.max_message {
                        return Err(WsError::TooLarge(total as u64).into());
                    }
                    self.frag.extend_from_slice(payload);
                    if h.fin {
                        self.frag_opcode = None;
                        let data = std::mem::take(&mut self.frag);
                        let res = f(Event::Message { opcode, data: &data });
                        self.frag = data;
                        self.frag.clear();
                        res?;
                    }
                }
            }
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_for("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn request_carries_the_token_as_a_bearer_header() {
        let mut out = Vec::new();
        write_request(&mut out, "h:1", "/ws", "k", None);
        assert!(!out.windows(13).any(|w| w == b"Authorization"));
        assert!(out.ends_with(b"Version: 13\r\n\r\n"));
        out.clear();
        write_request(&mut out, "h:1", "/ws", "k", Some("a.b.c"));
        assert!(out.ends_with(b"Version: 13\r\nAuthorization: Bearer a.b.c\r\n\r\n"));
    }

    #[test]
    fn response_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x01\x02hi";
        let head = ok.len() - 4;
        for cut in 0..head {
            assert_eq!(parse_response(&ok.as_bytes()[..cut], key), Ok(None), "cut {cut}");
        }
        assert_eq!(parse_response(ok.as_bytes(), key), Ok(Some(head)));
        let wrong = ok.replace("s3pP", "AAAA");
        assert_eq!(parse_response(wrong.as_bytes(), key), Err(WsError::BadAccept));
        let refused = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(refused.as_bytes(), key), Err(WsError::Status(400)));
        assert_eq!(parse_response(&[b'x'; MAX_HEAD + 1], key), Err(WsError::HeadTooLarge));
    }

    #[test]
    fn mask_round_trips_at_every_length() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for n in 0..40 {
            let data: Vec<u8> = (0..n as u8).collect();
            let mut buf = data.clone();
            apply_mask(&mut buf, mask);
            for (i, (a, b)) in buf.iter().zip(&data).enumerate() {
                assert_eq!(*a, b ^ mask[i % 4]);
            }
            apply_mask(&mut buf, mask);
            assert_eq!(buf, data);
        }
    }

    #[test]
    fn encode_writes_masked_frames_of_every_length_class() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![7u8; n];
            let mut out = Vec::new();
            encode(&mut out, Opcode::Binary, &payload, [1, 2, 3, 4]);
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0x80);
            let header = match n {
                n if n < 126 => 2,
                n if n <= 0xFFFF => 4,
                _ => 10,
            };
            assert_eq!(out.len(), header + 4 + n);
            let mut body = out[header + 4..].to_vec();
            apply_mask(&mut body, [1, 2, 3, 4]);
            assert_eq!(body, payload);
        }
    }

    /// Every event the decoder produces, as owned values.
    fn events(stream: &[u8], cuts: &[usize]) -> Result<Vec<(u8, Vec<u8>)>, WsError> {
        let mut dec = Decoder::new(1 << 20);
        let mut pending = Vec::new();
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            pending.extend_from_slice(&stream[last..cut]);
            last = cut;
            let used = dec.decode(&pending, |ev| {
                out.push(match ev {
                    Event::Message { opcode, data } => (opcode as u8, data.to_vec()),
                    Event::Ping(p) => (9, p.to_vec()),
                    Event::Pong(p) => (10, p.to_vec()),
                    Event::Close(c) => (8, c.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default()),
                });
                Ok::<(), WsError>(())
            })?;
            pending.drain(..used);
        }
        assert!(pending.is_empty());
        Ok(out)
    }

    #[test]
    fn decodes_split_at_every_byte() {
        let mut stream = server_frame(true, 1, b"hello");
        stream.extend(server_frame(false, 2, b"ab"));
        stream.extend(server_frame(true, 9, b"p"));
        stream.extend(server_frame(true, 0, b"cd"));
        stream.extend(server_frame(true, 2, &[5u8; 300]));
        stream.extend(server_frame(true, 8, &[0x03, 0xE8]));
        let want = vec![
            (1, b"hello".to_vec()),
            (9, b"p".to_vec()),
            (2, b"abcd".to_vec()),
            (2, vec![5u8; 300]),
            (8, vec![0x03, 0xE8]),
        ];
        assert_eq!(events(&stream, &[]).unwrap(), want);
        for cut in 0..stream.len() {
            assert_eq!(events(&stream, &[cut]).unwrap(), want, "cut {cut}");
        }
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(events(&[0xC1, 0], &[]), Err(WsError::ReservedBits(0x40)));
        assert_eq!(events(&[0x83, 0], &[]), Err(WsError::BadOpcode(3)));
        assert_eq!(events(&[0x81, 0x80, 0, 0, 0, 0], &[]), Err(WsError::Masked));
        assert_eq!(events(&[0x09, 0], &[]), Err(WsError::BadControl));
        assert_eq!(events(&[0x80, 0], &[]), Err(WsError::BadContinuation));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(events(&huge, &[]), Err(WsError::TooLarge(u64::MAX)));
    }
}
