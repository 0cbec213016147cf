//! Write coalescing under load: while a shard is busy, broadcast frames wait a moment so that
//! more of them leave in each socket write.
//!
//! On loopback and on real links alike, a small socket write costs the kernel several
//! microseconds whatever it carries, so a shard that fans each broadcast out to many sessions
//! spends most of its time in `send`. When it is not busy, every broadcast is written at once.
//! When its thread's CPU use over a tick reaches `websocket.coalesce_on_busy_percent`,
//! sessions hold broadcast frames until the shard's next flush, at most `websocket.coalesce_us`
//! later, so several broadcasts share one write. It stops when the shard would be busy less
//! than `websocket.coalesce_off_busy_percent` writing each frame at once: what it measures, times
//! the frames each write carried (coalescing lowers the very share it is judged by). A busy
//! shard's latency is already queueing, and batching shortens the queue. Every
//! eight flushes it checks that it batches: when the shard's WebSocket writes carried fewer than
//! one and a half frames each on average since the last check, broadcasts are too sparse to
//! share writes (few, or spread over rooms that each get few), and it stays off for ten ticks
//! whatever the load.
//!
//! Only broadcasts wait. Anything else a session is owed (acks, replies, pongs, closes) is
//! written at once and takes whatever broadcasts are waiting along with it, in order.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::config::Coalesce;
use super::conn::Conn;
use super::Shard;
use crate::metrics::{self, ShardStats};

/// Flushes after which coalescing judges whether it batches anything.
const JUDGED_AFTER_FLUSHES: u64 = 8;
/// Ticks coalescing stays off after it found that it batched nothing.
const REST_TICKS: u32 = 10;

/// One shard's coalescing state: whether it is on, and the flushes sessions wait for.
#[derive(Default)]
pub struct Coalescer {
    active: Cell<bool>,
    /// Flushes made since coalescing last judged whether it batches, and the shard's frames
    /// written and socket writes made then.
    flushes: Cell<u64>,
    judged_at: Cell<(u64, u64)>,
    /// Ticks left before coalescing may turn on again, after it batched nothing.
    resting: Cell<u32>,
    /// Counts flushes; a session waits for it to move on.
    epoch: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
    /// Something other than a session waits for the next flush (held broadcasts).
    requested: Cell<bool>,
    /// Broadcasts are held on the shard (Socket.IO or native rooms) for the next flush.
    held: Cell<bool>,
    /// The held broadcasts are being released.
    releasing: Cell<bool>,
    flusher: Cell<Option<Waker>>,
    /// Wall-clock time and thread CPU time at the last tick.
    mark: Cell<Option<(Instant, Duration)>>,
    /// WebSocket frames written and socket writes made by the shard at the last tick.
    written: Cell<(u64, u64)>,
}

/// Whether coalescing should be on after a tick in which the shard's thread was busy
/// `busy_percent` of the time, or, while it is on, would have been without it
/// ([`busy_unbatched`]). Between the two thresholds it stays as it was, so a shard near one of
/// them does not flap.
pub fn decide(active: bool, busy_percent: u64, cfg: &Coalesce) -> bool {
    if active {
        busy_percent >= u64::from(cfg.off_busy_percent)
    } else {
        busy_percent >= u64::from(cfg.on_busy_percent)
    }
}

/// Whether holding broadcasts shares writes, judged from the `frames` written in `writes` socket
/// writes once enough flushes have passed: a write that carries a single frame saved nothing,
/// and the broadcast in it was only delayed. `None` until then, or when nothing was written
/// over WebSocket (long-polling responses batch by themselves).
pub fn batches(frames: u64, writes: u64, flushes: u64) -> Option<bool> {
    // At least one and a half frames per write, on average.
    (flushes >= JUDGED_AFTER_FLUSHES && writes > 0).then(|| frames.saturating_mul(2) >= writes.saturating_mul(3))
}

/// How busy a shard that wrote `frames` WebSocket frames in `writes` socket writes over a tick,
/// busy `busy_percent` of it, would have been writing each frame at once: socket writes are most
/// of a fan-out's cost, and coalescing divides their number by the frames each carries. Judged
/// on the share it measures, a shard that coalesces well falls under the off mark because it
/// coalesces, stops, saturates and starts again (at 500 broadcasts/s to 1000 members, a third of
/// them went unbatched that way).
pub fn busy_unbatched(busy_percent: u64, frames: u64, writes: u64) -> u64 {
    if writes == 0 || frames <= writes {
        return busy_percent;
    }
    busy_percent.saturating_mul(frames) / writes
}

/// CPU time this thread has used, user and system.
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a valid and exclusively borrowed
    // local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(u64::try_from(ts.tv_sec).ok()?, u32::try_from(ts.tv_nsec).ok()?))
}

impl Coalescer {
    pub fn is_active(&self) -> bool {
        self.active.get()
    }

    /// Called by the shard's ticker, on the shard's thread: measures how busy the thread was
    /// since the last tick and, when coalescing is configured, turns it on or off.
    pub fn on_tick(&self, cfg: Option<&Coalesce>, stats: &ShardStats, now: Instant) {
        let Some(cpu) = thread_cpu() else { return };
        let last = self.mark.replace(Some((now, cpu)));
        let frames = stats.frames_out.load(std::sync::atomic::Ordering::Relaxed);
        let writes = stats.ws_writes.load(std::sync::atomic::Ordering::Relaxed);
        let (frames_then, writes_then) = self.written.replace((frames, writes));
        let Some((then, cpu_then)) = last else { return };
        let wall = now.saturating_duration_since(then).as_nanos();
        if wall == 0 {
            return;
        }
        let busy = cpu.saturating_sub(cpu_then).as_nanos().saturating_mul(100) / wall;
        let busy = u64::try_from(busy).unwrap_or(u64::MAX).min(100);
        stats.busy_percent.store(busy, std::sync::atomic::Ordering::Relaxed);
        let Some(cfg) = cfg else { return };
        let was = self.active.get();
        let judged = if was {
            busy_unbatched(busy, frames.wrapping_sub(frames_then), writes.wrapping_sub(writes_then))
        } else {
            busy
        };
        let mut active = decide(was, judged, cfg);
        if self.resting.get() > 0 {
            self.resting.set(self.resting.get() - 1);
            active = false;
        } else if active && was {
            let (frames_judged, writes_judged) = self.judged_at.get();
            match batches(frames.wrapping_sub(frames_judged), writes.wrapping_sub(writes_judged), self.flushes.get()) {
                Some(false) => {
                    // Busy, but with broadcasts too sparse to share writes: holding them would
                    // only delay them.
                    active = false;
                    self.resting.set(REST_TICKS);
                }
                Some(true) => self.reset_gain(frames, writes),
                None => {}
            }
        }
        if !active || !was {
            self.reset_gain(frames, writes);
        }
        self.active.set(active);
        stats.write_coalescing.store(u64::from(active), std::sync::atomic::Ordering::Relaxed);
        if !active {
            // Nobody new waits; those already waiting go now.
            self.flush();
        }
    }

    /// Starts judging afresh from the shard's `frames` written and `writes` made so far.
    fn reset_gain(&self, frames: u64, writes: u64) {
        self.flushes.set(0);
        self.judged_at.set((frames, writes));
    }

    /// Notes that a broadcast was held; the first since the last release asks for a flush.
    pub fn held_one(&self, stats: &ShardStats) {
        metrics::add(&stats.broadcasts_held, 1);
        if !self.held.replace(true) {
            self.request_flush();
        }
    }

    /// Starts releasing the held broadcasts. False when none are held, or when a release is
    /// already under way: what is held meanwhile waits until it is done, so order is kept.
    /// [`Coalescer::end_release`] follows a true.
    pub fn begin_release(&self) -> bool {
        if self.releasing.get() || !self.held.get() {
            return false;
        }
        self.held.set(false);
        self.releasing.set(true);
        true
    }

    pub fn end_release(&self) {
        self.releasing.set(false);
    }

    /// Asks for a flush within the window although no session waits yet: the shard holds
    /// broadcasts that its flusher releases.
    fn request_flush(&self) {
        self.requested.set(true);
        if let Some(f) = self.flusher.take() {
            f.wake();
        }
    }

    /// Lets every waiting session write.
    fn flush(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        for w in std::mem::take(&mut *self.waiters.borrow_mut()) {
            w.wake();
        }
    }

    /// Called by a session's writer that has frames to send. Returns at once unless the shard
    /// is coalescing and everything queued is a broadcast with room to spare; then it returns at
    /// the shard's next flush, or as soon as something that must not wait is queued, the queue
    /// fills or the session ends.
    pub async fn hold(&self, conn: &Conn) {
        if !self.active.get() || !conn.queue.borrow().may_wait() {
            return;
        }
        let epoch = self.epoch.get();
        let mut registered = false;
        poll_fn(|cx| {
            if self.epoch.get() != epoch || conn.reader_done.get() || !conn.queue.borrow().may_wait() {
                conn.holding.set(false);
                return Poll::Ready(());
            }
            conn.set_writer_waker(cx.waker());
            conn.holding.set(true);
            if !registered {
                registered = true;
                self.waiters.borrow_mut().push(cx.waker().clone());
                if let Some(f) = self.flusher.take() {
                    f.wake();
                }
            }
            Poll::Pending
        })
        .await;
    }
}

/// The shard's flusher: once sessions wait, it lets them write `window` later. It sleeps on
/// nothing while no session waits.
pub async fn flusher(shard: Rc<Shard>, window: Duration) {
    let c = &shard.coalesce;
    loop {
        poll_fn(|cx| {
            if c.waiters.borrow().is_empty() && !c.requested.get() {
                c.flusher.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        monoio::time::sleep(window).await;
        c.requested.set(false);
        // Held broadcasts go first and at once; then the sessions holding frames write.
        shard.release_held(true);
        c.flush();
        c.flushes.set(c.flushes.get().saturating_add(1));
        metrics::add(&shard.stats.coalesced_flushes, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(on: u8, off: u8) -> Coalesce {
        Coalesce { window: Duration::from_millis(2), on_busy_percent: on, off_busy_percent: off }
    }

    #[test]
    fn turns_on_at_the_high_mark_and_off_below_the_low_one() {
        let c = cfg(80, 50);
        assert!(!decide(false, 79, &c));
        assert!(decide(false, 80, &c));
        assert!(decide(true, 79, &c), "stays on between the marks");
        assert!(decide(true, 50, &c));
        assert!(!decide(true, 49, &c));
        assert!(!decide(false, 60, &c), "stays off between the marks");
    }

    #[test]
    fn zero_means_always() {
        let c = cfg(0, 0);
        assert!(decide(false, 0, &c));
        assert!(decide(true, 0, &c));
    }

    #[test]
    fn a_hundred_means_only_when_saturated() {
        let c = cfg(100, 100);
        assert!(!decide(false, 99, &c));
        assert!(decide(false, 100, &c));
        assert!(!decide(true, 99, &c));
    }

    #[test]
    fn unbatched_busy_scales_by_the_frames_per_write() {
        assert_eq!(busy_unbatched(40, 0, 0), 40, "nothing written");
        assert_eq!(busy_unbatched(40, 100, 100), 40, "one frame a write");
        assert_eq!(busy_unbatched(40, 50, 100), 40, "never below what it measures");
        assert_eq!(busy_unbatched(40, 700, 100), 280);
        assert_eq!(busy_unbatched(u64::MAX, 2, 1), u64::MAX, "saturates");
    }

    #[test]
    fn a_coalescing_shard_is_judged_on_its_busy_without_batching() {
        let stats = ShardStats::default();
        let c = Coalescer::default();
        let marks = cfg(0, 20);
        let mut now = Instant::now();
        c.on_tick(Some(&marks), &stats, now);
        now += Duration::from_secs(1);
        c.on_tick(Some(&marks), &stats, now);
        assert!(c.is_active());
        // A tick a few percent busy (30 ms of CPU in a second), each write carrying 50 frames:
        // well over the off mark without batching.
        spin(Duration::from_millis(30));
        stats.frames_out.fetch_add(5000, std::sync::atomic::Ordering::Relaxed);
        stats.ws_writes.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
        now += Duration::from_secs(1);
        c.on_tick(Some(&marks), &stats, now);
        assert!(stats.busy_percent.load(std::sync::atomic::Ordering::Relaxed) < 20);
        assert!(c.is_active(), "stays on: it would be saturated writing each frame at once");
        // The same busy with one frame a write: off.
        spin(Duration::from_millis(30));
        stats.frames_out.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
        stats.ws_writes.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
        now += Duration::from_secs(1);
        c.on_tick(Some(&marks), &stats, now);
        assert!(!c.is_active());
    }

    #[test]
    fn batching_is_judged_after_enough_flushes() {
        assert_eq!(batches(1000, 100, JUDGED_AFTER_FLUSHES - 1), None);
        assert_eq!(batches(100, 100, 8), Some(false), "one frame a write saves nothing");
        assert_eq!(batches(149, 100, 8), Some(false));
        assert_eq!(batches(150, 100, 8), Some(true));
        assert_eq!(batches(2000, 100, 9), Some(true));
        assert_eq!(batches(0, 0, 8), None, "nothing written over WebSocket: not judged");
    }

    #[test]
    fn sparse_broadcasts_turn_coalescing_off_for_a_rest() {
        let stats = ShardStats::default();
        let c = Coalescer::default();
        let always = cfg(0, 0);
        let mut now = Instant::now();
        let mut tick = |c: &Coalescer| {
            now += Duration::from_millis(100);
            c.on_tick(Some(&always), &stats, now);
            c.is_active()
        };
        let wrote = |frames: u64, writes: u64| {
            stats.frames_out.fetch_add(frames, std::sync::atomic::Ordering::Relaxed);
            stats.ws_writes.fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
        };
        // Writes before coalescing turned on do not count.
        wrote(1000, 10);
        tick(&c);
        assert!(tick(&c));
        // Busy, but each write carried one frame however many broadcasts each flush released
        // (one per room, each room with its own members).
        c.flushes.set(JUDGED_AFTER_FLUSHES - 1);
        wrote(500, 500);
        assert!(tick(&c), "not judged before the eighth flush");
        c.flushes.set(JUDGED_AFTER_FLUSHES);
        assert!(!tick(&c), "off: it batched nothing");
        for _ in 1..REST_TICKS {
            wrote(3000, 10);
            assert!(!tick(&c), "resting");
        }
        assert!(!tick(&c), "the last tick of the rest");
        assert!(tick(&c), "on again after the rest");
        // Now each write carries two frames: it stays on.
        c.flushes.set(JUDGED_AFTER_FLUSHES);
        wrote(1000, 500);
        assert!(tick(&c));
        assert_eq!(c.flushes.get(), 0, "judged afresh from here");
        let rest = u64::from(REST_TICKS - 1);
        assert_eq!(c.judged_at.get(), (1000 + 500 + rest * 3000 + 1000, 10 + 500 + rest * 10 + 500));
    }

    /// Spins on this thread until it has used `cpu` more CPU time.
    fn spin(cpu: Duration) {
        let until = thread_cpu().unwrap() + cpu;
        while thread_cpu().unwrap() < until {}
    }

    #[test]
    fn a_tick_measures_the_thread_and_decides() {
        let stats = ShardStats::default();
        let c = Coalescer::default();
        // Low marks: on a loaded machine the spinning thread may get only part of the wall time.
        let on = cfg(1, 1);
        let t0 = Instant::now();
        c.on_tick(Some(&on), &stats, t0);
        spin(Duration::from_millis(30));
        c.on_tick(Some(&on), &stats, Instant::now());
        assert!(stats.busy_percent.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        assert!(c.is_active());
        assert_eq!(stats.write_coalescing.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A tick over a long idle stretch turns it off and releases the waiters.
        let epoch = c.epoch.get();
        c.on_tick(Some(&on), &stats, Instant::now() + Duration::from_secs(10));
        assert!(!c.is_active());
        assert_ne!(c.epoch.get(), epoch, "a flush when it turns off");
    }

    #[test]
    fn busy_share_is_measured_without_coalescing() {
        let stats = ShardStats::default();
        let c = Coalescer::default();
        c.on_tick(None, &stats, Instant::now());
        spin(Duration::from_millis(30));
        c.on_tick(None, &stats, Instant::now());
        assert!(stats.busy_percent.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        assert!(!c.is_active());
    }
}
