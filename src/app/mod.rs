//! The node's own endpoints and applications, which the assembler ([`crate::node`]) mounts:
//! `/health` and `/metrics`, the `/ws-echo` endpoint, the IM events on Socket.IO ([`im`]) and
//! the conformance application ([`sio_conformance`], [`eio_echo`]).

pub mod echo;
pub mod eio_echo;
pub mod im;
pub mod sio_conformance;

use std::rc::Rc;

use crate::http::parse::RequestHead;
use crate::http::Response;
use crate::metrics::{self, render_prometheus};
use crate::shard::route::{HttpHandler, ResponseFuture};
use crate::shard::Shard;
use crate::socketio::SocketIo;

/// Builds the Socket.IO server of one shard; called on each shard's own thread, so what it
/// builds may be `!Send`.
pub type SocketIoFactory = std::sync::Arc<dyn Fn() -> SocketIo + Send + Sync>;

/// A WebSocket endpoint asked for without an upgrade.
pub fn upgrade_required() -> Response {
    let mut r = Response::new(426, "text/plain", "this endpoint speaks WebSocket only\n");
    r.headers.push(("Upgrade", "websocket".into()));
    r.headers.push(("Sec-WebSocket-Version", "13".into()));
    r
}

pub fn method_not_allowed() -> Response {
    let mut r = Response::new(405, "text/plain", "method not allowed\n");
    r.headers.push(("Allow", "GET".into()));
    r
}

pub fn not_found() -> Response {
    Response::new(404, "text/plain", "not found\n")
}

/// `/metrics`: Prometheus text of every shard's counters.
pub struct Metrics;

impl HttpHandler for Metrics {
    fn respond<'a>(&'a self, shard: &'a Rc<Shard>, _head: &'a RequestHead, _body: &'a [u8]) -> ResponseFuture<'a> {
        Box::pin(async move {
            let up = shard.probe_sidecar().await.is_some();
            let mut text = render_prometheus(&shard.node.stats, shard.node.started, up);
            if let Some(hub) = shard.service::<crate::chat::Hub>() {
                hub.store().render_metrics(&mut text);
            }
            if let Some(cluster) = shard.service::<crate::cluster::Cluster>() {
                cluster.stats().render(&mut text);
            }
            Response::new(200, "text/plain; version=0.0.4", text)
        })
    }
}

/// `/health`: 200 when the node and its sidecar answer, 503 when the sidecar does not or the
/// node is shutting down.
pub struct Health;

impl HttpHandler for Health {
    fn respond<'a>(&'a self, shard: &'a Rc<Shard>, _head: &'a RequestHead, _body: &'a [u8]) -> ResponseFuture<'a> {
        Box::pin(health(shard))
    }
}

#[derive(serde::Serialize)]
struct HealthBody<'a> {
    status: &'static str,
    version: &'static str,
    uptime_s: u64,
    sidecar: Option<crate::sidecar::SidecarHealth>,
    /// The process's resident memory and open file descriptors against its limit.
    process: metrics::ProcessStats,
    /// The external services the node depends on, by name (`postgres`, `cluster`): `status` (`up` or
    /// `down`) and the last round trip, `latency_ms`. A service that is down does not fail the
    /// check: the node goes on serving what needs no database.
    checks: std::collections::BTreeMap<&'static str, crate::store::BackendCheck>,
    shards: Vec<ShardHealth<'a>>,
}

#[derive(serde::Serialize)]
struct ShardHealth<'a> {
    shard: usize,
    driver: &'a str,
    connections: u64,
    websockets: u64,
    /// Open Engine.IO sessions (Socket.IO clients), long-polling ones included.
    engineio_sessions: u64,
}

async fn health(shard: &Shard) -> Response {
    let sidecar = shard.probe_sidecar().await;
    let stopping = shard.node.is_stopping();
    let status = match (&sidecar, stopping) {
        (_, true) => "stopping",
        (Some(_), false) => "ok",
        (None, false) => "degraded",
    };
    let h = HealthBody {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: shard.node.started.elapsed().as_secs(),
        sidecar,
        process: metrics::ProcessStats::read(),
        checks: shard
            .service::<crate::chat::Hub>()
            .and_then(|hub| hub.store().check())
            .into_iter()
            .chain(shard.service::<crate::cluster::Cluster>().map(|c| crate::store::BackendCheck {
                name: "cluster",
                status: if c.stats().connected() { "up" } else { "down" },
                latency_ms: c.stats().rtt_ms(),
            }))
            .map(|c| (c.name, c))
            .collect(),
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
                engineio_sessions: metrics::get(&s.eio_sessions),
            })
            .collect(),
    };
    let body = serde_json::to_vec(&h).unwrap_or_else(|_| b"{\"status\":\"error\"}".to_vec());
    Response::new(if status == "ok" { 200 } else { 503 }, "application/json", body)
}
