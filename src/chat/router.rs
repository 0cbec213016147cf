//! The embeddable API of the native protocol: handlers for application message types, chosen
//! by exact `type`, then by the longest matching prefix, then a fallback; a middleware chain
//! around them (recovery, timeout, logging, or the application's own); and the session hooks
//! `on_connect`, `on_disconnect` and `on_error`.
//!
//! Built-in types (`ping`, `chat`, `read`, `presence:*`, `join`, `leave`) are handled by imks
//! before the router sees anything. A [`ChatApp`] is built once per shard by a
//! [`ChatFactory`], so handlers may be `!Send`; each routed message runs as its own task on
//! the session's shard, so a slow handler does not hold up the session's other messages.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::auth::Identity;
use crate::http::parse::RequestHead;
use crate::metrics::CloseReason;
use crate::shard::conn::ConnId;
use crate::shard::Shard;

/// What a handler returns: a reply's `data` (sent back with the request's `type` and `id`),
/// nothing, or an error answered with `error {code, message}`.
pub type HandlerResult = Result<Option<serde_json::Value>, HandlerError>;

/// A handler's future; `!Send`, it runs on the session's shard.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult>>>;

/// Why a routed message produced no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The application refused the message; `code` is sent to the client as is.
    #[error("{message}")]
    Refused { code: String, message: String },
    /// The `data` did not have the shape the handler expects.
    #[error("bad data: {0}")]
    BadData(String),
    #[error("handler panicked")]
    Panicked,
    #[error("handler did not finish within {0:?}")]
    Timeout(Duration),
}

impl HandlerError {
    /// The code sent in `error {code}`.
    pub fn code(&self) -> &str {
        match self {
            HandlerError::Refused { code, .. } => code,
            HandlerError::BadData(_) => "bad_data",
            HandlerError::Panicked => "internal",
            HandlerError::Timeout(_) => "timeout",
        }
    }
}

/// One routed message.
pub struct Request {
    pub shard: Rc<Shard>,
    pub session: ConnId,
    pub identity: Rc<Identity>,
    /// The envelope `type`.
    pub kind: String,
    /// The envelope `id`, echoed on the reply.
    pub id: Option<String>,
    /// The envelope `data`, raw (`null` when absent).
    pub data: Box<RawValue>,
}

impl Request {
    /// The `data`, deserialised.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_str(self.data.get()).map_err(|e| HandlerError::BadData(e.to_string()))
    }
}

/// Something that answers routed messages. Closures `Fn(Request) -> impl Future` are handlers.
pub trait Handler: 'static {
    fn call(&self, req: Request) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + 'static,
    Fut: Future<Output = HandlerResult> + 'static,
{
    fn call(&self, req: Request) -> HandlerFuture {
        Box::pin(self(req))
    }
}

/// A layer around every routed handler. Calls `next.run(req)` to go on, or answers itself.
pub trait Middleware: 'static {
    fn call(&self, req: Request, next: Next) -> HandlerFuture;
}

/// The rest of the chain after a middleware.
pub struct Next {
    layers: Rc<[Rc<dyn Middleware>]>,
    index: usize,
    handler: Rc<dyn Handler>,
}

impl Next {
    pub fn run(self, req: Request) -> HandlerFuture {
        match self.layers.get(self.index).cloned() {
            Some(layer) => {
                let next = Next { layers: self.layers, index: self.index + 1, handler: self.handler };
                layer.call(req, next)
            }
            None => self.handler.call(req),
        }
    }
}

/// Turns a panic inside the rest of the chain into [`HandlerError::Panicked`]: the shard lives
/// on and the client gets `error {code: "internal"}`. [`ChatApp::new`] installs it first.
pub struct Recovery;

impl Middleware for Recovery {
    fn call(&self, req: Request, next: Next) -> HandlerFuture {
        // Building the future may panic too (a handler that panics before its first await).
        match std::panic::catch_unwind(AssertUnwindSafe(|| next.run(req))) {
            Ok(fut) => Box::pin(CatchUnwind(fut)),
            Err(_) => Box::pin(std::future::ready(Err(HandlerError::Panicked))),
        }
    }
}

/// A future that reports a panic while polling it as [`HandlerError::Panicked`].
pub struct CatchUnwind(pub HandlerFuture);

impl Future for CatchUnwind {
    type Output = HandlerResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HandlerResult> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(_) => Poll::Ready(Err(HandlerError::Panicked)),
        }
    }
}

/// Answers [`HandlerError::Timeout`] when the rest of the chain takes longer than its limit.
pub struct Timeout(pub Duration);

impl Middleware for Timeout {
    fn call(&self, req: Request, next: Next) -> HandlerFuture {
        let limit = self.0;
        let fut = next.run(req);
        Box::pin(async move {
            monoio::select! {
                r = fut => r,
                _ = monoio::time::sleep(limit) => Err(HandlerError::Timeout(limit)),
            }
        })
    }
}

/// Logs every routed message with its outcome and duration (`tracing`, target `imks::chat`).
pub struct Logging;

impl Middleware for Logging {
    fn call(&self, req: Request, next: Next) -> HandlerFuture {
        let kind = req.kind.clone();
        let user = req.identity.user_id.clone();
        let started = Instant::now();
        let fut = next.run(req);
        Box::pin(async move {
            let r = fut.await;
            let micros = started.elapsed().as_micros() as u64;
            match &r {
                Ok(_) => tracing::info!(target: "imks::chat", kind, user = %user, micros, "handled"),
                Err(e) => tracing::warn!(target: "imks::chat", kind, user = %user, micros, error = %e, "failed"),
            }
            r
        })
    }
}

/// Who initiated the end of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    /// The client closed, or its connection went away.
    Client,
    /// The server closed it (a policy: rate limit, a newer login, a hook).
    Server,
    /// The node is shutting down.
    Shutdown,
    /// The session could not keep up with what it was sent.
    Backpressure,
    /// A protocol or I/O error, or a missed heartbeat.
    Error,
}

/// How a session ended, for `on_disconnect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectInfo {
    pub initiator: Initiator,
    /// The WebSocket close code sent or received, if a close frame was exchanged.
    pub code: Option<u16>,
    pub reason: CloseReason,
}

impl DisconnectInfo {
    pub fn new(reason: CloseReason, code: Option<u16>) -> Self {
        let initiator = match reason {
            CloseReason::Client => Initiator::Client,
            CloseReason::Shutdown => Initiator::Shutdown,
            CloseReason::SlowConsumer => Initiator::Backpressure,
            CloseReason::Policy | CloseReason::Limit | CloseReason::Moved => Initiator::Server,
            CloseReason::Protocol
            | CloseReason::InvalidUtf8
            | CloseReason::TooBig
            | CloseReason::PingTimeout
            | CloseReason::WriteTimeout
            | CloseReason::HeaderTimeout
            | CloseReason::IdleTimeout
            | CloseReason::Io => Initiator::Error,
        };
        Self { initiator, code, reason }
    }
}

/// An `on_connect` refusal: the upgrade is answered with `status` and `message`, no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub message: String,
}

/// A session, as hooks see it.
pub struct SessionInfo<'a> {
    pub id: ConnId,
    pub identity: &'a Identity,
}

type ConnectHook = dyn Fn(&Identity, &RequestHead) -> Result<(), Reject>;
type DisconnectHook = dyn Fn(&Shard, &SessionInfo<'_>, &DisconnectInfo);
type ErrorHook = dyn Fn(&Shard, &SessionInfo<'_>, &str, &HandlerError);

/// Builds a shard's [`ChatApp`]; runs once on each shard's thread.
pub type ChatFactory = std::sync::Arc<dyn Fn() -> ChatApp + Send + Sync>;

/// The application side of the native protocol on one shard.
pub struct ChatApp {
    exact: HashMap<String, Rc<dyn Handler>>,
    /// Longest prefix first.
    prefixes: Vec<(String, Rc<dyn Handler>)>,
    fallback: Option<Rc<dyn Handler>>,
    layers: Vec<Rc<dyn Middleware>>,
    on_connect: Option<Box<ConnectHook>>,
    on_disconnect: Option<Box<DisconnectHook>>,
    on_error: Option<Box<ErrorHook>>,
}

impl Default for ChatApp {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatApp {
    /// An application with no routes and [`Recovery`] as its outermost layer.
    pub fn new() -> Self {
        Self {
            exact: HashMap::new(),
            prefixes: Vec::new(),
            fallback: None,
            layers: vec![Rc::new(Recovery)],
            on_connect: None,
            on_disconnect: None,
            on_error: None,
        }
    }

    /// Handles messages whose `type` is exactly `kind`.
    pub fn route(mut self, kind: &str, h: impl Handler) -> Self {
        self.exact.insert(kind.to_string(), Rc::new(h));
        self
    }

    /// Handles messages whose `type` starts with `prefix`, when no exact route matches; the
    /// longest matching prefix wins.
    pub fn prefix(mut self, prefix: &str, h: impl Handler) -> Self {
        self.prefixes.push((prefix.to_string(), Rc::new(h)));
        self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        self
    }

    /// Handles every other application `type`.
    pub fn fallback(mut self, h: impl Handler) -> Self {
        self.fallback = Some(Rc::new(h));
        self
    }

    /// Adds a middleware inside the ones already added (the first added runs first).
    pub fn layer(mut self, m: impl Middleware) -> Self {
        self.layers.push(Rc::new(m));
        self
    }

    /// Called before the upgrade is answered; an `Err` refuses it with its status.
    pub fn on_connect(mut self, f: impl Fn(&Identity, &RequestHead) -> Result<(), Reject> + 'static) -> Self {
        self.on_connect = Some(Box::new(f));
        self
    }

    /// Called once when a session has ended.
    pub fn on_disconnect(mut self, f: impl Fn(&Shard, &SessionInfo<'_>, &DisconnectInfo) + 'static) -> Self {
        self.on_disconnect = Some(Box::new(f));
        self
    }

    /// Called when a routed handler fails (refused, bad data, panic, timeout), with the `type`.
    pub fn on_error(mut self, f: impl Fn(&Shard, &SessionInfo<'_>, &str, &HandlerError) + 'static) -> Self {
        self.on_error = Some(Box::new(f));
        self
    }

    /// The handler for `kind`: exact, then longest prefix, then fallback.
    pub fn handler_for(&self, kind: &str) -> Option<Rc<dyn Handler>> {
        if let Some(h) = self.exact.get(kind) {
            return Some(h.clone());
        }
        if let Some((_, h)) = self.prefixes.iter().find(|(p, _)| kind.starts_with(p.as_str())) {
            return Some(h.clone());
        }
        self.fallback.clone()
    }

    /// Runs `req` through the middleware chain to its handler; `None` when nothing routes it.
    pub fn dispatch(&self, req: Request) -> Option<HandlerFuture> {
        let handler = self.handler_for(&req.kind)?;
        let layers: Rc<[Rc<dyn Middleware>]> = self.layers.clone().into();
        // The chain itself may panic while being built; the session also guards the whole
        // future, so even an application that removed `Recovery` cannot take the shard down.
        let fut = std::panic::catch_unwind(AssertUnwindSafe(|| Next { layers, index: 0, handler }.run(req)));
        Some(match fut {
            Ok(f) => Box::pin(CatchUnwind(f)),
            Err(_) => Box::pin(std::future::ready(Err(HandlerError::Panicked))),
        })
    }

    pub(crate) fn connect(&self, identity: &Identity, head: &RequestHead) -> Result<(), Reject> {
        match &self.on_connect {
            None => Ok(()),
            Some(f) => match std::panic::catch_unwind(AssertUnwindSafe(|| f(identity, head))) {
                Ok(r) => r,
                Err(_) => Err(Reject { status: 500, message: "on_connect panicked".into() }),
            },
        }
    }

    pub(crate) fn disconnected(&self, shard: &Shard, s: &SessionInfo<'_>, info: &DisconnectInfo) {
        if let Some(f) = &self.on_disconnect {
            if std::panic::catch_unwind(AssertUnwindSafe(|| f(shard, s, info))).is_err() {
                tracing::error!("on_disconnect panicked");
            }
        }
    }

    pub(crate) fn failed(&self, shard: &Shard, s: &SessionInfo<'_>, kind: &str, e: &HandlerError) {
        if let Some(f) = &self.on_error {
            if std::panic::catch_unwind(AssertUnwindSafe(|| f(shard, s, kind, e))).is_err() {
                tracing::error!("on_error panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on(f: HandlerFuture) -> HandlerResult {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
        rt.block_on(f)
    }

    fn named(name: &'static str) -> impl Handler {
        move |_req: Request| async move { Ok(Some(serde_json::json!(name))) }
    }

    #[test]
    fn exact_then_longest_prefix_then_fallback() {
        let app = ChatApp::new()
            .route("a:b", named("exact"))
            .prefix("a:", named("short"))
            .prefix("a:b", named("long"))
            .fallback(named("fallback"));
        let which = |k: &str| app.handler_for(k).is_some();
        assert!(which("zzz"));
        // Resolve by running the handler alone (no shard is needed for the choice itself).
        let pick = |k: &str| {
            let h = app.handler_for(k).unwrap();
            let exact = app.exact.get(k).map(|e| Rc::ptr_eq(e, &h)).unwrap_or(false);
            let prefix = app.prefixes.iter().find(|(_, p)| Rc::ptr_eq(p, &h)).map(|(p, _)| p.clone());
            (exact, prefix)
        };
        assert_eq!(pick("a:b"), (true, None));
        assert_eq!(pick("a:bc"), (false, Some("a:b".into())));
        assert_eq!(pick("a:x"), (false, Some("a:".into())));
        assert_eq!(pick("q"), (false, None));
        assert!(ChatApp::new().handler_for("x").is_none());
    }

    #[test]
    fn catch_unwind_turns_a_panic_while_polling_into_an_error() {
        let f: HandlerFuture = Box::pin(async {
            monoio::time::sleep(Duration::from_millis(1)).await;
            panic!("boom")
        });
        assert_eq!(block_on(Box::pin(CatchUnwind(f))), Err(HandlerError::Panicked));
        let fine: HandlerFuture = Box::pin(async { Ok(Some(serde_json::json!(1))) });
        assert_eq!(block_on(Box::pin(CatchUnwind(fine))), Ok(Some(serde_json::json!(1))));
    }

    #[test]
    fn disconnect_initiators() {
        assert_eq!(DisconnectInfo::new(CloseReason::Client, Some(1000)).initiator, Initiator::Client);
        assert_eq!(DisconnectInfo::new(CloseReason::SlowConsumer, Some(1008)).initiator, Initiator::Backpressure);
        assert_eq!(DisconnectInfo::new(CloseReason::Shutdown, Some(1001)).initiator, Initiator::Shutdown);
        assert_eq!(DisconnectInfo::new(CloseReason::Policy, Some(1008)).initiator, Initiator::Server);
        assert_eq!(DisconnectInfo::new(CloseReason::PingTimeout, None).initiator, Initiator::Error);
        assert_eq!(HandlerError::Timeout(Duration::from_secs(1)).code(), "timeout");
        assert_eq!(HandlerError::Panicked.code(), "internal");
    }
}
