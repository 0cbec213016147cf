//! A WebSocket session on its shard: a reader task (this function) that decodes frames and
//! hands messages to the endpoint, and a writer task that drains the session's bounded send
//! queue, coalescing every queued frame into one socket write.
//!
//! Heartbeats, write stalls and the close timeout are enforced by the shard's ticker through
//! the session's slab entry; it ends a stuck read or write by shutting the socket down.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use tungstenite::Message;

use super::codec::{CodecLimits, WsCodec, WsError};
use super::WsHandler;
use crate::metrics::{self, CloseReason};
use crate::shard::session::{Conn, Enqueued, FrameKind, Phase};
use crate::shard::Shard;

/// A session's first read buffer; it doubles up to `http.read_buffer_bytes` when reads fill it.
const MIN_READ_BUFFER: usize = 2048;

/// How long the writer waits after a frame that must be read on its own before sending more.
const FLUSH_PAUSE: Duration = Duration::from_millis(1);

/// Most bytes the writer gathers into one socket write.
const MAX_WRITE_BATCH: usize = 256 * 1024;

/// Runs the session until it ends; returns why it ended.
pub async fn run(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    stream: TcpStream,
    leftover: Vec<u8>,
    handler: Rc<dyn WsHandler>,
) -> CloseReason {
    let ws = &shard.node.config.ws;
    conn.phase.set(Phase::WebSocket);
    conn.deadline.set(None);
    conn.last_rx.set(Instant::now());
    metrics::add(&shard.stats.websockets_active, 1);
    if shard.stopping.is_set() {
        shard.close_session(&conn, 1001, "server shutting down", CloseReason::Shutdown);
    }

    let (mut rd, wr) = stream.into_split();
    let writer = monoio::spawn(write_loop(shard.clone(), conn.clone(), wr));
    let mut codec =
        WsCodec::new(CodecLimits { max_message_bytes: ws.max_message_bytes, max_frame_bytes: ws.max_frame_bytes });
    handler.on_open(&shard, &conn);
    let mut keep_reading = true;
    let mut paused_at = None;
    if !leftover.is_empty() {
        codec.feed(&leftover);
        keep_reading = process_all(&shard, &conn, &mut codec, &*handler, &mut paused_at).await;
    }
    // Start small and grow when reads fill the buffer: most sessions are idle or chatty with
    // small messages, and an idle session's pending read holds its buffer.
    let max_read = shard.node.config.http.read_buffer_bytes.max(MIN_READ_BUFFER);
    let mut buf: Vec<u8> = Vec::with_capacity(MIN_READ_BUFFER);
    while keep_reading {
        let (res, b) = rd.read(buf).await;
        buf = b;
        match res {
            Ok(0) => {
                conn.set_reason(CloseReason::Client);
                break;
            }
            Ok(n) => {
                conn.last_rx.set(Instant::now());
                metrics::add(&shard.stats.bytes_in, n as u64);
                codec.feed(&buf[..n]);
                let full = n == buf.capacity();
                buf.clear();
                if full && buf.capacity() < max_read {
                    buf.reserve(buf.capacity().min(max_read - buf.capacity()));
                }
                keep_reading = process_all(&shard, &conn, &mut codec, &*handler, &mut paused_at).await;
            }
            Err(_) => {
                conn.set_reason(CloseReason::Io);
                break;
            }
        }
    }
    conn.reader_done.set(true);
    conn.wake_writer();
    writer.await;
    handler.on_close(&shard, &conn);
    shard.stats.websockets_active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    conn.close_reason.get().unwrap_or(CloseReason::Client)
}

fn error_reason(e: &WsError) -> CloseReason {
    match e {
        WsError::Protocol(_) => CloseReason::Protocol,
        WsError::InvalidUtf8 => CloseReason::InvalidUtf8,
        WsError::MessageTooBig => CloseReason::TooBig,
        WsError::Closed => CloseReason::Client,
    }
}

/// What [`process`] stopped for.
#[derive(PartialEq, Eq)]
enum Flow {
    /// Every buffered message is handled: read more.
    Continue,
    /// The session is ending: stop reading.
    Stop,
    /// The session's own send queue is full: let its writer run before handling more.
    Paused,
}

/// How long the reader waits for its own writer when the session's send queue is full.
const WRITER_TURN: Duration = Duration::from_millis(1);

/// Handles every complete message buffered in `codec`. Returns whether to keep reading.
///
/// A client that pipelines requests faster than its replies can be written (an echo burst)
/// must not trip its own backpressure policy just because the writer has not had a turn: when
/// the session's queue is full, the reader gives the writer a moment (one driver turn, so an
/// in-flight write can complete) and stops reading meanwhile, so TCP pushes back on the sender.
/// If the queue is still full, or the writer has completed no write since the last such pause
/// (the peer really is not reading), the policy applies. `paused_at` remembers the writer's
/// progress at the last pause.
async fn process_all(
    shard: &Shard,
    conn: &Rc<Conn>,
    codec: &mut WsCodec,
    handler: &dyn WsHandler,
    paused_at: &mut Option<u64>,
) -> bool {
    let mut flow = process(shard, conn, codec, handler, false);
    while flow == Flow::Paused {
        let progress = conn.writes_done.get();
        if *paused_at != Some(progress) {
            *paused_at = Some(progress);
            // Boxed: a monoio timer is 640 bytes, and every session's future would carry one.
            Box::pin(monoio::time::sleep(WRITER_TURN)).await;
        }
        flow = process(shard, conn, codec, handler, true);
    }
    flow == Flow::Continue
}

/// Decodes and handles buffered messages; `resumed` skips the full-queue pause for the first
/// one (the writer just had its turn).
fn process(shard: &Shard, conn: &Rc<Conn>, codec: &mut WsCodec, handler: &dyn WsHandler, mut resumed: bool) -> Flow {
    loop {
        if !resumed && conn.queue.borrow().is_full() {
            return Flow::Paused;
        }
        resumed = false;
        match codec.next_message() {
            Ok(Some(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                metrics::add(&shard.stats.frames_in, 1);
                handler.on_message(shard, conn, msg);
            }
            Ok(Some(Message::Close(frame))) => {
                let reply = codec.take_output();
                if conn.closing_since.get().is_none() {
                    conn.close_code.set(Some(frame.map_or(1005, |f| u16::from(f.code))));
                    // The client started the close: answer it (after queued data) and end.
                    conn.set_reason(CloseReason::Client);
                    conn.closing_since.set(Some(Instant::now()));
                    if !reply.is_empty() {
                        conn.enqueue(FrameKind::Close, Bytes::from(reply));
                    }
                }
                return Flow::Stop;
            }
            // A ping: the codec queued the pong, which goes out ahead of later data.
            Ok(Some(_)) => {
                if !queue_output(shard, conn, codec) {
                    return Flow::Stop;
                }
            }
            Ok(None) => break,
            Err(e) => {
                match e.close_code() {
                    Some(code) => shard.close_session(conn, code, &e.to_string(), error_reason(&e)),
                    None => conn.set_reason(error_reason(&e)),
                }
                return Flow::Stop;
            }
        }
    }
    if queue_output(shard, conn, codec) {
        Flow::Continue
    } else {
        Flow::Stop
    }
}

/// Queues what the codec wants written (pongs). Returns false when that overflowed the queue.
fn queue_output(shard: &Shard, conn: &Conn, codec: &mut WsCodec) -> bool {
    let out = codec.take_output();
    if !out.is_empty() && conn.enqueue(FrameKind::Control, Bytes::from(out)) == Enqueued::Overflow {
        shard.close_session(conn, 1008, "slow consumer", CloseReason::SlowConsumer);
        return false;
    }
    true
}

async fn write_loop(shard: Rc<Shard>, conn: Rc<Conn>, mut wr: OwnedWriteHalf<TcpStream>) {
    // Grown on first use: an idle session keeps no write buffer.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        poll_fn(|cx| {
            if !conn.queue.borrow().is_empty() || conn.reader_done.get() {
                Poll::Ready(())
            } else {
                conn.set_writer_waker(cx.waker());
                Poll::Pending
            }
        })
        .await;
        let (frames, close) = conn.queue.borrow_mut().drain_into(&mut buf, MAX_WRITE_BATCH);
        if frames == 0 {
            break; // the reader is done and nothing is left to send
        }
        let len = buf.len();
        conn.write_started.set(Some(Instant::now()));
        let (res, b) = wr.write_all(buf).await;
        conn.write_started.set(None);
        conn.writes_done.set(conn.writes_done.get().wrapping_add(1));
        buf = b;
        buf.clear();
        if res.is_err() {
            conn.set_reason(CloseReason::Io);
            break;
        }
        metrics::add(&shard.stats.bytes_out, len as u64);
        metrics::add(&shard.stats.frames_out, frames as u64);
        if conn.backlogged.get() {
            // Messages waiting for room in the queue (chat deliveries) come in as it drains.
            shard.chat.refill(&shard, &conn);
        }
        if close {
            // Our close frame is out: the server closes the TCP connection first (RFC 6455
            // 7.1.1); the reader sees the peer's EOF or the close timeout ends it.
            // SAFETY: the fd is valid while `wr` (and the reader's half) are alive.
            unsafe {
                libc::shutdown(conn.fd, libc::SHUT_WR);
            }
            break;
        }
        if buf.capacity() > 4 * MAX_WRITE_BATCH {
            buf = Vec::new(); // don't keep a huge buffer after a big message
        }
        let flushed = conn.queue.borrow_mut().take_stopped_at_flush();
        if flushed && !conn.queue.borrow().is_empty() {
            // A reply that must be read on its own (see `FrameKind::DataFlush`): give the peer
            // a moment to read it before what follows, as the reference server's separate
            // event-loop turns do.
            // Boxed, as above: rare, and the writer task lives as long as the session.
            Box::pin(monoio::time::sleep(FLUSH_PAUSE)).await;
        }
    }
    // A reader still blocked on a peer that will never speak again must not outlive us.
    if !conn.reader_done.get() && conn.closing_since.get().is_none() {
        conn.abort(conn.close_reason.get().unwrap_or(CloseReason::Io));
    }
}
