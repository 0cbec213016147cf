//! One TCP connection on a shard, from accept to close: HTTP/1.1 with keep-alive and
//! pipelining, limits and timeouts, and the switch to a WebSocket session on upgrade.
//!
//! Timeouts are not timers of their own: the connection records its phase and deadline in its
//! slab entry, and the shard's ticker shuts the socket's read side when a deadline passes, which
//! ends the pending read with EOF here.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Instant;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::conn::{Conn, Phase};
use super::route::{Adopt, Route, WsHandler};
use super::{Shard, ShardMsg};
use crate::http::parse::{parse_head, write_response, HttpError, Limits, Parsed};
use crate::http::{http_date, Response};
use crate::metrics::{self, CloseReason};
use crate::ws::handshake::{validate_upgrade, write_upgrade_response, HandshakeError};

/// What a connection reads a request into at first: most request heads fit, and a connection
/// waiting for its next request (keep-alive, or a client that connected and said nothing yet)
/// holds only this. A request that needs more grows it to `http.read_buffer_bytes` and beyond.
const FIRST_READ: usize = 2048;

/// Serves one accepted connection until it closes, then removes it from the shard.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let max_per_ip = shard.node.config.limits.max_connections_per_ip;
    let Some(ip) = shard.node.ip_counter.try_acquire(peer.ip(), max_per_ip) else {
        metrics::add(&shard.stats.limit_ip, 1);
        Box::pin(reject_over_limit(&shard, stream, b"too many connections from this address\n")).await;
        return;
    };
    let Some(conn) = shard.register(stream.as_raw_fd()) else {
        Box::pin(reject_over_limit(&shard, stream, b"connection limit reached\n")).await;
        return;
    };
    let mut ip = Some(ip);
    match http_loop(&shard, &conn, stream, &mut ip).await {
        Ended::Closed(reason) => {
            shard.unregister(&conn);
            shard.stats.closed(conn.close_reason.get().unwrap_or(reason));
        }
        Ended::Upgraded(stream, leftover, handler) => {
            // The session runs as a task of its own, so this one ends and frees everything the
            // HTTP phase needed: a long-lived session keeps only its own state.
            monoio::spawn(super::websocket::run(shard, conn, stream, leftover, handler, ip));
        }
    }
}

/// How the HTTP phase of a connection ended.
enum Ended {
    /// The connection is closed (or moved to another shard), for this reason.
    Closed(CloseReason),
    /// It was upgraded to a WebSocket session served on this shard, starting with `leftover`.
    Upgraded(TcpStream, Vec<u8>, Rc<dyn WsHandler>),
}

impl From<CloseReason> for Ended {
    fn from(reason: CloseReason) -> Self {
        Ended::Closed(reason)
    }
}

async fn reject_over_limit(shard: &Shard, mut stream: TcpStream, body: &[u8]) {
    let mut out = Vec::with_capacity(256);
    write_response(&mut out, 503, "text/plain", &[("Retry-After", "1")], body, false, &http_date());
    let write = stream.write_all(out);
    let _ = monoio::time::timeout(shard.node.config.http.header_timeout, write).await;
    shard.stats.closed(CloseReason::Limit);
}

fn error_reason(e: &HttpError) -> CloseReason {
    match e {
        HttpError::HeadTooLarge | HttpError::TooManyHeaders | HttpError::BodyTooLarge => CloseReason::TooBig,
        HttpError::Malformed(_) | HttpError::UnsupportedTransferEncoding => CloseReason::Protocol,
    }
}

/// `ip` is the connection's count against its address; a hand-off takes it along.
async fn http_loop(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    mut stream: TcpStream,
    ip: &mut Option<crate::limits::IpGuard>,
) -> Ended {
    let cfg = &shard.node.config.http;
    let limits =
        Limits { max_head_bytes: cfg.max_head_bytes, max_headers: cfg.max_headers, max_body_bytes: cfg.max_body_bytes };
    // Both grow on demand: a connection waiting for its first or next request holds little.
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    set_phase(conn, Phase::HttpIdle, cfg.idle_timeout);
    loop {
        // Answer every complete request already buffered (pipelining), in order.
        let mut start = 0;
        while start < buf.len() {
            let head = match parse_head(&buf[start..], &limits) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Complete(head)) => head,
                Err(e) => {
                    let body = format!("{e}\n");
                    write_response(&mut out, e.status(), "text/plain", &[], body.as_bytes(), false, &http_date());
                    let _ = flush(shard, conn, &mut stream, &mut out).await;
                    return error_reason(&e).into();
                }
            };
            let body_end = start + head.head_len + head.content_length;
            if buf.len() < body_end {
                break;
            }
            conn.phase.set(Phase::HttpBusy);
            metrics::add(&shard.stats.http_requests, 1);
            let keep_alive = head.keep_alive && !shard.stopping.is_set();
            let route = shard.router().route(shard, &head);
            match route {
                Route::WebSocket(handler) => match validate_upgrade(&head) {
                    Ok(accept) => {
                        write_upgrade_response(&mut out, &accept, None);
                        if flush(shard, conn, &mut stream, &mut out).await.is_err() {
                            return CloseReason::Io.into();
                        }
                        return Ended::Upgraded(stream, buf[body_end..].to_vec(), handler);
                    }
                    Err(e) => {
                        handshake_error(&mut out, &e);
                        let _ = flush(shard, conn, &mut stream, &mut out).await;
                        return CloseReason::Protocol.into();
                    }
                },
                Route::HandOff { owner, adopt } => {
                    return Ended::Closed(match validate_upgrade(&head) {
                        Ok(accept) => {
                            write_upgrade_response(&mut out, &accept, None);
                            if flush(shard, conn, &mut stream, &mut out).await.is_err() {
                                return CloseReason::Io.into();
                            }
                            Box::pin(hand_off(shard, stream, owner, adopt, buf[body_end..].to_vec(), ip.take())).await
                        }
                        Err(e) => {
                            handshake_error(&mut out, &e);
                            let _ = flush(shard, conn, &mut stream, &mut out).await;
                            CloseReason::Protocol
                        }
                    });
                }
                Route::Http(handler) => {
                    let body = &buf[start + head.head_len..body_end];
                    let resp = handler.respond(shard, &head, body).await;
                    write(&mut out, &resp, keep_alive);
                }
                Route::Fixed(resp) => write(&mut out, &resp, keep_alive),
            }
            start = body_end;
            if !keep_alive {
                let _ = flush(shard, conn, &mut stream, &mut out).await;
                return Ended::Closed(if shard.stopping.is_set() {
                    CloseReason::Shutdown
                } else {
                    CloseReason::Client
                });
            }
        }
        buf.drain(..start);
        if !out.is_empty() && flush(shard, conn, &mut stream, &mut out).await.is_err() {
            return CloseReason::Io.into();
        }
        if buf.is_empty() {
            if shard.stopping.is_set() {
                return CloseReason::Shutdown.into();
            }
            set_phase(conn, Phase::HttpIdle, cfg.idle_timeout);
        } else if conn.phase.get() != Phase::HttpHead {
            // The header deadline runs from the first byte of a request until it is complete,
            // body included: a trickling client cannot hold the connection forever.
            set_phase(conn, Phase::HttpHead, cfg.header_timeout);
        }

        if buf.is_empty() && buf.capacity() != FIRST_READ.min(cfg.read_buffer_bytes) {
            // Between requests: wait with a small buffer, whatever the last request needed.
            buf = Vec::with_capacity(FIRST_READ.min(cfg.read_buffer_bytes));
        } else if buf.capacity() - buf.len() < 512 {
            buf.reserve(buf.capacity().max(cfg.read_buffer_bytes));
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => {
                return Ended::Closed(match conn.close_reason.get() {
                    Some(CloseReason::HeaderTimeout) => {
                        write_response(
                            &mut out,
                            408,
                            "text/plain",
                            &[],
                            b"request header timeout\n",
                            false,
                            &http_date(),
                        );
                        let _ = flush(shard, conn, &mut stream, &mut out).await;
                        CloseReason::HeaderTimeout
                    }
                    Some(r) => r,
                    None => CloseReason::Client,
                });
            }
            Ok(n) => metrics::add(&shard.stats.bytes_in, n as u64),
            Err(_) => return conn.close_reason.get().unwrap_or(CloseReason::Io).into(),
        }
    }
}

/// Moves an upgraded socket to the shard that owns its session: a duplicate of the descriptor
/// travels over the ring and this shard's copy is closed, so the socket is registered with one
/// driver at a time. On the owner, `adopt` says who serves it.
async fn hand_off(
    shard: &Shard,
    stream: TcpStream,
    owner: usize,
    adopt: Adopt,
    leftover: Vec<u8>,
    ip: Option<crate::limits::IpGuard>,
) -> CloseReason {
    // SAFETY: `dup` on a descriptor we own; the result is checked before use.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    drop(stream);
    if fd < 0 {
        return CloseReason::Io;
    }
    // SAFETY: `fd` was just returned by `dup` and is owned by nothing else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let task = move |shard: &Rc<Shard>| {
        // Without a handler the session ended meanwhile: the socket closes when dropped.
        let Some(handler) = adopt(shard) else { return };
        let std_stream = std::net::TcpStream::from(owned);
        if std_stream.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(stream) = TcpStream::from_std(std_stream) else { return };
        monoio::spawn(serve_adopted(shard.clone(), stream, leftover, handler, ip));
    };
    shard.push_ring(owner, ShardMsg::Invoke(Box::new(task))).await;
    CloseReason::Moved
}

/// Serves a WebSocket that another shard accepted and upgraded, until it closes.
async fn serve_adopted(
    shard: Rc<Shard>,
    stream: TcpStream,
    leftover: Vec<u8>,
    handler: Rc<dyn WsHandler>,
    ip: Option<crate::limits::IpGuard>,
) {
    let Some(conn) = shard.register(stream.as_raw_fd()) else {
        shard.stats.closed(CloseReason::Limit);
        return;
    };
    super::websocket::run(shard, conn, stream, leftover, handler, ip).await;
}

fn set_phase(conn: &Conn, phase: Phase, timeout: std::time::Duration) {
    conn.phase.set(phase);
    conn.deadline.set(Some(Instant::now() + timeout));
}

fn write(out: &mut Vec<u8>, resp: &Response, keep_alive: bool) {
    let headers: Vec<(&str, &str)> = resp.headers.iter().map(|(a, b)| (*a, b.as_str())).collect();
    write_response(out, resp.status, resp.content_type, &headers, &resp.body, keep_alive, &http_date());
}

fn handshake_error(out: &mut Vec<u8>, e: &HandshakeError) {
    let body = format!("{e}\n");
    write_response(out, e.status(), "text/plain", e.response_headers(), body.as_bytes(), false, &http_date());
}

/// Writes the pending responses. The shard's ticker aborts a write that stalls past
/// `websocket.write_timeout_ms`, so a client that never reads cannot pin the connection.
async fn flush(shard: &Shard, conn: &Conn, stream: &mut TcpStream, out: &mut Vec<u8>) -> std::io::Result<()> {
    let pending = std::mem::take(out);
    let n = pending.len();
    conn.write_started.set(Some(Instant::now()));
    let (res, mut back) = stream.write_all(pending).await;
    conn.write_started.set(None);
    back.clear();
    *out = back;
    res?;
    metrics::add(&shard.stats.bytes_out, n as u64);
    Ok(())
}
