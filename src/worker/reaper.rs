//! The pool's timer task: it sleeps until the earliest queue deadline or lane
//! wakeup, then expires jobs and ends rate waits and pauses (`Inner::reap`).

use std::pin::pin;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::sched::Inner;

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
