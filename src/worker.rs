//! The worker loop, and the timer task that expires queue timeouts and ends rate
//! waits and pauses.
//!
//! A worker is a long-lived Tokio task. It asks the scheduler for a job
//! ([`Inner::next_job`], which also finishes its previous one), claims it, and polls
//! it to its outcome on its own task. Workers are spawned lazily, the first time a
//! queued job finds no idle worker and the pool is below its size, and exit when the
//! pool shrinks below them or closes with an empty queue.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::job::{Counters, Job, RunCtx, drop_quietly};
use crate::queue::{Held, Inner};
use crate::stats::{Outcome, Shard};

/// Unregisters a worker that is dropped without exiting normally (its runtime is
/// shutting down), counting the job it was running.
struct WorkerGuard {
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
    tracker.spawn_on(run(guard, shard), rt);
}

async fn run(mut guard: WorkerGuard, shard: Arc<Shard>) {
    let inner = guard.inner.clone();
    // When the previous job ended, if the next one was taken without waiting: it
    // serves as the next start time, saving a clock read per job under load.
    let mut last_end: Option<Instant> = None;
    // How the previous job ended, for its key's counters and limits.
    let mut outcome = Outcome::Completed;
    loop {
        let mut waited = false;
        // The clock as read by the scheduler while it took the job, if it read it.
        let mut read_at = None;
        let next = poll_fn(|cx| {
            let p = inner.next_job(guard.idx, &mut guard.held, outcome, &mut read_at, cx);
            waited |= p.is_pending();
            p
        })
        .await;
        let Some(queued) = next else {
            guard.exited = true;
            return;
        };
        let mut job = queued.job;
        let counters = Counters {
            shard: &shard,
            telemetry: &inner.telemetry,
        };
        let Some(span) = job
            .as_mut()
            .begin(&inner.name, queued.id, queued.claim, counters)
        else {
            drop_quietly(job);
            last_end = None;
            outcome = Outcome::Cancelled;
            continue;
        };
        let started = match (read_at, last_end.take()) {
            (Some(t), _) => t,
            (None, Some(t)) if !waited => t,
            _ => Instant::now(),
        };
        counters.queue_wait(started.saturating_duration_since(job.submitted()));
        let ctx = RunCtx {
            counters,
            span: &span,
            aborted: &inner.aborted,
            started,
        };
        let job = guard.job.insert(job);
        let (ended, how) = poll_fn(|cx| job.as_mut().poll_run(cx, &ctx)).await;
        last_end = Some(ended);
        outcome = how;
        // The result cell may hold an output whose handle is gone: its drop (and the
        // future's, already done) must not take the worker down.
        drop_quietly(guard.job.take());
        // A worker with a long queue of ready jobs would otherwise never return to
        // the scheduler. Spend one unit of Tokio's cooperative budget per job, so it
        // yields now and then and the tasks sharing its thread (often the very
        // submitter that is waiting for queue space) get to run.
        if !tokio::task::coop::has_budget_remaining() {
            // This call yields: other tasks run before the next job, so the previous
            // end is no longer the next start.
            last_end = None;
        }
        tokio::task::coop::consume_budget().await;
    }
}

/// Spawns the timer task, which expires queue timeouts and ends rate waits and
/// pauses. There is at most one per pool; it starts with the first timer.
pub(crate) fn spawn_reaper(inner: &Arc<Inner>, tracker: &TaskTracker, rt: &Handle) {
    let guard = ReaperGuard {
        inner: inner.clone(),
        exited: false,
    };
    tracker.spawn_on(reaper(guard), rt);
}

/// Clears `reaper_running` if the reaper is dropped without exiting through `reap`
/// (its runtime shut down, or it was never polled), so shutdown cannot wait for it.
struct ReaperGuard {
    inner: Arc<Inner>,
    exited: bool,
}

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        if !self.exited {
            self.inner.reaper_lost();
        }
    }
}

async fn reaper(mut guard: ReaperGuard) {
    let inner = guard.inner.clone();
    loop {
        // `notify_one` stores a permit, so a deadline added between `reap` and the
        // wait below is not missed.
        let (next, exit) = inner.reap();
        if exit {
            guard.exited = true;
            return;
        }
        let notified = inner.reaper_notified();
        match next {
            Some(at) => {
                let sleep = pin!(tokio::time::sleep_until(at));
                futures::future::select(sleep, pin!(notified)).await;
            }
            None => notified.await,
        }
    }
}
