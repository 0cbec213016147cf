//! `connect`: a storm of handshakes. Each one is a TCP connect, the WebSocket upgrade and, for
//! Socket.IO, the open packet, `40` and the server's `40{"sid":...}`; its latency is the time to
//! connected. The connection is then closed in the background (close frame, wait for the
//! server's FIN) so the next handshake does not wait for it.
//!
//! Closed loop: `--connections` loops, each handshaking again as soon as the previous one is
//! connected. Open loop: handshakes start at `--rate` per second at fixed intended times, at most
//! `--connections` in progress at once; latency counts from the intended time, so waiting for a
//! free slot shows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::clock::{now_ns, secs_to_ns};
use crate::conn::{self, ConnError};
use crate::params::{share, Load};
use crate::plan::Sched;
use crate::shared::{Run, RUN};
use crate::stats::Tally;
use crate::token;

/// How long a closed connection waits for the server's FIN before resetting.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Runs the storm until the window ends; returns when every handshake it started is done.
pub async fn storm(run: Arc<Run>) {
    let p = &run.params;
    let (wi, wk) = p.worker.map(|w| (w.index, w.count)).unwrap_or((0, 1));
    let (first, loops) = share(p.connections, wi, wk);
    let mut tasks = JoinSet::new();
    match p.load {
        Load::Closed { .. } => {
            for id in first..first + loops {
                let run = run.clone();
                tasks.spawn(async move { closed_loop(&run, id).await });
            }
        }
        Load::Open { rate } => {
            let sem = Arc::new(Semaphore::new(loops.max(1)));
            let mut sched = Sched::new(Load::Open { rate }, wk, wi, run.control.start_ns());
            let end = run.control.planned_end();
            let mut n = 0u64;
            while let Sched::Open { next: t, .. } = sched {
                if t >= end {
                    break;
                }
                run.timer.sleep_until(t).await;
                if run.control.phase() != RUN {
                    break;
                }
                let mut tally = Tally::default();
                if !run.admit(t, &mut tally, n as usize) {
                    break;
                }
                n += 1;
                let (run, sem) = (run.clone(), sem.clone());
                let seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t;
                let index = n as usize * wk + wi;
                tasks.spawn(async move {
                    let Ok(_permit) = sem.acquire_owned().await else { return };
                    handshake(&run, t, seed, index, &mut tally).await;
                    run.stats.flush(n as usize, &mut tally);
                });
                sched.advance();
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(run: &Arc<Run>, id: usize) {
    let mut tally = Tally::default();
    let mut n = 0u64;
    while run.control.phase() == RUN {
        let t = now_ns();
        if !run.admit(t, &mut tally, id) {
            break;
        }
        n += 1;
        handshake(run, t, (id as u64) << 32 ^ n ^ t, id, &mut tally).await;
        run.stats.flush(id, &mut tally);
    }
}

/// One handshake intended at `t`, by connection `index` (which picks its token).
async fn handshake(run: &Arc<Run>, t: u64, seed: u64, index: usize, tally: &mut Tally) {
    let p = &run.params;
    let timeout = Duration::from_nanos(secs_to_ns(p.connect_timeout_s));
    let token = token::for_connection(p, index);
    // Handshakes are dealt over the URLs like connections.
    tally.target = index % run.targets.len();
    let connect =
        conn::connect(&run.targets[tally.target], run.source_ip, p.protocol, p.max_message, seed, token.as_deref());
    let res = tokio::time::timeout(timeout, connect).await;
    let err = match res {
        Ok(Ok(c)) => {
            run.record(t, now_ns(), tally);
            tokio::spawn(c.close(CLOSE_WAIT));
            return;
        }
        Ok(Err(e)) => e,
        Err(_) => ConnError::Timeout,
    };
    run.stats.error(err.kind());
    if run.measured(t) {
        tally.failed += 1;
    }
}
