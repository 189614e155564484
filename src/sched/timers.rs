//! The scheduler's timers: queue-timeout deadlines and lane (or pool) wakeups,
//! which the pool's timer task sleeps until and fires (`Inner::reap`, the timer
//! task's step).

use std::sync::Arc;

use tokio::time::Instant;

use super::lanes::{Gone, POOL, Queued, Sched};
use super::{Inner, Wakers};
use crate::error::JobError;
use crate::limit::{Clock, Wake};

impl Sched {
    /// The earliest timer, for the timer task.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        let d = self.deadlines.first().map(|e| e.0);
        let w = self.wakeups.first().map(|e| e.0);
        match (d, w) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn set_timer_dirty(&mut self, at: Instant) {
        if self.next_timer().is_none_or(|t| at < t) {
            self.timer_dirty = true;
        }
    }

    /// Sets (or brings forward) the timer of lane `li` (or `POOL`).
    pub(super) fn wake(&mut self, li: u32, at: Instant) {
        if li != POOL {
            let lane = self.lane(li);
            match lane.wake_at {
                Some(w) if w <= at => return,
                Some(w) => {
                    lane.wake_at = Some(at);
                    self.wakeups.remove(&(w, li));
                }
                None => lane.wake_at = Some(at),
            }
        }
        self.set_timer_dirty(at);
        self.wakeups.insert((at, li));
    }

    /// Expires due queue deadlines into `expired` and fires due wakeups. Returns
    /// whether a lane (or the pool) may have become startable.
    pub(crate) fn fire(&mut self, now: Instant, expired: &mut Vec<(Queued, Gone)>) -> bool {
        let mut clock = Clock::at(now);
        while let Some(&(d, id, li, prio)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.deadlines.pop_first();
            let why = Gone::QueueTimedOut;
            expired.extend(self.take(li, prio, id, why, &mut clock));
        }
        self.wake_due(now, &mut clock)
    }

    /// Fires the wakeups due at `now`: lanes back into the rings, the pool
    /// unblocked, idle lanes collected. Returns whether anything may now start.
    pub(crate) fn wake_due(&mut self, now: Instant, clock: &mut Clock) -> bool {
        let mut woke = false;
        while let Some(&(t, li)) = self.wakeups.first() {
            if t > now {
                break;
            }
            self.wakeups.pop_first();
            if li == POOL {
                if self.pool_blocked.is_some_and(|b| b <= now) {
                    self.pool_blocked = None;
                    woke = true;
                }
                continue;
            }
            let Some(lane) = self.lanes.get_mut(li) else {
                continue;
            };
            if lane.wake_at == Some(t) {
                lane.wake_at = None;
            }
            self.unblock(li);
            self.collect(li, clock);
            woke = true;
        }
        woke
    }
}

impl Inner {
    /// The timer task's step: expires due queue deadlines and ends due rate waits
    /// and pauses. Returns the next timer, and whether the task should exit.
    pub(crate) fn reap(self: &Arc<Self>) -> (Option<Instant>, bool) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut st = self.lock();
        let woke = st.sched.fire(now, &mut expired);
        for (_, why) in &expired {
            match why {
                Gone::Cancelled => st.count_cancelled(&self.telemetry, 1, false),
                Gone::QueueTimedOut => st.count_queue_timed_out(&self.telemetry),
            }
        }
        let mut actions = Vec::new();
        if woke {
            // One worker searches at a time, and hands the search on while jobs
            // remain startable.
            actions.extend(st.dispatch());
        }
        if !expired.is_empty() || woke {
            st.publish(&self.telemetry);
        }
        st.sched.take_timer_dirty();
        let next = st.sched.next_timer();
        // After close no job can be added: once none is queued, no timer matters.
        let exit = st.closed && st.sched.queued == 0;
        if exit {
            st.reaper_running = false;
        }
        let closed = st.closed;
        let mut wakers = Wakers::default();
        st.grant(self.capacity, &mut wakers);
        st.release_idle_if_drained(&mut wakers);
        drop(st);
        for a in actions {
            self.act(a);
        }
        wakers.wake();
        if closed && (exit || !expired.is_empty()) {
            self.drained.notify_waiters();
        }
        for (q, why) in expired {
            let mut job = q.job;
            if why == Gone::Cancelled {
                tracing::debug!(pool = %self.name, job = q.id, "taskgate: queued job cancelled by its caller");
                job.as_mut().resolve_unstarted(JobError::Cancelled);
            } else {
                tracing::debug!(pool = %self.name, job = q.id, "taskgate: job timed out in the queue");
                job.as_mut().resolve_unstarted(JobError::QueueTimedOut);
            }
        }
        (next, exit)
    }

    /// The timer task was dropped without exiting normally.
    pub(crate) fn reaper_lost(&self) {
        self.lock().reaper_running = false;
        self.drained.notify_waiters();
    }

    pub(crate) fn reaper_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.reaper.notified()
    }
}

/// A remote limit's background request has ended (tokens or slots granted, a
/// refusal with a time to ask again, or a failure that puts its `OnError`
/// policy in force): the lane it refilled is woken through the timer path, as
/// when a rate wait ends. Called from the request's task, with no lock held.
impl Wake for Inner {
    fn rouse(&self, lane: u32, generation: u32) {
        let now = Instant::now();
        let mut st = self.lock();
        if lane == POOL {
            if st.sched.pool_blocked.is_none() {
                return;
            }
            st.sched.pool_blocked = Some(now);
        } else if !st
            .sched
            .lanes
            .get(lane)
            .is_some_and(|l| l.generation == generation && l.blocked)
        {
            // Removed, reused, or not waiting: nothing to wake.
            return;
        }
        st.sched.wake(lane, now);
        let act = st.timer_act();
        drop(st);
        self.timer(act);
    }

    fn locked(&self, f: &mut dyn FnMut()) {
        let _st = self.lock();
        f();
    }
}
