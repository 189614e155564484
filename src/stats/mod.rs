//! What the pool counts: the public [`Stats`], [`Latency`] and
//! [`ShutdownReport`], the [`Ending`] a worker records, the workers' stats shards
//! (`shard.rs`) and the metrics export (`telemetry.rs`, feature `metrics`).

mod shard;
mod telemetry;

pub(crate) use shard::{Shard, Totals};
pub(crate) use telemetry::Telemetry;

use std::time::Duration;

/// How a job ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Completed,
    Cancelled,
    Aborted,
    TimedOut,
    Panicked,
}

/// Percentiles of a duration distribution.
///
/// Computed from a log-scale histogram with four buckets per power of two, so a
/// percentile is reported as the upper edge of its bucket (at most about 25% above
/// the true value, and never above `max`). `max` is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The largest value recorded.
    pub max: Duration,
}

/// A snapshot of a pool's state and counters, from [`Pool::stats`](crate::Pool::stats).
///
/// Once the pool is quiet (nothing queued or running, no submitter mid-call),
/// `submitted == completed + cancelled + timed_out + queue_timed_out + panicked`.
/// A job's outcome is counted before its handle resolves, so a caller that has just
/// seen a result also sees it here.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Stats {
    /// Workers in service: the size set by the builder or [`resize`](crate::Pool::resize),
    /// or more while jobs that were running when the pool shrank finish. Always `>= busy`.
    pub workers: usize,
    /// The limit on running jobs now: the pool's [adaptive](crate::Builder::adaptive)
    /// limit, or its size for a pool without one. At most `workers`.
    pub limit: usize,
    /// Jobs running now. A job counts from when a worker takes it until the worker
    /// is free for the next one, which is just after the job's handle resolves.
    pub busy: usize,
    /// Jobs accepted and waiting in the queue.
    pub queued: usize,
    /// Keys with state: jobs queued or running, a pause, a rate debt, or a
    /// recently learned [adaptive](crate::KeyLimits::adaptive) limit. Keys without
    /// state are removed, so this does not grow with the keys seen.
    pub keys: usize,
    /// Jobs accepted (refused submissions are not counted).
    pub submitted: u64,
    /// Jobs that ran to completion (their handle got `Ok`).
    pub completed: u64,
    /// Jobs cancelled: by their caller (handle dropped or cancelled, `run` future
    /// dropped), or by [`abort`](crate::Pool::abort) or a shutdown deadline.
    pub cancelled: u64,
    /// Jobs dropped for running past their run timeout.
    pub timed_out: u64,
    /// Jobs dropped for waiting in the queue past their queue timeout.
    pub queue_timed_out: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Submissions refused because the queue was full: `try_submit` calls that got
    /// `Full`, and `submit_timeout` calls that timed out.
    pub rejected: u64,
    /// Time from submission to start, for jobs that started.
    pub queue_wait: Latency,
    /// Time from start to outcome, for jobs that started.
    pub run_time: Latency,
}

impl Stats {
    /// Jobs that have an outcome: `completed + cancelled + timed_out + queue_timed_out + panicked`.
    pub fn ended(&self) -> u64 {
        self.completed + self.cancelled + self.timed_out + self.queue_timed_out + self.panicked
    }
}

/// What [`Pool::shutdown_timeout`](crate::Pool::shutdown_timeout) did.
///
/// `completed + cancelled` is the number of accepted jobs that had not ended when
/// the shutdown began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Jobs that ended on their own during the drain: ran to completion, or ended by
    /// their own timeout, panic, or their caller's cancellation.
    pub completed: u64,
    /// Jobs that were still queued or running when the grace period ran out, and were
    /// cancelled.
    pub cancelled: u64,
}
