//! Time: one monotonic nanosecond clock shared by every process on the host, and a timer
//! precise to tens of microseconds for open-loop sends.
//!
//! Open-loop latency is measured from the *intended* send time, so a late timer shows up as
//! latency. Tokio's timer wheel rounds every deadline up to the next millisecond, which would add
//! up to a millisecond to every open-loop sample; [`Timer`] instead keeps a heap of deadlines on
//! one thread that sleeps on a futex with a 1 µs timer slack and wakes the due tasks itself.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

/// Nanoseconds on `CLOCK_MONOTONIC`: the same clock in every process on the host, so a
/// publisher in one worker process and a subscriber in another can compare stamps.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch, for the report's start time.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9).round().max(0.0) as u64
}

struct Entry {
    deadline: u64,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(o.deadline, o.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// The timer thread; stops when dropped.
pub struct Timer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Arms deadlines on a [`Timer`]; cheap to clone.
#[derive(Clone)]
pub struct TimerHandle {
    shared: Arc<Shared>,
}

impl Timer {
    /// Starts the thread; `slack_ns` is the least time between two wake-ups (0: every deadline
    /// on its own).
    pub fn start(slack_ns: u64) -> std::io::Result<Timer> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread =
            std::thread::Builder::new().name("loadgen-timer".into()).spawn(move || timer_thread(&s, slack_ns))?;
        Ok(Timer { shared, thread: Some(thread) })
    }

    pub fn handle(&self) -> TimerHandle {
        TimerHandle { shared: self.shared.clone() }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.stop = true;
        }
        self.shared.cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TimerHandle {
    /// Wakes `waker` once `now_ns() >= deadline`. Re-arming the same deadline twice wakes twice,
    /// so callers remember what they armed.
    pub fn arm(&self, deadline: u64, waker: &Waker) {
        let Ok(mut st) = self.shared.state.lock() else { return };
        let earlier = st.heap.peek().is_none_or(|Reverse(top)| deadline < top.deadline);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Reverse(Entry { deadline, seq, waker: waker.clone() }));
        drop(st);
        // The thread only needs waking when its sleep would overshoot the new deadline.
        if earlier {
            self.shared.cv.notify_one();
        }
    }

    /// A future that completes at `deadline` (nanoseconds on [`now_ns`]).
    pub fn sleep_until(&self, deadline: u64) -> Sleep {
        Sleep { timer: self.clone(), deadline, armed: false }
    }
}

fn timer_thread(shared: &Shared, slack_ns: u64) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack; 1 µs instead of
    // the default 50 µs lets futex timeouts end close to the deadline.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
    let mut due = Vec::new();
    // After a wake-up the thread sleeps at least `slack_ns`: deadlines that fall in between are
    // served together, late by at most the slack (which then shows as latency, never hidden).
    let mut next_allowed = 0u64;
    let Ok(mut st) = shared.state.lock() else { return };
    loop {
        if st.stop {
            return;
        }
        let now = now_ns();
        if now >= next_allowed {
            while st.heap.peek().is_some_and(|Reverse(e)| e.deadline <= now) {
                if let Some(Reverse(e)) = st.heap.pop() {
                    due.push(e.waker);
                }
            }
            if !due.is_empty() {
                next_allowed = now + slack_ns;
                drop(st);
                for w in due.drain(..) {
                    w.wake();
                }
                st = match shared.state.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                continue;
            }
        }
        let wait =
            st.heap.peek().map(|Reverse(e)| Duration::from_nanos(e.deadline.max(next_allowed).saturating_sub(now)));
        st = match wait {
            Some(d) => match shared.cv.wait_timeout(st, d) {
                Ok((s, _)) => s,
                Err(_) => return,
            },
            None => match shared.cv.wait(st) {
                Ok(s) => s,
                Err(_) => return,
            },
        };
    }
}

/// See [`TimerHandle::sleep_until`].
pub struct Sleep {
    timer: TimerHandle,
    deadline: u64,
    armed: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now_ns() >= self.deadline {
            return Poll::Ready(());
        }
        if !self.armed {
            self.armed = true;
            self.timer.arm(self.deadline, cx.waker());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_wakes_close_to_the_deadline() {
        let timer = Timer::start(0).unwrap();
        let h = timer.handle();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut late = Vec::new();
        rt.block_on(async {
            for _ in 0..20 {
                let d = now_ns() + 300_000;
                h.sleep_until(d).await;
                late.push(now_ns() - d);
            }
        });
        late.sort_unstable();
        // Generous: the machine is shared, but the median must be far under tokio's 1 ms tick.
        assert!(late[10] < 500_000, "median lateness {} ns", late[10]);
    }
}
