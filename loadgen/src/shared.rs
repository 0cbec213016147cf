//! The state one process shares between its connections: parameters, the phase and its
//! timestamps, counters, the precise timer, fan-out's delivery feedback and chat's directory of
//! users.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use futures_util::task::AtomicWaker;

use crate::clock::TimerHandle;
use crate::error::Error;
use crate::params::{Load, Params, Scenario};
use crate::plan::{spread, Plan};
use crate::stats::{new_hist, Ack, Hist, SoakCounts, Stats, Tally};
use crate::target::Target;

/// Connections are being set up; nothing is sent.
pub const SETUP: u8 = 0;
/// Warm-up and measurement: senders send.
pub const RUN: u8 = 1;
/// The window is over: nothing new is sent, answers still in flight are counted.
pub const DRAIN: u8 = 2;
/// Every connection closes.
pub const STOP: u8 = 3;

/// The phase, its timestamps, and the wakers of every connection so a phase change reaches
/// connections that are waiting on nothing else (idle ones, closed-loop ones before the start).
pub struct Control {
    phase: AtomicU8,
    start: AtomicU64,
    measure_start: AtomicU64,
    planned_end: AtomicU64,
    wakers: Mutex<Vec<Option<Waker>>>,
}

impl Control {
    fn new(slots: usize) -> Control {
        Control {
            phase: AtomicU8::new(SETUP),
            start: AtomicU64::new(0),
            measure_start: AtomicU64::new(u64::MAX),
            planned_end: AtomicU64::new(u64::MAX),
            wakers: Mutex::new(vec![None; slots]),
        }
    }

    pub fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }

    pub fn register(&self, slot: usize, waker: &Waker) {
        if let Ok(mut w) = self.wakers.lock() {
            if let Some(s) = w.get_mut(slot) {
                *s = Some(waker.clone());
            }
        }
    }

    pub fn unregister(&self, slot: usize) {
        if let Ok(mut w) = self.wakers.lock() {
            if let Some(s) = w.get_mut(slot) {
                *s = None;
            }
        }
    }

    /// Starts sending at `start`; the measurement runs from `measure_start` to `planned_end`.
    pub fn start(&self, start: u64, measure_start: u64, planned_end: u64) {
        self.start.store(start, Ordering::Relaxed);
        self.measure_start.store(measure_start, Ordering::Relaxed);
        self.planned_end.store(planned_end, Ordering::Relaxed);
        self.set_phase(RUN);
    }

    pub fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
        if let Ok(w) = self.wakers.lock() {
            for waker in w.iter().flatten() {
                waker.wake_by_ref();
            }
        }
    }

    pub fn start_ns(&self) -> u64 {
        self.start.load(Ordering::Relaxed)
    }

    pub fn measure_start(&self) -> u64 {
        self.measure_start.load(Ordering::Relaxed)
    }

    pub fn planned_end(&self) -> u64 {
        self.planned_end.load(Ordering::Relaxed)
    }

    /// Wakes connection `slot` (soak: churn asked it to leave).
    pub fn wake(&self, slot: usize) {
        if let Ok(w) = self.wakers.lock() {
            if let Some(Some(waker)) = w.get(slot) {
                waker.wake_by_ref();
            }
        }
    }
}

/// Soak: a native client's session as its peer sees it. `user` is set while the session is
/// up and not leaving: only then does the peer send to it, and each message it sends counts
/// one more delivery `owed` to that session.
#[derive(Debug, Default)]
pub struct Seat {
    pub user: Option<Arc<str>>,
    pub owed: u64,
}

/// Soak: the books that make churn countable (see `scenario::soak` for how they are used).
/// Every room and every native pair lives in one process, so these locks are local, and each is
/// taken once per message or per arrival or departure of a client, never on a read path.
pub struct SoakBooks {
    /// Per room (its global number): the measured publishes to it so far. A publish takes the
    /// next number under the lock and carries it; a member remembers the count when it joined
    /// and when it left, and is owed exactly the publishes numbered in between.
    pub rooms: Vec<Mutex<u64>>,
    /// Per local slot (native clients only).
    pub seats: Vec<Mutex<Seat>>,
    /// Per local slot: churn asked the slot's client to leave.
    pub leave: Vec<AtomicBool>,
    pub counts: SoakCounts,
    /// Slots whose task ended (every slot's does at the end of the drain).
    pub finished: AtomicUsize,
    /// Next slot for churn to pick (a position in a fixed permutation of the slots).
    cursor: AtomicUsize,
}

impl SoakBooks {
    fn new(rooms: usize, slots: usize) -> SoakBooks {
        SoakBooks {
            rooms: (0..rooms).map(|_| Mutex::new(0)).collect(),
            seats: (0..slots).map(|_| Mutex::new(Seat::default())).collect(),
            leave: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            counts: SoakCounts::default(),
            finished: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next `n` slots churn takes, spread over the kinds ([`spread`]): every slot comes
    /// round once per cycle.
    pub fn pick(&self, n: usize) -> Vec<usize> {
        let slots = self.leave.len();
        if slots == 0 {
            return Vec::new();
        }
        let first = self.cursor.fetch_add(n, Ordering::Relaxed);
        (first..first + n).map(|k| spread(k % slots, slots)).collect()
    }
}

/// Fan-out closed loop: deliveries of each local publisher's messages seen by local subscribers.
pub struct PubSlot {
    pub delivered: AtomicU64,
    pub waker: AtomicWaker,
}

#[repr(align(128))]
struct Padded<T>(T);

/// Where a publisher learns that its messages arrived, so a window of publishes can be kept in
/// flight without any answer from the server.
pub struct Feedback {
    slots: Box<[Padded<PubSlot>]>,
    stride: usize,
    offset: usize,
}

impl Feedback {
    /// Slots for the publishers `offset, offset + stride, ...` (`count` of them).
    fn new(count: usize, offset: usize, stride: usize) -> Feedback {
        let slots =
            (0..count).map(|_| Padded(PubSlot { delivered: AtomicU64::new(0), waker: AtomicWaker::new() })).collect();
        Feedback { slots, stride: stride.max(1), offset }
    }

    /// The slot of publisher `global`, when it runs in this process.
    pub fn slot(&self, global: u64) -> Option<&PubSlot> {
        let g = usize::try_from(global).ok()?;
        if g < self.offset || (g - self.offset) % self.stride != 0 {
            return None;
        }
        self.slots.get((g - self.offset) / self.stride).map(|p| &p.0)
    }

    pub fn delivered(&self, global: u64) {
        if let Some(s) = self.slot(global) {
            s.delivered.fetch_add(1, Ordering::AcqRel);
            s.waker.wake();
        }
    }
}

/// Chat: the user each connection is (from the server's `connected`), so a sender can address
/// its peer, and how many of this process's sessions each user has, which is how many
/// deliveries a message to that user is owed. Filled during set-up, read once per sender when
/// sending starts (set-up is over by then), so the lock is never on the hot path.
#[derive(Debug, Default)]
pub struct Directory {
    users: Vec<Option<Arc<str>>>,
    sessions: HashMap<Arc<str>, u64>,
}

impl Directory {
    /// Connection `slot` is `user`.
    pub fn register(&mut self, slot: usize, user: &str) {
        if self.users.len() <= slot {
            self.users.resize(slot + 1, None);
        }
        let user: Arc<str> = user.into();
        *self.sessions.entry(user.clone()).or_insert(0) += 1;
        self.users[slot] = Some(user);
    }

    /// The user of connection `slot` and how many sessions it has here; `None` when that
    /// connection was never set up.
    pub fn user(&self, slot: usize) -> Option<(Arc<str>, u64)> {
        let u = self.users.get(slot)?.as_ref()?;
        Some((u.clone(), self.sessions.get(u).copied().unwrap_or(1)))
    }
}

/// Everything a process's connections share.
pub struct Run {
    pub params: Params,
    /// Every `--url`, in order; a connection's is `plan.target(slot)`.
    pub targets: Vec<Target>,
    pub source_ip: Option<IpAddr>,
    pub stats: Stats,
    pub control: Control,
    pub timer: TimerHandle,
    pub feedback: Feedback,
    pub plan: Plan,
    /// Connections set up, and set-ups that failed.
    pub setup_ok: AtomicUsize,
    pub setup_failed: AtomicUsize,
    /// Connections open right now.
    pub alive: AtomicUsize,
    /// Time to connected of the set-up handshakes.
    pub setup_hist: Mutex<Hist>,
    pub directory: Mutex<Directory>,
    /// Soak only.
    pub soak: Option<SoakBooks>,
}

impl Run {
    pub fn new(
        params: &Params,
        targets: Vec<Target>,
        plan: Plan,
        timer: TimerHandle,
        shards: usize,
    ) -> Result<Run, Error> {
        let source_ip = params.worker.and_then(|w| w.source_ip).map(IpAddr::V4);
        let slots = plan.roles.len();
        let (index, count) = params.worker.map(|w| (w.index, w.count)).unwrap_or((0, 1));
        let feedback = match params.load {
            Load::Closed { .. } => Feedback::new(plan.local_publishers, index, count),
            Load::Open { .. } => Feedback::new(0, 0, 1),
        };
        Ok(Run {
            params: params.clone(),
            source_ip,
            stats: Stats::new(shards, params.total, targets.len())?,
            targets,
            control: Control::new(plan.roles.len()),
            timer,
            feedback,
            plan,
            setup_ok: AtomicUsize::new(0),
            setup_failed: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            setup_hist: Mutex::new(new_hist()?),
            directory: Mutex::new(Directory::default()),
            soak: (params.scenario == Scenario::Soak).then(|| SoakBooks::new(params.rooms, slots)),
        })
    }

    /// Whether a message stamped `t` belongs to the measurement.
    pub fn measured(&self, t: u64) -> bool {
        t >= self.control.measure_start() && t < self.control.planned_end()
    }

    /// Decides whether a send stamped `t` may go out, counting it when it is measured. `false`
    /// once the window is over, the run is draining, or `--total` is reached: the sender stops.
    ///
    /// The count goes up before the phase is checked, and the collector switches to the drain
    /// before it reads the count (both sequentially consistent): either the drain sees this
    /// send, or this sender sees the drain and takes the send back. So the drain never ends
    /// while an admitted send is unaccounted for.
    pub fn admit(&self, t: u64, tally: &mut Tally, shard: usize) -> bool {
        if t < self.control.measure_start() {
            return true;
        }
        if t >= self.control.planned_end() || !self.stats.take_ticket() {
            return false;
        }
        self.stats.count_sent(shard);
        if self.control.phase() != RUN {
            self.stats.uncount_sent(shard);
            return false;
        }
        tally.sent += 1;
        true
    }

    /// Counts the answer to (or delivery of) a message stamped `t`, received at `now`.
    pub fn record(&self, t: u64, now: u64, tally: &mut Tally) {
        if self.measured(t) {
            tally.record(now.saturating_sub(t));
        }
    }

    /// Chat: counts an acknowledgement of a message stamped `t`, received at `now`.
    pub fn record_ack(&self, ack: Ack, t: u64, now: u64, tally: &mut Tally) {
        if self.measured(t) {
            tally.record_ack(ack, now.saturating_sub(t));
        }
    }
}
