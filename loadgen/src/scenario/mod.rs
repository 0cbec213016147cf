//! The scenarios: who each connection is ([`Plan`]), how sends are paced ([`Sched`]), how a
//! connection is set up and driven ([`conn_task`]), and the behaviors themselves:
//! [`roundtrip`] (echo, ack), [`fanout`] (subscribers and publishers), [`chat`] (pairs over
//! imks's native protocol), [`connect`] (the handshake storm); idle connections only answer
//! heartbeats.

pub mod chat;
pub mod connect;
pub mod fanout;
pub mod roundtrip;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::clock::{now_ns, secs_to_ns};
use crate::conn::{self, drive, Behavior, ConnError, End};
use crate::params::{share, Load, Params, Scenario};
use crate::shared::{Run, SETUP, STOP};
use crate::token;

/// What one connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Echo or ack requests; `sender` is its index among all senders of the run.
    RoundTrip {
        sender: usize,
    },
    Subscriber {
        room: usize,
    },
    Publisher {
        index: usize,
    },
    /// One of a chat pair: `index` over the run's connections, `peer` the other one's local slot.
    Chat {
        index: usize,
        peer: usize,
    },
    Idle,
}

impl Role {
    /// The connection's index over the run (worker processes included), which picks its token.
    fn index(self, slot: usize, worker: usize, workers: usize) -> usize {
        match self {
            Role::RoundTrip { sender } => sender,
            Role::Chat { index, .. } => index,
            _ => slot * workers + worker,
        }
    }
}

/// This process's share of the run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub roles: Vec<Role>,
    /// Sending connections over all processes; open-loop pacing divides the rate among them.
    pub senders: usize,
    /// Fan-out: subscribers of each room in this process.
    pub local_subs: Vec<usize>,
    pub max_local_subs: usize,
    pub local_publishers: usize,
}

/// Splits the run between worker processes. Fan-out deals each room's subscribers round-robin
/// so every process holds some of every room, and publisher `i` runs in process `i % K`: a
/// publisher then sees deliveries of its own messages locally, which closed-loop fan-out needs.
/// Chat deals out pairs, connections `2k` and `2k + 1`, so each learns its peer's user locally.
pub fn plan(p: &Params) -> Plan {
    let (wi, wk) = p.worker.map(|w| (w.index, w.count)).unwrap_or((0, 1));
    let mut plan = Plan::default();
    match p.scenario {
        Scenario::Echo | Scenario::Ack => {
            let (first, n) = share(p.connections, wi, wk);
            plan.roles = (first..first + n).map(|sender| Role::RoundTrip { sender }).collect();
            plan.senders = p.connections;
        }
        Scenario::Idle => {
            let (_, n) = share(p.connections, wi, wk);
            plan.roles = vec![Role::Idle; n];
        }
        Scenario::Fanout => {
            plan.local_subs = vec![0; p.rooms];
            for room in 0..p.rooms {
                for s in 0..p.subscribers {
                    if (room * p.subscribers + s) % wk == wi {
                        plan.roles.push(Role::Subscriber { room });
                        plan.local_subs[room] += 1;
                    }
                }
            }
            plan.max_local_subs = plan.local_subs.iter().copied().max().unwrap_or(0);
            for index in (wi..p.publishers).step_by(wk) {
                plan.roles.push(Role::Publisher { index });
                plan.local_publishers += 1;
            }
            plan.senders = p.publishers;
        }
        Scenario::Chat => {
            let (first, pairs) = share(p.connections / 2, wi, wk);
            for pair in 0..pairs {
                let (a, b) = (2 * pair, 2 * pair + 1);
                let index = 2 * (first + pair);
                plan.roles.push(Role::Chat { index, peer: b });
                plan.roles.push(Role::Chat { index: index + 1, peer: a });
            }
            plan.senders = p.connections;
        }
        Scenario::Connect => {}
    }
    plan
}

pub fn room_name(room: usize) -> String {
    format!("r{room}")
}

/// When the next send is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send now, stamped with this time (the intended one in open loop).
    Now(u64),
    At(u64),
}

/// Pacing of one sender.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sched {
    /// Sends at `base + k × interval`; senders are staggered by `index / rate` so the sum is
    /// evenly spread.
    Open {
        base: u64,
        interval: f64,
        k: u64,
        next: u64,
    },
    Closed {
        window: usize,
    },
}

impl Sched {
    pub fn new(load: Load, senders: usize, index: usize, start: u64) -> Sched {
        match load {
            Load::Open { rate } => {
                let base = start + (index as f64 / rate * 1e9) as u64;
                Sched::Open { base, interval: senders as f64 / rate * 1e9, k: 0, next: base }
            }
            Load::Closed { window } => Sched::Closed { window },
        }
    }

    pub fn due(&self, now: u64) -> Due {
        match *self {
            Sched::Open { next, .. } if next > now => Due::At(next),
            Sched::Open { next, .. } => Due::Now(next),
            Sched::Closed { .. } => Due::Now(now),
        }
    }

    /// The (intended) time of the next send when one is due now and may go; otherwise what the
    /// sender should do instead: nothing more before `end`, wait until a later time, or wait
    /// for room (`blocked`: too much in flight or buffered).
    pub fn next_send(&self, now: u64, end: u64, blocked: bool) -> Result<u64, crate::conn::Produce> {
        use crate::conn::Produce;
        match self.due(now) {
            Due::At(d) if d >= end => Err(Produce::Idle),
            Due::At(d) => Err(Produce::At(d)),
            Due::Now(t) if t >= end => Err(Produce::Idle),
            Due::Now(_) if blocked => Err(Produce::Blocked),
            Due::Now(t) => Ok(t),
        }
    }

    /// [`next_send`](Self::next_send) for a request/response sender with `inflight` messages
    /// unanswered (blocked at [`in_flight_limit`](Self::in_flight_limit)`(open_max)`) or too
    /// much buffered in `io`, once the run admits the send (it counts measured ones).
    pub fn next_paced(
        &self,
        now: u64,
        end: u64,
        (inflight, open_max): (usize, usize),
        io: &crate::conn::Io,
        cx: &mut crate::conn::Cx<'_>,
    ) -> Result<u64, crate::conn::Produce> {
        let blocked = inflight >= self.in_flight_limit(open_max) || io.pending() >= crate::conn::WBUF_HIGH;
        let t = self.next_send(now, end, blocked)?;
        if cx.admit(t) {
            Ok(t)
        } else {
            Err(crate::conn::Produce::Idle)
        }
    }

    /// How many messages may be in flight: the window in closed loop, `open_max` in open loop.
    pub fn in_flight_limit(&self, open_max: usize) -> usize {
        match *self {
            Sched::Open { .. } => open_max,
            Sched::Closed { window } => window,
        }
    }

    pub fn advance(&mut self) {
        if let Sched::Open { base, interval, k, next } = self {
            *k += 1;
            *next = *base + (*k as f64 * *interval) as u64;
        }
    }

    /// Open loop: intended sends in `[from, to)` not made yet.
    pub fn remaining(&self, from: u64, to: u64) -> u64 {
        let Sched::Open { base, interval, k, next } = *self else { return 0 };
        if interval <= 0.0 {
            return 0;
        }
        let count_before = |t: u64| -> u64 {
            if t <= base {
                0
            } else {
                ((t - base) as f64 / interval).ceil() as u64
            }
        };
        let lo = count_before(from.max(next)).max(k);
        count_before(to).saturating_sub(lo)
    }
}

/// Counts, at the end of a run, the open-loop sends a sender never made.
pub fn count_unsent(sched: Option<&Sched>, cx: &mut crate::conn::Cx<'_>) {
    if cx.run.stats.total_reached() {
        return;
    }
    if let Some(s) = sched {
        cx.tally.unsent += s.remaining(cx.run.control.measure_start(), cx.run.control.planned_end());
    }
}

/// How a connection task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    SetupFailed,
    /// Open until the run stopped.
    Alive,
    /// Lost during the run.
    Dropped,
}

/// One connection's life: its handshake (at most `connect_concurrency` at once, each within
/// the connect timeout), then its behavior until the run stops.
pub async fn conn_task(run: Arc<Run>, sem: Arc<Semaphore>, slot: usize, role: Role) -> Outcome {
    let Ok(permit) = sem.acquire().await else { return Outcome::SetupFailed };
    let fail = |kind: &'static str| {
        run.stats.error(kind);
        run.setup_failed.fetch_add(1, Ordering::Relaxed);
        Outcome::SetupFailed
    };
    if run.control.phase() != SETUP {
        return fail("setup_timeout");
    }
    let t0 = now_ns();
    let p = &run.params;
    let seed = (slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t0;
    let timeout = std::time::Duration::from_nanos(secs_to_ns(p.connect_timeout_s));
    let (wi, wk) = p.worker.map(|w| (w.index, w.count)).unwrap_or((0, 1));
    let token = token::for_connection(p, role.index(slot, wi, wk));
    let res = tokio::time::timeout(timeout, async {
        let mut c =
            conn::connect(&run.target, run.source_ip, p.protocol, p.max_message, seed, token.as_deref()).await?;
        match role {
            Role::Subscriber { room } => fanout::join(&mut c, &room_name(room)).await?,
            Role::Chat { .. } => {
                let user = chat::hello(&mut c).await?;
                if let Ok(mut d) = run.directory.lock() {
                    d.register(slot, &user);
                }
            }
            _ => {}
        }
        Ok::<_, ConnError>(c)
    })
    .await;
    drop(permit);
    let conn = match res {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return fail(e.kind()),
        Err(_) => return fail(ConnError::Timeout.kind()),
    };
    if let Ok(mut h) = run.setup_hist.lock() {
        h.saturating_record(now_ns().saturating_sub(t0).max(1));
    }
    run.setup_ok.fetch_add(1, Ordering::Relaxed);
    run.alive.fetch_add(1, Ordering::Relaxed);
    let end = match role {
        Role::RoundTrip { sender } => go(conn, roundtrip::RoundTrip::new(p, sender), &run, slot).await,
        Role::Subscriber { .. } => go(conn, fanout::Subscriber, &run, slot).await,
        Role::Publisher { index } => go(conn, fanout::Publisher::new(p, index), &run, slot).await,
        Role::Chat { index, peer } => go(conn, chat::Chat::new(p, index, peer), &run, slot).await,
        Role::Idle => go(conn, IdleConn, &run, slot).await,
    };
    run.alive.fetch_sub(1, Ordering::Relaxed);
    match end {
        End::Stopped => Outcome::Alive,
        End::Failed(e) => {
            if run.control.phase() != STOP {
                run.stats.error(e.kind());
            }
            Outcome::Dropped
        }
    }
}

async fn go<B: Behavior>(conn: conn::Conn, beh: B, run: &Run, slot: usize) -> End {
    drive(conn, beh, run, slot, slot).await
}

/// Holds the connection open; heartbeats are answered by the driver.
struct IdleConn;

impl Behavior for IdleConn {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::WorkerSlot;

    #[test]
    fn open_schedule_spreads_senders_and_counts_what_is_left() {
        let a = Sched::new(Load::Open { rate: 1000.0 }, 4, 0, 1_000);
        let b = Sched::new(Load::Open { rate: 1000.0 }, 4, 1, 1_000);
        // 1000/s over 4 senders: each every 4 ms, the second 1 ms after the first.
        assert_eq!(a.due(0), Due::At(1_000));
        assert_eq!(b.due(0), Due::At(1_001_000));
        let mut a = a;
        assert_eq!(a.due(5_000), Due::Now(1_000));
        a.advance();
        assert_eq!(a.due(5_000), Due::At(4_001_000));
        // Intended sends in [0, 1 s): at 4 ms steps from 4.001 ms, 249 of them.
        assert_eq!(a.remaining(0, 1_000_000_000), 249);
        assert_eq!(Sched::new(Load::Closed { window: 2 }, 1, 0, 0).due(7), Due::Now(7));
    }

    #[test]
    fn fanout_plan_splits_rooms_and_publishers_over_workers() {
        let mut p = Params::new(Scenario::Fanout, "ws://127.0.0.1:1");
        p.rooms = 2;
        p.subscribers = 5;
        p.publishers = 3;
        let mut subs = [0usize; 2];
        let mut pubs = 0;
        for index in 0..2 {
            p.worker = Some(WorkerSlot { index, count: 2, source_ip: None });
            let plan = plan(&p);
            for (r, n) in plan.local_subs.iter().enumerate() {
                assert!(*n >= 2);
                subs[r] += n;
            }
            pubs += plan.local_publishers;
        }
        assert_eq!((subs, pubs), ([5, 5], 3));
    }

    #[test]
    fn chat_plan_keeps_pairs_in_one_process() {
        let mut p = Params::new(Scenario::Chat, "ws://127.0.0.1:1");
        p.connections = 10;
        let mut indices = Vec::new();
        for index in 0..2 {
            p.worker = Some(WorkerSlot { index, count: 2, source_ip: None });
            let plan = plan(&p);
            assert_eq!(plan.senders, 10);
            for (slot, role) in plan.roles.iter().enumerate() {
                let Role::Chat { index, peer } = *role else { panic!("{role:?}") };
                let Role::Chat { index: other, peer: back } = plan.roles[peer] else { panic!() };
                assert_eq!((index ^ 1, back), (other, slot));
                indices.push(index);
            }
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..10).collect::<Vec<_>>());
    }
}
