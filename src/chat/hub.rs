//! A shard's chat hub and its worker: the queue of [`ChatMsg`]s, its watermarks against the
//! rings, and the dispatch of each message to the directory ([`super::directory`]) or to
//! storage and delivery ([`super::delivery`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::delivery::{self, send_paced, Misses};
use super::directory::{self, HomeEntry};
use super::{ChatConfig, ChatMsg, UserKey};
use crate::shard::{Shard, ShardService};
use crate::store::Store;

/// One shard's chat state: its share of the directory, its store partition and its worker's
/// queue.
pub struct Hub {
    pub(super) config: ChatConfig,
    /// `[store]`: the offline bound doubles as the bound on what waits behind a full queue.
    pub(super) store_cfg: crate::store::StoreConfig,
    pub(super) store: Rc<dyn Store>,
    pub(super) homes: RefCell<HashMap<UserKey, HomeEntry>>,
    inbox: RefCell<VecDeque<ChatMsg>>,
    worker: RefCell<Option<Waker>>,
    pub(super) misses: RefCell<Misses>,
    /// The ring pump, waiting for the inbox to drain below [`INBOX_LOW`].
    room_waiter: RefCell<Option<Waker>>,
}

/// Queued chat work above which the shard stops taking messages off its rings.
const INBOX_HIGH: usize = 65_536;
/// Queued chat work below which it takes them again.
const INBOX_LOW: usize = INBOX_HIGH / 2;

impl Hub {
    /// Starts the chat hub of a shard: registers it and spawns its worker.
    pub fn start(
        shard: &Rc<Shard>,
        config: ChatConfig,
        store_cfg: crate::store::StoreConfig,
        store: Rc<dyn Store>,
    ) -> Rc<Hub> {
        let hub = Rc::new(Hub::new(config, store_cfg, store));
        shard.add_service(hub.clone());
        if let Some(cluster) = shard.service::<crate::cluster::Cluster>() {
            cluster.add_handler(hub.clone());
        }
        monoio::spawn(worker(shard.clone(), hub.clone()));
        hub
    }

    fn new(config: ChatConfig, store_cfg: crate::store::StoreConfig, store: Rc<dyn Store>) -> Self {
        Self {
            config,
            store_cfg,
            store,
            homes: RefCell::new(HashMap::new()),
            inbox: RefCell::new(VecDeque::new()),
            worker: RefCell::new(None),
            misses: RefCell::new(Misses::default()),
            room_waiter: RefCell::new(None),
        }
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    pub fn store_config(&self) -> &crate::store::StoreConfig {
        &self.store_cfg
    }

    /// This shard's partition of the message store.
    pub fn store(&self) -> &Rc<dyn Store> {
        &self.store
    }

    /// The next queued work for the worker; wakes the ring pump once the queue is low again.
    fn poll_next(&self, cx: &mut std::task::Context<'_>) -> Poll<ChatMsg> {
        let mut inbox = self.inbox.borrow_mut();
        match inbox.pop_front() {
            Some(m) => {
                if inbox.len() < INBOX_LOW {
                    if let Some(w) = self.room_waiter.borrow_mut().take() {
                        w.wake();
                    }
                }
                Poll::Ready(m)
            }
            None => {
                *self.worker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Queues work for this shard's worker.
    pub fn accept(&self, msg: ChatMsg) {
        self.inbox.borrow_mut().push_back(msg);
        if let Some(w) = self.worker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// The shard's chat worker: takes queued work in order and starts each piece.
///
/// A piece runs inline until it first waits; one still waiting (for a commit, with the Postgres
/// store) goes on as a task of its own, so many writes are in flight at once and the sidecar can
/// commit them together. Order is kept: a store call fixes its operation's order when it is
/// made ([`crate::store`]), which is here, in queue order, and commits complete in that order.
/// A login reading the user's offline queue holds the messages routed to that user meanwhile
/// ([`super::directory`]), so the queue reaches the new session first without stopping the
/// worker.
async fn worker(shard: Rc<Shard>, hub: Rc<Hub>) {
    loop {
        let next = poll_fn(|cx| hub.poll_next(cx)).await;
        let (s, h) = (shard.clone(), hub.clone());
        run_or_spawn(async move { handle(&s, &h, next).await });
    }
}

/// Polls `work` once here; if it is not finished, spawns it to finish on its own.
fn run_or_spawn(work: impl Future<Output = ()> + 'static) {
    let mut work = Box::pin(work);
    let mut cx = std::task::Context::from_waker(Waker::noop());
    if work.as_mut().poll(&mut cx).is_pending() {
        // Polled again by its task, which registers the task's own waker.
        monoio::spawn(work);
    }
}

/// Runs one queued piece of work.
async fn handle(shard: &Rc<Shard>, hub: &Rc<Hub>, msg: ChatMsg) {
    match msg {
        ChatMsg::Register { user, session } => directory::register(shard, hub, user, session).await,
        ChatMsg::Unregister { user, session } => directory::unregister(shard, hub, user, session),
        ChatMsg::Watch { user, watcher } => directory::watch(shard, hub, user, watcher).await,
        ChatMsg::Unwatch { user, watcher } => directory::unwatch(shard, hub, user, watcher),
        ChatMsg::Store { new, sender, envelope_id, to } => {
            delivery::store(shard, hub, new, sender, envelope_id, to).await
        }
        ChatMsg::Route { user, message, sender } => delivery::route(shard, hub, user, *message, sender).await,
        ChatMsg::Deliver { session, frame, message, sender, targets, origin } => {
            delivery::deliver(shard, hub, session, frame, delivery::Routed { message, sender, targets, origin })
        }
        ChatMsg::Missed { message, sender, targets, origin } => {
            delivery::missed(shard, hub, message, sender, targets, origin).await
        }
        ChatMsg::Requeue { user, message, sender } => delivery::requeue(shard, hub, user, message, sender).await,
        ChatMsg::Remote(env) => super::cluster::remote(shard, hub, env).await,
        ChatMsg::Delivered { conversation, receipt, sender } => {
            delivery::delivered(shard, hub, conversation, receipt, sender).await
        }
        ChatMsg::Read { tenant, reader, conversation, ids } => {
            delivery::read(shard, hub, tenant, reader, conversation, ids).await
        }
        ChatMsg::ToIdentity { user, frame } => {
            super::cluster::publish_identity(shard, &user, &frame);
            directory::to_identity(shard, hub, user, frame)
        }
        ChatMsg::Kick { session } => directory::kick(shard, session),
        ChatMsg::Paced { session, frame } => send_paced(shard, session, frame),
        ChatMsg::Task(task) => task(shard.clone(), hub.clone()).await,
        ChatMsg::History { conversation, before, limit, session, envelope_id } => {
            delivery::history(shard, hub, conversation, before, limit, session, envelope_id).await
        }
    }
}

impl ShardService for Hub {
    /// Copies the store's eviction counts into the shard's metrics.
    fn on_tick(&self, shard: &Shard) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.store.stats();
        let stats = &shard.stats;
        stats.store_evicted_conversations.store(s.evicted_conversations, Relaxed);
        stats.store_evicted_messages.store(s.evicted_messages, Relaxed);
        stats.store_forgotten_dedup.store(s.forgotten_dedup, Relaxed);
    }

    /// Ready while the worker's queue is below its high watermark; otherwise once it has
    /// drained to the low one. A worker that falls behind makes the rings, and through them the
    /// senders, wait instead of growing its queue without bound.
    fn poll_ring_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.inbox.borrow().len() < INBOX_HIGH {
            Poll::Ready(())
        } else {
            *self.room_waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::conn::ConnId;
    use std::sync::Arc;

    #[test]
    fn the_ring_pump_waits_while_the_worker_is_far_behind() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let store: Rc<dyn Store> = Rc::new(crate::store::MemoryStore::new(Default::default()));
        let hub = Hub::new(ChatConfig::default(), Default::default(), store);
        let pumped = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(pumped.clone());
        let mut cx = Context::from_waker(&waker);
        let kick = || ChatMsg::Kick { session: ConnId::new(0, 0, 0) };
        assert!(hub.poll_ring_ready(&mut cx).is_ready(), "an empty queue has room");
        for _ in 0..INBOX_HIGH {
            hub.accept(kick());
        }
        assert!(hub.poll_ring_ready(&mut cx).is_pending(), "a full queue makes the pump wait");
        let worker = Waker::noop();
        let mut wcx = Context::from_waker(worker);
        while hub.inbox.borrow().len() >= INBOX_LOW {
            assert_eq!(pumped.0.load(Ordering::SeqCst), 0, "not woken above the low watermark");
            assert!(hub.poll_next(&mut wcx).is_ready());
        }
        assert!(hub.poll_next(&mut wcx).is_ready());
        assert_eq!(pumped.0.load(Ordering::SeqCst), 1, "woken once below it");
        assert!(hub.poll_ring_ready(&mut cx).is_ready());
    }
}
