//! The messages between shards: the whole set the runtime carries ([`ShardMsg`]), the pumps
//! that move them over the rings, and the calls protocols use: [`Shard::invoke_on`] (run a
//! closure on another shard, seastar's `invoke_on`), [`Shard::call`] (and wait for its
//! answer), [`Shard::post`] (never waits) and [`Shard::push_ring`] (waits for ring space).

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;

use super::config::RingFullPolicy;
use super::conn::ConnId;
use super::Shard;
use crate::metrics;
use crate::ring::{PushError, ShardRings};

/// A message between shards: the whole set the runtime carries. Frames are encoded once by
/// the sender and the `Bytes` shared; anything a protocol needs beyond frames travels as a
/// closure ([`ShardMsg::Invoke`]) defined by that protocol, so a new protocol adds no variant.
pub enum ShardMsg {
    /// A frame for one session owned by the receiving shard.
    ToSession { id: ConnId, frame: Bytes },
    /// A frame for every local member of `room` on the receiving shard, but `except`.
    ToRoom { room: Arc<str>, frame: Bytes, except: Option<ConnId> },
    /// A broadcast encoded once by the sender, the same `Arc` for every shard: each receiving
    /// shard delivers it to its own members.
    Broadcast(Arc<dyn Broadcast>),
    /// Work to run on the receiving shard (seastar's `invoke_on`).
    Invoke(Task),
}

/// A closure run on another shard by [`Shard::invoke_on`].
pub type Task = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// A protocol's broadcast as it travels to the other shards ([`ShardMsg::Broadcast`]).
pub trait Broadcast: Send + Sync {
    /// Delivers it to the receiving shard's members.
    fn deliver(self: Arc<Self>, shard: &Rc<Shard>);
}

/// Drains every inbound ring whenever the doorbell rings. The node rings it on shutdown too.
pub(super) async fn ring_pump(
    shard: Rc<Shard>,
    inboxes: Vec<Option<crate::ring::Inbox<ShardMsg>>>,
    bell: Arc<crate::ring::Doorbell>,
) {
    let mut rings = ShardRings { index: shard.index, outboxes: Vec::new(), inboxes, bell: bell.clone() };
    loop {
        bell.wait().await;
        if shard.node.is_stopping() && !shard.stopping.is_set() {
            shard.stopping.set();
        }
        loop {
            // Work queues up behind the shard's services (the chat worker); while one is far
            // behind, leave messages in the rings so their senders feel the backpressure.
            shard.services_ready().await;
            let n = rings.drain_all(256, |_, msg| shard.handle_ring(msg));
            metrics::add(&shard.stats.ring_received, n as u64);
            if n == 0 {
                break;
            }
            // Let sessions write what just arrived before taking more.
            monoio::time::sleep(Duration::ZERO).await;
        }
    }
}

/// Pushes what [`Shard::post`] could not, in order, waiting for ring space.
pub(super) async fn backlog_pump(shard: Rc<Shard>) {
    loop {
        poll_fn(|cx| {
            if shard.backlog.borrow().iter().any(|q| !q.is_empty()) {
                Poll::Ready(())
            } else {
                *shard.backlog_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let destinations = shard.backlog.borrow().len();
        for to in 0..destinations {
            loop {
                let Some(msg) = shard.backlog.borrow_mut()[to].pop_front() else { break };
                shard.push_ring(to, msg).await;
            }
        }
    }
}

impl Shard {
    fn handle_ring(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::ToSession { id, frame } => {
                if let Some(c) = self.session(id) {
                    self.deliver(&c, frame);
                }
            }
            ShardMsg::ToRoom { room, frame, except } => self.deliver_room(&room, &frame, except),
            ShardMsg::Broadcast(b) => b.deliver(self),
            ShardMsg::Invoke(task) => task(self),
        }
    }

    /// Runs `task` on shard `to` without waiting (seastar's `invoke_on`): at once when `to` is
    /// this shard, otherwise over the ring ([`Shard::post`], ordered behind earlier posts).
    pub fn invoke_on(&self, to: usize, task: impl FnOnce(&Rc<Shard>) + Send + 'static) {
        if to != self.index {
            return self.post(to, ShardMsg::Invoke(Box::new(task)));
        }
        if let Some(this) = self.this() {
            task(&this);
        }
    }

    /// Runs `f` on shard `owner` and waits for its answer (seastar's `submit_to`). The answer
    /// comes back over the ring to this shard. `None` when the message or its answer was
    /// dropped (`rings.full_policy = "drop"`) or the node is stopping; callers bound the wait
    /// with their own timeout.
    pub async fn call<R, F, Fut>(&self, owner: usize, f: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = R> + 'static,
    {
        if owner == self.index {
            return Some(f(self.this()?).await);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let from = self.index;
        self.push_ring(
            owner,
            ShardMsg::Invoke(Box::new(move |owner: &Rc<Shard>| {
                let owner = owner.clone();
                monoio::spawn(async move {
                    let answer = f(owner.clone()).await;
                    owner.post(from, ShardMsg::Invoke(Box::new(move |_: &Rc<Shard>| drop(tx.send(answer)))));
                });
            })),
        )
        .await;
        rx.await.ok()
    }

    /// This shard as the `Rc` its tasks share: the shard running on this thread, which is the
    /// one `&self` names (one shard per thread).
    fn this(&self) -> Option<Rc<Shard>> {
        super::current().filter(|s| std::ptr::eq(&**s, self))
    }

    /// Sends a message to shard `to` without waiting, for code that cannot await (handlers).
    /// A full ring puts it in an ordered per-destination backlog (or drops it under the `drop`
    /// policy, counted); later posts queue behind it so order is kept.
    pub fn post(&self, to: usize, msg: ShardMsg) {
        let queued_behind = self.backlog.borrow().get(to).is_some_and(|q| !q.is_empty());
        let msg = if queued_behind {
            msg
        } else {
            let mut outboxes = self.outboxes.borrow_mut();
            let Some(Some(outbox)) = outboxes.get_mut(to) else { return };
            match outbox.try_push(msg) {
                Ok(()) => {
                    metrics::add(&self.stats.ring_pushes, 1);
                    return;
                }
                Err((PushError::Closed, _)) => return,
                Err((PushError::Full, m)) => {
                    metrics::add(&self.stats.ring_full, 1);
                    if self.node.config.ring_full_policy == RingFullPolicy::Drop {
                        metrics::add(&self.stats.ring_drops, 1);
                        return;
                    }
                    m
                }
            }
        };
        if let Some(q) = self.backlog.borrow_mut().get_mut(to) {
            q.push_back(msg);
        }
        if let Some(w) = self.backlog_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Pushes onto the ring to shard `to`, applying `rings.full_policy` when it is full. The
    /// ring is never borrowed across an await.
    pub async fn push_ring(&self, to: usize, msg: ShardMsg) {
        let mut msg = Some(msg);
        let mut counted_full = false;
        poll_fn(|cx| {
            let Some(m) = msg.take() else { return Poll::Ready(()) };
            let mut outboxes = self.outboxes.borrow_mut();
            let Some(Some(outbox)) = outboxes.get_mut(to) else { return Poll::Ready(()) };
            match outbox.try_push(m) {
                Ok(()) => {
                    metrics::add(&self.stats.ring_pushes, 1);
                    // Space came back: let other local tasks waiting on rings retry too.
                    if counted_full {
                        for w in self.ring_waiters.borrow_mut().drain(..) {
                            w.wake();
                        }
                    }
                    Poll::Ready(())
                }
                Err((PushError::Closed, _)) => Poll::Ready(()),
                Err((PushError::Full, m)) => {
                    if !counted_full {
                        counted_full = true;
                        metrics::add(&self.stats.ring_full, 1);
                    }
                    if self.node.config.ring_full_policy == RingFullPolicy::Drop {
                        metrics::add(&self.stats.ring_drops, 1);
                        return Poll::Ready(());
                    }
                    outbox.register_space_waker(cx.waker());
                    match outbox.try_push(m) {
                        Ok(()) => {
                            metrics::add(&self.stats.ring_pushes, 1);
                            Poll::Ready(())
                        }
                        Err((PushError::Closed, _)) => Poll::Ready(()),
                        Err((PushError::Full, m)) => {
                            self.ring_waiters.borrow_mut().push(cx.waker().clone());
                            msg = Some(m);
                            Poll::Pending
                        }
                    }
                }
            }
        })
        .await
    }

    /// Resolves once every service can take more work from the rings
    /// ([`ShardService::poll_ring_ready`]).
    async fn services_ready(&self) {
        if !self.services.borrow().has_hooks() {
            return;
        }
        let hooks = self.services.borrow().hooks();
        for h in hooks.iter() {
            poll_fn(|cx| h.poll_ring_ready(cx)).await;
        }
    }
}
