//! The end of a job's path: the shared result cell and [`JobHandle`].
//!
//! One allocation per job, [`Shared`], does the work of a oneshot channel plus a
//! cancellation token: a state word, and the result slot with the caller's waker.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use crate::error::JobError;
use crate::job::drop_quietly;
use crate::sched::Inner;
use crate::sched::Pos;

/// A worker has claimed the job and is running it (or about to).
const STARTED: u8 = 1;
/// The outcome is decided; the result (if anyone wants it) is in the slot.
const COMPLETE: u8 = 2;
/// The caller asked for the job to be cancelled.
const CANCELLED: u8 = 4;
/// The handle is gone (dropped or detached); nobody will read the result.
const HANDLE_GONE: u8 = 8;
/// The job is a blocking closure running on one of the pool's threads, where
/// nothing can interrupt it: a cancel resolves the handle from the caller's side.
const INLINE: u8 = 16;
/// Resolved before the closure returned, by a cancel from the handle.
const EARLY_CANCEL: u8 = 32;
/// Resolved before the closure returned, by its run timeout.
const EARLY_TIMEOUT: u8 = 64;
/// Resolved before the closure returned, by the pool's abort.
const EARLY_ABORT: u8 = 128;

/// Why the handle of a closure running inline was resolved before it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Early {
    Cancelled,
    TimedOut,
    Aborted,
}

impl Early {
    fn bit(self) -> u8 {
        match self {
            Early::Cancelled => EARLY_CANCEL,
            Early::TimedOut => EARLY_TIMEOUT,
            Early::Aborted => EARLY_ABORT,
        }
    }

    fn error(self) -> JobError {
        match self {
            Early::TimedOut => JobError::TimedOut,
            Early::Cancelled | Early::Aborted => JobError::Cancelled,
        }
    }
}

/// What became of a result handed to [`Shared::complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// The handle has it (or will, when next polled).
    Delivered,
    /// The handle is gone, so the value was dropped; `cancelled` if it was
    /// dropped (a cancel) rather than detached.
    Dropped { cancelled: bool },
    /// The handle was resolved before the value came, for this reason; the value
    /// was dropped.
    Early(Early),
}

/// The type-erased face of a job's cell, for what must resolve a running
/// closure's handle without the closure: the pool's abort, and its run timeout.
pub(crate) trait Resolve: Send + Sync {
    /// Resolves the handle now, unless it is already resolved.
    fn resolve_early(&self, why: Early);
}

/// The cell shared by a job's envelope (on the worker side) and its [`JobHandle`].
///
/// The state word answers the common questions (finished? cancelled?) with one
/// load. The result and the caller's waker sit under one small mutex, so handing
/// over a result is one lock, a store and a wake. There is no worker waker here: a
/// cancel of a running job wakes the worker through the pool (see
/// [`Inner::wake_running`]), which keeps the cell small and the common path free of
/// waker registration.
pub(crate) struct Shared<T> {
    state: AtomicU8,
    slot: Mutex<Slot<T>>,
}

struct Slot<T> {
    result: Option<Result<T, JobError>>,
    waker: Option<Waker>,
}

impl<T> Shared<T> {
    pub(crate) fn new() -> Self {
        Shared {
            state: AtomicU8::new(0),
            slot: Mutex::new(Slot {
                result: None,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the job started. Returns `false` if the caller cancelled it first, in
    /// which case it must not run.
    #[inline]
    pub(crate) fn claim_start(&self) -> bool {
        self.state.fetch_or(STARTED, AcqRel) & CANCELLED == 0
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Acquire) & CANCELLED != 0
    }

    #[inline]
    pub(crate) fn is_complete(&self) -> bool {
        self.state.load(Acquire) & COMPLETE != 0
    }

    /// Stores the outcome and wakes the handle. If the handle is gone, nobody will
    /// read the value: it is dropped here, where a panic in its `Drop` is caught.
    /// If the handle was already resolved early (a closure running inline was
    /// cancelled, timed out or aborted), `r` is dropped and the cause is returned.
    pub(crate) fn complete(&self, r: Result<T, JobError>) -> Completion {
        let state = self.state.load(Acquire);
        if state & (EARLY_CANCEL | EARLY_TIMEOUT | EARLY_ABORT) != 0 {
            drop_quietly(r);
            return Completion::Early(early_cause(state));
        }
        if state & HANDLE_GONE != 0 {
            self.state.fetch_or(COMPLETE, AcqRel);
            drop_quietly(r);
            return Completion::Dropped {
                cancelled: state & CANCELLED != 0,
            };
        }
        let waker = {
            let mut slot = self.lock();
            // Checked again under the lock: an early resolution takes it too.
            let state = self.state.load(Acquire);
            if state & COMPLETE != 0 {
                drop(slot);
                drop_quietly(r);
                return Completion::Early(early_cause(state));
            }
            slot.result = Some(r);
            // Set under the lock, so a handle that sees COMPLETE finds the result,
            // and one that saw it clear has its waker in the slot already.
            self.state.fetch_or(COMPLETE, AcqRel);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Completion::Delivered
    }

    /// Marks a claimed blocking closure as about to run inline on a pool thread,
    /// from where nothing can interrupt it. Returns `false` if its caller cancelled
    /// it first: it must not run.
    pub(crate) fn begin_inline(&self) -> bool {
        self.state.fetch_or(INLINE, AcqRel) & CANCELLED == 0
    }

    /// Takes the result if there is one, or registers `waker` to be woken by
    /// [`complete`](Shared::complete).
    fn poll_result(&self, waker: &Waker) -> Poll<Result<T, JobError>> {
        let mut slot = self.lock();
        if let Some(r) = slot.result.take() {
            return Poll::Ready(r);
        }
        if self.state.load(Acquire) & COMPLETE != 0 {
            // Complete with no result: a bug. Report a cancellation rather than hang.
            return Poll::Ready(Err(JobError::Cancelled));
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        Poll::Pending
    }
}

fn early_cause(state: u8) -> Early {
    if state & EARLY_TIMEOUT != 0 {
        Early::TimedOut
    } else if state & EARLY_ABORT != 0 {
        Early::Aborted
    } else {
        Early::Cancelled
    }
}

impl<T: Send> Resolve for Shared<T> {
    fn resolve_early(&self, why: Early) {
        Shared::resolve_early(self, why);
    }
}

impl<T> Shared<T> {
    /// Resolves the handle of a closure running inline now, unless it is
    /// already resolved.
    pub(crate) fn resolve_early(&self, why: Early) {
        let waker = {
            let mut slot = self.lock();
            if self.state.load(Acquire) & COMPLETE != 0 {
                return;
            }
            // Only the handle can be waiting: it gets the error, and the closure's
            // value, when it returns, is dropped by `complete`.
            if self.state.load(Acquire) & HANDLE_GONE == 0 {
                slot.result = Some(Err(why.error()));
            }
            self.state.fetch_or(COMPLETE | why.bit(), AcqRel);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
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
    inner: Option<Arc<Inner>>,
    /// Where the job was queued: its id, lane and priority.
    pos: Pos,
}

impl<T> JobHandle<T> {
    pub(crate) fn new(shared: Arc<Shared<T>>, inner: Arc<Inner>, pos: Pos) -> Self {
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
