//! Blocking closures: the worker that holds a closure's slot runs it on one of
//! Tokio's blocking threads, then goes on taking jobs there.
//!
//! A worker task that takes a [`submit_blocking`](crate::Pool::submit_blocking)
//! job moves, slot and all, onto a blocking thread (one `spawn_blocking`), runs the
//! closure inline, and takes its next job from that thread. While the queue's head
//! is blocking closures it runs them back to back, with no hand-off per job; it
//! goes back to a Tokio task when it takes an async job, or when no job comes
//! within [`LINGER`]. So a pool runs at most `workers` closures at once on at most
//! `workers` threads, Tokio keeps the threads between bursts, and the runtime
//! knows a blocking task is running (a paused test clock does not auto-advance
//! past a running closure, as with `spawn_blocking`).

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use crate::worker::{self, Started, Worker};

/// How long a worker on a blocking thread waits for the next job before going
/// back to a Tokio task: long enough to bridge a producer that is a little
/// behind, short enough not to hold a thread idle.
const LINGER: Duration = Duration::from_millis(1);

/// Wakes a worker parked on its blocking thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Moves worker `w` onto a blocking thread to run `s`, a blocking closure.
///
/// If the runtime is shutting down, Tokio drops the closure un-run: the worker's
/// guard unregisters it (aborting the pool, as for a worker task dropped by a
/// shutdown) and the job's envelope resolves its handle as cancelled.
pub(crate) fn hand_over(w: Worker, s: Started) {
    let inner = w.inner().clone();
    // Counts as a worker task, so `shutdown` waits for the thread to be done.
    let token = inner.tracker_token();
    inner.runtime().spawn_blocking(move || {
        let _token = token;
        run(w, s);
    });
}

/// The worker loop on a blocking thread.
fn run(mut w: Worker, mut s: Started) {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        let (ended, how) = w.run_inline(s);
        w.ended(ended, how, None);
        // The linger starts at the first miss: a job taken at once reads no
        // clock for it.
        let mut linger_until = None;
        let next = loop {
            match w.poll_take(&mut cx) {
                Poll::Ready(next) => break Some(next),
                Poll::Pending => {
                    let now = std::time::Instant::now();
                    let until = *linger_until.get_or_insert(now + LINGER);
                    if now >= until {
                        break None;
                    }
                    thread::park_timeout(until - now);
                }
            }
        };
        match next {
            // The worker exits (the pool shrank or closed).
            Some(None) => return,
            Some(Some(n)) if n.inline => s = n,
            // An async job: back to a task with it.
            Some(Some(n)) => return worker::resume(w, Some(n)),
            // Nothing came: wait for the next job on a task, which costs no
            // thread. The worker stays registered as idle; the task's first poll
            // takes over its waker.
            None => return worker::resume(w, None),
        }
    }
}
