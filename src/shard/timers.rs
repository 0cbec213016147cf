//! The shard's coarse timer: one ticker per shard checks every connection's deadlines
//! (heartbeats, HTTP header and idle timeouts, write stalls, close timeouts) instead of one
//! timer per connection.

use std::rc::Rc;
use std::time::Instant;

use super::conn::{Conn, Enqueued, FrameKind, Phase};
use super::Shard;
use crate::metrics::CloseReason;
use crate::ws::codec::{encode_frame, Opcode};

/// The shard's coarse timer: heartbeats, HTTP deadlines, write stalls and close timeouts for
/// every connection, checked once per tick instead of one timer per connection.
pub(super) async fn ticker(shard: Rc<Shard>) {
    let cfg = shard.node.config.clone();
    loop {
        monoio::time::sleep(cfg.tick).await;
        let now = Instant::now();
        for (_, c) in shard.conns.borrow().iter() {
            shard.check_timers(c, now);
        }
        shard.pacing.publish_stats(&shard.stats);
        shard.each_service(|s| s.on_tick(&shard));
        shard.coalesce.on_tick(cfg.ws.coalesce.as_ref(), &shard.stats, now);
        if !shard.coalesce.is_active() {
            shard.release_held_broadcasts();
        }
        // A task waiting for ring space is woken by the receiver; this is the safety net for a
        // waiter whose wake went to a task that has since gone away.
        for w in shard.ring_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

impl Shard {
    fn check_timers(&self, c: &Conn, now: Instant) {
        let ws = &self.node.config.ws;
        if c.write_started.get().is_some_and(|t| now.duration_since(t) >= ws.write_timeout) {
            c.abort(CloseReason::WriteTimeout);
            return;
        }
        match c.phase.get() {
            Phase::HttpIdle | Phase::HttpHead => {
                if c.deadline.get().is_some_and(|d| now >= d) {
                    let reason = if c.phase.get() == Phase::HttpHead {
                        CloseReason::HeaderTimeout
                    } else {
                        CloseReason::IdleTimeout
                    };
                    c.deadline.set(None);
                    c.interrupt_read(reason);
                }
            }
            Phase::HttpBusy => {}
            Phase::WebSocket => {
                if c.closing_since.get().is_some_and(|t| now.duration_since(t) >= ws.close_timeout) {
                    c.abort(CloseReason::Shutdown);
                    return;
                }
                if let Some(p) = c.ping_sent.get() {
                    if c.last_rx.get() > p {
                        c.ping_sent.set(None);
                    } else if now.duration_since(p) >= ws.ping_timeout {
                        c.abort(CloseReason::PingTimeout);
                        return;
                    }
                }
                if c.ping_sent.get().is_none()
                    && c.closing_since.get().is_none()
                    && now.duration_since(c.last_rx.get()) >= ws.ping_interval
                {
                    c.ping_sent.set(Some(now));
                    if c.enqueue(FrameKind::Control, encode_frame(Opcode::Ping, b"")) == Enqueued::Overflow {
                        self.close_session(c, 1008, "slow consumer", CloseReason::SlowConsumer);
                    }
                }
            }
        }
    }
}
