//! The worker loop on a Tokio task: [`Worker`], its [`WorkerGuard`], and the job it
//! has [`Started`].
//!
//! A worker is a long-lived Tokio task. It asks the scheduler for a job
//! ([`Inner::next_job`], which also finishes its previous one), claims it, and polls
//! it to its outcome on its own task. Workers are spawned lazily, the first time a
//! queued job finds no idle worker and the pool is below its size, and exit when the
//! pool shrinks below them or closes with an empty queue.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Span;

use crate::job::{Counters, Job, RunCtx, drop_quietly};
use crate::limit::{Done, Outcome};
use crate::sched::{Held, Inner};
use crate::stats::{Ending, Shard};

/// Unregisters a worker that is dropped without exiting normally (its runtime is
/// shutting down), counting the job it was running.
pub(crate) struct WorkerGuard {
    inner: Arc<Inner>,
    idx: usize,
    /// The job the worker has counted in `busy` (and against its limits).
    held: Option<Held>,
    /// The job being run, kept here so that a worker dropped mid-job can count the
    /// job's outcome before the job's own drop resolves its handle.
    job: Option<Pin<Box<dyn Job>>>,
    exited: bool,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if !self.exited {
            let mid_job = self.job.as_ref().is_some_and(|j| !j.is_settled());
            self.inner.worker_lost(self.idx, self.held, mid_job);
            // Resolves the handle as cancelled (the envelope's drop does that).
            drop_quietly(self.job.take());
        }
    }
}

/// One worker: the slot it holds in the scheduler and what it carries from one
/// job to the next. It lives on a Tokio task ([`run`]) and, while it runs
/// blocking closures, on a blocking thread (`thread.rs`).
pub(crate) struct Worker {
    pub(crate) guard: WorkerGuard,
    pub(crate) shard: Arc<Shard>,
    /// When the previous job ended, if the next one was taken without waiting: it
    /// serves as the next start time, saving a clock read per job under load.
    last_end: Option<Instant>,
    /// How the previous job ended, for its key's counters and limits.
    done: Done,
    /// The worker had to wait for the job it is taking.
    waited: bool,
}

/// A job taken from the queue, claimed and ready to run. The job itself is in
/// the worker's guard from the moment it is taken, so that a worker dropped on
/// its way to or from a blocking thread (a runtime shutting down) still counts
/// it.
pub(crate) struct Started {
    pub(crate) span: Span,
    pub(crate) started: Instant,
    /// A blocking closure: run it on a blocking thread.
    pub(crate) inline: bool,
}

impl Worker {
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.guard.inner
    }

    /// Finishes the previous job and takes the next one. `Ready(None)` when the
    /// worker must exit. Jobs found cancelled as they are taken are resolved here.
    pub(crate) fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Started>> {
        loop {
            let inner = &self.guard.inner;
            // In: when the previous job ended, if nothing ran on this task since
            // (a usable "now" for the scheduler); out: the scheduler's reading.
            let mut read_at = self.last_end;
            let p = inner.next_job(
                self.guard.idx,
                &mut self.guard.held,
                &self.done,
                &mut read_at,
                cx,
            );
            let Poll::Ready(next) = p else {
                self.waited = true;
                return Poll::Pending;
            };
            let waited = std::mem::take(&mut self.waited);
            let Some(queued) = next else {
                self.guard.exited = true;
                return Poll::Ready(None);
            };
            let mut job = queued.job;
            let Some(span) =
                job.as_mut()
                    .begin(&inner.name, queued.id, queued.claim, self.counters())
            else {
                drop_quietly(job);
                self.last_end = None;
                // Found cancelled as it was taken: it never ran, so it tells an
                // adaptive limit nothing.
                self.done = Done {
                    ending: Ending::Cancelled,
                    report: None,
                };
                continue;
            };
            // The clock as the scheduler read it while taking the job, if it did.
            let started = match (read_at, self.last_end.take()) {
                (Some(t), _) => t,
                (None, Some(t)) if !waited => t,
                _ => Instant::now(),
            };
            self.counters()
                .queue_wait(started.saturating_duration_since(job.submitted()));
            self.guard.job = Some(job);
            return Poll::Ready(Some(Started {
                span,
                started,
                inline: queued.inline,
            }));
        }
    }

    fn counters(&self) -> Counters<'_> {
        Counters {
            shard: &self.shard,
            telemetry: &self.guard.inner.telemetry,
        }
    }

    /// Runs a blocking job to its end on the current thread (see `thread.rs`).
    pub(crate) fn run_inline(&mut self, s: Started) -> (Instant, Ending) {
        let Started { span, started, .. } = s;
        let job = self.guard.job.as_mut().expect("a started job is held");
        // Field by field: the job is borrowed from the guard mutably.
        let ctx = run_ctx(&self.shard, &self.guard.inner, &span, started);
        job.as_mut().run_inline(&ctx)
    }

    /// Records how the job ended and drops it.
    pub(crate) fn ended(&mut self, ended: Instant, how: Ending, signal: Option<Outcome>) {
        self.last_end = Some(ended);
        self.done = Done {
            ending: how,
            report: Some((ended, signal.unwrap_or_else(|| Outcome::of(how)))),
        };
        // The result cell may hold an output whose handle is gone: its drop (and the
        // future's, already done) must not take the worker down.
        drop_quietly(self.guard.job.take());
    }
}

/// What a worker lends the job it runs: its stats shard, the pool's telemetry
/// and abort flag, the job's span and start. Takes the worker's fields apart, so
/// the job itself can stay borrowed from the guard.
fn run_ctx<'a>(shard: &'a Shard, inner: &'a Inner, span: &'a Span, started: Instant) -> RunCtx<'a> {
    RunCtx {
        counters: Counters {
            shard,
            telemetry: &inner.telemetry,
        },
        span,
        aborted: &inner.aborted,
        started,
    }
}

/// Spawns worker `idx`. The guard is created here, outside the task, so that a task
/// dropped before its first poll still unregisters.
pub(crate) fn spawn(
    inner: &Arc<Inner>,
    tracker: &TaskTracker,
    rt: &Handle,
    idx: usize,
    shard: Arc<Shard>,
) {
    let guard = WorkerGuard {
        inner: inner.clone(),
        idx,
        held: None,
        job: None,
        exited: false,
    };
    let worker = Worker {
        guard,
        shard,
        last_end: None,
        done: Done {
            ending: Ending::Completed,
            report: None,
        },
        waited: false,
    };
    tracker.spawn_on(run(worker, None), rt);
}

/// Puts a worker back on a Tokio task, with the job it took (a thread hands its
/// worker back when it takes a job that is not a blocking closure).
pub(crate) fn resume(worker: Worker, first: Option<Started>) {
    let inner = worker.inner().clone();
    inner.spawn_worker_task(run(worker, first));
}

/// The worker loop on a Tokio task.
async fn run(mut w: Worker, mut first: Option<Started>) {
    loop {
        let s = match first.take() {
            Some(s) => s,
            None => match poll_fn(|cx| w.poll_take(cx)).await {
                Some(s) => s,
                None => return,
            },
        };
        if s.inline {
            // A blocking closure: the worker moves to a blocking thread and runs
            // it there, with the blocking jobs that follow it.
            crate::worker::thread::hand_over(w, s);
            return;
        }
        let Started { span, started, .. } = s;
        let job = w.guard.job.as_mut().expect("a started job is held");
        let (ended, how, signal) = {
            // Field by field: the job is borrowed from the guard mutably.
            let ctx = run_ctx(&w.shard, &w.guard.inner, &span, started);
            poll_fn(|cx| job.as_mut().poll_run(cx, &ctx)).await
        };
        w.ended(ended, how, signal);
        // A worker with a long queue of ready jobs would otherwise never return to
        // the scheduler. Spend one unit of Tokio's cooperative budget per job, so it
        // yields now and then and the tasks sharing its thread (often the very
        // submitter that is waiting for queue space) get to run.
        if !tokio::task::coop::has_budget_remaining() {
            // This call yields: other tasks run before the next job, so the previous
            // end is no longer the next start.
            w.last_end = None;
        }
        tokio::task::coop::consume_budget().await;
    }
}
