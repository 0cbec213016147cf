//! A WebSocket session on its shard, one task with two halves: a reader that decodes frames and
//! hands messages to the endpoint, and a writer that drains the session's bounded send queue,
//! coalescing every queued frame into one socket write.
//!
//! An idle session is kept small: its pending read holds a 256-byte buffer, bursts are read
//! into the shard's scratch buffer, and the decoder is let go between messages.
//!
//! Heartbeats, write stalls and the close timeout are enforced by the shard's ticker through
//! the session's slab entry; it ends a stuck read or write by shutting the socket down.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use tungstenite::Message;

use super::conn::{Conn, Enqueued, FrameKind, Phase};
use super::route::WsHandler;
use super::Shard;
use crate::metrics::{self, CloseReason};
use crate::ws::codec::{CodecLimits, WsCodec, WsError};

/// A session's own read buffer, which its pending read holds while the session waits for the
/// peer. Small, because most sessions are idle or exchange small messages; a read that fills
/// it goes on straight into the shard's scratch buffer, so bursts still arrive in big reads.
const FIRST_READ: usize = 256;

/// The most a session's own read buffer grows to while reads keep filling it (a client that
/// pipelines requests), saving the extra read into the scratch buffer. It shrinks back at the
/// first small read, so an idle session holds [`FIRST_READ`] bytes.
const MAX_FIRST_READ: usize = 4096;

/// How long the writer waits after a frame that must be read on its own before sending more.
const FLUSH_PAUSE: Duration = Duration::from_millis(1);

/// Most bytes the writer gathers into one socket write.
const MAX_WRITE_BATCH: usize = 256 * 1024;

/// A write this small does not keep its buffer for the next one.
const SMALL_WRITE: usize = 1024;

/// Runs the session of an upgraded connection (starting with the `leftover` bytes read past the
/// upgrade request) until it ends, then removes the connection from the shard. `ip` is the
/// connection's count against its address, held until then.
pub async fn run(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    stream: TcpStream,
    leftover: Vec<u8>,
    handler: Rc<dyn WsHandler>,
    ip: Option<crate::limits::IpGuard>,
) {
    let _ip = ip;
    conn.phase.set(Phase::WebSocket);
    conn.deadline.set(None);
    conn.last_rx.set(Instant::now());
    metrics::add(&shard.stats.websockets_active, 1);
    if shard.stopping.is_set() {
        shard.close_session(&conn, 1001, "server shutting down", CloseReason::Shutdown);
    }

    let (rd, wr) = stream.into_split();
    handler.on_open(&shard, &conn);
    // Both directions in one task (its size is the two futures side by side): one allocation
    // and one task per session instead of two.
    monoio::join!(read_loop(&shard, &conn, rd, leftover, &*handler), write_loop(&shard, &conn, wr));
    handler.on_close(&shard, &conn);
    // Whatever still waited for room in the queue, or was queued and never written (paced
    // frames: stored messages, acks), goes back to its senders: here, for every endpoint.
    shard.drop_paced(conn.id);
    shard.stats.websockets_active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    shard.unregister(&conn);
    shard.stats.closed(conn.close_reason.get().unwrap_or(CloseReason::Client));
}

/// Reads and decodes the peer's frames until the session ends, handing messages to `handler`.
async fn read_loop(
    shard: &Shard,
    conn: &Rc<Conn>,
    mut rd: OwnedReadHalf<TcpStream>,
    leftover: Vec<u8>,
    handler: &dyn WsHandler,
) {
    let ws = &shard.node.config.ws;
    let mut codec =
        WsCodec::new(CodecLimits { max_message_bytes: ws.max_message_bytes, max_frame_bytes: ws.max_frame_bytes });
    let mut keep_reading = true;
    let mut paused_at = None;
    if !leftover.is_empty() {
        codec.feed(&leftover);
        drop(leftover);
        keep_reading = process_all(shard, conn, &mut codec, handler, &mut paused_at).await;
    }
    let mut first: Vec<u8> = Vec::new();
    // What the session's own buffer should hold for its next wait: it follows the size of
    // recent reads, between FIRST_READ and MAX_FIRST_READ.
    let mut want = FIRST_READ;
    // Whether the last read filled its buffer, so more is probably waiting: read on at once.
    let mut more = false;
    while keep_reading {
        let read = if more {
            read_scratch(shard, conn, &mut codec)
        } else {
            if want == FIRST_READ {
                // Reads are small (or the session is idle) and it is about to wait for its
                // peer: it keeps no decoder meanwhile. A busy session keeps its own.
                codec.release_if_idle();
            }
            if first.capacity() != want {
                first = Vec::with_capacity(want);
            }
            let (res, b) = rd.read(first).await;
            first = b;
            let read = res.map(|n| {
                codec.feed(&first[..n]);
                let full = n == first.capacity();
                if full {
                    want = (want * 2).min(MAX_FIRST_READ);
                } else if n < want / 4 {
                    want = FIRST_READ;
                }
                (n, full)
            });
            first.clear();
            read
        };
        match read {
            Ok((0, _)) => {
                conn.set_reason(CloseReason::Client);
                break;
            }
            Ok((n, full)) => {
                more = full;
                conn.last_rx.set(Instant::now());
                metrics::add(&shard.stats.bytes_in, n as u64);
                keep_reading = process_all(shard, conn, &mut codec, handler, &mut paused_at).await;
            }
            // Nothing was waiting after all (or a signal cut the read short): wait for more.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {
                more = false
            }
            Err(_) => {
                conn.set_reason(CloseReason::Io);
                break;
            }
        }
    }
    conn.reader_done.set(true);
    conn.wake_writer();
}

/// Reads what the socket has right now into the shard's scratch buffer and feeds it to the
/// codec, without waiting. Returns the byte count (0 at end of stream) and whether the read
/// filled the buffer; `WouldBlock` when nothing was waiting.
fn read_scratch(shard: &Shard, conn: &Conn, codec: &mut WsCodec) -> std::io::Result<(usize, bool)> {
    let mut scratch = shard.read_scratch.borrow_mut();
    // SAFETY: `conn.fd` is this session's socket, open while the session runs; the pointer and
    // length describe the scratch buffer, borrowed exclusively for the call.
    let n = unsafe { libc::recv(conn.fd, scratch.as_mut_ptr().cast(), scratch.len(), libc::MSG_DONTWAIT) };
    // A negative count is an error, reported through errno.
    let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
    codec.feed(&scratch[..n]);
    Ok((n, n == scratch.len()))
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
/// progress at the last pause. A session whose queue is full of paced frames (acks,
/// stored messages; see [`Shard::deliver_paced`]) instead waits for room for as long as the write
/// timeout allows: those frames are never dropped, so the client is throttled, not closed.
async fn process_all(
    shard: &Shard,
    conn: &Rc<Conn>,
    codec: &mut WsCodec,
    handler: &dyn WsHandler,
    paused_at: &mut Option<u64>,
) -> bool {
    let mut flow = process(shard, conn, codec, handler, false);
    while flow == Flow::Paused {
        if conn.backlogged.get() {
            // The queue is full of what the server owes this client (acks, stored messages)
            // and more waits behind it: read nothing more until the client takes some, which
            // pushes back on a client that sends faster than it reads. One that never reads
            // again is ended by the write timeout.
            poll_fn(|cx| {
                if !conn.queue.borrow().is_full() || conn.close_reason.get().is_some() {
                    Poll::Ready(())
                } else {
                    conn.set_reader_waker(cx.waker());
                    Poll::Pending
                }
            })
            .await;
            if conn.close_reason.get().is_some() {
                return false;
            }
            flow = process(shard, conn, codec, handler, false);
            continue;
        }
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

async fn write_loop(shard: &Shard, conn: &Conn, mut wr: OwnedWriteHalf<TcpStream>) {
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
        // While the shard is busy, broadcasts wait for its next flush to share this write.
        shard.coalesce.hold(conn).await;
        let (frames, close) = conn.queue.borrow_mut().drain_into(&mut buf, MAX_WRITE_BATCH);
        if frames == 0 {
            break; // the reader is done and nothing is left to send
        }
        let len = buf.len();
        conn.write_started.set(Some(Instant::now()));
        // Written by hand rather than with `write_all`: its future would sit in every
        // session's task for the session's whole life.
        let mut sent = 0;
        let mut failed = false;
        while sent < len {
            let (res, slice) = wr.write(buf.slice(sent..)).await;
            buf = slice.into_inner();
            match res {
                Ok(n) if n > 0 => sent += n,
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        conn.write_started.set(None);
        conn.writes_done.set(conn.writes_done.get().wrapping_add(1));
        buf.clear();
        if failed {
            conn.set_reason(CloseReason::Io);
            break;
        }
        metrics::add(&shard.stats.bytes_out, len as u64);
        metrics::add(&shard.stats.frames_out, frames as u64);
        metrics::add(&shard.stats.ws_writes, 1);
        let written = conn.queue.borrow_mut().take_written_tag();
        if written != 0 {
            // Tracked frames this write took need no routing again if the session ends.
            shard.written(conn.id, written);
        }
        if conn.backlogged.get() {
            // Paced frames waiting for room in the queue come in as it drains.
            shard.refill(conn);
        }
        conn.wake_reader();
        if close {
            // Our close frame is out: the server closes the TCP connection first (RFC 6455
            // 7.1.1); the reader sees the peer's EOF or the close timeout ends it.
            // SAFETY: the fd is valid while `wr` (and the reader's half) are alive.
            unsafe {
                libc::shutdown(conn.fd, libc::SHUT_WR);
            }
            break;
        }
        if buf.capacity() > 4 * MAX_WRITE_BATCH || len <= SMALL_WRITE {
            // Keep no huge buffer after a big message, and none at all after a small write: a
            // session that writes little (most are idle) holds no write buffer, while a busy
            // one, whose writes gather many frames, reuses its own.
            buf = Vec::new();
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
    conn.wake_reader();
    // A reader still blocked on a peer that will never speak again must not outlive us.
    if !conn.reader_done.get() && conn.closing_since.get().is_none() {
        conn.abort(conn.close_reason.get().unwrap_or(CloseReason::Io));
    }
}
