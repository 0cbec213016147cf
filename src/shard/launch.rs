//! Starts a node's runtime: the sidecar thread, the ring mesh and one pinned shard thread per
//! configured shard, each running the assembler's [`ShardSetup`] before it binds its
//! SO_REUSEPORT listeners. It knows no protocol; what runs on the shards is the assembler's
//! ([`crate::node`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::RuntimeConfig;
use super::{NodeState, ShardError, ShardInit, ShardMsg, ShardSetup};
use crate::ring::{self, Doorbell};
use crate::sidecar::{self, SidecarError, SidecarService};

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
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

/// A running runtime: its threads and where each shard listens.
pub struct Launched {
    state: Arc<NodeState>,
    bells: Vec<Arc<Doorbell>>,
    shards: Vec<JoinHandle<()>>,
    sidecar: Option<JoinHandle<()>>,
    /// Bound addresses of each shard, ephemeral ports resolved.
    addrs: Vec<Vec<SocketAddr>>,
}

impl Launched {
    /// Starts the sidecar and every shard, and returns once all shards accept connections.
    /// `config`'s ephemeral ports (0) are resolved to one port that every shard shares.
    /// `sidecar` are the clients of external services, run on the sidecar thread.
    pub fn start(
        mut config: RuntimeConfig,
        setup: ShardSetup,
        sidecar: Vec<Box<dyn SidecarService>>,
    ) -> Result<Launched, LaunchError> {
        // Port 0 means "any free port", but every shard must listen on the same one: reserve a
        // port with a bound, never-listening SO_REUSEPORT socket (which receives no
        // connections) until all shards have bound it.
        refuse_ports_in_use(&config)?;
        let reservations = reserve_ephemeral_ports(&mut config)?;
        let shard_count = config.shards.len();
        let config = Arc::new(config);
        let state = Arc::new(NodeState::new(config.clone()));
        let (sidecar, links) =
            sidecar::spawn(shard_count, config.sidecar_channel_capacity, sidecar, config.shutdown_timeout)?;
        let rings = ring::mesh::<ShardMsg>(shard_count, config.ring_capacity);
        let bells: Vec<Arc<Doorbell>> = rings.iter().map(|r| r.bell.clone()).collect();

        let mut launched =
            Launched { state: state.clone(), bells, shards: Vec::new(), sidecar: Some(sidecar), addrs: Vec::new() };
        let mut pending = config.shards.iter().cloned().zip(rings).zip(links);
        while let Some(((cfg, rings), sidecar)) = pending.next() {
            let index = cfg.index;
            let (ready, ready_rx) = std::sync::mpsc::channel();
            let init = ShardInit { cfg, node: state.clone(), rings, sidecar, ready, setup: setup.clone() };
            let handle = std::thread::Builder::new()
                .name(format!("imks-shard-{index}"))
                .spawn(move || super::run(init))
                .map_err(|source| LaunchError::Spawn { shard: index, source })?;
            launched.shards.push(handle);
            match ready_rx.recv() {
                Ok(Ok(addrs)) => launched.addrs.push(addrs),
                Ok(Err(e)) => {
                    drop(pending); // the unstarted shards' sidecar links, so the sidecar can end
                    launched.stop_and_join();
                    return Err(e.into());
                }
                Err(_) => {
                    drop(pending);
                    launched.stop_and_join();
                    return Err(LaunchError::ShardDied(index));
                }
            }
        }
        drop(reservations);
        Ok(launched)
    }

    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// The addresses shard `shard` listens on.
    pub fn shard_addrs(&self, shard: usize) -> &[SocketAddr] {
        self.addrs.get(shard).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Graceful shutdown: shards stop accepting, close WebSockets with 1001 and drain within
    /// `server.shutdown_timeout_ms`. Returns true when every thread ended in time.
    pub fn stop_and_join(&mut self) -> bool {
        if self.shards.is_empty() && self.sidecar.is_none() {
            return true;
        }
        self.state.set_stopping();
        for b in &self.bells {
            b.ring();
        }
        // Shards give up on stragglers at the shutdown timeout; allow a little beyond it.
        let deadline = Instant::now() + self.state.config.shutdown_timeout + Duration::from_secs(2);
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
            // Its services have the shutdown timeout to finish what they hold.
            let deadline = Instant::now() + self.state.config.shutdown_timeout + Duration::from_secs(2);
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

impl Drop for Launched {
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
fn refuse_ports_in_use(config: &RuntimeConfig) -> Result<(), LaunchError> {
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
        probe().map_err(|source| LaunchError::InUse { addr, source })?;
    }
    Ok(())
}

fn reserve_ephemeral_ports(config: &mut RuntimeConfig) -> Result<Vec<socket2::Socket>, LaunchError> {
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
        let (sock, local) = reserve().map_err(|source| LaunchError::Reserve { addr, source })?;
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
