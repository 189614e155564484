//! Adaptive concurrency: a limit on running jobs that learns a downstream's
//! capacity from what the jobs report ([`Adaptive`], [`Outcome`]), for the pool
//! ([`Builder::adaptive`](crate::Builder::adaptive)) or for each key
//! ([`KeyLimits::adaptive`](crate::KeyLimits::adaptive)). The law itself is in
//! `controller.rs`; [`AdaptiveLimit`] puts it in a gate.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::controller::{Controller, Ticket};
use super::{Admit, Clock};
use crate::error::LimitError;
use crate::stats::Ending;

/// How a job ended, as far as the downstream's capacity is concerned: what an
/// [adaptive](Adaptive) limit learns from.
///
/// A job's outcome is decided for it unless it is classified
/// ([`JobBuilder::classify`](crate::JobBuilder::classify)): a run timeout is an
/// `Overload`; a cancel, an abort and a panic are `Ignore`; a job that returns is a
/// `Success`. A job that never started reports nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The downstream did the work; the job's run time is a latency sample.
    Success,
    /// The downstream was overloaded: it refused or throttled the call (an HTTP
    /// 429 or 503), or the job ran past its run timeout. The limit decreases, once
    /// however many jobs of the same burst report it. A `retry_after` (an HTTP
    /// `Retry-After`) also pauses starts for that long (the pool's, or the key's
    /// when the job has one), at most [`Adaptive::max_pause`].
    Overload {
        /// How long the downstream asked callers to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The outcome says nothing about the downstream's capacity (a caller's own
    /// error, a cancel): the limit neither grows nor shrinks for it.
    Ignore,
}

impl Outcome {
    /// The outcome of a job that was not classified, from how it ended.
    pub(crate) fn of(ending: Ending) -> Outcome {
        match ending {
            Ending::Completed => Outcome::Success,
            Ending::TimedOut => Outcome::Overload { retry_after: None },
            Ending::Cancelled | Ending::Aborted | Ending::Panicked => Outcome::Ignore,
        }
    }
}

/// Why an [`Adaptive`] configuration was refused, inside
/// [`LimitError::InvalidAdaptive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdaptiveError {
    /// `min` is zero: the limit could stop every job for good.
    MinZero,
    /// `max` is zero.
    MaxZero,
    /// `min` is above `max` (after `max` was capped at the pool's workers).
    MinAboveMax {
        /// The configured minimum.
        min: usize,
        /// The effective maximum.
        max: usize,
    },
    /// `initial` is outside `[min, max]` (after `max` was capped at the workers).
    InitialOutOfRange {
        /// The configured initial limit.
        initial: usize,
        /// The configured minimum.
        min: usize,
        /// The effective maximum.
        max: usize,
    },
    /// `decrease` is not a number in `[0.5, 1)`.
    DecreaseOutOfRange,
}

impl fmt::Display for AdaptiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdaptiveError::MinZero => f.write_str("adaptive limit: min must be at least 1"),
            AdaptiveError::MaxZero => f.write_str("adaptive limit: max must be at least 1"),
            AdaptiveError::MinAboveMax { min, max } => {
                write!(f, "adaptive limit: min {min} is above max {max}")
            }
            AdaptiveError::InitialOutOfRange { initial, min, max } => {
                write!(
                    f,
                    "adaptive limit: initial {initial} is outside [{min}, {max}]"
                )
            }
            AdaptiveError::DecreaseOutOfRange => {
                f.write_str("adaptive limit: decrease must be in [0.5, 1)")
            }
        }
    }
}

impl std::error::Error for AdaptiveError {}

/// An adaptive limit on running jobs: it starts at `initial`, grows while the
/// downstream keeps up and shrinks when it reports overload or slows down, always
/// within `[min, max]`.
///
/// The law: time is cut into windows of about one smoothed run time. The limit
/// doubles per window until the first decrease, then grows by one per window in
/// which the running jobs reached it, no job was overloaded, none has hung (run
/// for more than three smoothed run times) and the run time has not risen above
/// 1.3 times its lowest level. An [`Outcome::Overload`] cuts it at once by
/// [`decrease`](Adaptive::decrease) (once per burst), a hung job counts as one, and
/// a slow-down cuts it in proportion. Run time counts from the job's start, not its
/// queue wait. Shrinking never interrupts a running job: starts stop until the
/// running jobs fall below the new limit. ARCHITECTURE.md says why each rule is
/// there, with the simulation that chose it.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), taskgate::BuildError> {
/// use taskgate::{Adaptive, Outcome, Pool};
///
/// let pool = Pool::builder()
///     .workers(64) // the hard cap
///     .adaptive(Adaptive::aimd().initial(4).min(2))
///     .build()?;
/// let status = pool
///     .job(async { 429u16 }) // stands for an HTTP call
///     .classify(|status: &u16| match *status {
///         429 | 503 => Outcome::Overload { retry_after: None },
///         _ => Outcome::Success,
///     })
///     .run()
///     .await;
/// assert_eq!(status, Ok(429));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Adaptive {
    initial: Option<usize>,
    min: usize,
    max: Option<usize>,
    decrease: f64,
    max_pause: Duration,
}

impl PartialEq for Adaptive {
    fn eq(&self, other: &Self) -> bool {
        // By bits: a total equality, so that `Eq` holds (a NaN decrease is refused
        // when the limit is applied anyway).
        self.initial == other.initial
            && self.min == other.min
            && self.max == other.max
            && self.decrease.to_bits() == other.decrease.to_bits()
            && self.max_pause == other.max_pause
    }
}

impl Eq for Adaptive {}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive::aimd()
    }
}

impl Adaptive {
    /// Additive increase, multiplicative decrease: initial = min = 1, max = the
    /// pool's workers, decrease 0.9, max pause 60 s.
    pub fn aimd() -> Self {
        Adaptive {
            initial: None,
            min: 1,
            max: None,
            decrease: 0.9,
            max_pause: Duration::from_secs(60),
        }
    }

    /// The limit to start from (default: `min`).
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = Some(initial);
        self
    }

    /// The lowest limit (default 1).
    pub fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }

    /// The highest limit (default: the pool's workers when the limit is applied;
    /// never above them, which stay the hard cap).
    pub fn max(mut self, max: usize) -> Self {
        self.max = Some(max);
        self
    }

    /// The factor applied to the limit on each decrease, in `[0.5, 1)` (default
    /// 0.9).
    pub fn decrease(mut self, decrease: f64) -> Self {
        self.decrease = decrease;
        self
    }

    /// The longest pause a `retry_after` can impose (default 60 s).
    pub fn max_pause(mut self, max_pause: Duration) -> Self {
        self.max_pause = max_pause;
        self
    }

    /// Checks the configuration for a pool of `workers` workers.
    pub(crate) fn validate(&self, workers: usize) -> Result<Resolved, LimitError> {
        self.resolve(workers).map_err(LimitError::InvalidAdaptive)
    }

    /// The configuration for `workers` workers, checked when it was set but
    /// applied later (a key's lane is created after a resize): where the workers
    /// have fallen below `min` or `initial`, they are capped at the workers.
    pub(crate) fn resolve_capped(&self, workers: usize) -> Resolved {
        let workers = workers.max(1);
        let max = self.max.unwrap_or(workers).clamp(1, workers);
        let min = self.min.clamp(1, max);
        Resolved {
            initial: self.initial.unwrap_or(min).clamp(min, max),
            min,
            max,
            decrease: if (0.5..1.0).contains(&self.decrease) {
                self.decrease
            } else {
                0.9
            },
            max_pause: self.max_pause,
        }
    }

    fn resolve(&self, workers: usize) -> Result<Resolved, AdaptiveError> {
        let workers = workers.max(1);
        if self.decrease.is_nan() || !(0.5..1.0).contains(&self.decrease) {
            return Err(AdaptiveError::DecreaseOutOfRange);
        }
        if self.min == 0 {
            return Err(AdaptiveError::MinZero);
        }
        let max = match self.max {
            Some(0) => return Err(AdaptiveError::MaxZero),
            Some(max) => max.min(workers),
            None => workers,
        };
        if self.min > max {
            return Err(AdaptiveError::MinAboveMax { min: self.min, max });
        }
        let initial = self.initial.unwrap_or(self.min);
        if initial < self.min || initial > max {
            return Err(AdaptiveError::InitialOutOfRange {
                initial,
                min: self.min,
                max,
            });
        }
        Ok(Resolved {
            initial,
            min: self.min,
            max,
            decrease: self.decrease,
            max_pause: self.max_pause,
        })
    }
}

/// A checked [`Adaptive`] configuration: `1 <= min <= initial <= max <= workers`
/// and `0.5 <= decrease < 1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Resolved {
    pub(crate) initial: usize,
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) decrease: f64,
    pub(crate) max_pause: Duration,
}

/// An adaptive limit in a gate: the controller, and the instant its clock counts
/// from. Boxed in the gate, so a gate without one stays small.
#[derive(Clone, Debug)]
pub(crate) struct AdaptiveLimit {
    /// As set, to tell whether new limits change it.
    config: Adaptive,
    origin: Instant,
    ctl: Controller,
    /// When the last job it counted ended.
    last_end: Option<Instant>,
}

/// How long a key keeps what it learned after its last job, in smoothed run
/// times; at least [`KEEP_MIN`], at most [`KEEP_MAX`].
const KEEP_RUN_TIMES: u32 = 10;
const KEEP_MIN: Duration = Duration::from_secs(1);
const KEEP_MAX: Duration = Duration::from_secs(60);

impl AdaptiveLimit {
    pub(crate) fn new(config: Adaptive, workers: usize, origin: Instant) -> AdaptiveLimit {
        AdaptiveLimit::starting_at(config, workers, origin, 0)
    }

    /// As `new`, with tickets numbered from `first`: a key's limit set again after
    /// it was removed must not take the tickets of jobs that started under the
    /// old one for its own.
    pub(crate) fn starting_at(
        config: Adaptive,
        workers: usize,
        origin: Instant,
        first: u64,
    ) -> AdaptiveLimit {
        AdaptiveLimit {
            config,
            origin,
            ctl: Controller::starting_at(config.resolve_capped(workers), first),
            last_end: None,
        }
    }

    /// The number the next ticket will have.
    pub(crate) fn next_ticket(&self) -> u64 {
        self.ctl.next_ticket()
    }

    /// Until when the learned limit is worth keeping: a key's lane is not
    /// collected before then, so a key that pauses between bursts does not learn
    /// again from `initial` each time.
    pub(crate) fn keeps_until(&self) -> Option<Instant> {
        let keep = self
            .ctl
            .smoothed_run_time()
            .map_or(KEEP_MIN, |rt| rt.saturating_mul(KEEP_RUN_TIMES))
            .clamp(KEEP_MIN, KEEP_MAX);
        self.last_end.map(|t| t + keep)
    }

    /// New settings: a different configuration restarts the learning (the
    /// tickets of jobs still running are ignored when they come back).
    pub(crate) fn reconfigure(&mut self, config: Adaptive, workers: usize) {
        if config != self.config {
            self.config = config;
            self.ctl.restart(config.resolve_capped(workers));
        }
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.ctl.limit()
    }

    /// Below the limit: a start needs no clock (a pause set by a `retry_after`
    /// is the gate's own [`Pause`](super::Pause)).
    #[inline]
    pub(crate) fn check(&self) -> Admit {
        if self.has_room() {
            Admit::Now
        } else {
            Admit::OnRelease
        }
    }

    /// Whether a release could let a blocked lane start again.
    pub(crate) fn has_room(&self) -> bool {
        self.ctl.in_flight() < self.ctl.limit()
    }

    pub(crate) fn acquire(&mut self, clock: &mut Clock) -> Ticket {
        let now = clock.approx().saturating_duration_since(self.origin);
        self.ctl.on_start(now)
    }

    /// The job of `ticket` ended at `at` with `outcome`. Returns until when starts
    /// must pause, if the outcome asked for one.
    pub(crate) fn release(
        &mut self,
        ticket: Ticket,
        at: Instant,
        outcome: Outcome,
    ) -> Option<Instant> {
        self.last_end = Some(self.last_end.map_or(at, |t| t.max(at)));
        let now = at.saturating_duration_since(self.origin);
        let r = self.ctl.on_release(ticket, now, outcome);
        r.pause_until.map(|p| self.origin + p)
    }
}
