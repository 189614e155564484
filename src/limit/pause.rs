//! A pause: no start before a time (`Pool::pause_for`, `Pool::pause_key_for`, to
//! honour a `429` with `Retry-After`).

use tokio::time::Instant;

use super::{Admit, Clock, Limiter};
use crate::stats::Ending;

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

    fn release(&mut self, _: Ending) {}

    fn holds_until(&self, clock: &mut Clock) -> Option<Instant> {
        self.active(clock)
    }
}
