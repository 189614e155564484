//! [`Rate`], a limit on how fast jobs start, and [`Gcra`], the scheduler's state
//! for one rate.

use std::time::Duration;

use tokio::time::Instant;

use super::{Admit, Clock, Limiter};
use crate::error::LimitError;
use crate::stats::Ending;

/// How fast jobs may start: `n` per period, with bursts of up to `burst` (default 1).
///
/// Enforced with GCRA (the generic cell rate algorithm, a token bucket without a
/// refill task): jobs start at most one per `period / n` on average, and up to
/// `burst` of them may start back to back after a quiet spell.
///
/// **The bound.** Over any window of length `t`, starts ≤ `burst + n·(t + ε)/period`,
/// where ε is the timer's lateness, 2 ms: two ticks of tokio's 1 ms timer. A job
/// waiting for the rate is started by a timer, and a timer fires after its deadline:
/// tokio rounds the deadline up to the next millisecond tick, and the thread that
/// drives the timer sleeps in whole milliseconds, rounded up again. A start that
/// the timer made late is charged as if it had been up to ε earlier (never
/// earlier than it was due), not from the late wake-up, so the lateness is given
/// back instead of lost; that is what lets two starts come up to ε closer than
/// the interval. Where every start lands on time (on tokio's paused clock with an
/// interval of whole milliseconds, and no other limit holding a job) nothing is
/// given back and the exact bound `burst + n·t/period` holds.
///
/// **The rate is delivered.** A pool with more jobs queued than the rate lets
/// start reaches the rate, with a burst of 1 as with any larger one: on the
/// development machine, over 10 s, 1 000/s started 99.9 % of the rate and 20 000/s
/// 99.9 %, with a burst of 1 (`examples/rate_accuracy.rs`, BENCHMARKS.md). A start
/// held by something else (a pause, a concurrency cap, busy workers) more than
/// 10 ms past its theoretical arrival time gets nothing back: it is charged from
/// when it starts, as plain GCRA does. (Within 10 ms it may get up to ε back, so
/// two starts may then come up to ε closer than the interval; the bound holds all
/// the same.)
///
/// **Against a server that enforces the same rate strictly** (nginx `limit_req`
/// with no `burst`), use a burst of at least `1 + n·ε/period`, about 10 ms of the
/// rate, or a slightly lower rate: such a server refuses a start that comes even
/// slightly early.
///
/// A rate limits **starts**, not submissions: a job waits in the queue, holding no
/// worker, until the rate allows it.
///
/// A zero count, period or burst is refused when the rate is used, with
/// [`LimitError`] (inside [`BuildError::InvalidLimit`](crate::BuildError::InvalidLimit)
/// from [`Builder::build`](crate::Builder::build)).
///
/// ```
/// use std::time::Duration;
/// use taskgate::Rate;
///
/// let a = Rate::per_second(50);
/// let b = Rate::per_minute(600).burst(20);
/// let c = Rate::new(3, Duration::from_millis(100));
/// assert_eq!(a.interval(), Duration::from_millis(20));
/// assert_eq!(b.interval(), Duration::from_millis(100));
/// assert_eq!(c.burst_size(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    n: u32,
    per: Duration,
    burst: u32,
}

impl Rate {
    /// `n` starts per second.
    pub const fn per_second(n: u32) -> Rate {
        Rate::new(n, Duration::from_secs(1))
    }

    /// `n` starts per minute.
    pub const fn per_minute(n: u32) -> Rate {
        Rate::new(n, Duration::from_secs(60))
    }

    /// `n` starts per `per`.
    pub const fn new(n: u32, per: Duration) -> Rate {
        Rate { n, per, burst: 1 }
    }

    /// Allows up to `burst` starts back to back after a quiet spell (default 1).
    pub const fn burst(mut self, burst: u32) -> Rate {
        self.burst = burst;
        self
    }

    /// The count: starts per [`period`](Rate::period).
    pub const fn count(&self) -> u32 {
        self.n
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.per
    }

    /// The burst size.
    pub const fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The average time between starts, `period / count`, rounded up to the
    /// nanosecond so that the rate is never exceeded. Zero for a zero count.
    pub fn interval(&self) -> Duration {
        if self.n == 0 {
            return Duration::ZERO;
        }
        let nanos = self.per.as_nanos().div_ceil(u128::from(self.n));
        Duration::new(
            u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
            (nanos % 1_000_000_000) as u32,
        )
    }

    pub(crate) fn validate(&self) -> Result<(), LimitError> {
        if self.n == 0 {
            Err(LimitError::ZeroRate)
        } else if self.per.is_zero() {
            Err(LimitError::ZeroPeriod)
        } else if self.burst == 0 {
            Err(LimitError::ZeroBurst)
        } else {
            Ok(())
        }
    }
}

/// GCRA state for one [`Rate`]: the theoretical arrival time of the next start.
///
/// A start at `now` conforms when `now >= tat - tolerance`, and moves `tat` to
/// `max(tat, now) + interval`. Checking and taking are separate, so a job that must
/// pass several rates (its key's and the pool's) takes from each only when it
/// passes all of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gcra {
    interval: Duration,
    /// `interval × (burst - 1)`: how far ahead of the clock `tat` may run.
    tolerance: Duration,
    tat: Option<Instant>,
}

impl Gcra {
    pub(crate) fn new(rate: Rate) -> Gcra {
        // Beyond the horizon every wait is "never"; the clamp keeps `tat` on the clock.
        let interval = rate.interval().min(HORIZON);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(rate.burst.saturating_sub(1)),
            tat: None,
        }
    }

    /// Changes the rate, keeping what has been taken so far.
    pub(crate) fn set_rate(&mut self, rate: Rate) {
        let tat = self.tat;
        *self = Gcra::new(rate);
        self.tat = tat;
    }

    /// `None` if a start conforms at `now`, or else the earliest time it will.
    pub(crate) fn check(&self, now: Instant) -> Option<Instant> {
        // `tat - tolerance` before the clock's origin is long past: it conforms.
        let earliest = self.tat?.checked_sub(self.tolerance)?;
        (now < earliest).then_some(earliest)
    }

    /// Takes one start at `now`, of a job queued since `queued_since`.
    ///
    /// Plain GCRA charges a start from `max(tat, now)`. A start that waited for
    /// the rate is woken by a timer, and a timer fires late (tokio rounds its
    /// deadline up to the next 1 ms tick; the OS adds its own delay): charged from
    /// `now`, every wait would lose that lateness, and a rate with a burst of 1
    /// would deliver well under what was asked (47 % of 1 000/s before this rule).
    /// So a job that was already queued when its start became due
    /// (`tat - tolerance`), and starts at most [`LATE_WINDOW`] after `tat`, is
    /// charged from `max(tat, now - LATENESS)`: up to [`LATENESS`] of lateness is
    /// given back, the next start is due one interval after that, and a backlog
    /// catches up at the wake-up. (A cliff at `LATENESS` itself, giving nothing
    /// back to a start 2.1 ms late, cost 1.7 % of 20 000/s with a burst of 1.)
    ///
    /// Every start is thus charged from an instant at most `LATENESS` before it,
    /// which bounds a window of length `t` to `burst + (t + LATENESS) / interval`
    /// starts. A start that lands on time gets nothing back, so where every start
    /// does, the bound is the exact `burst + t / interval`. A start held past
    /// `LATE_WINDOW` (by a pause, a cap, busy workers), or of a job that arrived
    /// after its start became due (the rate was idle), is charged from `now`, as
    /// plain GCRA does.
    pub(crate) fn take(&mut self, now: Instant, queued_since: Option<Instant>) {
        let base = match self.tat {
            None => now,
            Some(tat) => {
                let waited = queued_since.is_some_and(|since| {
                    tat.checked_sub(self.tolerance)
                        .is_some_and(|due| since <= due)
                });
                let late = now.saturating_duration_since(tat);
                if waited && late <= LATE_WINDOW {
                    // Given back up to `LATENESS`.
                    tat.max(now.checked_sub(LATENESS).unwrap_or(now))
                } else {
                    tat.max(now)
                }
            }
        };
        self.tat = Some(
            base.checked_add(self.interval)
                .unwrap_or_else(|| far_future(now)),
        );
    }

    /// When the state is back to fresh (nothing owed), if it is not at `now`.
    pub(crate) fn owed_until(&self, now: Instant) -> Option<Instant> {
        self.tat.filter(|&t| t > now)
    }
}

/// The most lateness a rate gives back to a start that waited for it: two ticks
/// of tokio's 1 ms timer, about how late a timer fires. A sleep's deadline is rounded
/// up to the next tick (up to 1 ms), and the thread that drives the timer parks
/// for whole milliseconds, rounded up again, then needs the OS to wake it: on the
/// development machine, wake-ups of a rate-limited pool landed up to about 1.5 ms
/// late, and with a 1 ms allowance 1 000/s delivered 95 %. The `ε` of the bound
/// in [`Rate`]'s docs. (On tokio's paused clock only the rounding applies.)
pub(crate) const LATENESS: Duration = Duration::from_millis(2);

/// A start later than this after its theoretical arrival time was held by
/// something other than the timer (a pause, a cap, busy workers): nothing is
/// given back. Within it, up to [`LATENESS`] is, so a timer that fires a little
/// more than `LATENESS` late still loses only the excess.
pub(crate) const LATE_WINDOW: Duration = Duration::from_millis(10);

/// About thirty years: a wait this long means "never".
const HORIZON: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A time that will not come: [`HORIZON`] from `now`.
pub(crate) fn far_future(now: Instant) -> Instant {
    now.checked_add(HORIZON).unwrap_or(now)
}

/// `now + d`, or [`far_future`] when that does not fit the clock.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .map_or_else(|| far_future(now), |t| t.min(far_future(now)))
}

// The rate as a limiter on job starts.
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

    fn release(&mut self, _: Ending) {}

    fn holds_until(&self, clock: &mut Clock) -> Option<Instant> {
        self.owed_until(clock.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_interval() {
        let t0 = Instant::now();
        let mut g = Gcra::new(Rate::per_second(10).burst(3));
        for _ in 0..3 {
            assert_eq!(g.check(t0), None);
            g.take(t0, Some(t0));
        }
        assert_eq!(g.check(t0), Some(t0 + Duration::from_millis(100)));
        assert_eq!(g.owed_until(t0), Some(t0 + Duration::from_millis(300)));
        assert_eq!(g.owed_until(t0 + Duration::from_millis(300)), None);
    }

    #[test]
    fn interval_rounds_up() {
        assert_eq!(
            Rate::new(3, Duration::from_nanos(10)).interval(),
            Duration::from_nanos(4)
        );
        assert_eq!(
            Rate::new(u32::MAX, Duration::from_nanos(1)).interval(),
            Duration::from_nanos(1)
        );
        assert_eq!(Rate::new(1, Duration::MAX).interval(), Duration::MAX);
    }
}
