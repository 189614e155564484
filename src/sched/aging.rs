//! Aging: a `Low` or `Normal` job that has waited `priority_aging` is lifted into
//! its lane's aged FIFO, which ranks as `High`. Tracked only once a job other than
//! `Normal` has been submitted, and looked at only when jobs of two priorities are
//! queued: aging lifts jobs over higher priorities, never across lanes of one.

use tokio::time::Instant;

use super::lanes::{AGED, HIGH, Sched};
use crate::limit::far_future;

/// A `Low` or `Normal` job's turn to be lifted to `High`.
pub(super) struct Aging {
    pub(super) due: Instant,
    pub(super) id: u64,
    pub(super) lane: u32,
    pub(super) prio: u8,
}

impl Sched {
    /// Lifts every `Low`/`Normal` job that has waited `aging_after` to its lane's
    /// `High` queue.
    pub(super) fn promote(&mut self, now: Instant) {
        while let Some(a) = self.aging.front() {
            let (li, p, id, due) = (a.lane, usize::from(a.prio), a.id, a.due);
            let live = self
                .lanes
                .get(li)
                .is_some_and(|l| l.queues[p].front().is_some_and(|q| q.id == id));
            if live && due > now {
                break;
            }
            self.aging.pop_front();
            if !live {
                continue;
            }
            let lane = self.lane(li);
            let q = lane.queues[p].pop_front().expect("checked live");
            lane.queues[AGED].push_back(q);
            self.by_prio[p] -= 1;
            self.by_prio[HIGH] += 1;
            self.enqueue_lane(li, HIGH);
        }
    }

    /// Starts tracking queued jobs for aging, with the first job that is not
    /// `Normal`: until then every job has one priority and aging cannot matter, so
    /// the default path skips it. Entries for the `Normal` jobs already queued are
    /// built once, from their acceptance times, in id order.
    pub(super) fn start_aging(&mut self) {
        self.aging_on = true;
        let after = self.aging_after;
        let lanes = &self.lanes;
        let mut entries: Vec<Aging> = (0..lanes.len() as u32)
            .filter_map(|li| lanes.get(li).map(|l| (li, l)))
            .flat_map(|(li, l)| {
                l.queues[..HIGH].iter().enumerate().flat_map(move |(p, q)| {
                    q.iter().map(move |j| {
                        let at = j.job.submitted();
                        Aging {
                            due: at.checked_add(after).unwrap_or_else(|| far_future(at)),
                            id: j.id,
                            lane: li,
                            prio: p as u8,
                        }
                    })
                })
            })
            .collect();
        entries.sort_unstable_by_key(|a| a.id);
        self.aging = entries.into();
    }

    /// Drops aging entries whose jobs are no longer queued at their priority.
    pub(super) fn compact_aging(&mut self) {
        let lanes = &self.lanes;
        self.aging.retain(|a| {
            lanes.get(a.lane).is_some_and(|l| {
                l.queues[usize::from(a.prio)]
                    .binary_search_by_key(&a.id, |q| q.id)
                    .is_ok()
            })
        });
    }
}
