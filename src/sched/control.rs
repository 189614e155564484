//! The pool's control operations on [`Inner`]: pause, key limits and key stats,
//! close, abort, resize, drain and stats.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{JobError, LimitError};
use crate::job::Early;
use crate::limit::{Clock, Done, Key, KeyLimits, KeyStats, after};
use crate::stats::{Ending, Stats};

use super::{Held, Inner, Queued, Wakers};

impl Inner {
    /// Pauses the pool (`key: None`) or one key for `d`.
    pub(crate) fn pause(self: &Arc<Self>, key: Option<&Key>, d: Duration) {
        if d.is_zero() {
            return;
        }
        let now = Instant::now();
        let timer = {
            let mut st = self.lock();
            st.sched.pause(key, after(now, d));
            st.timer_act()
        };
        self.timer(timer);
        match key {
            Some(k) => {
                tracing::debug!(pool = %self.name, key = %k, pause = ?d, "taskgate: key paused")
            }
            None => tracing::debug!(pool = %self.name, pause = ?d, "taskgate: pool paused"),
        }
    }

    /// Until when the pool is paused, if it is.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.lock().sched.paused_until(&mut Clock::default())
    }

    /// Sets or clears one key's limits, after checking them against the pool's
    /// size now (an adaptive limit's `max` is capped at it).
    pub(crate) fn set_key_limits(
        self: &Arc<Self>,
        key: Key,
        limits: Option<KeyLimits>,
    ) -> Result<(), LimitError> {
        let mut wakers = Wakers::default();
        let (action, timer) = {
            let mut st = self.lock();
            if let Some(Err(e)) = limits.as_ref().map(|l| l.validate(st.target.max(st.busy))) {
                // The refused limits are dropped after the lock.
                drop(st);
                return Err(e);
            }
            // The key's queue capacity may have grown.
            st.waiters.make_ready(Some(&key));
            st.sched.set_limits(key, limits, &mut Clock::default());
            st.grant(self.capacity, &mut wakers);
            (st.dispatch(), st.timer_act())
        };
        if let Some(a) = action {
            self.act(a);
        }
        self.timer(timer);
        wakers.wake();
        Ok(())
    }

    pub(crate) fn key_stats(&self, key: &Key) -> Option<KeyStats> {
        let mut st = self.lock();
        let mut clock = Clock::default();
        st.catch_up(&mut clock);
        st.sched.key_stats(key, &mut clock)
    }

    pub(crate) fn close(&self) {
        let mut wakers = Wakers::default();
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            self.closed.store(true, Ordering::Release);
            st.unpark_all(&mut wakers);
            st.waiters.wake_all(&mut wakers);
        }
        self.tracker.close();
        wakers.wake();
        self.reaper.notify_one();
        tracing::debug!(pool = %self.name, "taskgate: pool closed");
    }

    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        let mut wakers = Wakers::default();
        let mut inline = Vec::new();
        let drained: Vec<Queued> = {
            let mut st = self.lock();
            st.closed = true;
            self.closed.store(true, Ordering::Release);
            let drained = st.sched.drain(&mut Clock::default());
            st.count_cancelled(&self.telemetry, drained.len() as u64, true);
            st.publish(&self.telemetry);
            st.unpark_all(&mut wakers);
            st.waiters.wake_all(&mut wakers);
            // Interrupt running jobs: their workers see `aborted` at the next poll.
            for slot in st.slots.iter().flatten() {
                if let Some(w) = &slot.waker {
                    wakers.push(w.clone());
                }
                // A blocking closure cannot see the flag until it returns.
                inline.extend(slot.inline.as_ref().and_then(Weak::upgrade));
            }
            drained
        };
        self.tracker.close();
        if !drained.is_empty() {
            tracing::debug!(pool = %self.name, jobs = drained.len(), "taskgate: pool aborted; queued jobs cancelled");
        }
        for q in drained {
            let mut job = q.job;
            job.as_mut().resolve_unstarted(JobError::Cancelled);
        }
        for cell in inline {
            cell.resolve_early(Early::Aborted);
        }
        wakers.wake();
        self.reaper.notify_one();
        self.drained.notify_waiters();
    }

    pub(crate) fn resize(self: &Arc<Self>, workers: usize) {
        let mut wakers = Wakers::default();
        let mut actions = Vec::new();
        {
            let mut st = self.lock();
            st.target = workers;
            // A key's share of the places moves with the size.
            st.sched.set_workers(workers);
            st.waiters.make_all_ready();
            if st.live > workers {
                // Wake idle workers so the surplus can exit; busy ones exit when
                // their job ends. Running jobs are never interrupted.
                st.unpark_all(&mut wakers);
            }
            while let Some(a) = st.dispatch() {
                actions.push(a);
            }
            st.publish(&self.telemetry);
            // More workers, more places.
            st.grant(self.capacity, &mut wakers);
        }
        wakers.wake();
        for a in actions {
            self.act(a);
        }
        self.drained.notify_waiters();
        tracing::debug!(pool = %self.name, workers, "taskgate: pool resized");
    }

    /// Notified whenever the pool may have become drained.
    pub(crate) fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Whether nothing is queued, no worker is alive or being spawned, and the
    /// timer task is not running or being spawned. (`live` and `reaper_running` are
    /// set under the lock before the spawn, so a spawn in flight counts.)
    pub(crate) fn is_drained(&self) -> bool {
        let st = self.lock();
        st.sched.queued == 0 && st.live == 0 && st.busy == 0 && !st.reaper_running
    }

    pub(crate) async fn wait_workers(&self) {
        self.tracker.wait().await;
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut st = self.lock();
        st.catch_up(&mut Clock::default());
        let totals = st.totals();
        Stats {
            workers: st.target.max(st.busy),
            limit: st
                .sched
                .pool
                .adaptive_limit()
                .map_or(st.target, |a| a.min(st.target)),
            busy: st.busy,
            queued: st.sched.queued,
            keys: st.sched.keys(),
            submitted: st.submitted,
            completed: totals.completed,
            cancelled: totals.cancelled + st.cancelled,
            timed_out: totals.timed_out,
            queue_timed_out: st.queue_timed_out,
            panicked: totals.panicked,
            rejected: st.rejected,
            queue_wait: totals.queue_wait(),
            run_time: totals.run_time(),
        }
    }

    /// Jobs cancelled by abort so far, queued and running.
    pub(crate) fn aborted_count(&self) -> u64 {
        let st = self.lock();
        st.aborted + st.totals().aborted
    }

    /// A worker task was dropped without exiting through `next_job`: its runtime is
    /// shutting down. Nothing queued can run any more, so abort the pool; every
    /// handle still awaited resolves as cancelled.
    pub(crate) fn worker_lost(self: &Arc<Self>, idx: usize, held: Option<Held>, mid_job: bool) {
        {
            let mut st = self.lock();
            if let Some(h) = held {
                st.busy -= 1;
                let done = Done {
                    ending: Ending::Aborted,
                    report: None,
                };
                st.sched
                    .finish(h.lane, h.counted, &done, h.tickets, &mut Clock::default());
            }
            if mid_job {
                // Its job ends as cancelled when the guard drops it, just after this.
                st.count_cancelled(&self.telemetry, 1, true);
            }
            st.live -= 1;
            st.remove_slot(idx);
        }
        // Also wakes a shutdown waiting for the pool to drain.
        self.abort();
    }
}
