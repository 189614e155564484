//! Key state in the scheduler: a lane per key with something queued, running,
//! paused or owed, created on demand and collected when it holds nothing, plus the
//! per-key limits, overrides, queue shares, pauses and stats.

use tokio::time::Instant;

use super::lanes::{Lane, POOL, Queues, SPARE_CAPACITY, SPARE_LANES, Sched, UNKEYED};
use crate::limit::{AdaptiveLimit, Clock, Key, KeyLimits, KeyStats};

impl Sched {
    /// The lane for a new job of `key`, created if needed; `None` if the key's
    /// queue is full (see `key_room`; places granted to the key's waiters do not
    /// count: a push may take one, and the pool takes a grant back). Called only
    /// once the pool's queue has room.
    pub(crate) fn lane_for(&mut self, key: Option<&Key>) -> Option<u32> {
        let Some(key) = key else {
            return Some(UNKEYED);
        };
        match self.by_key.get(key) {
            Some(&li) => {
                let lane = self
                    .lanes
                    .get(li)
                    .expect("taskgate bug: a key in the map has a lane");
                let cap = self.cap_of(lane.capacity);
                (lane.queued < cap).then_some(li)
            }
            // Nothing of the key is queued, and every cap is at least 1.
            None => Some(self.create_lane(key)),
        }
    }

    /// Whether `key`'s queue has a place beyond the `reserved` ones: its own queue
    /// capacity, or its share of the pool's places (see `set_workers`).
    pub(crate) fn key_room(&self, key: &Key, reserved: usize) -> bool {
        let (queued, own) = match self.by_key.get(key).and_then(|&li| self.lanes.get(li)) {
            Some(lane) => (lane.queued, lane.capacity),
            None => (0, self.limits_of(key).queue_capacity),
        };
        queued.saturating_add(reserved) < self.cap_of(own)
    }

    pub(super) fn cap_of(&self, own: Option<usize>) -> usize {
        own.unwrap_or(self.key_capacity)
    }

    /// Sets a key's share of the pool's places for `workers` workers:
    /// `max(1, ⌊share × (queue_capacity + workers)⌋)`. The pool's queue admits
    /// `queue_capacity` plus a job per free worker, so the workers count: with
    /// `queue_capacity(0)` a key still gets its share of the workers, and a share
    /// of 1 lets it take every place.
    pub(crate) fn set_workers(&mut self, workers: usize) {
        self.workers = workers;
        let places = self.queue_capacity.saturating_add(workers);
        // A float product of a count, floored: exact enough for a share of places.
        self.key_capacity = ((places as f64 * self.key_share).floor() as usize).max(1);
    }

    pub(super) fn limits_of(&self, key: &Key) -> &KeyLimits {
        self.overrides.get(key).unwrap_or(&self.defaults)
    }

    /// Submitters wait for `key`'s queue: report the key (in `freed`) when one of
    /// its queued jobs leaves. A key with no lane has nothing queued; its waiters
    /// wait for places granted to others, which come back through the waiters.
    pub(crate) fn watch(&mut self, key: &Key) {
        if let Some(&li) = self.by_key.get(key) {
            self.lane(li).watched = true;
        }
    }

    pub(super) fn create_lane(&mut self, key: &Key) -> u32 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        // Borrowed field by field (not through `limits_of`), so that the lane is
        // built from the settings in place, without a copy of them per lane.
        let limits = self.overrides.get(key).unwrap_or(&self.defaults);
        let adaptive = limits
            .adaptive
            .map(|a| AdaptiveLimit::new(a, self.workers, self.origin));
        let lane = match self.spare.pop() {
            Some(mut lane) => {
                let queues = std::mem::take(&mut lane.queues);
                *lane = Lane::new(Some(key.clone()), generation, limits, adaptive, queues);
                lane
            }
            None => Box::new(Lane::new(
                Some(key.clone()),
                generation,
                limits,
                adaptive,
                Queues::default(),
            )),
        };
        let li = match self.free.pop() {
            Some(li) => {
                self.lanes.put(li, lane);
                li
            }
            None => self.lanes.push(lane),
        };
        self.by_key.insert(key.clone(), li);
        let lane = self.lanes.get_mut(li).expect("just placed");
        self.env.bind(
            &mut lane.gate,
            limits.remote_specs(),
            Some(key),
            li,
            generation,
        );
        li
    }

    /// Removes a keyed lane that holds nothing: no job queued or taken, no pause,
    /// no rate debt. One that still holds a pause or debt gets a timer to try again.
    pub(super) fn collect(&mut self, li: u32, clock: &mut Clock) {
        if li == UNKEYED {
            return;
        }
        let lane = self.lane(li);
        if lane.queued > 0 || lane.taken > 0 {
            return;
        }
        if let Some(until) = lane.gate.holds_until(clock) {
            self.wake(li, until);
            return;
        }
        let mut lane = self.lanes.take(li).expect("keyed lane exists");
        // Remote limiters give back what they hold (idle shared slots) now, not
        // when the spare lane is reused.
        lane.gate.remote.clear();
        if let Some(w) = lane.wake_at {
            self.wakeups.remove(&(w, li));
        }
        if let Some(key) = lane.key {
            self.by_key.remove(&key);
            // Give back the map's memory after a peak of keys.
            let cap = self.by_key.capacity();
            if cap > 4096 && self.by_key.len() < cap / 8 {
                self.by_key.shrink_to(cap / 4);
                for ring in &mut self.rings {
                    ring.shrink_to(cap / 4);
                }
                self.aging.shrink_to(self.aging.len().max(cap / 4));
            }
        }
        self.free.push(li);
        // The lane's ring entries are stale now; drop them once stale entries
        // could outnumber live ones (a live lane has at most one per ring).
        let live = 2 * (self.by_key.len() + 1) + 64;
        for ring in &mut self.rings {
            if ring.len() > live {
                let lanes = &self.lanes;
                ring.retain(|&(l, g)| lanes.get(l).is_some_and(|lane| lane.generation == g));
            }
        }
        if self.spare.len() < SPARE_LANES {
            lane.queues
                .iter_mut()
                .for_each(|q| q.shrink_to(SPARE_CAPACITY));
            lane.key = None;
            self.spare.push(lane);
        }
    }

    /// Pauses the pool (`key: None`) or one key until `until`.
    pub(crate) fn pause(&mut self, key: Option<&Key>, until: Instant) {
        match key {
            None => {
                self.pool.pause.extend(until);
                let end = self.pool.pause.until.expect("just set");
                self.pool_blocked = Some(self.pool_blocked.map_or(end, |b| b.max(end)));
                self.wake(POOL, end);
            }
            Some(key) => {
                let li = match self.by_key.get(key) {
                    Some(&li) => li,
                    None => self.create_lane(key),
                };
                let lane = self.lane(li);
                lane.gate.pause.extend(until);
                lane.blocked = true;
                let end = lane.gate.pause.until.expect("just set");
                self.wake(li, end);
            }
        }
    }

    /// Sets (`Some`) or clears (`None`) the override of `key`'s limits.
    pub(crate) fn set_limits(&mut self, key: Key, limits: Option<KeyLimits>, clock: &mut Clock) {
        let applied = match limits {
            Some(l) => {
                self.overrides.insert(key.clone(), l.clone());
                l
            }
            None => {
                self.overrides.remove(&key);
                self.defaults.clone()
            }
        };
        if let Some(&li) = self.by_key.get(&key) {
            let (workers, origin) = (self.workers, self.origin);
            let lane = self.lanes.get_mut(li).expect("keyed lane exists");
            lane.apply(&applied, workers, origin);
            let generation = lane.generation;
            self.env.bind(
                &mut lane.gate,
                applied.remote_specs(),
                Some(&key),
                li,
                generation,
            );
            self.unblock(li);
            self.collect(li, clock);
        }
    }

    pub(crate) fn key_stats(&self, key: &Key, clock: &mut Clock) -> Option<KeyStats> {
        let &li = self.by_key.get(key)?;
        let lane = self.lanes.get(li)?;
        let c = lane.counts;
        Some(KeyStats {
            busy: lane.gate.concurrency.running,
            queued: lane.queued,
            completed: c.completed,
            cancelled: c.cancelled,
            timed_out: c.timed_out,
            queue_timed_out: c.queue_timed_out,
            panicked: c.panicked,
            paused_until: lane.gate.pause.active(clock),
            limit: match (lane.gate.adaptive_limit(), lane.gate.concurrency.cap) {
                (Some(a), cap) => Some(a.min(cap)),
                (None, usize::MAX) => None,
                (None, cap) => Some(cap),
            },
        })
    }

    /// Until when the pool is paused, if it is.
    pub(crate) fn paused_until(&self, clock: &mut Clock) -> Option<Instant> {
        self.pool.pause.active(clock)
    }
}
