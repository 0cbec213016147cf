//! The sidecar: one thread running a tokio runtime, the only place that talks to external
//! services (Postgres, NATS, Redis, gRPC in later milestones).
//!
//! Shards reach it through one bounded channel that all shards share (sized
//! `sidecar.channel_capacity` per shard), and it answers each shard on that shard's own bounded
//! channel. A shard only ever `try_send`s, so a slow or stuck sidecar can never block a shard
//! thread; a full channel is an error the caller reports. Answers are picked up by a shard task
//! (the monoio `sync` feature lets the tokio thread wake it).
//!
//! Each client of an external service is a [`SidecarService`], which the assembler
//! (`crate::node`) hands to the sidecar when the node starts. A service owns its connection,
//! its bounded inbox from the shards (the shards hold its sender as a per-shard service of
//! theirs, and only ever `try_send`), its batching, reconnects and backoff; it reports its state
//! in `/health` through its [`ServiceContext`], and is told when the node stops so it can flush
//! what it holds.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

/// A client of an external service (Postgres, NATS, Redis, gRPC), run on the sidecar thread.
/// Built where the node is assembled and moved to the sidecar (hence `Send`); its future runs
/// on the sidecar's own thread and need not be.
pub trait SidecarService: Send + 'static {
    /// Its name in `/health` (`sidecar.services`).
    fn name(&self) -> &'static str;
    /// Runs the service until the node stops ([`ServiceContext::stopping`]); then it has until
    /// the shutdown timeout to finish (flush, close its connection).
    fn run(self: Box<Self>, ctx: ServiceContext) -> Pin<Box<dyn Future<Output = ()>>>;
}

/// What a sidecar service gets from the sidecar: where to report its state, and when to stop.
pub struct ServiceContext {
    state: Rc<RefCell<String>>,
    stopping: watch::Receiver<bool>,
}

impl ServiceContext {
    /// Sets the state `/health` shows for this service (`connecting`, `ok`, `retrying in 2 s`).
    pub fn set_state(&self, state: impl Into<String>) {
        *self.state.borrow_mut() = state.into();
    }

    /// Resolves once the node is stopping: every shard has let go of the sidecar.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.clone();
        // An error means the sidecar is gone, which is stopping too.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Work a shard hands to the sidecar.
#[derive(Debug)]
pub enum ToSidecar {
    /// Liveness probe for `/health`; answered with [`FromSidecar::Probe`] on the shard's channel.
    Probe { shard: usize, token: u64 },
}

/// What the sidecar sends back to a shard.
#[derive(Debug, Clone)]
pub enum FromSidecar {
    Probe { token: u64, health: SidecarHealth },
}

/// The sidecar's own view of its health.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SidecarHealth {
    pub status: &'static str,
    pub uptime_ms: u64,
    /// Probes answered so far, node-wide.
    pub probes: u64,
    /// Each sidecar service's name and the state it last reported.
    pub services: Vec<(String, String)>,
}

/// A shard's ends of its two sidecar channels.
pub struct SidecarLink {
    pub tx: mpsc::Sender<ToSidecar>,
    pub rx: mpsc::Receiver<FromSidecar>,
}

/// Starting the sidecar failed.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot build the sidecar's tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot spawn the sidecar thread: {0}")]
    Spawn(std::io::Error),
}

/// Starts the sidecar thread with its services and returns its join handle and one link per
/// shard. When every shard has dropped its sender, the services are told to stop and have
/// `stop_timeout` to finish; then the thread ends.
pub fn spawn(
    shards: usize,
    capacity: usize,
    services: Vec<Box<dyn SidecarService>>,
    stop_timeout: Duration,
) -> Result<(JoinHandle<()>, Vec<SidecarLink>), SidecarError> {
    let (to_tx, to_rx) = mpsc::channel::<ToSidecar>(capacity.saturating_mul(shards).max(1));
    let mut back = Vec::with_capacity(shards);
    let mut links = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel::<FromSidecar>(capacity);
        back.push(tx);
        links.push(SidecarLink { tx: to_tx.clone(), rx });
    }
    drop(to_tx);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SidecarError::Runtime)?;
    let handle = std::thread::Builder::new()
        .name("imks-sidecar".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(to_rx, back, services, stop_timeout));
            // Tasks still suspended are dropped here; some clients spawn from their `Drop`
            // (async-nats unsubscribes that way), which needs a runtime context.
            let _context = rt.enter();
            drop(local);
        })
        .map_err(SidecarError::Spawn)?;
    Ok((handle, links))
}

async fn run(
    mut rx: mpsc::Receiver<ToSidecar>,
    back: Vec<mpsc::Sender<FromSidecar>>,
    services: Vec<Box<dyn SidecarService>>,
    stop_timeout: Duration,
) {
    let started = Instant::now();
    let mut probes = 0u64;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut states = Vec::with_capacity(services.len());
    let mut running = Vec::with_capacity(services.len());
    for service in services {
        let state = Rc::new(RefCell::new(String::from("starting")));
        states.push((service.name(), state.clone()));
        let ctx = ServiceContext { state, stopping: stop_rx.clone() };
        running.push((service.name(), tokio::task::spawn_local(service.run(ctx))));
    }
    tracing::debug!(services = running.len(), "sidecar running");
    while let Some(msg) = rx.recv().await {
        match msg {
            ToSidecar::Probe { shard, token } => {
                probes += 1;
                let health = SidecarHealth {
                    status: "ok",
                    uptime_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    probes,
                    services: states.iter().map(|(name, state)| (name.to_string(), state.borrow().clone())).collect(),
                };
                if let Some(tx) = back.get(shard) {
                    // Bounded wait: a shard that stopped draining must not wedge the sidecar.
                    let send = tx.send(FromSidecar::Probe { token, health });
                    if tokio::time::timeout(Duration::from_secs(1), send).await.is_err() {
                        tracing::warn!(shard, "shard's sidecar channel stayed full; probe answer dropped");
                    }
                }
            }
        }
    }
    // Every shard has let go: the node is stopping. Services finish what they hold, within the
    // shutdown timeout.
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + stop_timeout;
    for (name, task) in running {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!(service = name, "sidecar service did not stop within the shutdown timeout");
        }
    }
    tracing::debug!("sidecar stopped");
}
