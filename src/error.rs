//! Error types: why a job ended without output, why a submission was refused,
//! and why a pool could not be built.

use crate::limit::AdaptiveError;
use std::fmt;

/// Why a job ended without producing its output.
///
/// Returned by awaiting a [`JobHandle`](crate::JobHandle) or by
/// [`Pool::run`](crate::Pool::run).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum JobError {
    /// The job was cancelled: its handle called [`cancel`](crate::JobHandle::cancel),
    /// or the pool was [aborted](crate::Pool::abort) before the job ended.
    Cancelled,
    /// The job ran longer than its run timeout and was dropped.
    TimedOut,
    /// The job waited in the queue longer than its queue timeout and never started.
    QueueTimedOut,
    /// The job panicked. The string is the panic message, or a placeholder when the
    /// payload was neither a `&str` nor a `String`.
    Panicked(String),
    /// The pool was closed before it accepted the job.
    Closed,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Cancelled => f.write_str("job cancelled"),
            JobError::TimedOut => f.write_str("job timed out"),
            JobError::QueueTimedOut => f.write_str("job timed out in the queue"),
            JobError::Panicked(msg) => write!(f, "job panicked: {msg}"),
            JobError::Closed => f.write_str("pool closed"),
        }
    }
}

impl std::error::Error for JobError {}

/// A submission that waited for queue space was refused. The job comes back inside.
///
/// Returned by [`Pool::submit`](crate::Pool::submit),
/// [`Pool::submit_timeout`](crate::Pool::submit_timeout), [`Pool::spawn`](crate::Pool::spawn)
/// and [`Pool::submit_blocking`](crate::Pool::submit_blocking).
pub enum SubmitError<F> {
    /// The pool is closed; it accepts no new jobs.
    Closed(F),
    /// No queue space became free within the wait that was allowed.
    Timeout(F),
}

impl<F> SubmitError<F> {
    /// Takes back the job that was refused.
    pub fn into_inner(self) -> F {
        match self {
            SubmitError::Closed(f) | SubmitError::Timeout(f) => f,
        }
    }

    /// Whether the pool was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, SubmitError::Closed(_))
    }

    /// Whether the wait for queue space ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SubmitError::Timeout(_))
    }
}

impl<W> SubmitError<W> {
    pub(crate) fn map<F>(self, f: impl FnOnce(W) -> F) -> SubmitError<F> {
        match self {
            SubmitError::Closed(w) => SubmitError::Closed(f(w)),
            SubmitError::Timeout(w) => SubmitError::Timeout(f(w)),
        }
    }
}

impl<F> fmt::Debug for SubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed(_) => f.write_str("Closed(..)"),
            SubmitError::Timeout(_) => f.write_str("Timeout(..)"),
        }
    }
}

impl<F> fmt::Display for SubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed(_) => f.write_str("pool closed"),
            SubmitError::Timeout(_) => f.write_str("timed out waiting for queue space"),
        }
    }
}

impl<F> std::error::Error for SubmitError<F> {}

/// A submission that could not be accepted at once. The job comes back inside.
///
/// Returned by [`Pool::try_submit`](crate::Pool::try_submit).
pub enum TrySubmitError<F> {
    /// The queue is full.
    Full(F),
    /// The pool is closed; it accepts no new jobs.
    Closed(F),
}

impl<F> TrySubmitError<F> {
    /// Takes back the job that was refused.
    pub fn into_inner(self) -> F {
        match self {
            TrySubmitError::Full(f) | TrySubmitError::Closed(f) => f,
        }
    }

    /// Whether the queue was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySubmitError::Full(_))
    }

    /// Whether the pool was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, TrySubmitError::Closed(_))
    }
}

impl<W> TrySubmitError<W> {
    pub(crate) fn map<F>(self, f: impl FnOnce(W) -> F) -> TrySubmitError<F> {
        match self {
            TrySubmitError::Full(w) => TrySubmitError::Full(f(w)),
            TrySubmitError::Closed(w) => TrySubmitError::Closed(f(w)),
        }
    }
}

impl<F> fmt::Debug for TrySubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("Full(..)"),
            TrySubmitError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<F> fmt::Display for TrySubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("queue full"),
            TrySubmitError::Closed(_) => f.write_str("pool closed"),
        }
    }
}

impl<F> std::error::Error for TrySubmitError<F> {}

/// A [`Builder`](crate::Builder) setting could not make a pool.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// `build()` was called outside a Tokio runtime, so there is nowhere to run workers.
    NoRuntime,
    /// `workers(0)` was asked for. A pool needs at least one worker; to pause a
    /// pool, build it with one or more and call [`Pool::resize(0)`](crate::Pool::resize).
    ZeroWorkers,
    /// The runtime was built without timers (`enable_time()` or `enable_all()`), which
    /// the pool needs for run and queue timeouts.
    NoTimer,
    /// A rate or key limit given to the builder is invalid.
    InvalidLimit(LimitError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoRuntime => {
                f.write_str("no tokio runtime: build the pool from inside a tokio runtime")
            }
            BuildError::ZeroWorkers => {
                f.write_str("workers must be at least 1 (use resize(0) to pause a pool)")
            }
            BuildError::NoTimer => f.write_str(
                "the tokio runtime has timers disabled: build it with enable_time() or enable_all()",
            ),
            BuildError::InvalidLimit(_) => f.write_str("invalid rate, key or adaptive limit"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::InvalidLimit(e) => Some(e),
            _ => None,
        }
    }
}

impl From<LimitError> for BuildError {
    fn from(e: LimitError) -> BuildError {
        BuildError::InvalidLimit(e)
    }
}

/// A [`Rate`](crate::Rate) or [`KeyLimits`](crate::KeyLimits) that cannot be
/// enforced. Returned by [`Pool::set_key_limits`](crate::Pool::set_key_limits), and
/// inside [`BuildError::InvalidLimit`] by [`Builder::build`](crate::Builder::build).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    /// A rate of zero starts per period: nothing could ever start.
    ZeroRate,
    /// A rate over a zero period.
    ZeroPeriod,
    /// A burst of zero: nothing could ever start.
    ZeroBurst,
    /// A key concurrency of zero: no job of the key could ever start. To hold a
    /// key's jobs for a while, use [`Pool::pause_key_for`](crate::Pool::pause_key_for).
    ZeroConcurrency,
    /// A key queue capacity of zero: no job of the key could ever be accepted.
    ZeroQueueCapacity,
    /// A [key queue share](crate::Builder::key_queue_share) that is not a number
    /// in `(0, 1]`.
    InvalidQueueShare,
    /// An [adaptive limit](crate::Adaptive) whose settings cannot hold.
    InvalidAdaptive(AdaptiveError),
    /// A shared rate's lease of zero tokens (feature `redis`).
    ZeroLease,
    /// A shared rate faster than one start per microsecond (the resolution of
    /// the clock it is kept on in Redis), or whose interval × burst does not
    /// fit that clock's 64-bit microseconds (feature `redis`).
    SharedRateOutOfRange,
    /// A shared concurrency limit's slot TTL under 30 ms or over a day
    /// (feature `redis`).
    InvalidTtl,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitError::ZeroRate => "rate must allow at least 1 start per period",
            LimitError::ZeroPeriod => "rate period must be longer than zero",
            LimitError::ZeroBurst => "rate burst must be at least 1",
            LimitError::ZeroConcurrency => "concurrency must be at least 1",
            LimitError::ZeroQueueCapacity => "key queue capacity must be at least 1",
            LimitError::InvalidQueueShare => "key queue share must be in (0, 1]",
            LimitError::InvalidAdaptive(e) => return fmt::Display::fmt(e, f),
            LimitError::ZeroLease => "shared rate lease must be at least 1",
            LimitError::SharedRateOutOfRange => {
                "shared rate must allow at most one start per microsecond, and its interval times its burst must fit in 64-bit microseconds"
            }
            LimitError::InvalidTtl => "shared concurrency slot ttl must be from 30 ms to a day",
        })
    }
}

impl std::error::Error for LimitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LimitError::InvalidAdaptive(e) => Some(e),
            _ => None,
        }
    }
}
