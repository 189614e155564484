//! [`Pool`]: where a job starts its path. Submission, backpressure and lifecycle.

mod builder;
mod job_builder;
mod submit;

pub use builder::Builder;
pub use job_builder::JobBuilder;
pub(crate) use submit::JobOpts;

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::LimitError;
use crate::error::{JobError, SubmitError, TrySubmitError};
use crate::job::JobHandle;
use crate::job::{AsyncWork, BlockingWork};
use crate::limit::{Key, KeyLimits, KeyStats};
use crate::sched::Inner;
use crate::sched::Priority;
use crate::stats::{ShutdownReport, Stats};

/// A bounded pool of long-lived worker tasks that run jobs from a bounded queue.
///
/// `Pool` is a cheap handle: clone it freely, and every clone shares one pool. It is
/// `Send + Sync`.
///
/// **Dropping every `Pool` handle closes the pool, but does not cancel its jobs**:
/// jobs already accepted still run to their end, like tokio-util's `TaskTracker`
/// and unlike `JoinSet`. To cancel them, call [`abort`](Pool::abort); to wait for
/// them, call [`shutdown`](Pool::shutdown). (Dropping a [`JobHandle`] does cancel its
/// own job; [`spawn`](Pool::spawn)ed jobs have no handle and are only stopped by
/// abort.)
///
/// Jobs run on the pool's worker tasks, never in the caller's task. At most
/// `workers` jobs run at once; up to `queue_capacity` more wait in the queue, and
/// beyond that, submitters wait for space.
///
/// # Re-entrancy
///
/// A job that submits a child job to its own pool and waits for it can deadlock:
/// if every worker runs such a parent and the queue is full, no child can start.
/// Use [`try_submit`](Pool::try_submit) or [`submit_timeout`](Pool::submit_timeout)
/// for children, and run a refused child inline (the error hands it back).
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pool = taskgate::Pool::new(8);
///
/// // Wait for the result in one call. Dropping this future cancels the job.
/// let n = pool.run(async { 2 + 2 }).await.unwrap();
/// assert_eq!(n, 4);
///
/// // Or submit now and collect later.
/// let handle = pool.submit(async { "done" }).await.unwrap();
/// assert_eq!(handle.await.unwrap(), "done");
///
/// pool.shutdown().await;
/// # }
/// ```
#[derive(Clone)]
pub struct Pool {
    handle: Arc<PoolRef>,
}

/// Closes the pool when the last `Pool` clone goes.
struct PoolRef {
    inner: Arc<Inner>,
}

impl Drop for PoolRef {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl Pool {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Pool {
            handle: Arc::new(PoolRef { inner }),
        }
    }

    pub(super) fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    pub(crate) fn default_opts(&self) -> JobOpts {
        JobOpts {
            timeout: self.inner().job_timeout,
            queue_timeout: self.inner().queue_timeout,
            key: None,
            priority: Priority::Normal,
        }
    }

    /// Submits a job, waiting for queue space if the queue is full (backpressure),
    /// and returns its [`JobHandle`]. The job starts as soon as a worker is free.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Closed`] if the pool is closed, including when it closes while
    /// this call waits for space. The future comes back inside the error.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future before it completes drops the job's future with it: a
    /// job that was not yet accepted is lost (like `mpsc::Sender::send`). Once the
    /// call has returned the handle, the job is accepted.
    pub async fn submit<F>(&self, fut: F) -> Result<JobHandle<F::Output>, SubmitError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Straight to the submit path: no builder, no classifier branch.
        self.submit_work(AsyncWork::new(fut), self.default_opts(), None)
            .await
            .map_err(|e| e.map(AsyncWork::into_inner))
    }

    /// Like [`submit`](Pool::submit), but waits at most `wait` for queue space.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Timeout`] if no space freed within `wait` (counted in
    /// [`Stats::rejected`]), and [`SubmitError::Closed`] if the pool is closed. The
    /// future comes back inside the error.
    ///
    /// # Cancel safety
    ///
    /// As for [`submit`](Pool::submit): dropping the call drops the job's future.
    pub async fn submit_timeout<F>(
        &self,
        fut: F,
        wait: Duration,
    ) -> Result<JobHandle<F::Output>, SubmitError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.submit_work(AsyncWork::new(fut), self.default_opts(), Some(wait))
            .await
            .map_err(|e| e.map(AsyncWork::into_inner))
    }

    /// Submits a job if there is queue space now; never waits.
    ///
    /// # Errors
    ///
    /// [`TrySubmitError::Full`] if the queue is full (counted in
    /// [`Stats::rejected`]), and [`TrySubmitError::Closed`] if the pool is closed.
    /// The future comes back inside the error.
    pub fn try_submit<F>(&self, fut: F) -> Result<JobHandle<F::Output>, TrySubmitError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.try_submit_work(AsyncWork::new(fut), self.default_opts(), true)
            .map_err(|e| e.map(AsyncWork::into_inner))
    }

    /// Submits a job and waits for its result, in one call.
    ///
    /// # Errors
    ///
    /// A [`JobError`] saying why there is no output: [`JobError::Closed`] if the
    /// pool was closed before it accepted the job.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future cancels the job, wherever it is: waiting for queue
    /// space, queued, or running (dropped at its next `.await`).
    pub async fn run<F>(&self, fut: F) -> Result<F::Output, JobError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.submit(fut).await {
            Ok(handle) => handle.await,
            Err(_) => Err(JobError::Closed),
        }
    }

    /// Submits a job to run detached, fire-and-forget: the bounded replacement for
    /// `tokio::spawn` in a loop. Waits for queue space, so a loop that spawns can go
    /// no faster than the pool drains. The job's output is dropped; a panic is
    /// counted and logged.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Closed`] if the pool is closed. The future comes back inside.
    ///
    /// # Cancel safety
    ///
    /// Dropping the call before it returns drops the job's future, un-run. Once it
    /// has returned `Ok`, the job is accepted and only [`abort`](Pool::abort) (or a
    /// shutdown deadline) stops it.
    pub async fn spawn<F>(&self, fut: F) -> Result<(), SubmitError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_work(AsyncWork::new(fut), self.default_opts())
            .await
            .map_err(|e| e.map(AsyncWork::into_inner))
    }

    /// Runs a blocking or CPU-bound closure on Tokio's blocking threads while it
    /// holds one of this pool's worker slots, so CPU work and async work share one
    /// limit. Waits for queue space like [`submit`](Pool::submit).
    ///
    /// The worker that takes the closure moves to a blocking thread and runs it
    /// there, then takes the blocking jobs queued behind it on the same thread, one
    /// after another; it goes back to a task when it takes an async job or finds
    /// none. So a burst of closures costs one hand-off per worker, not one per job,
    /// and at most `workers` threads run this pool's closures at once. The closure
    /// runs inside the runtime's context (`Handle::current()` works), as with
    /// `spawn_blocking`.
    ///
    /// A running closure cannot be interrupted. If the job times out, is cancelled,
    /// or the pool is aborted, its handle resolves at once, but **its slot stays
    /// taken until the closure returns**, so the limit still holds; the job counts
    /// as running in [`stats`](Pool::stats) until then, and its outcome (timed out,
    /// cancelled) is counted when it returns. A closure that never returns holds
    /// its slot forever, and [`shutdown`](Pool::shutdown) waits for it.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Closed`] if the pool is closed. The closure comes back inside.
    ///
    /// # Cancel safety
    ///
    /// As for [`submit`](Pool::submit): dropping the call drops the closure un-run.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let pool = taskgate::Pool::new(2);
    /// let sum = pool.submit_blocking(|| (1..=100u64).sum::<u64>()).await.unwrap();
    /// assert_eq!(sum.await, Ok(5050));
    /// # }
    /// ```
    pub async fn submit_blocking<C, T>(&self, f: C) -> Result<JobHandle<T>, SubmitError<C>>
    where
        C: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_work(BlockingWork::new(f), self.default_opts(), None)
            .await
            .map_err(|e| e.map(|w| w.into_inner().expect("an unstarted job keeps its closure")))
    }

    /// Closes the pool: no job is accepted after this returns, and submitters
    /// already waiting for space wake with `Closed`. Jobs already accepted still
    /// run. Calling it again does nothing.
    pub fn close(&self) {
        self.inner().close();
    }

    /// Whether the pool is closed.
    pub fn is_closed(&self) -> bool {
        self.inner().is_closed()
    }

    /// Closes the pool, then waits until every accepted job has ended and every
    /// worker task has exited.
    ///
    /// A pool paused with [`resize(0)`](Pool::resize) keeps its queued jobs, so
    /// this waits until it is resized; queued jobs held by a [pause](Pool::pause_for)
    /// or a rate are waited for too. Use
    /// [`shutdown_timeout`](Pool::shutdown_timeout) or [`abort`](Pool::abort) to
    /// bound the wait.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the pool is closed when the call is first polled, and dropping
    /// the call only stops the waiting.
    pub async fn shutdown(&self) {
        self.inner().close();
        self.wait_drained().await;
    }

    /// Closes the pool, lets accepted jobs run for up to `grace`, then cancels
    /// whatever is left (as [`abort`](Pool::abort)) and waits for the workers to
    /// exit. Reports how many jobs ended on their own during the drain and how many
    /// were cancelled.
    ///
    /// Blocking closures cannot be interrupted, so the wait after the deadline lasts
    /// until running closures return.
    ///
    /// # Cancel safety
    ///
    /// Dropping the call before the deadline leaves the pool closed but does not
    /// cancel anything; after the deadline, the cancellation has already happened.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let pool = taskgate::Pool::new(2);
    /// pool.spawn(async {}).await.unwrap();
    /// pool.spawn(std::future::pending::<()>()).await.unwrap();
    /// let report = pool.shutdown_timeout(Duration::from_secs(5)).await;
    /// assert_eq!((report.completed, report.cancelled), (1, 1));
    /// # }
    /// ```
    pub async fn shutdown_timeout(&self, grace: Duration) -> ShutdownReport {
        let inner = self.inner();
        let ended_before = inner.stats().ended();
        let aborted_before = inner.aborted_count();
        inner.close();
        let drained = match Instant::now().checked_add(grace) {
            Some(deadline) => tokio::time::timeout_at(deadline, self.wait_drained())
                .await
                .is_ok(),
            None => {
                self.wait_drained().await;
                true
            }
        };
        if !drained {
            inner.abort();
            self.wait_drained().await;
        }
        let ended = inner.stats().ended().saturating_sub(ended_before);
        let cancelled = inner.aborted_count().saturating_sub(aborted_before);
        ShutdownReport {
            completed: ended.saturating_sub(cancelled),
            cancelled,
        }
    }

    /// Closes the pool and cancels every queued and running job now. Queued jobs
    /// never start; running jobs are dropped at their next `.await` (a running
    /// blocking closure finishes, holding its slot). Every handle resolves as
    /// [`JobError::Cancelled`]. Returns without waiting; await
    /// [`shutdown`](Pool::shutdown) afterwards to wait for the workers to exit.
    pub fn abort(&self) {
        self.inner().abort();
    }

    /// Sets the number of workers. Growing starts queued jobs at once. Shrinking
    /// never interrupts a running job: no new job starts until fewer than `workers`
    /// are running, and surplus workers exit as their jobs end.
    ///
    /// `resize(0)` pauses the pool: jobs wait in the queue (and may still be
    /// submitted up to its capacity) and none starts until the pool is resized
    /// above zero.
    pub fn resize(&self, workers: usize) {
        self.inner().resize(workers);
    }

    /// Starts no job until `d` has passed; jobs already running are untouched, and
    /// submissions are still accepted while the queue has room. This is how to
    /// honour a `429 Too Many Requests` with a `Retry-After` from a downstream that
    /// every job calls.
    ///
    /// Pauses add up to the latest end: a shorter pause never cuts a longer one
    /// short. A zero duration does nothing. A duration too long for the clock pauses
    /// for about thirty years. While paused, queued jobs keep their queue timeouts,
    /// and dropping or cancelling a handle still takes its job out at once;
    /// [`shutdown`](Pool::shutdown) waits for the pause to end (use
    /// [`shutdown_timeout`](Pool::shutdown_timeout) or [`abort`](Pool::abort) to
    /// cut it short).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let pool = taskgate::Pool::new(4);
    /// let t0 = Instant::now();
    /// // The downstream said "Retry-After: 2".
    /// pool.pause_for(Duration::from_secs(2));
    /// let started = pool.run(async { Instant::now() }).await.unwrap();
    /// assert!(started >= t0 + Duration::from_secs(2));
    /// # }
    /// ```
    pub fn pause_for(&self, d: Duration) {
        self.inner().pause(None, d);
    }

    /// Starts no job of `key` until `d` has passed; the other keys carry on, and
    /// the key's running jobs are untouched. As with [`pause_for`](Pool::pause_for),
    /// pauses add up to the latest end, a zero duration does nothing, and queue
    /// timeouts and cancels still apply to the key's queued jobs. The key's
    /// queued jobs hold no worker while it is paused.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let pool = taskgate::Pool::new(4);
    /// pool.pause_key_for("api.example.com", Duration::from_secs(30));
    /// // Other hosts are not held up.
    /// let other = pool.job(async { "fine" }).key("cdn.example.com").run().await;
    /// assert_eq!(other, Ok("fine"));
    /// let paused = pool.key_stats(&"api.example.com".into()).unwrap().paused_until;
    /// assert!(paused.is_some());
    /// # }
    /// ```
    pub fn pause_key_for(&self, key: impl Into<Key>, d: Duration) {
        self.inner().pause(Some(&key.into()), d);
    }

    /// Until when the pool is paused by [`pause_for`](Pool::pause_for), if it is.
    pub fn paused_until(&self) -> Option<Instant> {
        self.inner().paused_until()
    }

    /// Overrides the [default key limits](Builder::key_limits) for `key`, now and
    /// until changed. A key that has jobs queued or running takes the new limits at
    /// once: a raised cap starts waiting jobs, and a lowered one stops new starts
    /// (running jobs are never interrupted). The key's rate keeps what it has
    /// already spent.
    ///
    /// A shared limit (feature `redis`) equal to the one in force keeps its
    /// limiter and what it holds. A different one replaces it: the shared slots
    /// of the key's running jobs go back to Redis at once (those jobs then count
    /// against the new limit in this process only, so the fleet may run more
    /// than the limit until they end), and tokens leased and not started are
    /// lost.
    ///
    /// Overrides are kept (a few dozen bytes each) until
    /// [`clear_key_limits`](Pool::clear_key_limits), even while the key has no jobs.
    ///
    /// # Errors
    ///
    /// [`LimitError`] if a limit is zero; nothing is changed.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), taskgate::LimitError> {
    /// use taskgate::{KeyLimits, Rate};
    ///
    /// let pool = taskgate::Pool::new(32);
    /// // A tenant on the free plan: one call at a time, 2 per second.
    /// pool.set_key_limits(
    ///     "tenant-42",
    ///     KeyLimits::default().concurrency(1).rate(Rate::per_second(2)),
    /// )?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_key_limits(&self, key: impl Into<Key>, limits: KeyLimits) -> Result<(), LimitError> {
        self.inner().set_key_limits(key.into(), Some(limits))
    }

    /// Removes the override set with [`set_key_limits`](Pool::set_key_limits): the
    /// key goes back to the default key limits.
    pub fn clear_key_limits(&self, key: impl Into<Key>) {
        // Nothing to check: the key goes back to the validated defaults.
        let _ = self.inner().set_key_limits(key.into(), None);
    }

    /// A snapshot of `key`'s state and counters, or `None` if the key has no state:
    /// nothing queued or running, no pause and no rate debt. See [`KeyStats`].
    pub fn key_stats(&self, key: &Key) -> Option<KeyStats> {
        self.inner().key_stats(key)
    }

    /// A snapshot of the pool's state and counters.
    pub fn stats(&self) -> Stats {
        self.inner().stats()
    }

    /// The pool's name, as set by [`Builder::name`].
    pub fn name(&self) -> &str {
        &self.inner().name
    }

    /// Waits until nothing is queued and no worker is left, then until every task
    /// the pool spawned has dropped its future.
    async fn wait_drained(&self) {
        let inner = self.inner();
        loop {
            let mut drained = pin!(inner.drained());
            drained.as_mut().enable();
            if inner.is_drained() {
                break;
            }
            // Woken when a worker exits, the queue shrinks, or the pool is resized
            // (a paused pool keeps its queue until then) or aborted.
            drained.await;
        }
        inner.wait_workers().await;
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats();
        f.debug_struct("Pool")
            .field("name", &self.name())
            .field("workers", &s.workers)
            .field("busy", &s.busy)
            .field("queued", &s.queued)
            .field("closed", &self.is_closed())
            .finish()
    }
}
