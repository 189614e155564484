//! A copy of taskgate's GCRA (`src/limit/rate.rs`, crate-private), shared by
//! `benches/gcra.rs` and `examples/governor_gcra.rs` so that both measure the same
//! code. Keep it in step with `src/limit/rate.rs`.

use std::time::Duration;

use taskgate::Rate;
use tokio::time::Instant;

/// A copy of `taskgate::limit::rate::Gcra` (src/limit/rate.rs): check and take are separate so
/// that a job takes from several rates only when it passes all of them.
#[derive(Clone, Copy, Debug)]
pub struct Gcra {
    interval: Duration,
    tolerance: Duration,
    tat: Option<Instant>,
}

impl Gcra {
    pub fn new(rate: Rate) -> Gcra {
        // Beyond the horizon every wait is "never"; the clamp keeps `tat` on the clock.
        let interval = rate.interval().min(HORIZON);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(rate.burst_size().saturating_sub(1)),
            tat: None,
        }
    }

    /// `None` if a start conforms at `now`, or else the earliest time it will.
    #[inline]
    pub fn check(&self, now: Instant) -> Option<Instant> {
        // `tat - tolerance` before the clock's origin is long past: it conforms.
        let earliest = self.tat?.checked_sub(self.tolerance)?;
        (now < earliest).then_some(earliest)
    }

    /// Takes one start at `now`.
    #[inline]
    pub fn take(&mut self, now: Instant) {
        let base = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some(
            base.checked_add(self.interval)
                .unwrap_or_else(|| far_future(now)),
        );
    }
}

/// About thirty years: a wait this long means "never".
const HORIZON: Duration = Duration::from_secs(86_400 * 365 * 30);

fn far_future(now: Instant) -> Instant {
    now.checked_add(HORIZON).unwrap_or(now)
}
