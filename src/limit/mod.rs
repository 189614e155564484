//! The admission seam: [`Limiter`], which every limit on job starts implements,
//! and [`Gate`], the set of limiters a lane (a key, or the unkeyed jobs) or the pool
//! puts in front of its jobs.
//!
//! The scheduler asks a lane's gate and the pool's gate whether the lane's next job
//! may start (`check`, which takes nothing), and only when both say yes does it take
//! from each (`acquire`). When the job ends, its lane's gate hears the outcome
//! (`release`). So a job counts once against every limit, and a job that never
//! starts counts against none. A new kind of limit (an adaptive concurrency limit
//! that learns from latency and outcomes, or a rate shared through Redis) is one
//! more `Limiter` field in `Gate`, with no change to the scheduler.

mod key;
mod rate;

pub use key::{Key, KeyLimits, KeyStats};
pub use rate::Rate;
pub(crate) use rate::{Gcra, after, far_future};

use tokio::time::Instant;

use crate::stats::Outcome;

/// The scheduler's clock for one decision: read at most once, and only if a
/// limiter needs it, so that jobs without time-based limits never read it.
#[derive(Default)]
pub(crate) struct Clock(Option<Instant>);

impl Clock {
    pub(crate) fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }

    pub(crate) fn at(now: Instant) -> Clock {
        Clock(Some(now))
    }

    /// The time read so far, if anything needed it.
    pub(crate) fn read(&self) -> Option<Instant> {
        self.0
    }
}

/// What a limiter says about starting one more job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Now,
    /// Not before this time; the scheduler sets a timer.
    At(Instant),
    /// Not until a running job is released.
    OnRelease,
}

/// One limit on job starts.
pub(crate) trait Limiter {
    /// Whether one more job may start, without taking anything.
    fn check(&self, clock: &mut Clock) -> Admit;
    /// A job passed every limiter and starts now: count it. `queued_since` is
    /// when the job was accepted, given where a rate applies (a rate charges a
    /// job that was already waiting when its start became due from then, up to
    /// the timer's granularity: see `Gcra::take`).
    fn acquire(&mut self, clock: &mut Clock, queued_since: Option<Instant>);
    /// A job this limiter counted has ended with `outcome`.
    fn release(&mut self, outcome: Outcome);
    /// Until when the limiter holds state that would be lost if its lane were
    /// removed (a pause, a rate debt); `None` if it holds none past now.
    fn holds_until(&self, clock: &mut Clock) -> Option<Instant>;
}

/// At most `cap` jobs at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConcurrencyLimit {
    pub(crate) cap: usize,
    pub(crate) running: usize,
}

impl Limiter for ConcurrencyLimit {
    #[inline]
    fn check(&self, _: &mut Clock) -> Admit {
        if self.running < self.cap {
            Admit::Now
        } else {
            Admit::OnRelease
        }
    }

    #[inline]
    fn acquire(&mut self, _: &mut Clock, _: Option<Instant>) {
        self.running += 1;
    }

    #[inline]
    fn release(&mut self, _: Outcome) {
        self.running -= 1;
    }

    fn holds_until(&self, _: &mut Clock) -> Option<Instant> {
        None
    }
}

impl Limiter for Gcra {
    fn check(&self, clock: &mut Clock) -> Admit {
        match Gcra::check(self, clock.now()) {
            None => Admit::Now,
            Some(at) => Admit::At(at),
        }
    }

    fn acquire(&mut self, clock: &mut Clock, queued_since: Option<Instant>) {
        self.take(clock.now(), queued_since);
    }

    fn release(&mut self, _: Outcome) {}

    fn holds_until(&self, clock: &mut Clock) -> Option<Instant> {
        self.owed_until(clock.now())
    }
}

/// No start before `until`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pause {
    pub(crate) until: Option<Instant>,
}

impl Pause {
    /// Extends the pause to `until` (a pause is never shortened).
    pub(crate) fn extend(&mut self, until: Instant) {
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }

    /// The end of the pause, if it has not passed.
    pub(crate) fn active(&self, clock: &mut Clock) -> Option<Instant> {
        let until = self.until?;
        (until > clock.now()).then_some(until)
    }
}

impl Limiter for Pause {
    #[inline]
    fn check(&self, clock: &mut Clock) -> Admit {
        match self.until {
            None => Admit::Now,
            Some(_) => self.active(clock).map_or(Admit::Now, Admit::At),
        }
    }

    fn acquire(&mut self, _: &mut Clock, _: Option<Instant>) {}

    fn release(&mut self, _: Outcome) {}

    fn holds_until(&self, clock: &mut Clock) -> Option<Instant> {
        self.active(clock)
    }
}

/// The limiters in front of one lane's jobs (or, with no concurrency cap, the
/// pool's). Checked in order; the first that says no decides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gate {
    pub(crate) pause: Pause,
    pub(crate) concurrency: ConcurrencyLimit,
    pub(crate) rate: Option<Gcra>,
}

impl Gate {
    pub(crate) fn new(concurrency: Option<usize>, rate: Option<crate::Rate>) -> Gate {
        Gate {
            pause: Pause::default(),
            concurrency: ConcurrencyLimit {
                cap: concurrency.unwrap_or(usize::MAX),
                running: 0,
            },
            rate: rate.map(Gcra::new),
        }
    }
}

impl Gate {
    /// Whether a start counts against anything here (a cap or a rate), so that a
    /// job must be claimed before it is counted.
    #[inline]
    pub(crate) fn counts(&self) -> bool {
        self.concurrency.cap != usize::MAX || self.rate.is_some()
    }
}

impl Limiter for Gate {
    #[inline]
    fn check(&self, clock: &mut Clock) -> Admit {
        match self.pause.check(clock) {
            Admit::Now => {}
            no => return no,
        }
        match self.concurrency.check(clock) {
            Admit::Now => {}
            no => return no,
        }
        match &self.rate {
            Some(r) => Limiter::check(r, clock),
            None => Admit::Now,
        }
    }

    #[inline]
    fn acquire(&mut self, clock: &mut Clock, queued_since: Option<Instant>) {
        self.concurrency.acquire(clock, queued_since);
        if let Some(r) = &mut self.rate {
            Limiter::acquire(r, clock, queued_since);
        }
    }

    #[inline]
    fn release(&mut self, outcome: Outcome) {
        self.concurrency.release(outcome);
    }

    fn holds_until(&self, clock: &mut Clock) -> Option<Instant> {
        let pause = self.pause.holds_until(clock);
        let rate = self.rate.as_ref().and_then(|r| r.holds_until(clock));
        pause.max(rate)
    }
}
