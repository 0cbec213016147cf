//! What a node serves: the HTTP routes (`/health`, `/metrics`) and the WebSocket endpoints
//! (`/ws-echo`). Protocol code lives in `http` and `ws`; this module only decides which handler
//! answers which path.

pub mod echo;
pub mod eio_echo;
pub mod im;
pub mod sio_conformance;

use std::rc::Rc;

use crate::config::Config;
use crate::engineio::{self, EioApp, EioWs, TransportKind};
use crate::http::parse::{Method, RequestHead};
use crate::metrics::{self, render_prometheus};
use crate::shard::Shard;
use crate::socketio::SocketIo;
use crate::ws::WsHandler;

/// The applications a shard serves, built on the shard itself so handlers may be `!Send`.
pub struct Apps {
    /// `/engine.io/`: the raw Engine.IO echo of the conformance application (part A).
    pub eio_echo: Option<Rc<dyn EioApp>>,
    /// `/socket.io/`: the Socket.IO server.
    pub socketio: Option<Rc<SocketIo>>,
    /// `/ws`: the application's routes and hooks for the native protocol, if it has any.
    pub chat: Option<Rc<crate::chat::router::ChatApp>>,
}

/// Builds the Socket.IO server of one shard; called on each shard's own thread, so what it
/// builds may be `!Send`.
pub type SocketIoFactory = std::sync::Arc<dyn Fn() -> SocketIo + Send + Sync>;

impl Apps {
    pub fn new(config: &Config, factories: &crate::node::AppFactories) -> Self {
        let chat = factories.chat.as_ref().map(|f| Rc::new(f()));
        if config.conformance {
            return Self {
                eio_echo: Some(Rc::new(eio_echo::EioEcho)),
                socketio: Some(Rc::new(sio_conformance::build(config.sio.clone()))),
                chat,
            };
        }
        let socketio = match &factories.socketio {
            Some(f) => f(),
            // Without an application, `/socket.io/` serves the IM events (`im`).
            None => im::build(config),
        };
        Self { eio_echo: None, socketio: Some(Rc::new(socketio)), chat }
    }
}

/// Where a request goes.
pub enum Route {
    Http(HttpRoute),
    WebSocket(Rc<dyn WsHandler>),
    /// A WebSocket upgrade for an Engine.IO session that another shard owns: after the
    /// handshake the socket moves to that shard.
    HandOff {
        owner: usize,
        sid: String,
    },
}

pub enum HttpRoute {
    Health,
    Metrics,
    /// A WebSocket endpoint asked for without an upgrade.
    UpgradeRequired,
    MethodNotAllowed,
    NotFound,
    /// An Engine.IO polling request (or its preflight) for this app.
    EnginePolling(Rc<dyn EioApp>),
    /// An answer known at routing time (a protocol error).
    Fixed(Response),
}

/// An HTTP response to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status, content_type, headers: Vec::new(), body: body.into() }
    }

    /// A refusal with a JSON body `{"error": code, "message": ...}`; a 401 also names the
    /// scheme it wants (`WWW-Authenticate: Bearer`).
    pub fn refusal(status: u16, code: &str, message: &str) -> Self {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body { error: code, message }).unwrap_or_default();
        let mut r = Response::new(status, "application/json", body);
        if status == 401 {
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
        }
        r
    }
}

/// Who `token` says the client is, for every protocol: the authenticator's answer, with the
/// user id and tenant held to the name rules (`limits.max_name_bytes`, no control characters),
/// since they become room keys and routing keys. A refusal is counted in
/// `imks_auth_failures_total`.
pub fn identify(shard: &Shard, token: Option<&str>) -> Result<crate::auth::Identity, crate::auth::AuthError> {
    use crate::auth::AuthError;
    let max = shard.node.config.limits.max_name_bytes;
    let identity = shard.node.auth.authenticate(token, crate::auth::unix_now()).and_then(|i| {
        if crate::names::validate_name("user", &i.user_id, max).is_err() {
            Err(AuthError::InvalidClaim("user id"))
        } else if crate::names::validate_name("tenant", &i.tenant, max).is_err() {
            Err(AuthError::InvalidClaim("tenant"))
        } else {
            Ok(i)
        }
    });
    if identity.is_err() {
        metrics::add(&shard.stats.auth_failures, 1);
    }
    identity
}

/// Refuses, with 403, a request whose `Origin` the policy does not allow.
pub fn check_origin(shard: &Shard, head: &RequestHead) -> Result<(), Response> {
    if shard.node.origins.allows(head.header("origin"), head.header("host")) {
        return Ok(());
    }
    metrics::add(&shard.stats.origin_refused, 1);
    Err(Response::refusal(403, "origin_not_allowed", "this Origin may not connect"))
}

/// Decides an Engine.IO handshake before any session exists: a refused origin gets 403, a
/// token that is given but does not identify the client 401. A missing token is no error here:
/// Socket.IO asks for one in CONNECT.
pub fn admit(shard: &Shard, head: &RequestHead) -> Result<Option<crate::auth::Identity>, Response> {
    check_origin(shard, head)?;
    let Some(token) = crate::auth::token_from_request(head) else { return Ok(None) };
    identify(shard, Some(&token)).map(Some).map_err(|e| Response::refusal(401, e.code(), &e.to_string()))
}

pub fn route(shard: &Shard, head: &RequestHead) -> Route {
    let get = head.method == Method::Get;
    let path = head.path.as_str();
    if let Some(app) = engine_app(shard, path) {
        return engine_route(shard, app, head);
    }
    match path {
        "/ws-echo" if get && head.is_websocket_upgrade() => Route::WebSocket(Rc::new(echo::Echo)),
        "/ws" if get && head.is_websocket_upgrade() => match crate::chat::session::accept(shard, head) {
            Ok(handler) => Route::WebSocket(handler),
            Err(refusal) => Route::Http(HttpRoute::Fixed(refusal)),
        },
        "/ws" if get => Route::Http(HttpRoute::UpgradeRequired),
        "/ws-echo" if get => Route::Http(HttpRoute::UpgradeRequired),
        "/health" | "/metrics" | "/ws-echo" | "/ws" if !get => Route::Http(HttpRoute::MethodNotAllowed),
        "/health" => Route::Http(HttpRoute::Health),
        "/metrics" => Route::Http(HttpRoute::Metrics),
        _ => Route::Http(HttpRoute::NotFound),
    }
}

/// The Engine.IO app mounted at `path`, if any.
fn engine_app(shard: &Shard, path: &str) -> Option<Rc<dyn EioApp>> {
    match path {
        "/engine.io/" | "/engine.io" => shard.apps.eio_echo.clone(),
        "/socket.io/" | "/socket.io" => shard.apps.socketio.clone().map(|io| io as Rc<dyn EioApp>),
        _ => None,
    }
}

fn engine_route(shard: &Shard, app: Rc<dyn EioApp>, head: &RequestHead) -> Route {
    let cfg = &shard.node.config.eio;
    if !head.is_websocket_upgrade() {
        return Route::Http(HttpRoute::EnginePolling(app));
    }
    let q = match engineio::parse_query(head) {
        Ok(q) => q,
        Err(e) => return Route::Http(HttpRoute::Fixed(e.response(head, cfg))),
    };
    if q.transport != TransportKind::WebSocket {
        return Route::Http(HttpRoute::Fixed(engineio::RequestError::BadRequest.response(head, cfg)));
    }
    let upgrade_of = match &q.sid {
        None => None,
        Some(sid) => match sid.parse::<crate::shard::session::SessionId>().map(|id| usize::from(id.shard)) {
            Ok(owner) if owner != shard.index && owner < shard.node.stats.len() => {
                return Route::HandOff { owner, sid: sid.clone() };
            }
            _ => match shard.engine.get(shard, sid) {
                // A session already on a WebSocket: `EioWs` answers 101 and closes at once.
                Some(s) => Some(s),
                None => return Route::Http(HttpRoute::Fixed(engineio::RequestError::UnknownSid.response(head, cfg))),
            },
        },
    };
    if upgrade_of.is_some() {
        return Route::WebSocket(Rc::new(EioWs::new(app, upgrade_of)));
    }
    match admit(shard, head) {
        Ok(identity) => Route::WebSocket(Rc::new(EioWs::new(app, None).with_identity(identity.map(Rc::new)))),
        Err(refused) => Route::Http(HttpRoute::Fixed(refused)),
    }
}

pub async fn respond(shard: &Rc<Shard>, route: HttpRoute, head: &RequestHead, body: &[u8]) -> Response {
    match route {
        HttpRoute::Health => health(shard).await,
        HttpRoute::Metrics => {
            let up = shard.probe_sidecar().await.is_some();
            Response::new(
                200,
                "text/plain; version=0.0.4",
                render_prometheus(&shard.node.stats, shard.node.started, up),
            )
        }
        HttpRoute::EnginePolling(app) => engineio::polling(shard, &app, head, body).await,
        HttpRoute::Fixed(r) => r,
        HttpRoute::UpgradeRequired => {
            let mut r = Response::new(426, "text/plain", "this endpoint speaks WebSocket only\n");
            r.headers.push(("Upgrade", "websocket".into()));
            r.headers.push(("Sec-WebSocket-Version", "13".into()));
            r
        }
        HttpRoute::MethodNotAllowed => {
            let mut r = Response::new(405, "text/plain", "method not allowed\n");
            r.headers.push(("Allow", "GET".into()));
            r
        }
        HttpRoute::NotFound => Response::new(404, "text/plain", "not found\n"),
    }
}

#[derive(serde::Serialize)]
struct Health<'a> {
    status: &'static str,
    version: &'static str,
    uptime_s: u64,
    sidecar: Option<crate::sidecar::SidecarHealth>,
    shards: Vec<ShardHealth<'a>>,
}

#[derive(serde::Serialize)]
struct ShardHealth<'a> {
    shard: usize,
    driver: &'a str,
    connections: u64,
    websockets: u64,
}

/// `/health`: 200 when the node and its sidecar answer, 503 when the sidecar does not or the
/// node is shutting down.
async fn health(shard: &Shard) -> Response {
    let sidecar = shard.probe_sidecar().await;
    let stopping = shard.node.is_stopping();
    let status = match (&sidecar, stopping) {
        (_, true) => "stopping",
        (Some(_), false) => "ok",
        (None, false) => "degraded",
    };
    let h = Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: shard.node.started.elapsed().as_secs(),
        sidecar,
        shards: shard
            .node
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| ShardHealth {
                shard: i,
                driver: s.driver().as_str(),
                connections: metrics::get(&s.connections_active),
                websockets: metrics::get(&s.websockets_active),
            })
            .collect(),
    };
    let body = serde_json::to_vec(&h).unwrap_or_else(|_| b"{\"status\":\"error\"}".to_vec());
    Response::new(if status == "ok" { 200 } else { 503 }, "application/json", body)
}
