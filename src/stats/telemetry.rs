//! Metrics export through the `metrics` crate facade (feature `metrics`).
//!
//! With the feature off, [`Telemetry`] is a zero-sized type whose methods do
//! nothing, so the call sites on the job path compile away.
//!
//! Names, each labelled `pool` (the pool's name):
//! - counters `taskgate_jobs_total{outcome}` (`completed`, `cancelled`, `timed_out`,
//!   `queue_timed_out`, `panicked`) and `taskgate_rejected_total`;
//! - gauges `taskgate_workers`, `taskgate_busy` and `taskgate_queued`, set under the
//!   pool lock whenever they change, so they are exact when the pool is at rest;
//! - histograms `taskgate_queue_wait_seconds` and `taskgate_run_seconds`.
//!
//! Handles are registered when the pool is built: install the recorder first. Give
//! each pool its own name: pools that share a name share series, and their gauges
//! overwrite each other.

use std::time::Duration;

use crate::stats::Ending;

#[cfg(feature = "metrics")]
mod imp {
    use super::*;
    use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

    pub(crate) struct Telemetry {
        completed: Counter,
        cancelled: Counter,
        timed_out: Counter,
        queue_timed_out: Counter,
        panicked: Counter,
        rejected: Counter,
        workers: Gauge,
        busy: Gauge,
        queued: Gauge,
        queue_wait: Histogram,
        run_time: Histogram,
    }

    impl Telemetry {
        pub(crate) fn new(pool: &str) -> Self {
            let jobs = |outcome: &'static str| counter!("taskgate_jobs_total", "pool" => pool.to_owned(), "outcome" => outcome);
            let p = || pool.to_owned();
            Telemetry {
                completed: jobs("completed"),
                cancelled: jobs("cancelled"),
                timed_out: jobs("timed_out"),
                queue_timed_out: jobs("queue_timed_out"),
                panicked: jobs("panicked"),
                rejected: counter!("taskgate_rejected_total", "pool" => p()),
                workers: gauge!("taskgate_workers", "pool" => p()),
                busy: gauge!("taskgate_busy", "pool" => p()),
                queued: gauge!("taskgate_queued", "pool" => p()),
                queue_wait: histogram!("taskgate_queue_wait_seconds", "pool" => p()),
                run_time: histogram!("taskgate_run_seconds", "pool" => p()),
            }
        }

        #[inline]
        pub(crate) fn outcome(&self, outcome: Ending) {
            match outcome {
                Ending::Completed => self.completed.increment(1),
                Ending::Cancelled | Ending::Aborted => self.cancelled.increment(1),
                Ending::TimedOut => self.timed_out.increment(1),
                Ending::Panicked => self.panicked.increment(1),
            }
        }

        #[inline]
        pub(crate) fn cancelled(&self, n: u64) {
            self.cancelled.increment(n);
        }

        #[inline]
        pub(crate) fn queue_timed_out(&self, n: u64) {
            self.queue_timed_out.increment(n);
        }

        #[inline]
        pub(crate) fn rejected(&self) {
            self.rejected.increment(1);
        }

        #[inline]
        pub(crate) fn queue_wait(&self, d: Duration) {
            self.queue_wait.record(d.as_secs_f64());
        }

        #[inline]
        pub(crate) fn run_time(&self, d: Duration) {
            self.run_time.record(d.as_secs_f64());
        }

        /// Called under the pool lock, so the last value set is the current one.
        #[inline]
        pub(crate) fn gauges(&self, workers: usize, busy: usize, queued: usize) {
            self.workers.set(workers as f64);
            self.busy.set(busy as f64);
            self.queued.set(queued as f64);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use super::*;

    pub(crate) struct Telemetry;

    impl Telemetry {
        pub(crate) fn new(_pool: &str) -> Self {
            Telemetry
        }
        #[inline(always)]
        pub(crate) fn outcome(&self, _: Ending) {}
        #[inline(always)]
        pub(crate) fn cancelled(&self, _: u64) {}
        #[inline(always)]
        pub(crate) fn queue_timed_out(&self, _: u64) {}
        #[inline(always)]
        pub(crate) fn rejected(&self) {}
        #[inline(always)]
        pub(crate) fn queue_wait(&self, _: Duration) {}
        #[inline(always)]
        pub(crate) fn run_time(&self, _: Duration) {}
        #[inline(always)]
        pub(crate) fn gauges(&self, _: usize, _: usize, _: usize) {}
    }
}

pub(crate) use imp::Telemetry;
