//! The scheduler's timers: queue-timeout deadlines and lane (or pool) wakeups,
//! which the pool's timer task sleeps until and fires.

use tokio::time::Instant;

use super::lanes::{Gone, POOL, Queued, Sched};
use crate::limit::Clock;

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
