//! [`Builder`]: the settings a pool is made with.

use std::sync::Arc;
use std::time::Duration;

use crate::error::BuildError;
use crate::pool::Pool;
use crate::queue::Inner;

/// Configures and builds a [`Pool`].
///
/// | setting | default |
/// |---|---|
/// | [`workers`](Builder::workers) | `available_parallelism() × 8` |
/// | [`queue_capacity`](Builder::queue_capacity) | `workers × 10` |
/// | [`job_timeout`](Builder::job_timeout) | none |
/// | [`queue_timeout`](Builder::queue_timeout) | none |
/// | [`name`](Builder::name) | `"taskgate"` |
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
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// The default run timeout: a job running longer is dropped and resolves as
    /// [`JobError::TimedOut`](crate::JobError::TimedOut). A zero timeout gives a job
    /// one poll (a job that is ready at once still succeeds, as with
    /// `tokio::time::timeout`). Override per job with
    /// [`JobBuilder::timeout`](crate::JobBuilder::timeout).
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

    /// Builds the pool on the current Tokio runtime. Worker tasks are spawned on that
    /// runtime as jobs arrive.
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRuntime`] outside a Tokio runtime,
    /// [`BuildError::NoTimer`] on a runtime built without timers, and
    /// [`BuildError::ZeroWorkers`] for `workers(0)`.
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
            .unwrap_or_else(|| workers.saturating_mul(10));
        let name: Arc<str> = self.name.as_deref().unwrap_or("taskgate").into();
        Ok(Pool::from_inner(Arc::new(Inner::new(
            rt,
            name,
            workers,
            capacity,
            self.job_timeout,
            self.queue_timeout,
        ))))
    }
}

/// Whether the current runtime has a time driver. Tokio has no query for this, and
/// creating a timer without one panics, so the probe catches that panic. (On such
/// a runtime the panic hook prints the message once; with `panic = "abort"` the
/// probe would abort, so build those runtimes with `enable_time()`.)
fn timers_enabled() -> bool {
    std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok()
}

/// `available_parallelism() × 8`, for I/O-bound work.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_mul(8)
}
