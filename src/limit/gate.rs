//! The set of limiters in front of a lane's jobs, or the pool's: [`Gate`]. A new
//! limit becomes one more field here, checked in [`Gate::check`](Limiter::check).

use tokio::time::Instant;

use super::{Admit, Clock, ConcurrencyLimit, Gcra, Limiter, Pause};
use crate::stats::Outcome;

/// The limiters in front of one lane's jobs (or, with no concurrency cap, the
/// pool's). Checked in order; the first that says no decides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gate {
    pub(crate) pause: Pause,
    pub(crate) concurrency: ConcurrencyLimit,
    pub(crate) rate: Option<Gcra>,
}

impl Gate {
    pub(crate) fn new(concurrency: Option<usize>, rate: Option<super::Rate>) -> Gate {
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
