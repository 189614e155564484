//! [`Builder`]: the settings a pool is made with.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{BuildError, LimitError};
use crate::limit::Rate;
use crate::limit::{Adaptive, KeyLimits};
use crate::pool::Pool;
use crate::sched::{Inner, SchedConfig, Spawner};

impl Pool {
    /// A [`Builder`] with the default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A pool with `workers` workers and the other settings at their defaults.
    ///
    /// # Panics
    ///
    /// Where [`Builder::build`] would return an error: outside a Tokio runtime, or
    /// when `workers` is 0.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let pool = taskgate::Pool::new(16);
    /// assert_eq!(pool.stats().workers, 16);
    /// # }
    /// ```
    #[track_caller]
    pub fn new(workers: usize) -> Pool {
        match Builder::new().workers(workers).build() {
            Ok(pool) => pool,
            Err(e) => panic!("taskgate::Pool::new({workers}): {e}"),
        }
    }
}

/// Configures and builds a [`Pool`].
///
/// | setting | default |
/// |---|---|
/// | [`workers`](Builder::workers) | `available_parallelism() × 8` |
/// | [`queue_capacity`](Builder::queue_capacity) | `workers × 10`, at least 256 |
/// | [`job_timeout`](Builder::job_timeout) | none |
/// | [`queue_timeout`](Builder::queue_timeout) | none |
/// | [`name`](Builder::name) | `"taskgate"` |
/// | [`rate_limit`](Builder::rate_limit) | none |
/// | [`adaptive`](Builder::adaptive) | none (the limit is `workers`) |
/// | [`key_limits`](Builder::key_limits) | none |
/// | `shared_rate`, `shared_concurrency` (feature `redis`) | none |
/// | [`priority_aging`](Builder::priority_aging) | 1 s |
///
/// # Sizing
///
/// For CPU-bound work (or [`submit_blocking`](Pool::submit_blocking) closures that
/// compute), use about the number of cores: more workers only add switching. For
/// I/O-bound work (outbound calls, waiting on a database), use more: the default of
/// eight per core suits typical request latencies. To cap calls to a downstream
/// that allows `C` concurrent requests, use `workers(C)`. The queue bounds memory
/// and latency: a submitter waits (backpressure) once it is full.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), taskgate::BuildError> {
/// use std::time::Duration;
///
/// let pool = taskgate::Pool::builder()
///     .workers(32)
///     .queue_capacity(1_000)
///     .job_timeout(Duration::from_secs(10))
///     .name("upstream-api")
///     .build()?;
/// assert_eq!(pool.stats().workers, 32);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default, Debug)]
pub struct Builder {
    workers: Option<usize>,
    queue_capacity: Option<usize>,
    job_timeout: Option<Duration>,
    queue_timeout: Option<Duration>,
    name: Option<String>,
    rate: Option<Rate>,
    adaptive: Option<Adaptive>,
    key_limits: KeyLimits,
    aging: Option<Duration>,
    key_share: Option<f64>,
    #[cfg(feature = "redis")]
    shared_rate: Option<crate::redis::SharedRate>,
    #[cfg(feature = "redis")]
    shared_concurrency: Option<crate::redis::SharedConcurrency>,
    /// Remote limits for the crate's own tests (an in-memory stand-in for Redis).
    #[cfg(test)]
    test_remote: Vec<std::sync::Arc<dyn crate::limit::RemoteSpec>>,
}

impl Builder {
    /// A builder with the defaults in the table above.
    pub fn new() -> Self {
        Builder::default()
    }

    /// How many jobs may run at once. Must be at least 1 (see
    /// [`BuildError::ZeroWorkers`]); any larger value is accepted, since worker tasks
    /// are spawned only as jobs need them.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// How many accepted jobs may wait for a worker, beyond those a free worker is
    /// about to take. `0` is valid: a submit then waits until a worker is free to
    /// take its job (a rendezvous).
    ///
    /// The default is `workers × 10`, and at least 256: a submitter that shares
    /// the runtime's threads with the workers may not run again until a worker has
    /// spent its cooperative budget (128 jobs), so a smaller queue lets the
    /// workers run dry and park while it waits its turn. For CPU-sized jobs on a
    /// pool of a few workers, that made a queue of 20 about 1.5× slower per job
    /// than one of 256 (BENCHMARKS.md, seed table).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// The default run timeout: a job running longer is dropped and resolves as
    /// [`JobError::TimedOut`](crate::JobError::TimedOut). A zero timeout gives a job
    /// one poll (a job that is ready at once still succeeds, as with
    /// `tokio::time::timeout`). Override per job with
    /// [`JobBuilder::timeout`](crate::JobBuilder::timeout).
    ///
    /// A [`submit_blocking`](crate::Pool::submit_blocking) closure cannot be
    /// dropped while it runs: its handle resolves as `TimedOut` at the deadline
    /// (at once for a zero timeout) while the closure runs on, holding its slot
    /// until it returns.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// The default queue timeout: a job still queued this long after it was accepted
    /// is dropped without starting and resolves as
    /// [`JobError::QueueTimedOut`](crate::JobError::QueueTimedOut). Override per job
    /// with [`JobBuilder::queue_timeout`](crate::JobBuilder::queue_timeout). A
    /// duration too large to add to the clock means no timeout.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = Some(timeout);
        self
    }

    /// The pool's name, used in tracing spans and logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A pool-wide limit on how fast jobs **start** (submissions are not limited: a
    /// job waits in the queue, holding no worker, until the rate allows it). GCRA
    /// with the rate's burst; see [`Rate`]. It combines with every other limit: a
    /// job starts only when the pool's workers, the pool's rate, and its key's
    /// limits all allow it, and counts once against each.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), taskgate::BuildError> {
    /// use taskgate::Rate;
    ///
    /// // An API that allows 100 requests a second, in bursts of up to 10.
    /// let pool = taskgate::Pool::builder()
    ///     .workers(16)
    ///     .rate_limit(Rate::per_second(100).burst(10))
    ///     .build()?;
    /// assert_eq!(pool.run(async { 1 }).await, Ok(1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn rate_limit(mut self, rate: Rate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// The pool's limit on running jobs adapts to its downstream's capacity,
    /// within `[min, max]` (see [`Adaptive`] for the law, and
    /// [`JobBuilder::classify`](crate::JobBuilder::classify) for telling it about
    /// 429s). `max` defaults to, and is capped at, [`workers`](Builder::workers),
    /// which stays the hard cap; [`Stats::limit`](crate::Stats::limit) shows the
    /// limit now. For one limit per key (per host), use
    /// [`KeyLimits::adaptive`](crate::KeyLimits::adaptive).
    ///
    /// Invalid settings (a `decrease` outside `[0.5, 1)`, `min` of zero or above
    /// `max`, `initial` outside them) make [`build`](Builder::build) fail with
    /// [`LimitError::InvalidAdaptive`](crate::LimitError::InvalidAdaptive).
    pub fn adaptive(mut self, adaptive: Adaptive) -> Self {
        self.adaptive = Some(adaptive);
        self
    }

    /// Jobs start no faster than `rate`, shared with every process that uses the
    /// same name on the same Redis (feature `redis`). With
    /// [`rate_limit`](Builder::rate_limit) too, a job starts when both allow it
    /// and counts once against each. See [`SharedRate`](crate::redis::SharedRate).
    ///
    /// An invalid rate (zero count, period, burst or lease, or faster than one
    /// start per microsecond) makes [`build`](Builder::build) fail with
    /// [`BuildError::InvalidLimit`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_rate(mut self, rate: crate::redis::SharedRate) -> Self {
        self.shared_rate = Some(rate);
        self
    }

    /// At most `limit.limit()` jobs run at once across every process that uses
    /// the same name on the same Redis (feature `redis`). A job needs a worker
    /// and a shared slot, so the pool runs at most `min(workers, slots it can
    /// get)`. See [`SharedConcurrency`](crate::redis::SharedConcurrency).
    ///
    /// A limit of zero, or a TTL under 30 ms or over a day, makes [`build`](Builder::build)
    /// fail with [`BuildError::InvalidLimit`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_concurrency(mut self, limit: crate::redis::SharedConcurrency) -> Self {
        self.shared_concurrency = Some(limit);
        self
    }

    /// A remote limit on the pool, for the crate's tests.
    #[cfg(test)]
    pub(crate) fn test_remote(
        mut self,
        spec: std::sync::Arc<dyn crate::limit::RemoteSpec>,
    ) -> Self {
        self.test_remote.push(spec);
        self
    }

    /// The limits every [key](crate::Key) gets unless
    /// [`Pool::set_key_limits`](crate::Pool::set_key_limits) overrides them: a
    /// concurrency cap, a rate and a queue capacity per key. Unkeyed jobs are not
    /// subject to them. See [`KeyLimits`].
    pub fn key_limits(mut self, limits: KeyLimits) -> Self {
        self.key_limits = limits;
        self
    }

    /// The share of the pool's queue places that one [key](crate::Key) may hold
    /// when its [`KeyLimits::queue_capacity`](crate::KeyLimits::queue_capacity) is
    /// not set: a key's queue takes at most
    /// `max(1, ⌊share × (queue_capacity + workers)⌋)` jobs (default 0.5, half of
    /// the places: the pool's queue admits `queue_capacity` jobs plus one per
    /// free worker). So a key that stalls (paused, capped, waiting on its rate)
    /// cannot fill the queue and make every other key's `submit` wait: the rest
    /// stays for other keys and unkeyed jobs. `1.0` lets a key take every place.
    /// A key's own `queue_capacity` replaces the share. [`Pool::resize`](crate::Pool::resize)
    /// recomputes it for the new number of workers.
    ///
    /// A share that is not in `(0, 1]` (zero, negative, above 1, NaN) makes
    /// [`build`](Builder::build) fail with [`LimitError::InvalidQueueShare`](crate::LimitError::InvalidQueueShare)
    /// inside [`BuildError::InvalidLimit`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), taskgate::BuildError> {
    /// // 100 queue places plus 4 workers; no key may queue more than 26 jobs.
    /// let pool = taskgate::Pool::builder()
    ///     .workers(4)
    ///     .queue_capacity(100)
    ///     .key_queue_share(0.25)
    ///     .build()?;
    /// # drop(pool);
    /// # Ok(())
    /// # }
    /// ```
    pub fn key_queue_share(mut self, share: f64) -> Self {
        self.key_share = Some(share);
        self
    }

    /// How long a queued `Low` or `Normal` job waits before it ranks as `High`, so
    /// that a steady stream of urgent jobs cannot starve it (default 1 s). See
    /// [`Priority`](crate::Priority).
    pub fn priority_aging(mut self, after: Duration) -> Self {
        self.aging = Some(after);
        self
    }

    /// Builds the pool on the current Tokio runtime. Worker tasks are spawned on that
    /// runtime as jobs arrive.
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRuntime`] outside a Tokio runtime,
    /// [`BuildError::NoTimer`] on a runtime built without timers,
    /// [`BuildError::ZeroWorkers`] for `workers(0)`, and
    /// [`BuildError::InvalidLimit`] for a zero rate, period, burst, key concurrency
    /// or key queue capacity, or a key queue share outside `(0, 1]`.
    pub fn build(self) -> Result<Pool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        if !timers_enabled() {
            return Err(BuildError::NoTimer);
        }
        let workers = self.workers.unwrap_or_else(default_workers);
        if workers == 0 {
            return Err(BuildError::ZeroWorkers);
        }
        let capacity = self
            .queue_capacity
            .unwrap_or_else(|| default_capacity(workers));
        if let Some(rate) = &self.rate {
            rate.validate()?;
        }
        self.key_limits.validate(workers)?;
        if let Some(a) = &self.adaptive {
            a.validate(workers)?;
        }
        let share = self.key_share.unwrap_or(DEFAULT_KEY_SHARE);
        if !(share > 0.0 && share <= 1.0) {
            return Err(LimitError::InvalidQueueShare.into());
        }
        #[allow(unused_mut)] // Without the `redis` feature nothing is pushed.
        let mut remote: Vec<Arc<dyn crate::limit::RemoteSpec>> = Vec::new();
        #[cfg(test)]
        remote.extend(self.test_remote.iter().cloned());
        #[cfg(feature = "redis")]
        {
            // The rate first (see `KeyLimits::remote_specs`).
            if let Some(r) = &self.shared_rate {
                r.validate()?;
                remote.push(Arc::new(r.clone()));
            }
            if let Some(c) = &self.shared_concurrency {
                c.validate()?;
                remote.push(Arc::new(c.clone()));
            }
        }
        let name: Arc<str> = self.name.as_deref().unwrap_or("taskgate").into();
        Ok(Pool::from_inner(Inner::new(
            rt,
            name,
            workers,
            capacity,
            self.job_timeout,
            self.queue_timeout,
            SchedConfig {
                rate: self.rate,
                adaptive: self.adaptive,
                key_limits: self.key_limits,
                remote,
                key_share: share,
                aging: self.aging.unwrap_or(Duration::from_secs(1)),
            },
            Spawner {
                worker: crate::worker::spawn,
                reaper: crate::worker::spawn_reaper,
            },
        )))
    }
}

/// Whether the current runtime has a time driver. Tokio has no query for this, and
/// creating a timer without one panics, so the probe catches that panic. (On such
/// a runtime the panic hook prints the message once; with `panic = "abort"` the
/// probe would abort, so build those runtimes with `enable_time()`.)
fn timers_enabled() -> bool {
    std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok()
}

/// The share of the queue a key may hold by default.
const DEFAULT_KEY_SHARE: f64 = 0.5;

/// `available_parallelism() × 8`, for I/O-bound work.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_mul(8)
}

/// The default queue capacity for a pool of `workers`: see
/// [`Builder::queue_capacity`].
fn default_capacity(workers: usize) -> usize {
    workers.saturating_mul(10).max(MIN_DEFAULT_CAPACITY)
}

/// Two Tokio cooperative budgets: what workers on two threads may take before a
/// submitter sharing those threads runs again.
const MIN_DEFAULT_CAPACITY: usize = 256;
