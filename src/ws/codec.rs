//! The server side of the RFC 6455 framing layer, as a pure codec over in-memory buffers.
//!
//! The session driver owns the socket and does its own (io_uring) reads and writes, so the
//! codec never touches I/O: the driver [`feed`](WsCodec::feed)s whatever bytes it read, pulls
//! complete messages out with [`next_message`](WsCodec::next_message), and writes whatever
//! [`take_output`](WsCodec::take_output) hands back (automatic pong replies and the close reply).
//!
//! Decoding is delegated to tungstenite's [`WebSocketContext`] in the server role rather than
//! reimplemented, so masking, fragmentation, control-frame rules, UTF-8 validation and size
//! limits follow a widely used, conformance-tested implementation. The context is driven over a
//! private stream type whose reads report `WouldBlock` when the fed bytes run out, which
//! tungstenite treats as "need more input" and resumes from later.
//!
//! Outgoing data frames do not go through tungstenite: [`encode_frame`] and [`encode_close`]
//! build unmasked server frames directly into one exactly sized buffer, so the send path can
//! queue them as shared [`Bytes`] without another copy.

use std::io::{self, Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::error::Error as TungsteniteError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

/// How many bytes tungstenite's per-connection read buffer starts with, and the most it pulls
/// from the fed input per read call. tungstenite allocates this eagerly for every session and
/// its default is 128 KiB; a small buffer keeps idle sessions cheap, and a larger frame still
/// works because tungstenite reserves room for a whole frame once it has parsed the header.
const READ_BUFFER_BYTES: usize = 1024;

/// Input capacity kept after the fed bytes have all been consumed. A burst (one large frame
/// fed in one go) must not pin a large allocation for the rest of a long-lived session.
const RETAINED_INPUT_BYTES: usize = 64 * 1024;

/// Control frames carry at most 125 payload bytes (RFC 6455 5.5); a close payload spends two
/// of them on the status code.
const MAX_CLOSE_REASON_BYTES: usize = 125 - 2;

/// Size limits for incoming data, from the `[ws]` configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecLimits {
    /// Largest complete message (all fragments together), in payload bytes.
    pub max_message_bytes: usize,
    /// Largest single frame, in payload bytes; checked as soon as the frame header arrives, so
    /// an oversized frame is refused before its payload is buffered.
    pub max_frame_bytes: usize,
}

/// Why the codec gave up on a connection. Every variant except [`WsError::Closed`] is fatal and
/// maps to the close code the server must send (RFC 6455 7.4.1) via [`WsError::close_code`].
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The peer broke RFC 6455: an unmasked client frame, an unknown opcode, reserved bits set,
    /// a fragmented or oversized control frame, a malformed close payload, a continuation
    /// without a started message, and so on.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A text message or a close reason was not valid UTF-8.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A frame or a reassembled message exceeded [`CodecLimits`].
    #[error("message too big")]
    MessageTooBig,
    /// The close handshake has finished, or the connection already failed: nothing more will
    /// be decoded and no close frame is owed.
    #[error("connection closed")]
    Closed,
}

impl WsError {
    /// The close code to send for this error, or `None` when no close frame is owed because
    /// the close handshake already happened.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            WsError::Protocol(_) => Some(1002),
            WsError::InvalidUtf8 => Some(1007),
            WsError::MessageTooBig => Some(1009),
            WsError::Closed => None,
        }
    }

    /// Sorts a tungstenite failure into the close code it deserves. tungstenite 0.30 reports
    /// every UTF-8 failure, including an invalid close reason, as `Error::Utf8`, so no
    /// `ProtocolError` variant needs to be reclassified as 1007.
    fn from_tungstenite(err: TungsteniteError) -> WsError {
        match err {
            TungsteniteError::ConnectionClosed | TungsteniteError::AlreadyClosed => WsError::Closed,
            TungsteniteError::Capacity(_) => WsError::MessageTooBig,
            TungsteniteError::Utf8(_) => WsError::InvalidUtf8,
            TungsteniteError::Protocol(e) => WsError::Protocol(e.to_string()),
            // Our in-memory stream never fails and the context never writes past its unbounded
            // write buffer, so anything else is unexpected; failing the connection is the
            // safe answer and 1002 is the closest code the callers know.
            other => WsError::Protocol(other.to_string()),
        }
    }
}

/// The in-memory "socket" tungstenite is driven over: reads come from the fed bytes, writes
/// land in the output the driver collects with [`WsCodec::take_output`].
///
/// Reads only ever hand tungstenite whole frames. Frame headers are cheap to measure, and a
/// decoder that never holds part of a frame can be let go whenever the fed input is used up
/// between messages (see [`WsCodec::release_if_idle`]), which is most of an idle session's
/// life. A header announcing a frame over the size limit is handed over at once, so the
/// limit is still enforced as soon as the header arrives.
#[derive(Debug, Default)]
struct Buffers {
    /// Fed bytes; those before `read_pos` were already handed to tungstenite.
    input: Vec<u8>,
    /// How far tungstenite has read into `input`. Never beyond `framed`.
    read_pos: usize,
    /// End of the whole frames measured in `input`: what tungstenite may read.
    framed: usize,
    /// Whether the frames measured so far leave a fragmented message unfinished.
    in_fragment: bool,
    /// Set once a frame over the size limit was announced: from then on every fed byte is
    /// handed over as it comes, and tungstenite reports the error.
    unframed: bool,
    /// Bytes tungstenite wants written to the peer.
    output: Vec<u8>,
}

impl Buffers {
    /// Appends freshly read socket bytes, first dropping the consumed prefix so the buffer
    /// only ever holds bytes tungstenite has not seen yet.
    fn feed(&mut self, bytes: &[u8], max_frame_bytes: usize) {
        if bytes.is_empty() {
            return;
        }
        if self.read_pos > 0 {
            self.input.drain(..self.read_pos.min(self.input.len()));
            self.framed -= self.read_pos.min(self.framed);
            self.read_pos = 0;
        }
        self.input.extend_from_slice(bytes);
        self.measure(max_frame_bytes);
    }

    /// Advances `framed` over every whole frame now in `input`.
    fn measure(&mut self, max_frame_bytes: usize) {
        while !self.unframed {
            match frame_extent(&self.input[self.framed..], max_frame_bytes) {
                Extent::Whole { len, first } => {
                    self.framed += len;
                    match first & 0x0F {
                        // A data frame starts a message, finished unless FIN is clear.
                        0x1 | 0x2 => self.in_fragment = first & 0x80 == 0,
                        // A final continuation finishes it.
                        0x0 if first & 0x80 != 0 => self.in_fragment = false,
                        _ => {}
                    }
                }
                Extent::Partial => break,
                Extent::TooBig => self.unframed = true,
            }
        }
        if self.unframed {
            self.framed = self.input.len();
        }
    }

    /// Whether every fed byte was handed over, and tungstenite holds no partial frame or
    /// message: it then holds nothing worth keeping.
    fn at_rest(&self) -> bool {
        self.read_pos == self.framed && !self.in_fragment && !self.unframed
    }
}

/// How much of a byte stream the frame at its start takes.
enum Extent {
    /// The whole frame is there: `len` bytes, header included; `first` is its first byte.
    Whole { len: usize, first: u8 },
    /// Only part of it is.
    Partial,
    /// Its header announces a payload over the frame size limit.
    TooBig,
}

/// Measures the frame at the start of `bytes` from its header (RFC 6455 5.2) without
/// checking anything else: tungstenite validates the frame once it has all of it.
fn frame_extent(bytes: &[u8], max_frame_bytes: usize) -> Extent {
    let (Some(&first), Some(&second)) = (bytes.first(), bytes.get(1)) else {
        return Extent::Partial;
    };
    let (len_bytes, payload) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (2, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Extent::Partial,
        },
        127 => match bytes.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (8, u64::from_be_bytes(b)),
            None => return Extent::Partial,
        },
        len => (0, u64::from(len)),
    };
    if payload > max_frame_bytes as u64 {
        return Extent::TooBig;
    }
    let mask_bytes = if second & 0x80 != 0 { 4 } else { 0 };
    // Cannot overflow: payload <= max_frame_bytes, a usize.
    let len = 2 + len_bytes + mask_bytes + payload as usize;
    if bytes.len() < len {
        Extent::Partial
    } else {
        Extent::Whole { len, first }
    }
}

impl Read for Buffers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pending = self.input.get(self.read_pos..self.framed).unwrap_or(&[]);
        if pending.is_empty() {
            // Not EOF (`Ok(0)` would make tungstenite report a reset without a close
            // handshake): the driver simply has not fed (the rest of a frame) yet.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        self.read_pos += n;
        if self.read_pos == self.input.len() {
            self.input.clear();
            self.read_pos = 0;
            self.framed = 0;
            if self.input.capacity() > RETAINED_INPUT_BYTES {
                self.input.shrink_to(RETAINED_INPUT_BYTES);
            }
        }
        Ok(n)
    }
}

impl Write for Buffers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Never blocks: the driver owns backpressure on the real socket.
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A server-role WebSocket decoder for one connection, fed from the socket by the session
/// driver. It does no I/O and never blocks; all state lives in memory.
#[derive(Debug)]
pub struct WsCodec {
    /// The decoder, made when bytes arrive and let go again by
    /// [`release_if_idle`](Self::release_if_idle).
    ctx: Option<Box<WebSocketContext>>,
    limits: CodecLimits,
    io: Buffers,
    /// Set once our own close frame went through the decoder: it must then remember that.
    closing: bool,
    /// Set once a `Close` message was returned or an error was reported: from then on
    /// [`next_message`](Self::next_message) answers `Err(Closed)` without decoding anything.
    terminated: bool,
}

impl WsCodec {
    /// A codec for a freshly upgraded connection, enforcing `limits` on incoming data.
    pub fn new(limits: CodecLimits) -> Self {
        Self { ctx: None, limits, io: Buffers::default(), closing: false, terminated: false }
    }

    /// Appends bytes read from the socket. Call [`next_message`](Self::next_message) until it
    /// returns `Ok(None)` afterwards.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.io.feed(bytes, self.limits.max_frame_bytes);
    }

    /// Lets the decoder and the input buffer go when they hold nothing: every fed byte was
    /// decoded, no message is half received and no close is under way. A session calls this
    /// before it waits for the peer, so an idle session keeps no decoding state; the next
    /// bytes make a fresh decoder, which is all a connection at rest between messages needs.
    pub fn release_if_idle(&mut self) {
        if self.closing || self.terminated || !self.io.at_rest() || !self.io.output.is_empty() {
            return;
        }
        self.ctx = None;
        if self.io.input.is_empty() {
            self.io.input = Vec::new();
        }
    }

    /// Whether the decoder is currently let go (for tests).
    #[cfg(test)]
    fn is_released(&self) -> bool {
        self.ctx.is_none()
    }

    /// Decodes the next complete message from the fed bytes.
    ///
    /// `Ok(None)` means more input is needed. Pings come out as `Message::Ping` with the pong
    /// already queued for [`take_output`](Self::take_output). A `Message::Close` ends the
    /// session: either it answers our own [`close`](Self::close), or the echo of the peer's
    /// code is queued for `take_output` (a close code that may not appear on the wire is
    /// answered, and reported, as 1002 instead). After a `Close` or any error, every further
    /// call returns `Err(WsError::Closed)` and the remaining input is ignored.
    ///
    /// A close frame the driver wrote itself with [`encode_close`] bypasses the codec, so the
    /// peer's answer to it looks like a peer-initiated close and an echo is queued; a driver
    /// that already sent its close discards that output.
    pub fn next_message(&mut self) -> Result<Option<Message>, WsError> {
        if self.terminated {
            return Err(WsError::Closed);
        }
        if self.io.read_pos == self.io.framed && self.ctx.is_none() {
            return Ok(None); // nothing whole to decode: no decoder needed yet
        }
        match decoder(&mut self.ctx, self.limits).read(&mut self.io) {
            Ok(msg) => {
                if matches!(msg, Message::Close(_)) {
                    self.terminated = true;
                }
                Ok(Some(msg))
            }
            Err(TungsteniteError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => {
                self.terminated = true;
                Err(WsError::from_tungstenite(e))
            }
        }
    }

    /// Takes the bytes the codec wants written to the peer: pong replies, the reply to the
    /// peer's close, or our own close frame. Empty when there is nothing to send.
    pub fn take_output(&mut self) -> Vec<u8> {
        // Flushing moves a queued pong or close reply into `io.output`. Once the peer's close
        // has been answered tungstenite reports ConnectionClosed here, after writing the reply;
        // our writer cannot fail, so no other error is possible.
        if let Some(ctx) = self.ctx.as_deref_mut() {
            if let Err(TungsteniteError::ConnectionClosed | TungsteniteError::AlreadyClosed) = ctx.flush(&mut self.io) {
                self.terminated = true;
            }
        }
        std::mem::take(&mut self.io.output)
    }

    /// Starts a server-initiated close: queues a close frame with `code` and `reason` (cut at
    /// a character boundary to fit a control frame) for [`take_output`](Self::take_output).
    /// Messages the peer sent before seeing it are still decoded; its close reply then comes
    /// out of [`next_message`](Self::next_message) as `Message::Close`. Does nothing once
    /// the codec has terminated or a close was already sent. The caller must pass a code that
    /// may appear on the wire (not 1005, 1006 or 1015).
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.terminated {
            return;
        }
        self.closing = true;
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(truncate_at_char_boundary(reason, MAX_CLOSE_REASON_BYTES)),
        };
        if let Err(TungsteniteError::ConnectionClosed | TungsteniteError::AlreadyClosed) =
            decoder(&mut self.ctx, self.limits).close(&mut self.io, Some(frame))
        {
            self.terminated = true;
        }
    }

    /// Whether the codec is finished: the close handshake completed (a `Close` message was
    /// returned) or a fatal error was reported. Output may still be pending; see
    /// [`take_output`](Self::take_output).
    pub fn is_terminated(&self) -> bool {
        self.terminated
    }
}

/// The decoder in `slot`, made afresh if it was let go.
fn decoder(slot: &mut Option<Box<WebSocketContext>>, limits: CodecLimits) -> &mut WebSocketContext {
    slot.get_or_insert_with(|| {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            // Hand every queued frame to our output at once; take_output flushes anyway.
            .write_buffer_size(0)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_frame_bytes))
            // RFC 6455 5.1: a server must fail the connection on an unmasked client frame.
            .accept_unmasked_frames(false);
        // Cannot panic: the default max_write_buffer_size (usize::MAX) exceeds write_buffer_size 0.
        Box::new(WebSocketContext::new(Role::Server, Some(config)))
    })
}

/// A frame opcode (RFC 6455 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// A later fragment of a fragmented message.
    Continuation,
    /// A UTF-8 text message.
    Text,
    /// A binary message.
    Binary,
    /// Starts or answers the close handshake.
    Close,
    /// A keepalive probe; the peer must answer with a pong.
    Ping,
    /// The answer to a ping, or an unsolicited heartbeat.
    Pong,
}

impl Opcode {
    /// The 4-bit opcode as it appears in the first header byte.
    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }
}

/// Header length of an unmasked frame carrying `len` payload bytes: the 7-bit length form,
/// the 16-bit extended form, or the 64-bit extended form.
fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// Writes an unmasked FIN frame header for `op` with a `len`-byte payload, in the shortest
/// length form, as RFC 6455 5.2 requires.
fn put_header(buf: &mut BytesMut, op: Opcode, len: usize) {
    buf.put_u8(0x80 | op.bits());
    if len < 126 {
        // Lossless: len < 126.
        buf.put_u8(len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        buf.put_u8(126);
        buf.put_u16(len16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
}

/// A server text frame holding `text`.
pub fn encode_text(text: &str) -> Bytes {
    encode_frame(Opcode::Text, text.as_bytes())
}

/// Encodes one complete (FIN) unmasked server frame. The buffer is sized exactly once, so a
/// frame costs a single allocation and a single payload copy.
pub fn encode_frame(op: Opcode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut buf, op, payload.len());
    buf.extend_from_slice(payload);
    buf.freeze()
}

/// Encodes a server close frame. The reason is cut at a character boundary so the payload
/// (two code bytes plus reason) fits the 125-byte control frame limit and stays valid UTF-8;
/// the caller must pass a code that may appear on the wire (not 1005, 1006 or 1015).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = truncate_at_char_boundary(reason, MAX_CLOSE_REASON_BYTES);
    let payload_len = 2 + reason.len();
    let mut buf = BytesMut::with_capacity(header_len(payload_len) + payload_len);
    put_header(&mut buf, Opcode::Close, payload_len);
    buf.put_u16(code);
    buf.extend_from_slice(reason.as_bytes());
    buf.freeze()
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    // Terminates: index 0 is always a boundary.
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIN: u8 = 0x80;
    const OP_CONT: u8 = 0x0;
    const OP_TEXT: u8 = 0x1;
    const OP_BINARY: u8 = 0x2;
    const OP_CLOSE: u8 = 0x8;
    const OP_PING: u8 = 0x9;
    const OP_PONG: u8 = 0xA;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Builds one frame by hand. `first` is the whole first header byte (FIN, RSV bits and
    /// opcode); the payload is masked with `mask` when given, as a client must.
    fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let len = payload.len();
        let mut out = vec![first];
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xFFFF {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match mask {
            Some(m) => {
                out.extend_from_slice(&m);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// A masked client frame.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        raw_frame(first, payload, Some(MASK))
    }

    fn client_close(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        client(FIN | OP_CLOSE, &payload)
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    fn limits() -> CodecLimits {
        CodecLimits { max_message_bytes: 1 << 20, max_frame_bytes: 1 << 20 }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[derive(Debug, PartialEq)]
    enum Event {
        Msg(Message),
        /// Debug text and close code of an error.
        Err(String, Option<u16>),
    }

    /// Everything observable from one run of the codec over some input.
    #[derive(Debug, PartialEq)]
    struct Run {
        events: Vec<Event>,
        output: Vec<u8>,
        terminated: bool,
    }

    impl Run {
        fn messages(&self) -> Vec<&Message> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::Msg(m) => Some(m),
                    Event::Err(..) => None,
                })
                .collect()
        }

        fn last_error_code(&self) -> Option<Option<u16>> {
            match self.events.last() {
                Some(Event::Err(_, code)) => Some(*code),
                _ => None,
            }
        }
    }

    /// Pulls messages until the codec needs input (true) or reports an error (false).
    fn drain(codec: &mut WsCodec, events: &mut Vec<Event>) -> bool {
        loop {
            match codec.next_message() {
                Ok(Some(m)) => events.push(Event::Msg(m)),
                Ok(None) => return true,
                Err(e) => {
                    events.push(Event::Err(format!("{e:?}"), e.close_code()));
                    return false;
                }
            }
        }
    }

    /// Feeds `chunks` one at a time, draining after each, as the session driver does; with
    /// `release`, it lets the decoder go whenever it may before the next chunk, as a session
    /// does before it waits for its peer.
    fn run_chunks<'a>(limits: CodecLimits, chunks: impl IntoIterator<Item = &'a [u8]>, release: bool) -> Run {
        let mut codec = WsCodec::new(limits);
        let mut events = Vec::new();
        let mut output = Vec::new();
        for chunk in chunks {
            codec.feed(chunk);
            let more = drain(&mut codec, &mut events);
            output.extend(codec.take_output());
            if !more {
                break;
            }
            if release {
                codec.release_if_idle();
            }
        }
        output.extend(codec.take_output());
        Run { events, output, terminated: codec.is_terminated() }
    }

    /// Runs `input` whole, split in two at every byte boundary (letting the decoder go between
    /// the halves where it may), and byte by byte (with and without), and asserts that all
    /// runs produce the same messages, errors and output. Returns the whole-input run.
    fn run_all_splits(limits: CodecLimits, input: &[u8]) -> Run {
        let whole = run_chunks(limits, [input], false);
        for k in 0..=input.len() {
            let split = run_chunks(limits, [&input[..k], &input[k..]], true);
            assert!(split == whole, "split at {k} of {} differs", input.len());
        }
        for release in [false, true] {
            let bytewise = run_chunks(limits, input.chunks(1), release);
            assert!(bytewise == whole, "byte-by-byte run of {} bytes differs (release {release})", input.len());
        }
        whole
    }

    fn assert_messages(run: &Run, expected: &[Message]) {
        let got = run.messages();
        assert_eq!(got.len(), expected.len(), "{:?}", run.events);
        for (g, e) in got.iter().zip(expected) {
            assert!(*g == e, "got {g:?}, expected {e:?}");
        }
        assert!(!matches!(run.events.last(), Some(Event::Err(..))), "unexpected error: {:?}", run.events);
    }

    /// Runs an input that must fail with `code`, checking split invariance and that the codec
    /// is terminated and keeps answering `Closed` afterwards.
    fn assert_fails(limits: CodecLimits, input: &[u8], code: u16) -> Run {
        let run = run_all_splits(limits, input);
        assert_eq!(run.last_error_code(), Some(Some(code)), "{:?}", run.events);
        assert!(run.terminated);
        let mut codec = WsCodec::new(limits);
        codec.feed(input);
        let mut events = Vec::new();
        assert!(!drain(&mut codec, &mut events));
        assert!(codec.is_terminated());
        assert!(matches!(codec.next_message(), Err(WsError::Closed)));
        run
    }

    /// Decodes server frames with a client-role tungstenite context, which rejects masked
    /// frames, so it checks what a real client would accept.
    fn client_decode(bytes: &[u8]) -> Vec<Message> {
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let mut ctx = WebSocketContext::new(Role::Client, Some(config));
        let mut io = Buffers::default();
        io.feed(bytes, usize::MAX);
        let mut out = Vec::new();
        loop {
            match ctx.read(&mut io) {
                Ok(m) => out.push(m),
                Err(TungsteniteError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client rejected server bytes: {e}"),
            }
        }
        assert!(io.input.is_empty(), "trailing bytes");
        out
    }

    fn close_msg(code: u16, reason: &str) -> Message {
        Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }))
    }

    // ---- messages, at every split ----

    #[test]
    fn text_message() {
        let run = run_all_splits(limits(), &client(FIN | OP_TEXT, "hello".as_bytes()));
        assert_messages(&run, &[Message::text("hello")]);
        assert!(run.output.is_empty());
        assert!(!run.terminated);
    }

    #[test]
    fn binary_message() {
        let run = run_all_splits(limits(), &client(FIN | OP_BINARY, &[0, 1, 2, 0xFF, 0x80]));
        assert_messages(&run, &[Message::binary(vec![0, 1, 2, 0xFF, 0x80])]);
    }

    #[test]
    fn empty_messages() {
        let input = concat(&[client(FIN | OP_TEXT, b""), client(FIN | OP_BINARY, b""), client(FIN | OP_PONG, b"")]);
        let run = run_all_splits(limits(), &input);
        assert_messages(&run, &[Message::text(""), Message::binary(Vec::new()), Message::Pong(Bytes::new())]);
        assert!(run.output.is_empty(), "a pong needs no reply");
    }

    #[test]
    fn several_messages_in_one_feed() {
        let input = concat(&[client(FIN | OP_TEXT, b"a"), client(FIN | OP_BINARY, b"b"), client(FIN | OP_TEXT, b"c")]);
        let run = run_all_splits(limits(), &input);
        assert_messages(&run, &[Message::text("a"), Message::binary(b"b".to_vec()), Message::text("c")]);
    }

    #[test]
    fn payload_length_forms() {
        for n in [125, 126, 65535, 65536] {
            let payload = pattern(n);
            let frame = client(FIN | OP_BINARY, &payload);
            let expected_header = match n {
                125 => 2,
                126 | 65535 => 4,
                _ => 10,
            } + 4;
            assert_eq!(frame.len(), expected_header + n);
            let run = run_all_splits(limits(), &frame);
            assert_messages(&run, &[Message::binary(payload)]);
        }
    }

    #[test]
    fn fragmented_text_with_interleaved_ping() {
        let input = concat(&[
            client(OP_TEXT, b"Hel"),
            client(FIN | OP_PING, b"p"),
            client(OP_CONT, b"lo "),
            client(FIN | OP_CONT, "w\u{f6}rld".as_bytes()),
        ]);
        let run = run_all_splits(limits(), &input);
        assert_messages(&run, &[Message::Ping(Bytes::from_static(b"p")), Message::text("Hello w\u{f6}rld")]);
        assert_eq!(run.output, encode_frame(Opcode::Pong, b"p").to_vec());
        assert_eq!(client_decode(&run.output), vec![Message::Pong(Bytes::from_static(b"p"))]);
    }

    #[test]
    fn multibyte_utf8_split_across_fragments() {
        let text = "a\u{20ac}b\u{1f600}c";
        let bytes = text.as_bytes();
        // Cut inside the 3-byte euro sign and twice inside the 4-byte emoji.
        let (f1, rest) = bytes.split_at(2);
        let (f2, rest) = rest.split_at(3);
        let (f3, f4) = rest.split_at(2);
        let input = concat(&[client(OP_TEXT, f1), client(OP_CONT, f2), client(OP_CONT, f3), client(FIN | OP_CONT, f4)]);
        let run = run_all_splits(limits(), &input);
        assert_messages(&run, &[Message::text(text)]);
    }

    #[test]
    fn fragmented_binary_message() {
        let input = concat(&[client(OP_BINARY, &[1, 2]), client(OP_CONT, &[]), client(FIN | OP_CONT, &[3])]);
        let run = run_all_splits(limits(), &input);
        assert_messages(&run, &[Message::binary(vec![1, 2, 3])]);
    }

    #[test]
    fn each_ping_gets_its_pong() {
        let input = concat(&[client(FIN | OP_PING, b"1"), client(FIN | OP_PING, b"22"), client(FIN | OP_TEXT, b"x")]);
        let run = run_all_splits(limits(), &input);
        let pongs = [encode_frame(Opcode::Pong, b"1").to_vec(), encode_frame(Opcode::Pong, b"22").to_vec()].concat();
        assert_eq!(run.output, pongs);
    }

    // ---- errors ----

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let run = assert_fails(limits(), &raw_frame(FIN | OP_TEXT, b"hi", None), 1002);
        assert!(run.messages().is_empty());
        // Also after a valid message, and for control frames.
        let input = concat(&[client(FIN | OP_TEXT, b"ok"), raw_frame(FIN | OP_PING, b"", None)]);
        let run = assert_fails(limits(), &input, 1002);
        assert_eq!(run.messages(), vec![&Message::text("ok")]);
    }

    #[test]
    fn invalid_utf8_text_is_1007() {
        assert_fails(limits(), &client(FIN | OP_TEXT, &[0x61, 0xC3, 0x28]), 1007);
        assert_fails(limits(), &client(FIN | OP_TEXT, &[0xFF]), 1007);
        // Invalid sequence in a later fragment.
        let input = concat(&[client(OP_TEXT, b"ok"), client(FIN | OP_CONT, &[0xED, 0xA0, 0x80])]);
        assert_fails(limits(), &input, 1007);
        // A message that ends in the middle of a character.
        let input = concat(&[client(OP_TEXT, b"a"), client(FIN | OP_CONT, &[0xE2, 0x82])]);
        assert_fails(limits(), &input, 1007);
    }

    #[test]
    fn message_over_limit_single_frame_is_1009() {
        let small = CodecLimits { max_message_bytes: 10, max_frame_bytes: 100 };
        let run = run_all_splits(small, &client(FIN | OP_TEXT, &[b'a'; 10]));
        assert_messages(&run, &[Message::text("a".repeat(10))]);
        assert_fails(small, &client(FIN | OP_TEXT, &[b'a'; 11]), 1009);
        assert_fails(small, &client(FIN | OP_BINARY, &[0; 11]), 1009);
    }

    #[test]
    fn message_over_limit_via_fragments_is_1009() {
        let small = CodecLimits { max_message_bytes: 10, max_frame_bytes: 100 };
        let input = concat(&[client(OP_TEXT, &[b'a'; 5]), client(FIN | OP_CONT, &[b'b'; 5])]);
        assert_messages(&run_all_splits(small, &input), &[Message::text("aaaaabbbbb")]);
        let input = concat(&[client(OP_TEXT, &[b'a'; 6]), client(OP_CONT, &[b'b'; 6]), client(FIN | OP_CONT, b"")]);
        assert_fails(small, &input, 1009);
    }

    #[test]
    fn frame_over_limit_is_1009_before_its_payload_arrives() {
        let small = CodecLimits { max_message_bytes: 1000, max_frame_bytes: 16 };
        assert_messages(&run_all_splits(small, &client(FIN | OP_BINARY, &[0; 16])), &[Message::binary(vec![0; 16])]);
        assert_fails(small, &client(FIN | OP_BINARY, &[0; 17]), 1009);
        // Only the header of a huge frame: refused at once, nothing buffered for it.
        let mut codec = WsCodec::new(small);
        codec.feed(&[FIN | OP_BINARY, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0]);
        codec.feed(&MASK);
        assert!(matches!(codec.next_message(), Err(WsError::MessageTooBig)));
        assert!(codec.is_terminated());
    }

    #[test]
    fn reserved_bits_are_a_protocol_error() {
        for rsv in [0x40, 0x20, 0x10] {
            assert_fails(limits(), &client(FIN | rsv | OP_TEXT, b"x"), 1002);
        }
    }

    #[test]
    fn unknown_opcodes_are_a_protocol_error() {
        for op in [0x3, 0x7, 0xB, 0xF] {
            assert_fails(limits(), &client(FIN | op, b""), 1002);
        }
    }

    #[test]
    fn fragmented_control_frames_are_a_protocol_error() {
        assert_fails(limits(), &client(OP_PING, b"x"), 1002);
        assert_fails(limits(), &client(OP_CLOSE, &1000u16.to_be_bytes()), 1002);
    }

    #[test]
    fn control_frame_over_125_bytes_is_a_protocol_error() {
        let run = run_all_splits(limits(), &client(FIN | OP_PING, &[7; 125]));
        assert_eq!(run.output, encode_frame(Opcode::Pong, &[7; 125]).to_vec());
        assert_fails(limits(), &client(FIN | OP_PING, &[7; 126]), 1002);
        assert_fails(limits(), &client(FIN | OP_PONG, &[7; 126]), 1002);
        assert_fails(limits(), &client_close(1000, &[b'r'; 124]), 1002);
    }

    #[test]
    fn continuation_without_start_is_a_protocol_error() {
        assert_fails(limits(), &client(FIN | OP_CONT, b"x"), 1002);
        assert_fails(limits(), &client(OP_CONT, b"x"), 1002);
    }

    #[test]
    fn new_message_inside_fragmented_one_is_a_protocol_error() {
        let input = concat(&[client(OP_TEXT, b"a"), client(FIN | OP_TEXT, b"b")]);
        assert_fails(limits(), &input, 1002);
    }

    #[test]
    fn close_with_one_byte_payload_is_a_protocol_error() {
        assert_fails(limits(), &client(FIN | OP_CLOSE, &[0x03]), 1002);
    }

    #[test]
    fn close_reason_invalid_utf8_is_1007() {
        assert_fails(limits(), &client_close(1000, &[0xC3, 0x28]), 1007);
    }

    /// tungstenite does not fail on a close code that may not appear on the wire (below 1000,
    /// 1004-1006, 1015, 1016-2999, 5000+): it returns a `Close` carrying 1002 and queues a
    /// 1002 close reply, so the peer still gets the RFC's answer through the normal close path.
    #[test]
    fn close_with_forbidden_code_is_answered_with_1002() {
        for code in [0, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            let run = run_all_splits(limits(), &client_close(code, b"x"));
            assert_eq!(run.messages(), vec![&close_msg(1002, "Protocol violation")], "code {code}");
            assert_eq!(run.output, encode_close(1002, "Protocol violation").to_vec(), "code {code}");
            assert!(run.terminated);
        }
    }

    #[test]
    fn close_codes_of_errors() {
        assert_eq!(WsError::Protocol(String::new()).close_code(), Some(1002));
        assert_eq!(WsError::InvalidUtf8.close_code(), Some(1007));
        assert_eq!(WsError::MessageTooBig.close_code(), Some(1009));
        assert_eq!(WsError::Closed.close_code(), None);
    }

    // ---- close handshake ----

    #[test]
    fn client_close_is_echoed_then_closed() {
        let input = client_close(1000, b"bye");
        let run = run_all_splits(limits(), &input);
        assert_eq!(run.events.len(), 2);
        assert_eq!(run.events[0], Event::Msg(close_msg(1000, "bye")));
        assert_eq!(run.last_error_code(), Some(None), "then Closed");
        // The reply echoes the code and reason in an unmasked close frame.
        assert_eq!(run.output, vec![0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
        assert_eq!(client_decode(&run.output), vec![close_msg(1000, "bye")]);

        let mut codec = WsCodec::new(limits());
        codec.feed(&input);
        assert_eq!(codec.next_message().ok().flatten(), Some(close_msg(1000, "bye")));
        assert!(codec.is_terminated());
        assert_eq!(codec.take_output(), run.output);
        assert!(matches!(codec.next_message(), Err(WsError::Closed)));
        assert!(codec.take_output().is_empty());
        // Feeding more after the close changes nothing.
        codec.feed(&client(FIN | OP_TEXT, b"late"));
        assert!(matches!(codec.next_message(), Err(WsError::Closed)));
    }

    #[test]
    fn close_reply_survives_next_message_before_take_output() {
        let mut codec = WsCodec::new(limits());
        codec.feed(&concat(&[client_close(1001, b""), client(FIN | OP_TEXT, b"ignored")]));
        assert_eq!(codec.next_message().ok().flatten(), Some(close_msg(1001, "")));
        assert!(matches!(codec.next_message(), Err(WsError::Closed)));
        assert_eq!(codec.take_output(), encode_close(1001, "").to_vec());
    }

    #[test]
    fn empty_close_is_answered_with_empty_close() {
        let run = run_all_splits(limits(), &client(FIN | OP_CLOSE, b""));
        assert_eq!(run.messages(), vec![&Message::Close(None)]);
        assert_eq!(run.output, vec![0x88, 0x00]);
    }

    #[test]
    fn pong_queued_before_close_is_sent_before_the_reply() {
        let run = run_all_splits(limits(), &concat(&[client(FIN | OP_PING, b"p"), client_close(1000, b"")]));
        let expected = [encode_frame(Opcode::Pong, b"p").to_vec(), encode_close(1000, "").to_vec()].concat();
        assert_eq!(run.output, expected);
    }

    #[test]
    fn server_initiated_close() {
        let mut codec = WsCodec::new(limits());
        codec.close(1001, "going away");
        assert_eq!(codec.take_output(), encode_close(1001, "going away").to_vec());
        assert!(!codec.is_terminated());
        codec.close(1000, "again");
        assert!(codec.take_output().is_empty(), "only one close frame is sent");
        // Data the client sent before seeing our close is still delivered; pings get no pong.
        codec.feed(&concat(&[client(FIN | OP_TEXT, b"in flight"), client(FIN | OP_PING, b"p")]));
        assert_eq!(codec.next_message().ok().flatten(), Some(Message::text("in flight")));
        assert_eq!(codec.next_message().ok().flatten(), Some(Message::Ping(Bytes::from_static(b"p"))));
        assert!(matches!(codec.next_message(), Ok(None)));
        assert!(codec.take_output().is_empty());
        // The client's reply completes the handshake; nothing more is written.
        codec.feed(&client_close(1001, b""));
        assert_eq!(codec.next_message().ok().flatten(), Some(close_msg(1001, "")));
        assert!(codec.is_terminated());
        assert!(codec.take_output().is_empty());
        assert!(matches!(codec.next_message(), Err(WsError::Closed)));
    }

    #[test]
    fn server_close_truncates_long_reason() {
        let mut codec = WsCodec::new(limits());
        codec.close(1000, &"\u{e9}".repeat(100));
        let out = codec.take_output();
        assert_eq!(out, encode_close(1000, &"\u{e9}".repeat(61)).to_vec());
        assert!(out.len() - 2 <= 125);
    }

    #[test]
    fn close_after_client_close_adds_nothing() {
        let mut codec = WsCodec::new(limits());
        codec.feed(&client_close(1000, b""));
        assert!(matches!(codec.next_message(), Ok(Some(Message::Close(_)))));
        codec.close(1001, "late");
        assert_eq!(codec.take_output(), encode_close(1000, "").to_vec());
    }

    // ---- encoding ----

    #[test]
    fn encode_frame_length_forms_round_trip() {
        for (n, header) in [(0, 2), (1, 2), (125, 2), (126, 4), (127, 4), (65535, 4), (65536, 10), (70000, 10)] {
            let payload = pattern(n);
            let frame = encode_frame(Opcode::Binary, &payload);
            assert_eq!(frame.len(), header + n, "length {n}");
            assert_eq!(frame[0], 0x82);
            assert_eq!(frame[1] & 0x80, 0, "never masked");
            assert_eq!(&frame[header..], &payload[..]);
            assert_eq!(client_decode(&frame), vec![Message::binary(payload)], "length {n}");
        }
    }

    #[test]
    fn encode_frame_opcodes_round_trip() {
        let bytes = [
            encode_frame(Opcode::Text, "h\u{e9}".as_bytes()).to_vec(),
            encode_frame(Opcode::Ping, b"pi").to_vec(),
            encode_frame(Opcode::Pong, b"po").to_vec(),
            encode_frame(Opcode::Close, &[0x03, 0xE8]).to_vec(),
        ]
        .concat();
        assert_eq!(
            client_decode(&bytes),
            vec![
                Message::text("h\u{e9}"),
                Message::Ping(Bytes::from_static(b"pi")),
                Message::Pong(Bytes::from_static(b"po")),
                close_msg(1000, ""),
            ]
        );
        assert_eq!(encode_frame(Opcode::Continuation, b"")[..], [0x80, 0x00]);
    }

    #[test]
    fn encode_close_truncates_at_char_boundary() {
        let short = encode_close(1008, "slow consumer");
        assert_eq!(client_decode(&short), vec![close_msg(1008, "slow consumer")]);

        // 3-byte characters: 41 fit in 123 bytes exactly; 2-byte ones: 61 (122 bytes).
        for (reason, kept) in
            [("\u{20ac}".repeat(50), "\u{20ac}".repeat(41)), ("\u{e9}".repeat(100), "\u{e9}".repeat(61))]
        {
            let frame = encode_close(1000, &reason);
            let payload_len = usize::from(frame[1]);
            assert!(payload_len <= 125);
            assert_eq!(frame.len(), 2 + payload_len);
            assert_eq!(payload_len, 2 + kept.len());
            assert_eq!(client_decode(&frame), vec![close_msg(1000, &kept)]);
        }
        // Exactly 123 ASCII bytes are kept whole, 124 are cut to 123.
        assert_eq!(encode_close(1000, &"a".repeat(123))[1], 125);
        assert_eq!(encode_close(1000, &"a".repeat(124))[1], 125);
    }

    #[test]
    fn truncate_at_char_boundary_edges() {
        assert_eq!(truncate_at_char_boundary("", 0), "");
        assert_eq!(truncate_at_char_boundary("\u{1f600}", 3), "");
        assert_eq!(truncate_at_char_boundary("a\u{1f600}", 4), "a");
        assert_eq!(truncate_at_char_boundary("a\u{1f600}", 5), "a\u{1f600}");
    }

    // ---- buffering ----

    #[test]
    fn input_buffer_is_compacted() {
        let mut codec = WsCodec::new(limits());
        let frame = client(FIN | OP_TEXT, b"hello");
        for _ in 0..1000 {
            // Half a frame, then the rest together with the next frame's first half.
            codec.feed(&frame[..4]);
            assert!(matches!(codec.next_message(), Ok(None)));
            codec.feed(&frame[4..]);
            assert_eq!(codec.next_message().ok().flatten(), Some(Message::text("hello")));
            assert!(matches!(codec.next_message(), Ok(None)));
            assert!(codec.io.input.is_empty());
        }
        assert!(codec.io.input.capacity() <= 64);
        // A large burst does not pin its allocation.
        codec.feed(&client(FIN | OP_BINARY, &pattern(200_000)));
        assert!(matches!(codec.next_message(), Ok(Some(Message::Binary(_)))));
        assert!(codec.io.input.capacity() <= RETAINED_INPUT_BYTES);
    }

    #[test]
    fn decoder_is_let_go_only_between_messages() {
        let mut codec = WsCodec::new(limits());
        codec.release_if_idle();
        assert!(codec.is_released(), "a fresh codec holds no decoder");
        let frame = client(FIN | OP_TEXT, b"hello");
        // Part of a frame is kept as input, but the decoder has seen none of it.
        codec.feed(&frame[..4]);
        assert!(matches!(codec.next_message(), Ok(None)));
        codec.release_if_idle();
        assert!(codec.is_released());
        codec.feed(&frame[4..]);
        assert_eq!(codec.next_message().ok().flatten(), Some(Message::text("hello")));
        assert!(matches!(codec.next_message(), Ok(None)));
        codec.release_if_idle();
        assert!(codec.is_released());
        assert_eq!(codec.io.input.capacity(), 0, "an idle codec keeps no input buffer");

        // Half of a fragmented message: the decoder holds the first fragment.
        codec.feed(&client(OP_TEXT, b"hel"));
        assert!(matches!(codec.next_message(), Ok(None)));
        codec.release_if_idle();
        assert!(!codec.is_released(), "a half-received message must be kept");
        codec.feed(&client(FIN | OP_CONT, b"lo"));
        assert_eq!(codec.next_message().ok().flatten(), Some(Message::text("hello")));
        codec.release_if_idle();
        assert!(codec.is_released());

        // A close we started must be remembered until the peer answers it.
        codec.close(1000, "bye");
        assert!(!codec.take_output().is_empty());
        codec.release_if_idle();
        assert!(!codec.is_released());
        codec.feed(&client_close(1000, b""));
        assert!(matches!(codec.next_message(), Ok(Some(Message::Close(_)))));
        assert!(codec.take_output().is_empty(), "our close was already sent: no second reply");
    }

    #[test]
    fn oversized_frame_is_refused_at_its_header() {
        let limits = CodecLimits { max_message_bytes: 1000, max_frame_bytes: 1000 };
        let mut codec = WsCodec::new(limits);
        // Only the header of a 64 KiB frame: refused before any payload arrives.
        let header = &client(FIN | OP_BINARY, &pattern(65_536))[..14];
        codec.feed(header);
        assert!(matches!(codec.next_message(), Err(WsError::MessageTooBig)));
    }

    #[test]
    fn empty_feed_and_idle_calls_are_harmless() {
        let mut codec = WsCodec::new(limits());
        codec.feed(&[]);
        assert!(matches!(codec.next_message(), Ok(None)));
        assert!(matches!(codec.next_message(), Ok(None)));
        assert!(codec.take_output().is_empty());
        assert!(!codec.is_terminated());
    }

    // ---- robustness ----

    use crate::test_util::Rng;

    /// A frame that is valid more often than not, so the random inputs reach past the header.
    fn plausible_frame(rng: &mut Rng) -> Vec<u8> {
        const OPS: [u8; 7] = [OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, 0x3];
        let mut first = OPS[rng.below(OPS.len())];
        if rng.below(2) == 0 {
            first |= FIN;
        }
        if rng.below(10) == 0 {
            first |= 0x40;
        }
        let len = match rng.below(10) {
            0 => 126 + rng.below(200),
            _ => rng.below(40),
        };
        let payload: Vec<u8> = match rng.below(3) {
            0 => (0..len).map(|_| b'a' + rng.below(26) as u8).collect(),
            _ => (0..len).map(|_| rng.next() as u8).collect(),
        };
        let mask = if rng.below(10) == 0 { None } else { Some((rng.next() as u32).to_be_bytes()) };
        let mut frame = raw_frame(first, &payload, mask);
        if rng.below(20) == 0 {
            frame.truncate(rng.below(frame.len() + 1));
        }
        frame
    }

    #[test]
    fn random_inputs_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let small = CodecLimits { max_message_bytes: 256, max_frame_bytes: 128 };
        for _ in 0..2000 {
            let input: Vec<u8> = if rng.below(2) == 0 {
                (0..rng.below(96)).map(|_| rng.next() as u8).collect()
            } else {
                (0..1 + rng.below(4)).flat_map(|_| plausible_frame(&mut rng)).collect()
            };
            let mut codec = WsCodec::new(if rng.below(2) == 0 { small } else { limits() });
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
                rest = tail;
                codec.feed(chunk);
                let mut events = Vec::new();
                if !drain(&mut codec, &mut events) {
                    assert!(codec.is_terminated());
                    assert!(matches!(codec.next_message(), Err(WsError::Closed)));
                }
                let _ = codec.take_output();
                if rng.below(50) == 0 {
                    codec.close(1000, "bye");
                }
            }
            let _ = codec.take_output();
        }
    }
}
