//! Per-node, per-IP and per-session limits (the `[limits]` section): the connection counters
//! checked on accept, the token bucket that bounds each session's message rate, and name
//! validation for namespaces and rooms.
//!
//! The per-shard connection limit lives in the shard's slab ([`crate::shard::Shard::register`]);
//! the node and per-IP counters here are shared by every shard, so they are atomics and, for
//! the per-IP map, a striped mutex touched only on accept and close (never per message; see
//! `docs/adr/006-per-ip-connection-counter.md`).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// `[limits]`: what one client may hold or send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Most simultaneous connections from one IP address on the whole node; more get 503.
    /// 0 means no limit (the default: behind a load balancer every client has its address).
    /// Default 0.
    pub max_connections_per_ip: usize,
    /// Messages a session may send per second, sustained (token bucket refill rate). Applies to
    /// native `/ws` messages and Socket.IO packets. 0 means no limit. A flood guard, not a
    /// quota: generous enough for a client that catches up (thousands of messages after a
    /// reconnect), low enough that one connection cannot take a shard's core. Default 2000.
    pub message_rate: u32,
    /// Messages a session may send in a burst above the sustained rate (bucket size).
    /// Default 20000.
    pub message_burst: u32,
    /// Most rooms one session (native) or one socket (Socket.IO) may be in. Default 100.
    pub max_rooms_per_session: usize,
    /// Longest namespace, room, channel or user name, in bytes. Default 128.
    pub max_name_bytes: usize,
    /// Most users one native session may follow with `presence:subscribe`. Default 1000.
    pub max_presence_subscriptions: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections_per_ip: 0,
            message_rate: 2_000,
            message_burst: 20_000,
            max_rooms_per_session: 100,
            max_name_bytes: 128,
            max_presence_subscriptions: 1000,
        }
    }
}

/// The resolved `[limits]`.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsConfig {
    pub max_connections_per_ip: usize,
    /// `None` when rate limiting is off.
    pub rate: Option<RateLimit>,
    pub max_rooms_per_session: usize,
    pub max_name_bytes: usize,
    pub max_presence_subscriptions: usize,
}

/// A token bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// A `[limits]` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("limits.{field}: {message}")]
pub struct LimitsConfigError {
    pub field: &'static str,
    pub message: &'static str,
}

pub fn resolve(s: &LimitsSection) -> Result<LimitsConfig, LimitsConfigError> {
    let rate = match s.message_rate {
        0 => None,
        per_second => {
            if s.message_burst == 0 {
                return Err(LimitsConfigError { field: "message_burst", message: "must be at least 1" });
            }
            Some(RateLimit { per_second, burst: s.message_burst })
        }
    };
    if s.max_name_bytes == 0 {
        return Err(LimitsConfigError { field: "max_name_bytes", message: "must be at least 1" });
    }
    if s.max_rooms_per_session == 0 {
        return Err(LimitsConfigError { field: "max_rooms_per_session", message: "must be at least 1" });
    }
    Ok(LimitsConfig {
        max_connections_per_ip: s.max_connections_per_ip,
        rate,
        max_rooms_per_session: s.max_rooms_per_session,
        max_name_bytes: s.max_name_bytes,
        max_presence_subscriptions: s.max_presence_subscriptions,
    })
}

impl Default for LimitsConfig {
    /// What the file's defaults resolve to.
    fn default() -> Self {
        let s = LimitsSection::default();
        LimitsConfig {
            max_connections_per_ip: s.max_connections_per_ip,
            rate: Some(RateLimit { per_second: s.message_rate, burst: s.message_burst }),
            max_rooms_per_session: s.max_rooms_per_session,
            max_name_bytes: s.max_name_bytes,
            max_presence_subscriptions: s.max_presence_subscriptions,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `per_second`; each message takes one.
/// Pure: the caller passes the time, so it is tested without sleeping.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self { tokens: limit.burst as f32, last: now }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * limit.per_second as f32).min(limit.burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub use crate::names::{validate_name, NameError};
use crate::util::rlimit;

/// Connections open on the whole node, checked against `server.max_connections`.
#[derive(Debug, Default)]
pub struct NodeCounter {
    open: AtomicUsize,
}

impl NodeCounter {
    /// Counts one more connection unless `max` are open.
    pub fn try_acquire(&self, max: usize) -> bool {
        self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

const IP_STRIPES: usize = 64;

/// Open connections per client IP, node-wide. Striped so shards accepting at the same time
/// rarely meet on one lock, and entries are removed when their count drops to zero so the map
/// only holds connected addresses.
pub struct IpCounter {
    stripes: Vec<Mutex<HashMap<IpAddr, u32>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for IpCounter {
    fn default() -> Self {
        Self { stripes: (0..IP_STRIPES).map(|_| Mutex::new(HashMap::new())).collect(), hasher: Default::default() }
    }
}

impl IpCounter {
    fn stripe(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.stripes[(self.hasher.hash_one(ip) as usize) % IP_STRIPES]
    }

    /// Counts one more connection from `ip` unless it already has `max` (0 = no limit).
    /// The returned guard gives it back when dropped, on whichever shard the socket ends.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpGuard> {
        if max == 0 {
            return Some(IpGuard { counter: None, ip });
        }
        // A poisoned stripe only means another thread panicked mid-update of a counter map;
        // the counts are still usable.
        let mut map = self.stripe(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n as usize >= max {
            return None;
        }
        *n += 1;
        Some(IpGuard { counter: Some(self.clone()), ip })
    }

    /// Connections open from `ip`.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let map = self.stripe(&ip).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }

    fn release(&self, ip: IpAddr) {
        let mut map = self.stripe(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// One counted connection from an IP; released on drop.
pub struct IpGuard {
    counter: Option<Arc<IpCounter>>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if let Some(c) = &self.counter {
            c.release(self.ip);
        }
    }
}

/// Descriptors a node holds besides its connections (listeners, doorbells, the sidecar's runtime
/// and clients): what the open-files limit must leave beyond `server.max_connections`.
pub const OPEN_FILES_MARGIN: u64 = 256;

/// The most connections the process can hold: its hard open-files limit (an unlimited one
/// counts as the kernel's `fs.nr_open`), less [`OPEN_FILES_MARGIN`]; at least 1. What
/// `server.max_connections = 0` resolves to, since [`raise_open_files`] lifts the soft limit to
/// the hard one at start-up.
pub fn connections_the_fd_limit_allows() -> usize {
    let hard = match rlimit::nofile() {
        Err(_) => 1024,
        Ok(lim) if lim.rlim_max == libc::RLIM_INFINITY => rlimit::nr_open().unwrap_or(1 << 20),
        Ok(lim) => lim.rlim_max,
    };
    usize::try_from(hard.saturating_sub(OPEN_FILES_MARGIN)).unwrap_or(usize::MAX).max(1)
}

/// The process's open-files limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub now: u64,
}

/// Raises the process's soft limit on open files to its hard limit, as a server that holds one
/// descriptor per connection needs: the soft limit is often 1024 (systemd's default for
/// services, many shells), which would cap a node at about a thousand connections while the
/// hard limit allows far more. An unlimited hard limit is capped at the kernel's
/// `fs.nr_open`, the most `setrlimit` accepts.
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    let mut lim = rlimit::nofile()?;
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = rlimit::nr_open().unwrap_or(before);
    }
    if target <= before {
        return Ok(OpenFiles { before, now: before });
    }
    lim.rlim_cur = target;
    // SAFETY: setrlimit reads one rlimit from `lim`, a valid local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OpenFiles { before, now: target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let limit = RateLimit { per_second: 10, burst: 5 };
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit, t0);
        for i in 0..5 {
            assert!(b.take(limit, t0), "burst message {i}");
        }
        assert!(!b.take(limit, t0));
        // 100 ms refills exactly one token at 10/s.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(limit, t1));
        assert!(!b.take(limit, t1));
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take(limit, t2));
        }
        assert!(!b.take(limit, t2));
    }

    #[test]
    fn node_counter_stops_at_max() {
        let c = NodeCounter::default();
        assert!(c.try_acquire(2));
        assert!(c.try_acquire(2));
        assert!(!c.try_acquire(2));
        c.release();
        assert!(c.try_acquire(2));
        assert_eq!(c.open(), 2);
    }

    #[test]
    fn ip_counter_limits_each_address_and_forgets_released_ones() {
        let c = Arc::new(IpCounter::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = c.try_acquire(a, 2).unwrap();
        let g2 = c.try_acquire(a, 2).unwrap();
        assert!(c.try_acquire(a, 2).is_none());
        let gb = c.try_acquire(b, 2).unwrap();
        assert_eq!((c.count(a), c.count(b)), (2, 1));
        drop(g1);
        let g3 = c.try_acquire(a, 2).unwrap();
        drop((g2, g3, gb));
        assert_eq!((c.count(a), c.count(b)), (0, 0));
        assert!(c.stripes.iter().all(|s| s.lock().unwrap().is_empty()));
        // No limit: nothing is counted.
        let free: Vec<_> = (0..10).map(|_| c.try_acquire(a, 0).unwrap()).collect();
        assert_eq!(c.count(a), 0);
        drop(free);
    }

    #[test]
    fn the_default_is_what_the_file_defaults_resolve_to() {
        let d = LimitsConfig::default();
        let r = resolve(&LimitsSection::default()).unwrap();
        assert_eq!(
            (d.rate, d.max_rooms_per_session, d.max_name_bytes),
            (r.rate, r.max_rooms_per_session, r.max_name_bytes)
        );
        assert_eq!(
            (d.max_connections_per_ip, d.max_presence_subscriptions),
            (r.max_connections_per_ip, r.max_presence_subscriptions)
        );
    }

    #[test]
    fn resolve_rejects_zeros_by_name() {
        let e = resolve(&LimitsSection { message_burst: 0, ..Default::default() }).unwrap_err();
        assert_eq!(e.to_string(), "limits.message_burst: must be at least 1");
        assert!(resolve(&LimitsSection { message_rate: 0, message_burst: 0, ..Default::default() })
            .unwrap()
            .rate
            .is_none());
        assert_eq!(
            resolve(&LimitsSection { max_name_bytes: 0, ..Default::default() }).unwrap_err().field,
            "max_name_bytes"
        );
    }
}
