//! The assembly point: what a node is made of, in one file.
//!
//! - **Listeners**: every address of `server.listen` on every shard (SO_REUSEPORT), started by
//!   the runtime ([`crate::shard::launch`]).
//! - **Routes**: [`Routes`], the one table from request paths to endpoints.
//! - **Applications**: Socket.IO at `/socket.io/` (the embedder's, else the IM events of
//!   [`crate::app::im`], or the conformance application), the native protocol at `/ws`
//!   ([`crate::chat`]) with the embedder's routes, and the conformance parts (`/engine.io/`,
//!   `/ws-echo`).
//! - **Per-shard services**: `assemble_shard` starts them on each shard's thread: the
//!   authenticator's gate, channel membership, the Engine.IO table, the chat hub over the
//!   message store, the IM events' presence counts.
//! - **Sidecar services**: the clients of external services that run on the sidecar thread
//!   ([`crate::sidecar::SidecarService`]), built in `Node::start_apps` with their shard-side
//!   handles: the Postgres store when `store.backend = "postgres"` (its migrations run first,
//!   before any shard accepts). NATS, Redis and gRPC clients are added the same way.
//!
//! A new endpoint is one line in [`Routes::route`]; a new per-shard service is one line in
//! `assemble_shard`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::app::{self, SocketIoFactory};
use crate::auth::{Authenticator, Gate, OriginPolicy};
use crate::chat::router::ChatFactory;
use crate::chat::Hub;
use crate::cluster::{Cluster, ClusterHandle};
use crate::config::Config;
use crate::engineio::{self, EioApp, Engine};
use crate::http::parse::{Method, RequestHead};
use crate::membership::{Members, Membership, MembershipSource};
use crate::shard::launch::{LaunchError, Launched};
use crate::shard::{Route, Router, Shard, ShardSetup};
use crate::sidecar::SidecarService;
use crate::socketio::SocketIo;
use crate::store::migrate::{self, MigrateError, MIGRATIONS};
use crate::store::postgres::{self, PgHandle};
use crate::store::{MemoryStore, Store, StoreBackend};

/// What an embedding application serves, each built once per shard on the shard's thread.
#[derive(Default, Clone)]
pub struct AppFactories {
    /// The Socket.IO server at `/socket.io/`.
    pub socketio: Option<SocketIoFactory>,
    /// Routes and hooks of the native protocol at `/ws`.
    pub chat: Option<ChatFactory>,
    /// Who may use which channel, instead of `[membership]`.
    pub membership: Option<Arc<dyn MembershipSource>>,
}

/// What the node shares with every shard's assembly: built once, read-only.
pub struct NodeShared {
    pub config: Arc<Config>,
    /// The embedding application's servers, built once on every shard.
    pub factories: AppFactories,
    /// Verifies tokens for every protocol.
    pub auth: Arc<Authenticator>,
    pub origins: Arc<OriginPolicy>,
    /// Who may join and send to which channel: the application's source, or `membership_admin`.
    pub membership: Arc<dyn MembershipSource>,
    /// The built-in source (`[membership]` plus its in-memory admin API: `add_member`, ...).
    pub membership_admin: Arc<Membership>,
    /// The shards' handle on the Postgres store, when it is the backend: each shard makes its
    /// store from it while it starts, and the node lets go of it once all have started, so the
    /// store's writers end as soon as the shards do.
    postgres: std::sync::Mutex<Option<PgHandle>>,
    /// The shards' side of the cluster bridge, when `[cluster]` names a backend; let go of
    /// once every shard has started, like the store's handle.
    cluster: std::sync::Mutex<Option<ClusterHandle>>,
}

/// A node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("the Postgres store's migrations failed: {0}")]
    Migrate(#[from] MigrateError),
}

/// A running node.
pub struct Node {
    shared: Arc<NodeShared>,
    runtime: Launched,
}

impl Node {
    /// Starts the sidecar and every shard, and returns once all shards accept connections.
    pub fn start(config: Config) -> Result<Node, NodeError> {
        Self::start_with(config, None)
    }

    /// Starts a node that serves the given Socket.IO application at `/socket.io/` (the
    /// factory runs once on each shard's thread; see `examples/`).
    pub fn start_with(config: Config, socketio: Option<SocketIoFactory>) -> Result<Node, NodeError> {
        Self::start_apps(config, AppFactories { socketio, ..Default::default() })
    }

    /// Starts a node that serves the given applications (Socket.IO and native protocol).
    pub fn start_apps(config: Config, factories: AppFactories) -> Result<Node, NodeError> {
        let config = Arc::new(config);
        let membership_admin = Arc::new(Membership::new(&config.membership));
        let membership: Arc<dyn MembershipSource> = match &factories.membership {
            Some(source) => source.clone(),
            None => membership_admin.clone(),
        };
        let mut sidecar: Vec<Box<dyn SidecarService>> = Vec::new();
        let postgres = match config.store.backend {
            StoreBackend::Memory => None,
            StoreBackend::Postgres => {
                let pg = &config.store.postgres;
                // Under the runner's advisory lock: nodes starting together apply each once.
                migrate::blocking(&pg.url, pg.connect_timeout(), async |c| migrate::run(c, MIGRATIONS).await)?;
                let (service, handle) = postgres::build(&config.store);
                sidecar.push(Box::new(service));
                Some(handle)
            }
        };
        let cluster = config.cluster.enabled().then(|| {
            // Socket.IO recovery across nodes needs its broadcasts in one order: the stream's.
            // NATS only: over Redis, recovery stays on the node that held the socket.
            let over_nats = config.cluster.backend == crate::cluster::ClusterBackend::Nats;
            let sequencing = config
                .sio
                .recovery
                .as_ref()
                .filter(|_| over_nats)
                .map(|r| crate::cluster::jetstream::Sequencing { window: r.window, max_messages: 1_000_000 });
            let (bridge, handle) = crate::cluster::build(&config.cluster, config.runtime.shards.len(), sequencing);
            sidecar.push(Box::new(bridge));
            handle
        });
        let shared = Arc::new(NodeShared {
            config: config.clone(),
            factories,
            auth: Arc::new(Authenticator::new(&config.auth)),
            origins: Arc::new(OriginPolicy::new(&config.auth)),
            membership,
            membership_admin,
            postgres: std::sync::Mutex::new(postgres),
            cluster: std::sync::Mutex::new(cluster),
        });
        let for_shards = shared.clone();
        let setup: ShardSetup = Arc::new(move |shard: &Rc<Shard>| assemble_shard(shard, &for_shards));
        let runtime = Launched::start(config.runtime.clone(), setup, sidecar)?;
        shared.postgres.lock().map(|mut pg| pg.take()).ok();
        shared.cluster.lock().map(|mut c| c.take()).ok();
        Ok(Node { shared, runtime })
    }

    /// The addresses shard 0 listens on, with ephemeral ports resolved.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.runtime.shard_addrs(0)
    }

    /// The addresses shard `shard` listens on (they differ from shard 0's only when a shard
    /// file gives it its own `listen`).
    pub fn shard_addrs(&self, shard: usize) -> &[SocketAddr] {
        self.runtime.shard_addrs(shard)
    }

    pub fn shared(&self) -> &Arc<NodeShared> {
        &self.shared
    }

    /// Graceful shutdown: shards stop accepting, close WebSockets with 1001 and drain within
    /// `server.shutdown_timeout_ms`. Returns true when every thread ended in time.
    pub fn shutdown(mut self) -> bool {
        self.runtime.stop_and_join()
    }
}

/// Starts a node's per-shard services and applications on one shard, and sets its routes.
/// Runs on the shard's own thread, before it accepts connections, so what it builds may be
/// `!Send`.
fn assemble_shard(shard: &Rc<Shard>, node: &NodeShared) {
    let cfg = &node.config;
    // Per-shard services.
    let gate = Gate::new(
        node.auth.clone(),
        node.origins.clone(),
        cfg.runtime.limits.max_name_bytes,
        cfg.auth.timeout,
        shard.stats.clone(),
    );
    shard.provide(Rc::new(gate));
    shard.provide(Rc::new(Members(node.membership.clone())));
    // Before the protocols, which find it when they start.
    if let Some(handle) = node.cluster.lock().ok().as_ref().and_then(|c| c.as_ref()) {
        Cluster::start(shard, handle);
    }
    let engine = Engine::start(shard, cfg.eio.clone());
    let store: Rc<dyn Store> = match cfg.store.backend {
        StoreBackend::Memory => Rc::new(MemoryStore::new(cfg.store.clone())),
        StoreBackend::Postgres => match node.postgres.lock().ok().and_then(|pg| pg.as_ref().map(PgHandle::store)) {
            Some(pg) => Rc::new(pg),
            // Start-up only, and never falls back to memory: every shard is assembled before
            // the node lets go of the handle.
            None => panic!("a shard started after the node let go of the Postgres store"),
        },
    };
    Hub::start(shard, cfg.chat.clone(), cfg.store.clone(), store);

    // Applications.
    let socketio = match (&node.factories.socketio, cfg.conformance) {
        (_, true) => app::sio_conformance::build(cfg.sio.clone()),
        (Some(factory), false) => factory(),
        // Without an application, `/socket.io/` serves the IM events.
        (None, false) => {
            shard.add_service(Rc::new(app::im::ImState::default()));
            app::im::build(cfg.sio.clone())
        }
    };
    let socketio = Rc::new(socketio);
    if let Some(cluster) = shard.service::<Cluster>() {
        socketio.join_cluster(&cluster);
    }
    shard.add_service(socketio.clone());
    if let Some(factory) = &node.factories.chat {
        shard.provide(Rc::new(factory()));
    }
    let eio_echo: Option<Rc<dyn EioApp>> = cfg.conformance.then(|| Rc::new(app::eio_echo::EioEcho) as _);

    let (health, metrics) = (Rc::new(app::Health), Rc::new(app::Metrics));
    shard.set_router(Rc::new(Routes { engine, socketio, eio_echo, health, metrics }));
}

/// The node's endpoints, by path.
pub struct Routes {
    engine: Rc<Engine>,
    /// `/socket.io/`.
    socketio: Rc<SocketIo>,
    /// `/engine.io/`: the raw Engine.IO echo of the conformance application (part A).
    eio_echo: Option<Rc<dyn EioApp>>,
    health: Rc<app::Health>,
    metrics: Rc<app::Metrics>,
}

impl Router for Routes {
    fn route(&self, shard: &Rc<Shard>, head: &RequestHead) -> Route {
        let get = head.method == Method::Get;
        let upgrade = head.is_websocket_upgrade();
        match head.path.as_str() {
            "/socket.io/" | "/socket.io" => engineio::route(shard, &self.engine, self.socketio.clone(), head),
            "/engine.io/" | "/engine.io" => match &self.eio_echo {
                Some(app) => engineio::route(shard, &self.engine, app.clone(), head),
                None => Route::Fixed(app::not_found()),
            },
            "/ws" if get && upgrade => match crate::chat::session::accept(shard, head) {
                Ok(handler) => Route::WebSocket(handler),
                Err(refusal) => Route::Fixed(refusal),
            },
            "/ws-echo" if get && upgrade => Route::WebSocket(Rc::new(app::echo::Echo)),
            "/ws" | "/ws-echo" if get => Route::Fixed(app::upgrade_required()),
            "/health" if get => Route::Http(self.health.clone()),
            "/metrics" if get => Route::Http(self.metrics.clone()),
            "/health" | "/metrics" | "/ws-echo" | "/ws" => Route::Fixed(app::method_not_allowed()),
            _ => Route::Fixed(app::not_found()),
        }
    }
}
