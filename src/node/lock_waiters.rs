//! The Acquire requests waiting on this node for a held lock, per lock name: a FIFO queue (who
//! may propose when the lock is free), each waiter with a wake-up signal of its own (a
//! generation it watches). Waiting writes nothing to the log: a waiter proposes only when the
//! applied state says the lock is free and it heads the queue (`rpc/lock_service.rs`).
//!
//! Shared by the driver, which wakes waiters ([`LockWaiters::changed`] after an applied grant,
//! release or expiry wakes the head of that lock's queue only, the one waiter that may act on
//! it, so a release costs one look at the lock however many wait; [`LockWaiters::changed_all`]
//! after a snapshot install or a change of role or term wakes every waiter), and the Lock
//! service, whose waiters join with [`LockWaiters::join`]. A [`Waiter`] leaves its queue when
//! dropped (granted, timed out, failed, or its RPC cancelled), and wakes the waiter that heads
//! the queue after it.
//!
//! What it may import: std and `tokio::sync::watch` (no runtime, no I/O). The mutex is held
//! only for a few map operations, never across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// The waiters of every lock on this node. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct LockWaiters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ids handed to waiters, so a waiter finds itself in its queue.
    next_id: u64,
    /// Waiters over all locks.
    total: usize,
    /// By lock name; an entry exists only while its queue is not empty.
    locks: HashMap<String, Queue>,
}

/// The waiters of one lock.
#[derive(Debug, Default)]
struct Queue {
    /// Waiter ids in arrival order, each with the sender of its wake-up generation; the
    /// front may propose when the lock is free.
    order: VecDeque<(u64, watch::Sender<u64>)>,
}

/// The bound on waiting Acquires is reached: the request must not wait here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyWaiting {
    /// The bound.
    pub limit: usize,
}

impl LockWaiters {
    /// Joins the queue of lock `name`, unless `limit` waiters (over all locks) are already
    /// waiting. Join before reading the lock's state: every change after the join wakes the
    /// waiter, so none is missed between the read and the wait.
    ///
    /// # Errors
    /// [`TooManyWaiting`] when `limit` waiters are waiting on this node.
    pub fn join(self: &Arc<Self>, name: &str, limit: usize) -> Result<Waiter, TooManyWaiting> {
        let mut inner = self.lock();
        if inner.total >= limit {
            return Err(TooManyWaiting { limit });
        }
        inner.next_id += 1;
        inner.total += 1;
        let id = inner.next_id;
        let (wake, generation) = watch::channel(0);
        let queue = inner.locks.entry(name.to_owned()).or_default();
        queue.order.push_back((id, wake));
        Ok(Waiter {
            registry: Arc::clone(self),
            name: name.to_owned(),
            id,
            generation,
        })
    }

    /// The holder or token of lock `name` changed (an applied grant of a new token, a
    /// release, an expiry that ended a grant): wakes the head of its queue, the one waiter
    /// that may propose. The others move up when it leaves.
    pub fn changed(&self, name: &str) {
        if let Some(queue) = self.lock().locks.get(name) {
            queue.wake_head();
        }
    }

    /// Wakes every waiter: the state machine was replaced (snapshot), or this node's role or
    /// term changed (waiters check leadership again).
    pub fn changed_all(&self) {
        for queue in self.lock().locks.values() {
            for (_, wake) in &queue.order {
                bump(wake);
            }
        }
    }

    /// How many requests wait on this node.
    pub fn len(&self) -> usize {
        self.lock().total
    }

    /// Whether no request waits on this node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A poisoned mutex is still usable: no operation leaves the maps half-updated.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Queue {
    fn wake_head(&self) {
        if let Some((_, wake)) = self.order.front() {
            bump(wake);
        }
    }
}

fn bump(generation: &watch::Sender<u64>) {
    generation.send_modify(|g| *g = g.wrapping_add(1));
}

/// One waiting Acquire's place in its lock's queue; leaves the queue when dropped.
#[derive(Debug)]
pub struct Waiter {
    registry: Arc<LockWaiters>,
    name: String,
    id: u64,
    generation: watch::Receiver<u64>,
}

impl Waiter {
    /// Whether this waiter is the first of its lock's queue on this node.
    pub fn is_head(&self) -> bool {
        let inner = self.registry.lock();
        inner
            .locks
            .get(&self.name)
            .and_then(|q| q.order.front())
            .is_some_and(|&(front, _)| front == self.id)
    }

    /// Waits until this waiter is woken after the last call (or after the join). Returns at
    /// once if it was woken meanwhile.
    pub async fn changed(&mut self) {
        // The sender lives in the queue this waiter is in, so it outlives the receiver;
        // an error (it cannot happen) just ends the wait early.
        let _ = self.generation.changed().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        let Some(queue) = inner.locks.get_mut(&self.name) else {
            return;
        };
        let Some(at) = queue.order.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        queue.order.remove(at);
        if queue.order.is_empty() {
            inner.locks.remove(&self.name);
        } else if at == 0 {
            // The next in line heads the queue now.
            queue.wake_head();
        }
        inner.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn registry() -> Arc<LockWaiters> {
        Arc::new(LockWaiters::default())
    }

    /// Whether `w` was woken (its generation changed) without waiting.
    async fn woken(w: &mut Waiter) -> bool {
        tokio::time::timeout(Duration::from_millis(10), w.changed())
            .await
            .is_ok()
    }

    #[test]
    fn the_first_to_join_heads_its_locks_queue_until_it_leaves() {
        let r = registry();
        let a = r.join("L", 10).unwrap();
        let b = r.join("L", 10).unwrap();
        let c = r.join("L", 10).unwrap();
        let other = r.join("M", 10).unwrap();
        assert!(a.is_head() && !b.is_head() && !c.is_head());
        assert!(other.is_head(), "each lock has its own queue");
        drop(b);
        assert!(a.is_head() && !c.is_head());
        drop(a);
        assert!(c.is_head());
        assert_eq!(r.len(), 2);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_its_queue_and_wakes_the_next_in_line() {
        let r = registry();
        let a = r.join("L", 10).unwrap();
        let mut b = r.join("L", 10).unwrap();
        let mut other = r.join("M", 10).unwrap();
        assert!(!woken(&mut b).await);
        // A cancelled RPC drops its future, and with it the waiter.
        let task = tokio::spawn(async move {
            let _a = a;
            std::future::pending::<()>().await;
        });
        task.abort();
        let _ = task.await;
        assert!(woken(&mut b).await, "the next in line is woken");
        assert!(b.is_head());
        assert!(!woken(&mut other).await, "other locks are not");
        drop(b);
        drop(other);
        assert!(r.is_empty());
        assert!(r.lock().locks.is_empty(), "no queue outlives its waiters");
    }

    /// A release with 10,000 waiters wakes one of them, not all (each woken waiter asks the
    /// driver for the lock's state: a crowd would fill its inbox).
    #[tokio::test]
    async fn a_change_wakes_the_head_of_that_lock_and_changed_all_wakes_every_one() {
        let r = registry();
        let mut a = r.join("L", 10).unwrap();
        let mut b = r.join("L", 10).unwrap();
        let mut m = r.join("M", 10).unwrap();
        r.changed("L");
        r.changed("nobody waits on this");
        assert!(woken(&mut a).await);
        assert!(!woken(&mut b).await, "only the head is woken");
        assert!(!woken(&mut m).await);
        assert!(!woken(&mut a).await, "one change wakes once");
        r.changed_all();
        assert!(woken(&mut a).await && woken(&mut b).await && woken(&mut m).await);
        // A waiter behind the head leaving wakes nobody; the head leaving wakes the next.
        let mut c = r.join("L", 10).unwrap();
        drop(b);
        assert!(!woken(&mut a).await && !woken(&mut c).await);
        drop(a);
        assert!(woken(&mut c).await && c.is_head());
    }

    #[test]
    fn joins_beyond_the_bound_are_refused_and_leaving_makes_room() {
        let r = registry();
        let waiters: Vec<Waiter> = ["L", "M", "L"]
            .iter()
            .map(|name| r.join(name, 3).unwrap())
            .collect();
        assert_eq!(r.join("N", 3).unwrap_err(), TooManyWaiting { limit: 3 });
        assert_eq!(r.len(), 3);
        drop(waiters);
        assert!(r.join("N", 3).is_ok());
    }
}
