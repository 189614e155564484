//! The state under the pool's lock, [`State`]: the scheduler, the worker slots and
//! idle stack, the worker accounting (`target`, `live`, `busy`, `searching`), the
//! waiting submitters and the producer-side counters; and the decisions made under
//! it: whom to wake or spawn (`dispatch`), which waiter gets a freed place
//! (`grant`, `take_back`), whether the timer task must start.

use std::sync::{Arc, Weak};
use std::task::Waker;

use crate::job::Resolve;
use crate::limit::{Clock, Key};
use crate::stats::{Shard, Telemetry, Totals};

use super::{Granted, Sched, Waiters, Wakers};

/// A worker's entry in the scheduler.
pub(super) struct Slot {
    /// The worker task's waker: to unpark it, or to interrupt its job on abort.
    pub(super) waker: Option<Waker>,
    /// In the idle stack, waiting for a job.
    pub(super) parked: bool,
    /// Woken (or spawned) to look for a job, and not yet checked in.
    pub(super) woken: bool,
    /// The id of the job this worker holds, so a cancel can find and wake it.
    pub(super) running: Option<u64>,
    /// The cell of the blocking closure this worker holds, which no wake can
    /// interrupt: the pool's abort resolves its handle through it. Weak, so
    /// that clearing it under the lock never drops a job's output there.
    pub(super) inline: Option<Weak<dyn Resolve>>,
    pub(super) shard: Arc<Shard>,
}

/// Something to do once the lock is released.
pub(super) enum Action {
    Wake(Waker),
    Spawn(usize, Arc<Shard>),
}

/// What the timer task needs once the lock is released.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum TimerAct {
    None,
    Spawn,
    Notify,
}

// `repr(C)` with the fields every job touches first: they share the lock's cache
// line and the next one (the pair `Padded` aligns), so a critical section moves
// two lines between cores rather than four or five.
#[repr(C)]
pub(crate) struct State {
    /// Jobs running now.
    pub(super) busy: usize,
    pub(super) next_id: u64,
    pub(super) submitted: u64,
    /// Workers wanted (set by the builder and `resize`).
    pub(super) target: usize,
    /// Workers woken or spawned that have not checked in yet.
    pub(super) searching: usize,
    /// Worker tasks alive and not yet decided to exit.
    pub(super) live: usize,
    pub(super) closed: bool,
    pub(super) reaper_running: bool,
    /// Right after the scalars every job touches; its own hot fields come first.
    pub(super) sched: Sched,
    /// Submitters waiting for queue space, and the places granted to them.
    pub(super) waiters: Waiters,
    /// Parked workers, most recently parked last (reused first: its cache is warm).
    pub(super) idle: Vec<usize>,
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) free_slots: Vec<usize>,
    pub(super) rejected: u64,
    /// Jobs cancelled while queued (by their caller, or by abort).
    pub(super) cancelled: u64,
    /// Of `cancelled`, those cancelled by abort.
    pub(super) aborted: u64,
    pub(super) queue_timed_out: u64,
    /// Counters of workers that have exited.
    pub(super) retired: Shard,
}

impl State {
    /// Sets the exported gauges; called under the lock, so the last value set is
    /// the current one. Nothing when the `metrics` feature is off.
    #[inline]
    pub(super) fn publish(&self, t: &Telemetry) {
        t.gauges(self.target.max(self.busy), self.busy, self.sched.queued);
    }

    /// Counts `n` queued jobs cancelled (`by_abort`: by abort or a lost worker).
    pub(super) fn count_cancelled(&mut self, t: &Telemetry, n: u64, by_abort: bool) {
        self.cancelled += n;
        if by_abort {
            self.aborted += n;
        }
        t.cancelled(n);
    }

    pub(super) fn count_queue_timed_out(&mut self, t: &Telemetry) {
        self.queue_timed_out += 1;
        t.queue_timed_out(1);
    }

    pub(super) fn count_rejected(&mut self, t: &Telemetry) {
        self.rejected += 1;
        t.rejected();
    }

    /// The pool's places: its queue capacity plus a job per free worker.
    pub(super) fn places(&self, capacity: usize) -> usize {
        capacity.saturating_add(self.target.saturating_sub(self.busy))
    }

    /// Whether the pool's queue has a place for a job pushed now. Places granted
    /// to waiters do not count: a push takes one of those if it must, and the
    /// grant goes back (`take_back`), so a waiter that was granted a place but is
    /// not polled (a stream's pending submission while its consumer is busy)
    /// cannot keep an idle pool from taking jobs.
    pub(super) fn has_space(&self, capacity: usize) -> bool {
        self.sched.queued < self.places(capacity)
    }

    /// Whether a place is left to grant to a waiter.
    pub(super) fn room_to_grant(&self, capacity: usize) -> bool {
        self.sched.queued.saturating_add(self.waiters.granted) < self.places(capacity)
    }

    /// After a push (of a job of `key`), takes back one grant if the grants no
    /// longer fit: the youngest of the key's if its queue is over (the push took
    /// a place earmarked for the key, or the key's cap was lowered since the
    /// grants were made), else the youngest of all if the pool is over. Returns
    /// whether it took one back: the place that frees may then fit another
    /// waiter, so the caller grants again.
    pub(super) fn take_back(&mut self, capacity: usize, key: Option<&Key>) -> bool {
        if let Some(k) = key {
            let reserved = self.waiters.granted_for(Some(k));
            if reserved > 0 && !self.sched.key_room(k, reserved - 1) {
                return self.waiters.revoke(Some(k)).is_some();
            }
        }
        if self.sched.queued + self.waiters.granted > self.places(capacity) {
            return self.waiters.revoke(None).is_some();
        }
        false
    }

    /// Hands places that may have freed to waiting submitters, oldest first among
    /// those whose key queue has room (see `waiters.rs`), and collects their wakers.
    /// Called after every change that can free a place: a job leaving the queue or
    /// ending, a grant given back, more workers, a key's limits changed.
    pub(super) fn grant(&mut self, capacity: usize, wakers: &mut Wakers) {
        if self.waiters.is_empty() {
            if !self.sched.freed.is_empty() {
                self.sched.freed.clear();
            }
            return;
        }
        let mut freed = std::mem::take(&mut self.sched.freed);
        for key in freed.drain(..) {
            self.waiters.make_ready(Some(&key));
        }
        // Keeps the buffer.
        self.sched.freed = freed;
        while self.waiters.any_ready() && self.room_to_grant(capacity) {
            let sched = &self.sched;
            match self
                .waiters
                .grant_next(|k, reserved| sched.key_room(k, reserved))
            {
                Granted::Woke(w) => wakers.extend(w),
                Granted::Blocked(k) => self.sched.watch(&k),
                Granted::None => break,
            }
        }
    }

    /// Whether the timer task must be spawned or woken for a timer just set.
    pub(super) fn timer_act(&mut self) -> TimerAct {
        if !self.sched.take_timer_dirty() {
            TimerAct::None
        } else if self.reaper_running {
            TimerAct::Notify
        } else {
            self.reaper_running = true;
            TimerAct::Spawn
        }
    }

    /// Wakes or spawns one worker if queued jobs have nobody coming for them.
    ///
    /// At most one worker is searching at a time: a worker that takes a job wakes
    /// the next one if more are queued (see `next_job`). A burst of submissions
    /// therefore wakes workers one hop at a time, as many as the jobs keep busy,
    /// instead of waking every idle worker at once only for most to find nothing.
    pub(super) fn dispatch(&mut self) -> Option<Action> {
        if self.searching > 0 || self.busy >= self.target || !self.sched.startable() {
            return None;
        }
        if let Some(idx) = self.idle.pop() {
            let slot = self.slots[idx].as_mut().expect("idle slot exists");
            slot.parked = false;
            slot.woken = true;
            self.searching += 1;
            return slot.waker.clone().map(Action::Wake);
        }
        if self.live < self.target {
            self.live += 1;
            self.searching += 1;
            let shard = Arc::new(Shard::new());
            let slot = Slot {
                waker: None,
                parked: false,
                woken: true,
                running: None,
                inline: None,
                shard: shard.clone(),
            };
            let idx = match self.free_slots.pop() {
                Some(i) => {
                    self.slots[i] = Some(slot);
                    i
                }
                None => {
                    self.slots.push(Some(slot));
                    self.slots.len() - 1
                }
            };
            return Some(Action::Spawn(idx, shard));
        }
        None
    }

    /// Unparks every parked worker (to exit, or to re-check after close) and
    /// returns their wakers, to wake once the lock is released.
    pub(super) fn unpark_all(&mut self, out: &mut Wakers) {
        while let Some(idx) = self.idle.pop() {
            let slot = self.slots[idx].as_mut().expect("idle slot exists");
            slot.parked = false;
            slot.woken = true;
            self.searching += 1;
            out.extend(slot.waker.clone());
        }
    }

    /// After close, once nothing is queued, unparks idle workers so that they exit.
    /// (A worker parks while every queued job is held by a key limit or rate; the
    /// last of those may then leave the queue without it.)
    pub(super) fn release_idle_if_drained(&mut self, out: &mut Wakers) {
        if self.closed && self.sched.queued == 0 && !self.idle.is_empty() {
            self.unpark_all(out);
        }
    }

    /// With no timer task (a closed pool with nothing queued), fires the wakeups
    /// that are due, so that key state whose pause or rate debt has ended is gone
    /// when looked at, as it would be on an open pool.
    pub(super) fn catch_up(&mut self, clock: &mut Clock) {
        if !self.reaper_running && self.closed {
            let now = clock.now();
            self.sched.wake_due(now, clock);
        }
    }

    /// Sums the counters of every worker, live and retired.
    pub(super) fn totals(&self) -> Totals {
        let mut totals = Totals::new();
        totals.add(&self.retired);
        for slot in self.slots.iter().flatten() {
            totals.add(&slot.shard);
        }
        totals
    }

    pub(super) fn remove_slot(&mut self, idx: usize) {
        if let Some(slot) = self.slots[idx].take() {
            self.retired.merge_from(&slot.shard);
            if slot.woken {
                self.searching -= 1;
            }
            self.idle.retain(|&i| i != idx);
            self.free_slots.push(idx);
        }
    }
}
