//! The scheduler's job-taking half: [`Sched::pick`] (the next job that may start,
//! taking its place against every limit), [`Sched::finish`] (a job that started
//! has ended), [`Sched::take`] (a queued job leaves unstarted) and
//! [`Sched::drain`] (abort). The lanes, rings and push are in `lanes.rs`.

use std::collections::VecDeque;

use super::lanes::{AGED, Gone, HIGH, POOL, Queued, Sched, Tickets, UNKEYED};
use crate::limit::{Admit, Clock, Done};
use crate::stats::Ending;

impl Sched {
    /// Takes the next job that may start now, taking its place against every limit.
    /// `None` if nothing queued may start; the lanes that could not were marked
    /// blocked, with timers where time will unblock them.
    pub(crate) fn pick(&mut self, clock: &mut Clock, tickets: &mut Tickets) -> Option<Queued> {
        if self.queued == 0 || self.pool_blocked.is_some() {
            return None;
        }
        match self.pool.check(clock) {
            Admit::Now => {}
            Admit::At(t) => {
                self.pool_blocked = Some(t);
                self.wake(POOL, t);
                return None;
            }
            Admit::OnRelease => return None,
        }
        // Aging lifts a job over jobs of a higher priority; with one priority queued
        // it would only reorder lanes of equal rank, against their round-robin, so
        // it is skipped (and so is the clock).
        if self.by_prio.iter().filter(|&&n| n > 0).count() > 1 {
            self.promote(clock.now());
        }
        for p in (0..3).rev() {
            while let Some(&(li, generation)) = self.rings[p].front() {
                let Some(lane) = self
                    .lanes
                    .get_mut(li)
                    .filter(|l| l.generation == generation)
                else {
                    self.rings[p].pop_front();
                    continue;
                };
                let ready = !lane.blocked && lane.has(p);
                let admit = if ready {
                    lane.gate.check(clock)
                } else {
                    Admit::OnRelease
                };
                if admit != Admit::Now {
                    self.rings[p].pop_front();
                    lane.in_ring[p] = false;
                    if ready {
                        lane.blocked = true;
                        if let Admit::At(t) = admit {
                            self.wake(li, t);
                        }
                    }
                    continue;
                }
                let mut q = lane.pop(p).expect("checked non-empty");
                Self::left_queue(&mut self.freed, lane);
                if li != UNKEYED {
                    lane.taken += 1;
                }
                // Round-robin: the lane goes to the back of the ring, or leaves it if
                // it has nothing more at this rank. A lane alone in its ring stays
                // put, which writes nothing.
                if !lane.has(p) {
                    self.rings[p].pop_front();
                    lane.in_ring[p] = false;
                } else if self.rings[p].len() > 1 {
                    self.rings[p].pop_front();
                    self.rings[p].push_back((li, generation));
                }
                // The claim reads and writes the job's result cell, last touched by
                // its submitter on another core: done under the lock only when a
                // limit counts this start and so must not count a cancelled job.
                q.claim = (lane.gate.claims() || self.pool.claims()).then(|| q.job.claim());
                // Unkeyed jobs have no limits of their own, and the pool's gate counts
                // only with a rate: nothing to count for them.
                if q.counted() {
                    // Only a rate reads when the job was accepted.
                    let rated = lane.gate.rate.is_some() || self.pool.rate.is_some();
                    let since = rated.then(|| q.job.submitted());
                    if li != UNKEYED {
                        tickets.lane = lane.gate.acquire(clock, since);
                    }
                    if self.pool.counts() {
                        tickets.pool = self.pool.acquire(clock, since);
                    }
                }
                self.queued -= 1;
                self.by_prio[p] -= 1;
                if let Some(d) = q.deadline {
                    self.deadlines.remove(&(d, q.id, li, q.prio));
                }
                if self.aging.front().is_some_and(|a| a.id == q.id) {
                    self.aging.pop_front();
                }
                // A job cancelled just before it was taken (`Some(false)`) counts
                // against nothing; its lane stays until the worker reports it.
                return Some(q);
            }
        }
        None
    }

    /// A job taken by `pick` has ended (or, if not `counted`, was found cancelled as it was taken).
    pub(crate) fn finish(
        &mut self,
        li: u32,
        counted: bool,
        done: &Done,
        tickets: Tickets,
        clock: &mut Clock,
    ) {
        if counted && self.pool.counts() {
            if li == UNKEYED {
                self.pool.release(done, tickets.pool);
            } else {
                // A keyed job's `retry_after` pauses its key, not the pool: the
                // pool's limit hears the overload without it.
                self.pool.release(&done.without_retry_after(), tickets.pool);
            }
            // A shared slot the job gave back may let a pool blocked on its
            // shared limit start again at once, without a round trip (`pick`
            // checks every limit again).
            if self.pool_blocked.is_some() && !self.pool.remote.is_empty() && self.pool.has_room() {
                self.pool_blocked = None;
            }
        }
        if li == UNKEYED {
            // Counted nothing in `pick`; never collected.
            return;
        }
        let lane = self.lane(li);
        lane.taken -= 1;
        lane.record(if counted {
            done.ending
        } else {
            Ending::Cancelled
        });
        if counted {
            lane.gate.release(done, tickets.lane);
            if lane.blocked && lane.gate.has_room() {
                self.unblock(li);
            }
        }
        self.collect(li, clock);
    }

    /// Takes a queued job out (cancelled, or its queue timeout expired), counts it
    /// for its key, and returns it with the reason counted: an expiry whose caller
    /// had already asked to cancel counts as a cancel (the caller asked first).
    pub(crate) fn take(
        &mut self,
        li: u32,
        prio: u8,
        id: u64,
        why: Gone,
        clock: &mut Clock,
    ) -> Option<(Queued, Gone)> {
        let lane = self.lanes.get_mut(li)?;
        let p = usize::from(prio);
        let (p, at) = [p, HIGH, AGED].into_iter().find_map(|p| {
            lane.queues[p]
                .binary_search_by_key(&id, |q| q.id)
                .ok()
                .map(|at| (p, at))
        })?;
        let q = lane.queues[p].remove(at).expect("found");
        Self::left_queue(&mut self.freed, lane);
        let why = match why {
            Gone::QueueTimedOut if q.job.cancel_requested() => Gone::Cancelled,
            why => why,
        };
        if li != UNKEYED {
            match why {
                Gone::Cancelled => lane.counts.cancelled += 1,
                Gone::QueueTimedOut => lane.counts.queue_timed_out += 1,
            }
        }
        self.queued -= 1;
        // Aged jobs count as `High`.
        self.by_prio[p.min(HIGH)] -= 1;
        if let Some(d) = q.deadline {
            self.deadlines.remove(&(d, q.id, li, q.prio));
        }
        self.collect(li, clock);
        Some((q, why))
    }

    /// Takes every queued job out (abort), counting them cancelled.
    pub(crate) fn drain(&mut self, clock: &mut Clock) -> Vec<Queued> {
        let mut out = Vec::with_capacity(self.queued);
        for li in 0..self.lanes.len() as u32 {
            let Some(lane) = self.lanes.get_mut(li) else {
                continue;
            };
            for q in &mut lane.queues {
                let n = q.len() as u64;
                out.extend(q.drain(..));
                if li != UNKEYED {
                    lane.counts.cancelled += n;
                }
            }
            lane.queued = 0;
            lane.watched = false;
            lane.in_ring = [false; 3];
            self.collect(li, clock);
        }
        self.rings.iter_mut().for_each(VecDeque::clear);
        self.aging.clear();
        self.deadlines.clear();
        self.queued = 0;
        self.by_prio = [0; 3];
        out
    }
}
