//! The sidecar: one thread running a tokio runtime, the only place that talks to external
//! services (Postgres, NATS, Redis, gRPC in later milestones).
//!
//! Shards reach it through one bounded channel that all shards share (sized
//! `sidecar.channel_capacity` per shard), and it answers each shard on that shard's own bounded
//! channel. A shard only ever `try_send`s, so a slow or stuck sidecar can never block a shard
//! thread; a full channel is an error the caller reports. Answers are picked up by a shard task
//! (the monoio `sync` feature lets the tokio thread wake it).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

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
    /// External services and their state (none are configured yet).
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

/// Starts the sidecar thread and returns its join handle and one link per shard. The thread ends
/// when every shard has dropped its sender.
pub fn spawn(shards: usize, capacity: usize) -> Result<(JoinHandle<()>, Vec<SidecarLink>), SidecarError> {
    let (to_tx, to_rx) = mpsc::channel::<ToSidecar>(capacity.saturating_mul(shards).max(1));
    let mut back = Vec::with_capacity(shards);
    let mut links = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel::<FromSidecar>(capacity);
        back.push(tx);
        links.push(SidecarLink { tx: to_tx.clone(), rx });
    }
    drop(to_tx);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(SidecarError::Runtime)?;
    let handle = std::thread::Builder::new()
        .name("imks-sidecar".into())
        .spawn(move || rt.block_on(run(to_rx, back)))
        .map_err(SidecarError::Spawn)?;
    Ok((handle, links))
}

async fn run(mut rx: mpsc::Receiver<ToSidecar>, back: Vec<mpsc::Sender<FromSidecar>>) {
    let started = Instant::now();
    let mut probes = 0u64;
    tracing::debug!("sidecar running");
    while let Some(msg) = rx.recv().await {
        match msg {
            ToSidecar::Probe { shard, token } => {
                probes += 1;
                let health = SidecarHealth {
                    status: "ok",
                    uptime_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    probes,
                    services: Vec::new(),
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
    tracing::debug!("sidecar stopped");
}
