//! Waking waiting submitters (issue 10): a submitter waiting for queue space must
//! never miss a place that frees. A freed place is granted to the oldest waiter
//! that can use it: a waiter whose key queue is full is passed over (and keeps its
//! turn for its key), a waiter that leaves holding a grant (timed out, dropped,
//! aborted) passes it on, and every front end that waits for space (`submit`,
//! `submit_timeout`, `Group::submit`, `map_pooled`, the tower service) is admitted
//! at once, without waiting for a later event or a timeout.
//!
//! Every test runs on a paused clock (except the one multi-thread race test, which
//! uses no timers) and checks admission right after the event that frees the
//! place: the submit has resolved `Ok` and `Stats::queued` counts its job.

mod support;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::{StreamExt, poll};
use support::*;
use taskgate::{JobBuilder, JobError, JobHandle, KeyLimits, Pool, PoolStreamExt, TrySubmitError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// A pool with `workers` workers, `capacity` queue places, and `key_capacity`
/// queue places per key.
fn keyed_pool(workers: usize, capacity: usize, key_capacity: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .queue_capacity(capacity)
        .key_limits(KeyLimits::default().queue_capacity(key_capacity))
        .build()
        .unwrap()
}

/// Why a waiting submit gave its job back.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Closed,
    Timeout,
}

type Admission<T> = Result<JobHandle<T>, Refused>;

/// Spawns a submitter of `fut` (tagged `key`, waiting at most `wait` if given)
/// and lets it run until it waits or is done, so that submitters spawned one
/// after another wait in that order.
async fn waiter<F>(
    pool: &Pool,
    key: Option<&'static str>,
    wait: Option<Duration>,
    fut: F,
) -> JoinHandle<Admission<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let p = pool.clone();
    let w = tokio::spawn(async move {
        let mut job = p.job(fut);
        if let Some(k) = key {
            job = job.key(k);
        }
        let r = match wait {
            Some(d) => job.submit_timeout(d).await,
            None => job.submit().await,
        };
        r.map_err(|e| {
            if e.is_timeout() {
                Refused::Timeout
            } else {
                Refused::Closed
            }
        })
    });
    settle().await;
    w
}

/// The waiter has been admitted: its submit returned a handle. Never awaits a
/// task that is not finished (that would let the paused clock run on).
async fn admitted<T>(w: JoinHandle<Admission<T>>, what: &str) -> JobHandle<T> {
    assert!(w.is_finished(), "{what}: must be admitted at once");
    match w.await.unwrap() {
        Ok(h) => h,
        Err(e) => panic!("{what}: must be admitted, was refused: {e:?}"),
    }
}

/// A job that runs until `tx` is sent (or dropped).
fn gated() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// A job that sleeps `d` from when it starts (a bare `tokio::time::sleep(d)`
/// would count from its creation).
async fn sleep_job(d: Duration) {
    tokio::time::sleep(d).await
}

/// `(busy, queued)` of the pool.
fn load(pool: &Pool) -> (usize, usize) {
    let s = pool.stats();
    (s.busy, s.queued)
}

// ---------------------------------------------------------------------------
// The shapes of issue 10
// ---------------------------------------------------------------------------

/// Issue 10, shape A: a keyed waiter (its key queue full) waits ahead of an
/// unkeyed waiter; when the running job ends a pool place frees, at the instant
/// the keyed waiter's wait runs out. The unkeyed waiter must get the place at once
/// (not time out 4 ms later), and only the keyed waiter counts as rejected. Key
/// "c" is paused so that the freed place is one only the unkeyed waiter can use
/// (the worker takes the unkeyed job, not c1).
#[tokio::test(start_paused = true)]
async fn issue_shape_a_unkeyed_waiter_gets_the_place_a_full_key_cannot_use() {
    let pool = keyed_pool(1, 2, 1);
    pool.pause_key_for("c", HOUR);
    let _u1 = pool.submit(sleep_job(MS)).await.unwrap();
    let _u2 = pool.submit(sleep_job(HOUR)).await.unwrap();
    let _c1 = pool.job(sleep_job(MS)).key("c").submit().await.unwrap();
    settle().await;
    assert_eq!(load(&pool), (1, 2));
    let c2 = waiter(&pool, Some("c"), Some(MS), async {}).await;
    let u = waiter(&pool, None, Some(5 * MS), async { 7 }).await;
    assert!(!c2.is_finished() && !u.is_finished(), "the queue is full");

    advance(MS).await;
    settle().await;
    let h = admitted(u, "the unkeyed waiter, when u1 ends").await;
    assert!(c2.is_finished(), "c2's wait has run out");
    assert_eq!(c2.await.unwrap().err(), Some(Refused::Timeout));
    let s = pool.stats();
    assert_eq!((s.busy, s.queued), (1, 2), "u2 runs; c1 and u's job queued");
    assert_eq!(
        s.rejected, 1,
        "only the keyed timeout is a rejection: {s:?}"
    );
    assert_eq!(s.submitted, 4);
    drop(h);
}

/// Issue 10, shape A as first reported, every job taking 1 ms and no pause: at
/// 1 ms the worker may take c1, and the place it frees may go to the older keyed
/// waiter c2 (or c2 times out at that instant and the place passes to the unkeyed
/// waiter). Either way the unkeyed waiter is admitted as soon as a place it can
/// use frees (by 2 ms), never times out, and `rejected` counts only a keyed
/// timeout.
#[tokio::test(start_paused = true)]
async fn issue_shape_a_as_reported_the_unkeyed_waiter_never_times_out() {
    let pool = keyed_pool(1, 2, 1);
    let _u1 = pool.submit(sleep_job(MS)).await.unwrap();
    let _u2 = pool.submit(sleep_job(MS)).await.unwrap();
    let _c1 = pool.job(sleep_job(MS)).key("c").submit().await.unwrap();
    settle().await;
    assert_eq!(load(&pool), (1, 2));
    let c2 = waiter(&pool, Some("c"), Some(MS), sleep_job(MS)).await;
    let u = waiter(&pool, None, Some(5 * MS), async { 7 }).await;
    assert!(!c2.is_finished() && !u.is_finished(), "the queue is full");

    advance(MS).await;
    settle().await;
    assert!(
        c2.is_finished(),
        "c2 is admitted or its wait runs out at 1 ms"
    );
    let c2 = c2.await.unwrap();
    let keyed_timeouts = u64::from(c2.is_err());
    let s = pool.stats();
    assert_eq!(s.rejected, keyed_timeouts, "{c2:?} {s:?}");
    if c2.is_err() {
        // The place c2 gave up (or never took) is the unkeyed waiter's.
        assert!(u.is_finished(), "u must get the place c2 did not take");
    } else if !u.is_finished() {
        // c2 took the place that freed; the next one is u's.
        assert_eq!((s.busy, s.queued), (1, 2), "{s:?}");
        advance(MS).await;
        settle().await;
    }
    let h = admitted(u, "the unkeyed waiter").await;
    let s = pool.stats();
    assert_eq!(s.rejected, keyed_timeouts, "{s:?}");
    assert_eq!(s.submitted, 4 + 1 - keyed_timeouts);
    drop((h, c2));
}

/// Issue 10, shape B: a key-"c" waiter (key queue full) waits ahead of an unkeyed
/// `submit_timeout`; cancelling the queued unkeyed job frees a place, which the
/// unkeyed waiter must get at once, with no time passing. The keyed waiter then
/// gets its place when its key's queued job is cancelled.
#[tokio::test(start_paused = true)]
async fn issue_shape_b_a_cancelled_job_frees_a_place_for_the_unkeyed_waiter_at_once() {
    let pool = keyed_pool(1, 2, 1);
    let (running, _dropped) = pending_job();
    let _r = pool.submit(running).await.unwrap();
    settle().await;
    let u1 = pool.submit(async {}).await.unwrap();
    let c1 = pool.job(async {}).key("c").submit().await.unwrap();
    assert_eq!(load(&pool), (1, 2));
    let c2 = waiter(&pool, Some("c"), None, async { "c2" }).await;
    let u = waiter(&pool, None, Some(5 * MS), async { "u" }).await;
    assert!(!c2.is_finished() && !u.is_finished(), "the queue is full");

    let t0 = tokio::time::Instant::now();
    drop(u1);
    settle().await;
    let hu = admitted(u, "the unkeyed waiter, when u1 is cancelled").await;
    assert_eq!(tokio::time::Instant::now(), t0, "no time passed");
    assert!(!c2.is_finished(), "key c's queue is still full");
    assert_eq!(load(&pool), (1, 2), "c1 and u's job queued");

    drop(c1);
    settle().await;
    let hc = admitted(c2, "the key-c waiter, when c1 is cancelled").await;
    assert_eq!(load(&pool), (1, 2), "u's and c2's jobs queued");
    let s = pool.stats();
    assert_eq!((s.rejected, s.cancelled, s.submitted), (0, 2, 5), "{s:?}");
    drop((hu, hc));
}

// ---------------------------------------------------------------------------
// Keyed waiters whose key is full do not hold a place
// ---------------------------------------------------------------------------

/// Three keys with full key queues and a waiter each wait ahead of an unkeyed
/// waiter. A pool place freed by a cancel goes to the unkeyed waiter (the keyed
/// ones cannot use it); each keyed waiter then gets the place its own key frees,
/// and only it.
#[tokio::test(start_paused = true)]
async fn waiters_of_full_keys_ahead_do_not_keep_a_cancelled_place_from_an_unkeyed_waiter() {
    let pool = keyed_pool(1, 4, 1);
    let (running, _dropped) = pending_job();
    let _r = pool.submit(running).await.unwrap();
    settle().await;
    let a1 = pool.job(async {}).key("a").submit().await.unwrap();
    let b1 = pool.job(async {}).key("b").submit().await.unwrap();
    let c1 = pool.job(async {}).key("c").submit().await.unwrap();
    let u1 = pool.submit(async {}).await.unwrap();
    assert_eq!(load(&pool), (1, 4));
    let wa = waiter(&pool, Some("a"), None, async {}).await;
    let wb = waiter(&pool, Some("b"), None, async {}).await;
    let wc = waiter(&pool, Some("c"), None, async {}).await;
    let wu = waiter(&pool, None, None, async {}).await;

    drop(u1);
    settle().await;
    let _hu = admitted(wu, "the unkeyed waiter").await;
    assert!(!wa.is_finished() && !wb.is_finished() && !wc.is_finished());
    assert_eq!(load(&pool), (1, 4));

    drop(a1);
    settle().await;
    let _ha = admitted(wa, "key a's waiter, when a1 is cancelled").await;
    assert!(!wb.is_finished() && !wc.is_finished());
    assert_eq!(load(&pool), (1, 4));

    drop(c1);
    settle().await;
    let _hc = admitted(wc, "key c's waiter, when c1 is cancelled").await;
    assert!(!wb.is_finished());
    assert_eq!(load(&pool), (1, 4));

    drop(b1);
    settle().await;
    let _hb = admitted(wb, "key b's waiter, when b1 is cancelled").await;
    assert_eq!(load(&pool), (1, 4));
    assert_eq!(pool.stats().rejected, 0);
}

/// As above, but the place frees because the running job ends and the worker
/// takes the queued unkeyed job (the keys are paused, so their jobs stay queued).
#[tokio::test(start_paused = true)]
async fn waiters_of_full_keys_ahead_do_not_keep_a_finished_jobs_place_from_an_unkeyed_waiter() {
    let pool = keyed_pool(1, 4, 1);
    for k in ["a", "b", "c"] {
        pool.pause_key_for(k, HOUR);
    }
    let (release, running) = gated();
    let r = pool.submit(running).await.unwrap();
    settle().await;
    let a1 = pool.job(async {}).key("a").submit().await.unwrap();
    let _b1 = pool.job(async {}).key("b").submit().await.unwrap();
    let _c1 = pool.job(async {}).key("c").submit().await.unwrap();
    let (release_u1, u1_job) = gated();
    let _u1 = pool.submit(u1_job).await.unwrap();
    assert_eq!(load(&pool), (1, 4));
    let wa = waiter(&pool, Some("a"), None, async {}).await;
    let wb = waiter(&pool, Some("b"), None, async {}).await;
    let wc = waiter(&pool, Some("c"), None, async {}).await;
    let wu = waiter(&pool, None, None, async {}).await;

    release.send(()).unwrap();
    settle().await;
    assert_eq!(r.await, Ok(()));
    let _hu = admitted(wu, "the unkeyed waiter, when r ends").await;
    assert!(!wa.is_finished() && !wb.is_finished() && !wc.is_finished());
    assert_eq!(
        load(&pool),
        (1, 4),
        "u1 runs; a1, b1, c1 and wu's job queued"
    );

    drop(a1);
    settle().await;
    let _ha = admitted(wa, "key a's waiter, when a1 is cancelled").await;
    assert!(!wb.is_finished() && !wc.is_finished());
    assert_eq!(load(&pool), (1, 4));
    drop(release_u1);
}

// ---------------------------------------------------------------------------
// Every event that frees a place wakes a waiter
// ---------------------------------------------------------------------------

/// A queued job whose queue timeout expires frees its place in the pool's queue
/// (unkeyed) or in its key's queue (keyed): the waiter behind it is admitted at
/// that instant.
#[tokio::test(start_paused = true)]
async fn a_queued_job_that_times_out_frees_its_place_for_a_waiter() {
    for key in [None, Some("c")] {
        let pool = match key {
            None => keyed_pool(1, 1, 1),
            Some(_) => keyed_pool(1, 100, 1),
        };
        let (running, _dropped) = pending_job();
        let _r = pool.submit(running).await.unwrap();
        settle().await;
        let mut q = pool.job(async {}).queue_timeout(MS);
        if let Some(k) = key {
            q = q.key(k);
        }
        let q = q.submit().await.unwrap();
        let w = waiter(&pool, key, None, async { 1 }).await;
        assert!(!w.is_finished(), "{key:?}");

        advance(MS).await;
        settle().await;
        assert_eq!(q.await, Err(JobError::QueueTimedOut));
        let h = admitted(w, &format!("{key:?}: the waiter, when q timed out")).await;
        assert_eq!(load(&pool), (1, 1), "{key:?}: w's job queued");
        assert_eq!(pool.stats().queue_timed_out, 1);
        drop(h);
    }
}

/// A running job's run timeout frees its worker, which takes the queued job,
/// freeing a place for the waiter at that instant.
#[tokio::test(start_paused = true)]
async fn a_run_timeout_frees_a_place_for_a_waiter() {
    let pool = keyed_pool(1, 1, 1);
    let (running, _dropped) = pending_job();
    let r = pool.job(running).timeout(MS).submit().await.unwrap();
    settle().await;
    let _q = pool.submit(sleep_job(HOUR)).await.unwrap();
    let w = waiter(&pool, None, None, async { 1 }).await;
    assert!(!w.is_finished());

    advance(MS).await;
    settle().await;
    assert_eq!(r.await, Err(JobError::TimedOut));
    let _h = admitted(w, "the waiter, when r timed out").await;
    assert_eq!(load(&pool), (1, 1), "q runs, w's job queued");
}

/// Growing the pool makes room at once: each waiter that a new worker makes room
/// for is admitted, oldest first.
#[tokio::test(start_paused = true)]
async fn growing_the_pool_admits_waiters_at_once() {
    let pool = keyed_pool(1, 1, 1);
    let (running, _dropped) = pending_job();
    let _r = pool.submit(running).await.unwrap();
    settle().await;
    let _q = pool.submit(sleep_job(HOUR)).await.unwrap();
    let w1 = waiter(&pool, None, None, sleep_job(HOUR)).await;
    let w2 = waiter(&pool, None, None, sleep_job(HOUR)).await;
    let w3 = waiter(&pool, None, None, sleep_job(HOUR)).await;

    pool.resize(3);
    settle().await;
    let _h1 = admitted(w1, "w1, when the pool grew").await;
    let _h2 = admitted(w2, "w2, when the pool grew").await;
    assert!(!w3.is_finished(), "two workers added, two places");
    assert_eq!(load(&pool), (3, 1), "r, q and w1's job run; w2's queued");
}

/// With no queue (`queue_capacity(0)`, a rendezvous), a submitter waits for a
/// free worker; growing the pool must admit it at once, though no queued job
/// makes a worker look for work.
#[tokio::test(start_paused = true)]
async fn growing_a_rendezvous_pool_admits_its_waiter_at_once() {
    let pool = keyed_pool(1, 0, 1);
    let (running, _dropped) = pending_job();
    let _r = pool.submit(running).await.unwrap();
    settle().await;
    assert_eq!(load(&pool), (1, 0));
    let w = waiter(&pool, None, None, sleep_job(HOUR)).await;
    assert!(!w.is_finished(), "no worker is free");

    pool.resize(2);
    settle().await;
    let _h = admitted(w, "the waiter, when the pool grew").await;
    assert_eq!(load(&pool), (2, 0), "its job runs on the new worker");
}

/// Raising a key's queue capacity, or clearing a lower override, admits the
/// key's waiters at once.
#[tokio::test(start_paused = true)]
async fn raising_or_clearing_a_key_limit_admits_its_waiters_at_once() {
    let pool = keyed_pool(1, 100, 2);
    pool.set_key_limits("c", KeyLimits::default().queue_capacity(1))
        .unwrap();
    let (running, _dropped) = pending_job();
    let _r = pool.submit(running).await.unwrap();
    settle().await;
    let _c1 = pool.job(async {}).key("c").submit().await.unwrap();
    let w1 = waiter(&pool, Some("c"), None, async { 1 }).await;
    let w2 = waiter(&pool, Some("c"), None, async { 2 }).await;
    let w3 = waiter(&pool, Some("c"), None, async { 3 }).await;
    assert!(!w1.is_finished());

    // Back to the default of 2: one more place for key c.
    pool.clear_key_limits("c");
    settle().await;
    let _h1 = admitted(w1, "w1, when key c's override was cleared").await;
    assert!(!w2.is_finished());
    assert_eq!(load(&pool), (1, 2));

    pool.set_key_limits("c", KeyLimits::default().queue_capacity(4))
        .unwrap();
    settle().await;
    let _h2 = admitted(w2, "w2, when key c's capacity was raised").await;
    let _h3 = admitted(w3, "w3, when key c's capacity was raised").await;
    assert_eq!(load(&pool), (1, 4));
    assert_eq!(pool.stats().rejected, 0);
}

// ---------------------------------------------------------------------------
// A wait that runs out as the place frees; a waiter dropped holding a grant
// ---------------------------------------------------------------------------

/// The running job ends (freeing a place) at the very instant the first waiter's
/// `submit_timeout` runs out. Either outcome is fine, but exactly one: the first
/// waiter is admitted, or it times out and the place goes to the waiter behind it.
/// Nothing is stranded: afterwards the queue is full, so `try_submit` is refused
/// while a waiter still waits. Run with the running job's timer registered before
/// and after the waiter's, so both orders of the two wakeups are tried (with the
/// locked tokio, one order admits the first waiter, the other times it out).
#[tokio::test(start_paused = true)]
async fn a_wait_that_runs_out_as_the_place_frees_admits_exactly_one_waiter() {
    const D: Duration = Duration::from_millis(5);
    for timer_first in [true, false] {
        let pool = keyed_pool(1, 1, 1);
        let t0 = tokio::time::Instant::now();
        // The running job sleeps until t0 + D, from a timer set before or after
        // the first waiter's own (it starts sleeping when `go` is sent).
        let (go, started) = oneshot::channel::<()>();
        let r = pool
            .submit(async move {
                let _ = started.await;
                tokio::time::sleep_until(t0 + D).await;
            })
            .await
            .unwrap();
        settle().await;
        let q = pool.submit(sleep_job(HOUR)).await.unwrap();
        assert_eq!(load(&pool), (1, 1));
        let mut go = Some(go);
        if timer_first {
            go.take().unwrap().send(()).unwrap();
            settle().await;
        }
        let w1 = waiter(&pool, None, Some(D), async { 1 }).await;
        let w2 = waiter(&pool, None, None, async { 2 }).await;
        if let Some(go) = go {
            go.send(()).unwrap();
            settle().await;
        }
        assert!(!w1.is_finished() && !w2.is_finished());

        advance(D).await;
        settle().await;
        assert!(r.is_finished(), "the running job ended at t0 + D");
        assert!(w1.is_finished(), "w1 is admitted or times out at t0 + D");
        let s = pool.stats();
        assert_eq!(
            (s.busy, s.queued),
            (1, 1),
            "q runs, one waiter's job queued"
        );
        let handles = match w1.await.unwrap() {
            Ok(h1) => {
                assert_eq!(s.rejected, 0, "{s:?}");
                assert!(!w2.is_finished(), "w1 took the only place");
                vec![h1]
            }
            Err(e) => {
                assert_eq!(e, Refused::Timeout);
                assert_eq!(s.rejected, 1, "{s:?}");
                vec![admitted(w2, "w2, when w1 timed out").await]
            }
        };
        // Nothing stranded: a place a waiter could use would be taken by it.
        match pool.try_submit(async { 0 }) {
            Err(TrySubmitError::Full(_)) => {}
            other => panic!("the queue must be full, got {:?}", other.map(|_| ())),
        }
        drop((handles, q));
    }
}

/// A pool with one worker, busy with a job that never ends, and its one place
/// taken by a queued job `q` (of `key`, whose queue it then fills: key queues
/// hold one job). Freeing a place means dropping `q`.
async fn one_place_taken(key: Option<&'static str>) -> (Pool, JobHandle<()>, JobHandle<()>) {
    let pool = match key {
        None => keyed_pool(1, 1, 1),
        Some(_) => keyed_pool(1, 100, 1),
    };
    let (running, _dropped) = pending_job();
    let r = pool.submit(running).await.unwrap();
    settle().await;
    let q = with_key(pool.job(async {}), key).submit().await.unwrap();
    (pool, r, q)
}

/// The first of two waiters is granted a freed place and dropped before it runs
/// again to use it (its submit future is polled by hand): the grant passes to the
/// second waiter, which is admitted. For unkeyed waiters (a pool place) and keyed
/// ones (a key-queue place).
#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_after_its_grant_passes_the_place_on() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        assert_eq!(load(&pool), (1, 1));
        let (flag, w1_job_dropped) = drop_flag();
        let mut j1 = pool.job(async move {
            let _f = flag;
            1
        });
        let mut j2 = pool.job(async { 2 });
        if let Some(k) = key {
            j1 = j1.key(k);
            j2 = j2.key(k);
        }
        let mut w1 = Box::pin(j1.submit());
        let mut w2 = pin!(j2.submit());
        assert!(poll!(&mut w1).is_pending(), "w1 waits");
        assert!(poll!(&mut w2).is_pending(), "w2 waits");

        drop(q);
        assert_eq!(load(&pool), (1, 0), "q cancelled");
        // w1 was woken to use its place; it is dropped instead.
        drop(w1);
        assert!(w1_job_dropped.load(std::sync::atomic::Ordering::SeqCst));
        match poll!(&mut w2) {
            Poll::Ready(Ok(h)) => {
                assert_eq!(load(&pool), (1, 1), "{key:?}: w2's job queued");
                drop(h);
            }
            Poll::Ready(Err(e)) => panic!("{key:?}: w2 refused: {e:?}"),
            Poll::Pending => panic!("{key:?}: w2 must get the place w1 gave back"),
        }
    }
}

/// A grant does not hold an idle pool back: while the first of two waiters is
/// granted a place but not yet polled (a stream's pending submission while its
/// consumer is busy, say), a `try_submit` takes the place, and the grant goes
/// back. The waiter stays first in line: the next place is its, not the second
/// waiter's. For unkeyed waiters (a pool place) and keyed ones (a key place).
#[tokio::test(start_paused = true)]
async fn a_grant_not_yet_used_gives_way_to_a_submit_and_keeps_its_turn() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        let mut w1 = pin!(with_key(pool.job(async { 1 }), key).submit());
        let mut w2 = pin!(with_key(pool.job(async { 2 }), key).submit());
        assert!(poll!(&mut w1).is_pending(), "w1 waits");
        assert!(poll!(&mut w2).is_pending(), "w2 waits");

        drop(q);
        // The place is granted to w1, which has not run yet: a submit that does
        // not wait takes it.
        let probe = with_key(pool.job(async { 0 }), key).try_submit();
        let probe = probe.unwrap_or_else(|_| panic!("{key:?}: an unused grant held the place"));
        assert_eq!(load(&pool), (1, 1));
        assert!(poll!(&mut w1).is_pending(), "{key:?}: w1's place was taken");
        assert!(poll!(&mut w2).is_pending(), "{key:?}: w2 waits behind w1");

        // The next place is w1's.
        drop(probe);
        let _h1 = match poll!(&mut w1) {
            Poll::Ready(Ok(h)) => h,
            other => panic!(
                "{key:?}: w1 keeps its turn, got {:?}",
                other.map(|r| r.map(|_| ()))
            ),
        };
        assert!(poll!(&mut w2).is_pending(), "{key:?}: w2 still waits");
    }
}

/// `b`, with `key` if there is one.
fn with_key<'a, F>(b: JobBuilder<'a, F>, key: Option<&'static str>) -> JobBuilder<'a, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match key {
        Some(k) => b.key(k),
        None => b,
    }
}

/// As above with spawned waiters: the first is woken by its grant and aborted
/// before it runs. The second is admitted, with no time passing.
#[tokio::test(start_paused = true)]
async fn an_aborted_waiter_task_passes_its_grant_on() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        let w1 = waiter(&pool, key, None, async { 1 }).await;
        let w2 = waiter(&pool, key, Some(5 * MS), async { 2 }).await;
        assert!(!w1.is_finished() && !w2.is_finished());

        // The grant wakes w1; it is aborted before it can run.
        drop(q);
        w1.abort();
        settle().await;
        assert!(w1.await.unwrap_err().is_cancelled());
        let h2 = admitted(w2, "w2, when w1 was aborted holding the place").await;
        assert_eq!(load(&pool), (1, 1), "{key:?}: w2's job queued");
        assert_eq!(pool.stats().rejected, 0);
        drop(h2);
    }
}

/// A waiter granted a place can still be refused when it comes to use it: here
/// key "c"'s queue capacity shrinks between the grant and the waiter's push. The
/// place it could not use must pass to the unkeyed waiter behind it, at once.
#[tokio::test(start_paused = true)]
async fn a_waiter_refused_when_it_comes_to_use_its_grant_passes_the_place_on() {
    let (pool, _r, _c1, q) = key_c_and_pool_full().await;
    assert_eq!(load(&pool), (1, 2));
    let wc = waiter(&pool, Some("c"), None, async { "c" }).await;
    let wu = waiter(&pool, None, None, async { "u" }).await;
    assert!(!wc.is_finished() && !wu.is_finished());

    // The place goes to wc (key c has room for a second job), which is woken;
    // before it runs, key c's queue shrinks to the one job it holds.
    drop(q);
    pool.set_key_limits("c", KeyLimits::default().queue_capacity(1))
        .unwrap();
    settle().await;
    let hu = admitted(wu, "the unkeyed waiter, when wc could not use its place").await;
    assert!(!wc.is_finished(), "key c's queue is full again");
    assert_eq!(load(&pool), (1, 2), "c1 and wu's job queued");
    assert_eq!(pool.stats().rejected, 0);
    drop(hu);
}

/// The same race on a multi-thread runtime, for real: the place frees on one
/// thread while the first waiter is aborted on another. Whatever the order, the
/// place is not lost: either the first waiter was admitted (and its task's output
/// holds its handle), or the second waiter is. No tokio timers are used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_aborted_while_a_place_frees_on_another_thread_strands_nothing() {
    /// Yields until `done()`; false if it is not done within 10 s of real time.
    ///
    /// This used to give up after 100 000 yields, about 5 ms in release mode. On
    /// a 2-core machine running 4 runtime workers, the test thread and the test
    /// harness, the woken waiter was measured to wait 3 to 5 ms (an OS time
    /// slice) for the worker thread it was queued on, with nothing lost: the
    /// test failed about one run in three in release mode. Ten seconds only
    /// bounds a real loss; nothing waits for time to pass.
    async fn until(mut done: impl FnMut() -> bool) -> bool {
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < give_up {
            if done() {
                return true;
            }
            tokio::task::yield_now().await;
        }
        done()
    }
    for i in 0..200 {
        let pool = keyed_pool(1, 1, 1);
        let (running, _dropped) = pending_job();
        let _r = pool.submit(running).await.unwrap();
        assert!(until(|| pool.stats().busy == 1).await);
        let q = pool.submit(async {}).await.unwrap();
        let p = pool.clone();
        let w1 = tokio::spawn(async move { p.submit(async { 1 }).await.map_err(|_| ()) });
        let p = pool.clone();
        let w2 = tokio::spawn(async move { p.submit(async { 2 }).await.map_err(|_| ()) });
        // Let both register (their order does not matter here).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let freer = tokio::spawn(async move { drop(q) });
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
        w1.abort();
        freer.await.unwrap();
        assert!(until(|| w1.is_finished()).await, "iteration {i}: w1 ends");
        let held = match w1.await {
            Ok(r) => Some(r.expect("admitted")),
            Err(e) => {
                assert!(e.is_cancelled());
                None
            }
        };
        match held {
            // w1 was admitted before the abort: it holds the only place.
            Some(_) => {
                assert!(
                    matches!(pool.try_submit(async { 0 }), Err(TrySubmitError::Full(_))),
                    "iteration {i}: w1's job holds the place: {:?}",
                    pool.stats()
                );
                w2.abort();
            }
            // w1 went away without its place: w2 must get it.
            None => {
                assert!(
                    until(|| w2.is_finished()).await,
                    "iteration {i}: the freed place must not be lost: {:?}",
                    pool.stats()
                );
                let h2 = w2.await.unwrap().expect("w2 admitted");
                assert_eq!(pool.stats().queued, 1, "iteration {i}");
                drop(h2);
            }
        }
        pool.abort();
        drop(held);
    }
}

// ---------------------------------------------------------------------------
// Every front end that waits for space is woken
// ---------------------------------------------------------------------------

/// A pool with one worker, a queue of 2 and key queues of 1: one unkeyed job runs
/// until `release`, one key-"c" job and one unkeyed job are queued (the pool's
/// queue is full), and a key-"c" waiter waits (key c's queue is full too).
struct FullPool {
    pool: Pool,
    release: oneshot::Sender<()>,
    c1: JobHandle<()>,
    u1: JobHandle<()>,
    keyed: JoinHandle<Admission<&'static str>>,
}

async fn full_pool() -> FullPool {
    let pool = keyed_pool(1, 2, 1);
    let (release, running) = gated();
    pool.submit(running).await.unwrap().detach();
    settle().await;
    let c1 = pool.job(async {}).key("c").submit().await.unwrap();
    let u1 = pool.submit(async {}).await.unwrap();
    let keyed = waiter(&pool, Some("c"), None, async { "c2" }).await;
    assert!(!keyed.is_finished());
    assert_eq!(load(&pool), (1, 2));
    FullPool {
        pool,
        release,
        c1,
        u1,
        keyed,
    }
}

impl FullPool {
    /// Frees one pool place (cancels u1) and checks that the front end's job is
    /// admitted at once while the keyed waiter waits on; then lets everything run
    /// and checks that the keyed waiter is admitted too.
    async fn free_one_place_and_check(self, front_end: &str) {
        let FullPool {
            pool,
            release,
            c1,
            u1,
            keyed,
        } = self;
        let before = pool.stats();
        assert_eq!(before.submitted, 3, "{front_end} waits: {before:?}");
        drop(u1);
        settle().await;
        let s = pool.stats();
        assert_eq!(
            s.submitted, 4,
            "{front_end} must be admitted at once: {s:?}"
        );
        assert_eq!((s.busy, s.queued), (1, 2), "c1 and its job queued: {s:?}");
        assert!(!keyed.is_finished(), "key c's queue is still full");
        release.send(()).unwrap();
        c1.detach();
        settle().await;
        let h = admitted(keyed, "the keyed waiter, once c1 left the queue").await;
        assert_eq!(h.await, Ok("c2"));
    }
}

/// `map_pooled`'s waiting submission is woken by a freed place, though a keyed
/// waiter whose key is full waits ahead of it.
#[tokio::test(start_paused = true)]
async fn a_map_pooled_waiter_is_admitted_when_one_place_frees() {
    let full = full_pool().await;
    let p = full.pool.clone();
    let stream = tokio::spawn(async move {
        futures::stream::iter([6u32, 7])
            .map_pooled(&p, |n| async move { n * 7 })
            .collect::<Vec<_>>()
            .await
    });
    settle().await;
    assert!(!stream.is_finished());
    full.free_one_place_and_check("map_pooled").await;
    settle().await;
    assert!(stream.is_finished());
    assert_eq!(stream.await.unwrap(), [Ok(42), Ok(49)]);
}

/// `Group::submit` waiting for space is woken by a freed place, though a keyed
/// waiter whose key is full waits ahead of it.
#[tokio::test(start_paused = true)]
async fn a_group_submit_waiter_is_admitted_when_one_place_frees() {
    let full = full_pool().await;
    let mut group = full.pool.group::<u32>();
    let submitted = tokio::spawn(async move {
        group.submit(async { 42 }).await.map_err(|_| ()).unwrap();
        group
    });
    settle().await;
    assert!(!submitted.is_finished());
    full.free_one_place_and_check("Group::submit").await;
    assert!(submitted.is_finished());
    let group = submitted.await.unwrap();
    assert_eq!(group.join_all().await, [Ok::<_, JobError>(42)]);
}

/// A call through `PoolLayer` waiting for space is woken by a freed place, though
/// a keyed waiter whose key is full waits ahead of it.
#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn a_tower_call_waiter_is_admitted_when_one_place_frees() {
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};
    let full = full_pool().await;
    let svc = taskgate::tower::PoolLayer::new(full.pool.clone()).layer(tower::service_fn(
        |n: u32| async move { Ok::<_, Infallible>(n + 1) },
    ));
    let call = tokio::spawn(svc.oneshot(41));
    settle().await;
    assert!(!call.is_finished());
    full.free_one_place_and_check("the tower call").await;
    settle().await;
    assert!(call.is_finished());
    assert_eq!(call.await.unwrap().ok(), Some(42));
}

// ---------------------------------------------------------------------------
// Many waiters
// ---------------------------------------------------------------------------

/// 100 waiters of a paused key whose key queue is full, interleaved with 100
/// unkeyed waiters: unkeyed jobs keep flowing, each unkeyed waiter admitted the
/// moment a place frees (one per millisecond), while key "p"'s waiters wait; when
/// the pause ends, key "p"'s waiters are admitted too, in turn.
#[tokio::test(start_paused = true)]
async fn unkeyed_waiters_flow_past_many_waiters_of_a_paused_key() {
    const N: usize = 100;
    let pool = keyed_pool(1, 2, 1);
    pool.pause_key_for("p", HOUR);
    let _u0 = pool.submit(sleep_job(MS)).await.unwrap();
    settle().await;
    let _u1 = pool.submit(sleep_job(MS)).await.unwrap();
    let _p1 = pool.job(async {}).key("p").submit().await.unwrap();
    assert_eq!(load(&pool), (1, 2));
    let mut keyed = Vec::new();
    let mut unkeyed = Vec::new();
    for _ in 0..N {
        keyed.push(waiter(&pool, Some("p"), None, async {}).await);
        unkeyed.push(waiter(&pool, None, None, sleep_job(MS)).await);
    }
    assert!(keyed.iter().chain(&unkeyed).all(|w| !w.is_finished()));

    for k in 1..=N {
        advance(MS).await;
        settle().await;
        let n = unkeyed.iter().filter(|w| w.is_finished()).count();
        assert_eq!(n, k, "after {k} ms, {k} unkeyed waiters admitted");
        assert!(keyed.iter().all(|w| !w.is_finished()), "key p is paused");
        assert_eq!(load(&pool), (1, 2), "after {k} ms");
    }
    let mut handles = Vec::new();
    for (i, w) in unkeyed.into_iter().enumerate() {
        handles.push(admitted(w, &format!("unkeyed waiter {i}")).await);
    }
    for _ in 0..2 {
        advance(MS).await;
        settle().await;
    }
    for h in handles {
        assert!(h.is_finished());
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(load(&pool), (0, 1), "only p1 is left");

    advance(HOUR).await;
    for _ in 0..10 * N {
        if keyed.iter().all(JoinHandle::is_finished) {
            break;
        }
        settle().await;
    }
    for (i, w) in keyed.into_iter().enumerate() {
        let h = admitted(w, &format!("key p's waiter {i}, after the pause")).await;
        settle().await;
        assert_eq!(h.await, Ok(()));
    }
    let s = pool.stats();
    assert_eq!(s.completed, 3 + 2 * N as u64, "{s:?}");
    assert_eq!(s.rejected, 0);
    assert_accounted(&pool);
}

/// A `map_pooled` consumer that submits to the same pool from its loop body does
/// not hang: the stream's pending submission, granted a place while the consumer
/// is busy in the body (so not polled), must not keep that place from the body's
/// own `run`. (Found in review: with grants as hard reservations this hung.)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_map_pooled_consumer_can_submit_from_its_loop_body() {
    async fn sleep_job(d: Duration) {
        tokio::time::sleep(d).await
    }
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(0)
        .build()
        .unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Duration>();
    let p = pool.clone();
    let consumer = tokio::spawn(async move {
        let mut s = rx.map_pooled(&p, sleep_job).window(2);
        let mut n = 0;
        while let Some(r) = s.next().await {
            r.unwrap();
            // Some work between items, then a follow-up job on the same pool.
            tokio::time::sleep(20 * MS).await;
            let follow_up = tokio::time::timeout(Duration::from_secs(10), p.run(async {}));
            if follow_up.await.is_err() {
                return Err(n);
            }
            n += 1;
        }
        Ok(n)
    });
    tx.unbounded_send(10 * MS).unwrap(); // the first item: accepted, runs 10 ms
    settle().await;
    // Another submitter waits first (the worker is busy, there is no queue).
    let p2 = pool.clone();
    let r0 = tokio::spawn(async move { p2.submit(sleep_job(5 * MS)).await.map(|_| ()) });
    settle().await;
    tx.unbounded_send(10 * MS).unwrap(); // the second item: waits behind r0
    settle().await;
    drop(tx);
    let out = consumer.await.unwrap();
    assert!(r0.await.unwrap().is_ok());
    assert_eq!(
        out,
        Ok(2),
        "the consumer's follow-up run hung after {out:?} items"
    );
}

/// A grant taken back because its key's cap was lowered after it was made frees a
/// pool place, and that place goes to another waiter that can use it at once.
/// (Found in review: the place was left to no one until the next event.)
#[tokio::test(start_paused = true)]
async fn a_grant_taken_back_after_a_key_cap_was_lowered_goes_to_another_waiter() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(2)
        .build()
        .unwrap();
    let (running, _dropped) = pending_job();
    let _r = pool.submit(running).await.unwrap();
    settle().await;
    pool.set_key_limits("b", KeyLimits::default().queue_capacity(3))
        .unwrap();
    let q1 = pool.try_submit(async {}).unwrap_or_else(|_| panic!("room"));
    let q2 = pool.try_submit(async {}).unwrap_or_else(|_| panic!("room"));
    let mut wb1 = pin!(pool.job(async {}).key("b").submit());
    let mut wb2 = pin!(pool.job(async {}).key("b").submit());
    let mut wu = pin!(pool.job(async {}).submit());
    assert!(poll!(&mut wb1).is_pending());
    assert!(poll!(&mut wb2).is_pending());
    assert!(poll!(&mut wu).is_pending());
    // Two places free: granted to wb1 and wb2, the oldest.
    drop((q1, q2));
    // Key b may now queue one job only.
    pool.set_key_limits("b", KeyLimits::default().queue_capacity(1))
        .unwrap();
    let _hb1 = match poll!(&mut wb1) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("wb1 holds a grant"),
    };
    // wb2's grant went back (key b is full); its place fits the unkeyed waiter.
    assert!(poll!(&mut wb2).is_pending());
    match poll!(&mut wu) {
        Poll::Ready(r) => drop(r.unwrap()),
        Poll::Pending => panic!("stranded: {:?}", pool.stats()),
    }
}

// ---------------------------------------------------------------------------
// A waiter's turn, step by step (from an independent review of d209aa0, the
// waiter that pushes once per poll): grants taken back and given again before
// the waiter is polled, refusals by its key or a shrunk pool after a grant, a
// `submit_timeout` running out just then, spurious polls of a younger waiter,
// close, and a multi-thread churn of every front end with aborts. Futures are
// polled by hand with a waker that counts its wakes.
// ---------------------------------------------------------------------------

/// A waker that counts its wakes.
struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
/// A waker and its count of wakes.
fn counter() -> (Arc<Count>, Waker) {
    let c = Arc::new(Count(AtomicUsize::new(0)));
    (c.clone(), Waker::from(c))
}
/// Polls `f` once with `w`.
fn poll_with<F: Future>(f: Pin<&mut F>, w: &Waker) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(w))
}

/// Grant, revoke, re-grant, all before the waiter is polled again (the second
/// grant finds no waker): the waiter must be woken once and admitted.
#[tokio::test(start_paused = true)]
async fn grant_revoke_regrant_before_repoll() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        let (c1, k1) = counter();
        let (c2, k2) = counter();
        let mut w1 = pin!(with_key(pool.job(async { 1 }), key).submit());
        let mut w2 = pin!(with_key(pool.job(async { 2 }), key).submit());
        assert!(poll_with(w1.as_mut(), &k1).is_pending());
        assert!(poll_with(w2.as_mut(), &k2).is_pending());
        drop(q);
        assert_eq!(c1.0.load(Ordering::SeqCst), 1, "{key:?}: w1 woken by grant");
        let probe = with_key(pool.job(async { 0 }), key)
            .try_submit()
            .unwrap_or_else(|_| panic!("probe"));
        drop(probe); // place frees again: re-granted to w1 (no waker stored)
        assert_eq!(c2.0.load(Ordering::SeqCst), 0, "{key:?}: w2 not woken");
        let _h1 = match poll_with(w1.as_mut(), &k1) {
            Poll::Ready(Ok(h)) => h,
            _ => panic!("{key:?}: w1 must hold the re-grant"),
        };
        assert!(poll_with(w2.as_mut(), &k2).is_pending());
    }
}

/// Grant, revoke, spurious re-poll (stores waker), re-grant: woken again.
#[tokio::test(start_paused = true)]
async fn grant_revoke_repoll_regrant_wakes() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        let (c1, k1) = counter();
        let mut w1 = pin!(with_key(pool.job(async { 1 }), key).submit());
        assert!(poll_with(w1.as_mut(), &k1).is_pending());
        drop(q);
        let probe = with_key(pool.job(async { 0 }), key)
            .try_submit()
            .unwrap_or_else(|_| panic!("probe"));
        let (c1b, k1b) = counter();
        assert!(
            poll_with(w1.as_mut(), &k1b).is_pending(),
            "{key:?}: revoked"
        );
        drop(probe);
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            c1b.0.load(Ordering::SeqCst),
            1,
            "{key:?}: new waker woken by re-grant"
        );
        assert!(matches!(poll_with(w1.as_mut(), &k1b), Poll::Ready(Ok(_))));
    }
}

/// A pool with one worker, busy with a job that never ends, and a queue of 2
/// filled by a key-"c" job `c1` (key queues hold 2) and an unkeyed job `q`.
/// Returns the pool, the running job, `c1` and `q`.
async fn key_c_and_pool_full() -> (Pool, JobHandle<()>, JobHandle<()>, JobHandle<()>) {
    let pool = keyed_pool(1, 2, 2);
    let (running, _dropped) = pending_job();
    let r = pool.submit(running).await.unwrap();
    settle().await;
    let c1 = pool.job(async {}).key("c").submit().await.unwrap();
    let q = pool.submit(async {}).await.unwrap();
    (pool, r, c1, q)
}

/// A granted keyed waiter refused by its key queue (cap lowered) keeps its turn,
/// and is woken and admitted when the key frees a place.
#[tokio::test(start_paused = true)]
async fn key_refused_after_grant_is_readmitted_when_key_frees() {
    let (pool, _r, c1, q) = key_c_and_pool_full().await;
    let (cw, kw) = counter();
    let mut wc = pin!(pool.job(async { "c" }).key("c").submit());
    assert!(poll_with(wc.as_mut(), &kw).is_pending());
    drop(q);
    assert_eq!(cw.0.load(Ordering::SeqCst), 1, "granted");
    pool.set_key_limits("c", KeyLimits::default().queue_capacity(1))
        .unwrap();
    let (cw2, kw2) = counter();
    assert!(
        poll_with(wc.as_mut(), &kw2).is_pending(),
        "refused by key c"
    );
    drop(c1);
    assert_eq!(cw2.0.load(Ordering::SeqCst), 1, "woken when key c frees");
    assert!(matches!(poll_with(wc.as_mut(), &kw2), Poll::Ready(Ok(_))));
}

/// Pool shrinks between grant and use: refused by the pool, steps back in, is
/// woken and admitted when the pool grows.
#[tokio::test(start_paused = true)]
async fn pool_refused_after_grant_is_readmitted_on_grow() {
    let pool = keyed_pool(2, 0, 10);
    let (tx1, rx1) = oneshot::channel::<()>();
    let _a = pool
        .submit(async move {
            let _ = rx1.await;
        })
        .await
        .unwrap();
    let (running, _d) = pending_job();
    let _b = pool.submit(running).await.unwrap();
    settle().await;
    assert_eq!(load(&pool), (2, 0));
    let (c, k) = counter();
    let mut w = pin!(pool.submit(async { 1 }));
    assert!(poll_with(w.as_mut(), &k).is_pending());
    tx1.send(()).unwrap();
    settle().await;
    assert_eq!(c.0.load(Ordering::SeqCst), 1, "granted");
    pool.resize(1);
    settle().await;
    let (c2, k2) = counter();
    assert!(
        poll_with(w.as_mut(), &k2).is_pending(),
        "refused: pool shrank"
    );
    pool.resize(2);
    settle().await;
    assert_eq!(c2.0.load(Ordering::SeqCst), 1, "woken on grow");
    assert!(matches!(poll_with(w.as_mut(), &k2), Poll::Ready(Ok(_))));
}

/// submit_timeout: granted, then refused by its key at the instant the wait runs
/// out: Timeout, with its own job back, and the place passes on.
#[tokio::test(start_paused = true)]
async fn timeout_after_key_refusal_returns_job_and_passes_place() {
    let (pool, _r, _c1, q) = key_c_and_pool_full().await;
    let (_cw, kw) = counter();
    let mut wc = pin!(pool.job(async { 42 }).key("c").submit_timeout(5 * MS));
    assert!(poll_with(wc.as_mut(), &kw).is_pending());
    let (cu, ku) = counter();
    let mut wu = pin!(pool.submit(async { 7 }));
    assert!(poll_with(wu.as_mut(), &ku).is_pending());
    drop(q);
    pool.set_key_limits("c", KeyLimits::default().queue_capacity(1))
        .unwrap();
    tokio::time::advance(5 * MS).await;
    match poll_with(wc.as_mut(), &kw) {
        Poll::Ready(Err(e)) => {
            assert!(e.is_timeout());
            assert_eq!(e.into_inner().await, 42);
        }
        _ => panic!("must time out"),
    }
    assert_eq!(cu.0.load(Ordering::SeqCst), 1, "place passed on");
    assert!(matches!(poll_with(wu.as_mut(), &ku), Poll::Ready(Ok(_))));
}

/// Multi-thread churn: submitters with submit / submit_timeout / try_submit and
/// aborts; every non-aborted submitter must finish.
#[test]
fn multi_thread_churn_strands_nothing() {
    let iters: usize = std::env::var("CHURN_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    for it in 0..iters {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = keyed_pool(1 + it % 2, it % 3, 1 + it % 2);
            let mut tasks = Vec::new();
            for s in 0..16u64 {
                let p = pool.clone();
                tasks.push(tokio::spawn(async move {
                    let mut held = Vec::new();
                    for j in 0..200u64 {
                        let key = match (s + j) % 3 {
                            0 => None,
                            1 => Some("a"),
                            _ => Some("b"),
                        };
                        let job = with_key(
                            p.job(async move {
                                if j % 2 == 0 {
                                    tokio::task::yield_now().await
                                }
                            }),
                            key,
                        );
                        match (s * 7 + j) % 5 {
                            0 => {
                                let _ = job.submit_timeout(Duration::from_micros(50)).await;
                            }
                            1 => {
                                let _ = job.try_submit();
                            }
                            2 => {
                                let h = job.submit().await.unwrap();
                                let _ = h.await;
                            }
                            _ => {
                                let h = job.submit().await.unwrap();
                                held.push(h);
                                if held.len() > 3 {
                                    // Dropping the oldest handle cancels its job.
                                    drop(held.remove(0));
                                }
                            }
                        }
                    }
                }));
            }
            // Some aborters
            for s in 0..8u64 {
                let p = pool.clone();
                tasks.push(tokio::spawn(async move {
                    for j in 0..100u64 {
                        let p2 = p.clone();
                        let h = tokio::spawn(async move {
                            let _ = p2.submit(async {}).await;
                        });
                        if (s + j) % 2 == 0 {
                            tokio::task::yield_now().await;
                        }
                        h.abort();
                    }
                }));
            }
            let all = futures::future::join_all(tasks);
            match tokio::time::timeout(Duration::from_secs(30), all).await {
                Ok(rs) => {
                    for r in rs {
                        r.unwrap();
                    }
                }
                Err(_) => panic!("iteration {it}: stranded: stats {:?}", pool.stats()),
            }
            // Every job accepted has an outcome once the pool drains.
            tokio::time::timeout(Duration::from_secs(30), pool.shutdown())
                .await
                .unwrap_or_else(|_| panic!("iteration {it}: drains: {:?}", pool.stats()));
            assert_accounted(&pool);
        });
    }
}

/// A younger waiter polled again and again (wakes that were not grants) stays in
/// line: the freed place goes to the older one. Then the older one's grant is
/// taken back (it holds no waker now) and the pool closes: both are woken or
/// polled to `Closed`, each with its own job back.
#[tokio::test(start_paused = true)]
async fn spurious_polls_of_younger_waiter_do_not_jump_and_close_reaches_revoked() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        let (c1, k1) = counter();
        let (c2, k2) = counter();
        let mut w1 = pin!(with_key(pool.job(async { 1 }), key).submit());
        let mut w2 = pin!(with_key(pool.job(async { 2 }), key).submit());
        assert!(poll_with(w1.as_mut(), &k1).is_pending());
        for _ in 0..5 {
            assert!(poll_with(w2.as_mut(), &k2).is_pending());
        }
        drop(q);
        assert!(poll_with(w2.as_mut(), &k2).is_pending(), "w2 must not jump");
        assert_eq!(
            (c1.0.load(Ordering::SeqCst), c2.0.load(Ordering::SeqCst)),
            (1, 0)
        );
        // revoke w1's grant, leaving it with no waker stored, then close.
        let _probe = with_key(pool.job(async { 0 }), key)
            .try_submit()
            .unwrap_or_else(|_| panic!());
        pool.close();
        assert_eq!(c2.0.load(Ordering::SeqCst), 1, "w2 woken by close");
        match poll_with(w1.as_mut(), &k1) {
            Poll::Ready(Err(e)) => {
                assert!(e.is_closed());
                assert_eq!(e.into_inner().await, 1);
            }
            _ => panic!("w1 closed"),
        }
        assert!(matches!(poll_with(w2.as_mut(), &k2), Poll::Ready(Err(_))));
    }
}
