//! The scenarios: how a connection is set up and driven ([`conn_task`]), pacing in the
//! driver's terms, and the behaviors themselves: [`roundtrip`] (echo, ack), [`fanout`]
//! (subscribers and publishers), [`chat`] (pairs over imks's native protocol), [`connect`] (the
//! handshake storm), [`soak`] (three kinds of client with churn); idle connections only answer
//! heartbeats. Who each connection is and how
//! its sends are paced is decided before, in [`crate::plan`].

pub mod chat;
pub mod connect;
pub mod fanout;
pub mod roundtrip;
pub mod soak;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::clock::{now_ns, secs_to_ns};
use crate::conn::{self, drive, Behavior, ConnError, End};
use crate::plan::{room_name, Due, Role, Sched};
use crate::shared::{Run, SETUP, STOP};
use crate::token;

/// Pacing in the connection driver's terms: what a sender should tell the driver, given its
/// schedule and what is in flight. Here rather than in [`crate::plan`], which sits below the
/// driver and so cannot name its [`Produce`](conn::Produce) or [`Cx`](conn::Cx).
impl Sched {
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
    if let Role::Soak { .. } = role {
        // A slot of its own kind: a client, then its replacements (see `soak`).
        return soak::slot_task(run, sem, slot, role).await;
    }
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
        let target = &run.targets[run.plan.target(slot) % run.targets.len()];
        let mut c = conn::connect(target, run.source_ip, p.protocol, p.max_message, seed, token.as_deref()).await?;
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
        Role::Idle | Role::Soak { .. } => go(conn, IdleConn, &run, slot).await,
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
