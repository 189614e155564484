//! What a job does: [`Work`], implemented for futures ([`AsyncWork`]) and for
//! blocking closures ([`BlockingWork`]), and the panic-safe drops a worker uses.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::JoinHandle;

use crate::error::JobError;
use crate::job::{Early, Resolve};
use crate::limit::Outcome;

/// What a job does. Implemented for futures ([`AsyncWork`]) and for blocking
/// closures ([`BlockingWork`]).
pub(crate) trait Work: Send + 'static {
    type Output: Send + 'static;

    /// Whether the work is a blocking closure, which the worker runs to its end on
    /// a blocking thread ([`Work::run_inline`]) rather than polling it.
    const INLINE: bool = false;

    /// Polls the work. A panic comes back as `Err(JobError::Panicked)`.
    fn poll_work(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Output, JobError>>;

    /// Runs the work to its end on the current thread, blocking it. `None` if
    /// there is nothing to run (it already ran). Only for `INLINE` work.
    fn run_inline(self: Pin<&mut Self>) -> Option<Result<Self::Output, JobError>> {
        None
    }

    /// Starts the run timeout of `INLINE` work: a timer task that resolves the
    /// handle through `cell` when `t` has passed, while the closure runs on.
    /// Called as the job starts (from `begin`, on the worker's task or on the
    /// blocking thread it is already on), so the deadline counts from then.
    fn arm_timeout(self: Pin<&mut Self>, _t: Duration, _cell: Arc<dyn Resolve>) {}

    /// What the job's output says about its downstream, for an adaptive limit;
    /// `None` if the work is not classified (the outcome then follows from how
    /// the job ended). Called once, on the output, before it goes to the handle.
    fn classify(self: Pin<&mut Self>, _output: &Self::Output) -> Option<Outcome> {
        None
    }
}

pin_project! {
    /// Work whose output is classified for an adaptive limit
    /// ([`JobBuilder::classify`](crate::JobBuilder::classify)). Only classified
    /// jobs carry a classifier: the others pay nothing for the feature.
    pub(crate) struct Classified<W, C> {
        #[pin]
        work: W,
        classify: Option<C>,
    }
}

impl<W, C> Classified<W, C> {
    pub(crate) fn new(work: W, classify: C) -> Self {
        Classified {
            work,
            classify: Some(classify),
        }
    }

    pub(crate) fn into_inner(self) -> W {
        self.work
    }
}

/// A job's classifier, its output's type erased (it is known when the job is
/// built, so the downcast never fails).
pub(crate) type Classifier = Box<dyn FnOnce(&dyn Any) -> Outcome + Send>;

impl<W, C> Work for Classified<W, C>
where
    W: Work,
    C: FnOnce(&dyn Any) -> Outcome + Send + 'static,
{
    type Output = W::Output;

    const INLINE: bool = W::INLINE;

    #[inline]
    fn poll_work(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<W::Output, JobError>> {
        self.project().work.poll_work(cx)
    }

    fn run_inline(self: Pin<&mut Self>) -> Option<Result<W::Output, JobError>> {
        self.project().work.run_inline()
    }

    fn arm_timeout(self: Pin<&mut Self>, t: Duration, cell: Arc<dyn Resolve>) {
        self.project().work.arm_timeout(t, cell);
    }

    fn classify(self: Pin<&mut Self>, output: &W::Output) -> Option<Outcome> {
        let f = self.project().classify.take()?;
        // A panicking classifier says nothing about the downstream.
        let output: &dyn Any = output;
        Some(catch_unwind(AssertUnwindSafe(|| f(output))).unwrap_or(Outcome::Ignore))
    }
}

/// Turns a panic payload into the message carried by [`JobError::Panicked`].
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// Drops a value where a panic in its `Drop` cannot take the worker down.
pub(crate) fn drop_quietly<T>(value: T) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        tracing::warn!(panic = %panic_message(&*p), "taskgate: a job's value panicked while dropped");
    }
}

pin_project! {
    /// An async job: a future polled on a worker task.
    pub(crate) struct AsyncWork<F> {
        #[pin]
        fut: F,
    }
}

impl<F> AsyncWork<F> {
    pub(crate) fn new(fut: F) -> Self {
        AsyncWork { fut }
    }

    pub(crate) fn into_inner(self) -> F {
        self.fut
    }
}

impl<F> Work for AsyncWork<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    #[inline]
    fn poll_work(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<F::Output, JobError>> {
        let fut = self.project().fut;
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(JobError::Panicked(panic_message(&*p)))),
        }
    }
}

/// A blocking job: a closure that the worker holding its slot runs on one of
/// Tokio's blocking threads (see `worker/thread.rs`).
pub(crate) struct BlockingWork<C> {
    f: Option<C>,
    /// The run timeout's timer task, stopped when the closure returns.
    timer: Option<JoinHandle<()>>,
}

impl<C> BlockingWork<C> {
    pub(crate) fn new(f: C) -> Self {
        BlockingWork {
            f: Some(f),
            timer: None,
        }
    }

    /// The closure, which is always there until the job starts.
    pub(crate) fn into_inner(mut self) -> Option<C> {
        self.f.take()
    }
}

impl<C, T> Work for BlockingWork<C>
where
    C: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    type Output = T;

    const INLINE: bool = true;

    /// The worker never polls a blocking job (it calls `run_inline` on a blocking
    /// thread); polled anyway, the closure runs here, blocking the caller.
    fn poll_work(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<T, JobError>> {
        Poll::Ready(self.run_inline().unwrap_or(Err(JobError::Cancelled)))
    }

    fn run_inline(self: Pin<&mut Self>) -> Option<Result<T, JobError>> {
        // Plain data; nothing here is pinned.
        let this = Pin::into_inner(self);
        let f = this.f.take()?;
        let result =
            catch_unwind(AssertUnwindSafe(f)).map_err(|p| JobError::Panicked(panic_message(&*p)));
        if let Some(timer) = this.timer.take() {
            timer.abort();
        }
        Some(result)
    }

    fn arm_timeout(self: Pin<&mut Self>, t: Duration, cell: Arc<dyn Resolve>) {
        if t.is_zero() {
            // No time at all, as for a future: the handle resolves as the closure
            // starts (`Task::run_inline`), which it still does.
            return;
        }
        Pin::into_inner(self).timer = Some(tokio::spawn(async move {
            tokio::time::sleep(t).await;
            cell.resolve_early(Early::TimedOut);
        }));
    }
}

impl<C> Drop for BlockingWork<C> {
    fn drop(&mut self) {
        // A job dropped before its closure ran (cancelled, aborted) stops its timer.
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl<C> Unpin for BlockingWork<C> {}
