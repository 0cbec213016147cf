//! Per-shard services: what the assembler starts on every shard (the Engine.IO table, the chat
//! hub, the Socket.IO server, the authenticator's gate, ...), in the way seastar's
//! `sharded<Service>` starts one instance per core. The shard keeps them by type and knows
//! nothing of what they are; a service that must take part in the shard's life (its tick, the
//! drain at shutdown, the coalesced flush, backpressure on the rings) implements
//! [`ShardService`].

use std::any::{Any, TypeId};
use std::rc::Rc;
use std::task::{Context, Poll};

use super::Shard;

/// The hooks a service may take in the shard's life. Every method has a default that does
/// nothing, so a service implements only what it needs. They run on the shard's thread and
/// must not block.
pub trait ShardService: 'static {
    /// Once per shard tick (`server.tick_ms`): publish gauges, expire state.
    fn on_tick(&self, _shard: &Shard) {}

    /// The node is stopping: the listeners are closed and connections are about to be asked
    /// to close. Sessions that are not plain connections (long-polling) end here.
    fn on_drain(&self, _shard: &Shard) {}

    /// The broadcasts this service holds for the shard's coalesced flush must be sent now:
    /// `at_flush` at the flush itself, otherwise because something else is about to be queued
    /// and must not overtake them ([`super::coalesce`]).
    fn release_held(&self, _shard: &Shard, _at_flush: bool) {}

    /// Whether the service can take more work from the rings. The ring pump polls every
    /// service before it drains, so a service whose queue is far behind makes the rings, and
    /// through them the senders on other shards, wait instead of growing without bound.
    fn poll_ring_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// A service this shard was asked for and does not run: the assembler did not register it.
#[derive(Debug, thiserror::Error)]
#[error("the shard runs no {0} service")]
pub struct MissingService(pub &'static str);

/// The services of one shard, by type. A handful per node, so a lookup is a short scan of
/// type ids rather than a hash.
#[derive(Default)]
pub struct Services {
    by_type: Vec<(TypeId, Rc<dyn Any>)>,
    /// Shared, so that walking them (on every ring drain and tick) copies one pointer.
    hooks: Rc<Vec<Rc<dyn ShardService>>>,
}

impl Services {
    /// Adds a service that takes part in the shard's life. A second service of the same type
    /// replaces the first for lookups.
    pub fn register<T: ShardService>(&mut self, service: Rc<T>) {
        let mut hooks = Vec::clone(&self.hooks);
        hooks.push(service.clone());
        self.hooks = Rc::new(hooks);
        self.provide(service);
    }

    /// Adds a service that only others look up (shared settings, a gate).
    pub fn provide<T: 'static>(&mut self, service: Rc<T>) {
        let id = TypeId::of::<T>();
        self.by_type.retain(|(t, _)| *t != id);
        self.by_type.push((id, service));
    }

    pub fn get<T: 'static>(&self) -> Option<Rc<T>> {
        let id = TypeId::of::<T>();
        let (_, s) = self.by_type.iter().find(|(t, _)| *t == id)?;
        s.clone().downcast::<T>().ok()
    }

    /// The services with hooks, in the order they were registered.
    pub fn hooks(&self) -> Rc<Vec<Rc<dyn ShardService>>> {
        self.hooks.clone()
    }

    pub(super) fn has_hooks(&self) -> bool {
        !self.hooks.is_empty()
    }
}

impl Shard {
    /// This shard's service of type `T`, if the assembler registered one.
    pub fn service<T: 'static>(&self) -> Option<Rc<T>> {
        self.services.borrow().get::<T>()
    }

    /// As [`Shard::service`], for a service the caller cannot work without.
    pub fn require<T: 'static>(&self) -> Result<Rc<T>, MissingService> {
        self.service::<T>().ok_or(MissingService(std::any::type_name::<T>()))
    }

    /// Registers a service with hooks on this shard; for the assembler, before the shard
    /// accepts connections.
    pub fn add_service<T: ShardService>(&self, service: Rc<T>) {
        self.services.borrow_mut().register(service);
    }

    /// Registers a service that others look up; for the assembler.
    pub fn provide<T: 'static>(&self, service: Rc<T>) {
        self.services.borrow_mut().provide(service);
    }

    /// Runs `f` on every service with hooks. The list is copied first, so a hook may look up
    /// or register services.
    pub(super) fn each_service(&self, mut f: impl FnMut(&dyn ShardService)) {
        if !self.services.borrow().has_hooks() {
            return;
        }
        let hooks = self.services.borrow().hooks();
        for h in hooks.iter() {
            f(&**h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(std::cell::Cell<u32>);
    impl ShardService for Counter {}

    #[test]
    fn finds_services_by_type_and_replaces_a_second_of_one_type() {
        let mut s = Services::default();
        assert!(s.get::<Counter>().is_none());
        s.register(Rc::new(Counter(std::cell::Cell::new(1))));
        s.provide(Rc::new(String::from("settings")));
        assert_eq!(s.get::<Counter>().map(|c| c.0.get()), Some(1));
        assert_eq!(s.get::<String>().as_deref().map(String::as_str), Some("settings"));
        s.provide(Rc::new(String::from("newer")));
        assert_eq!(s.get::<String>().as_deref().map(String::as_str), Some("newer"));
        assert_eq!(s.hooks().len(), 1);
        assert!(s.get::<u64>().is_none());
    }
}
