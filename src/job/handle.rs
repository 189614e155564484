//! The caller's end of a job: [`JobHandle`], a future over the job's result cell
//! that cancels the job when dropped, and [`JobId`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::AcqRel;
use std::task::{Context, Poll, ready};

use crate::error::JobError;
use crate::job::cell::{CANCELLED, COMPLETE, HANDLE_GONE, INLINE, STARTED};
use crate::job::{Early, Shared};

/// Where a job was queued (its id, lane and priority), kept by its handle so that
/// a cancel finds it at once. The scheduler fills it in when it accepts the job.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pos {
    pub(crate) id: u64,
    pub(crate) lane: u32,
    pub(crate) prio: u8,
}

/// What a handle needs from its pool to cancel its job: the seam that keeps the
/// job layer below the scheduler. Implemented by the scheduler's `Inner`; the
/// handle holds it as `Arc<dyn Canceller>`, and calls it only on a cancel.
pub(crate) trait Canceller: Send + Sync {
    /// Takes the queued job at `pos` out of the queue, so that its place frees at
    /// once, and resolves it as cancelled. Does nothing if a worker (or the queue
    /// timeout) got it first: that side sees the cancel flag instead.
    fn cancel_queued(&self, pos: Pos);

    /// Wakes the worker running job `id`, so that it sees the job's cancel flag.
    fn wake_running(&self, id: u64);
}

/// A job's identity, unique within its pool. Ids grow in submission order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct JobId(pub(crate) u64);

impl JobId {
    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A handle to one accepted job: a future that resolves to its result.
///
/// **Dropping a `JobHandle` cancels its job**, wherever it is: a queued job never
/// starts and its queue slot is freed at once; a running job is dropped at its next
/// `.await`, before its worker takes another job. Either way the job counts as
/// `cancelled` in [`Stats`](crate::Stats). To let the job run on without waiting for
/// it, call [`detach`](JobHandle::detach).
///
/// Awaiting the handle gives `Ok(output)`, or a [`JobError`] saying why there is no
/// output: `TimedOut` once the job runs past its run timeout (its future is dropped
/// at that moment), `QueueTimedOut` if it waited past its queue timeout without
/// starting. The handle resolves exactly once for every accepted job, including when
/// the pool is closed, aborted, or its runtime shuts down.
///
/// # Cancel safety
///
/// Awaiting a handle is cancel safe: polling it and then dropping the `.await` loses
/// nothing while you keep the handle (`&mut handle` can be used in `select!`). Dropping
/// the handle itself cancels the job, as above.
///
/// # Panics
///
/// Polling the handle again after it has returned `Ready` panics, like any future.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pool = taskgate::Pool::new(4);
/// let handle = pool.submit(async { 6 * 7 }).await.unwrap();
/// println!("job {} accepted", handle.id());
/// assert_eq!(handle.await, Ok(42));
/// # }
/// ```
#[must_use = "dropping a JobHandle cancels its job; call .detach() to let it run"]
pub struct JobHandle<T> {
    shared: Arc<Shared<T>>,
    /// The pool, to take a queued job out of the queue on cancel. `None` once the
    /// handle has nothing left to do on drop.
    inner: Option<Arc<dyn Canceller>>,
    /// Where the job was queued: its id, lane and priority.
    pos: Pos,
}

impl<T> JobHandle<T> {
    pub(crate) fn new(shared: Arc<Shared<T>>, inner: Arc<dyn Canceller>, pos: Pos) -> Self {
        JobHandle {
            shared,
            inner: Some(inner),
            pos,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        JobId(self.pos.id)
    }

    /// Whether the job has ended: its result (or error) is ready to collect.
    pub fn is_finished(&self) -> bool {
        self.shared.is_complete()
    }

    /// Cancels the job. A queued job is taken out of the queue and never starts; a
    /// running job is dropped at its next `.await`. Awaiting the handle afterwards
    /// gives `Err(JobError::Cancelled)`, unless the job had already ended, in which
    /// case its real result is kept. Calling it more than once does nothing more.
    ///
    /// A [`submit_blocking`](crate::Pool::submit_blocking) closure that is already
    /// running cannot be interrupted: the handle resolves at once, but the closure's
    /// slot stays taken until it returns.
    pub fn cancel(&self) {
        self.request_cancel(false);
    }

    /// Lets the job run to its end without a handle; its result is dropped. Unlike
    /// dropping the handle, this does not cancel the job.
    pub fn detach(mut self) {
        self.shared.state.fetch_or(HANDLE_GONE, AcqRel);
        self.inner = None;
    }

    fn request_cancel(&self, gone: bool) {
        let bits = if gone {
            CANCELLED | HANDLE_GONE
        } else {
            CANCELLED
        };
        let prev = self.shared.state.fetch_or(bits, AcqRel);
        if prev & (COMPLETE | CANCELLED) != 0 {
            return;
        }
        if prev & INLINE != 0 {
            // A closure running on a pool thread cannot see the flag until it
            // returns: resolve the handle from here. (A dropped handle has nobody
            // to tell; the closure's value is dropped when it returns.)
            if !gone {
                self.shared.resolve_early(Early::Cancelled);
            }
            return;
        }
        if prev & STARTED != 0 {
            // Running: wake its worker, which checks the flag at its next poll.
            if let Some(inner) = &self.inner {
                inner.wake_running(self.pos.id);
            }
            return;
        }
        // Queued: take it out now so its slot frees at once. If a worker (or the
        // queue-timeout reaper) got it first, that side sees CANCELLED instead.
        if let Some(inner) = &self.inner {
            inner.cancel_queued(self.pos);
        }
    }
}

impl<T> Future for JobHandle<T> {
    type Output = Result<T, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(
            self.inner.is_some(),
            "JobHandle polled after it returned its result"
        );
        let r = ready!(self.shared.poll_result(cx.waker()));
        self.inner = None;
        Poll::Ready(r)
    }
}

impl<T> Drop for JobHandle<T> {
    fn drop(&mut self) {
        if self.inner.is_none() || self.shared.is_complete() {
            return;
        }
        self.request_cancel(true);
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.id())
            .field("finished", &self.is_finished())
            .finish()
    }
}
