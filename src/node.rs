//! Assembles a node: the sidecar thread, the ring mesh and one pinned shard thread per
//! configured shard, each with its own SO_REUSEPORT listeners serving HTTP/1.1 (`/health`,
//! `/metrics`) and WebSocket (`/ws-echo`) on every listen address. This is the one place that
//! shows what a node runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::metrics::ShardStats;
use crate::ring::{self, Doorbell};
use crate::shard::{self, ShardError, ShardInit, ShardMsg};
use crate::sidecar::{self, SidecarError};

/// State every shard can read: the config, every shard's counters, the start time and the
/// shutdown flag. Written only at start-up and by [`Node::shutdown`].
pub struct NodeShared {
    pub config: Arc<Config>,
    pub stats: Vec<Arc<ShardStats>>,
    pub started: Instant,
    /// The embedding application's servers, built once on every shard.
    pub factories: AppFactories,
    /// Verifies tokens for every protocol; shared read-only by all shards.
    pub auth: crate::auth::Authenticator,
    pub origins: crate::auth::OriginPolicy,
    /// Who may join and send to which channel: the application's source, or `membership_admin`.
    pub membership: Arc<dyn crate::membership::MembershipSource>,
    /// The built-in source (`[membership]` plus its in-memory admin API: `add_member`, ...).
    pub membership_admin: Arc<crate::membership::Membership>,
    /// Open connections on the node (`server.max_connections`).
    pub connections: crate::limits::NodeCounter,
    /// Open connections per client address (`limits.max_connections_per_ip`).
    pub ip_counter: Arc<crate::limits::IpCounter>,
    stopping: AtomicBool,
}

/// What an embedding application serves, each built once per shard on the shard's thread.
#[derive(Default, Clone)]
pub struct AppFactories {
    /// The Socket.IO server at `/socket.io/`.
    pub socketio: Option<crate::app::SocketIoFactory>,
    /// Routes and hooks of the native protocol at `/ws`.
    pub chat: Option<crate::chat::router::ChatFactory>,
    /// Who may use which channel, instead of `[membership]`.
    pub membership: Option<Arc<dyn crate::membership::MembershipSource>>,
}

impl NodeShared {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// A node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error("cannot spawn shard thread {shard}: {source}")]
    Spawn { shard: usize, source: std::io::Error },
    #[error("cannot reserve a port for {addr}: {source}")]
    Reserve { addr: SocketAddr, source: std::io::Error },
    #[error("{addr} is already in use by another process (with SO_REUSEPORT it would silently share its connections): {source}")]
    InUse { addr: SocketAddr, source: std::io::Error },
    #[error("shard {0} exited before it was ready")]
    ShardDied(usize),
}

/// A running node.
pub struct Node {
    shared: Arc<NodeShared>,
    bells: Vec<Arc<Doorbell>>,
    shards: Vec<JoinHandle<()>>,
    sidecar: Option<JoinHandle<()>>,
    /// Bound addresses of each shard, ephemeral ports resolved.
    addrs: Vec<Vec<SocketAddr>>,
}

impl Node {
    /// Starts the sidecar and every shard, and returns once all shards accept connections.
    pub fn start(config: Config) -> Result<Node, NodeError> {
        Self::start_with(config, None)
    }

    /// Starts a node that serves the given Socket.IO application at `/socket.io/` (the
    /// factory runs once on each shard's thread; see `examples/`).
    pub fn start_with(config: Config, socketio: Option<crate::app::SocketIoFactory>) -> Result<Node, NodeError> {
        Self::start_apps(config, AppFactories { socketio, ..Default::default() })
    }

    /// Starts a node that serves the given applications (Socket.IO and native protocol).
    pub fn start_apps(mut config: Config, factories: AppFactories) -> Result<Node, NodeError> {
        // Port 0 means "any free port", but every shard must listen on the same one: reserve a
        // port with a bound, never-listening SO_REUSEPORT socket (which receives no
        // connections) until all shards have bound it.
        refuse_ports_in_use(&config)?;
        let reservations = reserve_ephemeral_ports(&mut config)?;
        let shard_count = config.shards.len();
        let config = Arc::new(config);
        let membership_admin = Arc::new(crate::membership::Membership::new(&config.membership));
        let membership: Arc<dyn crate::membership::MembershipSource> = match &factories.membership {
            Some(source) => source.clone(),
            None => membership_admin.clone(),
        };
        let shared = Arc::new(NodeShared {
            stats: (0..shard_count).map(|_| Arc::new(ShardStats::default())).collect(),
            config: config.clone(),
            started: Instant::now(),
            factories,
            auth: crate::auth::Authenticator::new(&config.auth),
            origins: crate::auth::OriginPolicy::new(&config.auth),
            membership,
            membership_admin,
            connections: Default::default(),
            ip_counter: Default::default(),
            stopping: AtomicBool::new(false),
        });
        let (sidecar, links) = sidecar::spawn(shard_count, config.sidecar_channel_capacity)?;
        let rings = ring::mesh::<ShardMsg>(shard_count, config.ring_capacity);
        let bells: Vec<Arc<Doorbell>> = rings.iter().map(|r| r.bell.clone()).collect();

        let mut node =
            Node { shared: shared.clone(), bells, shards: Vec::new(), sidecar: Some(sidecar), addrs: Vec::new() };
        let mut pending = config.shards.iter().cloned().zip(rings).zip(links);
        while let Some(((cfg, rings), sidecar)) = pending.next() {
            let index = cfg.index;
            let (ready, ready_rx) = std::sync::mpsc::channel();
            let init = ShardInit { cfg, node: shared.clone(), rings, sidecar, ready };
            let handle = std::thread::Builder::new()
                .name(format!("imks-shard-{index}"))
                .spawn(move || shard::run(init))
                .map_err(|source| NodeError::Spawn { shard: index, source })?;
            node.shards.push(handle);
            match ready_rx.recv() {
                Ok(Ok(addrs)) => node.addrs.push(addrs),
                Ok(Err(e)) => {
                    drop(pending); // the unstarted shards' sidecar links, so the sidecar can end
                    node.stop_and_join();
                    return Err(e.into());
                }
                Err(_) => {
                    drop(pending);
                    node.stop_and_join();
                    return Err(NodeError::ShardDied(index));
                }
            }
        }
        drop(reservations);
        Ok(node)
    }

    /// The addresses shard 0 listens on, with ephemeral ports resolved.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.addrs.first().map(Vec::as_slice).unwrap_or(&[])
    }

    /// The addresses shard `shard` listens on (they differ from shard 0's only when a shard
    /// file gives it its own `listen`).
    pub fn shard_addrs(&self, shard: usize) -> &[SocketAddr] {
        self.addrs.get(shard).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn shared(&self) -> &Arc<NodeShared> {
        &self.shared
    }

    /// Graceful shutdown: shards stop accepting, close WebSockets with 1001 and drain within
    /// `server.shutdown_timeout_ms`. Returns true when every thread ended in time.
    pub fn shutdown(mut self) -> bool {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> bool {
        self.shared.stopping.store(true, Ordering::Release);
        for b in &self.bells {
            b.ring();
        }
        // Shards give up on stragglers at the shutdown timeout; allow a little beyond it.
        let deadline = Instant::now() + self.shared.config.shutdown_timeout + Duration::from_secs(2);
        let mut clean = true;
        for h in self.shards.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                clean &= h.join().is_ok();
            } else {
                tracing::error!("a shard did not stop within the shutdown timeout");
                clean = false;
            }
        }
        // Every shard dropped its sidecar sender when it ended, which stops the sidecar. A shard
        // that did not end still holds one: then the sidecar is left behind, not waited for.
        if let Some(s) = self.sidecar.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while clean && !s.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if s.is_finished() {
                clean &= s.join().is_ok();
            } else {
                tracing::error!("the sidecar did not stop");
                clean = false;
            }
        }
        clean
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.shards.is_empty() {
            self.stop_and_join();
        }
    }
}

/// Every shard binds its listen addresses with SO_REUSEPORT, which the kernel also grants
/// when another process of the same user already listens there: the two would then split the
/// connections between them without a word. A plain bind (no SO_REUSEPORT) of each fixed
/// address first fails in exactly that case, so the node refuses to start instead.
fn refuse_ports_in_use(config: &Config) -> Result<(), NodeError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut fixed: Vec<SocketAddr> =
        config.shards.iter().flat_map(|s| s.listen.iter().copied()).filter(|a| a.port() != 0).collect();
    fixed.sort();
    fixed.dedup();
    for addr in fixed {
        let probe = || -> std::io::Result<()> {
            let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            // Connections of an earlier run lingering in TIME_WAIT are no conflict.
            s.set_reuse_address(true)?;
            s.bind(&addr.into())
        };
        probe().map_err(|source| NodeError::InUse { addr, source })?;
    }
    Ok(())
}

fn reserve_ephemeral_ports(config: &mut Config) -> Result<Vec<socket2::Socket>, NodeError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut held = Vec::new();
    let wanted: Vec<SocketAddr> =
        config.shards.iter().flat_map(|s| s.listen.iter().copied()).filter(|a| a.port() == 0).collect();
    for addr in wanted {
        if config.shards.iter().all(|s| !s.listen.contains(&addr)) {
            continue; // already resolved for an identical entry
        }
        let reserve = || -> std::io::Result<(Socket, SocketAddr)> {
            let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_port(true)?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            let local = s.local_addr()?.as_socket().ok_or_else(|| std::io::Error::other("not an IP socket"))?;
            Ok((s, local))
        };
        let (sock, local) = reserve().map_err(|source| NodeError::Reserve { addr, source })?;
        for s in &mut config.shards {
            for a in &mut s.listen {
                if *a == addr {
                    *a = local;
                }
            }
        }
        held.push(sock);
    }
    Ok(held)
}
