//! The scheduler: which queued job starts next. [`Sched`] lives inside the pool's
//! state and is only touched under its lock.
//!
//! Jobs wait in **lanes**: lane 0 holds the unkeyed jobs, and each [`Key`] with
//! something queued, running, paused or owed has a lane of its own. A lane has one
//! FIFO per [`Priority`] (each sorted by job id, so a cancelled or expired job is
//! found by binary search) and a [`Gate`] of limiters (pause, concurrency, rate).
//!
//! A **ring** per priority lists the lanes that have jobs at that priority and are
//! not known to be blocked. A worker looking for a job takes the first lane of the
//! highest non-empty ring, asks the lane's gate (and the pool's), and either takes
//! the lane's next job, moving the lane to the back of the ring (round-robin), or
//! marks the lane blocked and drops it from the rings. A blocked lane comes back
//! when one of its jobs ends (concurrency) or a timer fires (rate, pause). So a
//! blocked key never holds a worker and never stands in front of another key.
//!
//! Lowly jobs age: an entry per `Low`/`Normal` job in `aging` (id order) lets the
//! scheduler move a job that has waited `aging_after` into its lane's `High` queue.
//! It only looks when jobs of two priorities are queued: aging lifts a job over
//! higher-priority jobs, and must not reorder lanes of one priority, which take
//! turns.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::job::Job;
use crate::limit::{Adaptive, AdaptiveLimit, Gate, Ticket};
use crate::limit::{Gcra, Rate, far_future};
use crate::limit::{Key, KeyLimits};
use crate::limit::{RemoteSpec, Rouse, Wake};
use crate::stats::Ending;

use super::aging::Aging;

/// The lane of unkeyed jobs. It always exists.
pub(crate) const UNKEYED: u32 = 0;
/// The `wakeups` entry of the pool's own gate.
pub(super) const POOL: u32 = u32::MAX;
pub(super) const HIGH: usize = 2;
/// The queue of jobs lifted to `High` by aging: they arrive in id order, so a FIFO
/// of their own keeps them sorted at O(1) a job; `High` picks take the older of
/// the two fronts.
pub(super) const AGED: usize = 3;

/// One accepted job waiting in the queue.
pub(crate) struct Queued {
    /// Ids are assigned under the lock in push order, so each lane queue is sorted
    /// by id and a job can be found by binary search.
    pub(crate) id: u64,
    /// When the job's queue timeout expires, if it has one.
    pub(crate) deadline: Option<Instant>,
    pub(crate) job: Pin<Box<dyn Job>>,
    pub(crate) lane: u32,
    /// The priority it was submitted with (aging may have moved it to `High`).
    pub(crate) prio: u8,
    /// Set when a worker takes it: `Some(true)` claimed under the lock,
    /// `Some(false)` found cancelled first (it counts against no limit), `None` not
    /// claimed yet because no limit that applies counts starts (the worker claims
    /// it, outside the lock, before running it).
    pub(crate) claim: Option<bool>,
    /// A blocking closure, which its worker runs on a blocking thread (known at
    /// push, so that no job pays a virtual call to ask).
    pub(crate) inline: bool,
}

impl Queued {
    /// Whether the job counts against its limits until it ends: not when it was
    /// found cancelled as it was taken.
    pub(crate) fn counted(&self) -> bool {
        self.claim != Some(false)
    }
}

/// Why a job left the queue without starting, for its key's counters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    Cancelled,
    QueueTimedOut,
}

#[derive(Default, Clone, Copy)]
pub(super) struct KeyCounts {
    pub(super) completed: u64,
    pub(super) cancelled: u64,
    pub(super) timed_out: u64,
    pub(super) queue_timed_out: u64,
    pub(super) panicked: u64,
}

/// `Low`, `Normal`, `High`, and aged jobs (ranked `High`).
pub(super) type Queues = [VecDeque<Queued>; 4];

/// Collected lanes kept for reuse (with their empty queues), so that a key that
/// comes and goes (one job at a time) allocates nothing per job.
pub(super) const SPARE_LANES: usize = 64;
/// The largest capacity a spare queue keeps.
pub(super) const SPARE_CAPACITY: usize = 16;

// `repr(C)`: the counters and flags a pick reads and writes share the first
// cache line; the queue headers follow.
#[repr(C)]
pub(super) struct Lane {
    pub(super) queued: usize,
    /// Jobs taken by a worker and not yet reported ended (claimed or not): the
    /// lane must outlive them.
    pub(super) taken: usize,
    /// Distinguishes this lane from earlier ones in the same slot, whose ring
    /// entries may still be around.
    pub(super) generation: u32,
    pub(super) in_ring: [bool; 3],
    /// Known unable to start a job now; out of the rings until a release or timer.
    pub(super) blocked: bool,
    /// Submitters wait for this key's queue: report the key when a job leaves it.
    pub(super) watched: bool,
    pub(super) gate: Gate,
    pub(super) queues: Queues,
    /// Its own queue capacity, if its limits set one (else the pool's key share).
    pub(super) capacity: Option<usize>,
    /// The timer set for this lane, if any.
    pub(super) wake_at: Option<Instant>,
    pub(super) key: Option<Key>,
    pub(super) counts: KeyCounts,
    /// Where a new adaptive limit numbers its tickets from: past the tickets of
    /// one that was removed (see `apply`).
    pub(super) tickets_from: u64,
}

impl Lane {
    pub(super) fn new(
        key: Option<Key>,
        generation: u32,
        limits: &KeyLimits,
        adaptive: Option<AdaptiveLimit>,
        queues: Queues,
    ) -> Lane {
        Lane {
            key,
            generation,
            queues,
            queued: 0,
            taken: 0,
            in_ring: [false; 3],
            blocked: false,
            watched: false,
            gate: Gate::new(limits.concurrency, limits.rate, adaptive),
            capacity: limits.queue_capacity,
            wake_at: None,
            counts: KeyCounts::default(),
            tickets_from: 0,
        }
    }

    /// Whether jobs wait at rank `p` (for `High`: high or aged).
    pub(super) fn has(&self, p: usize) -> bool {
        !self.queues[p].is_empty() || (p == HIGH && !self.queues[AGED].is_empty())
    }

    /// Takes the next job at rank `p`: for `High`, the older of the high and aged
    /// fronts.
    pub(super) fn pop(&mut self, p: usize) -> Option<Queued> {
        if p == HIGH {
            let aged = self.queues[AGED].front().map(|q| q.id);
            let high = self.queues[HIGH].front().map(|q| q.id);
            if aged.is_some_and(|a| high.is_none_or(|h| a < h)) {
                return self.queues[AGED].pop_front();
            }
        }
        self.queues[p].pop_front()
    }

    pub(super) fn apply(&mut self, limits: &KeyLimits, workers: usize, origin: Instant) {
        self.gate.concurrency.cap = limits.concurrency.unwrap_or(usize::MAX);
        match (&mut self.gate.adaptive, limits.adaptive) {
            (Some(a), Some(config)) => a.reconfigure(config, workers),
            (a @ None, Some(config)) => {
                // Numbered after any earlier limit's tickets, which jobs still
                // running may hold.
                let first = self.tickets_from;
                *a = Some(Box::new(AdaptiveLimit::starting_at(
                    config, workers, origin, first,
                )));
            }
            (a @ Some(_), None) => {
                self.tickets_from = a.as_ref().map_or(0, |a| a.next_ticket());
                *a = None;
            }
            (None, None) => {}
        }
        self.capacity = limits.queue_capacity;
        self.gate.rate = match (self.gate.rate, limits.rate) {
            (Some(mut g), Some(r)) => {
                g.set_rate(r);
                Some(g)
            }
            (None, Some(r)) => Some(Gcra::new(r)),
            (_, None) => None,
        };
    }

    pub(super) fn record(&mut self, outcome: Ending) {
        let c = &mut self.counts;
        match outcome {
            Ending::Completed => c.completed += 1,
            Ending::Cancelled | Ending::Aborted => c.cancelled += 1,
            Ending::TimedOut => c.timed_out += 1,
            Ending::Panicked => c.panicked += 1,
        }
    }
}

/// The adaptive limits' tickets of a job that started: its lane's and the
/// pool's, handed back to [`Sched::finish`] when it ends.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tickets {
    pub(crate) pool: Option<Ticket>,
    pub(crate) lane: Option<Ticket>,
}

/// The lanes by index: the unkeyed lane inline (it is on every unkeyed job's
/// path, next to the scheduler's other hot fields), keyed lanes boxed (a slot left
/// free after a peak of keys costs a pointer).
#[repr(C)]
pub(super) struct Slab {
    pub(super) unkeyed: Lane,
    /// Lane `i` is at `keyed[i - 1]`.
    pub(super) keyed: Vec<Option<Box<Lane>>>,
}

impl Slab {
    pub(super) fn get(&self, li: u32) -> Option<&Lane> {
        match li {
            UNKEYED => Some(&self.unkeyed),
            _ => self.keyed.get(li as usize - 1)?.as_deref(),
        }
    }

    pub(super) fn get_mut(&mut self, li: u32) -> Option<&mut Lane> {
        match li {
            UNKEYED => Some(&mut self.unkeyed),
            _ => self.keyed.get_mut(li as usize - 1)?.as_deref_mut(),
        }
    }

    /// Takes keyed lane `li` out of its slot.
    pub(super) fn take(&mut self, li: u32) -> Option<Box<Lane>> {
        self.keyed.get_mut((li as usize).checked_sub(1)?)?.take()
    }

    /// Puts a keyed lane into the free slot `li`.
    pub(super) fn put(&mut self, li: u32, lane: Box<Lane>) {
        self.keyed[li as usize - 1] = Some(lane);
    }

    /// Adds a keyed lane in a new slot and returns its index.
    pub(super) fn push(&mut self, lane: Box<Lane>) -> u32 {
        self.keyed.push(Some(lane));
        u32::try_from(self.keyed.len()).expect("fewer than 2^32 keys with state")
    }

    pub(super) fn len(&self) -> usize {
        self.keyed.len() + 1
    }
}

// `repr(C)`, with what every job reads or writes first, next to the pool's
// other hot fields.
#[repr(C)]
pub(crate) struct Sched {
    /// Jobs queued, in all lanes.
    pub(crate) queued: usize,
    /// Keys with waiting submitters whose queues have freed a place since the
    /// pool last looked (see `Lane::watched`).
    pub(crate) freed: Vec<Key>,
    pub(super) by_prio: [usize; 3],
    /// The pool's gate said no until then: nothing starts before the timer fires.
    pub(super) pool_blocked: Option<Instant>,
    /// An earlier timer was set than the timer task may be sleeping for.
    pub(super) timer_dirty: bool,
    /// A job other than `Normal` has been submitted: aging is tracked from then on.
    pub(super) aging_on: bool,
    /// The pool's own limits: its rate and its pause. (Its concurrency is the
    /// worker count, kept by the pool state.)
    pub(super) pool: Gate,
    pub(super) rings: [VecDeque<(u32, u32)>; 3],
    pub(super) lanes: Slab,
    pub(super) aging: VecDeque<Aging>,
    pub(super) aging_after: Duration,
    pub(super) free: Vec<u32>,
    // Boxes, moved between `lanes` and here without copying the lane.
    #[allow(clippy::vec_box)]
    pub(super) spare: Vec<Box<Lane>>,
    pub(super) by_key: HashMap<Key, u32>,
    pub(super) overrides: HashMap<Key, KeyLimits>,
    pub(super) defaults: KeyLimits,
    /// A key's share of the pool's places, where its limits set no queue
    /// capacity (from `key_share`, `queue_capacity` and the workers).
    pub(super) key_capacity: usize,
    pub(super) key_share: f64,
    pub(super) queue_capacity: usize,
    /// Times at which a lane (or `POOL`) may become startable or collectable.
    pub(super) wakeups: BTreeSet<(Instant, u32)>,
    /// Queue-timeout deadlines: (deadline, id, lane, priority at submit).
    pub(super) deadlines: BTreeSet<(Instant, u64, u32, u8)>,
    pub(super) next_generation: u32,
    /// The pool's size, which caps an adaptive limit's `max`.
    pub(super) workers: usize,
    /// Where adaptive limits count time from.
    pub(super) origin: Instant,
    /// Where remote limits' background requests run and whom they wake.
    pub(super) env: RemoteEnv,
}

/// What a remote limit needs from the pool to be bound to a lane: the pool to
/// rouse (weakly) and the runtime to run its requests on.
pub(crate) struct RemoteEnv {
    pub(crate) wake: Weak<dyn Wake>,
    pub(crate) rt: Handle,
}

impl RemoteEnv {
    fn rouse(&self, lane: u32, generation: u32) -> Rouse {
        Rouse {
            pool: self.wake.clone(),
            lane,
            generation,
            rt: self.rt.clone(),
        }
    }

    /// Binds `specs` to the gate of lane `li` (or `POOL`) for `key`, keeping the
    /// limiters of settings it already has.
    pub(super) fn bind<'a>(
        &self,
        gate: &mut Gate,
        specs: impl Iterator<Item = &'a dyn RemoteSpec>,
        key: Option<&Key>,
        li: u32,
        generation: u32,
    ) {
        let mut old = std::mem::take(&mut gate.remote);
        // Jobs running now release to the new limiters too.
        let running = gate.concurrency.running;
        for spec in specs {
            let id = spec.id();
            match old.iter().position(|(i, _)| *i == id) {
                Some(at) => gate.remote.push(old.swap_remove(at)),
                None => {
                    let rouse = self.rouse(li, generation);
                    gate.remote.push((id, spec.bind(key, rouse, running)));
                }
            }
        }
    }
}

impl Sched {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        env: RemoteEnv,
        pool_remote: &[std::sync::Arc<dyn RemoteSpec>],
        pool_rate: Option<Rate>,
        pool_adaptive: Option<Adaptive>,
        defaults: KeyLimits,
        key_share: f64,
        queue_capacity: usize,
        workers: usize,
        aging_after: Duration,
    ) -> Sched {
        // Adaptive limits count time from here.
        let origin = Instant::now();
        let mut sched = Sched {
            lanes: Slab {
                // Unkeyed jobs have no queue of their own to fill.
                unkeyed: Lane::new(None, 0, &KeyLimits::default(), None, Queues::default()),
                keyed: Vec::new(),
            },
            free: Vec::new(),
            spare: Vec::new(),
            by_key: HashMap::new(),
            overrides: HashMap::new(),
            defaults,
            key_capacity: 1,
            key_share,
            queue_capacity,
            rings: Default::default(),
            aging: VecDeque::new(),
            aging_after,
            aging_on: false,
            queued: 0,
            freed: Vec::new(),
            by_prio: [0; 3],
            pool: Gate::new(
                None,
                pool_rate,
                pool_adaptive.map(|a| AdaptiveLimit::new(a, workers, origin)),
            ),
            workers,
            origin,
            pool_blocked: None,
            wakeups: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            next_generation: 1,
            timer_dirty: false,
            env,
        };
        let specs = pool_remote.iter().map(|s| &**s);
        sched.env.bind(&mut sched.pool, specs, None, POOL, 0);
        sched.set_workers(workers);
        sched
    }

    pub(super) fn lane(&mut self, li: u32) -> &mut Lane {
        self.lanes
            .get_mut(li)
            .expect("taskgate bug: a lane in use was removed")
    }

    /// Keys that have state now.
    pub(crate) fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// Whether a worker looking now could find a job (or a lane to rule out).
    #[inline]
    pub(crate) fn startable(&self) -> bool {
        self.queued > 0 && self.pool_blocked.is_none() && self.rings.iter().any(|r| !r.is_empty())
    }

    /// Whether a timer was set since the last call.
    pub(crate) fn take_timer_dirty(&mut self) -> bool {
        // Read first: a write on every job would dirty the line for nothing.
        if self.timer_dirty {
            self.timer_dirty = false;
            true
        } else {
            false
        }
    }

    /// Called as a job leaves lane `li`'s queue.
    pub(super) fn left_queue(freed: &mut Vec<Key>, lane: &mut Lane) {
        lane.queued -= 1;
        if lane.watched {
            lane.watched = false;
            freed.extend(lane.key.clone());
        }
    }

    /// Queues `q` in its lane. `now` is when it was accepted.
    pub(crate) fn push(&mut self, q: Queued, now: Instant) {
        let (li, p, id) = (q.lane, usize::from(q.prio), q.id);
        if let Some(d) = q.deadline {
            self.set_timer_dirty(d);
            self.deadlines.insert((d, id, li, q.prio));
        }
        let lane = self.lane(li);
        lane.queues[p].push_back(q);
        lane.queued += 1;
        self.queued += 1;
        self.by_prio[p] += 1;
        if p != 1 && !self.aging_on {
            // Builds the entries of every queued job, this one included.
            self.start_aging();
        } else if p < HIGH && self.aging_on {
            self.aging.push_back(Aging {
                due: now
                    .checked_add(self.aging_after)
                    .unwrap_or_else(|| far_future(now)),
                id,
                lane: li,
                prio: p as u8,
            });
            if self.aging.len() > 64 + 2 * (self.by_prio[0] + self.by_prio[1]) {
                self.compact_aging();
            }
        }
        self.enqueue_lane(li, p);
    }

    pub(super) fn enqueue_lane(&mut self, li: u32, p: usize) {
        let lane = self.lanes.get_mut(li).expect("lane exists");
        if !lane.blocked && !lane.in_ring[p] && lane.has(p) {
            lane.in_ring[p] = true;
            let entry = (li, lane.generation);
            self.rings[p].push_back(entry);
        }
    }

    /// Puts an unblocked lane back in the rings of every priority it has jobs at.
    pub(super) fn unblock(&mut self, li: u32) {
        if let Some(lane) = self.lanes.get_mut(li) {
            lane.blocked = false;
            for p in 0..3 {
                self.enqueue_lane(li, p);
            }
        }
    }
}
