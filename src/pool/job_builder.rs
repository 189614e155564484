//! [`JobBuilder`]: per-job options, then a terminal call that submits the job.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::error::{JobError, SubmitError, TrySubmitError};
use crate::job::JobHandle;
use crate::job::{AsyncWork, Classified, Classifier};
use crate::limit::Key;
use crate::limit::Outcome;
use crate::pool::{JobOpts, Pool};
use crate::sched::Priority;

impl Pool {
    /// Per-job options: a run timeout or queue timeout that overrides the pool's,
    /// then one of `.submit()`, `.try_submit()`, `.run()` or `.spawn()`.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use taskgate::JobError;
    ///
    /// let pool = taskgate::Pool::new(4);
    /// let slow = pool
    ///     .job(tokio::time::sleep(Duration::from_secs(60)))
    ///     .timeout(Duration::from_secs(1))
    ///     .run()
    ///     .await;
    /// assert_eq!(slow, Err(JobError::TimedOut));
    /// # }
    /// ```
    pub fn job<F>(&self, fut: F) -> JobBuilder<'_, F>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        JobBuilder::new(self, fut)
    }
}

/// Per-job options for one job, from [`Pool::job`].
///
/// The options start at the pool's defaults. Finish with one of the terminal
/// methods, which behave (and fail) exactly like the [`Pool`] methods of the same
/// name: [`submit`](JobBuilder::submit), [`submit_timeout`](JobBuilder::submit_timeout),
/// [`try_submit`](JobBuilder::try_submit), [`run`](JobBuilder::run) and
/// [`spawn`](JobBuilder::spawn). Dropping the builder drops the job's future un-run.
///
/// A full queue means the pool's queue, or the job's [key's](JobBuilder::key) queue
/// if it has a [`queue_capacity`](crate::KeyLimits::queue_capacity).
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
///
/// let pool = taskgate::Pool::new(4);
/// let handle = pool
///     .job(async { "fetched" })
///     .timeout(Duration::from_secs(5))
///     .queue_timeout(Duration::from_millis(500))
///     .submit()
///     .await
///     .unwrap();
/// assert_eq!(handle.await.unwrap(), "fetched");
/// # }
/// ```
#[must_use = "a JobBuilder does nothing until .submit(), .try_submit(), .run() or .spawn()"]
pub struct JobBuilder<'a, F> {
    pool: &'a Pool,
    fut: F,
    opts: JobOpts,
    /// Boxed only when set: an unclassified job carries `None` and runs as plain
    /// `AsyncWork`.
    classify: Option<Classifier>,
}

impl<'a, F> JobBuilder<'a, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    pub(crate) fn new(pool: &'a Pool, fut: F) -> Self {
        JobBuilder {
            pool,
            fut,
            opts: pool.default_opts(),
            classify: None,
        }
    }

    /// The run timeout for this job, overriding the pool's
    /// [`job_timeout`](crate::Builder::job_timeout). A job running longer is dropped
    /// and resolves as [`JobError::TimedOut`]. A zero timeout gives the job one poll.
    /// A blocking closure ([`Pool::submit_blocking`]) is not dropped: its handle
    /// resolves as `TimedOut` at the deadline (at once for zero) while the closure
    /// runs on, holding its slot until it returns.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.opts.timeout = Some(timeout);
        self
    }

    /// Removes the run timeout for this job, even if the pool has one.
    pub fn no_timeout(mut self) -> Self {
        self.opts.timeout = None;
        self
    }

    /// The queue timeout for this job, overriding the pool's
    /// [`queue_timeout`](crate::Builder::queue_timeout). A job still queued this long
    /// after it was accepted never starts and resolves as [`JobError::QueueTimedOut`].
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.opts.queue_timeout = Some(timeout);
        self
    }

    /// Removes the queue timeout for this job, even if the pool has one.
    pub fn no_queue_timeout(mut self) -> Self {
        self.opts.queue_timeout = None;
        self
    }

    /// Tags the job with `key`, so that the [key limits](crate::KeyLimits) apply to
    /// it. Jobs of a key wait in their own lane: a key at its limits holds no
    /// worker and does not hold up other keys, and keys with startable jobs take
    /// turns.
    pub fn key(mut self, key: impl Into<Key>) -> Self {
        self.opts.key = Some(key.into());
        self
    }

    /// The job's priority (default [`Priority::Normal`]). Among jobs that may start
    /// now, a higher priority starts first; a job that has waited longer than the
    /// pool's [`priority_aging`](crate::Builder::priority_aging) ranks as `High`.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.opts.priority = priority;
        self
    }

    /// Tells the pool's [adaptive](crate::Builder::adaptive) limit (and the key's,
    /// with [`KeyLimits::adaptive`](crate::KeyLimits::adaptive)) what the job's
    /// output says about its downstream: for an HTTP call, a 429 or 503 is an
    /// [`Outcome::Overload`] with its `Retry-After`, a 4xx of the caller's own
    /// making is [`Outcome::Ignore`], the rest [`Outcome::Success`]. `f` runs once,
    /// on the worker, when the job returns, before its handle gets the output; it
    /// is not called for a job that panics, times out (an overload) or is
    /// cancelled (ignored). A panic in `f` counts as `Ignore`. Without an adaptive
    /// limit the outcome is unused. Unclassified jobs cost nothing extra; a
    /// classified one carries its boxed classifier.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use taskgate::{Adaptive, Outcome, Pool};
    ///
    /// struct Response { status: u16, retry_after: Option<Duration> }
    ///
    /// let pool = Pool::builder().workers(8).adaptive(Adaptive::aimd()).build().unwrap();
    /// let response = pool
    ///     .job(async { Response { status: 200, retry_after: None } })
    ///     .classify(|r: &Response| match r.status {
    ///         429 | 503 => Outcome::Overload { retry_after: r.retry_after },
    ///         400..=499 => Outcome::Ignore,
    ///         _ => Outcome::Success,
    ///     })
    ///     .run()
    ///     .await
    ///     .unwrap();
    /// assert_eq!(response.status, 200);
    /// # }
    /// ```
    pub fn classify<C>(mut self, f: C) -> Self
    where
        C: FnOnce(&F::Output) -> Outcome + Send + 'static,
    {
        self.classify = Some(Box::new(move |output: &dyn Any| {
            output
                .downcast_ref::<F::Output>()
                .map_or(Outcome::Ignore, f)
        }));
        self
    }

    /// Submits the job, waiting for queue space. See [`Pool::submit`].
    ///
    /// # Errors
    ///
    /// [`SubmitError::Closed`] if the pool is closed; the future comes back inside.
    ///
    /// # Cancel safety
    ///
    /// Dropping the call before it returns drops the job's future un-run.
    pub async fn submit(self) -> Result<JobHandle<F::Output>, SubmitError<F>> {
        self.submit_within(None).await
    }

    async fn submit_within(
        self,
        wait: Option<Duration>,
    ) -> Result<JobHandle<F::Output>, SubmitError<F>> {
        let work = AsyncWork::new(self.fut);
        match self.classify {
            None => self
                .pool
                .submit_work(work, self.opts, wait)
                .await
                .map_err(|e| e.map(AsyncWork::into_inner)),
            Some(c) => self
                .pool
                .submit_work(Classified::new(work, c), self.opts, wait)
                .await
                .map_err(|e| e.map(|w| w.into_inner().into_inner())),
        }
    }

    /// Submits the job, waiting at most `wait` for queue space. See
    /// [`Pool::submit_timeout`].
    ///
    /// # Errors
    ///
    /// [`SubmitError::Timeout`] or [`SubmitError::Closed`]; the future comes back
    /// inside.
    ///
    /// # Cancel safety
    ///
    /// Dropping the call before it returns drops the job's future un-run.
    pub async fn submit_timeout(
        self,
        wait: Duration,
    ) -> Result<JobHandle<F::Output>, SubmitError<F>> {
        self.submit_within(Some(wait)).await
    }

    /// Submits the job if there is queue space now. See [`Pool::try_submit`].
    ///
    /// # Errors
    ///
    /// [`TrySubmitError::Full`] or [`TrySubmitError::Closed`]; the future comes back
    /// inside.
    pub fn try_submit(self) -> Result<JobHandle<F::Output>, TrySubmitError<F>> {
        let work = AsyncWork::new(self.fut);
        match self.classify {
            None => self
                .pool
                .try_submit_work(work, self.opts, true)
                .map_err(|e| e.map(AsyncWork::into_inner)),
            Some(c) => self
                .pool
                .try_submit_work(Classified::new(work, c), self.opts, true)
                .map_err(|e| e.map(|w| w.into_inner().into_inner())),
        }
    }

    /// Submits the job and waits for its result. See [`Pool::run`].
    ///
    /// # Errors
    ///
    /// A [`JobError`]; [`JobError::Closed`] if the pool was closed before it
    /// accepted the job.
    ///
    /// # Cancel safety
    ///
    /// Dropping the call cancels the job, wherever it is.
    pub async fn run(self) -> Result<F::Output, JobError> {
        match self.submit().await {
            Ok(handle) => handle.await,
            Err(_) => Err(JobError::Closed),
        }
    }

    /// Submits the job to run detached. See [`Pool::spawn`].
    ///
    /// # Errors
    ///
    /// [`SubmitError::Closed`] if the pool is closed; the future comes back inside.
    ///
    /// # Cancel safety
    ///
    /// Dropping the call before it returns drops the job's future un-run.
    pub async fn spawn(self) -> Result<(), SubmitError<F>> {
        let work = AsyncWork::new(self.fut);
        match self.classify {
            None => self
                .pool
                .spawn_work(work, self.opts)
                .await
                .map_err(|e| e.map(AsyncWork::into_inner)),
            Some(c) => self
                .pool
                .spawn_work(Classified::new(work, c), self.opts)
                .await
                .map_err(|e| e.map(|w| w.into_inner().into_inner())),
        }
    }
}

impl<F> fmt::Debug for JobBuilder<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobBuilder")
            .field("pool", &self.pool.name())
            .field("timeout", &self.opts.timeout)
            .field("queue_timeout", &self.opts.queue_timeout)
            .field("key", &self.opts.key)
            .field("priority", &self.opts.priority)
            .field("classified", &self.classify.is_some())
            .finish_non_exhaustive()
    }
}
