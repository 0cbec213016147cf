//! The server's side of the figures: its RSS before and after the connections are set up, and
//! its CPU time over the measurement (once a second, so the series shows it too). Read by the
//! process that coordinates the run, from `/proc/PID` (`--server-pid`) or `--health-url`. A
//! server of several processes (the nodes of a cluster and their broker) is their sum.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::now_ns;
use crate::params::Params;
use crate::sys::{self, CpuTimes};

/// One reading of the server's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub rss_kb: Option<u64>,
    /// Open connections, as the health endpoint reports them.
    pub connections: Option<u64>,
}

/// CPU the server used over the measurement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCpu {
    /// Every process together.
    pub cpu: CpuTimes,
    /// Each process, in the order of `--server-pid`.
    pub per_process: Vec<CpuTimes>,
    pub wall_s: f64,
    /// Percent of one core in each second of the measurement.
    pub per_second: Vec<f64>,
    /// RSS (KiB, summed over the processes) at the end of each second of the measurement.
    #[serde(default)]
    pub rss_kb_per_second: Vec<u64>,
}

/// What the server's health endpoint said once every client had left (soak).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Leftover {
    /// Open TCP connections (`shards[].connections`), less the health request's own.
    pub connections: u64,
    /// Open WebSocket sessions (`shards[].websockets`).
    pub websockets: u64,
    /// Open Engine.IO sessions (`shards[].engineio_sessions`): Socket.IO clients on any
    /// transport, long-polling ones (which hold no connection between requests) included.
    #[serde(default)]
    pub engineio_sessions: u64,
    /// How long it took them to reach zero, or the wait when they did not.
    pub waited_s: f64,
    /// The server's open file descriptors then (`process.open_fds`).
    pub open_fds: Option<u64>,
    /// `process.open_fds` before the run.
    pub open_fds_before: Option<u64>,
    /// imks: users still online (`imks_identities_online` at `/metrics` on the health URL's
    /// node): native sessions the server still counts.
    #[serde(default)]
    pub identities_online: Option<u64>,
}

/// The node's `/metrics` beside its health URL.
fn metrics_url(health: &str) -> String {
    match health.rfind("/health") {
        Some(i) => format!("{}/metrics", &health[..i]),
        None => format!("{}/metrics", health.trim_end_matches('/')),
    }
}

/// Soak: longest wait for the server to let go of every connection once all clients left.
pub const LEFTOVER_WAIT: Duration = Duration::from_secs(30);

pub struct ServerProbe {
    pids: Vec<u32>,
    health: Option<String>,
}

impl ServerProbe {
    pub fn new(p: &Params) -> ServerProbe {
        ServerProbe { pids: p.server_pids.clone(), health: p.health_url.clone() }
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    pub fn active(&self) -> bool {
        !self.pids.is_empty() || self.health.is_some()
    }

    /// RSS from `/proc` (or the health endpoint when it reports one), connections from the
    /// health endpoint. Unreadable figures are left out with a warning: they never end a run.
    pub fn memory(&self) -> Memory {
        let mut m = Memory::default();
        for &pid in &self.pids {
            match sys::proc_rss_kb(pid) {
                Ok(kb) => m.rss_kb = Some(m.rss_kb.unwrap_or(0) + kb),
                Err(e) => eprintln!("imks-loadgen: warning: {e}"),
            }
        }
        if let Some(url) = &self.health {
            match sys::health(url) {
                Ok(h) => {
                    m.rss_kb = m.rss_kb.or(h.rss_kb);
                    m.connections = h.connections;
                }
                Err(e) => eprintln!("imks-loadgen: warning: {e}"),
            }
        }
        m
    }

    /// The health endpoint's open file descriptors (`process.open_fds`), when it reports them.
    pub fn open_fds(&self) -> Option<u64> {
        self.health.as_ref().and_then(|url| sys::health(url).ok()).and_then(|h| h.open_fds)
    }

    /// Soak, once every client has left: polls the health endpoint until it shows no connection
    /// but its own and no WebSocket, or `wait` passed; what it showed last. `None` without
    /// `--health-url`, or when it cannot be read.
    pub fn leftover(&self, wait: Duration, open_fds_before: Option<u64>) -> Option<Leftover> {
        let url = self.health.as_ref()?;
        let t0 = now_ns();
        loop {
            let h = match sys::health(url) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("imks-loadgen: warning: {e}");
                    return None;
                }
            };
            let waited = now_ns() - t0;
            let left = Leftover {
                // The request that reads the health is a connection of its own.
                connections: h.connections.unwrap_or(0).saturating_sub(1),
                websockets: h.websockets.unwrap_or(0),
                engineio_sessions: h.engineio_sessions.unwrap_or(0),
                waited_s: waited as f64 / 1e9,
                open_fds: h.open_fds,
                open_fds_before,
                identities_online: sys::identities_online(&metrics_url(url)).ok(),
            };
            let clear = left.connections == 0
                && left.websockets == 0
                && left.engineio_sessions == 0
                && left.identities_online.unwrap_or(0) == 0;
            if clear || waited >= wait.as_nanos() as u64 {
                return Some(left);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts sampling the server's CPU at `measure_start`, then every second.
    pub fn cpu_sampler(&self, measure_start: u64) -> Option<CpuSampler> {
        if self.pids.is_empty() {
            return None;
        }
        let pids = self.pids.clone();
        let shared = Arc::new((Mutex::new(false), Condvar::new()));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("loadgen-probe".into())
            .spawn(move || sample(&pids, measure_start, &s))
            .map_err(|e| eprintln!("imks-loadgen: warning: no CPU sampler: {e}"))
            .ok()?;
        Some(CpuSampler { shared, thread: Some(thread) })
    }
}

type Stop = (Mutex<bool>, Condvar);

/// Sleeps until `deadline` or until stopped; `true` when stopped.
fn wait_until(stop: &Stop, deadline: u64) -> bool {
    let Ok(mut stopped) = stop.0.lock() else { return true };
    loop {
        if *stopped {
            return true;
        }
        let now = now_ns();
        if now >= deadline {
            return false;
        }
        stopped = match stop.1.wait_timeout(stopped, Duration::from_nanos(deadline - now)) {
            Ok((s, _)) => s,
            Err(_) => return true,
        };
    }
}

/// Every process's CPU time, or `None` once one of them is gone.
fn read_all(pids: &[u32]) -> Option<Vec<CpuTimes>> {
    pids.iter().map(|&pid| sys::proc_cpu(pid).ok()).collect()
}

fn sum(all: &[CpuTimes]) -> CpuTimes {
    all.iter().fold(CpuTimes::default(), |a, c| a.add(c))
}

fn sample(pids: &[u32], measure_start: u64, stop: &Stop) -> Option<ServerCpu> {
    if wait_until(stop, measure_start) {
        return None;
    }
    let first = read_all(pids)?;
    let (mut prev, mut prev_t) = (sum(&first), measure_start);
    let (mut per_second, mut rss) = (Vec::new(), Vec::new());
    loop {
        let stopped = wait_until(stop, prev_t + 1_000_000_000);
        let now = now_ns();
        let Some(all) = read_all(pids) else { break };
        let c = sum(&all);
        let dt = (now - prev_t) as f64 / 1e9;
        if !stopped && dt > 0.0 {
            per_second.push(c.since(&prev).total() / dt * 100.0);
            rss.push(pids.iter().filter_map(|&pid| sys::proc_rss_kb(pid).ok()).sum());
        }
        if stopped {
            let per_process = all.iter().zip(&first).map(|(now, then)| now.since(then)).collect();
            return Some(ServerCpu {
                cpu: c.since(&sum(&first)),
                per_process,
                wall_s: (now - measure_start) as f64 / 1e9,
                per_second,
                rss_kb_per_second: rss,
            });
        }
        (prev, prev_t) = (c, now);
    }
    None
}

/// See [`ServerProbe::cpu_sampler`].
pub struct CpuSampler {
    shared: Arc<Stop>,
    thread: Option<JoinHandle<Option<ServerCpu>>>,
}

impl CpuSampler {
    /// Takes the last sample now and returns the CPU used since the measurement started.
    pub fn finish(mut self) -> Option<ServerCpu> {
        self.stop();
        self.thread.take()?.join().ok().flatten()
    }

    fn stop(&self) {
        if let Ok(mut s) = self.shared.0.lock() {
            *s = true;
        }
        self.shared.1.notify_all();
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.stop();
    }
}
