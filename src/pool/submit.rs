//! The submit path, from a `Pool` method to the queue: the job's two allocations
//! (envelope and result cell), the push, waiting for a place while the queue is
//! full, and the handle that comes back.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{SubmitError, TrySubmitError};
use crate::job::{JobHandle, Pos, Shared, Task, Work};
use crate::limit::Key;
use crate::sched::{Inner, Place, Priority, Refused, Ticket, Waiting};

use super::Pool;

/// Per-job options, from the pool's defaults and the [`JobBuilder`].
#[derive(Clone)]
pub(crate) struct JobOpts {
    pub(crate) timeout: Option<Duration>,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) key: Option<Key>,
    pub(crate) priority: Priority,
}

impl JobOpts {
    fn place(&self) -> Place<'_> {
        Place {
            key: self.key.as_ref(),
            priority: self.priority,
        }
    }
}

/// Gives up a waiting submitter's registration however its call ends; a place
/// granted to it goes to the next waiter.
struct WaitGuard<'a> {
    inner: &'a Inner,
    ticket: Option<Ticket>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            self.inner.leave(t);
        }
    }
}

impl Pool {
    fn handle<T>(&self, shared: Arc<Shared<T>>, pos: Pos) -> JobHandle<T> {
        JobHandle::new(shared, self.inner().clone(), pos)
    }

    /// Submits `work` with a handle, waiting for space (at most `wait`, if given).
    ///
    /// The output is a separate parameter `T`, not `W::Output`: a projection held
    /// across an `.await` makes rustc demand `'static` of erased lifetimes, and
    /// callers inside `tokio::spawn` with a `&'static str` output would fail to
    /// compile ("implementation of `Send` is not general enough").
    pub(crate) async fn submit_work<W, T>(
        &self,
        work: W,
        opts: JobOpts,
        wait: Option<Duration>,
    ) -> Result<JobHandle<T>, SubmitError<W>>
    where
        W: Work<Output = T>,
        T: Send + 'static,
    {
        let now = Instant::now();
        let (task, shared) = with_handle(work, &opts, now);
        let pos = self.enqueue(task, &opts, wait, now).await?;
        Ok(self.handle(shared, pos))
    }

    /// Submits `work` with a handle if there is space now.
    ///
    /// `count` says whether a full queue counts as a rejection: `false` for internal
    /// probes that go on to wait for space.
    pub(crate) fn try_submit_work<W, T>(
        &self,
        work: W,
        opts: JobOpts,
        count: bool,
    ) -> Result<JobHandle<T>, TrySubmitError<W>>
    where
        W: Work<Output = T>,
        T: Send + 'static,
    {
        let now = Instant::now();
        let (task, shared) = with_handle(work, &opts, now);
        let deadline = opts.queue_timeout.and_then(|d| now.checked_add(d));
        let waiting = if count { Waiting::No } else { Waiting::Probe };
        match self
            .inner()
            .push(task, deadline, waiting, &opts.place(), now)
        {
            Ok(pos) => Ok(self.handle(shared, pos)),
            Err((Refused::Full, t)) => {
                if count {
                    tracing::debug!(pool = %self.name(), "taskgate: try_submit refused: queue full");
                }
                Err(TrySubmitError::Full((*t).into_work()))
            }
            Err((Refused::Closed, t)) => Err(TrySubmitError::Closed((*t).into_work())),
        }
    }

    /// Submits `fut` if there is space now, without counting a refusal as a
    /// rejection: for callers that go on to wait for space (the stream adapters).
    pub(crate) fn probe_submit<F>(&self, fut: F) -> Result<JobHandle<F::Output>, TrySubmitError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.try_submit_work(crate::job::AsyncWork::new(fut), self.default_opts(), false)
            .map_err(|e| e.map(crate::job::AsyncWork::into_inner))
    }

    /// Submits `work` detached (no handle), waiting for space.
    pub(crate) async fn spawn_work<W, T>(
        &self,
        work: W,
        opts: JobOpts,
    ) -> Result<(), SubmitError<W>>
    where
        W: Work<Output = T>,
        T: Send + 'static,
    {
        let now = Instant::now();
        let task: Box<Task<W, T>> = Box::new(Task::new(work, None, opts.timeout, now));
        self.enqueue(task, &opts, None, now).await?;
        Ok(())
    }

    /// Pushes `task`, waiting for space while the queue is full.
    async fn enqueue<W, T>(
        &self,
        task: Box<Task<W, T>>,
        opts: &JobOpts,
        wait: Option<Duration>,
        now: Instant,
    ) -> Result<Pos, SubmitError<W>>
    where
        W: Work<Output = T>,
        T: Send + 'static,
    {
        let inner = self.inner();
        let queue_timeout = opts.queue_timeout;
        let place = opts.place();
        let mut guard = WaitGuard {
            inner,
            ticket: None,
        };
        let wait_deadline = wait.and_then(|w| now.checked_add(w));
        let mut task = Some(task);
        let mut retry = false;
        // Each poll is one push under the lock. A `Full` registers this call as a
        // waiter with its waker (under the lock, so no place that frees after it
        // is missed); a place that frees is then granted to it, or to an older
        // waiter, and it is woken to use it. Polled again before its grant, the
        // push refuses it at once and it keeps its turn.
        let push = std::future::poll_fn(|cx| {
            let mut at = now;
            let t = task.as_mut().expect("polled after it finished");
            if retry {
                // Queue time counts from acceptance, not from the start of the wait.
                at = Instant::now();
                t.set_submitted(at);
            }
            retry = true;
            let deadline = queue_timeout.and_then(|d| at.checked_add(d));
            let t = task.take().expect("checked above");
            let waiting = Waiting::Yes(&mut guard.ticket, cx.waker());
            match inner.push(t, deadline, waiting, &place, at) {
                Ok(pos) => Poll::Ready(Ok(pos)),
                Err((Refused::Closed, t)) => {
                    Poll::Ready(Err(SubmitError::Closed((*t).into_work())))
                }
                Err((Refused::Full, t)) => {
                    task = Some(t);
                    Poll::Pending
                }
            }
        });
        let Some(at) = wait_deadline else {
            // No wait limit, or one too long to add to the clock.
            return push.await;
        };
        // A grant that is there when the wait times out wins (the push is polled
        // first); one that comes after goes to the next waiter when the guard
        // drops.
        match tokio::time::timeout_at(at, push).await {
            Ok(r) => r,
            Err(_) => {
                inner.count_rejected();
                tracing::debug!(pool = %self.name(), "taskgate: submit timed out waiting for queue space");
                let t = task.take().expect("a timed-out push holds its task");
                Err(SubmitError::Timeout((*t).into_work()))
            }
        }
    }
}

/// A job's envelope and the result cell its handle will share: the two
/// allocations of a job with a handle.
fn with_handle<W, T>(work: W, opts: &JobOpts, now: Instant) -> (Box<Task<W, T>>, Arc<Shared<T>>) {
    let shared = Arc::new(Shared::new());
    let task = Box::new(Task::new(work, Some(shared.clone()), opts.timeout, now));
    (task, shared)
}
