//! What a node serves: the HTTP routes (`/health`, `/metrics`) and the WebSocket endpoints
//! (`/ws-echo`). Protocol code lives in `http` and `ws`; this module only decides which handler
//! answers which path.

pub mod echo;

use std::rc::Rc;

use crate::http::parse::{Method, RequestHead};
use crate::metrics::{self, render_prometheus};
use crate::shard::Shard;
use crate::ws::WsHandler;

/// Where a request goes.
pub enum Route {
    Http(HttpRoute),
    WebSocket(WsEndpoint),
}

pub enum HttpRoute {
    Health,
    Metrics,
    /// A WebSocket endpoint asked for without an upgrade.
    UpgradeRequired,
    MethodNotAllowed,
    NotFound,
}

/// A WebSocket endpoint.
#[derive(Clone, Copy)]
pub enum WsEndpoint {
    /// `/ws-echo`: echoes text as text and binary as binary (conformance part C).
    Echo,
}

impl WsEndpoint {
    pub fn handler(self) -> Rc<dyn WsHandler> {
        match self {
            WsEndpoint::Echo => Rc::new(echo::Echo),
        }
    }
}

/// An HTTP response to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status, content_type, headers: Vec::new(), body: body.into() }
    }
}

pub fn route(head: &RequestHead) -> Route {
    let get = head.method == Method::Get;
    match head.path.as_str() {
        "/ws-echo" if get && head.is_websocket_upgrade() => Route::WebSocket(WsEndpoint::Echo),
        "/ws-echo" if get => Route::Http(HttpRoute::UpgradeRequired),
        "/health" | "/metrics" | "/ws-echo" if !get => Route::Http(HttpRoute::MethodNotAllowed),
        "/health" => Route::Http(HttpRoute::Health),
        "/metrics" => Route::Http(HttpRoute::Metrics),
        _ => Route::Http(HttpRoute::NotFound),
    }
}

pub async fn respond(shard: &Shard, route: HttpRoute, _head: &RequestHead, _body: &[u8]) -> Response {
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
