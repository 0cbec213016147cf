//! Small single-thread synchronisation helpers for code running on a shard.

pub mod rlimit;
pub mod slot_id;
pub mod text;

/// A configuration value that cannot be used: the field's path (`websocket.ping_timeout_ms`)
/// and what is wrong with it. The error of the sections that need no richer one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Refuses 0 for a field that must be at least 1.
pub fn require_positive(field: &str, v: u64) -> Result<(), FieldError> {
    if v == 0 {
        return Err(FieldError::new(field, "must be greater than 0"));
    }
    Ok(())
}

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

/// A one-shot event that any number of local tasks can wait for. Not `Send`: shard-local only.
#[derive(Default)]
pub struct LocalEvent {
    set: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl LocalEvent {
    pub fn set(&self) {
        self.set.set(true);
        // Taken, not drained: an event outlives its waits, and should not keep their storage.
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once the event is set. A wait dropped before that (the other branch of a
    /// `select!` won) takes its waker back: a waker left behind would keep a finished task's
    /// memory alive for as long as the event lives.
    pub fn wait(&self) -> Wait<'_> {
        Wait { event: self, registered: None }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// The future of [`LocalEvent::wait`].
pub struct Wait<'a> {
    event: &'a LocalEvent,
    registered: Option<Waker>,
}

impl std::future::Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.event.set.get() {
            self.registered = None;
            return Poll::Ready(());
        }
        let mut w = self.event.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        drop(w);
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(mine) = self.registered.take() {
            if let Ok(mut w) = self.event.waiters.try_borrow_mut() {
                w.retain(|x| !x.will_wake(&mine));
                if w.is_empty() {
                    *w = Vec::new(); // a session's events mostly wait once: free the storage
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Context;

    struct Task;
    impl std::task::Wake for Task {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    #[test]
    fn a_dropped_wait_leaves_no_waker_behind() {
        let ev = LocalEvent::default();
        let waker = Waker::from(std::sync::Arc::new(Task));
        let mut cx = Context::from_waker(&waker);
        {
            let mut w = Box::pin(ev.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            assert_eq!(ev.waiting(), 1, "one waker per task, however often it polls");
        }
        assert_eq!(ev.waiting(), 0);
        let mut w = Box::pin(ev.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        ev.set();
        assert!(w.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(ev.wait()).as_mut().poll(&mut cx).is_ready(), "a set event stays set");
        assert_eq!(ev.waiting(), 0);
    }
}
