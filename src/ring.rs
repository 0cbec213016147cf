//! Bounded lock-free SPSC rings between shards, one per ordered pair, each with a doorbell.
//!
//! Shard `i` owns the producer of ring `i → j` and the consumer of ring `j → i` for every `j`.
//! A push is a wait-free store into [`rtrb`]'s ring followed by ringing the receiver's
//! [`Doorbell`]: an atomic flag plus an [`AtomicWaker`], so a burst of pushes wakes the receiving
//! shard once. One doorbell serves all of a shard's inbound rings, so one task drains them all.
//!
//! A full ring is never grown. The sender either drops the message ([`Outbox::try_push`]) or
//! waits for the receiver to free a slot ([`Outbox::push`]); the receiver wakes a waiting sender
//! after each drain. Both outcomes are counted by the caller.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Wakes the task that drains a shard's inbound rings. Cheap to ring repeatedly: only the first
/// ring after a drain calls the waker.
#[derive(Default)]
pub struct Doorbell {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Doorbell {
    pub fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Resolves once the bell has been rung since the last time this returned.
    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_wait(cx)).await
    }

    fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.rung.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A ring between the swap above and the register would otherwise be missed.
        if self.rung.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// State shared by the two ends of one ring, for a sender waiting on space.
#[derive(Default)]
struct Space {
    wanted: AtomicBool,
    waker: AtomicWaker,
}

/// The sending end of one ring, owned by the sending shard.
pub struct Outbox<T> {
    producer: rtrb::Producer<T>,
    bell: Arc<Doorbell>,
    space: Arc<Space>,
}

/// Why a push did not go through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("ring full")]
    Full,
    #[error("receiving shard is gone")]
    Closed,
}

impl<T> Outbox<T> {
    /// Pushes without waiting; on a full ring the message comes back.
    pub fn try_push(&mut self, msg: T) -> Result<(), (PushError, T)> {
        match self.producer.push(msg) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(rtrb::PushError::Full(msg)) => {
                let err = if self.producer.is_abandoned() { PushError::Closed } else { PushError::Full };
                Err((err, msg))
            }
        }
    }

    /// Pushes, waiting for a free slot when the ring is full. Returns whether it had to wait.
    pub async fn push(&mut self, msg: T) -> Result<bool, PushError> {
        let mut msg = Some(msg);
        let mut waited = false;
        poll_fn(|cx| {
            let Some(m) = msg.take() else { return Poll::Ready(Ok(waited)) };
            match self.try_push(m) {
                Ok(()) => Poll::Ready(Ok(waited)),
                Err((PushError::Closed, _)) => Poll::Ready(Err(PushError::Closed)),
                Err((PushError::Full, m)) => {
                    waited = true;
                    self.space.waker.register(cx.waker());
                    self.space.wanted.store(true, Ordering::Release);
                    // The receiver may have drained between our failed push and `wanted`.
                    match self.try_push(m) {
                        Ok(()) => Poll::Ready(Ok(waited)),
                        Err((PushError::Closed, _)) => Poll::Ready(Err(PushError::Closed)),
                        Err((PushError::Full, m)) => {
                            msg = Some(m);
                            Poll::Pending
                        }
                    }
                }
            }
        })
        .await
    }

    /// Asks the receiver to wake `waker` after its next drain. Call, then retry the push once:
    /// a drain between the failed push and this call would otherwise go unnoticed.
    pub fn register_space_waker(&self, waker: &std::task::Waker) {
        self.space.waker.register(waker);
        self.space.wanted.store(true, Ordering::Release);
    }

    pub fn free_slots(&self) -> usize {
        self.producer.slots()
    }
}

/// The receiving end of one ring, owned by the receiving shard.
pub struct Inbox<T> {
    consumer: rtrb::Consumer<T>,
    space: Arc<Space>,
}

impl<T> Inbox<T> {
    /// Takes up to `max` messages, handing each to `f`, and wakes a sender waiting for space.
    /// Returns how many were taken.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        let mut n = 0;
        while n < max {
            match self.consumer.pop() {
                Ok(m) => {
                    f(m);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if n > 0 && self.space.wanted.swap(false, Ordering::AcqRel) {
            self.space.waker.wake();
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        self.consumer.is_empty()
    }
}

/// One shard's ends of the mesh: an outbox to every other shard, an inbox from every other shard
/// and the doorbell all of its inboxes ring.
pub struct ShardRings<T> {
    pub index: usize,
    /// `outboxes[j]` sends to shard `j`; `None` at `j == index`.
    pub outboxes: Vec<Option<Outbox<T>>>,
    /// `inboxes[j]` receives from shard `j`; `None` at `j == index`.
    pub inboxes: Vec<Option<Inbox<T>>>,
    pub bell: Arc<Doorbell>,
}

impl<T> ShardRings<T> {
    /// Drains every inbox once, at most `batch` messages from each so one busy peer cannot
    /// starve the others. Returns how many messages were handled.
    pub fn drain_all(&mut self, batch: usize, mut f: impl FnMut(usize, T)) -> usize {
        let mut total = 0;
        for (from, inbox) in self.inboxes.iter_mut().enumerate() {
            if let Some(inbox) = inbox {
                total += inbox.drain(batch, |m| f(from, m));
            }
        }
        total
    }

    /// Whether any inbox still holds messages.
    pub fn pending(&self) -> bool {
        self.inboxes.iter().flatten().any(|i| !i.is_empty())
    }
}

/// Builds the full mesh for `shards` shards with `capacity` slots per ring.
pub fn mesh<T>(shards: usize, capacity: usize) -> Vec<ShardRings<T>> {
    let bells: Vec<Arc<Doorbell>> = (0..shards).map(|_| Arc::new(Doorbell::default())).collect();
    let mut out: Vec<ShardRings<T>> = (0..shards)
        .map(|index| ShardRings {
            index,
            outboxes: (0..shards).map(|_| None).collect(),
            inboxes: (0..shards).map(|_| None).collect(),
            bell: bells[index].clone(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from == to {
                continue;
            }
            let (producer, consumer) = rtrb::RingBuffer::new(capacity);
            let space = Arc::new(Space::default());
            out[from].outboxes[to] = Some(Outbox { producer, bell: bells[to].clone(), space: space.clone() });
            out[to].inboxes[from] = Some(Inbox { consumer, space });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_push_reports_full_and_returns_the_message() {
        let mut m = mesh::<u32>(2, 2);
        let (a, b) = m.split_at_mut(1);
        let tx = a[0].outboxes[1].as_mut().unwrap();
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        assert_eq!(tx.try_push(3), Err((PushError::Full, 3)));
        let mut got = vec![];
        b[0].drain_all(16, |from, v| got.push((from, v)));
        assert_eq!(got, vec![(0, 1), (0, 2)]);
        assert!(tx.try_push(3).is_ok());
    }

    #[test]
    fn closed_receiver_is_reported() {
        let mut m = mesh::<u32>(2, 1);
        let b = m.pop().unwrap();
        drop(b);
        let tx = m[0].outboxes[1].as_mut().unwrap();
        tx.try_push(1).unwrap();
        assert_eq!(tx.try_push(2), Err((PushError::Closed, 2)));
    }
}
