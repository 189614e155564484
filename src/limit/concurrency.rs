//! A cap on the jobs running at once: a lane's (a key's) concurrency limit.

use tokio::time::Instant;

use super::{Admit, Clock, Limiter};
use crate::stats::Ending;

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
    fn release(&mut self, _: Ending) {
        self.running -= 1;
    }

    fn holds_until(&self, _: &mut Clock) -> Option<Instant> {
        None
    }
}
