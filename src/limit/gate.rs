//! The set of limiters in front of a lane's jobs, or the pool's: [`Gate`]. A new
//! limit becomes one more field here, checked in [`Gate::check`].

use tokio::time::Instant;

use super::adaptive::{AdaptiveLimit, Outcome};
use super::controller::Ticket;
use super::{Admit, Clock, ConcurrencyLimit, Gcra, Limiter, Pause, Remote};
use crate::stats::Ending;

/// The limiters in front of one lane's jobs (or, with no concurrency cap, the
/// pool's). Checked in order; the first that says no decides.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) pause: Pause,
    pub(crate) concurrency: ConcurrencyLimit,
    pub(crate) rate: Option<Gcra>,
    /// Boxed: most gates have none, and the lane stays small.
    pub(crate) adaptive: Option<Box<AdaptiveLimit>>,
    /// Limits kept elsewhere (Redis), each with its setting's identity
    /// (`RemoteSpec::id`). Empty (no allocation) unless the feature is used.
    pub(crate) remote: Vec<(u64, Box<dyn Remote>)>,
}

/// What a gate hears when a job it counted ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Done {
    /// How the job ended, for the counters.
    pub(crate) ending: Ending,
    /// When it ended and what it reports to an adaptive limit, if it ran (a job
    /// found cancelled as it was taken, or whose worker was lost, reports nothing).
    pub(crate) report: Option<(Instant, Outcome)>,
}

impl Done {
    /// The same, with any `retry_after` dropped from the outcome.
    pub(crate) fn without_retry_after(&self) -> Done {
        let report = self.report.map(|(at, outcome)| match outcome {
            Outcome::Overload { .. } => (at, Outcome::Overload { retry_after: None }),
            other => (at, other),
        });
        Done {
            ending: self.ending,
            report,
        }
    }
}

impl Gate {
    pub(crate) fn new(
        concurrency: Option<usize>,
        rate: Option<super::Rate>,
        adaptive: Option<AdaptiveLimit>,
    ) -> Gate {
        Gate {
            pause: Pause::default(),
            concurrency: ConcurrencyLimit {
                cap: concurrency.unwrap_or(usize::MAX),
                running: 0,
            },
            rate: rate.map(Gcra::new),
            adaptive: adaptive.map(Box::new),
            remote: Vec::new(),
        }
    }

    /// Whether a start counts against anything here (a cap, a rate, an adaptive
    /// limit): `acquire` and `release` must be called for it.
    #[inline]
    pub(crate) fn counts(&self) -> bool {
        self.claims() || self.adaptive.is_some()
    }

    /// Whether a job must be claimed under the lock before it is counted here, so
    /// that a job cancelled just before it was taken takes no place under a cap
    /// and no token of a rate. An adaptive limit needs no claim: such a job is
    /// released at once, reporting nothing to learn from.
    #[inline]
    pub(crate) fn claims(&self) -> bool {
        self.concurrency.cap != usize::MAX || self.rate.is_some() || !self.remote.is_empty()
    }

    /// Whether a job may start now, without taking anything.
    #[inline]
    pub(crate) fn check(&self, clock: &mut Clock) -> Admit {
        match self.pause.check(clock) {
            Admit::Now => {}
            no => return no,
        }
        match self.concurrency.check(clock) {
            Admit::Now => {}
            no => return no,
        }
        if let Some(a) = &self.adaptive {
            match a.check() {
                Admit::Now => {}
                no => return no,
            }
        }
        if let Some(r) = &self.rate {
            match Limiter::check(r, clock) {
                Admit::Now => {}
                no => return no,
            }
        }
        // Last: a remote limit out of tokens or slots asks for more, which is
        // wasted if a local limit says no anyway.
        for (_, r) in &self.remote {
            match r.check(clock) {
                Admit::Now => {}
                no => return no,
            }
        }
        Admit::Now
    }

    /// A job passed every limiter and starts now: count it. Returns the adaptive
    /// limit's ticket for the job, to hand back to [`release`](Gate::release).
    #[inline]
    pub(crate) fn acquire(
        &mut self,
        clock: &mut Clock,
        queued_since: Option<Instant>,
    ) -> Option<Ticket> {
        self.concurrency.acquire(clock, queued_since);
        if let Some(r) = &mut self.rate {
            Limiter::acquire(r, clock, queued_since);
        }
        for (_, r) in &mut self.remote {
            r.acquire(clock);
        }
        self.adaptive.as_mut().map(|a| a.acquire(clock))
    }

    /// A job this gate counted has ended. An adaptive limit learns from its
    /// report, and an overload with a `retry_after` pauses the gate.
    #[inline]
    pub(crate) fn release(&mut self, done: &Done, ticket: Option<Ticket>) {
        self.concurrency.release(done.ending);
        for (_, r) in &mut self.remote {
            r.release();
        }
        if let (Some(a), Some(t)) = (&mut self.adaptive, ticket) {
            let (at, outcome) = done
                .report
                .unwrap_or_else(|| (Instant::now(), Outcome::Ignore));
            if let Some(until) = a.release(t, at, outcome) {
                self.pause.extend(until);
            }
        }
    }

    /// Whether a job's end may let this gate's blocked lane start again: below
    /// its concurrency cap and its adaptive limit. (Pauses and rates unblock
    /// through timers.)
    #[inline]
    pub(crate) fn has_room(&self) -> bool {
        self.concurrency.running < self.concurrency.cap
            && self.adaptive.as_ref().is_none_or(|a| a.has_room())
            && self.remote.iter().all(|(_, r)| r.has_room())
    }

    /// The adaptive limit now, if the gate has one.
    pub(crate) fn adaptive_limit(&self) -> Option<usize> {
        self.adaptive.as_ref().map(|a| a.limit())
    }

    pub(crate) fn holds_until(&self, clock: &mut Clock) -> Option<Instant> {
        let pause = self.pause.holds_until(clock);
        let rate = self.rate.as_ref().and_then(|r| r.holds_until(clock));
        // What an adaptive limit learned is kept a while after the last job.
        let learned = self
            .adaptive
            .as_ref()
            .and_then(|a| a.keeps_until())
            .filter(|&t| t > clock.now());
        let remote = self
            .remote
            .iter()
            .filter_map(|(_, r)| r.holds_until(clock))
            .max();
        pause.max(rate).max(learned).max(remote)
    }
}
