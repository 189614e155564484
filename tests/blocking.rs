//! `submit_blocking`: the worker that takes a blocking closure moves onto a Tokio
//! blocking thread, runs the closure inline there, and keeps taking jobs from that
//! thread (back to back while they are blocking closures), going back to a task for
//! an async job or when no job comes within its linger time.
//!
//! Closures are held with [`gated`], never with a real sleep: each waits on a std
//! channel whose sender is dropped when its [`Gate`] is released or dropped (so a
//! failing test releases its closures as it unwinds), with a long real-time safety
//! net so that no test can hang forever.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use support::*;
use taskgate::{JobError, Pool};
use tokio::sync::oneshot;
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);

/// How long anything may take before a test gives up instead of hanging. Only a
/// bug in the pool (or in a test) ever waits this long.
const LONG: Duration = Duration::from_secs(30);

/// Controls a blocking closure from [`gated`]: see when it starts, and let it
/// return. Dropping the gate releases the closure too.
struct Gate {
    started: Option<oneshot::Receiver<()>>,
    release: Option<std::sync::mpsc::Sender<()>>,
}

impl Gate {
    /// Waits until the closure is running.
    async fn started(&mut self) {
        let rx = self.started.take().expect("started() called twice");
        tokio::time::timeout(LONG, rx)
            .await
            .expect("the closure never started")
            .expect("the closure was dropped un-run");
    }

    /// Whether the closure has started, without waiting. (It consumes the
    /// signal only when it answers `true`.)
    fn has_started(&mut self) -> bool {
        let rx = self.started.as_mut().expect("already started");
        rx.try_recv().is_ok()
    }

    /// Lets the closure return.
    fn release(&mut self) {
        self.release.take();
    }

    /// Lets the closure return if `cond`: before an assertion that is about to
    /// fail (dropping the gate as the test unwinds would release it too).
    fn release_if(&mut self, cond: bool) {
        if cond {
            self.release();
        }
    }
}

/// A blocking closure that signals when it starts, then blocks until its gate is
/// released (or dropped), then returns `value`.
fn gated<T: Send + 'static>(value: T) -> (impl FnOnce() -> T + Send + 'static, Gate) {
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let f = move || {
        let _ = started_tx.send(());
        // Released by the sender's drop; the timeout is only a safety net.
        let _ = release_rx.recv_timeout(LONG);
        value
    };
    (
        f,
        Gate {
            started: Some(started_rx),
            release: Some(release_tx),
        },
    )
}

/// Awaits `fut`, failing the test rather than hanging if it takes too long.
async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LONG, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish (hang)"),
    }
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Increments its counter when dropped: to count how often a value is dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// 1. Results, panics and the limit.
// ---------------------------------------------------------------------------

/// The default `#[tokio::test]` runtime is `current_thread`: blocking closures
/// run there too, mixed with async jobs, and give their results.
#[tokio::test]
async fn results_come_back_on_a_current_thread_runtime() {
    let pool = pool(3, 256);
    let mut handles = Vec::new();
    for i in 0..60u64 {
        if i % 3 == 0 {
            handles.push(pool.submit(async move { i * i }).await.unwrap());
        } else {
            handles.push(pool.submit_blocking(move || i * i).await.unwrap());
        }
    }
    for (i, h) in handles.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(within("result", h).await, Ok(i * i));
    }
    within("shutdown", pool.shutdown()).await;
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed), (60, 60), "{s:?}");
    assert_accounted(&pool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_come_back_on_a_multi_thread_runtime() {
    let pool = pool(4, 256);
    let mut handles = Vec::new();
    for i in 0..200u64 {
        handles.push(
            pool.submit_blocking(move || format!("job {i}"))
                .await
                .unwrap(),
        );
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within("result", h).await, Ok(format!("job {i}")));
    }
    within("shutdown", pool.shutdown()).await;
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed), (200, 200), "{s:?}");
    assert_accounted(&pool);
}

#[tokio::test]
async fn a_panic_comes_back_with_its_message_and_the_worker_goes_on() {
    let pool = pool(1, 16);
    // Paused so that all four run back to back on one thread: a panic must not
    // take that thread's worker down.
    pool.resize(0);
    let a = pool.submit_blocking(|| 1).await.unwrap();
    let b = pool
        .submit_blocking(|| -> u32 { panic!("boom {}", 7) })
        .await
        .unwrap();
    let c = pool
        .submit_blocking(|| -> u32 { std::panic::panic_any("static boom") })
        .await
        .unwrap();
    let d = pool.submit_blocking(|| 4).await.unwrap();
    let e = pool.submit(async { 5 }).await.unwrap();
    pool.resize(1);
    assert_eq!(within("a", a).await, Ok(1));
    assert_eq!(
        within("b", b).await,
        Err(JobError::Panicked("boom 7".into()))
    );
    assert_eq!(
        within("c", c).await,
        Err(JobError::Panicked("static boom".into()))
    );
    assert_eq!(within("d", d).await, Ok(4));
    assert_eq!(within("e", e).await, Ok(5));
    within("shutdown", pool.shutdown()).await;
    let s = pool.stats();
    assert_eq!((s.completed, s.panicked), (3, 2), "{s:?}");
    assert_accounted(&pool);
}

/// With two workers and two closures running, neither a third closure nor an
/// async job starts; each starts only as a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_closures_hold_the_limit_against_blocking_and_async_jobs() {
    let pool = pool(2, 16);
    let (fa, mut ga) = gated(1);
    let (fb, mut gb) = gated(2);
    let a = pool.submit_blocking(fa).await.unwrap();
    let b = pool.submit_blocking(fb).await.unwrap();
    ga.started().await;
    gb.started().await;

    let c_ran = flag();
    let d_ran = flag();
    let c = {
        let c_ran = c_ran.clone();
        pool.submit_blocking(move || c_ran.store(true, Ordering::SeqCst))
            .await
            .unwrap()
    };
    let d = {
        let d_ran = d_ran.clone();
        pool.submit(async move { d_ran.store(true, Ordering::SeqCst) })
            .await
            .unwrap()
    };
    settle().await;
    let s = pool.stats();
    let (c_now, d_now) = (c_ran.load(Ordering::SeqCst), d_ran.load(Ordering::SeqCst));
    ga.release();
    gb.release();
    assert_eq!((s.busy, s.queued), (2, 2), "{s:?}");
    assert!(!c_now && !d_now, "a job started past the limit");

    assert_eq!(within("a", a).await, Ok(1));
    assert_eq!(within("b", b).await, Ok(2));
    assert_eq!(within("c", c).await, Ok(()));
    assert_eq!(within("d", d).await, Ok(()));
    within("shutdown", pool.shutdown()).await;
    assert_accounted(&pool);
}

/// Many short jobs, blocking and async alternating, on a pool smaller than the
/// runtime's blocking threads: never more than `workers` run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_more_than_workers_run_at_once() {
    let pool = pool(2, 8);
    let g = Gauge::default();
    let mut handles = Vec::new();
    for i in 0..200usize {
        let g = g.clone();
        let h = if i % 2 == 0 {
            pool.submit_blocking(move || {
                let _in = g.enter();
                for _ in 0..20 {
                    std::thread::yield_now();
                }
                i
            })
            .await
            .unwrap()
        } else {
            pool.submit(async move {
                let _in = g.enter();
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                i
            })
            .await
            .unwrap()
        };
        handles.push(h);
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within("result", h).await, Ok(i));
    }
    within("shutdown", pool.shutdown()).await;
    assert!(g.peak() <= 2, "peak {} > 2 workers", g.peak());
    assert_eq!(g.started(), 200);
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 2. Cancelling a running closure.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cancel_resolves_at_once_but_the_slot_stays_taken_until_the_closure_returns() {
    let pool = pool(1, 16);
    let (f, mut gate) = gated(10);
    let h = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    let next_ran = flag();
    let next = {
        let next_ran = next_ran.clone();
        pool.submit(async move {
            next_ran.store(true, Ordering::SeqCst);
            5
        })
        .await
        .unwrap()
    };

    h.cancel();
    // Resolved from the caller's side, with no worker involved.
    let finished = h.is_finished();
    settle().await;
    let s = pool.stats();
    let next_started = next_ran.load(Ordering::SeqCst);
    if !finished || next_started || s.busy != 1 || s.cancelled != 0 {
        gate.release();
    }
    assert!(
        finished,
        "cancel of a running closure must resolve its handle"
    );
    assert!(
        !next_started,
        "the queued job started while the closure ran"
    );
    assert_eq!((s.busy, s.queued, s.cancelled), (1, 1, 0), "{s:?}");
    // The handle gives Cancelled while the closure still runs.
    assert_eq!(
        within("cancelled handle", h).await,
        Err(JobError::Cancelled)
    );
    settle().await;
    let s = pool.stats();
    let next_started = next_ran.load(Ordering::SeqCst);
    gate.release();
    assert!(
        !next_started,
        "the queued job started while the closure ran"
    );
    assert_eq!((s.busy, s.cancelled), (1, 0), "{s:?}");

    assert_eq!(within("next", next).await, Ok(5));
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed), (1, 1), "{s:?}");
    within("shutdown", pool.shutdown()).await;
    assert_accounted(&pool);
}

/// A closure's value, when its handle was cancelled, is dropped (once) rather
/// than delivered.
#[tokio::test]
async fn a_cancelled_closures_value_is_dropped_once() {
    let pool = pool(1, 16);
    let drops = Arc::new(AtomicUsize::new(0));
    let (f, mut gate) = gated(Counted(drops.clone()));
    let h = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    h.cancel();
    gate.release();
    assert!(matches!(within("h", h).await, Err(JobError::Cancelled)));
    within("shutdown", pool.shutdown()).await;
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().cancelled, 1);
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 3. Dropping the handle of a running closure.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dropping_the_handle_of_a_running_closure_counts_cancelled_and_drops_the_value_once() {
    let pool = pool(1, 16);
    let drops = Arc::new(AtomicUsize::new(0));
    let (f, mut gate) = gated(Counted(drops.clone()));
    let h = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    let next_ran = flag();
    let next = {
        let next_ran = next_ran.clone();
        pool.submit(async move {
            next_ran.store(true, Ordering::SeqCst);
            5
        })
        .await
        .unwrap()
    };
    drop(h);
    settle().await;
    let s = pool.stats();
    let next_started = next_ran.load(Ordering::SeqCst);
    let dropped_early = drops.load(Ordering::SeqCst);
    gate.release();
    assert_eq!((s.busy, s.cancelled), (1, 0), "{s:?}");
    assert!(
        !next_started,
        "the queued job started while the closure ran"
    );
    assert_eq!(
        dropped_early, 0,
        "the value exists only once the closure returns"
    );

    assert_eq!(within("next", next).await, Ok(5));
    within("shutdown", pool.shutdown()).await;
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "value dropped exactly once"
    );
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed), (1, 1), "{s:?}");
    assert_accounted(&pool);
}

/// The contrast: a detached closure counts as completed, and its value is
/// dropped once too.
#[tokio::test]
async fn a_detached_closure_counts_completed_and_its_value_is_dropped_once() {
    let pool = pool(1, 16);
    let drops = Arc::new(AtomicUsize::new(0));
    let (f, mut gate) = gated(Counted(drops.clone()));
    let h = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    h.detach();
    gate.release();
    within("shutdown", pool.shutdown()).await;
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed), (0, 1), "{s:?}");
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 4. Run timeouts.
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_blocking_job_times_out_at_its_deadline_while_the_closure_runs() {
    let pool = Pool::builder()
        .workers(1)
        .job_timeout(10 * MS)
        .build()
        .unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let (f, mut gate) = gated(Counted(drops.clone()));
    let h = pool.submit_blocking(f).await.unwrap();
    let next = pool.submit(async { 5 }).await.unwrap();
    gate.started().await;
    settle().await;
    advance(9 * MS).await;
    settle().await;
    let early = h.is_finished();
    advance(MS).await;
    settle().await;
    let at_deadline = h.is_finished();
    let s = pool.stats();
    let next_done = next.is_finished();
    if early || !at_deadline {
        gate.release();
    }
    assert!(!early, "resolved before its deadline");
    assert!(at_deadline, "not resolved at its deadline");
    assert!(matches!(within("h", h).await, Err(JobError::TimedOut)));
    // The closure still runs: its slot is taken, nothing is counted yet.
    assert_eq!((s.busy, s.queued, s.timed_out), (1, 1, 0), "{s:?}");
    assert!(!next_done);
    gate.release();

    assert_eq!(within("next", next).await, Ok(5));
    let s = pool.stats();
    assert_eq!((s.timed_out, s.completed), (1, 1), "{s:?}");
    within("shutdown", pool.shutdown()).await;
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the late value is dropped once"
    );
    assert_accounted(&pool);
}

/// The second closure is taken by the worker on its blocking thread (back to
/// back): its run timeout is armed from there, and works.
#[tokio::test(start_paused = true)]
async fn a_closure_taken_on_the_blocking_thread_times_out_too() {
    let pool = Pool::builder()
        .workers(1)
        .job_timeout(10 * MS)
        .build()
        .unwrap();
    let (fa, mut ga) = gated(1);
    let (fb, mut gb) = gated(2);
    let a = pool.submit_blocking(fa).await.unwrap();
    let b = pool.submit_blocking(fb).await.unwrap();
    ga.started().await;
    settle().await;
    advance(5 * MS).await;
    ga.release();
    assert_eq!(within("a", a).await, Ok(1));
    gb.started().await;
    settle().await;
    advance(9 * MS).await;
    settle().await;
    let early = b.is_finished();
    advance(MS).await;
    settle().await;
    let at_deadline = b.is_finished();
    if early || !at_deadline {
        gb.release();
    }
    assert!(!early, "resolved before its own deadline");
    assert!(at_deadline, "not resolved at its deadline");
    assert_eq!(within("b", b).await, Err(JobError::TimedOut));
    let s = pool.stats();
    gb.release();
    assert_eq!((s.busy, s.timed_out, s.completed), (1, 0, 1), "{s:?}");
    within("shutdown", pool.shutdown()).await;
    let s = pool.stats();
    assert_eq!((s.timed_out, s.completed), (1, 1), "{s:?}");
    assert_accounted(&pool);
}

/// A closure that returns before its deadline keeps its value, and its timer
/// does not fire later.
#[tokio::test(start_paused = true)]
async fn a_closure_that_returns_in_time_is_not_timed_out() {
    let pool = Pool::builder()
        .workers(1)
        .job_timeout(10 * MS)
        .build()
        .unwrap();
    let (f, mut gate) = gated(3);
    let h = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    settle().await;
    advance(9 * MS).await;
    gate.release();
    assert_eq!(within("h", h).await, Ok(3));
    advance(20 * MS).await;
    settle().await;
    within("shutdown", pool.shutdown()).await;
    let s = pool.stats();
    assert_eq!((s.timed_out, s.completed), (0, 1), "{s:?}");
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn a_zero_timeout_times_out_at_once_yet_the_closure_runs_holding_its_slot() {
    let pool = Pool::builder()
        .workers(1)
        .job_timeout(Duration::ZERO)
        .build()
        .unwrap();
    let ran = flag();
    let (f, mut gate) = gated(());
    let h = {
        let ran = ran.clone();
        pool.submit_blocking(move || {
            ran.store(true, Ordering::SeqCst);
            f()
        })
        .await
        .unwrap()
    };
    let next_ran = flag();
    let next = {
        let next_ran = next_ran.clone();
        pool.submit(async move {
            next_ran.store(true, Ordering::SeqCst);
            5
        })
        .await
        .unwrap()
    };
    assert_eq!(within("h", h).await, Err(JobError::TimedOut));
    gate.started().await;
    settle().await;
    let s = pool.stats();
    let next_started = next_ran.load(Ordering::SeqCst);
    gate.release();
    assert!(ran.load(Ordering::SeqCst), "the closure must still run");
    assert_eq!((s.busy, s.queued, s.timed_out), (1, 1, 0), "{s:?}");
    assert!(!next_started, "the slot was free while the closure ran");
    // A job that is ready at once succeeds even with a zero timeout.
    assert_eq!(within("next", next).await, Ok(5));
    within("shutdown", pool.shutdown()).await;
    let s = pool.stats();
    assert_eq!((s.timed_out, s.completed), (1, 1), "{s:?}");
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 5. Abort while a closure runs.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn abort_resolves_a_running_closure_at_once_and_shutdown_waits_for_it() {
    let pool = pool(1, 16);
    let drops = Arc::new(AtomicUsize::new(0));
    let (f, mut gate) = gated(Counted(drops.clone()));
    let h = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    let queued_ran = flag();
    let queued = {
        let queued_ran = queued_ran.clone();
        pool.submit_blocking(move || queued_ran.store(true, Ordering::SeqCst))
            .await
            .unwrap()
    };

    pool.abort();
    let finished = h.is_finished();
    if !finished {
        gate.release();
    }
    assert!(
        finished,
        "abort must resolve a running closure's handle at once"
    );
    assert!(matches!(within("h", h).await, Err(JobError::Cancelled)));
    assert_eq!(within("queued", queued).await, Err(JobError::Cancelled));

    let shutdown = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown().await }
    });
    settle().await;
    let early = shutdown.is_finished();
    let s = pool.stats();
    gate.release();
    assert!(!early, "shutdown returned while a closure still ran");
    assert_eq!(s.busy, 1, "{s:?}");

    within("shutdown", shutdown).await.unwrap();
    assert!(
        !queued_ran.load(Ordering::SeqCst),
        "a queued job ran after abort"
    );
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed), (2, 0), "{s:?}");
    assert_accounted(&pool);
}

/// `shutdown_timeout` past its grace aborts: a running closure's handle resolves
/// at once, the call waits for the closure, and the closure counts as aborted.
#[tokio::test(start_paused = true)]
async fn shutdown_timeout_reports_a_running_closure_as_cancelled() {
    let pool = pool(1, 16);
    let done = pool.submit_blocking(|| 1).await.unwrap();
    assert_eq!(within("done", done).await, Ok(1));
    let (f, mut gate) = gated(2);
    let h = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    let queued = pool.submit(async { 3 }).await.unwrap();

    let report = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown_timeout(10 * MS).await }
    });
    settle().await;
    advance(10 * MS).await;
    settle().await;
    let finished = h.is_finished();
    let early = report.is_finished();
    gate.release_if(!finished || early);
    assert!(
        finished,
        "the deadline's abort must resolve the closure's handle"
    );
    assert!(
        !early,
        "shutdown_timeout returned while a closure still ran"
    );
    assert_eq!(within("h", h).await, Err(JobError::Cancelled));
    assert_eq!(within("queued", queued).await, Err(JobError::Cancelled));
    gate.release();

    let report = within("shutdown_timeout", report).await.unwrap();
    assert_eq!((report.completed, report.cancelled), (0, 2), "{report:?}");
    let s = pool.stats();
    assert_eq!((s.completed, s.cancelled), (1, 2), "{s:?}");
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 6. Cancelled while queued.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_blocking_job_cancelled_while_queued_never_runs() {
    let pool = pool(1, 16);
    let (f, mut gate) = gated(1);
    let a = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    let b_ran = flag();
    let c_ran = flag();
    let b = {
        let b_ran = b_ran.clone();
        pool.submit_blocking(move || b_ran.store(true, Ordering::SeqCst))
            .await
            .unwrap()
    };
    let c = {
        let c_ran = c_ran.clone();
        pool.submit_blocking(move || c_ran.store(true, Ordering::SeqCst))
            .await
            .unwrap()
    };
    let d = pool.submit_blocking(|| 4).await.unwrap();
    b.cancel();
    drop(c);
    let queued = pool.stats().queued;
    gate.release();
    assert_eq!(queued, 1, "cancelled jobs leave the queue at once");
    assert_eq!(within("a", a).await, Ok(1));
    assert_eq!(within("b", b).await, Err(JobError::Cancelled));
    assert_eq!(within("d", d).await, Ok(4));
    within("shutdown", pool.shutdown()).await;
    assert!(!b_ran.load(Ordering::SeqCst), "cancelled job ran");
    assert!(!c_ran.load(Ordering::SeqCst), "dropped job ran");
    let s = pool.stats();
    assert_eq!((s.completed, s.cancelled), (2, 2), "{s:?}");
    assert_accounted(&pool);
}

#[tokio::test]
async fn a_blocking_job_cancelled_in_a_paused_pool_never_runs() {
    let pool = pool(1, 16);
    pool.resize(0);
    let ran = flag();
    let h = {
        let ran = ran.clone();
        pool.submit_blocking(move || ran.store(true, Ordering::SeqCst))
            .await
            .unwrap()
    };
    let other = pool.submit_blocking(|| 2).await.unwrap();
    h.cancel();
    pool.resize(1);
    assert_eq!(within("h", h).await, Err(JobError::Cancelled));
    assert_eq!(within("other", other).await, Ok(2));
    within("shutdown", pool.shutdown()).await;
    assert!(!ran.load(Ordering::SeqCst));
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 7. Back to back on one thread.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn queued_closures_run_back_to_back_on_one_thread() {
    let pool = pool(1, 64);
    pool.resize(0);
    let mut handles = Vec::new();
    for i in 0..50usize {
        handles.push(
            pool.submit_blocking(move || (i, std::thread::current().id()))
                .await
                .unwrap(),
        );
    }
    pool.resize(1);
    let mut threads = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let (j, t) = within("result", h).await.unwrap();
        assert_eq!(j, i);
        threads.push(t);
    }
    let me = std::thread::current().id();
    threads.dedup();
    assert_eq!(
        threads.len(),
        1,
        "50 queued closures ran on several threads"
    );
    assert_ne!(threads[0], me, "a closure ran on the runtime's thread");
    within("shutdown", pool.shutdown()).await;
    let s = pool.stats();
    assert_eq!(s.completed, 50, "{s:?}");
    assert_accounted(&pool);
}

/// Back to back means no hand-off through a task: on a `current_thread` runtime
/// whose only thread is blocked, a worker that is on its blocking thread still
/// runs every queued closure.
#[tokio::test]
async fn queued_closures_run_without_the_runtime_thread() {
    const N: usize = 30;
    let pool = pool(1, 64);
    pool.resize(0);
    let (first, mut gate) = gated(());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
    let mut handles = vec![pool.submit_blocking(first).await.unwrap()];
    for i in 1..N {
        let done_tx = done_tx.clone();
        handles.push(
            pool.submit_blocking(move || {
                let _ = done_tx.send(i);
            })
            .await
            .unwrap(),
        );
    }
    drop(done_tx);
    pool.resize(1);
    gate.started().await;
    gate.release();
    // Block the runtime's only thread: no task runs until every closure is done.
    let mut seen = Vec::new();
    while seen.len() < N - 1 {
        match done_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(i) => seen.push(i),
            Err(_) => break,
        }
    }
    assert_eq!(
        seen,
        (1..N).collect::<Vec<_>>(),
        "queued closures waited for a task on the blocked runtime thread"
    );
    for h in handles {
        assert_eq!(within("result", h).await, Ok(()));
    }
    within("shutdown", pool.shutdown()).await;
    assert_accounted(&pool);
}

/// blocking ×10, async ×1, blocking ×10 on one worker: FIFO; each run of
/// closures shares a thread, and the async job runs on the runtime's thread.
#[tokio::test]
async fn an_async_job_between_closures_runs_in_order() {
    #[derive(Debug)]
    enum Ran {
        Blocking(ThreadId),
        Async(ThreadId),
    }
    let pool = pool(1, 64);
    pool.resize(0);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..21usize {
        let order = order.clone();
        let h = if i == 10 {
            pool.submit(async move {
                order.lock().unwrap().push(i);
                (i * 7, Ran::Async(std::thread::current().id()))
            })
            .await
            .unwrap()
        } else {
            pool.submit_blocking(move || {
                order.lock().unwrap().push(i);
                (i * 7, Ran::Blocking(std::thread::current().id()))
            })
            .await
            .unwrap()
        };
        handles.push(h);
    }
    pool.resize(1);
    let mut ran = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let (v, r) = within("result", h).await.unwrap();
        assert_eq!(v, i * 7);
        ran.push(r);
    }
    assert_eq!(*order.lock().unwrap(), (0..21).collect::<Vec<_>>());
    let me = std::thread::current().id();
    let blocking_thread = |r: &Ran| match r {
        Ran::Blocking(t) => *t,
        Ran::Async(_) => panic!("an async job where a closure was expected: {ran:?}"),
    };
    let first = blocking_thread(&ran[0]);
    let second = blocking_thread(&ran[11]);
    assert!(
        ran[..10].iter().all(|r| blocking_thread(r) == first),
        "{ran:?}"
    );
    assert!(
        ran[11..].iter().all(|r| blocking_thread(r) == second),
        "{ran:?}"
    );
    assert!(first != me && second != me, "{ran:?}");
    assert!(
        matches!(ran[10], Ran::Async(t) if t == me),
        "the async job must run on a task (the runtime's thread): {ran:?}"
    );
    within("shutdown", pool.shutdown()).await;
    assert_eq!(pool.stats().completed, 21);
    assert_accounted(&pool);
}

/// Shrinking while a closure runs on its thread: the closure queued behind it
/// does not start until the pool grows again.
#[tokio::test]
async fn a_worker_on_its_thread_obeys_a_resize_to_zero() {
    let pool = pool(1, 16);
    let (f, mut gate) = gated(1);
    let a = pool.submit_blocking(f).await.unwrap();
    gate.started().await;
    let (fb, mut gate_b) = gated(2);
    let b = pool.submit_blocking(fb).await.unwrap();
    pool.resize(0);
    gate.release();
    assert_eq!(within("a", a).await, Ok(1));
    // The worker ends A and, in the same critical section, leaves (the pool's
    // size is 0): once nothing is busy, no worker is left that could take B.
    // Polled, not slept; B starting (the bug) ends the wait too.
    let give_up = std::time::Instant::now() + LONG;
    let mut started = gate_b.has_started();
    while !started && pool.stats().busy != 0 && std::time::Instant::now() < give_up {
        tokio::task::yield_now().await;
        started = gate_b.has_started();
    }
    gate_b.release_if(started);
    assert!(!started, "started in a paused pool");
    let s = pool.stats();
    assert_eq!((s.busy, s.queued), (0, 1), "B waits, unstarted: {s:?}");
    assert!(!b.is_finished());
    pool.resize(1);
    gate_b.started().await;
    gate_b.release();
    assert_eq!(within("b", b).await, Ok(2));
    within("shutdown", pool.shutdown()).await;
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 8. Mixed load.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_blocking_and_async_stress_keeps_the_limit_and_the_counts() {
    const JOBS: u64 = 300;
    let pool = pool(3, 16);
    let g = Gauge::default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut handles = Vec::new();
    for i in 0..JOBS {
        let g = g.clone();
        let spin = rng.below(200);
        let h = if rng.below(2) == 0 {
            pool.submit_blocking(move || {
                let _in = g.enter();
                let mut x = i;
                for k in 0..spin {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(k));
                    if k % 50 == 0 {
                        std::thread::yield_now();
                    }
                }
                std::hint::black_box(x);
                i * 2 + 1
            })
            .await
            .unwrap()
        } else {
            let yields = spin % 4;
            pool.submit(async move {
                let _in = g.enter();
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
                i * 2 + 1
            })
            .await
            .unwrap()
        };
        handles.push(h);
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within("result", h).await, Ok(i as u64 * 2 + 1));
    }
    within("shutdown", pool.shutdown()).await;
    assert!(g.peak() <= 3, "peak {} > 3 workers", g.peak());
    assert_eq!(g.started(), JOBS as usize);
    assert_eq!(g.now(), 0);
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed), (JOBS, JOBS), "{s:?}");
    assert_eq!(
        (s.cancelled, s.timed_out, s.panicked, s.queue_timed_out),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 9. Closures can use the runtime.
// ---------------------------------------------------------------------------

fn uses_the_runtime() -> u32 {
    let rt = tokio::runtime::Handle::current();
    let seven = rt.block_on(async { 7 });
    let spawned = rt.block_on(tokio::spawn(async { 5 })).unwrap();
    seven + spawned
}

#[tokio::test]
async fn a_closure_can_use_the_runtime_on_a_current_thread_runtime() {
    let pool = pool(2, 16);
    // Two in a row: the second is taken on the blocking thread.
    pool.resize(0);
    let a = pool.submit_blocking(uses_the_runtime).await.unwrap();
    let b = pool.submit_blocking(uses_the_runtime).await.unwrap();
    pool.resize(1);
    assert_eq!(within("a", a).await, Ok(12));
    assert_eq!(within("b", b).await, Ok(12));
    within("shutdown", pool.shutdown()).await;
    assert_accounted(&pool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_can_use_the_runtime_on_a_multi_thread_runtime() {
    let pool = pool(2, 16);
    let mut handles = Vec::new();
    for _ in 0..10 {
        handles.push(pool.submit_blocking(uses_the_runtime).await.unwrap());
    }
    for h in handles {
        assert_eq!(within("result", h).await, Ok(12));
    }
    within("shutdown", pool.shutdown()).await;
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// 10. Shutdown while a worker lingers on its thread.
// ---------------------------------------------------------------------------

/// Right after a closure's handle resolves, its worker lingers on the blocking
/// thread waiting for a next job: shutting down then must not hang.
#[tokio::test]
async fn shutdown_right_after_a_closure_does_not_hang_current_thread() {
    for round in 0..20 {
        let pool = pool(2, 16);
        let a = pool.submit_blocking(move || round).await.unwrap();
        let b = pool.submit_blocking(move || round + 1).await.unwrap();
        assert_eq!(within("a", a).await, Ok(round));
        assert_eq!(within("b", b).await, Ok(round + 1));
        within("shutdown", pool.shutdown()).await;
        assert_accounted(&pool);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_right_after_a_closure_does_not_hang_multi_thread() {
    for round in 0..20 {
        let pool = pool(2, 16);
        let a = pool.submit_blocking(move || round).await.unwrap();
        assert_eq!(within("a", a).await, Ok(round));
        within("shutdown", pool.shutdown()).await;
        assert_accounted(&pool);
    }
}

/// Closed while a closure runs: the closure finishes, the worker on its thread
/// finds the pool closed and empty, and shutdown returns.
#[tokio::test]
async fn close_while_a_closure_runs_then_shutdown_returns() {
    let pool = pool(1, 16);
    let (f, mut gate) = gated(1);
    let a = pool.submit_blocking(f).await.unwrap();
    let b = pool.submit_blocking(|| 2).await.unwrap();
    gate.started().await;
    pool.close();
    assert!(pool.submit_blocking(|| 3).await.is_err());
    let shutdown = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown().await }
    });
    settle().await;
    let early = shutdown.is_finished();
    gate.release();
    assert!(!early, "shutdown returned before the closure did");
    within("shutdown", shutdown).await.unwrap();
    assert_eq!(within("a", a).await, Ok(1));
    assert_eq!(within("b", b).await, Ok(2));
    let s = pool.stats();
    assert_eq!(s.completed, 2, "{s:?}");
    assert_accounted(&pool);
}

/// Dropping every `Pool` handle while a worker lingers on its thread: the
/// closures' handles still resolve (the pool closes; accepted jobs run).
#[tokio::test]
async fn dropping_the_pool_while_a_worker_lingers_lets_jobs_finish() {
    let pool = pool(1, 16);
    let a = pool.submit_blocking(|| 1).await.unwrap();
    let b = pool.submit_blocking(|| 2).await.unwrap();
    drop(pool);
    assert_eq!(within("a", a).await, Ok(1));
    assert_eq!(within("b", b).await, Ok(2));
}

/// A closure whose run timeout fires while it waits for a blocking thread never
/// runs: its caller was told `TimedOut`, and a retry must not meet a late run.
#[test]
fn a_closure_timed_out_before_its_thread_came_never_runs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .max_blocking_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        // Hold Tokio's only blocking thread, so the worker's move to one waits.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let holder = tokio::task::spawn_blocking(move || {
            let _ = hold_rx.recv();
        });
        let pool = Pool::builder()
            .workers(1)
            .job_timeout(Duration::from_millis(10))
            .build()
            .unwrap();
        let ran = flag();
        let seen = ran.clone();
        let h = pool
            .submit_blocking(move || seen.store(true, Ordering::SeqCst))
            .await
            .unwrap();
        settle().await;
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(h.await, Err(JobError::TimedOut));
        hold_tx.send(()).unwrap();
        holder.await.unwrap();
        pool.shutdown().await;
        assert!(
            !ran.load(Ordering::SeqCst),
            "the closure ran after its timeout"
        );
        let s = pool.stats();
        assert_eq!((s.timed_out, s.completed, s.busy), (1, 0, 0));
    });
}

/// An output whose `Drop` checks, from another thread, whether the pool's lock
/// is free: a `stats()` that cannot finish within a second means the output
/// is being dropped with the lock held.
struct ChecksTheLock {
    pool: Pool,
    under_lock: Arc<AtomicBool>,
}

impl Drop for ChecksTheLock {
    fn drop(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let pool = self.pool.clone();
        std::thread::spawn(move || {
            let _ = pool.stats();
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(1)).is_err() {
            self.under_lock.store(true, Ordering::SeqCst);
        }
    }
}

/// A finished closure's output whose handle is dropped unread is dropped with
/// the handle, never by the worker clearing its slot under the pool lock (the
/// slot holds the closure's cell weakly, for abort).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_output_is_never_dropped_under_the_pool_lock() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let under_lock = Arc::new(AtomicBool::new(false));
    for _ in 0..20 {
        let (p, flag) = (pool.clone(), under_lock.clone());
        let h = pool
            .submit_blocking(move || ChecksTheLock {
                pool: p,
                under_lock: flag,
            })
            .await
            .ok()
            .unwrap();
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        drop(h);
        // The next job makes the worker clear its slot.
        assert_eq!(pool.run(async { 1 }).await, Ok(1));
    }
    assert!(
        !under_lock.load(Ordering::SeqCst),
        "an output was dropped with the pool lock held"
    );
}
