//! The envelope that carries one job from `submit` to a worker: [`Task`].
//!
//! A `Task` owns the user's work (a future, or a blocking closure), its run
//! timeout, the parent tracing span, and the worker end of the job's [`Shared`]
//! cell. It lives in one `Box` from submission until the worker is done with it, and
//! travels through the queue type-erased as `Pin<Box<dyn Job>>`.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tracing::Span;

use crate::error::JobError;
use crate::job::{Completion, Early, Resolve, Shared, Work, drop_quietly, panic_message};
use crate::limit::Outcome;
use crate::stats::Telemetry;
use crate::stats::{Ending, Shard};

/// Where a worker counts outcomes and latencies: its own stats shard and, with the
/// `metrics` feature, the exported metrics. Every count goes to both, here.
#[derive(Clone, Copy)]
pub(crate) struct Counters<'a> {
    pub(crate) shard: &'a Shard,
    pub(crate) telemetry: &'a Telemetry,
}

impl Counters<'_> {
    #[inline]
    pub(crate) fn outcome(&self, outcome: Ending) {
        self.shard.record(outcome);
        self.telemetry.outcome(outcome);
    }

    #[inline]
    pub(crate) fn queue_wait(&self, d: Duration) {
        self.shard.record_queue_wait(d);
        self.telemetry.queue_wait(d);
    }

    #[inline]
    fn run_time(&self, d: Duration) {
        self.shard.record_run_time(d);
        self.telemetry.run_time(d);
    }
}

/// What a worker lends a job while it runs it.
pub(crate) struct RunCtx<'a> {
    pub(crate) counters: Counters<'a>,
    /// The job's `taskgate.job` span, from [`Job::begin`].
    pub(crate) span: &'a Span,
    pub(crate) aborted: &'a AtomicBool,
    pub(crate) started: Instant,
}

/// The type-erased face of a [`Task`], as the queue and the workers see it.
pub(crate) trait Job: Send {
    /// When the job was accepted.
    fn submitted(&self) -> Instant;

    /// Whether the job's caller has asked for it to be cancelled.
    fn cancel_requested(&self) -> bool;

    /// Whether the job's outcome is decided and counted.
    fn is_settled(&self) -> bool;

    /// For a job that runs inline, its cell, through which the pool's abort
    /// resolves the handle while the closure runs.
    fn inline_cell(&self) -> Option<Weak<dyn Resolve>>;

    /// Marks the job started, under the scheduler's lock when a worker takes it.
    /// Returns `false` if its caller cancelled it first: it must not run, and it
    /// counts against no limit.
    fn claim(&self) -> bool;

    /// Prepares a job taken from the queue and returns its `taskgate.job` span.
    /// `claimed` is the claim made under the lock, or `None` if it was deferred to
    /// here. Returns `None` if the job is not claimed; it is then resolved as
    /// cancelled (and counted), and must not be polled.
    fn begin(
        self: Pin<&mut Self>,
        pool: &str,
        id: u64,
        claimed: Option<bool>,
        counters: Counters<'_>,
    ) -> Option<Span>;

    /// Drives the job to its outcome: output, panic, timeout, cancel or abort. The
    /// outcome is counted in `ctx.counters` before the handle is resolved, and the work
    /// is dropped before this returns `Ready` with the time the job ended and how.
    fn poll_run(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        ctx: &RunCtx<'_>,
    ) -> Poll<(Instant, Ending, Option<Outcome>)>;

    /// Runs a blocking job to its end on the current (blocking) thread. Nothing
    /// interrupts the closure: a cancel, the run timeout (a timer task on the
    /// runtime) or the pool's abort resolves the handle early, and the outcome is
    /// counted when the closure returns, so its slot stays taken until then.
    /// Returns the time the job ended and how.
    fn run_inline(self: Pin<&mut Self>, ctx: &RunCtx<'_>) -> (Instant, Ending);

    /// Resolves a job that never started (taken out of the queue) with `err`,
    /// dropping its work first. The caller has already counted it.
    fn resolve_unstarted(self: Pin<&mut Self>, err: JobError);
}

pin_project! {
    /// The envelope for one job. Kept small (under glibc's 128-byte fast-bin size
    /// for a small future), since one is allocated per job and freed on another
    /// thread.
    //
    // No trait bounds on the struct: a bound here (`W: Work`, whose output is
    // `'static`) makes rustc fail to prove `Send` for `async` callers holding a
    // task across an `.await` when the output is a reference ("implementation of
    // `Send` is not general enough").
    #[project = TaskProj]
    pub(crate) struct Task<W, T> {
        #[pin]
        work: Option<W>,
        // Boxed, and only when the job has a run timeout: most jobs never pay for
        // a timer.
        sleep: Option<Pin<Box<Sleep>>>,
        shared: Option<Arc<Shared<T>>>,
        timeout: Option<Duration>,
        submitted: Instant,
        // The span current at submit, if any. Boxed: `None` costs nothing when
        // tracing is off.
        parent: Option<Box<Span>>,
        // How the job ended, once it has.
        outcome: Ending,
    }

    impl<W, T> PinnedDrop for Task<W, T> {
        fn drop(this: Pin<&mut Self>) {
            // Every path resolves the handle before dropping the task. This is the
            // net for the rest: a worker dropped mid-job by a runtime shutdown.
            let this = this.project();
            if let Some(shared) = this.shared.take()
                && !shared.is_complete()
            {
                shared.complete(Err(JobError::Cancelled));
            }
        }
    }
}

impl<W, T> Task<W, T> {
    pub(crate) fn new(
        work: W,
        shared: Option<Arc<Shared<T>>>,
        timeout: Option<Duration>,
        submitted: Instant,
    ) -> Self {
        // The parent only matters to the job's own `taskgate.job` span, which is at
        // DEBUG level: skip the lookup when that level is off.
        let parent = if tracing::level_enabled!(tracing::Level::DEBUG) {
            let current = Span::current();
            (!current.is_none()).then(|| Box::new(current))
        } else {
            None
        };
        Task {
            work: Some(work),
            sleep: None,
            shared,
            timeout,
            submitted,
            parent,
            outcome: Ending::Completed,
        }
    }

    pub(crate) fn set_submitted(&mut self, at: Instant) {
        self.submitted = at;
    }

    /// Takes the work back out of a task that was never accepted.
    pub(crate) fn into_work(mut self) -> W {
        self.shared = None;
        self.work
            .take()
            .expect("taskgate bug: a refused task has no work")
    }
}

/// Ends a running job: counts the outcome, drops the work, then resolves the
/// handle. Returns the time the job ended.
fn settle<W: Work>(
    this: &mut TaskProj<'_, W, W::Output>,
    ctx: &RunCtx<'_>,
    outcome: Ending,
    result: Result<W::Output, JobError>,
) -> (Instant, Option<Outcome>) {
    let now = Instant::now();
    // A classified job's output tells an adaptive limit how the downstream did.
    let signal = match (&result, this.work.as_mut().as_pin_mut()) {
        (Ok(v), Some(work)) => work.classify(v),
        _ => None,
    };
    *this.outcome = outcome;
    ctx.counters.outcome(outcome);
    ctx.counters
        .run_time(now.saturating_duration_since(ctx.started));
    log_outcome(ctx.span, outcome, &result);
    drop_work(this.work.as_mut());
    *this.sleep = None;
    match this.shared.as_ref() {
        Some(shared) => {
            shared.complete(result);
        }
        None => drop_quietly(result),
    }
    (now, signal)
}

fn log_outcome<T>(span: &Span, outcome: Ending, result: &Result<T, JobError>) {
    match (&outcome, result) {
        (_, Err(JobError::Panicked(msg))) => {
            tracing::warn!(parent: span, panic = %msg, "taskgate: job panicked");
        }
        (Ending::TimedOut, _) => tracing::debug!(parent: span, "taskgate: job timed out"),
        (Ending::Cancelled, _) => {
            tracing::debug!(parent: span, "taskgate: running job cancelled by its caller")
        }
        (Ending::Aborted, _) => {
            tracing::debug!(parent: span, "taskgate: running job cancelled by abort")
        }
        _ => {}
    }
}

fn drop_work<W>(mut work: Pin<&mut Option<W>>) {
    if work.is_some()
        && let Err(p) = catch_unwind(AssertUnwindSafe(|| work.set(None)))
    {
        tracing::warn!(panic = %panic_message(&*p), "taskgate: a job's future panicked while dropped");
    }
}

impl<W: Work> Job for Task<W, W::Output> {
    fn submitted(&self) -> Instant {
        self.submitted
    }

    fn cancel_requested(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.is_cancelled())
    }

    fn is_settled(&self) -> bool {
        self.work.is_none()
    }

    fn inline_cell(&self) -> Option<Weak<dyn Resolve>> {
        if W::INLINE {
            // Weak: the slot must not be what keeps the cell, with the
            // job's output, alive, or the output would be dropped under the
            // pool lock when the slot is cleared.
            self.shared
                .as_ref()
                .map(|s| Arc::downgrade(s) as Weak<dyn Resolve>)
        } else {
            None
        }
    }

    fn claim(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.claim_start())
    }

    fn begin(
        self: Pin<&mut Self>,
        pool: &str,
        id: u64,
        claimed: Option<bool>,
        counters: Counters<'_>,
    ) -> Option<Span> {
        let claimed = claimed.unwrap_or_else(|| self.claim());
        let mut this = self.project();
        if !claimed && let Some(shared) = this.shared.as_ref() {
            counters.outcome(Ending::Cancelled);
            tracing::debug!(
                pool,
                job = id,
                "taskgate: queued job cancelled by its caller"
            );
            drop_work(this.work.as_mut());
            shared.complete(Err(JobError::Cancelled));
            return None;
        }
        if let Some(t) = *this.timeout {
            if !W::INLINE {
                *this.sleep = Some(Box::pin(tokio::time::sleep(t)));
            } else if let (Some(work), Some(shared)) =
                (this.work.as_mut().as_pin_mut(), this.shared.as_ref())
            {
                work.arm_timeout(t, shared.clone());
            }
        }
        let parent = this.parent.take();
        Some(match parent.as_deref() {
            Some(parent) => tracing::debug_span!(parent: parent, "taskgate.job", pool, job = id),
            None => tracing::debug_span!(parent: None, "taskgate.job", pool, job = id),
        })
    }

    fn poll_run(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        ctx: &RunCtx<'_>,
    ) -> Poll<(Instant, Ending, Option<Outcome>)> {
        let mut this = self.project();
        let (ended, signal) = ready!(poll_run_inner(&mut this, cx, ctx));
        Poll::Ready((ended, *this.outcome, signal))
    }

    fn run_inline(self: Pin<&mut Self>, ctx: &RunCtx<'_>) -> (Instant, Ending) {
        let mut this = self.project();
        // `begin_inline` marks the cell first, so that a cancel from now on resolves
        // the handle itself; one that came before means the closure never runs.
        let begun = match this.shared.as_ref() {
            Some(s) => s.begin_inline(),
            None => Ok(()),
        };
        let aborted = ctx.aborted.load(Relaxed);
        if begun.is_err() || aborted {
            // It never runs: cancelled, aborted, or timed out while it waited for
            // its thread (a caller told `TimedOut` must not see it run after).
            let (outcome, err) = match begun {
                Err(Some(Early::TimedOut)) => (Ending::TimedOut, JobError::TimedOut),
                _ if aborted => (Ending::Aborted, JobError::Cancelled),
                Err(Some(Early::Aborted)) => (Ending::Aborted, JobError::Cancelled),
                _ => (Ending::Cancelled, JobError::Cancelled),
            };
            let (ended, _) = settle(&mut this, ctx, outcome, Err(err));
            return (ended, outcome);
        }
        if *this.timeout == Some(Duration::ZERO)
            && let Some(shared) = this.shared.as_ref()
        {
            // A zero run timeout: the handle times out as the closure starts.
            shared.resolve_early(Early::TimedOut);
        }
        let result = {
            let _enter = ctx.span.enter();
            this.work
                .as_mut()
                .as_pin_mut()
                .and_then(|w| w.run_inline())
                .unwrap_or(Err(JobError::Cancelled))
        };
        let now = Instant::now();
        drop_work(this.work.as_mut());
        let ran = match &result {
            Ok(_) => Ending::Completed,
            Err(JobError::Panicked(_)) => Ending::Panicked,
            Err(_) => Ending::Cancelled,
        };
        if let Err(JobError::Panicked(msg)) = &result {
            tracing::warn!(parent: ctx.span, panic = %msg, "taskgate: job panicked");
        }
        let decide = |completion| {
            let outcome = match completion {
                Completion::Delivered | Completion::Dropped { cancelled: false } => ran,
                Completion::Dropped { cancelled: true } | Completion::Early(Early::Cancelled) => {
                    Ending::Cancelled
                }
                Completion::Early(Early::TimedOut) => Ending::TimedOut,
                Completion::Early(Early::Aborted) => Ending::Aborted,
            };
            // Counted before the handle can see its result, as for an async job.
            ctx.counters.outcome(outcome);
            ctx.counters
                .run_time(now.saturating_duration_since(ctx.started));
            outcome
        };
        let mut outcome = ran;
        match this.shared.as_ref() {
            Some(shared) => {
                shared.complete_then(result, |c| outcome = decide(c));
            }
            None => {
                outcome = decide(Completion::Delivered);
                drop_quietly(result);
            }
        }
        if outcome != ran {
            log_outcome(ctx.span, outcome, &Ok::<(), JobError>(()));
        }
        *this.outcome = outcome;
        (now, outcome)
    }

    fn resolve_unstarted(self: Pin<&mut Self>, err: JobError) {
        let mut this = self.project();
        drop_work(this.work.as_mut());
        if let Some(shared) = this.shared.as_ref() {
            shared.complete(Err(err));
        }
    }
}

/// The body of [`Job::poll_run`]: returns the time the job ended.
fn poll_run_inner<W: Work>(
    this: &mut TaskProj<'_, W, W::Output>,
    cx: &mut Context<'_>,
    ctx: &RunCtx<'_>,
) -> Poll<(Instant, Option<Outcome>)> {
    let aborted = ctx.aborted.load(Relaxed);
    if aborted || this.shared.as_ref().is_some_and(|s| s.is_cancelled()) {
        let outcome = if aborted {
            Ending::Aborted
        } else {
            Ending::Cancelled
        };
        return Poll::Ready(settle(this, ctx, outcome, Err(JobError::Cancelled)));
    }
    let Some(work) = this.work.as_mut().as_pin_mut() else {
        return Poll::Ready((Instant::now(), None));
    };
    let polled = {
        let _enter = ctx.span.enter();
        work.poll_work(cx)
    };
    match polled {
        Poll::Ready(Ok(v)) => return Poll::Ready(settle(this, ctx, Ending::Completed, Ok(v))),
        Poll::Ready(Err(e)) => return Poll::Ready(settle(this, ctx, Ending::Panicked, Err(e))),
        Poll::Pending => {}
    }
    if let Some(sleep) = this.sleep.as_mut()
        && sleep.as_mut().poll(cx).is_ready()
    {
        return Poll::Ready(settle(this, ctx, Ending::TimedOut, Err(JobError::TimedOut)));
    }
    Poll::Pending
}
