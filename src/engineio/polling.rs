//! The long-polling transport: the handshake, the long-poll GET and the POST, CORS, the
//! protocol's error answers, and forwarding a request to the shard that owns its session.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::packet::{self, Packet};
use super::session::{close, on_packet, open_packet, Transport};
use super::table::start_heartbeat;
use super::{CloseReason, EioApp, EioConfig, EioSession, Engine, Sid};
use crate::http::parse::{Method, RequestHead};
use crate::http::Response;
use crate::shard::Shard;

/// The protocol's error answers: HTTP 400 with `{"code":N,"message":"..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Transport unknown")]
    UnknownTransport,
    #[error("Session ID unknown")]
    UnknownSid,
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    #[error("Bad request")]
    BadRequest,
    #[error("Forbidden")]
    Forbidden,
    #[error("Unsupported protocol version")]
    UnsupportedVersion,
}

impl RequestError {
    pub fn code(self) -> u8 {
        match self {
            RequestError::UnknownTransport => 0,
            RequestError::UnknownSid => 1,
            RequestError::BadHandshakeMethod => 2,
            RequestError::BadRequest => 3,
            RequestError::Forbidden => 4,
            RequestError::UnsupportedVersion => 5,
        }
    }

    pub fn response(self, head: &RequestHead, cfg: &EioConfig) -> Response {
        let mut r = error_body(self);
        cors(head, cfg, &mut r);
        r
    }
}

/// The query of an Engine.IO request.
pub struct EioQuery {
    pub transport: TransportKind,
    pub sid: Option<String>,
}

/// The transport a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Polling,
    WebSocket,
}

/// Checks `EIO` and `transport`.
pub fn parse_query(head: &RequestHead) -> Result<EioQuery, RequestError> {
    if head.query_param("EIO").as_deref() != Some("4") {
        return Err(RequestError::UnsupportedVersion);
    }
    let transport = match head.query_param("transport").as_deref() {
        Some("polling") => TransportKind::Polling,
        Some("websocket") => TransportKind::WebSocket,
        _ => return Err(RequestError::UnknownTransport),
    };
    Ok(EioQuery { transport, sid: head.query_param("sid") })
}

/// Adds the CORS headers for a polling response.
pub fn cors(head: &RequestHead, cfg: &EioConfig, r: &mut Response) {
    let Some(origin) = head.header("origin") else {
        if cfg.cors_origins.iter().any(|o| o == "*") {
            r.headers.push(("Access-Control-Allow-Origin", "*".into()));
        }
        return;
    };
    let allowed = cfg.cors_origins.iter().any(|o| o == "*" || o == origin);
    if allowed {
        r.headers.push(("Access-Control-Allow-Origin", origin.to_string()));
        r.headers.push(("Vary", "Origin".into()));
        if cfg.cors_credentials {
            r.headers.push(("Access-Control-Allow-Credentials", "true".into()));
        }
    }
}

/// Answers a polling request (or its CORS preflight) for `app`.
pub(super) async fn polling(
    shard: &Rc<Shard>,
    engine: &Rc<Engine>,
    app: &Rc<dyn EioApp>,
    head: &RequestHead,
    body: &[u8],
) -> Response {
    let cfg = &engine.cfg;
    if head.method == Method::Options {
        let mut r = Response::new(204, "text/plain", Vec::new());
        cors(head, cfg, &mut r);
        r.headers.push(("Access-Control-Allow-Methods", "GET, POST, OPTIONS".into()));
        r.headers.push(("Access-Control-Allow-Headers", "content-type".into()));
        r.headers.push(("Access-Control-Max-Age", "86400".into()));
        return r;
    }
    let q = match parse_query(head) {
        Ok(q) => q,
        Err(e) => return e.response(head, cfg),
    };
    if q.transport != TransportKind::Polling {
        return RequestError::BadRequest.response(head, cfg);
    }
    let mut r = match (&q.sid, head.method) {
        (None, Method::Get) => match admit(shard, head) {
            Ok(identity) => handshake(shard, engine, app, identity.map(Rc::new)),
            // A refused origin gets no CORS headers: its page may not read the answer.
            Err(refused) if refused.status == 403 => return refused,
            Err(refused) => refused,
        },
        (None, _) => return RequestError::BadHandshakeMethod.response(head, cfg),
        (Some(sid), m @ (Method::Get | Method::Post)) => {
            let post = m == Method::Post;
            // When the request reached the node: requests are ordered by it, not by when the
            // session's shard sees them (see `serve_poll`).
            let arrived = Instant::now();
            match sid.parse::<Sid>() {
                Ok(id) if usize::from(id.shard) != shard.index && usize::from(id.shard) < shard.shard_count() => {
                    forward_poll(shard, engine, usize::from(id.shard), sid.clone(), post, body, arrived).await
                }
                _ => serve_poll(shard, engine, sid, post, body, arrived).await,
            }
        }
        (Some(_), _) => RequestError::BadHandshakeMethod.response(head, cfg),
    };
    cors(head, cfg, &mut r);
    r
}

/// Runs a polling request on the shard that owns its session (there are no sticky sessions: any
/// shard may receive any request) and waits for the answer. Bounded: a lost answer (ring
/// `drop` policy) becomes a 503 after one heartbeat.
async fn forward_poll(
    shard: &Rc<Shard>,
    engine: &Engine,
    owner: usize,
    sid: String,
    post: bool,
    body: &[u8],
    arrived: Instant,
) -> Response {
    let body = Bytes::copy_from_slice(body);
    let run = move |owner: Rc<Shard>| async move {
        match owner.service::<Engine>() {
            Some(engine) => serve_poll(&owner, &engine, &sid, post, &body, arrived).await,
            None => error_body(RequestError::UnknownSid),
        }
    };
    let limit = engine.cfg.ping_interval + engine.cfg.ping_timeout + Duration::from_secs(1);
    let answer = monoio::select! {
        r = shard.call(owner, run) => r,
        _ = monoio::time::sleep(limit) => None,
    };
    answer.unwrap_or_else(|| Response::new(503, "text/plain", "session owner did not answer\n"))
}

/// A polling GET or POST for a session of this shard (the request may have arrived on another
/// shard, at `arrived`). CORS headers are added by the shard that answers the client.
async fn serve_poll(shard: &Shard, engine: &Engine, sid: &str, post: bool, body: &[u8], arrived: Instant) -> Response {
    let Some(s) = engine.get(shard, sid) else {
        // A GET that reached the node before its session closed would have been waiting when
        // the close came, and answered with a noop: so it is, even when it reached this shard
        // only after the close (through another shard). One that came after the close: 400.
        if !post && engine.closed_after(sid, arrived) {
            return Response::new(200, "text/plain; charset=UTF-8", "6");
        }
        return error_body(RequestError::UnknownSid);
    };
    if s.expired() {
        close(shard, &s, CloseReason::PingTimeout, false);
        return error_body(RequestError::UnknownSid);
    }
    if s.is_websocket() && !s.upgrading.get() {
        return error_body(RequestError::BadRequest);
    }
    if post {
        poll_post(shard, &s, body)
    } else {
        poll_get(shard, &s).await
    }
}

fn error_body(e: RequestError) -> Response {
    let body = format!("{{\"code\":{},\"message\":\"{}\"}}", e.code(), e);
    Response::new(if e == RequestError::Forbidden { 403 } else { 400 }, "application/json", body)
}

fn payload_response(s: &EioSession) -> Response {
    let packets: Vec<Packet> = s.queue.borrow_mut().take_all();
    let mut body = Vec::with_capacity(64);
    packet::encode_payload(&packets, &mut body);
    Response::new(200, "text/plain; charset=UTF-8", body)
}

fn handshake(
    shard: &Rc<Shard>,
    engine: &Rc<Engine>,
    app: &Rc<dyn EioApp>,
    identity: Option<Rc<crate::auth::Identity>>,
) -> Response {
    let Some(s) = engine.create(shard, app.clone(), Transport::Polling) else {
        return Response::new(503, "text/plain", "no session slots\n");
    };
    *s.identity.borrow_mut() = identity;
    s.queue.borrow_mut().push_control(open_packet(&s, &["websocket"]));
    start_heartbeat(&s);
    app.on_open(shard, &s);
    payload_response(&s)
}

/// How long a GET during an upgrade waits before it is answered with a noop (the reference
/// server's upgrade check period).
const UPGRADE_CHECK: Duration = Duration::from_millis(100);

/// A long-poll: answers at once with what is queued, or waits until something is.
async fn poll_get(shard: &Shard, s: &Rc<EioSession>) -> Response {
    if s.poll_active.get() {
        // Two GETs at once: the protocol closes the session; the pending one gets `1`.
        close(shard, s, CloseReason::TransportError, true);
        return error_body(RequestError::BadRequest);
    }
    s.poll_active.set(true);
    // Counted while this GET is parked, whichever way it ends (`imks_engineio_polls_waiting`).
    let _parked = Parked::new(&shard.stats);
    poll_fn(|cx| {
        if !s.queue.borrow().is_empty() || s.closed.get() || s.upgrading.get() || s.is_websocket() {
            Poll::Ready(())
        } else {
            *s.poll_waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    if s.upgrading.get() && s.queue.borrow().is_empty() && !s.closed.get() {
        // As the reference server does, release a GET during an upgrade with a noop only after
        // up to one check period, so a `5` that follows the probe at once finishes the upgrade
        // first (and this GET then gets 400).
        let settled = poll_fn(|cx| {
            if !s.upgrading.get() || s.closed.get() || !s.queue.borrow().is_empty() {
                Poll::Ready(())
            } else {
                *s.poll_waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        monoio::select! {
            _ = settled => {},
            _ = monoio::time::sleep(UPGRADE_CHECK) => {},
        }
    }
    s.poll_active.set(false);
    if s.is_websocket() && !s.upgrading.get() && !s.closed.get() {
        // The upgrade finished while this GET waited: polling is over for this session.
        return error_body(RequestError::BadRequest);
    }
    if s.queue.borrow().is_empty() {
        // Closed by the client, or upgrading: a noop lets the client pause polling.
        return Response::new(200, "text/plain; charset=UTF-8", "6");
    }
    payload_response(s)
}

fn poll_post(shard: &Shard, s: &Rc<EioSession>, body: &[u8]) -> Response {
    let max = s.engine.cfg.max_payload;
    if body.len() > max {
        close(shard, s, CloseReason::TransportError, true);
        return Response::new(413, "text/plain", "payload too large\n");
    }
    let packets = match packet::decode_payload(Bytes::copy_from_slice(body), max) {
        Ok(p) => p,
        Err(_) => {
            close(shard, s, CloseReason::ParseError, true);
            return error_body(RequestError::BadRequest);
        }
    };
    for p in packets {
        if !on_packet(shard, s, p) {
            break;
        }
    }
    Response::new(200, "text/html", "ok")
}

/// The authenticator's verdict on a handshake ([`crate::auth::Gate::admit`]).
pub(super) fn admit(shard: &Shard, head: &RequestHead) -> Result<Option<crate::auth::Identity>, Response> {
    match shard.require::<crate::auth::Gate>() {
        Ok(gate) => gate.admit(head),
        Err(e) => Err(Response::refusal(500, "internal", &e.to_string())),
    }
}

/// A long-poll parked on a shard, counted in its stats while it lives.
struct Parked<'a>(&'a crate::metrics::ShardStats);

impl<'a> Parked<'a> {
    fn new(stats: &'a crate::metrics::ShardStats) -> Self {
        crate::metrics::add(&stats.polls_waiting, 1);
        Self(stats)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        crate::metrics::sub(&self.0.polls_waiting, 1);
    }
}
